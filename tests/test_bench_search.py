"""benchmarks/bench_search.py at toy sizes: every arm runs, its file is kept and read back, settings guarded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_search
from tests.test_search_scale import TINY
from utils.core import paths
from utils.core.errors import UsageError


@pytest.mark.slow
def test_search_benchmark_runs_every_arm_and_keeps_the_finished_ones(tmp_path):
    argv = TINY + ["--save_dir", str(tmp_path), "--sparsity", "0.95", "--arms", "rl", "random", "greedy_prop",
                   "--episodes", "3", "--episode_steps", "1", "--episode_val_subset", "100", "--final_epochs", "1"]
    found = bench_search.main(argv)["ssim"]
    results = tmp_path / "search_results"
    assert set(found) == {"rl", "random", "greedy_prop"}
    for arm, episodes in (("rl", 3), ("random", 3), ("greedy_prop", 1)):
        result = found[arm][1]
        assert len(result["rewards"]) == len(result["val_accs"]) == episodes
        assert sum(result["allocation"].values()) <= result["budget"] and 0 <= result["final"]["test_acc"] <= 100
    assert sum(found["greedy_prop"][1]["allocation"].values()) == found["greedy_prop"][1]["budget"]  # K spent
    assert (results / "search_synthetic_resnet20.png").is_file()
    assert "| ssim | random | 1 | 3 |" in (results / "search_synthetic_resnet20.md").read_text()
    stamp = {p.name: p.stat().st_mtime_ns for p in results.glob("*_seed1_*.json")}
    again = bench_search.main(argv)["ssim"]  # finished arms are read back, not rerun
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*_seed1_*.json")} == stamp
    assert again["rl"][1]["final"] == found["rl"][1]["final"]
    # a second process runs another arm of the same seed while this one, which ran the first call's arms, still
    # holds their probe folder (a run folder's claim lasts until its process ends)
    assert str((tmp_path / "search_synthetic_resnet20" / "seed1" / "search" / "resnet20" / "regrowth_oneshot" /
                bench_search.probe_label("ssim", ["greedy_prop", "random", "rl"])).resolve()) in paths._HELD
    uniform = (argv[:argv.index("--arms")] + ["--arms", "greedy_uniform", "greedy_topk"]
               + argv[argv.index("--episodes"):])
    other = subprocess.run([sys.executable, "-m", "benchmarks.bench_search", *uniform], capture_output=True,
                           text=True, cwd=Path(bench_search.__file__).parents[1], timeout=600)
    assert other.returncode == 0, other.stderr
    assert (results / "synthetic_resnet20_seed1_ssim_greedy_uniform.json").is_file()
    topk = json.loads((results / "synthetic_resnet20_seed1_ssim_greedy_topk.json").read_text())
    assert sum(topk["allocation"].values()) == topk["budget"] and set(topk["allocation"]) <= set(
        topk["searched_units"])
    longer = list(argv)
    longer[longer.index("--episodes") + 1] = "4"
    command = subprocess.run([sys.executable, "-m", "benchmarks.bench_search", *longer], capture_output=True,
                             text=True, cwd=Path(bench_search.__file__).parents[1], timeout=600)
    assert command.returncode == 2 and command.stderr.startswith("error: ") and "episodes differ" in command.stderr
    assert "Traceback" not in command.stderr
    with pytest.raises(UsageError, match="episodes differ"):  # 4 episodes where a 3-episode arm file lies
        bench_search.main(longer)
    with pytest.raises(UsageError, match="episodes differ"):  # elsewhere too: the 3-episode searches are not reused
        bench_search.main(longer + ["--results", str(tmp_path / "other")])


def test_unit_effect_pairs_each_arm_by_seed_across_unit_sets():
    def arm(test_acc: float) -> dict:
        return {"final": {"test_acc": test_acc}}

    found = {"ssim": {"rl": {1: arm(70.0), 2: arm(72.0), 3: arm(71.0)}, "greedy_prop": {1: arm(60.0)}},
             "all": {"rl": {1: arm(71.0), 2: arm(71.5)}, "random": {1: arm(65.0)}}}
    lines = bench_search.unit_effect(found)
    assert len(lines) == 3  # header, rule, rl: greedy_prop and random ran with one unit set only
    assert lines[2] == "| rl | 2 | 71.00 ± 1.41 | 71.25 ± 0.35 | +0.25 ± 1.06 | s1 +1.00, s2 -0.50 |"  # seed 3 unpaired
    assert bench_search.unit_effect({"ssim": found["ssim"]}) == []

"""bench_regrowth_outcome: step-by-step regrowth from a model pruned past the targets against one-shot pruning to
each target with as many epochs after pruning; each seed's rows kept, a second call trains nothing."""
from __future__ import annotations

import json

import pytest

from benchmarks import bench_regrowth_outcome
from tests.conftest import save_dense_and_sparse

TINY = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "100", "--batch_size", "64",
        "--device", "cpu"]


@pytest.mark.slow
def test_each_regrowth_step_is_paired_with_one_shot_pruning_at_equal_epochs(tmp_path, capsys):
    dense, _ = save_dense_and_sparse(tmp_path / "d", 0.5)
    argv = TINY + ["--dense", str(dense), "--seeds", "1", "--start_sparsity", "0.9", "--regrow_step", "0.1",
                   "--steps", "2", "--prune_epochs", "1", "--step_epochs", "1", "--save_dir", str(tmp_path / "runs"),
                   "--results", str(tmp_path / "kept")]
    assert bench_regrowth_outcome.main(argv) == 0
    (kept,) = (tmp_path / "kept").glob("synthetic_resnet20_outcome_*_seed1.json")
    rows = json.loads(kept.read_text())["rows"]
    assert [(r["step"], r["epochs"], r["target"]) for r in rows] == [(1, 2, 0.8), (2, 3, 0.7)]
    for row in rows:  # both models of a step at its sparsity (greedy spends floor(0.1 N) a step: within 1e-3)
        assert row["regrown"]["sparsity"] == pytest.approx(row["target"], abs=1e-3)
        assert row["oneshot"]["sparsity"] == pytest.approx(row["target"], abs=1e-3)
        assert row["regrown"]["regrown"] > 0
    finetunes = sorted((tmp_path / "runs").rglob("oneshot_2/**/finetune_*.csv"))
    assert finetunes and len(finetunes[0].read_text().splitlines()) == 1 + 3  # header + 3 epochs for step 2
    assert "| 2 | 3 |" in capsys.readouterr().out
    # the kept rows answer a second call: nothing trains, the run folders are not needed
    elsewhere = argv[:argv.index("--save_dir")] + ["--save_dir", str(tmp_path / "elsewhere"),
                                                  "--results", str(tmp_path / "kept")]
    assert bench_regrowth_outcome.main(elsewhere) == 0 and not (tmp_path / "elsewhere").exists()

"""pipeline.py runs every stage end to end on synthetic data with the smoke preset (the demo's code path with
shorter schedules, about a minute on 2 cores), for weights: once per seed, then report.py's tables over the
seeds. The channel chains are in test_pipeline_channels.py (a file each, so test workers run them side by
side)."""
from __future__ import annotations

import json

import pytest

import pipeline
from utils.core.files import read_csv
from utils.runtime.checkpoint import read_checkpoint


def summary_rows(root):
    return json.loads((root / "pipeline_summary.json").read_text())["rows"]


@pytest.mark.slow
def test_pipeline(tmp_path, capsys):
    args = ["--preset", "smoke", "--seeds", "1", "2", "--save_dir", str(tmp_path), "--device", "cpu", "--no_progress"]
    assert pipeline.main(args) == 0
    root = tmp_path / "seed1" / "resnet20"
    rows = read_csv(root / "pipeline_summary.csv")
    assert [r["model"] for r in rows] == ["dense", "pruned straight", "gradual + swaps", "method: past + RL regrowth",
                                          "past + greedy uniform"]
    sparsity = {r["model"]: float(r["sparsity"]) for r in rows}
    # the budget is exactly the weights between the two one-shot prunes: the greedy row keeps what straight keeps
    assert sparsity["dense"] == 0.0 and sparsity["past + greedy uniform"] == sparsity["pruned straight"]
    assert sparsity["pruned straight"] == sparsity["gradual + swaps"] == pytest.approx(0.98, abs=1e-5)
    assert sparsity["pruned straight"] - 1e-9 <= sparsity["method: past + RL regrowth"] <= 0.99 + 1e-9  # may skip
    # equal epochs after pruning for every sparse row (prune 1 + mini 1 + final 1 in the smoke preset): the
    # method's final finetune starts from the regrown model before the search's mini-finetune
    assert [int(r["epochs"]) for r in rows] == [0, 3, 3, 3, 3]
    assert read_checkpoint(root / "regrowth_oneshot" / "pipeline" / "best_pre_finetune.pth").meta["finetuned"] is False
    tuned = {r["model"]: read_checkpoint(r["checkpoint"]).meta["args"]["finetune_epochs"]  # finetune.py's --epochs
             for r in summary_rows(root)[1:] if r["model"] != "gradual + swaps"}  # after each row's earlier finetunes
    assert tuned == {"pruned straight": 2, "method: past + RL regrowth": 2, "past + greedy uniform": 1}
    summary = json.loads((root / "pipeline_summary.json").read_text())
    assert summary["preset"] == "smoke" and len(summary["rows"]) == 5 and summary["units"] == "all"
    assert summary["seed"] == 1 and summary["reused_stages"] == 0
    record = summary["provenance"]  # where the table came from
    assert record["data"]["name"] == "synthetic" and record["data"]["train"] == 768 and record["threads"] >= 1
    assert record["command"].startswith("python pipeline.py --preset smoke")
    summaries = list(root.rglob("summary.json"))  # pretrain's, the search's, greedy's (and its iteration's)
    assert len(summaries) >= 3 and all("commit" in json.loads(p.read_text())["provenance"] for p in summaries)
    for search in (root / "regrowth_oneshot" / "pipeline" / "summary.json", root / "greedy_uniform" / "summary.json"):
        assert json.loads(search.read_text())["units"] == "all"  # both allocators over the same units
    # the smoke preset learns, so a broken training path shows: the dense model is clearly above chance (10%
    # on the 10 classes) in every seed (the sparse rows' 3 epochs after pruning may end above its 3 epochs)
    for seed in (1, 2):
        val = {r["model"]: float(r["val_acc"]) for r in read_csv(tmp_path / f"seed{seed}" / "resnet20"
                                                                  / "pipeline_summary.csv")}
        assert val["dense"] >= 30.0, val
    out = capsys.readouterr().out
    assert "method: past + RL regrowth" in out and "epochs" in out
    assert (root / "pipeline_summary.png").stat().st_size > 0  # the results figure beside the table
    log = (root / "pipeline_log.txt").read_text()  # the pipeline's own log survives the stages' logging
    assert "== pretrain: running" in log and "== regrowth (greedy uniform): running" in log and "stages:" in log
    # report.py over both seeds: one row per model with mean ± std over the 2 seeds, and the figure
    assert "2 run root(s)" in out and (tmp_path / "report.png").is_file()
    pipe = [line for line in out.splitlines() if "| weight | pruned straight |" in line]
    assert len(pipe) == 1 and "| 2 |" in pipe[0] and " ± " in pipe[0]
    assert (tmp_path / "seed2" / "resnet20" / "pipeline_summary.csv").is_file()

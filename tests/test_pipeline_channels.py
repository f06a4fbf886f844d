"""pipeline.py for channels end to end on synthetic data with the smoke preset: prune, search, greedy, finetune
and export; and the device chain up to a MAC limit."""
from __future__ import annotations

import json

import pytest

import pipeline
from utils.core.files import read_csv
from utils.device.fill import local_counts
from utils.sparsity.granularity import get_granularity
from utils.sparsity.macs import channel_macs


@pytest.mark.slow
def test_pipeline_for_channels(tmp_path, capsys):
    """--granularity channel: prune_structure -> structured RL regrowth -> greedy channel regrowth -> finetune ->
    export; run twice, the second run reuses every finished stage."""
    args = ["--save_dir", str(tmp_path), "--device", "cpu", "--no_progress", "--granularity", "channel", "--preset",
            "smoke"]
    assert pipeline.main(args) == 0
    root = tmp_path / "resnet20"
    rows = read_csv(root / "pipeline_structure_summary.csv")
    assert [r["model"] for r in rows] == ["dense", "pruned straight", "method: past + RL regrowth",
                                          "past + greedy uniform"]  # no gradual pruning of channels
    sparsity = {r["model"]: float(r["sparsity"]) for r in rows}
    assert sparsity["pruned straight"] == pytest.approx(381 / 448)  # round(0.85 * 448) of resnet20's 448 channels
    assert sparsity["past + greedy uniform"] == pytest.approx((403 - int(0.05 * 448)) / 448)  # from round(0.9 * 448)
    params = {r["model"]: int(r["params"]) for r in rows}
    assert params["pruned straight"] < params["dense"] == 272_474  # exported params
    assert len(list(root.rglob("*_final_exported.pth"))) == 3
    capsys.readouterr()
    assert pipeline.main(args) == 0
    err = capsys.readouterr().err
    for stage in ("pretrain", "prune (one-shot)", "regrowth (RL)", "regrowth (greedy uniform)",
                  "finetune pruned straight", "export method: past + RL regrowth"):
        assert f"== {stage}: reused, " in err  # each reused stage named with the file that shows it finished
    log = (root / "pipeline_log.txt").read_text()
    assert "== regrowth (RL): reused, " in log and "pipeline_structure_summary.csv" in log


@pytest.mark.slow
def test_pipeline_up_to_a_mac_limit(tmp_path, capsys):
    """--granularity channel --device_profile: the curve and its boundary, pruned straight to the MAC limit
    against pruned 1.5x past it and regrown up to it; both fit, and the table gives their margins."""
    profile = tmp_path / "edge.json"
    profile.write_text(json.dumps({"name": "edge", "max_macs": 20_000_000}))
    args = ["--save_dir", str(tmp_path / "runs"), "--device", "cpu", "--no_progress", "--granularity", "channel",
            "--preset", "smoke", "--device_profile", str(profile)]
    assert pipeline.main(args) == 0
    summary = json.loads((tmp_path / "runs" / "resnet20" / "device_summary.json").read_text())
    assert summary["limit"] == "macs" and summary["start_sparsity"] > summary["limit_sparsity"]
    pruned, regrown = summary["rows"]
    assert pruned["fits"] and regrown["fits"] and 0 <= pruned["margin"] == 20_000_000 - pruned["cost"]
    assert regrown["sparsity"] < summary["start_sparsity"]  # channels came back
    search = json.loads((tmp_path / "runs" / "resnet20" / "regrowth_structure_oneshot" / "device_edge"
                         / "summary.json").read_text())
    gran = get_granularity("channel", "resnet20")
    start_macs = channel_macs(gran).macs(local_counts(gran, round(summary["start_sparsity"] * 448)))
    assert search["budget_unit"] == "macs" and search["budget"] == 20_000_000 - start_macs  # the stage agrees
    assert set(summary["boundary"]) == {"residual", "two_segment", "kneedle", "tolerance"}
    assert "MACs" in capsys.readouterr().out

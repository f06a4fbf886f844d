"""The prepared GPU check runs end to end in its toy mode on the CPU, so it cannot rot while no GPU is lent."""
from __future__ import annotations

import json

import pytest

from benchmarks import common, gpu_check


@pytest.mark.slow
def test_gpu_check_toy_mode_fills_every_section(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ROOT", tmp_path)  # bench_swap's own result file
    results = gpu_check.main(["--toy", "--out", str(tmp_path)])
    stored = json.loads((tmp_path / "gpu_check.json").read_text())
    assert stored["toy"] and set(stored["sections"]) == set(gpu_check.SECTIONS)
    errors = {name: s["error"] for name, s in results["sections"].items() if "error" in s}
    assert not errors, errors
    sections = stored["sections"]
    rows = sections["throughput"]["rows"]
    assert len(rows) == 4 and all(r["images_per_s"] > 0 for r in rows)  # 2 layouts x 2 precisions, no compile
    assert sections["epoch"]["seconds"] > 0 and sections["episode"]["speedup"] > 0
    assert [r["processes"] for r in sections["search"]["rows"]] == list(gpu_check.TOY.search_processes)
    assert all(r["episodes_per_min"] > 0 for r in sections["search"]["rows"]) and sections["search"]["same_episodes"]
    assert all(r["exported_ms"] > 0 and r["masked_ms"] > 0 for r in sections["latency"]["rows"])
    assert sections["swap"]["swap_step_ms"] > 0
    correctness = sections["correctness"]
    assert correctness["bf16_masks_unchanged"] and correctness["swap_counts_exact"] and correctness["resume_equal"]
    assert correctness["swap_weights_moved"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert "images/s" in table and "episodes/min" in table and "Failed" not in table

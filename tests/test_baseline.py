"""Baseline table: evaluate once, cache beside the checkpoints, interpolate."""
from __future__ import annotations

import os

import pytest

from utils.core.errors import UsageError
from utils.search.baseline import baseline_table, interpolate


def test_interpolation():
    table = {0.9: 80.0, 0.95: 70.0, 0.99: 50.0}
    assert interpolate(table, 0.9) == 80.0 and interpolate(table, 0.99) == 50.0
    assert interpolate(table, 0.925) == pytest.approx(75.0)
    assert interpolate(table, 0.97) == pytest.approx(60.0)
    assert interpolate(table, 0.5) == 80.0 and interpolate(table, 0.999) == 50.0  # clamped


def test_table_is_cached_and_refreshed(tmp_path):
    for name in ("m_0.9000.pth", "m_0.9500.pth", "broken.pth"):
        (tmp_path / name).write_bytes(b"x")
    calls = []

    def evaluate(path):
        calls.append(path.name)
        if path.name == "broken.pth":
            raise UsageError("cannot read")
        return float(path.stem.split("_")[1]), 100 * (1 - float(path.stem.split("_")[1]))

    cache = tmp_path / "cache" / "baseline.pt"
    table = baseline_table(tmp_path, evaluate, {"seed": 1}, cache)
    assert table == {0.9: pytest.approx(10.0), 0.95: pytest.approx(5.0)} and cache.is_file()
    calls.clear()
    assert baseline_table(tmp_path, evaluate, {"seed": 1}, cache) == table
    assert calls == ["broken.pth"]  # good entries came from the cache; the broken file is retried
    os.utime(tmp_path / "m_0.9000.pth", (1, 1))
    calls.clear()
    baseline_table(tmp_path, evaluate, {"seed": 1}, cache)
    assert "m_0.9000.pth" in calls and "m_0.9500.pth" not in calls
    calls.clear()
    baseline_table(tmp_path, evaluate, {"seed": 2}, cache)  # other settings: everything again
    assert sorted(calls) == ["broken.pth", "m_0.9000.pth", "m_0.9500.pth"]


def test_no_usable_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="no usable checkpoint"):
        baseline_table(tmp_path, lambda p: (0.0, 0.0), {}, tmp_path / "c.pt")
    with pytest.raises(UsageError, match="not a folder"):
        baseline_table(tmp_path / "missing", lambda p: (0.0, 0.0), {}, tmp_path / "c.pt")

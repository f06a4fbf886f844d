"""Budget arithmetic and the one atomic writer."""
from __future__ import annotations

import pytest

from utils.core.errors import UsageError
from utils.core.files import atomic_write, write_json
from utils.sparsity.budget import capped_largest_remainder, largest_remainder, regrowth_budget


def test_capped_shares_add_up_exactly_and_respect_caps():
    shares = {"a": 10.0, "b": 10.0, "c": 1.0}
    caps = {"a": 2, "b": 100, "c": 100}
    plan = capped_largest_remainder(shares, caps, 20)
    assert sum(plan.values()) == 20 and plan["a"] == 2 and all(plan[k] <= caps[k] for k in plan)
    assert plan == {"a": 2, "b": 16, "c": 2}  # a hits its cap; b and c share the other 18 as 10:1 (16.4, 1.6)
    assert capped_largest_remainder(shares, caps, 0) == {"a": 0, "b": 0, "c": 0}
    with pytest.raises(ValueError):
        capped_largest_remainder(shares, caps, 203)
    assert largest_remainder({"a": 1.0, "b": 1.0, "c": 1.0}, 10) == {"a": 4, "b": 3, "c": 3}


def test_regrowth_budget_floors_caps_and_refuses_zero():
    assert regrowth_budget(270_896, 0.01, 10**9) == 2708  # the original's int(N_tot * regrow_step)
    assert regrowth_budget(1000, 0.3, 10**9) == 300  # 1000 * 0.3 = 299.99999999999994 in floats
    assert regrowth_budget(270_896, 0.01, 100) == 100
    with pytest.raises(UsageError, match="budget is 0"):
        regrowth_budget(448, 0.001, 100)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no stray temp file

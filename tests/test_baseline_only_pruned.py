"""The pruning baseline reads pruning checkpoints only: a finetuned, final or exported copy beside a pruned
checkpoint (same sparsity, higher accuracy) must not replace the pruning point (issue 36, point 2)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn as nn

from utils.core.files import write_csv
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.search.baseline import baseline_table


def _save(path: Path, stage: str | None, sparsity: float, val_acc: float) -> None:
    meta = {"sparsity": sparsity, "val_acc": val_acc, **({"stage": stage} if stage else {})}
    save_checkpoint(path, nn.Linear(2, 2), model_name="tiny", dataset="synthetic", num_classes=2, meta=meta)


def _evaluate(path: Path) -> tuple[float, float]:
    meta = read_checkpoint(path).meta
    return meta["sparsity"], meta["val_acc"]


def _folder(tmp_path: Path) -> Path:
    """Two pruned checkpoints, and beside them a finetuned, a final, an exported and a regrown copy of the
    first, each far better at the same sparsity."""
    _save(tmp_path / "m_0.9000.pth", "prune_iterative", 0.9, 50.0)
    _save(tmp_path / "m_0.9500.pth", "prune_iterative", 0.95, 40.0)
    _save(tmp_path / "m_0.9000_finetuned.pth", "finetune", 0.9, 80.0)
    _save(tmp_path / "m_0.9000_final.pth", "finetune", 0.9, 81.0)
    _save(tmp_path / "m_0.9000_final_exported.pth", "export", 0.9, 82.0)
    _save(tmp_path / "grown.pth", "regrowth", 0.9, 83.0)
    return tmp_path


@pytest.mark.parametrize("with_log", [True, False], ids=["prune_log", "meta_stage"])
def test_finetuned_copy_does_not_replace_the_pruning_point(tmp_path, log_lines, with_log):
    folder = _folder(tmp_path / "run")
    if with_log:
        write_csv(folder / "prune_log.csv", [{"step": "1", "sparsity": "0.9", "checkpoint": "m_0.9000.pth"},
                                             {"step": "2", "sparsity": "0.95", "checkpoint": "m_0.9500.pth"}],
                  ["step", "sparsity", "checkpoint"])
    table = baseline_table(folder, _evaluate, {}, tmp_path / "cache" / "baseline.pt")
    assert table == {0.9: 50.0, 0.95: 40.0}
    ignored = [line for line in log_lines if "ignoring" in line]
    assert len(ignored) == 1 and "4 file(s)" in ignored[0]
    for name in ("m_0.9000_finetuned.pth", "m_0.9000_final.pth", "m_0.9000_final_exported.pth", "grown.pth"):
        assert name in ignored[0]


def test_a_file_without_a_recorded_stage_counts_unless_named_as_a_copy(tmp_path):
    """The original repository's files record no stage: kept by name, derived copies left out."""
    _save(tmp_path / "m_0.9000.pth", None, 0.9, 50.0)
    _save(tmp_path / "m_0.9000_finetuned.pth", None, 0.9, 80.0)
    assert baseline_table(tmp_path, _evaluate, {}, tmp_path / "c.pt") == {0.9: 50.0}


def test_only_copies_is_a_usage_error(tmp_path):
    from utils.core.errors import UsageError

    _save(tmp_path / "m_0.9000_finetuned.pth", "finetune", 0.9, 80.0)
    with pytest.raises(UsageError, match="no usable checkpoint"):
        baseline_table(tmp_path, _evaluate, {}, tmp_path / "c.pt")

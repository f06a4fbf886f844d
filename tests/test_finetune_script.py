"""finetune.py: masks untouched, pruned weights stay zero, before/after recorded; the warm-up schedule."""
from __future__ import annotations

import pytest
import torch

import finetune
from models import create_model
from tests.conftest import run_main, tree
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.runtime.train import warmup_cosine
from utils.sparsity.masks import add_reparam, get_masks

QUICK = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64", "--device",
         "cpu", "--no_progress"]


def test_finetune_keeps_masks_and_zeros(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20")
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.97)
    masks = get_masks(model)
    path = tmp_path / "sparse.pth"
    save_checkpoint(path, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    assert finetune.main(QUICK + ["--ckpt", str(path), "--epochs", "2", "--lr", "0.01"]) == 0
    out = tmp_path / "sparse_finetuned.pth"
    assert {"sparse_finetuned.pth", "sparse_finetuned_log.csv", "sparse_finetuned_log.txt"} <= set(tree(tmp_path))
    ckpt = read_checkpoint(out)
    assert ckpt.meta["sparsity"] == pytest.approx(0.97, abs=1e-5)
    assert {"val_acc_before", "test_acc_before", "val_acc", "test_acc"} <= set(ckpt.meta)
    for name, mask in masks.items():
        assert torch.equal(ckpt.state_dict[f"{name}.weight_mask"], mask)
        orig = ckpt.state_dict[f"{name}.weight_orig"]
        assert torch.all((orig * ckpt.state_dict[f"{name}.weight_mask"])[~mask] == 0)
    assert not torch.equal(ckpt.state_dict["linear.weight_orig"], model.state_dict()["linear.weight_orig"])


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine(opt, total_steps=100, warmup_frac=0.05)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(1.0)  # 5 warm-up steps
    assert lrs[5] == pytest.approx(1.0) and lrs[52] == pytest.approx(0.5, abs=0.02) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = run_main(finetune.main, QUICK + ["--ckpt", str(tmp_path / "none.pth")], capsys)
    assert code == 2 and err.startswith("error:") and "does not exist" in err and tree(tmp_path) == []

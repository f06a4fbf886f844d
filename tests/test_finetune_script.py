"""finetune.py: masks untouched, pruned weights stay zero, before/after recorded; the warm-up schedule."""
from __future__ import annotations

import pytest
import torch

import finetune
from models import create_model
from tests.conftest import run_main, stop_after_points, tree
from utils.core.files import read_csv
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


def test_a_killed_finetune_resumes_exactly_with_its_warmup_and_swaps(tmp_path, monkeypatch, capsys):
    """Killed after epoch 2 of 4 (the warm-up cosine moving every step, swap cycles at every step), then the same
    command with --resume: the log (but its seconds) and the weights and masks equal the uninterrupted run's."""
    torch.manual_seed(0)
    model = create_model("resnet20")
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)
    path = tmp_path / "sparse.pth"
    save_checkpoint(path, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    args = QUICK + ["--ckpt", str(path), "--epochs", "4", "--patience", "0", "--swap_every", "1"]
    assert finetune.main(args + ["--save_path", str(tmp_path / "full.pth")]) == 0
    stop_after_points(monkeypatch, 2)
    cut = args + ["--save_path", str(tmp_path / "cut.pth")]
    assert finetune.main(cut) == 130
    monkeypatch.undo()
    code, _, err = run_main(finetune.main, cut, capsys)
    assert code == 2 and "--resume" in err
    assert finetune.main(cut + ["--resume"]) == 0
    assert not (tmp_path / "cut.resume.pt").exists()
    logs = [[{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(tmp_path / f"{n}_log.csv")]
            for n in ("full", "cut")]
    assert len(logs[0]) == 4 and logs[0] == logs[1]
    a, b = (read_checkpoint(tmp_path / f"{n}.pth").state_dict for n in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    code, _, err = run_main(finetune.main, cut + ["--resume"], capsys)  # finished: nothing to continue
    assert code == 2 and "no resume point" in err

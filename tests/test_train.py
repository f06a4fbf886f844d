"""The shared training loop: best-by-val selection, pruned weights stay zero, eval leaves no trace."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from data.loader import DeviceLoader
from utils.runtime.settings import LoopSettings
from utils.runtime.train import FitSchedule, FitState, evaluate_model, fit, train_epoch
from utils.sparsity.masks import add_reparam, effective_weight, prunable_modules

CPU = torch.device("cpu")
QUIET = LoopSettings(progress=False)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def _loader(n=64, augment=None, seed=0) -> DeviceLoader:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (n, 3, 8, 8), generator=gen)).to(torch.uint8)
    return DeviceLoader(images, labels, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, device=CPU,
                        augment=augment, generator=torch.Generator().manual_seed(seed))


def test_fit_keeps_best_val_state_and_logs(tmp_path):
    torch.manual_seed(0)
    model = _tiny_net()
    seen = []
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = fit(model, _loader(), _loader(seed=1), opt, FitSchedule(4),
                loop=LoopSettings(progress=False, csv_path=tmp_path / "log.csv"),
                on_epoch_end=lambda s, stats, improved: seen.append((stats.val_acc, improved)))
    assert state.epoch == 4 and len(seen) == 4
    assert state.best_val_acc == max(acc for acc, _ in seen)
    assert seen[state.best_epoch - 1][0] == state.best_val_acc
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss") and len(rows) == 5
    model.load_state_dict(state.best_state)
    assert evaluate_model(model, _loader(seed=1))[1] == pytest.approx(state.best_val_acc)


def test_patience_stops_early():
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # never improves after epoch 1
    state = fit(model, _loader(), _loader(seed=1), opt, FitSchedule(10, patience=2), loop=QUIET)
    assert state.stopped_early and state.epoch == 3 and state.best_epoch == 1


def test_resume_from_state_runs_remaining_epochs():
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = fit(model, _loader(), _loader(seed=1), opt, FitSchedule(3), loop=QUIET,
                state=FitState(epoch=2, best_val_acc=100.0, best_epoch=2))
    assert state.epoch == 3 and state.best_epoch == 2  # one more epoch, 100% not beaten


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.01),
], ids=["sgd-momentum-wd", "adamw-wd"])
def test_pruned_weights_stay_exactly_zero(make_opt):
    torch.manual_seed(0)
    model = _tiny_net()
    add_reparam(model)
    for module in prunable_modules(model).values():
        prune.random_unstructured(module, "weight", 0.6)
    masks = {n: m.weight_mask.clone() for n, m in prunable_modules(model).items()}
    fit(model, _loader(), _loader(seed=1), make_opt(model.parameters()), FitSchedule(5), loop=QUIET)
    for name, module in prunable_modules(model).items():
        weight = effective_weight(module)
        assert torch.equal(module.weight_mask, masks[name])
        assert torch.all(weight[masks[name] == 0] == 0)
        assert torch.any(weight[masks[name] == 1] != 0)


def test_evaluate_restores_mode():
    model = _tiny_net().train()
    evaluate_model(model, _loader())
    assert model.training


def test_train_epoch_averages_over_the_images_it_trained_on():
    """A ``steps`` view may train on more or fewer images than the split holds: loss and accuracy are means over
    those images (a model that always answers the right class scores exactly 100%, whatever the count)."""
    loader = _loader(n=40)
    loader.labels = torch.zeros_like(loader.labels)  # every image is class 0
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    expected = float(torch.log1p(3 * torch.exp(torch.tensor(-10.0))))  # cross-entropy of logits (10, 0, 0, 0)
    for steps in (1, 3, 7):  # 16, 48 (past one pass of 40) and 112 images
        loss, acc = train_epoch(model, loader.steps(steps), optimizer, progress=False)
        assert acc == pytest.approx(100.0) and loss == pytest.approx(expected, rel=1e-2)

"""The shared training loop: best-by-val selection, pruned weights stay zero, eval leaves no trace; precision per
device; learning-rate curves."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

import utils.runtime.train as train_module
from data.loader import DeviceLoader
from utils.core import curves
from utils.runtime import schedules
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.train import FitSchedule, FitState, evaluate_model, finetune_model, fit, train_epoch
from utils.sparsity.masks import add_reparam, effective_weight, prunable_modules
from utils.sparsity.swap import SwapSettings

CPU = torch.device("cpu")
QUIET = LoopSettings(progress=False)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def _randomly_pruned_net() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``_tiny_net`` with 60% of each layer's weights pruned at random (seed 0), and a copy of its masks."""
    torch.manual_seed(0)
    model = _tiny_net()
    add_reparam(model)
    for module in prunable_modules(model).values():
        prune.random_unstructured(module, "weight", 0.6)
    return model, {n: m.weight_mask.clone() for n, m in prunable_modules(model).items()}


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
    model, masks = _randomly_pruned_net()
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


# ---- precision: bf16 where the device multiplies it natively ----------------------------------------------

def test_native_bf16_is_read_from_the_cpu_flags():
    assert train_module.native_bf16_in("processor : 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert train_module.native_bf16_in("flags : fpu avx512f avx512_bf16\n")
    assert not train_module.native_bf16_in("flags : fpu sse avx2 avx512f\n")  # AVX512 alone emulates bf16
    assert not train_module.native_bf16_in("")


@pytest.mark.parametrize("native", [True, False])
def test_precision_is_bf16_where_native_and_fp32_elsewhere_or_with_no_amp(monkeypatch, native):
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: native)
    assert train_module.autocast_dtype(CPU, amp=True) == (torch.bfloat16 if native else None)
    assert train_module.autocast_dtype(torch.device("cuda"), amp=True) == torch.bfloat16
    for device in (CPU, torch.device("cuda")):
        assert train_module.autocast_dtype(device, amp=False) is None  # --no_amp: fp32 everywhere
    assert train_module.precision_name(CPU, amp=True) == ("bf16" if native else "fp32")
    model, dtypes = _tiny_net(), []
    model[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    evaluate_model(model, _loader(16), amp=True)
    evaluate_model(model, _loader(16), amp=False)
    assert dtypes == [torch.bfloat16 if native else torch.float32, torch.float32]


def test_masks_and_swap_counts_stay_exact_under_bf16(monkeypatch):
    """Forced bf16 autocast (emulated where the CPU has no bf16 units): pruned effective weights stay exactly 0
    and swap cycles keep every layer's count, as in fp32."""
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)
    model, masks = _randomly_pruned_net()
    dtypes = []
    model[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    settings = FinetuneSettings(epochs=3, lr=0.01, swap=SwapSettings(every=2, fraction=0.3, until=0.9))
    state = finetune_model(model, _loader(), _loader(seed=1), settings, QUIET)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert state.swaps["swaps"] >= 1 and state.swaps["weights_moved"] > 0
    for name, module in prunable_modules(model).items():
        mask = module.weight_mask
        assert int(mask.sum()) == int(masks[name].sum())  # the count of each layer is exact
        assert torch.all(effective_weight(module)[mask == 0] == 0)  # pruned weights exactly zero


def test_label_smoothing_reaches_the_training_loss_only(monkeypatch):
    seen = []
    real = train_module.F.cross_entropy

    def spy(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module.F, "cross_entropy", spy)
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fit(model, _loader(32), _loader(16, seed=1), opt, FitSchedule(1, label_smoothing=0.1), loop=QUIET)
    assert seen == [0.1, 0.1, 0.0]  # two training batches smoothed; the val loss is plain cross-entropy


def test_learning_rate_curves():
    one = curves.warmup_linear(total=10, warmup=2)
    assert [one(t) for t in (0, 1, 2, 6, 10, 12)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0, 0.0])
    cos = curves.cosine(4)
    assert [cos(e) for e in (0, 2, 4, 5)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    wc = curves.warmup_cosine(total=10, warmup=2)
    assert [wc(t) for t in (0, 2, 6, 10)] == pytest.approx([0.5, 1.0, 0.5, 0.0])
    # per-step curves count optimizer steps; a fractional warm-up rounds to whole steps
    curve = schedules.lr_lambda("onecycle", epochs=4, steps_per_epoch=5, warmup_epochs=0.4)
    assert [curve(t) for t in (0, 1, 2, 11, 20)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert schedules.lr_lambda("cosine", epochs=4, steps_per_epoch=5, warmup_epochs=1)(2) == pytest.approx(0.5)


def test_train_benchmark_puts_precisions_side_by_side(monkeypatch, tmp_path):
    from benchmarks import bench_train, common

    monkeypatch.setattr(common, "ROOT", tmp_path)  # results under tmp_path
    monkeypatch.setattr(bench_train, "CONFIGS", [("fp32", False), ("bf16", False)])  # no compile in the suite
    results = bench_train.main(["--models", "resnet20", "--steps", "1", "--rounds", "1", "--batch_size", "8",
                                "--device", "cpu"])
    rows = results["throughput"]
    assert [(r["precision"], r["compiled"]) for r in rows] == [("fp32", False), ("bf16", False)]
    assert rows[0]["vs_fp32"] == 1.0 and all(r["images_per_s"] > 0 for r in rows)
    assert (tmp_path / "benchmarks" / "results" / "bench_train.json").is_file()

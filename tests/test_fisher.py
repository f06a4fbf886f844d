"""The saliency's two Fisher estimates (issue 36, point 4): ``per_sample`` (the empirical Fisher) equals a loop over
single images and does not depend on the batch size; ``batch`` (the original's) does."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils.scoring.saliency as sal
from utils.cli.flags import add_scoring_args, scoring_settings
from utils.core.errors import UsageError
from utils.sparsity.masks import add_reparam, set_masks

N = 24


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> pool -> linear: BN in eval mode (running statistics) as the scores use it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _model(masked: bool) -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    model.bn.running_mean.uniform_(-0.2, 0.2)
    model.bn.running_var.uniform_(0.5, 1.5)
    if masked:  # sparse mode: gradients w.r.t. the effective weight, pruned positions included
        add_reparam(model)
        set_masks(model, {"conv": torch.rand(4, 3, 3, 3) > 0.5, "fc": torch.rand(3, 4) > 0.3})
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, 3, 6, 6, generator=gen), torch.randint(0, 3, (N,), generator=gen)


def _batches(batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels = _data()
    return list(zip(images.split(batch), labels.split(batch), strict=True))


def _reference(model: nn.Module, layers: list[str], order: int) -> dict[str, torch.Tensor]:
    """mean_i |dL_i/dW|^order · |θ|^order by an explicit loop over single images (float64 sums)."""
    model.eval()
    modules = dict(model.named_modules())
    sums = {n: torch.zeros(modules[n].weight.shape, dtype=torch.float64) for n in layers}
    images, labels = _data()
    for i in range(N):
        loss = F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1])
        grads = torch.autograd.grad(loss, [modules[n].weight for n in layers])
        for n, g in zip(layers, grads, strict=True):
            sums[n] += g.double().abs().pow(order)
    theta = {n: sal.stored_param(modules[n], "weight").detach().double().abs().pow(order) for n in layers}
    return {n: sums[n] / N * theta[n] for n in layers}


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("order", [2, 1], ids=["fisher", "taylor"])
def test_per_sample_equals_a_loop_over_single_images(masked, order):
    model = _model(masked)
    layers = ["conv", "fc"]
    expected = _reference(model, layers, order)
    got = sal.param_saliency(model, _batches(8), [f"{n}.weight" for n in layers], order=order, fisher="per_sample")
    for n in layers:
        assert torch.allclose(got[f"{n}.weight"].double(), expected[n], rtol=1e-4, atol=1e-12), n
    if masked:  # the model still runs as before: module.weight is orig * mask again
        assert torch.equal(model.conv.weight, model.conv.weight_orig * model.conv.weight_mask)


def test_per_sample_chunks_agree(monkeypatch):
    """Images split into chunks of 5 (memory bound) give the same sums as one chunk."""
    model = _model(True)
    whole = sal.saliency(model, _batches(N), fisher="per_sample")
    monkeypatch.setattr(sal, "PER_SAMPLE_VALUES", 5 * sum(model.get_parameter(f"{n}_orig").numel()
                                                          for n in ("conv.weight", "fc.weight")))
    chunked = sal.saliency(model, _batches(N), fisher="per_sample")
    assert all(torch.allclose(whole[n], chunked[n], rtol=1e-5, atol=1e-12) for n in whole)


def test_batch_fisher_changes_with_batch_size_and_per_sample_does_not():
    model = _model(False)
    batch = {b: sal.saliency(model, _batches(b)) for b in (1, 4, 12)}
    per_sample = {b: sal.saliency(model, _batches(b), fisher="per_sample") for b in (1, 4, 12)}
    for b in (4, 12):
        assert not torch.allclose(batch[b]["conv"], batch[1]["conv"], rtol=1e-2)
        assert all(torch.allclose(per_sample[b][n], per_sample[1][n], rtol=1e-4, atol=1e-12) for n in ("conv", "fc"))
    assert all(torch.allclose(batch[1][n], per_sample[4][n], rtol=1e-4, atol=1e-12) for n in ("conv", "fc"))
    # the batch-level one is about 1/B of the empirical Fisher (cross terms aside): it shrinks with B
    assert float(batch[12]["conv"].sum()) < float(batch[4]["conv"].sum()) < float(batch[1]["conv"].sum())


def test_flag_and_setting():
    parser = argparse.ArgumentParser()
    add_scoring_args(parser)
    assert scoring_settings(parser.parse_args([])).fisher == "batch"  # the original's
    assert scoring_settings(parser.parse_args(["--fisher", "per_sample"])).fisher == "per_sample"
    with pytest.raises(UsageError, match="fisher estimator"):
        sal.saliency(_model(False), _batches(N), fisher="exact")


def test_the_fisher_benchmark_compares_the_two_top_k_sets(tmp_path, monkeypatch):
    from benchmarks import bench_fisher, common
    from tests.conftest import save_dense_and_sparse

    monkeypatch.setattr(common, "ROOT", tmp_path)
    dense, _ = save_dense_and_sparse(tmp_path, 0.5)
    assert bench_fisher.main(["--dense", str(dense), "--dataset", "synthetic", "--batches", "1", "--batch_size", "8",
                              "--sparsity", "0.9"]) == 0
    result = json.loads((tmp_path / "benchmarks" / "results" / "bench_fisher.json").read_text())
    assert 0 <= result["top_k_overlap"] <= 1 and -1 <= result["kendall_tau_all_pruned"] <= 1
    split = result["per_layer_top_k"]
    assert sum(split["batch"]) == sum(split["per_sample"]) == result["k"]


def test_the_fisher_benchmark_scores_both_estimates_on_the_same_batches(tmp_path, monkeypatch):
    from benchmarks import bench_fisher, common
    from tests.conftest import save_dense_and_sparse

    monkeypatch.setattr(common, "ROOT", tmp_path)
    real = bench_fisher.saliency
    monkeypatch.setattr(bench_fisher, "saliency", lambda *a, **kw: real(*a, **{**kw, "fisher": "batch"}))
    dense, _ = save_dense_and_sparse(tmp_path, 0.5)
    assert bench_fisher.main(["--dense", str(dense), "--dataset", "synthetic", "--batches", "2", "--batch_size", "8",
                              "--sparsity", "0.9"]) == 0
    result = json.loads((tmp_path / "benchmarks" / "results" / "bench_fisher.json").read_text())
    assert result["top_k_overlap"] == 1.0  # one estimator twice: the same batches give the same scores

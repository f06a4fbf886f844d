"""Layer similarity: the SSIM reference, identical models, a damaged layer, hooks always removed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from data import DataSettings, get_data
from models import create_model
from utils.scoring.ssim import attention_maps, cosine, layer_similarity, map_similarity, recording, select_layers
from utils.sparsity.masks import prunable_modules

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def val_loader():
    return get_data("synthetic", DataSettings(".", eval_batch_size=50), device=CPU).val


@pytest.mark.parametrize("size", [(3, 3), (4, 4), (5, 9), (8, 8), (16, 16), (32, 32)])
def test_ssim_equals_skimage(size):
    gen = np.random.default_rng(sum(size))
    for _ in range(5):
        a = gen.random(size)
        b = np.clip(a + 0.3 * gen.standard_normal(size), 0, 1)
        w = min(7, *size)
        w -= w % 2 == 0
        ref = structural_similarity(a, b, data_range=1.0, win_size=w, use_sample_covariance=False)
        assert map_similarity(torch.tensor(a), torch.tensor(b)) == pytest.approx(ref, abs=1e-4)


def test_small_maps_and_vectors_use_cosine():
    a, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert map_similarity(a, b) == pytest.approx(1 / math.sqrt(2))
    assert map_similarity(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])) == pytest.approx(-1.0)
    assert cosine(torch.zeros(3), torch.ones(3)) == 0.0


def test_identical_models_score_one(val_loader):
    torch.manual_seed(0)
    model = create_model("resnet20")
    twin = create_model("resnet20")
    twin.load_state_dict(model.state_dict())
    scores = layer_similarity(model, twin, val_loader, num_batches=2)
    assert list(scores) == list(prunable_modules(model))
    assert all(s == pytest.approx(1.0, abs=1e-6) for s in scores.values())


def test_damaged_layer_scores_lowest(val_loader):
    torch.manual_seed(0)
    dense = create_model("resnet20").eval()
    sparse = create_model("resnet20").eval()
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        sparse.layer2[1].conv1.weight.zero_()  # its output is all zeros now
    scores = layer_similarity(dense, sparse, val_loader, num_batches=2)
    damaged = scores["layer2.1.conv1"]
    untouched = [s for name, s in scores.items() if name.startswith("layer1")]
    assert damaged < min(untouched) and min(untouched) == pytest.approx(1.0, abs=1e-6)
    assert select_layers(scores, threshold=0.3)[0] == "layer2.1.conv1"


def test_selection_order_threshold_and_fallback():
    scores = {"a": 0.5, "b": 0.1, "c": 0.3, "d": math.nan}
    assert select_layers(scores, 0.3) == ["b", "c"]  # <= threshold, ascending
    assert select_layers(scores, 0.05) == ["b"]  # fallback: the lowest
    assert select_layers(scores, 1.0) == ["b", "c", "a"]


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_removed_after_success_and_error(val_loader):
    model = create_model("resnet20")
    attention_maps([model], val_loader, num_batches=1)
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with recording(model, list(prunable_modules(model))):
            assert _hook_count(model) == 22
            raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_maps_are_normalised_and_unused_layers_are_nan(val_loader):
    model = create_model("effnet")
    (maps,) = attention_maps([model], val_loader, num_batches=1)
    assert "layers.0.conv1" not in maps  # never runs in forward
    conv = maps["conv1"]
    # min-max with the spec's +1e-8 in the denominator: [0, ~1]
    assert conv.shape == (32, 32) and float(conv.min()) == 0.0 and float(conv.max()) == pytest.approx(1, abs=1e-4)
    assert maps["linear"].shape == (10,)
    twin = create_model("effnet")
    twin.load_state_dict(model.state_dict())
    assert math.isnan(layer_similarity(model, twin, val_loader, num_batches=1)["layers.0.conv1"])

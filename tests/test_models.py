"""Every registered model builds, forwards and has the original repository's exact parameter count."""
from __future__ import annotations

import pytest
import torch

from models import create_model, list_models, model_spec
from utils.core.errors import UsageError
from utils.sparsity.masks import prunable_modules

EXPECTED_PARAMS = {
    "resnet20": 272_474, "resnet32": 466_906, "resnet44": 661_338, "resnet56": 855_770,
    "vgg16": 14_728_266, "alexnet": 2_261_834, "effnet": 3_599_686, "resnet18": 11_173_962,
    "vgg16TinyImageNet": 14_825_736, "effnetTinyImageNet": 3_660_676,
}


def test_registry_has_exactly_the_zoo():
    assert sorted(list_models()) == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_builds_forwards_with_exact_param_count(name):
    model = create_model(name).eval()
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    size = model_spec(name).input_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, model_spec(name).num_classes)
    assert torch.isfinite(out).all()


def test_original_module_names():
    vgg = prunable_modules(create_model("vgg16"))
    assert list(vgg) == [f"features.{i}" for i in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)] + ["classifier"]
    resnet = prunable_modules(create_model("resnet20"))
    assert len(resnet) == 22 and "layer2.0.shortcut.0" in resnet and "linear" in resnet
    assert sum(m.weight.numel() for m in resnet.values()) == 270_896
    alex = prunable_modules(create_model("alexnet"))
    assert list(alex) == ["features.0", "features.3", "features.6", "features.8", "features.10", "classifier.1"]
    eff = prunable_modules(create_model("effnet"))
    assert len(eff) == 82 and "layers.0.conv1" in eff and "layers.0.se.se1" in eff


def test_num_classes_override_and_aliases():
    assert create_model("resnet20", num_classes=3)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert model_spec("VGGTinyImageNet").name == "vgg16TinyImageNet"
    assert model_spec("EfficientNetB0TinyImageNet").name == "effnetTinyImageNet"


def test_unknown_model_lists_names():
    with pytest.raises(UsageError, match="unknown model 'resnet21'.*resnet20.*vgg16"):
        create_model("resnet21")


def test_effnet_block0_expansion_is_unused():
    model = create_model("effnet")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.layers[0].conv1.weight.grad is None
    assert model.layers[1].conv1.weight.grad is not None

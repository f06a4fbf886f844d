"""Checkpoint round trips and every original-repo format the reader accepts."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.utils.prune as prune

from models import create_model
from utils.core.errors import UsageError
from utils.runtime.checkpoint import load_weights, read_checkpoint, save_checkpoint
from utils.sparsity.masks import add_reparam, get_masks, sparsity

X = torch.randn(4, 3, 32, 32)


def _outputs(model):
    with torch.no_grad():
        return model.eval()(X)


def _pruned_resnet20(amount=0.5):
    torch.manual_seed(0)
    model = create_model("resnet20")
    add_reparam(model)
    for module in (model.conv1, model.layer1[0].conv1, model.linear):
        prune.l1_unstructured(module, "weight", amount)
    return model


def test_round_trip_dense(tmp_path):
    model = create_model("resnet20")
    path = tmp_path / "a" / "ckpt.pth"
    save_checkpoint(path, model, model_name="resnet20", dataset="cifar10", num_classes=10,
                    meta={"stage": "pretrain", "val_acc": 12.5, "args": {"path": tmp_path, "x": (1, 2)}})
    ckpt = read_checkpoint(path)
    assert ckpt.source == "bridge-ckpt" and ckpt.model == "resnet20" and ckpt.meta["val_acc"] == 12.5
    assert ckpt.meta["args"] == {"path": str(tmp_path), "x": [1, 2]} and ckpt.meta["torch"]
    fresh = create_model("resnet20")
    load_weights(fresh, ckpt, "resnet20")
    assert torch.equal(_outputs(fresh), _outputs(model))
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temp file left


def test_round_trip_masks_stored_as_bool(tmp_path):
    model = _pruned_resnet20()
    path = tmp_path / "sparse.pth"
    save_checkpoint(path, model, model_name="resnet20", dataset="cifar10", num_classes=10, meta={})
    ckpt = read_checkpoint(path)
    assert ckpt.has_masks and ckpt.state_dict["conv1.weight_mask"].dtype == torch.bool
    fresh = create_model("resnet20")
    load_weights(fresh, ckpt, "resnet20")
    assert sparsity(fresh) == pytest.approx(sparsity(model)) and sparsity(model) > 0
    assert all(torch.equal(a, b) for a, b in zip(get_masks(fresh).values(), get_masks(model).values(), strict=True))
    assert torch.allclose(_outputs(fresh), _outputs(model))


def test_dense_weights_load_into_masked_model():
    dense = create_model("resnet20")
    target = create_model("resnet20")
    add_reparam(target)
    ckpt = read_checkpoint_from_obj(dense.state_dict())
    load_weights(target, ckpt, "resnet20")
    assert sparsity(target) == 0 and torch.allclose(_outputs(target), _outputs(dense))


def test_merged_plain_checkpoint_keeps_its_sparsity():
    """The original test scripts merge orig * mask into plain weights; the zeros must read as pruned."""
    sparse = _pruned_resnet20(0.7)
    merged = {k.replace("_orig", ""): v * sparse.state_dict()[k.replace("_orig", "_mask")] if k.endswith("_orig")
              else v for k, v in sparse.state_dict().items() if not k.endswith("_mask")}
    for target in (create_model("resnet20"), _pruned_resnet20(0.0)):
        load_weights(target, read_checkpoint_from_obj(merged), "resnet20")
        add_reparam(target)
        assert sparsity(target) == pytest.approx(sparsity(sparse))
        assert torch.allclose(_outputs(target), _outputs(sparse))


def read_checkpoint_from_obj(obj, tmp=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.pth"
        torch.save(obj, path)
        return read_checkpoint(path)


@pytest.mark.parametrize("fmt", ["net-acc-epoch", "model_state_dict", "raw-plain", "raw-reparam-float-masks",
                                 "dataparallel-prefix"])
def test_original_formats(tmp_path, fmt):
    model = _pruned_resnet20() if fmt == "raw-reparam-float-masks" else create_model("resnet20")
    state = model.state_dict()  # torch's own reparam state dict keeps float masks, as the original saved
    obj = {"net-acc-epoch": {"net": state, "acc": 91.5, "epoch": 17},
           "model_state_dict": {"model_state_dict": state, "epoch": 3, "reward": 0.01, "accuracy": 90.0},
           "raw-plain": state, "raw-reparam-float-masks": state,
           "dataparallel-prefix": {f"module.{k}": v for k, v in state.items()}}[fmt]
    torch.save(obj, tmp_path / "old.pth")
    ckpt = read_checkpoint(tmp_path / "old.pth")
    fresh = create_model("resnet20")
    load_weights(fresh, ckpt, "resnet20")
    assert torch.allclose(_outputs(fresh), _outputs(model))
    assert sparsity(fresh) == pytest.approx(sparsity(model))
    if fmt == "net-acc-epoch":
        assert ckpt.source == "original-pretrain" and ckpt.meta == {"val_acc": 91.5, "epoch": 17}


def test_pickled_module_needs_trust(tmp_path):
    model = _pruned_resnet20()
    torch.save(model, tmp_path / "module.pth")
    with pytest.raises(UsageError, match="--trust_pickle"):
        read_checkpoint(tmp_path / "module.pth")
    ckpt = read_checkpoint(tmp_path / "module.pth", trust_pickle=True)
    fresh = create_model("resnet20")
    load_weights(fresh, ckpt, "resnet20")
    assert ckpt.source == "pickled-module" and torch.allclose(_outputs(fresh), _outputs(model))


def test_wrong_model_is_usage_error(tmp_path):
    vgg = create_model("vgg16")
    save_checkpoint(tmp_path / "vgg.pth", vgg, model_name="vgg16", dataset="cifar10", num_classes=10, meta={})
    with pytest.raises(UsageError, match="holds a 'vgg16' model.*--m_name vgg16"):
        load_weights(create_model("resnet20"), read_checkpoint(tmp_path / "vgg.pth"), "resnet20")
    torch.save(create_model("alexnet").state_dict(), tmp_path / "raw.pth")
    with pytest.raises(UsageError, match="does not fit model 'resnet20'"):
        load_weights(create_model("resnet20"), read_checkpoint(tmp_path / "raw.pth"), "resnet20")


@pytest.mark.parametrize("content,match", [(b"not a checkpoint", "damaged or not a torch checkpoint"),
                                           (None, "does not exist")])
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "bad.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=match):
        read_checkpoint(path)


def test_truncated_and_unknown_layout(tmp_path):
    save_checkpoint(tmp_path / "ok.pth", create_model("resnet20"), model_name="resnet20", dataset="cifar10",
                    num_classes=10, meta={})
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="damaged"):
        read_checkpoint(tmp_path / "cut.pth")
    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pth")
    with pytest.raises(UsageError, match="unrecognised checkpoint layout.*weights"):
        read_checkpoint(tmp_path / "odd.pth")


def _saved(tmp_path):
    path = tmp_path / "m.pth"
    save_checkpoint(path, _pruned_resnet20(0.9), model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    return path


def test_a_damaged_checkpoint_of_the_right_size_is_refused(tmp_path):
    path = _saved(tmp_path)
    ckpt = read_checkpoint(path)  # intact: read, and it records its checksum
    assert ckpt.meta["checksum"]
    # flip the bytes of one tensor's storage in the file (the zip holds each tensor as a stored record)
    data = bytearray(path.read_bytes())
    weight = ckpt.state_dict["linear.weight_orig"].numpy().tobytes()
    at = data.find(weight[:64])
    assert at > 0
    data[at:at + 256] = bytes(b ^ 0xFF for b in data[at:at + 256])
    path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="damaged: its content does not match the checksum"):
        read_checkpoint(path)


@pytest.mark.parametrize("edit, message", [
    (lambda obj: obj["state_dict"].__setitem__("linear.bias", torch.full((10,), float("nan"))), "NaN or infinite"),
    (lambda obj: obj.__setitem__("state_dict", list(obj["state_dict"].values())), "'state_dict' is not a"),
    (lambda obj: obj.__setitem__("meta", "oops"), "'meta' is a str"),
    (lambda obj: obj.__setitem__("channel_masks", "oops"), "'channel_masks' is not a"),
    (lambda obj: obj.__setitem__("num_classes", 100), "records 100 classes but its classifier has 10"),
    (lambda obj: obj.__setitem__("model", ["resnet20"]), "its 'model' is"),
    (lambda obj: obj.__setitem__("dataset", 3), "its 'dataset' is"),
    (lambda obj: obj.__setitem__("num_classes", "10"), "its 'num_classes' is"),
])
def test_malformed_checkpoints_are_refused_with_the_reason(tmp_path, edit, message):
    path = _saved(tmp_path)
    obj = torch.load(path, weights_only=True)
    obj["meta"].pop("checksum")  # a hand-edited file with no checksums: the other checks still hold
    obj.pop("sealed"), obj.pop("content_checksum")
    edit(obj)
    torch.save(obj, path)
    with pytest.raises(UsageError, match=message):
        read_checkpoint(path)


def test_a_float_mask_that_is_not_binary_is_refused(tmp_path):
    state = {k: (v.float() * 0.5 if k.endswith("_mask") else v) for k, v in _pruned_resnet20(0.5).state_dict().items()}
    torch.save(state, tmp_path / "raw.pth")  # the original's raw layout, float masks of 0.5
    with pytest.raises(UsageError, match="values other than 0 and 1"):
        read_checkpoint(tmp_path / "raw.pth")


class _Pwned:
    def __reduce__(self):
        return (os.system, ("echo this-must-never-run",))


@pytest.mark.parametrize("trust", [False, True])
def test_a_pickled_call_is_refused_as_code_even_with_trust_pickle(tmp_path, capfd, trust):
    path = tmp_path / "evil.pth"
    torch.save({"net": _Pwned()}, path)
    with pytest.raises(UsageError, match="pickled call to posix.system: loading it would run that code"):
        read_checkpoint(path, trust_pickle=trust)
    assert "this-must-never-run" not in capfd.readouterr().out


def test_a_checkpoint_records_the_commit_it_was_made_with(tmp_path):
    import shutil
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("premise: the code runs from a git checkout with git installed")
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    save_checkpoint(tmp_path / "m.pth", create_model("resnet20"), model_name="resnet20", dataset="synthetic",
                    num_classes=10, meta={})
    recorded = read_checkpoint(tmp_path / "m.pth").meta["git"]
    assert recorded.split("+")[0] == head.strip()[:12]  # "+dirty" when tracked files differ from the commit

"""The notebook API (``bridge.load``, ``bridge.evaluate``): every checkpoint kind, ours and the original repository's,
loads into the model evaluate.py builds, with its masks (whose zeros survive training) and meta; bad input is
one ``UsageError``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bridge
import evaluate
from models import create_model
from tests.conftest import run_main, save_dense_and_sparse
from tests.test_structure_regrowth import _channel_pruned, _original
from utils.core.errors import UsageError
from utils.runtime.checkpoint import load_weights, read_checkpoint, save_checkpoint
from utils.sparsity.granularity import get_granularity
from utils.sparsity.masks import merged_state, prunable_modules
from utils.sparsity.physical import export_model

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
EVAL_ARGS = {"seed": 42, "val_split": 0.1, "eval_subset": 64}  # what the regrown file records as measured on
ORIGINAL = {"net-acc-epoch", "model_state_dict", "raw-reparam", "raw-merged", "pickled-module", "original-structured"}
PICKLED = {"pickled-module", "original-structured"}


def _model_of(path: Path, name: str = "resnet20") -> torch.nn.Module:
    model = create_model(name)
    load_weights(model, read_checkpoint(path), name, path)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """One file of every kind ``load`` takes, all of resnet20: ours (dense, weight-pruned, regrown, channel-pruned,
    exported) and the original repository's layouts."""
    root = tmp_path_factory.mktemp("ckpts")
    dense, weight = save_dense_and_sparse(root / "runs", 0.9)
    out = {"dense": dense, "weight": weight}
    sparse = _model_of(weight)
    gran = get_granularity("weight", "resnet20")
    scores = {name: torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))
              for name, mask in gran.masks(sparse).items()}
    gran.regrow(sparse, {"layer1.0.conv1": 50, "linear": 20}, scores, "kaiming", generator=torch.Generator())
    out["regrown"] = root / "regrown.pth"
    save_checkpoint(out["regrown"], sparse, model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"stage": "regrowth_oneshot", "test_acc": 12.5, "args": EVAL_ARGS})
    out["channel"] = _channel_pruned(root / "channel.pth", 0.5)
    channels = get_granularity("channel", "resnet20")
    masked = _model_of(out["channel"])
    channels.set_masks(masked, read_checkpoint(out["channel"]).channel_masks)
    exported, history = export_model(channels, masked.eval())
    out["exported"] = root / "channel_exported.pth"
    save_checkpoint(out["exported"], exported, model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"stage": "export", "parent": str(out["channel"])}, extra={"export": {"history": history}})
    pruned = _model_of(weight)
    float_masks = {k: v.float() if k.endswith("_mask") else v for k, v in pruned.state_dict().items()}
    for kind, obj in {"net-acc-epoch": {"net": _model_of(dense).state_dict(), "acc": 91.5, "epoch": 17},
                      "model_state_dict": {"model_state_dict": float_masks, "epoch": 3, "accuracy": 90.0},
                      "raw-reparam": float_masks, "raw-merged": merged_state(pruned), "pickled-module": pruned}.items():
        out[kind] = root / f"{kind}.pth"
        torch.save(obj, out[kind])
    out["original-structured"] = _original(root, "resnet20")[2]
    return out


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def _evaluate_py_model(path: Path, kind: str, monkeypatch, capsys) -> torch.nn.Module:
    """The model evaluate.py loads from ``path`` (its accuracy pass replaced by a capture)."""
    seen = []
    monkeypatch.setattr(evaluate, "evaluate_model", lambda model, loader, amp: seen.append(model) or (0.0, 0.0))
    argv = ["--ckpt", str(path), "--device", "cpu", "--dataset", "synthetic", "--json", "--eval_subset", "8"]
    argv += ["--m_name", "resnet20"] if kind in ORIGINAL else []
    argv += ["--trust_pickle"] if kind in PICKLED else []
    code, _, err = run_main(evaluate.main, argv, capsys)
    assert code == 0, err
    return seen[0]


KINDS = ["dense", "weight", "regrown", "channel", "exported", *sorted(ORIGINAL)]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_loads_as_evaluate_py_loads_it(files, kind, monkeypatch, capsys):
    loaded = bridge.load(files[kind], trust_pickle=kind in PICKLED)
    assert not loaded.model.training and loaded.device == torch.device("cpu")
    assert loaded.meta["model"] == "resnet20" and loaded.meta["num_classes"] == 10
    assert torch.equal(_logits(loaded.model), _logits(_evaluate_py_model(files[kind], kind, monkeypatch, capsys)))


@pytest.mark.parametrize("kind,granularity,units,sparsity", [
    ("dense", None, None, 0.0), ("net-acc-epoch", None, None, 0.0), ("exported", None, None, 0.0),
    ("weight", "weight", 22, 0.9), ("model_state_dict", "weight", 22, 0.9), ("raw-reparam", "weight", 22, 0.9),
    ("raw-merged", "weight", 22, 0.9), ("pickled-module", "weight", 22, 0.9), ("channel", "channel", 12, None),
    ("original-structured", "channel", 12, None)])
def test_masks_granularity_and_sparsity(files, kind, granularity, units, sparsity):
    loaded = bridge.load(files[kind], trust_pickle=kind in PICKLED)
    assert loaded.granularity == granularity and loaded.exported == (kind == "exported")
    assert (loaded.masks is None) == (units is None)
    if units is not None:
        assert len(loaded.masks) == units and all(m.dtype == torch.bool for m in loaded.masks.values())
        assert 0 < loaded.unit_sparsity < 1 and 0 < loaded.sparsity < 1
    if sparsity is not None:
        assert loaded.sparsity == pytest.approx(sparsity, abs=1e-4)
    if granularity == "weight":  # one keep-mask per prunable layer, shaped like its weight
        modules = prunable_modules(loaded.model)
        assert all(torch.equal(mask, modules[name].weight_mask.bool()) for name, mask in loaded.masks.items())
        assert loaded.unit_sparsity == loaded.sparsity


def test_channel_masks_are_the_files_own(files):
    loaded = bridge.load(files["channel"])
    stored = read_checkpoint(files["channel"]).channel_masks
    assert loaded.masks.keys() == stored.keys() and all(torch.equal(loaded.masks[k], v) for k, v in stored.items())
    assert loaded.unit_sparsity == pytest.approx(round(0.5 * 448) / 448)


def _pruned_entries_are_zero(model: torch.nn.Module) -> bool:
    """Every masked entry of every reparametrised parameter is exactly zero in the forward pass."""
    checked = 0
    for module in model.modules():
        for key, mask in module.named_buffers(recurse=False):
            if key.endswith("_mask"):
                effective = getattr(module, f"{key[:-len('_mask')]}_orig") * mask
                checked += int((mask == 0).sum())
                if bool(effective[mask == 0].ne(0).any()):
                    return False
    return checked > 0


@pytest.mark.parametrize("kind", ["weight", "regrown", "raw-merged", "channel", "original-structured"])
def test_pruned_weights_stay_zero_through_finetuning(files, kind):
    """The masks are kept as reparametrisation: SGD with momentum and weight decay never brings a pruned weight
    back (a file whose masks were merged into its weights gets them back from its zeros)."""
    loaded = bridge.load(files[kind], trust_pickle=kind in PICKLED)
    model = loaded.model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(X), torch.arange(4)).backward()
        optimizer.step()
    assert _pruned_entries_are_zero(model)
    assert loaded.granularity is not None and loaded.sparsity > 0


def test_meta_of_ours_and_of_the_originals(files):
    ours = bridge.load(files["regrown"])
    assert ours.meta["stage"] == "regrowth_oneshot" and ours.meta["test_acc"] == 12.5
    assert (ours.meta["dataset"], ours.meta["format"]) == ("synthetic", "bridge-ckpt")
    old = bridge.load(files["net-acc-epoch"])
    assert (old.meta["val_acc"], old.meta["epoch"], old.meta["format"]) == (91.5, 17, "original-pretrain")
    assert old.meta["dataset"] == "cifar10"  # records none: the model's own
    exported = bridge.load(files["exported"])
    assert exported.meta["stage"] == "export" and exported.meta["parent"] == str(files["channel"])
    dense_params = sum(p.numel() for p in create_model("resnet20").parameters())
    assert sum(p.numel() for p in exported.model.parameters()) < dense_params


def test_evaluate_matches_evaluate_py(files, capsys):
    """Val and test accuracy on the images the checkpoint records (its seed, val split and eval subset)."""
    loaded = bridge.load(files["regrown"])
    code, out, err = run_main(evaluate.main, ["--ckpt", str(files["regrown"]), "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["test_images"] == EVAL_ARGS["eval_subset"]
    assert bridge.evaluate(loaded) == report["test_acc"]
    assert bridge.evaluate(loaded, split="val") == report["val_acc"]


def test_an_original_file_without_a_name_is_matched_to_its_architecture(tmp_path):
    torch.save({"net": create_model("alexnet").state_dict(), "acc": 50.0, "epoch": 1}, tmp_path / "a.pth")
    assert bridge.load(tmp_path / "a.pth").meta["model"] == "alexnet"
    assert bridge.load(tmp_path / "a.pth", model_name="alexnet").meta["model"] == "alexnet"


def test_loading_leaves_the_callers_random_state(files):
    state = torch.get_rng_state()
    bridge.load(files["dense"])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("case,match", [
    ("missing", "does not exist"), ("folder", "is a folder"), ("unknown-model", "unknown model 'resnet7'"),
    ("other-model", "holds a 'resnet20' model"), ("pickle-untrusted", "trust_pickle"),
    ("no-architecture", "records no model name .* fits no registered model: pass model_name="),
    ("bad-split", "split 'train'")])
def test_bad_input_is_one_usage_error(files, tmp_path, case, match):
    calls = {"missing": lambda: bridge.load(tmp_path / "nope.pth"),
             "folder": lambda: bridge.load(tmp_path),
             "unknown-model": lambda: bridge.load(files["net-acc-epoch"], model_name="resnet7"),
             "other-model": lambda: bridge.load(files["dense"], model_name="vgg16"),
             "pickle-untrusted": lambda: bridge.load(files["pickled-module"]),
             "no-architecture": lambda: bridge.load(_save(tmp_path / "odd.pth", {"fc.weight": torch.ones(2, 3)})),
             "bad-split": lambda: bridge.evaluate(bridge.load(files["dense"]), split="train")}
    with pytest.raises(UsageError, match=match) as info:
        calls[case]()
    assert "\n" not in str(info.value)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path

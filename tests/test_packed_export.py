"""Packed files (utils/device/packed.py, export.py --format): every zoo model reads back as written (fp32 exact,
fp16 and int8 within their rounding, masks exact, pruned weights 0), the file is the storage formula's bytes
plus a header, damaged files and bad flags are one error line, nothing is overwritten, and evaluate.py reads
the file and names the command that writes it."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

import evaluate
import export
import finetune
from models import create_model, list_models, model_spec
from tests.conftest import run_main, tree
from tests.test_structure_regrowth import _channel_pruned
from utils.core.errors import UsageError
from utils.device.packed import (
    FIXED_BYTES,
    PackedInfo,
    load_packed,
    packed_file,
    packed_model,
    parse_packed,
    read_packed,
)
from utils.device.storage import FORMATS, model_bytes
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.sparsity.masks import add_reparam, effective_weight, keep_mask, prunable_modules

INFO = {"dataset": "synthetic", "source": {"checkpoint": "test.pth", "checksum": "0" * 16}}
# each zoo model in an exact format and a rounded one; together they cover every layout and value type
PAIRS = [("bitmap_fp32", "bitmap_int8"), ("csr16_fp32", "csr16_fp16"), ("csr32_fp32", "csr32_int8"),
         ("dense_fp32", "dense_int8"), ("bitmap_fp32", "dense_fp16"), ("csr16_fp32", "csr16_int8")]


def _masked(name: str, keep: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """A zoo model in eval mode with random weight masks keeping ``keep`` of each weight, stale values left in
    ``weight_orig`` at pruned positions, and BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    model = create_model(name).eval()
    add_reparam(model)
    for module in prunable_modules(model).values():
        module.weight_mask.copy_(torch.rand_like(module.weight_mask) < keep)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _pack(model: torch.nn.Module, name: str, storage: str) -> bytes:
    return packed_file(model, storage, PackedInfo(model_spec(name).name, num_classes=model_spec(name).num_classes,
                                                  **INFO))


def _images(name: str) -> torch.Tensor:
    size = model_spec(name).input_size
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _check_weights(model: torch.nn.Module, back: torch.nn.Module, storage: str) -> None:
    """Masks exact (a dense layout: the nonzero values), pruned weights exactly 0, kept ones within the
    format's documented bound."""
    for (name, module), restored in zip(prunable_modules(model).items(), prunable_modules(back).values(), strict=True):
        weight, mask = effective_weight(module).detach(), keep_mask(module)
        got, got_mask = effective_weight(restored).detach(), keep_mask(restored)
        assert torch.equal(got_mask, mask if not storage.startswith("dense") else mask & (got != 0)), name
        assert not ((got != 0) & ~got_mask).any() and not ((restored.weight_orig != 0) & ~got_mask).any(), name
        error, largest = (got - weight).abs(), float(weight.abs().max())
        if storage.endswith("fp32"):
            assert torch.equal(got, weight), name
        elif storage.endswith("fp16"):
            assert (error <= torch.clamp(weight.abs() * 2.0**-11, min=2.0**-25)).all(), name
        else:  # int8: half a quantisation step of the per-tensor scale max|w| / 127
            assert (error <= largest / 254 * (1 + 1e-5)).all(), name
            assert error.max() > 0 or largest == 0, name  # it really was quantised


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_reads_back_as_written(name):
    model = _masked(name)
    for storage in PAIRS[list_models().index(name) % len(PAIRS)]:
        data = _pack(model, name, storage)
        packed = parse_packed(data)
        assert len(data) == model_bytes(model, storage) + packed.header_bytes  # formula + header, exactly
        back = packed_model(packed)
        _check_weights(model, back, storage)
        restored_state = back.state_dict()
        for key, value in model.state_dict().items():  # BatchNorm and biases: fp32, exact
            if not key.endswith(("weight_orig", "weight_mask")):
                assert torch.equal(restored_state[key], value), key
        with torch.no_grad():
            logits, restored = model(_images(name)), back(_images(name))
        if storage.endswith("fp32"):  # the same effective weights: the same logits
            assert torch.allclose(restored, logits, rtol=0, atol=1e-6 * max(1.0, float(logits.abs().max())))
        else:
            assert torch.isfinite(restored).all()


def test_every_format_is_the_formula_plus_a_header_and_the_header_describes_the_payload(tmp_path):
    model = _masked("resnet20")
    for storage in FORMATS:
        data = _pack(model, "resnet20", storage)
        (tmp_path / f"m.{storage}.bsparse").write_bytes(data)
        packed = read_packed(tmp_path / f"m.{storage}.bsparse")
        header = packed.header
        size = struct.unpack("<I", data[8:12])[0]
        assert packed.header_bytes == FIXED_BYTES + size and packed.payload_bytes == model_bytes(model, storage)
        assert (tmp_path / f"m.{storage}.bsparse").stat().st_size == model_bytes(model, storage) + FIXED_BYTES + size
        rows = [dict(zip(header["columns"], row, strict=True)) for row in header["tensors"]]
        weights = {row["name"]: row for row in rows if row["kept"] is not None}
        assert list(weights) == [f"{n}.weight" for n in prunable_modules(model)]
        assert all(row["dtype"] == storage.split("_")[1] for row in weights.values())
        assert weights["conv1.weight"]["kept"] == int(model.conv1.weight_mask.sum())
        assert all(row["dtype"] == "fp32" and row["layout"] == "dense" for row in rows if row["kept"] is None)
        assert (header["format"], header["version"], header["storage"], header["model"], header["num_classes"],
                header["masked"]) == ("bridge-packed", 1, storage, "resnet20", 10, True)
        _check_weights(model, packed_model(packed), storage)


def test_a_dense_model_reads_back_without_masks_and_the_int8_scale_is_per_tensor():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    model.conv1.weight.data[0] = 100.0  # one tensor's scale is large; the others must not share it
    back = packed_model(parse_packed(_pack(model, "resnet20", "bitmap_int8")))
    assert not any(hasattr(m, "weight_mask") for m in back.modules())
    weight = model.layer1[0].conv1.weight
    assert (back.layer1[0].conv1.weight - weight).abs().max() <= weight.abs().max() / 254 * (1 + 1e-5)


def test_packing_refuses_an_unknown_format_and_a_weight_beyond_fp16s_range():
    model = create_model("resnet20")
    with pytest.raises(UsageError, match="unknown storage format 'bitmap_int4'"):
        _pack(model, "resnet20", "bitmap_int4")
    model.linear.weight.data[0, 0] = 1e5
    with pytest.raises(UsageError, match="linear holds a value of magnitude 1e.05, beyond fp16"):
        _pack(model, "resnet20", "bitmap_fp16")
    assert len(_pack(model, "resnet20", "bitmap_int8")) > 0


def _write(tmp_path: Path, storage: str = "csr16_int8") -> tuple[Path, bytes]:
    data = _pack(_masked("resnet20"), "resnet20", storage)
    path = tmp_path / "m.bsparse"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("damage", ["truncated", "payload byte", "header byte", "no magic", "empty", "short"])
def test_a_damaged_file_is_one_error(tmp_path, damage):
    path, data = _write(tmp_path)
    cut = FIXED_BYTES + 100
    damaged = {"truncated": data[:-7], "payload byte": data[:-50] + bytes([data[-50] ^ 1]) + data[-49:],
               "header byte": data[:cut] + bytes([data[cut] ^ 4]) + data[cut + 1:], "no magic": b"PK" + data[2:],
               "empty": b"", "short": data[:20]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(UsageError, match="damaged or not a packed file"):
        read_packed(path)


def test_a_header_that_does_not_describe_its_payload_is_refused_even_with_a_matching_checksum(tmp_path):
    path, data = _write(tmp_path)
    size = struct.unpack("<I", data[8:12])[0]
    header = json.loads(data[FIXED_BYTES:FIXED_BYTES + size])
    header["tensors"][-1][5] += 1  # the classifier's bytes
    text = json.dumps(header).encode()
    payload = data[FIXED_BYTES + size:]
    path.write_bytes(data[:8] + struct.pack("<I", len(text)) + hashlib.sha256(text + payload).digest() + text
                     + payload)
    with pytest.raises(UsageError, match="do not tile"):
        read_packed(path)


# ---- the scripts --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sparse_ckpt(tmp_path_factory) -> Path:
    """A 90% LAMP-pruned (untrained) resnet20 checkpoint on synthetic data, written as the stages write theirs."""
    path = tmp_path_factory.mktemp("ckpt") / "resnet20_0.9000.pth"
    torch.manual_seed(0)
    model = create_model("resnet20")
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)
    save_checkpoint(path, model, model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"args": {"seed": 42, "val_split": 0.1}})
    return path


EXPORT_FAST = ["--device", "cpu", "--batch_sizes", "1", "--repeats", "1"]
EVAL_FAST = ["--eval_subset", "100", "--device", "cpu", "--json"]


def test_export_format_bitmap_int8_writes_the_formula_plus_a_header_and_evaluate_reads_it(sparse_ckpt, capsys):
    code, out, err = run_main(export.main, ["--ckpt", str(sparse_ckpt), "--format", "bitmap_int8", "--json",
                                            *EXPORT_FAST], capsys)
    assert code == 0, err
    packed = json.loads(out)["packed"]
    path = sparse_ckpt.with_name("resnet20_0.9000_bitmap_int8.bsparse")
    assert packed["path"] == str(path) and packed["storage"] == "bitmap_int8"
    masked = load_packed(path)
    assert packed["formula_bytes"] == model_bytes(masked, "bitmap_int8")
    assert path.stat().st_size == packed["bytes"] == packed["formula_bytes"] + packed["header_bytes"]
    header = read_packed(path).header
    source = read_checkpoint(sparse_ckpt)
    assert header["source"] == {"checkpoint": str(sparse_ckpt), "checksum": source.meta["checksum"]}
    assert (header["model"], header["dataset"], header["num_classes"]) == ("resnet20", "synthetic", 10)

    code, out, err = run_main(evaluate.main, ["--ckpt", str(path), *EVAL_FAST], capsys)
    assert code == 0, err
    from_file = json.loads(out)
    code, out, _ = run_main(evaluate.main, ["--ckpt", str(sparse_ckpt), *EVAL_FAST], capsys)
    from_ckpt = json.loads(out)
    assert from_file["format"] == "bridge-packed bitmap_int8"
    assert from_file["sparsity"] == from_ckpt["sparsity"] and from_file["seed"] == 42  # masks from the bitmap
    assert abs(from_file["val_acc"] - from_ckpt["val_acc"]) <= 5  # int8 may flip a few of 100 images


def test_export_format_text_prints_the_sizes_and_a_channel_checkpoint_packs_its_export(tmp_path, capsys):
    ckpt = _channel_pruned(tmp_path / "ch.pth", 0.5)
    code, out, err = run_main(export.main, ["--ckpt", str(ckpt), "--format", "csr16_fp32", *EXPORT_FAST], capsys)
    assert code == 0, err
    assert tree(tmp_path) == ["ch.pth", "ch_exported.pth", "ch_exported_csr16_fp32.bsparse"]
    assert "packed file" in out and "(its storage formula)" in out and "of header" in out
    exported = read_checkpoint(tmp_path / "ch_exported.pth")
    back = load_packed(tmp_path / "ch_exported_csr16_fp32.bsparse")
    assert {k: tuple(v.shape) for k, v in back.state_dict().items()} == {
        k: tuple(v.shape) for k, v in exported.state_dict.items()}  # the smaller shapes, rebuilt from the history
    code, out, err = run_main(evaluate.main, ["--ckpt", str(tmp_path / "ch_exported_csr16_fp32.bsparse"),
                                              *EVAL_FAST], capsys)
    assert code == 0, err
    code, out2, _ = run_main(evaluate.main, ["--ckpt", str(tmp_path / "ch_exported.pth"), *EVAL_FAST], capsys)
    assert json.loads(out)["test_acc"] == json.loads(out2)["test_acc"]  # fp32: the same model


def test_export_never_overwrites_a_packed_file_without_overwrite(sparse_ckpt, tmp_path, capsys):
    out = tmp_path / "model.bsparse"
    flags = ["--ckpt", str(sparse_ckpt), "--format", "csr16_fp16", "--packed_out", str(out), *EXPORT_FAST]
    assert run_main(export.main, flags, capsys)[0] == 0
    before = out.read_bytes()
    out.write_bytes(b"mine")
    code, _, err = run_main(export.main, flags, capsys)
    assert code == 2 and err.count("error:") == 1 and "--overwrite" in err and out.read_bytes() == b"mine"
    assert run_main(export.main, [*flags, "--overwrite"], capsys)[0] == 0 and out.read_bytes() == before


@pytest.mark.parametrize("case", ["unknown format", "damaged file", "packed file to another stage"])
def test_bad_input_is_one_error_line(sparse_ckpt, tmp_path, capsys, case):
    if case == "unknown format":
        code, _, err = run_main(export.main, ["--ckpt", str(sparse_ckpt), "--format", "bitmap_int4", *EXPORT_FAST],
                                capsys)
        assert "invalid choice" in err and "bitmap_int8" in err
    else:
        path, data = _write(tmp_path)
        if case == "damaged file":
            path.write_bytes(data[: len(data) // 2])
            code, _, err = run_main(evaluate.main, ["--ckpt", str(path), *EVAL_FAST], capsys)
            assert "damaged or not a packed file" in err
        else:
            code, _, err = run_main(finetune.main, ["--ckpt", str(path), "--epochs", "1", "--device", "cpu"], capsys)
            assert "is a packed file" in err and "evaluate.py reads it" in err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err


def test_evaluate_names_the_command_that_writes_the_file_that_fits(sparse_ckpt, capsys):
    flags = ["--ckpt", str(sparse_ckpt), "--eval_subset", "50", "--device", "cpu", "--storage", "csr16_fp16"]
    code, out, err = run_main(evaluate.main, [*flags, "--max_bytes", "200000"], capsys)
    assert code == 0, err
    assert f"python export.py --ckpt {sparse_ckpt} --format csr16_fp16" in out
    code, out, err = run_main(evaluate.main, [*flags, "--max_bytes", "1000", "--json"], capsys)
    assert code == 0 and not json.loads(out)["device"]["fits"] and "packed_by" not in json.loads(out)["device"]

"""ONNX export: every zoo model matches PyTorch under ONNX Runtime; export.py --onnx for dense, weight- and
channel-pruned checkpoints; a file that does not match is never written."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

import evaluate
import export
from models import create_model, list_models, model_spec
from tests.conftest import run_main, tree
from tests.test_structure_regrowth import _channel_pruned
from utils.device import onnx as onnx_export
from utils.device.onnx import TOLERANCE, max_abs_diff, onnx_bytes
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.sparsity.masks import add_reparam

ROOT = Path(__file__).resolve().parents[1]


def _images(size: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_runs_in_onnx_runtime_as_in_pytorch(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)  # masks folded into the weights
    for m in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    size = model_spec(name).input_size
    data = onnx_bytes(model, size)
    assert max_abs_diff(data, model, _images(size)) <= TOLERANCE
    assert max_abs_diff(data, model, _images(size, n=1)) <= TOLERANCE  # the batch axis is dynamic


def _weight_pruned(path, amount: float = 0.9):
    torch.manual_seed(0)
    model = create_model("resnet20")
    add_reparam(model)
    get_pruner("lamp").prune(model, amount)
    save_checkpoint(path, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    return path


def test_export_writes_a_checked_onnx_file_of_a_weight_pruned_checkpoint(tmp_path, capsys):
    ckpt = _weight_pruned(tmp_path / "sparse.pth")
    code, out, err = run_main(export.main, ["--ckpt", str(ckpt), "--onnx", "--device", "cpu", "--json",
                                            "--batch_sizes", "1", "2", "--repeats", "1"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert tree(tmp_path) == ["sparse.onnx", "sparse.pth"]  # no .pth export: weights have no physical one
    onnx_file = report["onnx"]
    assert onnx_file["bytes"] == (tmp_path / "sparse.onnx").stat().st_size and onnx_file["max_abs_diff"] <= TOLERANCE
    assert set(onnx_file["latency_ms"]) == {"1", "2"} and report["models"]["onnx (ORT)"]["latency_ms"]["2"] > 0
    storage = report["storage_bytes"]
    # ONNX stores the zeros: as large as dense fp32 (BatchNorm folded into the convolutions saves a little)
    assert 3 * storage["bitmap_fp16"] < onnx_file["bytes"]
    assert onnx_file["bytes"] == pytest.approx(storage["dense_fp32"], rel=0.05)


def test_export_onnx_of_a_channel_pruned_checkpoint_has_the_exported_shapes(tmp_path, capsys):
    ckpt = _channel_pruned(tmp_path / "ch.pth", 0.5)
    code, out, err = run_main(export.main, ["--ckpt", str(ckpt), "--onnx", "--device", "cpu", "--json",
                                            "--batch_sizes", "1", "--repeats", "1"], capsys)
    assert code == 0, err
    assert tree(tmp_path) == ["ch.pth", "ch_exported.onnx", "ch_exported.pth"]
    exported = read_checkpoint(tmp_path / "ch_exported.pth").state_dict
    conv_shapes = sorted(tuple(v.shape) for k, v in exported.items() if v.dim() == 4)
    graph = onnx.load(str(tmp_path / "ch_exported.onnx")).graph
    onnx_shapes = sorted(tuple(t.dims) for t in graph.initializer if len(t.dims) == 4)
    assert onnx_shapes == conv_shapes  # the smaller model, not the masked full-size one
    report = json.loads(out)
    assert report["models"]["onnx (ORT)"]["params"] == report["models"]["exported"]["params"]


@pytest.mark.parametrize("kind", ["weight", "channel"])
def test_an_onnx_file_that_does_not_match_is_not_written(tmp_path, capsys, monkeypatch, kind):
    path = tmp_path / "sparse.pth"
    ckpt = _weight_pruned(path) if kind == "weight" else _channel_pruned(path, 0.5)
    monkeypatch.setattr(onnx_export, "max_abs_diff", lambda *args: 3e-3)
    code, _, err = run_main(export.main, ["--ckpt", str(ckpt), "--onnx", "--device", "cpu"], capsys)
    assert code == 2 and "error:" in err and "3.00e-03" in err and "not written" in err
    assert tree(tmp_path) == ["sparse.pth"]  # neither the ONNX file nor (channels) the .pth export


def test_a_dense_or_weight_checkpoint_without_onnx_says_what_to_do(tmp_path, capsys):
    ckpt = _weight_pruned(tmp_path / "sparse.pth")
    code, _, err = run_main(export.main, ["--ckpt", str(ckpt), "--device", "cpu"], capsys)
    assert code == 2 and "--onnx writes an ONNX file" in err and tree(tmp_path) == ["sparse.pth"]


def test_evaluate_says_whether_the_onnx_file_fits_the_byte_limit(tmp_path, capsys):
    ckpt = _weight_pruned(tmp_path / "sparse.pth", 0.99)
    flags = ["--ckpt", str(ckpt), "--dataset", "synthetic", "--eval_subset", "100", "--device", "cpu",
             "--device_profile", str(ROOT / "profiles" / "mcu_64kb.json")]
    code, out, err = run_main(evaluate.main, flags + ["--json"], capsys)
    assert code == 0, err
    device = json.loads(out)["device"]
    assert device["limits"]["bytes"]["fits"]  # the packed 99% model fits 64 kB ...
    onnx_fit = device["onnx"]
    assert not onnx_fit["fits"] and onnx_fit["cost"] > 10 * onnx_fit["limit"]  # ... its ONNX file (zeros stored) not
    code, out, _ = run_main(evaluate.main, flags, capsys)
    assert code == 0 and "onnx file" in out and "over" in out
    assert tree(tmp_path) == ["sparse.pth"]  # evaluate writes nothing


def test_onnx_benchmark_compares_runtimes_and_sizes(tmp_path, monkeypatch):
    from benchmarks import bench_onnx, common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    result = bench_onnx.main(["--models", "resnet20", "--sparsities", "0.5", "--batch_sizes", "1", "--repeats", "1"])
    row = result["rows"][0]
    assert set(row["latency_ms"]["1"]) == {"masked", "exported", "onnxruntime"}
    assert row["max_abs_diff"] <= TOLERANCE and row["bitmap_fp16_bytes"] < row["dense_fp32_bytes"]
    assert (tmp_path / "benchmarks" / "results" / "bench_onnx.json").is_file()

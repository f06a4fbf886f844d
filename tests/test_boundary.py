"""Boundary estimates on curves with a known break, the tolerance boundary on an exact correctness table,
storage formulas against hand counts and a real file, device profiles and find_drop_point.py."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import evaluate as evaluate_script
import find_drop_point
from tests.conftest import run_main, save_dense_and_sparse, tree
from utils.core.errors import UsageError
from utils.device.storage import FORMATS, Format, model_bytes, pack_model, weight_bytes
from utils.results.boundary import ESTIMATORS, check_curve, tolerance_boundary
from utils.sparsity.masks import add_reparam, prunable_modules


def _broken_curve(break_at: int, n: int = 16, seed: int = 0) -> tuple[list[float], list[float]]:
    """Sparsity grid 0.50 .. 0.995; accuracy flat (slope -2 pp over the whole grid) up to ``break_at``, then
    falling 8 pp per step; +-0.15 pp noise."""
    s = np.linspace(0.5, 0.995, n)
    a = 80 - 2 * (s - 0.5) - 8 * np.clip(np.arange(n) - break_at, 0, None)
    a += np.random.default_rng(seed).uniform(-0.15, 0.15, n)
    return s.tolist(), a.tolist()


@pytest.mark.parametrize("break_at", [6, 9, 12])
@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_each_method_finds_a_known_break_within_one_step(method, break_at):
    for seed in range(3):
        s, a = _broken_curve(break_at, seed=seed)
        found = ESTIMATORS[method](s, a)
        step = s[1] - s[0]
        assert found is not None and abs(found - s[break_at]) <= step + 1e-9, (method, seed, found, s[break_at])


def test_curve_checks():
    with pytest.raises(UsageError, match="at least 4"):
        check_curve([0.5, 0.6, 0.7], [1, 2, 3])
    with pytest.raises(UsageError, match="not strictly increasing"):
        check_curve([0.5, 0.7, 0.6, 0.8], [1, 2, 3, 4])


def test_tolerance_boundary_and_its_interval_on_an_exact_table():
    n = 1000
    dense = torch.zeros(n, dtype=torch.bool)
    dense[:900] = True  # 90.0%
    points = []
    for acc in (900, 895, 890, 850, 700):  # 90.0, 89.5, 89.0, 85.0, 70.0 %
        row = torch.zeros(n, dtype=torch.bool)
        row[:acc] = True  # nested: every point misses what the dense model misses
        points.append(row)
    s = [0.5, 0.6, 0.7, 0.8, 0.9]
    out = tolerance_boundary(s, torch.stack(points), dense, tolerance=1.0, resamples=300, seed=1)
    assert out["boundary"] == 0.7 and out["accuracy"][2] == pytest.approx(89.0)  # 1.0 pp below: still in
    lo, hi = out["interval"]
    # nested tables: point 0.7 is exactly 1 pp below dense in the full set and in every resample not far from it
    assert 0.6 <= lo <= 0.7 and hi == 0.7
    assert tolerance_boundary(s, torch.stack(points), dense, tolerance=0.4, resamples=0)["boundary"] == 0.5
    assert tolerance_boundary(s, torch.stack(points[3:] * 2)[:4], dense, 1.0, 0)["boundary"] is None


# ---- storage ------------------------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, bias=False)  # 72 weights, 4 rows x 18 columns
        self.bn = nn.BatchNorm2d(4)  # weight, bias, running mean, running var: 16 floats
        self.fc = nn.Linear(4, 3)  # 12 weights (3 x 4) + 3 biases


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    add_reparam(model)
    modules = prunable_modules(model)
    modules["conv"].weight_mask.view(-1)[::3] = 0  # 24 pruned, 48 kept
    modules["fc"].weight_mask[0] = 0  # 4 pruned, 8 kept
    return model


def test_storage_formulas_match_hand_counts():
    model = _tiny()
    dense_rest = 4 * (16 + 3)  # BN tensors and the fc bias, fp32
    assert model_bytes(model, "dense_fp32") == dense_rest + 4 * 72 + 4 * 12
    assert model_bytes(model, "dense_int8") == dense_rest + (72 + 4) + (12 + 4)
    assert model_bytes(model, "bitmap_fp16") == dense_rest + (9 + 2 * 48) + (2 + 2 * 8)
    assert model_bytes(model, "csr16_fp32") == dense_rest + (4 * 5 + 6 * 48) + (4 * 4 + 6 * 8)
    assert model_bytes(model, "csr32_int8") == dense_rest + (4 * 5 + 5 * 48 + 4) + (4 * 4 + 5 * 8 + 4)
    assert weight_bytes(2304, 230, 16, Format.parse("bitmap_fp16")) == 748  # the worked example of the docs


def test_packed_files_have_exactly_the_counted_size(tmp_path):
    model = _tiny()
    for storage in FORMATS:
        path = tmp_path / f"model.{storage}"
        path.write_bytes(pack_model(model, storage))
        assert path.stat().st_size == model_bytes(model, storage), storage
    packed = pack_model(model, "bitmap_fp32")[4 * 19:]  # skip the dense tensors
    bits = np.unpackbits(np.frombuffer(packed[:9], np.uint8), bitorder="little")[:72].astype(bool)
    conv = prunable_modules(model)["conv"]
    assert (bits == conv.weight_mask.bool().reshape(-1).numpy()).all()
    values = np.frombuffer(packed[9:9 + 4 * 48], "<f4")
    assert np.allclose(values, (conv.weight_orig * conv.weight_mask).reshape(-1)[conv.weight_mask.reshape(-1) > 0]
                       .detach().numpy())


# ---- device profiles and the scripts --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    save = tmp_path_factory.mktemp("runs")
    return (save, *save_dense_and_sparse(save, 0.95))


DATA = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--eval_batch_size", "500",
        "--device", "cpu"]


def test_evaluate_says_whether_a_checkpoint_fits(pruned, tmp_path, capsys):
    save, _, sparse = pruned
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"name": "t", "max_bytes": 60000, "storage": "bitmap_int8"}))
    code, out, err = run_main(evaluate_script.main, DATA + ["--ckpt", str(sparse), "--device_profile", str(profile),
                                                            "--json"], capsys)
    assert code == 0, err
    device = json.loads(out)["device"]
    cost = device["limits"]["bytes"]["cost"]
    assert device["fits"] == (cost <= 60000) and device["limits"]["bytes"]["margin"] == pytest.approx(60000 - cost)
    code, out, _ = run_main(evaluate_script.main, DATA + ["--ckpt", str(sparse), "--device_profile", str(profile),
                                                          "--max_bytes", "1000"], capsys)
    assert code == 0 and "DOES NOT FIT" in out and "over" in out


@pytest.mark.parametrize("profile,message", [
    ('{"max_bytes": -5}', "positive finite number"),
    ('{"max_bytes": NaN}', "positive finite number"),  # Python's JSON reader takes NaN and Infinity
    ('{"max_macs": Infinity}', "positive finite number"),
    ("{}", "sets no limit"),
    ('{"max_bytes": 1000, "storage": "zip_fp8"}', "unknown storage format"),
    ("not json", "is not JSON"),
    ('{"name": "x"}', "sets no limit"),
    ('{"max_bytes": 10, "color": "red"}', "unknown entries"),
])
def test_bad_profiles(pruned, tmp_path, capsys, profile, message):
    path = tmp_path / "p.json"
    path.write_text(profile)
    code, _, err = run_main(evaluate_script.main, DATA + ["--ckpt", str(pruned[2]), "--device_profile", str(path)],
                            capsys)
    assert code == 2 and message in err and err.count("error:") == 1


def test_find_drop_point_writes_estimates(pruned, tmp_path, capsys):
    save, dense, _ = pruned
    from models import create_model
    from utils.prune.pruners import get_pruner
    from utils.runtime.checkpoint import read_checkpoint, save_checkpoint

    folder = tmp_path / "run"
    for amount in (0.5, 0.8, 0.9, 0.95, 0.99):
        model = create_model("resnet20")
        model.load_state_dict(read_checkpoint(dense).state_dict)
        add_reparam(model)
        get_pruner("lamp").prune(model, amount)
        save_checkpoint(folder / f"resnet20_{amount:.4f}.pth", model, model_name="resnet20", dataset="synthetic",
                        num_classes=10, meta={})
    args = DATA + ["--model_dir", str(folder), "--save_dir", str(save), "--bootstrap", "50"]
    before = tree(folder)
    code, out, err = run_main(find_drop_point.main, args, capsys)
    assert code == 0, err
    result = json.loads((save / "resnet20" / "boundary" / "run" / "boundary.json").read_text())
    assert set(result["estimates"]) == {"residual", "two_segment", "kneedle", "tolerance"}
    assert [round(p["sparsity"], 2) for p in result["curve"]] == [0.5, 0.8, 0.9, 0.95, 0.99]
    assert (save / "resnet20" / "boundary" / "run" / "boundary.png").is_file() and tree(folder) == before
    assert "tolerance" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for name, value in result["estimates"].items():  # each estimate with its val accuracy, or why there is none
        assert (f"{value:.4f}" in lines[name] and "%" in lines[name]) if value is not None else (
            "none" in lines[name] and ("below the dense" in lines[name] or "no break" in lines[name])
            and "interval" not in lines[name])
    assert f"next: python evaluate.py --ckpt {folder}/resnet20_" in err  # a real file, not a placeholder
    code, _, err = run_main(find_drop_point.main, args, capsys)
    assert code == 2 and "--overwrite" in err
    for bad in (["--model_dir", str(tmp_path / "nothing")], ["--model_dir", str(tmp_path)]):
        (tmp_path / "nothing").mkdir(exist_ok=True)
        code, _, err = run_main(find_drop_point.main, DATA + bad + ["--save_dir", str(save)], capsys)
        assert code == 2 and err.count("error:") == 1
    assert math.isfinite(result["tolerance"]["dense_accuracy"])


def test_find_drop_point_on_a_gradual_folder(pruned, tmp_path, capsys):
    """A gradual run's folder holds one checkpoint per target: with fewer than 4, one error line names the
    command that makes a curve; with 4 targets it is read like a one-shot folder."""
    from models import create_model
    from utils.core.files import write_csv
    from utils.prune.pruners import get_pruner
    from utils.runtime.checkpoint import read_checkpoint, save_checkpoint

    save, dense, _ = pruned
    folder = tmp_path / "runs" / "resnet20" / "gradual"
    rows = []
    for amount in (0.5, 0.8, 0.9, 0.95):
        model = create_model("resnet20")
        model.load_state_dict(read_checkpoint(dense).state_dict)
        add_reparam(model)
        get_pruner("lamp").prune(model, amount)
        name = f"resnet20_{amount:.4f}.pth"
        save_checkpoint(folder / name, model, model_name="resnet20", dataset="synthetic", num_classes=10,
                        meta={"stage": "prune_gradual"})
        rows.append({"step": 1, "amount": amount, "sparsity": amount, "val_acc": 0, "test_acc": 0, "checkpoint": name})
        write_csv(folder / "prune_log.csv", rows)
        args = DATA + ["--model_dir", str(folder), "--save_dir", str(save), "--bootstrap", "0"]
        code, out, err = run_main(find_drop_point.main, args, capsys)
        if len(rows) < 4:
            assert code == 2 and err.count("error:") == 1 and "(gradual pruning: one per target)" in err
            assert (f"make a curve with python prune_unstructure.py --m_name resnet20 --save_dir {tmp_path / 'runs'} "
                    "--mode oneshot --target_sparsity 0.5 0.8") in err
            assert f"--model_dir {folder.parent / 'oneshot'}" in err
    assert code == 0, err
    result = json.loads((save / "resnet20" / "boundary" / "gradual" / "boundary.json").read_text())
    assert [round(p["sparsity"], 2) for p in result["curve"]] == [0.5, 0.8, 0.9, 0.95]


def test_regrowth_fills_the_device_exactly_and_reports_its_margin(pruned, tmp_path, capsys):
    import regrowth_oneshot

    save, _, sparse = pruned
    profile = tmp_path / "mcu.json"
    profile.write_text(json.dumps({"name": "mcu", "max_bytes": 64000, "storage": "bitmap_int8"}))
    args = DATA + ["--save_dir", str(save), "--initial_ckpt", str(sparse), "--device_profile", str(profile),
                   "--num_epochs", "1", "--finetune_epochs", "1", "--ssim_num_batches", "1", "--saliency_batches", "1",
                   "--ssim_threshold", "1.0", "--label", "mcu", "--no_progress"]
    code, _, err = run_main(regrowth_oneshot.main, args, capsys)
    assert code == 0, err
    summary = json.loads((save / "resnet20" / "regrowth_oneshot" / "mcu" / "summary.json").read_text())
    bytes_ = summary["device"]["limits"]["bytes"]
    assert summary["device"]["fits"] and 0 <= bytes_["margin"] < 1  # int8 values: one byte per kept weight
    assert summary["best"]["sparsity"] < 0.95


@pytest.mark.parametrize("profile,message", [
    ({"max_bytes": 1000, "storage": "bitmap_int8"}, "no model can meet"),
    ({"max_bytes": 10 ** 9, "storage": "dense_fp32"}, "keeps every weight"),
    ({"max_macs": 10 ** 6}, "has no max_bytes"),
])
def test_device_regrowth_bad_profiles(pruned, tmp_path, capsys, profile, message):
    import pipeline
    import regrowth_oneshot

    save, _, sparse = pruned
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    before = tree(save)
    code, _, err = run_main(regrowth_oneshot.main, DATA + ["--save_dir", str(save), "--initial_ckpt", str(sparse),
                                                           "--device_profile", str(path)], capsys)
    assert code == 2 and message in err and err.count("error:") == 1 and tree(save) == before
    code, _, err = run_main(pipeline.main, ["--save_dir", str(tmp_path / "p"), "--device", "cpu", "--device_profile",
                                            str(path), "--preset", "smoke"], capsys)
    assert code == 2 and message in err and not (tmp_path / "p").exists()

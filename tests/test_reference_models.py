"""The reference dense models under docs/results/data/dense: each file matches its recorded sha256, loads, and
(with the real CIFAR-10 beside the checkout) evaluate.py reproduces its recorded accuracy; the script that
makes the records."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import evaluate
import pretrain
from benchmarks import reference_dense
from tests.conftest import run_main
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.train import cpu_has_native_bf16

DENSE = Path(__file__).resolve().parents[1] / "docs" / "results" / "data" / "dense"
RECORDS = sorted(DENSE.glob("*.json"))


def test_every_reference_model_has_its_record_and_every_record_its_model():
    models = {p.stem for p in DENSE.glob("*.pth")}
    assert models == {p.stem for p in RECORDS}  # (none yet: the recipe search of results/dense_recipe.md goes on)
    assert all(json.loads(p.read_text())["file"] == f"{p.stem}.pth" for p in RECORDS)


@pytest.mark.parametrize("record", RECORDS, ids=[p.stem for p in RECORDS])
def test_a_reference_model_matches_its_record_and_loads(record):
    entry = json.loads(record.read_text())
    path = record.with_name(entry["file"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    ckpt = read_checkpoint(path)
    assert (ckpt.model, ckpt.dataset, ckpt.meta["stage"]) == (entry["model"], entry["dataset"], "pretrain")
    recorded = entry["recorded"]
    assert (ckpt.meta["val_acc"], ckpt.meta["test_acc"]) == (recorded["val_acc"], recorded["test_acc"])
    for key in ("command", "commit", "torch", "cpu", "threads", "precision", "data", "train_minutes"):
        assert entry[key], key  # where it came from


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("record", RECORDS[:1], ids=[p.stem for p in RECORDS[:1]])
def test_evaluate_reproduces_a_reference_models_test_accuracy(record, real_cifar_dir, capsys):
    entry = json.loads(record.read_text())
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in entry["evaluate"]:
        pytest.skip(f"premise: the record has no {precision} evaluation to compare with")
    code, out, _ = run_main(evaluate.main, ["--ckpt", str(record.with_name(entry["file"])), "--data_dir",
                                            str(real_cifar_dir), "--json", "--device", "cpu", "--eval_subset", "all"],
                            capsys)
    assert code == 0
    report, expected = json.loads(out), entry["evaluate"][precision]
    # the same images; kernels of another CPU or thread count may flip an image or two
    assert report["test_images"] == expected["test_images"] and report["val_images"] == expected["val_images"]
    assert report["test_acc"] == pytest.approx(expected["test_acc"], abs=0.05)
    assert report["val_acc"] == pytest.approx(expected["val_acc"], abs=0.1)


def test_the_reference_maker_records_a_finished_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert pretrain.main(["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "100", "--batch_size",
                          "64", "--device", "cpu", "--no_progress", "--epochs", "1", "--seed", "3", "--save_dir",
                          str(run), "--lr_schedule", "onecycle", "--nesterov"]) == 0
    out = tmp_path / "dense"
    argv = ["--run_dir", str(run), "--data_dir", str(tmp_path), "--out", str(out), "--threads", "1",
            "--data_note", "synthetic"]
    assert reference_dense.main(argv) == 0
    entry = json.loads((out / "resnet20_synthetic_seed3.json").read_text())
    assert entry["sha256"] == hashlib.sha256((out / "resnet20_synthetic_seed3.pth").read_bytes()).hexdigest()
    assert "--lr_schedule onecycle" in entry["command"] and "--nesterov" in entry["command"]
    assert "--save_dir" not in entry["command"] and "--seed 3" in entry["command"]
    summary = json.loads((run / "resnet20" / "checkpoint" / "summary.json").read_text())
    assert entry["epochs"] == 1 and entry["commit"] and entry["threads"] == summary["provenance"]["threads"]
    assert entry["precision"] == summary["provenance"]["precision"] and entry["trained"] == summary["provenance"]
    assert set(entry["evaluate"]) == ({"bf16", "fp32"} if cpu_has_native_bf16() else {"fp32"})
    code, _, err = run_main(reference_dense.main, argv, capsys)  # nothing is replaced without --overwrite
    assert code == 2 and "--overwrite" in err

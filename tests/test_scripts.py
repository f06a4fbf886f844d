"""pretrain.py and evaluate.py end to end on synthetic data, resume, and one-line errors on bad input."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import pretrain
import utils.runtime.stage as stage_module
import utils.runtime.train as train_module
from models import create_model, list_models, model_spec
from tests.conftest import run_main, tree, write_cifar
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.runtime.settings import PRETRAIN_RECIPES

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--dataset", "synthetic", "--train_subset", "256", "--eval_subset", "250", "--batch_size", "64", "--device",
         "cpu", "--no_progress"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A 2-epoch resnet20 pretrain run on synthetic data; returns its save_dir."""
    save = tmp_path_factory.mktemp("runs")
    assert pretrain.main(QUICK + ["--epochs", "2", "--save_dir", str(save)]) == 0
    return save


def test_pretrain_writes_outputs(pretrained):
    out = pretrained / "resnet20" / "checkpoint"
    assert {"ckpt.pth", "last.pth", "pretrain_log.csv", "summary.json", "log.txt"} <= set(tree(out))
    summary = json.loads((out / "summary.json").read_text())
    ckpt = read_checkpoint(out / "ckpt.pth")
    assert ckpt.model == "resnet20" and ckpt.dataset == "synthetic" and ckpt.meta["stage"] == "pretrain"
    assert ckpt.meta["val_acc"] == summary["best_val_acc"] and ckpt.meta["test_acc"] == summary["test_acc"]
    assert len((out / "pretrain_log.csv").read_text().splitlines()) == 3


def test_evaluate_json_matches_training(pretrained, capsys):
    ckpt = pretrained / "resnet20" / "checkpoint" / "ckpt.pth"
    code, out, _ = run_main(evaluate.main, ["--ckpt", str(ckpt), "--json", "--device", "cpu", "--per_layer"], capsys)
    assert code == 0
    report = json.loads(out)  # stdout is exactly one JSON object
    meta = read_checkpoint(ckpt).meta
    assert report["model"] == "resnet20" and report["dataset"] == "synthetic"
    assert report["sparsity"] == 0.0 and report["params_total"] == report["params_nonzero"] == 270_896
    assert report["val_acc"] == pytest.approx(meta["val_acc"]) and report["test_acc"] == pytest.approx(meta["test_acc"])
    assert len(report["layers"]) == 22
    # on the images training measured (its --eval_subset 250) unless asked for all of them
    assert report["val_images"] == report["test_images"] == 250
    code, out, _ = run_main(evaluate.main, ["--ckpt", str(ckpt), "--json", "--device", "cpu", "--eval_subset", "all"],
                            capsys)
    assert code == 0 and (json.loads(out)["val_images"], json.loads(out)["test_images"]) == (1000, 2000)


def test_evaluate_text_on_original_format(tmp_path, capsys):
    model = create_model("resnet20")
    torch.save({"net": model.state_dict(), "acc": 50.0, "epoch": 1}, tmp_path / "old.pth")
    code, out, _ = run_main(evaluate.main, ["--m_name", "resnet20", "--dataset", "synthetic", "--ckpt",
                                            str(tmp_path / "old.pth"), "--device", "cpu"], capsys)
    assert code == 0 and "original-pretrain" in out and "test acc" in out


@pytest.mark.parametrize("recipe", [[], ["--lr_schedule", "onecycle", "--warmup_epochs", "0.5", "--nesterov",
                                         "--label_smoothing", "0.1"]], ids=["cosine", "short-recipe"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, recipe):
    args = QUICK + ["--epochs", "3", "--lr", "0.05", *recipe]
    assert pretrain.main(args + ["--save_dir", str(tmp_path / "a")]) == 0

    real_save = stage_module.save_checkpoint  # every stage saves through Stage.save

    def killed_after_epoch_1(path, model, **kw):
        real_save(path, model, **kw)
        if path.name == "last.pth" and kw["meta"]["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(stage_module, "save_checkpoint", killed_after_epoch_1)
    assert pretrain.main(args + ["--save_dir", str(tmp_path / "b")]) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(stage_module, "save_checkpoint", real_save)
    assert pretrain.main(args + ["--save_dir", str(tmp_path / "b"), "--resume"]) == 0

    logs = [(tmp_path / d / "resnet20/checkpoint/pretrain_log.csv").read_text().splitlines() for d in "ab"]
    strip = [[row.rsplit(",", 1)[0] for row in log] for log in logs]  # drop the seconds column
    assert strip[0] == strip[1]
    a, b = (read_checkpoint(tmp_path / d / "resnet20/checkpoint/last.pth").state_dict for d in "ab")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)



def test_a_resume_in_another_precision_is_said_and_recorded(tmp_path, monkeypatch):
    """A run started where bf16 is native and resumed where it is not (or with other --no_amp) says so in one
    warning and records which epochs ran in which precision; an unchanged precision records one stretch."""
    args = QUICK + ["--epochs", "3", "--save_dir", str(tmp_path)]
    real_save = stage_module.save_checkpoint

    def killed_after_epoch_1(path, model, **kw):
        real_save(path, model, **kw)
        if path.name == "last.pth" and kw["meta"]["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: True)  # the first machine: bf16 (emulated here)
    monkeypatch.setattr(stage_module, "save_checkpoint", killed_after_epoch_1)
    assert pretrain.main(args) == 130
    monkeypatch.setattr(stage_module, "save_checkpoint", real_save)
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)  # the second: fp32
    assert pretrain.main(args + ["--resume"]) == 0
    out = tmp_path / "resnet20" / "checkpoint"
    assert json.loads((out / "summary.json").read_text())["precisions"] == [["bf16", 1], ["fp32", 2]]
    assert "resumed in fp32 at epoch 2 after epoch 1 in bf16" in (out / "log.txt").read_text()

    assert pretrain.main(args + ["--epochs", "4", "--resume"]) == 0  # the same precision again: no new stretch
    assert json.loads((out / "summary.json").read_text())["precisions"] == [["bf16", 1], ["fp32", 2]]


def test_precision_stretches_are_kept_and_a_change_warns():
    assert train_module.continue_precisions([], "fp32", 1) == [["fp32", 1]]
    assert train_module.continue_precisions([["bf16", 1]], "bf16", 5) == [["bf16", 1]]
    assert train_module.continue_precisions([["bf16", 1]], "fp32", 5, "episode") == [["bf16", 1], ["fp32", 5]]


TINY_IMAGENET_MODELS = {name for name in list_models() if model_spec(name).input_size == 64}


@pytest.mark.parametrize("m_name", list_models())
def test_resume_equals_uninterrupted_for_every_model(tmp_path, monkeypatch, m_name):
    """Issue 36 D17: the first save built the granularity (a scratch model) from the global RNG after last.pth
    recorded it, so a model with dropout (alexnet) resumed with other dropout masks. Every zoo model, tiny sizes;
    the 64x64 models on a miniature Tiny-ImageNet folder."""
    from tests.test_data import _write_tiny_imagenet
    from utils.sparsity.granularity import get_granularity

    if m_name in TINY_IMAGENET_MODELS:
        data = ["--dataset", "tiny_imagenet", "--data_dir", str(_write_tiny_imagenet(tmp_path / "d", ["n1", "n2"], 6)),
                "--no_download"]
    else:
        data = ["--dataset", "synthetic"]
    args = data + ["--m_name", m_name, "--train_subset", "8", "--eval_subset", "4", "--batch_size", "4",
                   "--eval_batch_size", "4", "--val_split", "0.2", "--device", "cpu", "--no_progress", "--epochs", "2"]
    real_save = stage_module.save_checkpoint

    def killed_after_epoch_1(path, model, **kw):
        real_save(path, model, **kw)
        if path.name == "last.pth" and kw["meta"]["epoch"] == 1:
            raise KeyboardInterrupt

    def run(save: str, *extra: str) -> int:
        get_granularity.cache_clear()  # each run builds it at its first save, as a fresh process does
        return pretrain.main(args + ["--save_dir", str(tmp_path / save), *extra])

    assert run("a") == 0
    monkeypatch.setattr(stage_module, "save_checkpoint", killed_after_epoch_1)
    assert run("b") == 130
    monkeypatch.setattr(stage_module, "save_checkpoint", real_save)
    assert run("b", "--resume") == 0
    a, b = (read_checkpoint(tmp_path / d / m_name / "checkpoint/last.pth") for d in "ab")
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), m_name
    assert torch.equal(a.extra["train_state"]["torch_rng"], b.extra["train_state"]["torch_rng"])

def test_short_recipe_moves_the_learning_rate_every_step_and_records_the_precision(tmp_path):
    args = QUICK + ["--epochs", "2", "--lr", "0.2", "--lr_schedule", "onecycle", "--warmup_epochs", "1",
                    "--save_dir", str(tmp_path)]
    assert pretrain.main(args) == 0
    out = tmp_path / "resnet20" / "checkpoint"
    rows = (out / "pretrain_log.csv").read_text().splitlines()[1:]
    # 4 steps an epoch (256 / 64): the first epoch starts 1/4 into the warm-up, the second at the peak
    assert [float(r.split(",")[1]) for r in rows] == pytest.approx([0.05, 0.2])
    record = json.loads((out / "summary.json").read_text())["provenance"]
    assert record["precision"] == train_module.precision_name(torch.device("cpu"), True)
    assert record["command"] == shlex.join(["python", "pretrain.py", *args])  # the stage's own command line
    assert record["data"]["name"] == "synthetic" and record["data"]["train"] == 256 and record["threads"] >= 1
    assert read_checkpoint(out / "ckpt.pth").meta["provenance"] == record  # the model says the same
    assert pretrain.main(args + ["--no_amp", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["provenance"]["precision"] == "fp32"


def test_existing_checkpoint_is_not_overwritten(pretrained, capsys):
    ckpt = pretrained / "resnet20" / "checkpoint" / "ckpt.pth"
    before = ckpt.read_bytes()
    code, _, err = run_main(pretrain.main, QUICK + ["--epochs", "1", "--save_dir", str(pretrained)], capsys)
    assert code == 2 and err.startswith("error:") and "--overwrite" in err
    assert ckpt.read_bytes() == before


def _bad_cifar(tmp_path: Path) -> Path:
    root = write_cifar(tmp_path / "cut")
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:300])
    return root


def _vgg_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "vgg.pth"
    save_checkpoint(path, create_model("vgg16"), model_name="vgg16", dataset="synthetic", num_classes=10, meta={})
    return path


BAD_INPUTS = {
    "unknown-model": (pretrain, lambda t: ["--m_name", "resnet21", "--dataset", "synthetic"], "unknown model"),
    "unknown-dataset": (pretrain, lambda t: ["--dataset", "mnist"], "unknown dataset"),
    "data-missing-offline": (pretrain, lambda t: ["--dataset", "cifar10", "--data_dir", str(t / "nodata"),
                                                  "--no_download"], "CIFAR-10 not found"),
    "truncated-batch": (pretrain, lambda t: ["--dataset", "cifar10", "--data_dir", str(_bad_cifar(t))], "damaged"),
    "missing-checkpoint": (evaluate, lambda t: ["--ckpt", str(t / "nope.pth"), "--m_name", "resnet20"],
                           "does not exist"),
    "checkpoint-of-other-model": (evaluate, lambda t: ["--ckpt", str(_vgg_ckpt(t)), "--m_name", "resnet20",
                                                       "--dataset", "synthetic"], "holds a 'vgg16' model"),
    "val-split-1.5": (pretrain, lambda t: ["--dataset", "synthetic", "--val_split", "1.5"], "val_split"),
    "epochs-0": (pretrain, lambda t: ["--dataset", "synthetic", "--epochs", "0"], "--epochs"),
    "model-cannot-take-data": (pretrain, lambda t: ["--m_name", "vgg16TinyImageNet", "--dataset", "synthetic"],
                               "takes 64x64 images"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_error_line_exit_2_no_files(tmp_path, capsys, case):
    script, make_args, needle = BAD_INPUTS[case]
    save = tmp_path / "runs"
    code, out, err = run_main(script.main, make_args(tmp_path) + ["--save_dir", str(save), "--device", "cpu"],
                              capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err and out == ""
    assert tree(save) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_error_line(tmp_path):
    """Run as a real process: exit status 2, one error line, no traceback, nothing written."""
    proc = subprocess.run([sys.executable, "pretrain.py", "--device", "cuda", "--dataset", "synthetic",
                           "--save_dir", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error:")
    assert "CUDA is not available" in proc.stderr and tree(tmp_path / "runs") == []


def test_resuming_a_finished_pretrain_says_so_and_writes_nothing(tmp_path, capsys):
    args = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "100", "--batch_size", "64",
            "--device", "cpu", "--no_progress", "--epochs", "1", "--save_dir", str(tmp_path)]
    assert pretrain.main(args) == 0
    out = tmp_path / "resnet20" / "checkpoint"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_main(pretrain.main, args + ["--resume"], capsys)
    assert code == 2 and "finished (epoch 1)" in err and "larger --epochs" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_evaluate_warns_when_its_seed_carves_another_val_split(tmp_path, capsys):
    args = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "100", "--batch_size", "64",
            "--device", "cpu", "--no_progress", "--epochs", "1", "--save_dir", str(tmp_path)]
    assert pretrain.main(args) == 0
    ckpt = str(tmp_path / "resnet20" / "checkpoint" / "ckpt.pth")
    code, _, err = run_main(evaluate.main, ["--ckpt", ckpt, "--device", "cpu"], capsys)
    assert code == 0 and "another val split" not in err
    code, _, err = run_main(evaluate.main, ["--ckpt", ckpt, "--device", "cpu", "--seed", "3"], capsys)
    assert code == 0 and "--seed 3 carves another val split" in err


def test_a_recipe_sets_defaults_and_a_given_flag_wins():
    args = pretrain.parse_args(["--recipe", "short", "--lr", "0.05"])
    expected = {**PRETRAIN_RECIPES["short"], "lr": 0.05}
    assert {k: getattr(args, k) for k in expected} == expected
    plain = pretrain.parse_args([])  # the original's defaults
    assert (plain.epochs, plain.lr, plain.lr_schedule, plain.nesterov, plain.label_smoothing) == (
        200, 0.1, "cosine", False, 0.0)


def test_the_paper_regime_preset_pretrains_with_the_short_recipe():
    import pipeline

    preset = pipeline.PRESETS["cifar10_resnet20_short"]
    assert preset["pretrain_epochs"] is None  # the recipe's own epochs: written once, in PRETRAIN_RECIPES
    args = pretrain.parse_args(preset["pretrain_flags"])
    assert {k: getattr(args, k) for k in PRETRAIN_RECIPES["short"]} == PRETRAIN_RECIPES["short"]


def test_stages_take_the_data_set_from_the_checkpoint_and_refuse_a_contradicting_flag(pretrained, capsys):
    import prune_unstructure

    # pretrained on synthetic: pruning it without --dataset trains on synthetic, not the model's default CIFAR-10
    args = [a for a in QUICK if a not in ("--dataset", "synthetic")] + ["--save_dir", str(pretrained), "--mode",
                                                                        "oneshot", "--target_sparsity", "0.5",
                                                                        "--finetune_epochs", "1"]
    assert prune_unstructure.main(args) == 0
    pruned = read_checkpoint(pretrained / "resnet20" / "oneshot" / "resnet20_0.5000.pth")
    assert pruned.dataset == "synthetic"
    ckpt = pretrained / "resnet20" / "checkpoint" / "ckpt.pth"
    for main, argv in ((prune_unstructure.main, args[:-6] + ["--mode", "oneshot", "--target_sparsity", "0.6"]),
                       (evaluate.main, ["--ckpt", str(ckpt)])):
        code, _, err = run_main(main, argv + ["--dataset", "cifar10"], capsys)
        assert code == 2 and err.count("error:") == 1 and "trained on synthetic" in err


@pytest.mark.parametrize("extra, message", [
    (["--warmup_epochs", "1"], "per-step schedules"),  # the per-epoch cosine has no warm-up: not silently ignored
    (["--lr_schedule", "onecycle", "--warmup_epochs", "2"], "never decay"),
    (["--momentum", "1"], "--momentum"),
    (["--nesterov", "--momentum", "0"], "--nesterov"),
])
def test_schedule_flags_that_would_be_ignored_are_refused(tmp_path, capsys, extra, message):
    code, _, err = run_main(pretrain.main, QUICK + ["--epochs", "2", "--save_dir", str(tmp_path), *extra], capsys)
    assert code == 2 and err.count("error:") == 1 and message in err and tree(tmp_path) == []

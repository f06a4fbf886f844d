"""prune_unstructure.py end to end on synthetic data: outputs, log vs checkpoints, resume, formats, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune

import evaluate
import prune_unstructure
from models import create_model
from tests.conftest import run_main, stop_after_points, tree
from utils.core.files import read_csv
from utils.prune.loop import PruneRun
from utils.runtime.checkpoint import load_weights, read_checkpoint, save_checkpoint
from utils.sparsity.masks import add_reparam, get_masks, layer_counts, sparsity

QUICK = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64",
         "--finetune_epochs", "1", "--device", "cpu", "--no_progress"]


def _save_dense(save_dir: Path, model_name: str = "resnet20", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    path = save_dir / model_name / "checkpoint" / "ckpt.pth"
    save_checkpoint(path, create_model(model_name), model_name=model_name, dataset="synthetic", num_classes=10,
                    meta={"stage": "pretrain"})
    return path


def _load(path: Path):
    model = create_model("resnet20")
    load_weights(model, read_checkpoint(path), "resnet20", path)
    return model


@pytest.fixture(scope="module")
def iterative_run(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("runs")
    _save_dense(save)
    assert prune_unstructure.main(QUICK + ["--save_dir", str(save), "--iter_end", "2", "--pruner", "glob"]) == 0
    return save / "resnet20" / "iterative"


def test_iterative_outputs_and_log_match_checkpoints(iterative_run):
    files = set(tree(iterative_run))
    assert {"prune_log.csv", "sparsity_vs_accuracy.png", "log.txt", "resnet20_0.3000.pth",
            "resnet20_0.5100.pth"} <= files
    rows = read_csv(iterative_run / "prune_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    for row in rows:
        model = _load(iterative_run / row["checkpoint"])
        assert float(row["sparsity"]) == pytest.approx(sparsity(model), abs=1e-12)
        assert int(row["params_nonzero"]) == sum(c.kept for c in layer_counts(model))
        meta = read_checkpoint(iterative_run / row["checkpoint"]).meta
        assert meta["val_acc"] == pytest.approx(float(row["val_acc"]))
        assert meta["test_acc"] == pytest.approx(float(row["test_acc"]))
    assert float(rows[1]["sparsity"]) == pytest.approx(1 - 0.7 ** 2, abs=1e-5)


def test_masks_monotone_and_pruned_weights_zero(iterative_run):
    first, second = (_load(iterative_run / f"resnet20_{s}.pth") for s in ("0.3000", "0.5100"))
    m1, m2 = get_masks(first), get_masks(second)
    assert all(torch.all(m2[k] <= m1[k]) for k in m1)
    state = read_checkpoint(iterative_run / "resnet20_0.5100.pth").state_dict
    for key in (k for k in state if k.endswith("weight_mask")):
        assert state[key].dtype == torch.bool
        weight = state[key.replace("_mask", "_orig")] * state[key]
        assert torch.all(weight[~state[key]] == 0)


def test_continue_from_iteration(iterative_run, capsys):
    save = str(iterative_run.parents[1])
    assert prune_unstructure.main(QUICK + ["--save_dir", save, "--iter_start", "3", "--iter_end", "3",
                                           "--pruner", "glob"]) == 0
    rows = read_csv(iterative_run / "prune_log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    meta = read_checkpoint(iterative_run / rows[2]["checkpoint"]).meta
    assert meta["parent"].endswith("resnet20_0.5100.pth") and meta["step"] == 3
    code, _, err = run_main(prune_unstructure.main, QUICK + ["--save_dir", save, "--iter_start", "9"], capsys)
    assert code == 2 and "no checkpoint of iteration 8" in err
    # redoing from iteration 2 is refused without --overwrite, and with it replaces the old rows from 2 on
    redo = QUICK + ["--save_dir", save, "--iter_start", "2", "--iter_end", "2", "--pruner", "unif"]
    code, _, err = run_main(prune_unstructure.main, redo, capsys)
    assert code == 2 and "step 2 already ran" in err and "--overwrite" in err
    assert prune_unstructure.main(redo + ["--overwrite"]) == 0
    rows = read_csv(iterative_run / "prune_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert read_checkpoint(iterative_run / rows[1]["checkpoint"]).meta["pruner"] == "unif"
    # --resume from step 3 (step 2 logged, no resume point) runs it, were it not for the old step 3's checkpoint,
    # which the redo left unlogged: neither logged nor resumable, so only --overwrite replaces it
    step3 = QUICK + ["--save_dir", save, "--iter_start", "3", "--iter_end", "3", "--pruner", "glob", "--resume"]
    code, _, err = run_main(prune_unstructure.main, step3, capsys)
    assert code == 2 and "neither logged nor resumable" in err
    (iterative_run / "resnet20_0.6570.pth").unlink()
    assert prune_unstructure.main(step3) == 0
    assert [r["step"] for r in read_csv(iterative_run / "prune_log.csv")] == ["1", "2", "3"]


def test_oneshot_several_targets(tmp_path):
    _save_dense(tmp_path)
    args = QUICK + ["--save_dir", str(tmp_path), "--mode", "oneshot", "--target_sparsity", "0.9", "0.99"]
    assert prune_unstructure.main(args) == 0
    out = tmp_path / "resnet20" / "oneshot"
    rows = read_csv(out / "prune_log.csv")
    assert [r["checkpoint"] for r in rows] == ["resnet20_0.9000.pth", "resnet20_0.9900.pth"]
    for row, target in zip(rows, (0.9, 0.99), strict=True):
        assert sparsity(_load(out / row["checkpoint"])) == pytest.approx(target, abs=1 / 270_896)


def _original_reparam_file(path: Path, amount: float = 0.5) -> Path:
    """A raw state dict as the original repo saved it: *.weight_orig and float *.weight_mask."""
    torch.manual_seed(1)
    model = create_model("resnet20")
    add_reparam(model)
    for module in (m for m in model.modules() if hasattr(m, "weight_mask")):
        prune.l1_unstructured(module, "weight", amount)
    state = model.state_dict()
    assert state["conv1.weight_mask"].dtype == torch.float32
    torch.save(state, path)
    return path


def test_original_reparam_file_loads_evaluates_and_reprunes(tmp_path, capsys):
    old = _original_reparam_file(tmp_path / "iterate_0.5000.pth")
    code, out, _ = run_main(evaluate.main, ["--m_name", "resnet20", "--dataset", "synthetic", "--ckpt", str(old),
                                            "--json", "--device", "cpu"], capsys)
    assert code == 0 and json.loads(out)["sparsity"] == pytest.approx(0.5, abs=1e-4)
    args = QUICK + ["--save_dir", str(tmp_path), "--mode", "oneshot", "--pretrained", str(old),
                    "--target_sparsity", "0.8"]
    assert prune_unstructure.main(args) == 0
    pruned = _load(tmp_path / "resnet20" / "oneshot" / "resnet20_0.8000.pth")
    before = {k: v.bool() for k, v in torch.load(old).items() if k.endswith("weight_mask")}
    after = get_masks(pruned)
    assert all(torch.all(after[k[: -len(".weight_mask")]] <= before[k]) for k in before)


@pytest.mark.parametrize("case", ["not-a-fraction", "not-above-current", "unknown-pruner", "missing-pretrained",
                                  "pretrained-of-other-model"])
def test_bad_inputs(tmp_path, capsys, case):
    save = tmp_path / "runs"
    old = _original_reparam_file(tmp_path / "half.pth")
    other = tmp_path / "other"
    _save_dense(other, "alexnet")
    args = {
        "not-a-fraction": ["--mode", "oneshot", "--target_sparsity", "99"],
        "not-above-current": ["--mode", "oneshot", "--target_sparsity", "0.4", "--pretrained", str(old)],
        "unknown-pruner": ["--pruner", "magnitude"],
        "missing-pretrained": ["--pretrained", str(tmp_path / "none.pth")],
        "pretrained-of-other-model": ["--pretrained", str(other / "alexnet" / "checkpoint" / "ckpt.pth")],
    }[case]
    needle = {"not-a-fraction": "not a fraction", "not-above-current": "not above the sparsity",
              "unknown-pruner": "choose one of: glob, unif, unifplus, lamp, erk, random",
              "missing-pretrained": "does not exist", "pretrained-of-other-model": "holds a 'alexnet' model"}[case]
    code, out, err = run_main(prune_unstructure.main, QUICK + ["--save_dir", str(save)] + args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert tree(save) == []


@pytest.mark.parametrize("mode", [
    ["--mode", "oneshot", "--target_sparsity", "0.5", "0.8", "0.9", "--swap_every", "1", "--pruner", "random"],
    ["--mode", "gradual", "--target_sparsity", "0.8", "--gradual_steps", "4", "--swap_every", "1",
     "--pruner", "random"],
    ["--mode", "iterative", "--iter_end", "2", "--swap_every", "1"]], ids=["oneshot", "gradual", "iterative"])
def test_a_killed_finetune_resumes_exactly(tmp_path, monkeypatch, mode):
    """A run killed inside a finetune (gradual: after epoch 1 of 3, its pruning unfinished; else after epoch 2
    of the second target or step, the random pruner's third target still to come; swaps at every step) and
    continued with --resume ends as the uninterrupted run: the same finetune logs (but their seconds), weights,
    masks and log rows; finished targets or steps are skipped, and no resume point is left. Each restored part
    is needed: leaving out the data order, the swap counters or the gradual pruning's counters fails it."""
    args = [*QUICK, "--finetune_epochs", "3", "--patience", "0", *mode]
    folder = "oneshot" if "oneshot" in mode else mode[1]
    full, cut = (tmp_path / d / "resnet20" / folder for d in "ab")
    _save_dense(tmp_path / "a"), _save_dense(tmp_path / "b")
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "a")]) == 0
    stop_after_points(monkeypatch, 1 if folder == "gradual" else 5)  # gradual: before its last pruning step
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "b")]) == 130
    assert len(list(cut.glob("*.resume.pt"))) == 1
    monkeypatch.undo()
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "b")]) == 2  # a point: --resume or --overwrite
    later = ["--iter_start", "2"] if folder == "iterative" else []  # which steps a run makes may change
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "b"), "--resume", *later]) == 0
    assert not list(cut.glob("*.resume.pt"))
    logs = sorted(p.name for p in full.glob("finetune_*.csv"))
    assert logs == sorted(p.name for p in cut.glob("finetune_*.csv"))
    for name in logs:
        strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in read_csv(d / name)] for d in (full, cut)]
        assert strip[0] == strip[1]
    assert read_csv(full / "prune_log.csv") == read_csv(cut / "prune_log.csv")
    for row in read_csv(full / "prune_log.csv"):
        a, b = (read_checkpoint(d / row["checkpoint"]).state_dict for d in (full, cut))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_between_two_targets_resumes_exactly(tmp_path, monkeypatch):
    """Killed after target 1 was logged, before target 2 wrote any resume point: --resume skips target 1 and
    target 2 starts its streams afresh, as in the uninterrupted run (each step seeds its own)."""
    args = [*QUICK, "--finetune_epochs", "2", "--mode", "oneshot", "--target_sparsity", "0.5", "0.8",
            "--pruner", "random"]
    for d in "ab":
        _save_dense(tmp_path / d)
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "a")]) == 0
    monkeypatch.setattr(PruneRun, "plot", lambda self, title: _stop())  # after target 1's log row
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "b")]) == 130
    monkeypatch.undo()
    cut = tmp_path / "b" / "resnet20" / "oneshot"
    assert len(read_csv(cut / "prune_log.csv")) == 1 and not list(cut.glob("*.resume.pt"))
    assert prune_unstructure.main(args + ["--save_dir", str(tmp_path / "b"), "--resume"]) == 0
    full = tmp_path / "a" / "resnet20" / "oneshot"
    assert read_csv(full / "prune_log.csv") == read_csv(cut / "prune_log.csv")
    a, b = (read_checkpoint(d / "resnet20_0.8000.pth").state_dict for d in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "target 2/2" in (cut / "log.txt").read_text().split("--resume")[-1]  # numbered as in the flag


def _stop():
    raise KeyboardInterrupt


def test_a_point_restores_nothing_across_device_types(tmp_path):
    from types import SimpleNamespace

    from utils.core.errors import UsageError
    from utils.runtime.resume import restore_streams

    loader = SimpleNamespace(device=torch.device("cpu"), generator=torch.Generator())  # what the restore reads
    with pytest.raises(UsageError, match="written on cuda"):
        restore_streams([(loader.generator.get_state(), torch.get_rng_state())], "cuda", loader, tmp_path / "p")


def test_a_resume_with_nothing_to_continue_other_flags_or_a_damaged_point_is_refused(tmp_path, monkeypatch,
                                                                                      capsys):
    _save_dense(tmp_path)
    args = [*QUICK, "--save_dir", str(tmp_path), "--mode", "oneshot", "--target_sparsity", "0.5",
            "--finetune_epochs", "2"]
    code, _, err = run_main(prune_unstructure.main, args + ["--resume"], capsys)
    assert code == 2 and "nothing to continue" in err
    stop_after_points(monkeypatch, 1)
    assert prune_unstructure.main(args) == 130
    monkeypatch.undo()
    code, _, err = run_main(prune_unstructure.main, args + ["--resume", "--lr", "0.001"], capsys)
    assert code == 2 and "--lr" in err
    dense = tmp_path / "resnet20" / "checkpoint" / "ckpt.pth"
    kept = dense.read_bytes()
    _save_dense(tmp_path, seed=1)  # the dense model was retrained in between
    code, _, err = run_main(prune_unstructure.main, args + ["--resume"], capsys)
    assert code == 2 and "changed" in err
    dense.write_bytes(kept)
    point = tmp_path / "resnet20" / "oneshot" / "resnet20_0.5000.resume.pt"
    point.write_bytes(point.read_bytes()[:-100])
    code, _, err = run_main(prune_unstructure.main, args + ["--resume"], capsys)
    assert code == 2 and "damaged" in err
    assert prune_unstructure.main(args + ["--overwrite"]) == 0 and not point.exists()


def test_points_are_written_after_the_first_epoch_then_at_most_once_a_minute(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import utils.runtime.resume as resume_module

    model = torch.nn.Linear(2, 2)
    train = SimpleNamespace(device=torch.device("cpu"), generator=torch.Generator())  # what a point reads of it
    parts = resume_module.FinetuneParts(model, torch.optim.AdamW(model.parameters()), train)
    point = resume_module.ResumePoint(tmp_path / "m.resume.pt")
    clock = [1000.0]
    monkeypatch.setattr(resume_module.time, "monotonic", lambda: clock[0])
    written = []
    monkeypatch.setattr(resume_module, "atomic_save", lambda obj, path: written.append(obj["fit"]["epoch"]))
    for epoch, seconds in enumerate([5, 30, 30, 5, 70], start=1):  # epoch lengths in s
        clock[0] += seconds
        resume_module.write_point(point, parts, {"epoch": epoch}, {})
    assert written == [1, 3, 5]  # 1: the first; 3: 60 s after it; 5: 75 s after 3

"""prune_structure.py and export.py end to end on synthetic data; evaluate/finetune/analyze on structured
checkpoints; the bad inputs of the channel half (one error line, exit 2, nothing written)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import analyze_layers
import evaluate
import export
import finetune
import pretrain
import prune_structure
import prune_unstructure
import regrowth_oneshot
from models import create_model
from tests.conftest import run_main, save_dense_and_sparse, tree
from utils.core.files import read_csv
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.sparsity.granularity import get_granularity

DATA = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64",
        "--eval_batch_size", "250", "--device", "cpu", "--no_progress"]
QUICK = DATA + ["--finetune_epochs", "1"]


def _save_dense(save: Path) -> Path:
    torch.manual_seed(0)
    path = save / "resnet20" / "checkpoint" / "ckpt.pth"
    save_checkpoint(path, create_model("resnet20"), model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"stage": "pretrain"})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A save_dir with a dense resnet20, a 2-step iterative and a one-shot structured run."""
    save = tmp_path_factory.mktemp("runs")
    _save_dense(save)
    common = QUICK + ["--save_dir", str(save)]
    assert prune_structure.main(common + ["--iterative_steps", "2"]) == 0
    assert prune_structure.main(common + ["--mode", "oneshot", "--target_sparsity", "0.5", "0.7", "--pruner",
                                          "taylor", "--scope", "global", "--taylor_batches", "1"]) == 0
    return save


def _oneshot(runs: Path, target: float) -> Path:
    """The one-shot checkpoint for ``target``: exactly round(target * 448) of resnet20's 448 channels masked."""
    return runs / "resnet20" / "structured_oneshot" / f"resnet20_ch{round(target * 448) / 448:.4f}.pth"


def _load(path: Path) -> torch.nn.Module:
    """A structured checkpoint loaded as the stages load it."""
    ckpt = read_checkpoint(path)
    gran = get_granularity("channel", "resnet20")
    model = create_model("resnet20")
    from utils.runtime.checkpoint import load_weights

    load_weights(model, ckpt, "resnet20", path)
    gran.set_masks(model, ckpt.channel_masks)
    return model


def test_iterative_writes_checkpoints_log_and_plot(runs):
    out = runs / "resnet20" / "structured_iterative"
    gran = get_granularity("channel", "resnet20")
    rows = read_csv(out / "prune_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert list(rows[0]) == ["step", "amount", "sparsity", "weight_sparsity", "params", "macs", "val_acc", "test_acc",
                             "checkpoint"]
    total = sum(g.size for g in gran.groups)
    live = total
    for row in rows:
        live -= round(0.3 * live)  # 30% of the live channels per step, exactly
        model = _load(out / row["checkpoint"])
        assert gran.sparsity(model) == pytest.approx(float(row["sparsity"])) == pytest.approx(1 - live / total)
        assert row["checkpoint"] == f"resnet20_ch{float(row['sparsity']):.4f}.pth"
        assert int(row["params"]) < 272_474 and int(row["macs"]) < 41_214_602
    assert {"sparsity_vs_accuracy.png", "log.txt"} <= set(tree(out))


def test_oneshot_targets_and_checkpoint_round_trip(runs, tmp_path):
    out = runs / "resnet20" / "structured_oneshot"
    assert [f for f in tree(out) if f.endswith(".pth")] == [_oneshot(runs, 0.5).name, _oneshot(runs, 0.7).name]
    path = _oneshot(runs, 0.5)
    ckpt = read_checkpoint(path)
    assert ckpt.granularity == "channel" and ckpt.meta["pruner"] == "taylor"
    assert all(m.dtype == torch.bool for m in ckpt.channel_masks.values())
    model = _load(path)
    again = tmp_path / "again.pth"
    save_checkpoint(again, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={},
                    channel_masks=get_granularity("channel", "resnet20").checkpoint_masks(model))
    reloaded = _load(again)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reloaded.eval()(x))
    assert all(torch.equal(read_checkpoint(again).channel_masks[k], v) for k, v in ckpt.channel_masks.items())


def test_iterative_resume_and_saturation(runs, tmp_path):
    save = tmp_path / "runs"
    _save_dense(save)
    common = QUICK + ["--save_dir", str(save), "--ratio_per_step", "0.9"]
    assert prune_structure.main(common + ["--iterative_steps", "1"]) == 0
    # resume from step 2 (448 -> 45 live channels after step 1): 90% of 45 is more than the 33 that may go
    # before every group is down to one channel, so step 2 stops at that floor and step 3 ends the run
    assert prune_structure.main(common + ["--iter_start", "2", "--iterative_steps", "5"]) == 0
    rows = read_csv(save / "resnet20" / "structured_iterative" / "prune_log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert float(rows[-1]["sparsity"]) == pytest.approx(1 - 12 / 448)


def test_export_reloads_and_matches_the_masked_model(runs, capsys):
    path = _oneshot(runs, 0.7)
    code, out, err = run_main(export.main, ["--ckpt", str(path), "--device", "cpu", "--batch_sizes", "1", "2",
                                            "--repeats", "1", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    exported_path = path.with_name(f"{path.stem}_exported.pth")
    assert report["out"] == str(exported_path) and report["max_abs_diff"] < 1e-5
    models = report["models"]
    assert models["dense"]["params"] == models["masked"]["params"] == 272_474
    assert models["exported"]["params"] < models["dense"]["params"]
    assert set(models["exported"]["latency_ms"]) == {"1", "2"}
    ckpt = read_checkpoint(exported_path)
    assert ckpt.granularity is None and ckpt.export_history
    code, out, err = run_main(evaluate.main, ["--ckpt", str(exported_path), "--json", "--dataset", "synthetic",
                                              "--train_subset", "128"], capsys)
    exported_report = json.loads(out)
    code, out, err = run_main(evaluate.main, ["--ckpt", str(path), "--json", "--dataset", "synthetic",
                                              "--train_subset", "128"], capsys)
    masked_report = json.loads(out)
    assert exported_report["exported"] and exported_report["params"] == models["exported"]["params"]
    assert exported_report["test_acc"] == masked_report["test_acc"]  # the same model, physically smaller
    # on the images the pruning run measured (its seed, val split and --eval_subset, which the export carries)
    assert exported_report["val_images"] == masked_report["val_images"] == 250
    assert exported_report["val_acc"] == masked_report["val_acc"] and exported_report["seed"] == masked_report["seed"]
    assert masked_report["granularity"] == "channel"
    assert masked_report["unit_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert masked_report["params"] == models["exported"]["params"] and masked_report["macs_dense"] == 41_214_602
    # an export says what it was exported from, not "0.0000 sparsity, every weight kept"
    source = exported_report["exported_from"]
    assert source["checkpoint"] == str(path) and source["channel_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert exported_report["macs_dense"] == 41_214_602
    code, out, _ = run_main(evaluate.main, ["--ckpt", str(exported_path), "--dataset", "synthetic", "--train_subset",
                                            "128"], capsys)
    assert code == 0 and f"export      of {path} at channel sparsity 0.7" in out and "sparsity    0.0000" not in out


def test_finetune_and_analyze_take_structured_checkpoints(runs, tmp_path, capsys):
    path = _oneshot(runs, 0.5)
    tuned = tmp_path / "tuned.pth"
    assert finetune.main(DATA + ["--ckpt", str(path), "--save_path", str(tuned),
                                       "--epochs", "1"]) == 0
    before, after = read_checkpoint(path), read_checkpoint(tuned)
    assert after.granularity == "channel"
    assert all(torch.equal(before.channel_masks[k], after.channel_masks[k]) for k in before.channel_masks)
    code, _, err = run_main(finetune.main, DATA + ["--ckpt", str(path), "--save_path", str(tmp_path / "swapped.pth"),
                                                   "--swap_every", "10"], capsys)  # swaps move single weights
    assert code == 2 and "error: --swap_every" in err and "channel masks" in err, err
    assert not (tmp_path / "swapped.pth").exists()
    code, out, err = run_main(analyze_layers.main, ["--dataset", "synthetic", "--train_subset", "128", "--device",
                                                    "cpu", "--ckpt", str(path), "--pretrained",
                                                    str(runs / "resnet20/checkpoint/ckpt.pth"), "--ssim_num_batches",
                                                    "1", "--saliency_batches", "1", "--out", str(tmp_path / "an")],
                              capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "an" / "layers.csv")
    assert [r["layer"] for r in rows] == get_granularity("channel", "resnet20").units()
    assert sum(int(r["capacity"]) for r in rows) == round(0.5 * 448)


def _digest(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha1((folder / f).read_bytes()).hexdigest() for f in tree(folder)}


def _bad_inputs(save: Path, dense: Path, weight_sparse: Path, channel: Path, exported: Path) -> list[tuple]:
    common = QUICK + ["--save_dir", str(save)]
    return [
        (prune_structure.main, common + ["--ratio_per_step", "0.001"], "would remove no channel"),
        (prune_structure.main, common + ["--pretrained", str(exported)], "physical export"),
        (prune_unstructure.main, common + ["--pretrained", str(exported), "--iter_end", "1"], "physical export"),
        (regrowth_oneshot.main, common + ["--initial_ckpt", str(weight_sparse), "--pretrained", str(exported)],
         "physical export"),
        (evaluate.main, ["--ckpt", str(exported), "--m_name", "vgg16", "--dataset", "synthetic"],
         "holds a 'resnet20' model"),
        (prune_structure.main, common + ["--mode", "oneshot", "--target_sparsity", "1.5"], "not a fraction"),
        (prune_structure.main, common + ["--mode", "oneshot", "--target_sparsity", "1.0"], "below 1"),
        (prune_structure.main, common + ["--mode", "oneshot", "--target_sparsity", "0.99"], "would empty"),
        (prune_structure.main, common + ["--pruner", "glob"], "invalid choice"),
        (prune_structure.main, common + ["--pruner", "taylor", "--taylor_batches", "0"], "at least 1"),
        (prune_structure.main, common + ["--pretrained", str(weight_sparse)], "unstructured weight masks"),
        (prune_unstructure.main, common + ["--mode", "oneshot", "--target_sparsity", "0.9", "--pretrained",
                                           str(channel)], "weight masks (prune_structure.py, export.py and the"),
        (regrowth_oneshot.main, common + ["--initial_ckpt", str(channel), "--pretrained", str(dense)],
         "holds channel masks"),
        (export.main, ["--ckpt", str(dense)], "has no masks"),
        (export.main, ["--ckpt", str(weight_sparse)], "export takes channel-pruned checkpoints (prune_structure"),
        (export.main, ["--ckpt", str(channel), "--out", str(channel)], "also an input"),
    ]


def test_bad_inputs_fail_cleanly_and_write_nothing(runs, tmp_path, capsys):
    save = tmp_path / "bad"
    dense, weight_sparse = save_dense_and_sparse(save, 0.9)
    channel = _oneshot(runs, 0.5)
    exported = tmp_path / "exported.pth"
    assert export.main(["--ckpt", str(channel), "--out", str(exported), "--batch_sizes", "1", "--repeats", "1",
                        "--device", "cpu"]) == 0
    capsys.readouterr()
    watched = {save: _digest(save), channel.parent: _digest(channel.parent), tmp_path: _digest(tmp_path)}
    for main, argv, message in _bad_inputs(save, dense, weight_sparse, channel, exported):
        code, out, err = run_main(main, argv, capsys)
        assert code == 2, (argv, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (argv, err)
        assert "Traceback" not in err
        for folder, digest in watched.items():
            assert _digest(folder) == digest, argv


@pytest.mark.parametrize("script", ["pretrain", "prune_structure", "prune_unstructure", "finetune",
                                    "regrowth_oneshot"])
def test_compile_flag_reaches_every_finetune(script, tmp_path, monkeypatch):
    calls = []

    class Compiled(torch.nn.Module):
        """Stands in for torch.compile's wrapper: same parameters, and (like it) no len() or truth value."""

        def __init__(self, model):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(x)

        def __len__(self):
            raise TypeError("a compiled module does not support len()")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(model) or Compiled(model))
    save = tmp_path / "runs"
    dense, sparse = save_dense_and_sparse(save, 0.9)
    common = QUICK + ["--save_dir", str(save), "--compile"]
    argv = {"pretrain": DATA + ["--save_dir", str(tmp_path / "pre"), "--compile", "--epochs", "1"],
            "prune_structure": common + ["--iterative_steps", "1"],
            "prune_unstructure": common + ["--iter_end", "1"],
            "finetune": DATA + ["--compile", "--ckpt", str(sparse), "--epochs", "1"],
            "regrowth_oneshot": common + ["--initial_ckpt", str(sparse), "--num_epochs", "1", "--ssim_num_batches",
                                          "1", "--saliency_batches", "1"]}[script]
    main = {"pretrain": pretrain.main, "prune_structure": prune_structure.main,
            "prune_unstructure": prune_unstructure.main, "finetune": finetune.main,
            "regrowth_oneshot": regrowth_oneshot.main}[script]
    assert main(argv) == 0
    assert calls, f"{script} --compile never called torch.compile"


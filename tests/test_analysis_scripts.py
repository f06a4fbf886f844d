"""analyze_layers.py and single_layer_regrowth_analysis.py end to end on synthetic data, and their errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import analyze_layers
import single_layer_regrowth_analysis as single
from models import create_model
from tests.conftest import run_main, save_dense_and_sparse, tree
from utils.core.files import read_csv
from utils.runtime.checkpoint import save_checkpoint

FAST = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64",
        "--eval_batch_size", "250", "--ssim_num_batches", "1", "--saliency_batches", "2", "--device", "cpu",
        "--no_progress"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(save_dir, dense checkpoint, 90%-sparse checkpoint) of resnet20 (untrained weights suffice)."""
    save = tmp_path_factory.mktemp("runs")
    return (save, *save_dense_and_sparse(save, 0.9, "glob"))


def test_analyze_layers_writes_table_and_plots(pair, capsys):
    save, dense, sparse = pair
    code, out, _ = run_main(analyze_layers.main, FAST + ["--save_dir", str(save), "--pretrained", str(dense),
                                                         "--ckpt", str(sparse), "--per_class"], capsys)
    assert code == 0 and "layer1.0.conv1" in out
    folder = save / "resnet20" / "analysis" / "resnet20_0.9000"
    assert {"layers.csv", "ssim.png", "density.png", "saliency.png", "saliency_per_class.png"} <= set(tree(folder))
    rows = read_csv(folder / "layers.csv")
    assert list(rows[0]) == analyze_layers.FIELDS and len(rows) == 22
    assert sum(int(r["capacity"]) for r in rows) == round(0.9 * 270_896)
    assert any(r["selected"] == "True" for r in rows)
    assert all(-1.0 <= float(r["ssim"]) <= 1.0 for r in rows)
    assert len(list((save / "resnet20" / "cache").glob("saliency_*.pt"))) == 1


def test_single_layer_analysis(pair):
    save, dense, sparse = pair
    layers = ["layer1.0.conv1", "layer2.0.conv2", "layer3.2.conv2", "linear"]
    args = FAST + ["--save_dir", str(save), "--pretrained", str(dense), "--ckpt", str(sparse),
                   "--target_sparsity", "0.89", "--finetune_epochs", "1", "--layers", *layers]
    assert single.main(args) == 0
    folder = save / "resnet20" / "single_layer" / "resnet20_0.9000"
    rows = read_csv(folder / "single_layer.csv")
    assert [r["layer"] for r in rows] == layers
    start = round(0.9 * 270_896) / 270_896  # the pruned start's exact sparsity
    k = int((start - 0.89) * 270_896)  # regrowth budgets floor (utils/sparsity/budget.py), as the original's int()
    assert all(int(r["regrown"]) == min(k, int(r["capacity"])) for r in rows)
    corr = json.loads((folder / "correlation.json").read_text())
    assert corr["K"] == k and corr["layers"] == 4
    gains = {float(r["gain"]) for r in rows}
    if len(gains) > 1:
        assert -1 <= corr["spearman_r"] <= 1 and 0 <= corr["spearman_p"] <= 1
    else:  # an untrained model may gain nothing anywhere: no correlation is defined
        assert math.isnan(corr["spearman_r"]) and math.isnan(corr["pearson_r"])
    assert (folder / "ssim_vs_gain.png").is_file()


def test_correlation_against_known_data():
    ssim = [0.1, 0.2, 0.4, 0.8, 0.9]
    gain = [3.0, 2.5, 1.0, 0.2, -0.5]
    corr = single.correlation(ssim, gain)
    assert corr["spearman_r"] == pytest.approx(-1.0) and corr["spearman_p"] < 0.05
    assert corr["pearson_r"] == pytest.approx(float(np.corrcoef(ssim, gain)[0, 1]))
    assert math.isnan(single.correlation([0.1, 0.2], [1.0, 2.0])["pearson_r"])


@pytest.mark.parametrize("case", ["different-models", "sparse-without-masks", "ssim-batches-0", "unknown-layer"])
def test_bad_inputs(pair, tmp_path, capsys, case):
    save, dense, sparse = pair
    vgg = tmp_path / "vgg.pth"
    if case == "different-models":
        save_checkpoint(vgg, create_model("alexnet"), model_name="alexnet", dataset="synthetic", num_classes=10,
                        meta={})
    script, args, needle = {
        "different-models": (analyze_layers, ["--pretrained", str(vgg), "--ckpt", str(sparse)], "holds a 'alexnet'"),
        "sparse-without-masks": (analyze_layers, ["--pretrained", str(dense), "--ckpt", str(dense)], "has no masks"),
        "ssim-batches-0": (analyze_layers, ["--ckpt", str(sparse), "--ssim_num_batches", "0"], "at least 1"),
        "unknown-layer": (single, ["--ckpt", str(sparse), "--layers", "layer9.conv"], "unknown layer"),
    }[case]
    out_dir = tmp_path / "out"
    code, out, err = run_main(script.main, FAST + ["--save_dir", str(save), "--out", str(out_dir)] + args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert tree(out_dir) == []

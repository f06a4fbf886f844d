"""bench_setting_b: one-shot pruning to each target from given dense models, one JSON per finished point,
the table and plot gathered from them."""
from __future__ import annotations

import json

from benchmarks import bench_setting_b
from tests.conftest import save_dense_and_sparse, stop_after_points

TINY = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "100", "--batch_size", "64",
        "--device", "cpu", "--finetune_epochs", "1"]


def test_setting_b_keeps_each_point_and_gathers_the_table(tmp_path, capsys):
    dense, _ = save_dense_and_sparse(tmp_path / "d", 0.5)
    argv = TINY + ["--dense", str(dense),
                   "--seeds", "1", "--targets", "0.5", "0.8", "--save_dir", str(tmp_path / "runs"),
                   "--results", str(tmp_path / "kept")]
    assert bench_setting_b.main(argv) == 0
    points = sorted((tmp_path / "kept").glob("*_seed1_*.json"))
    assert [p.name.rsplit("_", 1)[1] for p in points] == ["0.5000.json", "0.8000.json"]
    point = json.loads(points[1].read_text())["point"]
    assert abs(point["sparsity"] - 0.8) < 1e-3 and point["finetune_epochs"] == 1 and point["dense"]
    table = next((tmp_path / "kept").glob("setting_b_*.md")).read_text()
    assert "| 80.0% | 1 |" in table and next((tmp_path / "kept").glob("setting_b_*.png")).is_file()
    # a second call runs nothing (the run folders may be gone) and gathers the same table
    capsys.readouterr()
    assert bench_setting_b.main(argv[:argv.index("--save_dir")] + ["--save_dir", str(tmp_path / "elsewhere"),
                                                                  "--results", str(tmp_path / "kept")]) == 0
    assert "target" not in capsys.readouterr().out.split("|")[0] and not (tmp_path / "elsewhere").exists()


def test_a_point_killed_in_its_finetune_continues_from_its_resume_point(tmp_path, monkeypatch):
    """A session's end inside a point's finetune: the next call continues that finetune (--resume) from the
    epoch it reached, and the kept point equals the one of an uninterrupted call."""
    dense, _ = save_dense_and_sparse(tmp_path / "d", 0.5)
    argv = TINY[:-1] + ["3", "--dense", str(dense), "--seeds", "1", "--targets", "0.8"]
    assert bench_setting_b.main(argv + ["--save_dir", str(tmp_path / "a"), "--results", str(tmp_path / "ka")]) == 0
    stop_after_points(monkeypatch, 2)
    cut = argv + ["--save_dir", str(tmp_path / "b"), "--results", str(tmp_path / "kb")]
    assert bench_setting_b.main(cut) == 2  # the stage's Ctrl-C (exit 130) stops the benchmark
    monkeypatch.undo()
    assert len(list((tmp_path / "b").rglob("*.resume.pt"))) == 1
    assert bench_setting_b.main(cut) == 0 and not list((tmp_path / "b").rglob("*.resume.pt"))
    rows = [json.loads(next((tmp_path / k).glob("*_seed1_*.json")).read_text())["point"] for k in ("ka", "kb")]
    for key in ("val_acc", "test_acc", "sparsity"):
        assert rows[0][key] == rows[1][key]

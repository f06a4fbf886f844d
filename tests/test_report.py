"""report.py: tables over seeds from run folders with known numbers, and bad input (a real 2-seed pipeline run
and its report are tested in test_pipeline.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import report
from tests.conftest import run_main, tree
from utils.core.files import write_csv
from utils.results.records import RegrowthOutcome, collect, expand_roots
from utils.results.tables import regrowth_table, tables


def _write_seed(root: Path, test_accs: dict[float, float], rl: dict, model: str = "resnet20",
                greedy: bool = True) -> None:
    """One seed's run folder: a dense summary, a one-shot prune log, an RL summary and a greedy summary."""
    folder = root / model
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "summary.json").write_text(json.dumps({"dataset": "synthetic"}))
    write_csv(folder / "oneshot" / "prune_log.csv",
              [{"step": 0, "amount": s, "sparsity": s, "val_acc": acc + 1, "test_acc": acc, "checkpoint": f"{s}.pth"}
               for s, acc in test_accs.items()])
    (folder / "regrowth_oneshot" / "0.9900").mkdir(parents=True)
    (folder / "regrowth_oneshot" / "0.9900" / "summary.json").write_text(json.dumps(
        {"dataset": "synthetic", "start_sparsity": 0.99, "start_test_acc": test_accs[0.99], "episodes": 4,
         "finetune_epochs": 2, "search_seconds": 30.0, "best": {"sparsity": rl["sparsity"], "val_acc": rl["val"]},
         "best_test_acc": rl["test"]}))
    if greedy:
        (folder / "greedy_prop").mkdir()
        (folder / "greedy_prop" / "summary.json").write_text(json.dumps(
            {"dataset": "synthetic", "granularity": "weight", "mode": "prop", "start_sparsity": 0.99,
             "iterations": [{"sparsity": 0.98, "val_acc": 60.0, "test_acc": 59.0}]}))


@pytest.fixture
def two_seeds(tmp_path) -> Path:
    _write_seed(tmp_path / "seed1", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.98, "val": 63.0, "test": 62.0})
    _write_seed(tmp_path / "seed2", {0.98: 64.0, 0.99: 52.0}, {"sparsity": 0.98003, "val": 67.0, "test": 65.0},
                greedy=False)
    return tmp_path


def test_means_stds_and_pairing(two_seeds):
    records = collect(expand_roots([two_seeds]))
    built = tables(records)
    setting_b = {round(r["sparsity"].mean, 4): r for r in built["Setting B: one-shot pruning"]}
    assert setting_b[0.98]["n"] == 2 and setting_b[0.98]["test_acc"].mean == pytest.approx(62.0)
    assert setting_b[0.98]["test_acc"].std == pytest.approx(2 ** 0.5 * 2)  # 60 and 64
    rl = next(r for r in regrowth_table(records) if r["method"] == "RL")
    assert rl["n"] == 2 and rl["baseline_test_acc"].mean == pytest.approx(62.0)  # 0.98003 pairs with 0.98
    assert rl["improvement_pp"].mean == pytest.approx(1.5) and rl["improvement_pp"].std == pytest.approx(0.7071, 1e-3)
    greedy = next(r for r in regrowth_table(records) if r["method"] == "greedy prop")
    assert greedy["n"] == 1 and greedy["test_acc"].std is None  # one seed: no std, never a made-up one
    assert greedy["improvement_pp"].mean == pytest.approx(-1.0)  # 59 against seed1's 60 at 0.98
    cost = next(r for r in built["Search cost"] if r["method"] == "greedy prop")
    assert cost["seconds"].text() == "missing" and cost["episodes"].text() == "missing"


def test_a_result_at_another_sparsity_has_no_baseline(tmp_path):
    _write_seed(tmp_path / "seed1", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.9805, "val": 63.0, "test": 62.0})
    rl = next(r for r in regrowth_table(collect([tmp_path / "seed1"])) if r["method"] == "RL")
    assert rl["baseline_test_acc"].text() == "missing" and rl["improvement_pp"].text() == "missing"


def test_report_script_prints_markdown_and_writes_files(two_seeds, capsys):
    code, out, err = run_main(report.main, [str(two_seeds), "--csv", str(two_seeds / "r.csv"), "--json",
                                            str(two_seeds / "r.json")], capsys)
    assert code == 0, err
    assert "### Setting B: one-shot pruning" in out and "62.00 ± 2.83" in out and "missing" in out
    assert {"report.png", "r.csv", "r.json"} <= set(tree(two_seeds))
    assert "Regrowth outcome" in json.loads((two_seeds / "r.json").read_text())
    code, _, err = run_main(report.main, [str(two_seeds)], capsys)  # the figure exists now
    assert code == 2 and "--overwrite" in err


def test_bad_roots(tmp_path, capsys):
    (tmp_path / "empty" / "resnet20").mkdir(parents=True)
    code, _, err = run_main(report.main, [str(tmp_path / "empty")], capsys)
    assert code == 2 and err.count("error:") == 1 and "no run outputs" in err
    _write_seed(tmp_path / "a", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.98, "val": 1.0, "test": 1.0})
    _write_seed(tmp_path / "b", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.98, "val": 1.0, "test": 1.0}, model="vgg16")
    before = tree(tmp_path)
    code, _, err = run_main(report.main, [str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code == 2 and err.count("error:") == 1 and "different models" in err and "Traceback" not in err
    assert tree(tmp_path) == before


def test_current_summaries_and_old_greedy_ones_without_a_granularity(tmp_path):
    """Summaries in the shared schema are read by their own keys; a greedy summary from before it recorded its
    granularity takes it from its folder (greedy_channel_* is channels, not weights)."""
    _write_seed(tmp_path / "seed1", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.98, "val": 63.0, "test": 62.0},
                greedy=False)
    folder = tmp_path / "seed1" / "resnet20"
    outcome = RegrowthOutcome("random search", "iterative", "weight", 0.99, 50.0, 0.97, 64.0, 63.5, 12, 2, 9.0)
    (folder / "random_regrowth_iterative").mkdir()
    (folder / "random_regrowth_iterative" / "summary.json").write_text(json.dumps(
        {"dataset": "synthetic", "iterations": [], **outcome.fields()}))
    (folder / "greedy_channel_prop").mkdir()
    (folder / "greedy_channel_prop" / "summary.json").write_text(json.dumps(
        {"dataset": "synthetic", "mode": "prop", "start_sparsity": 0.9,
         "iterations": [{"sparsity": 0.85, "val_acc": 55.0, "test_acc": 54.0}]}))
    records = {r["method"]: r for r in collect([tmp_path / "seed1"]) if r["kind"] == "regrowth"}
    assert records["random search"]["schedule"] == "iterative" and records["random search"]["test_acc"] == 63.5
    assert records["random search"]["episodes"] == 12 and records["random search"]["seconds"] == 9.0
    assert records["greedy prop"]["granularity"] == "channel" and records["greedy prop"]["test_acc"] == 54.0
    assert records["RL"]["granularity"] == "weight"
    assert {row["method"] for row in regrowth_table(list(records.values()))} == {"RL", "random search", "greedy prop"}


def test_a_damaged_prune_log_is_one_error_line(tmp_path, capsys):
    root = tmp_path / "seed1"
    write_csv(root / "resnet20" / "oneshot" / "prune_log.csv",
              [{"step": "foo", "amount": "0.9", "sparsity": "0.9", "val_acc": "50", "test_acc": "50",
                "checkpoint": "resnet20_0.9000.pth"}])
    code, _, err = run_main(report.main, [str(root)], capsys)
    assert code == 2 and err.count("error:") == 1 and "step 'foo' is not a whole number" in err
    assert "Traceback" not in err

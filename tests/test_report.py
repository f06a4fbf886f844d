"""report.py: tables over seeds from run folders with known numbers, and bad input (a real 2-seed pipeline run
and its report are tested in test_pipeline.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import report
from tests.conftest import run_main, tree
from utils.core.files import write_csv
from utils.results.records import RegrowthOutcome, collect, find_roots, pruning_schedule, sections
from utils.results.tables import CAPTIONS, regrowth_table, tables


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
    roots = find_roots([two_seeds])
    assert [(r.path.name, r.experiment) for r in roots] == [("seed1", f"{two_seeds}/seed*"),
                                                            ("seed2", f"{two_seeds}/seed*")]
    records = collect(roots)
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
    (tmp_path / "notes").mkdir()
    code, _, err = run_main(report.main, [str(tmp_path / "notes")], capsys)
    assert code == 2 and err.count("error:") == 1 and "no run outputs" in err and "Traceback" not in err
    _write_seed(tmp_path / "a", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.98, "val": 1.0, "test": 1.0})
    code, _, err = run_main(report.main, [str(tmp_path / "a" / "resnet20")], capsys)  # a model folder, not a root
    assert code == 2 and err.count("error:") == 1 and f"give the --save_dir above it, {tmp_path / 'a'}" in err


def test_roots_of_two_models_are_a_section_each(tmp_path, capsys):
    """Seed roots given by name whose models differ: one section per model, each over its own seeds."""
    _write_seed(tmp_path / "a", {0.98: 60.0, 0.99: 50.0}, {"sparsity": 0.98, "val": 1.0, "test": 1.0})
    _write_seed(tmp_path / "b", {0.98: 70.0, 0.99: 55.0}, {"sparsity": 0.98, "val": 1.0, "test": 1.0}, model="vgg16")
    code, out, err = run_main(report.main, [str(tmp_path / "a"), str(tmp_path / "b"), "--plot",
                                            str(tmp_path / "r.png")], capsys)
    assert code == 0, err
    together = f"{tmp_path / 'a'}, {tmp_path / 'b'}"
    assert f"## resnet20 on synthetic: {together} (1 root)" in out and f"## vgg16 on synthetic: {together}" in out
    vgg = out[out.index("## vgg16"):]
    assert "| vgg16 | synthetic | weight | 0.9800 | 1 | 71.00 | 70.00 |" in vgg and "| resnet20 |" not in vgg


# ---- report.py over a whole runs/ folder: the demo, stage runs, a gradual run, a second model -------------------

PROVENANCE = {"commit": "2242d0b1c3f4", "dirty": True, "torch": "2.5.1", "device": "cpu", "cpu": "Xeon",
              "capability": "AVX512", "threads": 2, "precision": "bf16", "command": "python x.py",
              "data": {"name": "synthetic", "train": 4500, "val": 500, "test": 1000, "fingerprint": "9c1e"}}


def _summary(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def _outcome(method: str, start: tuple[float, float], final: tuple[float, float], start_schedule: str | None,
             schedule: str = "oneshot") -> dict:
    return RegrowthOutcome(method, schedule, "weight", start[0], start[1], final[0], final[1] + 1, final[1], 3, 1,
                           5.0, "ssim", start_schedule).fields()


@pytest.fixture
def runs(tmp_path) -> Path:
    """``runs/`` as a new user has it: ``python pipeline.py`` (runs/demo/resnet20/, with provenance), stage runs in
    runs/resnet20/ (one-shot, gradual, a regrowth from the gradual start; written before provenance) and a
    one-shot vgg16 run."""
    runs = tmp_path / "runs"
    demo = runs / "demo" / "resnet20"
    _summary(demo / "checkpoint" / "summary.json", {"dataset": "synthetic", "provenance": PROVENANCE})
    write_csv(demo / "oneshot" / "prune_log.csv", [{"step": 1, "amount": 0.99, "sparsity": 0.99, "val_acc": 41.0,
                                                    "test_acc": 40.0, "checkpoint": "resnet20_0.9900.pth"}])
    rl = _outcome("RL", (0.99, 40.0), (0.98, 45.0), "oneshot")
    _summary(demo / "regrowth_oneshot" / "pipeline" / "summary.json",
             {"dataset": "synthetic", "provenance": PROVENANCE, **rl})
    _summary(demo / "greedy_prop" / "summary.json",  # an older greedy summary: no provenance, no start schedule
             {"dataset": "synthetic", "granularity": "weight", "mode": "prop", "start_sparsity": 0.99,
              "iterations": [{"sparsity": 0.98, "val_acc": 44.0, "test_acc": 43.0}]})
    write_csv(demo / "pipeline_summary.csv", [
        {"model": name, "sparsity": s, "params": 1000, "epochs": 6 * (s > 0), "val_acc": acc + 1, "test_acc": acc,
         "checkpoint": "x.pth"} for name, s, acc in (("dense", 0.0, 80.0), ("pruned", 0.99, 52.0),
                                                     ("regrown (RL)", 0.98, 55.0))])
    _summary(demo / "pipeline_summary.json", {"preset": "demo", "rows": [], "provenance": PROVENANCE})
    stage = runs / "resnet20"
    _summary(stage / "checkpoint" / "summary.json", {"dataset": "synthetic"})
    write_csv(stage / "oneshot" / "prune_log.csv", [
        {"step": 1, "amount": s, "sparsity": s, "val_acc": acc + 1, "test_acc": acc, "checkpoint": f"r_{s}.pth"}
        for s, acc in ((0.9, 70.0), (0.95, 65.0), (0.98, 60.0))])
    write_csv(stage / "gradual" / "prune_log.csv", [{"step": 1, "amount": 0.98, "sparsity": 0.98, "val_acc": 67.0,
                                                     "test_acc": 66.0, "checkpoint": "resnet20_0.9800.pth"}])
    _summary(stage / "regrowth_oneshot" / "from_gradual" / "summary.json",
             {"dataset": "synthetic", **_outcome("RL", (0.985, 62.0), (0.98, 68.0), "gradual")})
    (stage / "cache").mkdir()
    _summary(runs / "vgg16" / "checkpoint" / "summary.json", {"dataset": "synthetic"})
    write_csv(runs / "vgg16" / "oneshot" / "prune_log.csv", [
        {"step": 1, "amount": 0.9, "sparsity": 0.9, "val_acc": 81.0, "test_acc": 80.0, "checkpoint": "v.pth"}])
    return runs


def test_report_over_runs_reports_the_demo_stage_runs_gradual_runs_and_each_model_apart(runs, tmp_path, capsys):
    assert [(r.path.name, r.experiment) for r in find_roots([runs])] == [("runs", str(runs)),
                                                                         ("demo", str(runs / "demo"))]
    code, out, err = run_main(report.main, [str(runs), "--plot", str(tmp_path / "r.png"), "--json",
                                            str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    heads = [line for line in out.splitlines() if line.startswith("## ")]
    assert heads == [f"## resnet20 on synthetic: {runs} (1 root)", f"## vgg16 on synthetic: {runs} (1 root)",
                     f"## resnet20 on synthetic: {runs / 'demo'} (1 root)"]
    stage, vgg, demo = (out[out.index(h):] for h in heads)
    stage, vgg = stage[:stage.index(heads[1])], vgg[:vgg.index(heads[2])]
    assert "| demo |" not in out  # the demo's folder is a run root, never a model
    # the demo: its search, greedy and pipeline tables, and one provenance line (the greedy summary has none)
    assert "### Regrowth outcome" in demo and "| RL | pipeline | oneshot |" in demo and "greedy prop" in demo
    assert "### Pipeline" in demo and "| weight | pruned | 1 | 0.9900 | 1000 | 6 | 53.00 |" in demo
    assert ("Provenance (3 summaries; 1 older one(s) record none): commit 2242d0b1c3f4 (dirty); torch 2.5.1; device "
            "cpu Xeon AVX512; threads 2; precision bf16; data synthetic 4500/500/1000 images (train/val/test), "
            "fingerprint 9c1e") in demo
    # stage runs: the gradual run in its own table; the regrowth from it is compared with it, not with one-shot
    assert "### Gradual pruning" in stage and "| resnet20 | synthetic | weight | 0.9800 | 1 | 67.00 | 66.00 |" in stage
    assert "Provenance" not in stage and "### Pipeline" not in stage
    gradual_start = next(line for line in stage.splitlines() if "| from_gradual |" in line)
    assert "| gradual |" in gradual_start and "| 66.00 |" in gradual_start and gradual_start.endswith("| 2.00 |")
    assert "### Setting B: one-shot pruning" in vgg and "| vgg16 | synthetic | weight | 0.9000 |" in vgg
    # one meaning of "pruned" per table, said under its heading
    for name in ("Setting B: one-shot pruning", "Gradual pruning", "Regrowth outcome", "Pipeline"):
        assert f"### {name}\n\n{CAPTIONS[name]}\n\n|" in out
    assert "before any final finetune" in CAPTIONS["Regrowth outcome"]
    assert "after the pipeline's final finetune" in CAPTIONS["Pipeline"]
    rows = json.loads((tmp_path / "r.json").read_text())
    assert {r["experiment"] for r in rows["Setting B: one-shot pruning"]} == {str(runs), str(runs / "demo")}
    assert (tmp_path / "r.png").stat().st_size > 0


def test_seed_folders_under_a_runs_folder_are_one_experiment(runs, tmp_path):
    """pipeline.py --seeds 1 2 beside an earlier single run in the same runs/demo: the seeds are one experiment,
    the single run another."""
    for seed, acc in ((1, 50.0), (2, 54.0)):
        _write_seed(runs / "demo" / f"seed{seed}", {0.98: acc, 0.99: acc - 10}, {"sparsity": 0.98, "val": 1.0,
                                                                                 "test": 1.0})
    parts = sections(collect(find_roots([runs])))
    assert set(parts) == {(str(runs), "resnet20", "synthetic"), (str(runs), "vgg16", "synthetic"),
                          (str(runs / "demo"), "resnet20", "synthetic"),
                          (f"{runs / 'demo'}/seed*", "resnet20", "synthetic")}
    seeded = parts[(f"{runs / 'demo'}/seed*", "resnet20", "synthetic")]
    row = next(r for r in tables(seeded)["Setting B: one-shot pruning"] if r["sparsity"].mean == pytest.approx(0.98))
    assert row["n"] == 2 and row["test_acc"].mean == pytest.approx(52.0)


def test_the_start_schedule_comes_from_the_start_checkpoint():
    assert [pruning_schedule({"stage": f"prune_{m}"}) for m in ("oneshot", "iterative", "gradual")] == [
        "oneshot", "iterative", "gradual"]
    assert pruning_schedule({"stage": "greedy_prop"}) is None and pruning_schedule({}) is None
    assert pruning_schedule(None) is None and pruning_schedule({"stage": "prune_x"}) is None
    fields = RegrowthOutcome("RL", "oneshot", "weight", 0.99, 1.0, 0.98, 2.0, 2.0, 1, 1, 1.0, "ssim",
                             start_schedule="gradual").fields()
    assert fields["schedule"] == "oneshot" and fields["start_schedule"] == "gradual"


def test_a_greedy_regrowth_from_a_gradual_start_records_it(tmp_path):
    """End to end: the start's meta says it was pruned gradually; the greedy summary says so beside its own
    (one-shot) schedule, and the report reads it."""
    import regrowth_greedy
    from models import create_model
    from utils.prune.pruners import get_pruner
    from utils.runtime.checkpoint import save_checkpoint
    from utils.sparsity.masks import add_reparam

    model = create_model("resnet20")
    save_checkpoint(tmp_path / "resnet20" / "checkpoint" / "ckpt.pth", model, model_name="resnet20",
                    dataset="synthetic", num_classes=10, meta={})
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.95)
    start = tmp_path / "resnet20" / "gradual" / "resnet20_0.9500.pth"
    save_checkpoint(start, model, model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"stage": "prune_gradual"})
    assert regrowth_greedy.main(["--dataset", "synthetic", "--train_subset", "64", "--eval_subset", "100",
                                 "--batch_size", "64", "--finetune_epochs", "1", "--device", "cpu", "--no_progress",
                                 "--save_dir", str(tmp_path), "--initial_ckpt", str(start), "--greedy_mode",
                                 "uniform", "--units", "all"]) == 0
    summary = json.loads((tmp_path / "resnet20" / "greedy_uniform" / "summary.json").read_text())
    assert summary["schedule"] == "oneshot" and summary["start_schedule"] == "gradual"
    record = next(r for r in collect([tmp_path]) if r["kind"] == "regrowth")
    assert record["start_schedule"] == "gradual"


def test_arrows_stay_inside_the_axes(tmp_path):
    """A regrowth arrow whose start lies far from every curve: both ends inside the limits, the arrow clipped."""
    import matplotlib.pyplot as plt

    from utils.results.plots import Panel, draw_report_panel

    fig, ax = plt.subplots()
    draw_report_panel(ax, Panel("t", {"one-shot": [(0.9, 70.0, 1.0), (0.95, 65.0, 0.0)]},
                                [("RL (a)", 0.999, 10.0, 0.98, 90.0, None)]))
    fig.canvas.draw()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 <= 98.0 and 99.9 <= x1 <= 100.0 and y0 <= 10.0 and y1 >= 90.0
    assert ax.patches and all(p.get_clip_on() and (p.get_clip_box() or p.get_clip_path()) for p in ax.patches)
    plt.close(fig)


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

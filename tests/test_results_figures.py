"""The results pages' renderers (``utils/results/figures.py``) compute their figures right: each is given a few
invented result rows, and its table is checked against means, sample standard deviations and paired differences
worked out by hand. Which pages hold which blocks, and that they are fresh, is ``tests/test_readme_figures.py``."""
from __future__ import annotations

import pytest

from benchmarks import readme_figures
from benchmarks.common import ROOT
from utils.core.errors import UsageError
from utils.core.provenance import PROVENANCE_KEY
from utils.results.figures import BLOCK, FIGURES

CONVERTED = {  # the results pages whose tables are generated, and the renderers their blocks use
    "matched_experiment.md": {"matched_arms"},
    "search_comparison.md": {"search_arms", "search_units", "search_topk"},
    "reward_fidelity.md": {"fidelity_table"},
    "episode_cost.md": {"episode_cost"},
    "fisher_estimators.md": {"fisher_table"},
    "dense_recipe.md": {"dense_reference", "dense_recipes"},
    "setting_b.md": {"setting_b"},
    "matched_paper.md": {"matched_arms"},
}


def _lines(name: str, values: list[dict]) -> list[str]:
    return FIGURES.get(name)(values).splitlines()


@pytest.mark.parametrize("page", sorted(CONVERTED))
def test_converted_pages_hold_their_blocks_and_are_checked(page):
    path = ROOT / "docs" / "results" / page
    assert path in readme_figures.pages(ROOT)  # so test_generated_blocks_match_their_files checks it
    assert {m.group(2) for m in BLOCK.finditer(path.read_text())} == CONVERTED[page]


def _matched(seed: int, tests: dict[str, float]) -> dict:
    rows = [{"seed": seed, "arm": arm, "val_acc": test + 1.0, "test_acc": test} for arm, test in tests.items()]
    return {"rows": rows, "settings": {"final_sparsity": "0.98", "start_sparsity": "0.99"}}


def test_matched_arms_means_and_differences_paired_by_seed():
    seeds = [_matched(1, {"greedy/zero": 49.0, "straight": 50.0, "none": 40.0, "gradual+swap20": 51.0}),
             _matched(2, {"straight": 52.0, "greedy/zero": 53.0, "gradual+swap20": 52.5, "none": 41.0}),
             _matched(3, {"straight": 54.0, "greedy/zero": 54.0})]  # a seed without two of the arms
    lines = _lines("matched_arms", seeds)
    assert lines[2] == "| straight to 98% | 3 | 53.00 ± 2.00 | 52.00 ± 2.00 |  |  |"
    # the rows in the page's order: straight, gradual, regrowth, no regrowth; differences to straight by seed
    assert lines[3] == "| gradual to 98% during the finetune, with swaps | 2 | 52.75 ± 1.06 | 51.75 ± 1.06 | " \
                       "+0.75 ± 0.35 | +1.00, +0.50 |"
    assert lines[4] == "| prune to 99%, regrow 1% (greedy / zero) | 3 | 53.00 ± 2.65 | 52.00 ± 2.65 | " \
                       "0.00 ± 1.00 | -1.00, +1.00, 0.00 |"
    assert lines[5] == "| 99%, no regrowth | 2 | 41.50 ± 0.71 | 40.50 ± 0.71 | -10.50 ± 0.71 | -10.00, -11.00 |"
    assert len(lines) == 6


def test_matched_arms_say_which_machine_made_each_seed():
    seeds = [_matched(1, {"straight": 50.0, "none": 40.0}), _matched(2, {"straight": 52.0, "none": 41.0}),
             _matched(3, {"straight": 54.0, "none": 42.0})]
    for kept, where in zip(seeds, [("Xeon", "bf16"), ("Xeon", "bf16"), ("EPYC", "fp32")], strict=True):
        for row in kept["rows"]:
            row[PROVENANCE_KEY] = {"cpu": where[0], "precision": where[1]}
    seeds[1]["rows"][1][PROVENANCE_KEY] = {"cpu": "EPYC", "precision": "fp32"}  # seed 2's second arm elsewhere
    last = _lines("matched_arms", seeds)[-1]
    assert last == "Made on: seed 1: Xeon, bf16; seed 2: Xeon, bf16 (1 arm) and EPYC, fp32 (1 arm); seed 3: EPYC, fp32."
    for row in seeds[2]["rows"]:  # a GPU run names its GPU, not the host's CPU
        row[PROVENANCE_KEY] = {"cpu": "EPYC", "device": "cuda:0 NVIDIA H100", "precision": "bf16"}
    assert _lines("matched_arms", seeds)[-1].endswith("; seed 3: cuda:0 NVIDIA H100, bf16.")


def _search(seed: int, units: str, arm: str, test: float, seconds: float = 6.0, **extra) -> dict:
    return {"seed": seed, "units": units, "arm": arm, "rewards": [0.0] * (200 if arm in ("rl", "random") else 1),
            "val_accs": [60.0, 70.0 + seed], "best_episode": 2 if arm in ("rl", "random") else 1,
            "final": {"val_acc": test - 1.0, "test_acc": test}, "search_seconds": seconds,
            "allocation": {"a": 10, "b": 0, "c": 5}, "searched_units": ["a", "b", "c"], **extra}


def test_search_arms_pairs_each_arm_with_rl_by_seed():
    results = [_search(2, "ssim", "rl", 52.0, 1500.4), _search(1, "ssim", "rl", 50.0, 999.6),
               _search(1, "ssim", "greedy_uniform", 51.0, 5.2), _search(2, "ssim", "greedy_uniform", 52.5, 6.4),
               _search(1, "ssim", "greedy_topk", 40.0)]  # an arm the table does not show
    lines = _lines("search_arms", results)
    assert lines[2] == "| RL | 200 | 71.50 ± 0.71 | 50.00 ± 1.41 | 51.00 ± 1.41 |  |  | 1,000-1,500 |"
    assert lines[3] == "| greedy uniform | 1 | 60.00 ± 0.00 | 50.75 ± 1.06 | 51.75 ± 1.06 | +0.75 ± 0.35 | " \
                       "+1.00, +0.50 | 5-6 |"
    assert len(lines) == 4
    with pytest.raises(UsageError, match="one unit set"):
        FIGURES.get("search_arms")(results + [_search(1, "all", "rl", 50.0)])


def test_search_units_pairs_all_against_ssim_and_bolds_the_largest_gain():
    results = [_search(1, "ssim", "rl", 50.0), _search(2, "ssim", "rl", 52.0),
               _search(1, "all", "rl", 49.0, 1000.0), _search(2, "all", "rl", 52.0, 1200.0),
               _search(1, "ssim", "greedy_prop", 50.0), _search(2, "ssim", "greedy_prop", 51.0),
               _search(1, "all", "greedy_prop", 51.0), _search(3, "all", "greedy_prop", 60.0),  # seed 3: no pair
               _search(1, "ssim", "random", 50.0)]  # run over one unit set only: no row
    lines = _lines("search_units", results)
    assert lines[2] == "| RL | 51.00 ± 1.41 | 50.50 ± 2.12 | -0.50 ± 0.71 | -1.00, 0.00 | 1,000-1,200 |"
    assert lines[3] == "| greedy prop | 50.00 ± 0.00 | **51.00 ± 0.00** | **+1.00 ± 0.00** | +1.00 | 6 |"
    assert len(lines) == 4


def test_search_topk_pairs_uniform_against_topk_and_counts_the_layers_filled():
    results = [_search(1, "all", "greedy_topk", 50.0, allocation={"a": 1, "b": 0}, searched_units=["a", "b"]),
               _search(2, "all", "greedy_topk", 51.0, allocation={"a": 1, "b": 2}, searched_units=["a", "b"]),
               _search(1, "all", "greedy_uniform", 52.0), _search(2, "all", "greedy_uniform", 52.0),
               _search(1, "ssim", "greedy_topk", 50.0, searched_units=["a", "b", "c", "d"]),
               _search(2, "ssim", "greedy_topk", 50.0), _search(1, "ssim", "greedy_uniform", 49.0),
               _search(2, "ssim", "greedy_uniform", 50.0)]
    lines = _lines("search_topk", results)
    assert lines[2] == "| `ssim` | 50.00 ± 0.00 | 49.50 ± 0.71 | -0.50 ± 0.71 | -1.00, 0.00 | 2, 2 of 4, 3 |"
    assert lines[3] == "| `all` | 50.50 ± 0.71 | **52.00 ± 0.00** | **+1.50 ± 0.71** | +2.00, +1.00 | 1, 2 of 2 |"


def _reward(reward: str, tau: float | None, ci: tuple[float, float] = (-0.5, 0.5), regret: float = 0.5) -> dict:
    return {"reward": reward, "seconds": 2.345, "tau": tau, "tau_ci": list(ci), "rho": 0.123, "regret": regret,
            "tau_val": -0.456}


def test_fidelity_table_bolds_the_extreme_taus_whose_interval_excludes_zero():
    table = [_reward("saliency", 0.8, (0.4, 1.0), regret=0.001), _reward("val@0", None),
             _reward("bn_recal", -0.6, (-0.9, -0.2)), _reward("val@epoch", 0.5, (0.1, 0.9)),
             _reward("loss@10", -0.1)]
    lines = _lines("fidelity_table", [{"table": table, "settings": {"dataset": "synthetic", "train_subset": 1000,
                                                                   "batch_size": 128}}])
    assert lines[2] == "| **summed saliency** | 2.3 | **0.80** | [0.40, 1.00] | 0.12 | **0.00** | -0.46 |"
    assert lines[3] == "| val@0 | 2.3 | constant (zero init changes nothing) |  |  |  |  |"
    assert lines[4] == "| BN recalibration (dense init) | 2.3 | **-0.60** | [-0.90, -0.20] | 0.12 | 0.50 | -0.46 |"
    assert lines[5].startswith("| val@epoch (8 steps) | 2.3 | 0.50 |")  # 1,000 images in batches of 128
    assert lines[6].startswith("| loss@10 | 2.3 | -0.10 |")  # not the lowest tau: no bold


def test_single_file_tables_compute_their_ratios():
    cost = {"epoch_steps": 352, "val_images": 5000, "epoch_episode_s": 120.0, "steps": 30, "val_subset": 1000,
            "cheap_episode_s": 8.0}
    lines = _lines("episode_cost", [cost])
    assert lines[2].endswith("| 352 | 5,000 | 120.0 | 0.50 |")
    assert lines[3] == "| `--episode_steps 30 --episode_val_subset 1000` | 30 | 1,000 | 8.0 | 7.50 |"
    fisher = {"top_k_overlap": 0.8125, "kendall_tau_top_k_union": 0.5, "kendall_tau_all_pruned": 0.914,
              "spearman_all_pruned": 0.986, "seconds": {"batch": 20.0, "per_sample": 50.0}}
    lines = _lines("fisher_table", [fisher])
    assert lines[2].endswith("| 81.2% |") and lines[5].endswith("| 0.99 |")
    assert lines[6] == "| seconds, batch-level / empirical | 20 / 50 (2.5x) |"


def test_dense_tables_sort_reference_seeds_and_name_recipes_from_their_commands():
    def record(seed: int) -> dict:
        return {"seed": seed, "best_epoch": 80, "recorded": {"val_acc": 88.0, "test_acc": 88.5},
                "evaluate": {"bf16": {"test_acc": 88.5}, "fp32": {"test_acc": 88.46}}, "train_minutes": 144.6}
    lines = _lines("dense_reference", [record(2), record(1)])
    assert lines[2] == "| 1 | 80 | 88.00 | **88.50** | 88.50 / 88.46 | 145 |" and lines[3].startswith("| 2 |")
    command = "python pretrain.py --seed 1 --lr_schedule onecycle --lr 0.2 --warmup_epochs 2 --nesterov"
    runs = [{"command": command + " --label_smoothing 0.1", "seed": 1, "best_epoch": 40, "best_val_acc": 86.9,
             "test_acc": 87.61, "train_minutes": 68.84},
            {"command": command + " --label_smoothing 0.1", "seed": 2, "best_epoch": 39, "best_val_acc": 87.0,
             "test_acc": 87.0, "train_minutes": 60.0},
            {"command": "python pretrain.py --seed 1 --lr 0.1", "seed": 1, "finished": False, "epochs_done": 29,
             "val_acc_per_epoch": [70.0, 82.3]}]
    lines = _lines("dense_recipes", runs)
    assert lines[2] == "| one-cycle lr 0.2 (2 warm-up epochs, linear to 0), Nesterov, label smoothing 0.1 | 1 | 40 | " \
                       "86.90 | 87.61 | 68.8 |"
    assert lines[3].startswith("| same | 2 | 39 |")
    assert lines[4] == "| cosine lr 0.1, no label smoothing | 1 | stopped after epoch 29 (val 82.30) | - | - | - |"


def test_setting_b_averages_each_target_over_its_seeds():
    point = lambda seed, target, sparsity, val, test: {"point": {  # noqa: E731
        "seed": seed, "target": target, "sparsity": sparsity, "val_acc": val, "test_acc": test}}
    text = FIGURES.get("setting_b")([point(2, 0.9, 0.9001, 80.0, 79.0), point(1, 0.9, 0.8999, 82.0, 81.0),
                                     point(1, 0.99, 0.99, 50.0, 51.5)])
    lines = text.splitlines()
    # target 90%: mean sparsity 0.9000, val 81 ± 1.41 (sample std of 80, 82), test 80 ± 1.41, seeds in order
    assert lines[2] == "| 90.0% | 2 | 0.9000 | 81.00 ± 1.41 | 80.00 ± 1.41 | 1: 81.00, 2: 79.00 |"
    assert lines[3] == "| 99.0% | 1 | 0.9900 | 50.00 ± 0.00 | 51.50 ± 0.00 | 1: 51.50 |"
    assert len(lines) == 4  # no provenance recorded: no "Made on" line
    made = [point(1, 0.9, 0.9, 80.0, 79.0), point(1, 0.99, 0.99, 50.0, 51.0)]
    made[0]["point"][PROVENANCE_KEY] = {"cpu": "Xeon", "precision": "bf16"}
    made[1]["point"][PROVENANCE_KEY] = {"cpu": "EPYC", "precision": "fp32"}
    assert FIGURES.get("setting_b")(made).splitlines()[-1] == \
        "Made on: seed 1: Xeon, bf16 (1 point) and EPYC, fp32 (1 point)."

"""The README's and the results pages' figures come from their kept result files: every generated block equals
what its files give (``python -m benchmarks.readme_figures`` rewrites them), and the README states no
accuracy outside such a block."""
from __future__ import annotations

import json
import re

import pytest

from benchmarks import readme_figures
from benchmarks.common import ROOT
from utils.core.errors import UsageError
from utils.results.figures import BLOCK, render_page, stale_blocks


@pytest.mark.parametrize("page", readme_figures.pages(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_blocks_match_their_files(page):
    assert stale_blocks(page.read_text(), page.parent) == [], "run: python -m benchmarks.readme_figures"


def test_readme_states_no_accuracy_outside_generated_blocks():
    text = BLOCK.sub("", (ROOT / "README.md").read_text())
    # accuracies and their differences; a sparsity such as "98%" may stand
    assert re.findall(r"\d+\.\d+\s?%|\d+(?:\.\d+)?\s?pp\b", text) == []


def _summary(seed: int, straight: float, gradual: float) -> dict:
    rows = [{"model": "dense", "sparsity": 0.0, "params": 100, "epochs": 0, "val_acc": 80.0, "test_acc": 79.0},
            {"model": "pruned straight", "sparsity": 0.98, "params": 2, "epochs": 6, "val_acc": 60.0,
             "test_acc": straight},
            {"model": "gradual + swaps", "sparsity": 0.98, "params": 2, "epochs": 6, "val_acc": 61.0,
             "test_acc": gradual}]
    return {"granularity": "weight", "seed": seed, "seconds": 600.0, "rows": rows,
            "provenance": {"commit": "abc", "dirty": False, "torch": "2", "device": "cpu", "cpu": "X",
                           "capability": "AVX2", "threads": 2, "precision": "fp32",
                           "data": {"name": "synthetic", "train": 10, "val": 5, "test": 5, "fingerprint": "f"}}}


def test_blocks_are_rewritten_from_their_files_and_stale_ones_named(tmp_path):
    for seed, (straight, gradual) in {1: (50.0, 52.0), 2: (54.0, 55.0)}.items():
        (tmp_path / f"s{seed}.json").write_text(json.dumps(_summary(seed, straight, gradual)))
    page = ("intro\n<!-- figures: demo_table s1.json -->\nold\n<!-- /figures -->\nmiddle\n"
            "<!-- figures: demo_seeds s1.json s2.json -->\n<!-- /figures -->\nend\n")
    assert stale_blocks(page, tmp_path) == ["demo_table s1.json", "demo_seeds s1.json s2.json"]
    fresh = render_page(page, tmp_path)
    assert stale_blocks(fresh, tmp_path) == [] and fresh.startswith("intro\n") and fresh.endswith("end\n")
    assert "pruned straight                        0.9800            2       6   60.00%    50.00%" in fresh
    assert "| gradual + swaps | 53.50 ± 2.12 (n = 2) | 52.00 - 55.00 | +1.50 ± 0.71 |" in fresh  # paired by seed
    assert "threads" in fresh and "synthetic 10/5/5" in fresh and "commit abc" in fresh  # where it came from
    (tmp_path / "s2.json").write_text(json.dumps(_summary(2, 54.0, 56.0)))  # the results file changed
    assert stale_blocks(fresh, tmp_path) == ["demo_seeds s1.json s2.json"]


def test_rows_pair_by_name_and_old_summaries_are_one_error(tmp_path):
    one, two = _summary(1, 50.0, 52.0), _summary(2, 54.0, 55.0)
    two["rows"] = [two["rows"][0], two["rows"][2], two["rows"][1]]  # another row order pairs the same rows
    del one["rows"][2]  # a run without the gradual row: its mean has one value fewer, nothing shifts
    for name, summary in (("a", one), ("b", two)):
        (tmp_path / f"{name}.json").write_text(json.dumps(summary))
    text = render_page("<!-- figures: demo_seeds a.json b.json -->\n<!-- /figures -->\n", tmp_path)
    assert "| gradual + swaps | 55.00 ± 0.00 (n = 1) | 55.00 - 55.00 | +1.00 ± 0.00 |" in text
    old = _summary(3, 50.0, 51.0)
    del old["rows"][1]["epochs"]  # a summary of the chain before equal epochs
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(UsageError, match="without epochs"):
        render_page("<!-- figures: demo_table old.json -->\n<!-- /figures -->\n", tmp_path)


def test_a_block_naming_a_missing_file_is_one_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        stale_blocks("<!-- figures: demo_table nope.json -->\n<!-- /figures -->\n", tmp_path)


def test_a_block_may_name_its_files_by_glob(tmp_path):
    for seed, (straight, gradual) in {2: (54.0, 55.0), 1: (50.0, 52.0)}.items():
        (tmp_path / f"s{seed}.json").write_text(json.dumps(_summary(seed, straight, gradual)))
    globbed = render_page("<!-- figures: demo_seeds s*.json -->\n<!-- /figures -->\n", tmp_path)
    assert globbed == render_page("<!-- figures: demo_seeds s1.json s2.json -->\n<!-- /figures -->\n",
                                  tmp_path).replace("s1.json s2.json", "s*.json")  # its matches, sorted
    assert "seeds 1, 2)" in globbed
    with pytest.raises(UsageError, match="matches no file"):
        stale_blocks("<!-- figures: demo_seeds nope*.json -->\n<!-- /figures -->\n", tmp_path)

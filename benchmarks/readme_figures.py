"""Rewrite the generated figure blocks of the README and the results pages from their kept result files
(``utils/results/figures.py``), or with --check only list the stale ones (exit 1 when there are any).

    python -m benchmarks.readme_figures            # after adding or replacing a results file
    python -m benchmarks.readme_figures --check    # what tests/test_readme_figures.py asserts
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import ROOT
from utils.cli.flags import cli_main
from utils.core.files import atomic_write
from utils.results.figures import render_page, stale_blocks

PAGES = ("README.md", "docs/results/*.md")  # the pages that may hold generated blocks, from the repository root


def pages(root: Path) -> list[Path]:
    """Every page of ``PAGES`` under ``root``."""
    return [path for pattern in PAGES for path in sorted(root.glob(pattern))]


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="list stale blocks, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for page in pages(ROOT):
        text = page.read_text()
        blocks = stale_blocks(text, page.parent)
        stale += [f"{page.relative_to(ROOT)}: {block}" for block in blocks]
        if blocks and not args.check:
            new = render_page(text, page.parent)
            atomic_write(page, lambda tmp, new=new: tmp.write_text(new))
    for line in stale:
        print(("stale: " if args.check else "rewrote: ") + line)
    if args.check and stale:
        print("run: python -m benchmarks.readme_figures", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

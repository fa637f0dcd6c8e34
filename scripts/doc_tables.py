"""Regenerate the tables the docs quote from the recorded result rows in benchmarks/.

A generated table sits in a markdown file between

    <!-- table: KIND FILE [FILE ...] [OPTION=VALUE ...] -->
    ...
    <!-- /table -->

with KIND one of accel.evals.report.TABLES (eval, search, search-detail, steps, fewstep, dllm, ...), FILE paths
relative to the repository root and OPTION one of the builder's keyword arguments (steps: methods=NAME|NAME|... keeps
those rows in that order). The block is the table and a line naming the rows' files, git sha, dirty flag and command,
so a quoted number always traces to a row and the code that made it. `python scripts/doc_tables.py README.md
docs/*.md` rewrites the blocks; `--check` only reports stale ones (exit 1; tests/test_doc_tables.py runs it on every
doc). The tables are accel.evals.report's, the same `accel report` renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from accel.evals import report
from accel.evals.report import BLOCK, TABLES, TAGS  # noqa: F401  (the docs' test reads them here)

ROOT = Path(__file__).resolve().parents[1]


def render(spec: str) -> str:
    return report.render(spec, ROOT)


def update(text: str) -> tuple[str, list[str]]:
    return report.update(text, ROOT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="report stale blocks (exit 1) instead of rewriting them")
    args = ap.parse_args(argv)
    status = 0
    for path in args.files:
        new, stale = update(path.read_text())
        for spec in stale:
            print(f"{path}: {'stale' if args.check else 'updated'} table: {spec}")
        if stale and args.check:
            status = 1
        elif stale:
            path.write_text(new)
    return status


if __name__ == "__main__":
    sys.exit(main())

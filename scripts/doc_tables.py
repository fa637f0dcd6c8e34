"""Regenerate the tables the docs quote from the recorded result rows in benchmarks/.

A generated table sits in a markdown file between

    <!-- table: KIND FILE [FILE ...] [OPTION=VALUE ...] -->
    ...
    <!-- /table -->

with KIND one of TABLES (eval, search, steps, dllm, forward, memory), FILE paths relative to the repository root and
OPTION one of the builder's keyword arguments (steps: methods=NAME|NAME|... keeps those rows in that order). The block
is the table and a line naming the rows' files, git sha, dirty flag and command, so a quoted number always traces to
a row and the code that made it. `python scripts/doc_tables.py README.md docs/*.md` rewrites the blocks;
`--check` only reports stale ones (exit 1; tests/test_doc_tables.py runs it on every doc).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _rows(path: str) -> list[dict]:
    data = json.loads((ROOT / path).read_text())
    return data if isinstance(data, list) else [data]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def eval_table(files: list[str]) -> list[str]:
    """One row per results file of `accel eval shapes` / `shapes-video`: seed, overall, per tag."""
    results = [_rows(f)[0] for f in files]
    tags = [t for t in TAGS if t in results[0]["per_tag"]] or list(results[0]["per_tag"])
    return _table(["seed", "overall", *tags], [[str(r["seed"]), f"**{r['overall']:.3f}**",
                                                 *(f"{r['per_tag'][t]:.3f}" for t in tags)] for r in results])


def search_table(files: list[str]) -> list[str]:
    """Checker accuracy of each strategy (rows) at each budget (columns) from `accel bench search`."""
    rows = [r for f in files for r in _rows(f)]
    budgets = sorted({r["budget"] for r in rows})
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    acc = {(r["strategy"], r["budget"]): r["accuracy"] for r in rows}
    return _table(["strategy", *(f"{b:g}x" for b in budgets)],
                  [[s, *(f"{acc[s, b]:.3f}" if (s, b) in acc else "-" for b in budgets)] for s in strategies])


def steps_table(files: list[str], methods: str | None = None) -> list[str]:
    """One row per method of `accel bench steps`: measured runtime, checker accuracy, PSNR / SSIM to full steps.
    With several files (runs on other prompt sets), a first column gives each row's seed.

    methods: "|"-separated method names (a name may hold commas) to keep, in that order, from each file; default
    every row.
    """
    rows = []
    for f in files:
        run = _rows(f)
        if methods is not None:
            by_name = {r["method"]: r for r in run}
            missing = [m for m in methods.split("|") if m not in by_name]
            if missing:
                raise ValueError(f"methods not in {f}: {', '.join(missing)}")
            run = [by_name[m] for m in methods.split("|")]
        rows += run
    seed = len(files) > 1
    return _table(["seed"] * seed + ["method", "runtime (measured)", "accuracy", "PSNR dB", "SSIM"],
                  [([str(r["seed"])] if seed else []) + [r["method"], f"{r['runtime']:.2f}", f"{r['accuracy']:.3f}",
                    "-" if r["method"] == "full" else f"{r['psnr']:.1f}", f"{r['ssim']:.3f}"] for r in rows])


def dllm_table(files: list[str]) -> list[str]:
    """One row per decoder of `accel bench dllm`: tokens/s, speedup over the first (baseline), exact match, cost."""
    rows = [r for f in files for r in _rows(f)]
    return _table(["decoder", "tokens/s", "speedup", "exact match", "NFE", "token-forwards"],
                  [[r["decoder"], f"{r['tokens_per_s']:,.0f}", f"{r['speedup']:.1f}x", f"{r['accuracy']:.3f}",
                    f"{r['nfe']:.0f}", f"{r['positions']:,.0f}"] for r in rows])


def forward_table(files: list[str]) -> list[str]:
    """One row per file of bench_dit_hsa_forward.py: the full forward's wall time and the speedup at each fraction."""
    runs = [_rows(f) for f in files]
    fractions = sorted({r["active_fraction"] for rows in runs for r in rows if r["active_fraction"] < 1}, reverse=True)
    table = []
    for rows in runs:
        full = next(r for r in rows if r["active_fraction"] == 1)
        speedup = {r["active_fraction"]: r["speedup"] for r in rows}
        table.append([f"{full['model']} {full['size']}, {full['params'] / 1e6:.0f}M params, {full['dtype']}",
                      f"`kv={full['kv']}`", f"{full['tokens']} + {full['text_tokens']}",
                      f"{full['seconds'] * 1e3:.0f} ms",
                      *(f"{speedup[a]:.2f}x" if a in speedup else "-" for a in fractions)])
    return _table(["transformer", "K/V", "tokens (image + text)", "every token",
                   *(f"{a:.0%} active" for a in fractions)], table)


def memory_table(files: list[str]) -> list[str]:
    """HSA's cache size per forward for real model sizes (bench_dit_hsa_forward.py --memory-only)."""
    modes = ("extrapolate", "extrapolate_fp8", "refresh", "refresh_fp8", "stale")
    rows = [r for f in files for r in _rows(f)]
    return _table(["per forward", "image tokens", "dtype", "`kv=extrapolate` (default)", "the same, fp8 block inputs",
                   "`kv=refresh`", "`kv=refresh`, fp8 inputs", "`kv=stale`"],
                  [[r["size"], f"{r['tokens']:,}", r["dtype"],
                    *(f"{r[f'cache_bytes_{m}'] / 2**30:.1f} GiB" for m in modes)] for r in rows])


TABLES = {"eval": eval_table, "search": search_table, "steps": steps_table, "dllm": dllm_table,
          "forward": forward_table, "memory": memory_table}
OPTIONS = {"steps": {"methods"}}  # the keyword arguments each builder takes from a block's spec


def provenance(files: list[str]) -> str:
    """One line: the rows' files, and per distinct (sha, dirty, command) what made them."""
    made = []
    for f in files:
        for r in _rows(f):
            dirty = r.get("dirty")
            state = "dirty: not recorded" if dirty is None else ("dirty" if dirty else "clean")
            sha = (r.get("git_sha") or "no sha")[:7]
            made.append(f"{sha} ({state}): `{r.get('command', '?')}`")
    made = list(dict.fromkeys(made))
    return "Rows: " + ", ".join(files) + "; recorded at " + "; ".join(made) + "."


def render(spec: str) -> str:
    """The block for one spec "KIND FILE [FILE ...] [OPTION=VALUE ...]": the table, a blank line, the provenance."""
    kind, *words = spec.split()
    if kind not in TABLES:
        raise ValueError(f"unknown table kind {kind!r}; allowed: {', '.join(TABLES)}")
    options = dict(w.split("=", 1) for w in words if re.match(r"\w+=", w))
    files = [w for w in words if not re.match(r"\w+=", w)]
    if not files:
        raise ValueError(f"table {kind!r} needs at least one results file")
    unknown = set(options) - OPTIONS.get(kind, set())
    if unknown:
        raise ValueError(f"table {kind!r} takes no option {', '.join(sorted(unknown))}; allowed: "
                         f"{', '.join(sorted(OPTIONS.get(kind, ()))) or 'none'}")
    return "\n".join(TABLES[kind](files, **options)) + "\n\n" + provenance(files) + "\n"


def update(text: str) -> tuple[str, list[str]]:
    """The text with every table block regenerated, and the specs of the blocks that changed."""
    stale = []

    def fill(m: re.Match) -> str:
        body = render(m["spec"])
        if body != m["body"]:
            stale.append(m["spec"])
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text), stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--check", action="store_true", help="report stale blocks (exit 1) instead of rewriting them")
    args = ap.parse_args(argv)
    status = 0
    for path in args.files:
        text = path.read_text()
        new, stale = update(text)
        for spec in stale:
            print(f"{path}: {'stale' if args.check else 'updated'} table: {spec}")
        if stale and args.check:
            status = 1
        elif stale:
            path.write_text(new)
    return status


if __name__ == "__main__":
    sys.exit(main())

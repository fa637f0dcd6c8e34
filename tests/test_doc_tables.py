"""The tables the docs quote are generated from the recorded rows (scripts/doc_tables.py), never hand-copied."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("doc_tables", ROOT / "scripts" / "doc_tables.py")
doc_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(doc_tables)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_generated_tables_match_the_recorded_rows(path):
    _, stale = doc_tables.update(path.read_text())
    assert not stale, f"{path.name}: run python scripts/doc_tables.py {path.relative_to(ROOT)} (stale: {stale})"


def test_the_docs_quote_generated_tables():
    blocks = [m["spec"] for p in DOCS for m in doc_tables.BLOCK.finditer(p.read_text())]
    assert {spec.split()[0] for spec in blocks} >= {"eval", "search", "steps", "dllm", "memory"}


def test_a_changed_row_makes_its_block_stale_and_update_fixes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    row = {"seed": 3, "overall": 0.5, "per_tag": {t: 0.5 for t in doc_tables.TAGS}, "git_sha": "0123456789",
           "dirty": False, "command": "accel eval shapes --seed 3"}
    (tmp_path / "r.json").write_text(json.dumps(row))
    doc = "text\n<!-- table: eval r.json -->\nold\n<!-- /table -->\nmore\n"
    new, stale = doc_tables.update(doc)
    assert stale == ["eval r.json"] and "| 3 | **0.500** | 0.500 |" in new
    assert "0123456 (clean): `accel eval shapes --seed 3`" in new and new.endswith("<!-- /table -->\nmore\n")
    assert doc_tables.update(new) == (new, [])
    (tmp_path / "r.json").write_text(json.dumps(row | {"overall": 0.6, "dirty": True}))
    again, stale = doc_tables.update(new)
    assert stale == ["eval r.json"] and "**0.600**" in again and "(dirty)" in again
    doc_path = tmp_path / "doc.md"
    doc_path.write_text(new)
    assert doc_tables.main([str(doc_path), "--check"]) == 1 and doc_path.read_text() == new
    assert doc_tables.main([str(doc_path)]) == 0 and doc_path.read_text() == again


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match=r"allowed: eval, .*search"):
        doc_tables.render("bogus x.json")


def _write(tmp_path, name, rows):
    (tmp_path / name).write_text(json.dumps(rows))
    return name


def test_steps_methods_option_keeps_those_rows_in_that_order(tmp_path, monkeypatch):
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    rows = [{"method": m, "runtime": rt, "accuracy": 0.5, "psnr": p, "ssim": s, "git_sha": "abcdef12", "dirty": False,
             "command": "accel bench steps"}
            for m, rt, p, s in [("full", 1.0, 100.0, 1.0), ("uniform:steps=13", 0.49, 30.56, 0.9187),
                                ("hsa:runtime=0.5,kv=refresh", 0.52, 36.31, 0.974)]]
    f = _write(tmp_path, "steps.json", rows)
    out = doc_tables.render(f"steps {f} methods=hsa:runtime=0.5,kv=refresh|full").splitlines()
    assert out[2:4] == ["| hsa:runtime=0.5,kv=refresh | 0.52 | 0.500 | 36.3 | 0.974 |",
                        "| full | 1.00 | 0.500 | - | 1.000 |"]
    assert out[4] == "" and out[5].startswith("Rows: steps.json; recorded at abcdef1 (clean)")
    with pytest.raises(ValueError, match="methods not in steps.json: nope"):
        doc_tables.render(f"steps {f} methods=full|nope")
    with pytest.raises(ValueError, match="takes no option methods"):
        doc_tables.render(f"dllm {f} methods=full")


def test_steps_table_over_several_runs_gives_each_rows_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    files = []
    for seed, rt in ((0, 0.53), (1, 0.51)):
        rows = [{"method": m, "runtime": r, "accuracy": 0.5, "psnr": 30.0 + seed, "ssim": 0.9, "seed": seed,
                 "git_sha": "abcdef12", "dirty": False, "command": f"accel bench steps --seed {seed}"}
                for m, r in (("full", 1.0), ("uniform:steps=13", rt), ("hsa:runtime=0.5", 0.6))]
        files.append(_write(tmp_path, f"s{seed}.json", rows))
    out = doc_tables.render(f"steps {' '.join(files)} methods=uniform:steps=13").splitlines()
    assert out[0].startswith("| seed | method |")
    assert out[2:4] == ["| 0 | uniform:steps=13 | 0.53 | 0.500 | 30.0 | 0.900 |",
                        "| 1 | uniform:steps=13 | 0.51 | 0.500 | 31.0 | 0.900 |"]
    assert "--seed 0" in out[5] and "--seed 1" in out[5]


def test_forward_table_one_row_per_file_with_the_speedup_per_fraction(tmp_path, monkeypatch):
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    base = {"model": "flux", "size": "small", "params": 36_497_472, "dtype": "float32", "tokens": 1024,
            "text_tokens": 64, "git_sha": "8ad85da"}
    files = [_write(tmp_path, f"{kv}.json", [base | {"kv": kv, "active_fraction": a, "seconds": 0.4 / s, "speedup": s}
                                              for a, s in [(1.0, 1.0), (0.5, sp), (0.25, 2 * sp)]])
             for kv, sp in [("extrapolate", 1.5), ("stale", 1.25)]]
    out = doc_tables.render("forward " + " ".join(files)).splitlines()
    assert out[0] == "| transformer | K/V | tokens (image + text) | every token | 50% active | 25% active |"
    assert out[2] == "| flux small, 36M params, float32 | `kv=extrapolate` | 1024 + 64 | 400 ms | 1.50x | 3.00x |"
    assert out[3].endswith("| `kv=stale` | 1024 + 64 | 400 ms | 1.25x | 2.50x |")
    assert "8ad85da (dirty: not recorded)" in out[-1]
    _write(tmp_path, "n.json", [base | {"model": "nucleus", "kv": "stale", "moe": "accel engine",
                                        "active_fraction": 1.0, "seconds": 0.4, "speedup": 1.0}])
    assert doc_tables.render("forward n.json").splitlines()[2].startswith(
        "| nucleus small, 36M params, float32, MoE: accel engine | `kv=stale` |")


def test_fewstep_table_pairs_each_method_with_the_teacher_over_prompts(tmp_path, monkeypatch):
    """Rows with per-prompt results get their difference to the teacher of the same run, paired over the prompts,
    with a 95% interval; rows recorded without them (and the teacher itself) get '-'."""
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    base = {"nfe": 4, "psnr": 20.0, "ssim": 0.5, "runtime": 0.1, "git_sha": "abcdef12", "dirty": False,
            "command": "accel bench fewstep"}
    teacher = [1, 1, 0, 1, 0, 1, 1, 0]
    student = [1, 0, 0, 1, 0, 1, 0, 0]  # loses two prompts, gains none: -0.25
    rows = [base | {"label": "teacher", "method": "teacher", "accuracy": 0.625, "correct": teacher},
            base | {"label": "s:nfe=4", "method": "sc-dmd", "accuracy": 0.375, "correct": student},
            base | {"label": "old", "method": "sc-dmd", "accuracy": 0.5}]
    out = doc_tables.render("fewstep " + _write(tmp_path, "f.json", rows)).splitlines()
    assert out[0].endswith("| vs teacher (paired, 95% interval) |")
    assert out[2].endswith("| - | - |") and out[4].endswith("| - | - |")
    half = 1.96 * (sum((d + 0.25) ** 2 for d in (0, -1, 0, 0, 0, 0, -1, 0)) / 7 / 8) ** 0.5
    assert out[3].endswith(f"| -0.250 ({-0.25 - half:+.3f} to {-0.25 + half:+.3f}) |")


def test_moe_table_pairs_each_option_with_the_models_trained_capacity(tmp_path, monkeypatch):
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    base = {"method": "constant", "expert_flops_fraction": 1.0, "ffn_macs_per_token": 5e5,
            "dropped_token_fraction": 0.1, "seconds": 1.0, "git_sha": "abcdef12", "dirty": False,
            "command": "accel bench moe"}
    rows = [base | {"model": "moe", "capacity": 0.5, "accuracy": 0.5, "correct": [1, 0, 0, 1]},
            base | {"model": "moe", "capacity": 1.0, "accuracy": 0.5, "correct": [1, 1, 0, 0]},
            base | {"model": "dense", "capacity": None, "method": "dense", "accuracy": 0.75,
                    "expert_flops_fraction": None, "dropped_token_fraction": None, "correct": [1, 1, 1, 0]}]
    out = doc_tables.render("moe " + _write(tmp_path, "m.json", rows)).splitlines()
    assert out[0].endswith("| vs capacity 1 (paired, 95% interval) |")
    half = 1.96 * (2 / 3 / 4) ** 0.5  # differences 0, -1, 0, +1
    assert out[2].endswith(f"| +0.000 ({-half:+.3f} to {half:+.3f}) |")
    assert out[3].endswith("| - |") and out[4].endswith("| - |")

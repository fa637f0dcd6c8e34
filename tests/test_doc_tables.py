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
    with pytest.raises(ValueError, match="allowed: eval, search"):
        doc_tables.render("bogus x.json")

import json
import os

import pytest

from accel.evals.io import check_writable, write_json


def test_write_json_is_atomic_and_readable(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json(path, {"a": 1})

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "x.png") == tmp_path / "x.png"
    with pytest.raises(ValueError, match="does not exist"):
        check_writable(tmp_path / "missing" / "x.png")
    with pytest.raises(ValueError, match="directory"):
        check_writable(tmp_path)

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


def test_source_state_sees_untracked_code_anywhere_but_not_results(tmp_path):
    import subprocess

    from accel.evals.io import source_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "one")
    sub = tmp_path / "pkg"
    assert source_state(sub)["dirty"] is False
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "rows.json").write_text("[]")  # a result: not code
    assert source_state(sub)["dirty"] is False
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "new.py").write_text("y = 2\n")  # untracked code outside the folder asked from
    state = source_state(sub)
    assert state["dirty"] is True and state["diff_sha256"]
    (tmp_path / "other" / "new.py").unlink()
    (tmp_path / "benchmarks" / "bench.py").write_text("z = 3\n")  # a benchmark script is code
    assert source_state(sub)["dirty"] is True
    (tmp_path / "benchmarks" / "bench.py").unlink()
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_state(sub)["dirty"] is True


def test_source_state_outside_a_checkout(tmp_path_factory):
    from accel.evals.io import source_state

    outside = tmp_path_factory.mktemp("not-a-checkout")
    assert source_state(outside) == {"git_sha": None, "dirty": None, "diff_sha256": None}


def test_source_state_declared_for_a_copy_without_git(tmp_path, monkeypatch):
    """A copy of a checkout without .git (a device machine) records the commit ACCEL_SOURCE_SHA names, marked as
    declared; anything but a full sha is ignored."""
    from accel.evals.io import source_state

    monkeypatch.setenv("ACCEL_SOURCE_SHA", "ab" * 20)
    assert source_state(tmp_path) == {"git_sha": "ab" * 20, "dirty": False, "diff_sha256": None,
                                      "source_declared": True}
    monkeypatch.setenv("ACCEL_SOURCE_SHA", "HEAD")
    assert source_state(tmp_path)["git_sha"] is None

"""Writing results files atomically: an interrupted run leaves the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def check_writable(path: str | Path) -> Path:
    """Raise ValueError unless a file can be written at path (its folder exists and is writable)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    if not parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {path}: folder {parent} is not writable")
    return path


def source_state(where: Path | None = None) -> dict:
    """The code a result comes from: git_sha (full), dirty (uncommitted changes, or untracked files anywhere in the
    checkout except results: non-Python files under benchmarks/) and, when dirty, diff_sha256 (a hash of
    `git diff HEAD` and the untracked files, so two dirty rows can be told apart).

    where: a folder inside the checkout (default: this package's). All three are None outside a git checkout (a
    regular install: its version names the code).
    """
    import hashlib
    import subprocess

    def git(*args: str, cwd: Path) -> bytes | None:
        try:
            out = subprocess.run(["git", *args], capture_output=True, timeout=20, cwd=cwd)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    here = Path(where) if where is not None else Path(__file__).resolve().parent
    sha, top = git("rev-parse", "HEAD", cwd=here), git("rev-parse", "--show-toplevel", cwd=here)
    if not sha or not top:
        return _declared_source()
    root = Path(top.decode().strip())
    # From the top: `git ls-files` run in a subfolder lists only that subfolder's files.
    diff, untracked = git("diff", "HEAD", "--binary", cwd=root), git("ls-files", "--others", "--exclude-standard",
                                                                      "-z", cwd=root)
    if diff is None or untracked is None:
        return {"git_sha": None, "dirty": None, "diff_sha256": None}
    names = sorted(n for n in untracked.decode().split("\0") if n and not _is_result(n))
    if not diff and not names:
        return {"git_sha": sha.decode().strip(), "dirty": False, "diff_sha256": None}
    h = hashlib.sha256(diff)
    for name in names:
        h.update(name.encode() + b"\0")
        if (root / name).is_file():
            h.update((root / name).read_bytes())
    return {"git_sha": sha.decode().strip(), "dirty": True, "diff_sha256": h.hexdigest()}


def _declared_source() -> dict:
    """The code's state where there is no checkout to read (an installed copy, a device machine that received the
    files without .git): the commit named by the environment variable ACCEL_SOURCE_SHA, which whoever copies an
    unmodified checkout of that commit sets (benchmarks/gpu_suite.sh), marked as declared; else unknown."""
    import os
    import re

    declared = os.environ.get("ACCEL_SOURCE_SHA", "")
    if re.fullmatch(r"[0-9a-f]{40}", declared):
        return {"git_sha": declared, "dirty": False, "diff_sha256": None, "source_declared": True}
    return {"git_sha": None, "dirty": None, "diff_sha256": None}


def _is_result(name: str) -> bool:
    """An untracked file that a run writes rather than code it runs: a non-Python file under benchmarks/ (the rows
    and plots of one recording must not mark the next one dirty)."""
    return name.startswith("benchmarks/") and not name.endswith(".py")


def require_clean(allow_dirty: bool = False) -> dict:
    """Check before a run that its rows can name committed code; return source_state().

    Raises ValueError when the checkout has uncommitted or untracked changes and allow_dirty is False: a row
    recorded from such a tree names a sha whose code did not make it.
    """
    state = source_state()
    if state["dirty"] and not allow_dirty:
        raise ValueError("the accel checkout has uncommitted or untracked changes (git status): commit them so the "
                         "results name the code that made them, or pass --allow-dirty to record them marked dirty")
    return state


def run_info(state: dict | None = None) -> dict:
    """Where and how a result was measured: machine, versions, the code (source_state(): git sha, dirty flag and
    diff hash when run from a checkout), command. Pass the state taken before the run (require_clean) so that edits
    made while it ran do not relabel it."""
    import importlib.metadata as md
    import platform
    import sys

    import torch

    state = source_state() if state is None else state
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu, {torch.get_num_threads()} threads"
    return {"machine": f"{platform.machine()} {platform.system()}", "device": device,
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": md.version("diffusers"),
            "transformers": md.version("transformers"), "accel": md.version("accel"), **state,
            "command": " ".join(["accel", *sys.argv[1:]])}

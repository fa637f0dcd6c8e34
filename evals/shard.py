"""Prompt sharding over processes and resumable results folders, shared by every eval.

An eval's prompts are cut into fixed chunks (a chunk is one batch of model calls and is the same whatever the number
of processes, so 1 and N processes compute bit-identical images); process r of N (torchrun / accelerate launch set
RANK and WORLD_SIZE) computes chunks r, r + N, ... A finished chunk's rows go to `<out>/accel-run/<start>.json`,
written atomically, so a killed run started again with the same settings skips the chunks it finished and ends with
the rows an uninterrupted run gets. The folder's `accel-run.json` names the run's settings: a folder holding a
different run is refused, naming the settings that differ.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from accel.evals.io import write_json

SETTINGS = "accel-run.json"
CHUNKS = "accel-run"


@dataclass(frozen=True)
class Shard:
    """This process's place among the eval's processes: rank in [0, world)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> "Shard":
        """The shard torchrun / accelerate launch assign (RANK, WORLD_SIZE); one process when unset. With several,
        torch.distributed is initialised (gloo on CPU, nccl on CUDA) so that the processes can gather rows."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world == 1:
            return cls()
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            # A group left to the interpreter's teardown can abort the process after its work is done (gloo on CPU:
            # "terminate called without an active exception", SIGABRT, seen in about 1 of 30 two-process runs).
            atexit.register(_destroy_group)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj) -> list:
        """Every process's obj, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class RunFolder:
    """A results folder filled chunk by chunk: `accel-run.json` (the settings) and `accel-run/<start>.json`."""

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the file

    def check(self, overwrite: bool = False) -> int:
        """Raise ValueError unless a run with these settings may write here; return the chunks already done.

        An empty or missing folder is new (prepare makes it, with its parents); one with the same settings resumes;
        anything else needs overwrite.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file, not a folder")
        above = next(p for p in self.path.parents if p.exists())
        if not above.is_dir():
            raise ValueError(f"cannot write {self.path}: {above} is a file, not a folder")
        if overwrite or not self.path.is_dir() or not any(self.path.iterdir()):
            return 0
        settings_file = self.path / SETTINGS
        if not settings_file.is_file():
            raise ValueError(f"{self.path} is not empty and holds no accel run; pass --overwrite to replace what "
                             f"it holds, or another folder")
        old = json.loads(settings_file.read_text())
        # another eval's run first: it names what the folder holds
        differ = sorted((k for k in old.keys() | self.settings.keys() if old.get(k) != self.settings.get(k)),
                        key=lambda k: (k != "eval", k))
        done = len(list((self.path / CHUNKS).glob("*.json")))
        if differ:
            shown = "; ".join(f"{k} {old.get(k)!r} there, {self.settings.get(k)!r} here" for k in differ[:3])
            lost = f"its {done} finished batches of prompts" if done else "nothing: it finished no prompts"
            raise ValueError(f"{self.path} holds a different run ({shown}): it resumes only with the same "
                             f"settings; pass --overwrite to replace it (losing {lost}), or another folder")
        return done

    def prepare(self, overwrite: bool = False) -> None:
        """Create the folder and record the settings (the main process, after every process's check)."""
        if overwrite and self.path.is_dir():
            for child in self.path.iterdir():
                if child.name.isdigit() or child.name == CHUNKS:  # our prompt folders and chunk rows
                    shutil.rmtree(child)
                elif child.name in (SETTINGS, "results.jsonl", "summary.json"):
                    child.unlink()
        (self.path / CHUNKS).mkdir(parents=True, exist_ok=True)
        write_json(self.path / SETTINGS, self.settings)

    def load(self, start: int) -> dict | None:
        path = self.path / CHUNKS / f"{start:06d}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, start: int, record: dict) -> None:
        write_json(self.path / CHUNKS / f"{start:06d}.json", record)


def run_chunks(n: int, chunk: int, work: Callable[[range], dict], shard: Shard = Shard(),
               folder: RunFolder | None = None, progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Run work(range of item indices) -> record over items [0, n) in chunks of `chunk`, this process's share only,
    skipping chunks the folder holds; return every chunk's record in order (gathered from all processes).

    A record is a JSON-able dict; its "seconds" (if any) is the chunk's compute time. progress(done, total) is
    called with this process's items done (resumed ones included) and its total.
    """
    starts = list(range(0, n, chunk))[shard.rank::shard.world]
    total = sum(min(chunk, n - s) for s in starts)
    records, done = {}, 0
    for start in starts:
        record = folder.load(start) if folder is not None else None
        if record is not None:
            records[start] = record
            done += min(chunk, n - start)
    if progress:
        progress(done, total)
    for start in starts:
        if start in records:
            continue
        t0 = time.perf_counter()
        record = work(range(start, min(start + chunk, n)))
        record.setdefault("seconds", time.perf_counter() - t0)
        if folder is not None:
            folder.save(start, record)
        records[start] = record
        done += min(chunk, n - start)
        if progress:
            progress(done, total)
    merged = {}
    for part in shard.gather(records):
        merged.update(part)
    return [merged[s] for s in sorted(merged)]

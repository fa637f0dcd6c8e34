"""Scale-out: a search's particles spread over 2 CPU processes (gloo) give the single process's result."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accel.search import Shards

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, out: Path) -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out)], env=env, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return [torch.load(f"{out}.{rank}") for rank in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return _run(1, tmp / "one")[0], _run(2, tmp / "two")


def test_two_processes_give_the_single_process_result(runs):
    single, (rank0, rank1) = runs
    for name, ref in single.items():
        for got in (rank0[name], rank1[name]):
            assert torch.equal(got["samples"], ref["samples"]), name
            assert torch.equal(got["rewards"], ref["rewards"]), name
            assert got["best"][-1] == ref["best"][-1], name  # (best-of-N records per group of chunks)
            assert got["nfe"] == ref["nfe"], name  # the budget is spent once, over both processes


def test_the_work_is_split(runs):
    single, (rank0, rank1) = runs
    for name, ref in single.items():
        assert rank0[name]["local_nfe"] + rank1[name]["local_nfe"] == ref["nfe"], name
    # Calls of more particles than one chunk (chunk_size=3 in the worker) are split between the processes.
    for name in ("bon", "smc", "epf"):
        assert rank0[name]["local_nfe"] > 0 and rank1[name]["local_nfe"] > 0, name


def test_shards_need_a_process_group():
    with pytest.raises(ValueError, match="torch.distributed"):
        Shards()

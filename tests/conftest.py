import os

# Offline, deterministic, and polite to a 2-core machine: spinning OpenMP threads fighting another process are
# many times slower than one thread (shared/notes/environment-cpu.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("ACCEL_TEST_THREADS", "1")))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)

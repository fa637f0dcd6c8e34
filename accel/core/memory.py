"""How much memory new tensors can take on a device, for checks made before a run allocates its caches."""

from __future__ import annotations

import torch


def free_memory(device: torch.device | str) -> int | None:
    """Bytes that new tensors on `device` can take: on CUDA the driver's free memory plus what the caching allocator
    holds unused; on CPU Linux's MemAvailable; None where that is not known (other devices or systems)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def gib(n: int) -> str:
    """Bytes as GiB for messages: '5.7 GiB'."""
    return f"{n / 2**30:.1f} GiB"

"""Several processes under `accelerate launch` (or torchrun): one per GPU, each with its own prompts and noise,
sharing the random choices of a step (exit index, SC timesteps) and averaging gradients before every update.

Gradients are all-reduced here instead of through a DistributedDataParallel wrapper because the adapters call
the transformer by attribute (config, dtype, cache_context), which a DDP wrapper hides; the update is DDP's
(mean of the per-process gradients). On one process every method is a no-op.
"""

from __future__ import annotations

import torch


class Processes:
    """accelerate's process state, with the two collectives the trainer needs."""

    def __init__(self, cpu: bool = False):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)

    @property
    def rank(self) -> int:
        return self.state.process_index

    @property
    def world(self) -> int:
        return self.state.num_processes

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @property
    def device(self) -> torch.device:
        return self.state.device

    def shared(self, value):
        """Rank 0's value on every process (Salt samples the rollout's random choices on rank 0 and broadcasts)."""
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over processes (one flat all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.flatten() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

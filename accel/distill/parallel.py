"""Several processes under `accelerate launch` (or torchrun): one per GPU, each with its own prompts and noise,
sharing the random choices of a step (exit index, SC timesteps) and averaging gradients before every update.

Gradients are all-reduced here instead of through a DistributedDataParallel wrapper because the adapters call
the transformer by attribute (config, dtype, cache_context), which a DDP wrapper hides; the update is DDP's
(mean of the per-process gradients). On one process every method is a no-op.

With `shard` (FSDP2's fully_shard, for students that do not fit one device) each transformer block and the rest of
the model are split over the processes: a forward gathers a block's weights just in time, the backward
reduce-scatters (and averages) its gradients, and every process keeps 1/world of the weights and optimizer state.
fully_shard changes the module in place and keeps its class and attributes, so the adapters call it as before.
"""

from __future__ import annotations

import torch


class Processes:
    """accelerate's process state, with the two collectives the trainer needs."""

    def __init__(self, cpu: bool = False):
        from accelerate import PartialState

        self.state = PartialState(cpu=cpu)
        self._mesh = None  # the device mesh of `shard`, made on first use

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

    def shard(self, module: torch.nn.Module) -> None:
        """FSDP2 over all processes (Distiller checks there are several), in place: every element of the module's
        block lists (ModuleLists, e.g. transformer_blocks), then the module itself. A model whose class names
        `fsdp_forward_methods` (entry points besides forward that run its blocks directly, e.g. the chunk-causal
        video model's) is one unit, gathered around each of those calls too."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        if self._mesh is None:
            self._mesh = init_device_mesh(self.device.type, (self.world,))
        methods = getattr(module, "fsdp_forward_methods", ())
        if not methods:  # a unit per block of every outermost block list (not the ModuleLists inside a block)
            lists: list[str] = []
            for name, child in module.named_modules():
                if isinstance(child, torch.nn.ModuleList) and not any(name.startswith(f"{n}.") for n in lists):
                    blocks = [b for b in child if any(True for _ in b.parameters())]
                    for block in blocks:
                        fully_shard(block, mesh=self._mesh)
                    if blocks:
                        lists.append(name)
        fully_shard(module, mesh=self._mesh)
        for method in methods:
            register_fsdp_forward_method(module, method)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


def is_sharded(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every process calls it); a plain tensor as it is."""
    return t.full_tensor() if is_sharded(t) else t


def place(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor sharded like `like` (a parameter or its optimizer state); as it is when `like` is plain."""
    if not is_sharded(like) or is_sharded(value) or value.shape != like.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements)

"""The Denoiser contract: the only code that knows a model family.

A Denoiser wraps one diffusers pipeline and exposes what samplers and search strategies need: a prepared start
(noise, conditioning, the pipeline's own sigma schedule), the guided velocity at any sigma, and decoding back to the
pipeline's output. It counts NFE itself: one forward of the denoiser on one sample; classifier-free guidance counts
2 (also when both branches share one batched forward).
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from accel.core.grid import TimeGrid


@functools.lru_cache(maxsize=512)
def _signature(func) -> inspect.Signature:
    return inspect.signature(func)


@functools.lru_cache(maxsize=512)
def _method_signature(func) -> inspect.Signature:
    sig = inspect.signature(func)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def signature(fn) -> inspect.Signature:
    """inspect.signature(fn), cached per function: the wrapper reads the pipeline's __call__, check_inputs and
    encode_prompt signatures on every call, 0.1-0.2 ms each (a bound method's is its function's without self)."""
    func = getattr(fn, "__func__", None)
    try:
        return _signature(fn) if func is None else _method_signature(func)
    except TypeError:  # an unhashable callable
        return inspect.signature(fn)


class UnsupportedCall(ValueError):
    """A call that the adapter path cannot reproduce (an argument, a scheduler) but the pipeline's own __call__ can."""


@dataclass
class Cond:
    """Conditioning for a batch of samples, opaque outside its adapter.

    batch: number of samples conditioned; passes: forwards per sample per velocity (2 with CFG); data: the
    adapter's tensors (prompt embeddings, masks, rotary ids, guidance, ...).
    """

    batch: int
    passes: int
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """Everything one sampling run needs: start latents x (packed as the transformer takes them), the
    conditioning, the time grid, and the call options the adapter needs again to decode."""

    x: torch.Tensor
    cond: Cond
    grid: TimeGrid
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLayout:
    """How the transformer's latent tokens map to space-time: tokens = frames * rows * cols, row-major."""

    frames: int
    rows: int
    cols: int

    @property
    def num_tokens(self) -> int:
        return self.frames * self.rows * self.cols


class Denoiser(ABC):
    """Adapter from one diffusers pipeline family to accel's samplers.

    Subclasses reuse the pipeline's own check_inputs, encode_prompt, prepare_latents, scheduler (its sigma
    schedule and shift) and VAE; they never copy the pipeline's __call__.
    """

    family: ClassVar[str]
    # The pipeline __call__ arguments that prepare() reproduces exactly; other arguments are the pipeline's own.
    call_args: ClassVar[frozenset[str]]

    def __init__(self, pipe):
        self.pipe = pipe
        self.nfe = 0

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    def denoising_modules(self) -> list[torch.nn.Module]:
        """Every module that evaluates the velocity (Wan 2.2 has a second expert, transformer_2)."""
        return [m for m in (self.pipe.transformer, getattr(self.pipe, "transformer_2", None)) if m is not None]

    def check_supported(self, call: dict[str, Any]) -> None:
        """Raise UnsupportedCall unless prepare() + accel's samplers reproduce this call exactly."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if unsupported := self.unsupported(call):
            raise UnsupportedCall(f"{type(self).__name__} does not reproduce the argument(s) {', '.join(unsupported)}")
        scheduler = self.pipe.scheduler
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or scheduler.config.get("stochastic_sampling"):
            # A multistep solver (UniPC, DPM++) or a stochastic step is not what accel's flow samplers compute.
            raise UnsupportedCall(f"{type(self).__name__} reproduces the deterministic FlowMatchEulerDiscreteScheduler "
                                  f"only, the pipeline has {type(scheduler).__name__}; set pipe.scheduler = "
                                  "FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config) to use accel")

    @abstractmethod
    def prepare(self, **call: Any) -> Prepared:
        """Validate the call as the pipeline does, encode prompts, draw start noise, build the time grid."""

    @abstractmethod
    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The guided velocity at sigma (0-d tensor, or per sample (B,)); no NFE bookkeeping."""

    @abstractmethod
    def decode(self, x: torch.Tensor, prepared: Prepared) -> Any:
        """Final latents -> the pipeline's own output object (images / frames in the requested output_type)."""

    @abstractmethod
    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """How x's tokens map to frames/rows/cols."""

    def bind(self, call: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments with the pipeline's own defaults filled in. Unknown names raise ValueError."""
        sig = signature(self.pipe.__call__)
        try:
            bound = sig.bind(**call)
        except TypeError as e:
            allowed = ", ".join(p for p in sig.parameters if p not in ("self", "kwargs"))
            raise ValueError(f"{type(self.pipe).__name__}: {e}; allowed arguments: {allowed}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    def unsupported(self, call: dict[str, Any]) -> list[str]:
        """Arguments given with a non-default value that prepare() does not reproduce."""
        params = signature(self.pipe.__call__).parameters
        return sorted(k for k, v in call.items()
                      if k not in self.call_args and k in params and v is not params[k].default)

    def chunked(self, cond: Cond, x: torch.Tensor):
        """For a chunk-causal model (an autoregressive few-step student): the object accel.schedulers.fewstep.
        fewstep_stream runs chunk by chunk (num_chunks, chunk, join, velocity, commit); None for every other model."""
        return None

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Guided velocity v = eps - x0 at sigma for the batch x, counted in NFE."""
        if x.shape[0] != cond.batch:
            raise ValueError(f"x has batch {x.shape[0]} but the conditioning has {cond.batch}")
        v = self._velocity(x, sigma, cond)
        self.nfe += x.shape[0] * cond.passes
        return v

    # Keys of Cond.data that hold per-sample rows (dim 0) and so must be repeated when particles share a sample's
    # conditioning; everything else (ids, scales, kwargs) is shared as is. CFG-batched tensors ([uncond; cond] for
    # one sample) stay in the [uncond x n; cond x n] layout that chunk(2) splits, because each row is repeated.
    batched_cond_keys: ClassVar[tuple[str, ...]] = ()

    def expand_cond(self, cond: Cond, n: int) -> Cond:
        """The conditioning of one sample (cond.batch == 1) for n samples that share it: the particles of one
        prompt in search."""
        if cond.batch != 1 or n < 1:
            raise ValueError(f"expand_cond takes the conditioning of one sample to n >= 1, got batch {cond.batch}, "
                             f"n={n}")
        if not self.batched_cond_keys:
            raise NotImplementedError(f"{type(self).__name__} does not declare batched_cond_keys, which search needs")
        data = {k: v.repeat_interleave(n, 0) if k in self.batched_cond_keys and v is not None else v
                for k, v in cond.data.items()}
        return Cond(batch=n, passes=cond.passes, data=data)

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        """The family's active-token forward for heterogeneous steps, `(x, sigma, active) -> v_active` for one
        sampling run (it keeps per-run K/V caches; kv: how the inactive tokens' K/V are kept, HSAConfig.kv), or
        None where the family has none (then HSA computes every token and gathers: exact, but no saving). See
        accel.schedulers.hsa."""
        return None

    def blocks(self) -> list[torch.nn.Module]:
        """The transformer blocks, in execution order (for hooks)."""
        t = self.transformer
        out: list[torch.nn.Module] = []
        for name in ("transformer_blocks", "single_transformer_blocks", "blocks"):
            out.extend(getattr(t, name, None) or [])
        return out


def cache_context(model: torch.nn.Module, name: str = "cond", **context):
    """diffusers' cache context around a denoiser forward, as its pipelines set it: the state of cache hooks a user
    enabled on the model (FirstBlockCache, TaylorSeer, MagCache, ...) is kept per context. A no-op context for
    models without diffusers' CacheMixin."""
    import contextlib

    if hasattr(model, "cache_context"):
        return model.cache_context(name, **context)
    return contextlib.nullcontext()

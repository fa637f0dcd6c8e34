"""`apply_fused_kernels(model) -> handle`: route a transformer's hot paths through accel.kernels, reversibly.

The hooks replace `forward` (or the diffusers attention processor) on individual module instances; nothing on a
class changes, and `handle.remove()` puts back the exact objects that were there. The replacements call the
public kernel functions, which dispatch per call: Triton for CUDA tensors, the pure-torch reference otherwise, so
on CPU a hooked model computes what the unhooked one does (tests/kernels/test_fused_kernels.py).

Supported models and what is fused (each part can be turned off in FusedKernelsConfig):

| model | modulated_norm | gated_residual | qk_norm_rope |
|---|---|---|---|
| ShapesTransformer2DModel (built-in) | both DiTBlock modulations | both DiTBlock gates | q/k RMSNorm (no rotary) |
| FluxTransformer2DModel | AdaLayerNormZero(+Single) | - (inline in upstream block forwards) | FluxAttnProcessor |
| WanTransformer3DModel | both block modulations | both gated residuals | self-attn (+rotary), cross-attn |
| SD3Transformer2DModel | AdaLayerNormZero | - (inline in upstream block forwards) | - (no rotary) |

Models register their installers (register_fused_installer); the built-in DiT's lives in
accel.pipelines.shapes_kernels, registered when accel.pipelines is imported.
Flux and SD3 write their gated residuals inline in upstream block forwards; fusing them would mean forking those
forwards (STYLE.md: reuse upstream, do not copy it). Wan's block forward is mirrored (25 lines) because its
modulations and gates are float32 round trips through memory, the largest saving; its I2V attention (add_k_proj)
keeps the upstream processor. The mirrors are checked against upstream's output in the tests.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from accel.kernels.gated_residual import gated_residual, gated_residual_reference
from accel.kernels.modulated_norm import modulated_layer_norm, modulated_layer_norm_reference

FUSED_MARK = "_accel_fused_kernels"  # set on every replacement, to refuse applying twice


@dataclass(frozen=True)
class FusedKernelsConfig:
    """Which fused paths `apply_fused_kernels` installs; each one can be turned off.

    Attributes:
        modulated_norm: `LN(x) * (1 + scale) + shift` (adaLN, Peebles & Xie 2023, "Scalable Diffusion Models
            with Transformers").
        gated_residual: `x + gate * y` (adaLN-Zero's gate).
        qk_norm_rope: query/key RMSNorm fused with rotary embedding.
    """

    modulated_norm: bool = True
    gated_residual: bool = True
    qk_norm_rope: bool = True


@dataclass
class FusedKernelsHandle:
    """What apply_fused_kernels changed; `remove()` restores the model exactly (idempotent).

    Attributes:
        counts: fused call sites per path, e.g. {"modulated_norm": 4, "gated_residual": 4, "qk_norm_rope": 2};
            a mirrored DiT or Wan block counts its two modulations and two gates.
    """

    counts: dict[str, int] = field(default_factory=dict)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def add(self, undo: Callable[[], None], *parts: str) -> None:
        """Record one replacement (its undo) and the fused paths it routes, one count per occurrence."""
        for part in parts:
            self.counts[part] = self.counts.get(part, 0) + 1
        self._undo.append(undo)

    def remove(self) -> None:
        """Undo every replacement, last first."""
        while self._undo:
            self._undo.pop()()


def replace_forward(module: nn.Module, fn: Callable, mark: str | None = FUSED_MARK) -> Callable[[], None]:
    """Bind fn(module, ...) as this instance's forward; return the undo (it restores an earlier instance forward
    too). fn may be a functools.partial carrying the replacement's options; mark (an attribute set on the bound
    function, the fused kernels' by default) lets is_fused-style checks recognise the replacement."""
    had_own = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    impl = functools.partial(fn)  # a fresh object per install, so marking it touches no shared function
    if mark is not None:
        setattr(impl, mark, True)
    module.forward = types.MethodType(impl, module)

    def undo() -> None:
        if had_own:
            module.forward = previous
        else:
            del module.forward

    return undo


def is_fused(module: nn.Module) -> bool:
    """True when apply_fused_kernels already replaced this module's forward or attention processor."""
    forward = module.__dict__.get("forward")
    processor = getattr(module, "processor", None)
    return bool(getattr(getattr(forward, "__func__", None), FUSED_MARK, False) or getattr(processor, FUSED_MARK, False))


def rms_eps(norm: nn.RMSNorm, x: torch.Tensor) -> float:
    """nn.RMSNorm's epsilon; None means torch.finfo(x.dtype).eps, as nn.RMSNorm does."""
    return norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------


def modulation_ops(config: FusedKernelsConfig) -> dict[str, Callable]:
    """The modulate / gate functions a block mirror calls: fused, or the references (the unfused ops)."""
    return {"modulate": modulated_layer_norm if config.modulated_norm else modulated_layer_norm_reference,
            "gate": gated_residual if config.gated_residual else gated_residual_reference}


def block_parts(config: FusedKernelsConfig, per_block: int) -> tuple[str, ...]:
    """Count names for a mirrored block with per_block modulations and per_block gates."""
    return tuple(p for p in ("modulated_norm", "gated_residual") if getattr(config, p) for _ in range(per_block))


Installer = Callable[[nn.Module, FusedKernelsConfig, FusedKernelsHandle], None]
_REGISTERED: list[tuple[type, Installer]] = []


def register_fused_installer(model_class: type, installer: Installer) -> None:
    """Teach apply_fused_kernels a model class: installer(model, config, handle) hooks the model's modules and
    adds each restore function to the handle. Model code registers itself (imports point from models to kernels:
    accel.pipelines registers the built-in models)."""
    if not any(cls is model_class for cls, _ in _REGISTERED):
        _REGISTERED.append((model_class, installer))


def _installers() -> list[tuple[type, Installer]]:
    """(model class, installer) pairs: the registered models, then diffusers' (imported lazily so that
    accel.kernels imports without diffusers models)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, WanTransformer3DModel

    from accel.kernels import fused_diffusers

    return [
        *_REGISTERED,
        (FluxTransformer2DModel, fused_diffusers.install_flux),
        (WanTransformer3DModel, fused_diffusers.install_wan),
        (SD3Transformer2DModel, fused_diffusers.install_sd3),
    ]


def supports_fused_kernels(model: nn.Module) -> bool:
    """Whether apply_fused_kernels accepts this model (to apply it only where it fits, without try/except)."""
    return any(isinstance(model, cls) for cls, _ in _installers())


def apply_fused_kernels(model: nn.Module, config: FusedKernelsConfig | None = None) -> FusedKernelsHandle:
    """Route a supported transformer's modulations, gates and q/k norm + rotary through accel.kernels.

    Args:
        model: the denoiser transformer (pipe.transformer): ShapesTransformer2DModel, FluxTransformer2DModel,
            WanTransformer3DModel or SD3Transformer2DModel (see the module docstring for what each gets).
        config: which fused paths to install; FusedKernelsConfig() installs all.

    Returns:
        A FusedKernelsHandle; `handle.remove()` restores the model exactly.

    Raises:
        ValueError: for another model class, or a model that already has fused kernels applied.

    Example:
        >>> handle = apply_fused_kernels(pipe.transformer)   # doctest: +SKIP
        >>> images = pipe("a photo of a red circle").images  # doctest: +SKIP
        >>> handle.remove()                                  # doctest: +SKIP
    """
    config = config or FusedKernelsConfig()
    if not isinstance(config, FusedKernelsConfig):
        raise ValueError(f"config must be a FusedKernelsConfig, got {type(config).__name__}")
    installers = _installers()
    install = next((fn for cls, fn in installers if isinstance(model, cls)), None)
    if install is None:
        names = ", ".join(cls.__name__ for cls, _ in installers)
        hint = " (pass pipe.transformer, not the pipeline)" if hasattr(model, "transformer") else ""
        raise ValueError(f"apply_fused_kernels supports {names}; got {type(model).__name__}{hint}")
    if any(is_fused(m) for m in model.modules()):
        raise ValueError("fused kernels are already applied to this model; remove the first handle before "
                         "applying again")
    handle = FusedKernelsHandle()
    try:
        install(model, config, handle)
    except Exception:
        handle.remove()
        raise
    return handle

"""One place that maps diffusers pipeline classes to their Denoiser adapters (imported lazily), and says which accel
options each family supports."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from accel.core.denoiser import Denoiser

# Every adapter supports the Denoiser contract's options: search= (reward-guided search), steps="hsa" (per-token
# step allocation: exact, and it saves compute where the family has an active-token forward, "hsa_cache") and
# sampler="fewstep" (on a distilled student of the family). "fused_kernels": accel.kernels' Triton paths for its
# transformer class.
CONTRACT_OPTIONS = ("search", "steps=hsa", "sampler=fewstep")
EXTRA_OPTIONS = ("hsa_cache", "fused_kernels")


@dataclass(frozen=True)
class Family:
    """A supported pipeline class: its adapter (module, class name), a short name, and its extra options."""

    module: str
    adapter: str
    name: str
    extras: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        return CONTRACT_OPTIONS + self.extras


# pipeline class name -> Family
ADAPTERS: dict[str, Family] = {
    "ShapesPipeline": Family("accel.pipelines.shapes", "ShapesDenoiser", "shapes", EXTRA_OPTIONS),
    "ShapesVideoPipeline": Family("accel.pipelines.shapes_video", "ShapesVideoDenoiser", "shapes-video",
                                  ("hsa_cache",)),
    "FluxPipeline": Family("accel.pipelines.flux", "FluxDenoiser", "flux", EXTRA_OPTIONS),
    "FluxKontextPipeline": Family("accel.pipelines.flux_kontext", "FluxKontextDenoiser", "flux-kontext",
                                  ("fused_kernels",)),
    "Flux2Pipeline": Family("accel.pipelines.flux2", "Flux2Denoiser", "flux2"),
    "Flux2KleinPipeline": Family("accel.pipelines.flux2", "Flux2Denoiser", "flux2"),
    "ChromaPipeline": Family("accel.pipelines.chroma", "ChromaDenoiser", "chroma"),
    "StableDiffusion3Pipeline": Family("accel.pipelines.sd3", "SD3Denoiser", "sd3", ("fused_kernels",)),
    "QwenImagePipeline": Family("accel.pipelines.qwenimage", "QwenImageDenoiser", "qwenimage"),
    "ZImagePipeline": Family("accel.pipelines.zimage", "ZImageDenoiser", "zimage"),
    "NucleusMoEImagePipeline": Family("accel.pipelines.nucleus", "NucleusDenoiser", "nucleus", ("hsa_cache",)),
    "WanPipeline": Family("accel.pipelines.wan", "WanDenoiser", "wan", EXTRA_OPTIONS),
    "LTXPipeline": Family("accel.pipelines.ltx", "LTXDenoiser", "ltx"),
    "HunyuanVideo15Pipeline": Family("accel.pipelines.hunyuanvideo15", "HunyuanVideo15Denoiser", "hunyuanvideo15"),
}


def supported_families() -> list[str]:
    return sorted(ADAPTERS)


def families_with(option: str) -> list[str]:
    """The pipeline classes whose family supports an option (one of CONTRACT_OPTIONS + EXTRA_OPTIONS)."""
    if option not in CONTRACT_OPTIONS + EXTRA_OPTIONS:
        raise ValueError(f"unknown option {option!r}; allowed: {', '.join(CONTRACT_OPTIONS + EXTRA_OPTIONS)}")
    return sorted(name for name, family in ADAPTERS.items() if option in family.options)


def family_of(pipe) -> tuple[str, Family]:
    """(the registered pipeline class name, its Family) for a pipeline instance, matched on its class or a base
    class (a community fork of a supported pipeline is matched through the class it derives from)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in ADAPTERS:
            return cls.__name__, ADAPTERS[cls.__name__]
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}; supported: {', '.join(supported_families())} "
                     "(or a class derived from one of them)")


def require_option(pipe, option: str) -> None:
    """Raise a ValueError naming the families that support `option` where this pipeline's family does not."""
    name, family = family_of(pipe)
    if option not in family.options:
        raise ValueError(f"{option} does not apply to {name} (family {family.name}); it does to: "
                         f"{', '.join(families_with(option))}")


def adapter_class(pipe) -> type[Denoiser]:
    """The adapter class for a pipeline instance (matched on its class or a base class)."""
    _, family = family_of(pipe)
    return getattr(importlib.import_module(family.module), family.adapter)


def adapter_for(pipe) -> Denoiser:
    """A fresh Denoiser over this pipeline."""
    return adapter_class(pipe)(pipe)

"""One place that maps diffusers pipeline classes to their Denoiser adapters (imported lazily)."""

from __future__ import annotations

import importlib

from accel.core.denoiser import Denoiser

# pipeline class name -> (module, adapter class)
ADAPTERS: dict[str, tuple[str, str]] = {
    "ShapesPipeline": ("accel.pipelines.shapes", "ShapesDenoiser"),
    "ShapesVideoPipeline": ("accel.pipelines.shapes_video", "ShapesVideoDenoiser"),
    "FluxPipeline": ("accel.pipelines.flux", "FluxDenoiser"),
    "StableDiffusion3Pipeline": ("accel.pipelines.sd3", "SD3Denoiser"),
    "WanPipeline": ("accel.pipelines.wan", "WanDenoiser"),
    "NucleusMoEImagePipeline": ("accel.pipelines.nucleus", "NucleusDenoiser"),
    "QwenImagePipeline": ("accel.pipelines.qwenimage", "QwenImageDenoiser"),
    "FluxKontextPipeline": ("accel.pipelines.flux_kontext", "FluxKontextDenoiser"),
    "ChromaPipeline": ("accel.pipelines.chroma", "ChromaDenoiser"),
    "ZImagePipeline": ("accel.pipelines.zimage", "ZImageDenoiser"),
    "LTXPipeline": ("accel.pipelines.ltx", "LTXDenoiser"),
    "Flux2Pipeline": ("accel.pipelines.flux2", "Flux2Denoiser"),
    "Flux2KleinPipeline": ("accel.pipelines.flux2", "Flux2Denoiser"),
}


def supported_families() -> list[str]:
    return sorted(ADAPTERS)


def adapter_class(pipe) -> type[Denoiser]:
    """The adapter class for a pipeline instance (matched on its class or a base class)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in ADAPTERS:
            module, name = ADAPTERS[cls.__name__]
            return getattr(importlib.import_module(module), name)
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}; supported: {', '.join(supported_families())}")


def adapter_for(pipe) -> Denoiser:
    """A fresh Denoiser over this pipeline."""
    return adapter_class(pipe)(pipe)

"""Diffusion language model decoding (see accel.dllm.decode.generate) and the built-in model's task."""

from accel.dllm.decode import (
    DECODERS, AdaBlockConfig, DecodeStats, FastDLLMConfig, Generation, LLaDAConfig, WindowConfig, generate,
    get_decoder,
)

__all__ = ["DECODERS", "AdaBlockConfig", "DecodeStats", "FastDLLMConfig", "Generation", "LLaDAConfig",
           "WindowConfig", "generate", "get_decoder"]

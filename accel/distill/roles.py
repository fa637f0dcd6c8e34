"""The three players of DMD over one teacher pipeline: the frozen teacher (real score, with CFG), the student
(generator) and the fake score (critic), each a Denoiser adapter over a pipeline that shares every component of
the teacher's but the transformer.

This module knows no model family: the only family-specific fact it needs, whether the teacher's guidance costs a
second forward (classifier-free guidance, turned off for the student) or is a model input (Flux's embedded
guidance, kept), it reads from the adapter's Cond.passes.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from accel.core.denoiser import Denoiser
from accel.pipelines.registry import adapter_for


def with_transformer(pipe, transformer: torch.nn.Module):
    """A pipeline of pipe's class sharing every component (and config value, e.g. Wan's boundary_ratio) of pipe's
    but the transformer."""
    params = inspect.signature(type(pipe).__init__).parameters
    config = {k: pipe.config[k] for k in params if k not in pipe.components and k in pipe.config}
    out = type(pipe)(**{**pipe.components, **config, "transformer": transformer})
    out.set_progress_bar_config(disable=True)
    return out


def check_teacher(pipe) -> None:
    """ValueError for teachers out of scope: no adapter, or two experts (Wan 2.2's transformer_2)."""
    adapter_for(pipe)  # raises ValueError naming the supported families
    if getattr(pipe, "transformer", None) is None:
        raise ValueError(f"{type(pipe).__name__} has no transformer to distil")
    if getattr(pipe, "transformer_2", None) is not None:
        raise ValueError("teachers with two experts (Wan 2.2's transformer_2) are not supported: distil a "
                         "single-transformer pipeline (Wan 2.1)")


def default_guidance(pipe) -> float:
    """The pipeline's own default guidance_scale (its __call__ signature)."""
    param = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    if param is None or not isinstance(param.default, (int, float)):
        raise ValueError(f"{type(pipe).__name__} has no guidance_scale argument; pass guidance explicitly")
    return float(param.default)


def student_call(teacher: Denoiser, guidance: float, call_args: dict) -> dict:
    """The call arguments of the student and the fake score: CFG off ({"guidance_scale": 1.0}) where the teacher's
    guidance is classifier-free (2 passes), the teacher's value where it is a model input (1 pass, Flux)."""
    with torch.no_grad():
        cond = teacher.prepare(prompt="a photo", guidance_scale=guidance, num_inference_steps=1, **call_args).cond
    return {"guidance_scale": 1.0 if cond.passes == 2 else float(guidance)}


def scheduler_shift(adapter: Denoiser, call: dict) -> float:
    """The time shift of the teacher's scheduler; with dynamic shifting (Flux), exp(mu) for this call's token
    count, which is the same warp (diffusers' exponential time shift with exponent 1)."""
    config = adapter.pipe.scheduler.config
    if not config.get("use_dynamic_shifting", False):
        return float(config.get("shift", 1.0))
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    with torch.no_grad():
        x = adapter.prepare(prompt="a photo", num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                            **call).x
    tokens = adapter.token_layout(x).num_tokens
    mu = calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    return float(math.exp(mu))


def fingerprint(module: torch.nn.Module, legacy: bool = False) -> str:
    """A short hash of a transformer (a teacher; in `accel bench fewstep` rows, a student): its class, config,
    parameter shapes and a sample of its values (enough to tell two apart without hashing billions of weights).
    diffusers' private config entries (_diffusers_version, _name_or_path, _use_default_values: a set, ordered
    differently in every process) are left out, so the same model has the same fingerprint in every process and
    after an upgrade. legacy: the fingerprint accel wrote before (private entries included), so that older
    checkpoints still resume."""
    h = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        public = {k: v for k, v in dict(config).items() if legacy or not str(k).startswith("_")}
        h.update(json.dumps(public, sort_keys=True, default=str).encode())
    for name, p in module.state_dict().items():
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(np.ascontiguousarray(p.detach().flatten()[:64].float().cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def add_lora(module: torch.nn.Module, rank: int) -> torch.nn.Module:
    """LoRA adapters (peft) of rank `rank` on every attention projection (to_q / to_k / to_v / to_out linears);
    everything else frozen."""
    if importlib.util.find_spec("peft") is None:
        raise ValueError("lora_rank needs the peft package: pip install peft")
    from peft import LoraConfig, inject_adapter_in_model

    names = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)
             and (n.split(".")[-1] in ("to_q", "to_k", "to_v", "to_out") or n.endswith("to_out.0"))]
    if not names:
        raise ValueError(f"{type(module).__name__} has no attention projections (to_q, to_k, to_v, to_out) for LoRA")
    module.requires_grad_(False)
    return inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=names), module)


def merge_lora(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of module with its LoRA adapters merged into plain weights (module itself if it has none)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return module
    if not any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        return module
    merged = copy.deepcopy(module)
    for name, m in list(merged.named_modules()):
        if isinstance(m, BaseTunerLayer):
            m.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, m.get_base_layer())
    return merged


@dataclass
class Roles:
    """The teacher (frozen, CFG), the student being trained and the fake score, as adapters; `student_call` is
    the call that turns the teacher's CFG off (and what the saved student records as its call_defaults)."""

    teacher: Denoiser
    student: Denoiser
    critic: Denoiser
    student_call: dict


def trainable_copy(module: torch.nn.Module, lora_rank: int | None) -> torch.nn.Module:
    """A deep copy of module with every weight trainable, or frozen with LoRA adapters of lora_rank."""
    module = copy.deepcopy(module)
    return add_lora(module, lora_rank) if lora_rank is not None else module.requires_grad_(True)


def build_roles(pipe, guidance: float, call_args: dict, lora_rank: int | None) -> Roles:
    """Freeze the teacher pipeline (in place: no gradients, eval mode) and make the student and the fake score
    from copies of its transformer (LoRA on both when lora_rank is set)."""
    check_teacher(pipe)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False).eval()
    teacher = adapter_for(pipe)
    student_module, critic_module = (trainable_copy(pipe.transformer, lora_rank) for _ in range(2))
    return Roles(teacher=teacher, student=adapter_for(with_transformer(pipe, student_module.train())),
                 critic=adapter_for(with_transformer(pipe, critic_module.train())),
                 student_call=student_call(teacher, guidance, call_args))

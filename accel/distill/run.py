"""`distill()`: train a few-step student of a teacher pipeline and save it as a student pipeline folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from accel.distill import checkpoint
from accel.distill.config import DistillConfig
from accel.distill.roles import merge_lora, with_transformer
from accel.distill.trainer import Distiller, Progress
from accel.schedulers.fewstep import TIMESTEPS, StudentSpec


def export_student(distiller: Distiller, out_dir: str | Path, ema: bool = True) -> Path:
    """The teacher pipeline with the student transformer (EMA weights by default; LoRA merged) saved as a diffusers
    folder (safetensors), plus student.json (accel.schedulers.fewstep.StudentSpec) and distill.json. Every process
    calls it (under FSDP it gathers the student's shards); the main one writes."""
    from accel.evals.io import write_json

    c = distiller.config
    module = distiller.student_module(ema)
    out_dir = Path(out_dir)
    if not distiller.processes.is_main:
        return out_dir
    module = merge_lora(module)
    with_transformer(distiller.roles.teacher.pipe, module).save_pretrained(out_dir, safe_serialization=True)
    StudentSpec(timesteps={n: TIMESTEPS[n] for n in sorted(c.nfe, reverse=True)}, shift=c.shift, rule=c.rule,
                method="ar" if c.ar is not None else c.method, teacher=distiller.teacher_name,
                teacher_guidance=c.guidance,
                call_defaults=dict(distiller.roles.student_call)).save(out_dir)
    write_json(out_dir / "distill.json", {
        "config": c.to_dict(), "teacher": distiller.teacher_name, "teacher_fingerprint": distiller.teacher_id,
        "prompts": distiller.prompts.name, "steps": distiller.step, "seconds": round(distiller.seconds, 1),
        "weights": "ema" if ema else "live", "torch": torch.__version__})
    return out_dir


def distill(teacher_pipe, config: DistillConfig, prompts=None, out_dir: str | Path = "student",
            checkpoint_dir: str | Path | None = None, resume: bool = True, overwrite: bool = False,
            teacher_name: str = "", progress: Progress | None = None) -> Path:
    """Distil teacher_pipe into a few-step student saved at out_dir; returns out_dir.

    Args:
        teacher_pipe: a diffusers pipeline with an accel adapter (frozen in place).
        config: the run's DistillConfig.
        prompts: None (the built-in models' grammars), a list of prompts, a prompt file or a PromptSource.
        checkpoint_dir: where checkpoints and the loss log go (default out_dir / "checkpoints").
        resume: continue from the latest checkpoint in checkpoint_dir when there is one (config.steps may grow);
            with resume=False an existing checkpoint is an error unless overwrite.
        overwrite: allow replacing an existing student folder or (with resume=False) checkpoints.
        progress: called as progress(step, total, losses) after every iteration.

    Then `accelerate_pipeline(load_pipeline(out_dir))(prompt, sampler="fewstep", num_inference_steps=4)`.
    """
    out_dir = Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else out_dir / "checkpoints"
    found = checkpoint.latest(ckpt_dir)
    if found is not None and not resume and not overwrite:
        raise ValueError(f"{ckpt_dir} has a checkpoint (step {found.name.split('-')[-1].lstrip('0') or 0}); resume "
                         "it, or pass overwrite to start over")
    if (found is None or not resume) and (out_dir / "model_index.json").exists() and not overwrite:
        raise ValueError(f"{out_dir} already holds a pipeline; pass overwrite to replace it")
    distiller = Distiller(teacher_pipe, config, prompts, ckpt_dir, teacher_name)
    if found is not None and resume:
        distiller.load_checkpoint(found)
    elif found is not None and distiller.processes.is_main:
        shutil.rmtree(ckpt_dir)
    distiller.fit(progress)
    export_student(distiller, out_dir)
    distiller.processes.barrier()
    return out_dir

"""Few-step distillation of any adapted teacher pipeline: DMD2 and Salt's SC-DMD (data-free, prompts only).

    from accel.distill import DistillConfig, distill
    distill(load_pipeline("shapes"), DistillConfig(method="sc-dmd", steps=2000), out_dir="shapes-4step")

The student samples with accel.schedulers.fewstep (`pipe(..., sampler="fewstep", num_inference_steps=4)`).
Modules: config (DistillConfig), grids (time grids, Salt's SC timestep rules), losses, rollout (backward
simulation), roles (teacher / student / fake score adapters, LoRA), trainer (the loop), checkpoint (exact resume),
prompts (data-free prompt sources), parallel (accelerate processes), run (distill, export_student), causal
(autoregressive students: Salt's cache-distribution-aware recipe).
"""

from accel.distill.config import METHODS, ARConfig, DistillConfig
from accel.distill.prompts import PromptSource, file_prompts, list_prompts, shapes_image_prompts, shapes_video_prompts
from accel.distill.run import distill, export_student
from accel.distill.trainer import DistillDiverged, Distiller

__all__ = ["METHODS", "ARConfig", "DistillConfig", "DistillDiverged", "Distiller", "PromptSource", "distill",
           "export_student", "file_prompts", "list_prompts", "shapes_image_prompts", "shapes_video_prompts"]

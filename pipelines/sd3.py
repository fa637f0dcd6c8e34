"""Adapter for diffusers' StableDiffusion3Pipeline (SD3 / SD3.5 text-to-image).

The transformer takes the VAE latents (B, 16, H/8, W/8) and patchifies them itself (patch size 2), so x stays
unpacked. Classifier-free guidance runs both branches in one batched forward, [uncond; cond], as the pipeline does.
The scheduler's sigmas carry a static shift (3.0 for SD3), or a dynamic one (`mu`) if the scheduler is configured
so; the sigmas and timesteps stay those of FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

from accel.core.denoiser import Cond, TokenLayout
from accel.core.grid import TimeGrid
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, kl_decode, scheduler_grid, shift_mu


class SD3Denoiser(FlowDenoiser):
    """Stable Diffusion 3 (Esser et al., 2024, "Scaling Rectified Flow Transformers") over its diffusers pipeline.

    x is the latent (B, C, H / 8, W / 8) for an H x W image. NFE per velocity: 1 per sample, 2 with CFG
    (guidance_scale > 1), counted per branch although both branches share one forward.
    """

    family = "sd3"
    call_args = frozenset({
        "prompt", "prompt_2", "prompt_3", "height", "width", "num_inference_steps", "sigmas", "guidance_scale",
        "negative_prompt", "negative_prompt_2", "negative_prompt_3", "num_images_per_prompt", "generator", "latents",
        "prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds",
        "output_type", "return_dict", "joint_attention_kwargs", "clip_skip", "max_sequence_length", "mu",
    })
    batched_cond_keys = ("embeds", "pooled")
    cfg_batched = True
    output_class = StableDiffusion3PipelineOutput

    def encode(self, a: dict[str, Any]) -> Cond:
        """Embeddings (2B, T, D) and pooled (2B, P) as [negative; positive] with CFG, else (B, ...)."""
        cfg = a["guidance_scale"] > 1  # the pipeline's do_classifier_free_guidance
        attention_kwargs = a["joint_attention_kwargs"]
        embeds, neg_embeds, pooled, neg_pooled = call_by_name(
            self.pipe.encode_prompt, a, do_classifier_free_guidance=cfg, device=self.device,
            lora_scale=attention_kwargs.get("scale") if attention_kwargs is not None else None)
        if cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds], dim=0), torch.cat([neg_pooled, pooled], dim=0)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if cfg else 1,
                    data={"embeds": embeds, "pooled": pooled, "guidance_scale": a["guidance_scale"],
                          "attention_kwargs": attention_kwargs})

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        pipe = self.pipe
        return pipe.prepare_latents(cond.batch, pipe.transformer.config.in_channels, a["height"], a["width"],
                                    cond.data["embeds"].dtype, self.device, a["generator"], a["latents"])

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """The scheduler's own shift; mu from the token count if the shift is dynamic and the call gave none."""
        config, mu = self.pipe.scheduler.config, a["mu"]
        if config.get("use_dynamic_shifting", None) and mu is None:
            mu = shift_mu(config, self.token_layout(x).num_tokens, max_shift=1.16)
        return scheduler_grid(self.pipe, a["num_inference_steps"], a["sigmas"], mu=mu, device=self.device)

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d = cond.data
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=d["embeds"],
                                pooled_projections=d["pooled"], joint_attention_kwargs=d["attention_kwargs"],
                                return_dict=False)[0]

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return kl_decode(self.pipe.vae, x)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """1 x (h / p) x (w / p) for x (B, C, h, w) and patch size p, row-major as the patch embedding flattens."""
        p = self.transformer.config.patch_size
        return TokenLayout(1, x.shape[-2] // p, x.shape[-1] // p)

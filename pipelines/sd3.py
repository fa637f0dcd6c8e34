"""Adapter for diffusers' StableDiffusion3Pipeline (SD3 / SD3.5 text-to-image).

The transformer takes the VAE latents (B, 16, H/8, W/8) and patchifies them itself (patch size 2), so x stays
unpacked. Classifier-free guidance runs both branches in one batched forward, [uncond; cond], as the pipeline does.
The scheduler's sigmas carry a static shift (3.0 for SD3), or a dynamic one (`mu`) if the scheduler is configured
so; the sigmas and timesteps stay those of FlowMatchEulerDiscreteScheduler.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout, cache_context
from accel.core.grid import TimeGrid


def batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """Prompts in the call, counted as the pipeline counts them."""
    if isinstance(prompt, str):
        return 1
    return len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]


class SD3Denoiser(Denoiser):
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

    def prepare(self, **call: Any) -> Prepared:
        """Validate as the pipeline does, encode [negative; positive] prompts, draw noise, build the shifted grid.

        Returns:
            Prepared with x (B, C, H / 8, W / 8) in the prompt embeddings' dtype, B = prompts * num_images_per_prompt.
        """
        a = self.bind(call)
        self.check_supported(call)
        pipe = self.pipe
        height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(
            a["prompt"], a["prompt_2"], a["prompt_3"], height, width, negative_prompt=a["negative_prompt"],
            negative_prompt_2=a["negative_prompt_2"], negative_prompt_3=a["negative_prompt_3"],
            prompt_embeds=a["prompt_embeds"], negative_prompt_embeds=a["negative_prompt_embeds"],
            pooled_prompt_embeds=a["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
            callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
            max_sequence_length=a["max_sequence_length"])
        cond = self._encode(a)
        x = pipe.prepare_latents(cond.batch, pipe.transformer.config.in_channels, height, width,
                                 cond.data["embeds"].dtype, pipe._execution_device, a["generator"], a["latents"])
        grid = self.time_grid(a["num_inference_steps"], a["sigmas"], a["mu"], x.shape[-2:])
        return Prepared(x, cond, grid, {"output_type": a["output_type"], "return_dict": a["return_dict"]})

    def _encode(self, a: dict[str, Any]) -> Cond:
        """Embeddings (2B, T, D) and pooled (2B, P) as [negative; positive] with CFG, else (B, ...)."""
        cfg = a["guidance_scale"] > 1  # the pipeline's do_classifier_free_guidance
        attention_kwargs = a["joint_attention_kwargs"]
        embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=a["prompt"], prompt_2=a["prompt_2"], prompt_3=a["prompt_3"], negative_prompt=a["negative_prompt"],
            negative_prompt_2=a["negative_prompt_2"], negative_prompt_3=a["negative_prompt_3"],
            do_classifier_free_guidance=cfg, prompt_embeds=a["prompt_embeds"],
            negative_prompt_embeds=a["negative_prompt_embeds"], pooled_prompt_embeds=a["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"], device=self.pipe._execution_device,
            clip_skip=a["clip_skip"], num_images_per_prompt=a["num_images_per_prompt"],
            max_sequence_length=a["max_sequence_length"],
            lora_scale=attention_kwargs.get("scale") if attention_kwargs is not None else None)
        if cfg:
            embeds, pooled = torch.cat([neg_embeds, embeds], dim=0), torch.cat([neg_pooled, pooled], dim=0)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if cfg else 1,
                    data={"embeds": embeds, "pooled": pooled, "guidance_scale": a["guidance_scale"],
                          "attention_kwargs": attention_kwargs})

    def time_grid(self, num_inference_steps: int, sigmas: list[float] | None, mu: float | None,
                  latent_hw: tuple[int, int]) -> TimeGrid:
        """The pipeline's schedule on a copy of its scheduler; mu from the token count if the shift is dynamic."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        config, patch = scheduler.config, self.transformer.config.patch_size
        if config.get("use_dynamic_shifting", None) and mu is None:
            image_seq_len = (latent_hw[0] // patch) * (latent_hw[1] // patch)
            mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", 1.16))
        extra = {} if mu is None else {"mu": mu}
        retrieve_timesteps(scheduler, num_inference_steps, self.pipe._execution_device, sigmas=sigmas, **extra)
        return TimeGrid(scheduler.sigmas.float().cpu())

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v (B, C, h, w) at sigma (0-d or (B,)); with CFG one forward on [x; x]."""
        cfg = cond.passes == 2
        x_in = torch.cat([x, x]) if cfg else x
        sigma = sigma.to(x.device)
        if sigma.ndim not in (0, 1) or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(f"SD3 takes sigma as a scalar or per sample ({x.shape[0]},), got {tuple(sigma.shape)}")
        t = sigma * self.pipe.scheduler.config.num_train_timesteps  # == scheduler.timesteps[i], bit for bit
        t = t.expand(x.shape[0])  # (B,)
        timestep = torch.cat([t, t]) if cfg else t
        with cache_context(self.transformer, "cond"):
            v = self.transformer(hidden_states=x_in, timestep=timestep, encoder_hidden_states=cond.data["embeds"],
                                 pooled_projections=cond.data["pooled"],
                                 joint_attention_kwargs=cond.data["attention_kwargs"], return_dict=False)[0]
        if cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + cond.data["guidance_scale"] * (v_cond - v_uncond)
        return v

    def decode(self, x: torch.Tensor, prepared: Prepared) -> StableDiffusion3PipelineOutput | tuple:
        """Latents (B, C, h, w) -> StableDiffusion3PipelineOutput(images) in the call's output_type."""
        pipe, options = self.pipe, prepared.options
        if options["output_type"] == "latent":
            image = x
        else:
            latents = (x / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
            image = pipe.vae.decode(latents, return_dict=False)[0]
            image = pipe.image_processor.postprocess(image, output_type=options["output_type"])
        pipe.maybe_free_model_hooks()
        return StableDiffusion3PipelineOutput(images=image) if options["return_dict"] else (image,)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """1 x (h / p) x (w / p) for x (B, C, h, w) and patch size p, row-major as the patch embedding flattens."""
        p = self.transformer.config.patch_size
        return TokenLayout(1, x.shape[-2] // p, x.shape[-1] // p)

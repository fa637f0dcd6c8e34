"""Adapter for diffusers' LTXPipeline (LTX-Video text-to-video).

The transformer takes the video latents packed into tokens (B, F' * h * w, C) (patch 1 x 1 x 1 for LTX-Video's
VAE, which already compresses x32 in space and x8 in time), with the grid's shape and a rope interpolation scale
from the frame rate as inputs. Its timestep is t itself (0..1000). Classifier-free guidance runs one batched
forward on [uncond; cond] (cache context "cond_uncond"), optionally rescaled (guidance_rescale). The schedule is
always linspace(1, 1/N, N), shifted by mu from the video token count. A timestep-conditioned VAE decodes from
latents re-noised at decode_timestep with the call's generator, as the pipeline does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.ltx.pipeline_output import LTXPipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from accel.core.denoiser import Cond
from accel.core.grid import TimeGrid
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, default_sigmas, scheduler_grid, shift_mu


class LTXDenoiser(FlowDenoiser):
    """LTX-Video (HaCohen et al., 2024, "LTX-Video: Realtime Video Latent Diffusion") over an LTXPipeline.

    x is the packed latent (B, F' * h * w, C), float32. NFE per velocity: 1 per sample, 2 with CFG.
    """

    family = "ltx"
    call_args = frozenset({
        "prompt", "negative_prompt", "height", "width", "num_frames", "frame_rate", "num_inference_steps",
        "guidance_scale", "guidance_rescale", "num_videos_per_prompt", "generator", "latents", "prompt_embeds",
        "prompt_attention_mask", "negative_prompt_embeds", "negative_prompt_attention_mask", "decode_timestep",
        "decode_noise_scale", "output_type", "return_dict", "attention_kwargs", "max_sequence_length",
    })
    batched_cond_keys = ("embeds", "mask")
    cfg_batched = True
    output_class = LTXPipelineOutput
    output_field = "frames"

    def encode(self, a: dict[str, Any]) -> Cond:
        """Embeddings (2B, T, D) and masks (2B, T) as [negative; positive] with CFG, else (B, ...)."""
        cfg = a["guidance_scale"] > 1.0  # the pipeline's do_classifier_free_guidance
        embeds, mask, neg_embeds, neg_mask = call_by_name(self.pipe.encode_prompt, a, do_classifier_free_guidance=cfg,
                                                          device=self.device)
        if cfg:
            embeds, mask = torch.cat([neg_embeds, embeds], dim=0), torch.cat([neg_mask, mask], dim=0)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_videos_per_prompt"],
                    passes=2 if cfg else 1,
                    data={"embeds": embeds, "mask": mask, "guidance_scale": a["guidance_scale"],
                          "guidance_rescale": a["guidance_rescale"], "attention_kwargs": a["attention_kwargs"]})

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        """Packed noise (B, L, C) float32; the token grid and the rope interpolation scale into cond."""
        pipe = self.pipe
        x = pipe.prepare_latents(cond.batch, self.transformer.config.in_channels, a["height"], a["width"],
                                 a["num_frames"], torch.float32, self.device, a["generator"], a["latents"])
        temporal, spatial = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
        frames, rows, cols = (a["num_frames"] - 1) // temporal + 1, a["height"] // spatial, a["width"] // spatial
        cond.data["grid"] = (frames, rows, cols)
        cond.data["rope_interpolation_scale"] = (temporal / a["frame_rate"], spatial, spatial)
        p, p_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
        self.set_packed_layout(frames // p_t, rows // p, cols // p)
        return x

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """linspace(1, 1/N, N), shifted by mu(latent frames * rows * cols)."""
        frames, rows, cols = self._layout.frames, self._layout.rows, self._layout.cols
        p, p_t = self.pipe.transformer_spatial_patch_size, self.pipe.transformer_temporal_patch_size
        n = a["num_inference_steps"]
        return scheduler_grid(self.pipe, n, default_sigmas(n), device=self.device,
                              mu=shift_mu(self.pipe.scheduler.config, frames * p_t * rows * p * cols * p))

    def options(self, a: dict[str, Any], cond: Cond) -> dict[str, Any]:
        """Also what the timestep-conditioned decode takes: the generator, decode_timestep and noise scale, the
        latent grid and the prompt embeddings' dtype."""
        return super().options(a, cond) | {k: a[k] for k in ("generator", "decode_timestep", "decode_noise_scale")} | {
            "grid": cond.data["grid"], "dtype": cond.data["embeds"].dtype}

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d = cond.data
        frames, rows, cols = d["grid"]
        return self.transformer(hidden_states=x.to(d["embeds"].dtype), encoder_hidden_states=d["embeds"], timestep=t,
                                encoder_attention_mask=d["mask"], num_frames=frames, height=rows, width=cols,
                                rope_interpolation_scale=d["rope_interpolation_scale"],
                                attention_kwargs=d["attention_kwargs"], return_dict=False)[0].float()

    def _branch(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        with self.transformer.cache_context("cond_uncond"):  # the pipeline's one context for the batched forward
            return self.forward(x, t, cond, branch)

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """Unpack, denormalise, re-noise to decode_timestep where the VAE is timestep-conditioned, decode."""
        pipe, vae = self.pipe, self.pipe.vae
        latents = pipe._unpack_latents(x, *options["grid"], pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(options["dtype"])
        timestep = None
        if vae.config.timestep_conditioning:
            # One per sample; the pipeline makes one per prompt, which is the same wherever its decode runs (with
            # num_videos_per_prompt > 1 its VAE fails on the shapes), and search decodes many samples of one prompt.
            n = latents.shape[0]
            noise = randn_tensor(latents.shape, generator=options["generator"], device=latents.device,
                                 dtype=latents.dtype)
            decode_timestep = options["decode_timestep"]
            decode_timestep = decode_timestep if isinstance(decode_timestep, list) else [decode_timestep] * n
            scale = options["decode_noise_scale"]
            scale = decode_timestep if scale is None else scale if isinstance(scale, list) else [scale] * n
            timestep = torch.tensor(decode_timestep, device=latents.device, dtype=latents.dtype)
            scale = torch.tensor(scale, device=latents.device, dtype=latents.dtype)[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        return vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]

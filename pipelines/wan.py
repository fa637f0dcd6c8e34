"""Adapter for diffusers' WanPipeline (Wan 2.1 / 2.2 text-to-video).

The transformer takes the video latents (B, 16, F', H/8, W/8), with F' = (F - 1) / 4 + 1 for F frames, and
patchifies them itself (patch (1, 2, 2)). Classifier-free guidance runs the conditional and the unconditional
branch as two separate forwards, as the pipeline does. Wan 2.2 (A14B) splits the trajectory between two experts:
`transformer` for t >= boundary_ratio * num_train_timesteps (high noise), `transformer_2` below, each with its own
guidance scale; Wan 2.2 TI2V (`expand_timesteps`) gives every token its own timestep.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout
from accel.core.grid import TimeGrid

logger = logging.getLogger(__name__)


def batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """Prompts in the call, counted as the pipeline counts them."""
    if isinstance(prompt, str):
        return 1
    return len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]


class WanDenoiser(Denoiser):
    """Wan (Wan Team, 2025, "Wan: Open and Advanced Large-Scale Video Generative Models") over a WanPipeline.

    x is the video latent (B, C, F', h, w), float32 as the pipeline keeps it between steps. NFE per velocity: 1 per
    sample, 2 with CFG (guidance_scale > 1).
    """

    family = "wan"
    call_args = frozenset({
        "prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale",
        "guidance_scale_2", "num_videos_per_prompt", "generator", "latents", "prompt_embeds", "negative_prompt_embeds",
        "output_type", "return_dict", "attention_kwargs", "max_sequence_length",
    })
    batched_cond_keys = ("embeds", "neg_embeds")

    @property
    def transformer(self) -> torch.nn.Module:
        """The high-noise expert (Wan 2.2), or the only transformer (Wan 2.1)."""
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    def prepare(self, **call: Any) -> Prepared:
        """Validate and round the size as WanPipeline.__call__ does, encode the prompts, draw noise, build the grid.

        Returns:
            Prepared with x (B, C, F', h, w) float32, B = prompts * num_videos_per_prompt.
        """
        a = self.bind(call)
        self.check_supported(call)
        pipe = self.pipe
        pipe.check_inputs(a["prompt"], a["negative_prompt"], a["height"], a["width"], a["prompt_embeds"],
                          a["negative_prompt_embeds"], a["callback_on_step_end_tensor_inputs"], a["guidance_scale_2"])
        num_frames = self._round_frames(a["num_frames"])
        height, width = self._round_size(a["height"], a["width"])
        cond = self._encode(a)
        grid = self.time_grid(a["num_inference_steps"])
        cond.data["sigmas"] = grid.sigmas.tolist()  # to tell the cache hooks the step index, as the pipeline does
        x = pipe.prepare_latents(cond.batch, self.transformer.config.in_channels, height, width, num_frames,
                                 torch.float32, pipe._execution_device, a["generator"], a["latents"])
        return Prepared(x, cond, grid, {"output_type": a["output_type"], "return_dict": a["return_dict"]})

    def _round_frames(self, num_frames: int) -> int:
        """num_frames rounded down to 4k + 1 (the VAE's temporal stride), as the pipeline rounds it."""
        stride = self.pipe.vae_scale_factor_temporal
        if num_frames % stride != 1:
            logger.warning(f"`num_frames - 1` has to be divisible by {stride}. Rounding to the nearest number.")
            num_frames = num_frames // stride * stride + 1
        return max(num_frames, 1)

    def _round_size(self, height: int, width: int) -> tuple[int, int]:
        """Height and width rounded down to whole patches of latent pixels, as the pipeline rounds them."""
        _, p_h, p_w = self.transformer.config.patch_size
        h_multiple, w_multiple = self.pipe.vae_scale_factor_spatial * p_h, self.pipe.vae_scale_factor_spatial * p_w
        rounded = height // h_multiple * h_multiple, width // w_multiple * w_multiple
        if rounded != (height, width):
            logger.warning(f"`height` and `width` must be multiples of ({h_multiple}, {w_multiple}); adjusting "
                           f"({height}, {width}) -> {rounded}.")
        return rounded

    def _encode(self, a: dict[str, Any]) -> Cond:
        """Prompt embeddings (B, T, D) in the transformer's dtype; negative ones too with CFG."""
        pipe = self.pipe
        cfg = a["guidance_scale"] > 1.0  # the pipeline's do_classifier_free_guidance
        embeds, neg_embeds = pipe.encode_prompt(
            prompt=a["prompt"], negative_prompt=a["negative_prompt"], do_classifier_free_guidance=cfg,
            num_videos_per_prompt=a["num_videos_per_prompt"], prompt_embeds=a["prompt_embeds"],
            negative_prompt_embeds=a["negative_prompt_embeds"], max_sequence_length=a["max_sequence_length"],
            device=pipe._execution_device)
        dtype = self.transformer.dtype
        boundary_ratio = pipe.config.boundary_ratio
        guidance_scale_2 = a["guidance_scale_2"]
        if boundary_ratio is not None and guidance_scale_2 is None:
            guidance_scale_2 = a["guidance_scale"]
        data = {
            "embeds": embeds.to(dtype), "neg_embeds": neg_embeds.to(dtype) if neg_embeds is not None else None,
            "dtype": dtype, "guidance_scale": a["guidance_scale"], "guidance_scale_2": guidance_scale_2,
            "attention_kwargs": a["attention_kwargs"],
            "boundary_t": (boundary_ratio * pipe.scheduler.config.num_train_timesteps
                           if boundary_ratio is not None else None),
        }
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_videos_per_prompt"],
                    passes=2 if cfg else 1, data=data)

    def time_grid(self, num_inference_steps: int) -> TimeGrid:
        """The pipeline's schedule (its scheduler's shift), computed on a copy of its scheduler."""
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=self.pipe._execution_device)
        return TimeGrid(scheduler.sigmas.float().cpu())

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v (B, C, F', h, w) at sigma: 0-d, per sample (B,) or per token (B, L); CFG as a second forward."""
        d = cond.data
        t = sigma.to(x.device) * self.pipe.scheduler.config.num_train_timesteps  # == scheduler.timesteps[i]
        model, guidance_scale = self._expert(t, d)
        x_in, timestep = x.to(d["dtype"]), self._timestep(x, t)
        context = self._cache_context(sigma, d)
        # Named cache contexts, as the pipeline uses, keep diffusers' cache hooks' state per CFG branch.
        with model.cache_context("cond", **context):
            v = model(hidden_states=x_in, timestep=timestep, encoder_hidden_states=d["embeds"],
                      attention_kwargs=d["attention_kwargs"], return_dict=False)[0]
        if cond.passes == 2:
            with model.cache_context("uncond", **context):
                v_uncond = model(hidden_states=x_in, timestep=timestep, encoder_hidden_states=d["neg_embeds"],
                                 attention_kwargs=d["attention_kwargs"], return_dict=False)[0]
            v = v_uncond + guidance_scale * (v - v_uncond)
        return v

    def _expert(self, t: torch.Tensor, data: dict[str, Any]) -> tuple[torch.nn.Module, float]:
        """Wan 2.2: the high-noise transformer for t >= boundary, transformer_2 below; Wan 2.1: the transformer."""
        boundary = data["boundary_t"]
        if boundary is None:
            return self.pipe.transformer, data["guidance_scale"]
        high = t >= boundary
        if bool(high.all()):
            return self.pipe.transformer, data["guidance_scale"]
        if not bool(high.any()):
            return self.pipe.transformer_2, data["guidance_scale_2"]
        raise ValueError(f"sigmas on both sides of Wan 2.2's expert boundary (t = {boundary}) in one call; "
                         "evaluate the two groups separately")

    def _timestep(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The transformer's timestep: (B,), or (B, L) per token (TI2V's expand_timesteps, or a per-token t)."""
        b = x.shape[0]
        tokens = self.token_layout(x).num_tokens
        if t.shape not in ((), (b,), (b, tokens)):
            raise ValueError(f"Wan takes sigma as a scalar, per sample ({b},) or per token ({b}, {tokens}), "
                             f"got {tuple(t.shape)}")
        if t.ndim == 2 or not self.pipe.config.expand_timesteps:
            return t.expand(b) if t.ndim == 0 else t
        # As the pipeline: a ones mask over the latent grid (TI2V's 2x2 spatial patches) times t, per token.
        ones = torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)[:, ::2, ::2]
        if t.ndim == 0:
            return (ones * t).flatten().unsqueeze(0).expand(b, -1)
        return (ones[None] * t[:, None, None, None]).flatten(1)

    @staticmethod
    def _cache_context(sigma: torch.Tensor, data: dict[str, Any]) -> dict[str, Any]:
        """Where the loop is, for diffusers' cache hooks; step_index is None off the prepared grid."""
        sigmas = data.get("sigmas", [])
        if sigma.ndim != 0:
            return {"num_inference_steps": max(len(sigmas) - 1, 0)}
        s = float(sigma)
        step = sigmas.index(s) if s in sigmas else None
        return {"step_index": step, "sigma": s, "num_inference_steps": max(len(sigmas) - 1, 0)}

    def decode(self, x: torch.Tensor, prepared: Prepared) -> WanPipelineOutput | tuple:
        """Latents (B, C, F', h, w) -> WanPipelineOutput(frames) in the call's output_type ("latent": x)."""
        pipe, options = self.pipe, prepared.options
        if options["output_type"] == "latent":
            video = x
        else:
            vae = pipe.vae
            latents = x.to(get_module_execution_device(vae), dtype=vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
            video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
            video = pipe.video_processor.postprocess_video(video, output_type=options["output_type"])
        pipe.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video) if options["return_dict"] else (video,)

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        """Active tokens only through the blocks, against cached K/V (accel.pipelines.dit_hsa)."""
        from accel.pipelines.dit_hsa import WanActiveTokens

        return WanActiveTokens.for_run(self, cond, kv)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """(F' / p_t) x (h / p_h) x (w / p_w) for x (B, C, F', h, w), row-major as the patch embedding flattens."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        return TokenLayout(x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w)

"""Adapter for diffusers' WanPipeline (Wan 2.1 / 2.2 text-to-video).

The transformer takes the video latents (B, 16, F', H/8, W/8), with F' = (F - 1) / 4 + 1 for F frames, and
patchifies them itself (patch (1, 2, 2)). Classifier-free guidance runs the conditional and the unconditional
branch as two separate forwards, as the pipeline does. Wan 2.2 (A14B) splits the trajectory between two experts:
`transformer` for t >= boundary_ratio * num_train_timesteps (high noise), `transformer_2` below, each with its own
guidance scale; Wan 2.2 TI2V (`expand_timesteps`) gives every token its own timestep.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from accel.core.denoiser import Cond, TokenLayout
from accel.core.grid import TimeGrid
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, mean_std_decode, scheduler_grid

logger = logging.getLogger(__name__)


class WanDenoiser(FlowDenoiser):
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
    output_class = WanPipelineOutput
    output_field = "frames"

    @property
    def transformer(self) -> torch.nn.Module:
        """The high-noise expert (Wan 2.2), or the only transformer (Wan 2.1)."""
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    def resolve(self, a: dict[str, Any]) -> None:
        """Check the inputs, then round the frames and the size as WanPipeline.__call__ does."""
        call_by_name(self.pipe.check_inputs, a)
        a["num_frames"] = self._round_frames(a["num_frames"])
        a["height"], a["width"] = self._round_size(a["height"], a["width"])

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

    def encode(self, a: dict[str, Any]) -> Cond:
        """Prompt embeddings (B, T, D) in the transformer's dtype; negative ones too with CFG."""
        pipe = self.pipe
        cfg = a["guidance_scale"] > 1.0  # the pipeline's do_classifier_free_guidance
        embeds, neg_embeds = call_by_name(pipe.encode_prompt, a, do_classifier_free_guidance=cfg,
                                          device=self.device)
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

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        pipe = self.pipe
        return pipe.prepare_latents(cond.batch, self.transformer.config.in_channels, a["height"], a["width"],
                                    a["num_frames"], torch.float32, self.device, a["generator"],
                                    a["latents"])

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """The pipeline's schedule (its scheduler's own shift)."""
        grid = scheduler_grid(self.pipe, a["num_inference_steps"], device=self.device)
        self._sigmas = grid.sigmas.tolist()  # to tell the cache hooks the step index, as the pipeline does
        return grid

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v (B, C, F', h, w) at sigma: 0-d, per sample (B,) or per token (B, L); CFG as a second forward."""
        self._context = self._cache_context(sigma, getattr(self, "_sigmas", []))
        return super()._velocity(x, sigma, cond)

    def train_t(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """t = sigma * num_train_timesteps as given (0-d, (B,) or (B, L)); _timestep checks the shape."""
        return sigma.to(x.device) * self.pipe.scheduler.config.num_train_timesteps  # == scheduler.timesteps[i]

    def guidance_scale(self, cond: Cond, t: torch.Tensor) -> float:
        return self._expert(t, cond.data)[1]

    def _branch(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        # Named cache contexts, as the pipeline uses, keep diffusers' cache hooks' state per CFG branch.
        model = self._expert(t, cond.data)[0]
        d = cond.data
        with model.cache_context(branch, **self._context):
            return model(hidden_states=x.to(d["dtype"]), timestep=self._timestep(x, t),
                         encoder_hidden_states=d["neg_embeds" if branch == "uncond" else "embeds"],
                         attention_kwargs=d["attention_kwargs"], return_dict=False)[0]

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
    def _cache_context(sigma: torch.Tensor, sigmas: list[float]) -> dict[str, Any]:
        """Where the loop is, for diffusers' cache hooks; step_index is None off the prepared grid."""
        if sigma.ndim != 0:
            return {"num_inference_steps": max(len(sigmas) - 1, 0)}
        s = float(sigma)
        step = sigmas.index(s) if s in sigmas else None
        return {"step_index": step, "sigma": s, "num_inference_steps": max(len(sigmas) - 1, 0)}

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return mean_std_decode(self.pipe.vae, x, move=True)

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        """Active tokens only through the blocks, against cached K/V (accel.pipelines.dit_hsa)."""
        from accel.pipelines.dit_hsa import WanActiveTokens

        return WanActiveTokens.for_run(self, cond, kv)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """(F' / p_t) x (h / p_h) x (w / p_w) for x (B, C, F', h, w), row-major as the patch embedding flattens."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        return TokenLayout(x.shape[2] // p_t, x.shape[3] // p_h, x.shape[4] // p_w)

"""Adapter for diffusers' ZImagePipeline (Z-Image: a single-stream DiT over text and image tokens).

The transformer takes lists, one (C, 1, h, w) latent and one (T_i, D) text embedding of its own length per sample,
and patchifies the latent itself (2x2). Its own conventions, reproduced here: the timestep is 1 - sigma, the
prediction is x0 - eps (the negative of accel's velocity), and classifier-free guidance (any guidance_scale > 0)
runs one batched forward on [cond; uncond] and combines as cond + s * (cond - uncond), in float32, with the
optional per-sample norm cap `cfg_normalization`. The scheduler shifts by mu from the image token count.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.z_image.pipeline_output import ZImagePipelineOutput

from accel.core.denoiser import Cond, TokenLayout
from accel.core.grid import TimeGrid
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, kl_decode, scheduler_grid, shift_mu


class ZImageDenoiser(FlowDenoiser):
    """Z-Image (Tongyi-MAI, 2025, "Z-Image: An Efficient Image Generation Foundation Model with Single-Stream
    Diffusion Transformer") over a ZImagePipeline.

    x is the latent (B, C, H / 8, W / 8), float32. NFE per velocity: 1 per sample, 2 with CFG.
    """

    family = "zimage"
    call_args = frozenset({
        "prompt", "height", "width", "num_inference_steps", "sigmas", "guidance_scale", "cfg_normalization",
        "negative_prompt", "num_images_per_prompt", "generator", "latents", "prompt_embeds",
        "negative_prompt_embeds", "output_type", "return_dict", "joint_attention_kwargs", "max_sequence_length",
    })
    output_class = ZImagePipelineOutput

    def resolve(self, a: dict[str, Any]) -> None:
        """1024 x 1024 by default; both sides whole 2x2 patches of latent pixels (the pipeline's checks)."""
        multiple = self.pipe.vae_scale_factor * 2
        a["height"], a["width"] = a["height"] or 1024, a["width"] or 1024
        for side in ("height", "width"):
            if a[side] % multiple != 0:
                raise ValueError(f"{side.capitalize()} must be divisible by {multiple} (got {a[side]}). "
                                 f"Please adjust the {side} to a multiple of {multiple}.")

    def encode(self, a: dict[str, Any]) -> Cond:
        """Lists of per-sample text embeddings (T_i, D), repeated per image; the negative ones too with CFG."""
        cfg = a["guidance_scale"] > 0  # the pipeline's do_classifier_free_guidance
        n = batch_size(a["prompt"], a["prompt_embeds"])
        embeds, neg_embeds = a["prompt_embeds"], a["negative_prompt_embeds"]
        if embeds is not None and a["prompt"] is None:
            if cfg and neg_embeds is None:
                raise ValueError("When `prompt_embeds` is provided without `prompt`, `negative_prompt_embeds` must "
                                 "also be provided for classifier-free guidance.")
        else:
            # encode_prompt writes the chat template into a prompt list in place: hand it a copy.
            prompt = list(a["prompt"]) if isinstance(a["prompt"], list) else a["prompt"]
            embeds, neg_embeds = call_by_name(self.pipe.encode_prompt, a, prompt=prompt,
                                              do_classifier_free_guidance=cfg, device=self.device)
        k = a["num_images_per_prompt"]
        embeds = [e for e in embeds for _ in range(k)]
        neg_embeds = [e for e in neg_embeds for _ in range(k)] if cfg and neg_embeds else neg_embeds
        return Cond(batch=n * k, passes=2 if cfg else 1,
                    data={"embeds": embeds, "neg_embeds": neg_embeds, "guidance_scale": a["guidance_scale"],
                          "cfg_normalization": a["cfg_normalization"],
                          "attention_kwargs": a["joint_attention_kwargs"]})

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        pipe = self.pipe
        return pipe.prepare_latents(cond.batch, self.transformer.in_channels, a["height"], a["width"], torch.float32,
                                    self.device, a["generator"], a["latents"])

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """linspace(1, 1/N, N) (or the given sigmas), shifted by mu(image tokens)."""
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        n = a["num_inference_steps"]
        sigmas = get_default_z_image_sigmas(n) if a["sigmas"] is None else a["sigmas"]
        return scheduler_grid(self.pipe, n, sigmas, device=self.device,
                              mu=shift_mu(self.pipe.scheduler.config, self.token_layout(x).num_tokens))

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v (B, C, h, w) float32 at sigma (0-d or (B,)): minus the (guided) prediction."""
        d, b = cond.data, x.shape[0]
        t = self.train_t(x, sigma)
        timestep = (1000 - t) / 1000
        x_in = x.to(self.transformer.dtype)
        if cond.passes == 2:
            x_in, timestep, embeds = x_in.repeat(2, 1, 1, 1), timestep.repeat(2), d["embeds"] + d["neg_embeds"]
        else:
            embeds = d["embeds"]
        out = self.transformer(list(x_in.unsqueeze(2).unbind(dim=0)), timestep, embeds,
                               joint_attention_kwargs=d["attention_kwargs"], return_dict=False)[0]
        if cond.passes == 1:
            return -torch.stack([o.float() for o in out], dim=0).squeeze(2)
        return -torch.stack([self._guided(out[j].float(), out[b + j].float(), d) for j in range(b)]).squeeze(2)

    @staticmethod
    def _guided(pos: torch.Tensor, neg: torch.Tensor, d: dict[str, Any]) -> torch.Tensor:
        """Z-Image's guidance for one sample: pos + s * (pos - neg), its norm capped at cfg_normalization * |pos|."""
        pred = pos + d["guidance_scale"] * (pos - neg)
        if d["cfg_normalization"] and float(d["cfg_normalization"]) > 0.0:
            max_norm = torch.linalg.vector_norm(pos) * float(d["cfg_normalization"])
            norm = torch.linalg.vector_norm(pred)
            if norm > max_norm:
                pred = pred * (max_norm / norm)
        return pred

    def expand_cond(self, cond: Cond, n: int) -> Cond:
        """One sample's conditioning for n particles: its text embeddings (lists, one tensor per sample) repeated."""
        if cond.batch != 1 or n < 1:
            raise ValueError(f"expand_cond takes the conditioning of one sample to n >= 1, got batch {cond.batch}, "
                             f"n={n}")
        data = dict(cond.data, embeds=cond.data["embeds"] * n,
                    neg_embeds=cond.data["neg_embeds"] * n if cond.passes == 2 else cond.data["neg_embeds"])
        return Cond(batch=n, passes=cond.passes, data=data)

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return kl_decode(self.pipe.vae, x, cast=True)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """1 x (h / 2) x (w / 2) for x (B, C, h, w): the transformer's 2x2 patches, row-major."""
        return TokenLayout(1, x.shape[-2] // 2, x.shape[-1] // 2)

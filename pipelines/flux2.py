"""Adapter for diffusers' Flux2Pipeline (FLUX.2 [dev]) and Flux2KleinPipeline (FLUX.2 [klein]), text-to-image.

FLUX.2 packs its VAE's 2x2-patchified latents (B, 4 * C, H/16, W/16) into (B, L, 4 * C) tokens with 4-axis
rotary ids (B, L, 4), and takes stacked intermediate hidden states of its text encoder (Mistral 3 for [dev],
Qwen3 for [klein]). [dev] is guidance-distilled: the scale is a transformer input, 1 forward. [klein] runs
classifier-free guidance (guidance_scale > 1 on a non-distilled checkpoint) as a second forward on an empty
prompt. The shift mu is FLUX.2's empirical one (compute_empirical_mu, from the token count and the step count).
Decoding undoes the VAE's batch norm on the packed latents before unpatchifying. Calls with input images (editing)
run the pipeline's own __call__.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.flux2.pipeline_output import Flux2PipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

from accel.core.denoiser import Cond
from accel.core.grid import TimeGrid
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, default_sigmas, scheduler_grid


class Flux2Denoiser(FlowDenoiser):
    """FLUX.2 (Black Forest Labs, 2025) over a Flux2Pipeline or Flux2KleinPipeline.

    x is the packed latent (B, L, 4 * C), L = (H / 16) * (W / 16). NFE per velocity: 1 per sample, 2 with
    [klein]'s CFG.
    """

    family = "flux2"
    call_args = frozenset({
        "prompt", "height", "width", "num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt",
        "generator", "latents", "prompt_embeds", "negative_prompt_embeds", "output_type", "return_dict",
        "attention_kwargs", "max_sequence_length", "text_encoder_out_layers",
    })
    batched_cond_keys = ("embeds", "text_ids", "neg_embeds", "neg_text_ids", "img_ids", "guidance")
    output_class = Flux2PipelineOutput

    @property
    def klein(self) -> bool:
        """[klein]: CFG with an empty negative prompt and no embedded guidance; its latent output is unpacked."""
        return "is_distilled" in self.pipe.config

    @property
    def cache_contexts(self) -> bool:
        return self.klein  # [dev]'s pipeline calls its transformer without them

    def encode(self, a: dict[str, Any]) -> Cond:
        """Stacked text hidden states (B, T, D) and text ids (B, T, 4); [klein] with CFG: the empty prompt's too."""
        pipe, device = self.pipe, self.device
        cfg = self.klein and a["guidance_scale"] > 1 and not pipe.config.is_distilled
        embeds, text_ids = call_by_name(pipe.encode_prompt, a, device=device)
        data = {"embeds": embeds, "text_ids": text_ids, "guidance_scale": a["guidance_scale"],
                "attention_kwargs": a["attention_kwargs"],
                "dtype": self.transformer.dtype}  # read once a call: each read walks every module
        if cfg:
            negative = [""] * len(a["prompt"]) if isinstance(a["prompt"], list) else ""
            data["neg_embeds"], data["neg_text_ids"] = call_by_name(
                pipe.encode_prompt, a, prompt=negative, prompt_embeds=a["negative_prompt_embeds"], device=device)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if cfg else 1, data=data)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        """Packed noise (B, L, 4 * C), its rotary ids, and [dev]'s embedded guidance."""
        pipe, d = self.pipe, cond.data
        x, d["img_ids"] = pipe.prepare_latents(
            batch_size=cond.batch, num_latents_channels=self.transformer.config.in_channels // 4, height=a["height"],
            width=a["width"], dtype=d["embeds"].dtype, device=self.device, generator=a["generator"],
            latents=a["latents"])
        d["guidance"] = None if self.klein else torch.full(
            [1], a["guidance_scale"], device=self.device, dtype=torch.float32).expand(x.shape[0])
        patch = pipe.vae_scale_factor * 2
        self.set_packed_layout(1, int(a["height"]) // patch, int(a["width"]) // patch)
        return x

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """linspace(1, 1/N, N) (or the given sigmas; none with use_flow_sigmas), shifted by the empirical mu."""
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        n = a["num_inference_steps"]
        sigmas = default_sigmas(n) if a["sigmas"] is None else a["sigmas"]
        if getattr(self.pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = compute_empirical_mu(image_seq_len=x.shape[1], num_steps=n)
        return scheduler_grid(self.pipe, n, sigmas, mu=mu, device=self.device)

    def options(self, a: dict[str, Any], cond: Cond) -> dict[str, Any]:
        return super().options(a, cond) | {"img_ids": cond.data["img_ids"]}

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d, neg = cond.data, "neg_" if branch == "uncond" else ""
        return self.transformer(hidden_states=x.to(d["dtype"]), timestep=t.to(x.dtype) / 1000,
                                guidance=d["guidance"], encoder_hidden_states=d[neg + "embeds"],
                                txt_ids=d[neg + "text_ids"], img_ids=d["img_ids"],
                                joint_attention_kwargs=d["attention_kwargs"], return_dict=False)[0][:, :x.shape[1]]

    def _vae_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """Packed (B, L, 4 * C) -> the VAE's latents (B, C, H / 8, W / 8): unpack by ids, undo the batch norm,
        unpatchify."""
        pipe, vae = self.pipe, self.pipe.vae
        ids = options["img_ids"][:1].expand(x.shape[0], -1, -1)  # every sample's token grid is the same
        if self.klein:
            rows, cols = self._layout.rows, self._layout.cols
            latents = pipe._unpack_latents_with_ids(x, ids, rows, cols)
        else:
            latents = pipe._unpack_latents_with_ids(x, ids)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device,
                                                                                              latents.dtype)
        return pipe._unpatchify_latents(latents * std + mean)

    def latent_output(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return self._vae_latents(x, options) if self.klein else x

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        latents = self._vae_latents(x, options).to(get_module_execution_device(self.pipe.vae))
        return self.pipe.vae.decode(latents, return_dict=False)[0]

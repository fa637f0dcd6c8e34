"""Adapter for diffusers' QwenImagePipeline (Qwen-Image text-to-image).

Qwen-Image packs the latents of its video-style VAE (B, 16, 1, H/8, W/8) into 2x2 patches, (B, H/16 * W/16, 64)
tokens, and reads the Qwen2.5-VL text encoder's last hidden states with a mask. Classifier-free guidance
(`true_cfg_scale > 1` with a negative prompt) runs the negative prompt as a second forward and rescales the combined
velocity per token to the conditional one's norm; guidance-distilled variants take `guidance_scale` as an input.
The scheduler shifts its sigmas by mu from the image sequence length, as Flux's does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.qwenimage.pipeline_output import QwenImagePipelineOutput

from accel.core.denoiser import Cond
from accel.pipelines.base import FlowDenoiser, Guidance, batch_size, call_by_name, embedded_guidance, mean_std_decode


class QwenImageDenoiser(FlowDenoiser):
    """Qwen-Image (Qwen Team, 2025, "Qwen-Image Technical Report", an MMDiT) over a QwenImagePipeline.

    x is the packed latent (B, L, 4 * C), L = (H / 16) * (W / 16). NFE per velocity: 1 per sample, 2 with CFG.
    """

    family = "qwenimage"
    call_args = frozenset({
        "prompt", "negative_prompt", "true_cfg_scale", "height", "width", "num_inference_steps", "sigmas",
        "guidance_scale", "num_images_per_prompt", "generator", "latents", "prompt_embeds", "prompt_embeds_mask",
        "negative_prompt_embeds", "negative_prompt_embeds_mask", "output_type", "return_dict", "attention_kwargs",
        "max_sequence_length",
    })
    batched_cond_keys = ("embeds", "mask", "neg_embeds", "neg_mask", "guidance")
    guidance = Guidance.CFG_RENORM
    output_class = QwenImagePipelineOutput

    def encode(self, a: dict[str, Any]) -> Cond:
        """Prompt embeddings (B, T, D) and masks (B, T); the negative ones too with CFG."""
        pipe, device = self.pipe, self.device
        has_negative = a["negative_prompt"] is not None or a["negative_prompt_embeds"] is not None
        cfg = a["true_cfg_scale"] > 1 and has_negative
        embeds, mask = call_by_name(pipe.encode_prompt, a, device=device)
        data = {"embeds": embeds, "mask": mask, "guidance_scale": a["true_cfg_scale"],
                "attention_kwargs": a["attention_kwargs"] or {}}
        if cfg:
            data["neg_embeds"], data["neg_mask"] = call_by_name(
                pipe.encode_prompt, a, prompt=a["negative_prompt"], prompt_embeds=a["negative_prompt_embeds"],
                prompt_embeds_mask=a["negative_prompt_embeds_mask"], device=device)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if cfg else 1, data=data)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        pipe, device = self.pipe, self.device
        x = pipe.prepare_latents(cond.batch, self.transformer.config.in_channels // 4, a["height"], a["width"],
                                 cond.data["embeds"].dtype, device, a["generator"], a["latents"])
        rows, cols = a["height"] // pipe.vae_scale_factor // 2, a["width"] // pipe.vae_scale_factor // 2
        cond.data["img_shape"] = (1, rows, cols)  # the rotary ids' grid (the transformer reads the first sample's)
        if self.transformer.config.guidance_embeds and a["guidance_scale"] is None:
            raise ValueError("guidance_scale is required for guidance-distilled model.")
        cond.data["guidance"] = embedded_guidance(self.transformer, a["guidance_scale"], x.shape[0], device)
        self.set_packed_layout(1, rows, cols)
        return x

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d, neg = cond.data, "neg_" if branch == "uncond" else ""
        return self.transformer(hidden_states=x, timestep=t.to(x.dtype) / 1000, guidance=d["guidance"],
                                encoder_hidden_states_mask=d[neg + "mask"], encoder_hidden_states=d[neg + "embeds"],
                                img_shapes=[[d["img_shape"]]] * x.shape[0], attention_kwargs=d["attention_kwargs"],
                                return_dict=False)[0]

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return mean_std_decode(self.pipe.vae, self.unpack(x, options))[:, :, 0]

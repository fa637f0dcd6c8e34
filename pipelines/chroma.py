"""Adapter for diffusers' ChromaPipeline (Chroma: a Flux.1 [schnell] derivative with a T5 text encoder only).

Flux's packed latents, rotary ids, shift and decode; Chroma's own parts: no pooled text embedding and no embedded
guidance (its modulations come from a small approximator of the timestep), a text attention mask extended over the
image tokens, and classifier-free guidance (guidance_scale > 1) as a second forward on the negative prompt, with
no cache contexts.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.chroma.pipeline_output import ChromaPipelineOutput

from accel.core.denoiser import Cond
from accel.pipelines.base import batch_size, call_by_name
from accel.pipelines.flux import FluxDenoiser


class ChromaDenoiser(FluxDenoiser):
    """Chroma (Lodestone Rock, 2025, an 8.9B rectified flow transformer from FLUX.1 [schnell]) over a ChromaPipeline.

    x is the packed latent (B, L, 4 * C), L = (H / 16) * (W / 16). NFE per velocity: 1 per sample, 2 with CFG.
    """

    family = "chroma"
    call_args = frozenset({
        "prompt", "negative_prompt", "height", "width", "num_inference_steps", "sigmas", "guidance_scale",
        "num_images_per_prompt", "generator", "latents", "prompt_embeds", "negative_prompt_embeds",
        "prompt_attention_mask", "negative_prompt_attention_mask", "output_type", "return_dict",
        "joint_attention_kwargs", "max_sequence_length",
    })
    batched_cond_keys = ("embeds", "neg_embeds", "attention_mask", "neg_attention_mask")
    output_class = ChromaPipelineOutput
    cache_contexts = False

    def encode(self, a: dict[str, Any]) -> Cond:
        """Embeddings (B, T, D), text ids and masks (B, T); the negative ones too with CFG."""
        cfg = a["guidance_scale"] > 1  # the pipeline's do_classifier_free_guidance
        attention_kwargs = a["joint_attention_kwargs"]
        out = call_by_name(self.pipe.encode_prompt, a, do_classifier_free_guidance=cfg,
                           device=self.device,
                           lora_scale=attention_kwargs.get("scale") if attention_kwargs is not None else None)
        keys = ("embeds", "text_ids", "mask", "neg_embeds", "neg_text_ids", "neg_mask")
        data = dict(zip(keys, out)) | {"guidance_scale": a["guidance_scale"],
                                       "attention_kwargs": attention_kwargs if attention_kwargs is not None else {}}
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if cfg else 1, data=data)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        """Packed noise (B, L, 4 * C); the image ids, and the text masks extended over the image tokens."""
        pipe, d = self.pipe, cond.data
        x, d["img_ids"] = pipe.prepare_latents(cond.batch, pipe.transformer.config.in_channels // 4, a["height"],
                                               a["width"], d["embeds"].dtype, self.device,
                                               a["generator"], a["latents"])
        for neg in ("", "neg_"):
            d[neg + "attention_mask"] = pipe._prepare_attention_mask(x.shape[0], x.shape[1], x.dtype, d[neg + "mask"])
        patch = pipe.vae_scale_factor * 2
        self.set_packed_layout(1, int(a["height"]) // patch, int(a["width"]) // patch)
        return x

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d, neg = cond.data, "neg_" if branch == "uncond" else ""
        return self.transformer(hidden_states=x, timestep=t.to(x.dtype) / 1000,
                                encoder_hidden_states=d[neg + "embeds"], txt_ids=d[neg + "text_ids"],
                                img_ids=d["img_ids"], attention_mask=d[neg + "attention_mask"],
                                joint_attention_kwargs=d["attention_kwargs"], return_dict=False)[0]

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        return None  # Chroma's blocks are not Flux's: no active-token forward (steps="hsa" gathers)

"""Adapter for diffusers' FluxPipeline (FLUX.1 [dev] / [schnell] text-to-image).

Flux packs the VAE latents (B, 16, H/8, W/8) into 2x2 patches, so the transformer sees (B, H/16 * W/16, 64)
tokens with rotary position ids. Guidance comes in two kinds: embedded guidance (guidance-distilled models,
`guidance_embeds=True`: the scale is a transformer input, 1 forward) and true classifier-free guidance
(`true_cfg_scale > 1` with a negative prompt: a second forward on the negative prompt). The scheduler shifts its
sigmas by `mu`, computed from the image sequence length.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipelineOutput

from accel.core.denoiser import Cond
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, embedded_guidance, kl_decode


class FluxDenoiser(FlowDenoiser):
    """Flux (Black Forest Labs, 2024; rectified flow transformer) over a FluxPipeline.

    x is the packed latent (B, L, 4 * C) with L = (H / 16) * (W / 16) for an H x W image. NFE per velocity: 1 per
    sample, 2 with true CFG (embedded guidance is free).
    """

    family = "flux"
    call_args = frozenset({
        "prompt", "prompt_2", "negative_prompt", "negative_prompt_2", "true_cfg_scale", "height", "width",
        "num_inference_steps", "sigmas", "guidance_scale", "num_images_per_prompt", "generator", "latents",
        "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds",
        "output_type", "return_dict", "joint_attention_kwargs", "max_sequence_length",
    })
    batched_cond_keys = ("embeds", "pooled", "neg_embeds", "neg_pooled", "guidance")
    output_class = FluxPipelineOutput

    def encode(self, a: dict[str, Any]) -> Cond:
        """Prompt (and, for true CFG, negative prompt) embeddings, as the pipeline encodes them."""
        pipe = self.pipe
        has_negative = a["negative_prompt"] is not None or (
            a["negative_prompt_embeds"] is not None and a["negative_pooled_prompt_embeds"] is not None)
        true_cfg = a["true_cfg_scale"] > 1 and has_negative
        if true_cfg and a["prompt_embeds"] is not None and a["negative_prompt_embeds"] is not None:
            if a["prompt_embeds"].shape != a["negative_prompt_embeds"].shape:
                raise ValueError("`prompt_embeds` and `negative_prompt_embeds` must have the same shape, got "
                                 f"{tuple(a['prompt_embeds'].shape)} and {tuple(a['negative_prompt_embeds'].shape)}")
        attention_kwargs = a["joint_attention_kwargs"]
        lora_scale = attention_kwargs.get("scale") if attention_kwargs is not None else None
        encode = dict(device=self.device, lora_scale=lora_scale)
        embeds, pooled, text_ids = call_by_name(pipe.encode_prompt, a, **encode)
        data = {"embeds": embeds, "pooled": pooled, "text_ids": text_ids, "guidance_scale": a["true_cfg_scale"],
                # The pipeline hands the transformer {} when no kwargs were given.
                "attention_kwargs": attention_kwargs if attention_kwargs is not None else {}}
        if true_cfg:
            data["neg_embeds"], data["neg_pooled"], data["neg_text_ids"] = call_by_name(
                pipe.encode_prompt, a, prompt=a["negative_prompt"], prompt_2=a["negative_prompt_2"],
                prompt_embeds=a["negative_prompt_embeds"], pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
                **encode)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if true_cfg else 1, data=data)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        """Packed noise (B, L, 4 * C) in the prompt embeddings' dtype; the image ids and embedded guidance."""
        pipe = self.pipe
        x, cond.data["img_ids"] = pipe.prepare_latents(
            cond.batch, pipe.transformer.config.in_channels // 4, a["height"], a["width"], cond.data["embeds"].dtype,
            self.device, a["generator"], a["latents"])
        cond.data["guidance"] = embedded_guidance(self.transformer, a["guidance_scale"], x.shape[0],
                                                  self.device)
        patch = pipe.vae_scale_factor * 2  # pixels per token side: the VAE's x8, then 2x2 packing
        self.set_packed_layout(1, int(a["height"]) // patch, int(a["width"]) // patch)
        return x

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d, neg = cond.data, "neg_" if branch == "uncond" else ""
        return self.transformer(hidden_states=x, timestep=t.to(x.dtype) / 1000, guidance=d["guidance"],
                                pooled_projections=d[neg + "pooled"], encoder_hidden_states=d[neg + "embeds"],
                                txt_ids=d[neg + "text_ids"], img_ids=d["img_ids"],
                                joint_attention_kwargs=d["attention_kwargs"], return_dict=False)[0]

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return kl_decode(self.pipe.vae, self.unpack(x, options))

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        """Active tokens only through the blocks, against cached K/V (accel.pipelines.dit_hsa)."""
        from accel.pipelines.dit_hsa import FluxActiveTokens

        return FluxActiveTokens.for_run(self, cond, kv)

"""Adapter for diffusers' NucleusMoEImagePipeline (Nucleus-Image, a sparse mixture-of-experts DiT).

The transformer takes packed latents (B, (H / 16) * (W / 16), 4 * C) (the Qwen-Image VAE's x8, then 2x2 patches)
and the text encoder's hidden states, which enter only as per-block keys and values (no text tokens in the residual
stream). Three details of the pipeline's loop are reproduced here:
- the transformer predicts x0 - eps, the negative of accel's velocity;
- classifier-free guidance runs the negative prompt as a second forward and rescales the combined prediction to the
  conditional prediction's per-token norm;
- diffusers' TextKVCacheConfig (enabled by the user with `pipe.transformer.enable_cache`) computes each block's text
  K/V once per prompt and keys them on the text tensor's data_ptr; the pipeline resets that cache once per call, and
  so does `prepare`.
The scheduler shifts its sigmas by mu, computed from the image sequence length (dynamic shift), as Flux's does.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.pipelines.nucleusmoe_image.pipeline_output import NucleusMoEImagePipelineOutput

from accel.core.denoiser import Cond, Prepared
from accel.moe.engine import check_capacity_factors
from accel.pipelines.base import FlowDenoiser, Guidance, batch_size, call_by_name, mean_std_decode


class NucleusDenoiser(FlowDenoiser):
    """Nucleus-Image (Nucleus AI, 2026, arXiv 2604.12163: a sparse expert-choice MoE DiT) over a
    NucleusMoEImagePipeline.

    x is the packed latent (B, L, 4 * C), L = (H / 16) * (W / 16). NFE per velocity: 1 per sample, 2 with CFG
    (guidance_scale > 1).
    """

    family = "nucleus"
    call_args = frozenset({
        "prompt", "negative_prompt", "guidance_scale", "height", "width", "num_inference_steps", "sigmas",
        "num_images_per_prompt", "max_sequence_length", "return_index", "generator", "latents", "prompt_embeds",
        "prompt_embeds_mask", "negative_prompt_embeds", "negative_prompt_embeds_mask", "output_type", "return_dict",
        "attention_kwargs",
    })
    batched_cond_keys = ("embeds", "mask", "neg_embeds", "neg_mask")
    guidance = Guidance.CFG_RENORM
    sign = -1.0  # the transformer predicts x0 - eps
    output_class = NucleusMoEImagePipelineOutput
    cache_contexts = False  # the pipeline calls the transformer without one (its text K/V cache sets its own)

    def __init__(self, pipe):
        super().__init__(pipe)
        check_capacity_factors(pipe.transformer)  # a per-layer list for another depth: a clear error, now
        self._text_keys: dict[int, tuple] = {}  # text K/V cache keys seen since its last reset (see _check_text_key)

    def prepare(self, **call: Any) -> Prepared:
        """As FlowDenoiser.prepare, then reset the text K/V cache as the pipeline does at the start of each call."""
        prepared = super().prepare(**call)
        self.reset_text_cache()
        return prepared

    def resolve(self, a: dict[str, Any]) -> None:
        a["max_sequence_length"] = a["max_sequence_length"] or self.pipe.default_max_sequence_length
        super().resolve(a)

    def encode(self, a: dict[str, Any]) -> Cond:
        """Prompt embeddings (B, T, D) and masks (B, T) or None; the negative ones too with CFG (an empty negative
        prompt where none was given, as the pipeline does)."""
        pipe = self.pipe
        n = batch_size(a["prompt"], a["prompt_embeds"])
        cfg = a["guidance_scale"] > 1
        negative_prompt = a["negative_prompt"]
        has_negative = negative_prompt is not None or (
            a["negative_prompt_embeds"] is not None and a["negative_prompt_embeds_mask"] is not None)
        if cfg and not has_negative:
            negative_prompt = [""] * n
        device = self.device
        embeds, mask = call_by_name(pipe.encode_prompt, a, device=device)
        data = {"embeds": embeds, "mask": mask, "neg_embeds": None, "neg_mask": None,
                "guidance_scale": a["guidance_scale"], "attention_kwargs": a["attention_kwargs"] or {}}
        if cfg:
            data["neg_embeds"], data["neg_mask"] = call_by_name(
                pipe.encode_prompt, a, prompt=negative_prompt, prompt_embeds=a["negative_prompt_embeds"],
                prompt_embeds_mask=a["negative_prompt_embeds_mask"], device=device)
        return Cond(batch=n * a["num_images_per_prompt"], passes=2 if cfg else 1, data=data)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        pipe, patch = self.pipe, self.transformer.config.patch_size
        x = pipe.prepare_latents(cond.batch, self.transformer.config.in_channels // 4, patch, a["height"],
                                 a["width"], cond.data["embeds"].dtype, self.device, a["generator"],
                                 a["latents"])
        rows, cols = a["height"] // pipe.vae_scale_factor // patch, a["width"] // pipe.vae_scale_factor // patch
        cond.data["img_shape"] = (1, rows, cols)  # (frames, rows, cols) of every sample, for the rotary ids
        self.set_packed_layout(1, rows, cols)
        return x

    def reset_text_cache(self) -> None:
        """Empty diffusers' text K/V cache, if the user enabled it (a no-op otherwise)."""
        self._text_keys.clear()
        if self.transformer.is_cache_enabled:
            self.transformer._reset_stateful_cache()

    def _check_text_key(self, embeds: torch.Tensor) -> None:
        """diffusers' text K/V cache keys on embeds.data_ptr(): a view or a reallocation that reuses a pointer
        with other text would read stale K/V. Reset the cache when a known pointer comes back as another tensor."""
        key = (embeds.shape, embeds.dtype, embeds.stride())
        if self._text_keys.setdefault(embeds.data_ptr(), key) != key:
            self.reset_text_cache()
            self._text_keys[embeds.data_ptr()] = key

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        d, neg = cond.data, "neg_" if branch == "uncond" else ""
        if self.transformer.is_cache_enabled:
            self._check_text_key(d[neg + "embeds"])
        num_train = self.pipe.scheduler.config.num_train_timesteps
        return self.transformer(hidden_states=x, timestep=t.to(x.dtype) / num_train,
                                encoder_hidden_states=d[neg + "embeds"], encoder_hidden_states_mask=d[neg + "mask"],
                                img_shapes=[d["img_shape"]] * x.shape[0], attention_kwargs=d["attention_kwargs"],
                                return_dict=False)[0]

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        """Active tokens only through the blocks, against cached K/V (accel.pipelines.dit_hsa)."""
        from accel.pipelines.dit_hsa import NucleusActiveTokens

        return NucleusActiveTokens.for_run(self, cond, kv)

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        latents = self.pipe._unpack_latents(x, options["height"], options["width"],
                                            self.transformer.config.patch_size, self.pipe.vae_scale_factor)
        return mean_std_decode(self.pipe.vae, latents)[:, :, 0]

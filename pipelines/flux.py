"""Adapter for diffusers' FluxPipeline (FLUX.1 [dev] / [schnell] text-to-image).

Flux packs the VAE latents (B, 16, H/8, W/8) into 2x2 patches, so the transformer sees (B, H/16 * W/16, 64)
tokens with rotary position ids. Guidance comes in two kinds: embedded guidance (guidance-distilled models,
`guidance_embeds=True`: the scale is a transformer input, 1 forward) and true classifier-free guidance
(`true_cfg_scale > 1` with a negative prompt: a second forward on the negative prompt). The scheduler shifts its
sigmas by `mu`, computed from the image sequence length.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipelineOutput, calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import get_module_execution_device

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout, cache_context
from accel.core.grid import TimeGrid


def batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """Prompts in the call, counted as the pipeline counts them."""
    if isinstance(prompt, str):
        return 1
    return len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]


class FluxDenoiser(Denoiser):
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

    def __init__(self, pipe):
        super().__init__(pipe)
        self._grid_hw: tuple[int, int] | None = None  # token rows/cols of the last prepare() (see token_layout)

    def prepare(self, **call: Any) -> Prepared:
        """Validate as FluxPipeline.__call__ does, encode the prompts, draw packed noise, build the shifted grid.

        Returns:
            Prepared with x (B, L, 4 * C) in the prompt embeddings' dtype, B = prompts * num_images_per_prompt.
        """
        a = self.bind(call)
        self.check_supported(call)
        pipe = self.pipe
        height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        pipe.check_inputs(
            a["prompt"], a["prompt_2"], height, width, negative_prompt=a["negative_prompt"],
            negative_prompt_2=a["negative_prompt_2"], prompt_embeds=a["prompt_embeds"],
            negative_prompt_embeds=a["negative_prompt_embeds"], pooled_prompt_embeds=a["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
            callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
            max_sequence_length=a["max_sequence_length"])
        cond = self._encode(a)
        x, cond.data["img_ids"] = pipe.prepare_latents(
            cond.batch, pipe.transformer.config.in_channels // 4, height, width, cond.data["embeds"].dtype,
            pipe._execution_device, a["generator"], a["latents"])
        cond.data["guidance"] = self._guidance(a["guidance_scale"], x.shape[0])
        patch = pipe.vae_scale_factor * 2  # pixels per token side: the VAE's x8, then 2x2 packing
        self._grid_hw = (int(height) // patch, int(width) // patch)
        grid = self.time_grid(a["num_inference_steps"], a["sigmas"], image_seq_len=x.shape[1])
        return Prepared(x, cond, grid, {"height": height, "width": width, "output_type": a["output_type"],
                                        "return_dict": a["return_dict"]})

    def _encode(self, a: dict[str, Any]) -> Cond:
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
        common = dict(device=pipe._execution_device, num_images_per_prompt=a["num_images_per_prompt"],
                      max_sequence_length=a["max_sequence_length"],
                      lora_scale=attention_kwargs.get("scale") if attention_kwargs is not None else None)
        embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=a["prompt"], prompt_2=a["prompt_2"], prompt_embeds=a["prompt_embeds"],
            pooled_prompt_embeds=a["pooled_prompt_embeds"], **common)
        data = {"embeds": embeds, "pooled": pooled, "text_ids": text_ids, "true_cfg_scale": a["true_cfg_scale"],
                # The pipeline hands the transformer {} when no kwargs were given.
                "attention_kwargs": attention_kwargs if attention_kwargs is not None else {}}
        if true_cfg:
            data["neg_embeds"], data["neg_pooled"], data["neg_text_ids"] = pipe.encode_prompt(
                prompt=a["negative_prompt"], prompt_2=a["negative_prompt_2"],
                prompt_embeds=a["negative_prompt_embeds"], pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
                **common)
        return Cond(batch=batch_size(a["prompt"], a["prompt_embeds"]) * a["num_images_per_prompt"],
                    passes=2 if true_cfg else 1, data=data)

    def _guidance(self, guidance_scale: float, batch: int) -> torch.Tensor | None:
        """Embedded guidance (B,) float32 for guidance-distilled transformers; None otherwise (as the pipeline)."""
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full([1], guidance_scale, device=self.pipe._execution_device, dtype=torch.float32).expand(batch)

    def time_grid(self, num_inference_steps: int, sigmas: list[float] | None, image_seq_len: int) -> TimeGrid:
        """The pipeline's schedule: linspace(1, 1/N, N) (or the given sigmas), shifted by mu(image_seq_len).

        Runs on a copy of the pipeline's scheduler so the pipeline's own state is untouched.
        """
        scheduler = copy.deepcopy(self.pipe.scheduler)
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        config = scheduler.config
        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, num_inference_steps, self.pipe._execution_device, sigmas=sigmas, mu=mu)
        return TimeGrid(scheduler.sigmas.float().cpu())

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v (B, L, 4 * C) at sigma (0-d or (B,)); true CFG runs the negative prompt as a second forward."""
        d = cond.data
        timestep = self._timestep(x, sigma)
        # Named cache contexts, as the pipeline uses, keep diffusers' cache hooks' state per CFG branch.
        with self.transformer.cache_context("cond"):
            v = self._forward(x, timestep, d["embeds"], d["pooled"], d["text_ids"], cond)
        if cond.passes == 2:
            with self.transformer.cache_context("uncond"):
                v_neg = self._forward(x, timestep, d["neg_embeds"], d["neg_pooled"], d["neg_text_ids"], cond, "uncond")
            v = v_neg + d["true_cfg_scale"] * (v - v_neg)
        return v

    def _timestep(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) timestep / 1000 in x's dtype, with the pipeline's arithmetic on t = sigma * num_train_timesteps."""
        sigma = sigma.to(x.device)
        if sigma.ndim not in (0, 1) or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(f"Flux takes sigma as a scalar or per sample ({x.shape[0]},), got {tuple(sigma.shape)}")
        t = sigma * self.pipe.scheduler.config.num_train_timesteps  # == scheduler.timesteps[i], bit for bit
        return t.expand(x.shape[0]).to(x.dtype) / 1000

    def _forward(self, x, timestep, embeds, pooled, text_ids, cond: Cond, context: str = "cond") -> torch.Tensor:
        with cache_context(self.transformer, context):  # the pipeline's names: hook state per CFG branch
            return self.transformer(hidden_states=x, timestep=timestep, guidance=cond.data["guidance"],
                                    pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                    img_ids=cond.data["img_ids"], joint_attention_kwargs=cond.data["attention_kwargs"],
                                    return_dict=False)[0]

    def decode(self, x: torch.Tensor, prepared: Prepared) -> FluxPipelineOutput | tuple:
        """Packed latents (B, L, 4 * C) -> FluxPipelineOutput(images) in the call's output_type ("latent": x)."""
        pipe, options = self.pipe, prepared.options
        if options["output_type"] == "latent":
            image = x
        else:
            latents = pipe._unpack_latents(x, options["height"], options["width"], pipe.vae_scale_factor)
            latents = (latents / pipe.vae.config.scaling_factor) + pipe.vae.config.shift_factor
            latents = latents.to(get_module_execution_device(pipe.vae))
            image = pipe.vae.decode(latents, return_dict=False)[0]
            image = pipe.image_processor.postprocess(image, output_type=options["output_type"])
        pipe.maybe_free_model_hooks()
        return FluxPipelineOutput(images=image) if options["return_dict"] else (image,)

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        """Active tokens only through the blocks, against cached K/V (accel.pipelines.dit_hsa)."""
        from accel.pipelines.dit_hsa import FluxActiveTokens

        return FluxActiveTokens.for_run(self, cond, kv)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """1 x (H / 16) x (W / 16), row-major as _pack_latents lays the 2x2 patches out.

        The packed x does not carry the image's aspect ratio, so the rows and columns come from the last prepare().
        """
        if self._grid_hw is None:
            raise ValueError("FluxDenoiser.token_layout needs the image size: call prepare() first")
        layout = TokenLayout(1, *self._grid_hw)
        if x.ndim != 3 or x.shape[1] != layout.num_tokens:
            raise ValueError(f"x of shape {tuple(x.shape)} does not match the prepared {layout.rows}x{layout.cols} "
                             "token grid")
        return layout

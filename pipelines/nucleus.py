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

import copy
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.nucleusmoe_image.pipeline_nucleusmoe_image import calculate_shift, retrieve_timesteps
from diffusers.pipelines.nucleusmoe_image.pipeline_output import NucleusMoEImagePipelineOutput
from diffusers.utils.torch_utils import get_module_execution_device

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout
from accel.core.grid import TimeGrid
from accel.moe.engine import check_capacity_factors


def batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> int:
    """Prompts in the call, counted as the pipeline counts them."""
    if isinstance(prompt, str):
        return 1
    return len(prompt) if isinstance(prompt, list) else prompt_embeds.shape[0]


def guided_prediction(pred: torch.Tensor, neg_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Nucleus-Image's classifier-free guidance: the usual combination, rescaled per token to the conditional
    prediction's norm (over the last dim), as NucleusMoEImagePipeline.__call__ computes it."""
    combined = neg_pred + guidance_scale * (pred - neg_pred)
    cond_norm = torch.norm(pred, dim=-1, keepdim=True)
    combined_norm = torch.norm(combined, dim=-1, keepdim=True)
    return combined * (cond_norm / combined_norm)


class NucleusDenoiser(Denoiser):
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

    def __init__(self, pipe):
        super().__init__(pipe)
        check_capacity_factors(pipe.transformer)  # a per-layer list for another depth: a clear error, now
        self._grid_hw: tuple[int, int] | None = None  # token rows/cols of the last prepare() (see token_layout)
        self._text_keys: dict[int, tuple] = {}  # text K/V cache keys seen since its last reset (see _check_text_key)

    def prepare(self, **call: Any) -> Prepared:
        """Validate as NucleusMoEImagePipeline.__call__ does, encode the prompts, draw packed noise, build the
        shifted grid, and reset the text K/V cache as the pipeline does at the start of each call.

        Returns:
            Prepared with x (B, L, 4 * C) in the prompt embeddings' dtype, B = prompts * num_images_per_prompt.
        """
        a = self.bind(call)
        self.check_supported(call)
        pipe = self.pipe
        height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        a["max_sequence_length"] = a["max_sequence_length"] or pipe.default_max_sequence_length
        pipe.check_inputs(
            a["prompt"], height, width, negative_prompt=a["negative_prompt"], prompt_embeds=a["prompt_embeds"],
            prompt_embeds_mask=a["prompt_embeds_mask"], negative_prompt_embeds=a["negative_prompt_embeds"],
            negative_prompt_embeds_mask=a["negative_prompt_embeds_mask"],
            callback_on_step_end_tensor_inputs=a["callback_on_step_end_tensor_inputs"],
            max_sequence_length=a["max_sequence_length"], return_index=a["return_index"])
        cond = self._encode(a)
        patch = self.transformer.config.patch_size
        x = pipe.prepare_latents(cond.batch, self.transformer.config.in_channels // 4, patch, height, width,
                                 cond.data["embeds"].dtype, pipe._execution_device, a["generator"], a["latents"])
        rows, cols = height // pipe.vae_scale_factor // patch, width // pipe.vae_scale_factor // patch
        cond.data["img_shape"] = (1, rows, cols)  # (frames, rows, cols) of every sample, for the rotary ids
        self._grid_hw = (rows, cols)
        grid = self.time_grid(a["num_inference_steps"], a["sigmas"], image_seq_len=x.shape[1])
        self.reset_text_cache()
        return Prepared(x, cond, grid, {"height": height, "width": width, "output_type": a["output_type"],
                                        "return_dict": a["return_dict"]})

    def _encode(self, a: dict[str, Any]) -> Cond:
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
        common = dict(device=pipe._execution_device, num_images_per_prompt=a["num_images_per_prompt"],
                      max_sequence_length=a["max_sequence_length"], return_index=a["return_index"])
        embeds, mask = pipe.encode_prompt(prompt=a["prompt"], prompt_embeds=a["prompt_embeds"],
                                          prompt_embeds_mask=a["prompt_embeds_mask"], **common)
        data = {"embeds": embeds, "mask": mask, "neg_embeds": None, "neg_mask": None,
                "guidance_scale": a["guidance_scale"], "attention_kwargs": a["attention_kwargs"] or {}}
        if cfg:
            data["neg_embeds"], data["neg_mask"] = pipe.encode_prompt(
                prompt=negative_prompt, prompt_embeds=a["negative_prompt_embeds"],
                prompt_embeds_mask=a["negative_prompt_embeds_mask"], **common)
        return Cond(batch=n * a["num_images_per_prompt"], passes=2 if cfg else 1, data=data)

    def time_grid(self, num_inference_steps: int, sigmas: list[float] | None, image_seq_len: int) -> TimeGrid:
        """The pipeline's schedule: linspace(1, 1/N, N) (or the given sigmas), shifted by mu(image_seq_len).

        Runs on a copy of the pipeline's scheduler so the pipeline's own state is untouched.
        """
        scheduler = copy.deepcopy(self.pipe.scheduler)
        if sigmas is None:
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        config = scheduler.config
        mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, num_inference_steps, self.pipe._execution_device, sigmas=sigmas, mu=mu)
        return TimeGrid(scheduler.sigmas.float().cpu())

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

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v (B, L, 4 * C) at sigma (0-d or (B,)): minus the transformer's (guided) prediction."""
        d = cond.data
        timestep = self._timestep(x, sigma)
        pred = self._forward(x, timestep, d["embeds"], d["mask"], cond)
        if cond.passes == 2:
            neg_pred = self._forward(x, timestep, d["neg_embeds"], d["neg_mask"], cond)
            pred = guided_prediction(pred, neg_pred, d["guidance_scale"])
        return -pred

    def _timestep(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) t / num_train_timesteps in x's dtype, with the pipeline's arithmetic on t = sigma * 1000."""
        sigma = sigma.to(x.device)
        if sigma.ndim not in (0, 1) or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(f"Nucleus takes sigma as a scalar or per sample ({x.shape[0]},), "
                             f"got {tuple(sigma.shape)}")
        num_train = self.pipe.scheduler.config.num_train_timesteps
        t = sigma * num_train  # == scheduler.timesteps[i], bit for bit
        return t.expand(x.shape[0]).to(x.dtype) / num_train

    def _forward(self, x, timestep, embeds, mask, cond: Cond) -> torch.Tensor:
        # No cache_context: the pipeline calls the transformer without one (its text K/V cache sets its own).
        if self.transformer.is_cache_enabled:
            self._check_text_key(embeds)
        return self.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=embeds,
                                encoder_hidden_states_mask=mask, img_shapes=[cond.data["img_shape"]] * x.shape[0],
                                attention_kwargs=cond.data["attention_kwargs"], return_dict=False)[0]

    def decode(self, x: torch.Tensor, prepared: Prepared) -> NucleusMoEImagePipelineOutput | tuple:
        """Packed latents (B, L, 4 * C) -> NucleusMoEImagePipelineOutput(images) in the call's output_type."""
        pipe, options = self.pipe, prepared.options
        if options["output_type"] == "latent":
            image = x
        else:
            vae = pipe.vae
            latents = pipe._unpack_latents(x, options["height"], options["width"], self.transformer.config.patch_size,
                                           pipe.vae_scale_factor)
            latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
            image = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
            image = pipe.image_processor.postprocess(image, output_type=options["output_type"])
        pipe.maybe_free_model_hooks()
        return NucleusMoEImagePipelineOutput(images=image) if options["return_dict"] else (image,)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """1 x (H / 16) x (W / 16), row-major as _pack_latents lays the 2x2 patches out (from the last prepare())."""
        if self._grid_hw is None:
            raise ValueError("NucleusDenoiser.token_layout needs the image size: call prepare() first")
        layout = TokenLayout(1, *self._grid_hw)
        if x.ndim != 3 or x.shape[1] != layout.num_tokens:
            raise ValueError(f"x of shape {tuple(x.shape)} does not match the prepared {layout.rows}x{layout.cols} "
                             "token grid")
        return layout

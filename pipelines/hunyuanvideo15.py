"""Adapter for diffusers' HunyuanVideo15Pipeline (HunyuanVideo 1.5 text-to-video).

The transformer takes the video latents (B, C, F', h, w) with the image-conditioning channels concatenated (the
first frame's latents and a mask, zeros for text-to-video: the pipeline's prepare_cond_latents_and_mask) and
patchifies them itself, and reads three token streams: Qwen2.5-VL embeddings of the templated prompt, ByT5
embeddings of its quoted glyph text (zeros where it has none) and SigLIP image embeddings (zeros for
text-to-video). Its timestep is t itself (0..1000). Guidance is the pipeline's guider object: a
ClassifierFreeGuidance active on every step runs the "pred_cond" / "pred_uncond" forwards separately and combines
them through that guider's own forward (its scale, rescale and formulation); another guider, or a CFG window
(start > 0 or stop < 1, whose forwards per step change), runs the pipeline's own __call__. The schedule is
linspace(1, 0, N + 1)[:-1] (or the call's sigmas) through the scheduler's shift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.hunyuan_video1_5.pipeline_output import HunyuanVideo15PipelineOutput

from accel.core.denoiser import Cond, TokenLayout, UnsupportedCall
from accel.core.grid import TimeGrid
from accel.pipelines.base import FlowDenoiser, batch_size, call_by_name, scheduler_grid

# The pipeline's four text inputs, and the Cond keys that hold them (a "neg_" prefix for the negative prompt).
TEXT_INPUTS = {"encoder_hidden_states": "embeds", "encoder_attention_mask": "mask",
               "encoder_hidden_states_2": "embeds_2", "encoder_attention_mask_2": "mask_2"}


class HunyuanVideo15Denoiser(FlowDenoiser):
    """HunyuanVideo 1.5 (Tencent Hunyuan, 2025, "HunyuanVideo 1.5 Technical Report") over a HunyuanVideo15Pipeline.

    x is the video latent (B, C, F', h, w) in the transformer's dtype, as the pipeline keeps it. NFE per velocity:
    1 per sample, 2 where the guider runs classifier-free guidance.
    """

    family = "hunyuanvideo15"
    call_args = frozenset({
        "prompt", "negative_prompt", "height", "width", "num_frames", "num_inference_steps", "sigmas",
        "num_videos_per_prompt", "generator", "latents", "prompt_embeds", "prompt_embeds_mask",
        "negative_prompt_embeds", "negative_prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2",
        "negative_prompt_embeds_2", "negative_prompt_embeds_mask_2", "output_type", "return_dict",
        "attention_kwargs",
    })
    batched_cond_keys = tuple(TEXT_INPUTS.values()) + tuple(f"neg_{k}" for k in TEXT_INPUTS.values())
    output_class = HunyuanVideo15PipelineOutput
    output_field = "frames"

    def check_supported(self, call: dict[str, Any]) -> None:
        """Also the guider: a ClassifierFreeGuidance over the whole trajectory (its forwards per step are fixed)."""
        super().check_supported(call)
        guider = self.pipe.guider
        if type(guider) is not ClassifierFreeGuidance or (guider._start, guider._stop) != (0.0, 1.0):
            raise UnsupportedCall(f"{type(self).__name__} reproduces a ClassifierFreeGuidance guider with start=0 and "
                                  f"stop=1 only, the pipeline has {type(guider).__name__}"
                                  f"(start={guider._start}, stop={guider._stop})")

    def resolve(self, a: dict[str, Any]) -> None:
        """The pipeline's check_inputs, then its default size (target_size at 16:9) where neither side is given."""
        pipe = self.pipe
        call_by_name(pipe.check_inputs, a)
        if a["height"] is None and a["width"] is None:
            a["height"], a["width"] = pipe.video_processor.calculate_default_height_width(
                pipe.default_aspect_ratio[1], pipe.default_aspect_ratio[0], pipe.target_size)

    def encode(self, a: dict[str, Any]) -> Cond:
        """Qwen2.5-VL (B, T, D) and ByT5 (B, T2, D2) embeddings with their masks, in the transformer's dtype; the
        negative prompt's too (under "neg_" keys) where the guider runs CFG."""
        pipe = self.pipe
        passes = pipe.guider.num_conditions if pipe.guider._enabled else 1  # the pipeline's test for a negative
        common = dict(device=self.device, dtype=self.transformer.dtype,
                      batch_size=batch_size(a["prompt"], a["prompt_embeds"]),
                      num_videos_per_prompt=a["num_videos_per_prompt"])
        data = dict(zip(TEXT_INPUTS.values(), call_by_name(pipe.encode_prompt, a, **common)))
        if passes == 2:
            negative = pipe.encode_prompt(prompt=a["negative_prompt"], **common,
                                          prompt_embeds=a["negative_prompt_embeds"],
                                          prompt_embeds_mask=a["negative_prompt_embeds_mask"],
                                          prompt_embeds_2=a["negative_prompt_embeds_2"],
                                          prompt_embeds_mask_2=a["negative_prompt_embeds_mask_2"])
            data |= {f"neg_{k}": v for k, v in zip(TEXT_INPUTS.values(), negative)}
        data["attention_kwargs"] = a["attention_kwargs"]
        data["dtype"] = common["dtype"]  # read once: transformer.dtype walks every module (0.5 ms on the tiny model)
        return Cond(batch=common["batch_size"] * a["num_videos_per_prompt"], passes=passes, data=data)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        pipe = self.pipe
        return pipe.prepare_latents(cond.batch, pipe.num_channels_latents, a["height"], a["width"], a["num_frames"],
                                    cond.data["dtype"], self.device, a["generator"], a["latents"])

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """linspace(1, 0, N + 1) without its final 0 (or the call's sigmas), through the scheduler's shift."""
        n = a["num_inference_steps"]
        sigmas = np.linspace(1.0, 0.0, n + 1)[:-1] if a["sigmas"] is None else a["sigmas"]
        return scheduler_grid(self.pipe, n, sigmas, device=self.device)

    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The guider's combination of the conditional (and unconditional) prediction, as the pipeline calls it
        (also with one pass, where a guidance_rescale > 0 still rescales)."""
        t = self.train_t(x, sigma)
        v = self._branch(x, t, cond, "cond")
        v_neg = self._branch(x, t, cond, "uncond") if cond.passes == 2 else None
        return self.pipe.guider.forward(pred_cond=v, pred_uncond=v_neg).pred

    def _branch(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        with self.transformer.cache_context(f"pred_{branch}"):  # the guider's identifiers, as the pipeline names them
            return self.forward(x, t, cond, branch)

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        """One transformer call on [x; zero conditioning latents; zero mask] with zero image embeddings (one row per
        sample: the pipeline makes one per prompt, which fails with num_videos_per_prompt > 1 and under search)."""
        pipe, dtype = self.pipe, cond.data["dtype"]
        cond_latents, mask = pipe.prepare_cond_latents_and_mask(x, dtype, x.device)
        x_in = torch.cat([x, cond_latents, mask], dim=1)
        image_embeds = torch.zeros(x.shape[0], pipe.vision_num_semantic_tokens, pipe.vision_states_dim, dtype=dtype,
                                   device=x.device)
        prefix = "neg_" if branch == "uncond" else ""
        text = {name: cond.data[prefix + key] for name, key in TEXT_INPUTS.items()}
        return self.transformer(hidden_states=x_in, image_embeds=image_embeds, timestep=t.to(x_in.dtype),
                                attention_kwargs=cond.data["attention_kwargs"], return_dict=False, **text)[0]

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """latents / scaling_factor through the VAE, one video at a time: its mid-block attention broadcasts the
        causal mask over the batch wrongly (diffusers 0.42: the pipeline's decode of more than one video fails)."""
        vae = self.pipe.vae
        latents = x.to(vae.dtype) / vae.config.scaling_factor
        return torch.cat([vae.decode(z[None], return_dict=False)[0] for z in latents])

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """(F' / p_t) x (h / p) x (w / p) for x (B, C, F', h, w), row-major as the patch embedding flattens."""
        config = self.transformer.config
        return TokenLayout(x.shape[2] // config.patch_size_t, x.shape[3] // config.patch_size,
                           x.shape[4] // config.patch_size)

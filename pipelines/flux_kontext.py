"""Adapter for diffusers' FluxKontextPipeline (FLUX.1 Kontext: image editing by in-context tokens).

Flux with the input image's packed latents appended to the noisy tokens at every forward (their rotary ids on a
second "frame", index 1); the prediction for those context tokens is dropped. Without an image it is Flux
text-to-image. The call's size is re-fitted to `max_area` at its aspect ratio, and the input image resized to a
preferred Kontext resolution (`_auto_resize`), both as the pipeline does.
"""

from __future__ import annotations

from typing import Any

import torch

from accel.core.denoiser import Cond
from accel.pipelines.base import call_by_name, embedded_guidance
from accel.pipelines.flux import FluxDenoiser


class FluxKontextDenoiser(FluxDenoiser):
    """FLUX.1 Kontext (Black Forest Labs, 2025, "FLUX.1 Kontext: Flow Matching for In-Context Image Generation and
    Editing in Latent Space") over a FluxKontextPipeline.

    x is the packed latent of the output image (B, L, 4 * C); the input image's latents (B, L', 4 * C) are
    conditioning. NFE per velocity: 1 per sample, 2 with true CFG.
    """

    family = "flux-kontext"
    call_args = FluxDenoiser.call_args | {"image", "max_area", "_auto_resize"}
    batched_cond_keys = FluxDenoiser.batched_cond_keys + ("image_latents",)

    def resolve(self, a: dict[str, Any]) -> None:
        """Size fitted to max_area, inputs checked, the input image resized and preprocessed (the pipeline's)."""
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        pipe = self.pipe
        height = a["height"] or pipe.default_sample_size * pipe.vae_scale_factor
        width = a["width"] or pipe.default_sample_size * pipe.vae_scale_factor
        multiple_of = pipe.vae_scale_factor * 2
        aspect_ratio = width / height
        a["width"] = round((a["max_area"] * aspect_ratio) ** 0.5) // multiple_of * multiple_of
        a["height"] = round((a["max_area"] / aspect_ratio) ** 0.5) // multiple_of * multiple_of
        call_by_name(pipe.check_inputs, a)
        image = a["image"]
        if image is not None and not (isinstance(image, torch.Tensor) and image.size(1) == pipe.latent_channels):
            img = image[0] if isinstance(image, list) else image
            image_height, image_width = pipe.image_processor.get_default_height_width(img)
            if a["_auto_resize"]:
                _, image_width, image_height = min((abs(image_width / image_height - w / h), w, h)
                                                   for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
            image_width = image_width // multiple_of * multiple_of
            image_height = image_height // multiple_of * multiple_of
            image = pipe.image_processor.resize(image, image_height, image_width)
            a["image"] = pipe.image_processor.preprocess(image, image_height, image_width)

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        """Packed noise (B, L, 4 * C); the input image's packed latents and the joint rotary ids into cond."""
        pipe, d = self.pipe, cond.data
        x, d["image_latents"], latent_ids, image_ids = pipe.prepare_latents(
            a["image"], cond.batch, pipe.transformer.config.in_channels // 4, a["height"], a["width"],
            d["embeds"].dtype, self.device, a["generator"], a["latents"])
        d["img_ids"] = latent_ids if image_ids is None else torch.cat([latent_ids, image_ids], dim=0)
        d["guidance"] = embedded_guidance(self.transformer, a["guidance_scale"], x.shape[0], self.device)
        patch = pipe.vae_scale_factor * 2
        self.set_packed_layout(1, int(a["height"]) // patch, int(a["width"]) // patch)
        return x

    def forward(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        context = cond.data["image_latents"]
        x_in = x if context is None else torch.cat([x, context], dim=1)
        return super().forward(x_in, t, cond, branch)[:, :x.shape[1]]

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        return None  # FluxActiveTokens assumes every image token is sampled; Kontext's context tokens are not

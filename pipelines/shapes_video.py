"""The built-in text-to-video model: a plain patch flow DiT on moving shapes (accel.shapes.video), in pixel space.

Clips (B, 3, F, H, W) in [-1, 1] are cut into tokens of patch_frames x patch_size x patch_size pixels, embedded
by one linear map, run through single-stream DiT blocks over [text; video] tokens (the image model's blocks, so
its fused kernels and diffusers' cache hooks apply), and mapped back by one linear head. Every token's compute
is its own apart from attention, so computing a subset of tokens (heterogeneous steps, accel.schedulers.hsa)
saves in proportion. The pipeline is a plain diffusers DiffusionPipeline (FlowMatchEulerDiscreteScheduler).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.cache_utils import CacheMixin
from diffusers.utils import BaseOutput
from torch import nn

from accel.pipelines.shapes import (
    DiTBlock, ShapesPipeline, build_text_encoder, build_tokenizer, check_prompt_and_steps, register_block_for_caches,
    sincos_2d, start_latents, timestep_embedding,
)

VIDEO_VOCAB = "a an the and circle square triangle red green blue yellow moving left right up down".split()


def sincos_1d(n: int, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = 1.0 / (1000 ** (torch.arange(half, dtype=torch.float32) / half))
    a = torch.arange(n, dtype=torch.float32)[:, None] * freqs
    return torch.cat([a.sin(), a.cos()], dim=1)


class ShapesVideoTransformer3DModel(ModelMixin, ConfigMixin, CacheMixin):
    """Plain patch DiT for pixel-space clips (see the module docstring). forward(hidden_states (B, C, F, H, W),
    encoder_hidden_states (B, T, text_dim), timestep (B,) sigma or per token (B, L), encoder_attention_mask)."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, num_frames: int = 8, sample_size: int = 32, in_channels: int = 3, patch_size: int = 4,
                 patch_frames: int = 1, width: int = 128, num_layers: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, text_dim: int = 128, freq_dim: int = 256):
        super().__init__()
        patch_dim = in_channels * patch_frames * patch_size * patch_size
        self.patch_embed = nn.Linear(patch_dim, width)
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.context_embedder = nn.Linear(text_dim, width)
        self.pooled_embedder = nn.Linear(text_dim, width)
        self.blocks = nn.ModuleList([DiTBlock(width, num_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm_out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj_out = nn.Linear(width, patch_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def enable_cache(self, config) -> None:
        """diffusers' cache hooks on this model; see CacheMixin."""
        register_block_for_caches()
        super().enable_cache(config)

    def grid(self, x: torch.Tensor) -> tuple[int, int, int]:
        """(frames, rows, cols) of tokens for a clip x (B, C, F, H, W)."""
        c = self.config
        f, h, w = x.shape[2:]
        if f % c.patch_frames or h % c.patch_size or w % c.patch_size:
            raise ValueError(f"a {f}x{h}x{w} clip does not split into {c.patch_frames}x{c.patch_size}x"
                             f"{c.patch_size} patches")
        return f // c.patch_frames, h // c.patch_size, w // c.patch_size

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, H, W) -> (B, L, C * pf * p * p), tokens frame-major then row-major (accel.schedulers.hsa's
        latent_to_tokens order)."""
        from accel.schedulers.hsa import latent_to_tokens

        gf, gh, gw = self.grid(x)
        return latent_to_tokens(x, gh, gw, gf)

    def unpatchify(self, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        from accel.schedulers.hsa import tokens_to_latent

        gf, gh, gw = self.grid(like)
        return tokens_to_latent(tokens, like, gh, gw, gf)

    def positions(self, grid: tuple[int, int, int], dim: int) -> torch.Tensor:
        """(L, dim) position embedding: 2D sin-cos over rows x cols plus a 1D one over frames."""
        gf, gh, gw = grid
        space = sincos_2d(gh, gw, dim)  # (gh * gw, dim)
        time = sincos_1d(gf, dim)  # (gf, dim)
        return (time[:, None, :] + space[None]).reshape(gf * gh * gw, dim)

    def conditioning(self, enc: torch.Tensor, enc_mask: torch.Tensor | None, sigma: torch.Tensor, dtype):
        """(txt (B, T, D), c_txt, c_img, keep (B, T) bool or None, B) from the text states and sigma: per sample
        (B,) gives c_txt = c_img (B, 1, D); per token (B, L) gives c_txt (B, T, D) and c_img (B, L, D)."""
        enc = enc.to(dtype)
        b = enc.shape[0]
        tmask = (torch.ones(enc.shape[:2], device=enc.device, dtype=enc.dtype) if enc_mask is None
                 else enc_mask.to(enc.device, enc.dtype))
        pooled = self.pooled_embedder((enc * tmask[..., None]).sum(1) / tmask.sum(1, keepdim=True).clamp(min=1))
        txt = self.context_embedder(enc)
        if sigma.ndim == 2:  # per token: the text gets its sample's mean sigma
            c_img = self.time_embed(timestep_embedding(sigma, self.config.freq_dim).to(dtype)) + pooled[:, None]
            c_txt = self.time_embed(timestep_embedding(sigma.mean(1), self.config.freq_dim).to(dtype))[:, None]
            c_txt = (c_txt + pooled[:, None]).expand(-1, txt.shape[1], -1)
        else:
            c_img = c_txt = self.time_embed(timestep_embedding(sigma, self.config.freq_dim).to(dtype))[:, None] + \
                pooled[:, None]
        keep = None
        if enc_mask is not None:
            keep = tmask.bool()
        return txt, c_txt, c_img, keep, b

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        """Predict the velocity eps - x0 of a clip. timestep: sigma in [0, 1], (B,) or per token (B, L)."""
        x = hidden_states
        if x.ndim != 5:
            raise ValueError(f"hidden_states must be (B, C, F, H, W), got {tuple(x.shape)}")
        b = x.shape[0]
        grid = self.grid(x)
        n = grid[0] * grid[1] * grid[2]
        sigma = timestep.to(x.device, torch.float32)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        if sigma.shape not in ((b,), (b, n)):
            raise ValueError(f"timestep must have shape ({b},) or ({b}, {n}), got {tuple(sigma.shape)}")
        img = self.patch_embed(self.patchify(x)) + self.positions(grid, self.config.width).to(x)
        txt, c_txt, c_img, keep, _ = self.conditioning(encoder_hidden_states, encoder_attention_mask, sigma, img.dtype)
        tokens = torch.cat([txt, img], dim=1)
        c = torch.cat([c_txt, c_img], dim=1) if sigma.ndim == 2 else c_img  # (B, T + L, D) or (B, 1, D)
        mask = None
        if keep is not None:
            mask = torch.cat([keep, torch.ones(b, n, dtype=torch.bool, device=x.device)], 1)[:, None, None, :]
        for block in self.blocks:
            tokens = block(tokens, c, mask)
        out = self.head(tokens[:, txt.shape[1]:], c_img)
        out = self.unpatchify(out, x)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)

    def head(self, img: torch.Tensor, c_img: torch.Tensor) -> torch.Tensor:
        shift, scale = self.norm_out_modulation(c_img).chunk(2, dim=-1)
        return self.proj_out(self.norm_out(img) * (1 + scale) + shift)


@dataclass
class ShapesVideoPipelineOutput(BaseOutput):
    frames: object  # (B, F, H, W, 3): float numpy in [0, 1] ("np"), a tensor in [0, 1] ("pt"), or PIL lists


class ShapesVideoPipeline(DiffusionPipeline):
    """Text-to-video for the moving-shapes world, in pixel space, with classifier-free guidance."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, tokenizer, text_encoder, transformer: ShapesVideoTransformer3DModel,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    encode_prompt = ShapesPipeline.encode_prompt
    expand_prompts = staticmethod(ShapesPipeline.expand_prompts)
    encode_with_negatives = ShapesPipeline.encode_with_negatives
    denoise = ShapesPipeline.denoise

    def prepare_latents(self, batch_size: int, num_frames: int, height: int, width: int, dtype, device, generator,
                        latents=None):
        shape = (batch_size, self.transformer.config.in_channels, num_frames, height, width)
        return start_latents(shape, dtype, device, generator, latents)

    def check_inputs(self, prompt, num_frames: int, height: int, width: int, num_inference_steps: int):
        check_prompt_and_steps(prompt, num_inference_steps)
        c = self.transformer.config
        if height % c.patch_size or width % c.patch_size or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {c.patch_size}, got {height}x{width}")
        if num_frames % c.patch_frames or num_frames <= 0:
            raise ValueError(f"num_frames must be a positive multiple of {c.patch_frames}, got {num_frames}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        c = self.transformer.config
        num_frames, height, width = num_frames or c.num_frames, height or c.sample_size, width or c.sample_size
        self.check_inputs(prompt, num_frames, height, width, num_inference_steps)
        prompts, negatives = self.expand_prompts(prompt, negative_prompt, num_videos_per_prompt)
        device = self._execution_device
        embeds, mask = self.encode_with_negatives(prompts, negatives, guidance_scale, device)
        x = self.prepare_latents(len(prompts), num_frames, height, width, embeds.dtype, device, generator, latents)
        x = self.denoise(x, embeds, mask, guidance_scale, num_inference_steps, sigmas, device)
        frames = self.postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return ShapesVideoPipelineOutput(frames=frames)

    @staticmethod
    def postprocess(x: torch.Tensor, output_type: str = "np"):
        """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3): float numpy in [0, 1], a tensor in [0, 1], or PIL lists."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be one of 'pil', 'np', 'pt', got {output_type!r}")
        clip = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
        if output_type == "pt":
            return clip
        arr = clip.float().cpu().numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [[Image.fromarray((f * 255).round().astype(np.uint8)) for f in v] for v in arr]


def build_shapes_video_pipeline(width: int = 128, num_layers: int = 4, text_hidden: int = 128, text_layers: int = 2,
                                num_frames: int = 8, sample_size: int = 32, patch_size: int = 4,
                                patch_frames: int = 1, seed: int = 0) -> ShapesVideoPipeline:
    """A freshly initialised video pipeline (for training, or tiny random ones in tests)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(words=VIDEO_VOCAB)
    text_encoder = build_text_encoder(len(tokenizer), text_hidden, text_layers, tokenizer.model_max_length)
    transformer = ShapesVideoTransformer3DModel(num_frames=num_frames, sample_size=sample_size, patch_size=patch_size,
                                                patch_frames=patch_frames, width=width, num_layers=num_layers,
                                                text_dim=text_hidden)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    pipe = ShapesVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(),
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# Denoiser adapter and the active-token forward for heterogeneous steps
# ---------------------------------------------------------------------------------------------------------------

from accel.core.denoiser import Cond, Prepared, TokenLayout  # noqa: E402
from accel.pipelines.shapes import ShapesDenoiser  # noqa: E402
from accel.core.token_index import gather_tokens  # noqa: E402
from accel.pipelines.shapes_hsa import ActiveTokens  # noqa: E402


class ShapesVideoDenoiser(ShapesDenoiser):
    """Adapter for ShapesVideoPipeline: pixel-space clips (B, 3, F, H, W), CFG batched [uncond, cond]; encoding,
    time grid and velocity are the image adapter's."""

    family = "shapes-video"
    call_args = frozenset({"prompt", "negative_prompt", "num_frames", "height", "width", "num_inference_steps",
                           "guidance_scale", "num_videos_per_prompt", "generator", "latents", "sigmas",
                           "output_type", "return_dict"})

    def prepare(self, **call) -> Prepared:
        self.check_supported(call)
        a = self.bind(call)
        pipe, c = self.pipe, self.pipe.transformer.config
        frames, height, width = a["num_frames"] or c.num_frames, a["height"] or c.sample_size, a["width"] or \
            c.sample_size
        pipe.check_inputs(a["prompt"], frames, height, width, a["num_inference_steps"])
        prompts, negatives = pipe.expand_prompts(a["prompt"], a["negative_prompt"], a["num_videos_per_prompt"])
        device = pipe._execution_device  # read once a call: diffusers walks every module for it
        cond = self.encode(prompts, negatives, a["guidance_scale"], device)
        x = pipe.prepare_latents(len(prompts), frames, height, width, cond.data["embeds"].dtype, device,
                                 a["generator"], a["latents"])
        return Prepared(x, cond, self.time_grid(a["num_inference_steps"], a["sigmas"]),
                        {"output_type": a["output_type"], "return_dict": a["return_dict"]})

    def decode(self, x, prepared: Prepared):
        frames = self.pipe.postprocess(x, prepared.options.get("output_type", "np"))
        if not prepared.options.get("return_dict", True):
            return (frames,)
        return ShapesVideoPipelineOutput(frames=frames)

    def token_layout(self, x) -> TokenLayout:
        gf, gh, gw = self.transformer.grid(x)
        return TokenLayout(gf, gh, gw)

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        return VideoActiveTokens(self, cond, kv)

    def chunked(self, cond: Cond, x):
        from accel.pipelines.shapes_causal import CausalShapesVideoTransformer3DModel, CausalStream

        if not isinstance(self.transformer, CausalShapesVideoTransformer3DModel):
            return None
        if cond.passes != 1:
            raise ValueError("a causal student runs without classifier-free guidance: leave guidance_scale at 1")
        return CausalStream(self, cond, x)


class VideoActiveTokens(ActiveTokens):
    """ActiveTokens for the video DiT: partial steps embed, run and project only the active tokens (and the text
    tokens); every token's compute but attention is its own, so nothing else needs caching."""

    def _active_velocity(self, x, sigma, active):
        model = self.denoiser.transformer
        grid = model.grid(x)
        if self.refresh and self.refresh_kv:  # a refreshing step: every token's embedding (the inactive K/V need it)
            embed = model.patch_embed(model.patchify(x)) + model.positions(grid, model.config.width).to(x)
            img = gather_tokens(embed, active, 1)
        else:
            embed = None
            img = model.patch_embed(gather_tokens(model.patchify(x), active, 1))
            img = img + model.positions(grid, model.config.width).to(x)[active]  # (B, k, D)
        txt, _, c, keep, b = model.conditioning(self.cond.data["embeds"], self.cond.data["mask"], sigma, img.dtype)
        t_len = txt.shape[1]
        mask = None
        if keep is not None:
            n = self.k[0].shape[2]
            mask = torch.cat([keep, torch.ones(b, n, dtype=torch.bool, device=x.device)], 1)[:, None, None, :]
        tokens = self._blocks(model, torch.cat([txt, img], dim=1), c, mask, t_len, active, embed)
        return model.head(tokens[:, t_len:], c)

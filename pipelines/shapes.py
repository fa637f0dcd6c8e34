"""The built-in shapes text-to-image model: a U-shaped flow-matching DiT and its diffusers pipeline.

The transformer blocks are the core (HSA, MoE and the fused kernels operate on them); a small convolutional stem
and head around them give the locality that pixel-space shapes need (a plain patch DiT of the same size learns far
slower on a CPU: ../shared/notes/builtin-model-trial.md). The noise level enters the stem as an extra input channel
(a per-pixel sigma map) and the blocks through adaLN, so a per-token sigma (B, L) works as well as a per-sample one.

Convention: sigma in [0, 1], 1 = noise; the model predicts v = eps - x0 (accel.core.flow).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.cache_utils import CacheMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def timestep_embedding(sigma: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of sigma * 1000 (any shape S) -> (*S, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
    args = sigma.float()[..., None] * 1000.0 * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding, (h * w, dim), row-major (as the tokens are laid out)."""
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ay, ax = ys.reshape(-1, 1) * freqs, xs.reshape(-1, 1) * freqs
    return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int = 8):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention with RMS query/key norm; Flux's attribute names (to_q, norm_q, to_out)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(dim // heads, eps=1e-6)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, D)
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        q, k = self.norm_q(q), self.norm_k(k)  # (B, H, N, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """Single-stream DiT block over [text; image] tokens with adaLN-Zero modulation (Peebles & Xie, 2023)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        # hidden_states: (B, N, D); temb: (B, 1, D) per sample or (B, N, D) per token. diffusers' names, which its
        # cache hooks (FirstBlockCache, MagCache, ...) look up.
        x = hidden_states
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(temb).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, attention_mask)
        return x + gate2 * self.feed_forward(x, shift2, scale2, temb)

    def feed_forward(self, x: torch.Tensor, shift2: torch.Tensor, scale2: torch.Tensor,
                     temb: torch.Tensor) -> torch.Tensor:
        """The MLP branch on the post-attention residual x (before its gate); temb: the block's conditioning."""
        return self.mlp(self.norm2(x) * (1 + scale2) + shift2)

    def feed_forward_macs(self) -> float:
        """Multiply-accumulates of the MLP branch per token."""
        return 2.0 * self.mlp[0].in_features * self.mlp[0].out_features


def register_block_for_caches() -> None:
    """diffusers' cache hooks look a block's class up to find its hidden_states: register DiTBlock. Called lazily
    (by enable_cache) because the registry imports every diffusers model on first use."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    TransformerBlockRegistry.register(DiTBlock, TransformerBlockMetadata(return_hidden_states_index=0))


class ShapesTransformer2DModel(ModelMixin, ConfigMixin, CacheMixin):
    """U-shaped flow DiT for pixel-space images.

    Stem: conv at full and half resolution, then a stride-2 patch embedding to tokens (an effective patch of 4
    pixels). Core: `num_layers` single-stream DiT blocks over text + image tokens. Head: upsampling convs with skip
    connections from the stem. See the module docstring for the conditioning.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        stem_channels: tuple[int, int] = (32, 64),
        width: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        text_dim: int = 128,
        freq_dim: int = 256,
    ):
        super().__init__()
        c0, c1 = stem_channels
        self.conv_in = nn.Conv2d(in_channels + 1, c0, 3, padding=1)
        self.stem0 = ResBlock(c0, c0)
        self.down0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.stem1 = ResBlock(c1, c1)
        self.patch_embed = nn.Conv2d(c1, width, 2, stride=2)
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.context_embedder = nn.Linear(text_dim, width)
        self.pooled_embedder = nn.Linear(text_dim, width)
        self.blocks = nn.ModuleList([DiTBlock(width, num_heads, mlp_ratio) for _ in range(num_layers)])
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.norm_out_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.up1 = nn.Conv2d(width, c1, 3, padding=1)
        self.head1 = ResBlock(2 * c1, c1)
        self.up0 = nn.Conv2d(c1, c0, 3, padding=1)
        self.head0 = ResBlock(2 * c0, c0)
        self.norm_final = nn.GroupNorm(8, c0)
        self.conv_out = nn.Conv2d(c0, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def enable_cache(self, config) -> None:
        """diffusers' cache hooks (FirstBlockCache, TaylorSeer, MagCache, ...) on this model; see CacheMixin."""
        register_block_for_caches()
        super().enable_cache(config)

    @property
    def patch_size(self) -> int:
        """Pixels per token side: the stem halves the resolution twice."""
        return 4

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Predict the velocity eps - x0.

        Args:
            hidden_states: (B, C, H, W) noisy images, H and W divisible by 4.
            encoder_hidden_states: (B, T, text_dim) text encoder states.
            timestep: sigma in [0, 1], shape (B,) or per token (B, H/4 * W/4) (row-major token order).
            encoder_attention_mask: (B, T), 1 for real tokens, 0 for padding.
        """
        x = hidden_states
        b, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"height and width must be divisible by {self.patch_size}, got {h}x{w}")
        gh, gw = h // self.patch_size, w // self.patch_size
        sigma = timestep.to(x.device, torch.float32)
        if sigma.ndim == 0:
            sigma = sigma.expand(b)
        if sigma.shape not in ((b,), (b, gh * gw)):
            raise ValueError(f"timestep must have shape ({b},) or ({b}, {gh * gw}), got {tuple(sigma.shape)}")
        per_token = sigma.ndim == 2

        # Stem: the sigma map makes every pixel aware of its own noise level.
        sigma_map = sigma.view(b, 1, 1, 1).expand(b, 1, h, w) if not per_token else (
            sigma.view(b, 1, gh, gw).repeat_interleave(self.patch_size, 2).repeat_interleave(self.patch_size, 3))
        s0 = self.stem0(self.conv_in(torch.cat([x, sigma_map.to(x.dtype)], dim=1)))  # (B, c0, H, W)
        s1 = self.stem1(self.down0(s0))  # (B, c1, H/2, W/2)
        img = self.patch_embed(s1).flatten(2).transpose(1, 2)  # (B, L, D)
        img = img + sincos_2d(gh, gw, img.shape[-1]).to(img)

        # Conditioning: time (per sample or per token) + pooled text.
        enc = encoder_hidden_states.to(img.dtype)
        tmask = (torch.ones(enc.shape[:2], device=enc.device, dtype=enc.dtype) if encoder_attention_mask is None
                 else encoder_attention_mask.to(enc.device, enc.dtype))
        pooled = (enc * tmask[..., None]).sum(1) / tmask.sum(1, keepdim=True).clamp(min=1)  # (B, text_dim)
        pooled = self.pooled_embedder(pooled)[:, None]  # (B, 1, D)
        temb = self.time_embed(timestep_embedding(sigma, self.config.freq_dim).to(img.dtype))
        txt = self.context_embedder(enc)  # (B, T, D)
        if per_token:
            # Text tokens are modulated with the embedding of their sample's mean sigma.
            t_txt = self.time_embed(timestep_embedding(sigma.mean(1), self.config.freq_dim).to(img.dtype))
            c = torch.cat([t_txt[:, None].expand(-1, txt.shape[1], -1), temb], dim=1) + pooled  # (B, T + L, D)
            c_img = temb + pooled
        else:
            c = c_img = temb[:, None] + pooled  # (B, 1, D)

        tokens = torch.cat([txt, img], dim=1)  # (B, T + L, D)
        mask = None
        if encoder_attention_mask is not None:
            keep = torch.cat([tmask.bool(), torch.ones(b, img.shape[1], dtype=torch.bool, device=img.device)], 1)
            mask = keep[:, None, None, :]  # (B, 1, 1, T + L): padding keys are ignored
        for block in self.blocks:
            tokens = block(tokens, c, mask)
        img = tokens[:, txt.shape[1]:]

        shift, scale = self.norm_out_modulation(c_img).chunk(2, dim=-1)
        img = self.norm_out(img) * (1 + scale) + shift
        y = img.transpose(1, 2).reshape(b, -1, gh, gw)  # (B, D, H/4, W/4)
        y = self.head1(torch.cat([self.up1(F.interpolate(y, scale_factor=2, mode="nearest")), s1], dim=1))
        y = self.head0(torch.cat([self.up0(F.interpolate(y, scale_factor=2, mode="nearest")), s0], dim=1))
        out = self.conv_out(F.silu(self.norm_final(y)))
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer and text encoder
# ---------------------------------------------------------------------------------------------------------------

VOCAB_WORDS = (
    "a an the photo of and two three four circle circles square squares triangle triangles "
    "red green blue yellow left right above below"
).split()


def build_tokenizer(max_length: int = 16, words: list[str] | tuple[str, ...] = tuple(VOCAB_WORDS)):
    """Word-level tokenizer of the shapes grammar (or of `words`), as a transformers fast tokenizer (saved as
    tokenizer.json)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length)


def build_text_encoder(vocab_size: int, hidden: int = 128, layers: int = 2, max_length: int = 16):
    """A small CLIP text transformer (causal: padding after a caption never changes the caption's states)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=max_length,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, projection_dim=hidden)
    return CLIPTextModel(cfg)


# ---------------------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------------------


def start_latents(shape: tuple[int, ...], dtype, device, generator, latents=None) -> torch.Tensor:
    """The start noise of a shapes pipeline: the user's `latents` (checked against `shape`) or a seeded draw."""
    if latents is not None:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device, dtype)
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def check_prompt_and_steps(prompt, num_inference_steps: int) -> None:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a non-empty string or a non-empty list of strings")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")


class ShapesPipeline(DiffusionPipeline):
    """Text-to-image for the shapes world, in pixel space (no VAE), with classifier-free guidance.

    A plain diffusers pipeline: the flow Euler loop of FlowMatchEulerDiscreteScheduler, images in [-1, 1].
    Load the built-in model with `ShapesPipeline.from_pretrained(accel.builtin_model_path())`.
    """

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, tokenizer, text_encoder, transformer: ShapesTransformer2DModel,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                              scheduler=scheduler)

    @property
    def default_sample_size(self) -> int:
        return self.transformer.config.sample_size

    def encode_prompt(self, prompt: str | list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (prompt_embeds (B, T, text_dim), attention_mask (B, T))."""
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        device = device or self._execution_device
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        embeds = self.text_encoder(ids.input_ids.to(device)).last_hidden_state
        return embeds, ids.attention_mask.to(device)

    @staticmethod
    def expand_prompts(prompt, negative_prompt, num_images_per_prompt: int) -> tuple[list[str], list[str]]:
        """One prompt and one negative prompt per image (the negative defaults to the empty caption)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, list) else negative_prompt
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
        n = num_images_per_prompt
        return [p for p in prompts for _ in range(n)], [p for p in negatives for _ in range(n)]

    def prepare_latents(self, batch_size: int, height: int, width: int, dtype, device, generator, latents=None):
        shape = (batch_size, self.transformer.config.in_channels, height, width)
        return start_latents(shape, dtype, device, generator, latents)

    def check_inputs(self, prompt, height: int, width: int, num_inference_steps: int):
        check_prompt_and_steps(prompt, num_inference_steps)
        p = self.transformer.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {p}, got {height}x{width}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        sigmas: list[float] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        height = height or self.default_sample_size
        width = width or self.default_sample_size
        self.check_inputs(prompt, height, width, num_inference_steps)
        prompts, negatives = self.expand_prompts(prompt, negative_prompt, num_images_per_prompt)
        device = self._execution_device
        embeds, mask = self.encode_with_negatives(prompts, negatives, guidance_scale, device)
        x = self.prepare_latents(len(prompts), height, width, embeds.dtype, device, generator, latents)
        x = self.denoise(x, embeds, mask, guidance_scale, num_inference_steps, sigmas, device)
        images = self.postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def encode_with_negatives(self, prompts: list[str], negatives: list[str], guidance_scale: float, device):
        """The prompts' embeddings and masks, with the negatives' stacked in front when guidance_scale > 1 (CFG)."""
        embeds, mask = self.encode_prompt(prompts, device)
        if guidance_scale > 1.0:
            neg_embeds, neg_mask = self.encode_prompt(negatives, device)
            embeds, mask = torch.cat([neg_embeds, embeds]), torch.cat([neg_mask, mask])
        return embeds, mask

    def denoise(self, x: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor, guidance_scale: float,
                num_inference_steps: int, sigmas, device) -> torch.Tensor:
        """The scheduler's flow Euler loop from noise x to the clean sample, with CFG when guidance_scale > 1."""
        do_cfg = guidance_scale > 1.0
        self.scheduler.set_timesteps(num_inference_steps, device=device, sigmas=sigmas)
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = torch.cat([x, x]) if do_cfg else x
            sigma = (t / self.scheduler.config.num_train_timesteps).expand(x_in.shape[0])
            with self.transformer.cache_context("cond"):
                v = self.transformer(x_in, embeds, sigma, mask).sample
            if do_cfg:
                v_uncond, v_cond = v.chunk(2)
                v = v_uncond + guidance_scale * (v_cond - v_uncond)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
        return x

    @staticmethod
    def postprocess(x: torch.Tensor, output_type: str = "pil"):
        """(B, 3, H, W) in [-1, 1] -> PIL list, (B, H, W, 3) float numpy in [0, 1], or the tensor in [0, 1]."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be one of 'pil', 'np', 'pt', got {output_type!r}")
        img = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return img
        arr = img.permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "np":
            return arr
        from PIL import Image

        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


def build_shapes_pipeline(width: int = 128, num_layers: int = 4, stem_channels=(32, 64), text_hidden: int = 128,
                          text_layers: int = 2, sample_size: int = 32, seed: int = 0) -> ShapesPipeline:
    """A freshly initialised shapes pipeline (for training, or tiny random ones in tests)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), text_hidden, text_layers, tokenizer.model_max_length)
    transformer = ShapesTransformer2DModel(sample_size=sample_size, stem_channels=tuple(stem_channels), width=width,
                                           num_layers=num_layers, num_heads=4, text_dim=text_hidden)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    pipe = ShapesPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(),
                          scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# Denoiser adapter
# ---------------------------------------------------------------------------------------------------------------

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout, cache_context  # noqa: E402
from accel.core.grid import TimeGrid  # noqa: E402


class ShapesDenoiser(Denoiser):
    """Adapter for ShapesPipeline: pixel-space latents (B, 3, H, W), CFG batched [uncond, cond] in one forward."""

    family = "shapes"
    call_args = frozenset({"prompt", "negative_prompt", "height", "width", "num_inference_steps", "guidance_scale",
                           "num_images_per_prompt", "generator", "latents", "sigmas", "output_type", "return_dict"})
    batched_cond_keys = ("embeds", "mask")

    def prepare(self, **call) -> Prepared:
        self.check_supported(call)
        a = self.bind(call)
        pipe = self.pipe
        height = a["height"] or pipe.default_sample_size
        width = a["width"] or pipe.default_sample_size
        pipe.check_inputs(a["prompt"], height, width, a["num_inference_steps"])
        prompts, negatives = pipe.expand_prompts(a["prompt"], a["negative_prompt"], a["num_images_per_prompt"])
        device = pipe._execution_device  # read once a call: diffusers walks every module for it
        cond = self.encode(prompts, negatives, a["guidance_scale"], device)
        x = pipe.prepare_latents(len(prompts), height, width, cond.data["embeds"].dtype, device, a["generator"],
                                 a["latents"])
        return Prepared(x, cond, self.time_grid(a["num_inference_steps"], a["sigmas"]),
                        {"output_type": a["output_type"], "return_dict": a["return_dict"]})

    def encode(self, prompts: list[str], negative_prompts: list[str] | None, guidance: float,
               device: torch.device | None = None) -> Cond:
        negatives = negative_prompts or [""] * len(prompts)
        device = self.pipe._execution_device if device is None else device
        embeds, mask = self.pipe.encode_with_negatives(prompts, negatives, guidance, device)
        return Cond(batch=len(prompts), passes=2 if guidance > 1.0 else 1,
                    data={"embeds": embeds, "mask": mask, "guidance": guidance})

    def time_grid(self, num_inference_steps: int, sigmas=None) -> TimeGrid:
        import copy

        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(num_inference_steps, sigmas=sigmas)
        return TimeGrid(scheduler.sigmas.float().cpu())

    def _velocity(self, x, sigma, cond: Cond):
        cfg = cond.passes == 2
        x_in = torch.cat([x, x]) if cfg else x
        # The pipeline passes t / num_train_timesteps with t = sigma * num_train_timesteps; same arithmetic here.
        t = self.pipe.scheduler.config.num_train_timesteps
        s = (sigma.to(x.device) * t) / t
        s = s.expand(x.shape[0]) if s.ndim == 0 else s  # (B,) or per token (B, L)
        s = torch.cat([s, s]) if cfg else s
        with cache_context(self.transformer, "cond"):  # one forward for both CFG branches, as the pipeline
            v = self.transformer(x_in, cond.data["embeds"], s, cond.data["mask"]).sample
        if cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + cond.data["guidance"] * (v_cond - v_uncond)
        return v

    def decode(self, x, prepared: Prepared):
        images = self.pipe.postprocess(x, prepared.options.get("output_type", "pil"))
        if not prepared.options.get("return_dict", True):
            return (images,)
        return ImagePipelineOutput(images=images)

    def hsa_velocity(self, cond: Cond, kv: str = "auto"):
        from accel.pipelines.shapes_hsa import ShapesActiveTokens

        return ShapesActiveTokens(self, cond, kv)

    def token_layout(self, x) -> TokenLayout:
        p = self.transformer.patch_size
        return TokenLayout(1, x.shape[-2] // p, x.shape[-1] // p)

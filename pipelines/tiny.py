"""Tiny, seeded Flux / SD3 / Wan pipelines built offline from configs (no hub access), for the tests and the wrapper
overhead benchmark (`accel bench overhead`, accel.evals.overhead).

Real model classes with random weights, a few thousand parameters each, and tokenizers built from an in-file
vocabulary. Every module is put in eval() mode: modules built from a config start in train() mode, where T5's
dropout (rate 0.1) makes two calls on the same seed differ (shared/notes/environment-cpu.md, section 3).
Scheduler configs follow the real checkpoints' (Flux: dynamic shifting; SD3: shift 3; Wan: shift 5) so the
adapters' sigma schedules are exercised, not just a linear grid.
"""

from __future__ import annotations

import string

import torch
from diffusers import (AutoencoderKL, AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, FluxPipeline,
                       FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline, WanPipeline,
                       WanTransformer3DModel)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                          T5EncoderModel, T5Tokenizer, UMT5Config, UMT5EncoderModel)

WORDS = "a photo of cat dog red blue green circle square on the moon at night with two".split()
CLIP_LENGTH = 77


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-pair tokenizer: every character (plain and word-final), plus merges that make WORDS single tokens."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}  # bos = 0; eos = pad = unk = 1
    chars = string.ascii_lowercase + string.digits + string.punctuation
    for suffix in ("", "</w>"):
        for c in chars:
            vocab.setdefault(c + suffix, len(vocab))
    merges: list[tuple[str, str]] = []  # transformers 5 needs (a, b) tuples, not "a b" strings
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1]] + parts[2:]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """Unigram tokenizer: <pad> = 0, </s> = 1, <unk> = 2, whole words first, then single characters."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -8.0)]
    pieces += [("\u2581" + w, -5.0) for w in WORDS]
    seen = {p for p, _ in pieces}
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        pieces += [(p, -10.0) for p in (c, "\u2581" + c) if p not in seen]
        seen.update((c, "\u2581" + c))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_config(hidden: int = 32) -> CLIPTextConfig:
    # Token ids must match clip_tokenizer().
    return CLIPTextConfig(vocab_size=1000, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, projection_dim=hidden, max_position_embeddings=CLIP_LENGTH,
                          bos_token_id=0, eos_token_id=1, pad_token_id=1)


def t5_config(d_model: int, cls=T5Config):
    # Token ids must match t5_tokenizer().
    return cls(vocab_size=1000, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
               relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def kl_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """4 blocks of 8 channels: the real x8 spatial downscale with 16 latent channels, at a tiny cost."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                         layers_per_block=1, norm_num_groups=4, latent_channels=16, sample_size=64,
                         scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False,
                         use_post_quant_conv=False)


def finish(pipe):
    """eval() every module (see the module docstring) and silence the progress bar."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux(guidance_embeds: bool = True, seed: int = 0) -> FluxPipeline:
    """FLUX.1-dev-like: embedded guidance, dynamic shifting (mu from the image sequence length)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    torch.manual_seed(seed)
    return finish(FluxPipeline(scheduler=scheduler, vae=kl_vae(0.3611, 0.1159),
                               text_encoder=CLIPTextModel(clip_config()), tokenizer=clip_tokenizer(),
                               text_encoder_2=T5EncoderModel(t5_config(32)), tokenizer_2=t5_tokenizer(),
                               transformer=transformer))


def build_sd3(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3-medium-like: three text encoders, patch size 2, static shift 3."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                                        pos_embed_max_size=16)
    torch.manual_seed(seed)
    return finish(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=kl_vae(1.5305, 0.0609),
        text_encoder=CLIPTextModelWithProjection(clip_config()), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_config()), tokenizer_2=clip_tokenizer(),
        text_encoder_3=T5EncoderModel(t5_config(64)), tokenizer_3=t5_tokenizer()))


def wan_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                 out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def build_wan(boundary_ratio: float | None = None, expand_timesteps: bool = False, seed: int = 0) -> WanPipeline:
    """Wan 2.1 text-to-video; with boundary_ratio, Wan 2.2's two experts (transformer_2 below the boundary); with
    expand_timesteps, Wan 2.2 TI2V's per-token timesteps."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    transformer = wan_transformer()
    transformer_2 = wan_transformer() if boundary_ratio is not None else None
    torch.manual_seed(seed)
    return finish(WanPipeline(tokenizer=t5_tokenizer(), text_encoder=UMT5EncoderModel(t5_config(32, UMT5Config)),
                              vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), transformer=transformer,
                              transformer_2=transformer_2, boundary_ratio=boundary_ratio,
                              expand_timesteps=expand_timesteps))

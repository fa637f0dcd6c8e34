"""Tiny, seeded pipelines of the newer flow families, built offline from configs (no hub access), for the tests and
the wrapper overhead benchmark.

Real model classes with random weights; text encoders are the real transformers classes at a tiny width, and
their tokenizers word-level vocabularies built in this file (with the special tokens the pipelines' chat templates
use), so each pipeline's own encode_prompt runs unchanged. Every module is put in eval() mode (tiny.finish).
"""

from __future__ import annotations

import torch
from accel.pipelines.tiny import finish, t5_config, t5_tokenizer
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ("a photo of cat dog red blue green circle square on the moon at night with two describe image by detailing "
         "color shape size texture quantity text spatial relationships objects and background system user "
         "assistant").split()
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>", "[UNK]"]


def word_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Words, punctuation runs and newlines as tokens (Qwen's templates count their newlines: Qwen-Image drops the
    template's first 34 tokens), pad = <|endoftext|>, vocabulary < 128."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for word in WORDS + list("abcdefghijklmnopqrstuvwxyz.,:'\n"):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    backend.normalizer = None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        unk_token="[UNK]", additional_special_tokens=SPECIAL[1:7])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def qwen_image_vae(z_dim: int = 4):
    """AutoencoderKLQwenImage at x4 spatial (2 downsamples), per-channel mean / std normalisation."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1,
                                  temperal_downsample=[False, True], latents_mean=[0.1 * i for i in range(z_dim)],
                                  latents_std=[1.0 + 0.1 * i for i in range(z_dim)])


def dynamic_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                           base_image_seq_len=256, max_image_seq_len=4096)


def qwen25_vl(hidden: int = 16):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": hidden, "intermediate_size": 16, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 128,
                     "bos_token_id": None, "eos_token_id": 2, "pad_token_id": 0,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                         "mrope_section": [1, 1, 2]}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": hidden},
        image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    return Qwen2_5_VLForConditionalGeneration(config)


def build_qwenimage(seed: int = 0):
    """Qwen-Image-like: 2 MMDiT blocks of width 32, x4 VAE with 4 latent channels (a 64 x 64 image: 8 x 8 tokens)."""
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(8, 4, 4))
    torch.manual_seed(seed)
    return finish(QwenImagePipeline(transformer=transformer, scheduler=dynamic_scheduler(), vae=qwen_image_vae(),
                                    text_encoder=qwen25_vl(), tokenizer=word_tokenizer()))


def build_flux_kontext(seed: int = 0):
    """FLUX.1-Kontext-dev-like: the tiny Flux of tiny.py (embedded guidance) in a FluxKontextPipeline."""
    from diffusers import FluxKontextPipeline
    from accel.pipelines.tiny import build_flux

    flux = build_flux(guidance_embeds=True, seed=seed)
    return finish(FluxKontextPipeline(**{k: flux.components[k] for k in (
        "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer")}))


def build_chroma(seed: int = 0):
    """Chroma-like: 1 double + 1 single block of width 32, the x8 KL VAE of tiny.py, a tiny T5."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel
    from accel.pipelines.tiny import kl_vae
    from transformers import T5EncoderModel

    torch.manual_seed(seed)
    transformer = ChromaTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                           attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                           axes_dims_rope=(4, 4, 8), approximator_num_channels=8,
                                           approximator_hidden_dim=32, approximator_layers=1)
    torch.manual_seed(seed)
    return finish(ChromaPipeline(scheduler=dynamic_scheduler(), vae=kl_vae(0.3611, 0.1159),
                                 text_encoder=T5EncoderModel(t5_config(32)), tokenizer=t5_tokenizer(),
                                 transformer=transformer))


QWEN3_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qwen3(hidden: int = 16, layers: int = 2, cls_name: str = "Qwen3Model"):
    import transformers

    config = transformers.Qwen3Config(hidden_size=hidden, intermediate_size=16, num_hidden_layers=layers,
                                      num_attention_heads=2, num_key_value_heads=2, head_dim=8, vocab_size=128,
                                      bos_token_id=None, eos_token_id=2, pad_token_id=0)
    return getattr(transformers, cls_name)(config)


def build_zimage(seed: int = 0):
    """Z-Image-like: 2 single-stream blocks (+1 refiner each side) of width 32, the x8 KL VAE, a 2-layer Qwen3."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from accel.pipelines.tiny import kl_vae

    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[8, 4, 4], axes_lens=[64, 32, 32])
    torch.manual_seed(seed)
    return finish(ZImagePipeline(scheduler=dynamic_scheduler(), vae=kl_vae(0.3611, 0.1159), text_encoder=qwen3(),
                                 tokenizer=word_tokenizer(QWEN3_CHAT), transformer=transformer))


def build_ltx(seed: int = 0, timestep_conditioning: bool = True):
    """LTX-Video-like: 1 block of width 16, a x4-space / x4-time VAE with 8 latent channels (timestep-conditioned
    decoder, as LTX-Video 0.9.1+), a tiny T5."""
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)
    from transformers import T5EncoderModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
                                             num_layers=1, caption_channels=32)
    torch.manual_seed(seed)
    vae = AutoencoderKLLTXVideo(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
                                decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                                decoder_layers_per_block=(1, 1, 1, 1, 1),
                                spatio_temporal_scaling=(True, True, False, False),
                                decoder_spatio_temporal_scaling=(True, True, False, False),
                                decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
                                upsample_factor=(1,) * 4, timestep_conditioning=timestep_conditioning, patch_size=1,
                                patch_size_t=1, encoder_causal=True, decoder_causal=False)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096)
    return finish(LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=T5EncoderModel(t5_config(32)),
                              tokenizer=t5_tokenizer(), transformer=transformer))


def flux2_vae():
    """AutoencoderKLFlux2 at x8 with 4 latent channels (16 after its 2x2 patchify), batch-norm statistics drawn."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, sample_size=64)
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.1 * torch.randn(vae.bn.running_mean.shape))
        vae.bn.running_var.copy_(1.0 + 0.1 * torch.rand(vae.bn.running_var.shape))
    return vae


def flux2_transformer(guidance_embeds: bool, seed: int = 0):
    """1 double + 1 single block of width 32, 4-axis rotary ids; text embeddings of 3 stacked layers of 16."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                   timestep_guidance_channels=16, axes_dims_rope=(4, 4, 4, 4),
                                   guidance_embeds=guidance_embeds)


def build_flux2_klein(seed: int = 0):
    """FLUX.2-[klein]-like (base, not distilled: CFG on an empty prompt): 1 double + 1 single block of width 32, a
    4-layer Qwen3 whose layers (1, 2, 3) are stacked as the text embedding."""
    from diffusers import Flux2KleinPipeline

    transformer = flux2_transformer(guidance_embeds=False, seed=seed)
    torch.manual_seed(seed)
    return finish(Flux2KleinPipeline(scheduler=dynamic_scheduler(), vae=flux2_vae(), transformer=transformer,
                                     text_encoder=qwen3(layers=4, cls_name="Qwen3ForCausalLM"),
                                     tokenizer=word_tokenizer(QWEN3_CHAT), is_distilled=False))


LIST_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{{ c['text'] }}"
             "{% endfor %}<|im_end|>\n{% endfor %}")


def mistral3(hidden: int = 16, layers: int = 4):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={"model_type": "mistral", "hidden_size": hidden, "intermediate_size": 16,
                     "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
                     "vocab_size": 128, "bos_token_id": None, "eos_token_id": 2, "pad_token_id": 0},
        vision_config={"model_type": "pixtral", "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "head_dim": 8, "patch_size": 4, "image_size": 16},
        image_token_index=5)
    return Mistral3ForConditionalGeneration(config)


def build_flux2(seed: int = 0):
    """FLUX.2-[dev]-like (embedded guidance): the [klein] builder's transformer and VAE, a 4-layer Mistral 3 text
    encoder whose layers (1, 2, 3) are stacked, a word-level tokenizer in the processor's place."""
    from diffusers import Flux2Pipeline

    transformer = flux2_transformer(guidance_embeds=True, seed=seed)
    torch.manual_seed(seed)
    return finish(Flux2Pipeline(scheduler=dynamic_scheduler(), vae=flux2_vae(), transformer=transformer,
                                text_encoder=mistral3(), tokenizer=word_tokenizer(LIST_CHAT)))


def build_hunyuanvideo15(seed: int = 0, guider=None):
    """HunyuanVideo-1.5-like: 1 block of width 16 over 4 latent channels (+ 4 + 1 conditioning channels), a x2
    space / x2 time VAE, a 2-layer Qwen2.5-VL text model, a 1-layer ByT5 (the byte-level ByT5Tokenizer needs no
    files), CFG through the pipeline's ClassifierFreeGuidance guider. Text lengths shrunk (instance attributes):
    16 Qwen tokens after the template's system prefix (98 tokens with this tokenizer, 108 with Qwen's), 8 ByT5 tokens, 4
    image-embedding tokens. guider: the pipeline's guider (default ClassifierFreeGuidance(guidance_scale=6.0))."""
    from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
                           HunyuanVideo15Transformer3DModel)
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5EncoderModel

    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(in_channels=9, out_channels=4, num_attention_heads=2,
                                                   attention_head_dim=8, num_layers=1, num_refiner_layers=1,
                                                   text_embed_dim=16, text_embed_2_dim=32, image_embed_dim=16,
                                                   rope_axes_dim=(2, 2, 4), target_size=32, task_type="t2v")
    torch.manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
                                      spatial_compression_ratio=2, temporal_compression_ratio=2)
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=128, bos_token_id=None, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]}))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = HunyuanVideo15Pipeline(text_encoder=text_encoder, tokenizer=word_tokenizer(QWEN3_CHAT),
                                  transformer=transformer, vae=vae, scheduler=scheduler,
                                  text_encoder_2=T5EncoderModel(t5_config(32)), tokenizer_2=ByT5Tokenizer(),
                                  guider=guider or ClassifierFreeGuidance(guidance_scale=6.0))
    pipe.prompt_template_encode_start_idx, pipe.tokenizer_max_length = 98, 16
    pipe.tokenizer_2_max_length, pipe.vision_num_semantic_tokens = 8, 4
    return finish(pipe)

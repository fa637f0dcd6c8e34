"""A tiny, seeded NucleusMoEImagePipeline built offline from configs (no hub access), for the tests and the wrapper
overhead benchmark.

The real classes (NucleusMoEImageTransformer2DModel, AutoencoderKLQwenImage, Qwen3-VL text encoder and processor)
with random weights. The processor's tokenizer is a word-level vocabulary with Qwen's special tokens and a minimal
chat template, so the pipeline's own encode_prompt runs unchanged. The transformer keeps Nucleus-Image's layout at a
tiny width: the first block dense, the rest expert-choice MoE with a shared expert, per-layer capacity factors, grouped
query attention. diffusers leaves the packed expert weights uninitialised (torch.empty), so they are drawn here.
"""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, NucleusMoEImagePipeline,
                       NucleusMoEImageTransformer2DModel)
from diffusers.models.transformers.transformer_nucleusmoe_image import SwiGLUExperts
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import ProcessorMixin  # noqa: F401  (diffusers' loader looks a component's base class up here)
from transformers import (PreTrainedTokenizerFast, Qwen2VLImageProcessorPil, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration, Qwen3VLProcessor)

from accel.pipelines.tiny import finish

WORDS = ("a photo of cat dog red blue green circle square triangle on the left right two three with and at night "
         "moon above below").split()
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>", "[UNK]"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} "
                 "{% if m['content'] is string %}{{ m['content'] }}"
                 "{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}<|im_end|> "
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")

# Nucleus-Image's released layout, scaled down: blocks 0 dense, then MoE with capacity factors 4, 4, 2.
CAPACITY_FACTORS = [0.0, 4.0, 4.0, 2.0]


class TextOnlyProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without its video processor, which needs torchvision; the pipeline encodes text only."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def processor() -> Qwen3VLProcessor:
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for word in WORDS + list("abcdefghijklmnopqrstuvwxyz.,:'"):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>",
                                        eos_token="<|im_end|>", unk_token="[UNK]",
                                        additional_special_tokens=SPECIAL[1:7])
    return TextOnlyProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                            video_processor=None, chat_template=CHAT_TEMPLATE)


def text_encoder(hidden: int = 16) -> Qwen3VLForConditionalGeneration:
    config = Qwen3VLConfig(
        text_config={"hidden_size": hidden, "intermediate_size": 16, "num_hidden_layers": 8,
                     "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 128,
                     "rope_theta": 1000000.0,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_channels": 16},
        image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
    return Qwen3VLForConditionalGeneration(config)


def transformer(num_experts: int = 8, capacity_factors: list[float] | None = None, moe: bool = True,
                seed: int = 0) -> NucleusMoEImageTransformer2DModel:
    """Nucleus-like transformer, 4 blocks of width 64 (4 heads of 16, 2 K/V heads), experts of inner dim 32."""
    torch.manual_seed(seed)
    model = NucleusMoEImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=4,
        num_key_value_heads=2, joint_attention_dim=16, axes_dims_rope=(8, 4, 4), moe_enabled=moe,
        dense_moe_strategy="leave_first_block_dense", num_experts=num_experts, moe_intermediate_dim=32,
        capacity_factors=list(capacity_factors or CAPACITY_FACTORS), route_scale=2.5)
    init_experts(model, seed)
    return model


def init_experts(model: torch.nn.Module, seed: int = 0) -> None:
    """Draw the packed expert weights, which diffusers leaves as torch.empty (garbage, possibly NaN)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SwiGLUExperts):
                for w in (module.gate_up_proj, module.down_proj):
                    w.copy_(torch.randn(w.shape, generator=gen) / w.shape[1] ** 0.5)


def build_nucleus(seed: int = 0, **transformer_kw) -> NucleusMoEImagePipeline:
    """The tiny pipeline: x4 VAE (4 latent channels, patch 2), a 64 x 64 image is 8 x 8 = 64 tokens."""
    model = transformer(seed=seed, **transformer_kw)
    torch.manual_seed(seed)
    z_dim = 4
    vae = AutoencoderKLQwenImage(base_dim=z_dim * 6, z_dim=z_dim, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=[0.0] * z_dim,
                                 latents_std=[1.0] * z_dim)
    torch.manual_seed(seed)
    # Nucleus-Image's scheduler: dynamic shifting from the image sequence length.
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    return finish(NucleusMoEImagePipeline(transformer=model, scheduler=scheduler, vae=vae,
                                          text_encoder=text_encoder(), processor=processor()))

"""LLaDA (Nie et al. 2025, "Large Language Diffusion Models"; GSAI-ML/LLaDA-8B-Instruct) as a native model.

The official checkpoint's architecture is an OLMo-style "llama" block: RMSNorm (weight only), separate q/k/v
projections, rotary embedding in float32 (rope_full_precision), bidirectional attention, a SwiGLU MLP written as
ff_out(silu(ff_proj(x)) * up_proj(x)), a final RMSNorm and an untied output layer. Parameter names follow the
official `modeling_llada.py` (model.transformer.wte / blocks.{i}.q_proj ... / ln_f / ff_out), so the published
safetensors load as they are. Only the configuration the published LLaDA checkpoints use is implemented; other
values of the OLMo switches (alibi, sequential blocks, block groups, q/k norms, LayerNorm, the swiglu activation)
are refused by `llada_config` with a message naming the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from accel.dllm.native import NativeDLLM, RMSNorm, apply_rope, attend, rope_cos_sin

# The official ModelConfig's defaults, used for keys a config.json leaves out (as the official code does).
DEFAULTS = {"d_model": 768, "n_heads": 12, "n_kv_heads": None, "n_layers": 12, "mlp_ratio": 4, "mlp_hidden_size": None,
            "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False,
            "rope": False, "rope_full_precision": True, "multi_query_attention": None, "attention_layer_norm": False,
            "input_emb_norm": False, "layer_norm_type": "default", "layer_norm_with_affine": True,
            "rms_norm_eps": 1e-5, "max_sequence_length": 1024, "rope_theta": 10000.0, "include_qkv_bias": False,
            "include_bias": False, "bias_for_layer_norm": None, "scale_logits": False, "vocab_size": 50257,
            "embedding_size": 50304, "weight_tying": True}
# Switches with one supported value: (key, value the published checkpoints use).
REQUIRED = (("block_type", "llama"), ("activation_type", "silu"), ("layer_norm_type", "rms"), ("rope", True),
            ("alibi", False), ("attention_layer_norm", False), ("block_group_size", 1))


@dataclass
class LLaDAModelConfig:
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden: int
    vocab_out: int  # embedding_size or vocab_size: rows of wte and ff_out
    max_len: int
    rope_theta: float
    rope_float32: bool
    eps: float
    qkv_bias: bool
    bias: bool
    norm_affine: bool
    norm_bias: bool
    input_emb_norm: bool
    scale_logits: bool
    weight_tying: bool
    mask_id: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def llada_config(raw: dict, mask_id: int) -> LLaDAModelConfig:
    """The model config from an official config.json (its keys, its defaults); ValueError for what accel does
    not implement."""
    c = DEFAULTS | {k: v for k, v in raw.items() if k in DEFAULTS}
    for key, value in REQUIRED:
        if c[key] != value:
            raise ValueError(f"LLaDA config: {key}={c[key]!r} is not supported (the published checkpoints use "
                             f"{value!r})")
    if raw.get("rope_scaling"):
        raise ValueError(f"LLaDA config: unknown rope_scaling {raw['rope_scaling']!r}; LLaDA uses plain rotary "
                         "embeddings (no rope_scaling)")
    if c["n_kv_heads"] is None:
        c["n_kv_heads"] = 1 if c["multi_query_attention"] else c["n_heads"]
    if c["d_model"] % c["n_heads"] or c["n_heads"] % c["n_kv_heads"]:
        raise ValueError(f"LLaDA config: d_model ({c['d_model']}) / n_heads ({c['n_heads']}) / n_kv_heads "
                         f"({c['n_kv_heads']}) do not divide")
    return LLaDAModelConfig(
        d_model=c["d_model"], n_heads=c["n_heads"], n_kv_heads=c["n_kv_heads"], n_layers=c["n_layers"],
        mlp_hidden=c["mlp_hidden_size"] or c["mlp_ratio"] * c["d_model"],
        vocab_out=c["embedding_size"] or c["vocab_size"], max_len=c["max_sequence_length"],
        rope_theta=float(c["rope_theta"]), rope_float32=bool(c["rope_full_precision"]), eps=float(c["rms_norm_eps"]),
        qkv_bias=bool(c["include_bias"] or c["include_qkv_bias"]), bias=bool(c["include_bias"]),
        norm_affine=bool(c["layer_norm_with_affine"]),
        norm_bias=bool(c["bias_for_layer_norm"] if c["bias_for_layer_norm"] is not None else c["include_bias"]),
        input_emb_norm=bool(c["input_emb_norm"]), scale_logits=bool(c["scale_logits"]),
        weight_tying=bool(c["weight_tying"]), mask_id=mask_id)


class LLaDABlock(nn.Module):
    """One "llama" block: x + attn_out(attention(attn_norm(x))), then + ff_out(silu(ff_proj(h)) * up_proj(h))."""

    def __init__(self, c: LLaDAModelConfig):
        super().__init__()
        self.c = c
        kv = c.n_kv_heads * c.head_dim
        self.attn_norm = RMSNorm(c.d_model, c.eps, c.norm_affine, c.norm_bias)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.d_model, kv, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.d_model, kv, bias=c.qkv_bias)
        self.attn_out = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.ff_norm = RMSNorm(c.d_model, c.eps, c.norm_affine, c.norm_bias)
        self.ff_proj = nn.Linear(c.d_model, c.mlp_hidden, bias=c.bias)
        self.up_proj = nn.Linear(c.d_model, c.mlp_hidden, bias=c.bias)
        self.ff_out = nn.Linear(c.mlp_hidden, c.d_model, bias=c.bias)

    def forward(self, x, positions, cache_k=None, cache_v=None, keys=None):
        """x (B, N, D) at positions (N,); cache and keys: accel.dllm.native.attend."""
        c, (b, n, d) = self.c, x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, n, c.n_heads, c.head_dim).transpose(1, 2)  # (B, H, N, Dh)
        k = self.k_proj(h).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, H_kv, N, Dh)
        v = self.v_proj(h).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta)
        q, k = apply_rope(q, cos, sin, c.rope_float32), apply_rope(k, cos, sin, c.rope_float32)
        att = attend(q, k, v, positions, cache_k, cache_v, keys)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, n, d))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class _Transformer(nn.Module):
    """Holds the official `model.transformer.*` names."""

    def __init__(self, c: LLaDAModelConfig):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(c.vocab_out, c.d_model),
            "blocks": nn.ModuleList(LLaDABlock(c) for _ in range(c.n_layers)),
            "ln_f": RMSNorm(c.d_model, c.eps, c.norm_affine, c.norm_bias),
        })
        if not c.weight_tying:
            self.transformer["ff_out"] = nn.Linear(c.d_model, c.vocab_out, bias=c.bias)


class LLaDAModel(NativeDLLM):
    """LLaDA with accel's cached-forward interface (accel.dllm.native). forward(ids, positions=None, cache=None,
    keys=None) -> logits (B, N, embedding_size); logits at i predict the token at i."""

    def __init__(self, config: LLaDAModelConfig):
        super().__init__()
        self.config = config
        self.model = _Transformer(config)

    def _embed(self, ids):
        x = self.model.transformer.wte(ids)
        return x * self.config.d_model ** 0.5 if self.config.input_emb_norm else x

    def _layers(self):
        return self.model.transformer.blocks

    def _logits(self, x):
        t = self.model.transformer
        x = t.ln_f(x)
        logits = F.linear(x, t.wte.weight) if self.config.weight_tying else t.ff_out(x)
        return logits * (1 / math.sqrt(self.config.d_model)) if self.config.scale_logits else logits

"""Dream (Ye et al. 2025, "Dream 7B"; Dream-org/Dream-v0-Instruct-7B) as a native model.

Dream is Qwen2 trained as a masked-diffusion LM from an autoregressive initialisation: RMSNorm, q/k/v projections
with biases (o_proj without), rotary embedding by position index, grouped-query attention without a causal mask,
a SwiGLU MLP (gate/up/down), a final RMSNorm and an lm_head. Because of the AR initialisation its logits at
position i predict the token at i + 1 (`logits_shift = 1`; the decoders read the prediction for position p from
the output at p - 1). Parameter names follow the official `modeling_dream.py` (model.embed_tokens,
model.layers.{i}.self_attn.q_proj ..., model.norm, lm_head), so the published safetensors load as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from accel.dllm.native import NativeDLLM, RMSNorm, apply_rope, attend, rope_cos_sin

# The official DreamConfig's defaults, used for keys a config.json leaves out.
DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu",
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "rope_scaling": None, "use_sliding_window": False}
ROPE_TYPES = ("default", "linear")


@dataclass
class DreamModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    max_len: int
    eps: float
    rope_theta: float
    rope_linear_factor: float
    tie_word_embeddings: bool
    mask_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


def rope_linear_factor(scaling: dict | None) -> float:
    """The position divisor of a rope_scaling entry: 1 for none / "default", its factor for "linear"; ValueError
    naming the allowed types otherwise (dynamic NTK, YaRN, Llama-3 and LongRoPE scalings are not implemented)."""
    if not scaling:
        return 1.0
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"Dream config: unknown rope_scaling type {kind!r}; allowed: {', '.join(ROPE_TYPES)} "
                         "(or no rope_scaling)")
    return float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0


def dream_config(raw: dict, mask_id: int) -> DreamModelConfig:
    """The model config from an official config.json (its keys, its defaults); ValueError for what accel does
    not implement."""
    c = DEFAULTS | {k: v for k, v in raw.items() if k in DEFAULTS}
    if c["hidden_act"] != "silu":
        raise ValueError(f"Dream config: hidden_act={c['hidden_act']!r} is not supported (Dream uses 'silu')")
    if c["use_sliding_window"]:
        raise ValueError("Dream config: use_sliding_window=true is not supported (Dream attends to every position)")
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"] or c["num_attention_heads"]
    if c["hidden_size"] % heads or heads % kv:
        raise ValueError(f"Dream config: hidden_size ({c['hidden_size']}) / num_attention_heads ({heads}) / "
                         f"num_key_value_heads ({kv}) do not divide")
    return DreamModelConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        n_layers=c["num_hidden_layers"], n_heads=heads, n_kv_heads=kv, max_len=c["max_position_embeddings"],
        eps=float(c["rms_norm_eps"]), rope_theta=float(c["rope_theta"]),
        rope_linear_factor=rope_linear_factor(c["rope_scaling"]), tie_word_embeddings=bool(c["tie_word_embeddings"]),
        mask_id=mask_id)


class DreamAttention(nn.Module):
    def __init__(self, c: DreamModelConfig):
        super().__init__()
        kv = c.n_kv_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=True)
        self.k_proj = nn.Linear(c.hidden_size, kv, bias=True)
        self.v_proj = nn.Linear(c.hidden_size, kv, bias=True)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)


class DreamMLP(nn.Module):
    def __init__(self, c: DreamModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nn.Module):
    """x + o_proj(attention(input_layernorm(x))), then + mlp(post_attention_layernorm(h))."""

    def __init__(self, c: DreamModelConfig):
        super().__init__()
        self.c = c
        self.self_attn = DreamAttention(c)
        self.mlp = DreamMLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.eps)

    def forward(self, x, positions, cache_k=None, cache_v=None, keys=None):
        """x (B, N, D) at positions (N,); cache and keys: accel.dllm.native.attend."""
        c, a, (b, n, d) = self.c, self.self_attn, x.shape
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(b, n, c.n_heads, c.head_dim).transpose(1, 2)  # (B, H, N, Dh)
        k = a.k_proj(h).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, H_kv, N, Dh)
        v = a.v_proj(h).view(b, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, c.rope_linear_factor)
        q, k = apply_rope(q, cos, sin, float32=False), apply_rope(k, cos, sin, float32=False)
        att = attend(q, k, v, positions, cache_k, cache_v, keys)
        x = x + a.o_proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.post_attention_layernorm(x))


class _DreamBase(nn.Module):
    """Holds the official `model.*` names."""

    def __init__(self, c: DreamModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.hidden_size, c.eps)


class DreamModel(NativeDLLM):
    """Dream with accel's cached-forward interface (accel.dllm.native). forward(ids, positions=None, cache=None,
    keys=None) -> logits (B, N, vocab); logits at i predict the token at i + 1 (logits_shift = 1)."""

    logits_shift = 1

    def __init__(self, config: DreamModelConfig):
        super().__init__()
        self.config = config
        self.model = _DreamBase(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def _embed(self, ids):
        return self.model.embed_tokens(ids)

    def _layers(self):
        return self.model.layers

    def _logits(self, x):
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight) if self.config.tie_word_embeddings else self.lm_head(x)

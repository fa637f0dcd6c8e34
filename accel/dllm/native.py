"""Native LLaDA and Dream: what the two model files share, and loading a checkpoint folder.

Both are bidirectional transformers (RMSNorm, rotary position embedding, SwiGLU MLP, grouped-query attention, no
causal mask). accel writes them itself (accel/dllm/llada.py, accel/dllm/dream.py) instead of running the
checkpoints' remote code, because the decoders need what that code does not expose: per-layer K/V buffers for
the whole sequence, forwards of a subset of positions against them, and rotary embeddings by explicit position
index. The interface is the built-in model's (accel.pipelines.mdlm):

    cache = model.new_cache(batch, length)          # zeros; a forward with cache= fills the positions it computes
    logits = model(ids[:, pos], positions=pos, cache=cache, keys=keep)
        # only `pos` go through the layers; their K/V (after rotary) overwrite their cache slots, and their
        # queries attend to the cached K/V at `keys` (default: every position)

`load_native(folder)` reads the official folder layout: config.json with the official keys, and safetensors
weights (model.safetensors, or shards listed in model.safetensors.index.json) with the official parameter names,
so `state_dict()` round-trips with the checkpoints GSAI-ML and Dream-org publish. No remote code runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("llada", "dream")


@dataclass
class KVCache:
    """Per-layer keys and values (after rotary) for every position: k[l], v[l] of shape (B, H_kv, S, Dh)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.k[0].shape[2]

    @classmethod
    def empty(cls, layers: int, shape: tuple[int, ...], like: torch.Tensor) -> KVCache:
        """Zeros for `layers` layers, each k and v of `shape` (B, H_kv, S, Dh), in `like`'s dtype and device."""
        return cls([torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(layers)],
                   [torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(layers)])


def forward_positions(ids: torch.Tensor, positions: torch.Tensor | None, cache: KVCache | None,
                      max_len: int) -> torch.Tensor:
    """The positions (N,) of a forward over ids (B, N) (default 0..N-1), checked against the context and cache."""
    b, n = ids.shape
    positions = torch.arange(n, device=ids.device) if positions is None else positions.to(ids.device)
    if positions.shape != (n,):
        raise ValueError(f"positions must have shape ({n},), got {tuple(positions.shape)}")
    if int(positions.max()) >= max_len:
        raise ValueError(f"position {int(positions.max())} is beyond the model's context ({max_len})")
    if cache is not None and (cache.k[0].shape[0] != b or int(positions.max()) >= cache.length):
        raise ValueError("the cache does not fit this batch / these positions")
    return positions


class RMSNorm(nn.Module):
    """RMSNorm as both official models write it: normalise in float32, cast back, then scale (and shift)."""

    def __init__(self, dim: int, eps: float, affine: bool = True, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)).to(dtype)
        if self.weight is None:
            return x
        return self.weight * x + self.bias if self.bias is not None else self.weight * x


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, scale: float = 1.0):
    """cos, sin (N, Dh) in float32 for integer positions (N,): the rotate-half convention of both models
    (frequencies theta^(-2i/Dh), repeated for the two halves). scale: linear position scaling (positions / scale)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
                                / head_dim))
    angles = (positions.to(torch.float32) / scale)[:, None] * inv_freq[None]  # (N, Dh/2)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, float32: bool) -> torch.Tensor:
    """x (B, H, N, Dh) rotated at cos / sin (N, Dh). float32: compute in float32 and cast back (LLaDA's
    rope_full_precision); else in x's dtype with cos / sin cast to it (Dream's, after transformers' Llama)."""
    dtype = x.dtype
    if float32:
        x = x.float()
    else:
        cos, sin = cos.to(dtype), sin.to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(dtype)


def attend(q, k, v, positions, cache_k=None, cache_v=None, keys=None) -> torch.Tensor:
    """Bidirectional attention of q (B, H, N, Dh) over k, v (B, H_kv, N, Dh) at `positions` (N,).

    With a cache: k, v are written at `positions`, then the queries attend to the cache at `keys` (None: all).
    Without: the N inputs attend to each other. Key/value heads are shared by H / H_kv query heads each (query
    head h reads key head h // (H / H_kv)), as both official models group them.
    """
    if cache_k is not None:
        cache_k[:, :, positions] = k.to(cache_k.dtype)
        cache_v[:, :, positions] = v.to(cache_v.dtype)
        k, v = (cache_k, cache_v) if keys is None else (cache_k[:, :, keys], cache_v[:, :, keys])
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))


class NativeDLLM(nn.Module):
    """What LLaDAModel and DreamModel share: the forward over layers, the cache, the argument checks.

    Subclasses set `config` (with max_len, mask_id, n_layers, n_kv_heads, head_dim), `logits_shift` (Dream's 1:
    logits at i predict token i + 1) and implement `_embed`, `_layers`, `_logits`; each layer is called as
    layer(x, positions, cache_k, cache_v, keys).
    """

    logits_shift = 0

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def new_cache(self, batch: int, length: int) -> KVCache:
        """An empty cache for `batch` sequences of `length` (filled by forwards with `cache=`)."""
        c = self.config
        return KVCache.empty(c.n_layers, (batch, c.n_kv_heads, length, c.head_dim), next(self.parameters()))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                keys: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, N, V) for the N tokens `ids` (B, N) at `positions` (N,) (default 0..N-1); cache and keys
        as in the module docstring. Without a cache and with all positions, this is the official full forward."""
        positions = forward_positions(ids, positions, cache, self.config.max_len)
        x = self._embed(ids)
        for i, layer in enumerate(self._layers()):
            x = layer(x, positions, *((cache.k[i], cache.v[i]) if cache is not None else (None, None)), keys)
        return self._logits(x)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def architecture(config: dict) -> str | None:
    """'llada', 'dream' or None, from an official config.json's architectures / model_type."""
    names = {*(config.get("architectures") or []), str(config.get("model_type", ""))}
    if names & {"LLaDAModelLM", "llada"}:
        return "llada"
    if names & {"DreamModel", "Dream", "dream"}:
        return "dream"
    return None


def read_safetensors(folder: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of model.safetensors, or of the shards model.safetensors.index.json lists."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise ValueError(f"{folder} has no safetensors weights (model.safetensors or model.safetensors.index.json); "
                         "accel loads safetensors only")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(folder / shard), device=device))
    return state


def build(cls, config, state: dict[str, torch.Tensor], dtype: torch.dtype | None, device: str) -> nn.Module:
    """A model of `cls` holding `state` (official names; strict), built on the meta device so that an 8B
    checkpoint is not allocated twice."""
    with torch.device("meta"):
        model = cls(config)
    expected, given = set(model.state_dict()), set(state)
    if expected != given:
        missing, unexpected = sorted(expected - given)[:4], sorted(given - expected)[:4]
        raise ValueError(f"the weights do not match a {cls.__name__} of this config: missing {missing}, "
                         f"unexpected {unexpected}")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def load_native(folder: str | Path, device: str | None = None, dtype: torch.dtype | None = None,
                mask_id: int | None = None):
    """(model, tokenizer) for an official LLaDA or Dream checkpoint folder, without remote code.

    mask_id: default the config's mask_token_id, else the tokenizer's mask token; neither is an error.
    The tokenizer is the folder's own through transformers' AutoTokenizer (no remote code), wrapped as
    accel.dllm.hf.HFTokenizer; a folder without tokenizer files gets None.
    """
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    arch = architecture(raw)
    if arch is None:
        raise ValueError(f"{folder} is not a LLaDA or Dream checkpoint (architectures "
                         f"{raw.get('architectures')}, model_type {raw.get('model_type')!r})")
    tokenizer = _tokenizer(folder)
    if mask_id is None:
        mask_id = raw.get("mask_token_id")
    if mask_id is None and tokenizer is not None:
        mask_id = tokenizer.mask_id
    if mask_id is None:
        raise ValueError(f"{folder}: neither the config (mask_token_id) nor the tokenizer names a mask token: "
                         "pass mask_id= (--mask-id)")
    if arch == "llada":
        from accel.dllm.llada import LLaDAModel as cls, llada_config as parse
    else:
        from accel.dllm.dream import DreamModel as cls, dream_config as parse
    config = parse(raw, int(mask_id))
    model = build(cls, config, read_safetensors(folder), dtype, device or "cpu")
    return model, tokenizer


def _tokenizer(folder: Path):
    """The folder's tokenizer without remote code: AutoTokenizer, or, when its config names a remote class (Dream's
    DreamTokenizer, a Qwen2 tokenizer under another name), the same files read by transformers' own fast
    tokenizer. None when the folder has no tokenizer files."""
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    from accel.dllm.hf import HFTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False))
    except (ValueError, OSError, ImportError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    specials = _special_tokens(folder)
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return HFTokenizer(PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials))
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        from transformers import Qwen2TokenizerFast

        return HFTokenizer(Qwen2TokenizerFast(vocab_file=str(folder / "vocab.json"),
                                              merges_file=str(folder / "merges.txt"), **specials))
    raise ValueError(f"{folder}: cannot load its tokenizer without remote code ({reason})")


def _special_tokens(folder: Path) -> dict[str, str]:
    """bos / eos / pad / unk / mask token texts from tokenizer_config.json and special_tokens_map.json."""
    out: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            raw = json.loads(path.read_text())
            for key in ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token"):
                value = raw.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if isinstance(value, str):
                    out[key] = value
    return out

"""The built-in masked-diffusion language model (LLaDA-style) and its tokenizer.

A bidirectional transformer (RMSNorm, rotary position embedding by explicit position index, SwiGLU MLP, no causal
mask) that predicts the tokens behind `<mask>`. Besides the plain full forward it computes a *subset* of positions
against cached keys/values of the others, which is what the cached decoders need (Fast-dLLM's prefix / dual cache,
Window-Diffusion's active/buffer/far-field windows):

    cache = model.new_cache(ids)                   # per-layer K/V for every position, from a full forward
    logits = model(ids[:, pos], positions=pos, cache=cache, keys=keep)
        # only the positions `pos` go through the layers; their fresh K/V overwrite their cache slots, and their
        # queries attend to the cached K/V at `keys` (default: every position)

Weights are safetensors with a config.json and a tokenizer.json (the vocabulary) in one folder; trained by
scripts/train_mdlm.py (assets/counting-mdlm/README.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from accel.dllm.native import KVCache, forward_positions  # the cache type and checks of the native LLaDA / Dream


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


class CharTokenizer:
    """A fixed vocabulary of whole-word specials (<mask>, rule names, ...) and single characters.

    Text is split into the longest vocabulary items left to right; spaces separate words and are dropped.
    """

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {t: i for i, t in enumerate(self.vocab)}
        for name in ("<pad>", "<mask>", "<bos>", "<sep>", "<eos>"):
            if name not in self.index:
                raise ValueError(f"the vocabulary needs the special token {name}")
        self.mask_id, self.pad_id = self.index["<mask>"], self.index["<pad>"]
        self.bos_id, self.sep_id, self.eos_id = self.index["<bos>"], self.index["<sep>"], self.index["<eos>"]
        self._words = sorted((t for t in self.vocab if len(t) > 1), key=len, reverse=True)

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            if text[i] == " ":
                i += 1
                continue
            word = next((w for w in self._words if text.startswith(w, i)), None)
            token = word or text[i]
            if token not in self.index:
                raise ValueError(f"character {token!r} is not in the model's vocabulary")
            out.append(self.index[token])
            i += len(token)
        return out

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] if self.vocab[int(i)] != "<mask>" else "_" for i in ids)

    def prompt_ids(self, text: str) -> list[int]:
        """`<bos> text <sep>`: the model's prompt format."""
        return [self.bos_id, *self.encode(text), self.sep_id]

    def save(self, folder: str | Path) -> None:
        Path(folder, "tokenizer.json").write_text(json.dumps({"vocab": self.vocab}, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> CharTokenizer:
        return cls(json.loads(Path(folder, "tokenizer.json").read_text())["vocab"])


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class MDLMConfig:
    vocab_size: int
    mask_id: int
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    max_len: int = 1024
    rope_theta: float = 10000.0


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x (B, H, N, Dh) at integer positions (N,), rotate-half convention, in float32."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)  # (Dh/2,)
    ang = positions.to(torch.float32)[:, None] * freqs[None]  # (N, Dh/2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    x1, x2 = x.float().chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated * sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, c: MDLMConfig):
        super().__init__()
        self.heads = c.heads
        self.norm1 = nn.RMSNorm(c.dim, eps=1e-6)
        self.qkv = nn.Linear(c.dim, 3 * c.dim, bias=False)
        self.out = nn.Linear(c.dim, c.dim, bias=False)
        self.norm2 = nn.RMSNorm(c.dim, eps=1e-6)
        hidden = int(c.dim * c.mlp_ratio)
        self.gate_up = nn.Linear(c.dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, c.dim, bias=False)
        self.theta = c.rope_theta

    def forward(self, x, positions, cache_k=None, cache_v=None, keys=None):
        """x (B, N, D) at positions (N,). With a cache: write this call's K/V at `positions`, then attend to the
        cache at `keys` (None: all). Without: attend among the N inputs."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _rope(q, positions, self.theta), _rope(k, positions, self.theta)
        if cache_k is not None:
            cache_k[:, :, positions] = k
            cache_v[:, :, positions] = v
            k, v = (cache_k, cache_v) if keys is None else (cache_k[:, :, keys], cache_v[:, :, keys])
        h = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no mask
        x = x + self.out(h.transpose(1, 2).reshape(b, n, d))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class MaskedDiffusionLM(nn.Module):
    """See the module docstring. forward(ids, positions=None, cache=None, keys=None) -> logits (B, N, V)."""

    def __init__(self, config: MDLMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.dim, eps=1e-6)
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def new_cache(self, batch: int, length: int) -> KVCache:
        """An empty cache for sequences of `length` (filled by a forward with `cache=`)."""
        c = self.config
        return KVCache.empty(c.layers, (batch, c.heads, length, c.dim // c.heads), next(self.parameters()))

    def forward(self, ids: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                keys: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, N, V) for the N tokens `ids` (B, N) at `positions` (N,) (default 0..N-1).

        cache: per-layer K/V of the whole sequence; this call's K/V are written into it at `positions` and the
            queries attend to the cache at `keys` (N, a subset of positions: default all cache positions).
            Without a cache the N tokens attend to each other only (the full forward when N is the sequence).
        """
        positions = forward_positions(ids, positions, cache, self.config.max_len)
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, *((cache.k[i], cache.v[i]) if cache is not None else (None, None)), keys)
        return self.head(self.norm(x))

    # --- persistence ----------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(asdict(self.config) | {"_class_name": type(self).__name__},
                                                       indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> MaskedDiffusionLM:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ValueError(f"{folder} is not a masked-diffusion LM folder (config.json + model.safetensors)")
        raw = json.loads((folder / "config.json").read_text())
        raw.pop("_class_name", None)
        model = cls(MDLMConfig(**raw))
        model.load_state_dict(load_file(str(folder / "model.safetensors"), device=str(device)))
        return model.to(device).eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def masked_diffusion_loss(model: MaskedDiffusionLM, ids: torch.Tensor, prompt_len: int,
                          generator: torch.Generator | None = None, eps: float = 1e-3,
                          prefix_fraction: float = 0.0, prefix_span: int | None = None,
                          cut_power: float = 2.0) -> torch.Tensor:
    """LLaDA's objective: t ~ U(eps, 1) per sequence, each answer token masked with probability t, cross-entropy on
    the masked tokens weighted 1 / t, averaged over the answer tokens (the prompt is never masked).

    prefix_fraction: that share of the rows instead masks every answer token from a random cut on (the states a
    left-to-right decoder meets: the answer's known start and an unknown rest), scored by the mean cross-entropy of
    their masked tokens. Uniform masks alone rarely show a model a fully unknown continuation, so a model trained
    only on them can be sure of a token given its neighbours yet unable to start an answer. Cuts are drawn closer to
    the answer's start (cut offset ~ U^cut_power), where a decoder begins with nothing but the prompt.

    prefix_span: score a prefix row only on its first prefix_span masked tokens (a decoder's next block: what the
    known text determines), so that the many undeterminable far tokens do not drown them out.
    """
    b, s = ids.shape
    t = eps + (1 - eps) * torch.rand(b, 1, generator=generator, device=ids.device)
    mask = torch.rand(b, s, generator=generator, device=ids.device) < t
    prefix_rows = torch.rand(b, 1, generator=generator, device=ids.device) < prefix_fraction
    u = torch.rand(b, 1, generator=generator, device=ids.device)
    cut = prompt_len + (u.pow(cut_power) * (s - prompt_len)).long()
    pos = torch.arange(s, device=ids.device)[None]
    mask = torch.where(prefix_rows, pos >= cut, mask)
    mask[:, :prompt_len] = False
    noisy = torch.where(mask, torch.full_like(ids, model.mask_id), ids)
    logits = model(noisy)
    scored = mask
    if prefix_span:
        scored = mask & torch.where(prefix_rows, pos < cut + prefix_span, True)
    ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none") * scored  # (B, S)
    weight = torch.where(prefix_rows, 1.0 / scored.sum(1, keepdim=True).clamp(min=1), 1.0 / (t * (s - prompt_len)))
    return (ce * weight).sum() / b

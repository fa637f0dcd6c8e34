"""Masked-diffusion checkpoints from transformers (LLaDA-, Dream-style) behind the decoders' model interface.

    model, tokenizer = load_text_model("GSAI-ML/LLaDA-8B-Instruct", trust_remote_code=True)   # at your site
    out = generate(model, tokenizer.prompt_ids("..."), "fast-dllm", gen_length=256, cache="none")

LLaDA and Dream ship their modelling code on the hub, so loading them needs trust_remote_code=True, which accel
never sets for you. Their remote code exposes a full forward only (no per-layer K/V to reuse), so here the
decoders run without a cache: "llada", "fast-dllm" with cache="none", and "adablock" with cache="none" work;
"window" and the cached Fast-dLLM modes need the per-layer K/V interface of accel.pipelines.mdlm and raise a
ValueError saying so. Dream is autoregressively initialised: its logits at position i predict token i + 1, so the
adapter shifts them by one (shift_logits=True for kind="dream").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_MASK_IDS = {"llada": 126336}
MASK_TEXTS = ("<|mdm_mask|>", "<|mask|>", "[MASK]", "<mask>")


@dataclass
class _Config:
    max_len: int


class HFMaskedDiffusionLM(nn.Module):
    """A transformers model whose forward(input_ids=...) returns `.logits` over the whole (bidirectional)
    sequence, seen through the decoders' interface (mask_id, config.max_len, forward(ids) -> logits)."""

    supports_cache = False

    def __init__(self, model: nn.Module, mask_id: int, max_len: int, shift_logits: bool = False):
        super().__init__()
        self.model, self.mask_id, self.shift_logits = model, int(mask_id), shift_logits
        self.config = _Config(max_len=int(max_len))

    def new_cache(self, batch: int, length: int):
        raise ValueError("this checkpoint's code exposes no per-layer K/V cache: use decoder 'llada', or "
                         "'fast-dllm' / 'adablock' with cache='none' ('window' needs accel's own model interface)")

    def forward(self, ids: torch.Tensor, positions=None, cache=None, keys=None) -> torch.Tensor:
        if positions is not None or cache is not None or keys is not None:
            raise ValueError("this checkpoint computes full sequences only (no positions / cache / keys)")
        logits = self.model(input_ids=ids).logits
        if self.shift_logits:  # logits[i] predicts token i + 1: align them with the token they predict
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


class HFTokenizer:
    """The decoders' tokenizer interface (prompt_ids, decode, index of special texts) over a transformers
    tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.index = {t: i for t, i in tokenizer.get_vocab().items()}

    @property
    def mask_id(self) -> int | None:
        """The tokenizer's mask token, else a known mask text in its vocabulary (LLaDA's <|mdm_mask|>), else
        None."""
        if self.tokenizer.mask_token_id is not None:
            return int(self.tokenizer.mask_token_id)
        return next((self.index[t] for t in MASK_TEXTS if t in self.index), None)

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def prompt_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


def load_hf_dllm(path: str, kind: str = "llada", trust_remote_code: bool = False, mask_id: int | None = None,
                 device: str | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) for a LLaDA- or Dream-style checkpoint (a local folder or a hub id).

    kind: "llada" (logits aligned with positions) or "dream" (shifted by one). mask_id: default the tokenizer's
    mask token, else LLaDA's 126336. Weights load with safetensors only.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    if kind not in ("llada", "dream"):
        raise ValueError(f"kind must be 'llada' or 'dream', got {kind!r}")
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = None
    # AutoModel only for remote code (LLaDA's and Dream's own classes): for a transformers architecture it would
    # give a headless model (hidden states, not logits).
    for auto in (AutoModelForMaskedLM, AutoModel) if trust_remote_code else (AutoModelForMaskedLM,):
        try:
            model = auto.from_pretrained(path, **kwargs)
            break
        except ValueError:  # this auto class does not map the config
            continue
    if model is None:
        arch = getattr(config, "architectures", None) or [type(config).__name__]
        raise ValueError(f"{path} is a {', '.join(arch)} checkpoint, not a masked-diffusion LM: accel decodes "
                         "LLaDA and Dream checkpoints (native), its own MaskedDiffusionLM folders and transformers "
                         "masked LMs")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer = HFTokenizer(tokenizer)
    mask_id = mask_id if mask_id is not None else tokenizer.mask_id
    mask_id = mask_id if mask_id is not None else DEFAULT_MASK_IDS.get(kind)
    if mask_id is None:
        raise ValueError("the tokenizer has no mask token: pass mask_id= (--mask-id)")
    max_len = (getattr(config, "max_sequence_length", None) or getattr(config, "max_position_embeddings", None)
               or 4096)
    adapter = HFMaskedDiffusionLM(model.eval(), mask_id, max_len, shift_logits=kind == "dream")
    if device is not None:
        adapter.to(device)
    return adapter, tokenizer

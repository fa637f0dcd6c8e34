"""Fused kernels for the built-in DiT (accel.kernels.apply_fused_kernels): mirrors of DiTBlock.forward and
Attention.forward that call the fused ops. Registered with accel.kernels by accel.pipelines (imports point from the
models to the kernels); any model built from these blocks is covered."""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from accel.kernels.fused import (
    FusedKernelsConfig, FusedKernelsHandle, block_parts, modulation_ops, replace_forward, rms_eps,
)
from accel.kernels.qk_norm_rope import qk_norm_rope
from accel.pipelines.shapes import Attention, DiTBlock


def _block_forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, attention_mask: torch.Tensor | None, *,
                   modulate: Callable, gate: Callable) -> torch.Tensor:
    """DiTBlock.forward with the modulations and gates fused. hidden_states: (B, N, D); temb: (B, 1, D) or
    (B, N, D)."""
    x = hidden_states
    shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(temb).chunk(6, dim=-1)
    x = gate(x, self.attn(modulate(x, scale1, shift1, self.norm1.eps), attention_mask), gate1)
    return gate(x, self.mlp(modulate(x, scale2, shift2, self.norm2.eps)), gate2)


def _attention_forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention.forward with q/k RMSNorm fused. x: (B, N, D)."""
    b, n, d = x.shape
    q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
    q, k = qk_norm_rope(q, k, self.norm_q.weight, self.norm_k.weight, eps=rms_eps(self.norm_q, q), seq_dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, Dh)
    return self.to_out(out.transpose(1, 2).reshape(b, n, d))


def install_fused_kernels(model: nn.Module, config: FusedKernelsConfig, handle: FusedKernelsHandle) -> None:
    """apply_fused_kernels' installer for the built-in DiTs: every DiTBlock / Attention inside `model`."""
    for module in model.modules():
        if isinstance(module, DiTBlock) and (config.modulated_norm or config.gated_residual):
            forward = functools.partial(_block_forward, **modulation_ops(config))
            handle.add(replace_forward(module, forward), *block_parts(config, 2))
        elif isinstance(module, Attention) and config.qk_norm_rope and module.norm_q.eps == module.norm_k.eps:
            handle.add(replace_forward(module, _attention_forward), "qk_norm_rope")

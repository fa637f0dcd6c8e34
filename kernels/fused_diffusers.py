"""Fused-kernel replacements for diffusers' Flux, Wan and SD3 transformers (used by accel.kernels.fused).

Each replacement mirrors upstream code of diffusers 0.42.1 line for line except for the fused calls, and is
checked against the unpatched model in tests/kernels/test_fused_kernels.py (on CPU the kernel functions run their
references, which reproduce upstream's arithmetic; on CUDA they run Triton within the dtype tolerance):
- AdaLayerNormZero.forward / AdaLayerNormZeroSingle.forward (diffusers/models/normalization.py),
- FluxAttnProcessor.__call__ (transformer_flux.py), WanAttnProcessor.__call__ and WanTransformerBlock.forward
  (transformer_wan.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.normalization import AdaLayerNormZero, AdaLayerNormZeroSingle
from diffusers.models.transformers import transformer_flux, transformer_wan
from torch import nn

from accel.kernels.fused import (
    FusedKernelsConfig, FusedKernelsHandle, block_parts, modulation_ops, replace_forward, rms_eps,
)
from accel.kernels.modulated_norm import modulated_layer_norm
from accel.kernels.qk_norm_rope import qk_norm_across_heads_rope, qk_norm_rope

# ---------------------------------------------------------------------------------------------------------------
# adaLN-Zero norms (Flux, SD3)
# ---------------------------------------------------------------------------------------------------------------


def _ada_norm_zero_forward(self, x, timestep=None, class_labels=None, hidden_dtype=None, emb=None):
    """AdaLayerNormZero.forward with the modulated LayerNorm fused. x: (B, L, D); emb: (B, D)."""
    if self.emb is not None:
        emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
    emb = self.linear(self.silu(emb))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
    x = modulated_layer_norm(x, scale_msa, shift_msa, self.norm.eps)
    return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


def _ada_norm_zero_single_forward(self, x, emb=None):
    """AdaLayerNormZeroSingle.forward with the modulated LayerNorm fused. x: (B, L, D); emb: (B, D)."""
    emb = self.linear(self.silu(emb))
    shift_msa, scale_msa, gate_msa = emb.chunk(3, dim=1)
    return modulated_layer_norm(x, scale_msa, shift_msa, self.norm.eps), gate_msa


def _plain_layer_norm(norm: nn.Module) -> bool:
    """The kernel's LayerNorm: exactly nn.LayerNorm (not FP32LayerNorm), without affine weights."""
    return type(norm) is nn.LayerNorm and norm.weight is None and norm.bias is None


def _install_ada_norms(model: nn.Module, handle: FusedKernelsHandle) -> None:
    forwards = {AdaLayerNormZero: _ada_norm_zero_forward, AdaLayerNormZeroSingle: _ada_norm_zero_single_forward}
    for module in model.modules():
        forward = forwards.get(type(module))
        if forward is not None and _plain_layer_norm(module.norm):
            handle.add(replace_forward(module, forward), "modulated_norm")


# ---------------------------------------------------------------------------------------------------------------
# Attention processors (Flux, Wan)
# ---------------------------------------------------------------------------------------------------------------


def _swap_processor(attn: nn.Module, processor) -> Callable[[], None]:
    """Install processor on this attention instance, inheriting the backend settings; return the undo."""
    previous = attn.processor
    processor._attention_backend = previous._attention_backend
    processor._parallel_config = previous._parallel_config
    attn.set_processor(processor)
    return lambda: attn.set_processor(previous)


class FusedFluxAttnProcessor(transformer_flux.FluxAttnProcessor):
    """FluxAttnProcessor with RMSNorm + rotary of q and k fused; text and image tokens are written straight into
    the concatenated (B, T + L, H, Dh) buffers, which also saves upstream's torch.cat of q and k."""

    _accel_fused_kernels = True  # accel.kernels.fused.FUSED_MARK: refuses a second apply_fused_kernels

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = transformer_flux._get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))  # (B, L, H, Dh)
        cos, sin = image_rotary_emb if image_rotary_emb is not None else (None, None)  # (T + L, Dh) each
        eps = rms_eps(attn.norm_q, query)

        if attn.added_kv_proj_dim is not None:
            enc_q, enc_k, enc_v = (t.unflatten(-1, (-1, attn.head_dim))
                                   for t in (encoder_query, encoder_key, encoder_value))
            t = enc_q.shape[1]
            q_all = query.new_empty(query.shape[0], t + query.shape[1], *query.shape[2:])  # (B, T + L, H, Dh)
            k_all = key.new_empty(q_all.shape)
            head = (None, None) if cos is None else (cos[:t], sin[:t])
            tail = (None, None) if cos is None else (cos[t:], sin[t:])
            qk_norm_rope(enc_q, enc_k, attn.norm_added_q.weight, attn.norm_added_k.weight, *head, eps=eps,
                         seq_dim=1, out=(q_all[:, :t], k_all[:, :t]))
            qk_norm_rope(query, key, attn.norm_q.weight, attn.norm_k.weight, *tail, eps=eps, seq_dim=1,
                         out=(q_all[:, t:], k_all[:, t:]))
            query, key, value = q_all, k_all, torch.cat([enc_v, value], dim=1)
        else:
            query, key = qk_norm_rope(query, key, attn.norm_q.weight, attn.norm_k.weight, cos, sin, eps=eps,
                                      seq_dim=1)

        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                              backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
            hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


class FusedWanAttnProcessor(transformer_wan.WanAttnProcessor):
    """WanAttnProcessor (without I2V image context) with the across-heads RMSNorm and rotary of q, k fused."""

    _accel_fused_kernels = True  # accel.kernels.fused.FUSED_MARK: refuses a second apply_fused_kernels

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        query, key, value = transformer_wan._get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        cos, sin = rotary_emb if rotary_emb is not None else (None, None)  # (1, L, 1, Dh) each
        query, key = qk_norm_across_heads_rope(query, key, attn.norm_q.weight, attn.norm_k.weight, cos, sin,
                                               eps=rms_eps(attn.norm_q, query))
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))  # (B, L, H, Dh)
        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend,
            parallel_config=(self._parallel_config if encoder_hidden_states is None else None))
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


def _qk_norms_fit(attn: nn.Module, names: tuple[str, ...]) -> bool:
    """All the named norms are nn.RMSNorm with one epsilon (the kernel takes one eps for q and k)."""
    norms = [getattr(attn, n, None) for n in names]
    return all(isinstance(n, nn.RMSNorm) for n in norms) and len({n.eps for n in norms}) == 1


def _install_flux_attention(model: nn.Module, handle: FusedKernelsHandle) -> None:
    for module in model.modules():
        if not isinstance(module, transformer_flux.FluxAttention):
            continue
        names = ("norm_q", "norm_k") + (("norm_added_q", "norm_added_k") if module.added_kv_proj_dim else ())
        if type(module.processor) is transformer_flux.FluxAttnProcessor and _qk_norms_fit(module, names):
            handle.add(_swap_processor(module, FusedFluxAttnProcessor()), "qk_norm_rope")


def _install_wan_attention(model: nn.Module, handle: FusedKernelsHandle) -> None:
    for module in model.modules():
        fits = (isinstance(module, transformer_wan.WanAttention) and module.add_k_proj is None
                and type(module.processor) is transformer_wan.WanAttnProcessor
                and _qk_norms_fit(module, ("norm_q", "norm_k")))
        if fits:
            handle.add(_swap_processor(module, FusedWanAttnProcessor()), "qk_norm_rope")


# ---------------------------------------------------------------------------------------------------------------
# Wan block (modulations and gates are float32 round trips upstream)
# ---------------------------------------------------------------------------------------------------------------


def _wan_block_forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb, *, modulate: Callable,
                       gate: Callable):
    """WanTransformerBlock.forward with both modulations and both gated residuals fused.

    hidden_states: (B, L, D); temb: (B, 6, D), or (B, L, 6, D) per token (Wan 2.2 TI2V). The modulation vectors
    stay float32 as upstream; the kernels compute in float32 and round once to hidden_states' dtype.
    """
    if temb.ndim == 4:
        mods = (self.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)
        mods = [m.squeeze(2) for m in mods]  # (B, L, D) each
    else:
        mods = (self.scale_shift_table + temb.float()).chunk(6, dim=1)  # (B, 1, D) each
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mods

    attn_output = self.attn1(modulate(hidden_states, scale_msa, shift_msa, self.norm1.eps), None, None, rotary_emb)
    hidden_states = gate(hidden_states, attn_output, gate_msa)

    norm_hidden_states = self.norm2(hidden_states.float()).type_as(hidden_states)
    hidden_states = hidden_states + self.attn2(norm_hidden_states, encoder_hidden_states, None, None)

    ff_output = self.ffn(modulate(hidden_states, c_scale_msa, c_shift_msa, self.norm3.eps))
    return gate(hidden_states, ff_output, c_gate_msa)


def _install_wan_blocks(model: nn.Module, config: FusedKernelsConfig, handle: FusedKernelsHandle) -> None:
    for module in model.modules():
        fits = (isinstance(module, transformer_wan.WanTransformerBlock)
                and not module.norm1.elementwise_affine and not module.norm3.elementwise_affine)
        if fits:
            forward = functools.partial(_wan_block_forward, **modulation_ops(config))
            handle.add(replace_forward(module, forward), *block_parts(config, 2))


# ---------------------------------------------------------------------------------------------------------------
# Installers (registered in accel.kernels.fused)
# ---------------------------------------------------------------------------------------------------------------


def install_flux(model: nn.Module, config: FusedKernelsConfig, handle: FusedKernelsHandle) -> None:
    if config.modulated_norm:
        _install_ada_norms(model, handle)
    if config.qk_norm_rope:
        _install_flux_attention(model, handle)


def install_wan(model: nn.Module, config: FusedKernelsConfig, handle: FusedKernelsHandle) -> None:
    if config.modulated_norm or config.gated_residual:
        _install_wan_blocks(model, config, handle)
    if config.qk_norm_rope:
        _install_wan_attention(model, handle)


def install_sd3(model: nn.Module, config: FusedKernelsConfig, handle: FusedKernelsHandle) -> None:
    if config.modulated_norm:
        _install_ada_norms(model, handle)


"""qk_norm_rope / qk_norm_across_heads_rope: Triton (interpreter) vs the reference and diffusers' own ops."""

import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed
from diffusers.models.transformers.transformer_flux import FluxPosEmbed

from accel.kernels._triton import count_launches
from accel.kernels.qk_norm_rope import (
    qk_norm_across_heads_rope, qk_norm_rope, rms_norm_rope_fwd, rms_norm_rope_reference,
)


def flux_tables(seq_len: int, head_dim: int, device="cpu"):
    """Flux's real rotary tables: FluxPosEmbed over (frame, row, col) ids, axes split as Flux does."""
    axes = [head_dim // 8, 7 * head_dim // 16, 7 * head_dim // 16]  # Flux-dev: [16, 56, 56] for 128
    ids = torch.stack([torch.zeros(seq_len), torch.arange(seq_len) // 8, torch.arange(seq_len) % 8], dim=-1)
    cos, sin = FluxPosEmbed(theta=10000, axes_dim=axes)(ids)  # (L, Dh) each, float32
    return cos.to(device), sin.to(device)


def rms_norms(dim, dtype, gen, device):
    norms = [torch.nn.RMSNorm(dim, eps=1e-6) for _ in range(2)]
    for n in norms:
        n.weight.data = (torch.rand(dim, generator=gen) + 0.5).to(device, dtype)
    return norms


@pytest.mark.parametrize("b,seq,heads,head_dim", [(1, 37, 3, 64), (2, 21, 2, 128)])
@pytest.mark.parametrize("seq_dim", [1, 2])
def test_per_head_matches_diffusers(b, seq, heads, head_dim, seq_dim, dtype, device, rng, assert_matches,
                                    assert_native):
    shape = (b, seq, heads, head_dim) if seq_dim == 1 else (b, heads, seq, head_dim)
    q, k = (torch.randn(shape, generator=rng).to(device, dtype) for _ in range(2))
    norm_q, norm_k = rms_norms(head_dim, dtype, rng, device)
    cos, sin = flux_tables(seq, head_dim, device)
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    # The launcher, on the same views qk_norm_rope builds.
    view = (slice(None), None) if seq_dim == 1 else (None, slice(None))
    c, s = (t[(None, *view)].expand(*shape[:3], head_dim) for t in (cos, sin))
    rms_norm_rope_fwd(q, norm_q.weight, c, s, 1e-6, q_out)
    rms_norm_rope_fwd(k, norm_k.weight, c, s, 1e-6, k_out)
    with torch.no_grad():
        for x, norm, out in ((q, norm_q, q_out), (k, norm_k, k_out)):
            upstream = apply_rotary_emb(norm(x), (cos, sin), use_real=True, use_real_unbind_dim=-1,
                                        sequence_dim=seq_dim)  # diffusers' Flux path, unfused
            assert_native(out, upstream)
            exact = rms_norm_rope_reference(x.float(), norm.weight.float(), c, s, 1e-6)
            assert_matches(out, exact, dtype)


def test_public_function_routes_both_layouts(device, rng, force_triton):
    q = torch.randn(2, 9, 2, 64, generator=rng).to(device)
    norm_q, norm_k = rms_norms(64, torch.float32, rng, device)
    cos, sin = flux_tables(9, 64, device)
    with torch.no_grad(), count_launches() as launches:
        expected = apply_rotary_emb(norm_q(q), (cos, sin), sequence_dim=1)
        q1, _ = qk_norm_rope(q, q, norm_q.weight, norm_k.weight, cos, sin, eps=1e-6, seq_dim=1)
        q2, _ = qk_norm_rope(q.transpose(1, 2), q.transpose(1, 2), norm_q.weight, norm_k.weight, cos, sin,
                             eps=1e-6, seq_dim=2)
    assert launches["rms_norm_rope"] >= 2  # the kernel ran, not the reference
    torch.testing.assert_close(q1, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(q2.transpose(1, 2), expected, atol=1e-5, rtol=1e-5)


def test_norm_only_odd_head_dim_and_cross_attention_lengths(dtype, device, rng, assert_matches, force_triton):
    # No rotary: any head dim (here odd), and k may be longer than q (cross-attention).
    q = torch.randn(5, 123, 2, 123, generator=rng).to(device, dtype)
    k = torch.randn(5, 130, 2, 123, generator=rng).to(device, dtype)
    norm_q, norm_k = rms_norms(123, dtype, rng, device)
    with count_launches() as launches:
        q_out, k_out = qk_norm_rope(q, k, norm_q.weight, norm_k.weight, eps=1e-6)
    assert launches["rms_norm_rope"] >= 1  # the kernel ran, not the reference
    assert_matches(q_out, rms_norm_rope_reference(q.float(), norm_q.weight.float(), None, None, 1e-6), dtype)
    assert_matches(k_out, rms_norm_rope_reference(k.float(), norm_k.weight.float(), None, None, 1e-6), dtype)


def wan_upstream(q, k, norm_q, norm_k, cos, sin, heads):
    """Wan's own norm + rotary: diffusers' WanAttnProcessor on a WanAttention, (B, L, H * Dh) -> (B, L, H * Dh).

    The attention's q/k projections are the identity (exact in every dtype), its norms carry norm_q / norm_k's
    weights, and the processor's attention call is intercepted to return the normalised, rotated query and key.
    cos, sin: (L, Dh) float32 tables, handed over as WanRotaryPosEmbed does, (1, L, 1, Dh).
    """
    import diffusers.models.transformers.transformer_wan as wan

    dim = q.shape[-1]
    attn = wan.WanAttention(dim, heads=heads, dim_head=dim // heads, eps=norm_q.eps).to(q.device, q.dtype)
    with torch.no_grad():
        for proj in (attn.to_q, attn.to_k, attn.to_v):
            proj.weight.copy_(torch.eye(dim))
            proj.bias.zero_()
        attn.norm_q.weight.copy_(norm_q.weight)
        attn.norm_k.weight.copy_(norm_k.weight)
    seen = []

    def capture(query, key, value, **kwargs):  # (B, L, H, Dh) each
        seen.append((query.flatten(2), key.flatten(2)))
        return value

    original, wan.dispatch_attention_fn = wan.dispatch_attention_fn, capture
    try:
        for x in (q, k):  # the processor projects q and k from one input: once for each
            wan.WanAttnProcessor()(attn, x, rotary_emb=(cos[None, :, None], sin[None, :, None]))
    finally:
        wan.dispatch_attention_fn = original
    return seen[0][0], seen[1][1]


@pytest.mark.parametrize("b,seq,heads,head_dim", [(1, 19, 3, 128), (2, 10, 2, 64)])
def test_across_heads_matches_wan(b, seq, heads, head_dim, dtype, device, rng, assert_native, force_triton):
    q, k = (torch.randn(b, seq, heads * head_dim, generator=rng).to(device, dtype) for _ in range(2))
    norm_q, norm_k = rms_norms(heads * head_dim, dtype, rng, device)
    cos, sin = (t.to(device) for t in get_1d_rotary_pos_embed(head_dim, torch.arange(seq).float(), use_real=True,
                                                              repeat_interleave_real=True))
    with torch.no_grad(), count_launches() as launches:
        q_out, k_out = qk_norm_across_heads_rope(q, k, norm_q.weight, norm_k.weight, cos, sin, eps=1e-6)
    assert launches["rms_norm_rope"] >= 1  # the kernel ran, not the reference
    with torch.no_grad():
        upstream_q, upstream_k = wan_upstream(q, k, norm_q, norm_k, cos.float(), sin.float(), heads)
        assert_native(q_out, upstream_q)
        assert_native(k_out, upstream_k)
        # Wan hands the tables over as (1, L, 1, Dh); same result.
        q_wan, _ = qk_norm_across_heads_rope(q, k, norm_q.weight, norm_k.weight, cos[None, :, None],
                                             sin[None, :, None], eps=1e-6)
    assert torch.equal(q_wan, q_out)


def test_reference_path_is_upstream_bit_for_bit(device, rng, monkeypatch):
    # Without Triton the public functions run the reference, which repeats diffusers' arithmetic exactly.
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    q = torch.randn(2, 9, 2, 64, generator=rng).to(device, torch.bfloat16)
    norm_q, norm_k = rms_norms(64, torch.bfloat16, rng, device)
    cos, sin = flux_tables(9, 64, device)
    with torch.no_grad():
        q_out, _ = qk_norm_rope(q, q, norm_q.weight, norm_k.weight, cos, sin, eps=1e-6, seq_dim=1)
        assert torch.equal(q_out, apply_rotary_emb(norm_q(q), (cos, sin), sequence_dim=1))
        flat = q.flatten(2)
        norm_w, _ = rms_norms(128, torch.bfloat16, rng, device)
        c, s = (t.to(device) for t in get_1d_rotary_pos_embed(64, torch.arange(9).float(), use_real=True,
                                                              repeat_interleave_real=True))
        w_out, _ = qk_norm_across_heads_rope(flat, flat, norm_w.weight, norm_w.weight, c, s, eps=1e-6)
        assert torch.equal(w_out, wan_upstream(flat, flat, norm_w, norm_w, c.float(), s.float(), 2)[0])


def test_out_buffers_are_written(device, rng, force_triton):
    q = torch.randn(1, 6, 2, 64, generator=rng).to(device)
    buf_q, buf_k = torch.zeros(1, 10, 2, 64, device=device), torch.zeros(1, 10, 2, 64, device=device)
    cos, sin = flux_tables(6, 64, device)
    w = torch.ones(64, device=device)
    with count_launches() as launches:
        q_out, k_out = qk_norm_rope(q, q, w, w, cos, sin, eps=1e-6, out=(buf_q[:, 4:], buf_k[:, 4:]))
    assert launches["rms_norm_rope"] >= 1  # the kernel ran, not the reference
    assert q_out.data_ptr() == buf_q[:, 4:].data_ptr() and buf_q[:, :4].abs().sum() == 0
    torch.testing.assert_close(buf_k[:, 4:], rms_norm_rope_reference(q, w, cos[None, :, None].expand(1, 6, 2, 64),
                                                                     sin[None, :, None].expand(1, 6, 2, 64), 1e-6))


def test_bad_inputs_raise(device):
    q = torch.zeros(1, 4, 2, 8, device=device)
    cos = torch.zeros(4, 8, device=device)
    with pytest.raises(ValueError, match="seq_dim must be 1"):
        qk_norm_rope(q, q, None, None, cos, cos, seq_dim=3)
    with pytest.raises(ValueError, match="pass both cos and sin"):
        qk_norm_rope(q, q, None, None, cos, None)
    with pytest.raises(ValueError, match=r"cos and sin must be \(L, Dh\) with L=4"):
        qk_norm_rope(q, q, None, None, cos[:3], cos[:3])
    z = lambda *shape: torch.zeros(shape, device=device)  # noqa: E731
    with pytest.raises(ValueError, match="even Dh"):
        rms_norm_rope_fwd(z(1, 4, 1, 9), None, z(1, 4, 1, 3), z(1, 4, 1, 3), 1e-6, z(1, 4, 1, 9))

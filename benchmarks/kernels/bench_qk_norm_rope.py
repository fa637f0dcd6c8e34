"""Benchmark q/k RMSNorm + rotary: Flux's per-head layout (B, L, H, Dh) and Wan's norm across heads (B, L, H*Dh).

    python benchmarks/kernels/bench_qk_norm_rope.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, Case, model_presets, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.qk_norm_rope import qk_norm_across_heads_rope, qk_norm_rope, rms_norm_rope_reference


def tables(seq, head_dim, device):
    """Rotary tables in diffusers' interleaved-pair convention (cos, sin repeated per pair), float32 (L, Dh)."""
    freqs = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)
    angles = torch.arange(seq, device=device).float()[:, None] * freqs
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


def make_cases(args, preset):
    shapes = model_presets(args, preset)
    if shapes is None:
        return []
    dtype, dev = DTYPES[args.dtype], args.device
    seq, heads, dh = shapes["tokens"], shapes["heads"], shapes["head_dim"]
    cos, sin = tables(seq, dh, dev)
    q, k = (torch.randn(1, seq, heads, dh, device=dev, dtype=dtype) for _ in range(2))
    # Minimal traffic: read and write q and k, read the tables once (they stay in L2 across heads).
    moved = 4 * q.numel() * q.element_size() + 2 * cos.numel() * cos.element_size()
    wq, wk = (torch.rand(dh, device=dev, dtype=dtype) + 0.5 for _ in range(2))
    c4, s4 = (t[None, :, None].expand(1, seq, heads, dh) for t in (cos, sin))
    per_head = Case(f"{preset}/per_head_blhd", moved, {
        "accel": lambda: qk_norm_rope(q, k, wq, wk, cos, sin, eps=1e-6, seq_dim=1),
        "eager": lambda: (rms_norm_rope_reference(q, wq, c4, s4, 1e-6), rms_norm_rope_reference(k, wk, c4, s4, 1e-6)),
    }, {"shape": list(q.shape)})
    qf, kf = q.flatten(2), k.flatten(2)
    wqf, wkf = (torch.rand(heads * dh, device=dev, dtype=dtype) + 0.5 for _ in range(2))
    cw, sw = (t[None, :, None].expand(1, seq, 1, dh) for t in (cos, sin))
    across = Case(f"{preset}/across_heads", moved, {
        "accel": lambda: qk_norm_across_heads_rope(qf, kf, wqf, wkf, cos, sin, eps=1e-6),
        "eager": lambda: tuple(rms_norm_rope_reference(t[:, :, None], w, cw, sw, 1e-6).squeeze(2)
                               for t, w in ((qf, wqf), (kf, wkf))),
    }, {"shape": list(qf.shape)})
    return [per_head, across]


if __name__ == "__main__":
    run("qk_norm_rope", make_cases, __doc__, presets("flux", "wan14b", "wan1.3b"))

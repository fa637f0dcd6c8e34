"""HSA's active-token forward on the built-in DiT: exact where it must be, caches per layer and CFG branch, the
model left untouched."""

import pytest
import torch

from accel.pipelines.shapes import ShapesDenoiser, build_shapes_pipeline
from accel.pipelines.shapes_hsa import ShapesActiveTokens
from accel.schedulers.flow import sample
from accel.schedulers.hsa import HSAConfig, hsa_sample, latent_to_tokens
from accel.testing import jitter_


@pytest.fixture(scope="module")
def setup():
    pipe = build_shapes_pipeline(width=32, num_layers=2, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(pipe.transformer, seed=1)
    d = ShapesDenoiser(pipe)
    with torch.no_grad():
        prepared = d.prepare(prompt=["a photo of a red circle", "two squares"], num_inference_steps=8,
                             guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    return d, prepared


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@torch.no_grad()
def test_all_tokens_fresh_equals_full_forward(setup):
    """Active-token attention with every token active (all K/V fresh) is the full forward."""
    d, prepared = setup
    run = ShapesActiveTokens(d, prepared.cond)
    sigma = prepared.grid.sigmas[2]
    n = d.token_layout(prepared.x).num_tokens
    full = latent_to_tokens(d.velocity(prepared.x, sigma, prepared.cond), 8, 8)
    run(prepared.x, prepared.grid.sigmas[0], torch.arange(n).expand(2, n))  # a full step fills the caches
    every = torch.randperm(n).expand(2, n)  # through the partial path, in any order
    model = d.transformer
    cond = prepared.cond
    x_in, s = torch.cat([prepared.x] * 2), sigma.expand(4)
    v = run.forward(model, x_in, cond.data["embeds"], s, cond.data["mask"], torch.cat([every, every]))
    v_uncond, v_cond = v.chunk(2)
    v = latent_to_tokens(v_uncond + cond.data["guidance"] * (v_cond - v_uncond), 8, 8)
    assert torch.allclose(v, full, atol=1e-5)


@torch.no_grad()
def test_partial_step_refreshes_active_kv_and_reads_cached(setup):
    """With kv="stale" a partial step writes fresh K/V for its active tokens only, and its velocities read the
    cached K/V of the inactive ones (per layer, per CFG branch)."""
    d, prepared = setup
    n = d.token_layout(prepared.x).num_tokens
    run = ShapesActiveTokens(d, prepared.cond, kv="stale")
    run(prepared.x, prepared.grid.sigmas[0], torch.arange(n).expand(2, n))
    assert run.k[0].shape == (4, 4, n, 8)  # CFG branches x heads x tokens x head_dim
    full_k = [k.clone() for k in run.k]
    full_v, full_out = [v.clone() for v in run.v], run.out.clone()
    active = torch.tensor([[0, 9, 27, 63], [1, 2, 3, 40]])
    a = run(prepared.x, prepared.grid.sigmas[1], active)
    assert a.shape == (2, 4, 48) and torch.isfinite(a).all()
    for layer in range(2):
        for row in range(4):  # rows 0-1 the unconditional branch, 2-3 the conditional one
            hit = torch.zeros(n, dtype=torch.bool)
            hit[active[row % 2]] = True
            assert torch.equal(run.k[layer][row][:, ~hit], full_k[layer][row][:, ~hit])
            assert not torch.equal(run.k[layer][row][:, hit], full_k[layer][row][:, hit])
    for k, v, k0, v0 in zip(run.k, run.v, full_k, full_v):  # the caches as after the full step, values doubled
        k.copy_(k0)
        v.copy_(v0 * 2)
    run.out = full_out
    b = run(prepared.x, prepared.grid.sigmas[1], active)
    assert not torch.allclose(a, b)  # the cached values of the inactive tokens are what the queries read


@torch.no_grad()
def test_refreshed_kv_follow_the_latent(setup):
    """kv="refresh" rewrites the inactive tokens' K/V at a partial step ("stale" leaves them), and prices them
    (tests/pipelines/test_hsa_refresh.py measures what it is worth on the trained models)."""
    d, prepared = setup
    x, s0, s1 = prepared.x, prepared.grid.sigmas[1], prepared.grid.sigmas[2]
    n = d.token_layout(x).num_tokens
    x1 = x + (s1 - s0) * d.velocity(x, s0, prepared.cond)
    active = torch.arange(n // 3).expand(2, -1)
    for kv in ("stale", "refresh"):
        run = ShapesActiveTokens(d, prepared.cond, kv=kv)
        run(x, s0, torch.arange(n).expand(2, n))
        before = run.k[1].clone()
        assert torch.isfinite(run(x1, s1, active)).all()
        changed = (run.k[1] != before).flatten(3).any(-1).any(1)  # (B2, n): whose layer-1 keys were rewritten
        assert changed.all() if kv == "refresh" else changed[:, n // 3:].logical_not().all()
    assert 0 < run.inactive_cost < 0.5 and ShapesActiveTokens(d, prepared.cond, kv="stale").inactive_cost == 0
    with pytest.raises(ValueError, match="kv"):
        ShapesActiveTokens(d, prepared.cond, kv="fresh")


@torch.no_grad()
def test_hsa_run_with_active_forward(setup):
    d, prepared = setup
    model = d.transformer
    before = _hooks(model)
    ref = sample(d, prepared.x, prepared.grid, prepared.cond)
    d.nfe = 0
    out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=1.0))
    assert torch.equal(out, ref) and d.nfe == 8 * 2 * 2
    out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5))
    assert stats.token_fraction <= 0.5 and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.5 * ref.abs().mean()  # an approximation, not noise
    assert _hooks(model) == before  # nothing left on the model
    assert torch.equal(sample(d, prepared.x, prepared.grid, prepared.cond), ref)


@torch.no_grad()
@pytest.mark.parametrize("kv", ["stale", "extrapolate"])
def test_hsa_with_fused_kernels(setup, kv):
    """HSA on a model with accel's fused kernels installed (their q/k norm bypasses the norm modules): the caches are
    recorded the same way, and the run matches the one without them."""
    from accel.kernels import apply_fused_kernels

    d, prepared = setup
    config = HSAConfig(runtime=0.5, kv=kv)
    ref, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, config)
    handle = apply_fused_kernels(d.transformer)
    try:
        out, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, config)
    finally:
        handle.remove()
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()

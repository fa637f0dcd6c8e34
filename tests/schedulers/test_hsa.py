"""Heterogeneous step allocation: the sampler core (plan, cached Euler update, exactness with every token active)."""

import pytest
import torch

from accel.pipelines.shapes import ShapesDenoiser, build_shapes_pipeline
from accel.core.grid import TimeGrid
from accel.schedulers.flow import euler_update, sample
from accel.schedulers.hsa import (BlockInputs, Fp8Rows, HSAConfig, _cached_update, hsa_sample, latent_to_tokens,
                                  plan_hsa, refresh_steps, tokens_to_latent)
from accel.testing import jitter_


@pytest.fixture(scope="module")
def setup():
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(pipe.transformer, seed=1)
    d = ShapesDenoiser(pipe)
    with torch.no_grad():
        prepared = d.prepare(prompt=["a photo of a red circle", "a photo of two squares"], num_inference_steps=8,
                             generator=torch.Generator().manual_seed(0))
    return d, prepared


def test_every_token_active_is_plain_euler(setup):
    d, prepared = setup
    with torch.no_grad():
        ref = sample(d, prepared.x, prepared.grid, prepared.cond)
        out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=1.0))
    assert torch.equal(out, ref)
    assert stats.token_fraction == 1.0


def test_partial_steps_spend_the_budget_and_end_at_zero(setup):
    d, prepared = setup
    n = d.token_layout(prepared.x).num_tokens
    for runtime in (0.5, 0.35):
        config = HSAConfig(runtime=runtime)
        with torch.no_grad():
            out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, config)
        assert stats.active[0] == n and stats.active[-1] < n  # a full warm-up step; a partial last step
        assert stats.token_fraction <= runtime + 1e-9 and stats.token_fraction > runtime - 2 / 8
        assert torch.isfinite(out).all() and out.shape == prepared.x.shape


def test_every_token_ends_at_sigma_zero(setup):
    """With a velocity that does not change, every token's path is x0 + (sigma - sigma_0) v whichever steps it
    took: the output must be the latent at sigma = 0, skipped-at-the-end tokens included."""
    d, prepared = setup
    field = torch.randn_like(latent_to_tokens(prepared.x, 8, 8))

    def constant(x, sigma, active):
        return torch.gather(field, 1, active[..., None].expand(-1, -1, field.shape[-1]))

    grid = prepared.grid
    with torch.no_grad():
        out, stats = hsa_sample(d, prepared.x, grid, prepared.cond, HSAConfig(runtime=0.3), constant)
    assert stats.active[-1] < 64
    expected = prepared.x + (grid.sigmas[-1] - grid.sigmas[0]) * tokens_to_latent(field, prepared.x, 8, 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_cached_update_equals_stepwise_euler_for_constant_velocity(monkeypatch):
    """The cached update moves each token from its own sigma in one per-token Euler update (the kernels' euler_update,
    which dispatches to the fused kernel on GPU); with a constant velocity it equals stepping there."""
    import accel.kernels.euler as kernel_euler

    x, v = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    sigmas = torch.tensor([0.9, 0.7, 0.55, 0.3])
    start = torch.randint(0, 3, (2, 16))  # each token's own grid position
    calls = []
    reference = kernel_euler.euler_update_reference
    monkeypatch.setattr(kernel_euler, "euler_update", lambda *a: calls.append(a) or reference(*a))
    jump = _cached_update(x, sigmas[start], v, sigmas[-1])
    assert len(calls) == 1 and calls[0][2].shape == (2, 16)
    for b in range(2):
        for i in range(16):
            stepwise = x[b, i]
            for s, s_next in zip(sigmas[start[b, i]:-1], sigmas[start[b, i] + 1:]):
                stepwise = euler_update(stepwise, v[b, i], s, s_next)
            assert torch.allclose(stepwise, jump[b, i], atol=1e-6)


def test_starvation_is_bounded(setup):
    """No token is skipped more than max_skips steps in a row when the active slots can take the starved ones."""
    d, prepared = setup
    seen = []

    def spy(x, sigma, active):
        seen.append(active.clone())
        v = latent_to_tokens(d.velocity(x, sigma, prepared.cond), 8, 8)
        return torch.gather(v, 1, active[..., None].expand(-1, -1, v.shape[-1]))

    with torch.no_grad():
        hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.8, max_skips=2), spy)
    assert any(a.shape[1] < 64 for a in seen)
    for row in range(2):
        run = torch.zeros(64, dtype=torch.long)
        for a in seen:
            hit = torch.zeros(64, dtype=torch.bool)
            hit[a[row]] = True
            run = torch.where(hit, 0, run + 1)
            assert int(run.max()) <= 2


def test_token_round_trip():
    for shape, grid in [((2, 3, 32, 32), (1, 8, 8)), ((1, 4, 6, 8, 8), (3, 4, 4)), ((2, 10, 7), (1, 1, 10))]:
        x = torch.randn(shape)
        t = latent_to_tokens(x, grid[1], grid[2], grid[0])
        assert t.shape[:2] == (shape[0], grid[0] * grid[1] * grid[2]) or x.ndim == 3
        assert torch.equal(tokens_to_latent(t, x, grid[1], grid[2], grid[0]), x)


def test_plan_and_bad_config():
    assert plan_hsa(10, 64, HSAConfig(runtime=1.0)) == [64] * 10
    plan = plan_hsa(20, 64, HSAConfig(runtime=0.5, warmup=2))
    assert plan[:2] == [64, 64] and 0.49 * 20 * 64 <= sum(plan) <= 0.5 * 20 * 64
    assert plan[2:] == sorted(plan[2:], reverse=True) and plan[2] > 2 * plan[-1] >= 2  # spent where sigma is high
    flat = plan_hsa(20, 64, HSAConfig(runtime=0.5, warmup=2, decay=0))
    assert flat == [64, 64] + [(640 - 128) // 18] * 18  # equal counts: what the warm-up leaves, shared
    shifted = [1.0] * 3 + [0.5] * 17  # the counts follow the grid's sigmas
    assert plan_hsa(20, 64, HSAConfig(runtime=0.5, warmup=3), shifted)[3:] == [(640 - 192) // 17] * 17
    with pytest.raises(ValueError, match="cannot carry"):
        plan_hsa(10, 64, HSAConfig(runtime=0.1, warmup=3))
    assert plan_hsa(20, 64, HSAConfig(runtime=10)) == plan_hsa(20, 64, HSAConfig(runtime=0.5))  # a step budget
    with pytest.raises(ValueError, match="exceeds"):
        plan_hsa(10, 64, HSAConfig(runtime=12))
    for bad in ({"runtime": 0}, {"runtime": 1.5}, {"runtime": True}, {"runtime": "half"}, {"warmup": 0},
                {"warmup": None}, {"decay": -1},
                {"max_skips": 0}, {"score": "entropy"}, {"grid_steps": 0}, {"grid_steps": "half"}, {"kv": "fresh"},
                {"refresh_every": 0}, {"refresh_every": 1.5},
                {"decay": "fast"}, {"max_skips": "auto3"}):
        with pytest.raises(ValueError):
            HSAConfig(**bad)


def test_plan_prices_the_inactive_tokens():
    """With the K/V refresh an inactive token costs a share of an active one: fewer tokens are active for the same
    budget, and active + share x inactive token-steps stay within it."""
    config = HSAConfig(runtime=0.5, refresh_every=1)
    free, priced = plan_hsa(20, 64, config), plan_hsa(20, 64, config, inactive_cost=1 / 6)
    assert priced[0] == 64 and sum(priced) < sum(free)
    assert 0.49 * 640 <= sum(k + (64 - k) / 6 for k in priced) <= 640
    with pytest.raises(ValueError, match="inactive_cost"):
        plan_hsa(20, 64, config, inactive_cost=1.0)
    # the auto grid: as many steps as the budget pays for with about half the tokens active
    assert HSAConfig(runtime=0.25).resolve_grid_steps(25, 1 / 6) == 11
    assert HSAConfig(runtime=0.5).resolve_grid_steps(25, 1 / 6) == 22


def test_auto_knobs_follow_the_kv_mode():
    """decay / max_skips "auto": 1.5 / 3 when the inactive tokens' K/V are refreshed (priced), 2 / 4 when stale;
    numbers pass through."""
    assert HSAConfig().resolved(refresh=True) == HSAConfig(decay=1.5, max_skips=3)
    assert HSAConfig().resolved(refresh=False) == HSAConfig(decay=2.0, max_skips=4)
    assert HSAConfig(decay=0.5, max_skips=6).resolved(refresh=True) == HSAConfig(decay=0.5, max_skips=6)
    config = HSAConfig(runtime=0.5, refresh_every=1)
    assert plan_hsa(20, 64, config, inactive_cost=1 / 6) == plan_hsa(20, 64, HSAConfig(runtime=0.5, refresh_every=1,
                                                                                      decay=1.5), inactive_cost=1 / 6)
    assert plan_hsa(20, 64, config) == plan_hsa(20, 64, HSAConfig(runtime=0.5, decay=2))


def test_full_budget_is_every_token_on_any_grid():
    """runtime=1 activates every token at every step whatever the sigmas (the count search once lost a token to float
    rounding at some sigmas, e.g. 0.3 with decay 2, so HSA at full runtime was not Euler)."""
    for decay in (1.5, 2.0, "auto"):
        sigmas = [1.0, 0.9, 0.6, 0.3, 0.1, 0.05]
        assert plan_hsa(6, 64, HSAConfig(runtime=1.0, decay=decay), sigmas) == [64] * 6
        assert plan_hsa(6, 64, HSAConfig(runtime=1.0, decay=decay), sigmas, inactive_cost=1 / 6) == [64] * 6


def test_refresh_every_prices_only_the_steps_that_refresh():
    """refresh_every=2: the first partial step refreshes, then every other one; the plan charges the inactive tokens
    there only, so more tokens are active than with a refresh at every step, within the same budget."""
    every = HSAConfig(runtime=0.5, refresh_every=1)
    other = HSAConfig(runtime=0.5, refresh_every=2)
    assert refresh_steps(6, other) == [False, True, False, True, False, True]
    assert refresh_steps(4, HSAConfig(warmup=2, refresh_every=3)) == [False, False, True, False]
    assert refresh_steps(4, every) == [False, True, True, True]
    priced = plan_hsa(20, 64, other, inactive_cost=1 / 6)
    assert sum(priced) > sum(plan_hsa(20, 64, every, inactive_cost=1 / 6))
    spent = sum(k + (64 - k) / 6 * r for k, r in zip(priced, refresh_steps(20, other)))
    assert 0.49 * 640 <= spent <= 640


def test_grid_steps_subsample_the_grid_and_keep_the_budget(setup):
    d, prepared = setup  # an 8-step grid, 64 tokens
    assert HSAConfig(runtime=0.25).resolve_grid_steps(25) == 13 and HSAConfig(runtime=0.5).resolve_grid_steps(25) == 25
    assert HSAConfig(runtime=3).resolve_grid_steps(8) == 6 and HSAConfig(grid_steps=None).resolve_grid_steps(8) == 8
    seen = []

    def spy(x, sigma, active):
        seen.append(float(sigma))
        v = latent_to_tokens(d.velocity(x, sigma, prepared.cond), 8, 8)
        return torch.gather(v, 1, active[..., None].expand(-1, -1, v.shape[-1]))

    with torch.no_grad():
        out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.25), spy)
    sigmas = prepared.grid.sigmas.tolist()
    assert len(seen) == len(stats.active) == 4 and seen[0] == sigmas[0] and all(s in sigmas for s in seen)
    assert 0.2 < stats.token_fraction <= 0.25  # of the full 8-step run
    # every token active on a subsampled grid is Euler on that grid
    with torch.no_grad():
        out, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=4, warmup=4, grid_steps=4))
        ref = sample(d, prepared.x, TimeGrid(prepared.grid.sigmas[[0, 2, 4, 6, 8]]), prepared.cond)
    assert torch.equal(out, ref)
    with pytest.raises(ValueError, match="exceeds"):
        hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(grid_steps=9))


def test_block_inputs_estimates():
    """BlockInputs: "refresh" estimates a block's input as the current embedding plus the residual at the last
    computation; "extrapolate" adds the residual's trend over the last two, which is exact for a residual linear in
    sigma (and the trend's weight is clipped at one step's worth); a token computed once has no trend."""
    torch.manual_seed(0)
    b, n, d, layers = 2, 6, 4, 3
    a, slope = torch.randn(layers, b, n, d), torch.randn(layers, b, n, d)
    a[0] = slope[0] = 0  # the first block's input is the embedding itself

    def embed(s):
        return torch.full((b, n, d), s) + torch.arange(n)[None, :, None]

    def inputs_at(s):  # block l's input at sigma s: the embedding plus a residual linear in s
        return [embed(s) + a[i] + s * slope[i] for i in range(layers)]

    def rows(t, index):
        return t.gather(1, index[..., None].expand(-1, -1, d))

    refresh, extra = BlockInputs(layers), BlockInputs(layers, extrapolate=True)
    active, inactive = torch.tensor([[0, 2, 5], [1, 3, 4]]), torch.tensor([[1, 3, 4], [0, 2, 5]])
    for bi in (refresh, extra):
        for i, h in enumerate(inputs_at(1.0)):
            bi.record(i, h.clone())
        bi.computed(1.0)
        for i, h in enumerate(inputs_at(0.8)):
            bi.record(i, rows(h, active), active)
        bi.computed(0.8, active)
    assert torch.equal(extra.s_then.gather(1, active), torch.full((b, 3), 0.8))
    e = embed(0.6)
    last = [torch.where(torch.zeros(b, n, 1, dtype=torch.bool).scatter(1, active[..., None], True), h8, h1)
            for h8, h1 in zip(inputs_at(0.8), inputs_at(1.0))]  # every token's input at its last computation
    refresh.prepare(e, 0.6)
    for i in range(layers):  # the residual as last computed, on the current embedding
        assert torch.allclose(refresh.estimate(i), last[i] - last[0] + e, atol=1e-5)
    extra.prepare(rows(e, active), 0.6, active)
    for i in range(layers):  # computed at 1.0 and 0.8: the line through them
        assert torch.allclose(extra.estimate(i), rows(inputs_at(0.6)[i], active), atol=1e-5)
    extra.prepare(rows(e, inactive), 0.6, inactive)
    for i in range(layers):  # computed at 1.0 only: the residual as then
        assert torch.allclose(extra.estimate(i), rows(inputs_at(1.0)[i] - embed(1.0) + e, inactive), atol=1e-5)
    extra.prepare(embed(0.0), 0.0)  # two steps' worth away: the trend counts once
    want = inputs_at(0.8)[2] - 0.2 * slope[2] - embed(0.8) + embed(0.0)
    assert torch.allclose(rows(extra.estimate(2), active), rows(want, active), atol=1e-5)


def test_fp8_rows():
    """Fp8Rows keeps each element within 2^-4 of its row's largest magnitude (e4m3's rounding), reads rows back in the
    tensor's dtype, writes rows per sample, and takes a byte per element plus a float32 scale per row."""
    torch.manual_seed(0)
    t = torch.randn(2, 5, 64) * torch.logspace(-3, 3, 5)[None, :, None]  # rows of very different scales
    rows = Fp8Rows(t)
    bound = t.abs().amax(-1, keepdim=True) / 16
    assert rows.read().dtype == t.dtype and ((rows.read() - t).abs() <= bound).all()
    assert not torch.equal(rows.read(), t)  # it does round
    index = torch.tensor([[4, 1], [0, 3]])
    assert torch.equal(rows.read(index), rows.read().gather(1, index[..., None].expand(-1, -1, 64)))
    new = torch.randn(2, 2, 64)
    rows.write_(index, new)
    got = rows.read()
    assert ((got.gather(1, index[..., None].expand(-1, -1, 64)) - new).abs() <= new.abs().amax(-1, True) / 16).all()
    assert torch.equal(got[0, 2], Fp8Rows(t).read()[0, 2])  # rows not written are unchanged
    assert rows.nbytes == 2 * 5 * 64 + 2 * 5 * 4


def test_block_inputs_in_fp8_follow_full_precision():
    """BlockInputs(fp8=True) estimates what the full-precision one does, to fp8's rounding of what it keeps."""
    torch.manual_seed(0)
    b, n, d, layers = 2, 6, 32, 3
    active = torch.tensor([[0, 2, 5], [1, 3, 4]])
    full, fp8 = BlockInputs(layers, extrapolate=True), BlockInputs(layers, extrapolate=True, fp8=True)
    inputs = [torch.randn(b, n, d) for _ in range(layers)]
    later = [h + 0.3 * torch.randn(b, n, d) for h in inputs]
    for bi in (full, fp8):
        for i, h in enumerate(inputs):
            bi.record(i, h.clone())
        bi.computed(1.0)
        for i, h in enumerate(later):
            bi.record(i, h.gather(1, active[..., None].expand(-1, -1, d)), active)
        bi.computed(0.8, active)
        bi.prepare(inputs[0] + 0.1, 0.6)
    assert all(isinstance(h, Fp8Rows) for h in fp8.h + fp8.trend[1:])
    for i in range(layers):
        a, e = full.estimate(i), fp8.estimate(i)
        assert 0 < (a - e).abs().max() < 0.25  # inputs of magnitude ~3 per row, three rounded terms at most

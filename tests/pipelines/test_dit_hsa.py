"""HSA's active-token forward on diffusers DiTs (Flux, Wan 2.1 / 2.2 / TI2V, Nucleus-Image), on tiny seeded models:
exact where it must be, partial steps really run only the active tokens, caches per model and CFG branch, and the
model left exactly as it was."""

from __future__ import annotations

import pytest
import torch

from accel.pipelines.dit_hsa import FluxActiveTokens, NucleusActiveTokens, WanActiveTokens
from accel.pipelines.flux import FluxDenoiser
from accel.pipelines.nucleus import NucleusDenoiser
from accel.pipelines.tiny import build_flux, build_wan
from accel.pipelines.tiny_nucleus import build_nucleus
from accel.pipelines.wan import WanDenoiser
from accel.schedulers import sample
from accel.schedulers.hsa import Fp8Rows, HSAConfig, hsa_sample, latent_to_tokens
from accel.testing import jitter_

CASES = {
    # Flux with true CFG (two forwards per velocity: two cache branches), batch 2
    "flux": (lambda: FluxDenoiser(build_flux(guidance_embeds=True)), FluxActiveTokens,
             dict(prompt=["a red circle", "a blue square"], negative_prompt="a dog", true_cfg_scale=2.5,
                  height=64, width=96, num_inference_steps=8, guidance_scale=3.5)),
    "wan": (lambda: WanDenoiser(build_wan()), WanActiveTokens,
            dict(prompt=["a cat on the moon", "a dog"], height=64, width=64, num_frames=9, num_inference_steps=8,
                 guidance_scale=5.0)),
    "wan22": (lambda: WanDenoiser(build_wan(boundary_ratio=0.875)), WanActiveTokens,
              dict(prompt="a blue car", height=64, width=64, num_frames=5, num_inference_steps=8,
                   guidance_scale=4.0)),
    "wan_ti2v": (lambda: WanDenoiser(build_wan(expand_timesteps=True)), WanActiveTokens,
                 dict(prompt="a red car", height=64, width=64, num_frames=5, num_inference_steps=8,
                      guidance_scale=3.0)),
    # Nucleus-Image with dense blocks (the MoE layers' routing at partial steps is tested on its own below), CFG
    "nucleus": (lambda: NucleusDenoiser(build_nucleus(moe=False)), NucleusActiveTokens,
                dict(prompt=["a red circle", "a blue square"], height=64, width=96, num_inference_steps=8,
                     guidance_scale=4.0)),
}


@pytest.fixture(scope="module", params=list(CASES))
def setup(request):
    build, cls, call = CASES[request.param]
    d = build()
    torch.manual_seed(1)
    for m in {id(m): m for m in (d.pipe.transformer, getattr(d.pipe, "transformer_2", None)) if m}.values():
        jitter_(m)  # tiny random models are near-linear; make the attention matter
    with torch.no_grad():
        prepared = d.prepare(**call, max_sequence_length=16, output_type="latent",
                             generator=torch.Generator().manual_seed(0))
    return d, cls, prepared


def _state(model):
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return hooks, [type(getattr(m, "processor", None)) for m in model.modules()]


def _tokens(d, v):
    lay = d.token_layout(v)
    return latent_to_tokens(v, lay.rows, lay.cols, lay.frames)


@torch.no_grad()
def test_partial_step_with_fresh_caches_equals_full_forward(setup):
    """K/V cached at the same latent and sigma are exactly what fresh ones would be: a partial step then gives the
    full forward's velocity at its active tokens (through the gathered rotary embedding, the per-token modulation,
    the scattered caches)."""
    d, cls, prepared = setup
    x, sigma = prepared.x, prepared.grid.sigmas[1]
    n = d.token_layout(x).num_tokens
    b = x.shape[0]
    full = _tokens(d, d.velocity(x, sigma, prepared.cond))
    run = cls.for_run(d, prepared.cond)
    assert run is not None
    every = torch.arange(n).expand(b, n)
    assert torch.allclose(run(x, sigma, every), full, atol=1e-5)  # a full step: the model's own forward
    g = torch.Generator().manual_seed(3)
    active = torch.stack([torch.randperm(n, generator=g)[: n // 3] for _ in range(b)])
    seen = []
    first = run._blocks(d.transformer)[0]
    hook = first.register_forward_hook(lambda m, a, o: seen.append((o[1] if isinstance(o, tuple) else o).shape[1]))
    try:
        part = run(x, sigma, active)
    finally:
        hook.remove()
    assert seen and all(s == n // 3 for s in seen)  # only the active tokens went through the blocks
    ref = torch.gather(full, 1, active[..., None].expand(-1, -1, full.shape[-1]))
    assert torch.allclose(part, ref, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("kv", ["stale", "refresh", "extrapolate"])
def test_partial_step_reads_the_caches(setup, kv):
    """Changed caches change the active tokens' velocities: the queries read the cached K/V of the inactive ones
    (stale), or K/V made from the inactive tokens' cached block inputs (refresh)."""
    d, cls, prepared = setup
    x = prepared.x
    n = d.token_layout(x).num_tokens
    b = x.shape[0]
    run = cls.for_run(d, prepared.cond, kv)
    sigma = prepared.grid.sigmas[1]
    run(x, sigma, torch.arange(n).expand(b, n))
    active = torch.arange(n // 4).expand(b, -1)
    a = run(x, sigma, active)
    if kv == "stale":
        for key in run.kv:
            run.kv[key][1] = [v * 2 for v in run.kv[key][1]]
    else:
        assert not run.inputs or all(len(h.h) == len(run.kv[key][0]) for key, h in run.inputs.items())
        for inputs in run.inputs.values():
            inputs.h = [h if i == 0 else h * 2 for i, h in enumerate(inputs.h)]
    assert not torch.allclose(a, run(x, sigma, active))


@torch.no_grad()
def test_refreshed_kv_follow_the_latent(setup):
    """After every token moved one Euler step, a partial step with refreshed K/V is closer to the full forward at
    the new latent than one with the K/V as last computed."""
    d, cls, prepared = setup
    x, s0, s1 = prepared.x, prepared.grid.sigmas[1], prepared.grid.sigmas[2]
    n = d.token_layout(x).num_tokens
    b = x.shape[0]
    x1 = x + (s1 - s0) * d.velocity(x, s0, prepared.cond)
    ref = _tokens(d, d.velocity(x1, s1, prepared.cond))[:, : n // 3]
    active = torch.arange(n // 3).expand(b, -1)
    err = {}
    for kv in ("stale", "refresh"):
        run = cls.for_run(d, prepared.cond, kv)
        run(x, s0, torch.arange(n).expand(b, n))
        err[kv] = (run(x1, s1, active) - ref).square().mean()
    assert err["refresh"] < 0.5 * err["stale"], err


@torch.no_grad()
@pytest.mark.parametrize("kv", ["extrapolate", "stale"])
def test_partial_steps_skip_the_text_with_the_refresh(setup, kv):
    """Flux's text shares the self-attention: with the refresh a partial step runs no text rows through the blocks
    (its K/V are remade at refreshing steps from its block inputs at the last full step, kept between); with stale
    K/V the text is recomputed at every step."""
    d, cls, prepared = setup
    if not cls.text_in_attention:
        pytest.skip("Wan's and Nucleus's text is only keys and values: nothing per text token to skip")
    x, (s0, s1, s2) = prepared.x, prepared.grid.sigmas[1:4]
    n = d.token_layout(x).num_tokens
    b = x.shape[0]
    v = d.velocity(x, s0, prepared.cond)
    run = cls.for_run(d, prepared.cond, kv)
    run(x, s0, torch.arange(n).expand(b, n))
    seen = []
    blocks = run._blocks(d.transformer)
    hooks = [blk.register_forward_hook(lambda m, a, out: seen.append(out[0].shape[1])) for blk in blocks]  # text rows
    active = torch.arange(n // 4).expand(b, -1)
    try:
        for refresh, sigma in ((True, s1), (False, s2)):
            before = {key: [[t.clone() for t in ts] for ts in c] for key, c in run.txt.items()}
            run.refresh_kv = refresh
            out = run(x + (sigma - s0) * v, sigma, active)
            assert torch.isfinite(out).all()
            for key, c in run.txt.items():
                assert all(torch.equal(b0, b1) != refresh for b0, b1 in zip(before[key][0], c[0]))
    finally:
        for h in hooks:
            h.remove()
    t_len = prepared.cond.data["embeds"].shape[1]
    assert seen == [0 if kv != "stale" else t_len] * (2 * len(blocks) * prepared.cond.passes)
    assert bool(run.txt) == (kv != "stale")


@torch.no_grad()
def test_steps_between_refreshes_keep_the_inactive_kv(setup):
    """HSAConfig.refresh_every: a partial step told not to refresh writes only the active tokens' K/V and block
    inputs; a refreshing step rewrites the inactive tokens' K/V too."""
    d, cls, prepared = setup
    x, (s0, s1, s2) = prepared.x, prepared.grid.sigmas[1:4]
    n = d.token_layout(x).num_tokens
    b = x.shape[0]
    v = d.velocity(x, s0, prepared.cond)
    run = cls.for_run(d, prepared.cond, "refresh")
    run(x, s0, torch.arange(n).expand(b, n))
    act, ina = torch.arange(0, n, 3), torch.tensor([i for i in range(n) if i % 3])
    checked = 0
    for refresh, sigma in ((False, s1), (True, s2)):  # every token moved along v (a new latent each call)
        kv0 = {key: [[t.clone() for t in ts] for ts in c] for key, c in run.kv.items()}
        h0 = {key: [t.clone() for t in hs.h] for key, hs in run.inputs.items()}
        run.refresh_kv = refresh
        run(x + (sigma - s0) * v, sigma, act.expand(b, -1))
        for key, c in run.kv.items():
            if key[0] not in run.calls or key not in kv0:  # Wan 2.2: the other expert (or its first, full call)
                continue
            for before, after in zip(kv0[key][0] + kv0[key][1], c[0] + c[1]):
                assert not torch.equal(before[:, act], after[:, act])
                assert torch.equal(before[:, ina], after[:, ina]) != refresh
            assert all(torch.equal(b0[:, ina], b1[:, ina]) for b0, b1 in zip(h0[key], run.inputs[key].h))
            assert not torch.equal(h0[key][-1][:, act], run.inputs[key].h[-1][:, act])
            checked += 1
    assert checked >= 2


@torch.no_grad()
def test_hsa_exact_at_full_runtime_and_model_untouched(setup):
    d, cls, prepared = setup
    models = [m for m in (d.pipe.transformer, getattr(d.pipe, "transformer_2", None)) if m is not None]
    before = [_state(m) for m in models]
    ref = sample(d, prepared.x, prepared.grid, prepared.cond)
    out, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=1.0))
    assert torch.equal(out, ref)
    out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5, warmup=2, kv="stale"))
    assert stats.token_fraction <= 0.5 and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.5 * ref.abs().mean()  # an approximation, not noise
    # the refresh's K/V projections are paid for out of the budget: fewer active tokens, the same compute
    out, refreshed = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5, warmup=2))
    assert torch.isfinite(out).all() and refreshed.token_fraction < stats.token_fraction
    assert refreshed.compute_fraction <= 0.5 and refreshed.compute_fraction > refreshed.token_fraction
    assert [_state(m) for m in models] == before  # hooks and processors as they were
    assert torch.equal(sample(d, prepared.x, prepared.grid, prepared.cond), ref)


@torch.no_grad()
def test_nucleus_moe_partial_steps_route_among_the_active_tokens():
    """On Nucleus-Image's MoE blocks a partial step's experts choose among the active tokens at the trained factor:
    each takes ceil(capacity * k / E) of the k active tokens of a sample, so a token gets the same number of experts
    on average as at a full step (not the same experts: the full step's choice needs every token's router score),
    and the velocity stays close to the full forward's."""
    from accel.moe import apply_expert_choice, capacity_tokens

    d = NucleusDenoiser(build_nucleus())
    prepared = d.prepare(prompt=["a red circle", "a blue square"], height=64, width=96, num_inference_steps=8,
                         guidance_scale=4.0, max_sequence_length=16, output_type="latent",
                         generator=torch.Generator().manual_seed(0))
    x, sigma = prepared.x, prepared.grid.sigmas[1]
    n, b = d.token_layout(x).num_tokens, x.shape[0]
    full = _tokens(d, d.velocity(x, sigma, prepared.cond))
    handle = apply_expert_choice(d.transformer)
    try:
        run = NucleusActiveTokens.for_run(d, prepared.cond)
        run(x, sigma, torch.arange(n).expand(b, n))
        handle.reset_stats()
        k = n // 3
        active = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(i))[:k] for i in range(b)])
        part = run(x, sigma, active)
        rows = sum(m.num_experts * b * capacity_tokens(m.capacity_factor, k, m.num_experts) for m in handle.layers)
        assert handle.stats.routed_rows == rows * prepared.cond.passes
        assert handle.stats.shared_rows == len(handle.layers) * b * k * prepared.cond.passes
    finally:
        handle.remove()
    ref = torch.gather(full, 1, active[..., None].expand(-1, -1, full.shape[-1]))
    assert 0 < (part - ref).abs().mean() < 0.5 * ref.abs().mean()


def test_nucleus_hsa_with_diffusers_text_kv_cache():
    """With diffusers' text K/V cache on (its hook hands the processor the cached text keys and values), HSA's
    partial steps give what they give without it."""
    import accel
    from diffusers.hooks import TextKVCacheConfig

    pipe = build_nucleus()
    fast = accel.accelerate_pipeline(pipe)
    call = dict(prompt="a red circle", height=64, width=64, guidance_scale=4.0, num_inference_steps=8,
                max_sequence_length=16, output_type="latent", steps="hsa", runtime=0.5)
    plain = fast(**call, generator=torch.Generator().manual_seed(0)).images
    pipe.transformer.enable_cache(TextKVCacheConfig())
    try:
        cached = fast(**call, generator=torch.Generator().manual_seed(0)).images
    finally:
        pipe.transformer.disable_cache()
    torch.testing.assert_close(cached, plain, rtol=0, atol=1e-5)


def test_custom_processor_falls_back_to_every_token():
    d = FluxDenoiser(build_flux())

    class Custom(FluxActiveTokens.default_processor):
        pass

    attn = d.transformer.transformer_blocks[0].attn
    original = attn.processor
    attn.set_processor(Custom())
    try:
        assert FluxActiveTokens.for_run(d, None) is None
    finally:
        attn.set_processor(original)
    assert FluxActiveTokens.for_run(d, None) is not None


@pytest.mark.parametrize("family", ["flux", "wan", "nucleus"])
def test_accelerated_pipeline_hsa_runs_active_tokens(family):
    """pipe(..., steps='hsa', runtime=0.5) on a Flux / Wan / Nucleus-Image (MoE) pipeline: partial steps run a
    fraction of the tokens through the blocks, and runtime=1.0 gives the default path's output."""
    import accel

    pipe = {"flux": build_flux, "wan": build_wan, "nucleus": build_nucleus}[family]()
    call = (dict(prompt="a red circle", height=64, width=64, num_frames=5, guidance_scale=3.0) if family == "wan"
            else dict(prompt="a red circle", height=64, width=64, guidance_scale=3.5))
    call.update(num_inference_steps=8, max_sequence_length=16, output_type="latent")
    fast = accel.accelerate_pipeline(pipe)
    seen = []
    first = (pipe.transformer.blocks if family == "wan" else pipe.transformer.transformer_blocks)[0]
    hook = first.register_forward_hook(lambda m, a, o: seen.append((o[1] if isinstance(o, tuple) else o).shape[1]))
    try:
        ref = fast(**call, generator=torch.Generator().manual_seed(0))
        out = fast(**call, steps="hsa", runtime=1.0, generator=torch.Generator().manual_seed(0))
        seen.clear()
        half = fast(**call, steps="hsa", runtime=0.5, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    images = (lambda o: o.frames) if family == "wan" else (lambda o: o.images)
    assert torch.equal(images(out), images(ref))
    assert half.stats.extra["token_fraction"] <= 0.5 and min(seen) < max(seen)  # partial steps ran fewer tokens


def _held_bytes(run) -> int:
    """Bytes of the distinct storages the run's caches keep alive."""
    storages = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        elif isinstance(t, (list, tuple)):
            [add(u) for u in t]
        elif isinstance(t, dict):
            [add(u) for u in t.values()]

    for caches in (run.kv, run.out, run.txt, run.h_txt):
        add(caches)
    for inputs in run.inputs.values():
        for t in inputs.h + (inputs.trend or []):
            add([t.q, t.scale] if isinstance(t, Fp8Rows) else t)
    return sum(storages.values())


@torch.no_grad()
@pytest.mark.parametrize("kv,fp8", [("extrapolate", False), ("refresh", False), ("stale", False),
                                    ("extrapolate", True), ("refresh", True)])
def test_cache_bytes_is_what_a_run_holds(setup, kv, fp8):
    """The pre-run estimate of the caches' size is what a run ends up holding (to rounding: storages shared between
    cached tensors count once), per K/V mode, with the block inputs in fp8 or not; Wan 2.2's first expert's caches
    are dropped when the second starts."""
    d, cls, prepared = setup
    run = cls(d, prepared.cond, kv)
    run.fp8_inputs = fp8
    estimate = run.cache_bytes(prepared.x)
    out, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5, kv=kv),
                        velocity_active=run)
    held = _held_bytes(run)
    assert held <= estimate <= 1.05 * held
    assert len({model for model, _ in run.kv}) == 1  # one transformer's caches at a time
    assert len(run.kv) == prepared.cond.passes
    assert all(isinstance(t, Fp8Rows) == fp8 for inputs in run.inputs.values() for t in inputs.h)
    if fp8:  # the same run with full-precision block inputs, to fp8's rounding
        full = cls(d, prepared.cond, kv)
        ref, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5, kv=kv),
                            velocity_active=full)
        assert 0 < (out - ref).abs().mean() < 0.05 * (ref - prepared.x).abs().mean()


@torch.no_grad()
def test_fit_memory_falls_back_or_raises_before_allocating(setup, monkeypatch):
    """Where the caches do not fit, kv="auto" keeps the block inputs in fp8, then takes the plain refresh (fp8
    inputs), then the stale cache, with a warning; an explicit kv keeps its mode (fp8 inputs at most) or fails; a
    run no mode fits fails with the sizes before any model call."""
    import accel.pipelines.dit_hsa as dit_hsa

    d, cls, prepared = setup
    chain = [("extrapolate", False), ("extrapolate", True), ("refresh", True), ("stale", False)]
    need = {o: cls(d, prepared.cond).cache_bytes(prepared.x, *o) for o in chain}
    assert need[chain[0]] > need[chain[1]] > need[chain[2]] > need[chain[3]]
    assert need[("extrapolate", True)] < cls(d, prepared.cond).cache_bytes(prepared.x, "refresh", False)
    for option in chain:
        run = cls(d, prepared.cond)
        run.fit_memory(prepared.x, room=need[option])
        assert (run.mode, run.fp8_inputs) == option and run.refresh == (option[0] != "stale")
    run = cls(d, prepared.cond, "refresh")  # explicit: the mode stays, the inputs go to fp8
    run.fit_memory(prepared.x, room=need[("refresh", True)])
    assert (run.mode, run.fp8_inputs) == ("refresh", True)
    with pytest.raises(ValueError, match="kv='auto'"):  # no silent change of mode: the error names the way out
        cls(d, prepared.cond, "extrapolate").fit_memory(prepared.x, room=need[("refresh", True)])

    calls = []
    models = [m for m in (d.pipe.transformer, getattr(d.pipe, "transformer_2", None)) if m is not None]
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in models]
    try:
        monkeypatch.setattr(dit_hsa, "free_memory", lambda device: need[("stale", False)] - 1)
        with pytest.raises(ValueError, match="smaller resolution"):
            hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5))
        assert not calls
        # kv="auto" on a device with room for the stale cache only: exactly the kv="stale" run
        monkeypatch.setattr(dit_hsa, "free_memory", lambda device: int(need[("stale", False)] / 0.9) + 1)
        auto, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5))
        monkeypatch.undo()
        stale, _ = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5, kv="stale"))
    finally:
        [h.remove() for h in handles]
    assert torch.equal(auto, stale)


def test_free_memory():
    from accel.core.memory import free_memory

    free = free_memory("cpu")
    assert free is None or free > 0
    assert free_memory("meta") is None


def _memory_row(tmp_path, model: str, size: str) -> dict:
    """The one row of `bench_dit_hsa_forward.py --model MODEL --size SIZE --memory-only`."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "steps" / "bench_dit_hsa_forward.py"
    spec = importlib.util.spec_from_file_location("bench_dit_hsa_forward", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "memory.json"
    bench.main(["--model", model, "--size", size, "--memory-only", "--json", str(out), "--allow-dirty"])
    (row,) = json.loads(out.read_text())
    return row


def test_cache_memory_of_the_real_sizes(tmp_path):
    """benchmarks/steps/bench_dit_hsa_forward.py --memory-only: the caches' size for a real configuration, built on
    the meta device (no weights): Wan 14B at 720p x 81 frames keeps, per forward, 40 layers of K and V for 75,600
    tokens of width 5,120 in bf16 (plus the last block's output), and the refresh adds its block inputs."""
    row = _memory_row(tmp_path, "wan", "wan-14b-720p")
    tokens, width, layers = 21 * 45 * 80, 5120, 40
    assert row["tokens"] == tokens and row["dtype"] == "bfloat16"
    assert row["cache_bytes_stale"] == (layers * 2 + 1) * tokens * width * 2
    assert row["cache_bytes_refresh"] == row["cache_bytes_stale"] + layers * tokens * width * 2
    assert row["cache_bytes_extrapolate"] == row["cache_bytes_refresh"] + (layers - 1) * tokens * width * 2
    # fp8 block inputs and trends: a byte per element and a float32 scale per row
    assert row["cache_bytes_extrapolate_fp8"] == row["cache_bytes_stale"] + (2 * layers - 1) * tokens * (width + 4)
    assert row["cache_bytes_refresh_fp8"] == row["cache_bytes_stale"] + layers * tokens * (width + 4)


def test_cache_memory_of_nucleus_image(tmp_path):
    """The same for Nucleus-Image at 1024 x 1024: grouped-query attention caches 4 K/V heads of 128 per layer (not
    the 2,048-wide hidden state), the refresh's block inputs are hidden-wide."""
    row = _memory_row(tmp_path, "nucleus", "nucleus-image")
    tokens, width, kv_width, layers = 64 * 64, 2048, 4 * 128, 32
    assert row["tokens"] == tokens
    assert row["cache_bytes_stale"] == (layers * 2 * kv_width + width) * tokens * 2
    assert row["cache_bytes_refresh"] == row["cache_bytes_stale"] + layers * tokens * width * 2


def test_pipeline_reports_caches_that_do_not_fit(monkeypatch):
    """pipe(..., steps='hsa') on a device without room for any of HSA's caches: a ValueError with the sizes from the
    pipeline call, before sampling."""
    import accel
    import accel.pipelines.dit_hsa as dit_hsa

    pipe = accel.accelerate_pipeline(build_flux())
    monkeypatch.setattr(dit_hsa, "free_memory", lambda device: 1024)
    with pytest.raises(ValueError, match=r"needs .* GiB for its caches at the least .*kv='stale'"):
        pipe(prompt="a red circle", height=64, width=64, guidance_scale=3.5, num_inference_steps=8,
             max_sequence_length=16, output_type="latent", steps="hsa", runtime=0.5)

"""Elastic capacity through the wrapper: `pipe(..., capacity=...)` on the tiny Nucleus pipeline.

References: the pipeline's own output (capacity 1.0 runs the engine at the trained capacities: same routing, float
reordering only), the expert work the trained capacities would spend (computed from the layers' factors), and the
unhooked pipeline after every call (bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel import accelerate_pipeline
from accel.moe import ExpertChoiceConfig, apply_expert_choice, capacity_tokens, engine_of, moe_layers
from accel.pipelines.tiny_nucleus import build_nucleus

CALL = dict(prompt="a photo of a red circle", height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
            max_sequence_length=128, output_type="np")


@pytest.fixture(scope="module")
def pipe():
    return build_nucleus()


def run(fn, **kw):
    return fn(**(CALL | kw), generator=torch.Generator().manual_seed(0))


def routed_fraction(pipe, factor: float, tokens: int = 64) -> float:
    layers = moe_layers(pipe.transformer)
    spent = sum(capacity_tokens(m.capacity_factor * factor, tokens, m.num_experts) for m in layers)
    return spent / sum(capacity_tokens(m.capacity_factor, tokens, m.num_experts) for m in layers)


def test_trained_capacity_reproduces_the_pipeline_and_restores_it(pipe):
    ref = run(pipe).images
    fast = accelerate_pipeline(pipe)
    out = run(fast, capacity=1.0)
    assert np.abs(out.images - ref).max() <= 1e-4
    assert out.stats.extra["capacity"] == 1.0 and out.stats.extra["expert_flops_fraction"] == 1.0
    assert out.stats.nfe == 3 * 2
    assert engine_of(pipe.transformer) is None and np.array_equal(run(pipe).images, ref)


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_constant_capacity_spends_its_fraction(pipe, factor):
    fast = accelerate_pipeline(pipe)
    full = run(fast).images
    out = run(fast, capacity=factor)
    extra = out.stats.extra
    assert extra["routed_flops_fraction"] == pytest.approx(routed_fraction(pipe, factor))
    assert (extra["expert_flops_fraction"] < 1) == (factor < 1)
    assert np.isfinite(out.images).all() and not np.array_equal(out.images, full)


def test_schedules_see_every_step_sigma(pipe):
    fast = accelerate_pipeline(pipe)
    seen = []
    out = run(fast, capacity=lambda sigma: seen.append(sigma) or (1.0 if sigma > 0.5 else 0.5))
    grid = fast.adapter.prepare(**(CALL | {"generator": torch.Generator().manual_seed(0)})).grid
    expected = [float(s) for s in grid.sigmas[:-1] for _ in range(2)]  # cond and uncond forwards
    assert seen == pytest.approx(expected, abs=1e-6)
    assert 0 < out.stats.extra["routed_flops_fraction"] <= 1 and out.stats.extra["capacity"] == "callable"
    by_sigma = out.stats.extra["dropped_by_sigma"]
    assert list(by_sigma) == [round(float(s), 4) for s in grid.sigmas[:-1]]
    assert all(0 <= f <= 1 for f in by_sigma.values())
    auto = run(fast, capacity="auto", num_inference_steps=4)
    assert auto.stats.extra["capacity"] == "auto" and auto.stats.extra["routed_flops_fraction"] < 1
    # The pipeline's own loop (a callback takes it) runs the schedule too.
    out = run(fast, capacity=0.5, callback_on_step_end=lambda p, i, t, kw: {})
    assert out.stats.path == "pipeline" and out.stats.extra["routed_flops_fraction"] < 1


def test_capacity_switches_an_applied_engine_and_switches_back(pipe):
    handle = apply_expert_choice(pipe.transformer, ExpertChoiceConfig())
    try:
        fast = accelerate_pipeline(pipe)
        out = run(fast, capacity=[0.5, 1.0, 0.25])
        assert out.stats.extra["capacity"] == "per-layer"
        assert engine_of(pipe.transformer) is handle and handle.plan.constant == (1.0, 1.0, 1.0)
    finally:
        handle.remove()


@pytest.mark.parametrize("capacity, match", [
    (0, "finite number > 0"), (-0.5, "finite number > 0"), ("half", "unknown capacity schedule"),
    (float("inf"), "finite number > 0"), ([1.0, 1.0], r"one factor per MoE layer \(3\)"),
    (lambda sigma: float("nan"), "schedule's value at sigma"), (lambda sigma: 0.0, "schedule's value at sigma"),
])
def test_bad_capacity_raises_and_leaves_the_model(pipe, capacity, match):
    fast = accelerate_pipeline(pipe)
    with pytest.raises(ValueError, match=match):
        run(fast, capacity=capacity)
    assert engine_of(pipe.transformer) is None
    assert all("forward" not in m.__dict__ for m in moe_layers(pipe.transformer))


def test_capacity_on_a_dense_model_or_a_bad_checkpoint_raises():
    dense = accelerate_pipeline(build_nucleus(moe=False))
    with pytest.raises(ValueError, match="is dense"):
        run(dense, capacity=0.5)
    with pytest.raises(ValueError, match="one factor per block"):
        accelerate_pipeline(build_nucleus(capacity_factors=[0.0, 4.0, 4.0, 2.0, 2.0, 2.0]))


def test_capacity_with_the_text_kv_cache(pipe):
    """The engine's pre-hook and diffusers' cache hooks on one transformer: the cached run equals the uncached one."""
    from diffusers.hooks import TextKVCacheConfig

    fast = accelerate_pipeline(pipe)
    plain = run(fast, capacity="auto").images
    pipe.transformer.enable_cache(TextKVCacheConfig())
    try:
        cached = run(fast, capacity="auto").images
    finally:
        pipe.transformer.disable_cache()
    assert np.abs(cached - plain).max() <= 1e-5

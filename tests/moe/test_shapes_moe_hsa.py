"""steps="hsa" on the built-in MoE shapes model: its MoE blocks run inside the active-token forward (the experts choose
among the tokens a partial step runs), exact with every token active, and elastic capacity applies alongside."""

from __future__ import annotations

import pytest
import torch

from accel import accelerate_pipeline
from accel.pipelines.shapes_moe import build_shapes_moe_pipeline
from accel.testing import jitter_

TINY = dict(width=32, stem_channels=(8, 16), text_hidden=32, text_layers=1)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    pipe = build_shapes_moe_pipeline(**TINY, num_layers=3, num_experts=4, moe_intermediate_dim=16,
                                     capacity_factors=(0.0, 2.0, 1.0))
    jitter_(pipe.transformer)  # an untrained adaLN-Zero model is the identity on its blocks; make them matter
    return accelerate_pipeline(pipe)


def run(pipe, **kw):
    return pipe("a photo of a red circle left of a blue square", num_inference_steps=8, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kw)


@torch.no_grad()
def test_hsa_on_the_moe_model(pipe):
    ref = run(pipe)
    assert torch.equal(run(pipe, steps="hsa", runtime=1.0).images, ref.images)
    seen = []
    moe = pipe.transformer.blocks[1].mlp
    hook = moe.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        half = run(pipe, steps="hsa", runtime=0.5)
    finally:
        hook.remove()
    assert half.stats.extra["token_fraction"] <= 0.5 and min(seen) < max(seen)  # partial steps routed fewer tokens
    assert torch.isfinite(half.images).all() and not torch.equal(half.images, ref.images)
    # the planner prices an inactive token's K/V refresh against a block's compute at the trained capacity
    blocks = pipe.transformer.blocks
    assert blocks[1].feed_forward_macs() != blocks[0].feed_forward_macs()
    both = run(pipe, steps="hsa", runtime=0.5, capacity=0.5)
    assert both.stats.extra["expert_flops_fraction"] < 1 and both.stats.extra["token_fraction"] <= 0.5

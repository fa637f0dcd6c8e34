"""The expert-choice engine against diffusers' NucleusMoELayer, on the tiny seeded Nucleus transformer.

References: the unpatched layer's own routing (the tokens it hands its experts, captured by a hook), its own output
(the engine with diffusers' expert loop must equal it bit for bit; with the grouped SwiGLU within float
reordering), and the unpatched model after `handle.remove()` (bit for bit).
"""

from __future__ import annotations

import pytest
import torch

from accel.moe import (
    ExpertChoiceConfig, apply_expert_choice, capacity_tokens, engine_of, expert_choice, moe_layers, router_scores,
)
from accel.pipelines.tiny_nucleus import transformer


def inputs(model, batch: int = 2, rows: int = 6, cols: int = 5, text: int = 7, seed: int = 0) -> dict:
    """One transformer call: packed latents (B, rows * cols, C), text (B, T, D_text) with a padded mask."""
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    mask = torch.ones(batch, text, dtype=torch.bool)
    mask[0, -2:] = False
    return dict(hidden_states=torch.randn(batch, rows * cols, c.in_channels, generator=gen),
                encoder_hidden_states=torch.randn(batch, text, c.joint_attention_dim, generator=gen),
                encoder_hidden_states_mask=mask, timestep=torch.full((batch,), 0.7),
                img_shapes=[(1, rows, cols)] * batch, return_dict=False)


@pytest.fixture(scope="module")
def model():
    return transformer(num_experts=8).eval()


def run(model, call) -> torch.Tensor:
    with torch.no_grad():
        return model(**call)[0]


def test_routing_decisions_are_diffusers(model):
    """The tokens each expert takes, in order, are the ones diffusers' layer hands its experts."""
    captured = []
    handles = []
    for layer in moe_layers(model):
        handles.append(layer.register_forward_pre_hook(
            lambda m, a, kw: captured.append(("layer", m, a, kw)), with_kwargs=True))
        handles.append(layer.experts.register_forward_pre_hook(lambda m, a: captured.append(("experts", a[0]))))
    try:
        run(model, inputs(model))
    finally:
        for h in handles:
            h.remove()
    assert len(captured) == 2 * len(moe_layers(model)) == 6
    for (_, layer, args, kwargs), (_, routed_input) in zip(captured[::2], captured[1::2]):
        hidden, unmodulated = args
        scores = router_scores(layer, unmodulated, kwargs["timestep"])
        capacity = capacity_tokens(layer.capacity_factor, hidden.shape[1], layer.num_experts)
        routing = expert_choice(scores, capacity, layer.route_scale)
        assert torch.equal(hidden.reshape(-1, hidden.shape[-1])[routing.tokens], routed_input)


def test_engine_with_diffusers_experts_is_bit_exact_and_removal_restores(model):
    call = inputs(model)
    baseline = run(model, call)
    handle = apply_expert_choice(model, ExpertChoiceConfig(grouped=False))
    try:
        assert torch.equal(run(model, call), baseline)  # same routing, weights, experts and accumulation order
    finally:
        handle.remove()
    assert all("forward" not in layer.__dict__ for layer in moe_layers(model)) and engine_of(model) is None
    assert not model._forward_pre_hooks
    assert torch.equal(run(model, call), baseline)


def test_grouped_engine_matches_diffusers(model):
    call = inputs(model, batch=3, rows=4, cols=7)
    baseline = run(model, call)
    handle = apply_expert_choice(model)
    try:
        with pytest.raises(ValueError, match="already applied"):
            apply_expert_choice(model)
        out = run(model, call)
        assert handle.stats.routed_flops_fraction == 1.0 and handle.stats.routed_rows > 0
    finally:
        handle.remove()
    torch.testing.assert_close(out, baseline, atol=1e-5, rtol=1e-5)
    assert torch.equal(run(model, call), baseline)


def test_grouped_engine_matches_diffusers_in_bfloat16():
    model = transformer(num_experts=8).eval().to(torch.bfloat16)
    call = inputs(model)
    call = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in call.items()}
    baseline = run(model, call)
    handle = apply_expert_choice(model)
    try:
        out = run(model, call)
    finally:
        handle.remove()
    # Both round every matmul to bfloat16; they differ by summation order (batched vs per-expert matmuls).
    torch.testing.assert_close(out.float(), baseline.float(), atol=5e-2, rtol=5e-2)


def test_capacity_scales_the_routed_work(model):
    call = inputs(model)
    baseline = run(model, call)
    seq = call["hidden_states"].shape[1]
    layers = moe_layers(model)
    for factor in (0.5, 2.0, 100.0):
        handle = apply_expert_choice(model, ExpertChoiceConfig(capacity=factor))
        try:
            out = run(model, call)
        finally:
            handle.remove()
        spent = sum(capacity_tokens(layer.capacity_factor * factor, seq, layer.num_experts) for layer in layers)
        trained = sum(capacity_tokens(layer.capacity_factor, seq, layer.num_experts) for layer in layers)
        assert handle.stats.routed_flops_fraction == pytest.approx(spent / trained)
        assert torch.isfinite(out).all() and not torch.equal(out, baseline)
    # At 100x every expert takes every token (capped at the sequence): the dense mixture.
    assert handle.stats.routed_rows == len(layers) * 8 * 2 * seq


def test_schedule_reads_sigma_per_call(model):
    seen = []
    handle = apply_expert_choice(model, ExpertChoiceConfig(capacity=lambda s: seen.append(s) or 0.5))
    try:
        for sigma in (0.9, 0.3):
            run(model, {**inputs(model), "timestep": torch.full((2,), sigma)})
        assert seen == pytest.approx([0.9, 0.3]) and handle.factors == (0.5,) * 3
        with pytest.raises(ValueError, match="one sigma per transformer call"):
            run(model, {**inputs(model), "timestep": torch.tensor([0.9, 0.3])})
    finally:
        handle.remove()
    handle = apply_expert_choice(model, ExpertChoiceConfig(capacity=lambda s: float("nan")))
    try:
        with pytest.raises(ValueError, match="schedule's value at sigma=0.7"):
            run(model, inputs(model))
    finally:
        handle.remove()


@pytest.mark.parametrize("capacity, match", [
    (0, "finite number > 0"), (-1.0, "finite number > 0"), (float("nan"), "finite number > 0"),
    (True, "finite number > 0"), ("fast", "unknown capacity schedule"), ([1.0, 0.5], "one factor per MoE layer"),
    ([1.0, 0.0, 1.0], "per-layer capacity factor"),
])
def test_bad_capacity_raises(model, capacity, match):
    with pytest.raises(ValueError, match=match):
        apply_expert_choice(model, ExpertChoiceConfig(capacity=capacity))
    assert engine_of(model) is None and all("forward" not in layer.__dict__ for layer in moe_layers(model))


def test_dense_model_and_bad_checkpoint_lists_raise():
    with pytest.raises(ValueError, match="no MoE layers"):
        apply_expert_choice(transformer(moe=False))
    # diffusers reads capacity_factors[block] and ignores the rest: a list for another depth goes unnoticed there.
    with pytest.raises(ValueError, match="one factor per block"):
        apply_expert_choice(transformer(capacity_factors=[0.0, 4.0, 4.0, 2.0, 2.0]))


def test_coactivation_draws_from_the_top_candidates():
    from accel.moe import coactivation_choice

    gen = torch.Generator().manual_seed(0)
    scores = torch.softmax(torch.randn(2, 20, 4, generator=gen), dim=-1)
    plain = expert_choice(scores, 3, 2.5)
    same = coactivation_choice(scores, 3, 2.5, pool=1.0, generator=gen)
    assert torch.equal(same.tokens.view(4, 2, 3).sort(-1).values, plain.tokens.view(4, 2, 3).sort(-1).values)
    drawn = coactivation_choice(scores, 3, 2.5, pool=2.0, generator=gen)
    top6 = expert_choice(scores, 6, 2.5).tokens.view(4, 2, 6)
    chosen = drawn.tokens.view(4, 2, 3)
    for e in range(4):
        for b in range(2):
            assert set(chosen[e, b].tolist()) <= set(top6[e, b].tolist()) and len(set(chosen[e, b].tolist())) == 3
    # Every token's weights still sum to route_scale over the experts that took it.
    sums = torch.zeros(40).index_add_(0, drawn.tokens, drawn.weights)
    taken = torch.zeros(40, dtype=torch.bool)
    taken[drawn.tokens] = True
    torch.testing.assert_close(sums[taken], torch.full((int(taken.sum()),), 2.5))
    with pytest.raises(ValueError, match="coactivation"):
        ExpertChoiceConfig(coactivation=0.5)


def test_shapes_moe_model_config_is_checked():
    from accel.pipelines.shapes_moe import ShapesMoETransformer2DModel

    with pytest.raises(ValueError, match="one factor >= 0 per block"):
        ShapesMoETransformer2DModel(num_layers=2, capacity_factors=(0.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="router_input"):
        ShapesMoETransformer2DModel(router_input="gated")


@pytest.mark.cuda
def test_engine_on_cuda_launches_the_kernels_and_matches_diffusers():
    from accel.kernels._triton import count_launches

    model = transformer(num_experts=8).eval().to("cuda", torch.bfloat16)
    call = {k: v.to("cuda", torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else
            v.to("cuda") if torch.is_tensor(v) else v for k, v in inputs(model).items()}
    baseline = run(model, call)
    handle = apply_expert_choice(model)
    try:
        with count_launches() as launches:
            out = run(model, call)
    finally:
        handle.remove()
    assert launches["swiglu_up"] == launches["down_weighted"] == 3
    torch.testing.assert_close(out.float(), baseline.float(), atol=5e-2, rtol=5e-2)

"""accelerate_pipeline: drop-in by default, options validated, stats exact."""

import inspect

import pytest
import torch

from accel import AccelConfig, accelerate_pipeline
from accel.pipelines.shapes import build_shapes_pipeline
from accel.testing import jitter_


@pytest.fixture(scope="module")
def pipe():
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1, seed=2)
    jitter_(p.transformer)
    return p


def call(p, **kw):
    return p("a photo of a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(7),
             output_type="np", **kw)


def test_default_output_equals_pipeline(pipe):
    fast = accelerate_pipeline(pipe)
    out = call(fast)
    assert type(out) is type(call(pipe))
    assert abs(out.images - call(pipe).images).max() <= 1e-5
    assert out.stats.nfe == 3 * 2 and fast.stats is out.stats and out.stats.path == "accel"
    assert out.stats.seconds > 0


def test_positional_prompt_and_tuple_output(pipe):
    fast = accelerate_pipeline(pipe)
    a = fast("a photo of a square", num_inference_steps=2, generator=torch.Generator().manual_seed(1),
             output_type="np", return_dict=False)
    b = pipe("a photo of a square", num_inference_steps=2, generator=torch.Generator().manual_seed(1),
             output_type="np", return_dict=False)
    assert isinstance(a, tuple) and abs(a[0] - b[0]).max() <= 1e-5


def test_signature_and_attributes_are_the_pipelines(pipe):
    fast = accelerate_pipeline(pipe)
    params = inspect.signature(fast).parameters
    assert "num_inference_steps" in params and "sampler" in params
    assert fast.transformer is pipe.transformer
    assert accelerate_pipeline(fast) is fast


def test_heun_option_costs_more_and_differs(pipe):
    fast = accelerate_pipeline(pipe, AccelConfig(sampler="heun"))
    out = call(fast)
    assert out.stats.nfe == (2 * 3 - 1) * 2 and out.stats.sampler == "heun"
    assert abs(out.images - call(pipe).images).max() > 0
    assert call(fast, sampler="euler").stats.nfe == 6  # per-call override


def test_bad_options(pipe):
    with pytest.raises(ValueError, match="allowed: euler, heun"):
        AccelConfig(sampler="ddim")
    with pytest.raises(ValueError, match="allowed: euler, heun"):
        call(accelerate_pipeline(pipe), sampler="ddim")
    with pytest.raises(ValueError, match="allowed arguments"):
        call(accelerate_pipeline(pipe), num_inference_stepz=3)


def test_unsupported_pipeline_names_the_families():
    class NotAPipeline:
        pass

    with pytest.raises(ValueError, match="FluxPipeline.*ShapesPipeline.*StableDiffusion3Pipeline.*WanPipeline"):
        accelerate_pipeline(NotAPipeline())


def test_fused_kernels_option_three_runs(pipe):
    # On CPU the fused hooks run the pure-torch twins: identical images; removal restores the model exactly.
    baseline = call(pipe).images
    fast = accelerate_pipeline(pipe, AccelConfig(fused_kernels=True))
    assert abs(call(fast).images - baseline).max() == 0
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    fast.remove()
    assert abs(call(pipe).images - baseline).max() == 0
    assert all(torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in state.items())
    again = accelerate_pipeline(pipe, AccelConfig(fused_kernels=True))  # re-applying after removal works
    plain = accelerate_pipeline(again, AccelConfig())  # re-wrapping removes the hooks first
    assert not plain._kernel_handles and abs(call(plain).images - baseline).max() == 0


def test_search_option_within_budget(pipe):
    fast = accelerate_pipeline(pipe)
    plain = call(fast)
    one = plain.stats.nfe  # one sample's cost
    out = fast(["a photo of a red circle", "a photo of two squares"], num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(7), search="bon", reward="shapes", nfe=4 * one)
    assert out.images.shape == (2, 32, 32, 3)
    assert out.stats.nfe <= 2 * 4 * one and out.stats.nfe >= 2 * 2 * one
    assert len(out.stats.extra["best_reward"]) == 2
    again = fast(["a photo of a red circle", "a photo of two squares"], num_inference_steps=3, output_type="np",
                 generator=torch.Generator().manual_seed(7), search="bon", reward="shapes", nfe=4 * one)
    assert abs(again.images - out.images).max() == 0  # a fixed seed gives the same search


def test_search_bad_input(pipe):
    fast = accelerate_pipeline(pipe)
    with pytest.raises(ValueError, match="needs all of"):
        fast("a photo of a circle", num_inference_steps=2, search="bon")
    with pytest.raises(ValueError, match="allowed"):
        fast("a photo of a circle", num_inference_steps=2, search="greedy", reward="shapes", nfe=100)
    with pytest.raises(ValueError, match="allowed"):
        fast("a photo of a circle", num_inference_steps=2, search="bon", reward="beauty", nfe=100)
    with pytest.raises(ValueError):
        fast("a photo of a circle", num_inference_steps=2, search="bon", reward="shapes", nfe=1)


def test_sampler_with_search_is_an_error(pipe):
    with pytest.raises(ValueError, match="do not apply to search"):
        accelerate_pipeline(pipe)("a photo of a circle", num_inference_steps=2, search="bon", reward="shapes",
                                  nfe=100, sampler="heun")


def test_search_callback_sees_nfe_and_best_reward(pipe):
    fast = accelerate_pipeline(pipe)
    rows = []
    fast.search_callback = rows.append
    out = fast(["a photo of a red circle", "a photo of two squares"], num_inference_steps=3, output_type="np",
               generator=torch.Generator().manual_seed(7), search="smc", reward="shapes", nfe=60)
    assert {r["prompt_index"] for r in rows} == {0, 1} and all(r["budget"] == 60 for r in rows)
    for i in (0, 1):
        nfes = [r["nfe"] for r in rows if r["prompt_index"] == i]
        assert nfes == sorted(nfes) and 0 < nfes[-1] <= 60
    assert [r["best"] for r in rows if r["prompt_index"] == 1][-1] == out.stats.extra["best_reward"][1]


def test_distributed_needs_search_and_a_process_group(pipe):
    fast = accelerate_pipeline(pipe)
    with pytest.raises(ValueError, match="search only"):
        fast("a photo of a circle", num_inference_steps=2, distributed=True)
    with pytest.raises(ValueError, match="process group"):
        fast("a photo of a circle", num_inference_steps=2, search="bon", reward="shapes", nfe=100, distributed=True)


def test_hsa_steps_option(pipe):
    fast = accelerate_pipeline(pipe)
    kw = dict(num_inference_steps=10, generator=torch.Generator().manual_seed(3), output_type="np")
    full = fast("a photo of a red circle", **kw)
    kw["generator"] = torch.Generator().manual_seed(3)
    same = fast("a photo of a red circle", steps="hsa", runtime=1.0, **kw)
    assert abs(same.images - full.images).max() == 0 and same.stats.extra["token_fraction"] == 1.0
    for runtime in (0.5, 5):  # a fraction or a budget in full steps
        kw["generator"] = torch.Generator().manual_seed(3)
        half = fast("a photo of a red circle", steps="hsa", runtime=runtime, **kw)
        assert half.stats.extra["token_fraction"] <= 0.5 and half.stats.extra["steps"] == "hsa"
        assert 0 < abs(half.images - full.images).mean() < 0.2
    with pytest.raises(ValueError, match="runtime= applies to steps='hsa' only"):
        fast("x", runtime=0.5, **kw)
    with pytest.raises(ValueError, match="steps must be"):
        fast("x", steps="fast", **kw)
    with pytest.raises(ValueError, match="runtime must be"):
        fast("x", steps="hsa", runtime=2.5, **kw)
    with pytest.raises(ValueError, match="exceeds"):
        fast("x", steps="hsa", runtime=11, **kw)
    with pytest.raises(ValueError, match="heun"):
        fast("x", steps="hsa", sampler="heun", **kw)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an int >= 1"),
    ({"num_images_per_prompt": 1.5}, "num_images_per_prompt must be an int >= 1"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number >= 0"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number >= 0"),
    ({"guidance_scale": -3.0}, "guidance_scale must be a finite number >= 0"),
    ({"prompt": "  "}, "prompt must be a non-empty string"),
    ({"prompt": []}, "prompt must be a non-empty string"),
    ({"prompt": ["a photo of a circle", ""]}, "prompt must be a non-empty string"),
])
def test_bad_call_arguments_are_value_errors(pipe, kwargs, message):
    fast = accelerate_pipeline(pipe)
    call_kwargs = {"prompt": "a photo of a red circle", "num_inference_steps": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        fast(**call_kwargs)


def test_search_below_its_budget_says_why(pipe):
    fast = accelerate_pipeline(pipe)
    kw = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    out = fast("a photo of a red circle", search="bon", reward="shapes", nfe=14, **kw)  # 4 NFE per sample
    assert out.stats.nfe == 12 and "stopped at 12 of 14 NFE" in out.stats.extra["unspent"]
    out = fast("a photo of a red circle", search="bon", reward="shapes", nfe=12, **kw)
    assert "unspent" not in out.stats.extra

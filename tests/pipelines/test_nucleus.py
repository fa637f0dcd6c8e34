"""The Nucleus-Image adapter against NucleusMoEImagePipeline itself, on a tiny seeded MoE model in fp32.

Reference for every number: the pipeline's own __call__ on the same model and seed (norm-rescaled CFG, dynamic
shift, the text K/V cache reset per call). The wrapper's default path must give the same pixels and spend exactly
the transformer forwards the pipeline spends; search and the other samplers run through the Denoiser contract.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.hooks import TextKVCacheConfig

from accel import accelerate_pipeline
from accel.core.denoiser import TokenLayout
from accel.pipelines.nucleus import NucleusDenoiser
from accel.pipelines.tiny_nucleus import build_nucleus

COMMON = dict(max_sequence_length=128, output_type="np")

# (call, expected NFE = samples * steps * passes, token layout (frames, rows, cols))
CASES = [
    (dict(prompt="a photo of a red circle", height=64, width=64, num_inference_steps=3, guidance_scale=4.0),
     1 * 3 * 2, (1, 8, 8)),
    (dict(prompt=["a blue square", "two green circles on the left"], negative_prompt=["a dog", "the moon"],
          height=64, width=96, num_inference_steps=2, guidance_scale=2.5, num_images_per_prompt=2),
     4 * 2 * 2, (1, 8, 12)),
    (dict(prompt="a cat", height=64, width=64, num_inference_steps=3, guidance_scale=1.0, sigmas=[1.0, 0.6, 0.2]),
     1 * 3 * 1, (1, 8, 8)),
]


@pytest.fixture(scope="module")
def pipe():
    return build_nucleus()


class ForwardCounter:
    """Samples through the transformer: the sum of hidden_states batch sizes over all forwards."""

    def __init__(self, model):
        self.samples = 0
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.samples += kwargs["hidden_states"].shape[0]

    def remove(self):
        self.handle.remove()


def seeded(call: dict, seed: int = 0) -> dict:
    return {**call, **COMMON, "generator": torch.Generator().manual_seed(seed)}


@pytest.mark.parametrize("kw, nfe, layout", CASES, ids=["cfg", "batch-negative", "no-cfg-sigmas"])
def test_wrapper_reproduces_pipeline(pipe, kw, nfe, layout):
    counter = ForwardCounter(pipe.transformer)
    try:
        ref = pipe(**seeded(kw)).images
        pipe_nfe, counter.samples = counter.samples, 0
        timesteps = pipe.scheduler.timesteps.clone()
        fast = accelerate_pipeline(pipe)
        out = fast(**seeded(kw))
    finally:
        counter.remove()
    assert isinstance(fast.adapter, NucleusDenoiser) and out.stats.path == "accel"
    assert out.images.shape == ref.shape and np.isfinite(ref).all()
    assert np.abs(out.images - ref).max() <= 1e-5
    assert out.stats.nfe == counter.samples == pipe_nfe == nfe
    assert torch.equal(pipe.scheduler.timesteps, timesteps)  # the pipeline's scheduler was not touched
    adapter = fast.adapter
    with torch.no_grad():
        prep = adapter.prepare(**seeded(kw))
    assert adapter.token_layout(prep.x) == TokenLayout(*layout)


def test_latent_output_and_tuple(pipe):
    call = dict(prompt="a red circle", height=64, width=64, num_inference_steps=2, guidance_scale=3.0,
                max_sequence_length=128, output_type="latent", return_dict=False)
    ref = pipe(**call, generator=torch.Generator().manual_seed(1))
    out = accelerate_pipeline(pipe)(**call, generator=torch.Generator().manual_seed(1))
    assert isinstance(out, tuple) and len(out) == 1
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-6)


def test_text_kv_cache_is_reset_per_call(pipe):
    """With diffusers' text K/V cache on, consecutive calls on other prompts equal fresh uncached calls: the cache
    (keyed on the text tensor's pointer, which a later call's tensors can reuse) is emptied per call."""
    calls = [dict(prompt=p, height=64, width=64, num_inference_steps=2, guidance_scale=4.0)
             for p in ("a red circle", "two blue squares on the right", "a red circle")]
    plain = [pipe(**seeded(c)).images for c in calls]
    pipe.transformer.enable_cache(TextKVCacheConfig())
    try:
        fast = accelerate_pipeline(pipe)
        cached = [fast(**seeded(c)).images for c in calls]
    finally:
        pipe.transformer.disable_cache()
    assert not np.array_equal(plain[0], plain[1])  # the prompts matter, so a stale cache would show
    for ref, out in zip(plain, cached):
        assert np.abs(out - ref).max() <= 1e-5


def test_per_sample_sigma_equals_scalar(pipe):
    adapter = NucleusDenoiser(pipe)
    with torch.no_grad():
        prep = adapter.prepare(**seeded(dict(prompt=["a cat", "a dog"], height=64, width=64, num_inference_steps=2,
                                             guidance_scale=3.0)))
        sigma = prep.grid.sigmas[1]
        v = adapter.velocity(prep.x, sigma, prep.cond)
        v_per_sample = adapter.velocity(prep.x, sigma.expand(2).clone(), prep.cond)
    torch.testing.assert_close(v_per_sample, v, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="per sample"):
        adapter.velocity(prep.x, torch.ones(2, 64), prep.cond)


def test_expand_cond_equals_one_sample_at_a_time(pipe):
    adapter = NucleusDenoiser(pipe)
    with torch.no_grad():
        prep = adapter.prepare(**seeded(dict(prompt="a cat", height=64, width=64, num_inference_steps=2,
                                             guidance_scale=4.0)))
        x = torch.cat([prep.x, -prep.x, 0.5 * prep.x])  # three particles sharing one prompt
        cond = adapter.expand_cond(prep.cond, 3)
        v = adapter.velocity(x, prep.grid.sigmas[0], cond)
        v_one = torch.cat([adapter.velocity(x[i:i + 1], prep.grid.sigmas[0], prep.cond) for i in range(3)])
    assert cond.batch == 3 and cond.passes == 2
    torch.testing.assert_close(v, v_one, rtol=1e-5, atol=1e-5)


def test_search_and_samplers_run_through_the_adapter(pipe):
    fast = accelerate_pipeline(pipe)
    call = dict(height=64, width=64, num_inference_steps=2, guidance_scale=4.0, max_sequence_length=128,
                output_type="np")
    one = fast("a photo of a red circle", **call, generator=torch.Generator().manual_seed(3)).stats.nfe
    out = fast(["a photo of a red circle", "a photo of two squares"], **call, search="bon", reward="shapes",
               nfe=3 * one, generator=torch.Generator().manual_seed(3))
    assert out.images.shape == (2, 64, 64, 3) and np.isfinite(out.images).all()
    assert 2 * one <= out.stats.nfe <= 2 * 3 * one
    heun = fast("a photo of a red circle", **call, sampler="heun", generator=torch.Generator().manual_seed(3))
    assert heun.stats.nfe == 2 * (2 * 2 - 1) and np.isfinite(heun.images).all()
    hsa = fast("a photo of a red circle", **(call | {"num_inference_steps": 4}), steps="hsa", runtime=0.6,
               generator=torch.Generator().manual_seed(3))
    assert hsa.stats.extra["steps"] == "hsa" and np.isfinite(hsa.images).all()


def test_unknown_and_unsupported_arguments(pipe):
    fast = accelerate_pipeline(pipe)
    with pytest.raises(ValueError, match="bogus_steps"):
        fast.adapter.prepare(prompt="a cat", bogus_steps=3)
    # A callback is the pipeline's own business: the wrapper runs the pipeline's __call__, NFE still counted.
    seen = []
    out = fast("a cat", height=64, width=64, num_inference_steps=2, guidance_scale=1.0, max_sequence_length=128,
               output_type="np", callback_on_step_end=lambda p, i, t, kw: seen.append(i) or {})
    assert out.stats.path == "pipeline" and out.stats.nfe == 2 and seen == [0, 1]


def test_distilled_student_samples_with_fewstep(pipe, tmp_path):
    """accel.distill speaks only the Denoiser contract: a Nucleus student (two SC-DMD iterations: the plumbing, not
    a trained student) is saved, loads as a NucleusMoEImagePipeline and samples with sampler='fewstep'."""
    from diffusers import NucleusMoEImagePipeline

    from accel.distill import DistillConfig, distill

    call = dict(height=64, width=64, max_sequence_length=128)
    config = DistillConfig(steps=2, checkpoint_every=2, call_args=call, batch_size=2, critic_per_generator=2,
                           lr_generator=1e-4, lr_critic=1e-3, ema_start=0)
    out = distill(pipe, config, prompts=["a red circle", "two blue squares"], out_dir=tmp_path / "student")
    student = NucleusMoEImagePipeline.from_pretrained(out)
    student.set_progress_bar_config(disable=True)
    result = accelerate_pipeline(student)("a red circle", sampler="fewstep", num_inference_steps=2, output_type="np",
                                          generator=torch.Generator().manual_seed(0), **call)
    assert result.images.shape == (1, 64, 64, 3) and np.isfinite(result.images).all()
    assert result.stats.nfe == 2 and result.stats.extra["student"] == "sc-dmd"

"""Flux / SD3 / Wan adapters against their own diffusers pipelines, on tiny seeded models in fp32.

The reference for every number is the pipeline's __call__ on the same model and seed: the adapter path (prepare,
accel's Euler sampler, decode) must give the same pixels, spend exactly the transformer forwards the pipeline
spends, and describe the token grid the transformer actually sees.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from accel.core.denoiser import TokenLayout
from accel.pipelines.flux import FluxDenoiser
from accel.pipelines.sd3 import SD3Denoiser
from accel.pipelines.tiny import build_flux, build_sd3, build_wan
from accel.pipelines.wan import WanDenoiser
from accel.schedulers import sample

# variant -> (builder, adapter class)
VARIANTS = {
    "flux": (lambda: build_flux(guidance_embeds=True), FluxDenoiser),  # FLUX.1-dev-like: embedded guidance
    "flux_schnell": (lambda: build_flux(guidance_embeds=False), FluxDenoiser),
    "sd3": (build_sd3, SD3Denoiser),
    "wan": (build_wan, WanDenoiser),
    "wan22": (lambda: build_wan(boundary_ratio=0.875), WanDenoiser),  # two experts; the boundary falls mid-run
    "wan_ti2v": (lambda: build_wan(expand_timesteps=True), WanDenoiser),  # per-token timesteps
}

# (variant, call, expected NFE = samples * steps * passes, expected token layout (frames, rows, cols))
CASES = [
    ("flux", dict(prompt="a photo of a cat", height=64, width=96, num_inference_steps=3, guidance_scale=3.5),
     1 * 3 * 1, (1, 4, 6)),
    ("flux", dict(prompt=["a red circle", "a blue square"], negative_prompt=["a dog", "the moon"], true_cfg_scale=2.5,
                  num_images_per_prompt=2, height=64, width=64, num_inference_steps=2), 4 * 2 * 2, (1, 4, 4)),
    ("flux_schnell", dict(prompt="a green tree", height=64, width=64, num_inference_steps=2, guidance_scale=0.0,
                          sigmas=[1.0, 0.4]), 1 * 2 * 1, (1, 4, 4)),
    ("sd3", dict(prompt="a photo of a dog", negative_prompt="a cat", height=64, width=64, num_inference_steps=3,
                 guidance_scale=5.0), 1 * 3 * 2, (1, 4, 4)),
    ("sd3", dict(prompt=["a red circle", "two squares"], height=64, width=96, num_inference_steps=3,
                 guidance_scale=1.0, num_images_per_prompt=2, sigmas=[1.0, 0.7, 0.3]), 4 * 3 * 1, (1, 4, 6)),
    ("wan", dict(prompt="a cat on the moon", height=64, width=64, num_frames=9, num_inference_steps=3,
                 guidance_scale=5.0), 1 * 3 * 2, (3, 4, 4)),
    ("wan", dict(prompt="a dog at night", height=64, width=96, num_frames=5, num_inference_steps=2,
                 guidance_scale=1.0, num_videos_per_prompt=2), 2 * 2 * 1, (2, 4, 6)),
    ("wan22", dict(prompt="a blue car", negative_prompt="a red car", height=64, width=64, num_frames=9,
                   num_inference_steps=3, guidance_scale=4.0, guidance_scale_2=2.0), 1 * 3 * 2, (3, 4, 4)),
    ("wan_ti2v", dict(prompt="a red car", height=64, width=64, num_frames=5, num_inference_steps=2,
                      guidance_scale=3.0), 1 * 2 * 2, (2, 4, 4)),
]

COMMON = dict(max_sequence_length=16, output_type="np")


@pytest.fixture(scope="module")
def pipes():
    built: dict[str, object] = {}

    def get(variant: str):
        if variant not in built:
            built[variant] = VARIANTS[variant][0]()
        return built[variant]

    return get


def transformers_of(pipe) -> list[torch.nn.Module]:
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


class ForwardCounter:
    """Samples through the transformer(s): sum of hidden_states batch sizes over all forwards."""

    def __init__(self, pipe):
        self.samples = 0
        self.handles = [m.register_forward_pre_hook(self.hook, with_kwargs=True) for m in transformers_of(pipe)]

    def hook(self, module, args, kwargs):
        self.samples += kwargs["hidden_states"].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


class TokenProbe:
    """Image tokens entering the transformer's first block (hidden_states (B, L, D))."""

    def __init__(self, adapter):
        self.tokens: set[int] = set()
        block = adapter.blocks()[0]
        self.handle = block.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.tokens.add(hidden.shape[1])

    def remove(self):
        self.handle.remove()


def pixels(out) -> np.ndarray:
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


def run_adapter(adapter, call):
    with torch.no_grad():
        prep = adapter.prepare(**call)
        x = sample(adapter, prep.x, prep.grid, prep.cond)
        return prep, adapter.decode(x, prep)


@pytest.mark.parametrize("variant, kw, nfe, layout", CASES, ids=[f"{v}-{i}" for i, (v, *_) in enumerate(CASES)])
def test_adapter_reproduces_pipeline(pipes, variant, kw, nfe, layout):
    pipe = pipes(variant)
    call = {**kw, **COMMON}
    counter = ForwardCounter(pipe)
    try:
        ref = pixels(pipe(**call, generator=torch.Generator().manual_seed(0)))
        pipe_nfe, counter.samples = counter.samples, 0
        timesteps = pipe.scheduler.timesteps.clone()
        adapter = VARIANTS[variant][1](pipe)
        probe = TokenProbe(adapter)
        try:
            prep, out = run_adapter(adapter, {**call, "generator": torch.Generator().manual_seed(0)})
        finally:
            probe.remove()
    finally:
        counter.remove()
    out = pixels(out)
    assert out.shape == ref.shape and np.isfinite(ref).all()
    assert np.abs(out - ref).max() <= 1e-5
    # NFE: the adapter's own count, the forwards it ran, and the forwards the pipeline ran all agree.
    assert adapter.nfe == counter.samples == pipe_nfe == nfe
    assert adapter.token_layout(prep.x) == TokenLayout(*layout)
    assert probe.tokens == {TokenLayout(*layout).num_tokens}
    assert torch.equal(pipe.scheduler.timesteps, timesteps)  # the pipeline's scheduler was not touched


@pytest.mark.parametrize("variant", ["flux", "sd3", "wan"])
def test_latent_output_and_tuple(pipes, variant):
    pipe = pipes(variant)
    call = dict(prompt="a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=16,
                output_type="latent", return_dict=False)
    if variant == "wan":
        call["num_frames"] = 5
    ref = pipe(**call, generator=torch.Generator().manual_seed(1))
    _, out = run_adapter(VARIANTS[variant][1](pipe), {**call, "generator": torch.Generator().manual_seed(1)})
    assert isinstance(out, tuple) and len(out) == 1
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["flux", "sd3", "wan"])
def test_per_sample_sigma_equals_scalar(pipes, variant):
    pipe = pipes(variant)
    adapter = VARIANTS[variant][1](pipe)
    call = dict(prompt=["a cat", "a dog"], height=64, width=64, num_inference_steps=2, max_sequence_length=16,
                generator=torch.Generator().manual_seed(2))
    if variant == "wan":
        call["num_frames"] = 5
    with torch.no_grad():
        prep = adapter.prepare(**call)
        sigma = prep.grid.sigmas[1]
        v = adapter.velocity(prep.x, sigma, prep.cond)
        v_per_sample = adapter.velocity(prep.x, sigma.expand(2).clone(), prep.cond)
    torch.testing.assert_close(v_per_sample, v, rtol=1e-6, atol=1e-6)


# One prompt with guidance on, per family (Flux: true CFG with a negative prompt).
EXPAND = {
    "flux": dict(prompt="a cat", negative_prompt="a dog", true_cfg_scale=2.0, height=64, width=64),
    "sd3": dict(prompt="a cat", guidance_scale=4.0, height=64, width=64),
    "wan": dict(prompt="a cat", guidance_scale=4.0, height=64, width=64, num_frames=5),
}


@pytest.mark.parametrize("variant", EXPAND)
def test_expand_cond_equals_one_sample_at_a_time(pipes, variant):
    adapter = VARIANTS[variant][1](pipes(variant))
    with torch.no_grad():
        prep = adapter.prepare(**EXPAND[variant], num_inference_steps=2, max_sequence_length=16,
                               generator=torch.Generator().manual_seed(3))
        x = torch.cat([prep.x, -prep.x, 0.5 * prep.x])  # three particles sharing one prompt
        cond = adapter.expand_cond(prep.cond, 3)
        v = adapter.velocity(x, prep.grid.sigmas[0], cond)
        v_one = torch.cat([adapter.velocity(x[i:i + 1], prep.grid.sigmas[0], prep.cond) for i in range(3)])
    assert cond.batch == 3 and cond.passes == 2
    torch.testing.assert_close(v, v_one, rtol=1e-5, atol=1e-5)
    assert adapter.nfe == 2 * 3 * 2


@pytest.mark.parametrize("variant", ["flux", "sd3", "wan"])
def test_unknown_and_unsupported_arguments_raise(pipes, variant):
    adapter = VARIANTS[variant][1](pipes(variant))
    with pytest.raises(ValueError, match="bogus_steps"):
        adapter.prepare(prompt="a cat", bogus_steps=3)
    with pytest.raises(ValueError, match="callback_on_step_end"):
        adapter.prepare(prompt="a cat", callback_on_step_end=lambda *a: {})


def test_wan22_rejects_sigmas_across_the_boundary(pipes):
    adapter = WanDenoiser(pipes("wan22"))
    with torch.no_grad():
        prep = adapter.prepare(prompt=["a cat", "a dog"], height=64, width=64, num_frames=5, num_inference_steps=2,
                               max_sequence_length=16, generator=torch.Generator().manual_seed(0))
        with pytest.raises(ValueError, match="both sides"):
            adapter.velocity(prep.x, torch.tensor([0.99, 0.1]), prep.cond)


def test_multistep_scheduler_is_refused():
    pipe = build_wan()
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    with pytest.raises(ValueError, match="UniPCMultistepScheduler"):
        WanDenoiser(pipe).prepare(prompt="a cat", height=64, width=64, num_frames=5, num_inference_steps=2)

"""The newer flow families' adapters against their own diffusers pipelines, on tiny seeded models in fp32.

The same check as test_adapters.py: the adapter path (prepare, accel's Euler sampler, decode) gives the pipeline's
pixels (<= 1e-5), spends exactly the transformer forwards the pipeline spends, and describes the token grid the
transformer sees; search-style conditioning (expand_cond) equals one sample at a time.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from diffusers.guiders import ClassifierFreeGuidance
from PIL import Image
from test_adapters import pixels, run_adapter

from accel.core.denoiser import TokenLayout
from accel.pipelines.registry import adapter_class
from accel.pipelines.tiny_families import (build_chroma, build_flux2, build_flux2_klein, build_flux_kontext,
                                           build_hunyuanvideo15, build_ltx, build_qwenimage, build_zimage)


def image(size: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


BUILDERS = {
    "qwenimage": build_qwenimage,
    "flux_kontext": build_flux_kontext,
    "chroma": build_chroma,
    "zimage": build_zimage,
    "ltx": build_ltx,
    "flux2": build_flux2,
    "flux2_klein": build_flux2_klein,
    "hunyuanvideo15": build_hunyuanvideo15,
    # The guider is a pipeline component: the original CFG formulation with rescale, and guidance off (one forward,
    # the rescale still applied by the guider).
    "hunyuanvideo15_rescale": lambda: build_hunyuanvideo15(guider=ClassifierFreeGuidance(
        guidance_scale=4.0, guidance_rescale=0.7, use_original_formulation=True)),
    "hunyuanvideo15_nocfg": lambda: build_hunyuanvideo15(guider=ClassifierFreeGuidance(guidance_scale=1.0,
                                                                                        guidance_rescale=0.5)),
}

# (builder, call, expected NFE = samples * steps * passes, token layout (frames, rows, cols))
CASES = [
    ("qwenimage", dict(prompt="a red circle", negative_prompt="a dog", true_cfg_scale=3.0, height=64, width=96,
                       num_inference_steps=3), 1 * 3 * 2, (1, 8, 12)),
    ("qwenimage", dict(prompt=["a blue square", "two cats"], height=64, width=64, num_inference_steps=2,
                       num_images_per_prompt=2, sigmas=[1.0, 0.5]), 4 * 2 * 1, (1, 8, 8)),
    ("flux_kontext", dict(image=image(), prompt="a cat", height=64, width=64, num_inference_steps=3,
                          max_area=64 * 64, _auto_resize=False), 1 * 3 * 1, (1, 4, 4)),
    ("flux_kontext", dict(image=image(seed=1), prompt=["a dog", "the moon"], negative_prompt=["a cat", "a dog"],
                          true_cfg_scale=2.0, height=64, width=96, num_inference_steps=2, max_area=64 * 96,
                          _auto_resize=False), 2 * 2 * 2, (1, 4, 6)),
    ("flux_kontext", dict(prompt="a red circle", height=64, width=64, num_inference_steps=2, max_area=64 * 64),
     1 * 2 * 1, (1, 4, 4)),  # no image: text-to-image, as the pipeline
    ("chroma", dict(prompt="a photo of a cat", negative_prompt="a dog", height=64, width=64, num_inference_steps=3,
                    guidance_scale=4.0), 1 * 3 * 2, (1, 4, 4)),
    ("chroma", dict(prompt=["a red circle", "two squares"], height=64, width=96, num_inference_steps=2,
                    guidance_scale=1.0, num_images_per_prompt=2), 4 * 2 * 1, (1, 4, 6)),
    ("zimage", dict(prompt="a red circle", negative_prompt="a dog", guidance_scale=3.0, height=64, width=64,
                    num_inference_steps=3), 1 * 3 * 2, (1, 4, 4)),
    ("zimage", dict(prompt=["a red circle", "two cats"], guidance_scale=0.0, height=64, width=96,
                    num_inference_steps=2, num_images_per_prompt=2, sigmas=[1.0, 0.5]), 4 * 2 * 1, (1, 4, 6)),
    ("zimage", dict(prompt=["a blue square", "the moon"], guidance_scale=4.0, cfg_normalization=1.2, height=64,
                    width=64, num_inference_steps=2), 2 * 2 * 2, (1, 4, 4)),
    ("ltx", dict(prompt="a red circle", negative_prompt="a dog", guidance_scale=3.0, height=32, width=32,
                 num_frames=9, num_inference_steps=3, decode_timestep=0.05, decode_noise_scale=0.025),
     1 * 3 * 2, (3, 8, 8)),
    ("ltx", dict(prompt=["a red circle", "two cats"], guidance_scale=4.0, guidance_rescale=0.7, height=32, width=64,
                 num_frames=5, num_inference_steps=2), 2 * 2 * 2, (2, 8, 16)),
    ("flux2", dict(prompt="a red circle", guidance_scale=3.0, height=64, width=64, num_inference_steps=3,
                   text_encoder_out_layers=(1, 2, 3)), 1 * 3 * 1, (1, 4, 4)),
    ("flux2", dict(prompt=["a red circle", "two cats"], guidance_scale=2.0, height=64, width=96,
                   num_inference_steps=2, num_images_per_prompt=2, text_encoder_out_layers=(1, 2, 3)),
     4 * 2 * 1, (1, 4, 6)),
    ("flux2_klein", dict(prompt="a red circle", guidance_scale=3.0, height=64, width=64, num_inference_steps=3,
                         text_encoder_out_layers=(1, 2, 3)), 1 * 3 * 2, (1, 4, 4)),
    ("flux2_klein", dict(prompt=["a blue square", "two cats"], guidance_scale=1.0, height=64, width=96,
                         num_inference_steps=2, num_images_per_prompt=2, text_encoder_out_layers=(1, 2, 3)),
     4 * 2 * 1, (1, 4, 6)),
    ("hunyuanvideo15", dict(prompt='a sign that says "cat"', negative_prompt="a dog", height=32, width=32,
                            num_frames=5, num_inference_steps=3), 1 * 3 * 2, (3, 16, 16)),  # ByT5 reads "cat"
    # Latents: the pipeline's VAE decodes one video only (its mid-block attention mask fails on a batch).
    ("hunyuanvideo15", dict(prompt=["a cat", 'the "moon" at night'], height=32, width=48, num_frames=5,
                            num_inference_steps=2, output_type="latent"), 2 * 2 * 2, (3, 16, 24)),
    ("hunyuanvideo15_rescale", dict(prompt="a red circle", negative_prompt="a dog", height=32, width=48,
                                    num_frames=3, num_inference_steps=2, sigmas=[1.0, 0.5]), 1 * 2 * 2, (2, 16, 24)),
    ("hunyuanvideo15_nocfg", dict(prompt="two cats", height=32, width=32, num_frames=5, num_inference_steps=2),
     1 * 2 * 1, (3, 16, 16)),
]

COMMON = dict(max_sequence_length=16, output_type="np")


def with_common(pipe, **kw):
    """kw over the COMMON arguments the pipeline takes (HunyuanVideo 1.5 has no max_sequence_length)."""
    params = inspect.signature(pipe.__call__).parameters
    return {**{k: v for k, v in COMMON.items() if k in params}, **kw}


class ForwardCounter:
    """Samples through the transformer: the batch of hidden_states (Z-Image: the length of its list of latents)."""

    def __init__(self, pipe):
        self.samples = 0
        self.handle = pipe.transformer.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.samples += len(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def pipes():
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = BUILDERS[name]()
        return built[name]

    return get


@pytest.mark.parametrize("name, kw, nfe, layout", CASES, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(CASES)])
def test_adapter_reproduces_pipeline(pipes, name, kw, nfe, layout):
    pipe = pipes(name)
    call = with_common(pipe, **kw)
    counter = ForwardCounter(pipe)
    try:
        # A copy: Z-Image's pipeline writes its chat template into a prompt list in place.
        ref = pixels(pipe(**copy.deepcopy(call), generator=torch.Generator().manual_seed(0)))
        pipe_nfe, counter.samples = counter.samples, 0
        timesteps = pipe.scheduler.timesteps.clone()
        adapter = adapter_class(pipe)(pipe)
        prep, out = run_adapter(adapter, {**call, "generator": torch.Generator().manual_seed(0)})
    finally:
        counter.remove()
    out = pixels(out)
    assert out.shape == ref.shape and np.isfinite(ref).all() and ref.std() > 0
    assert np.abs(out - ref).max() <= 1e-5
    assert adapter.nfe == counter.samples == pipe_nfe == nfe
    assert adapter.token_layout(prep.x) == TokenLayout(*layout)
    assert torch.equal(pipe.scheduler.timesteps, timesteps)  # the pipeline's scheduler was not touched


# One prompt with guidance on, per family.
EXPAND = {
    "qwenimage": dict(prompt="a cat", negative_prompt="a dog", true_cfg_scale=3.0),
    "flux_kontext": dict(image=image(), prompt="a cat", negative_prompt="a dog", true_cfg_scale=2.0,
                         max_area=64 * 64, _auto_resize=False),
    "chroma": dict(prompt="a cat", negative_prompt="a dog", guidance_scale=3.0),
    "zimage": dict(prompt="a cat", negative_prompt="a dog", guidance_scale=3.0),
    "ltx": dict(prompt="a cat", negative_prompt="a dog", guidance_scale=3.0, height=32, width=32, num_frames=5),
    "flux2_klein": dict(prompt="a cat", guidance_scale=3.0, text_encoder_out_layers=(1, 2, 3)),
    "hunyuanvideo15": dict(prompt="a cat", negative_prompt="a dog", height=32, width=32, num_frames=5),
}


@pytest.mark.parametrize("name", EXPAND)
def test_expand_cond_equals_one_sample_at_a_time(pipes, name):
    """Search's particles of one prompt: the shared conditioning repeated per particle."""
    adapter = adapter_class(pipes(name))(pipes(name))
    with torch.no_grad():
        call = with_common(pipes(name), **{"height": 64, "width": 64, **EXPAND[name]}, num_inference_steps=2,
                           generator=torch.Generator().manual_seed(3))
        prep = adapter.prepare(**call)
        x = torch.cat([prep.x, -prep.x, 0.5 * prep.x])
        cond = adapter.expand_cond(prep.cond, 3)
        v = adapter.velocity(x, prep.grid.sigmas[0], cond)
        v_one = torch.cat([adapter.velocity(x[i:i + 1], prep.grid.sigmas[0], prep.cond) for i in range(3)])
    torch.testing.assert_close(v, v_one, rtol=1e-5, atol=1e-5)
    assert cond.batch == 3 and adapter.nfe == 2 * 3 * 2


def test_klein_latent_output_is_the_vaes_latents(pipes):
    """[klein]'s pipeline unpacks and un-normalises before its output_type check: so does the adapter."""
    pipe = pipes("flux2_klein")
    call = dict(prompt="a cat", guidance_scale=3.0, height=64, width=96, num_inference_steps=2, max_sequence_length=16,
                text_encoder_out_layers=(1, 2, 3), output_type="latent", return_dict=False)
    ref = pipe(**call, generator=torch.Generator().manual_seed(1))[0]
    _, out = run_adapter(adapter_class(pipe)(pipe), {**call, "generator": torch.Generator().manual_seed(1)})
    assert out[0].shape == ref.shape == (1, 4, 8, 12)
    torch.testing.assert_close(out[0], ref, rtol=0, atol=1e-6)


class Brightness:
    """A pixel reward (mean intensity): enough to drive a search through each family's decode."""

    reads = "pixels"

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return samples.float().flatten(1).mean(1)


OPTION_CALLS = {
    "qwenimage": dict(height=64, width=64),
    "flux_kontext": dict(image=image(), height=64, width=64, max_area=64 * 64, _auto_resize=False),
    "chroma": dict(height=64, width=64),
    "zimage": dict(height=64, width=64),
    "ltx": dict(height=32, width=32, num_frames=5),
    "flux2_klein": dict(height=64, width=64, text_encoder_out_layers=(1, 2, 3)),
    "hunyuanvideo15": dict(height=32, width=32, num_frames=5),
}


@pytest.mark.parametrize("name", OPTION_CALLS)
def test_search_and_hsa_run_through_the_contract(pipes, name):
    """search= and steps="hsa" need nothing of a family but the Denoiser contract: each runs, within its budget."""
    from accel import accelerate_pipeline

    fast = accelerate_pipeline(pipes(name))
    call = with_common(pipes(name), prompt="a cat", **OPTION_CALLS[name])
    out = fast(**call, num_inference_steps=2, generator=torch.Generator().manual_seed(0), search="bon",
               reward=Brightness(), nfe=8)
    assert out.stats.path == "accel" and 0 < out.stats.nfe <= 8 and np.isfinite(pixels(out)).all()
    out = fast(**call, num_inference_steps=4, generator=torch.Generator().manual_seed(0), steps="hsa", runtime=0.5)
    assert out.stats.extra["steps"] == "hsa" and np.isfinite(pixels(out)).all()


def test_hunyuanvideo15_other_guiders_run_the_pipeline():
    """A CFG window (here: CFG on the first step only) changes the forwards per step: the pipeline's own __call__
    runs, with its forwards counted; search, which needs the adapter, says why it cannot."""
    from accel import accelerate_pipeline

    def windowed():  # fresh each call: the pipeline skips the negative prompt on a guider's stale window state
        return ClassifierFreeGuidance(guidance_scale=4.0, stop=0.5)

    pipe = build_hunyuanvideo15(guider=windowed())
    call = dict(prompt="a cat", height=32, width=32, num_frames=5, num_inference_steps=2)
    ref = pixels(pipe(**call, generator=torch.Generator().manual_seed(0)))
    pipe.guider = windowed()
    fast = accelerate_pipeline(pipe)
    out = fast(**call, generator=torch.Generator().manual_seed(0))
    assert out.stats.path == "pipeline" and out.stats.nfe == 2 + 1 and np.array_equal(pixels(out), ref)
    with pytest.raises(ValueError, match="ClassifierFreeGuidance guider with start=0 and stop=1 only.*stop=0.5"):
        fast(**call, search="bon", reward=Brightness(), nfe=8)


def test_fused_kernels_on_a_family_without_them_names_the_families_with_them(pipes):
    from accel import accelerate_pipeline
    from accel.config import AccelConfig

    pipe = pipes("qwenimage")
    with pytest.raises(ValueError, match="fused_kernels does not apply to QwenImagePipeline .*it does to: .*"
                                         "FluxPipeline.*WanPipeline"):
        accelerate_pipeline(pipe, AccelConfig(fused_kernels=True))
    assert not pipe.transformer._forward_pre_hooks and not pipe.transformer._forward_hooks  # nothing installed


def test_pipeline_path_counts_each_sample_of_a_list_batch(pipes):
    """Z-Image's transformer takes a list of latents, one per sample (here 2 prompts x CFG): a callback runs the
    pipeline's own __call__, whose forwards are counted per sample, as the adapter counts them."""
    from accel import accelerate_pipeline

    pipe = pipes("zimage")
    call = with_common(pipe, prompt=["a red circle", "two cats"], guidance_scale=3.0, height=64, width=64,
                       num_inference_steps=2)
    counter = ForwardCounter(pipe)
    try:
        out = accelerate_pipeline(pipe)(**call, callback_on_step_end=lambda p, i, t, kw: kw)
    finally:
        counter.remove()
    assert out.stats.path == "pipeline" and out.stats.nfe == counter.samples == 2 * 2 * 2


@pytest.mark.parametrize("name", ["ltx", "hunyuanvideo15"])
def test_video_output_types(pipes, name):
    """'pil' is the pipeline's own (a list of PIL frames per video): the adapter gives the same frames. An output
    type no video pipeline produces fails before any forward, naming the allowed ones (the pipeline fails only
    after decoding)."""
    from accel import accelerate_pipeline

    pipe = pipes(name)
    call = with_common(pipe, prompt="a cat", height=32, width=32, num_frames=5, num_inference_steps=2,
                       output_type="pil")
    ref = pipe(**call, generator=torch.Generator().manual_seed(0)).frames
    out = accelerate_pipeline(pipe)(**call, generator=torch.Generator().manual_seed(0))
    assert out.stats.path == "accel" and isinstance(out.frames[0][0], Image.Image)
    assert len(out.frames[0]) == len(ref[0]) == 5
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.frames[0], ref[0]))
    counter = ForwardCounter(pipe)
    try:
        with pytest.raises(ValueError, match="returns videos: output_type must be one of np, pt, pil, latent .*"
                                             "got 'png'"):
            accelerate_pipeline(pipe)(**(call | {"output_type": "png"}))
    finally:
        counter.remove()
    assert counter.samples == 0


def test_unsupported_pipeline_lists_the_families():
    from diffusers import WanImageToVideoPipeline

    from accel import accelerate_pipeline

    with pytest.raises(ValueError, match="unsupported pipeline WanImageToVideoPipeline; supported: .*"
                                         "HunyuanVideo15Pipeline.*WanPipeline.*derived from one"):
        accelerate_pipeline(WanImageToVideoPipeline.__new__(WanImageToVideoPipeline))


def test_registry_matches_derived_classes_and_names_the_families():
    from diffusers import QwenImagePipeline

    from accel.pipelines.registry import families_with, require_option, supported_families
    from accel.pipelines.qwenimage import QwenImageDenoiser

    class CommunityQwenImage(QwenImagePipeline):  # a fork: matched through its base class
        pass

    fork = CommunityQwenImage.__new__(CommunityQwenImage)
    assert adapter_class(fork) is QwenImageDenoiser
    with pytest.raises(ValueError, match="unsupported pipeline object; supported: .*LTXPipeline.*ZImagePipeline"):
        adapter_class(object())
    with pytest.raises(ValueError, match="fused_kernels does not apply to QwenImagePipeline .*it does to: .*"
                                         "FluxPipeline"):
        require_option(fork, "fused_kernels")
    assert "WanPipeline" in families_with("hsa_cache") and "LTXPipeline" not in families_with("hsa_cache")
    assert set(families_with("search")) == set(supported_families())
    with pytest.raises(ValueError, match="allowed: search"):
        families_with("bogus")


def test_info_lists_every_family():
    from rich.console import Console

    from accel.cli.main import families_table
    from accel.pipelines.registry import ADAPTERS

    console = Console(width=200, record=True)
    console.print(families_table())
    text = console.export_text()
    assert all(name in text for name in ADAPTERS) and "fused_kernels" in text

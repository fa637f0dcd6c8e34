"""RAISE through the Denoiser contract on other families (tiny seeded Flux and Wan): rewritten prompts and SDEdit
edits run, the budget is the adapter's own NFE count."""

import pytest
import torch

from accel import accelerate_pipeline
from accel.pipelines.tiny import build_flux, build_wan
from accel.search.raise_agents import Analysis, Rewrite, Verdict

from conftest import MeanPixel


class Rephrase:
    """An agent of the interface for any prompt: never satisfied, rewrites by appending words the tiny tokenizers
    know."""

    def analyze(self, prompt, image, verdict):
        return Analysis(["a cat"], ["is there a cat?"], [0])

    def rewrite(self, prompt, analysis, editing):
        return Rewrite(prompt + " at night", [prompt + " on the moon", prompt] if editing else [])

    def verify(self, image, analysis):
        return Verdict([0.0], False)


class MeanFrames(MeanPixel):
    """Mean brightness of video frames (B, F, 3, H, W)."""

    def score(self, samples, prompts):
        return samples.flatten(1).mean(1)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_raise_on_other_families(family):
    if family == "flux":
        pipe = accelerate_pipeline(build_flux())
        call = dict(height=64, width=64, guidance_scale=3.5)
        reward, per_sample = MeanPixel(), 2  # 2 steps, guidance embedded: 1 NFE per step
    else:
        pipe = accelerate_pipeline(build_wan())
        call = dict(height=32, width=32, num_frames=5, guidance_scale=3.0)
        reward, per_sample = MeanFrames(), 4  # 2 steps x CFG
    budget = 4 * 2 * per_sample  # 4 rounds of 2 candidates
    out = pipe("a photo of a cat", num_inference_steps=2, refine="raise:population=2:edit_strength=0.5",
               nfe=budget, agent=Rephrase(), reward=reward, generator=torch.Generator().manual_seed(0),
               output_type="pt", **call)
    trace = out.stats.extra["traces"][0]
    assert out.stats.nfe == trace.nfe <= budget and out.stats.extra["rounds"] == 4
    kinds = [(r["resample"], r["rewrite"], r["edit"]) for r in trace.steps]
    assert kinds == [(1, 1, 0), (1, 1, 0), (0, 1, 1), (0, 1, 1)]
    assert "a photo of a cat on the moon" in trace.steps[2]["prompts"]
    # The edit re-noises to sigma <= 0.5 of a 2-step grid: it pays one step, the fresh sample two.
    assert trace.steps[2]["nfe"] - trace.steps[1]["nfe"] == 3 * per_sample // 2

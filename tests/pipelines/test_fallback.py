"""accelerate_pipeline on calls the adapter path cannot take: the pipeline's own __call__, NFE still exact."""

import numpy as np
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from accel import accelerate_pipeline
from accel.pipelines.tiny import build_flux, build_wan


def gen():
    return torch.Generator().manual_seed(0)


def test_callback_runs_the_pipeline_with_the_same_result():
    pipe = build_flux()
    seen = []

    def callback(p, i, t, kw):
        seen.append(i)
        return kw

    kw = dict(prompt="a cat", height=64, width=64, num_inference_steps=3, output_type="np")
    fast = accelerate_pipeline(pipe)
    out = fast(**kw, generator=gen(), callback_on_step_end=callback)
    assert seen == [0, 1, 2] and out.stats.path == "pipeline" and out.stats.nfe == 3
    assert np.abs(out.images - fast(**kw, generator=gen()).images).max() <= 1e-5
    with pytest.raises(ValueError, match="sampling path"):
        fast(**kw, generator=gen(), callback_on_step_end=callback, sampler="heun")


def test_multistep_scheduler_falls_back_and_counts_both_experts():
    pipe = build_wan(boundary_ratio=0.875)
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    out = accelerate_pipeline(pipe)(prompt="a cat", height=32, width=32, num_frames=5, num_inference_steps=3,
                                     generator=gen(), output_type="np")
    ref = pipe(prompt="a cat", height=32, width=32, num_frames=5, num_inference_steps=3, generator=gen(),
               output_type="np")
    assert out.stats.path == "pipeline" and out.stats.nfe == 3 * 2  # CFG: two forwards a step, over both experts
    assert np.abs(out.frames - ref.frames).max() <= 1e-5

import pytest
import torch

from accel.pipelines.shapes import ShapesDenoiser, build_shapes_pipeline
from accel.testing import jitter_

PROMPT = "a photo of a red circle"


@pytest.fixture(scope="package")
def tiny_pipe():
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(pipe.transformer, seed=1)  # the zero-initialised output conv would make every sample the same
    return pipe


@pytest.fixture(scope="package")
def denoiser(tiny_pipe):
    return ShapesDenoiser(tiny_pipe)


@pytest.fixture(scope="package")
def prepared(denoiser):
    with torch.no_grad():
        return denoiser.prepare(prompt=PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(0))


class MeanPixel:
    """A cheap smooth pixel reward: the mean brightness (the shapes checker is flat on random models)."""

    reads = "pixels"

    def score(self, samples, prompts):
        return samples.mean(dim=(1, 2, 3))

"""One process of the scale-out test (tests/search/test_distributed.py): run a few searches on a tiny shapes
model, with the particles spread over the torch.distributed group when WORLD_SIZE > 1, and save the results."""

import os
import sys

import torch

torch.set_num_threads(1)

from accel.pipelines.shapes import ShapesDenoiser, build_shapes_pipeline  # noqa: E402
from accel.search import search  # noqa: E402
from accel.testing import jitter_  # noqa: E402

CASES = [("bon", 24), ("smc", 30), ("epf", 30), ("rbf", 30), ("beam", 30), ("svdd", 30), ("sop", 30)]


class MeanPixel:
    reads = "pixels"

    def score(self, samples, prompts):
        return samples.mean(dim=(1, 2, 3))


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("gloo")
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(pipe.transformer, seed=1)
    denoiser = ShapesDenoiser(pipe)
    with torch.no_grad():
        prepared = denoiser.prepare(prompt="a photo of a red circle", num_inference_steps=3,
                                    generator=torch.Generator().manual_seed(0))
    results = {}
    for name, nfe in CASES:
        start = denoiser.nfe
        r = search(denoiser, prepared, "a photo of a red circle", MeanPixel(), name, nfe,
                   torch.Generator().manual_seed(7), chunk_size=3, distributed=world > 1)
        results[name] = {"samples": r.samples, "rewards": r.rewards, "nfe": r.trace.nfe,
                         "local_nfe": denoiser.nfe - start, "best": r.trace.rewards}
    rank = torch.distributed.get_rank() if world > 1 else 0
    torch.save(results, f"{out}.{rank}")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

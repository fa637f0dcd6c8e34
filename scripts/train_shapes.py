"""Train the built-in shapes text-to-image model (assets/shapes-t2i) from scratch.

Scenes are drawn fresh every step from the shapes world (accel.shapes); the loop (rectified flow, 10% caption
dropout, AdamW, EMA, the --minutes budget) is scripts/flow_training.py's.

    OMP_WAIT_POLICY=PASSIVE python scripts/train_shapes.py --minutes 60 --out assets/shapes-t2i
"""

from __future__ import annotations

import numpy as np
from flow_training import train, training_parser

from accel.pipelines.shapes import ShapesPipeline, build_shapes_pipeline
from accel.shapes import random_metadata, render, scene_for


def sample(rng, n: int):
    metas = [random_metadata(rng) for _ in range(n)]
    return np.stack([render(scene_for(m, rng)) for m in metas]), [m["prompt"] for m in metas]


def main(argv=None):
    ap = training_parser(__doc__.splitlines()[0], out="assets/shapes-t2i", minutes=60.0, batch_size=64, ema=0.999)
    args = ap.parse_args(argv)
    train(build_shapes_pipeline(seed=args.seed), ShapesPipeline, sample, args)


if __name__ == "__main__":
    main()

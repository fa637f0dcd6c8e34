"""Train the built-in text-to-video model (assets/shapes-t2v) from scratch on moving shapes (accel.shapes.video).

Clips are drawn fresh every step; the loop (rectified flow, 10% caption dropout, AdamW, EMA, the --minutes budget)
is scripts/flow_training.py's.

    OMP_WAIT_POLICY=PASSIVE python scripts/train_shapes_video.py --minutes 40 --out assets/shapes-t2v
"""

from __future__ import annotations

import numpy as np
from flow_training import train, training_parser

from accel.pipelines.shapes_video import ShapesVideoPipeline, build_shapes_video_pipeline
from accel.shapes.video import random_video_metadata, render_video, video_scene_for


def sample(rng, n: int):
    metas = [random_video_metadata(rng) for _ in range(n)]
    return np.stack([render_video(video_scene_for(m, rng)) for m in metas]), [m["prompt"] for m in metas]


def main(argv=None):
    ap = training_parser(__doc__.splitlines()[0], out="assets/shapes-t2v", minutes=40.0, batch_size=32, ema=0.998)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--patch-frames", type=int, default=1)
    args = ap.parse_args(argv)
    pipe = build_shapes_video_pipeline(width=args.width, num_layers=args.layers, patch_frames=args.patch_frames,
                                       seed=args.seed)
    train(pipe, ShapesVideoPipeline, sample, args)


if __name__ == "__main__":
    main()

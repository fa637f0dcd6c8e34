"""scripts/train_shapes_moe.py for a few steps on a tiny model: it trains through the expert-choice engine, a
session split at a checkpoint resumes bit for bit, and the result is a pipeline folder that loads and samples at
any capacity. No model is trained here (issue #19 item 4: the real run needs hours of CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import train_shapes_moe  # noqa: E402

from accel import accelerate_pipeline  # noqa: E402
from accel.moe import engine_of  # noqa: E402
from accel.pipelines.shapes import ShapesPipeline  # noqa: E402
from accel.pipelines.shapes_moe import ShapesMoETransformer2DModel  # noqa: E402

TINY = ["--steps", "4", "--batch-size", "3", "--width", "32", "--stem-channels", "8", "16", "--text-hidden", "32",
        "--text-layers", "1", "--num-experts", "4", "--moe-intermediate-dim", "16", "--threads", "1",
        "--capacity-factors", "0", "2", "1"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    whole = train_shapes_moe.main([*TINY, "--out", str(tmp_path / "whole")])
    assert train_shapes_moe.main([*TINY, "--out", str(tmp_path / "split"), "--session-steps", "2"]) is None
    assert json.loads((tmp_path / "split" / "checkpoints" / "latest.json").read_text())["step"] == 2
    with pytest.raises(ValueError, match="--coactivation: 2.0 there, 1.0 now"):  # another recipe is not a resume
        train_shapes_moe.main([*TINY, "--out", str(tmp_path / "split"), "--coactivation", "1"])
    split = train_shapes_moe.main([*TINY, "--out", str(tmp_path / "split"), "--minutes", "60"])  # session options
    a, b = weights(whole), weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((split / "training.json").read_text())["steps"] == 4

    pipe = ShapesPipeline.from_pretrained(split)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, ShapesMoETransformer2DModel)
    assert engine_of(pipe.transformer) is None  # the training hooks are not saved with the model
    fast = accelerate_pipeline(pipe)
    for capacity in (1.0, 0.5):
        out = fast("a photo of a red circle", num_inference_steps=2, output_type="np", capacity=capacity,
                   generator=torch.Generator().manual_seed(0))
        assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    assert out.stats.extra["routed_flops_fraction"] < 1


def test_dense_baseline_trains_without_the_engine(tmp_path):
    out = train_shapes_moe.main([*TINY, "--steps", "2", "--out", str(tmp_path / "dense"), "--dense"])
    pipe = ShapesPipeline.from_pretrained(out)
    args = train_shapes_moe.parser().parse_args(TINY)
    assert not any(p for p in pipe.transformer.config.capacity_factors)
    assert pipe.transformer.config.mlp_ratio == train_shapes_moe.dense_mlp_ratio(args)

"""The scripts that train the built-in models run end to end (two steps) and write loadable pipeline folders."""

import json
import queue
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import flow_training  # noqa: E402
import train_shapes  # noqa: E402
import train_shapes_video  # noqa: E402

from accel.pipelines.shapes import ShapesPipeline  # noqa: E402
from accel.pipelines.shapes_video import ShapesVideoPipeline  # noqa: E402


def test_batches_are_channels_first_in_unit_range():
    q = queue.Queue(maxsize=1)
    rng = np.random.default_rng(0)
    arrays, prompts = train_shapes_video.sample(rng, 2)
    assert arrays.dtype == np.uint8 and arrays.shape[0] == 2 and arrays.shape[-1] == 3 and len(prompts) == 2
    threading.Thread(target=flow_training._batches, args=(train_shapes.sample, 3, 0, 0.0, q), daemon=True).start()
    x0, captions = q.get(timeout=30)
    assert x0.shape[:2] == (3, 3) and x0.min() >= -1 and x0.max() <= 1 and all(captions)


@pytest.mark.parametrize("script, cls, extra", [
    (train_shapes, ShapesPipeline, []),
    (train_shapes_video, ShapesVideoPipeline, ["--width", "32", "--layers", "1", "--patch-frames", "2"]),
])
def test_training_script_writes_a_pipeline_that_resumes(tmp_path, script, cls, extra):
    out = tmp_path / "model"
    common = ["--steps", "2", "--batch-size", "2", "--threads", "1", "--out", str(out)]
    script.main(common + extra)
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 2 and info["final"] and np.isfinite(info["final_loss"])
    first = cls.from_pretrained(out, use_safetensors=True)
    resumed = tmp_path / "resumed"
    script.main(["--steps", "2", "--batch-size", "2", "--threads", "1", "--out", str(resumed), "--init", str(out),
                 "--lr", "0"] + extra)
    second = cls.from_pretrained(resumed, use_safetensors=True)
    # lr 0: the resumed run starts from and keeps the first run's weights
    for a, b in zip(first.transformer.state_dict().values(), second.transformer.state_dict().values()):
        torch.testing.assert_close(a, b)

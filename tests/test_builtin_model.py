"""The shipped model: loads offline from safetensors, and draws what simple prompts ask for."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from accel import accelerate_pipeline, builtin_model_path, load_pipeline
from accel.cli.main import app
from accel.shapes import check, make_metadata


def test_folder_is_safetensors_only():
    files = [p.name for p in builtin_model_path().rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files)


def _singles_and_pairs(pipe, **call) -> tuple[list[bool], int]:
    """The checker's verdicts on 6 single-object and 6 two-object prompts (fixed by a seed) and the NFE spent."""
    rng = np.random.default_rng(11)
    metas = [make_metadata(tag, rng) for tag in ("single_object", "two_object") for _ in range(6)]
    out = pipe([m["prompt"] for m in metas], output_type="np", **call)
    return [check((img * 255).round().astype(np.uint8), m).correct for img, m in zip(out.images, metas)], out.stats.nfe


@pytest.mark.parametrize("name", ["shapes", "shapes-moe"])
def test_draws_single_objects_and_pairs(name):
    # Recorded accuracy on these tags is 1.0 over 80 prompts (assets/shapes-t2i/README.md); 12 samples at a 0.75
    # floor tolerate sampling noise and still fail for a broken model or loader (which scores ~0). The MoE model
    # matches the dense one overall (docs/moe.md).
    correct, nfe = _singles_and_pairs(accelerate_pipeline(load_pipeline(name)), num_inference_steps=25,
                                      generator=[torch.Generator().manual_seed(i) for i in range(12)])
    assert np.mean(correct) >= 0.75
    assert nfe == len(correct) * 25 * 2


def test_quick_start_generate(tmp_path):
    out = tmp_path / "shapes.png"
    r = CliRunner().invoke(app, ["generate", "a photo of a circle and a triangle", "--steps", "4",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.stat().st_size > 0


def test_builtin_video_model_loads_and_draws_the_prompted_colours():
    """The shipped video model (undertrained: checker accuracy 0.25-0.29, assets/shapes-t2v/README.md) puts the
    prompted colour in most frames and passes the video checker on some one-object clips (two of these six when it
    was shipped); an untrained or mis-loaded model (noise or black frames) does neither."""
    from accel.shapes.checker import detect
    from accel.shapes.video import check_video, video_prompt_set

    folder = builtin_model_path("shapes-video")
    files = [p.name for p in folder.rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for f in files)
    pipe = accelerate_pipeline(load_pipeline("shapes-video"))
    metas = [m for m in video_prompt_set(12, 3) if m["tag"] == "one"]
    out = pipe([m["prompt"] for m in metas], num_inference_steps=25, output_type="np",
               generator=[torch.Generator().manual_seed(i) for i in range(len(metas))])
    assert out.frames.shape == (len(metas), 8, 32, 32, 3)
    hits = [any(d.color == m["objects"][0]["color"] for d in detect((f * 255).round().astype(np.uint8)))
            for clip, m in zip(out.frames, metas) for f in clip]
    assert np.mean(hits) >= 0.6
    checks = [check_video((clip * 255).round().astype(np.uint8), m) for clip, m in zip(out.frames, metas)]
    assert sum(c.correct for c in checks) >= 1 and np.mean([c.frame_accuracy for c in checks]) >= 0.5


def test_builtin_moe_model_loads_by_name_in_a_fresh_process():
    """The MoE transformer's class lives in accel.pipelines.shapes_moe, which diffusers does not import by itself:
    load_pipeline imports accel's own component modules a folder names (a fresh process has none imported)."""
    import subprocess
    import sys

    code = ("from accel.models import load_pipeline; p = load_pipeline('shapes-moe'); "
            "print(type(p.transformer).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ShapesMoETransformer2DModel", out.stderr[-2000:]


def test_folders_naming_foreign_component_modules_are_refused(tmp_path):
    import json

    for library, message in (("accel.rewards.verifier", "from accel.pipelines only"),
                             ("accel.pipelines.nope", "does not have")):
        folder = tmp_path / library
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "ShapesPipeline",
                                                              "transformer": [library, "X"]}))
        with pytest.raises(ValueError, match=message):
            load_pipeline(str(folder))


def test_shipped_students_load_by_name_and_draw_single_objects_and_pairs():
    """The shipped SC-DMD students sample without CFG: shapes-4step (assets/shapes-t2i-4step, trained for 4 steps
    alone) in 4 model calls, shapes-2step (assets/shapes-t2i-2step, trained for 4 and 2 at once) in 2 or 4. On these
    12 prompts they drew 12 (4step) and 11 / 11 (2step at 4 / 2 steps) correct when shipped (held-out overall
    accuracy: docs/fewstep.md); a broken student or loader scores about 0."""
    from accel.models import builtin_students

    assert builtin_students("shapes") == ["shapes-4step", "shapes-2step"]
    for name, steps, floor in (("shapes-4step", 4, 0.75), ("shapes-2step", 4, 0.75), ("shapes-2step", 2, 0.5)):
        pipe = accelerate_pipeline(load_pipeline(name))
        correct, nfe = _singles_and_pairs(pipe, sampler="fewstep", num_inference_steps=steps,
                                          generator=torch.Generator().manual_seed(0))
        assert np.mean(correct) >= floor, (name, steps, correct)
        assert nfe == len(correct) * steps  # one forward a step, no CFG


def test_shipped_video_student_draws_the_prompted_colours_in_4_calls():
    """shapes-video-4step (assets/shapes-t2v-4step, SC-DMD of shapes-video for 4 steps) samples a clip in 4 model
    calls without CFG. On these six one-object prompts it put the prompted colour in every frame and passed the
    video checker on three clips when shipped (held-out accuracy: docs/fewstep.md); a broken student scores ~0."""
    from accel.models import builtin_students

    assert builtin_students("shapes-video") == ["shapes-video-4step", "shapes-video-4step-ar"]
    pipe = accelerate_pipeline(load_pipeline("shapes-video-4step"))
    metas, out, hits, checks = _one_object_clips(pipe, 4)
    assert out.frames.shape == (len(metas), 8, 32, 32, 3) and out.stats.nfe == 4 * len(metas)
    assert np.mean(hits) >= 0.8
    assert sum(c.correct for c in checks) >= 1 and np.mean([c.frame_accuracy for c in checks]) >= 0.6
    with pytest.raises(ValueError, match="trained for"):
        pipe(metas[0]["prompt"], sampler="fewstep", num_inference_steps=2)


def test_shipped_ar_video_student_streams_the_prompted_colours():
    """shapes-video-4step-ar (assets/shapes-t2v-4step-ar, the chunk-causal student) streams a clip 2 frames at a
    time: 4 steps per chunk and a cache commit for each of the first 3 of 4 chunks, no CFG. On these six one-object
    prompts it put the prompted colour in every frame and passed the video checker on two clips when shipped, at
    4 and at 2 steps (held-out accuracy and seams: docs/fewstep.md); a broken student scores ~0."""
    pipe = accelerate_pipeline(load_pipeline("shapes-video-4step-ar"))
    for steps in (4, 2):
        metas, out, hits, checks = _one_object_clips(pipe, steps)
        assert out.frames.shape == (len(metas), 8, 32, 32, 3) and out.stats.extra["chunks"] == 4
        assert out.stats.nfe == pytest.approx((steps + 3 / 4) * len(metas))
        assert np.mean(hits) >= 0.8, steps
        assert sum(c.correct for c in checks) >= 1 and np.mean([c.frame_accuracy for c in checks]) >= 0.4, steps


def _one_object_clips(pipe, steps: int):
    """The six one-object prompts of video_prompt_set(12, 3) through a video student at `steps` from seed 0: their
    metadata, the output, per frame whether the prompted colour was detected, and the video checker per clip."""
    from accel.shapes.checker import detect
    from accel.shapes.video import check_video, video_prompt_set

    metas = [m for m in video_prompt_set(12, 3) if m["tag"] == "one"]
    out = pipe([m["prompt"] for m in metas], sampler="fewstep", num_inference_steps=steps, output_type="np",
               generator=torch.Generator().manual_seed(0))
    clips = [(clip * 255).round().astype(np.uint8) for clip in out.frames]
    hits = [any(d.color == m["objects"][0]["color"] for d in detect(f)) for clip, m in zip(clips, metas) for f in clip]
    return metas, out, hits, [check_video(clip, m) for clip, m in zip(clips, metas)]

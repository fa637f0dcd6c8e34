"""accel eval vbench: VBench's info format and dimensions, the <prompt>-<k>.mp4 layout and seeds, resume and
refusal, native scoring end to end on a tiny video pipeline, the vbench-package bridge, and the CLI's errors."""

import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals import vbench_scores as vs
from accel.evals.shard import Shard
from accel.evals.vbench import (DIMENSIONS, ScoringWeights, VideoSettings, evaluate_vbench, load_suite,
                                parse_dimensions, plan_scoring, vbench_table, video_name, video_seed)
from accel.pipelines.shapes_video import build_shapes_video_pipeline
from accel.testing import jitter_
from test_vbench_scores import save_tiny_clip, save_tiny_dino, save_tiny_head

# VBench's info format (vbench/VBench_full_info.json): a list of prompts with the dimensions they serve.
INFO = [
    {"prompt_en": "a red circle moving left", "dimension": ["subject_consistency", "temporal_flickering"]},
    {"prompt_en": "a blue square", "dimension": ["temporal_flickering", "background_consistency",
                                                 "aesthetic_quality"]},
    {"prompt_en": "two green triangles", "dimension": ["background_consistency", "scene"],
     "auxiliary_info": {"scene": {"scene": {"scene": "triangles"}}}},
    {"prompt_en": "a red circle, oil painting", "dimension": ["appearance_style"],
     "auxiliary_info": {"appearance_style": {"appearance_style": "oil painting"}}},
]


@pytest.fixture(scope="module")
def pipe():
    p = build_shapes_video_pipeline(width=32, num_layers=2, text_hidden=32, text_layers=1, num_frames=4,
                                    sample_size=16)
    jitter_(p.transformer, seed=3)
    return p


@pytest.fixture(scope="module")
def model_folder(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("shapes-video")
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def info_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("info") / "VBench_full_info.json"
    path.write_text(json.dumps(INFO))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_tiny_dino(root / "dino-vitb16")
    save_tiny_clip(root / "clip-vit-base-patch32")
    save_tiny_clip(root / "clip-vit-large-patch14", patch=14)
    save_tiny_head(root / "sa_0_4_vit_l_14_linear.safetensors")
    return root


def run(pipe, model_folder, info_file, out, **kw):
    settings = VideoSettings(model=model_folder, steps=kw.pop("steps", 2))
    return evaluate_vbench(settings, kw.pop("dimensions", "temporal_flickering"), out, info=info_file,
                           samples=kw.pop("samples", 2), pipe=pipe, **kw)


def frames(path):
    return vs.read_video(path).astype(int)


# ---------------------------------------------------------------------------------------------------------------------
# Input

def test_info_file_and_dimensions_are_checked(info_file, tmp_path):
    suite = load_suite(info_file)
    assert [e.prompt for e in suite] == [e["prompt_en"] for e in INFO] and suite[2].dimensions[1] == "scene"
    bad = {"expected a non-empty JSON list": {"prompt_en": "x", "dimension": []},
           "no 'prompt_en'": [{"dimension": ["scene"]}],
           "no 'dimension' list": [{"prompt_en": "x", "dimension": "scene"}],
           "unknown dimension": [{"prompt_en": "x", "dimension": ["sharpness"]}],
           "cannot name a file": [{"prompt_en": "a/b", "dimension": ["scene"]}],
           "no auxiliary_info.appearance_style": [{"prompt_en": "x", "dimension": ["appearance_style"]}]}
    for message, content in bad.items():
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            load_suite(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not VBench's info format"):
        load_suite(tmp_path / "bad.json")
    assert parse_dimensions("scene, color,scene") == ["scene", "color"]
    with pytest.raises(ValueError, match="no dimension 'sharpness'; allowed: subject_consistency"):
        parse_dimensions("scene,sharpness")
    assert len(DIMENSIONS) == 16


def test_plan_names_how_each_dimension_is_scored(weights):
    plan = plan_scoring(["temporal_flickering", "subject_consistency", "scene"], "auto", ScoringWeights())
    assert plan["temporal_flickering"]["method"] == "native"
    assert plan["subject_consistency"]["method"] == "skipped" and "--dino" in plan["subject_consistency"]["how"]
    assert "Tag2Text" in plan["scene"]["how"]
    found = ScoringWeights.find(weights)
    plan = plan_scoring(["subject_consistency", "background_consistency", "appearance_style", "aesthetic_quality"],
                        "native", found)
    assert all(p["method"] == "native" and "NOT VBench's ViT-" in p["how"] for p in plan.values())
    plan = plan_scoring(["aesthetic_quality"], "native", ScoringWeights(clip_large=found.clip_large))
    assert "sa_0_4_vit_l_14_linear.safetensors (--weights DIR or --aesthetic-head)" in plan["aesthetic_quality"]["how"]
    with pytest.raises(ValueError, match="not a DINO ViT-B/16"):
        ScoringWeights(dino=str(weights / "clip-vit-base-patch32"))
    only_package = plan_scoring(["temporal_flickering"], "vbench", found)["temporal_flickering"]
    assert only_package == {"method": "skipped", "how": "the vbench package is not installed"}
    with pytest.raises(ValueError, match="allowed: auto, native, vbench"):
        plan_scoring(["scene"], "official", ScoringWeights())


# ---------------------------------------------------------------------------------------------------------------------
# Layout, seeds, resume

def test_layout_seeds_and_batch_independence(pipe, model_folder, info_file, tmp_path):
    result = run(pipe, model_folder, info_file, tmp_path / "a", batch_size=3)
    names = sorted(p.name for p in (tmp_path / "a" / "videos").iterdir())
    prompts = ["a red circle moving left", "a blue square"]  # the temporal_flickering entries
    assert names == sorted(video_name(p, k) for p in prompts for k in range(2))
    assert result["seeds"] == {video_name(p, k): video_seed(0, p, k) for p in prompts for k in range(2)}
    assert len(set(result["seeds"].values())) == 4
    assert json.loads((tmp_path / "a" / "run.json").read_text())["settings"]["steps"] == 2
    row = json.loads((tmp_path / "a" / "results.json").read_text())
    assert row["dimensions"]["temporal_flickering"]["videos"] == 4 and row["git_sha"] == result["git_sha"]
    assert {"machine", "device", "torch", "command"} <= set(row)
    official = json.loads((tmp_path / "a" / "vbench_eval_results.json").read_text())  # VBench's results format
    score, videos = official["temporal_flickering"]
    assert score == row["dimensions"]["temporal_flickering"]["score"] and len(videos) == 4
    # One generator per video: the batch a video is made in does not change it (to the codec's rounding).
    run(pipe, model_folder, info_file, tmp_path / "b", batch_size=1)
    for name in names:
        a, b = frames(tmp_path / "a" / "videos" / name), frames(tmp_path / "b" / "videos" / name)
        assert np.abs(a - b).max() <= 2


def test_resume_reuses_matching_videos_and_refuses_others(pipe, model_folder, info_file, tmp_path):
    out = tmp_path / "run"
    run(pipe, model_folder, info_file, out)
    kept = frames(out / "videos" / video_name("a blue square", 1))
    # A killed run: no results yet, one video missing. The same command makes only that one, identically.
    (out / "results.json").unlink()
    (out / "videos" / video_name("a blue square", 1)).unlink()
    (out / "videos" / ".a blue square-1.mp4.x.tmp").write_bytes(b"half a file")
    result = run(pipe, model_folder, info_file, out)
    assert (result["videos_generated"], result["videos_reused"]) == (1, 3)
    assert np.array_equal(frames(out / "videos" / video_name("a blue square", 1)), kept)
    assert not list((out / "videos").glob(".*.tmp"))
    # More dimensions later: only the new prompts' videos are made.
    result = run(pipe, model_folder, info_file, out, dimensions="temporal_flickering,background_consistency",
                 overwrite=True)
    assert (result["videos_generated"], result["videos_reused"]) == (2, 4)
    with pytest.raises(ValueError, match="results.json exists"):
        run(pipe, model_folder, info_file, out)
    with pytest.raises(ValueError, match="made with steps=2, this run has steps=3"):
        run(pipe, model_folder, info_file, out, steps=3)
    before = sorted(p.name for p in (out / "videos").iterdir())
    result = run(pipe, model_folder, info_file, out, steps=3, overwrite=True)  # discards the steps=2 videos
    assert result["videos_generated"] == 4 and result["settings"]["steps"] == 3
    assert len(before) == 6 and len(list((out / "videos").iterdir())) == 4


def test_a_folder_without_an_accel_run_is_refused(pipe, model_folder, info_file, tmp_path):
    """Files but no run.json (another eval's run, videos from elsewhere): their settings are unknown, so they are
    neither reused nor overwritten unless asked; overwrite discards the videos."""
    out = tmp_path / "other"
    (out / "videos").mkdir(parents=True)
    theirs = out / "videos" / video_name("a red circle moving left", 0)
    theirs.write_bytes(b"another tool's video")
    with pytest.raises(ValueError, match="holds files but no accel VBench run"):
        run(pipe, model_folder, info_file, out)
    assert theirs.read_bytes() == b"another tool's video" and not (out / "run.json").exists()
    result = run(pipe, model_folder, info_file, out, overwrite=True)
    assert (result["videos_generated"], result["videos_reused"]) == (4, 0)
    assert frames(theirs).shape[0] == 4  # made by this run


class OneOfTwo(Shard):
    """Process `rank` of 2 run in this process alone: no group to wait for or gather from (the processes' shares
    are disjoint, so running them one after the other leaves what running them together does)."""

    def barrier(self):
        pass

    def gather(self, obj):
        return [obj]


def test_two_processes_share_the_videos(pipe, model_folder, info_file, tmp_path):
    single = run(pipe, model_folder, info_file, tmp_path / "one", batch_size=3)
    out = tmp_path / "two"
    (out / "videos").mkdir(parents=True)  # what the main process prepares before either share starts: the folder
    (out / "run.json").write_text((tmp_path / "one" / "run.json").read_text())  # and the same settings' run.json
    assert run(pipe, model_folder, info_file, out, batch_size=3, shard=OneOfTwo(1, 2)) is None
    made_by_1 = sorted(p.name for p in (out / "videos").iterdir())
    assert made_by_1 == [video_name("a blue square", 1)]  # items 3.. (chunk 1 of 3-video chunks)
    row = run(pipe, model_folder, info_file, out, batch_size=3, shard=OneOfTwo(0, 2))
    assert row["videos_generated"] == 3 and row["processes"] == 2
    assert row["dimensions"]["temporal_flickering"]["score"] == single["dimensions"]["temporal_flickering"]["score"]
    for name in single["seeds"]:
        assert np.array_equal(frames(out / "videos" / name), frames(tmp_path / "one" / "videos" / name))


def test_bad_arguments_raise_value_errors(pipe, model_folder, info_file, tmp_path):
    with pytest.raises(ValueError, match="samples must be >= 1"):
        run(pipe, model_folder, info_file, tmp_path / "x", samples=0)
    with pytest.raises(ValueError, match="no prompts for human_action"):
        run(pipe, model_folder, info_file, tmp_path / "x", dimensions="human_action")
    with pytest.raises(ValueError, match="steps_mode must be uniform or hsa"):
        VideoSettings(model="m", steps_mode="fast")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Scoring end to end

def test_native_consistency_end_to_end(pipe, model_folder, info_file, weights, tmp_path):
    result = run(pipe, model_folder, info_file, tmp_path / "c", samples=1, weights=ScoringWeights.find(weights),
                 dimensions="subject_consistency,background_consistency,aesthetic_quality,scene")
    dims = result["dimensions"]
    assert dims["subject_consistency"]["method"] == dims["background_consistency"]["method"] == "native"
    assert dims["aesthetic_quality"]["method"] == "native" and dims["aesthetic_quality"]["videos"] == 1
    assert dims["scene"]["method"] == "skipped" and dims["scene"]["score"] is None
    assert dims["subject_consistency"]["videos"] == 1 and dims["background_consistency"]["videos"] == 2
    for d in ("subject_consistency", "background_consistency"):
        per_video = [v["score"] for v in dims[d]["per_video"]]
        assert 0 <= dims[d]["score"] <= 1 and dims[d]["score"] == pytest.approx(np.mean(per_video))
    agg = result["aggregate"]
    assert agg["partial"] and agg["semantic"] is None and agg["total"] is None
    assert agg["quality_dimensions"] == ["subject_consistency", "background_consistency", "aesthetic_quality"]


def test_vbench_package_is_called_where_its_weights_are_local(pipe, model_folder, info_file, tmp_path, monkeypatch,
                                                              request):
    """A stand-in `vbench` package with VBench's API (VBench(device, full_info_dir, output_path).evaluate(...),
    results in <output_path>/<name>_eval_results.json as {dimension: [score, video results]})."""
    package = tmp_path / "site" / "vbench"
    package.mkdir(parents=True)
    (package / "VBench_full_info.json").write_text(json.dumps(INFO))
    (package / "__init__.py").write_text(
        "import json, os\n"
        "class VBench:\n"
        "    def __init__(self, device, full_info_dir, output_path):\n"
        "        self.output_path = output_path\n"
        "    def evaluate(self, videos_path, name, dimension_list, local, mode):\n"
        "        assert local and mode == 'vbench_standard'\n"
        "        videos = sorted(os.listdir(videos_path))\n"
        "        results = {d: [0.875, [{'video_path': os.path.join(videos_path, v), 'video_results': 0.875}\n"
        "                              for v in videos]] for d in dimension_list}\n"
        "        json.dump(results, open(os.path.join(self.output_path, name + '_eval_results.json'), 'w'))\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delitem(sys.modules, "vbench", raising=False)
    request.addfinalizer(lambda: sys.modules.pop("vbench", None))  # the stand-in must not outlive this test
    result = evaluate_vbench(VideoSettings(model=model_folder, steps=2), "temporal_flickering,subject_consistency",
                             tmp_path / "p", samples=1, pipe=pipe)  # the package's own info file
    dims = result["dimensions"]
    assert dims["temporal_flickering"]["method"] == "vbench package"
    assert dims["temporal_flickering"]["score"] == 0.875
    assert result["info_file"] == str(package / "VBench_full_info.json")
    assert dims["subject_consistency"]["method"] == "skipped"
    assert "not local" in dims["subject_consistency"]["how"] and "dino_model" in \
        dims["subject_consistency"]["how"]


# ---------------------------------------------------------------------------------------------------------------------
# The command line

def test_cli_scores_and_reports(model_folder, info_file, weights, tmp_path):
    out = tmp_path / "cli"
    dims = "temporal_flickering,subject_consistency,appearance_style"
    r = CliRunner().invoke(app, ["eval", "vbench", "--model", model_folder, "--dimensions", dims, "--out", str(out),
                                 "--info", str(info_file), "--samples", "1", "--steps", "2", "--weights", str(weights),
                                 "--allow-dirty"])
    assert r.exit_code == 0, r.output
    row = json.loads((out / "results.json").read_text())
    assert [d["method"] for d in row["dimensions"].values()] == ["native"] * 3
    agg = row["aggregate"]
    assert agg["partial"] and agg["semantic_dimensions"] == ["appearance_style"] and agg["total"] is not None
    assert row["command"].startswith("accel") and "total (partial)" in r.output
    table = vbench_table([[row]])  # what `accel report` can render
    assert table[0].split(" | ")[3:6] == ["subject_consistency", "temporal_flickering", "appearance_style"]
    assert table[2].endswith(f"{row['aggregate']['total']:.4f}* |") and len(table) == 3


def test_cli_on_a_diffusers_wan_pipeline(info_file, tmp_path):
    """Any video family accel adapts makes VBench's videos the same way (here Wan 2.1, tiny, built offline)."""
    from accel.pipelines.tiny import build_wan

    build_wan().save_pretrained(tmp_path / "wan")
    r = CliRunner().invoke(app, ["eval", "vbench", "--model", str(tmp_path / "wan"), "--dimensions",
                                 "subject_consistency", "--out", str(tmp_path / "out"), "--info", str(info_file),
                                 "--samples", "2", "--steps", "2", "--height", "32", "--width", "32",
                                 "--num-frames", "5", "--allow-dirty"])
    assert r.exit_code == 0, r.output
    clips = [vs.read_video(tmp_path / "out" / "videos" / video_name("a red circle moving left", k)) for k in (0, 1)]
    assert clips[0].shape == (5, 32, 32, 3) and not np.array_equal(clips[0], clips[1])  # two seeds, two videos
    row = json.loads((tmp_path / "out" / "results.json").read_text())
    assert row["dimensions"]["subject_consistency"]["method"] == "skipped" and row["settings"]["num_frames"] == 5


@pytest.mark.parametrize("args, message", [
    (["--dimensions", "sharpness"], "allowed: subject_consistency"),
    (["--dimensions", "scene", "--samples", "0"], "--samples must be >= 1"),
    (["--dimensions", "scene", "--info", "{bad}"], "not VBench's info format"),
    (["--dimensions", "human_action"], "no prompts for human_action"),
    (["--dimensions", "subject_consistency", "--dino", "{clip}"], "not a DINO ViT-B/16"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, model_folder, info_file, weights, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x"}]))
    args = [a.format(bad=bad, clip=weights / "clip-vit-base-patch32") for a in args]
    info = [] if "--info" in args else ["--info", str(info_file)]
    r = CliRunner().invoke(app, ["eval", "vbench", "--model", model_folder, "--out", str(tmp_path / "o"),
                                 "--allow-dirty", *info, *args])
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output

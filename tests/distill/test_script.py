"""scripts/train_fewstep.py: stops on its time budget after a checkpoint, resumes, writes a loadable student."""

import json
import sys
from pathlib import Path

import pytest
import torch

from accel import accelerate_pipeline, load_pipeline
from accel.distill import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import train_fewstep  # noqa: E402

from accel.pipelines.shapes import build_shapes_pipeline  # noqa: E402
from accel.testing import jitter_


def tiny_shapes():
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                              sample_size=16)
    jitter_(p.transformer, seed=2)  # the zero-initialised output layers would make every sample the same
    return p


def test_script_stops_resumes_and_writes_the_student(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_shapes().save_pretrained(teacher)
    args = ["--run", "image-sc-dmd", "--teacher", str(teacher), "--out", str(tmp_path / "student"), "--work",
            str(tmp_path / "work"), "--steps", "3", "--batch-size", "2", "--critic-per-generator", "2",
            "--threads", "1"]
    train_fewstep.main(args + ["--minutes", "1e-9"])  # out of time after the first iteration
    work = tmp_path / "work" / "image-sc-dmd"
    assert checkpoint.load(checkpoint.latest(work))[1]["step"] == 1
    assert not (tmp_path / "student").exists()
    train_fewstep.main(args + ["--export-every", "2"])  # resumes at step 1 and finishes; a snapshot at step 2
    log = [json.loads(line)["step"] for line in (work / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    info = json.loads((tmp_path / "student" / "training.json").read_text())
    assert info["steps"] == 3 and info["run"] == "image-sc-dmd"
    pipe = accelerate_pipeline(load_pipeline(str(tmp_path / "student")))
    pipe("a photo of a circle", sampler="fewstep", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert pipe.stats.nfe == 2
    snapshots = sorted(p.name for p in (work / "snapshots").iterdir())
    assert snapshots == ["step-2"]  # not at the end: the student folder is the last one
    assert json.loads((work / "snapshots" / "step-2" / "distill.json").read_text())["steps"] == 2


def test_the_autoregressive_run_trains_a_causal_student_with_salts_recipe():
    config = train_fewstep.config_for(train_fewstep.parser().parse_args(["--run", "video-ar"]))
    assert config.method == "sc-dmd" and config.nfe == (4, 2)
    assert config.ar.chunk_frames == 1 and config.ar.mixed_steps == {8: 0.4, 4: 0.4, 2: 0.2}
    assert config.ar.align_pairs == {2: 4}
    assert train_fewstep.config_for(train_fewstep.parser().parse_args(["--run", "video-sc-dmd"])).ar is None


def test_the_teacher_guidance_is_an_option_and_defaults_to_the_pipelines():
    parse = train_fewstep.parser().parse_args
    assert train_fewstep.config_for(parse(["--run", "image-sc-dmd"])).cfg_weight is None
    assert train_fewstep.config_for(parse(["--run", "image-sc-dmd", "--guidance", "4"])).cfg_weight == 4.0


def test_the_step_counts_are_an_option():
    parse = train_fewstep.parser().parse_args
    assert train_fewstep.config_for(parse(["--run", "image-sc-dmd"])).nfe == (4, 2)
    assert train_fewstep.config_for(parse(["--run", "image-sc-dmd", "--nfe", "4"])).nfe == (4,)
    with pytest.raises(ValueError, match="comma-separated step counts"):
        train_fewstep.config_for(parse(["--run", "image-sc-dmd", "--nfe", "four"]))
    with pytest.raises(ValueError, match="nfe must be distinct step counts"):
        train_fewstep.config_for(parse(["--run", "image-sc-dmd", "--nfe", "3"]))


def test_the_ode_switch_options_reach_the_config():
    parse = train_fewstep.parser().parse_args
    config = train_fewstep.config_for(parse(["--run", "image-sc-dmd", "--ode-init-steps", "600",
                                             "--ode-fresh-optimizer", "--critic-warmup-steps", "100"]))
    assert config.ode_fresh_optimizer and config.critic_warmup_steps == 100 and config.ode_init_steps == 600
    plain = train_fewstep.config_for(parse(["--run", "image-sc-dmd"]))
    assert not plain.ode_fresh_optimizer and plain.critic_warmup_steps == 0

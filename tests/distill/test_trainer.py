"""The trainer on a tiny shapes pipeline: exact resume, the saved student, NaN stops, bad input."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from accel.api import accelerate_pipeline
from accel.distill import ARConfig, DistillConfig, DistillDiverged, Distiller, distill
from accel.distill import checkpoint
from accel.models import load_pipeline
from accel.pipelines.shapes import build_shapes_pipeline
from accel.pipelines.tiny import build_wan
from accel.testing import jitter_

# 2 ODE-pair iterations, then DMD with a generator update every 2nd iteration; EMA from iteration 3.
CONFIG = DistillConfig(steps=4, batch_size=2, critic_per_generator=2, lr_generator=1e-3, lr_critic=1e-3,
                       ema_start=3, ema_decay=0.5, ode_init_steps=2, ode_substeps=2, checkpoint_every=100,
                       call_args={"height": 16, "width": 16})


def tiny_shapes(seed: int = 0):
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                              sample_size=16, seed=seed)
    jitter_(p.transformer, seed=seed + 2)  # the zero-initialised output layers would make every sample the same
    return p


@pytest.fixture(scope="module")
def teacher():
    return tiny_shapes()


def last_checkpoint(folder):
    return checkpoint.load(checkpoint.latest(folder))


def test_resume_is_bit_exact(teacher, tmp_path):
    steps = CONFIG.ode_init_steps + CONFIG.steps
    distill(teacher, CONFIG, out_dir=tmp_path / "straight")
    half = DistillConfig(**{**CONFIG.__dict__, "steps": CONFIG.steps // 2 + 1})  # stops mid-DMD, odd step
    distill(teacher, half, out_dir=tmp_path / "resumed")
    first, _ = last_checkpoint(tmp_path / "resumed" / "checkpoints")
    distill(teacher, CONFIG, out_dir=tmp_path / "resumed", overwrite=True)  # resumes from step 5
    a, state_a = last_checkpoint(tmp_path / "straight" / "checkpoints")
    b, state_b = last_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert state_a["step"] == state_b["step"] == steps
    assert set(a) == set(b) and any(k.startswith("opt.critic") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the run moved after the resume (the last iteration updates the critic only) and away from the teacher
    assert not torch.equal(a["critic.conv_out.weight"], first["critic.conv_out.weight"])
    assert torch.equal(a["student.conv_out.weight"], first["student.conv_out.weight"])
    assert not torch.equal(a["student.conv_out.weight"], teacher.transformer.conv_out.weight)
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in state_a["log"]]
    assert strip == [{k: v for k, v in e.items() if k != "seconds"} for e in state_b["log"]]
    assert [e["phase"] for e in strip] == ["ode", "ode", "dmd", "dmd", "dmd", "dmd"]
    assert [e["dmd"] is not None for e in strip[2:]] == [True, False, True, False]
    log = [json.loads(line) for line in (tmp_path / "resumed" / "checkpoints" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, steps + 1))


def test_ode_pair_set_regresses_one_drawn_point_per_sample(teacher):
    """ode_pairs: the trajectories are drawn once (from their own seed: two runs build the same set) and each ODE
    iteration regresses batch_size drawn (trajectory, grid point) pairs."""
    config = DistillConfig(**{**CONFIG.__dict__, "ode_pairs": 3, "steps": 1})
    a, b = Distiller(teacher, config), Distiller(teacher, config)
    a.fit()
    b.train_step()
    assert [e["phase"] for e in a.log] == ["ode", "ode", "dmd"] and all(e["ode"] > 0 for e in a.log[:2])
    prompts, states, ends = a._ode_set
    assert len(prompts) == 3 and states.shape[:2] == (3, len(a.sigmas)) and ends.shape[0] == 3
    assert prompts == b._ode_set[0] and torch.equal(states, b._ode_set[1]) and torch.equal(ends, b._ode_set[2])


def test_critic_warmup_and_fresh_optimizer_after_the_ode_init(teacher):
    """critic_warmup_steps: the first DMD iterations train the fake score only; ode_fresh_optimizer: the generator's
    AdamW state is dropped when the ODE init ends (Self Forcing starts DMD with fresh optimizers)."""
    config = DistillConfig(**{**CONFIG.__dict__, "steps": 5, "critic_warmup_steps": 2, "ode_fresh_optimizer": True})
    d = Distiller(teacher, config)
    for _ in range(2):
        d.train_step()
        d.step += 1
    assert d.optimizers["student"].state  # the regression's moments
    d.train_step()
    d.step += 1
    assert not d.optimizers["student"].state
    d.fit()
    assert [e["dmd"] is not None for e in d.log] == [False, True, False, True]  # after the 2 warm-up iterations
    assert all(e["critic"] is not None for e in d.log)
    kept = Distiller(teacher, DistillConfig(**{**CONFIG.__dict__, "steps": 1}))
    kept.fit()
    assert kept.optimizers["student"].state
    # a checkpoint written before these options existed resumes with their defaults
    fresh = Distiller(teacher, CONFIG)
    saved = {k: v for k, v in fresh.config.to_dict().items()
             if k not in ("critic_warmup_steps", "ode_fresh_optimizer")}
    fresh._check_compatible({"format": 1, "teacher": fresh.teacher_id, "config": saved,
                             "prompts": fresh.prompts.name, "world": 1}, "old")
    with pytest.raises(ValueError, match="critic_warmup_steps: 0 there, 2 now"):
        Distiller(teacher, config)._check_compatible({"format": 1, "teacher": fresh.teacher_id, "config": saved,
                                                      "prompts": fresh.prompts.name, "world": 1}, "old")
    with pytest.raises(ValueError, match="critic_warmup_steps .* must be below steps"):
        DistillConfig(steps=2, critic_warmup_steps=2)
    with pytest.raises(ValueError, match="ode_fresh_optimizer must be True or False"):
        DistillConfig(ode_fresh_optimizer="yes")


def test_mixed_step_rollouts_train_every_inference_list(teacher, monkeypatch):
    """mixed_steps (Salt's released recipe): each rollout, the generator's and the fake score's, runs a drawn
    inference list; SC only on 8-step rollouts; the draws are the run's (two runs of one seed agree)."""
    from accel.distill import trainer as module

    grids = []

    def recording(student, x, cond, sigmas, *args, **kwargs):
        grids.append(sigmas.numel())
        return rollout(student, x, cond, sigmas, *args, **kwargs)

    rollout = module.rollout
    monkeypatch.setattr(module, "rollout", recording)
    mixed = {8: 0.4, 4: 0.4, 2: 0.2}
    config = DistillConfig(**{**CONFIG.__dict__, "steps": 12, "ode_init_steps": 0, "critic_per_generator": 1,
                              "mixed_steps": mixed})
    d = Distiller(teacher, config)
    assert d.train_t == (1000, 875, 750, 625, 500, 375, 250, 125)
    d.fit()
    steps = [e["rollout_steps"] for e in d.log]
    assert set(grids) == {8, 4, 2} and grids[::2] == steps  # generator, then critic, every iteration
    assert all((e["sc"] is not None) <= (e["rollout_steps"] == 8) for e in d.log)
    assert any(e["sc"] is not None for e in d.log)
    again = Distiller(teacher, config)
    again.fit()
    assert [e["rollout_steps"] for e in again.log] == steps
    assert Distiller(teacher, DistillConfig.from_dict(config.to_dict())).config.mixed_steps == mixed
    for bad, message in (({8: 0.5, 4: 0.5}, "missing 2"), ({4: 0.5, 2: 0.5}, "needs 8-step rollouts"),
                         ({8: 0.5, 4: 0.4, 2: 0.2}, "summing to 1"), ({3: 1.0}, "among 1, 2, 4, 8"),
                         ("8", "summing to 1")):
        with pytest.raises(ValueError, match=message):
            DistillConfig(mixed_steps=bad)
    with pytest.raises(ValueError, match="ar.mixed_steps"):
        DistillConfig(mixed_steps=mixed, ar=ARConfig())


def test_saved_student_samples_with_fewstep(teacher, tmp_path):
    out = distill(teacher, CONFIG, out_dir=tmp_path / "student")
    spec = json.loads((out / "student.json").read_text())
    assert spec["call_defaults"] == {"guidance_scale": 1.0} and spec["teacher_guidance"] == 2.0
    assert spec["method"] == "sc-dmd" and set(spec["timesteps"]) == {"4", "2"} and spec["shift"] == 1.0
    tensors, _ = last_checkpoint(out / "checkpoints")
    saved = load_file(str(next((out / "transformer").glob("*.safetensors"))))
    assert torch.equal(saved["conv_out.weight"], tensors["ema.conv_out.weight"])  # the EMA weights are shipped
    pipe = accelerate_pipeline(load_pipeline(str(out)))
    kw = dict(prompt="a photo of a red circle", output_type="np", generator=torch.Generator().manual_seed(0))
    image = pipe(**kw, sampler="fewstep", num_inference_steps=4).images
    assert pipe.stats.nfe == 4 and image.shape == (1, 16, 16, 3)
    pipe(**{**kw, "generator": torch.Generator().manual_seed(0)}, sampler="fewstep", num_inference_steps=2)
    assert pipe.stats.nfe == 2
    with pytest.raises(ValueError, match="trained for 2, 4 steps"):
        pipe(**kw, sampler="fewstep", num_inference_steps=3)


def test_nan_stops_and_keeps_the_last_good_checkpoint(teacher, tmp_path):
    config = DistillConfig(**{**CONFIG.__dict__, "checkpoint_every": 2, "ode_init_steps": 0})
    d = Distiller(teacher, config, checkpoint_dir=tmp_path)

    def poison(step, total, entry):  # from step 3 on the fake score returns NaN
        if step == 2:
            d.roles.critic.pipe.transformer.register_forward_hook(
                lambda m, i, o: type(o)(sample=torch.full_like(o.sample, float("nan"))))

    with pytest.raises(DistillDiverged, match="critic loss is nan at step 3.*checkpoint: step 2"):
        d.fit(poison)
    tensors, state = last_checkpoint(tmp_path)
    assert state["step"] == 2 and all(torch.isfinite(t.float()).all() for t in tensors.values())
    fresh = Distiller(teacher, config, checkpoint_dir=tmp_path)
    fresh.load_checkpoint(checkpoint.latest(tmp_path))
    fresh.fit()  # the good checkpoint carries on
    assert fresh.step == 4


def test_bad_input(teacher, tmp_path):
    distill(teacher, DistillConfig(**{**CONFIG.__dict__, "steps": 1, "ode_init_steps": 0}), out_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size: 2 there, 3 now"):
        distill(teacher, DistillConfig(**{**CONFIG.__dict__, "steps": 2, "ode_init_steps": 0, "batch_size": 3}),
                out_dir=tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="another teacher"):
        distill(tiny_shapes(seed=1), DistillConfig(**{**CONFIG.__dict__, "steps": 2, "ode_init_steps": 0}),
                out_dir=tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="has a checkpoint"):
        distill(teacher, CONFIG, out_dir=tmp_path, resume=False)
    with pytest.raises(ValueError, match="prompt file"):
        distill(teacher, CONFIG, prompts=tmp_path / "missing.txt", out_dir=tmp_path / "other")
    with pytest.raises(ValueError, match="two experts"):
        Distiller(build_wan(boundary_ratio=0.5), CONFIG, prompts=["a cat"])
    with pytest.raises(ValueError, match="no built-in prompt grammar"):
        Distiller(build_wan(), CONFIG)
    with pytest.raises(ValueError, match="unsupported pipeline"):
        Distiller(object(), CONFIG)
    with pytest.raises(ValueError, match="allowed arguments"):
        Distiller(teacher, DistillConfig(call_args={"heigth": 16}))


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lora_without_peft_says_how_to_install(teacher):
    with pytest.raises(ValueError, match="pip install peft"):
        Distiller(teacher, DistillConfig(**{**CONFIG.__dict__, "lora_rank": 4}))

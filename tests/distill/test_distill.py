"""Few-step distillation (accel.distill): losses against hand computations, Salt's timestep rules, end-to-end runs
on tiny Flux / Wan / shapes teachers, bit-exact resume, the saved student sampling through the wrapper, bad input."""

import copy
import json
import random

import pytest
import torch

from accel import accelerate_pipeline, load_pipeline
from accel.distill import DistillConfig, DistillDiverged, Distiller, distill
from accel.distill.grids import sc_times
from accel.distill.losses import dmd_direction, dmd_loss, sc_endpoints, sc_loss
from accel.pipelines.shapes import build_shapes_pipeline
from accel.pipelines.tiny import build_flux, build_wan
from accel.testing import jitter_

FAST = dict(batch_size=2, critic_per_generator=2, lr_generator=1e-4, lr_critic=1e-3, ema_start=0)


def shapes_teacher(seed=0):
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1, seed=seed)
    jitter_(p.transformer, seed=seed + 1)  # the zero-initialised output layers would make every prediction the same
    return p


def test_dmd_direction_and_its_gradient():
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0]], requires_grad=True)
    real, fake = torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    delta = dmd_direction(x.detach(), real, fake)
    # normaliser mean|x - real| = (1 + 2) / 2 for the first sample; 0 for the second (NaN -> 0)
    assert torch.allclose(delta, torch.tensor([[4 / 3, 2 / 3], [0.0, 0.0]], dtype=torch.float64))
    dmd_loss(x, real, fake).backward()
    assert torch.allclose(x.grad.double(), delta / x.numel())


def test_sc_endpoints_match_for_an_exact_flow_map_only():
    c = 0.3  # data at one point: straight paths, so direct and composed Euler jumps agree exactly
    x_s = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    s_s, s_m, s_e = 0.9, 0.6, 0.25
    x_e1, x_e2 = sc_endpoints(x_s, (x_s - c) / s_s, s_s, s_m, s_e, lambda x, s: (x - c) / s)
    assert torch.allclose(x_e1, x_e2, atol=1e-6) and sc_loss(x_e1, x_e2, s_s) < 1e-10
    x_e1, x_e2 = sc_endpoints(x_s, x_s, s_s, s_m, s_e, lambda x, s: x)  # v = x: curved paths
    expected = x_s * (1 - (s_s - s_m)) * (1 - (s_m - s_e))
    assert torch.allclose(x_e2, expected) and float(sc_loss(x_e1, x_e2, s_s)) > 0
    assert float(sc_loss(x_e1, x_e2, 1.0)) == 0.0  # weight 1 - sigma_s


def test_sc_timestep_rules():
    train = (1000, 875, 750, 625, 500, 375, 250, 125)
    bounds = (1000, 750, 500, 250, 0)
    rng = random.Random(0)
    seen = {sc_times(train, bounds, 0, rng) for _ in range(200)}
    # t_s = 1000, next 875: t_e in the two largest boundaries below 875 (750, 500); t_m strictly between t_e and t_s
    assert {t_e for t_e, _ in seen} == {750, 500}
    assert all(t_e < t_m < 1000 and t_m in train for t_e, t_m in seen)
    assert sc_times(train, bounds, 7, rng) is None  # the last step: no SC term
    assert sc_times(train, bounds, 6, rng) == (0, 125) or sc_times(train, bounds, 6, rng)[0] == 0


def replay(d, fn):
    """fn() twice from the same random state (prompts, noise, exit index): the second sees the first's update."""
    state = (d.generator.get_state(), copy.deepcopy(d.prompt_rng.bit_generator.state), d.choices.getstate())
    first = fn()
    d.generator.set_state(state[0])
    d.prompt_rng.bit_generator.state = state[1]
    d.choices.setstate(state[2])
    return first, fn()


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_distillation_of_a_tiny_flux_and_wan(family, tmp_path, monkeypatch):
    pipe, call = ((build_flux(), dict(height=32, width=32, max_sequence_length=16)) if family == "flux" else
                  (build_wan(), dict(height=32, width=32, num_frames=5, max_sequence_length=16)))
    config = DistillConfig(method="sc-dmd", steps=30, checkpoint_every=30, call_args=call, **FAST)
    d = Distiller(pipe, config, prompts=["a red car", "a cat", "a blue tree"], checkpoint_dir=tmp_path / "ckpt")
    probe = d.critic_probe()
    # The critic's update lowers its flow-matching loss on the batch it saw
    before, after = replay(d, d._critic_step)
    assert after < before
    # The generator's update moves its sample x0 along -Delta (towards the teacher, away from the fake score)
    import accel.distill.trainer as trainer

    seen = []

    def spy(x0, real, fake):
        seen.append((x0.detach().clone(), dmd_direction(x0.detach(), real, fake)))
        return dmd_loss(x0, real, fake)

    monkeypatch.setattr(trainer, "dmd_loss", spy)
    replay(d, d._generator_step)
    (x0_a, delta), (x0_b, _) = seen
    assert float(((x0_b - x0_a).double() * delta).sum()) < 0
    monkeypatch.undo()
    d.fit()
    assert len(d.log) == 30 and all(torch.isfinite(torch.tensor([e["critic"] for e in d.log])))
    assert sum(e["dmd"] is not None for e in d.log) == 15  # the generator every 2nd iteration
    assert any(e["sc"] for e in d.log)  # Salt's term was active (and finite) on some generator updates
    # Over the run the fake score fits the student's samples better (a fixed held-out probe: the per-iteration
    # losses vary too much with the drawn noise levels to compare)
    assert d.critic_probe() < 0.97 * probe
    assert (tmp_path / "ckpt" / "step-00000030" / "tensors.safetensors").is_file()
    # Flux's guidance is a model input (the student keeps the teacher's value); Wan's is CFG (turned off)
    assert d.roles.student_call == ({"guidance_scale": 3.5} if family == "flux" else {"guidance_scale": 1.0})


def test_resume_continues_bit_for_bit(tmp_path):
    config = DistillConfig(steps=6, checkpoint_every=3, **FAST)
    straight = Distiller(shapes_teacher(), config, checkpoint_dir=tmp_path / "a")
    straight.fit()
    first = Distiller(shapes_teacher(), DistillConfig(steps=3, checkpoint_every=3, **FAST),
                      checkpoint_dir=tmp_path / "b")
    first.fit()
    resumed = Distiller(shapes_teacher(), config, checkpoint_dir=tmp_path / "b")
    resumed.load_checkpoint(tmp_path / "b" / "step-00000003")
    resumed.fit()
    for role in ("student", "critic"):
        for name, p in straight.params[role].items():
            assert torch.equal(p, resumed.params[role][name]), (role, name)
    assert all(torch.equal(straight.ema_params[n], resumed.ema_params[n]) for n in straight.params["student"])
    assert [e["critic"] for e in straight.log] == [e["critic"] for e in resumed.log]
    other = Distiller(shapes_teacher(seed=5), config)
    with pytest.raises(ValueError, match="another teacher"):
        other.load_checkpoint(tmp_path / "b" / "step-00000006")


def test_teacher_fingerprint_ignores_diffusers_private_config():
    """A resumed run (another process, maybe a newer diffusers) must recognise its teacher: diffusers'
    _use_default_values is a set whose order changes with every process's string hashing."""
    from diffusers.configuration_utils import FrozenDict

    from accel.distill.roles import fingerprint

    t = shapes_teacher().transformer
    before = fingerprint(t)
    t._internal_dict = FrozenDict({**t.config, "_use_default_values": ["b", "a"], "_diffusers_version": "9.9"})
    assert fingerprint(t) == before
    t._internal_dict = FrozenDict({**t.config, "width": t.config["width"] * 2})
    assert fingerprint(t) != before


def test_checkpoints_with_the_legacy_fingerprint_resume(tmp_path):
    from accel.distill import checkpoint as ckpt
    from accel.distill.roles import fingerprint

    d = Distiller(shapes_teacher(), DistillConfig(steps=1, checkpoint_every=1, **FAST), checkpoint_dir=tmp_path)
    d.fit()
    state_file = ckpt.latest(tmp_path) / "state.json"
    state = json.loads(state_file.read_text())
    legacy = fingerprint(d.roles.teacher.pipe.transformer, legacy=True)
    assert legacy != state["teacher"]
    state_file.write_text(json.dumps(state | {"teacher": legacy}))
    again = Distiller(shapes_teacher(), DistillConfig(steps=1, checkpoint_every=1, **FAST))
    again.load_checkpoint(ckpt.latest(tmp_path))
    assert again.step == 1


def test_the_student_folder_samples_through_the_wrapper(tmp_path):
    out = distill(shapes_teacher(), DistillConfig(steps=2, checkpoint_every=2, **FAST), out_dir=tmp_path / "student")
    pipe = accelerate_pipeline(load_pipeline(str(out)))
    pipe("a photo of a red circle", sampler="fewstep", num_inference_steps=2,
         generator=torch.Generator().manual_seed(0))
    assert pipe.stats.nfe == 2 and pipe.stats.extra["student"] == "sc-dmd"
    assert (out / "checkpoints" / "log.jsonl").read_text().count("\n") == 2
    with pytest.raises(ValueError, match="has a checkpoint"):
        distill(shapes_teacher(), DistillConfig(steps=2, **FAST), out_dir=out, resume=False)
    with pytest.raises(ValueError, match="already holds a pipeline"):
        distill(shapes_teacher(), DistillConfig(steps=2, **FAST), out_dir=out, checkpoint_dir=tmp_path / "other")


def test_bad_input_and_divergence(tmp_path):
    with pytest.raises(ValueError, match="allowed: dmd, sc-dmd"):
        DistillConfig(method="sc")
    with pytest.raises(ValueError, match="not both"):
        DistillConfig(guidance=4.0, salt_guidance=3.0)
    with pytest.raises(ValueError, match="needs method='sc-dmd'"):
        DistillConfig(method="dmd", sc_weight=0.2)
    assert DistillConfig(salt_guidance=3.0).cfg_weight == 4.0  # Salt's g = 3 is the standard w = 4
    with pytest.raises(ValueError, match="no built-in prompt grammar"):
        Distiller(build_flux(), DistillConfig(**FAST))
    d = Distiller(shapes_teacher(), DistillConfig(steps=4, checkpoint_every=2, lr_generator=1e30, lr_critic=1e30,
                                                  batch_size=2, critic_per_generator=1), checkpoint_dir=tmp_path / "c")
    with pytest.raises(DistillDiverged, match="last good checkpoint"):
        d.fit()


def test_cli_distils_resumes_and_rejects_bad_input(tmp_path):
    from typer.testing import CliRunner

    from accel.cli.main import app

    teacher = tmp_path / "teacher"
    shapes_teacher().save_pretrained(teacher)
    runner = CliRunner()
    args = ["distill", "--model", str(teacher), "--out", str(tmp_path / "s"), "--batch-size", "2",
            "--critic-per-generator", "2", "--checkpoint-every", "2"]
    r = runner.invoke(app, args + ["--steps", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args + ["--steps", "4"])  # resumes from step 2 and trains on to 4
    assert r.exit_code == 0, r.output
    log = (tmp_path / "s" / "checkpoints" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]
    r = runner.invoke(app, ["generate", "a photo of a red circle", "--model", str(tmp_path / "s"), "--out",
                            str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    for bad, message in ((["--method", "sc"], "allowed: dmd, sc-dmd"), (["--nfe", "four"], "comma-separated"),
                         (["--nfe", "3"], "nfe must be"), (["--prompts-file", "nope.txt"], "does not exist"),
                         (["--guidance", "4", "--salt-guidance", "3"], "not both"),
                         (["--fsdp", "--no-resume", "--overwrite"], "several processes"),
                         (["--steps", "3", "--critic-warmup-steps", "3"], "must be below steps"),
                         (["--mixed-steps", "8:0.5,4"], "STEPS:PROBABILITY"),
                         (["--mixed-steps", "8:0.5,4:0.5"], "missing 2")):
        r = runner.invoke(app, args + bad)
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (bad, r.output)

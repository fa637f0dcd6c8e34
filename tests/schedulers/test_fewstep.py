"""The few-step student sampler: its grids, update rules, the wrapper's sampler="fewstep" and the CLI on a student."""

import json

import imageio.v3 as iio
import pytest
import torch
from typer.testing import CliRunner

from accel.api import accelerate_pipeline
from accel.cli.main import app
from accel.pipelines.shapes import build_shapes_pipeline
from accel.schedulers.fewstep import TIMESTEPS, StudentSpec, fewstep_grid, fewstep_sample
from accel.testing import jitter_

SPEC = StudentSpec(shift=3.0, call_defaults={"guidance_scale": 1.0})


@pytest.fixture(scope="module")
def pipe():
    p = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1, seed=0)
    jitter_(p.transformer, seed=2)  # the zero-initialised output layers would make every sample the same
    return p


@pytest.fixture
def student(pipe):
    pipe.accel_student = SPEC
    yield accelerate_pipeline(pipe)
    del pipe.accel_student


def test_grids_are_the_papers_warped_lists():
    # Self Forcing / Salt with shift 5: [1000, 750, 500, 250] -> sigma 1, 0.9375, 0.8333, 0.625.
    sigmas = fewstep_grid(TIMESTEPS[4], shift=5.0).sigmas
    assert torch.allclose(sigmas, torch.tensor([1.0, 0.9375, 5 * 0.5 / 3, 5 * 0.25 / 2, 0.0]))
    assert torch.equal(fewstep_grid(TIMESTEPS[2]).sigmas, torch.tensor([1.0, 0.5, 0.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        fewstep_grid([500, 750])
    with pytest.raises(ValueError, match="entries"):
        StudentSpec(timesteps={4: (1000, 500)})


def test_rules_against_a_hand_computed_run(pipe):
    adapter = accelerate_pipeline(pipe).adapter
    prepared = adapter.prepare(prompt="a photo of a red circle", guidance_scale=1.0, num_inference_steps=2,
                               generator=torch.Generator().manual_seed(0))
    grid = fewstep_grid(TIMESTEPS[2], shift=3.0)
    x, cond, (s0, s1, _) = prepared.x, prepared.cond, grid.sigmas
    with torch.no_grad():
        adapter.nfe = 0
        euler = fewstep_sample(adapter, x, grid, cond, rule="euler")
        assert adapter.nfe == 2  # one forward per step: no guidance
        v0 = adapter.velocity(x, s0, cond)
        x1 = x + (s1 - s0) * v0
        assert torch.allclose(euler, x1 - s1 * adapter.velocity(x1, s1, cond), atol=1e-6)
        renoised = fewstep_sample(adapter, x, grid, cond, generator=torch.Generator().manual_seed(7))
        eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
        x1 = (1 - s1) * (x - s0 * v0) + s1 * eps
        assert torch.allclose(renoised, x1 - s1 * adapter.velocity(x1, s1, cond), atol=1e-6)
        assert not torch.allclose(renoised, euler, atol=1e-3)


def test_wrapper_samples_a_student_in_its_steps(student):
    kw = dict(prompt="a photo of a blue square", output_type="np")
    a = student(**kw, sampler="fewstep", num_inference_steps=4, generator=torch.Generator().manual_seed(1))
    assert student.stats.nfe == 4 and student.stats.sampler == "fewstep"
    b = student(**kw, sampler="fewstep", num_inference_steps=4, generator=torch.Generator().manual_seed(1))
    c = student(**kw, sampler="fewstep", num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert student.stats.nfe == 2
    assert (a.images == b.images).all() and not (a.images == c.images).all()
    student(prompt=["a photo of a circle", "a photo of a square"], sampler="fewstep", num_inference_steps=2)
    assert student.stats.nfe == 4


def test_student_bad_input(pipe, student):
    with pytest.raises(ValueError, match="trained for 2, 4 steps, not 3"):
        student(prompt="a photo of a circle", sampler="fewstep", num_inference_steps=3)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        student(prompt="a photo of a circle", sampler="fewstep", guidance_scale=4.0)
    with pytest.raises(ValueError, match="steps='hsa'"):
        student(prompt="a photo of a circle", sampler="fewstep", steps="hsa")
    del pipe.accel_student
    with pytest.raises(ValueError, match="needs a distilled student"):
        accelerate_pipeline(pipe)(prompt="a photo of a circle", sampler="fewstep")
    pipe.accel_student = SPEC


def test_spec_round_trips_through_the_folder(tmp_path):
    SPEC.save(tmp_path)
    assert StudentSpec.load(tmp_path) == SPEC
    data = json.loads((tmp_path / "student.json").read_text()) | {"nfe_typo": 4}
    (tmp_path / "student.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown field"):
        StudentSpec.load(tmp_path)


def test_cli_generates_with_a_student_folder(pipe, tmp_path):
    folder = tmp_path / "student"
    pipe.save_pretrained(folder)
    SPEC.save(folder)
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "a photo of a red circle", "--model", str(folder), "--out",
                            str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    assert "4 NFE" in " ".join(r.output.split()) and iio.imread(tmp_path / "a.png").shape == (32, 32, 3)
    r = runner.invoke(app, ["generate", "a photo of a red circle", "--model", str(folder), "--steps", "3",
                            "--out", str(tmp_path / "b.png")])
    assert r.exit_code == 2 and "trained for --steps 2 or 4" in " ".join(r.output.split())
    plain = tmp_path / "plain"
    pipe.save_pretrained(plain)
    r = runner.invoke(app, ["generate", "a photo of a red circle", "--model", str(plain), "--sampler", "fewstep",
                            "--out", str(tmp_path / "c.png")])
    assert r.exit_code == 2 and "needs a distilled student" in " ".join(r.output.split())
    r = runner.invoke(app, ["eval", "shapes", "--model", str(folder), "--prompts", "2"])
    assert r.exit_code == 2 and "accel bench fewstep --students" in " ".join(r.output.split())


def test_search_runs_on_the_students_grid(pipe):
    # With the flow ODE (best-of-N's default) on the student's grid, one particle is the student's Euler-rule sample
    # from the same start noise; the budget buys budget // 4 samples of a 4-step student (no CFG).
    from dataclasses import replace

    pipe.accel_student = replace(SPEC, rule="euler")
    try:
        student = accelerate_pipeline(pipe)
        kw = dict(prompt="a photo of a red circle", sampler="fewstep", num_inference_steps=4, output_type="np")
        plain = student(**kw, generator=torch.Generator().manual_seed(5)).images
        one = student(**kw, search="bon", reward="shapes", nfe=4, generator=torch.Generator().manual_seed(5))
        assert student.stats.nfe == 4 and abs(one.images - plain).max() < 1e-5
        student(**kw, search="bon", reward="shapes", nfe=12, generator=torch.Generator().manual_seed(5))
        assert student.stats.nfe == 12 and student.stats.extra["traces"][0].extra["n"] == 3
        with pytest.raises(ValueError, match="without classifier-free guidance"):
            student(**kw, guidance_scale=3.0, search="bon", reward="shapes", nfe=8)
    finally:
        del pipe.accel_student


def test_search_draws_with_the_students_renoise_rule(pipe, student):
    # On a re-noising student, "bon" moves its particles by the student's own rule (SDEConfig.renoise, through
    # accel.search.registry.for_student): one particle draws the same start noise and then the same per-step noise
    # as the plain call, so it is the student's own sample. "bon:diffusion=zero" keeps the flow ODE: its particle
    # is the student's Euler-rule sample.
    from dataclasses import replace

    from accel.search.registry import for_student

    kw = dict(prompt="a photo of a red circle", sampler="fewstep", num_inference_steps=4, output_type="np")
    plain = student(**kw, generator=torch.Generator().manual_seed(5)).images
    for strategy in ("bon", "bon:diffusion=renoise"):
        one = student(**kw, search=strategy, reward="shapes", nfe=4, generator=torch.Generator().manual_seed(5))
        assert student.stats.nfe == 4 and abs(one.images - plain).max() < 1e-5, strategy
    ode = student(**kw, search="bon:diffusion=zero", reward="shapes", nfe=4,
                  generator=torch.Generator().manual_seed(5)).images
    pipe.accel_student = replace(SPEC, rule="euler")
    euler = accelerate_pipeline(pipe)(**kw, generator=torch.Generator().manual_seed(5)).images
    pipe.accel_student = SPEC
    assert abs(ode - euler).max() < 1e-5 and abs(ode - plain).max() > 1e-3
    # What stays as given: an SDE strategy, a typed config, an Euler-rule student.
    from accel.search.bon import BestOfNConfig

    config = BestOfNConfig()
    assert for_student("smc", "renoise") == "smc" and for_student("bon", "euler") == "bon"
    assert for_student(config, "renoise") is config
    assert for_student("bon", "renoise").sampler.diffusion == "renoise"

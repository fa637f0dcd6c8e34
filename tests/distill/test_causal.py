"""Autoregressive students (Salt's cache-distribution-aware recipe) on a tiny video teacher: the rollout, the
noise-aligned reference, the token-relation loss, the SC and alignment terms, exact resume, the saved student."""

import pytest
import torch

from accel.api import accelerate_pipeline
from accel.distill import ARConfig, DistillConfig, Distiller, distill
from accel.distill import checkpoint
from accel.distill.causal import (causal_rollout, frame_gram, ode_regression, reference_rollout, relation_loss,
                                  step_sigmas)
from accel.models import load_pipeline
from accel.pipelines.shapes_causal import CausalShapesVideoTransformer3DModel
from accel.pipelines.shapes_video import build_shapes_video_pipeline
from accel.schedulers.fewstep import TIMESTEPS

CALL = {"num_frames": 4, "height": 8, "width": 8}


def config(**kw):
    ar = ARConfig(chunk_frames=2, **kw.pop("ar", {}))
    return DistillConfig(**{"steps": 3, "batch_size": 2, "critic_per_generator": 1, "lr_generator": 1e-3,
                            "lr_critic": 1e-3, "ema_start": 1, "ema_decay": 0.5, "nfe": (4, 2), "shift": 3.0,
                            "call_args": CALL, "ar": ar, **kw})


@pytest.fixture(scope="module")
def teacher():
    p = build_shapes_video_pipeline(width=32, num_layers=2, text_hidden=32, text_layers=1, num_frames=4,
                                    sample_size=8, patch_frames=1)
    torch.manual_seed(4)
    with torch.no_grad():
        for q in p.transformer.parameters():
            q.add_(0.1 * torch.randn_like(q))
    return p


def test_ar_config_bad_input():
    with pytest.raises(ValueError, match="probabilities summing to 1"):
        ARConfig(mixed_steps={8: 0.5, 4: 0.2})
    with pytest.raises(ValueError, match="probabilities summing to 1"):
        ARConfig(mixed_steps={3: 1.0})
    with pytest.raises(ValueError, match="align"):
        ARConfig(align="sometimes")
    with pytest.raises(ValueError, match="needs 8-step rollouts"):
        DistillConfig(method="sc-dmd", ar=ARConfig(mixed_steps={4: 1.0}))
    cfg = DistillConfig(ar=ARConfig(mixed_steps={8: 0.5, 2: 0.5}))
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg


def test_relation_loss_is_zero_within_the_margin():
    a = torch.randn(2, 3 * 4, 8)
    assert relation_loss(a, a, frames=3, margin=0.0) == 0
    g = frame_gram(a, 3)
    assert g.shape == (2, 3, 4, 4) and torch.allclose(g.diagonal(dim1=-2, dim2=-1), torch.ones(2, 3, 4))
    b = a + 0.3 * torch.randn_like(a)
    assert relation_loss(a, b, 3, 0.0) > relation_loss(a, b, 3, 0.05) >= relation_loss(a, b, 3, 2.0) == 0


@torch.no_grad()
def test_reference_on_the_students_own_list_reproduces_its_rollout(teacher):
    """With ref_t == the student's list every point is shared, so the noise-aligned reference is the rollout."""
    model = CausalShapesVideoTransformer3DModel.from_bidirectional(teacher.transformer, chunk_frames=2).eval()
    embeds, mask = teacher.encode_with_negatives(["a red circle moving left"], None, 1.0, "cpu")
    from accel.core.denoiser import Cond

    cond = Cond(batch=1, passes=1, data={"embeds": embeds, "mask": mask, "guidance": 1.0})
    x = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noises = {}
    x0, exits = causal_rollout(model, x, cond, step_sigmas(4, 3.0), 2, torch.Generator().manual_seed(1),
                               grad=False, noises=noises)
    assert len(exits) == 2 and set(noises) == {(0, 1), (0, 2), (1, 1), (1, 2)}
    ref = reference_rollout(model, x, cond, TIMESTEPS[4], TIMESTEPS[4], TIMESTEPS[4][2], 3.0, noises)
    torch.testing.assert_close(ref, x0)
    denser = reference_rollout(model, x, cond, TIMESTEPS[4], TIMESTEPS[8], TIMESTEPS[4][2], 3.0, noises)
    assert denser.shape == x0.shape and not torch.allclose(denser, x0)


def test_causal_ode_regression_is_teacher_forcing(teacher):
    """Each chunk's x0 in the ODE-init loss is the block-causal model's on a clip whose earlier chunks are the
    trajectory's clean end (at sigma 0) and whose own chunk is the state: checked against the whole-clip forward
    with per-token sigma, chunk by chunk; and the loss reaches the weights."""
    from accel.core.denoiser import Cond

    model = CausalShapesVideoTransformer3DModel.from_bidirectional(teacher.transformer, chunk_frames=1)
    embeds, mask = teacher.encode_with_negatives(["a red circle moving left", "a blue square"], None, 1.0, "cpu")
    cond = Cond(batch=2, passes=1, data={"embeds": embeds, "mask": mask, "guidance": 1.0})
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 4, 8, 8, generator=g)
    states = [torch.randn(2, 3, 4, 8, 8, generator=g) for _ in range(2)]
    sigmas = torch.tensor([0.9, 0.4])
    loss = ode_regression(model, states, sigmas, cond, target)
    loss.backward()
    assert all(p.grad is not None for p in model.blocks[0].parameters())
    per = 4  # tokens per token frame at 8x8 pixels, patch 4
    expected = []
    with torch.no_grad():
        for x, s in zip(states, sigmas):
            for k in range(4):
                clip = torch.cat([target[:, :, :k], x[:, :, k:]], dim=2)
                sigma = torch.zeros(2, 4 * per)
                sigma[:, k * per:] = s
                v = model(clip, embeds, sigma, mask).sample[:, :, k:k + 1]
                expected.append(((x[:, :, k:k + 1] - s * v) - target[:, :, k:k + 1]).pow(2).mean())
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-4, atol=1e-6)


def test_ar_ode_init_then_dmd(teacher, tmp_path):
    """The causal ODE init, both forms (fresh trajectories; a pair set drawn once), then DMD; a run stopped inside
    the init resumes onto the straight run's weights (the pair set is rebuilt from its own seed)."""
    d = Distiller(teacher, config(ode_init_steps=2, ode_substeps=1, ar={"mixed_steps": {8: 1.0}}))
    before = {k: v.clone() for k, v in d.student_module(ema=False).state_dict().items()}
    d.fit()
    assert [e["phase"] for e in d.log] == ["ode", "ode", "dmd", "dmd", "dmd"]
    assert all(e["ode"] > 0 for e in d.log[:2])
    after = d.student_module(ema=False).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    pairs = config(method="dmd", ode_init_steps=3, ode_pairs=3, ode_substeps=1, steps=1, checkpoint_every=2,
                   ar={"mixed_steps": {4: 1.0}})
    straight = Distiller(teacher, pairs)
    straight.fit()
    assert [e["phase"] for e in straight.log] == ["ode", "ode", "ode", "dmd"]

    def stop(step, total, entry):
        if step == 3:  # checkpoints are written after the callback: the latest is step 2's
            raise KeyboardInterrupt

    first = Distiller(teacher, pairs, checkpoint_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        first.fit(stop)
    resumed = Distiller(teacher, pairs, checkpoint_dir=tmp_path)
    resumed.load_checkpoint(checkpoint.latest(tmp_path))
    assert resumed.step == 2
    resumed.fit()
    a, b = straight.student_module(ema=False).state_dict(), resumed.student_module(ema=False).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with pytest.raises(ValueError, match="ode_pairs"):
        DistillConfig(ode_pairs=-1)


def test_sc_and_alignment_terms_run_and_training_resumes_exactly(teacher, tmp_path):
    sc_run = config(ar={"mixed_steps": {8: 1.0}})
    d = Distiller(teacher, sc_run)
    d.fit()
    gen = [e for e in d.log if e["dmd"] is not None]
    assert len(gen) == 3 and all(e["rollout_steps"] == 8 for e in gen)
    assert any(e["sc"] is not None and e["sc"] >= 0 for e in gen)
    align_run = config(method="dmd", ar={"mixed_steps": {2: 1.0}, "align_start": 0})
    d = Distiller(teacher, align_run)
    d.fit()
    assert all(e["align"] is not None and e["align"] >= 0 and e["sc"] is None for e in d.log)
    # mixed steps: stop after 2 iterations, resume, and land on the straight run's weights bit for bit
    mixed = config(ar={"mixed_steps": {8: 0.4, 4: 0.4, 2: 0.2}, "align_start": 1}, steps=4, checkpoint_every=2)
    distill(teacher, mixed, out_dir=tmp_path / "straight")
    distill(teacher, DistillConfig(**{**mixed.__dict__, "steps": 2}), out_dir=tmp_path / "resumed")
    distill(teacher, mixed, out_dir=tmp_path / "resumed", overwrite=True)
    a, state = checkpoint.load(checkpoint.latest(tmp_path / "straight" / "checkpoints"))
    b, _ = checkpoint.load(checkpoint.latest(tmp_path / "resumed" / "checkpoints"))
    assert state["step"] == 4 and set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    student = load_pipeline(str(tmp_path / "straight"))
    assert isinstance(student.transformer, CausalShapesVideoTransformer3DModel)
    pipe = accelerate_pipeline(student)
    out = pipe("a blue square moving up", sampler="fewstep", num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0), **CALL).frames
    assert out.shape == (1, 4, 8, 8, 3) and torch.isfinite(out).all() and pipe.stats.extra["chunks"] == 2


def test_ar_needs_the_builtin_video_model():
    from accel.pipelines.shapes import build_shapes_pipeline

    image = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                                  sample_size=16)
    with pytest.raises(ValueError, match="autoregressive students are implemented for the built-in video model"):
        Distiller(image, DistillConfig(steps=1, batch_size=1, ar=ARConfig(), call_args={"height": 16, "width": 16}))


def test_cli_trains_an_autoregressive_student(teacher, tmp_path):
    from typer.testing import CliRunner

    from accel.cli.main import app

    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    runner = CliRunner()
    args = ["distill", "--model", str(folder), "--out", str(tmp_path / "ar"), "--batch-size", "1", "--steps", "2",
            "--critic-per-generator", "1", "--ar-chunk-frames", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert load_pipeline(str(tmp_path / "ar")).transformer.config.chunk_frames == 2
    for bad, message in ((["--ar-align", "sometimes"], "allowed: released, paper, off"),
                         (["--ar-chunk-frames", "-1"], "must be >= 0")):
        r = runner.invoke(app, args[:-2] + ["--ar-chunk-frames", "2"] * ("--ar-chunk-frames" not in bad) + bad)
        assert r.exit_code == 2 and message in " ".join(r.output.split()), (bad, r.output)

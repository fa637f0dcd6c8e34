"""The built-in video pipeline: a real diffusers pipeline, the adapter reproduces it, HSA's active-token forward
is exact where it must be, diffusers' caches and the CLI work on it."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from accel import accelerate_pipeline
from accel.cli.main import app
from accel.pipelines.registry import adapter_for
from accel.pipelines.shapes_video import ShapesVideoPipeline, VideoActiveTokens, build_shapes_video_pipeline
from accel.schedulers.flow import sample
from accel.schedulers.hsa import HSAConfig, hsa_sample
from accel.testing import jitter_


@pytest.fixture(scope="module")
def pipe():
    p = build_shapes_video_pipeline(width=32, num_layers=2, text_hidden=32, text_layers=1, num_frames=4,
                                    sample_size=16)
    jitter_(p.transformer, seed=3)
    return p


def call(p, **kw):
    return p("a red circle moving left", num_inference_steps=kw.pop("steps", 3),
             generator=torch.Generator().manual_seed(5), **kw)


def test_pipeline_round_trip_and_accelerated_equality(pipe, tmp_path):
    out = call(pipe).frames
    assert out.shape == (1, 4, 16, 16, 3) and 0 <= out.min() and out.max() <= 1
    pipe.save_pretrained(tmp_path)
    loaded = ShapesVideoPipeline.from_pretrained(tmp_path, use_safetensors=True)
    loaded.set_progress_bar_config(disable=True)
    assert np.abs(call(loaded).frames - out).max() == 0
    fast = call(accelerate_pipeline(pipe))
    assert np.abs(fast.frames - out).max() <= 1e-5 and fast.stats.nfe == 3 * 2


def test_per_token_timestep_matches_per_sample(pipe):
    x = torch.randn(2, 3, 4, 16, 16)
    enc, mask = pipe.encode_prompt(["a red circle moving left", "a blue square moving up"])
    with torch.no_grad():
        a = pipe.transformer(x, enc, torch.tensor([0.3, 0.7]), mask).sample
        b = pipe.transformer(x, enc, torch.tensor([0.3, 0.7])[:, None].expand(2, 64), mask).sample
    assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="timestep must have shape"):
        pipe.transformer(x, enc, torch.ones(2, 5), mask)


@torch.no_grad()
def test_hsa_exact_with_every_token_and_cached_kv(pipe):
    d = adapter_for(pipe)
    prepared = d.prepare(prompt=["a red circle moving left", "two"], num_inference_steps=8,
                         generator=torch.Generator().manual_seed(0))
    ref = sample(d, prepared.x, prepared.grid, prepared.cond)
    out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=1.0))
    assert torch.equal(out, ref)
    # active-token attention with every cached K/V fresh is the full forward
    run = VideoActiveTokens(d, prepared.cond)
    n = d.token_layout(prepared.x).num_tokens
    run(prepared.x, prepared.grid.sigmas[0], torch.arange(n).expand(2, n))
    sigma = prepared.grid.sigmas[0]  # same latent and sigma: the cached K/V are what fresh ones would be
    perm = torch.randperm(n)[: n // 2].expand(2, -1)
    part = run(prepared.x, sigma, perm)
    full = d.transformer.patchify(d.velocity(prepared.x, sigma, prepared.cond))
    assert torch.allclose(part, torch.gather(full, 1, perm[..., None].expand(-1, -1, full.shape[-1])), atol=1e-5)
    out, stats = hsa_sample(d, prepared.x, prepared.grid, prepared.cond, HSAConfig(runtime=0.5))
    assert stats.token_fraction <= 0.5 and torch.isfinite(out).all()
    assert sum(len(m._forward_hooks) for m in pipe.transformer.modules()) == 0


def test_diffusers_caches_apply_and_come_off(pipe):
    from diffusers.hooks import FirstBlockCacheConfig

    ref = call(accelerate_pipeline(pipe), steps=6).frames
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    try:
        cached = call(accelerate_pipeline(pipe), steps=6).frames
    finally:
        pipe.transformer.disable_cache()
    assert np.abs(cached - ref).max() > 0
    assert np.abs(call(accelerate_pipeline(pipe), steps=6).frames - ref).max() == 0


def test_cli_generate_eval_and_bench(pipe, tmp_path):
    folder = tmp_path / "video"
    pipe.save_pretrained(folder)
    runner = CliRunner()
    r = runner.invoke(app, ["generate", "a red circle moving left", "--model", str(folder), "--steps", "2",
                            "--out", str(tmp_path / "clip.gif")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "shapes-video", "--model", str(folder), "--prompts", "2", "--steps", "2",
                            "--json", str(tmp_path / "eval.json"), "--allow-dirty"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(result["per_tag"]) == {"one", "two"} and 0 <= result["frame_accuracy"] <= 1
    r = runner.invoke(app, ["bench", "steps", "--model", str(folder), "--prompts", "2", "--steps", "6",
                            "--methods", "uniform:steps=3,hsa:runtime=0.5", "--json", str(tmp_path / "b.json"),
                            "--allow-dirty"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [row["model"] for row in rows] == ["video"] * 3
    r = runner.invoke(app, ["eval", "shapes-video", "--model", str(folder), "--prompts", "2", "--steps", "6",
                            "--steps-mode", "hsa", "--runtime", "0.6", "--json", str(tmp_path / "hsa.json"),
                            "--allow-dirty"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "hsa.json").read_text())
    assert result["steps_mode"] == "hsa:runtime=0.6" and result["model"] == str(folder)
    r = runner.invoke(app, ["eval", "shapes-video", "--model", str(folder), "--runtime", "0.5"])
    assert r.exit_code == 2 and "--runtime applies" in r.output


@torch.no_grad()
def test_partial_steps_skip_the_text_with_the_refresh(pipe):
    """With kv="refresh" a partial step's queries are the active image tokens only (the text's K/V come from its
    cached block inputs); with "stale" the text tokens are recomputed with them."""
    d = adapter_for(pipe)
    prepared = d.prepare(prompt=["a red circle moving left"], num_inference_steps=4,
                         generator=torch.Generator().manual_seed(0))
    n = d.token_layout(prepared.x).num_tokens
    t_len = prepared.cond.data["embeds"].shape[1]
    active = torch.arange(n // 4).expand(1, -1)
    for kv, rows in (("refresh", n // 4), ("stale", t_len + n // 4)):
        run = VideoActiveTokens(d, prepared.cond, kv)
        run(prepared.x, prepared.grid.sigmas[0], torch.arange(n).expand(1, n))
        seen = []
        hook = pipe.transformer.blocks[0].attn.to_q.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
        try:
            out = run(prepared.x, prepared.grid.sigmas[1], active)
        finally:
            hook.remove()
        assert seen == [rows] and out.shape[1] == n // 4 and torch.isfinite(out).all()

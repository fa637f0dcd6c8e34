"""The chunk-causal video DiT: its streamed chunks equal the block-causal whole-clip forward, no chunk sees a later
one, and a causal student samples chunk by chunk through the wrapper (sampler="fewstep")."""

import pytest
import torch

from accel import accelerate_pipeline
from accel.pipelines.shapes_causal import CausalShapesVideoTransformer3DModel
from accel.pipelines.shapes_video import ShapesVideoPipeline, build_shapes_video_pipeline
from accel.schedulers.fewstep import StudentSpec, fewstep_grid, fewstep_stream


@pytest.fixture(scope="module")
def teacher():
    p = build_shapes_video_pipeline(width=32, num_layers=2, text_hidden=32, text_layers=1, num_frames=6,
                                    sample_size=8, patch_frames=1)
    torch.manual_seed(3)
    with torch.no_grad():
        for q in p.transformer.parameters():
            q.add_(0.1 * torch.randn_like(q))
    return p


@pytest.fixture(scope="module")
def causal(teacher):
    return CausalShapesVideoTransformer3DModel.from_bidirectional(teacher.transformer, chunk_frames=2).eval()


def _text(teacher, prompts):
    embeds, mask = teacher.encode_with_negatives(prompts, None, 1.0, "cpu")
    return embeds, mask


@torch.no_grad()
def test_streamed_chunks_equal_the_block_causal_forward(teacher, causal):
    embeds, mask = _text(teacher, ["a red circle moving left", "a blue square"])
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 3, 6, 8, 8, generator=g)
    assert causal.num_chunks(clean) == 3
    cache = causal.begin(embeds, mask, clean)
    for k in range(3):
        part = causal.chunk_slice(k)
        noisy = torch.randn(2, 3, 2, 8, 8, generator=g)
        sigma = torch.tensor([0.7, 0.3])
        v_stream = causal.forward_chunk(noisy, sigma, cache, k)
        # the whole clip: earlier chunks clean at sigma 0, this chunk noisy at sigma, later ones anything
        x = clean.clone()
        x[:, :, part] = noisy
        x[:, :, part.stop:] = torch.randn_like(x[:, :, part.stop:])
        per_token = torch.zeros(2, 3, 8)  # (B, chunk, tokens of a chunk: 2 frames x 2 x 2 patches)
        per_token[:, k] = sigma[:, None]
        v_full = causal(x, embeds, per_token.reshape(2, -1), mask).sample
        torch.testing.assert_close(v_stream, v_full[:, :, part], atol=2e-5, rtol=1e-4)
        causal.forward_chunk(clean[:, :, part], torch.zeros(()), cache, k, commit=True)
    with pytest.raises(ValueError, match="needs a cache of chunks"):
        causal.forward_chunk(clean[:, :, :2], torch.zeros(()), cache, 1)


@torch.no_grad()
def test_no_chunk_sees_a_later_one_and_text_sees_no_video(teacher, causal):
    embeds, mask = _text(teacher, ["a green triangle moving up"])
    x = torch.randn(1, 3, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    v = causal(x, embeds, torch.tensor([0.5]), mask).sample
    y = x.clone()
    y[:, :, 4:] += 1.0  # change the last chunk only
    w = causal(y, embeds, torch.tensor([0.5]), mask).sample
    assert torch.equal(v[:, :, :4], w[:, :, :4]) and not torch.allclose(v[:, :, 4:], w[:, :, 4:])
    with pytest.raises(ValueError, match="does not split into chunks of 2"):
        causal.num_chunks(torch.zeros(1, 3, 5, 8, 8))


@torch.no_grad()
def test_causal_student_streams_through_the_wrapper_and_reloads(teacher, causal, tmp_path):
    student = ShapesVideoPipeline(**{**teacher.components, "transformer": causal})
    student.set_progress_bar_config(disable=True)
    spec = StudentSpec(timesteps={4: (1000, 750, 500, 250), 2: (1000, 500)}, shift=3.0,
                       call_defaults={"guidance_scale": 1.0})
    student.save_pretrained(tmp_path)
    spec.save(tmp_path)
    loaded = ShapesVideoPipeline.from_pretrained(tmp_path, use_safetensors=True)
    assert isinstance(loaded.transformer, CausalShapesVideoTransformer3DModel)
    assert loaded.transformer.config.chunk_frames == 2
    pipe = accelerate_pipeline(loaded)
    kw = dict(prompt="a red circle moving right", output_type="pt", sampler="fewstep")
    a = pipe(**kw, num_inference_steps=4, generator=torch.Generator().manual_seed(2)).frames
    b = pipe(**kw, num_inference_steps=4, generator=torch.Generator().manual_seed(2)).frames
    assert a.shape == (1, 6, 8, 8, 3) and torch.equal(a, b)
    # 4 steps over 3 chunks plus the commits of the first two: 4 + 2/3 clip-forwards
    assert pipe.stats.nfe == pytest.approx(4 + 2 / 3) and pipe.stats.extra["chunks"] == 3
    # the stream by hand gives the same clip
    adapter = pipe.adapter
    g = torch.Generator().manual_seed(2)  # draws the start noise, then the re-noising noise, as the wrapper's
    prepared = adapter.prepare(prompt="a red circle moving right", generator=g,
                               guidance_scale=1.0, num_inference_steps=4, output_type="pt")
    chunked = adapter.chunked(prepared.cond, prepared.x)
    chunks = list(fewstep_stream(chunked, prepared.x, fewstep_grid((1000, 750, 500, 250), 3.0), "renoise", g))
    assert len(chunks) == 3
    torch.testing.assert_close(loaded.postprocess(chunked.join(chunks), "pt"), a)
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        pipe(prompt="a red circle", sampler="fewstep", guidance_scale=3.0)

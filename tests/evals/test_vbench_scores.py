"""VBench's native scores: temporal flickering and the consistency rule against VBench's formulas worked by hand,
its preprocessing against analytic cases, the DINO / CLIP feature paths against the transformers models called
directly, DINO's own position-embedding interpolation, weights-folder checks, and the aggregate scores."""

import json
import string

import numpy as np
import pytest
import torch
from PIL import Image

from accel.evals import vbench_scores as vs
from accel.evals.vbench import NORMALIZE, QUALITY, SEMANTIC, aggregate


def write_gif(path, frames):
    """Lossless for a few grey levels (GIF's palette), so a test can know the decoded pixels exactly."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=125, loop=0)
    return str(path)


def grey_video(levels, h=8, w=12):
    return np.stack([np.full((h, w, 3), v, np.uint8) for v in levels])


# ---------------------------------------------------------------------------------------------------------------------
# Temporal flickering: vbench/temporal_flickering.py's (255 - mean over pairs of mean |a - b|) / 255

def test_flickering_matches_vbench_formula_by_hand():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(5, 9, 7, 3), dtype=np.uint8)
    maes = [np.abs(frames[i].astype(np.float64) - frames[i + 1].astype(np.float64)).mean() for i in range(4)]
    assert vs.flickering_of_frames(frames) == pytest.approx((255 - np.mean(maes)) / 255, abs=1e-7)
    # Grey frames 0, 10, 0, 30: pair MAEs 10, 10, 30, mean 50 / 3 (VBench averages the float32 MAEs in float32,
    # so the score is that to float32's precision, and bit for bit what its arithmetic gives).
    score = vs.flickering_of_frames(grey_video([0, 10, 0, 30]))
    assert score == pytest.approx((255 - 50 / 3) / 255, abs=1e-7)
    assert score == (255.0 - np.mean(np.array([np.float32(10), np.float32(10), np.float32(30)])).item()) / 255.0
    assert vs.flickering_of_frames(grey_video([7, 7, 7])) == 1.0
    with pytest.raises(ValueError, match="at least 2 frames"):
        vs.flickering_of_frames(grey_video([7]))


def test_flickering_dimension_is_the_mean_over_video_files(tmp_path):
    a = write_gif(tmp_path / "a-0.gif", grey_video([0, 10, 0, 30]))
    b = write_gif(tmp_path / "b-0.gif", grey_video([50, 55, 60]))  # (GIF merges repeated frames: none here)
    assert np.array_equal(vs.read_video(a), grey_video([0, 10, 0, 30]))
    result = vs.temporal_flickering([a, b])
    expected = [(255 - 50 / 3) / 255, (255 - 5) / 255]
    assert [s for _, s in result.videos] == pytest.approx(expected, abs=1e-7)
    assert result.score == pytest.approx(np.mean(expected), abs=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# Consistency: per frame after the first, (max(0, cos to previous) + max(0, cos to first)) / 2

def test_consistency_rule_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    total, count = vs.consistency_of_features(f)
    # frame 1: both cosines 0; frame 2: cos to previous and to first both 1/sqrt(2)
    assert count == 2 and total == pytest.approx(2 ** -0.5, abs=1e-6)
    total, _ = vs.consistency_of_features(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    assert total == 0.0  # negative similarity counts as 0, not below


def test_consistency_dimension_weights_frames_not_videos(tmp_path):
    """VBench divides the sum over all frames by their count: a longer video weighs more than in a mean of videos."""
    short = write_gif(tmp_path / "s-0.gif", grey_video([0, 20]))
    long = write_gif(tmp_path / "l-0.gif", grey_video([0, 80, 70, 80]))

    def features(frames):  # brightness as an angle: frame t's feature is (cos, sin) of level / 100
        angle = torch.tensor(frames[:, 0, 0, 0], dtype=torch.float64) / 100
        return torch.stack([angle.cos(), angle.sin()], dim=1)

    cos = np.cos
    per_long = [cos(0.8), (cos(0.1) + cos(0.7)) / 2, (cos(0.1) + cos(0.8)) / 2]  # frames 1, 2, 3
    result = vs.consistency([short, long], features)
    assert [s for _, s in result.videos] == pytest.approx([cos(0.2), sum(per_long) / 3], abs=1e-6)
    assert result.score == pytest.approx((cos(0.2) + sum(per_long)) / 4, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing (vbench/utils.py dino_transform / clip_transform)

def test_transforms_sizes_and_constant_frames():
    frames = np.full((2, 32, 48, 3), 200, np.uint8)
    dino = vs.dino_pixels(frames)
    clip = vs.clip_pixels(frames)
    assert dino.shape == (2, 3, 224, 336) and clip.shape == (2, 3, 224, 224)  # DINO keeps the aspect; CLIP crops
    for x, mean, std in ((dino, vs.IMAGENET_MEAN, vs.IMAGENET_STD), (clip, vs.CLIP_MEAN, vs.CLIP_STD)):
        expected = (200 / 255 - torch.tensor(mean)) / torch.tensor(std)
        assert torch.allclose(x.mean(dim=(0, 2, 3)), expected, atol=1e-5)
        assert float(x.std(dim=(2, 3)).max()) < 1e-4
    # The crop is centred: a frame whose left and right thirds differ keeps only its middle after the crop.
    striped = np.zeros((1, 32, 96, 3), np.uint8)
    striped[:, :, 16:80] = 255  # the crop keeps source columns 32-64, two cubic taps clear of the edges
    middle = vs.clip_pixels(striped)
    assert torch.allclose(middle, (1.0 - torch.tensor(vs.CLIP_MEAN)).view(1, 3, 1, 1) /
                          torch.tensor(vs.CLIP_STD).view(1, 3, 1, 1), atol=1e-4)
    assert vs.resize_shorter(torch.zeros(1, 3, 224, 300), 224, "bilinear").shape == (1, 3, 224, 300)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny DINO and CLIP models (random weights, built from configs, offline)

def save_tiny_dino(path):
    """A transformers ViT as DINO's (16-pixel patches at 224), 32 wide and one layer deep, random weights."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       image_size=224, patch_size=16)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(path)
    return path


def tiny_clip_tokenizer():
    """CLIP's byte-pair tokenizer over single characters (plain and word-final), no merges: bos 0, eos = pad 1."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase + string.digits + string.punctuation:
            vocab.setdefault(c + suffix, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def save_tiny_clip(path, patch=32):
    """A full transformers CLIP with its tokenizer, as openai/clip-vit-base-patch32 ships (32-pixel patches; 14 as
    ViT-L/14), tiny and random."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": 160, "hidden_size": 32, "intermediate_size": 37,
                                     "num_hidden_layers": 1, "num_attention_heads": 2,
                                     "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                                     "pad_token_id": 1},
                        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 224, "patch_size": patch},
                        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(path)
    tiny_clip_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    return save_tiny_dino(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def video(seed=0, t=3, h=224, w=224):
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@torch.no_grad()
def test_dino_features_are_the_cls_token_after_the_final_norm(dino_folder):
    from transformers import ViTModel

    frames = video()
    ours = vs.dino_features(dino_folder)(frames)
    model = ViTModel.from_pretrained(dino_folder, add_pooling_layer=False, layer_norm_eps=1e-6).eval()
    direct = model(pixel_values=vs.dino_pixels(frames)).last_hidden_state[:, 0]
    assert torch.allclose(ours, torch.nn.functional.normalize(direct, dim=-1), atol=1e-6)
    wide = vs.dino_features(dino_folder)(video(h=32, w=64))  # 224 x 448: interpolated position embeddings
    assert wide.shape == (3, 32) and torch.isfinite(wide).all()


def test_dino_position_embeddings_follow_dino_scale_factors():
    """Position tables linear in row and column: away from the border each output cell is the cubic convolution
    (a = -0.75, PyTorch's bicubic; weights worked out here) of the line at DINO's source coordinate
    (dst + 0.5) * 14 / (n + 0.1) - 0.5 (scale-factor semantics), not transformers' (dst + 0.5) * 14 / n - 0.5."""

    class Embeddings:
        patch_size = 16
        rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
        table = torch.stack([rows, cols], dim=-1).reshape(1, 196, 2)
        position_embeddings = torch.cat([torch.zeros(1, 1, 2), table], dim=1)

    e = Embeddings()
    pos = vs._dino_position_embeddings(e, torch.zeros(1, 1 + 20 * 28, 2), 320, 448)  # 20 x 28 patches
    grid = pos[0, 1:].reshape(20, 28, 2)

    def cubic(x, a=-0.75):
        x = abs(x)
        return (a + 2) * x**3 - (a + 3) * x**2 + 1 if x <= 1 else a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a

    def line_at(s):  # sum of i * w(s - i) over the four taps around s
        f = int(np.floor(s))
        return sum(i * cubic(s - i) for i in range(f - 1, f + 3))

    def dino(dst, n):
        return line_at((dst + 0.5) * 14 / (n + 0.1) - 0.5)

    for r, c in ((6, 10), (10, 14), (13, 20)):
        assert grid[r, c, 0].item() == pytest.approx(dino(r, 20), abs=1e-5)
        assert grid[r, c, 1].item() == pytest.approx(dino(c, 28), abs=1e-5)
    size_based = line_at((10 + 0.5) * 14 / 28 - 0.5)
    assert abs(grid[6, 10, 1].item() - size_based) > 1e-2  # transformers' own interpolation would differ
    square = vs._dino_position_embeddings(e, torch.zeros(1, 197, 2), 224, 224)
    assert square is e.position_embeddings


@torch.no_grad()
def test_clip_features_are_the_projected_image_embeddings(clip_folder):
    from transformers import CLIPModel

    frames = video(t=4, h=64, w=96)
    ours = vs.clip_features(clip_folder)(frames)
    model = CLIPModel.from_pretrained(clip_folder).eval()
    pooled = model.vision_model(pixel_values=vs.clip_pixels(frames)).pooler_output
    direct = torch.nn.functional.normalize(model.visual_projection(pooled), dim=-1)
    assert ours.shape == (4, 16) and torch.allclose(ours, direct, atol=1e-6)


def test_pil_transform_filters_when_it_shrinks():
    """appearance_style's frames go through Pillow (VBench's clip_transform_Image): shrinking a fine checkerboard
    averages it to grey, where the tensor path (no antialias) samples it."""
    flat = vs.clip_pixels_pil(np.full((1, 64, 96, 3), 200, np.uint8))
    expected = (200 / 255 - torch.tensor(vs.CLIP_MEAN)) / torch.tensor(vs.CLIP_STD)
    assert flat.shape == (1, 3, 224, 224) and torch.allclose(flat.mean(dim=(0, 2, 3)), expected, atol=1e-5)
    board = ((np.indices((1000, 1000)).sum(0) % 2) * 255).astype(np.uint8)
    board = np.repeat(board[None, :, :, None], 3, axis=-1)
    grey = (0.5 - torch.tensor(vs.CLIP_MEAN).view(3, 1, 1)) / torch.tensor(vs.CLIP_STD).view(3, 1, 1)
    assert (vs.clip_pixels_pil(board)[0] - grey).abs().mean() < 0.1
    assert (vs.clip_pixels(board)[0] - grey).abs().mean() > 0.5


@torch.no_grad()
def test_appearance_style_is_the_image_text_logit_over_100(clip_folder, tmp_path):
    from transformers import CLIPModel

    a = write_gif(tmp_path / "a-0.gif", video(1, t=3, h=48, w=64))
    b = write_gif(tmp_path / "b-0.gif", video(2, t=2, h=48, w=64))
    result = vs.appearance_style([([a], "oil painting"), ([b], "van gogh style")], clip_folder)
    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokenizer = tiny_clip_tokenizer()
    per_frame = []
    for path, style in ((a, "oil painting"), (b, "van gogh style")):
        text = model.text_model(input_ids=tokenizer([style], return_tensors="pt").input_ids).pooler_output
        text = torch.nn.functional.normalize(model.text_projection(text), dim=-1)
        image = model.vision_model(pixel_values=vs.clip_pixels_pil(vs.read_video(path))).pooler_output
        image = torch.nn.functional.normalize(model.visual_projection(image), dim=-1)
        per_frame.append((image @ text.T)[:, 0] * model.logit_scale.exp() / 100)
    assert [s for _, s in result.videos] == pytest.approx([float(f.mean()) for f in per_frame], abs=1e-6)
    assert result.score == pytest.approx(float(torch.cat(per_frame).mean()), abs=1e-6)  # frames, not videos


def save_tiny_head(path, dim=16):
    """LAION's aesthetic head layout (nn.Linear(D, 1): weight (1, D), bias (1,)), random, as safetensors."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    save_file({"weight": torch.randn(1, dim, generator=g), "bias": torch.randn(1, generator=g)}, str(path))
    return path


@torch.no_grad()
def test_aesthetic_quality_is_the_head_over_10_averaged_per_video(tmp_path):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    large, head = save_tiny_clip(tmp_path / "large", patch=14), save_tiny_head(tmp_path / "head.safetensors")
    a = write_gif(tmp_path / "a-0.gif", video(1, t=3, h=48, w=64))
    b = write_gif(tmp_path / "b-0.gif", video(2, t=2, h=48, w=64))
    result = vs.aesthetic_quality([a, b], large, head)
    model, w = CLIPModel.from_pretrained(large).eval(), load_file(head)
    per_video = []
    for path in (a, b):
        image = model.vision_model(pixel_values=vs.clip_pixels(vs.read_video(path))).pooler_output
        image = torch.nn.functional.normalize(model.visual_projection(image), dim=-1)
        per_video.append(float(((image @ w["weight"].T + w["bias"]) / 10).mean()))
    assert [s for _, s in result.videos] == pytest.approx(per_video, abs=1e-6)
    assert result.score == pytest.approx(np.mean(per_video), abs=1e-6)  # videos, not frames
    save_tiny_head(tmp_path / "narrow.safetensors", dim=8)
    with pytest.raises(ValueError, match="not a LAION aesthetic head"):
        vs.check_aesthetic_head(tmp_path / "narrow.safetensors", 16)
    with pytest.raises(ValueError, match="not a LAION aesthetic head"):
        vs.check_aesthetic_head(large / "config.json")
    with pytest.raises(ValueError, match="not a CLIP ViT-L/14"):
        vs.check_clip_folder(save_tiny_clip(tmp_path / "b32"), 14)


def test_weights_folders_are_checked(dino_folder, clip_folder, tmp_path):
    assert vs.check_dino_folder(dino_folder)["patch_size"] == 16
    assert vs.check_clip_folder(clip_folder)["patch_size"] == 32
    assert not vs.reference_architecture(vs.check_dino_folder(dino_folder))
    with pytest.raises(ValueError, match="not a DINO ViT-B/16"):
        vs.check_dino_folder(clip_folder)
    with pytest.raises(ValueError, match="not a CLIP ViT-B/32"):
        vs.check_clip_folder(dino_folder)
    with pytest.raises(ValueError, match="no config.json"):
        vs.check_dino_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "patch_size": 16}))
    with pytest.raises(ValueError, match="safetensors"):
        vs.check_dino_folder(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Aggregates (scripts/constant.py, scripts/cal_final_score.py)

def test_aggregate_at_the_normalisation_bounds_and_by_hand():
    top = aggregate({d: hi for d, (lo, hi) in NORMALIZE.items()})
    assert (top["quality"], top["semantic"], top["total"], top["partial"]) == (pytest.approx(1), pytest.approx(1),
                                                                               pytest.approx(1), False)
    bottom = aggregate({d: lo for d, (lo, hi) in NORMALIZE.items()})
    assert (bottom["quality"], bottom["semantic"], bottom["total"]) == (0, 0, 0)
    assert len(QUALITY) == 7 and len(SEMANTIC) == 9
    # subject consistency halfway (0.1462 + 0.5 * 0.8538), dynamic degree 0.25 at weight 0.5, scene at its max 0.8222
    partial = aggregate({"subject_consistency": 0.1462 + 0.5 * 0.8538, "dynamic_degree": 0.25, "scene": 0.8222})
    assert partial["quality"] == pytest.approx((0.5 + 0.5 * 0.25) / 1.5)
    assert partial["semantic"] == pytest.approx(1.0)
    assert partial["total"] == pytest.approx((4 * (0.5 + 0.5 * 0.25) / 1.5 + 1.0) / 5)
    assert partial["partial"] and "temporal_flickering" in partial["missing_dimensions"]
    only_quality = aggregate({"temporal_flickering": 1.0})
    assert only_quality["semantic"] is None and only_quality["total"] is None and only_quality["quality"] == 1.0

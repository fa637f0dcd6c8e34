"""VBench's scores for the dimensions accel computes itself, and the bridge to the `vbench` package for the rest.

Native dimensions follow VBench's code (github.com/Vchitect/VBench, vbench/*.py) step by step:

- temporal_flickering: per video, the mean absolute difference of consecutive frames (all pixels and channels, as
  float32), score (255 - mean) / 255; the dimension is the mean over videos. No model.
- subject_consistency: DINO ViT-B/16 [CLS] features of every frame (shorter side resized to 224, bilinear, no
  antialias, no crop; ImageNet mean / std); per frame after the first, the mean of max(0, cos) to the previous and
  to the first frame; the dimension is the mean over all such frames of all videos.
- background_consistency: the same rule over CLIP ViT-B/32 image embeddings (shorter side to 224, bicubic, no
  antialias, centre crop 224; CLIP's mean / std).
- aesthetic_quality: per frame, LAION's aesthetic linear head on the L2-normalised CLIP ViT-L/14 image embedding
  (background_consistency's preprocessing), divided by 10; a video's score is its frames' mean, the dimension the
  mean over videos. The head (LAION's sa_0_4_vit_l_14_linear, a 768 -> 1 linear layer) is read from safetensors.
- appearance_style: per frame, CLIP ViT-B/32's image-text logit / 100 (the cosine of the frame's and the style
  text's embeddings times exp(logit_scale) / 100) against the entry's auxiliary_info style; frames resized with
  Pillow's bicubic (VBench's clip_transform_Image on PIL images); the dimension is the mean over all frames.

The models load with transformers from local folders (safetensors only, no remote code). Videos are read back from
the mp4 files, as VBench reads them, so the codec's effect on the frames is part of the score.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
NATIVE = ("temporal_flickering", "subject_consistency", "background_consistency", "aesthetic_quality",
          "appearance_style")
# The models each native dimension needs, as fields of ScoringWeights, and the names `--weights DIR` holds them by
# (the hub folders' names; LAION's head file converted to safetensors).
NATIVE_MODELS = {"subject_consistency": ("dino",), "background_consistency": ("clip",),
                 "aesthetic_quality": ("clip_large", "aesthetic_head"), "appearance_style": ("clip",)}
WEIGHT_FOLDERS = {"dino": "dino-vitb16", "clip": "clip-vit-base-patch32", "clip_large": "clip-vit-large-patch14",
                  "aesthetic_head": "sa_0_4_vit_l_14_linear.safetensors"}
CLIP_NAMES = {32: "CLIP ViT-B/32 (transformers CLIP, e.g. openai/clip-vit-base-patch32)",
              14: "CLIP ViT-L/14 (transformers CLIP, e.g. openai/clip-vit-large-patch14)"}
# Files the vbench package loads for each dimension in its local mode (vbench/utils.py init_submodules, under
# $VBENCH_CACHE_DIR or ~/.cache/vbench); where one is missing the package would download it, which we never ask of it.
VBENCH_PACKAGE_FILES = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "object_class": ("grit_model/grit_b_densecap_objectdet.pth",),
    "multiple_objects": ("grit_model/grit_b_densecap_objectdet.pth",),
    "color": ("grit_model/grit_b_densecap_objectdet.pth",),
    "spatial_relationship": ("grit_model/grit_b_densecap_objectdet.pth",),
    "scene": ("caption_model/tag2text_swin_14m.pth",),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "appearance_style": ("clip_model/ViT-B-32.pt",),
    "temporal_style": ("ViCLIP/ViClip-InternVid-10M-FLT.pth",),
    "overall_consistency": ("ViCLIP/ViClip-InternVid-10M-FLT.pth",),
}


@dataclass(frozen=True)
class DimensionScore:
    """One dimension's result in VBench's terms: the dimension score and each video's own score."""

    score: float
    videos: list[tuple[str, float]]


# ---------------------------------------------------------------------------------------------------------------------
# Reading videos

def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file as uint8 RGB, (T, H, W, 3). mp4 through imageio's ffmpeg reader (VBench decodes
    with decord / OpenCV, both ffmpeg underneath); gif through Pillow, as VBench's load_video."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as img:
            return np.stack([np.asarray(frame.convert("RGB"), dtype=np.uint8) for frame in ImageSequence.Iterator(img)])
    import imageio.v3 as iio

    frames = np.asarray(iio.imread(path, index=None))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path} is not an RGB video (frames of shape {frames.shape})")
    return frames


# ---------------------------------------------------------------------------------------------------------------------
# Temporal flickering

def flickering_of_frames(frames: np.ndarray) -> float:
    """VBench's temporal-flickering score of one video, (T, H, W, C) uint8 frames, T >= 2.

    Mirrors vbench/temporal_flickering.py: each consecutive pair's MAE is the mean of |a - b| over float32 pixels
    (cv2.absdiff on float32 arrays), the video's MAE the mean over pairs; score = (255 - MAE) / 255.
    """
    if len(frames) < 2:
        raise ValueError(f"temporal flickering needs at least 2 frames, got {len(frames)}")
    maes = np.array([np.mean(np.abs(frames[i].astype(np.float32) - frames[i + 1].astype(np.float32)))
                     for i in range(len(frames) - 1)])
    return (255.0 - np.mean(maes).item()) / 255.0


def temporal_flickering(videos: list[str], progress: Callable[[int], None] | None = None) -> DimensionScore:
    """The dimension: the mean of the videos' scores (VBench averages videos here, not frames)."""
    per_video = []
    for path in videos:
        per_video.append((path, flickering_of_frames(read_video(path))))
        if progress:
            progress(1)
    return DimensionScore(float(np.mean([s for _, s in per_video])), per_video)


# ---------------------------------------------------------------------------------------------------------------------
# Consistency (subject: DINO, background: CLIP)

def consistency_of_features(features: torch.Tensor) -> tuple[float, int]:
    """VBench's consistency rule over one video's frame features (T, D): for each frame after the first, the mean of
    max(0, cos) with the previous frame and with the first. Returns (sum over those frames, their count)."""
    total = 0.0
    for i in range(1, len(features)):
        prev = max(0.0, F.cosine_similarity(features[i - 1:i], features[i:i + 1]).item())
        first = max(0.0, F.cosine_similarity(features[0:1], features[i:i + 1]).item())
        total += (prev + first) / 2
    return total, len(features) - 1


def consistency(videos: list[str], features: Callable[[np.ndarray], torch.Tensor],
                progress: Callable[[int], None] | None = None) -> DimensionScore:
    """The dimension: the rule's sum over all videos' frames divided by their count (VBench's sim / cnt; a video's
    own score is its sum over its frames-after-the-first)."""
    total, count, per_video = 0.0, 0, []
    for path in videos:
        frames = read_video(path)
        if len(frames) < 2:
            raise ValueError(f"{path}: consistency needs at least 2 frames, got {len(frames)}")
        s, n = consistency_of_features(features(frames))
        total, count = total + s, count + n
        per_video.append((path, s / n))
        if progress:
            progress(1)
    return DimensionScore(total / count, per_video)


def _to_float_tensor(frames: np.ndarray) -> torch.Tensor:
    # VBench's load_video: torch.Tensor(uint8 frames) -> float32 in [0, 255], then (T, C, H, W).
    return torch.from_numpy(np.ascontiguousarray(frames)).float().permute(0, 3, 1, 2)


def resize_shorter(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """torchvision's Resize(size, antialias=False) on a float (T, C, H, W) tensor: the shorter side to `size`, the
    longer to int(size * long / short), interpolate with align_corners=False; unchanged when already that size."""
    h, w = x.shape[-2:]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_long, new_short) if w <= h else (new_short, new_long)
    if (new_h, new_w) == (h, w):
        return x
    return F.interpolate(x, size=[new_h, new_w], mode=mode, align_corners=False, antialias=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop(size) for an image at least `size` on each side."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def dino_pixels(frames: np.ndarray) -> torch.Tensor:
    """VBench's dino_transform(224): (T, 3, 224, W') float32, W' keeping the aspect ratio (no crop)."""
    x = resize_shorter(_to_float_tensor(frames), 224, "bilinear")
    return _normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_pixels(frames: np.ndarray) -> torch.Tensor:
    """VBench's clip_transform(224): (T, 3, 224, 224) float32."""
    x = center_crop(resize_shorter(_to_float_tensor(frames), 224, "bicubic"), 224)
    return _normalize(x / 255.0, CLIP_MEAN, CLIP_STD)


def clip_pixels_pil(frames: np.ndarray) -> torch.Tensor:
    """VBench's clip_transform_Image(224) on PIL frames (appearance_style): Pillow's bicubic resize of the shorter
    side to 224 (Pillow filters when it shrinks; the tensor path does not), centre crop 224, /255, CLIP's mean /
    std. (T, 3, 224, 224) float32."""
    from PIL import Image

    out = []
    for frame in frames:
        img = Image.fromarray(frame)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = 224, int(224 * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size != (w, h):
            img = img.resize(size, Image.BICUBIC)
        left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
        img = img.crop((left, top, left + 224, top + 224))
        out.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255))
    return _normalize(torch.stack(out), CLIP_MEAN, CLIP_STD)


def _dino_position_embeddings(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINO's own interpolate_pos_encoding (facebookresearch/dino vision_transformer.py), bound to one loaded
    model's ViTEmbeddings: bicubic with scale factors (n + 0.1) / sqrt(N), which samples the grid slightly
    differently from transformers' size-based interpolation. Square 224 inputs use the table as it is."""
    pos = self.position_embeddings
    n = pos.shape[1] - 1
    if embeddings.shape[1] - 1 == n and height == width:
        return pos
    dim, side = pos.shape[-1], int(math.sqrt(n))
    rows, cols = height // self.patch_size + 0.1, width // self.patch_size + 0.1
    grid = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(rows / math.sqrt(n), cols / math.sqrt(n)), mode="bicubic")
    return torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


def _config(folder: Path, what: str) -> dict:
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a {what} folder: no config.json")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} is not a {what} folder: no .safetensors weights (only safetensors are loaded)")
    return json.loads((folder / "config.json").read_text())


def check_dino_folder(folder: str | Path) -> dict:
    """Raise ValueError unless `folder` holds a transformers ViT with 16-pixel patches (facebook/dino-vitb16 is the
    model VBench uses); returns the config."""
    folder = Path(folder)
    what = "DINO ViT-B/16 (transformers ViTModel, e.g. facebook/dino-vitb16)"
    config = _config(folder, what)
    if config.get("model_type") != "vit" or config.get("patch_size") != 16:
        raise ValueError(f"{folder} is not a {what} folder: model_type {config.get('model_type')!r}, patch size "
                         f"{config.get('patch_size')}")
    return config


def check_clip_folder(folder: str | Path, patch: int = 32) -> dict:
    """Raise ValueError unless `folder` holds a transformers CLIP (full or vision-only) with `patch`-pixel patches
    (VBench uses openai/clip-vit-base-patch32, and ViT-L/14 for aesthetics); returns the vision config with the
    model's projection_dim."""
    folder = Path(folder)
    what = CLIP_NAMES[patch]
    config = _config(folder, what)
    vision = dict(config.get("vision_config", {})) if config.get("model_type") == "clip" else dict(config)
    vision["projection_dim"] = config.get("projection_dim", vision.get("projection_dim", 512))
    if config.get("model_type") not in ("clip", "clip_vision_model") or vision.get("patch_size") != patch:
        raise ValueError(f"{folder} is not a {what} folder: model_type {config.get('model_type')!r}, patch size "
                         f"{vision.get('patch_size')}")
    return vision


def is_full_clip(folder: str | Path) -> bool:
    """A CLIP folder with its text tower and tokenizer (appearance_style scores frames against text)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()
    return config.get("model_type") == "clip" and tokenizer


def reference_architecture(config: dict, large: bool = False) -> bool:
    """ViT-B: 768 wide, 12 layers (VBench's DINO and CLIP); large: ViT-L, 1024 wide, 24 layers (its aesthetic CLIP).
    A smaller model scores, but not VBench's."""
    width, depth = (1024, 24) if large else (768, 12)
    return config.get("hidden_size", width) == width and config.get("num_hidden_layers", depth) == depth


def check_aesthetic_head(path: str | Path, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LAION's aesthetic head from a safetensors file: weight (1, D) and bias (1,), D the CLIP embedding width
    (768 for ViT-L/14; checked against `dim` when given). Raises ValueError otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    what = "LAION aesthetic head (safetensors with weight (1, 768) and bias (1,))"
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path} is not a {what}: {e}") from None
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.ndim != 2 or weight.shape[0] != 1 or bias.shape != (1,) or \
            (dim is not None and weight.shape[1] != dim):
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise ValueError(f"{path} is not a {what}: holds {shapes}" + (f", embedding width {dim}" if dim else ""))
    return weight.float(), bias.float()


def _check_loaded(folder, info: dict, what: str) -> None:
    """A checkpoint that leaves weights missing or of the wrong shape is not the model (transformers would fill
    them with random values and only log it)."""
    bad = list(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if bad:
        raise ValueError(f"{folder} is not a {what} checkpoint: {len(bad)} weight(s) missing or of another shape "
                         f"({bad[0]})")


@torch.no_grad()
def dino_features(folder: str | Path, device: str = "cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """A function frames -> L2-normalised DINO [CLS] features (T, D), the final LayerNorm applied (DINO's forward).

    The LayerNorm eps is set to DINO's 1e-6 (vision_transformer.py) whatever the converted config says."""
    from types import MethodType

    from transformers import ViTModel

    check_dino_folder(folder)
    model, info = ViTModel.from_pretrained(folder, add_pooling_layer=False, layer_norm_eps=1e-6, use_safetensors=True,
                                           output_loading_info=True)
    _check_loaded(folder, info, "DINO ViT-B/16")
    model = model.to(device).eval()
    # One loaded instance's method, not the class's: DINO interpolates position embeddings its own way.
    model.embeddings.interpolate_pos_encoding = MethodType(_dino_position_embeddings, model.embeddings)

    @torch.no_grad()
    def features(frames: np.ndarray) -> torch.Tensor:
        # VBench embeds one frame at a time; so do we (batching changes the last bits of the attention sums).
        out = [model(pixel_values=p[None].to(device), interpolate_pos_encoding=True).last_hidden_state[:, 0]
               for p in dino_pixels(frames)]
        return F.normalize(torch.cat(out).float().cpu(), dim=-1, p=2)

    return features


@torch.no_grad()
def clip_features(folder: str | Path, device: str = "cpu", patch: int = 32) -> Callable[[np.ndarray], torch.Tensor]:
    """A function frames -> L2-normalised CLIP image embeddings (T, D): OpenAI CLIP's encode_image, i.e. the
    projected, post-LayerNorm [CLS] token (transformers' CLIPVisionModelWithProjection.image_embeds)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    # A full CLIP folder keeps projection_dim beside vision_config, where the vision model's config does not look.
    vision = check_clip_folder(folder, patch)
    config = CLIPVisionConfig(**{k: v for k, v in vision.items() if k != "model_type"})
    model, info = CLIPVisionModelWithProjection.from_pretrained(folder, config=config, use_safetensors=True,
                                                                output_loading_info=True)
    _check_loaded(folder, info, CLIP_NAMES[patch].split(" (")[0])
    model = model.to(device).eval()

    @torch.no_grad()
    def features(frames: np.ndarray) -> torch.Tensor:
        embeds = model(pixel_values=clip_pixels(frames).to(device)).image_embeds  # VBench: all frames at once
        return F.normalize(embeds.float().cpu(), dim=-1, p=2)

    return features


@torch.no_grad()
def aesthetic_quality(videos: list[str], clip_large: str | Path, head: str | Path, device: str = "cpu",
                      progress: Callable[[int], None] | None = None) -> DimensionScore:
    """VBench's aesthetic_quality: per video the mean over frames of head(normalised CLIP ViT-L/14 embedding) / 10;
    the dimension is the mean over videos."""
    features = clip_features(clip_large, device, patch=14)
    weight, bias = check_aesthetic_head(head, check_clip_folder(clip_large, 14)["projection_dim"])
    per_video = []
    for path in videos:
        frame_scores = (features(read_video(path)) @ weight.T + bias).squeeze(-1) / 10
        per_video.append((path, frame_scores.mean().item()))
        if progress:
            progress(1)
    return DimensionScore(float(np.mean([s for _, s in per_video])), per_video)


@torch.no_grad()
def appearance_style(entries: list[tuple[list[str], str]], folder: str | Path, device: str = "cpu",
                     progress: Callable[[int], None] | None = None) -> DimensionScore:
    """VBench's appearance_style over (video files, style text) entries with a full CLIP folder: per frame the
    image-text logit / 100; a video's score is the mean over its frames, the dimension the mean over all frames."""
    from transformers import AutoTokenizer, CLIPModel

    check_clip_folder(folder)
    if not is_full_clip(folder):
        raise ValueError(f"{folder} has no CLIP text tower and tokenizer: appearance_style needs a full CLIP folder")
    model, info = CLIPModel.from_pretrained(folder, use_safetensors=True, output_loading_info=True)
    _check_loaded(folder, info, "CLIP ViT-B/32")
    model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    total, count, per_video = 0.0, 0, []
    for videos, style in entries:
        ids = tokenizer([style], return_tensors="pt", truncation=True, max_length=77).input_ids.to(device)
        for path in videos:
            pixels = clip_pixels_pil(read_video(path)).to(device)
            sims = (model(input_ids=ids, pixel_values=pixels).logits_per_text[0].float().cpu() / 100).tolist()
            total, count = total + sum(sims), count + len(sims)
            per_video.append((path, float(np.mean(sims))))
            if progress:
                progress(1)
    return DimensionScore(total / count, per_video)


# ---------------------------------------------------------------------------------------------------------------------
# The vbench package

def vbench_package() -> Path | None:
    """The installed `vbench` package's folder (found without importing it: its import pulls decord, cv2, ...)."""
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def vbench_cache_dir() -> Path:
    """Where the vbench package keeps its weights: $VBENCH_CACHE_DIR, else ~/.cache/vbench (vbench/utils.py)."""
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def missing_package_weights(dimension: str) -> list[Path]:
    """The files the vbench package would download for this dimension (empty: it can run offline)."""
    root = vbench_cache_dir()
    return [root / rel for rel in VBENCH_PACKAGE_FILES[dimension] if not (root / rel).exists()]


def run_vbench_package(videos: Path, info: Path, dimensions: list[str], out: Path,
                       device: str) -> dict[str, DimensionScore]:
    """Score `dimensions` with the vbench package on the videos folder, in its standard mode and local mode (its
    weights already in its cache), writing its files under `out`; returns its scores as DimensionScores."""
    from vbench import VBench  # the optional package, found by vbench_package() before this is called

    out.mkdir(parents=True, exist_ok=True)
    VBench(device, str(info), str(out)).evaluate(videos_path=str(videos), name="accel", dimension_list=dimensions,
                                                 local=True, mode="vbench_standard")
    results = json.loads((out / "accel_eval_results.json").read_text())
    return {d: DimensionScore(float(results[d][0]),
                              [(str(v["video_path"]), v["video_results"]) for v in results[d][1]
                               if isinstance(v, dict) and "video_path" in v])
            for d in dimensions}

"""accel's native VBench scores against VBench's own code, on the same videos and the same (tiny) models.

VBench's package does not install on a CPU machine (its setup wants a CUDA 11.6-12.1 torch) and its weights need a
network, so this runs its evaluation functions from a checkout (github.com/Vchitect/VBench) next to accel's:
- preprocessing: vbench.utils' dino_transform / clip_transform / clip_transform_Image (torchvision) against accel's;
- decoding: OpenCV (VBench's temporal-flickering reader) against imageio (accel's) on mp4 files accel wrote;
- temporal_flickering: vbench.temporal_flickering.temporal_flickering against accel's;
- subject_consistency: vbench.subject_consistency.subject_consistency with DINO's own VisionTransformer
  (github.com/facebookresearch/dino, tiny, random) against accel's transformers path on the converted weights,
  including non-square frames, where DINO interpolates its position embeddings its own way;
- background_consistency, aesthetic_quality, appearance_style: VBench's functions with a tiny transformers CLIP
  behind OpenAI-clip's interface (encode_image, forward -> logits), against accel's (this checks VBench's rules,
  preprocessing and averaging; that transformers' CLIP equals OpenAI's is transformers' conversion, not checked here).
VBench reads videos with decord where it is importable (else with a stand-in over imageio, the decoders being
compared separately); OpenAI's `clip` is replaced by the tiny tokenizer. Needs torchvision and opencv-python(-headless)
importable, decord optionally (e.g. `pip install --target DIR` and PYTHONPATH=DIR); a torchvision wheel built for
CUDA imports on a CPU torch once its custom ops are declared.

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/extra python benchmarks/vbench/check_against_vbench.py \\
        --vbench /path/to/VBench --dino /path/to/dino --json benchmarks/vbench/check-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def import_torchvision():
    try:
        import torchvision  # noqa: F401
    except RuntimeError:  # a CUDA wheel on a CPU torch: its fake kernels name ops its missing _C would define
        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision.lib = lib  # keep the definitions alive
        import torchvision  # noqa: F401


def stub_decord_and_clip():
    """decord over imageio's reader where decord is not installed; clip with tokenize set later."""
    import imageio.v3 as iio

    clip = types.ModuleType("clip")
    sys.modules["clip"] = clip
    try:
        import decord  # noqa: F401

        return clip
    except ImportError:
        pass

    class Batch:
        def __init__(self, a):
            self.a = a

        def asnumpy(self):
            return self.a

    class VideoReader:
        def __init__(self, path, width=None, height=None, num_threads=1):
            self.frames = np.asarray(iio.imread(path, index=None))

        def __len__(self):
            return len(self.frames)

        def get_batch(self, indices):
            return Batch(self.frames[list(indices)])

    decord = types.ModuleType("decord")
    decord.VideoReader, decord.cpu = VideoReader, (lambda *a: None)
    decord.bridge = types.SimpleNamespace(set_bridge=lambda name: None)
    decord.stand_in = True
    sys.modules["decord"] = decord
    return clip


def moving_blobs(t, h, w, seed):
    """Smooth colour blobs drifting a few pixels per frame: real frame-to-frame change that H.264 keeps well."""
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.zeros((t, h, w, 3))
    for c in range(3):
        cy, cx = r.uniform(0, h), r.uniform(0, w)
        for i in range(t):
            frames[i, ..., c] = np.exp(-(((yy - cy - 2 * i) / (h / 4)) ** 2 + ((xx - cx - 3 * i) / (w / 4)) ** 2))
    return frames


def dino_to_transformers(dino, depth: int, width: int) -> dict:
    """DINO's VisionTransformer state dict under transformers' ViTModel names (qkv split into q, k, v)."""
    sd, out = dino.state_dict(), {}
    out["embeddings.cls_token"], out["embeddings.position_embeddings"] = sd["cls_token"], sd["pos_embed"]
    out["embeddings.patch_embeddings.projection.weight"] = sd["patch_embed.proj.weight"]
    out["embeddings.patch_embeddings.projection.bias"] = sd["patch_embed.proj.bias"]
    for i in range(depth):
        b, o = f"blocks.{i}.", f"layers.{i}."
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            for kind in ("weight", "bias"):
                out[o + f"attention.{name}.{kind}"] = sd[b + f"attn.qkv.{kind}"][part * width:(part + 1) * width]
        for src, dst in (("attn.proj", "attention.o_proj"), ("norm1", "layernorm_before"),
                         ("norm2", "layernorm_after"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for kind in ("weight", "bias"):
                out[f"{o}{dst}.{kind}"] = sd[f"{b}{src}.{kind}"]
    out["layernorm.weight"], out["layernorm.bias"] = sd["norm.weight"], sd["norm.bias"]
    return out


class OpenAIClipInterface(nn.Module):
    """A transformers CLIPModel with the methods VBench calls on OpenAI's CLIP."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def encode_image(self, x):
        return self.model.visual_projection(self.model.vision_model(pixel_values=x).pooler_output)

    def forward(self, image, text):
        out = self.model(input_ids=text, pixel_values=image)
        return out.logits_per_image, out.logits_per_text


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vbench", type=Path, required=True, help="a checkout of github.com/Vchitect/VBench")
    parser.add_argument("--dino", type=Path, required=True, help="a checkout of github.com/facebookresearch/dino")
    parser.add_argument("--json", type=Path, help="write the differences here")
    args = parser.parse_args()
    import_torchvision()
    clip = stub_decord_and_clip()
    sys.path[:0] = [str(args.vbench), str(args.dino), str(Path(__file__).resolve().parents[2] / "tests" / "evals")]
    import cv2
    from PIL import Image
    from safetensors.torch import load_file
    from test_vbench_scores import save_tiny_clip, save_tiny_head, tiny_clip_tokenizer
    from transformers import CLIPModel, ViTConfig, ViTModel
    from vbench import aesthetic_quality as vaq, appearance_style as vas, background_consistency as vbc
    from vbench import subject_consistency as vsc, temporal_flickering as vtf, utils as vu
    from vision_transformer import VisionTransformer

    from accel.evals import vbench_scores as vs
    from accel.evals.io import run_info, write_json
    from accel.evals.vbench import _write_video

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="vbench-check-"))
    rows = {}
    rng = np.random.default_rng(0)
    for t, h, w in [(2, 32, 48), (2, 480, 832), (2, 224, 224), (2, 100, 60), (2, 16, 16)]:
        f = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
        x = torch.Tensor(f).permute(0, 3, 1, 2)  # VBench's load_video: float32 in [0, 255]
        pil = torch.stack([vu.clip_transform_Image(224)(Image.fromarray(i)) for i in f])
        rows[f"preprocess {h}x{w}"] = {"dino": (vu.dino_transform(224)(x) - vs.dino_pixels(f)).abs().max().item(),
                                       "clip": (vu.clip_transform(224)(x) - vs.clip_pixels(f)).abs().max().item(),
                                       "clip_pil": (pil - vs.clip_pixels_pil(f)).abs().max().item()}
    paths = []
    # (decord 0.6.0 fails on 48-pixel-wide videos, "DECORDArrayCopyFromTo: The size must exactly match": not used)
    for j, (t, h, w) in enumerate([(8, 32, 64), (6, 64, 64), (5, 48, 80), (4, 240, 416)]):
        paths.append(str(work / f"clip {j}-0.mp4"))
        _write_video(Path(paths[-1]), moving_blobs(t, h, w, j), 8)
    rows["decode opencv vs imageio (max |diff|, 0-255)"] = max(
        int(np.abs(vs.read_video(p).astype(int) -
                   np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in vtf.get_frames(p)]).astype(int)).max())
        for p in paths)

    import decord

    if not getattr(decord, "stand_in", False):
        rows["decode decord vs imageio (max |diff|, 0-255)"] = max(
            int(np.abs(vs.read_video(p).astype(int) - vu.load_video(p, return_tensor=False).astype(int)).max())
            for p in paths)
    rows["vbench reads videos with"] = "a stand-in over imageio" if getattr(decord, "stand_in", False) else \
        f"decord {decord.__version__}"

    def compare(name, theirs, ours):
        rows[name] = {"vbench": float(theirs), "accel": float(ours), "diff": abs(float(theirs) - float(ours))}

    compare("temporal_flickering", vtf.temporal_flickering(paths)[0], vs.temporal_flickering(paths).score)

    depth, width = 2, 32
    dino = VisionTransformer(patch_size=16, embed_dim=width, depth=depth, num_heads=2, mlp_ratio=4, qkv_bias=True,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    for q in dino.parameters():
        q.add_(0.2 * torch.randn_like(q))  # DINO's init is near zero: make the features depend on the frames
    hf = ViTModel(ViTConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=2,
                            intermediate_size=4 * width, image_size=224, patch_size=16, layer_norm_eps=1e-6,
                            qkv_bias=True), add_pooling_layer=False)
    hf.load_state_dict(dino_to_transformers(dino, depth, width), strict=True)
    hf.save_pretrained(work / "dino")
    compare("subject_consistency", vsc.subject_consistency(dino, paths, "cpu", False)[0],
            vs.consistency(paths, vs.dino_features(work / "dino")).score)
    frame = vs.read_video(paths[0])[:1]  # 32 x 64 -> 224 x 448: interpolated position embeddings
    pixels = vs.dino_pixels(frame)
    reference = nn.functional.normalize(dino(pixels), dim=-1)
    plain = ViTModel.from_pretrained(work / "dino", add_pooling_layer=False)
    own = nn.functional.normalize(plain(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state[:, 0],
                                  dim=-1)
    rows["dino non-square features (max |diff|)"] = {
        "accel": (vs.dino_features(work / "dino")(frame) - reference).abs().max().item(),
        "transformers' own interpolation": (own - reference).abs().max().item()}

    save_tiny_clip(work / "clip")
    save_tiny_clip(work / "clip-l", patch=14)
    save_tiny_head(work / "head.safetensors")
    clip_b = OpenAIClipInterface(CLIPModel.from_pretrained(work / "clip").eval())
    clip_l = OpenAIClipInterface(CLIPModel.from_pretrained(work / "clip-l").eval())
    tokenizer = tiny_clip_tokenizer()
    clip.tokenize = lambda texts: tokenizer(texts, return_tensors="pt").input_ids
    compare("background_consistency", vbc.background_consistency(clip_b, None, paths, "cpu", False)[0],
            vs.consistency(paths, vs.clip_features(work / "clip")).score)
    head = nn.Linear(16, 1)
    head.load_state_dict(load_file(work / "head.safetensors"))
    compare("aesthetic_quality", vaq.laion_aesthetic(head, clip_l, paths, "cpu")[0],
            vs.aesthetic_quality(paths, work / "clip-l", work / "head.safetensors").score)
    entries = [{"prompt": "p", "video_list": paths[:2], "auxiliary_info": {"appearance_style": "oil painting"}},
               {"prompt": "q", "video_list": paths[2:], "auxiliary_info": {"appearance_style": "van gogh style"}}]
    compare("appearance_style", vas.appearance_style(clip_b, entries, "cpu")[0],
            vs.appearance_style([(paths[:2], "oil painting"), (paths[2:], "van gogh style")], work / "clip").score)
    for name, row in rows.items():
        print(f"{name}: {row}")
    if args.json:
        write_json(args.json, {"rows": rows, "vbench_checkout": str(args.vbench), "dino_checkout": str(args.dino)}
                   | run_info())


if __name__ == "__main__":
    main()

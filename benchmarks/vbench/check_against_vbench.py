"""accel's native VBench scores against VBench's own code, on the same videos and the same (tiny) models.

VBench's package does not install on a CPU machine (its setup wants a CUDA 11.6-12.1 torch) and its weights need a
network, so this runs its evaluation functions from a checkout (github.com/Vchitect/VBench) next to accel's:
- preprocessing: vbench.utils' dino_transform / clip_transform / clip_transform_Image (torchvision) against accel's;
- decoding: OpenCV and decord (VBench's readers) against imageio (accel's) on mp4 files accel wrote;
- temporal_flickering: vbench.temporal_flickering.temporal_flickering against accel's;
- subject_consistency: vbench.subject_consistency.subject_consistency with DINO's own VisionTransformer
  (github.com/facebookresearch/dino, tiny, random) against accel's transformers path on the converted weights,
  including non-square frames, where DINO interpolates its position embeddings its own way;
- background_consistency, aesthetic_quality, appearance_style: VBench's functions with OpenAI's own CLIP (the
  `clip` package, tiny, random; ViT-B/32- and ViT-L/14-shaped) and its tokenizer, against accel's transformers path
  on the converted weights and a transformers tokenizer built from OpenAI's BPE file; plus OpenAI's and transformers'
  token ids for every appearance_style text in VBench's info file.
VBench reads videos with decord where it is importable (else with a stand-in over imageio, the decoders being
compared separately). Needs torchvision, opencv-python(-headless) and openai-clip (with ftfy) importable, decord
optionally (e.g. `pip install --target DIR --no-deps ...` and PYTHONPATH=DIR); a torchvision wheel built for CUDA
imports on a CPU torch once its custom ops are declared; openai-clip imports `pkg_resources.packaging`, which
setuptools >= 80 no longer has (a two-line pkg_resources.py exporting `packaging` on the path does).

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/extra python benchmarks/vbench/check_against_vbench.py \\
        --vbench /path/to/VBench --dino /path/to/dino --json benchmarks/vbench/check-cpu.json
"""

from __future__ import annotations

import argparse
import json
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


def stub_decord():
    """decord over imageio's reader where decord is not installed."""
    try:
        import decord  # noqa: F401

        return
    except ImportError:
        pass
    import imageio.v3 as iio

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


def tiny_openai_clip(patch: int):
    """OpenAI's CLIP class, one layer per tower, 64 wide (OpenAI's heads are width // 64), OpenAI's vocabulary."""
    from clip.model import CLIP

    model = CLIP(embed_dim=16, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=patch,
                 context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1)
    for q in model.parameters():
        q.data.add_(0.05 * torch.randn_like(q))
    return model.float().eval()


def openai_clip_to_transformers(model, folder: Path, patch: int) -> None:
    """Save OpenAI's CLIP as a transformers CLIPModel folder (q, k, v split from in_proj; projections transposed)
    with a transformers tokenizer built from OpenAI's BPE vocabulary and merges."""
    from clip.simple_tokenizer import SimpleTokenizer
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    sd, out = model.state_dict(), {}

    def tower(src: str, dst: str) -> None:
        for key in [k for k in sd if k.startswith(src + "transformer.resblocks.")]:
            i, rest = key[len(src + "transformer.resblocks."):].split(".", 1)
            o = f"{dst}encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[f"{o}self_attn.{name}.{kind}"] = sd[key][part * 64:(part + 1) * 64]
                continue
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                if rest.startswith(a + "."):
                    out[o + b + rest[len(a):]] = sd[key]

    tower("visual.", "vision_model.")
    tower("", "text_model.")
    out.update({"vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
                "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
                "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
                "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
                "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
                "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
                "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
                "visual_projection.weight": sd["visual.proj"].T.contiguous(),
                "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
                "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
                "text_model.final_layer_norm.weight": sd["ln_final.weight"],
                "text_model.final_layer_norm.bias": sd["ln_final.bias"],
                "text_projection.weight": sd["text_projection"].T.contiguous(), "logit_scale": sd["logit_scale"]})
    config = CLIPConfig(text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=256,
                                         num_hidden_layers=1, num_attention_heads=1, max_position_embeddings=77),
                        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                                           num_attention_heads=1, image_size=224, patch_size=patch),
                        projection_dim=16)
    hf = CLIPModel(config)
    hf.load_state_dict(out, strict=True)
    hf.eval().save_pretrained(folder)
    bpe = SimpleTokenizer()
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    CLIPTokenizer(vocab=dict(bpe.encoder), merges=merges, model_max_length=77).save_pretrained(folder)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vbench", type=Path, required=True, help="a checkout of github.com/Vchitect/VBench")
    parser.add_argument("--dino", type=Path, required=True, help="a checkout of github.com/facebookresearch/dino")
    parser.add_argument("--json", type=Path, help="write the differences here")
    args = parser.parse_args()
    import_torchvision()
    stub_decord()
    sys.path[:0] = [str(args.vbench), str(args.dino), str(Path(__file__).resolve().parents[2] / "tests" / "evals")]
    import cv2
    from PIL import Image
    from safetensors.torch import load_file
    import clip
    from test_vbench_scores import save_tiny_head
    from transformers import AutoTokenizer, ViTConfig, ViTModel
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

    clip_b, clip_l = tiny_openai_clip(32), tiny_openai_clip(14)
    openai_clip_to_transformers(clip_b, work / "clip", 32)
    openai_clip_to_transformers(clip_l, work / "clip-l", 14)
    save_tiny_head(work / "head.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(work / "clip")
    styles = sorted({e["auxiliary_info"]["appearance_style"]["appearance_style"]
                     for e in json.loads((args.vbench / "vbench" / "VBench_full_info.json").read_text())
                     if "appearance_style" in e["dimension"]})
    def openai_ids(text):  # up to and with the end-of-text token (the highest id), without the 0 padding
        ids = clip.tokenize([text])[0]
        return ids[:int(ids.argmax()) + 1].tolist()

    differ = [t for t in styles if openai_ids(t) != tokenizer([t]).input_ids[0]]
    rows["tokenizer: appearance_style texts with other ids"] = {"texts": len(styles), "differ": differ}
    compare("background_consistency", vbc.background_consistency(clip_b, None, paths, "cpu", False)[0],
            vs.consistency(paths, vs.clip_features(work / "clip")).score)
    head = nn.Linear(16, 1)
    head.load_state_dict(load_file(work / "head.safetensors"))
    compare("aesthetic_quality", vaq.laion_aesthetic(head, clip_l, paths, "cpu")[0],
            vs.aesthetic_quality(paths, work / "clip-l", work / "head.safetensors").score)
    entries = [{"prompt": "p", "video_list": paths[:2], "auxiliary_info": {"appearance_style": styles[0]}},
               {"prompt": "q", "video_list": paths[2:], "auxiliary_info": {"appearance_style": styles[-1]}}]
    compare("appearance_style", vas.appearance_style(clip_b, entries, "cpu")[0],
            vs.appearance_style([(paths[:2], styles[0]), (paths[2:], styles[-1])], work / "clip").score)
    for name, row in rows.items():
        print(f"{name}: {row}")
    if args.json:
        # run_info's command names the accel CLI; this is a script
        command = " ".join(["python", "benchmarks/vbench/check_against_vbench.py", *sys.argv[1:]])
        write_json(args.json, {"rows": rows, "vbench_checkout": str(args.vbench), "dino_checkout": str(args.dino)}
                   | run_info() | {"command": command})


if __name__ == "__main__":
    main()

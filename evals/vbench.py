"""VBench for any video pipeline accel runs: its prompt suite and file naming, scores, and its aggregate scores.

`evaluate_vbench` generates `<prompt>-<k>.mp4` (k = 0 .. samples - 1) into `<out>/videos` for every prompt of the
requested dimensions in VBench's info file (VBench_full_info.json), with any accel option, then scores each
dimension natively (evals/vbench_scores.py), through the installed `vbench` package when its weights are local, or
records why it was skipped; and computes VBench's Quality / Semantic / Total (scripts/cal_final_score.py) over the
dimensions it has, labelled partial when some are missing.

Seeds: video k of prompt p is sampled with its own generator seeded from sha256(f"{seed}|{k}|{p}") (first 8 bytes,
little-endian, top bit cleared), so a video does not depend on the batch size, on which dimensions were asked for,
or on what was generated before it; every video's seed is recorded in the results. VBench asks for seeds that are
not cherry-picked and recorded: these are fixed by the rule before any video exists.

Resume: `<out>/run.json` holds the settings the videos were made with; a later run into the same folder reuses the
videos only when its settings are the same, and refuses, naming the setting, otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from accel.evals import vbench_scores as scores
from accel.evals.io import run_info, write_atomic, write_json
from accel.evals.shard import Shard, run_chunks

# VBench's 16 dimensions, its normalisation range and weight per dimension and its two groups (scripts/constant.py,
# where the keys are spelled with spaces).
DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
              "dynamic_degree", "aesthetic_quality", "imaging_quality", "object_class", "multiple_objects",
              "human_action", "color", "spatial_relationship", "scene", "appearance_style", "temporal_style",
              "overall_consistency")
NORMALIZE = {"subject_consistency": (0.1462, 1.0), "background_consistency": (0.2615, 1.0),
             "temporal_flickering": (0.6293, 1.0), "motion_smoothness": (0.706, 0.9975),
             "dynamic_degree": (0.0, 1.0), "aesthetic_quality": (0.0, 1.0), "imaging_quality": (0.0, 1.0),
             "object_class": (0.0, 1.0), "multiple_objects": (0.0, 1.0), "human_action": (0.0, 1.0),
             "color": (0.0, 1.0), "spatial_relationship": (0.0, 1.0), "scene": (0.0, 0.8222),
             "appearance_style": (0.0009, 0.2855), "temporal_style": (0.0, 0.364),
             "overall_consistency": (0.0, 0.364)}
WEIGHT = {d: 0.5 if d == "dynamic_degree" else 1.0 for d in DIMENSIONS}
QUALITY = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
           "aesthetic_quality", "imaging_quality", "dynamic_degree")
SEMANTIC = ("object_class", "multiple_objects", "human_action", "color", "spatial_relationship", "scene",
            "appearance_style", "temporal_style", "overall_consistency")
QUALITY_WEIGHT, SEMANTIC_WEIGHT = 4, 1
SCORERS = ("auto", "native", "vbench")
VIDEOS, RUN_FILE, RESULTS_FILE, VBENCH_RESULTS_FILE = "videos", "run.json", "results.json", "vbench_eval_results.json"
SUFFIX = "-24.mp4"  # the longest suffix a prompt's file name gets at the default sample counts (255-byte names)


# ---------------------------------------------------------------------------------------------------------------------
# The prompt suite

@dataclass(frozen=True)
class SuiteEntry:
    """One entry of VBench's info file: a prompt, the dimensions it serves, and their auxiliary info (e.g.
    appearance_style's {"appearance_style": "oil painting"})."""

    prompt: str
    dimensions: tuple[str, ...]
    auxiliary: dict | None = None


def parse_dimensions(dimensions: str | list[str] | tuple[str, ...]) -> list[str]:
    """A comma-separated string or a list of VBench dimension names, checked; order kept, duplicates dropped."""
    names = [d.strip() for d in dimensions.split(",")] if isinstance(dimensions, str) else list(dimensions)
    names = list(dict.fromkeys(d for d in names if d))
    if not names:
        raise ValueError(f"no dimensions given; allowed: {', '.join(DIMENSIONS)}")
    unknown = [d for d in names if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"VBench has no dimension {', '.join(map(repr, unknown))}; allowed: {', '.join(DIMENSIONS)}")
    return names


def default_info_file() -> Path | None:
    """VBench_full_info.json of the installed `vbench` package, or None."""
    package = scores.vbench_package()
    path = package / "VBench_full_info.json" if package else None
    return path if path is not None and path.is_file() else None


def load_suite(path: str | Path) -> list[SuiteEntry]:
    """Read an info file in VBench's format: a JSON list of {"prompt_en": str, "dimension": [str, ...]} (plus an
    optional "auxiliary_info" dict). Raises ValueError naming the first entry that is not in that format."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"info file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not VBench's info format (a JSON list of prompt entries): {e}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} is not VBench's info format: expected a non-empty JSON list of "
                         "{'prompt_en': ..., 'dimension': [...]} entries")
    suite = []
    for i, entry in enumerate(data):
        where = f"{path} is not VBench's info format: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt_en"), str) or not entry["prompt_en"]:
            raise ValueError(f"{where} has no 'prompt_en' string")
        dims = entry.get("dimension")
        if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
            raise ValueError(f"{where} has no 'dimension' list")
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"{where} names unknown dimension(s) {', '.join(unknown)}")
        auxiliary = entry.get("auxiliary_info")
        if auxiliary is not None and not isinstance(auxiliary, dict):
            raise ValueError(f"{where} has an 'auxiliary_info' that is not an object")
        if "appearance_style" in dims and not isinstance(
                ((auxiliary or {}).get("appearance_style") or {}).get("appearance_style"), str):
            raise ValueError(f"{where} serves appearance_style but has no "
                             "auxiliary_info.appearance_style.appearance_style text")
        check_prompt_name(entry["prompt_en"])
        suite.append(SuiteEntry(entry["prompt_en"], tuple(dims), auxiliary))
    return suite


def check_prompt_name(prompt: str) -> None:
    """A prompt names its files (VBench's layout): it must be a valid file name once `-<k>.mp4` is added."""
    if "/" in prompt or "\0" in prompt or prompt in (".", ".."):
        raise ValueError(f"prompt {prompt!r} cannot name a file (VBench names videos <prompt>-<k>.mp4)")
    if len((prompt + SUFFIX).encode()) > 255:
        raise ValueError(f"prompt {prompt[:40]!r}... is too long to name a file (255 bytes with -<k>.mp4)")


def prompts_for(suite: list[SuiteEntry], dimensions: list[str]) -> dict[str, list[str]]:
    """Each dimension's prompts in file order; a dimension the file has no prompt for is an error."""
    out = {d: [e.prompt for e in suite if d in e.dimensions] for d in dimensions}
    empty = [d for d, p in out.items() if not p]
    if empty:
        raise ValueError(f"the info file has no prompts for {', '.join(empty)}")
    return out


def read_suite(dimensions: str | list[str], info: str | Path | None = None):
    """Check the dimensions and read the info file (default: the vbench package's); returns (dimensions, info path,
    suite, each dimension's prompts). Raises ValueError on a bad dimension or file."""
    dims = parse_dimensions(dimensions)
    info = Path(info) if info is not None else default_info_file()
    if info is None:
        raise ValueError("no VBench info file: pass one (VBench_full_info.json from github.com/Vchitect/VBench) or "
                         "install the vbench package")
    suite = load_suite(info)
    return dims, info, suite, prompts_for(suite, dims)


def video_name(prompt: str, k: int) -> str:
    return f"{prompt}-{k}.mp4"


def video_seed(seed: int, prompt: str, k: int) -> int:
    digest = hashlib.sha256(f"{seed}|{k}|{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---------------------------------------------------------------------------------------------------------------------
# Aggregates

def aggregate(dimension_scores: dict[str, float]) -> dict:
    """VBench's Quality, Semantic and Total (scripts/cal_final_score.py) over the dimensions present.

    Each score is min-max normalised with NORMALIZE and weighted with WEIGHT; Quality and Semantic are the weighted
    means over their groups; Total = (4 Quality + 1 Semantic) / 5. With some dimensions missing the means run over
    those present and `partial` is True (VBench's script counts a missing dimension as 0 instead); Total needs
    both groups and is None without one.
    """
    normalized = {d: (s - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0]) for d, s in dimension_scores.items()}

    def group(members: tuple[str, ...]) -> float | None:
        present = [d for d in members if d in normalized]
        if not present:
            return None
        return sum(WEIGHT[d] * normalized[d] for d in present) / sum(WEIGHT[d] for d in present)

    quality, semantic = group(QUALITY), group(SEMANTIC)
    total = None if quality is None or semantic is None else \
        (QUALITY_WEIGHT * quality + SEMANTIC_WEIGHT * semantic) / (QUALITY_WEIGHT + SEMANTIC_WEIGHT)
    missing = [d for d in DIMENSIONS if d not in dimension_scores]
    return {"quality": quality, "semantic": semantic, "total": total, "partial": bool(missing),
            "normalized": normalized, "quality_dimensions": [d for d in QUALITY if d in normalized],
            "semantic_dimensions": [d for d in SEMANTIC if d in normalized], "missing_dimensions": missing}


# ---------------------------------------------------------------------------------------------------------------------
# Settings and the output folder

@dataclass(frozen=True)
class VideoSettings:
    """How the videos are made: what run.json records and a resumed run must match. None: the pipeline's default.

    steps_mode "hsa" runs heterogeneous per-token steps at `runtime` with K/V policy `kv`
    (accel.schedulers.hsa.HSAConfig); sampler "fewstep" is a distilled student's own steps; fps is the mp4's rate
    (VBench's sampling script writes 8)."""

    model: str
    seed: int = 0
    steps: int | None = None
    sampler: str | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    steps_mode: str = "uniform"
    runtime: float | None = None
    kv: str | None = None
    fused_kernels: bool = False
    fps: int = 8

    def __post_init__(self):
        from accel.api import check_guidance
        from accel.config import AccelConfig

        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for name in ("height", "width", "num_frames", "fps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.steps_mode not in ("uniform", "hsa"):
            raise ValueError(f"steps_mode must be uniform or hsa, got {self.steps_mode!r}")
        if self.steps_mode != "hsa" and (self.runtime is not None or self.kv is not None):
            raise ValueError("runtime and kv apply to steps_mode hsa only")
        if self.sampler is not None:
            AccelConfig(sampler=self.sampler)
        check_guidance(self.guidance_scale, "guidance_scale")


def _check_folder(out: Path, settings: dict, overwrite: bool) -> bool:
    """Raise ValueError if `out` cannot take this run: its videos were made with other settings (named), it holds
    files but no run.json, or its results exist, unless overwrite. Returns whether the videos there must be
    discarded first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not an output folder")
    discard = False
    if (out / RUN_FILE).is_file():
        try:
            saved = json.loads((out / RUN_FILE).read_text()).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            saved = {"(run.json)": "unreadable"}
        differ = [k for k in sorted(set(saved) | set(settings)) if saved.get(k) != settings.get(k)]
        if differ and not overwrite:
            k = differ[0]
            raise ValueError(f"{out} holds videos made with {k}={saved.get(k)!r}, this run has "
                             f"{k}={settings.get(k)!r}; use another output folder, or pass overwrite (--overwrite) "
                             "to discard them")
        discard = bool(differ)
    elif out.is_dir() and any(p.is_file() for p in out.rglob("*")):
        # No run.json: whatever is here (another eval's run, videos of unknown settings) is not this run's.
        if not overwrite:
            raise ValueError(f"{out} holds files but no accel VBench run ({RUN_FILE}); use another output folder, "
                             "or pass overwrite (--overwrite) to write there (videos already in it are discarded)")
        discard = True
    if (out / RESULTS_FILE).exists() and not overwrite:
        raise ValueError(f"{out / RESULTS_FILE} exists; pass overwrite (--overwrite) to replace it (matching videos "
                         "are reused)")
    return discard


def _prepare_folder(out: Path, settings: dict, discard: bool, state: dict | None) -> None:
    """The main process, once every process has checked the folder: drop other settings' videos and the partial
    files a killed write left (VBench takes the videos' suffix from the first file it lists), record run.json."""
    videos = out / VIDEOS
    videos.mkdir(parents=True, exist_ok=True)
    for stale in [*videos.glob(".*.tmp"), *(videos.glob("*.mp4") if discard else [])]:
        stale.unlink()
    write_json(out / RUN_FILE, {"settings": settings, "source": state})


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """One clip, (T, H, W, 3) floats in [0, 1], as H.264 mp4, written atomically (as `accel generate` writes)."""
    import imageio.v3 as iio

    u8 = (np.clip(np.asarray(frames, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    write_atomic(path, iio.imwrite("<bytes>", u8, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1))


# ---------------------------------------------------------------------------------------------------------------------
# Generation

def _accelerated(pipe, settings: VideoSettings):
    """The pipeline wrapped with the settings' sampler, and the call arguments every batch shares."""
    from accel.api import accelerate_pipeline
    from accel.config import AccelConfig
    from accel.schedulers.fewstep import find_student

    student = find_student(pipe)
    if settings.sampler == "fewstep" and student is None:
        raise ValueError(f"sampler fewstep needs a distilled student; {settings.model} is not one (no student.json)")
    if student is not None and settings.sampler not in (None, "fewstep"):
        raise ValueError(f"{settings.model} is a distilled student: it samples with sampler fewstep only")
    if student is not None and settings.steps_mode != "uniform":
        raise ValueError(f"{settings.model} is a distilled student: steps_mode hsa needs a teacher model")
    if student is not None and settings.steps is not None and settings.steps not in student.nfes:
        raise ValueError(f"{settings.model} was trained for steps {' or '.join(map(str, student.nfes))}, "
                         f"not {settings.steps}")
    sampler = settings.sampler or ("fewstep" if student is not None else "euler")
    steps = settings.steps or (max(student.nfes) if student is not None else 25)
    apipe = accelerate_pipeline(pipe, AccelConfig(sampler=sampler, fused_kernels=settings.fused_kernels))
    if "num_frames" not in apipe.__signature__.parameters:
        raise ValueError(f"{settings.model} makes images, not videos: VBench needs a video pipeline")
    call = {"num_inference_steps": steps, "output_type": "np"}
    for key in ("guidance_scale", "height", "width", "num_frames"):
        if getattr(settings, key) is not None:
            call[key] = getattr(settings, key)
    if settings.steps_mode == "hsa":
        from accel.schedulers.hsa import HSAConfig

        call["steps"] = HSAConfig(runtime=0.5 if settings.runtime is None else settings.runtime,
                                  kv=settings.kv or "auto")
    return apipe, call, {"sampler": sampler, "steps": steps}


def generate_videos(apipe, call: dict, jobs: list[tuple[str, int, int]], folder: Path, fps: int, batch_size: int,
                    progress: Callable[[int], None] | None = None) -> tuple[int, float]:
    """Make and write each (prompt, k, seed) job's video, batch_size clips per pipeline call, each clip from its own
    generator (so a clip does not depend on the batch it is in); returns (NFE, seconds)."""
    import torch

    nfe, start = 0, time.perf_counter()
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        out = apipe([p for p, _, _ in chunk], generator=[torch.Generator().manual_seed(s) for _, _, s in chunk],
                    **call)
        nfe += out.stats.nfe
        for (prompt, k, _), frames in zip(chunk, out.frames):
            _write_video(folder / video_name(prompt, k), frames, fps)
        if progress:
            progress(len(chunk))
    return nfe, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------------
# Scoring plan

# What each dimension needs that accel does not compute itself (VBench's models, vbench/utils.py init_submodules).
NEEDS = {"motion_smoothness": "AMT-S frame interpolation", "dynamic_degree": "RAFT optical flow",
         "imaging_quality": "MUSIQ (pyiqa)",
         "object_class": "GRiT (detectron2)", "multiple_objects": "GRiT (detectron2)", "color": "GRiT (detectron2)",
         "spatial_relationship": "GRiT (detectron2)", "scene": "Tag2Text", "human_action": "UMT-L/16",
         "temporal_style": "ViCLIP",
         "overall_consistency": "ViCLIP"}


@dataclass(frozen=True)
class ScoringWeights:
    """Local weights for the native model-based dimensions, as VBench uses them: dino (DINO ViT-B/16,
    facebook/dino-vitb16) for subject_consistency; clip (CLIP ViT-B/32, openai/clip-vit-base-patch32) for
    background_consistency and, as a full CLIP with its tokenizer, appearance_style; clip_large (CLIP ViT-L/14,
    openai/clip-vit-large-patch14) and aesthetic_head (LAION's sa_0_4_vit_l_14_linear as safetensors) for
    aesthetic_quality. transformers folders, safetensors only; each is checked when given, and one that is not
    that kind of model is a ValueError."""

    dino: str | None = None
    clip: str | None = None
    clip_large: str | None = None
    aesthetic_head: str | None = None

    def __post_init__(self):
        if self.dino is not None:
            scores.check_dino_folder(self.dino)
        if self.clip is not None:
            scores.check_clip_folder(self.clip)
        dim = scores.check_clip_folder(self.clip_large, 14)["projection_dim"] if self.clip_large else None
        if self.aesthetic_head is not None:
            scores.check_aesthetic_head(self.aesthetic_head, dim)

    @classmethod
    def find(cls, root: str | Path | None = None, **given: str | Path | None) -> ScoringWeights:
        """Weights named in `given` (dino=, clip=, clip_large=, aesthetic_head=) win; the others are taken from
        root/<WEIGHT_FOLDERS name> where that exists."""
        unknown = set(given) - set(scores.WEIGHT_FOLDERS)
        if unknown:
            raise ValueError(f"unknown weights {', '.join(sorted(unknown))}; allowed: "
                             f"{', '.join(scores.WEIGHT_FOLDERS)}")
        found = {}
        if root is not None:
            root = Path(root).expanduser()
            if not root.is_dir():
                raise ValueError(f"weights folder {root} does not exist")
            found = {k: str(root / name) for k, name in scores.WEIGHT_FOLDERS.items() if (root / name).exists()}
            if not found:
                raise ValueError(f"weights folder {root} holds none of {', '.join(scores.WEIGHT_FOLDERS.values())}")
        return cls(**{k: str(given[k]) if given.get(k) is not None else found.get(k) for k in scores.WEIGHT_FOLDERS})


def plan_scoring(dimensions: list[str], scorer: str, weights: ScoringWeights) -> dict[str, dict]:
    """How each dimension will be scored: {"method": "native" | "vbench package" | "skipped", "how": why / what}.
    scorer "auto" prefers the vbench package (the reference) where it is installed with its weights local, then
    accel's native scorer; "native" and "vbench" use only that one."""
    from accel.config import check_choice

    check_choice("scorer", scorer, SCORERS)
    package = scores.vbench_package()
    plan = {}
    for d in dimensions:
        missing = scores.missing_package_weights(d) if package is not None else None
        package_reason = ("the vbench package is not installed" if package is None else
                          f"the vbench package's weights are not local (missing {missing[0]})" if missing else None)
        absent = [k for k in scores.NATIVE_MODELS.get(d, ()) if getattr(weights, k) is None]
        native_reason = (f"accel has no native scorer (VBench uses {NEEDS[d]})" if d not in scores.NATIVE else
                         f"needs local {scores.WEIGHT_FOLDERS[absent[0]]} (--weights DIR or "
                         f"--{absent[0].replace('_', '-')})" if absent else
                         "needs a full CLIP folder (text tower and tokenizer), not a vision-only one"
                         if d == "appearance_style" and not scores.is_full_clip(weights.clip) else None)
        if scorer in ("auto", "vbench") and package_reason is None:
            plan[d] = {"method": "vbench package", "how": f"vbench package at {package}"}
        elif scorer in ("auto", "native") and native_reason is None:
            plan[d] = {"method": "native", "how": _native_how(d, weights)}
        else:
            reasons = [r for s, r in (("vbench", package_reason), ("native", native_reason))
                       if scorer in ("auto", s)]
            plan[d] = {"method": "skipped", "how": "; ".join(reasons)}
    return plan


def _native_how(dimension: str, weights: ScoringWeights) -> str:
    if dimension == "temporal_flickering":
        return ("VBench's formula on the decoded mp4 frames; over every sample (VBench first keeps the static "
                "videos with its RAFT static filter, not run here)")
    key = scores.NATIVE_MODELS[dimension][0]
    folder = getattr(weights, key)
    config = (scores.check_dino_folder(folder) if key == "dino" else
              scores.check_clip_folder(folder, 14 if key == "clip_large" else 32))
    large = key == "clip_large"
    size = f"ViT-{'L' if large else 'B'} as VBench's" if scores.reference_architecture(config, large) else \
        f"NOT VBench's ViT-{'L' if large else 'B'} (hidden {config.get('hidden_size')}, " \
        f"{config.get('num_hidden_layers')} layers)"
    if dimension == "aesthetic_quality":
        return (f"LAION aesthetic head {weights.aesthetic_head} on CLIP image embeddings from {folder} ({size}), "
                "/ 10, mean per video")
    if dimension == "appearance_style":
        return f"CLIP image-text logit / 100 per frame from {folder} ({size}), against the entry's style text"
    model = "DINO [CLS]" if key == "dino" else "CLIP image embedding"
    return f"{model} features from {folder} ({size}); VBench's first- and previous-frame cosine rule"


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark

def evaluate_vbench(settings: VideoSettings, dimensions: str | list[str], out: str | Path, *,
                    info: str | Path | None = None, samples: int = 5, weights: ScoringWeights | None = None,
                    scorer: str = "auto", batch_size: int = 5, device: str | None = None, overwrite: bool = False,
                    pipe=None, progress: Callable[[str, int, int], None] | None = None,
                    state: dict | None = None, shard: Shard = Shard()) -> dict | None:
    """Generate VBench's videos for `dimensions` into out/videos and score them; returns the results row, also
    written to out/results.json (and the computed dimensions in VBench's own results format to
    out/vbench_eval_results.json).

    settings: the model and how its videos are made (VideoSettings); info: VBench's info file (default: the
    installed vbench package's VBench_full_info.json); samples: videos per prompt (VBench: 5); weights: local model
    folders for the native scorers; scorer: "auto" | "native" | "vbench" (plan_scoring); pipe: the pipeline already
    loaded from settings.model (else loaded here); progress(stage, total, advance): "videos" then "scoring";
    state: the code's state taken before the run (accel.evals.io.require_clean); shard: this process's share of
    the videos under torchrun / accelerate launch (Shard.from_env(); the videos are cut into fixed chunks of
    batch_size, so any number of processes makes the same files); the main process scores and returns the row, the
    others None. Bad input raises ValueError.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dims, info, suite, per_dim = read_suite(dimensions, info)
    weights = weights or ScoringWeights()
    plan = plan_scoring(dims, scorer, weights)
    out = Path(out)
    if pipe is None:
        from accel.models import load_pipeline

        pipe = load_pipeline(settings.model, device=device)
    apipe, call, resolved = _accelerated(pipe, settings)
    run_settings = asdict(settings) | resolved
    discard = _check_folder(out, run_settings, overwrite)
    shard.barrier()
    if shard.main:
        _prepare_folder(out, run_settings, discard, state)
    shard.barrier()

    videos = out / VIDEOS
    prompts = list(dict.fromkeys(p for d in dims for p in per_dim[d]))
    items = [(p, k, video_seed(settings.seed, p, k)) for p in prompts for k in range(samples)]
    records = _make_videos(apipe, call, items, videos, settings.fps, batch_size, shard, progress)
    if not shard.main:
        return None
    tick = (lambda stage, total: (lambda n: progress(stage, total, n))) if progress else (lambda stage, total: None)
    start = time.perf_counter()
    results = _score(dims, plan, suite, per_dim, samples, videos, info, out, device or "cpu", weights, tick)
    generated = sum(r["generated"] for r in records)
    row = {
        "benchmark": "vbench", "model": settings.model, "dimensions": results,
        "aggregate": aggregate({d: r["score"] for d, r in results.items() if r["score"] is not None}),
        "samples": samples, "info_file": str(info), "info_sha256": hashlib.sha256(info.read_bytes()).hexdigest(),
        "settings": run_settings, "out": str(out), "processes": shard.world, "videos_generated": generated,
        "videos_reused": len(items) - generated, "nfe": sum(r["nfe"] for r in records),
        "seconds_generation": round(sum(r["seconds"] for r in records), 2),
        "seconds_scoring": round(time.perf_counter() - start, 2),
        "seeds": {video_name(p, k): seed for p, k, seed in items},
    } | run_info(state)
    write_json(out / VBENCH_RESULTS_FILE, {d: [r["score"], [{"video_path": str(videos / v["video"]),
                                                             "video_results": v["score"]} for v in r["per_video"]]]
                                          for d, r in results.items() if r["score"] is not None})
    write_json(out / RESULTS_FILE, row)
    return row


def _make_videos(apipe, call: dict, items: list[tuple[str, int, int]], videos: Path, fps: int, batch_size: int,
                 shard: Shard, progress) -> list[dict]:
    """This process's share of the (prompt, k, seed) videos, in fixed chunks of batch_size (evals/shard.py), each
    chunk one pipeline call for its videos not yet on disk; returns every chunk's {"nfe", "generated", "seconds"}
    gathered from all processes."""
    def work(indices: range) -> dict:
        todo = [items[i] for i in indices if not (videos / video_name(*items[i][:2])).is_file()]
        nfe, _ = generate_videos(apipe, call, todo, videos, fps, batch_size) if todo else (0, 0.0)
        return {"nfe": nfe, "generated": len(todo)}

    done = [0]

    def advance(now: int, total: int) -> None:
        if progress:
            progress("videos", total, now - done[0])
        done[0] = now

    return run_chunks(len(items), batch_size, work, shard, None, advance)


def dimension_videos(suite_prompts: list[str], samples: int, videos: Path) -> list[str]:
    """A dimension's video files in VBench's order (its entries in file order, k = 0 .. samples - 1)."""
    return [str(videos / video_name(p, k)) for p in suite_prompts for k in range(samples)]


def _score(dims, plan, suite, per_dim, samples, videos, info, out, device, weights, tick) -> dict[str, dict]:
    """Run each dimension's planned scorer; the vbench package's dimensions go to it in one call."""
    results = {d: {"score": None, **plan[d], "videos": 0, "per_video": []} for d in dims}
    package_dims = [d for d in dims if plan[d]["method"] == "vbench package"]
    if package_dims:
        try:
            got = scores.run_vbench_package(videos, info, package_dims, out / "vbench_package", device)
        except Exception as e:  # an optional package with its own stack: record the failure, keep the rest
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            for d in package_dims:
                results[d].update(method="skipped", how=f"the vbench package failed: {first}")
            got = {}
        for d, s in got.items():
            results[d].update(_as_result(s, videos))
            if samples > 5:
                results[d]["how"] += "; the package reads samples 0-4 only"
    for d in dims:
        if plan[d]["method"] != "native":
            continue
        files = dimension_videos(per_dim[d], samples, videos)
        advance = tick(f"scoring {d}", len(files))
        if d == "temporal_flickering":
            s = scores.temporal_flickering(files, advance)
        elif d == "appearance_style":
            s = scores.appearance_style(_style_entries(suite, samples, videos), weights.clip, device, advance)
        elif d == "aesthetic_quality":
            s = scores.aesthetic_quality(files, weights.clip_large, weights.aesthetic_head, device, advance)
        else:
            folder = getattr(weights, scores.NATIVE_MODELS[d][0])
            features = (scores.dino_features if d == "subject_consistency" else scores.clip_features)(folder, device)
            s = scores.consistency(files, features, advance)
        results[d].update(_as_result(s, videos))
    return results


def _as_result(s: scores.DimensionScore, videos: Path) -> dict:
    per_video = [{"video": Path(path).name, "score": value} for path, value in s.videos]
    return {"score": s.score, "videos": len(s.videos), "per_video": per_video}


def _style_entries(suite: list[SuiteEntry], samples: int, videos: Path) -> list[tuple[list[str], str]]:
    """appearance_style's (video files, style text) per entry, in file order."""
    return [(dimension_videos([e.prompt], samples, videos), e.auxiliary["appearance_style"]["appearance_style"])
            for e in suite if "appearance_style" in e.dimensions]


def vbench_table(runs: list[list[dict]]) -> list[str]:
    """Markdown rows for `accel report` (evals/report.py's table builders take the same argument): one row per
    results file, its settings, each computed dimension (native or from the vbench package; blank when skipped),
    and the aggregates, marked partial (*) when dimensions are missing."""
    results = [rows[0] for rows in runs]
    dims = [d for d in DIMENSIONS if any(r["dimensions"].get(d, {}).get("score") is not None for r in results)]
    header = ["model", "steps", "samples", *dims, "quality", "semantic", "total"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        s, agg = r["settings"], r["aggregate"]
        steps = f"{s['steps']} {s['sampler']}" + (f", hsa {s['runtime'] or 0.5}" if s["steps_mode"] == "hsa" else "")
        scores_ = [f"{r['dimensions'][d]['score']:.4f}" if r["dimensions"].get(d, {}).get("score") is not None
                   else "" for d in dims]
        mark = "*" if agg["partial"] else ""
        totals = [f"{agg[k]:.4f}{mark}" if agg[k] is not None else "" for k in ("quality", "semantic", "total")]
        lines.append("| " + " | ".join([Path(r["model"]).name, steps, str(r["samples"]), *scores_, *totals]) + " |")
    return lines

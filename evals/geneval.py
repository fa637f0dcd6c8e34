"""GenEval (Ghosh et al., 2023) for any diffusers pipeline, with accel's options, without mmdet.

Generation writes GenEval's folder layout (`<index:05d>/metadata.jsonl`, `<index:05d>/samples/<k:04d>.png`,
`<index:05d>/grid.png`), so GenEval's own evaluate_images.py runs on it unchanged. Scoring follows GenEval's
evaluate_images.py: a detector's detections are kept above a confidence threshold (0.3; 0.9 for counting prompts),
at most 16 per class, optionally de-duplicated by IoU, ranked by confidence, and judged by GenEval's rules
(accel.shapes.checker.check_detections, the one implementation the shapes evals use too), colours by CLIP
zero-shot classification of the masked crops (accel.evals.detectors). Results are GenEval's results.jsonl rows
and summary (per-tag accuracy; overall = the mean of the tags' accuracies). Detectors: docs/evals.md.

Sample k of prompt i draws its noise from seed * 1_000_003 + i + k * 2**32, so sample 0 is the one
`accel eval shapes` draws for prompt i, and no sample depends on the batch or the process that makes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from accel.evals.io import run_info, write_atomic, write_json
from accel.evals.shard import RunFolder, Shard, run_chunks
from accel.shapes.checker import CheckResult, Detection, check_detections

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Thresholds:
    """GenEval's detection options (evaluate_images.py --options), with its defaults."""

    threshold: float = 0.3  # keep detections above this confidence
    counting_threshold: float = 0.9  # ... for counting prompts
    max_objects: int = 16  # per class, the most confident
    max_overlap: float = 1.0  # drop a detection whose IoU with a more confident one of its class reaches this; 1: off

    def __post_init__(self):
        for name in ("threshold", "counting_threshold", "max_overlap"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")


def sample_seed(seed: int, index: int, k: int = 0) -> int:
    """The noise seed of sample k of prompt `index` (k = 0: accel eval shapes' seed for that prompt)."""
    return seed * 1_000_003 + index + k * 2**32


# ----------------------------------------------------------------------------------------------------------------
# Metadata


def _clause_error(clause, j: int, where: str, include: bool) -> str | None:
    allowed = {"class", "count", "color", "position"} if include else {"class", "count"}
    if not isinstance(clause, dict):
        return f"{where}[{j}] is not an object"
    if clause.keys() - allowed:
        return f"{where}[{j}] has unknown keys {sorted(clause.keys() - allowed)} (allowed: {sorted(allowed)})"
    if not isinstance(clause.get("class"), str) or not clause["class"]:
        return f"{where}[{j}] has no 'class' name"
    count = clause.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return f"{where}[{j}] needs an integer 'count' >= 1"
    if "color" in clause and not isinstance(clause["color"], str):
        return f"{where}[{j}] 'color' must be a string"
    if "position" in clause:
        pos = clause["position"]
        if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS or isinstance(pos[1], bool)
                or not isinstance(pos[1], int) or not 0 <= pos[1] < j):
            return (f"{where}[{j}] 'position' must be [relation, index of an earlier include clause] with a "
                    f"relation in {', '.join(RELATIONS)}")
    return None


def metadata_error(meta) -> str | None:
    """Why `meta` is not one line of GenEval's evaluation_metadata.jsonl, or None."""
    if not isinstance(meta, dict):
        return "a line must be a JSON object"
    for key in ("tag", "prompt"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            return f"no '{key}' string"
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        return "'include' must be a non-empty list of clauses"
    exclude = meta.get("exclude", [])
    if not isinstance(exclude, list):
        return "'exclude' must be a list of clauses"
    for where, clauses in (("include", include), ("exclude", exclude)):
        for j, clause in enumerate(clauses):
            error = _clause_error(clause, j, where, where == "include")
            if error:
                return error
    return None


def load_metadata(path: str | Path) -> list[dict]:
    """GenEval's evaluation_metadata.jsonl: one prompt a line ({tag, prompt, include, [exclude]}).

    Raises ValueError naming the first line that is not in GenEval's format.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"metadata file {path} does not exist")
    metas = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            meta = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {number} is not JSON: not GenEval's metadata format (one JSON object "
                             f"a line: tag, prompt, include, exclude)") from None
        error = metadata_error(meta)
        if error:
            raise ValueError(f"{path} line {number} is not GenEval's metadata format: {error}")
        metas.append(meta)
    if not metas:
        raise ValueError(f"{path} holds no prompts")
    return metas


def metadata_classes(metas: list[dict]) -> set[str]:
    return {c["class"] for m in metas for c in m["include"] + m.get("exclude", [])}


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def compute_iou(a, b) -> float:
    """GenEval's box IoU (inclusive pixel bounds: +1 on each side)."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = area(a) + area(b) - inter
    return inter / union if union else 0


def select_detections(dets: list[Detection], tag: str, thresholds: Thresholds = Thresholds()) -> list[Detection]:
    """GenEval's choice of the detections to judge, per class: above the confidence threshold (the counting one for
    counting prompts), the `max_objects` most confident, greedy IoU suppression when max_overlap < 1; returned
    class by class, most confident first. Unscored (exact) detections are all kept, as they are."""
    if all(d.score is None for d in dets):
        return list(dets)
    limit = thresholds.counting_threshold if tag == "counting" else thresholds.threshold
    by_class: dict[str, list[Detection]] = {}
    for d in dets:
        by_class.setdefault(d.label, []).append(d)
    kept = []
    for group in by_class.values():
        scores = np.array([d.score for d in group])
        order = np.argsort(scores)[::-1]  # GenEval's order, ties included
        order = [int(i) for i in order[scores[order] > limit][: thresholds.max_objects]]
        while order:
            best = order.pop(0)
            kept.append(group[best])
            if thresholds.max_overlap < 1:
                order = [i for i in order if compute_iou(group[best].box, group[i].box) < thresholds.max_overlap]
    return kept


def score_image(image: np.ndarray, dets: list[Detection], metadata: dict, colors=None,
                thresholds: Thresholds = Thresholds()) -> tuple[CheckResult, list[Detection]]:
    """GenEval's verdict on one image: (the rules' result, the detections judged).

    colors: a colour classifier `colors(image, detections, classname) -> [colour]` (accel.evals.detectors.ClipColors)
    for detections that carry none.
    """
    kept = select_detections(dets, metadata["tag"], thresholds)
    classify = None if colors is None else (lambda objs, name: colors(image, objs, name))
    return check_detections(kept, metadata, colors=classify), kept


def result_row(filename: str, metadata: dict, result: CheckResult, kept: list[Detection]) -> dict:
    """One line of GenEval's results.jsonl."""
    details: dict[str, list] = {}
    for d in kept:
        details.setdefault(d.label, []).append([*map(float, d.box), 1.0 if d.score is None else float(d.score)])
    return {"filename": filename, "tag": metadata["tag"], "prompt": metadata["prompt"], "correct": result.correct,
            "reason": result.reason, "metadata": json.dumps(metadata), "details": json.dumps(details)}


def summarize(rows: list[dict]) -> dict:
    """GenEval's summary_scores.py: images, prompts, % correct images / prompts, per-tag accuracy (tags in order of
    first appearance) and overall = the mean of the tags' accuracies."""
    by_tag: dict[str, list[bool]] = {}
    by_prompt: dict[str, bool] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(bool(r["correct"]))
        by_prompt[r["metadata"]] = by_prompt.get(r["metadata"], False) or bool(r["correct"])
    per_tag = {t: float(np.mean(v)) for t, v in by_tag.items()}
    return {"overall": float(np.mean(list(per_tag.values()))), "per_tag": per_tag,
            "correct_per_tag": {t: int(sum(v)) for t, v in by_tag.items()},
            "images_per_tag": {t: len(v) for t, v in by_tag.items()},
            "images": len(rows), "prompts": len(by_prompt),
            "accuracy_images": float(np.mean([r["correct"] for r in rows])),
            "accuracy_prompts": float(np.mean(list(by_prompt.values())))}


def summary_text(summary: dict) -> str:
    """The summary as GenEval's summary_scores.py prints it."""
    lines = ["Summary", "=======", f"Total images: {summary['images']}", f"Total prompts: {summary['prompts']}",
             f"% correct images: {summary['accuracy_images']:.2%}",
             f"% correct prompts: {summary['accuracy_prompts']:.2%}", "", "Task breakdown", "=============="]
    for tag, acc in summary["per_tag"].items():
        lines.append(f"{tag:<16} = {acc:.2%} ({summary['correct_per_tag'][tag]} / {summary['images_per_tag'][tag]})")
    lines += ["", f"Overall score (avg. over tasks): {summary['overall']:.5f}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Generation


def sample_images(apipe, prompts: list[str], seeds: list[int], call: dict, per_image: bool):
    """uint8 (H, W, 3) images for prompts[j] from noise seed seeds[j], and the NFE spent.

    One call for all of them, each with its own generator; per_image: one call each (search and few-step students
    take a single generator)."""
    import torch

    def to_u8(images):
        return [(np.asarray(img) * 255).round().astype(np.uint8) for img in images]

    if not per_image:
        out = apipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np", **call)
        return to_u8(out.images), out.stats.nfe
    images, nfe = [], 0
    for prompt, s in zip(prompts, seeds):
        out = apipe(prompt, generator=torch.Generator().manual_seed(s), output_type="np", **call)
        images += to_u8(out.images)
        nfe += out.stats.nfe
    return images, nfe


def _png(image: np.ndarray) -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", image, extension=".png")


def make_grid(images: list[np.ndarray], padding: int = 2) -> np.ndarray:
    """The samples in one row with 2 black pixels around each, as torchvision's make_grid lays out GenEval's grid."""
    if len(images) == 1:
        return images[0]
    h, w, c = images[0].shape
    grid = np.zeros((h + 2 * padding, len(images) * (w + padding) + padding, c), np.uint8)
    for k, img in enumerate(images):
        x = padding + k * (w + padding)
        grid[padding:padding + h, x:x + w] = img
    return grid


def write_prompt_folder(out: Path, index: int, metadata: dict, images: list[np.ndarray], grid: bool) -> list[Path]:
    """GenEval's layout for one prompt, every file written atomically; returns the sample paths."""
    folder = out / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "metadata.jsonl", json.dumps(metadata).encode())  # GenEval's json.dump: no newline
    paths = []
    for k, image in enumerate(images):
        paths.append(folder / "samples" / f"{k:04d}.png")
        write_atomic(paths[-1], _png(image))
    if grid:
        write_atomic(folder / "grid.png", _png(make_grid(images)))
    return paths


@dataclass(frozen=True)
class GenEvalRun:
    """What a GenEval run generates and how it scores: the settings a resumed run must share."""

    images_per_prompt: int = 4
    seed: int = 0
    batch_size: int = 1  # prompts per model call (x images_per_prompt images)
    grid: bool = True
    thresholds: Thresholds = Thresholds()

    def __post_init__(self):
        if self.images_per_prompt < 1:
            raise ValueError(f"images_per_prompt must be >= 1, got {self.images_per_prompt}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def evaluate_geneval(pipe, metadata: list[dict], out: str | Path, run: GenEvalRun = GenEvalRun(),
                     call: dict | None = None, detector=None, colors=None, settings: dict | None = None,
                     overwrite: bool = False, shard: Shard = Shard(),
                     progress: Callable[[int, int], None] | None = None, state: dict | None = None) -> dict | None:
    """Generate GenEval's folder layout for `metadata` with `pipe` (accelerated by accel) and score it.

    Args:
        pipe: a diffusers pipeline, plain or accelerated (accel.accelerate_pipeline).
        metadata: GenEval's prompts (load_metadata).
        out: the folder; one holding the same run (`settings` equal) resumes, any other is refused unless overwrite.
        run: images per prompt, seed, batch size, grid, detection thresholds.
        call: the pipeline call's other arguments, accel's options included (num_inference_steps, guidance_scale,
            steps="hsa", search="bon" with reward and nfe, ...).
        detector: accel.evals.detectors.Detector, or None to generate only.
        colors: colour classifier for detectors without colours (accel.evals.detectors.ClipColors).
        settings: what else names the run (model, detector paths) for the resume check.
        shard: this process's share (Shard.from_env() under torchrun / accelerate launch).
        progress: progress(prompts done, prompts) for this process.
        state: the code's state taken before the run (accel.evals.io.require_clean); None reads it at the end.
    Returns:
        On the main process: the summary (summarize) with n, images_per_prompt, nfe, seconds, the run's settings and
        run_info; results.jsonl (when scored) and summary.json are written to out. None on the other processes.
    """
    from accel.api import accelerate_pipeline

    call = dict(call or {})
    if not hasattr(pipe, "adapter"):
        pipe = accelerate_pipeline(pipe)
    out = Path(out)
    if detector is not None:
        missing = metadata_classes(metadata) - set(detector.classes)
        if missing:
            known = ", ".join(sorted(detector.classes)[:5])
            raise ValueError(f"the {detector.name} detector does not know the metadata's classes "
                             f"{', '.join(sorted(missing)[:5])} (it knows e.g. {known})")
    digest = hashlib.sha256("\n".join(json.dumps(m, sort_keys=True) for m in metadata).encode()).hexdigest()
    folder = RunFolder(out, {"eval": "geneval", "metadata_sha256": digest, "prompts": len(metadata),
                             **asdict(run), "call": {k: _setting(v) for k, v in sorted(call.items())},
                             "detector": None if detector is None else detector.name, **(settings or {})})
    folder.check(overwrite)
    shard.barrier()
    if shard.main:
        folder.prepare(overwrite)
    shard.barrier()
    per_image = call.get("search") is not None or call.get("sampler") == "fewstep" or _is_student(pipe)
    n = run.images_per_prompt

    def work(indices: range) -> dict:
        prompts = [metadata[i]["prompt"] for i in indices for _ in range(n)]
        seeds = [sample_seed(run.seed, i, k) for i in indices for k in range(n)]
        images, nfe = sample_images(pipe, prompts, seeds, call, per_image)
        rows = []
        for j, i in enumerate(indices):
            mine = images[j * n:(j + 1) * n]
            paths = write_prompt_folder(out, i, metadata[i], mine, run.grid)
            if detector is None:
                continue
            for path, image, dets in zip(paths, mine, detector.detect(mine)):
                result, kept = score_image(image, dets, metadata[i], colors, run.thresholds)
                rows.append(result_row(str(path), metadata[i], result, kept))
        return {"rows": rows, "nfe": nfe}

    records = run_chunks(len(metadata), run.batch_size, work, shard, folder, progress)
    if not shard.main:
        return None
    rows = [row for r in records for row in r["rows"]]
    summary = summarize(rows) if rows else {}
    summary.update(n=len(metadata), images_per_prompt=n, nfe=sum(r["nfe"] for r in records),
                   seconds=round(sum(r["seconds"] for r in records), 2), settings=folder.settings)
    summary.update(run_info(state))
    if rows:
        write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    write_json(out / "summary.json", summary)
    return summary


def read_layout(folder: str | Path) -> list[tuple[dict, list[Path]]]:
    """The (metadata, sample paths) GenEval's evaluate_images.py finds in a folder: numbered prompt folders with a
    metadata.jsonl, their samples/ files named digits + .png (any number of digits: GenEval's generation script
    writes 00000.png, its README 0000.png). Sorted; ValueError for a folder with none or bad metadata."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    found = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        try:
            meta = json.loads((sub / "metadata.jsonl").read_text())
        except (OSError, json.JSONDecodeError):
            raise ValueError(f"{sub / 'metadata.jsonl'} is missing or not JSON (GenEval's layout)") from None
        error = metadata_error(meta)
        if error:
            raise ValueError(f"{sub / 'metadata.jsonl'} is not GenEval's metadata format: {error}")
        samples = sorted(p for p in (sub / "samples").glob("*.png") if re.fullmatch(r"\d+\.png", p.name))
        found.append((meta, samples))
    if not any(samples for _, samples in found):
        raise ValueError(f"{folder} holds no GenEval samples (<index>/samples/<k>.png)")
    return found


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8, as GenEval opens it (EXIF orientation applied, RGB)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def score_folder(folder: str | Path, detector, colors=None, thresholds: Thresholds = Thresholds(),
                 shard: Shard = Shard(), progress: Callable[[int, int], None] | None = None) -> list[dict] | None:
    """Score a folder in GenEval's layout made by any tool (GenEval's own generation script included): its
    results.jsonl rows, prompt by prompt (shared out over `shard`'s processes); None on the processes but the
    first."""
    layout = read_layout(folder)
    missing = metadata_classes([m for m, _ in layout]) - set(detector.classes)
    if missing:
        raise ValueError(f"the {detector.name} detector does not know the metadata's classes "
                         f"{', '.join(sorted(missing)[:5])}")

    def work(indices: range) -> dict:
        rows = []
        for i in indices:
            meta, paths = layout[i]
            images = [read_image(p) for p in paths]
            for path, image, dets in zip(paths, images, detector.detect(images) if images else []):
                result, kept = score_image(image, dets, meta, colors, thresholds)
                rows.append(result_row(str(path), meta, result, kept))
        return {"rows": rows}

    records = run_chunks(len(layout), 1, work, shard, None, progress)
    return [row for r in records for row in r["rows"]] if shard.main else None


def _setting(value) -> str:
    """A call argument as the run's settings record it: its repr, or its type where the repr names a memory address
    (a Reward object), which would differ in the run that resumes."""
    text = repr(value)
    return type(value).__name__ if " at 0x" in text else text


def _is_student(pipe) -> bool:
    from accel.schedulers.fewstep import find_student

    return find_student(getattr(pipe, "pipe", pipe)) is not None

"""A learned shapes detector and the verifier built on it: GenEval's design, a detector feeding fixed rules.

`ShapesVerifier` (accel.rewards.verifier) reads a question and an image end to end, as a VLM judge does, and does
not learn left from right at its size (docs/search.md). GenEval's judge, and the detector rewards of RL fine-tuning
(Flow-GRPO's GenEval reward), work the other way: a learned detector finds the objects and fixed rules answer the
question about them. This module is that design for the shapes world:
- `ShapesDetector`: a small fully convolutional CenterNet (Zhou et al. 2019, "Objects as Points"): per pixel, the
  probability that an object's centre lies in it, the centre's sub-pixel offset, the box size, and the shape and
  colour of the object centred there. scripts/train_detector.py trains it on renders and on the built-in model's
  samples, labelled by the checker's programmatic detector.
- `DetectorVerifier`: P(yes) for a grammar question (accel.rewards.verifier). Detections are the heat map's local
  maxima, each present with its probability and of each shape and colour with its heads' probabilities; the
  question's clause is checked by GenEval's rules (accel.shapes.check_detections) on draws from that distribution,
  with the same draws for every image (common random numbers, so candidates are ranked on equal terms), and P(yes)
  is the share of draws that pass. `VerifierReward(DetectorVerifier(...))` is the reward `shapes-detector`.
It is imperfect where its detections are (smeared, merged or half-formed objects in model samples), not in the rules.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from accel.rewards.base import check_pixels
from accel.rewards.verifier import _coords, question_clause
from accel.shapes import COLORS, SHAPES, Detection, check_detections

LABELS: tuple[str, ...] = (*SHAPES, "unknown")  # the checker's labels ("unknown": an object of no clear shape)
DEFAULT_FOLDER = "shapes-detector"


@dataclass(frozen=True)
class DetectorConfig:
    """Sizes of ShapesDetector (saved as config.json beside model.safetensors)."""

    image_size: int = 32
    channels: tuple[int, int, int] = (32, 64, 96)


@dataclass(frozen=True)
class SoftDetection:
    """One heat-map peak: present with probability `score`; `labels` / `colors` are the probabilities over LABELS /
    COLORS; `box` (x0, y0, x1, y1) in pixels."""

    score: float
    box: tuple[float, float, float, float]
    labels: tuple[float, ...]
    colors: tuple[float, ...]


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class ShapesDetector(nn.Module):
    """CenterNet for 32 x 32 shapes images: a three-level U-Net over RGB + (x, y), and 1 + 2 + 2 + 4 + 4 output
    channels per pixel (centre logit, offset, log size, label logits, colour logits). About 0.4 M parameters.

    forward(images (B, 3, H, W) in [0, 1]) -> dict of heat (B, S, S) logits, offset (B, 2, S, S) in [0, 1] pixels,
    size (B, 2, S, S) in pixels, labels (B, 4, S, S) and colors (B, 4, S, S) logits; detect(images) -> soft
    detections per image.
    """

    def __init__(self, config: DetectorConfig | None = None):
        super().__init__()
        self.config = cfg = config or DetectorConfig()
        c0, c1, c2 = cfg.channels
        self.down0, self.down1, self.down2 = _block(5, c0), _block(c0, c1, 2), _block(c1, c2, 2)
        self.up1, self.up0 = _block(c2 + c1, c1), _block(c1 + c0, c0)
        self.head = nn.Conv2d(c0, 1 + 2 + 2 + len(LABELS) + len(COLORS), 1)
        with torch.no_grad():
            self.head.bias[0] = -4.0  # few pixels are centres (CenterNet's prior)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        size = self.config.image_size
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        h0 = self.down0(torch.cat([x * 2 - 1, _coords(size).to(x).expand(x.shape[0], 2, size, size)], dim=1))
        h1 = self.down1(h0)
        h2 = self.down2(h1)
        u1 = self.up1(torch.cat([F.interpolate(h2, scale_factor=2.0, mode="nearest"), h1], dim=1))
        u0 = self.up0(torch.cat([F.interpolate(u1, scale_factor=2.0, mode="nearest"), h0], dim=1))
        out = self.head(u0)
        n = len(LABELS)
        return {"heat": out[:, 0], "offset": torch.sigmoid(out[:, 1:3]), "size": out[:, 3:5].exp(),
                "labels": out[:, 5:5 + n], "colors": out[:, 5 + n:]}

    @torch.no_grad()
    def detect(self, images: torch.Tensor, threshold: float = 0.02, top: int = 8) -> list[list[SoftDetection]]:
        """Soft detections of each image: heat-map peaks (3 x 3 local maxima) above `threshold`, at most `top`,
        by falling score; boxes in the input image's pixels."""
        check_pixels(images, type(self).__name__)
        device = next(self.parameters()).device
        out = self(images.to(device))
        scale = images.shape[-1] / self.config.image_size
        heat = torch.sigmoid(out["heat"])
        peaks = (heat == F.max_pool2d(heat[:, None], 3, stride=1, padding=1)[:, 0]) & (heat > threshold)
        labels, colors = out["labels"].softmax(1), out["colors"].softmax(1)
        found = []
        for b in range(heat.shape[0]):
            ys, xs = torch.nonzero(peaks[b], as_tuple=True)
            order = heat[b, ys, xs].argsort(descending=True)[:top]
            dets = []
            for y, x in zip(ys[order].tolist(), xs[order].tolist()):
                cx, cy = x + float(out["offset"][b, 0, y, x]), y + float(out["offset"][b, 1, y, x])
                w, h = float(out["size"][b, 0, y, x]), float(out["size"][b, 1, y, x])
                box = tuple(v * scale for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
                dets.append(SoftDetection(float(heat[b, y, x]), box, tuple(labels[b, :, y, x].tolist()),
                                          tuple(colors[b, :, y, x].tolist())))
            found.append(dets)
        return found

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json + model.safetensors."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config) | {"labels": LABELS, "colors": COLORS},
                                                       indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | None = None) -> ShapesDetector:
        """Load from a folder (default: the built-in one, accel.assets/shapes-detector)."""
        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else default_detector_path()
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"no shapes detector at {folder} (config.json + model.safetensors); train one "
                                    "with scripts/train_detector.py")
        meta = json.loads((folder / "config.json").read_text())
        if tuple(meta.pop("labels", LABELS)) != LABELS or tuple(meta.pop("colors", COLORS)) != COLORS:
            raise ValueError(f"the detector at {folder} was trained for other labels or colours")
        model = cls(DetectorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()}))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.to(device or "cpu").eval()


def default_detector_path() -> Path:
    """Where the built-in learned detector lives (accel.assets/shapes-detector)."""
    import importlib

    return Path(importlib.import_module("accel.assets").__file__).parent / DEFAULT_FOLDER


# --- training targets and loss (scripts/train_detector.py) --------------------------------------------------------


def targets(detections: list[list[Detection]], size: int = 32, sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """Training targets of images with these (checker) detections, boxes in pixels of a size x size image.

    heat (B, S, S): a Gaussian of `sigma` pixels around each object's centre pixel, 1 exactly there; centre (B, S,
    S) bool; offset / size (B, 2, S, S) at centres; labels / colors (B, S, S) class indices on each centre's 3 x 3
    neighbourhood (-1 elsewhere: ignored), so a peak one pixel off still reads the object it belongs to.
    """
    b = len(detections)
    heat = torch.zeros(b, size, size)
    centre = torch.zeros(b, size, size, dtype=torch.bool)
    offset, box_size = torch.zeros(b, 2, size, size), torch.ones(b, 2, size, size)
    labels = torch.full((b, size, size), -1, dtype=torch.long)
    colors = torch.full((b, size, size), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i, dets in enumerate(detections):
        for d in dets:
            x0, y0, x1, y1 = d.box
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            px, py = min(int(cx), size - 1), min(int(cy), size - 1)
            g = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma ** 2))
            heat[i] = torch.maximum(heat[i], g)
            centre[i, py, px] = True
            offset[i, :, py, px] = torch.tensor([cx - px, cy - py])
            box_size[i, :, py, px] = torch.tensor([max(x1 - x0, 1.0), max(y1 - y0, 1.0)])
            near = (slice(max(py - 1, 0), py + 2), slice(max(px - 1, 0), px + 2))
            labels[i][near] = LABELS.index(d.label)
            colors[i][near] = COLORS.index(d.color)
    return {"heat": heat, "centre": centre, "offset": offset, "size": box_size, "labels": labels, "colors": colors}


def detector_loss(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CenterNet's losses: penalty-reduced focal loss on the heat map (alpha 2, beta 4) over the number of objects,
    L1 on the offset and the log size at centres, cross-entropy of label and colour around centres."""
    p = torch.sigmoid(out["heat"]).clamp(1e-4, 1 - 1e-4)
    pos = target["centre"]
    n = max(int(pos.sum()), 1)
    focal = torch.where(pos, -(1 - p) ** 2 * torch.log(p),
                        -(1 - target["heat"]) ** 4 * p ** 2 * torch.log(1 - p)).sum() / n
    mask = pos[:, None].expand_as(target["offset"])
    offset = F.l1_loss(out["offset"][mask], target["offset"][mask], reduction="sum") / n
    size = F.l1_loss(out["size"][mask].log(), target["size"][mask].log(), reduction="sum") / n
    labels = F.cross_entropy(out["labels"], target["labels"], ignore_index=-1)
    colors = F.cross_entropy(out["colors"], target["colors"], ignore_index=-1)
    total = focal + offset + size + labels + colors
    return {"loss": total, "heat": focal, "offset": offset, "size": size, "labels": labels, "colors": colors}


# --- the verifier -------------------------------------------------------------------------------------------------


def clause_holds(dets: list[Detection], clause: dict) -> bool:
    """A clause of `question_clause` under GenEval's rules, for hard detections."""
    if "objects" in clause:
        return len(dets) == clause["objects"]
    return check_detections(dets, clause, strict=bool(clause.get("strict"))).correct


class DetectorVerifier:
    """P(yes) for shapes grammar questions from a learned detector and GenEval's rules (module docstring).

    Args:
        detector: a ShapesDetector.
        draws: Monte Carlo draws of the detection set per (image, question); the same draws for every image.
        seed: of the draws.
    """

    oracle = False

    def __init__(self, detector: ShapesDetector, draws: int = 256, seed: int = 0):
        if not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
        self.detector, self.draws = detector, draws
        rng = np.random.default_rng(seed)
        self._uniform = rng.random((3, draws, 64))  # presence, label, colour for up to 64 detections per image

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | None = None, **kwargs
                        ) -> DetectorVerifier:
        return cls(ShapesDetector.from_pretrained(folder, device), **kwargs)

    def __call__(self, image: torch.Tensor, question: str) -> float:
        return float(self.probabilities(image[None], [question])[0])

    def probabilities(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """P(yes) (B,) for images (B, 3, H, W) in [0, 1] and one question each."""
        if len(questions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(questions)} questions; pass one question each")
        clauses = [question_clause(q) for q in questions]  # ValueError for questions outside the grammar
        found = self.detector.detect(images)
        return torch.tensor([self.answer(dets, clause) for dets, clause in zip(found, clauses)])

    def answer(self, dets: list[SoftDetection], clause: dict) -> float:
        """Share of the draws of hard detection sets from `dets` in which `clause` holds."""
        dets = dets[: self._uniform.shape[2]]
        if not dets:
            return float(clause_holds([], clause))
        score = np.array([d.score for d in dets])
        label_cdf = np.cumsum([d.labels for d in dets], axis=1)
        color_cdf = np.cumsum([d.colors for d in dets], axis=1)
        k = len(dets)
        present = self._uniform[0, :, :k] < score  # (draws, k)
        label = _inverse_cdf(self._uniform[1, :, :k], label_cdf)
        color = _inverse_cdf(self._uniform[2, :, :k], color_cdf)
        verdicts: dict[tuple, bool] = {}
        passed = 0
        for d in range(self.draws):
            key = tuple((j, int(label[d, j]), int(color[d, j])) for j in range(k) if present[d, j])
            if key not in verdicts:
                verdicts[key] = clause_holds([Detection(LABELS[lab], COLORS[col], dets[j].box) for j, lab, col in key],
                                             clause)
            passed += verdicts[key]
        return passed / self.draws


def _inverse_cdf(u: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """Class index per (draw, detection) for uniforms u (D, K) and per-detection cumulative probabilities (K, C)."""
    scaled = u[..., None] * cdf[None, :, -1:]  # the cdf's last entry is 1 up to rounding
    return np.minimum((scaled >= cdf[None]).sum(-1), cdf.shape[1] - 1)

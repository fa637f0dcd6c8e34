"""accel's GenEval scorer against GenEval's own verdicts on GenEval's 553 prompts, over seeded synthetic detections.

GOLDEN was produced by GenEval's evaluate_images.py (djghosh13/geneval af4902f), run from a copy outside this
repository with its model calls stubbed: inference_detector returned `synthetic_detections` as its per-class
(N, 5) arrays and color_classification each box's colour; everything else (thresholds, top-16, NMS, ranking,
`evaluate`) was GenEval's code. docs/evals.md says how to re-run it.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from accel.evals.detectors import GENEVAL_CLASSES
from accel.evals.geneval import Thresholds, score_image
from accel.shapes import Detection
from accel.shapes.checker import GENEVAL_COLORS

METADATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"
SIZE = 64
SETTINGS = [Thresholds(), Thresholds(max_overlap=0.5), Thresholds(threshold=0.1, counting_threshold=0.5, max_objects=2)]
TRIALS = 3  # x 553 prompts; trial t uses SETTINGS[t]


def synthetic_detections(meta: dict, rng: np.random.Generator) -> list[Detection]:
    """Random detections around the prompt's classes plus two distractor classes: counts near the prompt's, scores
    spread over the thresholds, colours biased to the asked one, boxes anywhere (positions hold sometimes). Boxes
    and scores are float32 values, as GenEval's arrays hold them."""
    classes = [c["class"] for c in meta["include"]] + list(rng.choice(GENEVAL_CLASSES, 2))
    dets = []
    for cls in classes:
        want = next((c for c in meta["include"] if c["class"] == cls), {"count": 1})
        for _ in range(int(rng.integers(0, want["count"] + 3))):
            x0, y0 = rng.uniform(0, SIZE - 8, 2)
            w, h = rng.uniform(4, SIZE / 2, 2)
            score = rng.choice([rng.uniform(0, 1), rng.uniform(0.85, 1), rng.uniform(0.25, 0.35)])
            color = want["color"] if "color" in want and rng.random() < 0.7 else str(rng.choice(GENEVAL_COLORS))
            box = np.float32([x0, y0, min(x0 + w, SIZE), min(y0 + h, SIZE)])
            dets.append(Detection(cls, color, tuple(map(float, box)), score=float(np.float32(score))))
    return dets


def verdicts(metas: list[dict], score) -> tuple[str, str]:
    """(the verdicts as a hex bit string, sha256 of the reasons) over TRIALS x the prompts, in order. `score(meta,
    dets, thresholds) -> (correct, reason)`; reasons with several relations list them sorted (GenEval joins a set,
    whose order is the string hash's)."""
    rng = np.random.default_rng(0)
    bits, reasons = [], []
    for trial in range(TRIALS):
        for meta in metas:
            correct, reason = score(meta, synthetic_detections(meta, rng), SETTINGS[trial % len(SETTINGS)])
            bits.append("1" if correct else "0")
            reasons.append(_sorted_relations(reason))
    return f"{int(''.join(bits), 2):x}", hashlib.sha256("\n--\n".join(reasons).encode()).hexdigest()


def _sorted_relations(reason: str) -> str:
    import re

    out = []
    for part in reason.split("\n"):
        m = re.fullmatch(r"(expected .* target, found )(.*)( target)", part)
        out.append(m[1] + " and ".join(sorted(m[2].split(" and "))) + m[3] if m else part)
    return "\n".join(out)


def accel_score(meta, dets, thresholds):
    colors = lambda image, objs, name: [d.color for d in objs]  # noqa: E731 (each box's colour, as the stub)
    result, _ = score_image(np.zeros((SIZE, SIZE, 3), np.uint8), dets, meta, colors, thresholds)
    return result.correct, result.reason


# GenEval's (verdict bits, sha256 of its reasons) over the 3 x 553 cases: 568 correct, 1091 incorrect.
GOLDEN = (
    "4f7cfe197dcd3f65bf1f52050e0d8fc0ea3c1624c142d80000000000000000000a21c5ae20de8761e126c1740000100a0123"
    "0005021200000311a608a4ca210541621819223d1b7ffddfbbacd5f3ffed22a43b36d81207baa935c8600400000100080000"
    "00012c1a6ae8f9b36287dd435e60100002020040400c0280004002ac8090020020045000022167d6be655f7bf8cd886efb54"
    "a8b98dbc6f1b9d64a1537c020140000204140104017da1341da685ac6219031c08010208600002202a030201088034090ed4"
    "e45007d4a8382a0",
    "37e6ce57a6cc6d80bc1b373cf3ab788ec537c58d433fa9e9efcf309cc867954f")


@pytest.mark.skipif(not METADATA.is_file(), reason="GenEval's metadata is not in ../shared/data/geneval")
def test_verdicts_and_reasons_equal_genevals():
    metas = [json.loads(line) for line in METADATA.read_text().splitlines()]
    assert len(metas) == 553
    bits, reasons = verdicts(metas, accel_score)
    assert bits == GOLDEN[0]  # every verdict
    assert reasons == GOLDEN[1]  # and every reason, in GenEval's words

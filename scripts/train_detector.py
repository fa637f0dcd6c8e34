"""Train the learned shapes detector (accel.rewards.detector.ShapesDetector), the reward `shapes-detector`.

Data as scripts/train_verifier.py draws it (renders of random prompts, half perturbed, and a pool of the built-in
model's own samples), every label from the checker's programmatic detector (accel.shapes.detect): the objects'
boxes, shapes (circle, square, triangle or unknown) and colours. Held out by seed: the evaluation renders and model
samples come from their own seeds. The report (OUT/training.json) gives, on them, the detections' recall and
precision against the checker's, and the verifier's answers against the checker's per tag, question kind and
source, with its false-yes / false-no rates and examples of disagreement.

The pools are the verifier's (same seeds and steps): --work may point at a verifier run's folder to reuse them.
A CPU session can stop at any time: --minutes ends this invocation after a checkpoint, and the same command resumes
exactly (batch k is drawn from seed (seed, k)). The detector folder is written when the run reaches --steps.

    OMP_WAIT_POLICY=PASSIVE python scripts/train_detector.py --steps 3000 --minutes 55
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from accel.evals.io import write_json
from accel.rewards.detector import LABELS, DetectorConfig, DetectorVerifier, ShapesDetector, detector_loss, targets
from accel.shapes import COLORS, detect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_verifier import (SIZE, base_parser, eval_images, eval_set, evaluate, fit, render_example,  # noqa: E402
                            start_run, training_record)


def parser() -> argparse.ArgumentParser:
    return base_parser(__doc__.splitlines()[0], "detector", "assets/shapes-detector", "runs/detector", steps=3000)


def batch(step: int, seed: int, size: int, pool, model_fraction: float) -> tuple[torch.Tensor, dict]:
    """Batch `step`: images (B, 3, 32, 32) in [0, 1] and their targets from the checker's detections."""
    rng = np.random.default_rng([seed, step])
    images = []
    for _ in range(size):
        if len(pool[0]) and rng.random() < model_fraction:
            images.append(pool[0][int(rng.integers(len(pool[0])))])
        else:
            images.append(render_example(rng)[0])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, targets([detect(image) for image in images], SIZE)


def match_report(model: ShapesDetector, images: np.ndarray, sources: list[str], threshold: float = 0.5) -> dict:
    """Detections (score >= threshold, most probable label and colour) against the checker's, per source: recall
    and precision of objects matched by centre within 2 pixels with the same label and colour, and how often the
    image's whole detection list matches."""
    out: dict[str, dict] = {}
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    found = [d for s in range(0, len(x), 256) for d in model.detect(x[s:s + 256])]
    for source in sorted(set(sources)):
        tp = n_true = n_found = exact = images_n = 0
        for image, dets, src in zip(images, found, sources):
            if src != source:
                continue
            truth = [(d.label, d.color, (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in detect(image)]
            mine = [(LABELS[int(np.argmax(d.labels))], COLORS[int(np.argmax(d.colors))],
                     (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in dets if d.score >= threshold]
            hits, free = 0, list(truth)
            for m in mine:
                near = [t for t in free if t[:2] == m[:2] and abs(t[2] - m[2]) <= 2 and abs(t[3] - m[3]) <= 2]
                if near:
                    free.remove(near[0])
                    hits += 1
            tp, n_true, n_found = tp + hits, n_true + len(truth), n_found + len(mine)
            exact += hits == len(truth) == len(mine)
            images_n += 1
        out[source] = {"recall": tp / max(n_true, 1), "precision": tp / max(n_found, 1),
                       "images_all_objects_right": exact / max(images_n, 1), "images": images_n}
    return out


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if (run := start_run(args)) is None:
        return
    work, out, start, train_pool, eval_pool = run
    torch.manual_seed(args.seed)
    model = ShapesDetector(DetectorConfig(image_size=SIZE))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def train_step(step: int):
        x, target = batch(step, args.seed, args.batch_size, train_pool, args.model_fraction)
        losses = detector_loss(model(x), target)
        entry = {k: round(float(v.detach()), 5) for k, v in losses.items()}
        return losses["loss"], entry, " ".join(f"{k} {v:.3f}" for k, v in entry.items())

    if (done := fit(args, work, model, optimizer, train_step, start, clip=5.0)) is None:
        return
    step, log = done
    model.eval()
    images = eval_images(args.seed, args.eval_renders, eval_pool)
    report = evaluate(DetectorVerifier(model), eval_set(images))
    detections = match_report(model, np.stack([image for image, _, _ in images]) if images else
                              np.zeros((0, SIZE, SIZE, 3), np.uint8), [source for _, _, source in images])
    model.save_pretrained(out)
    write_json(out / "training.json", training_record(args, step, log, held_out=report, detections=detections))
    print(f"detector written to {out}: held-out answers {report['accuracy']:.3f} (per kind {report['per_kind']}); "
          f"detections {detections}", flush=True)


if __name__ == "__main__":
    main()

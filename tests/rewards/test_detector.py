"""The learned shapes detector (CenterNet) and the verifier built on it with GenEval's rules: targets and decoding,
soft answers, the model and its training script (a few steps; exact resume)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from accel.rewards import VerifierReward, get_reward
from accel.rewards.detector import (DetectorVerifier, ShapesDetector, SoftDetection, default_detector_path,
                                    detector_loss, targets)
from accel.rewards.verifier import exact_answer, question_clause, requirements
from accel.search.raise_agents import ShapesAgent
from accel.shapes import detect, prompt_set, render, scene_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import train_detector  # noqa: E402
import train_verifier  # noqa: E402


def scenes(n=24, seed=0):
    """Renders of n prompts, half of them perturbed, as uint8 arrays, and their metadata."""
    rng = np.random.default_rng(seed)
    metas = prompt_set(n, seed)
    arrays = [render(train_verifier.perturb(scene_for(m, rng), rng) if k % 2 else scene_for(m, rng))
              for k, m in enumerate(metas)]
    return np.stack(arrays), metas


def as_tensor(arrays):
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255


class CheckerAsDetector(ShapesDetector):
    """A detector whose outputs are the training targets of the checker's own detections: a perfect student."""

    def forward(self, images):
        arrays = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        t = targets([detect(a) for a in arrays])
        big = 30.0
        one_hot = lambda idx: F.one_hot(idx.clamp(min=0), 4).permute(0, 3, 1, 2).float() * big  # noqa: E731
        return {"heat": torch.where(t["centre"], big, -big), "offset": t["offset"], "size": t["size"],
                "labels": one_hot(t["labels"]), "colors": one_hot(t["colors"])}


def test_a_detector_that_outputs_its_targets_answers_as_the_checker():
    """Targets -> decoded peaks -> draws -> GenEval's rules give the checker's answer to every question of every
    image (relations included): the verifier adds no error of its own beyond the detector's."""
    arrays, metas = scenes(48, 3)
    images, questions, answers = [], [], []
    for a, m in zip(arrays, metas):
        for q in [r.question for r in requirements(m)] + [m["prompt"], "is there a square left of a circle?"]:
            images.append(a)
            questions.append(q)
            answers.append(exact_answer(a, question_clause(q)))
    p = DetectorVerifier(CheckerAsDetector()).probabilities(as_tensor(np.stack(images)), questions)
    assert p.tolist() == [float(a) for a in answers]
    assert 0 < sum(answers) < len(answers)  # both answers occur: the test can fail


def test_soft_answers_follow_the_detections_probabilities():
    verifier = DetectorVerifier(ShapesDetector(), draws=4000)
    red_circle = SoftDetection(0.7, (2, 2, 10, 10), (1, 0, 0, 0), (1, 0, 0, 0))
    assert verifier.answer([red_circle], question_clause("is there a red circle?")) == pytest.approx(0.7, abs=0.03)
    assert verifier.answer([red_circle], question_clause("is there a blue circle?")) == 0
    half = SoftDetection(0.5, (20, 2, 28, 10), (0.5, 0.5, 0, 0), (1, 0, 0, 0))
    clause = question_clause("are there exactly two objects?")
    assert verifier.answer([red_circle, half], clause) == pytest.approx(0.35, abs=0.03)
    # A circle left of the square: needs both present and the second one a square.
    left = question_clause("is there a circle left of a square?")
    assert verifier.answer([red_circle, half], left) == pytest.approx(0.7 * 0.5 * 0.5, abs=0.03)
    assert verifier.answer([], question_clause("is there exactly one object?")) == 0
    # Common random numbers: the same inputs give the same answer.
    assert verifier.answer([red_circle, half], left) == verifier.answer([red_circle, half], left)
    with pytest.raises(ValueError, match="draws"):
        DetectorVerifier(ShapesDetector(), draws=0)


def test_detector_model_learns_saves_and_errors(tmp_path):
    torch.manual_seed(0)
    model = ShapesDetector()
    arrays, metas = scenes(16, 1)
    x, t = as_tensor(arrays), targets([detect(a) for a in arrays])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        first = float(detector_loss(model(x), t)["loss"])
    for _ in range(25):
        loss = detector_loss(model(x), t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(detector_loss(model(x), t)["loss"]) < 0.6 * first
    model.eval()
    found = model.detect(x[:2])
    big = model.detect(F.interpolate(x[:2], size=(64, 64), mode="nearest"))
    assert len(found) == 2 and all(0 <= d.score <= 1 and abs(sum(d.labels) - 1) < 1e-5 for d in found[0] + found[1])
    # A 2x nearest-upsampled input resizes back to about the same 32 x 32 image: the same peaks, boxes in its pixels.
    strong = [d for d in found[0] if d.score > 0.2]
    assert strong
    for small in strong:
        assert any(np.allclose(np.array(large.box), 2 * np.array(small.box), atol=0.5) for large in big[0])
    model.save_pretrained(tmp_path / "d")
    again = DetectorVerifier.from_pretrained(tmp_path / "d")
    prompts = [m["prompt"] for m in metas]
    assert torch.equal(again.probabilities(x, prompts), DetectorVerifier(model).probabilities(x, prompts))
    scores = VerifierReward(again).score(x, prompts)
    assert scores.shape == (16,) and bool(((scores >= 0) & (scores <= 1)).all())
    agent = ShapesAgent(verifier=again)
    assert len(agent.verify(x[0], agent.analyze(prompts[0], None, None)).answers) == len(requirements(metas[0]))
    with pytest.raises(ValueError, match="not a shapes verification question"):
        again.probabilities(x[:1], ["is the sky blue?"])
    with pytest.raises(ValueError, match="one question each"):
        again.probabilities(x[:2], ["is there a red circle?"])
    with pytest.raises(FileNotFoundError, match="train_detector.py"):
        ShapesDetector.from_pretrained(tmp_path / "missing")
    (tmp_path / "d" / "config.json").write_text(json.dumps({"labels": ["circle"]}))
    with pytest.raises(ValueError, match="other labels"):
        ShapesDetector.from_pretrained(tmp_path / "d")


def test_detector_reward_by_name():
    if not (default_detector_path() / "model.safetensors").is_file():
        with pytest.raises(FileNotFoundError, match="train_detector.py"):
            get_reward("shapes-detector")
        return
    arrays, metas = scenes(6, 2)
    scores = get_reward("shapes-detector").score(as_tensor(arrays), [m["prompt"] for m in metas])
    assert scores.shape == (6,)


def test_training_script_smoke_and_exact_resume(tmp_path):
    from accel.pipelines.shapes import build_shapes_pipeline

    tiny = tmp_path / "tiny"
    build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1) \
        .save_pretrained(tiny)

    def args(name, *extra):
        return ["--steps", "4", "--batch-size", "6", "--model", str(tiny), "--model-samples", "4",
                "--eval-model-samples", "2", "--sample-steps", "2", "--eval-renders", "3", "--threads", "1",
                "--work", str(tmp_path / name / "work"), "--out", str(tmp_path / name / "out"), *extra]

    train_detector.main(args("straight"))
    report = json.loads((tmp_path / "straight/out/training.json").read_text())
    assert report["held_out"]["items"] > 0 and set(report["held_out"]["per_source"]) == {"model", "render"}
    assert set(report["detections"]) == {"model", "render"}
    assert all(0 <= v["recall"] <= 1 and 0 <= v["precision"] <= 1 for v in report["detections"].values())
    train_detector.main(args("resumed", "--stop-at", "2"))
    assert not (tmp_path / "resumed/out").exists()
    train_detector.main(args("resumed"))
    a = load_file(str(tmp_path / "straight/out/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/out/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shipped_detector_reads_relations():
    """The built-in detector (held-out report in its training.json) answers a relation and its reverse correctly on
    renders of two objects side by side or stacked, where the end-to-end verifier is weakest."""
    from accel.shapes.world import ShapeObject

    verifier = DetectorVerifier.from_pretrained()
    images, asked, expected = [], [], []
    for k in range(8):
        a, b = ["circle", "square", "triangle"][k % 3], ["square", "triangle", "circle"][k % 3]
        if k % 2:
            scene, rel, rev = [ShapeObject(a, "red", 0.25, 0.5, 0.14), ShapeObject(b, "blue", 0.75, 0.5, 0.14)], \
                "left of", "right of"
        else:
            scene, rel, rev = [ShapeObject(a, "green", 0.5, 0.25, 0.14), ShapeObject(b, "yellow", 0.5, 0.75, 0.14)], \
                "above", "below"
        for relation, answer in ((rel, True), (rev, False)):
            images.append(render(scene))
            asked.append(f"is there a {a} {relation} a {b}?")
            expected.append(answer)
    p = verifier.probabilities(as_tensor(np.stack(images)), asked)
    assert ((p > 0.5) == torch.tensor(expected)).all(), list(zip(asked, p.tolist()))

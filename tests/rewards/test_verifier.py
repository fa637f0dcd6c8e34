"""The shapes verification grammar, the exact oracle, the learned verifier's model and Reward, and its training
script (a few steps; exact resume)."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from accel.rewards import ShapesReward, ShapesVerifier, VerifierReward, get_reward
from accel.rewards.verifier import ExactVerifier, VerifierConfig, question_clause, requirements
from accel.search.raise_agents import ShapesAgent
from accel.shapes import make_metadata, prompt_set, render, scene_for
from accel.testing import jitter_

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import train_verifier  # noqa: E402


def scenes(n=24, seed=0):
    """Renders of n prompts, half of them perturbed: (images (n, 3, 32, 32) in [0, 1], metadata)."""
    rng = np.random.default_rng(seed)
    metas = prompt_set(n, seed)
    arrays = []
    for k, meta in enumerate(metas):
        scene = scene_for(meta, rng)
        arrays.append(render(train_verifier.perturb(scene, rng) if k % 2 else scene))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255, metas


def test_questions_parse_back_to_their_clauses():
    for meta in prompt_set(36, 1):
        for req in requirements(meta):
            assert question_clause(req.question) == req.clause, req.question
        assert question_clause(meta["prompt"])["strict"]
    with pytest.raises(ValueError, match="not a shapes verification question"):
        question_clause("is the sky blue?")
    with pytest.raises(ValueError, match="no include clause"):
        requirements({"prompt": "x", "include": []})


def test_exact_product_over_requirements_is_the_strict_checker():
    """All requirements met <=> the strict checker says correct, image by image (the decomposition loses nothing)."""
    images, metas = scenes()
    prompts = [m["prompt"] for m in metas]
    product = VerifierReward(ExactVerifier(), "product").score(images, prompts)
    whole = VerifierReward(ExactVerifier(), "prompt").score(images, prompts)
    strict = ShapesReward(strict=True).score(images, prompts) == 1
    assert torch.equal(product == 1, strict) and torch.equal(whole == 1, strict)
    assert 0 < int(strict.sum()) < len(prompts)  # both answers occur: the test can fail


@pytest.mark.parametrize("slots", [0, 2])
def test_learned_verifier_model(tmp_path, slots):
    torch.manual_seed(0)
    model = ShapesVerifier(VerifierConfig(relation_slots=slots)).eval()
    images, metas = scenes(4)
    p = model.probabilities(images, ["is there a red circle?"] * 4)
    assert p.shape == (4,) and bool(((p > 0) & (p < 1)).all())
    big = torch.nn.functional.interpolate(images, size=(64, 64), mode="nearest")
    assert model.probabilities(big, ["is there a red circle?"] * 4).shape == (4,)  # resized to its input size
    # word order reaches the model (jittered: at init a zero-initialised layer leaves only float rounding between
    # the two, which differs from CPU to CPU)
    jittered = jitter_(copy.deepcopy(model), seed=1)
    left = jittered.probabilities(images[:1], ["is there a circle left of a square?"])
    right = jittered.probabilities(images[:1], ["is there a square left of a circle?"])
    assert abs(float(left - right)) > 1e-5
    assert 0 <= model(images[0], "is there a red circle?") <= 1  # usable as an agent's Verifier
    model.save_pretrained(tmp_path / "v")
    again = ShapesVerifier.from_pretrained(tmp_path / "v")
    assert torch.equal(again.probabilities(images, [m["prompt"] for m in metas]),
                       model.probabilities(images, [m["prompt"] for m in metas]))
    reward = VerifierReward(again)
    scores = reward.score(images, [m["prompt"] for m in metas])
    assert scores.shape == (4,) and bool(((scores >= 0) & (scores <= 1)).all())
    agent = ShapesAgent(verifier=again)
    verdict = agent.verify(images[0], agent.analyze(metas[0]["prompt"], None, None))
    assert len(verdict.answers) == len(requirements(metas[0]))
    with pytest.raises(FileNotFoundError, match="train_verifier.py"):
        ShapesVerifier.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="mode"):
        VerifierReward(again, "mean")
    assert get_reward("shapes").strict  # names without weights still load


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from accel.pipelines.shapes import build_shapes_pipeline

    path = tmp_path_factory.mktemp("tiny-shapes")
    build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1) \
        .save_pretrained(path)
    return str(path)


def test_training_script_smoke_and_exact_resume(tmp_path, tiny_model):
    def args(name, *extra):
        return ["--steps", "4", "--batch-size", "8", "--model", tiny_model, "--model-samples", "4",
                "--eval-model-samples", "2", "--sample-steps", "2", "--eval-renders", "3", "--threads", "1",
                "--work", str(tmp_path / name / "work"), "--out", str(tmp_path / name / "out"), *extra]

    train_verifier.main(args("straight"))
    report = __import__("json").loads((tmp_path / "straight/out/training.json").read_text())["held_out"]
    assert report["items"] > 0 and set(report["per_source"]) == {"model", "render"}
    assert set(report["per_kind"]) <= {"object", "colour", "count", "relation", "object count", "whole prompt"}
    assert 0 <= report["false_yes_rate"] <= 1 and 0 <= report["false_no_rate"] <= 1
    ShapesVerifier.from_pretrained(tmp_path / "straight/out")

    train_verifier.main(args("resumed", "--stop-at", "2"))
    assert not (tmp_path / "resumed/out").exists()  # stopped before the end: a checkpoint, no verifier yet
    with pytest.raises(ValueError, match="--batch-size: 8 there, 4 now"):  # another recipe is not a resume
        train_verifier.main(args("resumed") + ["--batch-size", "4"])
    train_verifier.main(args("resumed"))  # the same command resumes at step 2
    a = load_file(str(tmp_path / "straight/out/model.safetensors"))
    b = load_file(str(tmp_path / "resumed/out/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The pool of model samples was made once and reused.
    assert len(list((tmp_path / "resumed/work/pool-train").glob("chunk-*.safetensors"))) == 1


def test_relation_questions_ask_about_the_prompts_two_shapes_in_both_orders():
    rng = np.random.default_rng(0)
    meta = make_metadata("position", rng)
    shapes = {r["class"] for r in meta["include"]}
    asked = {train_verifier.relation_question(meta, rng) for _ in range(200)}
    clauses = [question_clause(q)["include"] for q in asked]
    assert all({c["class"] for c in inc} == shapes and "position" in inc[1] for inc in clauses)
    assert len(asked) == 8  # 2 orders x 4 relations: where the objects are decides the answer, not which they are
    assert train_verifier.relation_question({"include": [{"class": "circle", "count": 2}]}, rng) is None
    # The checker answers them: a scene that satisfies the prompt says yes to its own relation, no to the reverse.
    scene = scene_for(meta, rng)
    (b, a), rel = (r["class"] for r in meta["include"]), meta["include"][1]["position"][0]
    own = requirements(meta)[1].question
    swapped = requirements({"include": [{"class": a, "count": 1}, {"class": b, "count": 1, "position": [rel, 0]}]},
                           strict=False)[-1].question
    assert train_verifier.exact_answer(render(scene), question_clause(own))
    assert not train_verifier.exact_answer(render(scene), question_clause(swapped))


def test_training_script_stops_in_the_pool_when_out_of_time(tmp_path, tiny_model):
    work = tmp_path / "work"
    train_verifier.main(["--steps", "2", "--model", tiny_model, "--model-samples", "40", "--eval-model-samples", "0",
                         "--sample-steps", "1", "--threads", "1", "--minutes", "1e-9", "--work", str(work),
                         "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not list((work / "pool-train").glob("chunk-*"))


def test_pool_holds_the_pipelines_own_images(tmp_path, tiny_model):
    # The pool is what the verifier learns the model's artefacts from: it must store the images as sampled (a
    # strided array written through safetensors once came back scrambled, and the verifier never saw a real sample).
    from accel.models import load_pipeline

    pipe = load_pipeline(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    images, metas = train_verifier.model_pool(pipe, 3, 5, 2, tmp_path / "pool")
    out = pipe([m["prompt"] for m in metas], num_inference_steps=2, output_type="np",
               generator=[torch.Generator().manual_seed(5 * 1_000_003 + j) for j in range(3)])
    expected = (np.clip(out.images, 0, 1) * 255).round().astype(np.uint8)
    assert images.shape == expected.shape and np.array_equal(images, expected)


def test_shipped_verifier_reads_colour_and_shape():
    # The built-in verifier must look at the image: on renders of one object it says yes to the object's own colour
    # and shape far more than to another colour or shape (its held-out report is in its training.json).
    from accel.shapes.world import ShapeObject

    verifier = ShapesVerifier.from_pretrained()
    own, other_colour, other_shape = [], [], []
    for k in range(12):
        shape, colour = ["circle", "square", "triangle"][k % 3], ["red", "green", "blue", "yellow"][k % 4]
        image = torch.from_numpy(render([ShapeObject(shape, colour, 0.3 + 0.03 * k, 0.5, 0.15)])).permute(2, 0, 1)
        x = image[None].float() / 255
        wrong_colour = ["green", "blue", "yellow", "red"][k % 4]
        wrong_shape = ["square", "triangle", "circle"][k % 3]
        own.append(verifier(x[0], f"is there a {colour} {shape}?"))
        other_colour.append(verifier(x[0], f"is there a {wrong_colour} {shape}?"))
        other_shape.append(verifier(x[0], f"is there a {colour} {wrong_shape}?"))
    # Measured at the shipped weights: 0.95 own, 0.22 another colour of the same shape, 0.00 another shape (the
    # model card has the held-out report).
    assert np.mean(own) > 0.7 and np.mean(own) - np.mean(other_colour) > 0.3 and \
        np.mean(own) - np.mean(other_shape) > 0.25, (np.mean(own), np.mean(other_colour), np.mean(other_shape))

"""GenEval's detectors and colour classifier, built tiny and random from configs offline: what they return, the
colour classifier against a hand computation of GenEval's zero-shot recipe, an end-to-end run, bad folders."""

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals.detectors import (COLOR_TEMPLATES, GENEVAL_CLASSES, ClipColors, Mask2FormerDetector,
                                   Owlv2Detector, load_detector, mask_to_box)
from accel.shapes import Detection
import geneval_tiny

runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("geneval-models")
    return {"mask2former": geneval_tiny.mask2former(root / "m2f"), "owlv2": geneval_tiny.owlv2(root / "owl"),
            "clip": geneval_tiny.clip(root / "clip"),
            "mask2former-2": geneval_tiny.mask2former(root / "m2f-2", labels=["car", "dog"])}


def images(n=2, size=32):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_mask2former_detections(folders):
    detector = Mask2FormerDetector(folders["mask2former"])
    found = detector.detect(images())
    assert len(found) == 2 and found[0]
    for d in found[0]:
        assert d.label in GENEVAL_CLASSES and d.color is None and 0 <= d.score <= 1
        assert d.mask.shape == (32, 32) and d.box == mask_to_box(d.mask) and d.area == d.mask.sum()


def test_mask_to_box_is_mmdets():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    assert mask_to_box(mask) == (3.0, 2.0, 7.0, 5.0)  # x of the last column + 1


def test_owlv2_detections(folders):
    detector = Owlv2Detector(folders["owlv2"], min_score=0.0)
    (dets,) = detector.detect(images(1, 40))
    assert dets and all(d.label in GENEVAL_CLASSES and d.mask is None and d.score is not None for d in dets)
    assert all(0 <= d.box[0] < d.box[2] <= 40 and 0 <= d.box[1] < d.box[3] <= 40 for d in dets)
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True)  # suppression keeps the most confident first


def test_clip_colors_follow_genevals_recipe(folders):
    colors = ClipColors(folders["clip"])
    model, tok = colors.model, colors.tokenizer
    weights = []
    for c in colors.colors:  # clip_benchmark's zero_shot_classifier: normalise, mean over templates, normalise
        text = tok([t.format(c=c, obj="cat") for t in COLOR_TEMPLATES], padding=True, return_tensors="pt")
        emb = torch.nn.functional.normalize(colors._features(model.get_text_features(**text)), dim=-1).mean(0)
        weights.append(emb / emb.norm())
    assert torch.allclose(colors._classifier("cat"), torch.stack(weights, 1), atol=1e-6)
    image = images(1)[0]
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    dets = [Detection("cat", None, (2, 2, 14, 14), score=0.9, mask=mask), Detection("cat", None, (0, 0, 32, 32),
                                                                                      score=0.8)]
    crop = np.asarray(colors.crops(image, dets)[0])
    assert crop.shape == (12, 12, 3) and (crop[0, 0] == 153).all() and (crop[2:10, 2:10] == image[4:12, 4:12]).all()
    pixels = colors.processor(images=colors.crops(image, dets), return_tensors="pt")["pixel_values"]
    feats = torch.nn.functional.normalize(colors._features(model.get_image_features(pixel_values=pixels)), dim=-1)
    expected = [colors.colors[i] for i in (feats @ torch.stack(weights, 1)).argmax(1).tolist()]
    assert colors(image, dets, "cat") == expected


def test_bad_folders(folders, tmp_path):
    with pytest.raises(ValueError, match="is not a Mask2Former detector folder: its config.json says model_type "
                                         "'clip'"):
        load_detector("mask2former", folders["clip"])
    with pytest.raises(ValueError, match="no config.json"):
        load_detector("owlv2", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "owlv2"}))
    with pytest.raises(ValueError, match="holds no .safetensors weights"):
        load_detector("owlv2", tmp_path)
    with pytest.raises(ValueError, match="allowed: shapes, mask2former, owlv2"):
        load_detector("yolo")


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    from accel.pipelines.shapes import build_shapes_pipeline

    path = tmp_path_factory.mktemp("tiny-shapes")
    build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1) \
        .save_pretrained(path)
    return path


def geneval_metadata(tmp_path):
    """Four tags' prompts in GenEval's format, over the classes car and dog."""
    metas = [
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "counting", "include": [{"class": "car", "count": 2}], "exclude": [{"class": "car", "count": 3}],
         "prompt": "a photo of two cars"},
        {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
        {"tag": "position", "include": [{"class": "dog", "count": 1},
                                        {"class": "car", "count": 1, "position": ["left of", 0]}],
         "prompt": "a photo of a car left of a dog"},
    ]
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in metas))
    return path


def test_end_to_end_mask2former_with_clip(folders, tiny_shapes, tmp_path):
    path, out = geneval_metadata(tmp_path), tmp_path / "out"
    args = ["eval", "geneval", "--model", tiny_shapes, "--metadata", path, "--out", out, "--images-per-prompt", 2,
            "--steps", 1, "--detector", "mask2former", "--detector-model", folders["mask2former-2"], "--threshold", 0,
            "--counting-threshold", 0, "--allow-dirty"]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2 and "pass --clip-model" in r.output  # a colour prompt needs the classifier
    r = runner.invoke(app, [str(a) for a in args + ["--clip-model", folders["clip"]]])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(set(json.loads(row["details"])) <= {"car", "dog"} for row in rows)
    # The colour prompt's car was detected and its colour classified by CLIP (any of GenEval's colours).
    colour_rows = [row for row in rows if row["tag"] == "colors"]
    assert all(json.loads(row["details"]).get("car") for row in colour_rows)
    assert all(row["correct"] or re.fullmatch(r"expected red car>=1, found 0 red; and 1 \w+", row["reason"])
               for row in colour_rows)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["per_tag"]) == ["single_object", "counting", "colors", "position"]
    assert summary["settings"]["detector"] == "mask2former" and summary["images"] == 8
    # The same command again resumes a finished run (nothing to do) and gives the same rows.
    r = runner.invoke(app, [str(a) for a in args + ["--clip-model", folders["clip"]]])
    assert r.exit_code == 0, r.output
    assert [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()] == rows


def test_cli_refuses_a_folder_that_is_not_a_detector(folders, tmp_path):
    path = geneval_metadata(tmp_path)
    r = runner.invoke(app, [str(a) for a in ["eval", "geneval", "--metadata", path, "--out", tmp_path / "o",
                                             "--detector", "owlv2", "--detector-model", folders["clip"],
                                             "--clip-model", folders["clip"]]])
    assert r.exit_code == 2 and "is not an OWLv2 detector folder" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output

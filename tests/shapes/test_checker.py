"""The exact checker: 100% on its own ground-truth renders, ~0 on noise, and each rule can fail."""

import numpy as np
import pytest

from accel.shapes import (TAGS, ShapeObject, check, detect, make_metadata, prompt_set, relative_position, render,
                          scene_for)


@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("strict", [False, True])
def test_ground_truth_renders_pass(tag, strict):
    rng = np.random.default_rng(123)
    for _ in range(60):
        meta = make_metadata(tag, rng)
        result = check(render(scene_for(meta, rng)), meta, strict=strict)
        assert result.correct, (meta["prompt"], result.clauses)
        assert result.score == 1.0 and result.count_error == 0


def test_ground_truth_at_other_resolutions():
    rng = np.random.default_rng(5)
    for meta in prompt_set(30, seed=5):
        assert check(render(scene_for(meta, rng), size=64), meta, strict=True).correct


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_noise_fails(kind):
    rng = np.random.default_rng(0)
    metas = prompt_set(120, seed=1)
    passed = 0
    for m in metas:
        img = (np.clip(rng.normal(0.5, 0.5, (32, 32, 3)), 0, 1) if kind == "gaussian"
               else rng.integers(0, 256, (32, 32, 3)).astype(np.uint8))
        passed += check(img, m).correct
    assert passed / len(metas) <= 0.02


def test_black_image_has_no_objects():
    assert detect(np.zeros((32, 32, 3), np.uint8)) == []


def obj(shape, color, cx, cy, r=0.14):
    return ShapeObject(shape, color, cx, cy, r)


def test_detects_shape_color_and_box():
    (d,) = detect(render([obj("triangle", "blue", 0.5, 0.5)]))
    assert (d.shape, d.color) == ("triangle", "blue")
    x0, y0, x1, y1 = d.box
    assert x0 < 16 < x1 and y0 < 16 < y1


def test_wrong_color_fails_color_clause():
    meta = {"include": [{"class": "circle", "count": 1, "color": "red"}]}
    assert check(render([obj("circle", "red", 0.5, 0.5)]), meta).correct
    result = check(render([obj("circle", "green", 0.5, 0.5)]), meta)
    assert not result.correct and result.score == 0.0


def test_counting_excludes_one_more():
    meta = make_metadata("counting", np.random.default_rng(0))
    n, shape = meta["include"][0]["count"], meta["include"][0]["class"]
    xs = np.linspace(0.15, 0.85, n + 1)
    scene = [obj(shape, "red", x, 0.5 if i % 2 else 0.25, 0.08) for i, x in enumerate(xs)]
    result = check(render(scene), meta)
    assert not result.correct
    assert [c.passed for c in result.clauses] == [True, False]  # include n passes, exclude n + 1 fails
    assert result.score == 0.5 and result.count_error == 1


def test_position_rule_and_margin():
    meta = {"include": [{"class": "square", "count": 1},
                        {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    assert check(render([obj("square", "red", 0.75, 0.5), obj("circle", "blue", 0.25, 0.5)]), meta).correct
    assert not check(render([obj("square", "red", 0.25, 0.5), obj("circle", "blue", 0.75, 0.5)]), meta).correct
    # GenEval's margin: boxes side by side with almost no offset relate in no direction.
    assert relative_position((0, 0, 10, 10), (1, 0, 11, 10)) == set()
    assert relative_position((0, 0, 10, 10), (20, 0, 30, 10)) == {"left of"}
    assert relative_position((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}


def test_strict_rejects_extra_objects():
    meta = {"include": [{"class": "circle", "count": 1}]}
    img = render([obj("circle", "red", 0.25, 0.5), obj("square", "blue", 0.75, 0.5)])
    assert check(img, meta).correct  # GenEval's rule allows clutter
    assert not check(img, meta, strict=True).correct


def test_prompt_set_is_seeded_and_balanced():
    a, b = prompt_set(60, seed=3), prompt_set(60, seed=3)
    assert a == b and a != prompt_set(60, seed=4)
    tags = [m["tag"] for m in a]
    assert all(tags.count(t) == 10 for t in TAGS)
    for m in a:
        assert m["prompt"].startswith("a photo of")


def test_bad_inputs():
    with pytest.raises(ValueError, match="allowed"):
        make_metadata("texture", np.random.default_rng(0))
    with pytest.raises(ValueError, match=">= 1"):
        prompt_set(0)
    with pytest.raises(ValueError, match="image"):
        detect(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="allowed"):
        render([obj("hexagon", "red", 0.5, 0.5)])

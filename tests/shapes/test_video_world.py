"""The moving-shapes world and its exact video checker."""

import numpy as np
import pytest

from accel.shapes.video import (
    FRAMES, VIDEO_TAGS, check_video, random_video_metadata, render_video, video_prompt_set, video_scene_for,
)


def test_rendered_clips_pass_and_wrong_ones_fail():
    rng = np.random.default_rng(0)
    for _ in range(40):
        m = random_video_metadata(rng)
        clip = render_video(video_scene_for(m, rng))
        assert clip.shape == (FRAMES, 32, 32, 3)
        result = check_video(clip, m, strict=True)
        assert result.correct and result.frame_accuracy == 1.0, (m["prompt"], result.clauses)
        assert not check_video(clip[::-1], m).correct  # played backwards: every object moves the other way
        frozen = check_video(np.repeat(clip[:1], FRAMES, 0), m)
        assert not frozen.correct and frozen.persistent and not frozen.moving
    m = {"objects": [{"class": "circle", "color": "red", "direction": "left"}]}
    clip = render_video(video_scene_for(m, rng))
    for wrong in ({"class": "circle", "color": "red", "direction": "up"},
                  {"class": "square", "color": "red", "direction": "left"},
                  {"class": "circle", "color": "blue", "direction": "left"}):
        assert not check_video(clip, {"objects": [wrong]}).correct
    blank = clip.copy()
    blank[3] = 0  # the object vanishes in one frame
    result = check_video(blank, m)
    assert not result.correct and result.frame_accuracy == (FRAMES - 1) / FRAMES
    assert not result.persistent and not result.moving  # no track, so no motion is measured


def test_prompt_set_is_seeded_and_covers_the_tags():
    a, b = video_prompt_set(6, seed=2), video_prompt_set(6, seed=2)
    assert a == b and [m["tag"] for m in a] == list(VIDEO_TAGS) * 3
    two = [m for m in a if m["tag"] == "two"][0]
    assert " and " in two["prompt"] and two["objects"][0]["color"] != two["objects"][1]["color"]
    with pytest.raises(ValueError):
        video_prompt_set(0)
    with pytest.raises(ValueError, match="expected"):
        check_video(np.zeros((32, 32, 3)), a[0])

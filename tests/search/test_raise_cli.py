"""`accel generate --refine raise`: the image written, the calls reported, bad input in one line."""

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from accel.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tiny_shapes_folder):
    return tiny_shapes_folder


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_refine_raise(model, tmp_path):
    out = tmp_path / "r.png"
    r = run("generate", "a photo of a red circle and a blue square", "--model", model, "--steps", 2, "--refine",
            "raise:population=2:originals=1:edits=1", "--nfe", 24, "--out", out)
    assert r.exit_code == 0, r.output
    assert iio.imread(out).shape == (32, 32, 3)
    assert "rounds" in r.output and "verifier calls" in r.output


@pytest.mark.parametrize("args, message", [
    (("--refine", "bon"), "--refine takes raise"),
    (("--refine", "raise", "--search", "bon"), "does not combine"),
    (("--refine", "raise", "--agent", "nope"), "unknown --agent"),
    (("--refine", "raise", "--agent", "http://127.0.0.1:9"), "needs --agent-model"),
    (("--refine", "raise:edit_strength=1.5"), "edit_strength"),
    (("--refine", "raise", "--nfe", 3), "below one RAISE round"),
])
def test_bad_refine_input(model, tmp_path, args, message):
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 2, "--out", tmp_path / "x.png",
            *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_generate_refine_with_an_endpoint_agent(model, tmp_path):
    from test_raise_vlm import Endpoint

    out = tmp_path / "e.png"
    with Endpoint() as ep:
        r = run("generate", "a photo of a red circle and a blue square", "--model", model, "--steps", 2,
                "--refine", "raise:population=2:originals=1:edits=1", "--nfe", 24, "--agent", ep.url,
                "--agent-model", "fake-vlm", "--out", out)
    assert r.exit_code == 0, r.output
    assert iio.imread(out).shape == (32, 32, 3) and len(ep.requests) >= 4


def test_generate_refine_keeps_its_best_when_the_agent_fails(model, tmp_path):
    from test_raise_vlm import Endpoint

    out = tmp_path / "f.png"
    with Endpoint(["good", "good", "good", ("status", 400)]) as ep:
        r = run("generate", "a photo of a red circle and a blue square", "--model", model, "--steps", 2,
                "--refine", "raise:population=2:originals=1:edits=1", "--nfe", 24, "--agent", ep.url,
                "--agent-model", "fake-vlm", "--out", out)
    assert r.exit_code == 2 and "HTTP 400" in r.output and "best image so far" in r.output, r.output
    assert iio.imread(out).shape == (32, 32, 3)

"""`accel generate` on a video family writes GIF / MP4, and refuses an image extension."""

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from accel.cli.main import app
from accel.pipelines.tiny import build_wan


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-wan")
    build_wan().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_files(wan_folder, tmp_path, suffix):
    out = tmp_path / f"v{suffix}"
    r = CliRunner().invoke(app, ["generate", "a cat", "--model", wan_folder, "--steps", "2", "--height", "32",
                                 "--width", "32", "--out", str(out)])
    assert r.exit_code == 0, r.output
    frames = iio.imread(out, index=None)
    assert frames.ndim == 4 and frames.shape[0] > 1


def test_video_to_png_is_refused(wan_folder, tmp_path):
    r = CliRunner().invoke(app, ["generate", "a cat", "--model", wan_folder, "--steps", "1", "--height", "32",
                                 "--width", "32", "--out", str(tmp_path / "v.png")])
    assert r.exit_code == 2 and "makes videos" in r.output

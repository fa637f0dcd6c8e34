"""The command line: files written, JSON fields present, and bad input -> one line + exit code 2."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from accel.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tiny_shapes_folder):
    return tiny_shapes_folder


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_writes_png(model, tmp_path):
    out = tmp_path / "img.png"
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 2, "--out", out)
    assert r.exit_code == 0, r.output
    assert iio.imread(out).shape == (32, 32, 3)


def test_generate_many_and_gif(model, tmp_path):
    r = run("generate", "a photo of two squares", "--model", model, "--steps", 1, "--num-images", 2,
            "--out", tmp_path / "x.png", "--seed", 4)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "x_0.png").is_file() and (tmp_path / "x_1.png").is_file()
    r = run("generate", "a photo of a circle", "--model", model, "--steps", 1, "--out", tmp_path / "x.gif")
    assert r.exit_code == 0 and (tmp_path / "x.gif").is_file()


def test_generate_hsa(model, tmp_path):
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 10, "--steps-mode", "hsa",
            "--runtime", 0.5, "--out", tmp_path / "h.png")
    assert r.exit_code == 0, r.output
    assert "50% of the full-step compute" in r.output and iio.imread(tmp_path / "h.png").shape == (32, 32, 3)
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 10, "--steps-mode", "hsa",
            "--runtime", 0.5, "--kv", "refresh", "--out", tmp_path / "r.png")
    assert r.exit_code == 0, r.output
    assert not np.array_equal(iio.imread(tmp_path / "r.png"), iio.imread(tmp_path / "h.png"))  # not the stale default


def test_bench_steps_json(model, tmp_path):
    out = tmp_path / "steps.json"
    r = run("bench", "steps", "--model", model, "--prompts", 2, "--steps", 6, "--methods",
            "uniform:steps=3,hsa:runtime=0.5", "--json", out, "--allow-dirty")
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [row["method"] for row in rows] == ["full", "uniform:steps=3", "hsa:runtime=0.5"]
    r = run("bench", "steps", "--model", model, "--methods", "teacache:threshold=1")
    assert r.exit_code == 2 and "unknown method" in r.output and len(r.output.strip().splitlines()) == 1


def test_same_seed_same_image(model, tmp_path):
    for name in ("a.png", "b.png"):
        assert run("generate", "a photo of a circle", "--model", model, "--steps", 2, "--seed", 9,
                   "--out", tmp_path / name).exit_code == 0
    assert (iio.imread(tmp_path / "a.png") == iio.imread(tmp_path / "b.png")).all()


@pytest.mark.parametrize("args,message", [
    (["generate", "  "], "prompt is empty"),
    (["generate", "a circle", "--steps", "0"], "--steps must be >= 1"),
    (["generate", "a circle", "--model", "/no/such/model"], "cannot load model"),
    (["generate", "a circle", "--height", "30"], "multiples of 4"),
    (["generate", "a circle", "--out", "/no/such/folder/x.png"], "does not exist"),
    (["generate", "a circle", "--out", "x.bmp"], "unsupported output type"),
    (["generate", "a circle", "--sampler", "ddim"], "allowed: euler, heun"),
    (["eval", "shapes", "--prompts", "0"], ">= 1"),
    (["generate", "a circle", "--steps-mode", "fast"], "--steps-mode must be uniform or hsa"),
    (["generate", "a circle", "--runtime", "0.5"], "--runtime applies to --steps-mode hsa"),
    (["generate", "a circle", "--steps-mode", "hsa", "--runtime", "1.5"], "runtime must be"),
    (["generate", "a circle", "--kv", "stale"], "--kv applies to --steps-mode hsa"),
    (["generate", "a circle", "--steps-mode", "hsa", "--kv", "fresh"], "unknown kv"),
    (["generate", "a circle", "--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["generate", "a circle", "--guidance", "-3"], "--guidance must be a finite number >= 0"),
    (["generate", "a circle", "--guidance", "inf"], "--guidance must be a finite number >= 0"),
    (["eval", "shapes", "--guidance", "nan"], "--guidance must be a finite number >= 0"),
    (["generate", "a circle", "--num-images", "0"], "--num-images must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(model, tmp_path, args, message):
    if "--model" not in args:
        args = args[:2] + ["--model", model] + args[2:] if args[0] == "generate" else args + ["--model", model]
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_eval_shapes_json(model, tmp_path):
    out = tmp_path / "r.json"
    r = run("eval", "shapes", "--model", model, "--prompts", 6, "--steps", 2, "--seed", 1, "--json", out,
            "--allow-dirty")
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    for key in ("overall", "per_tag", "n", "steps", "seed", "seconds"):
        assert key in data
    assert data["n"] == 6 and data["steps"] == 2 and data["seed"] == 1 and len(data["per_tag"]) == 6
    assert data["nfe"] == 6 * 2 * 2
    assert "single_object" in r.output


def test_info():
    r = run("info")
    assert r.exit_code == 0 and "triton kernels" in r.output and "diffusers" in r.output


def test_generate_with_search(model, tmp_path):
    out = tmp_path / "s.png"
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 2, "--search", "bon", "--nfe", 16,
            "--out", out)
    assert r.exit_code == 0, r.output
    assert out.is_file() and "NFE" in r.output
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 2, "--search", "nope", "--out", out)
    assert r.exit_code == 2 and "allowed" in r.output


def test_bench_search_json(model, tmp_path):
    out = tmp_path / "b.json"
    r = run("bench", "search", "--model", model, "--prompts", 2, "--seed", 3, "--strategies", "bon,smc",
            "--budgets", "1,2", "--steps", 2, "--json", out, "--allow-dirty")
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [(row["strategy"], row["budget"]) for row in rows] == [("bon", 1), ("bon", 2), ("smc", 1), ("smc", 2)]
    for row in rows:
        for key in ("strategy", "budget", "nfe", "accuracy", "seconds", "machine", "command"):
            assert key in row
        assert row["nfe"] <= row["budget"] * row["plain_nfe"]
    r = run("bench", "search", "--model", model, "--strategies", "bogus")
    assert r.exit_code == 2 and "allowed" in r.output


def test_bench_search_strategy_options_label_rows(model, tmp_path):
    out = tmp_path / "b.json"
    r = run("bench", "search", "--model", model, "--prompts", 1, "--strategies", "smc:interpolant=linear",
            "--budgets", "1", "--steps", 2, "--json", out, "--allow-dirty")
    assert r.exit_code == 0, r.output
    (row,) = json.loads(out.read_text())
    assert row["strategy"] == "smc:interpolant=linear" and "interpolant='linear'" in row["config"]
    r = run("bench", "search", "--model", model, "--strategies", "smc:bogus=1")
    assert r.exit_code == 2 and "allowed" in r.output


@pytest.mark.slow
def test_generate_search_over_two_processes(model, tmp_path):
    """torchrun with 2 CPU processes (gloo) writes the image one process writes, once."""
    import shutil
    import subprocess

    accel = shutil.which("accel")
    args = ["generate", "a photo of two circles", "--model", model, "--steps", "3", "--search", "smc", "--nfe",
            "60", "--seed", "3"]
    env = {"OMP_NUM_THREADS": "1", **__import__("os").environ}
    subprocess.run([accel, *args, "--out", str(tmp_path / "one.png")], check=True, env=env)
    subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29561", accel, *args,
                    "--out", str(tmp_path / "two.png")], check=True, env=env, cwd=tmp_path)
    assert (iio.imread(tmp_path / "one.png") == iio.imread(tmp_path / "two.png")).all()
    r = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29562", accel, "generate",
                        "a photo of two circles", "--model", model, "--out", str(tmp_path / "x.png")],
                       env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "without --search" in r.stdout + r.stderr


def test_unknown_model_lists_the_builtin_ones(tmp_path):
    r = run("generate", "a circle", "--model", "nosuchmodel", "--out", tmp_path / "x.png")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "built-in models: shapes, shapes-video" in r.output


def test_existing_outputs_are_kept_unless_overwrite(model, tmp_path):
    out, rows = tmp_path / "img.png", tmp_path / "r.json"
    out.write_bytes(b"mine"), rows.write_text("mine")
    r = run("generate", "a photo of a circle", "--model", model, "--steps", 1, "--out", out)
    assert r.exit_code == 2 and "exists; pass --overwrite" in r.output and out.read_bytes() == b"mine"
    r = run("eval", "shapes", "--model", model, "--prompts", 1, "--steps", 1, "--json", rows, "--allow-dirty")
    assert r.exit_code == 2 and "exists; pass --overwrite" in r.output and rows.read_text() == "mine"
    r = run("generate", "a photo of a circle", "--model", model, "--steps", 1, "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert iio.imread(out).shape == (32, 32, 3)


def test_failed_write_names_the_users_path(model, tmp_path, monkeypatch):
    import accel.evals.io as io

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".img.png.x1y2.tmp"))

    monkeypatch.setattr(io, "write_atomic", refuse)
    r = run("generate", "a photo of a circle", "--model", model, "--steps", 1, "--out", tmp_path / "img.png")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert f"cannot write {tmp_path / 'img.png'}: Permission denied" in r.output and ".tmp" not in r.output


def test_many_images_are_made_in_chunks_with_the_same_noise(model, tmp_path, monkeypatch):
    import accel.cli.main as cli

    args = ("generate", "a photo of two squares", "--model", model, "--steps", 2, "--num-images", 3, "--seed", 5)
    assert run(*args, "--out", tmp_path / "one.png").exit_code == 0
    monkeypatch.setattr(cli, "CHUNK", 2)
    r = run(*args, "--out", tmp_path / "two.png")
    assert r.exit_code == 0, r.output
    for i in range(3):  # the same noise; batch size moves float32 matmuls by ~1e-6, so 1 level of 255 at most
        a, b = (iio.imread(tmp_path / f"{stem}_{i}.png").astype(int) for stem in ("one", "two"))
        assert np.abs(a - b).max() <= 1


def test_rows_are_recorded_from_committed_code_unless_allowed(model, tmp_path, monkeypatch):
    import accel.evals.io as io

    monkeypatch.setattr(io, "source_state", lambda: {"git_sha": "abc", "dirty": True, "diff_sha256": "d1"})
    out = tmp_path / "r.json"
    r = run("eval", "shapes", "--model", model, "--prompts", 1, "--steps", 1, "--json", out)
    assert r.exit_code == 2 and "--allow-dirty" in r.output and not out.exists()
    r = run("bench", "search", "--model", model, "--prompts", 1, "--strategies", "bon", "--budgets", "1",
            "--steps", 2, "--json", out)
    assert r.exit_code == 2 and "--allow-dirty" in r.output and not out.exists()
    r = run("eval", "shapes", "--model", model, "--prompts", 1, "--steps", 1, "--json", out, "--allow-dirty")
    assert r.exit_code == 0, r.output
    row = json.loads(out.read_text())
    assert (row["git_sha"], row["dirty"], row["diff_sha256"]) == ("abc", True, "d1")


def test_search_below_its_budget_says_why(model, tmp_path):
    r = run("generate", "a photo of a red circle", "--model", model, "--steps", 2, "--search", "bon", "--nfe", 14,
            "--out", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    assert "stopped at 12 of 14 NFE" in " ".join(r.output.split())


def _python(code: str, env: dict) -> str:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_cli_sets_passive_omp_waiting_before_torch_and_keeps_the_users_choice():
    import os

    code = "import os, sys, accel.cli.main; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _python(code, env) == "PASSIVE False"
    assert _python(code, env | {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE False"


def test_help_and_argument_errors_do_not_import_torch():
    import os

    code = ("import sys\n"
            "from typer.testing import CliRunner\n"
            "from accel.cli.main import app\n"
            "codes = [CliRunner().invoke(app, args).exit_code for args in\n"
            "         (['--help'], ['generate', '--help'], ['generate', ' '], ['generate', 'x', '--steps', '0'])]\n"
            "print(codes, 'torch' in sys.modules)")
    assert _python(code, dict(os.environ)) == "[0, 0, 2, 2] False"

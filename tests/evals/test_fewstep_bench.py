"""accel bench fewstep: rows per method with NFE and quality against the teacher, and the semigroup defect."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.cli.main import app
from accel.core import Cond, Prepared, TimeGrid
from accel.evals.fewstep import _dense_timesteps, bench_fewstep, semigroup_defect
from accel.pipelines.shapes import build_shapes_pipeline
from accel.schedulers.fewstep import StudentSpec
from accel.testing import jitter_
from toys import GaussianFlow

SPEC = StudentSpec(shift=2.0, call_defaults={"guidance_scale": 1.0})


class PointMass(GaussianFlow):
    """Data at one point c: every flow path is straight, so Euler jumps are exact and compose exactly."""

    def _velocity(self, x, sigma, cond):
        return (x - 0.3) / sigma


def prepared(n=3, d=8):
    return Prepared(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), Cond(n, 1), TimeGrid.linear(2))


def test_semigroup_defect_is_zero_for_straight_paths_only():
    gen = torch.Generator().manual_seed(1)
    assert semigroup_defect(PointMass(), prepared(), SPEC, 4, gen) < 1e-10
    assert semigroup_defect(GaussianFlow(), prepared(), SPEC, 4, gen) > 1e-4
    assert _dense_timesteps((1000, 750, 500, 250)) == [1000, 875, 750, 625, 500, 375, 250, 125]
    assert _dense_timesteps((1000, 500)) == [1000, 750, 500, 250]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewstep")
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1, seed=0)
    jitter_(pipe.transformer, seed=3)
    pipe.save_pretrained(root / "teacher")
    with torch.no_grad():  # a "student": the teacher's weights moved a little, with its spec
        for param in pipe.transformer.parameters():
            param.add_(0.02 * torch.randn_like(param))
    pipe.save_pretrained(root / "student")
    SPEC.save(root / "student")
    return root


def test_rows_per_method_with_nfe(folders):
    from accel.models import load_pipeline

    teacher, student = load_pipeline(str(folders / "teacher")), load_pipeline(str(folders / "student"))
    rows = bench_fewstep(teacher, {"sc": student}, prompts=6, seed=0, steps=4, euler_steps=(2,), batch_size=4)
    by = {r["label"]: r for r in rows}
    assert list(by) == ["teacher", "euler:steps=2", "sc:nfe=2", "sc:nfe=4"]
    assert by["teacher"]["nfe"] == 8 and by["euler:steps=2"]["nfe"] == 4  # CFG: 2 NFE a step
    assert by["sc:nfe=2"]["nfe"] == 2 and by["sc:nfe=4"]["nfe"] == 4
    assert by["teacher"]["psnr"] == 100.0 and by["sc:nfe=4"]["psnr"] < 100
    assert by["sc:nfe=4"]["method"] == "sc-dmd" and by["sc:nfe=4"]["semigroup_defect"] > 0
    assert "semigroup_defect" not in by["teacher"] and by["sc:nfe=4"]["timesteps"] == [1000, 750, 500, 250]
    for r in rows:  # per prompt (for paired comparisons between methods) and per tag, consistent with the totals
        assert len(r["correct"]) == 6 and r["accuracy_images"] == sum(r["correct"]) / 6
        assert r["accuracy"] == pytest.approx(sum(r["per_tag"].values()) / len(r["per_tag"]))
    again = bench_fewstep(teacher, {"sc": student}, prompts=6, seed=0, steps=4, euler_steps=(2,), batch_size=4)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert [r["psnr"] for r in again] == [r["psnr"] for r in rows]


def test_cli_writes_rows_and_rejects_bad_input(folders, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rows.json"
    args = ["bench", "fewstep", "--model", str(folders / "teacher"), "--students", str(folders / "student"),
            "--prompts", "2", "--steps", "2", "--euler-steps", "1"]
    r = runner.invoke(app, args + ["--json", str(out), "--allow-dirty"])
    assert r.exit_code == 0, r.output
    rows = json.loads(out.read_text())
    assert [row["label"] for row in rows] == ["teacher", "euler:steps=1", "student:nfe=2", "student:nfe=4"]
    assert all("git_sha" in row and "command" in row for row in rows)
    assert [row.get("student") for row in rows] == [None, None, str(folders / "student"), str(folders / "student")]
    assert rows[2]["student_fingerprint"] == rows[3]["student_fingerprint"] and "student_fingerprint" not in rows[0]
    r = runner.invoke(app, args[:-2] + ["--euler-steps", "two"])
    assert r.exit_code == 2 and "comma-separated integers" in r.output
    r = runner.invoke(app, args[:4] + ["--students", str(folders / "teacher")])
    assert r.exit_code == 2 and "not a distilled student" in r.output
    r = runner.invoke(app, args[:4] + ["--students", f"{folders / 'student'},{folders / 'student'}/"])
    assert r.exit_code == 2 and "names a folder twice" in r.output


def test_students_of_the_same_name_get_labels_that_tell_them_apart():
    from accel.cli.fewstep import student_labels

    assert student_labels(["runs/a/image-dmd/snap/step-500", "runs/a/image-sc-dmd/snap/step-500", "assets/st"]) == [
        "image-dmd/snap/step-500", "image-sc-dmd/snap/step-500", "st"]
    assert student_labels(["a/b", "c/a/b"]) == ["a/b", "c/a/b"]


def test_search_bench_on_a_student_counts_its_nfe(folders):
    from accel.models import load_pipeline
    from accel.search import bench_search

    student = load_pipeline(str(folders / "student"))
    rows = bench_search(student, prompts=2, seed=0, strategies=("bon",), budgets=(1, 3))
    assert [r["plain_nfe"] for r in rows] == [4, 4] and [r["nfe"] for r in rows] == [4.0, 12.0]
    # "bon" draws the re-noising student's own samples; "bon:diffusion=zero" keeps the flow ODE.
    assert "diffusion='renoise'" in rows[0]["config"]
    rows = bench_search(student, prompts=1, seed=0, strategies=("bon:diffusion=zero",), budgets=(1,))
    assert "diffusion='zero'" in rows[0]["config"] and rows[0]["strategy"] == "bon:diffusion=zero"
    rows = bench_search(student, prompts=2, seed=0, strategies=("bon",), budgets=(1,), steps=2)
    assert rows[0]["nfe"] == 2.0


def test_seams_compare_boundary_and_inner_frame_changes():
    from accel.evals.fewstep import seams

    clips = torch.zeros(1, 6, 2, 2, 3)
    for t in range(6):
        clips[:, t] = 0.1 * t + (0.5 if t >= 3 else 0.0)  # a jump between frames 2 and 3: chunks of 3 frames
    out = seams(clips, 3)
    assert out["boundary_change"] == pytest.approx(0.6) and out["inner_change"] == pytest.approx(0.1)
    assert out["seam_ratio"] == pytest.approx(6.0)
    assert seams(clips, 2)["seam_ratio"] < seams(clips, 3)["seam_ratio"]


def test_video_rows_of_an_autoregressive_student(tmp_path):
    from accel.models import load_pipeline
    from accel.pipelines.shapes_causal import CausalShapesVideoTransformer3DModel
    from accel.pipelines.shapes_video import ShapesVideoPipeline, build_shapes_video_pipeline

    teacher = build_shapes_video_pipeline(width=32, num_layers=1, text_hidden=32, text_layers=1, patch_frames=2)
    jitter_(teacher.transformer, seed=5)
    causal = CausalShapesVideoTransformer3DModel.from_bidirectional(teacher.transformer, chunk_frames=1)
    ShapesVideoPipeline(**{**teacher.components, "transformer": causal}).save_pretrained(tmp_path / "ar")
    StudentSpec(timesteps={2: (1000, 500)}, shift=2.0, method="ar",
                call_defaults={"guidance_scale": 1.0}).save(tmp_path / "ar")
    rows = bench_fewstep(teacher, {"ar": load_pipeline(str(tmp_path / "ar"))}, prompts=2, seed=0, steps=2,
                         euler_steps=(), batch_size=2)
    by = {r["label"]: r for r in rows}
    assert list(by) == ["teacher", "ar:nfe=2"] and by["ar:nfe=2"]["method"] == "ar"
    assert by["ar:nfe=2"]["nfe"] == pytest.approx(2 + 3 / 4)  # 4 chunks: 2 steps each and 3 commits
    assert by["ar:nfe=2"]["semigroup_defect"] is None
    for row in rows:  # every video row gets the seam measure at the student's chunk boundaries (2 frames)
        assert row["chunk_frames"] == 2 and row["seam_ratio"] > 0 and row["model"] == "video"
        # the checker's clauses: persistence (each object in every frame) and motion, at least as often as both
        assert 0 <= row["accuracy_images"] <= min(row["persistence"], row["motion"]) <= 1

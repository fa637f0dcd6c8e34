"""GenEval: metadata format, GenEval's selection and rules on hand-made detections, its layout and summary, and
`accel eval geneval --detector shapes` giving `accel eval shapes`'s verdicts (one code path)."""

import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

from accel.cli.main import app
from accel.evals.geneval import (Thresholds, load_metadata, make_grid, sample_seed, score_image, select_detections,
                                 summarize, summary_text)
from accel.evals.report import report
from accel.shapes import Detection, check_detections, prompt_set
from accel.testing import jitter_

GENEVAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def det(label, box, score=None, color=None):
    return Detection(label, color, box, score=score)


def meta(*include, exclude=(), tag="two_object"):
    return {"tag": tag, "prompt": "p", "include": list(include), **({"exclude": list(exclude)} if exclude else {})}


def test_ranked_clause_checks_the_most_confident_only():
    # GenEval classifies the colour of the top `count` detections only: the confident blue dog decides.
    dogs = [det("dog", (0, 0, 10, 10), 0.8, "blue"), det("dog", (20, 0, 30, 10), 0.5, "red")]
    m = meta({"class": "dog", "count": 1, "color": "red"}, tag="colors")
    result = check_detections(dogs, m)
    assert not result.correct and result.reason == "expected red dog>=1, found 0 red; and 1 blue"
    # Unscored (exact) detections: the clause picks the object that satisfies it (the shapes world's rule).
    assert check_detections([Detection(d.label, d.color, d.box) for d in dogs], m).correct
    # Order given does not matter: detections are ranked by score.
    assert not check_detections(dogs[::-1], m).correct


def test_position_and_exclude_reasons():
    m = meta({"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}, tag="position")
    left = [det("cat", (40, 0, 50, 10), 0.9), det("dog", (0, 0, 10, 10), 0.9)]
    right = [det("cat", (0, 0, 10, 10), 0.9), det("dog", (40, 0, 50, 10), 0.9)]
    assert check_detections(left, m).correct
    assert check_detections(right, m).reason == "expected dog left of target, found right of target"
    assert check_detections(right[1:], m).reason == "expected cat>=1, found 0\nno target for dog to be left of"
    counting = meta({"class": "cup", "count": 2}, exclude=[{"class": "cup", "count": 3}], tag="counting")
    cups = [det("cup", (i * 10, 0, i * 10 + 5, 5), 0.95) for i in range(3)]
    assert check_detections(cups, counting).reason == "expected cup<3, found 3"
    assert check_detections(cups[:2], counting).correct


def test_selection_thresholds_top_k_and_nms():
    dets = [det("cup", (0, 0, 10, 10), s) for s in (0.95, 0.5, 0.2)] + [det("cat", (0, 0, 10, 10), 0.31)]
    kept = select_detections(dets, "two_object")
    assert [(d.label, d.score) for d in kept] == [("cup", 0.95), ("cup", 0.5), ("cat", 0.31)]
    assert [d.score for d in select_detections(dets, "counting")] == [0.95]  # GenEval's 0.9 for counting
    assert len(select_detections(dets, "two_object", Thresholds(max_objects=1))) == 2
    # The two cups share a box: suppressed when max_overlap < 1 (GenEval's NMS option), kept by default (1.0).
    assert [d.score for d in select_detections(dets, "two_object", Thresholds(max_overlap=0.5))] == [0.95, 0.31]
    exact = [det("circle", (0, 0, 4, 4), color="red")]
    assert select_detections(exact, "counting") == exact  # unscored: all kept
    with pytest.raises(ValueError, match="all have scores or none"):
        check_detections(exact + dets, meta({"class": "cup", "count": 1}))


def test_colour_classifier_is_asked_for_the_clause_objects():
    asked = []

    def colors(image, objs, name):
        asked.append((name, len(objs)))
        return ["red"] * len(objs)

    dets = [det("car", (0, 0, 9, 9), 0.9), det("car", (20, 0, 29, 9), 0.8), det("bus", (0, 20, 9, 29), 0.9)]
    m = meta({"class": "car", "count": 1, "color": "red"}, {"class": "bus", "count": 1, "color": "red"},
             tag="color_attr")
    result, kept = score_image(np.zeros((32, 32, 3), np.uint8), dets, m, colors)
    assert result.correct and len(kept) == 3 and asked == [("car", 1), ("bus", 1)]


def test_load_metadata(tmp_path):
    if GENEVAL_DATA.is_file():
        metas = load_metadata(GENEVAL_DATA)
        assert len(metas) == 553 and {m["tag"] for m in metas} == {"single_object", "two_object", "counting",
                                                                    "colors", "position", "color_attr"}
    path = tmp_path / "m.jsonl"
    good = json.dumps({"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "x"})
    for line, message in [
        ("not json", "line 2 is not JSON"),
        ('{"tag": "colors", "prompt": "x"}', "'include' must be a non-empty list"),
        ('{"tag": "a", "prompt": "x", "include": [{"class": "cup"}]}', "needs an integer 'count' >= 1"),
        ('{"tag": "a", "prompt": "x", "include": [{"class": "cup", "count": 1, "colour": "red"}]}', "unknown keys"),
        ('{"tag": "a", "prompt": "x", "include": [{"class": "cup", "count": 1, "position": ["near", 0]}]}',
         "'position' must be"),
        ('["a", "list"]', "a line must be a JSON object"),
    ]:
        path.write_text(good + "\n" + line + "\n")
        with pytest.raises(ValueError, match=re.escape(message)) as e:
            load_metadata(path)
        assert "line 2" in str(e.value)
    path.write_text("")
    with pytest.raises(ValueError, match="holds no prompts"):
        load_metadata(path)


def test_summary_is_geneval_summary_scores():
    rows = [{"tag": t, "metadata": m, "correct": c} for t, m, c in
            [("colors", "a", True), ("colors", "a", False), ("position", "b", False), ("position", "c", False)]]
    s = summarize(rows)
    assert s["per_tag"] == {"colors": 0.5, "position": 0.0} and s["overall"] == 0.25  # the tags' mean
    assert s["prompts"] == 3 and s["accuracy_prompts"] == pytest.approx(1 / 3) and s["accuracy_images"] == 0.25
    text = summary_text(s).splitlines()
    assert text[2:6] == ["Total images: 4", "Total prompts: 3", "% correct images: 25.00%",
                         "% correct prompts: 33.33%"]
    assert "colors           = 50.00% (1 / 2)" in text and text[-1] == "Overall score (avg. over tasks): 0.25000"


def test_seeds_and_grid():
    assert sample_seed(3, 7) == 3 * 1_000_003 + 7 and sample_seed(3, 7, 1) != sample_seed(3, 8, 0)
    images = [np.full((4, 5, 3), k, np.uint8) for k in (10, 20)]
    grid = make_grid(images)
    assert grid.shape == (8, 2 * 5 + 3 * 2, 3) and grid[2, 2, 0] == 10 and grid[2, 9, 0] == 20 and grid[0, 0, 0] == 0


def geneval_walk(folder: Path):
    """GenEval's evaluate_images.py main(): which (image, metadata) pairs it would score in a folder."""
    pairs = []
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir() or not sub.name.isdigit():
            continue
        metadata = json.load(open(sub / "metadata.jsonl"))
        for image in sorted((sub / "samples").iterdir()):
            if image.is_file() and re.match(r"\d+\.png", image.name):
                pairs.append((image, metadata))
    return pairs


def test_geneval_shapes_equals_eval_shapes(tmp_path):
    """Same prompts and seeds: `eval geneval --detector shapes` gives `eval shapes`'s per-image verdicts (read from
    the chunks `eval shapes --out` keeps)."""
    metas = prompt_set(12, seed=1)
    path = tmp_path / "shapes_metadata.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in metas))
    out = tmp_path / "geneval"
    r = run("eval", "geneval", "--model", "shapes", "--metadata", path, "--out", out, "--images-per-prompt", 1,
            "--steps", 8, "--seed", 1, "--batch-size", 48, "--detector", "shapes", "--no-grid", "--allow-dirty")
    assert r.exit_code == 0, r.output
    assert "Overall score (avg. over tasks)" in r.output
    pairs = geneval_walk(out)
    assert len(pairs) == 12 and [m for _, m in pairs] == metas
    assert (out / "00003" / "metadata.jsonl").read_text() == json.dumps(metas[3])  # GenEval's json.dump
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [row["filename"] for row in rows] == [str(p) for p, _ in pairs]
    assert set(rows[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    summary = json.loads((out / "summary.json").read_text())

    shapes_out = tmp_path / "shapes"
    r = run("eval", "shapes", "--model", "shapes", "--prompts", 12, "--steps", 8, "--seed", 1, "--out", shapes_out,
            "--json", tmp_path / "shapes.json", "--allow-dirty")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "shapes.json").read_text())
    verdicts = [row["correct"] for f in sorted((shapes_out / "accel-run").glob("*.json"))
                for row in json.loads(f.read_text())["rows"]]
    assert [row["correct"] for row in rows] == verdicts
    assert 0 < sum(verdicts) < 12  # the comparison sees both verdicts
    assert summary["per_tag"] == result["per_tag"] and summary["overall"] == result["overall"]
    assert summary["nfe"] == result["nfe"]
    # accel report tells the two results files apart and renders each (a GenEval summary has its seed in settings)
    report([str(out / "summary.json"), str(tmp_path / "shapes.json")], tmp_path / "r.md", plots=False)
    text = (tmp_path / "r.md").read_text()
    assert "## geneval" in text and "## eval" in text
    assert (f"| shapes | shapes | 12 (1 per prompt) | 1 | num_inference_steps=8 | **{summary['overall']:.3f}** | "
            f"{summary['per_tag']['single_object']:.3f} |") in text


def test_layout_with_samples_and_grid(tmp_path):
    metas = prompt_set(2, seed=0)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in metas))
    r = run("eval", "geneval", "--model", "shapes", "--metadata", path, "--out", tmp_path / "o",
            "--images-per-prompt", 2, "--steps", 1, "--allow-dirty")
    assert r.exit_code == 0, r.output
    folder = tmp_path / "o" / "00001"
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
    assert iio.imread(folder / "grid.png").shape == (36, 2 * 32 + 6, 3)
    assert len((tmp_path / "o" / "results.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("args,message", [
    (["--images-per-prompt", 0], "--images-per-prompt must be >= 1"),
    (["--detector", "yolo"], "unknown --detector 'yolo'"),
    (["--detector", "mask2former"], "needs its model folder"),
    (["--detector", "mask2former", "--detector-model", "/no/such/folder"], "does not exist"),
    (["--steps-mode", "hsa", "--search", "bon"], "does not combine"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(prompt_set(1)[0]) + "\n")
    r = run("eval", "geneval", "--metadata", path, "--out", tmp_path / "o", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_bad_metadata_file_is_one_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "a photo of a cat"}\n')
    r = run("eval", "geneval", "--metadata", path, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "not GenEval's metadata format: no 'tag' string" in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("options", [["--search", "bon", "--nfe", 8], ["--steps-mode", "hsa", "--runtime", 0.5]])
def test_accel_options(tmp_path, options):
    """Search (one call per sample: it takes one generator) and HSA run through eval geneval; the summary records
    them and the NFE spent."""
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in prompt_set(2, seed=5)))
    r = run("eval", "geneval", "--model", "shapes", "--metadata", path, "--out", tmp_path / "o",
            "--images-per-prompt", 2, "--steps", 4, "--allow-dirty", *options)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    expected = {"--search": "'bon'", "--steps-mode": "HSAConfig(runtime=0.5"}[options[0]]
    assert summary["images"] == 4 and expected in json.dumps(summary["settings"]["call"])
    if options[0] == "--search":
        assert summary["nfe"] == 4 * 8  # the budget per sample, 4 samples
    else:  # half the token compute: fewer than the 4 x 4 steps x 2 (CFG) a full run spends
        assert 0 < summary["nfe"] <= 4 * 4 * 2


def test_score_only_scores_any_geneval_layout(tmp_path):
    """--score-only on a generated folder gives its rows again; on a copy named as GenEval's generation script
    names samples (00000.png), the same verdicts."""
    import shutil

    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in prompt_set(3, seed=6)))
    out = tmp_path / "o"
    assert run("eval", "geneval", "--model", "shapes", "--metadata", path, "--out", out, "--images-per-prompt", 2,
               "--steps", 4, "--allow-dirty").exit_code == 0
    rows = (out / "results.jsonl").read_text()
    r = run("eval", "geneval", "--score-only", "--out", out, "--detector", "shapes", "--allow-dirty")
    assert r.exit_code == 2 and "results.jsonl exists" in r.output
    r = run("eval", "geneval", "--score-only", "--out", out, "--detector", "shapes", "--allow-dirty", "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "results.jsonl").read_text() == rows and "Overall score" in r.output
    theirs = tmp_path / "theirs"
    shutil.copytree(out, theirs, ignore=shutil.ignore_patterns("accel-run*", "results.jsonl", "summary.json"))
    for png in theirs.glob("*/samples/*.png"):
        png.rename(png.with_name(f"{int(png.stem):05d}.png"))
    assert run("eval", "geneval", "--score-only", "--out", theirs, "--detector", "shapes",
               "--allow-dirty").exit_code == 0
    verdicts = [json.loads(line)["correct"] for line in rows.splitlines()]
    assert [json.loads(line)["correct"] for line in (theirs / "results.jsonl").read_text().splitlines()] == verdicts
    report([str(theirs / "summary.json")], tmp_path / "r.md", plots=False)  # no settings: another tool's folder
    assert "| - | shapes | 6 | - | score only | **" in (tmp_path / "r.md").read_text()
    r = run("eval", "geneval", "--score-only", "--out", tmp_path, "--detector", "shapes")
    assert r.exit_code == 2 and "holds no GenEval samples" in r.output


def test_a_distilled_student(tmp_path):
    """A student folder samples with its own steps (4 by default, no CFG), one call per sample."""

    from accel.pipelines.shapes import build_shapes_pipeline
    from accel.schedulers.fewstep import StudentSpec

    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(pipe.transformer)
    pipe.save_pretrained(tmp_path / "student")
    StudentSpec(shift=3.0, call_defaults={"guidance_scale": 1.0}).save(tmp_path / "student")
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in prompt_set(2, seed=7)))
    r = run("eval", "geneval", "--model", tmp_path / "student", "--metadata", path, "--out", tmp_path / "o",
            "--images-per-prompt", 2, "--allow-dirty")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["nfe"] == 2 * 2 * 4
    r = run("eval", "geneval", "--model", tmp_path / "student", "--metadata", path, "--out", tmp_path / "o2",
            "--steps", 3, "--allow-dirty")
    assert r.exit_code == 2 and "trained for --steps 2 or 4" in " ".join(r.output.split())
    assert not (tmp_path / "o2").exists()  # refused before anything was written

"""Train the learned shapes verifier (accel.rewards.verifier.ShapesVerifier): P(yes) for (image, question) pairs.

Data, every label from the exact checker (never from how an image was made):
- renders of the shapes world: scenes that satisfy a random prompt, half of them perturbed (an object recoloured,
  reshaped, dropped, added or moved, or two objects' colours swapped), so that both answers are common;
- the built-in model's own samples for random prompts (generated once into WORK/pool, resumable), so the verifier
  sees the artefacts it will judge at search time.
Questions: the requirement questions of the image's prompt (accel.rewards.verifier.requirements), the whole prompt,
or a distractor question from another prompt; with --relation-questions, also relations between the prompt's shapes.
Held out by seed: the evaluation renders and model samples come from their own seeds, never drawn in training.
The report (OUT/training.json) gives the verifier's accuracy against the checker per tag, per question kind and per
source, its false-yes / false-no rates and examples of disagreement: the verifier is imperfect, and this says how.

A CPU session can stop at any time: --minutes ends this invocation after a checkpoint, a checkpoint is written every
--checkpoint-minutes, and the same command resumes exactly (batch k is drawn from seed (seed, k); the model and
optimizer state are checkpointed). The verifier folder is written when the run reaches --steps.

    OMP_WAIT_POLICY=PASSIVE python scripts/train_verifier.py --steps 6000 --minutes 55
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from accel.distill import checkpoint as ckpt
from accel.evals.io import write_json
from accel.rewards.verifier import (ShapesVerifier, VerifierConfig, exact_answer, question_clause, requirements,
                                    tokenize)
from accel.shapes import COLORS, RELATIONS, SHAPES, random_metadata, render, scene_for
from accel.shapes.world import fits, random_object

SIZE = 32
EVAL_SEED_OFFSET = 1_000_000  # evaluation seeds: never drawn by training


def base_parser(description: str, what: str, out: str, work: str, steps: int) -> argparse.ArgumentParser:
    """The options the verifier's and the detector's training share: folders, the model-sample pool, the run."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=out, help=f"the {what} folder written at the end")
    ap.add_argument("--work", default=work, help="checkpoints and the model-sample pool")
    ap.add_argument("--model", default="shapes", help=f"the pipeline whose samples the {what} also learns from")
    ap.add_argument("--model-samples", type=int, default=2000, help="training pool of model samples (0: renders only)")
    ap.add_argument("--eval-model-samples", type=int, default=400)
    ap.add_argument("--sample-steps", type=int, default=25, help="sampling steps of the pool's images")
    ap.add_argument("--model-fraction", type=float, default=0.5, help="share of each batch from the pool")
    ap.add_argument("--eval-renders", type=int, default=600)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--minutes", type=float, default=0, help="stop this invocation after this long (0: no limit)")
    ap.add_argument("--stop-at", type=int, default=0, help="end this invocation after this step, with a checkpoint "
                    "(0: never); the same command without it resumes")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def parser() -> argparse.ArgumentParser:
    ap = base_parser(__doc__.splitlines()[0], "verifier", "assets/shapes-verifier", "runs/verifier", steps=6000)
    ap.add_argument("--relation-slots", type=int, default=0,
                    help="text-queried spatial attention slots for relation questions (0: pooled features only)")
    ap.add_argument("--relation-questions", type=float, default=0.0,
                    help="share of questions that ask a relation between the image's prompt's shapes (random order "
                    "and relation); the rest follow the prompt's requirements, whose relations are ~5%% of questions")
    return ap


class OutOfTime(Exception):
    """This invocation's --minutes are spent."""


# --- data ---------------------------------------------------------------------------------------------------------


def perturb(scene: list, rng: np.random.Generator) -> list:
    """One random change to a scene: recolour, reshape, drop, add or move an object, or swap two objects' colours
    (the binding error text-to-image models make; a lone object is recoloured instead)."""
    scene = list(scene)
    k = int(rng.integers(len(scene)))
    obj = scene[k]
    op = ["recolour", "reshape", "drop", "add", "move", "swap"][int(rng.integers(6))]
    if op == "swap" and len({o.color for o in scene}) > 1:
        j = int(rng.choice([j for j, o in enumerate(scene) if o.color != obj.color]))
        other = scene[j]
        scene[k] = type(obj)(obj.shape, other.color, obj.cx, obj.cy, obj.r)
        scene[j] = type(other)(other.shape, obj.color, other.cx, other.cy, other.r)
    elif op in ("recolour", "swap"):
        scene[k] = type(obj)(obj.shape, str(rng.choice([c for c in COLORS if c != obj.color])), obj.cx, obj.cy, obj.r)
    elif op == "reshape":
        scene[k] = type(obj)(str(rng.choice([s for s in SHAPES if s != obj.shape])), obj.color, obj.cx, obj.cy, obj.r)
    elif op == "drop" and len(scene) > 1:
        scene.pop(k)
    else:  # add, move (or drop of a lone object: add instead)
        others = [o for j, o in enumerate(scene) if op == "add" or j != k]
        for _ in range(50):
            new = random_object(str(rng.choice(SHAPES)) if op == "add" else obj.shape,
                                str(rng.choice(COLORS)) if op == "add" else obj.color, rng)
            if fits(new, others):
                scene = others + [new]
                break
    return scene


def render_example(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    meta = random_metadata(rng)
    scene = scene_for(meta, rng)
    if rng.random() < 0.5:
        scene = perturb(scene, rng)
    return render(scene, SIZE), meta


def question_kind(question: str) -> str:
    clause = question_clause(question)
    if "objects" in clause:
        return "object count"
    if clause.get("strict"):
        return "whole prompt"
    if any("position" in r for r in clause["include"]):
        return "relation"
    if clause["include"][0]["count"] > 1:
        return "count"
    return "colour" if "color" in clause["include"][0] else "object"


def relation_question(meta: dict, rng: np.random.Generator) -> str | None:
    """A relation question about two shapes of the image's prompt in random order, under a random relation, so
    left/right/above/below and the order of the two objects decide the answer, not which shapes are present; None
    when the prompt names fewer than two shapes."""
    shapes = list(dict.fromkeys(r["class"] for r in meta.get("include", [])))
    if len(shapes) < 2:
        return None
    a, b = (str(s) for s in rng.choice(shapes, 2, replace=False))
    rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
    clause = {"include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]}
    return requirements(clause, strict=False)[-1].question  # [0] asks for b alone


def ask(image: np.ndarray, meta: dict, rng: np.random.Generator, relations: float = 0.0) -> tuple[str, bool]:
    """A question about the image (a relation between its prompt's shapes with probability `relations`; else its
    prompt's requirement, the whole prompt, or another prompt's) and the checker's answer."""
    # No draw at all when `relations` is 0, so the shipped recipe's question stream stays as it was.
    question = relation_question(meta, rng) if relations and rng.random() < relations else None
    if question is None:
        u = rng.random()
        if u < 0.2:
            question = meta["prompt"]
        else:
            source = random_metadata(rng) if u < 0.35 else meta
            reqs = requirements(source)
            question = reqs[int(rng.integers(len(reqs)))].question
    return question, exact_answer(image, question_clause(question))


def model_pool(pipe, n: int, seed: int, steps: int, folder: Path, chunk: int = 16,
               deadline: float | None = None) -> tuple[np.ndarray, list[dict]]:
    """n samples of the pipeline for random prompts (seed: the prompts and the noise), as (n, 32, 32, 3) uint8 and
    their metadata; each chunk is stored under folder, so an interrupted pool resumes (OutOfTime past `deadline`)."""
    from safetensors.numpy import load_file, save_file

    if n == 0:
        return np.zeros((0, SIZE, SIZE, 3), np.uint8), []
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    metas = [random_metadata(rng) for _ in range(n)]
    images = []
    for start in range(0, n, chunk):
        path = folder / f"chunk-{start:06d}.safetensors"
        if not path.is_file():
            if deadline is not None and time.time() > deadline:
                raise OutOfTime
            part = metas[start:start + chunk]
            gens = [torch.Generator().manual_seed(seed * 1_000_003 + start + j) for j in range(len(part))]
            with torch.no_grad():
                out = pipe([m["prompt"] for m in part], num_inference_steps=steps, generator=gens, output_type="np")
            # C order: safetensors writes an array's memory as it lies, so a strided view (the pipeline's NHWC is a
            # permuted NCHW tensor) would be stored scrambled.
            arr = np.ascontiguousarray((np.clip(out.images, 0, 1) * 255).round().astype(np.uint8))
            tmp = path.with_suffix(".tmp")
            save_file({"images": arr}, str(tmp))
            tmp.replace(path)
            print(f"pool {folder.name}: {min(start + chunk, n)}/{n}", flush=True)
        images.append(load_file(str(path))["images"])
    return (np.concatenate(images) if images else np.zeros((0, SIZE, SIZE, 3), np.uint8)), metas


def batch(step: int, seed: int, size: int, pool, model_fraction: float, relations: float = 0.0):
    """Batch `step`: (images (B, 3, 32, 32) in [0, 1], questions, labels (B,) float); a function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    images, questions, labels = [], [], []
    for _ in range(size):
        if len(pool[0]) and rng.random() < model_fraction:
            k = int(rng.integers(len(pool[0])))
            image, meta = pool[0][k], pool[1][k]
        else:
            image, meta = render_example(rng)
        q, y = ask(image, meta, rng, relations)
        images.append(image)
        questions.append(q)
        labels.append(float(y))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, questions, torch.tensor(labels)


def eval_images(seed: int, renders: int, pool) -> list[tuple[np.ndarray, dict, str]]:
    """The held-out images (image, metadata, source): `renders` renders from the evaluation seed, then the pool's."""
    rng = np.random.default_rng(seed + EVAL_SEED_OFFSET)
    items = [(*render_example(rng), "render") for _ in range(renders)]
    return items + [(img, meta, "model") for img, meta in zip(*pool)]


def eval_set(images: list[tuple[np.ndarray, dict, str]]) -> list[tuple[np.ndarray, str, bool, str, str]]:
    """Held-out (image, question, checker's answer, tag, source): every requirement question and the whole prompt
    of each held-out image of `eval_images`."""
    out = []
    for image, meta, source in images:
        for q in [r.question for r in requirements(meta)] + [meta["prompt"]]:
            out.append((image, q, exact_answer(image, question_clause(q)), meta["tag"], source))
    return out


@torch.no_grad()
def evaluate(model, items: list, chunk: int = 256) -> dict:
    """Accuracy against the checker of a verifier (ShapesVerifier, or anything with `probabilities`): overall, per
    tag, per question kind, per source; false-yes / false-no rates; a few disagreements."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    probs = []
    for s in range(0, len(items), chunk):
        part = items[s:s + chunk]
        x = torch.from_numpy(np.stack([it[0] for it in part])).permute(0, 3, 1, 2).float() / 255
        probs.append(model.probabilities(x, [it[1] for it in part]))
    p = torch.cat(probs).numpy() if probs else np.zeros(0)
    groups: dict[str, dict[str, list[bool]]] = {"tag": defaultdict(list), "kind": defaultdict(list),
                                                "source": defaultdict(list)}
    false_yes = false_no = positives = 0
    disagreements = []
    for (image, q, label, tag, source), prob in zip(items, p):
        ok = (prob >= 0.5) == label
        for key, value in (("tag", tag), ("kind", question_kind(q)), ("source", source)):
            groups[key][value].append(ok)
        positives += label
        false_yes += (not label) and prob >= 0.5
        false_no += label and prob < 0.5
        if not ok and len(disagreements) < 20:
            disagreements.append({"question": q, "checker": bool(label), "p_yes": round(float(prob), 3),
                                  "tag": tag, "source": source})
    n = len(items)
    return {"accuracy": float(np.mean([(pr >= 0.5) == it[2] for pr, it in zip(p, items)])) if n else None,
            "items": n, "positives": int(positives),
            "majority_baseline": max(positives, n - positives) / max(n, 1),  # always answering the common answer
            "false_yes_rate": false_yes / max(n - positives, 1), "false_no_rate": false_no / max(positives, 1),
            **{f"per_{key}": {k: round(float(np.mean(v)), 4) for k, v in sorted(g.items())}
               for key, g in groups.items()},
            "disagreements": disagreements}


# --- the run ------------------------------------------------------------------------------------------------------


# Options of one invocation, free to change when a run resumes; every other option defines the run.
SESSION_OPTIONS = frozenset({"minutes", "stop_at", "checkpoint_minutes", "threads", "out", "work"})


def run_options(args: argparse.Namespace) -> dict:
    """The options that define the run, as JSON values."""
    return {k: (list(v) if isinstance(v, tuple) else v if isinstance(v, (int, float, str, bool, list, type(None)))
                else str(v)) for k, v in vars(args).items() if k not in SESSION_OPTIONS}


def save_checkpoint(work: Path, step: int, model, optimizer, log: list[dict], args: argparse.Namespace) -> None:
    tensors, meta = ckpt.optimizer_to_flat(optimizer, "optimizer")
    tensors |= {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpt.save(work / "checkpoints", step, tensors, {"step": step, "optimizer": meta, "log": log,
                                                    "args": run_options(args)})


def load_checkpoint(path: Path, model, optimizer, args: argparse.Namespace) -> tuple[int, list[dict]]:
    """The step and log of the checkpoint at path, its weights and optimizer state loaded; ValueError if it was
    written with other run options (checkpoints from before they were recorded are not checked)."""
    tensors, state = ckpt.load(path)
    if "args" in state:
        ckpt.check_options(state["args"], run_options(args), path, SESSION_OPTIONS, "--work")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ckpt.optimizer_from_flat(optimizer, tensors, state["optimizer"], "optimizer")
    return state["step"], state["log"]


def pools(args: argparse.Namespace, work: Path, deadline: float | None):
    """(training pool, evaluation pool) of the model's samples (--model-samples, --eval-model-samples) under WORK,
    made once and reused; OutOfTime past `deadline`."""
    pipe = None
    if args.model_samples or args.eval_model_samples:
        from accel.models import load_pipeline

        pipe = load_pipeline(args.model)
        pipe.set_progress_bar_config(disable=True)
    train_pool = model_pool(pipe, args.model_samples, args.seed, args.sample_steps, work / "pool-train",
                            deadline=deadline)
    eval_pool = model_pool(pipe, args.eval_model_samples, args.seed + EVAL_SEED_OFFSET, args.sample_steps,
                           work / "pool-eval", deadline=deadline)
    return train_pool, eval_pool


def fit(args: argparse.Namespace, work: Path, model, optimizer, train_step, start: float,
        clip: float | None = None) -> tuple[int, list[dict]] | None:
    """Train (or resume from WORK/checkpoints) to --steps: warm-up then linear decay of --lr, `train_step(step) ->
    (loss, log entry, progress text)` per step, optional gradient clipping, wall-clock checkpoints, and --minutes /
    --stop-at ending the invocation after a checkpoint (None then). Returns (steps, log) once --steps is reached."""
    step, log = 0, []
    if (found := ckpt.latest(work / "checkpoints")) is not None:
        step, log = load_checkpoint(found, model, optimizer, args)
        print(f"resumed at step {step}/{args.steps}", flush=True)
    last_save = time.time()
    try:
        while step < args.steps:
            lr = args.lr * min(1.0, (step + 1) / 200) * min(1.0, 4 * (args.steps - step) / args.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            loss, entry, text = train_step(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            step += 1
            log.append({"step": step, **entry})
            if step % 50 == 0 or step == args.steps:
                print(f"step {step}/{args.steps} {text}", flush=True)
            if time.time() - last_save > 60 * args.checkpoint_minutes and step < args.steps:
                save_checkpoint(work, step, model, optimizer, log, args)
                last_save = time.time()
            out_of_time = args.minutes and time.time() - start > 60 * args.minutes
            if (out_of_time or step == args.stop_at) and step < args.steps:
                raise OutOfTime
    except OutOfTime:
        save_checkpoint(work, step, model, optimizer, log, args)
        print(f"stopped at step {step}/{args.steps}; run the same command to resume", flush=True)
        return None
    save_checkpoint(work, step, model, optimizer, log, args)
    return step, log


def start_run(args: argparse.Namespace):
    """Threads, folders and the pools of model samples for a training script's run: (work, out, start time,
    train pool, eval pool), or None when --minutes ran out while sampling the pools (the same command goes on)."""
    torch.set_num_threads(args.threads)
    work, out = Path(args.work), Path(args.out)
    start = time.time()
    try:
        train_pool, eval_pool = pools(args, work, start + 60 * args.minutes if args.minutes else None)
    except OutOfTime:
        print("out of time while sampling the pool of model samples; run the same command to go on", flush=True)
        return None
    return work, out, start, train_pool, eval_pool


def training_record(args: argparse.Namespace, step: int, log: list[dict], **results) -> dict:
    """training.json of a trained model: the command, the data and run settings, `results` (held-out reports),
    the last loss, machine and torch version."""
    return {"command": "python " + " ".join(sys.argv), "steps": step, "batch_size": args.batch_size,
            "model_samples": args.model_samples, "sample_steps": args.sample_steps, "model": args.model,
            "seed": args.seed, **results, "final_loss": log[-1]["loss"] if log else None,
            "machine": f"{platform.machine()} {platform.processor()} threads={args.threads}",
            "torch": torch.__version__}


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if (run := start_run(args)) is None:
        return
    work, out, start, train_pool, eval_pool = run
    torch.manual_seed(args.seed)
    model = ShapesVerifier(VerifierConfig(image_size=SIZE, relation_slots=args.relation_slots))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    def train_step(step: int):
        x, questions, labels = batch(step, args.seed, args.batch_size, train_pool, args.model_fraction,
                                     args.relation_questions)
        logits = model(x, tokenize(questions))
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        acc = float(((logits > 0).float() == labels).float().mean())
        entry = {"loss": round(float(loss.detach()), 5), "accuracy": round(acc, 4)}
        return loss, entry, f"loss {entry['loss']:.4f} batch accuracy {acc:.3f}"

    if (done := fit(args, work, model, optimizer, train_step, start)) is None:
        return
    step, log = done
    report = evaluate(model, eval_set(eval_images(args.seed, args.eval_renders, eval_pool)))
    model.save_pretrained(out)
    write_json(out / "training.json", training_record(args, step, log, held_out=report))
    print(f"verifier written to {out}: held-out accuracy {report['accuracy']:.3f} "
          f"(per kind {json.dumps(report['per_kind'])})", flush=True)


if __name__ == "__main__":
    main()

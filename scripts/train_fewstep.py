"""Train the shipped few-step students of the built-in models with accel.distill (data-free: the shapes grammars).

Runs (each resumable; one checkpoint folder per run under --work):
- image-sc-dmd: SC-DMD student of the image model (assets/shapes-t2i), trained for 4 and 2 NFE at once
  -> assets/shapes-t2i-2step (shipped for 2 NFE); with --nfe 4, for 4 steps alone -> assets/shapes-t2i-4step;
- image-dmd: plain DMD on the same budget, for the SC ablation -> assets/shapes-t2i-4step-dmd;
- video-sc-dmd: SC-DMD student of the video model (assets/shapes-t2v), 4 NFE -> assets/shapes-t2v-4step;
- video-ar: autoregressive (chunk-causal, one token frame = 2 frames per chunk) student of the video model with
  Salt's cache-distribution-aware recipe (mixed 8/4/2-step rollouts, SC, 2 -> 4 alignment), 4 and 2 NFE
  -> assets/shapes-t2v-4step-ar.

A CPU session can stop at any time: --minutes ends this invocation (after a checkpoint), a checkpoint is also
written every --checkpoint-minutes, and the same command resumes bit for bit. The student folder is written when
the run reaches --steps.

    OMP_WAIT_POLICY=PASSIVE python scripts/train_fewstep.py --run image-sc-dmd --steps 3000 --minutes 55
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from accel.distill import ARConfig, DistillConfig, Distiller, export_student
from accel.distill import checkpoint as ckpt
from accel.distill.config import parse_mixed_steps
from accel.evals.io import write_json
from accel.models import load_pipeline

# run -> (teacher, method, step counts, student folder; {fewest}: the fewest steps it is trained for)
RUNS = {
    "image-sc-dmd": ("shapes", "sc-dmd", (4, 2), "assets/shapes-t2i-{fewest}step"),
    "image-dmd": ("shapes", "dmd", (4, 2), "assets/shapes-t2i-4step-dmd"),
    "video-sc-dmd": ("shapes-video", "sc-dmd", (4,), "assets/shapes-t2v-4step"),
    "video-ar": ("shapes-video", "sc-dmd", (4, 2), "assets/shapes-t2v-4step-ar"),
}


class OutOfTime(Exception):
    """This invocation's --minutes are spent."""


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", choices=sorted(RUNS), required=True)
    ap.add_argument("--teacher", default=None, help="teacher pipeline (default: the run's built-in model)")
    ap.add_argument("--out", default=None, help="student folder (default: the run's assets/ folder)")
    ap.add_argument("--work", default="runs/fewstep", help="checkpoints go to WORK/RUN")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr-generator", type=float, default=5e-5)
    ap.add_argument("--lr-critic", type=float, default=1e-4)
    ap.add_argument("--critic-per-generator", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=None,
                    help="the teacher's CFG weight in the DMD real score, as the pipeline's guidance_scale "
                         "(default: the teacher pipeline's own)")
    ap.add_argument("--nfe", default=None,
                    help="comma-separated step counts the student is trained for (default: the run's, e.g. 4,2); "
                         "one count trains a student for that count alone")
    ap.add_argument("--ode-init-steps", type=int, default=0)
    ap.add_argument("--ode-pairs", type=int, default=0,
                    help="teacher trajectories drawn once for the ODE init (0: a fresh one per iteration)")
    ap.add_argument("--ode-fresh-optimizer", action="store_true",
                    help="start DMD with a fresh student optimizer after the ODE init (Self Forcing's)")
    ap.add_argument("--critic-warmup-steps", type=int, default=0,
                    help="DMD iterations at the start that train only the fake score")
    ap.add_argument("--mixed-steps", default=None,
                    help="Salt's mixed-step rollouts for a bidirectional student, STEPS:PROBABILITY,... "
                         "(e.g. 8:0.4,4:0.4,2:0.2); default: one training grid")
    ap.add_argument("--ema-decay", type=float, default=0.99)
    ap.add_argument("--ema-start", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=0, help="stop this invocation after this long (0: no limit)")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--export-every", type=int, default=0,
                    help="also write the student (EMA) to WORK/RUN/snapshots/step-N every N iterations (0: never), "
                         "to pick a training length on a tuning prompt set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def config_for(args: argparse.Namespace) -> DistillConfig:
    _, method, nfe, _ = RUNS[args.run]
    if args.nfe is not None:
        try:
            nfe = tuple(int(n) for n in args.nfe.split(","))
        except ValueError:
            raise ValueError(f"--nfe takes comma-separated step counts, e.g. 4 or 4,2; got {args.nfe!r}") from None
    ar = ARConfig(chunk_frames=1) if args.run == "video-ar" else None
    return DistillConfig(method=method, ar=ar, steps=args.steps, batch_size=args.batch_size, nfe=nfe,
                         guidance=args.guidance, lr_generator=args.lr_generator, lr_critic=args.lr_critic,
                         critic_per_generator=args.critic_per_generator, ode_init_steps=args.ode_init_steps,
                         ode_pairs=args.ode_pairs, ode_fresh_optimizer=args.ode_fresh_optimizer,
                         critic_warmup_steps=args.critic_warmup_steps,
                         mixed_steps=None if args.mixed_steps is None else parse_mixed_steps(args.mixed_steps),
                         ema_decay=args.ema_decay, ema_start=args.ema_start, seed=args.seed,
                         checkpoint_every=10**9)  # checkpoints by wall clock (below) and at the end


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, _, _, default_out = RUNS[args.run]
    teacher, config = args.teacher or teacher, config_for(args)
    work, out = Path(args.work) / args.run, Path(args.out or default_out.format(fewest=min(config.nfe)))
    d = Distiller(load_pipeline(teacher), config, checkpoint_dir=work, teacher_name=teacher)
    if (found := ckpt.latest(work)) is not None:
        d.load_checkpoint(found)
        print(f"resumed {args.run} at step {d.step}/{d.total_steps}", flush=True)
    start = last_save = time.time()

    def on_step(step: int, total: int, entry: dict) -> None:
        nonlocal last_save
        if step % 25 == 0 or step == total:
            losses = " ".join(f"{k} {v:.4f}" for k, v in entry.items() if k in ("dmd", "sc", "align", "critic", "ode")
                              and v is not None)
            print(f"step {step}/{total} {losses} {entry['seconds'] / 60:.1f} min", flush=True)
        if args.export_every and step % args.export_every == 0 and step < total:
            export_student(d, work / "snapshots" / f"step-{step}")
        if time.time() - last_save > 60 * args.checkpoint_minutes and step < total:
            d.save_checkpoint()
            last_save = time.time()
        if args.minutes and time.time() - start > 60 * args.minutes and step < total:
            raise OutOfTime

    try:
        d.fit(on_step)
    except OutOfTime:
        d.save_checkpoint()
        print(f"out of time at step {d.step}/{d.total_steps}; run the same command to resume", flush=True)
        return
    export_student(d, out)
    write_json(out / "training.json", {
        "command": "python " + " ".join(sys.argv), "run": args.run, "teacher": teacher, "steps": d.step,
        "minutes": round(d.seconds / 60, 1), "machine": f"{platform.machine()} {platform.processor()} "
        f"threads={args.threads}", "torch": torch.__version__, "checkpoints": str(work)})
    print(f"student written to {out}", flush=True)


if __name__ == "__main__":
    main()

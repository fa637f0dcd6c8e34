"""Train a built-in masked-diffusion LM (assets/counting-mdlm, assets/addition-mdlm) on its task (accel.dllm.task).

    python scripts/train_mdlm.py --task addition --steps 2500 --out runs/addition-stage1    # resumable
    python scripts/train_mdlm.py --minutes 25 --seed 0 --out assets/counting-mdlm            # by the clock

LLaDA's objective (accel.pipelines.mdlm.masked_diffusion_loss, with prefix-masked rows) on freshly drawn training
problems every step (the task's training split: never a benchmark problem where the task holds some out); answer
lengths 64-256 tokens. Prints the loss and masked-token accuracy at t = 0.5 as it goes, writes the model
(safetensors), its config and tokenizer, and a training record JSON.

Two ways to run:
- `--steps N`: a run of N steps, resumable bit for bit. The learning rate follows the step; batch k is drawn from
  (seed, k) alone; the weights, the optimizer state and the log are checkpointed to --work (accel.distill.checkpoint,
  no pickle) every --checkpoint-minutes and when a session ends (--minutes, or --stop-at). The same command resumes
  (without --stop-at); the model folder is written when the run reaches N steps.
- without --steps: --minutes (default 25) is the run's length and the learning rate follows the clock, as the
  counting model's recorded stages were run (assets/counting-mdlm/README.md). Not resumable: the step count
  follows the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

from accel.distill import checkpoint as ckpt
from accel.dllm.task import TASKS, Task, get_task
from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM, MDLMConfig, masked_diffusion_loss, num_params

LENGTHS = (64, 128, 192, 256)
WARMUP = 200
# The arguments that define a --steps run: a checkpoint made with other values is another run's.
RUN_ARGS = ("task", "steps", "batch", "lr", "dim", "layers", "heads", "seed", "prefix_fraction", "prefix_span",
            "cut_power", "init")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=list(TASKS), default="counting")
    ap.add_argument("--steps", type=int, default=None,
                    help="the run's length in steps: resumable, the learning rate follows the step")
    ap.add_argument("--minutes", type=float, default=None,
                    help="with --steps: end this session after a checkpoint (default: run to the end); without: the "
                         "run's length (default 25), the learning rate following the clock")
    ap.add_argument("--stop-at", type=int, default=0, help="with --steps: end this session at this step, after a "
                    "checkpoint (0: never); the same command without it resumes")
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--work", type=Path, default=None,
                    help="checkpoints of a --steps run (default: runs/mdlm/<the --out folder's name>)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefix-fraction", type=float, default=0.5, help="share of prefix-masked rows (see the loss)")
    ap.add_argument("--prefix-span", type=int, default=32,
                    help="prefix rows score this many tokens after the cut (0: all)")
    ap.add_argument("--cut-power", type=float, default=2.0, help="prefix cut offset ~ U^power (1: uniform)")
    ap.add_argument("--init", type=Path, default=None, help="start from this model folder")
    ap.add_argument("--out", type=Path, default=None, help="the model folder (default: assets/<task>-mdlm)")
    return ap


def batch(task: Task, tok: CharTokenizer, rng: random.Random, n: int, gen_length: int) -> torch.Tensor:
    """(n, prompt + gen_length) token ids of freshly drawn training problems (one prompt length per task)."""
    rows = []
    for _ in range(n):
        p = task.train_problem(rng)
        rows.append(tok.prompt_ids(p.prompt) + tok.encode(p.answer(gen_length)))
    return torch.tensor(rows)


@torch.no_grad()
def masked_accuracy(model, task: Task, tok, rng, gen_length=256, n=64, t=0.5) -> float:
    ids = batch(task, tok, rng, n, gen_length)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(rng.randrange(2**31))) < t
    mask[:, :len(tok.prompt_ids(task.example))] = False
    logits = model(torch.where(mask, torch.full_like(ids, tok.mask_id), ids))
    return float((logits.argmax(-1) == ids)[mask].float().mean())


@torch.no_grad()
def decode_accuracy(model, task: Task, tok, n: int = 12, gen_length: int = 64) -> float:
    """Exact match of Fast-dLLM decoding on n fixed benchmark problems (what the model is for, cheaply)."""
    from accel.dllm import generate
    from accel.dllm.task import score

    ok = [score(tok.decode(generate(model, tok.prompt_ids(p.prompt), "fast-dllm", gen_length).tokens), p,
                gen_length)[0] for p in task.problem_set(n, seed=10_000)]
    return sum(ok) / n


def learning_rate(args, step: int, elapsed: float) -> float:
    """Warm-up, then a cosine from lr to lr / 10 over the run's steps (--steps) or its minutes (the clock)."""
    frac = step / args.steps if args.steps else elapsed / (60 * args.minutes)
    return args.lr * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def train_step(args, task: Task, tok, model, opt, step: int, elapsed: float) -> tuple[float, float]:
    """One optimizer step on batch `step` (drawn from (seed, step) alone); returns (loss, learning rate)."""
    lr = learning_rate(args, step, elapsed)
    for g in opt.param_groups:
        g["lr"] = lr
    stream = args.seed * 1_000_003 + step
    rng = random.Random(stream)
    ids = batch(task, tok, rng, args.batch, rng.choice(LENGTHS))
    loss = masked_diffusion_loss(model, ids, prompt_len=len(tok.prompt_ids(task.example)),
                                 generator=torch.Generator().manual_seed(stream),
                                 prefix_fraction=args.prefix_fraction, prefix_span=args.prefix_span,
                                 cut_power=args.cut_power)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item(), lr


def log_row(model, task: Task, tok, step: int, start: float, loss: float, lr: float) -> dict:
    model.eval()
    row = {"step": step, "minutes": round((time.time() - start) / 60, 2), "loss": round(loss, 4),
           "masked_acc_t0.5": round(masked_accuracy(model, task, tok, random.Random(step)), 4), "lr": round(lr, 6)}
    if step % 500 == 0:
        row["fast_dllm_exact_match_gen64"] = decode_accuracy(model, task, tok)
    model.train()
    return row


def run_args(args) -> dict:
    """The arguments that define a --steps run, as JSON."""
    return {k: str(getattr(args, k)) if k == "init" else getattr(args, k) for k in RUN_ARGS}


def save_checkpoint(work: Path, args, model, opt, step: int, log: list[dict], minutes: float) -> None:
    tensors, meta = ckpt.optimizer_to_flat(opt, "optimizer")
    tensors |= {f"model.{k}": v for k, v in model.state_dict().items()}
    ckpt.save(work, step, tensors, {"step": step, "optimizer": meta, "log": log, "minutes": minutes,
                                    "run": run_args(args)})


def resume(work: Path, args, model, opt) -> tuple[int, list[dict], float]:
    """(step, log, minutes so far) of the run's latest checkpoint in work, loaded into model and opt; (0, [], 0)
    when there is none. ValueError when the checkpoint is of another run."""
    found = ckpt.latest(work)
    if found is None:
        return 0, [], 0.0
    tensors, state = ckpt.load(found)
    ckpt.check_options({k: state["run"].get(k) for k in RUN_ARGS}, run_args(args), found, frozenset(), "--work")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    ckpt.optimizer_from_flat(opt, tensors, state["optimizer"], "optimizer")
    print(f"resumed at step {state['step']}/{args.steps} from {found}", flush=True)
    return state["step"], state["log"], state["minutes"]


def export(args, task: Task, tok, model, step: int, log: list[dict], minutes: float) -> None:
    """The model folder (safetensors, config, tokenizer) and training.json at --out."""
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save(args.out)
    record = {"command": "python " + " ".join(sys.argv), "task": task.name, "steps": step, "init": str(args.init),
              "minutes": round(minutes, 2), "params": num_params(model),
              "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__,
              "final_masked_acc_t0.5": masked_accuracy(model, task, tok, random.Random(-1)),
              "final_fast_dllm_exact_match_gen64": decode_accuracy(model, task, tok),
              "log": log}
    (args.out / "training.json").write_text(json.dumps(record, indent=1))
    print("saved", args.out, flush=True)


def main(argv=None) -> Path | None:
    """Train (or resume) until the run's end or the session's; returns the model folder once written."""
    args = parser().parse_args(argv)
    task = get_task(args.task)
    args.out = args.out or Path(f"assets/{task.name}-mdlm")
    if args.steps is None:
        args.minutes = 25.0 if args.minutes is None else args.minutes
    work = args.work or Path("runs/mdlm") / args.out.name
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = CharTokenizer(list(task.vocab))
    model = MaskedDiffusionLM(MDLMConfig(vocab_size=len(tok), mask_id=tok.mask_id, dim=args.dim, layers=args.layers,
                                         heads=args.heads, max_len=1024))
    if args.init is not None:
        model = MaskedDiffusionLM.from_pretrained(args.init)
        if model.config.vocab_size != len(tok):
            raise ValueError(f"--init {args.init} has {model.config.vocab_size} tokens, the {task.name} task's "
                             f"vocabulary {len(tok)}")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    print(f"{num_params(model) / 1e6:.2f}M parameters", flush=True)
    step, log, before = resume(work, args, model, opt) if args.steps else (0, [], 0.0)
    start = last_save = time.time()
    while (step < args.steps) if args.steps else (time.time() - start < 60 * args.minutes):
        loss, lr = train_step(args, task, tok, model, opt, step, time.time() - start)
        step += 1
        if step % 100 == 0:
            log.append(log_row(model, task, tok, step, start, loss, lr))
            print(json.dumps(log[-1]), flush=True)
        if not args.steps:
            continue
        session_over = ((args.minutes is not None and time.time() - start >= 60 * args.minutes)
                        or step == args.stop_at)
        if session_over or step == args.steps or time.time() - last_save >= 60 * args.checkpoint_minutes:
            save_checkpoint(work, args, model, opt, step, log, before + (time.time() - start) / 60)
            last_save = time.time()
            if session_over and step < args.steps:
                print(f"session over at step {step}/{args.steps}; run the same command (without --stop-at) to "
                      "resume", flush=True)
                return None
    export(args, task, tok, model, step, log, before + (time.time() - start) / 60)
    return args.out


if __name__ == "__main__":
    main()

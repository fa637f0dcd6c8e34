"""Train the built-in MoE shapes model (accel.pipelines.shapes_moe) on the shapes world, resumably, on a CPU.

The loop is the built-in shapes model's (rectified flow, logit-normal sigma, 10% caption dropout, AdamW, EMA; scenes
drawn fresh every step), with the MoE blocks run by accel's expert-choice engine in training mode and three
ingredients for a model that serves a range of capacities at inference:
- progressive capacity sparsification (Nucleus-Image): the factor on every MoE layer's capacity starts at
  --capacity-start and decays linearly to 1 over the first --sparsify fraction of the steps;
- elastic capacity: each step multiplies that factor by one drawn uniformly from [--capacity-low, --capacity-high];
- stochastic co-activation (Elastic MoE, adapted to expert choice): each expert draws its C tokens at random from
  its top --coactivation x C candidates (1: plain top-C, the ablation).
--router-input modulated trains the router on the modulated state instead (Nucleus-Image's decoupling ablated).
--dense trains the dense model of equal active compute (the baseline): every block dense, with an MLP as wide as the
active experts of a MoE block at its trained capacity (shared + capacity-factor routed SwiGLU experts); give it the
MoE run's CPU time through --steps.

Resumable: a checkpoint (weights, EMA, optimizer, random states, step; accel.distill.checkpoint, no pickle) goes to
OUT/checkpoints every --checkpoint-minutes and when a session ends; --minutes ends a session, and the same command
resumes bit for bit. The run's length is --steps, fixed, so that a resumed run is the run it would have been. When
it reaches --steps, the EMA weights are saved as a pipeline folder at OUT (safetensors) with OUT/training.json.

    OMP_WAIT_POLICY=PASSIVE python scripts/train_shapes_moe.py --steps 4000 --minutes 55 --out assets/shapes-moe-t2i
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from accel.distill import checkpoint as ckpt
from accel.evals.io import write_json
from accel.moe import ExpertChoiceConfig, apply_expert_choice
from accel.pipelines.shapes_moe import ROUTER_INPUTS, build_shapes_moe_pipeline
from accel.shapes import random_metadata, render, scene_for

CAPTION_DROPOUT = 0.1
WARMUP_STEPS = 200


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="assets/shapes-moe-t2i")
    ap.add_argument("--steps", type=int, default=4000, help="length of the whole run (all sessions); the dense "
                    "built-in model took about as many at this batch size")
    ap.add_argument("--minutes", type=float, default=0.0, help="end this session after a checkpoint (0: no limit)")
    ap.add_argument("--session-steps", type=int, default=0,
                    help="end this session after this many steps, after a checkpoint (0: no limit)")
    ap.add_argument("--checkpoint-minutes", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    model = ap.add_argument_group("model")
    model.add_argument("--width", type=int, default=128)
    model.add_argument("--stem-channels", type=int, nargs=2, default=(32, 64))
    model.add_argument("--text-hidden", type=int, default=128)
    model.add_argument("--text-layers", type=int, default=2)
    model.add_argument("--num-experts", type=int, default=8)
    model.add_argument("--moe-intermediate-dim", type=int, default=128)
    model.add_argument("--capacity-factors", type=float, nargs="+", default=(0.0, 2.0, 2.0, 2.0),
                       help="one per block, 0 for a dense block (the trained capacities)")
    model.add_argument("--router-input", choices=ROUTER_INPUTS, default="unmodulated")
    model.add_argument("--dense", action="store_true", help="the dense baseline of equal active compute")
    moe = ap.add_argument_group("MoE training")
    moe.add_argument("--capacity-start", type=float, default=2.0)
    moe.add_argument("--sparsify", type=float, default=0.3, help="fraction of the steps over which it decays to 1")
    moe.add_argument("--capacity-low", type=float, default=0.5)
    moe.add_argument("--capacity-high", type=float, default=1.5)
    moe.add_argument("--coactivation", type=float, default=2.0, help="candidate pool / capacity (1: off)")
    return ap


def check(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be >= 1")
    if not 0 < args.capacity_low <= args.capacity_high or args.capacity_start <= 0:
        raise ValueError("capacities must satisfy 0 < --capacity-low <= --capacity-high and --capacity-start > 0")
    if not 0 <= args.sparsify <= 1:
        raise ValueError(f"--sparsify is a fraction of the steps in [0, 1], got {args.sparsify}")


def dense_mlp_ratio(args: argparse.Namespace) -> float:
    """The dense MLP ratio whose FLOPs per token, 2 * width * (ratio * width), equal a MoE block's active experts:
    (1 shared + c routed on average) SwiGLU experts of 3 * width * inter each, c the mean trained capacity factor
    of the MoE blocks (expert choice gives each token c routed experts on average)."""
    moe = [c for c in args.capacity_factors if c > 0]
    c = sum(moe) / len(moe) if moe else 0.0
    return (1 + c) * 3 * args.moe_intermediate_dim / (2 * args.width)


def capacity_at(step: int, args: argparse.Namespace, gen: torch.Generator) -> float:
    """This step's factor on the trained capacities: sparsification schedule times the elastic draw."""
    ramp = max(1, round(args.sparsify * args.steps))
    base = 1.0 + (args.capacity_start - 1.0) * max(0.0, 1.0 - step / ramp)
    u = float(torch.rand((), generator=gen))
    return base * (args.capacity_low + (args.capacity_high - args.capacity_low) * u)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then constant, then a linear decay to zero over the last quarter of the run."""
    lr = args.lr * min(1.0, (step + 1) / WARMUP_STEPS)
    if step > 0.75 * args.steps:
        lr *= max(0.0, (args.steps - step) / (0.25 * args.steps))
    return lr


def batch(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, list[str]]:
    """x0 (n, 3, 32, 32) in [-1, 1] and captions, a tenth of them dropped for classifier-free guidance."""
    metas = [random_metadata(rng) for _ in range(n)]
    arrays = np.stack([render(scene_for(m, rng)) for m in metas])
    x0 = torch.from_numpy(np.moveaxis(arrays, -1, 1).copy()).float() / 127.5 - 1.0
    return x0, ["" if rng.random() < CAPTION_DROPOUT else m["prompt"] for m in metas]


class Run:
    """The trained modules, their EMA copies, the optimizer and the random states: what a checkpoint holds."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.pipe = build_shapes_moe_pipeline(
            width=args.width, stem_channels=args.stem_channels, text_hidden=args.text_hidden,
            text_layers=args.text_layers, num_layers=len(args.capacity_factors), num_experts=args.num_experts,
            moe_intermediate_dim=args.moe_intermediate_dim,
            capacity_factors=[0.0] * len(args.capacity_factors) if args.dense else args.capacity_factors,
            mlp_ratio=dense_mlp_ratio(args) if args.dense else 4.0, router_input=args.router_input, seed=args.seed)
        self.te, self.tr = self.pipe.text_encoder.train(), self.pipe.transformer.train()
        # EMA copies first: a deep copy must not carry the engine's per-instance hooks.
        self.ema = {"te": copy.deepcopy(self.te).eval(), "tr": copy.deepcopy(self.tr).eval()}
        self.params = list(self.te.parameters()) + list(self.tr.parameters())
        self.ema_params = list(self.ema["te"].parameters()) + list(self.ema["tr"].parameters())
        self.opt = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.gen = torch.Generator().manual_seed(args.seed)
        self.scenes = np.random.default_rng(args.seed)
        torch.manual_seed(args.seed)  # the co-activation draws use torch's default generator
        self.step = 0
        self.log: list[dict] = []

    def state(self) -> tuple[dict, dict]:
        tensors = {f"model.{k}": v for k, v in {**prefixed("te", self.te), **prefixed("tr", self.tr)}.items()}
        tensors |= {f"ema.{k}": v for k, v in {**prefixed("te", self.ema["te"]),
                                                **prefixed("tr", self.ema["tr"])}.items()}
        opt_tensors, opt_meta = ckpt.optimizer_to_flat(self.opt, "opt")
        tensors |= opt_tensors | {"rng.generator": self.gen.get_state(), "rng.torch": torch.get_rng_state()}
        meta = {"step": self.step, "optimizer": opt_meta, "numpy": self.scenes.bit_generator.state,
                "args": self.arguments()}
        return tensors, meta

    def arguments(self) -> dict:
        return vars(self.args) | {"stem_channels": list(self.args.stem_channels),
                                  "capacity_factors": list(self.args.capacity_factors)}

    def restore(self, tensors: dict, meta: dict) -> None:
        for name, module in (("te", self.te), ("tr", self.tr)):
            module.load_state_dict(unprefixed(tensors, f"model.{name}."))
            self.ema[name].load_state_dict(unprefixed(tensors, f"ema.{name}."))
        ckpt.optimizer_from_flat(self.opt, tensors, meta["optimizer"], "opt")
        self.gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        self.scenes.bit_generator.state = meta["numpy"]
        self.step = meta["step"]


def prefixed(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def train_step(run: Run, engine) -> float:
    args, tok = run.args, run.pipe.tokenizer
    lr = learning_rate(run.step, args)
    for group in run.opt.param_groups:
        group["lr"] = lr
    factor = capacity_at(run.step, args, run.gen)  # drawn for the dense run too: the same random streams
    if engine is not None:
        engine.set_capacity(factor)
    x0, captions = batch(run.scenes, args.batch_size)
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    emb = run.te(ids.input_ids).last_hidden_state
    b = x0.shape[0]
    sigma = torch.sigmoid(torch.randn(b, generator=run.gen))  # logit-normal(0, 1)
    eps = torch.randn(x0.shape, generator=run.gen)
    s = sigma.view(b, 1, 1, 1)
    v = run.tr((1 - s) * x0 + s * eps, emb, sigma, ids.attention_mask).sample
    loss = F.mse_loss(v, eps - x0)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    with torch.no_grad():
        decay = min(args.ema, (1 + run.step) / (10 + run.step))
        torch._foreach_lerp_(run.ema_params, run.params, 1 - decay)
    run.step += 1
    return loss.item()


def export(run: Run, out: Path, minutes: float) -> None:
    """The EMA weights as a pipeline folder at out, and training.json."""
    pipe = copy.copy(run.pipe)
    pipe.register_modules(text_encoder=run.ema["te"], transformer=run.ema["tr"])
    pipe.save_pretrained(out, safe_serialization=True)
    losses = [entry["loss"] for entry in run.log[-200:]]
    write_json(out / "training.json", {
        "command": "python " + " ".join(sys.argv), "steps": run.step, "minutes_last_session": round(minutes, 1),
        "final_loss": float(np.mean(losses)) if losses else None, "args": run.arguments(),
        "machine": f"{platform.machine()} {platform.processor()} threads={run.args.threads}",
        "torch": torch.__version__})


# Options of one session, free to change when a run resumes; every other option defines the run.
SESSION_OPTIONS = frozenset({"minutes", "session_steps", "checkpoint_minutes", "threads", "out"})


def main(argv: list[str] | None = None) -> Path | None:
    """Train (or resume) until --steps or the end of the session; returns the pipeline folder once written."""
    args = parser().parse_args(argv)
    check(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    folder = out / "checkpoints"
    run = Run(args)
    if (path := ckpt.latest(folder)) is not None:
        tensors, meta = ckpt.load(path)
        ckpt.check_options(meta.get("args", {}), run.arguments(), path, SESSION_OPTIONS, "--out")
        run.restore(tensors, meta)
        print(f"resumed at step {run.step} from {path}", flush=True)
    engine = None if args.dense else apply_expert_choice(run.tr, ExpertChoiceConfig(coactivation=args.coactivation))
    start = last_save = time.time()
    first = run.step
    try:
        while run.step < args.steps:
            run.log.append({"step": run.step, "loss": train_step(run, engine)})
            if run.step % 50 == 0:
                recent = np.mean([e["loss"] for e in run.log[-50:]])
                minutes = (time.time() - start) / 60
                print(f"step {run.step}/{args.steps} loss {recent:.4f} {minutes:.1f} min", flush=True)
            session_over = ((args.minutes and time.time() - start >= args.minutes * 60)
                            or (args.session_steps and run.step - first >= args.session_steps))
            if session_over or time.time() - last_save >= args.checkpoint_minutes * 60 or run.step == args.steps:
                ckpt.save(folder, run.step, *run.state())
                last_save = time.time()
                if session_over and run.step < args.steps:
                    print(f"session over at step {run.step}; run the same command to resume", flush=True)
                    return None
    finally:
        if engine is not None:
            engine.remove()
    export(run, out, (time.time() - start) / 60)
    print(f"done: {run.step} steps; pipeline at {out}", flush=True)
    return out


if __name__ == "__main__":
    main()

"""The training loop the built-in shapes models share (scripts/train_shapes.py, scripts/train_shapes_video.py).

Rectified flow (x_sigma = (1 - sigma) x0 + sigma eps, target v = eps - x0), logit-normal sigma, caption dropout for
classifier-free guidance, AdamW, EMA weights saved; samples are drawn fresh every step by a background thread (no
data set to store); the text encoder is trained jointly.

--minutes sets a wall-clock budget: the learning rate warms up over 200 steps and decays linearly to zero over the
last 25% of the budget, judged by the speed of the first 30 steps, so a run is reproducible only by --steps (the
script records the steps it took in OUT/training.json).
"""

from __future__ import annotations

import argparse
import copy
import platform
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from accel.evals.io import write_json

CALIBRATION_STEPS = 30


def training_parser(description: str, *, out: str, minutes: float, batch_size: int, ema: float
                    ) -> argparse.ArgumentParser:
    """The options every shapes training script takes; a script adds its model's own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=out)
    ap.add_argument("--steps", type=int, default=0, help="fixed number of steps (overrides --minutes)")
    ap.add_argument("--minutes", type=float, default=minutes)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=ema)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--init", default=None, help="start from this pipeline folder's weights (fresh optimizer)")
    return ap


Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, list[str]]]


def _batches(sample: Sampler, batch_size: int, seed: int, dropout: float, out: queue.Queue) -> None:
    """Feeds out with (x0 (B, 3, ...) in [-1, 1], captions); sample(rng, n) -> (uint8 (n, ..., 3), n prompts)."""
    rng = np.random.default_rng(seed)
    while True:
        arrays, prompts = sample(rng, batch_size)
        x0 = torch.from_numpy(np.moveaxis(arrays, -1, 1).copy()).float() / 127.5 - 1.0
        captions = ["" if rng.random() < dropout else p for p in prompts]
        out.put((x0, captions))


def train(pipe, pipeline_cls, sample: Sampler, args: argparse.Namespace, dropout: float = 0.1) -> None:
    """Trains pipe's text encoder and transformer (from args.init's weights when given) and saves the EMA weights
    as a pipeline folder at args.out every args.save_every steps and at the end."""
    torch.set_num_threads(args.threads)
    if args.init:
        init = pipeline_cls.from_pretrained(args.init, use_safetensors=True)
        pipe.text_encoder.load_state_dict(init.text_encoder.state_dict())
        pipe.transformer.load_state_dict(init.transformer.state_dict())
    te, tr, tok = pipe.text_encoder.train(), pipe.transformer.train(), pipe.tokenizer
    params = list(te.parameters()) + list(tr.parameters())
    print(f"params: transformer {sum(p.numel() for p in tr.parameters()) / 1e6:.2f}M, "
          f"text encoder {sum(p.numel() for p in te.parameters()) / 1e6:.2f}M", flush=True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema_te, ema_tr = copy.deepcopy(te).eval(), copy.deepcopy(tr).eval()
    ema_params = list(ema_te.parameters()) + list(ema_tr.parameters())

    q: queue.Queue = queue.Queue(maxsize=4)
    threading.Thread(target=_batches, args=(sample, args.batch_size, args.seed, dropout, q), daemon=True).start()
    gen = torch.Generator().manual_seed(args.seed)
    total = args.steps or None
    t0 = time.time()
    step, losses = 0, []

    def save(final: bool):
        out = copy.copy(pipe)
        out.register_modules(text_encoder=ema_te, transformer=ema_tr)
        out.save_pretrained(args.out, safe_serialization=True)
        info = {"command": "python " + " ".join(sys.argv), "steps": step,
                "minutes": round((time.time() - t0) / 60, 1), "batch_size": args.batch_size, "lr": args.lr,
                "ema": args.ema, "seed": args.seed, "init": args.init, "final_loss": float(np.mean(losses[-200:])),
                "machine": f"{platform.machine()} {platform.processor()} threads={args.threads}",
                "torch": torch.__version__, "final": final}
        write_json(Path(args.out, "training.json"), info)
        pipe.register_modules(text_encoder=te, transformer=tr)

    while True:
        if total is None and step == CALIBRATION_STEPS:
            per_step = (time.time() - t0) / step
            total = int(args.minutes * 60 / per_step)
            print(f"{per_step:.3f} s/step -> {total} steps in {args.minutes} min", flush=True)
        if total is not None and step >= total:
            break
        lr = args.lr * min(1.0, (step + 1) / 200)
        if total is not None and step > 0.75 * total:
            lr *= max(0.0, (total - step) / (0.25 * total))
        for g in opt.param_groups:
            g["lr"] = lr
        x0, captions = q.get()
        ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt")
        emb = te(ids.input_ids).last_hidden_state
        b = x0.shape[0]
        sigma = torch.sigmoid(torch.randn(b, generator=gen))  # logit-normal(0, 1)
        eps = torch.randn(x0.shape, generator=gen)
        s = sigma.view(b, *([1] * (x0.ndim - 1)))
        x = (1 - s) * x0 + s * eps
        v = tr(x, emb, sigma, ids.attention_mask).sample
        loss = F.mse_loss(v, eps - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step}/{total} loss {np.mean(losses[-50:]):.4f} lr {lr:.2e} "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        if step % args.save_every == 0:
            save(final=False)
    save(final=True)
    print(f"done: {step} steps in {(time.time() - t0) / 60:.1f} min", flush=True)

"""Train the built-in masked-diffusion LM (assets/counting-mdlm) on the counting task (accel.dllm.task).

    python scripts/train_mdlm.py --minutes 25 --seed 0 --out assets/counting-mdlm

LLaDA's objective (accel.pipelines.mdlm.masked_diffusion_loss, with prefix-masked rows) on freshly drawn problems
every step; answer lengths 64-256 tokens. Prints the loss and masked-token accuracy at t = 0.5 as it goes,
writes the model (safetensors), its config and tokenizer, and a training record JSON.
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

from accel.dllm.task import VOCAB, answer, random_problem
from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM, MDLMConfig, masked_diffusion_loss, num_params

LENGTHS = (64, 128, 192, 256)
PROMPT_LEN = 8  # <bos> count S S S by K <sep>


def batch(tok: CharTokenizer, rng: random.Random, n: int, gen_length: int) -> torch.Tensor:
    rows = []
    for _ in range(n):
        p = random_problem(rng)
        rows.append(tok.prompt_ids(p.prompt) + tok.encode(answer(p, gen_length)))
    return torch.tensor(rows)


@torch.no_grad()
def masked_accuracy(model, tok, rng, gen_length=256, n=64, t=0.5) -> float:
    ids = batch(tok, rng, n, gen_length)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(rng.randrange(2**31))) < t
    mask[:, :PROMPT_LEN] = False
    logits = model(torch.where(mask, torch.full_like(ids, tok.mask_id), ids))
    return float((logits.argmax(-1) == ids)[mask].float().mean())


@torch.no_grad()
def decode_accuracy(model, tok, n: int = 12, gen_length: int = 64) -> float:
    """Exact match of Fast-dLLM decoding on n fixed problems (what the model is for, cheaply)."""
    from accel.dllm import generate
    from accel.dllm.task import problem_set, score

    ok = [score(tok.decode(generate(model, tok.prompt_ids(p.prompt), "fast-dllm", gen_length).tokens), p,
                gen_length)[0] for p in problem_set(n, seed=10_000)]
    return sum(ok) / n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--steps", type=int, default=100_000)
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
    ap.add_argument("--out", type=Path, default=Path("assets/counting-mdlm"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = CharTokenizer(list(VOCAB))
    model = MaskedDiffusionLM(MDLMConfig(vocab_size=len(tok), mask_id=tok.mask_id, dim=args.dim, layers=args.layers,
                                         heads=args.heads, max_len=1024))
    if args.init is not None:
        model = MaskedDiffusionLM.from_pretrained(args.init).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    print(f"{num_params(model) / 1e6:.2f}M parameters", flush=True)
    budget = args.minutes * 60
    start, step, log = time.time(), 0, []
    warmup = 200
    while step < args.steps and time.time() - start < budget:
        frac = (time.time() - start) / budget
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        ids = batch(tok, rng, args.batch, rng.choice(LENGTHS))
        loss = masked_diffusion_loss(model, ids, prompt_len=PROMPT_LEN, prefix_fraction=args.prefix_fraction,
                                     prefix_span=args.prefix_span, cut_power=args.cut_power)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            model.eval()
            acc = masked_accuracy(model, tok, random.Random(step))
            decoded = decode_accuracy(model, tok) if step % 500 == 0 else None
            model.train()
            row = {"step": step, "minutes": round((time.time() - start) / 60, 2), "loss": round(loss.item(), 4),
                   "masked_acc_t0.5": round(acc, 4), "lr": round(lr, 6)}
            if decoded is not None:
                row["fast_dllm_exact_match_gen64"] = decoded
            log.append(row)
            print(json.dumps(row), flush=True)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save(args.out)
    record = {"command": "python " + " ".join(sys.argv), "steps": step, "init": str(args.init),
              "minutes": round((time.time() - start) / 60, 2), "params": num_params(model),
              "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "final_masked_acc_t0.5": masked_accuracy(model, tok, random.Random(-1)),
              "final_fast_dllm_exact_match_gen64": decode_accuracy(model, tok),
              "log": log}
    (args.out / "training.json").write_text(json.dumps(record, indent=1))
    print("saved", args.out, flush=True)


if __name__ == "__main__":
    main()

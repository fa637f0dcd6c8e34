"""Tokens/s and GSM8K accuracy of each decoder on a real LLaDA (or Dream) checkpoint, natively loaded (GPU).

    python benchmarks/dllm/bench_llada_gpu.py --model /models/LLaDA-8B-Instruct --data gsm8k_test.jsonl \
        --problems 100 --gen-length 256 --json benchmarks/dllm/llada-8b-gsm8k-256.json

--data: GSM8K's JSONL ({"question": ..., "answer": "... #### 42"}, the test split of openai/gsm8k); the score is
exact match of the last number in the decoded answer with the number after "####" (zero-shot, chat template,
as LLaDA's and Fast-dLLM's instruct evaluations prompt). The decoders run interleaved: for each problem every
decoder decodes it, in an order rotated per problem, so that a change of machine load falls on all of them alike;
each is timed with CUDA synchronised around it. Rows (JSON): decoder, tokens_per_s (answer tokens decoded per
second, EOS-filled ones included when --eos-stop ends answers early), speedup (vs the first decoder), accuracy,
nfe, positions (token-forwards), gen_length, problems, seconds, and the machine, device, versions and git state
(accel.evals.io.run_info). Not run in the repository's sessions (no GPU with the weights); a CPU smoke run on a tiny
random checkpoint is `--smoke`.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

DEFAULT_DECODERS = (
    "llada:block_length=32",  # the baseline: one token per step, 256 forwards for 256 tokens
    "fast-dllm:threshold=0.9:cache=none", "fast-dllm:threshold=0.9:cache=prefix", "fast-dllm:threshold=0.9:cache=dual",
    "fast-dllm:factor=1.0:cache=dual",
    "window:window=64:active=16:refresh=32", "window:window=64:threshold=0.9",
    "adablock",
)


def last_number(text: str) -> str | None:
    nums = re.findall(r"-?\d[\d,]*\.?\d*", text)
    return nums[-1].replace(",", "").rstrip(".") if nums else None


def load_problems(path: str, n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [(r["question"], r["answer"].split("####")[-1].strip().replace(",", "")) for r in rows[:n]]


def prompt_ids(tok, question: str) -> list[int]:
    """The instruct models' chat format, as LLaDA's generate.py builds it."""
    chat = getattr(tok.tokenizer, "chat_template", None)
    if chat:
        text = tok.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                 add_generation_prompt=True, tokenize=False)
        return tok.prompt_ids(text)
    return tok.prompt_ids(question)


def run(args) -> list[dict]:
    from accel.dllm import generate
    from accel.dllm.bench import parse_decoder
    from accel.dllm.models import load_text_model
    from accel.evals.timing import round_orders

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    model, tok = load_text_model(args.model, device=args.device, dtype=dtype, mask_id=args.mask_id)
    problems = load_problems(args.data, args.problems)
    configs = [parse_decoder(d) for d in args.decoders]
    eos = tok.eos_id if args.eos_stop else None
    delimiter = tok.index.get("Ċ", tok.index.get("\n"))  # the newline token (byte-level BPE spells it Ċ)
    cuda = args.device.startswith("cuda")
    stats = {d: {"seconds": 0.0, "exact": 0, "nfe": 0, "positions": 0} for d in args.decoders}
    for _, i, order in round_orders(len(configs), len(problems), 1):  # rotated: no decoder always runs first
        question, gold = problems[i]
        ids = prompt_ids(tok, question)
        for j in order:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = generate(model, ids, configs[j], args.gen_length, delimiter_id=delimiter, eos_id=eos)
            if cuda:
                torch.cuda.synchronize()
            s = stats[args.decoders[j]]
            s["seconds"] += time.perf_counter() - start
            text = tok.tokenizer.decode(out.tokens.tolist(), skip_special_tokens=True)
            s["exact"] += last_number(text) == gold
            s["nfe"] += out.stats.nfe
            s["positions"] += out.stats.positions
        print(f"problem {i + 1}/{len(problems)}", flush=True)
    return _rows(args, stats, len(problems))


def _rows(args, stats: dict, n: int) -> list[dict]:
    from accel.evals.io import run_info

    info = run_info()
    info["command"] = "python benchmarks/dllm/bench_llada_gpu.py " + " ".join(args.argv)
    rows = []
    for d in args.decoders:
        s = stats[d]
        rows.append({"decoder": d, "task": "gsm8k", "model": Path(args.model).name, "gen_length": args.gen_length,
                     "tokens_per_s": args.gen_length * n / s["seconds"], "accuracy": s["exact"] / n,
                     "nfe": s["nfe"] / n, "positions": s["positions"] / n, "seconds": round(s["seconds"], 3),
                     "problems": n, "dtype": args.dtype, "eos_stop": args.eos_stop, **info})
    for r in rows:
        r["speedup"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def smoke_checkpoint(folder: Path) -> tuple[str, str]:
    """A tiny random LLaDA folder (official layout) and a 2-problem GSM8K-format file, for a CPU run."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    from accel.dllm.llada import LLaDAModel, llada_config

    words = ["[UNK]", "<|eot|>", "<|mdm_mask|>", *"0123456789", "what", "is", "plus", "?", "\n"]
    config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
              "block_type": "llama", "rope": True, "layer_norm_type": "rms", "d_model": 32, "n_heads": 4,
              "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 64, "vocab_size": 32, "embedding_size": 32,
              "max_sequence_length": 512, "weight_tying": False, "mask_token_id": 2, "rope_theta": 500000.0}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = LLaDAModel(llada_config(config, 2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|eot|>").save_pretrained(folder)
    data = folder / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps({"question": q, "answer": a}) for q, a in
                              [("what is 2 plus 3 ?", "2 + 3 = 5\n#### 5"), ("what is 4 plus 4 ?", "#### 8")]))
    return str(folder), str(data)


def main(argv: list[str] | None = None) -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="An official LLaDA / Dream checkpoint folder.")
    p.add_argument("--data", help="GSM8K test JSONL.")
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--decoders", default=",".join(DEFAULT_DECODERS), help="Comma-separated; the first is the baseline.")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--mask-id", type=int, default=None)
    p.add_argument("--eos-stop", action="store_true", help="End answers at their first EOS (adaptive length).")
    p.add_argument("--json", default=None, help="Write the rows here.")
    p.add_argument("--smoke", metavar="FOLDER", default=None, help="CPU run on a tiny random checkpoint written here.")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.decoders = [d.strip() for d in args.decoders.split(",") if d.strip()]
    if args.smoke:
        args.model, args.data = smoke_checkpoint(Path(args.smoke))
        args.device, args.dtype, args.problems, args.gen_length = "cpu", "float32", 2, 64
    if not args.model or not args.data:
        p.error("--model and --data are required (or --smoke FOLDER)")
    rows = run(args)
    for r in rows:
        print(f"{r['decoder']:45s} {r['tokens_per_s']:9.1f} tok/s {r['speedup']:6.2f}x  acc {r['accuracy']:.3f}  "
              f"NFE {r['nfe']:.1f}")
    if args.json:
        from accel.evals.io import write_json

        write_json(args.json, rows)


if __name__ == "__main__":
    main()

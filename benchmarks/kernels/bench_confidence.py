"""Benchmark confidence_argmax (max softmax probability + argmax) over LLaDA's vocabulary.

    python benchmarks/kernels/bench_confidence.py --seed 0 --json benchmarks/kernels/results-<gpu>.json
"""

from _bench import DTYPES, VOCAB, Case, presets, run  # first: --smoke sets TRITON_INTERPRET

import torch

from accel.kernels.confidence import confidence_argmax, confidence_argmax_reference


def make_cases(args, preset):
    if args.smoke != (preset == "smoke"):
        return []
    rows, vocab = VOCAB[preset]["rows"], VOCAB[preset]["vocab"]
    logits = 4 * torch.randn(rows, vocab, device=args.device, dtype=DTYPES[args.dtype])
    moved = logits.numel() * logits.element_size() + rows * (4 + 8)  # read the logits once; write conf, index
    case = Case(f"{preset}/{rows}x{vocab}", moved, {
        "accel": lambda: confidence_argmax(logits),
        "eager": lambda: confidence_argmax_reference(logits),
    }, {"shape": [rows, vocab]})
    return [case]


if __name__ == "__main__":
    run("confidence_argmax", make_cases, __doc__, presets("llada", "llada_b8"))

"""`accel text` and `accel bench dllm`: diffusion-language-model decoding from the command line.

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from accel.cli.main import (ALLOW_DIRTY, OVERWRITE, UsageError, _progress, app, bench_app, check_outputs, console,
                            record_rows, record_state, user_errors)


def _load_text(model: str, device: Optional[str], trust_remote_code: bool, mask_id: Optional[int] = None):
    from accel.dllm.models import load_text_model

    try:
        return load_text_model(model, device=device, trust_remote_code=trust_remote_code, mask_id=mask_id)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as e:  # hub / config errors from transformers: which model, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load text model {model!r}: {first}") from None


@app.command()
def text(
    prompt: str = typer.Argument(..., help="Prompt (built-in models: 'count SSS by K', e.g. 'count 137 by 7'; "
                                 "'add AAAA + BBBB', e.g. 'add 4821 + 0967')."),
    model: str = typer.Option("counting", help="Built-in text model (counting, addition), accel model folder, or "
                                               "LLaDA/Dream id."),
    decoder: str = typer.Option("fast-dllm", help="llada, fast-dllm, window, adablock; options as "
                                                   "name:key=value (window:window=32:refresh=16)."),
    gen_length: int = typer.Option(256, help="Answer tokens."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a checkpoint's own code "
                                           "(LLaDA, Dream). Off by default."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cpu)."),
    mask_id: Optional[int] = typer.Option(None, help="Mask token id (default: the checkpoint's config, else its "
                                          "tokenizer's mask token)."),
    eos_stop: bool = typer.Option(False, "--eos-stop", help="Stop at the tokenizer's end-of-sequence token "
                                  "(later masks are filled with it)."),
):
    """Decode an answer with a masked-diffusion language model (built-in, LLaDA or Dream folder, ...)."""
    from accel.dllm import generate
    from accel.dllm.bench import parse_decoder
    from accel.dllm.task import TASKS

    with user_errors():
        if not prompt.strip():
            raise UsageError("the prompt is empty")
        config = parse_decoder(decoder)
        if model in TASKS:
            TASKS[model].parse_prompt(prompt)  # the built-in model's format, said plainly
        lm, tok = _load_text(model, device, trust_remote_code, mask_id)
        if tok is None:
            raise UsageError(f"{model} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
        eos = getattr(tok, "eos_id", None) if eos_stop else None
        if eos_stop and eos is None:
            raise UsageError("--eos-stop: the tokenizer has no end-of-sequence token")
        out = generate(lm, tok.prompt_ids(prompt), config, gen_length, delimiter_id=tok.index.get("\n"),
                       eos_id=eos)
    console.print(tok.decode(out.tokens), highlight=False, markup=False)
    s = out.stats
    console.print(f"[dim]{config.name}: {s.nfe} forwards, {s.positions} token-forwards, {s.seconds:.2f} s, "
                  f"{s.tokens_per_s:.0f} tokens/s[/dim]", highlight=False)


@bench_app.command("dllm")
def bench_dllm_cmd(
    model: Optional[str] = typer.Option(None, help="Built-in text model, accel model folder, LLaDA / Dream folder "
                                                   "(default: the task's built-in model)."),
    task: str = typer.Option("counting", help="Built-in task: counting ('count SSS by K') or addition (a chain of "
                                              "4-digit additions with carries, held-out problems)."),
    prompts: int = typer.Option(24, help="Number of problems."),
    seed: int = typer.Option(0, help="Picks the problem set."),
    gen_length: int = typer.Option(256, help="Answer tokens."),
    repeats: int = typer.Option(3, help="Timed passes over the prompts (decoders interleaved per prompt in each)."),
    decoders: Optional[str] = typer.Option(None, help="Comma-separated decoders with :key=value options; the first "
                                                       "is the baseline (default: the recorded sweep)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of accuracy vs speedup (needs matplotlib)."),
    mask_id: Optional[int] = typer.Option(None, help="Mask token id (default: the checkpoint's own)."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Tokens/s and exact match of each decoder on a built-in task, against the first (baseline) decoder: decoders
    interleaved per prompt, repeated; medians with spreads, exact match with its 95% interval."""
    from accel.dllm.bench import DEFAULT_DECODERS, bench_dllm, parse_decoder, plot_dllm
    from accel.dllm.task import get_task

    with user_errors():
        get_task(task)
        names = tuple(d.strip() for d in decoders.split(",") if d.strip()) if decoders else DEFAULT_DECODERS
        for name in names:
            parse_decoder(name)
        if prompts < 1 or repeats < 1 or not names:
            raise UsageError("--prompts and --repeats must be >= 1 and --decoders non-empty")
        check_outputs([json_out, plot], overwrite)
        state = record_state(json_out, allow_dirty)
        model = model or task
        lm, tok = _load_text(model, None, False, mask_id)
        if tok is None:
            raise UsageError(f"{model} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
        with _progress() as progress:
            bar = progress.add_task("decoding", total=(prompts * repeats + 1) * len(names))
            progress.advance(bar, len(names))  # the warm-up round is not reported
            rows = bench_dllm(lm, tok, prompts=prompts, seed=seed, gen_length=gen_length, decoders=names, task=task,
                              repeats=repeats, progress=lambda _: progress.advance(bar))
        rows = record_rows(rows, state, json_out, plot, plot_dllm)
    Console().print(_rows_table(rows, f"dLLM decoding, {task}: {prompts} problems, gen length {gen_length}, seed "
                                      f"{seed}, {repeats} repeats interleaved"))


def _rows_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("decoder", "tokens/s (median)", "speedup (spread)", "exact match [95% CI]", "token acc", "NFE",
                "token-fwd"):
        table.add_column(col)
    for r in rows:
        spread = "-" if r["speedup_spread"] is None else f"{r['speedup_spread']:.0%}"
        table.add_row(r["decoder"], f"{r['tokens_per_s']:.0f}", f"{r['speedup']:.2f}x ({spread})",
                      f"{r['accuracy']:.3f} [{r['accuracy_ci95_low']:.2f}, {r['accuracy_ci95_high']:.2f}]",
                      f"{r['token_accuracy']:.4f}", f"{r['nfe']:.0f}", f"{r['positions']:.0f}")
    return table

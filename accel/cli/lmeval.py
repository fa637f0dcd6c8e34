"""`accel lm-eval ARGS...`: lm-eval-harness's command line with accel's model type `accel-dllm` registered.

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

import typer
from rich.markup import escape

from accel.cli.main import UsageError, app, user_errors


@app.command("lm-eval", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lm_eval_cmd(ctx: typer.Context):
    """lm-eval with `--model accel-dllm` (arguments as lm-eval's own; `accel lm-eval --help` shows them).

    e.g. accel lm-eval --model accel-dllm --model_args path=/models/LLaDA-8B-Instruct,decoder=fast-dllm:threshold=0.9
    --tasks gsm8k --batch_size 8 --device cuda (docs/dllm.md). Needs pip install 'accel[lm-eval]'."""
    with user_errors():
        try:
            from accel.dllm.lm_eval import main
        except ImportError as e:  # escaped: the error line is rich markup, and the extra's name has brackets
            raise UsageError(escape(str(e))) from None
        main(list(ctx.args))

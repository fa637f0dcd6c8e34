"""lm-eval-harness model type `accel-dllm`: masked-diffusion LMs decoded by accel (accel.dllm.harness).

    accel lm-eval --model accel-dllm --model_args path=/models/LLaDA-8B-Instruct,decoder=fast-dllm:threshold=0.9 \\
        --tasks gsm8k --batch_size 8 --device cuda
    python -m accel.dllm.lm_eval --model accel-dllm ...          # the same, without accel's CLI

lm-eval 0.4 finds third-party model types only in its registry, which a plain `lm_eval` process never fills with
ours (it has no plugin entry point): hence the two commands above, which register `accel-dllm` and then run
lm-eval's own command line with the arguments as given. In Python, importing this module registers it:

    import accel.dllm.lm_eval, lm_eval
    lm_eval.simple_evaluate(model="accel-dllm", model_args="path=counting,gen_length=32", tasks=[...])

Run it with `-m` (as above), not by its file path: run as a script, its folder would come first on sys.path and this
file would stand in for lm-eval's package.

Model arguments (`--model_args key=value,...`): those of accel.dllm.harness.DLLMEvaluator (path, decoder,
gen_length, dtype, mask_id, eos_stop, mc_num, greedy_check, seed); `--batch_size` and `--device` as lm-eval's
(its command line's default device, cuda:0, falls back to the CPU with a warning when CUDA is not available, as
lm-eval's own HF model does).
One process: lm-eval's data-parallel launch (accelerate launch) is not supported.
"""

from __future__ import annotations

import logging
import sys

import torch

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import MODEL_REGISTRY, register_model
except ImportError as e:  # an optional dependency
    raise ImportError("accel.dllm.lm_eval needs lm-eval-harness: pip install 'accel[lm-eval]'") from e

from accel.dllm.harness import DLLMEvaluator, gen_request

NAME = "accel-dllm"


class AccelDLLM(LM):
    """lm-eval's LM over accel.dllm.harness.DLLMEvaluator (arguments there). max_batch_size, which lm-eval passes
    for batch_size='auto', is accepted and unused ('auto' is refused)."""

    def __init__(self, path: str | None = None, decoder: str = "fast-dllm", gen_length: int | None = None,
                 batch_size: int | str = 1, max_batch_size: int | None = None, device: str | None = None,
                 dtype: str | None = None, mask_id: int | None = None, eos_stop: bool = False, mc_num: int = 128,
                 greedy_check: bool = True, seed: int = 1234):
        super().__init__()
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line passes cuda:0 unless told otherwise; its own HF model falls back the same way
            logging.getLogger(__name__).warning("device %s: CUDA is not available, running on the CPU", device)
            device = "cpu"
        self.evaluator = DLLMEvaluator(path=path, decoder=decoder, gen_length=gen_length, batch_size=batch_size,
                                       device=device, dtype=dtype, mask_id=mask_id, eos_stop=eos_stop,
                                       mc_num=mc_num, greedy_check=greedy_check, seed=seed)
        self.path = str(path)
        self._device = next(self.evaluator.model.parameters()).device

    def generate_until(self, requests) -> list[str]:
        answers = self.evaluator.generate_until([gen_request(*r.args) for r in requests])
        for request, answer in zip(requests, answers):
            self.cache_hook.add_partial("generate_until", request.args, answer)
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = self.evaluator.loglikelihood([r.args for r in requests])
        for request, result in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        raise NotImplementedError("accel-dllm has no loglikelihood_rolling (perplexity tasks such as wikitext): a "
                                  "masked-diffusion LM gives a bound per continuation (loglikelihood), not the "
                                  "token-by-token probabilities those tasks chain; generate_until and "
                                  "loglikelihood tasks (gsm8k, mmlu, arc, hellaswag, ...) run")

    # --- chat templates (--apply_chat_template): a transformers tokenizer's own ---------------------------------

    def _hf_tokenizer(self):
        hf = getattr(self.evaluator.tokenizer, "tokenizer", None)
        if hf is None or not getattr(hf, "chat_template", None):
            raise ValueError(f"{self.path}: its tokenizer has no chat template (drop --apply_chat_template)")
        return hf

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._hf_tokenizer().apply_chat_template(chat_history, tokenize=False,
                                                        add_generation_prompt=add_generation_prompt)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self._hf_tokenizer().chat_template if chat_template else None

    @property
    def tokenizer_name(self) -> str:
        return self.path.replace("/", "__")

    def get_model_info(self) -> dict:
        """Recorded in lm-eval's results (config): the decoder and what its decoding spent."""
        t = self.evaluator.totals
        return {"accel_decoder": repr(self.evaluator.config), "accel_nfe": t.nfe, "accel_token_forwards": t.positions,
                "accel_decode_seconds": round(t.seconds, 3),
                "accel_tokens_per_s": t.tokens / t.seconds if t.seconds > 0 else None}


def register() -> None:
    """Make `accel-dllm` known to lm-eval's model registry (again, or from a second copy of this module as
    `python -m` makes one, is a no-op)."""
    if NAME not in MODEL_REGISTRY:
        register_model(NAME)(AccelDLLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line (`lm-eval [run] ARGS`) with `accel-dllm` registered."""
    from lm_eval.__main__ import cli_evaluate

    register()
    saved = sys.argv
    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


register()

if __name__ == "__main__":
    main()

"""The shipped masked-diffusion LM loads (safetensors + config + vocabulary) and solves its task."""

import pytest
import torch

from accel.dllm import generate
from accel.dllm.models import builtin_text_model_path, load_text_model
from accel.dllm.task import problem_set, score


def test_builtin_text_model_decodes_its_task():
    model, tok = load_text_model("counting")
    assert builtin_text_model_path().joinpath("model.safetensors").is_file()
    problems = problem_set(6, seed=123)
    for decoder in ("llada", "fast-dllm"):
        fracs = []
        for p in problems:
            out = generate(model, tok.prompt_ids(p.prompt), decoder, 64, delimiter_id=tok.index["\n"])
            fracs.append(score(tok.decode(out.tokens), p, 64)[1])
        assert sum(fracs) / len(fracs) >= 0.9, (decoder, fracs)
    assert torch.is_grad_enabled()  # generate's no_grad does not leak


def test_unknown_builtin_text_model():
    with pytest.raises(ValueError, match="allowed: counting"):
        builtin_text_model_path("gpt")

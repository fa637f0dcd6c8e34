"""The shipped masked-diffusion LM loads (safetensors + config + vocabulary) and solves its task."""

import pytest
import torch

from accel.dllm import generate
from accel.dllm.models import builtin_text_model_path, load_text_model
from accel.dllm.task import problem_set, score


def _shipped() -> bool:
    try:
        builtin_text_model_path()
        return True
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not _shipped(), reason="the built-in text model is not shipped yet (see the README)")
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


def test_unknown_or_missing_builtin_text_model():
    with pytest.raises(ValueError, match="allowed: counting"):
        builtin_text_model_path("gpt")
    if not _shipped():
        with pytest.raises(FileNotFoundError, match="not shipped yet"):
            load_text_model("counting")
    assert torch.is_grad_enabled()  # generate's no_grad does not leak

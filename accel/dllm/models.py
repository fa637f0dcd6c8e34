"""Loading text models for the decoders: the built-in masked-diffusion LM, its folders, transformers checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

BUILTIN_TEXT = {"counting": "counting-mdlm"}


def builtin_text_model_path(name: str = "counting") -> Path:
    if name not in BUILTIN_TEXT:
        raise ValueError(f"unknown built-in text model {name!r}; allowed: {', '.join(BUILTIN_TEXT)}")
    from importlib.resources import files

    path = Path(str(files("accel.assets"))) / BUILTIN_TEXT[name]
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in text model {name!r} is missing at {path}; reinstall accel or train "
                                "it with scripts/train_mdlm.py (assets/counting-mdlm/README.md)")
    return path


def load_text_model(model: str = "counting", device: str | None = None, trust_remote_code: bool = False,
                    kind: str = "llada"):
    """(model, tokenizer): a built-in name, a folder of accel's MaskedDiffusionLM, or a LLaDA / Dream checkpoint
    (folder or hub id; see accel.dllm.hf)."""
    path = builtin_text_model_path(model) if model in BUILTIN_TEXT else Path(model)
    config = path / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == "MaskedDiffusionLM":
        from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM

        return MaskedDiffusionLM.from_pretrained(path, device=device or "cpu"), CharTokenizer.load(path)
    from accel.dllm.hf import load_hf_dllm

    return load_hf_dllm(str(model), kind=kind, trust_remote_code=trust_remote_code, device=device)

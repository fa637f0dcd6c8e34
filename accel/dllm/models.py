"""Loading text models for the decoders: the built-in masked-diffusion LM, its folders, transformers checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

# Built-in text models by task name (accel.dllm.task.TASKS): the folder under assets/ and how it was (or is to be)
# trained. addition-mdlm is registered before it is trained: until then loading it says how to train it.
BUILTIN_TEXT = {"counting": "counting-mdlm", "addition": "addition-mdlm"}
TRAINING = {"counting": "assets/counting-mdlm/README.md", "addition": "assets/addition-mdlm.TRAINING.md"}


def builtin_text_model_path(name: str = "counting") -> Path:
    if name not in BUILTIN_TEXT:
        raise ValueError(f"unknown built-in text model {name!r}; allowed: {', '.join(BUILTIN_TEXT)}")
    from importlib.resources import files

    path = Path(str(files("accel.assets"))) / BUILTIN_TEXT[name]
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"the built-in text model {name!r} is not at {path} (not trained yet, or not "
                                f"installed): train it with scripts/train_mdlm.py --task {name} (commands in "
                                f"{TRAINING[name]})")
    return path


def load_text_model(model: str = "counting", device: str | None = None, trust_remote_code: bool = False,
                    kind: str = "llada", mask_id: int | None = None, dtype=None):
    """(model, tokenizer) from a built-in name, a folder of accel's MaskedDiffusionLM, an official LLaDA or
    Dream checkpoint folder (loaded natively, no remote code: accel.dllm.native; every decoder and cache runs),
    or another transformers masked LM (folder or hub id, full forwards only: accel.dllm.hf).

    mask_id: override the mask token (default: the config's, else the tokenizer's). dtype: of the native weights
    (default: as stored).
    """
    path = builtin_text_model_path(model) if model in BUILTIN_TEXT else Path(model)
    config = path / "config.json"
    raw = json.loads(config.read_text()) if config.is_file() else None
    if raw is not None and raw.get("_class_name") == "MaskedDiffusionLM":
        from accel.pipelines.mdlm import CharTokenizer, MaskedDiffusionLM

        return MaskedDiffusionLM.from_pretrained(path, device=device or "cpu"), CharTokenizer.load(path)
    if raw is not None:
        from accel.dllm.native import architecture, load_native

        if architecture(raw) is not None:
            return load_native(path, device=device, dtype=dtype, mask_id=mask_id)
    from accel.dllm.hf import load_hf_dllm

    return load_hf_dllm(str(model), kind=kind, trust_remote_code=trust_remote_code, device=device, mask_id=mask_id)

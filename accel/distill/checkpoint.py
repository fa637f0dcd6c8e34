"""Checkpoints that resume bit for bit: tensors in one safetensors file, everything else in JSON (no pickle).

A checkpoint is a folder `step-NNNNNNNN` (tensors.safetensors + state.json) written under a temporary name and
renamed, then named in `latest.json` (replaced atomically), then older folders are removed: an interrupted save
leaves the previous checkpoint intact and current.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from accel.evals.io import write_json

POINTER = "latest.json"


# -- optimizer state ---------------------------------------------------------------------------------------------


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str, gather=None
                      ) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict split into tensors ({prefix}.{param index}.{key}) and a JSON-able rest; `gather`
    turns a sharded state into a whole one (FSDP)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                value = gather(value) if gather is not None else value
                tensors[f"{prefix}.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    keys = {str(idx): list(state) for idx, state in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars, "keys": keys}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                        prefix: str, place=None) -> None:
    """The inverse of optimizer_to_flat; `place(value, param)` shards a whole state like its parameter (FSDP)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for idx, keys in meta["keys"].items():
        scalars = meta["scalars"].get(idx, {})
        state[int(idx)] = {k: scalars[k] if k in scalars else tensors[f"{prefix}.{idx}.{k}"] for k in keys}
        if place is not None:
            state[int(idx)] = {k: place(v, params[int(idx)]) if torch.is_tensor(v) else v
                               for k, v in state[int(idx)].items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -- random states -----------------------------------------------------------------------------------------------


def rng_to_flat(generator: torch.Generator, choices: random.Random, prompts: np.random.Generator
                ) -> tuple[dict[str, torch.Tensor], dict]:
    """The random states a run draws from: its torch.Generator (noise), the python Random of its shared choices,
    the numpy Generator of its prompts."""
    tensors = {"rng.generator": generator.get_state()}
    version, internal, gauss = choices.getstate()
    return tensors, {"random": [version, list(internal), gauss], "numpy": prompts.bit_generator.state}


def rng_from_flat(tensors: dict[str, torch.Tensor], meta: dict, generator: torch.Generator, choices: random.Random,
                  prompts: np.random.Generator) -> None:
    generator.set_state(tensors["rng.generator"])
    version, internal, gauss = meta["random"]
    choices.setstate((version, tuple(internal), gauss))
    prompts.bit_generator.state = meta["numpy"]


# -- folders -----------------------------------------------------------------------------------------------------


def save(folder: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint `step` under folder atomically and make it the latest; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".step-{step:08d}-"))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        final = folder / f"step-{step:08d}"
        if final.exists():  # a re-save of the same step (never the only copy: the pointer moves last)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(folder / POINTER, {"step": step, "folder": final.name})
    for old in folder.glob("step-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(folder: str | Path) -> Path | None:
    """The latest complete checkpoint folder under folder, or None."""
    pointer = Path(folder) / POINTER
    if not pointer.is_file():
        return None
    path = Path(folder) / json.loads(pointer.read_text())["folder"]
    if not (path / "state.json").is_file():
        raise ValueError(f"{pointer} names {path.name}, which is incomplete; remove {folder} to start over")
    return path


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    return load_file(str(path / "tensors.safetensors")), json.loads((path / "state.json").read_text())


LOG = "log.jsonl"


def write_log(folder: str | Path, log: list[dict]) -> Path:
    """The loss log (one JSON object per iteration) as of the latest checkpoint, replaced atomically."""
    from accel.evals.io import write_atomic

    path = Path(folder) / LOG
    write_atomic(path, "".join(json.dumps(entry) + "\n" for entry in log).encode())
    return path


def check_options(saved: dict, now: dict, path, session: frozenset[str], where: str) -> None:
    """ValueError naming every option (other than the `session` ones, free to change) in which a script's run now
    differs from the one that wrote the checkpoint at path: a resume with another recipe would silently mix two.
    `where` names the option that picks another checkpoint folder (e.g. "--out")."""
    differ = sorted(k for k in set(saved) | set(now) if k not in session and saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"--{k.replace('_', '-')}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
        raise ValueError(f"{path} is a checkpoint of a run with other options ({detail}); resume it with its own "
                         f"options or use another {where}")

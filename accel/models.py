"""Finding and loading pipelines: the built-in shapes model, local diffusers folders, hub ids."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

BUILTIN = {"shapes": "shapes-t2i", "shapes-video": "shapes-t2v", "shapes-moe": "shapes-moe-t2i"}
# Distilled few-step students of the built-in models (accel distill; scripts/train_fewstep.py): name -> (teacher,
# folder in accel.assets). Listed by builtin_students only where the folder has been trained and shipped.
STUDENTS = {"shapes-4step": ("shapes", "shapes-t2i-4step"), "shapes-2step": ("shapes", "shapes-t2i-2step"),
            "shapes-4step-dmd": ("shapes", "shapes-t2i-4step-dmd"),
            "shapes-video-4step": ("shapes-video", "shapes-t2v-4step"),
            "shapes-video-4step-ar": ("shapes-video", "shapes-t2v-4step-ar")}


def _assets() -> Path:
    from importlib.resources import files

    return Path(str(files("accel.assets")))


def builtin_students(teacher: str) -> list[str]:
    """Names of the shipped students of a built-in teacher ("shapes", "shapes-video")."""
    return [name for name, (t, folder) in STUDENTS.items()
            if t == teacher and (_assets() / folder / "model_index.json").is_file()]


def builtin_model_path(name: str = "shapes") -> Path:
    """Folder of a built-in model (a diffusers pipeline folder shipped in accel.assets)."""
    if name not in BUILTIN and name not in STUDENTS:
        raise ValueError(f"unknown built-in model {name!r}; allowed: {', '.join([*BUILTIN, *STUDENTS])}")
    path = _assets() / (BUILTIN[name] if name in BUILTIN else STUDENTS[name][1])
    if not (path / "model_index.json").is_file():
        script = ("train_fewstep.py" if name in STUDENTS else "train_shapes_video.py" if name == "shapes-video" else
                  "train_shapes_moe.py" if name == "shapes-moe" else "train_shapes.py")
        raise FileNotFoundError(f"built-in model {name!r} is missing at {path}; reinstall accel or train it with "
                                f"scripts/{script}")
    return path


def _import_accel_components(index: dict, folder: str) -> None:
    """Import the accel.pipelines modules a pipeline folder names as component libraries (the MoE and causal
    shapes transformers live there), so that diffusers resolves them; diffusers imports no module a folder names.
    Only accel's own installed modules are imported: nothing from the folder runs."""
    for value in index.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("accel."):
            if not value[0].startswith("accel.pipelines."):
                raise ValueError(f"{folder} names the component library {value[0]!r}; accel loads its own components "
                                 "from accel.pipelines only")
            try:
                importlib.import_module(value[0])
            except ModuleNotFoundError:
                raise ValueError(f"{folder} names the component library {value[0]!r}, which this accel version does "
                                 "not have") from None


def load_pipeline(model: str = "shapes", device: str | None = None, dtype=None):
    """Load a pipeline: a built-in name ("shapes"), a local diffusers folder, or a hub id (at sites with access).

    Weights load with safetensors only; remote code is never trusted here.
    """
    import torch

    if model in BUILTIN or model in STUDENTS:
        model = str(builtin_model_path(model))
    index = Path(model) / "model_index.json"
    if Path(model).exists() and not index.is_file():
        raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
    kwargs = {"use_safetensors": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    meta = json.loads(index.read_text()) if index.is_file() else {}
    _import_accel_components(meta, model)
    name = meta.get("_class_name")
    if name == "ShapesPipeline":
        from accel.pipelines.shapes import ShapesPipeline

        pipe = ShapesPipeline.from_pretrained(model, **kwargs)
    elif name == "ShapesVideoPipeline":
        from accel.pipelines.shapes_video import ShapesVideoPipeline

        pipe = ShapesVideoPipeline.from_pretrained(model, **kwargs)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe = pipe.to(torch.device(device))
    return pipe

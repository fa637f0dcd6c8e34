"""Distillation over 2 CPU processes (gloo, as under `accelerate launch`): the processes share every random choice
of a step and average gradients, so they hold the same weights after every update; and LoRA students (peft)."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accel.testing import jitter_

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, out: Path, mode: str = "") -> list[dict]:
    port, procs = _free_port(), []
    for rank in range(world):
        env = dict(os.environ, WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), mode], env=env,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return [torch.load(f"{out}.{rank}") for rank in range(world)]


def test_two_processes_share_choices_and_stay_in_sync(tmp_path):
    rank0, rank1 = _run(2, tmp_path / "two")
    (single,) = _run(1, tmp_path / "one")
    assert rank0["world"] == rank1["world"] == 2 and single["world"] == 1
    assert rank0["exits"] == rank1["exits"] and len(rank0["exits"]) == 6  # generator + critic rollouts, 3 steps
    for role in ("student", "critic"):
        for name, value in rank0[role].items():
            assert torch.equal(value, rank1[role][name]), (role, name)
    # each process drew its own prompts and noise, so the averaged update differs from one process's
    assert any(not torch.equal(v, single["student"][k]) for k, v in rank0["student"].items())


def test_fsdp_trains_like_replicated_processes_and_checkpoints_whole(tmp_path):
    """Sharded (FSDP2) and replicated training over 2 processes are the same update (mean gradient, global clip
    norm, elementwise AdamW), so they end at the same weights; the checkpoint holds whole tensors and resumes into
    shards; the exported student is one whole model that samples."""
    from accel.api import accelerate_pipeline
    from accel.distill import checkpoint as ckpt
    from accel.models import load_pipeline

    replicated = _run(2, tmp_path / "ddp")[0]
    rank0, rank1 = _run(2, tmp_path / "fsdp", "fsdp")
    assert rank0["sharded"] and rank0["exits"] == replicated["exits"]
    for role in ("student", "critic"):
        for name, value in replicated[role].items():
            torch.testing.assert_close(rank0[role][name], value, rtol=1e-4, atol=1e-5, msg=f"{role} {name}")
            assert torch.equal(rank0[role][name], rank1[role][name])
            # resumed from the checkpoint into a fresh sharded run: bit for bit
            assert torch.equal(rank0["resumed"][role][name], rank0[role][name])
    assert all(torch.equal(a, b) for a, b in zip(rank0["resumed"]["exp_avg"], rank0["exp_avg"]))
    tensors, state = ckpt.load(ckpt.latest(tmp_path / "fsdp.ckpt"))
    assert state["config"]["fsdp"] and state["step"] == 3
    name, value = next(iter(rank0["student"].items()))
    assert torch.equal(tensors[f"student.{name}"], value)  # whole, not one process's shard
    student = load_pipeline(str(tmp_path / "fsdp.student"))
    for name, value in rank0["ema"].items():
        assert torch.equal(student.transformer.get_parameter(name), value), name
    pipe = accelerate_pipeline(student)
    image = pipe("a photo of a circle", sampler="fewstep", num_inference_steps=2, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert pipe.stats.nfe == 2 and torch.isfinite(image).all()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lora", "ar"])
def test_fsdp_with_lora_and_autoregressive_students(tmp_path, kind):
    """LoRA adapters inside the sharded blocks; the chunk-causal video student, whose blocks run outside their
    forward (its model is one FSDP unit, gathered around begin / forward_chunk)."""
    from safetensors.torch import load_file

    if kind == "lora" and importlib.util.find_spec("peft") is None:
        pytest.skip("needs peft (pip install peft)")
    sharded, replicated = _run(2, tmp_path / "fsdp", f"fsdp-{kind}")[0], _run(2, tmp_path / "ddp", kind)[0]
    assert sharded["sharded"] and (kind != "lora" or all("lora_" in name for name in sharded["student"]))
    for name, value in replicated["student"].items():
        torch.testing.assert_close(sharded["student"][name], value, rtol=1e-4, atol=1e-5)
    weights = [load_file(tmp_path / f"{m}.student" / "transformer" / "diffusion_pytorch_model.safetensors")
               for m in ("fsdp", "ddp")]
    assert weights[0].keys() == weights[1].keys() and not any("lora" in k for k in weights[0])  # merged
    for k, v in weights[1].items():
        torch.testing.assert_close(weights[0][k], v, rtol=1e-4, atol=1e-5)


def test_fsdp_needs_several_processes():
    from accel.distill import DistillConfig, Distiller
    from accel.pipelines.shapes import build_shapes_pipeline

    teacher = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                                    sample_size=16, seed=0)
    with pytest.raises(ValueError, match="several processes"):
        Distiller(teacher, DistillConfig(steps=1, fsdp=True))
    with pytest.raises(ValueError, match="fsdp must be True or False"):
        DistillConfig(fsdp="yes")


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft (pip install peft)")
def test_lora_student_trains_adapters_only_and_exports_merged(tmp_path):
    from safetensors.torch import load_file

    from accel.api import accelerate_pipeline
    from accel.distill import DistillConfig, Distiller, export_student
    from accel.models import load_pipeline
    from accel.pipelines.shapes import build_shapes_pipeline

    teacher = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                                    sample_size=16, seed=0)
    jitter_(teacher.transformer, seed=2)
    before = {k: v.clone() for k, v in teacher.transformer.state_dict().items()}
    d = Distiller(teacher, DistillConfig(steps=2, batch_size=1, critic_per_generator=1, lr_generator=1e-2,
                                         lr_critic=1e-2, ema_start=0, lora_rank=2,
                                         call_args={"height": 16, "width": 16}))
    assert d.params["student"] and all("lora_" in name for name in d.params["student"])
    d.fit()
    out = export_student(d, tmp_path / "student")
    weights = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not any("lora" in k for k in weights) and set(weights) == set(before)
    moved = [k for k in weights if not torch.equal(weights[k], before[k])]
    assert moved and all(k.split(".")[-2] in ("to_q", "to_k", "to_v", "to_out") for k in moved), moved
    pipe = accelerate_pipeline(load_pipeline(str(out)))
    pipe("a photo of a circle", sampler="fewstep", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert pipe.stats.nfe == 2

"""One process of the 2-process distillation tests (tests/distill/test_parallel.py): trains a tiny student and saves
its weights, the log and this process's rollout choices to OUT.<rank>. Modes (second argument): "" (replicated),
"fsdp" (sharded with FSDP2; the run also checkpoints, resumes that checkpoint in a fresh sharded Distiller and
exports the student to OUT.student), "lora" / "fsdp-lora" (a LoRA student, replicated or sharded, exported) and
"ar" / "fsdp-ar" (the same for an autoregressive student of the built-in video model)."""

import sys

import torch

from accel.distill import ARConfig, DistillConfig, Distiller, export_student
from accel.distill import checkpoint as ckpt
from accel.distill.parallel import Processes, full
from accel.pipelines.shapes import build_shapes_pipeline
from accel.testing import jitter_


def teacher():
    pipe = build_shapes_pipeline(width=32, num_layers=2, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                                 sample_size=16, seed=0)
    jitter_(pipe.transformer, seed=2)
    return pipe


def video_teacher():
    from accel.pipelines.shapes_video import build_shapes_video_pipeline

    return build_shapes_video_pipeline(width=32, num_layers=2, text_hidden=32, text_layers=1, num_frames=4,
                                       sample_size=8, patch_frames=1, seed=0)


def whole(d: Distiller, role: str) -> dict[str, torch.Tensor]:
    return {k: full(v.detach()).clone() for k, v in d.params[role].items()}


def main(out: str, mode: str = "") -> None:
    torch.set_num_threads(1)
    fsdp = mode.startswith("fsdp")
    lora = {"lora_rank": 2} if mode.endswith("lora") else {}
    ar = mode.endswith("ar")
    model = {"nfe": (4, 2), "shift": 3.0, "call_args": {"num_frames": 4, "height": 8, "width": 8},
             "ar": ARConfig(chunk_frames=2)} if ar else {"call_args": {"height": 16, "width": 16}}
    config = DistillConfig(steps=3, batch_size=1, critic_per_generator=1, lr_generator=1e-3, lr_critic=1e-3,
                           ema_start=0, fsdp=fsdp, **lora, **model)
    processes = Processes(cpu=True)
    d = Distiller(video_teacher() if ar else teacher(), config, processes=processes,
                  checkpoint_dir=f"{out}.ckpt" if fsdp else None)
    exits = []
    grid = d._grid

    def recording_grid():  # the rollouts' exit indices, which rank 0 draws for every process
        times, sigmas, e = grid()
        exits.append(e)
        return times, sigmas, e

    d._grid = recording_grid
    d.fit()
    result = {"student": whole(d, "student"), "critic": whole(d, "critic"), "exits": exits, "log": d.log,
              "world": processes.world}
    if fsdp and not lora and not ar:
        again = Distiller(teacher(), config, processes=processes)
        again.load_checkpoint(ckpt.latest(f"{out}.ckpt"))
        result["resumed"] = {"student": whole(again, "student"), "critic": whole(again, "critic"),
                             "exp_avg": [full(again.optimizers["student"].state[p]["exp_avg"]).clone()
                                         for p in again.params["student"].values()]}
        result["exp_avg"] = [full(d.optimizers["student"].state[p]["exp_avg"]).clone()
                             for p in d.params["student"].values()]
    result["sharded"] = all(type(p).__name__ == "DTensor" for p in d.params["student"].values())
    if fsdp or lora or ar:
        export_student(d, f"{out}.student")
        result["ema"] = {k: full(v).clone() for k, v in d.ema_params.items()}
    torch.save(result, f"{out}.{processes.rank}")


if __name__ == "__main__":
    main(*sys.argv[1:])

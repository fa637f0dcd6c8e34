"""One process of the 2-process distillation test (tests/distill/test_parallel.py): trains a tiny student and saves
its weights, the log and this process's rollout choices to OUT.<rank>."""

import sys

import torch

from accel.distill import DistillConfig, Distiller
from accel.distill.parallel import Processes
from accel.pipelines.shapes import build_shapes_pipeline


def main(out: str) -> None:
    torch.set_num_threads(1)
    teacher = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1,
                                    sample_size=16, seed=0)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in teacher.transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = DistillConfig(steps=3, batch_size=1, critic_per_generator=1, lr_generator=1e-3, lr_critic=1e-3,
                           ema_start=0, call_args={"height": 16, "width": 16})
    processes = Processes(cpu=True)
    d = Distiller(teacher, config, processes=processes)
    exits = []
    draw = d._exit_index
    d._exit_index = lambda: exits.append(draw()) or exits[-1]
    d.fit()
    torch.save({"student": {k: v.detach().clone() for k, v in d.params["student"].items()},
                "critic": {k: v.detach().clone() for k, v in d.params["critic"].items()},
                "exits": exits, "log": d.log, "world": processes.world}, f"{out}.{processes.rank}")


if __name__ == "__main__":
    main(sys.argv[1])

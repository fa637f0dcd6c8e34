"""Few-step sampling with a distilled student (DMD2 / Self Forcing / Salt multistep rule).

A student predicts x0 from x at a handful of fixed noise levels. Its step lists are the papers' timesteps in
[0, 1000] (4 NFE: 1000, 750, 500, 250; 2 NFE: 1000, 500), divided by 1000 and warped with the SD3 time shift
sigma' = s sigma / (1 + (s - 1) sigma) (Self-Forcing issue #38: uniform before the warp is intended). Two update
rules between grid points:
- "renoise" (the papers'): x0 = x - sigma v, then x_next = (1 - sigma_next) x0 + sigma_next eps with fresh noise;
- "euler": x_next = x + (sigma_next - sigma) v (deterministic; the same x0 at the last step).
The sample is the last step's x0. A student runs without classifier-free guidance (the teacher's guidance is baked
in by distillation): 1 NFE per step. `StudentSpec` is what a student folder records (student.json) so a wrapped
pipeline knows which step counts it was trained for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from accel.config import check_choice
from accel.core.denoiser import Cond, Denoiser
from accel.core.grid import TimeGrid

FEWSTEP_RULES = ("renoise", "euler")
# The papers' step lists (timesteps in [0, 1000] before the shift warp), by NFE.
TIMESTEPS = {1: (1000,), 2: (1000, 500), 4: (1000, 750, 500, 250), 8: (1000, 875, 750, 625, 500, 375, 250, 125)}
STUDENT_FILE = "student.json"


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift, the one diffusers' FlowMatchEulerDiscreteScheduler applies: s sigma / (1 + (s - 1) sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def fewstep_grid(timesteps, shift: float = 1.0) -> TimeGrid:
    """The student's grid: timesteps (decreasing, in (0, 1000]) / 1000, shift-warped, then 0."""
    t = torch.tensor([float(v) for v in timesteps], dtype=torch.float32)
    if t.numel() < 1 or not torch.all((t > 0) & (t <= 1000)) or not torch.all(t[:-1] > t[1:]):
        raise ValueError(f"timesteps must be strictly decreasing values in (0, 1000], got {list(timesteps)}")
    if not (shift > 0):
        raise ValueError(f"shift must be > 0, got {shift}")
    return TimeGrid(torch.cat([shift_sigmas(t / 1000, shift), torch.zeros(1)]))


@dataclass(frozen=True)
class StudentSpec:
    """What a distilled student was trained for: its step lists by NFE (timesteps in [0, 1000]), the shift that
    warps them, the update rule, and where it came from (method "dmd" / "sc-dmd", or "ar" for an
    autoregressive student trained with Salt's recipe; teacher, the teacher's CFG scale
    that distillation baked in). Saved as student.json in the student's pipeline folder."""

    timesteps: dict[int, tuple[int, ...]] = field(default_factory=lambda: {4: TIMESTEPS[4], 2: TIMESTEPS[2]})
    shift: float = 1.0
    rule: str = "renoise"
    method: str = "sc-dmd"
    teacher: str = ""
    teacher_guidance: float | None = None
    # Pipeline call arguments the student was trained with, applied where the caller leaves them out (for CFG
    # families {"guidance_scale": 1.0}: the student runs one forward per step).
    call_defaults: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("rule", self.rule, FEWSTEP_RULES)
        if not self.timesteps:
            raise ValueError("a student needs at least one step list")
        for nfe, ts in self.timesteps.items():
            if len(ts) != nfe:
                raise ValueError(f"step list for {nfe} NFE has {len(ts)} entries: {list(ts)}")
            fewstep_grid(ts, self.shift)  # validates the values

    @property
    def nfes(self) -> list[int]:
        return sorted(self.timesteps)

    def grid(self, nfe: int) -> TimeGrid:
        if nfe not in self.timesteps:
            raise ValueError(f"this student was trained for {', '.join(map(str, self.nfes))} steps, not {nfe}; "
                             "pass num_inference_steps as one of those")
        return fewstep_grid(self.timesteps[nfe], self.shift)

    def save(self, folder: str | Path) -> Path:
        """Write student.json into folder (atomically: a temporary file renamed over it)."""
        import os
        import tempfile

        data = asdict(self) | {"timesteps": {str(k): list(v) for k, v in self.timesteps.items()}}
        path = Path(folder) / STUDENT_FILE
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".student-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> StudentSpec:
        path = Path(folder) / STUDENT_FILE
        data = json.loads(path.read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {', '.join(sorted(unknown))}")
        data["timesteps"] = {int(k): tuple(int(t) for t in v) for k, v in data.get("timesteps", {}).items()}
        return cls(**data)


def find_student(pipe) -> StudentSpec | None:
    """The StudentSpec of a pipeline loaded from a student folder (student.json next to model_index.json), set on
    the pipeline as `accel_student` or found through its config's _name_or_path; None for any other pipeline."""
    spec = getattr(pipe, "accel_student", None)
    if spec is not None:
        return spec
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if name and (Path(name) / STUDENT_FILE).is_file():
        return StudentSpec.load(name)
    return None


def fewstep_sample(denoiser: Denoiser, x: torch.Tensor, grid: TimeGrid, cond: Cond, rule: str = "renoise",
                   generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Run a student over grid (its last sigma 0): x0 prediction at each point, re-noised (fresh noise from
    generator) or Euler-stepped to the next. Returns the last x0, in x's dtype. callback(i, x) after each step."""
    check_choice("rule", rule, FEWSTEP_RULES)
    sigmas = grid.sigmas.to(x.device)
    for i in range(grid.num_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = fewstep_update(x, denoiser.velocity(x, sigma, cond), sigma, sigma_next, rule, generator)
        if callback is not None:
            callback(i, x)
    return x


def fewstep_stream(chunked, x: torch.Tensor, grid: TimeGrid, rule: str = "renoise",
                   generator: torch.Generator | None = None, callback=None):
    """Run a chunk-causal student over grid one chunk at a time (Self Forcing's sampler): each chunk from its part
    of the noise x through every step against the cache of the chunks before it, then committed (run on its clean
    result at sigma 0 to write its K/V) unless it is the last. Yields the finished chunks in order; `chunked` is
    what a causal adapter's `chunked(cond, x)` returns. callback(chunk, step, x_chunk) after each step."""
    check_choice("rule", rule, FEWSTEP_RULES)
    sigmas = grid.sigmas.to(x.device)
    for k in range(chunked.num_chunks):
        xk = chunked.chunk(x, k)
        for i in range(grid.num_steps):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            xk = fewstep_update(xk, chunked.velocity(k, xk, sigma), sigma, sigma_next, rule, generator)
            if callback is not None:
                callback(k, i, xk)
        if k < chunked.num_chunks - 1:
            chunked.commit(k, xk)
        yield xk


def fewstep_update(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, rule: str = "renoise",
                   generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
    """One move of a student between grid points, in float32, cast back to x's dtype: Euler, or (rule "renoise")
    its x0 = x - sigma v re-noised to sigma_next with fresh noise from generator, or with `eps` when given (a
    trainer that must reuse the noise) (Euler onto sigma_next = 0)."""
    if rule == "euler" or float(sigma_next) == 0.0:
        return (x.float() + (sigma_next - sigma) * v.float()).to(x.dtype)
    x0 = x.float() - sigma * v.float()
    if eps is None:
        device = x.device if generator is None else generator.device
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float32, device=device)
    return ((1 - sigma_next) * x0 + sigma_next * eps.float().to(x.device)).to(x.dtype)

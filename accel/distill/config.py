"""DistillConfig: every option of a few-step distillation run, validated at the boundary."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from accel.config import check_choice
from accel.schedulers.fewstep import FEWSTEP_RULES, TIMESTEPS

METHODS = ("dmd", "sc-dmd")
# Salt's default SC weight (lambda_SC); plain DMD has no SC term.
SC_WEIGHT = {"dmd": 0.0, "sc-dmd": 0.2}
# Call arguments the trainer sets itself; call_args may not override them.
RESERVED_CALL_ARGS = frozenset({"prompt", "generator", "latents", "guidance_scale", "num_inference_steps",
                                "output_type", "return_dict", "num_images_per_prompt", "num_videos_per_prompt"})
# Fields that may change when a run resumes from its checkpoint (everything else must match).
# fsdp too: a checkpoint holds whole tensors either way.
RESUMABLE_FIELDS = frozenset({"steps", "checkpoint_every", "fsdp"})


def _positive(name: str, value, integer: bool = False, zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float))
    if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} {'>= 0' if zero else '> 0'}, got {value!r}")


def check_mixed_steps(value) -> dict[int, float]:
    """{step count: probability} with int keys (JSON gives strings), or a ValueError naming what is allowed."""
    try:
        steps = {int(k): float(v) for k, v in dict(value).items()}
    except (TypeError, ValueError):
        steps = {}
    if not steps or any(k not in TIMESTEPS for k in steps) or any(not v >= 0 for v in steps.values()) \
            or not math.isclose(sum(steps.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"mixed_steps must map step counts among {', '.join(map(str, TIMESTEPS))} to "
                         f"probabilities summing to 1, got {value!r}")
    return steps


def parse_mixed_steps(text: str) -> dict[int, float]:
    """"8:0.4,4:0.4,2:0.2" (the command lines' form) -> {8: 0.4, 4: 0.4, 2: 0.2}, checked."""
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        steps = {int(k): float(v) for k, v in pairs}
    except ValueError:
        raise ValueError(f"mixed steps are written STEPS:PROBABILITY,..., e.g. 8:0.4,4:0.4,2:0.2; got {text!r}") \
            from None
    return check_mixed_steps(steps)


# Salt's mixed-step rollouts: step count -> probability (its configs' scfm_step_probs).
MIXED_STEPS = {8: 0.4, 4: 0.4, 2: 0.2}
# Cache-conditioned alignment: a low-step rollout -> the denser reference rollout it is aligned to. Salt's released
# code aligns only 2-step rollouts (to 4 steps; its 4 -> 8 branch is disabled); the paper's text also names 4 -> 8.
ALIGN_PAIRS = {"released": {2: 4}, "paper": {2: 4, 4: 8}}


@dataclass(frozen=True)
class ARConfig:
    """Salt's cache-distribution-aware training of an autoregressive (chunk-causal) student.

    chunk_frames: token frames per chunk of the causal student (accel.pipelines.shapes_causal).
    mixed_steps: {step count: probability} of each rollout's schedule (TIMESTEPS lists); SC only on 8-step ones.
    align: "released" (2 -> 4) or "paper" (2 -> 4 and 4 -> 8) reference pairs, or "off".
    align_weight, align_margin: the token-relation (per-frame Gram matrix of teacher features) loss's weight and
        margin delta; align_start: the iteration it starts at; align_block: the teacher block whose output
        features are compared (negative counts from the end); align_t_max: the re-noising timestep is drawn in
        [0, align_t_max) of 1000 and shift-warped.
    """

    chunk_frames: int = 1
    mixed_steps: dict[int, float] = field(default_factory=lambda: dict(MIXED_STEPS))
    align: str = "released"
    align_weight: float = 0.1
    align_margin: float = 0.1
    align_start: int = 700
    align_block: int = -1
    align_t_max: int = 200

    def __post_init__(self):
        _positive("chunk_frames", self.chunk_frames, integer=True)
        object.__setattr__(self, "mixed_steps", check_mixed_steps(self.mixed_steps))
        check_choice("align", self.align, (*ALIGN_PAIRS, "off"))
        _positive("align_weight", self.align_weight, zero=True)
        _positive("align_margin", self.align_margin, zero=True)
        _positive("align_start", self.align_start, integer=True, zero=True)
        _positive("align_t_max", self.align_t_max, integer=True)
        if self.align_t_max > 1000:
            raise ValueError(f"align_t_max must be in (0, 1000], got {self.align_t_max}")
        if not isinstance(self.align_block, int):
            raise ValueError(f"align_block must be an int block index, got {self.align_block!r}")

    @property
    def align_pairs(self) -> dict[int, int]:
        return {} if self.align == "off" else ALIGN_PAIRS[self.align]


@dataclass(frozen=True)
class DistillConfig:
    """Options of `distill` (DMD2, Yin et al. 2024; Salt's SC-DMD, Ge et al. 2026; Self Forcing's ODE init).

    method: "dmd" (4-point training grid: the inference steps) or "sc-dmd" (Salt: the 8-point training grid and
        the self-consistency term with weight sc_weight, default 0.2).
    steps: DMD iterations (each trains the critic; every critic_per_generator-th also the generator), after
        ode_init_steps of ODE-pair regression.
    nfe: the step counts the student is trained for (timesteps of accel.schedulers.fewstep.TIMESTEPS).
    guidance: the teacher's CFG weight w in the standard convention v_u + w (v_c - v_u), i.e. the pipeline's
        guidance_scale (None: the pipeline's default). salt_guidance: the same in Salt's / Self Forcing's
        convention x_c + g (x_c - x_u), i.e. w = g + 1 (their g = 3 is w = 4); give one of the two.
    shift: the time shift warping the step lists and the DMD timesteps (None: the teacher scheduler's).
    rule: the student's update between grid points in rollouts ("renoise", the papers', or "euler").
    lr_generator, lr_critic, betas, weight_decay, max_grad_norm: AdamW (betas (0, 0.999) as the papers) and
        gradient clipping; ema_decay / ema_start: EMA of the generator, a copy of it before ema_start.
    ode_substeps: teacher Euler steps per training-grid interval for the ODE-pair targets.
    ode_pairs: 0: a fresh teacher trajectory per ODE iteration, every grid point regressed; N: Self Forcing's
        offline form, N trajectories drawn once and reused, one drawn point per sample per iteration.
    ode_fresh_optimizer: start the DMD phase with a fresh generator optimizer (Self Forcing's DMD run starts its
        optimizers anew from the ODE-initialised weights); False: AdamW's moments carry over from the regression.
    critic_warmup_steps: DMD iterations, at the start of the DMD phase, that train only the fake score. After an
        ODE init the student already samples the guided teacher, while the fake score starts as the unguided
        teacher, so the first generator updates would push along the guidance direction a second time.
    lora_rank: train LoRA adapters of this rank on the attention projections (peft) instead of every weight.
    dmd_t_min / dmd_t_max: the clamp of the warped DMD timestep (Self Forcing's 0.02 / 0.98).
    call_args: extra pipeline call arguments for every role (height, width, num_frames, ...).
    mixed_steps: {step count: probability}, e.g. MIXED_STEPS (Salt's released recipe, 8 / 4 / 2 steps at 0.4 / 0.4 /
        0.2): every rollout (generator's and fake score's) runs one of these inference step lists, drawn per rollout,
        so the student's own 2- and 4-step paths are trained; SC only on 8-step rollouts. Must include every nfe
        (and 8 for sc-dmd). None: every rollout on the one training grid (train_timesteps). An autoregressive
        student takes them in ar.mixed_steps.
    ar: train an autoregressive (chunk-causal) student with Salt's cache-distribution-aware recipe (ARConfig);
        None: a student of the teacher's own (bidirectional) architecture.
    fsdp: shard the teacher, the student, the fake score and the EMA over the processes (FSDP2, one unit per
        transformer block) for models that do not fit one device; needs several processes (accelerate launch).
        The teacher pipeline's transformer is sharded in place (as it is frozen in place).
    """

    method: str = "sc-dmd"
    steps: int = 1000
    batch_size: int = 8
    nfe: tuple[int, ...] = (4, 2)
    guidance: float | None = None
    salt_guidance: float | None = None
    shift: float | None = None
    rule: str = "renoise"
    sc_weight: float | None = None
    critic_per_generator: int = 5
    lr_generator: float = 2e-6
    lr_critic: float = 4e-7
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01
    max_grad_norm: float = 10.0
    ema_decay: float = 0.99
    ema_start: int = 200
    ode_init_steps: int = 0
    ode_substeps: int = 4
    ode_pairs: int = 0
    ode_fresh_optimizer: bool = False
    critic_warmup_steps: int = 0
    lora_rank: int | None = None
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    checkpoint_every: int = 100
    seed: int = 0
    call_args: dict[str, Any] = field(default_factory=dict)
    mixed_steps: dict[int, float] | None = None
    ar: ARConfig | None = None
    fsdp: bool = False

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("rule", self.rule, FEWSTEP_RULES)
        for name in ("steps", "batch_size", "critic_per_generator", "ode_substeps", "checkpoint_every"):
            _positive(name, getattr(self, name), integer=True)
        for name in ("ode_init_steps", "ode_pairs", "ema_start", "seed", "critic_warmup_steps"):
            _positive(name, getattr(self, name), integer=True, zero=True)
        for name in ("lr_generator", "lr_critic", "max_grad_norm"):
            _positive(name, getattr(self, name))
        _positive("weight_decay", self.weight_decay, zero=True)
        self._check_grid()
        self._check_guidance()
        if self.sc_weight is not None:
            _positive("sc_weight", self.sc_weight, zero=True)
            if self.method == "dmd" and self.sc_weight > 0:
                raise ValueError("sc_weight > 0 needs method='sc-dmd' (plain DMD has no self-consistency term)")
        if self.lora_rank is not None:
            _positive("lora_rank", self.lora_rank, integer=True)
        if not (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not (0 < self.dmd_t_min < self.dmd_t_max < 1):
            raise ValueError(f"need 0 < dmd_t_min < dmd_t_max < 1, got {self.dmd_t_min}, {self.dmd_t_max}")
        for name in ("fsdp", "ode_fresh_optimizer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.critic_warmup_steps >= self.steps:
            raise ValueError(f"critic_warmup_steps ({self.critic_warmup_steps}) must be below steps ({self.steps}): "
                             "the generator must get some updates")
        if self.mixed_steps is not None:
            if self.ar is not None:
                raise ValueError("an autoregressive student takes its mixed steps in ar.mixed_steps, not mixed_steps")
            object.__setattr__(self, "mixed_steps", check_mixed_steps(self.mixed_steps))
            if missing := [n for n in self.nfe if n not in self.mixed_steps]:
                raise ValueError(f"mixed_steps must include every nfe the student is trained for; missing "
                                 f"{', '.join(map(str, missing))}")
            if self.method == "sc-dmd" and 8 not in self.mixed_steps:
                raise ValueError("sc-dmd with mixed_steps needs 8-step rollouts (SC runs only on those)")
        if self.ar is not None:
            if not isinstance(self.ar, ARConfig):
                raise ValueError(f"ar must be an ARConfig or None, got {type(self.ar).__name__}")
            if self.method == "sc-dmd" and 8 not in self.ar.mixed_steps:
                raise ValueError("sc-dmd with ar needs 8-step rollouts in ar.mixed_steps (SC runs only on those)")
        if not isinstance(self.call_args, dict) or set(self.call_args) & RESERVED_CALL_ARGS:
            raise ValueError(f"call_args must be a dict without {', '.join(sorted(RESERVED_CALL_ARGS))} (the trainer "
                             f"sets those), got {self.call_args!r}")

    def _check_grid(self) -> None:
        nfe = tuple(self.nfe)
        if not nfe or any(n not in TIMESTEPS for n in nfe) or len(set(nfe)) != len(nfe):
            raise ValueError(f"nfe must be distinct step counts among {', '.join(map(str, TIMESTEPS))}, got {nfe!r}")
        if self.shift is not None:
            _positive("shift", self.shift)

    def _check_guidance(self) -> None:
        if self.guidance is not None and self.salt_guidance is not None:
            raise ValueError("give guidance (standard CFG weight w) or salt_guidance (Salt's g = w - 1), not both")
        for name in ("guidance", "salt_guidance"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value, zero=True)

    # -- resolved values ------------------------------------------------------------------------------------------

    @property
    def cfg_weight(self) -> float | None:
        """The teacher's guidance in the standard convention (w = g + 1 for Salt's g); None: the pipeline's."""
        return self.salt_guidance + 1.0 if self.salt_guidance is not None else self.guidance

    @property
    def sc(self) -> float:
        return SC_WEIGHT[self.method] if self.sc_weight is None else float(self.sc_weight)

    @property
    def train_timesteps(self) -> tuple[int, ...]:
        """The rollout grid (timesteps before the warp): Salt's 8 points for sc-dmd; the union of the inference
        lists (4 points for nfe 4, 2) for dmd; with mixed_steps, the union of its lists (the ODE init's grid)."""
        if self.mixed_steps is not None:
            return tuple(sorted({t for n in self.mixed_steps for t in TIMESTEPS[n]}, reverse=True))
        if self.method == "sc-dmd":
            return tuple(sorted(set(TIMESTEPS[8]) | set(self.inference_boundaries[:-1]), reverse=True))
        return tuple(sorted({t for n in self.nfe for t in TIMESTEPS[n]}, reverse=True))

    @property
    def inference_boundaries(self) -> tuple[int, ...]:
        """The inference grids' points plus 0: where Salt's SC endpoint t_e may land."""
        return tuple(sorted({t for n in self.nfe for t in TIMESTEPS[n]} | {0}, reverse=True))

    def resolved(self, guidance: float, shift: float) -> DistillConfig:
        """This config with guidance (standard w) and shift filled in and sc_weight made explicit."""
        return replace(self, guidance=float(guidance), salt_guidance=None, shift=float(shift), sc_weight=self.sc)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["nfe"], d["betas"] = list(self.nfe), list(self.betas)
        if self.ar is not None:
            d["ar"]["mixed_steps"] = {str(k): v for k, v in self.ar.mixed_steps.items()}
        if self.mixed_steps is not None:
            d["mixed_steps"] = {str(k): v for k, v in self.mixed_steps.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        if unknown := set(data) - known:
            raise ValueError(f"unknown DistillConfig field(s) {', '.join(sorted(unknown))}")
        data = dict(data)
        for name in ("nfe", "betas"):
            if name in data:
                data[name] = tuple(data[name])
        if data.get("ar") is not None:
            data["ar"] = ARConfig(**data["ar"])
        return cls(**data)

"""The distillation loop: DMD2's two-time-scale updates over backward-simulated rollouts, Salt's SC term, Self
Forcing's ODE-pair init, EMA, exact checkpoints.

One iteration (after `ode_init_steps` ODE-pair iterations and `critic_warmup_steps` critic-only ones): every
critic_per_generator-th iteration first updates the generator (L_DMD + sc_weight * L_SC on a fresh rollout), then
every iteration updates the fake score on a fresh, detached rollout (Self Forcing's order). Random draws come from
three seeded sources that checkpoints keep: a torch.Generator (noise, DMD timesteps), a numpy Generator (prompts), a
python Random (exit index, SC timesteps, mixed step counts; broadcast from rank 0).
"""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from accel.core.flow import interpolate, velocity_to_x0
from accel.core.grid import TimeGrid
from accel.distill import causal, checkpoint
from accel.distill.config import RESUMABLE_FIELDS, DistillConfig
from accel.distill.grids import dmd_sigmas, draw_step_count, sc_times, step_sigmas, to_sigma
from accel.distill.losses import critic_loss, dmd_loss, ode_loss, sc_endpoints, sc_loss
from accel.distill.parallel import Processes, full, place
from accel.distill.prompts import PromptSource, as_source
from accel.distill.roles import build_roles, check_teacher, default_guidance, fingerprint, scheduler_shift
from accel.distill.rollout import noise_like, rollout
from accel.schedulers.fewstep import TIMESTEPS

FORMAT = 1
Progress = Callable[[int, int, dict], None]


class DistillDiverged(RuntimeError):
    """A non-finite loss or gradient: training stops before the update, the last checkpoint stays good."""


class Distiller:
    """Few-step distillation of one teacher pipeline (DMD2, Yin et al. 2024; SC-DMD, Ge et al. 2026, "Salt").

    The teacher pipeline is frozen in place; the student and the fake score are copies of its transformer (see
    accel.distill.roles). `fit()` trains to config.ode_init_steps + config.steps iterations, checkpointing to
    checkpoint_dir every config.checkpoint_every iterations and at the end.
    """

    def __init__(self, teacher_pipe, config: DistillConfig, prompts=None, checkpoint_dir: str | Path | None = None,
                 teacher_name: str = "", processes: Processes | None = None):
        check_teacher(teacher_pipe)
        self.processes = processes or Processes()
        if config.fsdp and self.processes.world == 1:
            raise ValueError("fsdp shards the models over several processes: start them with accelerate launch or "
                             "torchrun, or leave fsdp off")
        if self.processes.world > 1:
            for name, component in teacher_pipe.components.items():  # under FSDP the transformer moves as shards
                if isinstance(component, torch.nn.Module) and not (config.fsdp and name == "transformer"):
                    component.to(self.processes.device)
        guidance = config.cfg_weight if config.cfg_weight is not None else default_guidance(teacher_pipe)
        self.roles = build_roles(teacher_pipe, guidance, config.call_args, config.lora_rank)
        if config.ar is not None:  # an autoregressive student: a chunk-causal copy (accel.distill.causal)
            if config.lora_rank is not None:
                raise ValueError("lora_rank is not supported with an autoregressive student (ar)")
            self.roles = causal.causal_roles(self.roles, config.ar)
        shift = config.shift if config.shift is not None else scheduler_shift(
            self.roles.teacher, {**self.roles.student_call, **config.call_args})
        self.config = c = config.resolved(guidance, shift)
        self.prompts: PromptSource = as_source(prompts, teacher_pipe)
        self.teacher_name = (teacher_name or str(getattr(teacher_pipe.config, "_name_or_path", "") or "")
                             or type(teacher_pipe).__name__)
        self.teacher_id = fingerprint(teacher_pipe.transformer)
        self._legacy_teacher_id = fingerprint(teacher_pipe.transformer, legacy=True)  # checkpoints of accel < e64b1fb
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.train_t = c.train_timesteps
        self.sigmas = torch.tensor([to_sigma(t, shift) for t in self.train_t], dtype=torch.float32)
        self.ema = copy.deepcopy(self._module("student")).eval().requires_grad_(False)
        self.template = None
        if c.fsdp:  # every model split over the processes (teacher included: it is as large as the student)
            self.template = copy.deepcopy(self.ema).to("meta")  # the student's structure, for export_student
            for module in (self._module("teacher"), self._module("student"), self._module("critic"), self.ema):
                self.processes.shard(module)
        self.ema_params = dict(self.ema.named_parameters())
        self.params = {role: {n: p for n, p in self._module(role).named_parameters() if p.requires_grad}
                       for role in ("student", "critic")}
        self.optimizers = {
            role: torch.optim.AdamW(list(self.params[role].values()), lr=lr, betas=c.betas,
                                    weight_decay=c.weight_decay)
            for role, lr in (("student", c.lr_generator), ("critic", c.lr_critic))}
        rank = self.processes.rank
        self.generator = torch.Generator().manual_seed(c.seed + 1_000_003 * rank)
        self.prompt_rng = np.random.default_rng([c.seed, rank])
        self.choices = random.Random(c.seed)
        # torch's global RNG (dropout, if a model has any) during the run's iterations: the run's own stream,
        # so the caller's global state is neither used nor changed.
        self.torch_rng = torch.Generator().manual_seed(c.seed + 1_000_003 * rank + 1).get_state()
        self.step, self.seconds, self.log, self.saved_step = 0, 0.0, [], None
        self._ode_set = None  # config.ode_pairs' trajectories, built on the first ODE iteration

    def _module(self, role: str) -> torch.nn.Module:
        return getattr(self.roles, role).pipe.transformer

    @property
    def total_steps(self) -> int:
        return self.config.ode_init_steps + self.config.steps

    # -- one iteration -------------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        """One iteration; returns its losses (None where a loss was not computed)."""
        c = self.config
        entry: dict[str, Any] = {"phase": "dmd", "dmd": None, "sc": None, "critic": None, "ode": None}
        if c.ar is not None or c.mixed_steps is not None:
            entry.update(rollout_steps=None)
        if c.ar is not None:
            entry.update(align=None)
        if self.step < c.ode_init_steps:
            entry.update(phase="ode", ode=self._ode_step())
            return entry
        dmd_step = self.step - c.ode_init_steps
        if dmd_step == 0 and c.ode_init_steps and c.ode_fresh_optimizer:
            self.optimizers["student"].state.clear()
        if dmd_step >= c.critic_warmup_steps and (dmd_step - c.critic_warmup_steps) % c.critic_per_generator == 0:
            entry.update(self._generator_step())
        entry["critic"] = self._critic_step()
        return entry

    def _batch(self):
        """Prompts, start noise x and the student's (CFG-free) conditioning for one rollout."""
        c = self.config
        prompts = self.prompts.sample(self.prompt_rng, c.batch_size)
        p = self._student_prepare(prompts, generator=self.generator)
        return prompts, p.x, p.cond

    def _student_prepare(self, prompts: list[str], **draw):
        """The student's (CFG-free) prepared call for prompts; draw: its start noise (generator= or latents=)."""
        with torch.no_grad():
            return self.roles.student.prepare(prompt=prompts, num_inference_steps=1, **draw,
                                              **self.roles.student_call, **self.config.call_args)

    def _teacher_cond(self, prompts: list[str], x: torch.Tensor):
        """The teacher's conditioning with CFG (the run's guidance); x only fixes the latent shape."""
        with torch.no_grad():
            return self.roles.teacher.prepare(prompt=prompts, latents=x, guidance_scale=self.config.guidance,
                                              num_inference_steps=1, **self.config.call_args).cond

    def _grid(self) -> tuple[tuple[int, ...], torch.Tensor, int]:
        """A rollout's grid (timesteps, sigmas) and its exit index: the training grid, or with mixed_steps the
        inference list of a drawn step count (rank 0's draws on every process)."""
        times, sigmas = self.train_t, self.sigmas
        if self.config.mixed_steps is not None:
            steps = self.processes.shared(draw_step_count(self.choices, self.config.mixed_steps))
            times, sigmas = TIMESTEPS[steps], step_sigmas(steps, self.config.shift)
        return times, sigmas, self.processes.shared(self.choices.randrange(len(times)))

    def _generator_step(self) -> dict[str, float | None]:
        c = self.config
        if c.ar is not None:
            return causal.generator_step(self)
        prompts, x, cond = self._batch()
        times, sigmas, e = self._grid()
        out = rollout(self.roles.student, x, cond, sigmas, e, c.rule, self.generator, grad=True)
        dmd = self._dmd_loss(out.x0, prompts, cond)
        # SC on the training grid, or (Salt's mixed steps) on 8-step rollouts only
        with_sc = c.sc_weight > 0 and (c.mixed_steps is None or len(times) == 8)
        sc = self._sc_loss(out, cond, times, e) if with_sc else None
        self._update("student", dmd if sc is None else dmd + c.sc_weight * sc, "generator")
        self._ema_update()
        entry = {"dmd": dmd.item(), "sc": None if sc is None else sc.item()}
        if c.mixed_steps is not None:
            entry["rollout_steps"] = len(times)
        return entry

    def _dmd_loss(self, x0: torch.Tensor, prompts: list[str], cond) -> torch.Tensor:
        """DMD on the generator's sample x0: teacher (CFG) and fake-score x0 predictions at a random noise level."""
        c = self.config
        with torch.no_grad():
            sigma = dmd_sigmas(x0.shape[0], c.shift, c.dmd_t_min, c.dmd_t_max, self.generator).to(x0.device)
            x_t = interpolate(x0.detach(), noise_like(x0, self.generator), sigma)
            real = velocity_to_x0(x_t, self.roles.teacher.velocity(x_t, sigma, self._teacher_cond(prompts, x0)),
                                  sigma)
            fake = velocity_to_x0(x_t, self.roles.critic.velocity(x_t, sigma, cond), sigma)
        return dmd_loss(x0, real, fake)

    def _sc_loss(self, out, cond, grid: tuple[int, ...], e: int) -> torch.Tensor | None:
        """Salt's self-consistency term at the rollout's exit e of grid (None at the grid's last step)."""
        c = self.config
        times = self.processes.shared(sc_times(grid, c.inference_boundaries, e, self.choices))
        if times is None:
            return None
        t_e, t_m = times

        def velocity(x, sigma):
            return self.roles.student.velocity(x, torch.tensor(sigma, dtype=torch.float32), cond)

        x_e1, x_e2 = sc_endpoints(out.x_s, out.v, out.sigma_s, to_sigma(t_m, c.shift), to_sigma(t_e, c.shift),
                                  velocity)
        return sc_loss(x_e1, x_e2, out.sigma_s)

    def _critic_loss(self) -> torch.Tensor:
        """Flow matching of the fake score on a detached generator sample."""
        c = self.config
        if c.ar is not None:
            x0, cond = causal.critic_loss_sample(self)
        else:
            _, x, cond = self._batch()
            _, sigmas, e = self._grid()
            x0 = rollout(self.roles.student, x, cond, sigmas, e, c.rule, self.generator, grad=False).x0
        sigma = dmd_sigmas(x0.shape[0], c.shift, c.dmd_t_min, c.dmd_t_max, self.generator).to(x0.device)
        eps = noise_like(x0, self.generator)
        v = self.roles.critic.velocity(interpolate(x0, eps, sigma), sigma, cond)
        return critic_loss(v, x0, eps)

    def _critic_step(self) -> float:
        loss = self._critic_loss()
        self._update("critic", loss, "critic")
        return loss.item()

    @torch.no_grad()
    def critic_probe(self, seed: int = 0, batches: int = 4) -> float:
        """The fake score's loss on `batches` rollouts drawn from a fixed seed, the run's random states untouched:
        a steadier view of its progress than the per-iteration losses (which vary with the drawn noise levels)."""
        saved = self.generator, self.prompt_rng, self.choices
        self.generator = torch.Generator().manual_seed(seed)
        self.prompt_rng, self.choices = np.random.default_rng(seed), random.Random(seed)
        try:
            return float(np.mean([self._critic_loss().item() for _ in range(batches)]))
        finally:
            self.generator, self.prompt_rng, self.choices = saved

    def _ode_trajectory(self, prompts: list[str], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The teacher's CFG trajectory from noise x (ode_substeps Euler steps per training-grid interval): its
        states at the training-grid points and its end."""
        from accel.schedulers.flow import euler_step, sample

        m = self.config.ode_substeps
        knots = torch.cat([self.sigmas, torch.zeros(1)])
        fine = torch.cat([torch.linspace(float(a), float(b), m + 1)[:-1] for a, b in zip(knots[:-1], knots[1:])])
        states = [x]
        with torch.no_grad():
            end = sample(self.roles.teacher, x, TimeGrid(torch.cat([fine, torch.zeros(1)])),
                         self._teacher_cond(prompts, x), euler_step,
                         lambda i, xi: states.append(xi) if (i + 1) % m == 0 else None)
        return states[:len(self.sigmas)], end

    def _ode_pair_set(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """config.ode_pairs teacher trajectories drawn once from their own seeded streams (so a resumed run
        rebuilds the same set): prompts, states (N, grid points, ...) and ends (N, ...)."""
        c = self.config
        generator = torch.Generator().manual_seed(c.seed + 7919)
        rng = np.random.default_rng([c.seed, 7919])
        prompts, states, ends = [], [], []
        for start in range(0, c.ode_pairs, c.batch_size):
            batch = self.prompts.sample(rng, min(c.batch_size, c.ode_pairs - start))
            points, end = self._ode_trajectory(batch, self._student_prepare(batch, generator=generator).x)
            prompts += batch
            states.append(torch.stack(points, 1))
            ends.append(end)
        return prompts, torch.cat(states), torch.cat(ends)

    def _ode_step(self) -> float:
        """ODE-pair regression (Self Forcing's init): the student's x0 at points of the teacher's CFG trajectory
        against the trajectory's end. With ode_pairs = 0, a fresh trajectory per iteration and every training-grid
        point regressed (Self Forcing draws one; every point is the same objective in expectation at a fraction of
        the teacher calls per pair). With ode_pairs = N, Self Forcing's offline form: N trajectories drawn once,
        each iteration regressing one drawn point of batch_size drawn trajectories (a CPU run affords many more
        updates). An autoregressive student regresses chunk by chunk against a cache of the trajectory's clean
        earlier chunks (teacher forcing, accel.distill.causal.ode_regression)."""
        c = self.config
        if c.ode_pairs:
            if self._ode_set is None:
                self._ode_set = self._ode_pair_set()
            pair_prompts, pair_states, pair_ends = self._ode_set
            pick = torch.randint(len(pair_prompts), (c.batch_size,), generator=self.generator)
            point = torch.randint(len(self.sigmas), (c.batch_size,), generator=self.generator)
            prompts = [pair_prompts[i] for i in pick.tolist()]
            states, sigmas, x0_teacher = [pair_states[pick, point]], [self.sigmas[point]], pair_ends[pick]
            cond = self._student_prepare(prompts, latents=states[0]).cond
        else:
            prompts, x, cond = self._batch()
            states, x0_teacher = self._ode_trajectory(prompts, x)
            sigmas = list(self.sigmas)
        if c.ar is not None:
            loss = causal.ode_regression(self.roles.student.pipe.transformer, states, sigmas, cond, x0_teacher)
        else:
            loss = torch.stack([ode_loss(x_i, self.roles.student.velocity(x_i, sigma, cond), sigma, x0_teacher)
                                for x_i, sigma in zip(states, sigmas)]).mean()
        self._update("student", loss, "ODE-pair")
        self._ema_update()
        return loss.item()

    def _update(self, role: str, loss: torch.Tensor, what: str) -> None:
        """Backward, average over processes, clip, step; DistillDiverged before the step if anything is not
        finite (so the weights stay those of the last good step)."""
        if not torch.isfinite(loss):
            raise DistillDiverged(f"the {what} loss is {loss.item()} at step {self.step + 1}")
        params = list(self.params[role].values())
        optimizer = self.optimizers[role]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not self.config.fsdp:  # FSDP's backward has already reduce-scattered (averaged) the gradients
            self.processes.average_gradients(params)
        norm = full(torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm))
        if not torch.isfinite(norm):
            raise DistillDiverged(f"the {what} gradient norm is {norm.item()} at step {self.step + 1}")
        optimizer.step()

    @torch.no_grad()
    def _ema_update(self) -> None:
        """EMA of the student's trainable weights; a copy of them before ema_start."""
        c = self.config
        names = list(self.params["student"])
        ema = [self.ema_params[n] for n in names]
        live = [self.params["student"][n].detach() for n in names]
        if self.step < c.ema_start:
            torch._foreach_copy_(ema, live)
        else:
            torch._foreach_lerp_(ema, live, 1 - c.ema_decay)

    # -- the loop ------------------------------------------------------------------------------------------------

    def fit(self, progress: Progress | None = None) -> None:
        """Train to total_steps, checkpointing as configured; DistillDiverged names the last good checkpoint."""
        total = self.total_steps
        while self.step < total:
            start = time.perf_counter()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(self.torch_rng)
                    entry = self.train_step()
                    self.torch_rng = torch.get_rng_state()
            except DistillDiverged as e:
                where = (f"step {self.saved_step} in {self.checkpoint_dir}" if self.saved_step is not None
                         else "none was written yet")
                raise DistillDiverged(f"{e}; training stopped (the last good checkpoint: {where}); lower the "
                                      "learning rates or the guidance") from None
            self.seconds += time.perf_counter() - start
            self.step += 1
            entry = {"step": self.step, **entry, "seconds": round(self.seconds, 3)}
            self.log.append(entry)
            if progress is not None:
                progress(self.step, total, entry)
            if self.checkpoint_dir is not None and (self.step % self.config.checkpoint_every == 0
                                                    or self.step == total):
                self.save_checkpoint()

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Everything the next iteration depends on (main process writes; every process waits). Under FSDP every
        process gathers its shards first, so a checkpoint holds whole tensors and resumes with or without it."""
        if self.checkpoint_dir is None:
            raise ValueError("this Distiller has no checkpoint_dir")
        path = None
        gathered = self._state() if self.config.fsdp else None
        if self.processes.is_main:
            tensors, state = gathered or self._state()
            path = checkpoint.save(self.checkpoint_dir, self.step, tensors, state)
            checkpoint.write_log(self.checkpoint_dir, self.log)
        self.saved_step = self.step
        self.processes.barrier()
        return path

    def _state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors: dict[str, torch.Tensor] = {}
        for role in ("student", "critic"):
            tensors.update({f"{role}.{n}": full(p.detach()) for n, p in self.params[role].items()})
        tensors.update({f"ema.{n}": full(self.ema_params[n]) for n in self.params["student"]})
        meta = {}
        for role, opt in self.optimizers.items():
            flat, meta[role] = checkpoint.optimizer_to_flat(opt, f"opt.{role}", gather=full)
            tensors.update(flat)
        rng, rng_meta = checkpoint.rng_to_flat(self.generator, self.choices, self.prompt_rng)
        tensors.update(rng, **{"rng.torch": self.torch_rng})
        state = {"format": FORMAT, "step": self.step, "seconds": self.seconds, "config": self.config.to_dict(),
                 "teacher": self.teacher_id, "prompts": self.prompts.name, "world": self.processes.world,
                 "optimizers": meta, "rng": rng_meta, "log": self.log}
        return tensors, state

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue exactly where the checkpoint at path left off; ValueError if it belongs to another run."""
        tensors, state = checkpoint.load(path)
        self._check_compatible(state, path)
        for role in ("student", "critic"):
            for n, p in self.params[role].items():
                p.data.copy_(place(tensors[f"{role}.{n}"], p))
        for n in self.params["student"]:
            self.ema_params[n].data.copy_(place(tensors[f"ema.{n}"], self.ema_params[n]))
        for role, opt in self.optimizers.items():
            checkpoint.optimizer_from_flat(opt, tensors, state["optimizers"][role], f"opt.{role}", place=place)
        checkpoint.rng_from_flat(tensors, state["rng"], self.generator, self.choices, self.prompt_rng)
        self.torch_rng = tensors["rng.torch"]
        self.step, self.seconds, self.log = state["step"], state["seconds"], list(state["log"])
        self.saved_step = self.step

    def student_module(self, ema: bool = True) -> torch.nn.Module | None:
        """The student transformer (EMA weights by default) as one whole module. Under FSDP a collective: every
        process gathers, the main one gets a CPU module built from the run's template, the others None."""
        module = self.ema if ema else self._module("student")
        if not self.config.fsdp:
            return module
        state = {n: full(t.detach()).cpu() for n, t in module.state_dict().items()}
        if not self.processes.is_main:
            return None
        out = copy.deepcopy(self.template).to_empty(device="cpu")
        out.load_state_dict(state)
        for name, buffer in module.named_buffers():  # non-persistent buffers (rotary tables) are not in state
            out.get_buffer(name).copy_(buffer)
        return out.eval()

    def _check_compatible(self, state: dict, path) -> None:
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, this accel reads {FORMAT}")
        if state["teacher"] not in (self.teacher_id, self._legacy_teacher_id):
            raise ValueError(f"{path} was trained from another teacher (fingerprint {state['teacher']}, this "
                             f"teacher's is {self.teacher_id}); use another output folder or --no-resume --overwrite")
        now = self.config.to_dict()
        # A field the checkpoint's accel did not have yet had its default there.
        saved = DistillConfig().to_dict() | state["config"]
        differ = sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_FIELDS and now.get(k) != saved.get(k))
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now" for k in differ)
            raise ValueError(f"{path} is a checkpoint of another configuration ({detail}); only "
                             f"{', '.join(sorted(RESUMABLE_FIELDS))} may change on resume")
        for key, now_value in (("prompts", self.prompts.name), ("world", self.processes.world)):
            if state[key] != now_value:
                raise ValueError(f"{path} was trained with {key} {state[key]!r}, this run has {now_value!r}")
        if self.step != 0:
            raise ValueError("load_checkpoint needs a fresh Distiller")

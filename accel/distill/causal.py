"""Autoregressive students: Salt's cache-distribution-aware recipe over a chunk-causal student (Self Forcing's
rollout, Ge et al. 2026).

A rollout generates the clip a chunk at a time, as the student samples (accel.schedulers.fewstep.fewstep_stream):
each chunk runs its step list without gradient up to the exit index (shared by every chunk), once with gradient
there, and its x0 (detached) is committed to the K/V cache the later chunks attend to; so the student trains on
caches made by its own outputs. Salt's additions:
- mixed-step rollouts: each iteration's step list is drawn from ARConfig.mixed_steps (8 / 4 / 2 with 0.4 / 0.4 /
  0.2), so the student learns to continue caches written by every step count it will be sampled with;
- the SC term only on 8-step rollouts (per chunk at its exit, against the cache that chunk saw);
- for low-step rollouts, a no-grad reference rollout on the next denser list from the same noise (its own cache;
  deterministic Euler inside the student's segments, the student's re-noising noise at shared points), and a
  token-relation loss: per frame, the Gram matrix of L2-normalised teacher features of the student's x0 against
  the reference's, mean ReLU(|G_s - G_r| - margin).
The teacher and the fake score stay bidirectional and see whole clips (DMD as in accel.distill.trainer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from accel.core.flow import interpolate
from accel.distill.grids import draw_step_count, sc_times, step_sigmas, to_sigma
from accel.distill.losses import ode_loss, sc_endpoints, sc_loss
from accel.distill.rollout import noise_like
from accel.schedulers.fewstep import TIMESTEPS, fewstep_update


def causal_roles(roles, ar):
    """roles with the student replaced by a chunk-causal copy of the teacher's transformer (the built-in video
    model's; ValueError for other families)."""
    from accel.distill.roles import Roles, with_transformer
    from accel.pipelines.registry import adapter_for
    from accel.pipelines.shapes_causal import CausalShapesVideoTransformer3DModel
    from accel.pipelines.shapes_video import ShapesVideoTransformer3DModel

    teacher = roles.teacher.pipe.transformer
    if type(teacher) is not ShapesVideoTransformer3DModel:
        raise ValueError(f"autoregressive students are implemented for the built-in video model "
                         f"(ShapesVideoTransformer3DModel), not {type(teacher).__name__}")
    causal = CausalShapesVideoTransformer3DModel.from_bidirectional(teacher, ar.chunk_frames).train()
    causal.requires_grad_(True)
    student = adapter_for(with_transformer(roles.teacher.pipe, causal))
    return Roles(teacher=roles.teacher, student=student, critic=roles.critic, student_call=roles.student_call)


@dataclass
class ChunkExit:
    """One chunk at the rollout's exit: its input x_s (no gradient), sigma_s, the student's velocity v there
    (with gradient when asked) and its x0."""

    x_s: torch.Tensor
    sigma_s: float
    v: torch.Tensor
    x0: torch.Tensor


def causal_rollout(model, x: torch.Tensor, cond, sigmas: torch.Tensor, exit_index: int, generator: torch.Generator,
                   grad: bool, at_exit=None, noises: dict | None = None):
    """The student's chunk-by-chunk rollout from noise x over sigmas (its step list, without the final 0) to
    exit_index; returns (x0 of the clip, the ChunkExits). Between points it re-noises its x0 with fresh noise
    (recorded into `noises[(chunk, i + 1)]` when given). at_exit(chunk_index, ChunkExit, cache) runs at each chunk's
    exit, before the chunk is committed (the SC target needs the cache that chunk saw)."""
    cache = model.begin(cond.data["embeds"], cond.data["mask"], x)
    n = model.num_chunks(x)
    outs, exits = [], []
    for k in range(n):
        xk = x[:, :, model.chunk_slice(k)]
        with torch.no_grad():
            for i in range(exit_index):
                v = model.forward_chunk(xk, sigmas[i], cache, k)
                eps = noise_like(xk, generator)
                if noises is not None:
                    noises[(k, i + 1)] = eps
                xk = fewstep_update(xk, v, sigmas[i], sigmas[i + 1], "renoise", eps=eps)
        sigma = sigmas[exit_index]
        with torch.set_grad_enabled(grad):
            v = model.forward_chunk(xk, sigma, cache, k)
            x0 = (xk.float() - sigma * v.float()).to(xk.dtype)
        out = ChunkExit(x_s=xk, sigma_s=float(sigma), v=v, x0=x0)
        if at_exit is not None:
            at_exit(k, out, cache)
        if k < n - 1:
            with torch.no_grad():
                model.forward_chunk(x0.detach(), torch.zeros(()), cache, k, commit=True)
        outs.append(x0)
        exits.append(out)
    return torch.cat(outs, dim=2), exits


@torch.no_grad()
def reference_rollout(model, x: torch.Tensor, cond, student_t: tuple[int, ...], ref_t: tuple[int, ...],
                      exit_t: int, shift: float, noises: dict) -> torch.Tensor:
    """Salt's noise-aligned reference: the denser list ref_t from the same noise x, with its own cache; at a point
    the student's list shares it re-noises with the student's noise there, inside the student's segments it steps
    Euler. Returns the reference's x0 at the student's exit timestep exit_t, for the whole clip."""
    sigmas = [to_sigma(t, shift) for t in ref_t]
    stop = ref_t.index(exit_t)
    cache = model.begin(cond.data["embeds"], cond.data["mask"], x)
    n = model.num_chunks(x)
    outs = []
    for k in range(n):
        xk = x[:, :, model.chunk_slice(k)]
        for i in range(stop):
            s, s_next = sigmas[i], sigmas[i + 1]
            v = model.forward_chunk(xk, torch.tensor(s), cache, k)
            if ref_t[i + 1] in student_t:  # a shared point: the student's re-noising noise there
                xk = fewstep_update(xk, v, s, s_next, "renoise", eps=noises[(k, student_t.index(ref_t[i + 1]))])
            else:
                xk = fewstep_update(xk, v, s, s_next, "euler")
        s = sigmas[stop]
        x0 = (xk.float() - s * model.forward_chunk(xk, torch.tensor(s), cache, k).float()).to(xk.dtype)
        if k < n - 1:
            model.forward_chunk(x0, torch.zeros(()), cache, k, commit=True)
        outs.append(x0)
    return torch.cat(outs, dim=2)


def ode_regression(model, states: list[torch.Tensor], sigmas, cond, x0_teacher: torch.Tensor) -> torch.Tensor:
    """Causal ODE-pair loss (teacher forcing): every trajectory state is denoised a chunk at a time against a
    cache of the trajectory's clean earlier chunks, committed with gradient so the student also learns the K/V it
    writes; MSE of its x0 against x0_teacher over all states and chunks. sigmas: one per state, each a number or
    one per sample (B,). The states ride in one batch of len(states) * B clips."""
    k, b = len(states), states[0].shape[0]
    x = torch.cat(states)
    sigma = torch.cat([torch.as_tensor(s, dtype=torch.float32).expand(b) for s in sigmas]).to(x.device)
    target = x0_teacher.repeat(k, *([1] * (x0_teacher.ndim - 1)))
    mask = cond.data["mask"]
    cache = model.begin(cond.data["embeds"].repeat(k, 1, 1), None if mask is None else mask.repeat(k, 1), x)
    n = model.num_chunks(x)
    velocities = []
    for c in range(n):
        part = model.chunk_slice(c)
        velocities.append(model.forward_chunk(x[:, :, part], sigma, cache, c))
        if c < n - 1:
            model.forward_chunk(target[:, :, part], torch.zeros((), device=x.device), cache, c, commit=True)
    return ode_loss(x, torch.cat(velocities, dim=2), sigma, target)


def frame_gram(features: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, L, D) image-token features, frame-major -> (B, frames, S, S) cosine-similarity matrices per frame."""
    b, n, d = features.shape
    f = F.normalize(features.float().reshape(b, frames, n // frames, d), dim=-1)
    return f @ f.transpose(-1, -2)


def relation_loss(student_features: torch.Tensor, reference_features: torch.Tensor, frames: int,
                  margin: float) -> torch.Tensor:
    """Salt's token-relation distillation: mean over frames and entries of ReLU(|G_s - G_r| - margin)."""
    gap = (frame_gram(student_features, frames) - frame_gram(reference_features, frames)).abs()
    return F.relu(gap - margin).mean()


def teacher_features(teacher, x: torch.Tensor, sigma: torch.Tensor, cond, block: int) -> torch.Tensor:
    """The teacher's image-token states after blocks[block] for input x at sigma (conditional pass only)."""
    model = teacher.pipe.transformer
    captured = {}

    def hook(_module, _inputs, output):
        captured["tokens"] = output

    handle = model.blocks[block].register_forward_hook(hook)
    try:
        model(x, cond.data["embeds"], sigma, cond.data["mask"])
    finally:
        handle.remove()
    text = cond.data["embeds"].shape[1]
    return captured["tokens"][:, text:]


def draw_steps(distiller) -> int:
    """This iteration's step count, drawn by ARConfig.mixed_steps (rank 0's choice on every process)."""
    return distiller.processes.shared(draw_step_count(distiller.choices, distiller.config.ar.mixed_steps))


def generator_step(distiller) -> dict:
    """One generator update of an autoregressive student: L_DMD + sc_weight L_SC [8 steps] + align_weight
    L_align [a low-step rollout with a reference, after align_start]."""
    d, c = distiller, distiller.config
    ar = c.ar
    prompts, x, cond = d._batch()
    steps = draw_steps(d)
    times = TIMESTEPS[steps]
    sigmas = step_sigmas(steps, c.shift)
    e = d.processes.shared(d.choices.randrange(steps))
    model = d.roles.student.pipe.transformer
    sc_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    sc_at = None
    if c.sc_weight > 0 and steps == 8:
        chosen = d.processes.shared(sc_times(times, c.inference_boundaries, e, d.choices))
        if chosen is not None:
            t_e, t_m = chosen

            def sc_at(k, out, cache):
                def velocity(xm, sigma):
                    return model.forward_chunk(xm, torch.tensor(sigma, dtype=torch.float32), cache, k)

                sc_pairs.append(sc_endpoints(out.x_s, out.v, out.sigma_s, to_sigma(t_m, c.shift),
                                             to_sigma(t_e, c.shift), velocity))

    noises: dict = {}
    x0, exits = causal_rollout(model, x, cond, sigmas, e, d.generator, grad=True, at_exit=sc_at, noises=noises)
    loss = dmd = d._dmd_loss(x0, prompts, cond)
    sc = align = None
    if sc_pairs:
        sc = sc_loss(torch.cat([p[0] for p in sc_pairs], 2), torch.cat([p[1] for p in sc_pairs], 2),
                     exits[0].sigma_s)
        loss = loss + c.sc_weight * sc
    ref_steps = ar.align_pairs.get(steps)
    if ref_steps is not None and ar.align_weight > 0 and d.step >= ar.align_start:
        ref = reference_rollout(model, x, cond, times, TIMESTEPS[ref_steps], times[e], c.shift, noises)
        t = torch.randint(0, ar.align_t_max, (x0.shape[0],), generator=d.generator).float()
        sigma = torch.tensor([to_sigma(float(v), c.shift) for v in t], dtype=torch.float32)
        eps = noise_like(x0, d.generator)
        block = ar.align_block
        frames = model.grid(x0)[0]
        with torch.no_grad():
            target = teacher_features(d.roles.teacher, interpolate(ref, eps, sigma), sigma, cond, block)
        feats = teacher_features(d.roles.teacher, interpolate(x0, eps, sigma), sigma, cond, block)
        align = relation_loss(feats, target, frames, ar.align_margin)
        loss = loss + ar.align_weight * align
    d._update("student", loss, "generator")
    d._ema_update()
    return {"dmd": dmd.item(), "sc": None if sc is None else sc.item(),
            "align": None if align is None else align.item(), "rollout_steps": steps}


def critic_loss_sample(distiller):
    """A detached autoregressive sample for the fake score's update: (x0, cond)."""
    d, c = distiller, distiller.config
    _, x, cond = d._batch()
    steps = draw_steps(d)
    e = d.processes.shared(d.choices.randrange(steps))
    with torch.no_grad():
        x0, _ = causal_rollout(d.roles.student.pipe.transformer, x, cond, step_sigmas(steps, c.shift), e,
                               d.generator, grad=False)
    return x0, cond

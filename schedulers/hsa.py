"""Heterogeneous step allocation (HSA): every latent token carries its own sigma.

Chu & Patel, "Not All Tokens Need 40 Steps" (arXiv 2605.06892); the paper's code is not public, so this follows
the reconstruction in the project notes (papers-search-and-hsa.md section 1), with microsoft/RAS's mechanics.
Usage, recorded results and what was tried: docs/hsa.md.

State per token i: its latent x_i at its own sigma s_i and the velocity v_i last computed for it; the *cached Euler
update* x_i + (sigma - s_i) v_i moves it to any sigma in one operation (the exact jump under its cached x0 / eps).

Schedule on the pipeline's grid sigma_0 > ... > sigma_T = 0:
1. Warm-up: the first `warmup` steps are full steps (every token active).
2. Partial steps: the `k_j` highest-scoring tokens per sample are active (score: velocity "dynamics"
   ||v_i - v_i'|| / (||v_i'|| + delta), or the last Euler "displacement" as in RAS); tokens skipped `max_skips`
   steps in a row take the slots first. Active tokens are brought to the step's sigma with the cached update, get a
   fresh velocity and take an Euler step; inactive tokens stay where they are.
3. After the last step every token still behind is brought to sigma = 0 with its cached update.

`runtime` is the fraction of the full-step token compute to spend, warm-up included; the partial steps share it in
proportion to sigma_j ** decay, because a skipped token's cached K/V are stale by how much its hidden states changed
since it was computed, which is most at high noise. `kv` says how the skipped tokens' K/V are made: "stale" keeps
them as last computed (the paper's cache); "refresh" remakes them every `refresh_every`-th partial step from an
estimate of each block's input (current embedding + the block residuals cached at the token's last computation,
`BlockInputs`), priced into the budget; "extrapolate" also follows the residuals' trend over the token's last two
computations. `grid_steps="auto"` runs on as many grid steps as the budget pays for with about half the tokens
active in each (ceil(2 x runtime x steps / (1 + c)), c an inactive token's price), since skipping more than half
the tokens costs more through the cache than coarser steps do. The defaults (decay, max_skips, kv per model) were
chosen by measurement: docs/hsa.md. With every token active HSA *is* Euler, bit for bit.

Model calls go through `velocity_active(x, sigma, active) -> v_active`: x is the latent (the pipeline's layout)
with every token at the common sigma (inactive ones moved there with the cached update), active is (B, k) token
indices, and the result is (B, k, D) in latent_to_tokens' layout. The adapter's `hsa_velocity(cond, kv)` supplies
the family's active-token forward (e.g. accel.pipelines.shapes_hsa; its `inactive_cost` prices the refresh, its
`refresh_kv` attribute, where it has one, is set before each call to whether that step refreshes, and its
`fit_memory(x)`, where it has one, runs before anything is planned, so it may choose leaner caches where the
default would not fit); without one the full velocity is computed and gathered, which is exact but saves nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from accel.config import check_choice
from accel.core.denoiser import Cond, Denoiser
from accel.core.grid import TimeGrid
from accel.core.token_index import gather_tokens, scatter_tokens, scatter_tokens_
from accel.schedulers.flow import euler_update

SCORES = ("dynamics", "displacement")
KV_MODES = ("auto", "refresh", "extrapolate", "stale")


def kv_mode(kv: str, family_default: str) -> str:
    """How an active-token forward makes the inactive tokens' K/V ("refresh", "extrapolate" or "stale"): kv is one
    of KV_MODES, "auto" meaning the family's default."""
    check_choice("kv", kv, KV_MODES)
    return family_default if kv == "auto" else kv


class Fp8Rows:
    """A (B, L, D) tensor kept as float8 e4m3 with a float32 scale per row (the row's largest magnitude over 448, the
    format's largest): one byte per element instead of two in bf16, each element within 2^-4 of its row's largest
    magnitude. Rows are read back in the dtype the tensor had."""

    def __init__(self, t: torch.Tensor):
        self.dtype = t.dtype
        self.q, self.scale = self._quantize(t)

    @staticmethod
    def _quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = t.detach().abs().amax(-1, keepdim=True).float().clamp(min=1e-30) / torch.finfo(torch.float8_e4m3fn).max
        return (t.float() / scale).to(torch.float8_e4m3fn).view(torch.uint8), scale  # uint8: gather / scatter work

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes

    def read(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Every row (index None) or the rows index (B, k) of each sample, dequantized."""
        q, scale = self.q, self.scale
        if index is not None:
            q, scale = gather_tokens(q, index), gather_tokens(scale, index)
        return (q.view(torch.float8_e4m3fn).float() * scale).to(self.dtype)

    def write_(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Overwrite the rows index (B, k) of each sample with rows (B, k, D)."""
        q, scale = self._quantize(rows)
        scatter_tokens_(self.q, index, q)
        scatter_tokens_(self.scale, index, scale)


class BlockInputs:
    """What the K/V refresh knows of every image token's block inputs (kv="refresh" / "extrapolate"), for one CFG
    branch of one model: each block's input at the token's last computation (`h`, per layer (B, L, D)) and the sigma
    it was computed at; with `extrapolate` also each block residual's change between the token's last two
    computations (`trend`) and the sigma of the earlier one.

    A call's estimate (prepare(), then estimate() per layer) of a token's current input to block l: "refresh" takes
    its current embedding plus the block residuals at its last computation, e_now + r_l(then) with r_l = h_l - h_0
    (the residual stream's change since then taken to be the embedding's); "extrapolate" adds the residuals' own
    trend, w (r_l(then) - r_l(before)), w = (s_now - s_then) / (s_then - s_before) clipped to [0, 1] (0 for a token
    computed once). The trend is kept instead of the earlier inputs themselves, so the estimate costs one
    multiply-add more than the refresh's; the memory is a second tensor per layer.

    record() must see a call's blocks in order (layer 0 first): the trend is relative to the first block's input.
    fp8: keep h and trend as Fp8Rows (half the memory of bf16; for runs whose caches would not fit otherwise).
    """

    def __init__(self, layers: int, extrapolate: bool = False, fp8: bool = False):
        self.h: list = [None] * layers  # per layer a (B, L, D) tensor, or Fp8Rows
        self.trend: list | None = [None] * layers if extrapolate else None
        self.fp8 = fp8
        self.s_then: torch.Tensor | None = None  # (B, L): the sigma of each token's last computation
        self.s_before: torch.Tensor | None = None
        self._first: tuple | None = None  # this call's (new, old) first-block inputs of the recorded tokens
        self._drift: torch.Tensor | None = None  # this call's embedding change of the estimated tokens
        self._w: torch.Tensor | None = None
        self._index: torch.Tensor | None = None

    def computed(self, sigma: float, active: torch.Tensor | None = None) -> None:
        """Mark the tokens `active` (B, k), or every token (None), as computed at sigma: once per model call, after
        its record()s."""
        if self.s_then is None or active is None:
            self.s_before = self.s_then
            self.s_then = torch.full(self.h[0].shape[:2], float(sigma), device=self.h[0].device)
            if self.s_before is None:
                self.s_before = self.s_then
        else:
            self.s_before = self.s_before.scatter(1, active, self.s_then.gather(1, active))
            self.s_then = self.s_then.scatter(1, active, float(sigma))

    def record(self, layer: int, hidden: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Block `layer`'s input: of every token (B, L, D) with active None (kept, not copied: the caller hands it
        over), else of the tokens active (B, k) (written in place)."""
        old = self.h[layer]
        if active is None:
            if 0 in hidden.stride():  # a broadcast view cannot be written per token
                hidden = hidden.contiguous()
            self.h[layer] = self._keep(hidden)
            if self.trend is not None:
                old = None if old is None else _rows(old, None, hidden.dtype)  # (dequantized only where needed)
                if layer == 0:
                    self._first = (hidden, hidden if old is None else old)
                elif old is None:
                    self.trend[layer] = self._keep(torch.zeros_like(hidden))
                else:
                    self.trend[layer] = self._keep((hidden - self._first[0]) - (old - self._first[1]))
            return
        if not isinstance(old, Fp8Rows) and old.dtype != hidden.dtype:
            old = self.h[layer] = old.to(hidden.dtype)
        if self.trend is not None:
            if layer == 0:
                self._first = (hidden, _rows(old, active, hidden.dtype))
            else:
                trend = (hidden - self._first[0]) - (_rows(old, active, hidden.dtype) - self._first[1])
                if not isinstance(self.trend[layer], Fp8Rows):
                    self.trend[layer] = self.trend[layer].to(hidden.dtype)
                _write_rows(self.trend[layer], active, trend)
        _write_rows(old, active, hidden)

    def prepare(self, embed: torch.Tensor, sigma: float, index: torch.Tensor | None = None) -> None:
        """Start a call's estimates for the tokens index (B, m) (None: every token), whose current embedding (the
        first block's input) is embed (B, m, D); before this call's record()s."""
        self._index = index
        self._drift = embed - _rows(self.h[0], index, embed.dtype)
        self._w = None
        if self.trend is not None:
            s_then, s_before = self._at(self.s_then), self._at(self.s_before)
            span = s_then - s_before
            w = torch.where(span != 0, (float(sigma) - s_then) / torch.where(span != 0, span, 1.0), 0.0)
            self._w = w.clamp(0, 1)[..., None].to(embed.dtype)

    def estimate(self, layer: int) -> torch.Tensor:
        """Block `layer`'s estimated current input (B, m, D) of the tokens prepare() named. Tokens recorded in this
        call read their recorded input (a caller overwrites their rows)."""
        out = _rows(self.h[layer], self._index, self._drift.dtype) + self._drift
        if self._w is None or layer == 0:
            return out
        return torch.addcmul(out, self._w, _rows(self.trend[layer], self._index, out.dtype))

    def _keep(self, t: torch.Tensor):
        return Fp8Rows(t) if self.fp8 else t

    def _at(self, t: torch.Tensor) -> torch.Tensor:
        return t if self._index is None else gather_tokens(t, self._index)


def _rows(stored, index: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """A stored (B, L, D) tensor or Fp8Rows: every row (index None) or the rows index (B, k), in dtype."""
    if isinstance(stored, Fp8Rows):
        return stored.read(index).to(dtype)
    return (stored if index is None else gather_tokens(stored, index)).to(dtype)


def _write_rows(stored, index: torch.Tensor, rows: torch.Tensor) -> None:
    """Overwrite the rows index (B, k) of a stored (B, L, D) tensor or Fp8Rows with rows (B, k, D), in place."""
    if isinstance(stored, Fp8Rows):
        stored.write_(index, rows)
    else:
        scatter_tokens_(stored, index, rows.to(stored.dtype))


@dataclass(frozen=True)
class HSAConfig:
    """runtime: fraction of the full-step token compute to spend, a float in (0, 1], or a budget in full steps, an
    int >= 1 (runtime=12 on a 24-step grid is 0.5); warmup: full steps at the start; decay: the partial steps'
    active counts go as sigma ** decay (0: equal counts; "auto": 1.5 with the K/V refresh, 2 without); max_skips:
    most consecutive skipped steps per token ("auto": 3 with the K/V refresh, 4 without);
    score: see the module docstring; cache: run active tokens only against cached K/V (the family's hsa_velocity);
    False computes every token and keeps the active ones' velocities: the same allocation without the cache's
    approximation and without its saving (a diagnostic); kv: the inactive tokens' K/V, "refresh" (recomputed at
    partial steps from their current embedding plus their cached block residuals, at the cost of their K/V
    projections, which the budget accounts for), "extrapolate" (the same with the residuals' trend added, keeping that
    trend per layer: a second tensor the size of the block-input cache), "stale" (as last computed, the paper's
    cache) or "auto" (the family's choice: extrapolate for plain patch DiTs, stale for the built-in image DiT);
    refresh_every: with the refresh, refresh on every refresh_every-th partial step only (1: every partial step;
    the steps between keep the K/V as last refreshed, and cost nothing for the inactive tokens); grid_steps: run
    on this many steps of the pipeline's grid, evenly subsampled, the runtime staying a fraction of the full run
    (fewer steps with more tokens active in each); None: every step; "auto": as many as the budget pays for with
    about half the tokens active in each, every step at runtime 0.5 with kv="stale" (module docstring)."""

    runtime: float = 0.5
    warmup: int = 1
    decay: float | str = "auto"
    max_skips: int | str = "auto"
    score: str = "dynamics"
    cache: bool = True
    kv: str = "auto"
    refresh_every: int = 2
    grid_steps: int | str | None = "auto"

    def __post_init__(self):
        r = self.runtime
        ok = not isinstance(r, bool) and ((isinstance(r, int) and r >= 1) or (isinstance(r, float) and 0 < r <= 1))
        if not ok:
            raise ValueError(f"runtime must be a float in (0, 1] (a fraction of the full run) or an int >= 1 (a budget "
                             f"in full steps), got {r!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1 (every token needs a velocity before it can be "
                             f"skipped), got {self.warmup!r}")
        d = self.decay
        if d != "auto" and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 8):
            raise ValueError(f"decay must be a number in [0, 8] (0: equal active counts) or 'auto', got {d!r}")
        m = self.max_skips
        if m != "auto" and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"max_skips must be an integer >= 1 or 'auto', got {m!r}")
        check_choice("score", self.score, SCORES)
        check_choice("kv", self.kv, KV_MODES)
        e = self.refresh_every
        if isinstance(e, bool) or not isinstance(e, int) or e < 1:
            raise ValueError(f"refresh_every must be an integer >= 1 (1: refresh the K/V at every partial step), got "
                             f"{e!r}")
        g = self.grid_steps
        if g not in (None, "auto") and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise ValueError(f"grid_steps must be an integer >= 1, 'auto' or None (every step of the pipeline's "
                             f"grid), got {g!r}")

    def resolved(self, refresh: bool) -> HSAConfig:
        """The config with decay and max_skips "auto" resolved for the K/V mode (refresh: the inactive tokens' K/V
        are refreshed, i.e. they have a price)."""
        return replace(self, decay=(1.5 if refresh else 2.0) if self.decay == "auto" else self.decay,
                       max_skips=(3 if refresh else 4) if self.max_skips == "auto" else self.max_skips)

    def fraction(self, steps: int) -> float:
        """The runtime as a fraction of a `steps`-step full run."""
        return self.runtime / steps if isinstance(self.runtime, int) else self.runtime

    def resolve_grid_steps(self, steps: int, inactive_cost: float = 0.0) -> int:
        """How many of a `steps`-step grid's steps HSA runs on ("auto": as many as the budget pays for with about
        half the tokens active in each, an inactive token costing inactive_cost of an active one)."""
        if self.grid_steps is None:
            return steps
        if self.grid_steps == "auto":
            return max(1, min(steps, math.ceil(2 * self.fraction(steps) * steps / (1 + inactive_cost) - 1e-9)))
        if self.grid_steps > steps:
            raise ValueError(f"grid_steps={self.grid_steps} exceeds the pipeline's {steps} steps")
        return self.grid_steps


def refresh_steps(steps: int, config: HSAConfig) -> list[bool]:
    """Which of `steps` steps refresh the inactive tokens' K/V (with kv="refresh"): every config.refresh_every-th
    partial step, counting from the first after the warm-up."""
    warmup = min(config.warmup, steps)
    return [j >= warmup and (j - warmup) % config.refresh_every == 0 for j in range(steps)]


def plan_hsa(steps: int, tokens: int, config: HSAConfig, sigmas=None, full_steps: int | None = None,
             inactive_cost: float = 0.0) -> list[int]:
    """Active tokens per sample at each step (len = steps): `warmup` full steps, then counts in proportion to
    sigma_j ** config.decay (at least 1, at most every token) that spend the rest of the runtime budget. sigmas: the
    sigma each step starts from (default: the linear grid 1 - j / steps); full_steps: the steps of the full run the
    runtime is a fraction of (default: steps); inactive_cost: what an inactive token costs at a partial step, as a
    fraction of an active one at the steps that refresh the K/V (refresh_steps; the others cost nothing for
    them; a price means the refresh, which resolves decay="auto"). Raises ValueError when the budget cannot carry
    the warm-up and one token per remaining step."""
    if not 0 <= inactive_cost < 1:
        raise ValueError(f"inactive_cost must be in [0, 1), got {inactive_cost!r}")
    config = config.resolved(refresh=inactive_cost > 0)
    full_steps = full_steps or steps
    if isinstance(config.runtime, int) and config.runtime > full_steps:
        raise ValueError(f"runtime={config.runtime} full steps exceeds the {full_steps} steps of the grid")
    budget = min(math.floor(config.fraction(full_steps) * full_steps * tokens + 1e-6), steps * tokens)
    warmup = min(config.warmup, steps)
    partial = steps - warmup
    budget -= warmup * tokens  # token-steps for the partial steps

    price = [inactive_cost * r for r in refresh_steps(steps, config)[warmup:]]

    def cost(ks: list[int]) -> float:
        return sum(k + c * (tokens - k) for k, c in zip(ks, price))

    if budget < cost([1] * partial):
        need = (warmup * tokens + partial) / (full_steps * tokens)
        what = f"{warmup} warm-up step(s)" + (f" and one token in each of the other {partial} steps" if partial else "")
        raise ValueError(f"runtime={config.runtime} cannot carry {what} of a {steps}-step grid: use runtime >= "
                         f"{need:.3f} of the {full_steps}-step run (or {math.ceil(need * full_steps)} full steps)"
                         + (", fewer warm-up steps or fewer grid_steps" if partial else ""))
    if partial == 0:
        return [tokens] * steps
    sig = [1 - j / steps for j in range(steps)] if sigmas is None else [float(s) for s in sigmas[:steps]]
    weight = [max(s, 0.0) ** config.decay for s in sig[warmup:]]

    def counts(c: float) -> list[int]:
        return [min(tokens, max(1, math.floor(c * w * tokens))) for w in weight]

    lo, hi = 0.0, 2.0 / max(min(weight), 1e-12)  # counts(hi) is every token at every step (with room for rounding)
    for _ in range(60):  # the largest scale whose counts fit the budget (counts grow with c)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(counts(mid)) <= budget else (lo, mid)
    return [tokens] * warmup + counts(lo)


@dataclass
class HSAStats:
    """active: active tokens per sample at each step; token_fraction: computed token-steps / (the full run's steps x
    tokens); compute_fraction: the same with the inactive tokens' K/V refresh counted (HSAConfig.kv)."""

    active: list[int] = field(default_factory=list)
    token_fraction: float = 0.0
    compute_fraction: float = 0.0


def tokens_to_latent(t: torch.Tensor, like: torch.Tensor, rows: int, cols: int, frames: int = 1) -> torch.Tensor:
    """(B, L, D) tokens back to a latent shaped like `like`: (B, C, H, W) images split into rows x cols patches,
    (B, C, F, H, W) videos into frames x rows x cols, or (B, L, D) packed latents (returned as they are)."""
    if like.ndim == 3:
        return t.reshape(like.shape)
    b, c = like.shape[:2]
    if like.ndim == 4:
        h, w = like.shape[2:]
        ph, pw = h // rows, w // cols
        return t.view(b, rows, cols, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(like.shape)
    f, h, w = like.shape[2:]
    pf, ph, pw = f // frames, h // rows, w // cols
    return (t.view(b, frames, rows, cols, c, pf, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(like.shape))


def latent_to_tokens(x: torch.Tensor, rows: int, cols: int, frames: int = 1) -> torch.Tensor:
    """A latent as (B, L, D) tokens in frame-major, row-major order (the inverse of tokens_to_latent)."""
    if x.ndim == 3:
        return x
    b, c = x.shape[:2]
    if x.ndim == 4:
        h, w = x.shape[2:]
        ph, pw = h // rows, w // cols
        if ph * rows != h or pw * cols != w:
            raise ValueError(f"a {h}x{w} latent does not split into {rows}x{cols} tokens")
        return x.view(b, c, rows, ph, cols, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * ph * pw)
    if x.ndim != 5:
        raise ValueError(f"latents must be (B, L, D), (B, C, H, W) or (B, C, F, H, W), got {tuple(x.shape)}")
    f, h, w = x.shape[2:]
    pf, ph, pw = f // frames, h // rows, w // cols
    if pf * frames != f or ph * rows != h or pw * cols != w:
        raise ValueError(f"a {f}x{h}x{w} latent does not split into {frames}x{rows}x{cols} tokens")
    return (x.view(b, c, frames, pf, rows, ph, cols, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
            .reshape(b, frames * rows * cols, c * pf * ph * pw))


def hsa_sample(denoiser: Denoiser, x: torch.Tensor, grid: TimeGrid, cond: Cond, config: HSAConfig,
               velocity_active: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               delta: float = 1e-6, callback: Callable[[int, int], None] | None = None
               ) -> tuple[torch.Tensor, HSAStats]:
    """Sample with per-token step allocation (see the module docstring).

    Args:
        denoiser: the adapter (its token_layout maps the latent to tokens; its velocity is the default model call).
        x: the start latent at grid.sigmas[0]. grid: the pipeline's grid. cond: the conditioning.
        velocity_active: the model call on active tokens (default: denoiser.hsa_velocity(cond), else the full
            velocity, gathered).
        callback: called as callback(step_index, num_steps) after each step (progress).
    Returns:
        (the latent at sigma = 0, HSAStats).
    """
    layout = denoiser.token_layout(x)
    call = velocity_active or (denoiser.hsa_velocity(cond, kv=config.kv) if config.cache else None)
    if hasattr(call, "fit_memory"):
        call.fit_memory(x)  # before anything is planned or allocated: may choose leaner caches (changes the price)
    inactive_cost = getattr(call, "inactive_cost", 0.0)
    sigmas = grid.sigmas.to(x.device)
    full_steps = len(sigmas) - 1
    grid_steps = config.resolve_grid_steps(full_steps, inactive_cost)
    if grid_steps < full_steps:
        sigmas = sigmas[torch.linspace(0, full_steps, grid_steps + 1).round().long().to(x.device)]
    steps = len(sigmas) - 1
    tok = latent_to_tokens(x, layout.rows, layout.cols, layout.frames)  # (B, L, D)
    b, n, _ = tok.shape

    def default_velocity(x_common, sigma, active):
        v = denoiser.velocity(x_common, sigma, cond)
        return gather_tokens(latent_to_tokens(v, layout.rows, layout.cols, layout.frames), active)

    counts = plan_hsa(steps, n, config, sigmas[:-1].tolist(), full_steps, inactive_cost)
    config = config.resolved(refresh=inactive_cost > 0)
    refresh = refresh_steps(steps, config)
    call = call or default_velocity
    s_tok = torch.full((b, n), float(sigmas[0]), device=x.device, dtype=torch.float32)  # each token's sigma
    v_tok = torch.zeros_like(tok)
    score = torch.zeros(b, n, device=x.device, dtype=torch.float32)
    skips = torch.zeros(b, n, device=x.device, dtype=torch.long)
    stats = HSAStats()
    for j in range(steps):
        sigma, sigma_next = sigmas[j], sigmas[j + 1]
        k = counts[j]
        if k == n:
            active = torch.arange(n, device=x.device).expand(b, n)
        else:
            forced = (skips >= config.max_skips).float()
            active = torch.topk(score + forced * 1e9, k, dim=1).indices
        # Bring every token to the common sigma with its cached update (a no-op for tokens already there).
        common = _cached_update(tok, s_tok, v_tok, sigma)
        if hasattr(call, "refresh_kv"):
            call.refresh_kv = refresh[j]  # whether this step refreshes the inactive tokens' K/V (the plan priced it)
        v_new = call(tokens_to_latent(common, x, layout.rows, layout.cols, layout.frames), sigma, active)  # (B, k, D)
        x_act = gather_tokens(common, active)
        dt = sigma_next - sigma
        stepped = euler_update(x_act, v_new, sigma, sigma_next)  # plain Euler's own update, bit for bit
        tok = scatter_tokens(tok, active, stepped)
        s_tok = s_tok.scatter(1, active, float(sigma_next))
        prev = gather_tokens(v_tok, active)
        v_tok = scatter_tokens(v_tok, active, v_new.to(tok.dtype))
        new_score = _active_scores(config.score, v_new, prev, dt.float(), delta, first=j < 1)
        score = score.scatter(1, active, new_score)
        skips = (skips + 1).scatter(1, active, 0)
        stats.active.append(k)
        if callback is not None:
            callback(j, steps)
    # Tokens the last step skipped take their cached update to the grid's end (a no-op after a full last step).
    tok = _cached_update(tok, s_tok, v_tok, sigmas[-1])
    stats.token_fraction = sum(stats.active) / (full_steps * n)  # of the full run's token compute
    spent = sum(k + inactive_cost * r * (n - k) for k, r in zip(stats.active, refresh))
    stats.compute_fraction = spent / (full_steps * n)
    return tokens_to_latent(tok, x, layout.rows, layout.cols, layout.frames), stats


def _cached_update(tok: torch.Tensor, s_tok: torch.Tensor, v_tok: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Every token (B, L, D) moved from its own sigma s_tok (B, L) to sigma along its cached velocity: the per-token
    flow Euler update (accel.kernels.euler: the fused kernel on GPU, its float32 torch twin elsewhere)."""
    from accel.kernels import euler

    return euler.euler_update(tok, v_tok, s_tok, sigma)


def _active_scores(kind: str, v_new: torch.Tensor, v_old: torch.Tensor, dt: torch.Tensor, delta: float,
                   first: bool) -> torch.Tensor:
    """Scores (B, k) of the tokens just computed: higher = needs steps more."""
    v_new, v_old = v_new.float(), v_old.float()
    if kind == "displacement" or first:  # no earlier velocity yet: the step's own displacement
        return (dt.abs() * v_new.norm(dim=-1))
    return (v_new - v_old).norm(dim=-1) / (v_old.norm(dim=-1) + delta)

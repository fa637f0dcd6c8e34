"""Active-token forward of diffusers DiTs (Flux, Wan, Nucleus-Image) for heterogeneous step allocation
(accel.schedulers.hsa).

The model runs its own forward; reversible hooks, installed for one HSA model call and removed after it, change
what goes through its blocks:

- a pre-hook on the first block keeps only the active image tokens (gathered per sample), and every block's
  pre-hook hands the self-attention their rotary embedding (and Wan TI2V's per-token modulation) at those tokens;
- each self-attention runs an active-token processor: queries, keys and values of the text and active tokens, the
  active keys/values scattered into the layer's cache (post-norm, post-rotary), queries against the whole cached
  sequence;
- a pre-hook on the output norm scatters the active tokens' block outputs into the cached full sequence, so the
  model's head and unpatchify see a full grid (they are per-token and cheap); the active tokens' velocities are
  read back out of it.

A full step (every token active, or the first call of a model/CFG branch) runs the model untouched and records each
self-attention's image K/V (hooks on norm_k and to_v), the rotary embedding and the last block output, and with
the K/V refresh (kv="refresh" or "extrapolate", the default: kv="auto") every block's image-stream input. The inactive
tokens' K/V then come, at each partial step that refreshes (HSAConfig.refresh_every), from their estimated block input
(their current embedding plus the block residuals cached at their last computation, with "extrapolate" plus the
residuals' trend over their last two: accel.schedulers.hsa.BlockInputs) through the block's own norm, modulation at
the current timestep, K/V projections, qk-norm and rotary embedding, as accel.pipelines.shapes_hsa describes, and stay
so at the steps between; kv="stale" keeps them as last computed. Nucleus-Image's expert-choice MoE layers see the
active tokens only, so at a partial step each expert picks its top C = ceil(capacity * k / E) of the k active tokens
(the same experts per token on average as a full step; not the full step's choice, which needs every token's
router score). Caches are kept per transformer (Wan 2.2's two
experts) and per CFG branch (the adapter's forwards in order within one velocity call). The adapter's velocity does
the rest (conditioning, CFG, NFE count), so every family keeps its own arithmetic. The processors are swapped only
where the model uses the upstream default (FluxAttnProcessor, WanAttnProcessor); anything else (IP adapters, fused
kernels, custom processors) makes `supported` False and HSA computes every token instead (exact, no saving).

Memory: before a run allocates anything, `fit_memory` checks the caches' size (`cache_bytes`) against the device's
free memory; where they do not fit it keeps the block inputs in fp8, and kv="auto" falls back further to leaner
caches; an explicit kv or a run nothing fits raises a ValueError with the sizes. Wan 2.2's first expert's caches
are dropped when the second expert starts (it never runs again).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusers.utils import logging

from accel.core.denoiser import Cond
from accel.core.memory import free_memory, gib
from accel.core.token_index import gather_tokens, other_tokens, scatter_tokens
from accel.schedulers.hsa import BlockInputs

logger = logging.get_logger(__name__)


def _rope_flux(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Flux's rotary embedding (interleaved pairs, diffusers' apply_rotary_emb with use_real_unbind_dim=-1) of x
    (B, S, H, Dh) with cos/sin (S, Dh) or per sample (B, S, Dh)."""
    cos, sin = (cos[None, :, None] if cos.ndim == 2 else cos[:, :, None]), (
        sin[None, :, None] if sin.ndim == 2 else sin[:, :, None])
    real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (x.float() * cos.to(x.device) + rotated.float() * sin.to(x.device)).to(x.dtype)


def _rope_wan(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding (WanAttnProcessor's arithmetic) of x (B, S, H, Dh), cos/sin (1 or B, S, 1, Dh)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * c - x2 * s
    out[..., 1::2] = x1 * s + x2 * c
    return out.type_as(x)


class DiTActiveTokens:
    """`velocity_active(x, sigma, active) -> v_active` for hsa_sample over a diffusers DiT adapter, for one sampling
    run (it owns the caches). Family subclasses name the modules and the attention arithmetic."""

    default_processor: type | None = None  # the upstream processor the active-token one stands in for
    active_processor: type[_ActiveProcessor]  # the active-token processor, one instance per self-attention
    default_kv = "extrapolate"  # what kv="auto" means for these families (plain patch DiTs)
    text_in_attention = False  # the text shares the self-attention sequence (Flux), so it can skip partial steps

    def __init__(self, denoiser, cond: Cond, kv: str = "auto"):
        from accel.schedulers.hsa import kv_mode

        self.denoiser, self.cond = denoiser, cond
        self.requested = kv
        self.mode = kv_mode(kv, self.default_kv)
        self.refresh = self.mode != "stale"
        self.fp8_inputs = False  # keep the refresh's block inputs and trends in fp8 (fit_memory may choose it)
        self.models = [m for m in self._transformers() if m is not None]
        self.kv: dict[tuple[int, int], list[list[torch.Tensor | None]]] = {}  # (model, branch) -> [K list, V list]
        self.out: dict[tuple[int, int], torch.Tensor] = {}  # last block output (B, N, D)
        self.active: torch.Tensor | None = None
        self.n = 0
        self.key: tuple[int, int] = (0, 0)
        self.partial = False
        self.calls: dict[int, int] = {}
        self.rope = None  # the current forward's rotary embedding (full, or at the active tokens)
        self.temb = None  # Wan: the blocks' modulation input, at the active tokens where it is per token
        self.inputs: dict[tuple[int, int], BlockInputs] = {}  # refresh: each block's image-stream input
        self.sigma = 1.0  # the current call's
        self.inactive: torch.Tensor | None = None
        self.embed: torch.Tensor | None = None  # the inactive tokens' current embedding (the first block's input)
        self.inactive_rope: tuple | None = None  # the rotary embedding at the inactive tokens
        self.refresh_kv = True  # set by hsa_sample per step: whether this partial step refreshes the inactive K/V
        # the text stream with the refresh (families whose text shares the self-attention, skips_text): its K/V
        # per (model, branch) and layer, recorded at full steps and remade at refreshing steps from its block inputs
        self.txt: dict[tuple[int, int], list[list[torch.Tensor | None]]] = {}
        self.h_txt: dict[tuple[int, int], list[torch.Tensor | None]] = {}

    @property
    def inactive_cost(self) -> float:
        """An inactive token's cost per partial step as a fraction of an active one's (matmul FLOPs of a block):
        its K/V projections at the steps that refresh with kv="refresh" or "extrapolate", nothing with "stale"."""
        return self._kv_share() if self.refresh else 0.0

    @property
    def skips_text(self) -> bool:
        """Partial steps leave the text stream out (its K/V come from the cache): with the K/V refresh, where the
        text shares the self-attention."""
        return self.refresh and self.text_in_attention

    def cache_bytes(self, x: torch.Tensor, mode: str | None = None, fp8_inputs: bool | None = None) -> int:
        """What this run's caches take for the start latent x with the K/V mode `mode` (default: the run's) and the
        block inputs in fp8 or not (default: the run's), at their largest (one transformer's at a time: Wan 2.2's
        first expert's are dropped when the second starts): per layer and forward (batch x CFG passes) every image
        token's keys and values, with the refresh its block input, with the extrapolation its residual's trend (from
        the second block on); where the text skips partial steps its K/V and block inputs; and the last block's
        output."""
        mode = mode or self.mode
        fp8 = self.fp8_inputs if fp8_inputs is None else fp8_inputs
        n = self.denoiser.token_layout(x).num_tokens
        t = self._text_tokens() if mode != "stale" and self.text_in_attention else 0
        largest = 0
        for model in self.models:
            size = model.dtype.itemsize
            total = 0
            for i, block in enumerate(self._blocks(model)):
                attn = self._self_attention(block)
                inner, width = attn.to_k.out_features, attn.to_k.in_features
                inputs = (mode != "stale") + (mode == "extrapolate" and i > 0)  # block input, trend
                row = width + 4 if fp8 else width * size  # fp8: a byte per element and a float32 scale per row
                total += n * (2 * inner * size + inputs * row) + t * (2 * inner + width) * size
            total += n * width * size  # the last block's output
            largest = max(largest, total)
        return largest * self.cond.batch * self.cond.passes

    def fit_memory(self, x: torch.Tensor, room: int | None = None) -> None:
        """Check, before the run allocates anything, that its caches fit in 90% of the memory free on x's device
        (the rest is left for the forward's own activations: a guard against a certain out-of-memory error, not a
        guarantee). Where they do not, the refresh's block inputs and trends are kept in fp8 (Fp8Rows: half the
        memory of bf16 for them), and kv="auto" goes on to the plain refresh with fp8 inputs, then to the stale
        cache; each step is a warning with the sizes. An explicit kv that does not fit even so, or a run no mode
        fits, raises a ValueError with the sizes. room: the bytes to fit in (default: from
        accel.core.memory.free_memory)."""
        if room is None:
            free = free_memory(x.device)
            if free is None:
                return
            room = int(0.9 * free)
        chain = [("extrapolate", False), ("extrapolate", True), ("refresh", True), ("stale", False)]
        if self.requested != "auto":
            chain = [(self.mode, False)] + ([(self.mode, True)] if self.mode != "stale" else [])
        need = {option: self.cache_bytes(x, *option) for option in chain}
        if need[chain[0]] <= room:
            return
        fits = [option for option in chain if need[option] <= room]
        sizes = ", ".join(f"{_cache_name(o)} {gib(b)}" for o, b in need.items())
        if fits:
            logger.warning(f"steps='hsa': the caches with {_cache_name(chain[0])} need {gib(need[chain[0]])}, more "
                           f"than the {gib(room)} available on {x.device}; using {_cache_name(fits[0])} ({sizes})")
            self.mode, self.fp8_inputs = fits[0]
            self.refresh = self.mode != "stale"
            return
        hint = ("use kv='auto' (leaner caches)" if self.requested != "auto" and self.mode != "stale" else
                "use a smaller resolution, fewer frames or a smaller batch, or sample without steps='hsa'")
        raise ValueError(f"steps='hsa' needs {gib(need[chain[-1]])} for its caches at the least ({sizes}; batch x "
                         f"CFG passes = {self.cond.batch * self.cond.passes}), more than the {gib(room)} available "
                         f"on {x.device}: {hint}")

    # -- family specifics ------------------------------------------------------------------------------------
    def _transformers(self) -> list:
        return [self.denoiser.transformer]

    def _blocks(self, model) -> list[torch.nn.Module]:
        raise NotImplementedError

    def _self_attention(self, block) -> torch.nn.Module:
        return block.attn

    def _block_pre(self, model, i: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Record the rotary embedding (full steps) or gather the block's inputs to the active tokens."""
        raise NotImplementedError

    def _record_k(self, attn, out: torch.Tensor) -> torch.Tensor:
        """norm_k's output -> the image keys (B, N, H, Dh) after the rotary embedding."""
        raise NotImplementedError

    def _record_v(self, attn, out: torch.Tensor) -> torch.Tensor:
        """to_v's output -> the image values (B, N, H, Dh)."""
        return out[:, -self.n:].unflatten(-1, (attn.heads, -1))

    def _hidden(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """A block's image-stream input (B, N or k, D) from its call arguments."""
        raise NotImplementedError

    def _kv(self, block, h: torch.Tensor, args: tuple, kwargs: dict, index: torch.Tensor):
        """The keys (post-norm, post-rotary) and values (B, m, H, Dh) the block's self-attention makes for the image
        tokens `index` (B, m) whose block input is h (B, m, D); args / kwargs: the block's (full-step) call."""
        raise NotImplementedError

    def _kv_share(self) -> float:
        """A block's K/V projections as a fraction of its per-token matmul FLOPs."""
        raise NotImplementedError

    def _text_tokens(self) -> int:
        """The text tokens in the self-attention sequence (families with text_in_attention)."""
        return 0

    def _text_kv(self, block, h: torch.Tensor, kwargs: dict):
        """skips_text: the text's keys (post-norm, post-rotary) and values (B, T, H, Dh) the block's self-attention
        makes from the text-stream input h (B, T, D); kwargs: the block's (full-step) call."""
        raise NotImplementedError

    def _text_hooks(self, i: int, block) -> list:
        """skips_text: hooks recording layer i's text K/V at full steps (into self.txt[self.key])."""
        raise NotImplementedError

    @classmethod
    def for_run(cls, denoiser, cond: Cond, kv: str = "auto") -> DiTActiveTokens | None:
        """The active-token forward for one HSA run, or None (with a warning) where the model's attention
        processors are not the upstream defaults: then HSA computes every token."""
        run = cls(denoiser, cond, kv)
        if run.supported:
            return run
        logger.warning(f"{type(denoiser).__name__}: the transformer's attention processors are not "
                       f"{cls.default_processor.__name__} (IP adapter, fused kernels or custom processors), so "
                       "steps='hsa' computes every token: the same allocation without the saving")
        return None

    # -- generic ---------------------------------------------------------------------------------------------
    @property
    def supported(self) -> bool:
        """Every self-attention runs the upstream default processor (see the module docstring)."""
        attns = [self._self_attention(b) for m in self.models for b in self._blocks(m)]
        return bool(attns) and all(type(a.processor) is self.default_processor
                                   and not getattr(a, "fused_projections", False) for a in attns)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        from accel.schedulers.hsa import latent_to_tokens

        d = self.denoiser
        layout = d.token_layout(x)
        self.n = layout.num_tokens
        self.active = None if active.shape[1] == self.n else active
        self.sigma = float(sigma)
        self.calls = {}
        handles = []
        for mi, model in enumerate(self.models):
            handles += self._install(mi, model)
        try:
            v = d.velocity(x, sigma, self.cond)
        finally:
            for undo in reversed(handles):
                undo()
        return gather_tokens(latent_to_tokens(v, layout.rows, layout.cols, layout.frames), active, 1)

    def _install(self, mi: int, model) -> list:
        """Hooks for one HSA model call on one transformer; returns their undos."""
        blocks = self._blocks(model)
        attns = [self._self_attention(b) for b in blocks]
        originals = [a.processor for a in attns]

        def model_pre(module, args, kwargs):
            branch = self.calls.get(mi, 0)
            self.calls[mi] = branch + 1
            self.key = (mi, branch)
            self.partial = self.active is not None and self.key in self.kv
            if self.partial:
                for i, a in enumerate(attns):
                    a.processor = self.active_processor(self, i)
            else:
                for key in [k for k in self.kv if k[0] != mi]:  # another expert's: it will not run again
                    for caches in (self.kv, self.out, self.inputs, self.txt, self.h_txt):
                        caches.pop(key, None)
                self.kv[self.key] = [[None] * len(attns), [None] * len(attns)]
                if self.skips_text:
                    self.txt[self.key] = [[None] * len(attns), [None] * len(attns)]
                    self.h_txt[self.key] = [None] * len(attns)
            return args, kwargs

        def model_post(module, args, out):
            for a, p in zip(attns, originals):
                a.processor = p

        def block_pre(i):
            def hook(module, args, kwargs):
                if self.refresh and self.refresh_kv and self.partial and i == 0:  # every embedding, before the gather
                    self.inactive = other_tokens(self.active, self.n)
                    self.embed = gather_tokens(self._hidden(args, kwargs), self.inactive, 1)
                    self.inactive_rope = None  # gathered once per call, by the first block's _kv
                full = (args, kwargs)
                args, kwargs = self._block_pre(model, i, args, kwargs)
                if self.refresh:
                    self._refresh(module, i, full, self._hidden(args, kwargs))
                return args, kwargs
            return hook

        def norm_out_pre(module, args):
            h = args[0]
            if self.partial:
                h = scatter_tokens(self.out[self.key].to(h.dtype), self.active, h, 1)
            self.out[self.key] = h
            if self.refresh:
                self.inputs[self.key].computed(self.sigma, self.active if self.partial else None)
            return (h, *args[1:])

        def record(i, kind):
            def hook(module, args, out):
                if self.partial:
                    return
                if kind == "k":
                    self.kv[self.key][0][i] = self._record_k(attns[i], out)
                else:
                    self.kv[self.key][1][i] = self._record_v(attns[i], out)
            return hook

        hs = [model.register_forward_pre_hook(model_pre, with_kwargs=True), model.register_forward_hook(model_post),
              model.norm_out.register_forward_pre_hook(norm_out_pre)]
        for i, (b, a) in enumerate(zip(blocks, attns)):
            hs += [b.register_forward_pre_hook(block_pre(i), with_kwargs=True),
                   a.norm_k.register_forward_hook(record(i, "k")), a.to_v.register_forward_hook(record(i, "v"))]
            if self.skips_text:
                hs += self._text_hooks(i, b)
        return [h.remove for h in hs] + [lambda: [setattr(a, "processor", p) for a, p in zip(attns, originals)]]

    def _refresh(self, block, i: int, full: tuple[tuple, dict], hidden: torch.Tensor) -> None:
        """kv="refresh": on a full step record the block's input; on a partial one make the inactive tokens' K/V
        from their estimated input into the cache (at the steps that refresh), and record the active tokens'
        input."""
        if not self.partial:
            layers = len(self.kv[self.key][0])
            inputs = self.inputs.setdefault(self.key, BlockInputs(layers, self.mode == "extrapolate", self.fp8_inputs))
            inputs.record(i, hidden)
            if self.skips_text:
                self.h_txt[self.key][i] = full[1]["encoder_hidden_states"]
            return
        inputs = self.inputs[self.key]
        if not self.refresh_kv:
            inputs.record(i, hidden, self.active)
            return
        if self.skips_text:
            txt = self.txt[self.key]
            txt[0][i], txt[1][i] = self._text_kv(block, self.h_txt[self.key][i].to(hidden.dtype), full[1])
        if i == 0:
            inputs.prepare(self.embed.to(hidden.dtype), self.sigma, self.inactive)
        k, v = self._kv(block, inputs.estimate(i), *full, self.inactive)
        cache = self.kv[self.key]
        cache[0][i] = scatter_tokens(cache[0][i].to(k.dtype), self.inactive, k, 1)
        cache[1][i] = scatter_tokens(cache[1][i].to(v.dtype), self.inactive, v, 1)
        inputs.record(i, hidden, self.active)

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t_len: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v (B, t_len + k, H, Dh) of the text and active tokens: the active K/V scattered into the layer's
        cache, queries against [text; cached image] -> (B, t_len + k, H * Dh). With skips_text (t_len = 0) the
        text's K/V come from its cache."""
        cache = self.kv[self.key]
        cache[0][layer] = scatter_tokens(cache[0][layer].to(k.dtype), self.active, k[:, t_len:], 1)
        cache[1][layer] = scatter_tokens(cache[1][layer].to(v.dtype), self.active, v[:, t_len:], 1)
        k_txt, v_txt = k[:, :t_len], v[:, :t_len]
        if self.skips_text:
            k_txt, v_txt = (t[layer].to(k.dtype) for t in self.txt[self.key])
        keys = torch.cat([k_txt, cache[0][layer]], 1).transpose(1, 2)
        values = torch.cat([v_txt, cache[1][layer]], 1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
        return out.transpose(1, 2).flatten(2, 3).to(q.dtype)


def _cache_name(option: tuple[str, bool]) -> str:
    """(kv mode, fp8 block inputs) for messages."""
    return f"kv='{option[0]}'" + (" with fp8 block inputs" if option[1] else "")


class _ActiveProcessor:
    """An attention processor that runs one self-attention layer's arithmetic on the run's active tokens against
    its caches (DiTActiveTokens._attend); installed for partial model calls only."""

    def __init__(self, run: DiTActiveTokens, layer: int):
        self.run, self.layer = run, layer


class _FluxProcessor(_ActiveProcessor):
    """FluxAttnProcessor's arithmetic on [text; active image] tokens against the run's caches."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        run = self.run
        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            q, k = torch.cat([attn.norm_added_q(eq), q], 1), torch.cat([attn.norm_added_k(ek), k], 1)
            v = torch.cat([ev, v], 1)
        if run.rope is not None:
            q, k = _rope_flux(q, *run.rope), _rope_flux(k, *run.rope)
        t_len = q.shape[1] - run.active.shape[1]
        out = run._attend(self.layer, q, k, v, t_len, attention_mask)
        if encoder_hidden_states is None:
            return out
        context, out = out[:, :t_len], out[:, t_len:]
        return attn.to_out[1](attn.to_out[0](out.contiguous())), attn.to_add_out(context.contiguous())


class FluxActiveTokens(DiTActiveTokens):
    """FluxTransformer2DModel: dual-stream blocks then single-stream blocks, text tokens first in attention, rotary
    embedding over [text; image] ids."""

    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor as default_processor

    active_processor = _FluxProcessor
    text_in_attention = True

    def _blocks(self, model):
        return list(model.transformer_blocks) + list(model.single_transformer_blocks)

    def _block_pre(self, model, i, args, kwargs):
        rope = kwargs.get("image_rotary_emb")
        if not self.partial:
            self.rope = rope
            return args, kwargs
        if i == 0:  # gather the image tokens, and the rotary embedding every block shares
            kwargs = dict(kwargs, hidden_states=gather_tokens(kwargs["hidden_states"], self.active, 1))
            if self.skips_text:  # no text rows through the blocks: its K/V come from the cache
                kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"][:, :0]
            if rope is not None:
                t_len = 0 if self.skips_text else rope[0].shape[0] - self.n
                b = self.active.shape[0]
                self.rope = tuple(torch.cat([r[:t_len].expand(b, -1, -1), gather_tokens(r[-self.n:].expand(b, -1, -1),
                                                                                  self.active, 1)], 1) for r in rope)
        return args, kwargs

    def _record_k(self, attn, out):
        k = out[:, -self.n:]
        return k if self.rope is None else _rope_flux(k, self.rope[0][-self.n:], self.rope[1][-self.n:])

    def _hidden(self, args, kwargs):
        return kwargs["hidden_states"]

    @staticmethod
    def _project(block, h, temb, text: bool = False):
        """Keys (post-norm, before the rotary embedding) and values (B, m, H, Dh) that the block's self-attention
        makes from stream input h: the image stream's, or with text the text stream's (in a double block its own
        norm and projections; a single block's are shared)."""
        attn = block.attn
        if text and hasattr(block, "norm1_context"):
            norm = block.norm1_context(h, emb=temb)[0]
            to_k, to_v, norm_k = attn.add_k_proj, attn.add_v_proj, attn.norm_added_k
        else:
            norm = (block.norm1 if hasattr(block, "norm1") else block.norm)(h, emb=temb)[0]
            to_k, to_v, norm_k = attn.to_k, attn.to_v, attn.norm_k
        return norm_k(to_k(norm).unflatten(-1, (-1, attn.head_dim))), to_v(norm).unflatten(-1, (-1, attn.head_dim))

    def _kv(self, block, h, args, kwargs, index):
        k, v = self._project(block, h, kwargs["temb"])
        rope = kwargs.get("image_rotary_emb")
        if rope is not None:
            if self.inactive_rope is None:
                b = index.shape[0]
                self.inactive_rope = tuple(gather_tokens(r[-self.n:].expand(b, -1, -1), index, 1) for r in rope)
            k = _rope_flux(k, *self.inactive_rope)
        return k, v

    def _kv_share(self):
        return 2 / 12  # double blocks: QKV 3 + out 1 + MLP 8 (d^2 per image token); single: QKV 3 + MLP 4 + out 5

    def _text_tokens(self):
        return self.cond.data["embeds"].shape[1]

    def _text_rope(self, rope):
        """The text rows of the full ([text; image]) rotary embedding, or None."""
        return None if rope is None else tuple(r[: r.shape[0] - self.n] for r in rope)

    def _text_kv(self, block, h, kwargs):
        k, v = self._project(block, h, kwargs["temb"], text=True)
        rope = self._text_rope(kwargs.get("image_rotary_emb"))
        return (k if rope is None else _rope_flux(k, *rope)), v

    def _text_hooks(self, i, block):
        attn = block.attn
        double = hasattr(block, "norm1_context")

        def record(kind):
            def hook(module, args, out):
                if self.partial:
                    return
                t = out.unflatten(-1, (-1, attn.head_dim)) if kind == "v" else out
                t = t if double else t[:, : t.shape[1] - self.n]  # single blocks: the text rows of [text; image]
                if kind == "k" and self.rope is not None:
                    t = _rope_flux(t, *self._text_rope(self.rope))
                self.txt[self.key][0 if kind == "k" else 1][i] = t
            return hook

        k_mod, v_mod = (attn.norm_added_k, attn.add_v_proj) if double else (attn.norm_k, attn.to_v)
        return [k_mod.register_forward_hook(record("k")), v_mod.register_forward_hook(record("v"))]


class _WanProcessor(_ActiveProcessor):
    """WanAttnProcessor's self-attention arithmetic on the active tokens against the run's caches."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        q, k = _rope_wan(q, *rotary_emb), _rope_wan(k, *rotary_emb)
        out = self.run._attend(self.layer, q, k, v, 0, attention_mask).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


class WanActiveTokens(DiTActiveTokens):
    """WanTransformer3DModel (2.1, 2.2 with two experts, TI2V's per-token modulation): self-attention over video
    tokens with 3D rotary embedding, cross-attention to the text per query (so nothing to cache there)."""

    from diffusers.models.transformers.transformer_wan import WanAttnProcessor as default_processor

    active_processor = _WanProcessor

    def _transformers(self):
        return [self.denoiser.pipe.transformer, getattr(self.denoiser.pipe, "transformer_2", None)]

    def _blocks(self, model):
        return list(model.blocks)

    def _self_attention(self, block):
        return block.attn1

    def _block_pre(self, model, i, args, kwargs):
        hidden, context, temb, rope = args
        if not self.partial:
            self.rope = rope
            return args, kwargs
        b = self.active.shape[0]
        if i == 0:
            hidden = gather_tokens(hidden, self.active, 1)
            self.rope = tuple(gather_tokens(r.expand(b, -1, -1, -1), self.active, 1) for r in rope)
            self.temb = gather_tokens(temb, self.active, 1) if temb.ndim == 4 else temb  # TI2V: (B, N, 6, D) per token
        return (hidden, context, self.temb, self.rope), kwargs

    def _record_k(self, attn, out):
        k = out[:, -self.n:].unflatten(2, (attn.heads, -1))
        return _rope_wan(k, *self.rope)

    def _hidden(self, args, kwargs):
        return args[0]

    def _kv(self, block, h, args, kwargs, index):
        _, _, temb, rope = args
        b = index.shape[0]
        if temb.ndim == 4:  # TI2V: per token
            mod = block.scale_shift_table.unsqueeze(0) + gather_tokens(temb, index, 1).float()
            shift, scale = mod.chunk(6, dim=2)[:2]
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
        norm = (block.norm1(h.float()) * (1 + scale) + shift).type_as(h)
        attn = block.attn1
        k = attn.norm_k(attn.to_k(norm)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(norm).unflatten(2, (attn.heads, -1))
        if self.inactive_rope is None:
            self.inactive_rope = tuple(gather_tokens(r.expand(b, -1, -1, -1), index, 1) for r in rope)
        return _rope_wan(k, *self.inactive_rope), v

    def _kv_share(self):
        c = self.models[0].config
        d = c.num_attention_heads * c.attention_head_dim
        return 2 / (6 + 2 * c.ffn_dim / d)  # self-attn QKV 3 + out 1, cross-attn Q 1 + out 1, FFN 2 ffn_dim / d


def _rope_nucleus(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Nucleus's rotary embedding (diffusers' _apply_rotary_emb_nucleus with complex freqs) of x (B, S, H, Dh), with
    freqs (S, Dh / 2) or per sample (B, S, Dh / 2)."""
    f = freqs[:, None] if freqs.ndim == 2 else freqs[:, :, None]
    rotated = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(rotated * f).flatten(3).type_as(x)


class _NucleusProcessor(_ActiveProcessor):
    """NucleusMoEAttnProcessor2_0's arithmetic: the active image tokens' queries against the layer's cached image
    K/V (the active ones scattered in) followed by the text K/V (made here, or diffusers' text K/V cache's)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 cached_txt_key=None, cached_txt_value=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_nucleusmoe_image import NucleusMoEAttnProcessor2_0 as up

        run, layer = self.run, self.layer
        kv_heads = attn.inner_kv_dim // (attn.inner_dim // attn.heads)
        q = attn.to_q(hidden_states).unflatten(-1, (attn.heads, -1))
        k = attn.to_k(hidden_states).unflatten(-1, (kv_heads, -1))
        v = attn.to_v(hidden_states).unflatten(-1, (kv_heads, -1))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if image_rotary_emb is not None:
            q, k = _rope_nucleus(q, run.rope), _rope_nucleus(k, run.rope)
        cache = run.kv[run.key]
        cache[0][layer] = keys = scatter_tokens(cache[0][layer].to(k.dtype), run.active, k, 1)
        cache[1][layer] = values = scatter_tokens(cache[1][layer].to(v.dtype), run.active, v, 1)
        if cached_txt_key is not None and cached_txt_value is not None:
            keys, values = torch.cat([keys, cached_txt_key], 1), torch.cat([values, cached_txt_value], 1)
        elif encoder_hidden_states is not None:
            txt_k = attn.add_k_proj(encoder_hidden_states).unflatten(-1, (kv_heads, -1))
            txt_v = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (kv_heads, -1))
            if attn.norm_added_k is not None:
                txt_k = attn.norm_added_k(txt_k)
            if image_rotary_emb is not None:
                txt_k = _rope_nucleus(txt_k, image_rotary_emb[1])
            keys, values = torch.cat([keys, txt_k], 1), torch.cat([values, txt_v], 1)
        groups = attn.heads // kv_heads
        if groups > 1:
            keys, values = keys.repeat_interleave(groups, dim=2), values.repeat_interleave(groups, dim=2)
        out = dispatch_attention_fn(q, keys, values, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=up._attention_backend, parallel_config=up._parallel_config)
        out = attn.to_out[0](out.flatten(2, 3).to(q.dtype))
        return attn.to_out[1](out) if len(attn.to_out) > 1 else out


class NucleusActiveTokens(DiTActiveTokens):
    """NucleusMoEImageTransformer2DModel: single-stream image blocks whose attention reads the text as extra keys
    and values (no text queries, so nothing per text token to skip), complex rotary embedding, grouped-query
    attention, expert-choice MoE feed-forwards (see the module docstring for their routing at partial steps)."""

    from diffusers.models.transformers.transformer_nucleusmoe_image import (
        NucleusMoEAttnProcessor2_0 as default_processor)

    active_processor = _NucleusProcessor

    def _blocks(self, model):
        return list(model.transformer_blocks)

    def _block_pre(self, model, i, args, kwargs):
        rope = kwargs.get("image_rotary_emb")
        if not self.partial:
            self.rope = None if rope is None else rope[0]
            return args, kwargs
        if i == 0:  # the later blocks receive the active tokens from the one before
            b = self.active.shape[0]
            kwargs = dict(kwargs, hidden_states=gather_tokens(kwargs["hidden_states"], self.active, 1))
            self.rope = None if rope is None else gather_tokens(rope[0].expand(b, -1, -1), self.active, 1)
        return args, kwargs

    def _record_k(self, attn, out):
        return out if self.rope is None else _rope_nucleus(out, self.rope)

    def _record_v(self, attn, out):
        return out.unflatten(-1, (attn.inner_kv_dim // (attn.inner_dim // attn.heads), -1))

    def _hidden(self, args, kwargs):
        return kwargs["hidden_states"]

    def _kv(self, block, h, args, kwargs, index):
        scale = block.img_mod(kwargs["temb"]).unsqueeze(1).chunk(4, dim=-1)[0]
        norm = block.pre_attn_norm(h) * (1 + scale)
        attn = block.attn
        kv_heads = attn.inner_kv_dim // (attn.inner_dim // attn.heads)
        k = attn.to_k(norm).unflatten(-1, (kv_heads, -1))
        k = attn.norm_k(k) if attn.norm_k is not None else k
        v = attn.to_v(norm).unflatten(-1, (kv_heads, -1))
        rope = kwargs.get("image_rotary_emb")
        if rope is None:
            return k, v
        if self.inactive_rope is None:
            self.inactive_rope = gather_tokens(rope[0].expand(index.shape[0], -1, -1), index, 1)
        return _rope_nucleus(k, self.inactive_rope), v

    def _kv_share(self):
        """Per image token, MACs of the attention projections and the feed-forward (a MoE block's routed experts at
        their trained capacity: C * E token rows of each expert's weights over S tokens is capacity x one expert)."""
        kv = total = 0.0
        for block in self._blocks(self.models[0]):
            a = block.attn
            kv_b = a.to_k.weight.numel() + a.to_v.weight.numel()
            total += kv_b + a.to_q.weight.numel() + a.to_out[0].weight.numel()
            mlp = block.img_mlp
            if block.moe_enabled:
                experts = mlp.experts
                one = (experts.gate_up_proj.numel() + experts.down_proj.numel()) / mlp.num_experts
                total += mlp.capacity_factor * one + sum(m.weight.numel() for m in mlp.shared_expert.modules()
                                                         if isinstance(m, torch.nn.Linear)) + mlp.gate.weight.numel()
            else:
                total += sum(m.weight.numel() for m in mlp.modules() if isinstance(m, torch.nn.Linear))
            kv += kv_b
        return kv / total

"""Active-token forward of the built-in DiT for heterogeneous step allocation (accel.schedulers.hsa).

At a partial HSA step only the active image tokens (and, with kv="stale", the text tokens) go through the DiT
blocks. In every block their queries attend to the whole sequence: fresh K/V for the text and
the active tokens, and K/V for the inactive tokens from the cache (kept per layer and per CFG branch, which are rows
of the batch). The inactive tokens' block outputs are cached too, so the convolutional head sees a full token grid.
A full step (every token active) runs the model's own forward, exactly, and refreshes all caches.

Inactive tokens' K/V (kv="refresh" / "extrapolate", the latter the video model's default): each block's input for an
inactive token is estimated as its *current* embedding (cheap: every token is embedded at the steps that refresh)
plus the block residuals accumulated up to that block when the token was last computed, h_l ~ e_now + (h_l - e)_cached
("extrapolate" adds the residuals' trend over the token's last two computations: accel.schedulers.hsa.BlockInputs),
and the block's own norm, modulation (at the current sigma) and K/V projections make its keys and values, at every
HSAConfig.refresh_every-th partial step (the steps between keep them as refreshed). This costs the inactive
tokens' K/V projections (about a sixth of a token's block compute) and removes most of the staleness: a skipped
token's latent moves with its cached Euler update, and its embedding moves with it. kv="stale" keeps the K/V as
last computed (the paper's cache). The image DiT defaults to "stale" (kv="auto"): there the refresh measured
worse at the same budget, its convolutional stem and head being most of the compute. With the refresh the text
tokens skip partial steps as well: their K/V are made from their block inputs at the last full step, modulated at
the current sigma; with "stale" K/V the text is recomputed at every step, which measured better there. The
measurements: docs/hsa.md.

What this saves is the blocks' share of the model's compute: the built-in DiT's convolutional stem and head run at
full resolution every step (their receptive fields span many tokens), so its wall-time floor is well above the
active fraction; a plain patch DiT (Flux, Wan, the video model) saves in proportion.

Nothing on the model is changed: the forward reads the model's modules, so there is nothing to restore.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from accel.core.denoiser import Cond
from accel.core.token_index import gather_tokens, scatter_tokens, scatter_tokens_


class ActiveTokens:
    """`velocity_active(x, sigma, active) -> v_active` for hsa_sample on a DiT built from the shapes DiTBlock, for
    one sampling run: the K/V caches (per layer: (B2, heads, L, head_dim) of the image tokens, B2 = CFG branches x
    batch), full steps through the model's own forward with recording hooks, and the blocks' loop on the active
    tokens. A subclass supplies `_active_velocity` (its embedding and head around `_blocks`), and `_full_hooks` for
    anything else a full step must record.

    x: the latent with every token at sigma; active: (B, k) token indices; returns the guided velocity of the active
    tokens, (B, k, D), in accel.schedulers.hsa's token layout.
    """

    default_kv = "extrapolate"  # what kv="auto" means for the family

    def __init__(self, denoiser, cond: Cond, kv: str = "auto"):
        from accel.schedulers.hsa import BlockInputs, kv_mode

        self.denoiser, self.cond = denoiser, cond
        self.mode = kv_mode(kv, self.default_kv)
        self.refresh = self.mode != "stale"
        # per layer, [text; image] K/V buffers (B2, heads, T + L, head_dim) the attention reads, updated in place;
        # k / v are their image parts (views)
        self.kbuf: list[torch.Tensor | None] = []
        self.vbuf: list[torch.Tensor | None] = []
        self.k: list[torch.Tensor | None] = []
        self.v: list[torch.Tensor | None] = []
        # refresh / extrapolate: each block's image-token input at every token's last computation (and the
        # residuals' trend)
        self.inputs = BlockInputs(len(denoiser.transformer.blocks), extrapolate=self.mode == "extrapolate")
        self.sigma = 1.0  # the current call's sigma
        self.h_txt: list[torch.Tensor | None] = []  # refresh: each block's text-token input at the last full step
        self.refresh_kv = True  # set by hsa_sample per step: whether this partial step refreshes the inactive K/V

    @property
    def inactive_cost(self) -> float:
        """An inactive token's cost per partial step as a fraction of an active token's block compute (matmul
        FLOPs) at a step that refreshes: its K/V projections (2 d^2 of 4 d^2 + the MLP's, 2 mlp_ratio d^2 in a
        dense block, averaged over the blocks) with the refresh (kv="refresh" or "extrapolate"), nothing with
        "stale"."""
        if not self.refresh:
            return 0.0
        blocks = self.denoiser.transformer.blocks
        d = blocks[0].attn.to_k.in_features
        return 2 * d * d / (4 * d * d + sum(b.feed_forward_macs() for b in blocks) / len(blocks))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        from accel.schedulers.hsa import latent_to_tokens

        d, cond = self.denoiser, self.cond
        layout = d.token_layout(x)
        if active.shape[1] == layout.num_tokens or not self.k:
            v = latent_to_tokens(self._full(x, sigma), layout.rows, layout.cols, layout.frames)
            return gather_tokens(v, active, 1)
        cfg = cond.passes == 2
        b = x.shape[0]
        x_in = torch.cat([x, x]) if cfg else x
        s = sigma.to(x.device, torch.float32).expand(b)
        s = torch.cat([s, s]) if cfg else s
        act = torch.cat([active, active]) if cfg else active
        self.sigma = float(sigma)
        out = self._active_velocity(x_in, s, act)
        if self.refresh:
            self.inputs.computed(self.sigma, act)
        if cfg:
            v_uncond, v_cond = out.chunk(2)
            out = v_uncond + cond.data["guidance"] * (v_cond - v_uncond)
        d.nfe += b * cond.passes
        return out

    def _active_velocity(self, x: torch.Tensor, sigma: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Unguided velocity tokens (B2, k, D) of the active tokens, sigma (B2,); updates the caches."""
        raise NotImplementedError

    def _full_hooks(self, model) -> list:
        return []

    def _full(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The model's own forward (with whatever it has installed, e.g. fused kernels), every token; hooks record
        each block's image K/V on the way."""
        model, t_len = self.denoiser.transformer, self.cond.data["embeds"].shape[1]
        layers = len(model.blocks)
        self.kbuf, self.vbuf, self.k, self.v = [None] * layers, [None] * layers, [None] * layers, [None] * layers

        # The forward's own tensors are kept, not copied: they are this run's from here on (written in place by
        # later partial steps, after this forward is done with them). The keys are normalised here from to_k's
        # output: fused kernels (accel.pipelines.shapes_kernels) fuse the q/k norm, so norm_k is not called.
        def record(i, kind):
            def hook(module, args, out):
                attn = model.blocks[i].attn
                heads = out.view(out.shape[0], out.shape[1], attn.heads, -1).transpose(1, 2)  # (B2, H, T + L, Dh)
                if kind == "k":
                    self.kbuf[i] = attn.norm_k(heads)
                    self.k[i] = self.kbuf[i][:, :, t_len:]
                else:
                    self.vbuf[i] = heads
                    self.v[i] = self.vbuf[i][:, :, t_len:]
            return hook

        def record_input(i):
            def hook(module, args):
                self.inputs.record(i, args[0][:, t_len:])
                self.h_txt[i] = args[0][:, :t_len]
            return hook

        handles = self._full_hooks(model)
        self.h_txt = [None] * len(model.blocks)
        for i, block in enumerate(model.blocks):
            handles += [block.attn.to_k.register_forward_hook(record(i, "k")),
                        block.attn.to_v.register_forward_hook(record(i, "v"))]
            if self.refresh:
                handles.append(block.register_forward_pre_hook(record_input(i)))
        try:
            v = self.denoiser.velocity(x, sigma, self.cond)
        finally:
            for h in handles:
                h.remove()
        if self.refresh:
            self.inputs.computed(float(sigma))
        return v

    def _blocks(self, model, tokens: torch.Tensor, c: torch.Tensor, keep: torch.Tensor | None, t_len: int,
                active: torch.Tensor | None, embed: torch.Tensor | None = None) -> torch.Tensor:
        """[text; queries] tokens through the model's DiTBlocks, attention against the caches (see _attention).
        embed: every image token's current embedding (B2, L, D), the first block's input, for kv="refresh"."""
        if self.refresh and active is not None and active.shape[1] < self.k[0].shape[2]:
            if self.refresh_kv:
                return self._refreshed_blocks(model, tokens, c, keep, t_len, active, embed)
            # a step between refreshes (HSAConfig.refresh_every): only the active image tokens go through, against
            # the text's and the inactive tokens' K/V as last refreshed; their block inputs are kept for the next
            text, tokens = tokens[:, :t_len], tokens[:, t_len:]
            return torch.cat([text, self._loop(model, tokens, c, keep, 0, active, record=True)], 1)
        return self._loop(model, tokens, c, keep, t_len, active)

    def _loop(self, model, tokens, c, keep, t_len: int, active: torch.Tensor | None, record: bool = False):
        """The blocks over [text (t_len rows); image queries], attention through _attention; record: keep each
        block's input for the active rows (self.inputs)."""
        for i, block in enumerate(model.blocks):
            shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=-1)
            if record:
                self.inputs.record(i, tokens, active)
            tokens = tokens + gate1 * self._attention(block.attn, block.norm1(tokens) * (1 + scale1) + shift1,
                                                       keep, i, t_len, active)
            tokens = tokens + gate2 * block.feed_forward(tokens, shift2, scale2, c)
        return tokens

    def _refreshed_blocks(self, model, tokens, c, keep, t_len: int, active: torch.Tensor, embed) -> torch.Tensor:
        """A partial step with kv="refresh" (module docstring): only the active image tokens go through the blocks
        (the text skips too); each block's input for every other token is estimated (the image tokens' cached input
        plus their embedding's change, the text's cached input), and the block makes the whole sequence's K/V from
        it in one pass, the active rows from their actual input."""
        if embed is None or c.shape[1] != 1:
            raise ValueError("kv='refresh' needs every token's embedding and a per-sample conditioning")
        text, tokens = tokens[:, :t_len], tokens[:, t_len:]
        b, k = active.shape
        self.inputs.prepare(embed, self.sigma)
        for i, block in enumerate(model.blocks):
            shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=-1)
            attn = block.attn
            estimate = self.inputs.estimate(i)
            scatter_tokens_(estimate, active, tokens)  # the active rows: their actual input
            self.inputs.record(i, tokens, active)
            hidden = block.norm1(torch.cat([self.h_txt[i], estimate], 1)) * (1 + scale1) + shift1  # (B2, T + L, D)
            m = hidden.shape[1]
            self.kbuf[i] = attn.norm_k(attn.to_k(hidden).view(b, m, attn.heads, -1).transpose(1, 2))
            self.vbuf[i] = attn.to_v(hidden).view(b, m, attn.heads, -1).transpose(1, 2)
            self.k[i], self.v[i] = self.kbuf[i][:, :, t_len:], self.vbuf[i][:, :, t_len:]
            q_in = gather_tokens(hidden[:, t_len:], active)  # the active tokens' modulated input
            q = attn.norm_q(attn.to_q(q_in).view(b, k, attn.heads, -1).transpose(1, 2))
            out = F.scaled_dot_product_attention(q, self.kbuf[i], self.vbuf[i], attn_mask=keep)
            tokens = tokens + gate1 * attn.to_out(out.transpose(1, 2).reshape(b, k, -1))
            tokens = tokens + gate2 * block.feed_forward(tokens, shift2, scale2, c)
        return torch.cat([text, tokens], 1)  # [text; active] rows, as given

    def _attention(self, attn, hidden, keep, layer: int, t_len: int, active: torch.Tensor | None) -> torch.Tensor:
        """Fresh K/V for the text (t_len rows, none between refreshes) and the active tokens (all image tokens when
        active is None), cached for the rest; the layer's cache is updated (in place: the buffers belong to this
        run)."""
        b, m, dim = hidden.shape
        q, k, v = (f(hidden).view(b, m, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)  # (B, H, T + k, Dh)
        if active is None:
            self.kbuf[layer], self.vbuf[layer] = k.contiguous(), v.contiguous()
            self.k[layer], self.v[layer] = self.kbuf[layer][:, :, t_len:], self.vbuf[layer][:, :, t_len:]
        else:
            for buf, img, fresh in ((self.kbuf[layer], self.k[layer], k), (self.vbuf[layer], self.v[layer], v)):
                buf[:, :, :t_len] = fresh[:, :, :t_len]
                scatter_tokens_(img, active, fresh[:, :, t_len:], 2)
        out = F.scaled_dot_product_attention(q, self.kbuf[layer], self.vbuf[layer], attn_mask=keep)
        return attn.to_out(out.transpose(1, 2).reshape(b, m, dim))


class ShapesActiveTokens(ActiveTokens):
    """ActiveTokens for the built-in image DiT (a ShapesDenoiser): the convolutional stem and head run on the full
    grid, with the inactive tokens' block outputs cached (recorded at full steps too)."""

    default_kv = "stale"  # measured: the refresh's price in active tokens costs more than it gives here

    def __init__(self, denoiser, cond: Cond, kv: str = "auto"):
        super().__init__(denoiser, cond, kv)
        self.out: torch.Tensor | None = None  # (B2, L, D): the image tokens after the last block

    def _full_hooks(self, model) -> list:
        def record_out(module, args):
            self.out = args[0]

        return [model.norm_out.register_forward_pre_hook(record_out)]

    def _active_velocity(self, x, sigma, active):
        from accel.schedulers.hsa import latent_to_tokens

        layout = self.denoiser.token_layout(x)
        v = latent_to_tokens(self.forward(self.denoiser.transformer, x, self.cond.data["embeds"], sigma,
                                          self.cond.data["mask"], active), layout.rows, layout.cols, layout.frames)
        return gather_tokens(v, active, 1)

    def forward(self, model, x, enc, sigma, enc_mask, active: torch.Tensor | None) -> torch.Tensor:
        """The model's forward (sigma per sample), with the blocks on the active tokens only against the cached
        K/V of the others (None: every token, fresh K/V throughout), updating the caches."""
        from accel.pipelines.shapes import sincos_2d, timestep_embedding

        b, _, h, w = x.shape
        p = model.patch_size
        gh, gw = h // p, w // p
        s0 = model.stem0(model.conv_in(torch.cat([x, sigma.view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)], 1)))
        s1 = model.stem1(model.down0(s0))
        img = model.patch_embed(s1).flatten(2).transpose(1, 2)
        img = img + sincos_2d(gh, gw, img.shape[-1]).to(img)
        enc = enc.to(img.dtype)
        tmask = (torch.ones(enc.shape[:2], device=enc.device, dtype=enc.dtype) if enc_mask is None
                 else enc_mask.to(enc.device, enc.dtype))
        pooled = model.pooled_embedder((enc * tmask[..., None]).sum(1) / tmask.sum(1, keepdim=True).clamp(min=1))
        c = model.time_embed(timestep_embedding(sigma, model.config.freq_dim).to(img.dtype))[:, None] + pooled[:, None]
        txt = model.context_embedder(enc)
        t_len = txt.shape[1]
        tokens = torch.cat([txt, img if active is None else gather_tokens(img, active, 1)], dim=1)
        keep = None
        if enc_mask is not None:
            keep = torch.cat([tmask.bool(), torch.ones(b, img.shape[1], dtype=torch.bool, device=img.device)], 1)
            keep = keep[:, None, None, :]  # (B, 1, 1, T + L)
        out = self._blocks(model, tokens, c, keep, t_len, active, img)[:, t_len:]
        self.out = out if active is None else scatter_tokens(self.out, active, out, 1)
        shift, scale = model.norm_out_modulation(c).chunk(2, dim=-1)
        y = (model.norm_out(self.out) * (1 + scale) + shift).transpose(1, 2).reshape(b, -1, gh, gw)
        y = model.head1(torch.cat([model.up1(F.interpolate(y, scale_factor=2, mode="nearest")), s1], dim=1))
        y = model.head0(torch.cat([model.up0(F.interpolate(y, scale_factor=2, mode="nearest")), s0], dim=1))
        return model.conv_out(F.silu(model.norm_final(y)))

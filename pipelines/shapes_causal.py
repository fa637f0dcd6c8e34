"""Chunk-causal variant of the built-in video DiT, for autoregressive few-step students (Self Forcing / Salt).

The clip's token frames are cut into chunks of `chunk_frames`; an image token attends to the text and to the
tokens of its own and earlier chunks, never later ones, and the text attends to itself only (its states are a
function of the prompt, computed once). So a clip can be generated a chunk at a time: each chunk is denoised
against a K/V cache of the text and of the chunks before it, then run once more on its clean result (sigma 0) to
write its own K/V into the cache (`commit`). `forward` on a whole clip applies the same block-causal mask, so a
chunk's velocity is the same either way (tested). The weights and names are the bidirectional model's: a causal
student starts from the teacher's state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401  (diffusers' loader looks the base class up in this module)
from diffusers.configuration_utils import register_to_config

from accel.pipelines.shapes import timestep_embedding
from accel.pipelines.shapes_video import ShapesVideoTransformer3DModel


@dataclass
class ChunkCache:
    """Per-layer K/V (B, heads, N, head_dim) of the text and the committed chunks, the keys' keep mask (B, N), the
    pooled text embedding the image tokens' modulation adds, and the clip's token grid."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    keep: torch.Tensor
    pooled: torch.Tensor
    grid: tuple[int, int, int]
    chunks: int = 0


class CausalShapesVideoTransformer3DModel(ShapesVideoTransformer3DModel):
    """ShapesVideoTransformer3DModel with block-causal attention over chunks of `chunk_frames` token frames."""

    # Entry points besides forward, for FSDP (accel.distill.parallel.Processes.shard): they run the blocks through
    # _block, not block.forward, so the model is sharded as one unit gathered around each of these calls.
    fsdp_forward_methods = ("begin", "forward_chunk")

    @register_to_config
    def __init__(self, num_frames: int = 8, sample_size: int = 32, in_channels: int = 3, patch_size: int = 4,
                 patch_frames: int = 1, width: int = 128, num_layers: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, text_dim: int = 128, freq_dim: int = 256, chunk_frames: int = 1):
        super().__init__(num_frames=num_frames, sample_size=sample_size, in_channels=in_channels,
                         patch_size=patch_size, patch_frames=patch_frames, width=width, num_layers=num_layers,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, text_dim=text_dim, freq_dim=freq_dim)
        if not (isinstance(chunk_frames, int) and chunk_frames >= 1):
            raise ValueError(f"chunk_frames must be an int >= 1 (token frames per chunk), got {chunk_frames!r}")

    @classmethod
    def from_bidirectional(cls, model: ShapesVideoTransformer3DModel, chunk_frames: int = 1):
        """A causal model with the bidirectional model's config and weights (a student's starting point)."""
        config = {k: v for k, v in model.config.items() if not k.startswith("_")}
        causal = cls(**config, chunk_frames=chunk_frames)
        causal.load_state_dict(model.state_dict())
        return causal.to(next(model.parameters()).device, next(model.parameters()).dtype)

    # -- layout --------------------------------------------------------------------------------------------------

    def num_chunks(self, x: torch.Tensor) -> int:
        """Chunks of a clip x (B, C, F, H, W); ValueError unless its token frames split into whole chunks."""
        gf = self.grid(x)[0]
        k = self.config.chunk_frames
        if gf % k:
            raise ValueError(f"a clip of {gf} token frames does not split into chunks of {k}")
        return gf // k

    def chunk_slice(self, index: int) -> slice:
        """The pixel frames of chunk `index` (dim 2 of a clip)."""
        n = self.config.chunk_frames * self.config.patch_frames
        return slice(index * n, (index + 1) * n)

    # -- the blocks, with K/V from a prefix ----------------------------------------------------------------------

    def _modulation(self, sigma: torch.Tensor, pooled: torch.Tensor, dtype) -> torch.Tensor:
        """(B, 1, D) for sigma (B,), or (B, L, D) for per-token sigma (B, L)."""
        emb = self.time_embed(timestep_embedding(sigma, self.config.freq_dim).to(dtype))
        return (emb if sigma.ndim == 2 else emb[:, None]) + pooled[:, None]

    @staticmethod
    def _block(block, x, c, prefix_k=None, prefix_v=None, mask=None):
        """One DiT block for tokens x whose attention also sees the prefix K/V; returns (x_out, k, v) with k, v the
        tokens' own (post-norm) keys and values. The same arithmetic as DiTBlock.forward."""
        attn = block.attn
        b, n, d = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = block.adaLN_modulation(c).chunk(6, dim=-1)
        h = block.norm1(x) * (1 + scale1) + shift1
        q, k, v = (f(h).view(b, n, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        keys = k if prefix_k is None else torch.cat([prefix_k, k], dim=2)
        values = v if prefix_v is None else torch.cat([prefix_v, v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + gate1 * attn.to_out(out.transpose(1, 2).reshape(b, n, d))
        x = x + gate2 * block.mlp(block.norm2(x) * (1 + scale2) + shift2)
        return x, k, v

    def begin(self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None,
              x: torch.Tensor) -> ChunkCache:
        """The cache for generating clips shaped like x: the text stream's per-layer K/V (the text sees itself
        only, modulated at sigma 0, so its states depend on the prompt alone)."""
        enc = encoder_hidden_states.to(self.dtype)
        b, t = enc.shape[:2]
        keep = (torch.ones(b, t, dtype=torch.bool, device=enc.device) if encoder_attention_mask is None
                else encoder_attention_mask.to(enc.device).bool())
        mask = keep.float()
        pooled = self.pooled_embedder((enc * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
        txt = self.context_embedder(enc)
        c_txt = self._modulation(torch.zeros(b, device=enc.device), pooled, txt.dtype)
        attn_mask = keep[:, None, None, :]
        keys, values = [], []
        for block in self.blocks:
            txt, k, v = self._block(block, txt, c_txt, mask=attn_mask)
            keys.append(k)
            values.append(v)
        return ChunkCache(keys, values, keep, pooled, self.grid(x))

    def forward_chunk(self, x_chunk: torch.Tensor, sigma: torch.Tensor, cache: ChunkCache, index: int,
                      commit: bool = False) -> torch.Tensor:
        """Velocity of chunk `index` (its pixel frames x_chunk (B, C, f, H, W)) at sigma (B,) or a 0-d tensor,
        attending to the cache, which must hold exactly the chunks before it. commit=True appends this chunk's
        K/V to the cache (call it on the finished chunk at sigma 0)."""
        if index != cache.chunks:
            raise ValueError(f"chunk {index} needs a cache of chunks 0..{index - 1}; it holds {cache.chunks}")
        gf, gh, gw = cache.grid
        per = self.config.chunk_frames * gh * gw
        b = x_chunk.shape[0]
        sigma = sigma.to(x_chunk.device, torch.float32)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        img = self.patch_embed(self.patchify(x_chunk))
        img = img + self.positions(cache.grid, self.config.width).to(img)[index * per:(index + 1) * per]
        c = self._modulation(sigma, cache.pooled, img.dtype)
        keep = torch.cat([cache.keep, torch.ones(b, per, dtype=torch.bool, device=img.device)], 1)
        mask = keep[:, None, None, :]
        new = []
        for layer, block in enumerate(self.blocks):
            img, k, v = self._block(block, img, c, cache.keys[layer], cache.values[layer], mask)
            new.append((k, v))
        if commit:
            cache.keys = [torch.cat([ck, k], 2) for ck, (k, _) in zip(cache.keys, new)]
            cache.values = [torch.cat([cv, v], 2) for cv, (_, v) in zip(cache.values, new)]
            cache.keep = keep
            cache.chunks += 1
        return self.unpatchify(self.head(img, c), x_chunk)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None, return_dict: bool = True):
        """Velocity of a whole clip under the block-causal mask; timestep: sigma (B,) or per token (B, L) (e.g. a
        chunk's own sigma for its tokens: the training forward of a causal student)."""
        x = hidden_states
        if x.ndim != 5:
            raise ValueError(f"hidden_states must be (B, C, F, H, W), got {tuple(x.shape)}")
        b = x.shape[0]
        chunks = self.num_chunks(x)
        cache = self.begin(encoder_hidden_states, encoder_attention_mask, x)
        gf, gh, gw = cache.grid
        n = gf * gh * gw
        sigma = timestep.to(x.device, torch.float32)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        if sigma.shape not in ((b,), (b, n)):
            raise ValueError(f"timestep must have shape ({b},) or ({b}, {n}), got {tuple(sigma.shape)}")
        img = self.patch_embed(self.patchify(x)) + self.positions(cache.grid, self.config.width).to(x)
        c = self._modulation(sigma, cache.pooled, img.dtype)
        chunk_of = torch.arange(n, device=x.device) // (n // chunks)
        causal = chunk_of[None, :] <= chunk_of[:, None]  # (L, L): query's chunk >= key's chunk
        text = cache.keep[:, None, :].expand(b, n, -1)
        mask = torch.cat([text, causal[None].expand(b, -1, -1)], 2)[:, None]  # (B, 1, L, T + L)
        for layer, block in enumerate(self.blocks):
            img, _, _ = self._block(block, img, c, cache.keys[layer], cache.values[layer], mask)
        out = self.unpatchify(self.head(img, c), x)
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


class CausalStream:
    """A causal video denoiser's chunk-by-chunk interface (what accel.schedulers.fewstep.fewstep_stream runs):
    the clip's chunks, each chunk's velocity against the cache, and the commit of a finished chunk. Chunk
    forwards are counted in the adapter's NFE as the fraction of the clip they cover."""

    def __init__(self, adapter, cond, x: torch.Tensor):
        self.adapter, self.model = adapter, adapter.transformer
        self.num_chunks = self.model.num_chunks(x)
        self.cache = self.model.begin(cond.data["embeds"], cond.data["mask"], x)

    def chunk(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return x[:, :, self.model.chunk_slice(index)]

    def join(self, chunks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(chunks, dim=2)

    def velocity(self, index: int, x_chunk: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.adapter.nfe += x_chunk.shape[0] / self.num_chunks
        return self.model.forward_chunk(x_chunk, sigma, self.cache, index)

    def commit(self, index: int, x0_chunk: torch.Tensor) -> None:
        self.adapter.nfe += x0_chunk.shape[0] / self.num_chunks
        self.model.forward_chunk(x0_chunk, torch.zeros((), device=x0_chunk.device), self.cache, index, commit=True)

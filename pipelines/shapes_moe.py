"""The built-in shapes model with mixture-of-experts blocks: the shapes DiT whose MLPs are diffusers' Nucleus MoE
layers.

The stem, head, text conditioning and attention are the built-in shapes DiT's (accel.pipelines.shapes); in the
blocks whose capacity factor is > 0 the MLP is diffusers' `NucleusMoELayer` (expert-choice routing, a shared
expert, SwiGLU experts), so the expert-choice engine and elastic capacity (accel.moe) serve this model and
Nucleus-Image alike. As in Nucleus-Image the router reads the unmodulated normalised state next to the block's
conditioning vector, decoupled from the adaLN scale, which varies strongly with sigma (router_input="modulated"
is the ablation). Deliberate difference: the conditioning vector here is the time embedding plus the pooled prompt
(the block's adaLN input), not the time embedding alone, and text tokens are routed with the image tokens (this
DiT is single-stream over [text; image]).

Convention: sigma in [0, 1], 1 = noise; the model predicts v = eps - x0. Per-sample sigma only (no per-token
sigma, so no heterogeneous steps, on MoE blocks).
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin  # noqa: F401  (diffusers' loader looks a component's base class up in its module)
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_nucleusmoe_image import NucleusMoELayer
from torch import nn

from accel.pipelines.shapes import (Attention, DiTBlock, ShapesPipeline, ShapesTransformer2DModel, build_text_encoder,
                                    build_tokenizer)

ROUTER_INPUTS = ("unmodulated", "modulated")


class MoEDiTBlock(nn.Module):
    """DiTBlock (adaLN-Zero, Peebles & Xie 2023) with an expert-choice MoE MLP (Zhou et al. 2022) and a shared
    expert, routed as Nucleus-Image routes (arXiv 2604.12163)."""

    def __init__(self, dim: int, heads: int, num_experts: int, moe_intermediate_dim: int, capacity_factor: float,
                 route_scale: float, router_input: str, seed: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = NucleusMoELayer(hidden_size=dim, moe_intermediate_dim=moe_intermediate_dim,
                                   num_experts=num_experts, capacity_factor=capacity_factor, use_sigmoid=False,
                                   route_scale=route_scale)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)
        self.router_input = router_input
        # diffusers leaves the packed expert weights as torch.empty: draw them as nn.Linear would (fan-in scaled).
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for w in (self.mlp.experts.gate_up_proj, self.mlp.experts.down_proj):
                bound = w.shape[1] ** -0.5
                w.copy_(torch.empty(w.shape).uniform_(-bound, bound, generator=gen))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor,
                attention_mask: torch.Tensor | None) -> torch.Tensor:
        # hidden_states: (B, N, D); temb: (B, 1, D), the block's conditioning (time + pooled text).
        if temb.shape[1] != 1:
            raise ValueError("the MoE shapes model takes one sigma per sample (its router reads a per-sample "
                             f"conditioning vector), got a conditioning of shape {tuple(temb.shape)}")
        x = hidden_states
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(temb).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, attention_mask)
        return x + gate2 * self.feed_forward(x, shift2, scale2, temb)

    def feed_forward(self, x: torch.Tensor, shift2: torch.Tensor, scale2: torch.Tensor,
                     temb: torch.Tensor) -> torch.Tensor:
        """The MoE branch on the post-attention residual x (before its gate); temb (B, 1, D) per sample. The
        experts choose among the tokens of x, so a partial HSA step routes among the tokens it runs."""
        normed = self.norm2(x)
        modulated = normed * (1 + scale2) + shift2
        router = normed if self.router_input == "unmodulated" else modulated
        return self.mlp(modulated, router, timestep=temb[:, 0])

    def feed_forward_macs(self) -> float:
        """Multiply-accumulates of the MoE branch per token at the trained capacity: the router, the shared
        expert, and capacity_factor routed experts on average (every expert takes capacity * S / E tokens)."""
        mlp = self.mlp
        one = (mlp.experts.gate_up_proj.numel() + mlp.experts.down_proj.numel()) / mlp.num_experts
        shared = sum(m.weight.numel() for m in mlp.shared_expert.modules() if isinstance(m, nn.Linear))
        return mlp.gate.weight.numel() + shared + mlp.capacity_factor * one


class ShapesMoETransformer2DModel(ShapesTransformer2DModel):
    """The built-in U-shaped flow DiT with expert-choice MoE MLPs in the blocks whose capacity factor is > 0.

    Extra config: num_experts routed experts per MoE block (+ 1 shared), each a SwiGLU of inner dim
    moe_intermediate_dim; capacity_factors, one per block (0: a dense block); route_scale; router_input
    ("unmodulated": Nucleus-Image's decoupled routing, or "modulated", the ablation).
    """

    @register_to_config
    def __init__(self, sample_size: int = 32, in_channels: int = 3, out_channels: int = 3,
                 stem_channels: tuple[int, int] = (32, 64), width: int = 128, num_layers: int = 4, num_heads: int = 4,
                 mlp_ratio: float = 4.0, text_dim: int = 128, freq_dim: int = 256, num_experts: int = 8,
                 moe_intermediate_dim: int = 128, capacity_factors: tuple[float, ...] = (0.0, 2.0, 2.0, 2.0),
                 route_scale: float = 1.0, router_input: str = "unmodulated"):
        if len(capacity_factors) != num_layers or any(c < 0 for c in capacity_factors):
            raise ValueError(f"capacity_factors needs one factor >= 0 per block (num_layers = {num_layers}; 0 makes "
                             f"a dense block), got {list(capacity_factors)}")
        if router_input not in ROUTER_INPUTS:
            raise ValueError(f"router_input must be one of {', '.join(ROUTER_INPUTS)}, got {router_input!r}")
        super().__init__(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                         stem_channels=stem_channels, width=width, num_layers=num_layers, num_heads=num_heads,
                         mlp_ratio=mlp_ratio, text_dim=text_dim, freq_dim=freq_dim)
        self.blocks = nn.ModuleList([
            MoEDiTBlock(width, num_heads, num_experts, moe_intermediate_dim, c, route_scale, router_input, seed=i)
            if c > 0 else DiTBlock(width, num_heads, mlp_ratio) for i, c in enumerate(capacity_factors)])


def build_shapes_moe_pipeline(width: int = 128, num_layers: int = 4, stem_channels=(32, 64), text_hidden: int = 128,
                              text_layers: int = 2, sample_size: int = 32, num_experts: int = 8,
                              moe_intermediate_dim: int = 128, capacity_factors=(0.0, 2.0, 2.0, 2.0),
                              router_input: str = "unmodulated", mlp_ratio: float = 4.0,
                              seed: int = 0) -> ShapesPipeline:
    """A freshly initialised MoE shapes pipeline (for training, or tiny random ones in tests): the built-in
    ShapesPipeline with a ShapesMoETransformer2DModel (mlp_ratio: the dense blocks' MLP width over the model's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    text_encoder = build_text_encoder(len(tokenizer), text_hidden, text_layers, tokenizer.model_max_length)
    transformer = ShapesMoETransformer2DModel(
        sample_size=sample_size, stem_channels=tuple(stem_channels), width=width, num_layers=num_layers, num_heads=4,
        text_dim=text_hidden, mlp_ratio=mlp_ratio, num_experts=num_experts, moe_intermediate_dim=moe_intermediate_dim,
        capacity_factors=tuple(capacity_factors), router_input=router_input)
    pipe = ShapesPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), transformer=transformer.eval(),
                          scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe

"""What the flow-matching adapters share: the prepare / velocity / decode skeleton of a diffusers flow pipeline.

A family adapter (flux.py, sd3.py, wan.py, ...) subclasses FlowDenoiser and writes only what is its own:
- `encode(a)`: the pipeline's encode_prompt, as the pipeline calls it -> Cond (its `data` holds the tensors);
- `latents(a, cond)`: the pipeline's prepare_latents -> the start x (and the token layout);
- `time_grid(a, x)`: the pipeline's sigma schedule, through `scheduler_grid` and `shift_mu`;
- `forward(x, t, cond, branch)`: one transformer call for the "cond" or "uncond" branch (or "both", batched);
- `decode_latents(x, options)`: x -> pixels through the pipeline's VAE (`kl_decode`, `mean_std_decode`);
and declares the rest: `guidance` (how the two branches combine), `cfg_batched` (one forward on [uncond; cond] or
two), `sign` (+1 for a velocity, -1 for models that predict x0 - eps), `output_class` and `output_field`.

`a` is the bound call: the pipeline's __call__ arguments with its defaults filled in (Denoiser.bind), to which
`resolve` adds what the pipeline derives before encoding (default height and width, rounding).
"""

from __future__ import annotations

import copy
import enum
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import get_module_execution_device

from accel.core.denoiser import Cond, Denoiser, Prepared, TokenLayout, cache_context, signature
from accel.core.grid import TimeGrid


def batch_size(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | list | None) -> int:
    """Prompts in the call, counted as the pipelines count them."""
    if isinstance(prompt, str):
        return 1
    return len(prompt) if isinstance(prompt, list) else len(prompt_embeds)


def call_by_name(fn: Callable, values: dict[str, Any], **overrides: Any) -> Any:
    """fn(**arguments) with each of fn's parameters taken from overrides, else from values (the bound call) by
    name, else fn's default: the pipelines' check_inputs and encode_prompt name their parameters as __call__ does.
    A parameter without a default that neither supplies raises TypeError (a family that must say it)."""
    params = signature(fn).parameters
    unknown = overrides.keys() - params.keys()
    if unknown:
        raise TypeError(f"{fn.__qualname__} has no parameter(s) {', '.join(sorted(unknown))}")
    args = {name: overrides[name] if name in overrides else values[name]
            for name, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY
            if name in overrides or name in values}
    return fn(**args)


def default_sigmas(num_inference_steps: int) -> np.ndarray:
    """The Flux-style pipelines' default: linspace(1, 1/N, N), before the shift."""
    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)


def shift_mu(config, seq_len: int, max_shift: float = 1.15) -> float:
    """The dynamic shift mu for a token count: diffusers' calculate_shift on the scheduler's config, with the
    pipelines' fallbacks (SD3's max_shift is 1.16, the others' 1.15)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", max_shift))


def scheduler_grid(pipe, num_inference_steps: int, sigmas=None, mu: float | None = None,
                   timesteps: list[int] | None = None, device: torch.device | None = None) -> TimeGrid:
    """The pipeline's sigma schedule: its retrieve_timesteps on a copy of its scheduler (the pipeline's own state is
    untouched) on `device` (default: the pipeline's execution device), sigmas as the scheduler holds them (shifted,
    with the final 0)."""
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    scheduler = copy.deepcopy(pipe.scheduler)
    extra = {} if mu is None else {"mu": mu}
    device = pipe._execution_device if device is None else device
    retrieve_timesteps(scheduler, num_inference_steps, device, timesteps=timesteps, sigmas=sigmas, **extra)
    return TimeGrid(scheduler.sigmas.float().cpu())


def embedded_guidance(transformer: torch.nn.Module, guidance_scale: float, batch: int,
                      device: torch.device) -> torch.Tensor | None:
    """Guidance-distilled transformers (guidance_embeds): the scale as a (B,) float32 input; None otherwise."""
    if not transformer.config.get("guidance_embeds", False):
        return None
    return torch.full([1], guidance_scale, device=device, dtype=torch.float32).expand(batch)


class Guidance(enum.Enum):
    """How an adapter combines the conditional (v) and unconditional (v_neg) predictions at scale s."""

    CFG = "cfg"  # v_neg + s * (v - v_neg)
    CFG_RENORM = "cfg_renorm"  # the same, rescaled per token to v's norm over the last dim (Qwen-Image, Nucleus)

    def combine(self, v: torch.Tensor, v_neg: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
        """rescale > 0: diffusers' rescale_noise_cfg (Lin et al., 2023, "Common Diffusion Noise Schedules and Sample
        Steps are Flawed", section 3.4) towards v's standard deviation, as the pipelines with guidance_rescale."""
        combined = v_neg + scale * (v - v_neg)
        if self is Guidance.CFG_RENORM:
            combined = combined * (torch.norm(v, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))
        if rescale > 0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            combined = rescale_noise_cfg(combined, v, guidance_rescale=rescale)
        return combined


def kl_decode(vae, latents: torch.Tensor, cast: bool = False) -> torch.Tensor:
    """AutoencoderKL with scaling and shift factors (Flux, SD3, Chroma, Z-Image): latents -> pixels in [-1, 1].
    cast: to the VAE's dtype first, where the pipeline does (Z-Image; Flux, SD3 and Chroma decode as they are).
    Reading vae.dtype or the VAE's execution device walks every module (1-3 ms on the tiny models), so the decodes
    read them only where the pipeline itself does."""
    if cast:
        latents = latents.to(vae.dtype)
    shift = vae.config.get("shift_factor", None) or 0.0
    latents = (latents / vae.config.scaling_factor) + shift
    return vae.decode(latents, return_dict=False)[0]


def mean_std_decode(vae, latents: torch.Tensor, move: bool = False) -> torch.Tensor:
    """The Wan / Qwen-Image VAE, whose latents are normalised per channel by latents_mean and latents_std:
    (B, C, F, h, w) latents -> (B, 3, F', H, W) pixels. Cast to the VAE's dtype, as every such pipeline does; move:
    also to the VAE's execution device, where the pipeline does (Wan)."""
    latents = latents.to(get_module_execution_device(vae), vae.dtype) if move else latents.to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    return vae.decode(latents / inv_std + mean, return_dict=False)[0]


# What diffusers' VideoProcessor.postprocess_video returns (np: (B, F, H, W, 3), pt: (B, F, 3, H, W), pil: lists of
# frames), and the latents themselves.
VIDEO_OUTPUT_TYPES = ("np", "pt", "pil", "latent")


class FlowDenoiser(Denoiser):
    """The skeleton of a diffusers flow-matching pipeline's __call__, cut at the family's own steps (see the
    module docstring). NFE per velocity: 1 per sample, cond.passes (2 with CFG) in all."""

    guidance: ClassVar[Guidance] = Guidance.CFG
    cfg_batched: ClassVar[bool] = False  # one forward on [x; x] against [uncond; cond] conditioning
    sign: ClassVar[float] = 1.0  # -1: the transformer predicts x0 - eps
    output_class: ClassVar[type]
    output_field: ClassVar[str] = "images"  # "frames" for video pipelines
    # Where the pipeline wraps its forwards in the transformer's named cache contexts (diffusers' cache hooks keep
    # their state per branch); False where it does not.
    cache_contexts: ClassVar[bool] = True

    def __init__(self, pipe):
        super().__init__(pipe)
        self._layout: TokenLayout | None = None  # packed families: the token grid of the last prepare()
        self.device: torch.device | None = None  # the pipeline's execution device, read by prepare()

    def check_supported(self, call: dict[str, Any]) -> None:
        """Also, before any compute: a video family's output_type is one diffusers' VideoProcessor produces (the
        pipeline fails on another only after decoding)."""
        kind = call.get("output_type", "np")
        if self.output_field == "frames" and kind not in VIDEO_OUTPUT_TYPES:
            raise ValueError(f"{type(self.pipe).__name__} returns videos: output_type must be one of "
                             f"{', '.join(VIDEO_OUTPUT_TYPES)} ('pil': a list of PIL frames per video), got {kind!r}")
        super().check_supported(call)

    # -- prepare ---------------------------------------------------------------------------------------------
    def prepare(self, **call: Any) -> Prepared:
        """Validate as the pipeline does, encode the prompts, draw the start noise, build the time grid."""
        a = self.bind(call)
        self.check_supported(call)
        # Read once per call, as the pipeline does: diffusers walks every module of the pipeline for it (8 ms a
        # read on the overhead benchmark's tiny Flux, more on a real one).
        self.device = self.pipe._execution_device
        self.resolve(a)
        cond = self.encode(a)
        x = self.latents(a, cond)
        grid = self.time_grid(a, x)
        return Prepared(x, cond, grid, self.options(a, cond))

    def resolve(self, a: dict[str, Any]) -> None:
        """Validate and fill in what the pipeline derives before encoding; by default: height and width of
        default_sample_size latent pixels where the call gave none, then the pipeline's check_inputs."""
        pipe = self.pipe
        for side in ("height", "width"):
            if side in a:
                a[side] = a[side] or pipe.default_sample_size * pipe.vae_scale_factor
        call_by_name(pipe.check_inputs, a)

    def encode(self, a: dict[str, Any]) -> Cond:
        raise NotImplementedError

    def latents(self, a: dict[str, Any], cond: Cond) -> torch.Tensor:
        raise NotImplementedError

    def time_grid(self, a: dict[str, Any], x: torch.Tensor) -> TimeGrid:
        """The Flux-style schedule (Flux, Kontext, Chroma, Qwen-Image, Nucleus): linspace(1, 1/N, N) or the call's
        sigmas (none where the scheduler uses flow sigmas), shifted by mu from the image token count."""
        n, sigmas = a["num_inference_steps"], a.get("sigmas")
        sigmas = default_sigmas(n) if sigmas is None else sigmas
        if getattr(self.pipe.scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        return scheduler_grid(self.pipe, n, sigmas, device=self.device,
                              mu=shift_mu(self.pipe.scheduler.config, self.token_layout(x).num_tokens))

    def options(self, a: dict[str, Any], cond: Cond) -> dict[str, Any]:
        """What decode needs again: the output type, return_dict and the resolved size."""
        return {k: a[k] for k in ("output_type", "return_dict", "height", "width", "num_frames") if k in a}

    def set_packed_layout(self, frames: int, rows: int, cols: int) -> None:
        """Packed latents (B, L, D) do not carry the image's aspect ratio: prepare() records the token grid."""
        self._layout = TokenLayout(frames, rows, cols)

    def token_layout(self, x: torch.Tensor) -> TokenLayout:
        """The token grid recorded by the last prepare() (packed families; the others override it)."""
        if self._layout is None:
            raise ValueError(f"{type(self).__name__}.token_layout needs the image size: call prepare() first")
        if x.ndim != 3 or x.shape[1] != self._layout.num_tokens:
            raise ValueError(f"x of shape {tuple(x.shape)} does not match the prepared {self._layout.frames}x"
                             f"{self._layout.rows}x{self._layout.cols} token grid")
        return self._layout

    # -- velocity --------------------------------------------------------------------------------------------
    def _velocity(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """v at sigma (0-d or (B,); per token where the family's train_t allows it), guided as declared."""
        t = self.train_t(x, sigma)
        if cond.passes == 1:
            return self.sign * self._branch(x, t, cond, "cond")
        if self.cfg_batched:
            v_neg, v = self._branch(torch.cat([x, x]), torch.cat([t, t]), cond, "both").chunk(2)
        else:
            v = self._branch(x, t, cond, "cond")
            v_neg = self._branch(x, t, cond, "uncond")
        return self.sign * self.guidance.combine(v, v_neg, self.guidance_scale(cond, t),
                                                 cond.data.get("guidance_rescale", 0.0))

    def _branch(self, x, t, cond: Cond, branch: str) -> torch.Tensor:
        if not self.cache_contexts:
            return self.forward(x, t, cond, branch)
        with cache_context(self.transformer, "cond" if branch == "both" else branch):
            return self.forward(x, t, cond, branch)

    def train_t(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) t = sigma * num_train_timesteps, float32: the scheduler's timesteps[i] bit for bit on the grid."""
        sigma = sigma.to(x.device)
        if sigma.ndim not in (0, 1) or (sigma.ndim == 1 and sigma.shape[0] != x.shape[0]):
            raise ValueError(f"{self.family} takes sigma as a scalar or per sample ({x.shape[0]},), "
                             f"got {tuple(sigma.shape)}")
        return (sigma * self.pipe.scheduler.config.num_train_timesteps).expand(x.shape[0])

    def guidance_scale(self, cond: Cond, t: torch.Tensor) -> float:
        return cond.data["guidance_scale"]

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond, branch: str) -> torch.Tensor:
        """One transformer call on x at t (B,) for the "cond" / "uncond" branch, or "both" ([uncond; cond])."""
        raise NotImplementedError

    # -- decode ----------------------------------------------------------------------------------------------
    def decode(self, x: torch.Tensor, prepared: Prepared):
        """Final latents -> the pipeline's output object in the call's output_type ("latent": x as it stands)."""
        options = prepared.options
        if options["output_type"] == "latent":
            out = self.latent_output(x, options)
        else:
            pixels = self.decode_latents(x, options)
            if self.output_field == "frames":
                out = self.pipe.video_processor.postprocess_video(pixels, output_type=options["output_type"])
            else:
                out = self.pipe.image_processor.postprocess(pixels, output_type=options["output_type"])
        self.pipe.maybe_free_model_hooks()
        return self.output_class(**{self.output_field: out}) if options["return_dict"] else (out,)

    def latent_output(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return x

    def decode_latents(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def unpack(self, x: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        """Flux-style packed 2x2 latents (B, L, 4C) -> (B, C, H / 8, W / 8) through the pipeline's _unpack_latents."""
        return self.pipe._unpack_latents(x, options["height"], options["width"], self.pipe.vae_scale_factor)


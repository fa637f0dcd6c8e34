"""`accelerate_pipeline(pipe)`: the one-line entry point.

The wrapper keeps the wrapped pipeline's call signature and output type. With default options a call runs the
family's Denoiser adapter through accel's Euler sampler over the pipeline's own sigma schedule, which reproduces
the pipeline's output for the same seed (tested per family to 1e-5 in fp32), and records `.stats` (NFE, seconds).
Call arguments the adapter does not reproduce (callbacks, IP-adapters, ...) run the pipeline's own __call__,
still with NFE counted. Options that change the sampling (sampler=, later steps= and search=) need the adapter.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from accel.config import AccelConfig
from accel.core.denoiser import UnsupportedCall, signature
from accel.pipelines.registry import adapter_for, require_option
from accel.schedulers.flow import get_step, sample


@dataclass
class Stats:
    """What one call spent. nfe: denoiser forwards x samples (CFG counts 2); seconds: wall time of the call."""

    nfe: int = 0
    seconds: float = 0.0
    steps: int = 0
    sampler: str = "euler"
    path: str = "accel"  # "accel" (adapter + accel sampler) or "pipeline" (the pipeline's own __call__)
    extra: dict[str, Any] = field(default_factory=dict)


class _ForwardCounter:
    """Counts samples through the denoising modules' forwards: NFE, as the Denoiser would count it."""

    def __init__(self, modules: list[torch.nn.Module]):
        self.count = 0
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        # A list holds one latent per sample (Z-Image's transformer takes its batch that way).
        self.count += x.shape[0] if isinstance(x, torch.Tensor) else len(x) if isinstance(x, (list, tuple)) else 1

    def remove(self):
        for handle in self._handles:
            handle.remove()


class AcceleratedPipeline:
    """A drop-in wrapper: call it as the pipeline; every other attribute is the pipeline's."""

    def __init__(self, pipe, config: AccelConfig | None = None):
        self.pipe = pipe
        self.config = config or AccelConfig()
        self.adapter = adapter_for(pipe)
        self._kernel_handles = self._apply_kernels() if self.config.fused_kernels else []
        self.stats: Stats | None = None
        # Optional progress hook for accel's sampling path: step_callback(step_index, num_steps).
        self.step_callback = None
        # Optional progress hook for search: search_callback(row) with row["nfe"], row["budget"], row["best"], ...
        self.search_callback = None
        base = inspect.signature(pipe.__call__)
        params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for name in ("sampler", "steps", "runtime", "search", "reward", "nfe", "refine", "agent", "editor",
                     "capacity"):
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None))
        self.__signature__ = base.replace(parameters=params)

    def __getattr__(self, name: str):
        # Only reached for names the wrapper lacks: behave as the pipeline (pipe.transformer, pipe.to, ...).
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)

    def _apply_kernels(self) -> list:
        from accel.kernels import apply_fused_kernels, supports_fused_kernels

        require_option(self.pipe, "fused_kernels")  # a family without them: the error names the families with them
        modules = self.adapter.denoising_modules()
        if not all(supports_fused_kernels(m) for m in modules):  # a supported family with another transformer class
            names = ", ".join(type(m).__name__ for m in modules)
            raise ValueError(f"fused kernels do not support {names}; supported: the built-in DiT, "
                             "FluxTransformer2DModel, WanTransformer3DModel, SD3Transformer2DModel")
        return [apply_fused_kernels(m) for m in modules]

    def remove(self) -> None:
        """Undo what the wrapper installed on the pipeline's modules (fused-kernel hooks); the pipeline is then
        exactly as it was before accelerate_pipeline."""
        for handle in self._kernel_handles:
            handle.remove()
        self._kernel_handles = []

    def __repr__(self) -> str:
        return f"AcceleratedPipeline({type(self.pipe).__name__}, {self.config})"

    def __call__(self, *args, sampler: str | None = None, steps=None, runtime: float | int | None = None,
                 search=None, reward=None, nfe: int | None = None, distributed=False, refine=None, agent=None,
                 editor=None, capacity=None, **kwargs):
        """Call as the pipeline. accel options: sampler ("euler" | "heun"; "fewstep" on a distilled student, with
        num_inference_steps one of its trained step counts, accel.schedulers.fewstep); steps ("uniform", the default, or
        "hsa" / an HSAConfig: heterogeneous per-token steps, accel.schedulers.hsa) with runtime (the fraction of
        the full-step run's token compute in (0, 1], or an int: a budget in full steps); search (a strategy name or
        config from
        accel.search, e.g. "bon", "smc", "rbf") with reward (a name from accel.rewards, e.g. "shapes", or a Reward)
        and nfe (the budget per prompt, in NFE); distributed (True or a process group: spread each search's
        particles over the torch.distributed processes, which must all make the same call; see accel.search.search).
        `search_callback` (an attribute) receives each search trace row, e.g. for a progress bar.
        refine ("raise", "raise:key=value..." or an accel.search.raise_.RAISEConfig: RAISE) with nfe, agent (analyzer,
        rewriter, verifier; default on the built-in shapes model: the offline ShapesAgent with the exact checker as
        its verifier), reward (the fitness; default "shapes" there) and editor (an external edit pipeline;
        default: SDEdit with this pipeline).
        capacity (mixture-of-experts transformers, accel.moe): a factor on every MoE layer's trained capacity, a list
        with one factor per MoE layer, a callable of sigma, or "auto"; combines with every option above, and
        .stats.extra reports the expert_flops_fraction it spent."""
        if capacity is not None:  # the expert-choice engine at this capacity, for this call only
            options = dict(sampler=sampler, steps=steps, runtime=runtime, search=search, reward=reward, nfe=nfe,
                           distributed=distributed, refine=refine, agent=agent, editor=editor)
            return self._call_at_capacity(capacity, args, kwargs, options)
        names = self._positional_names()
        if len(args) > len(names):
            raise ValueError(f"{type(self.pipe).__name__} takes at most {len(names)} positional arguments")
        call = dict(zip(names, args))
        if call.keys() & kwargs.keys():
            raise ValueError(f"argument(s) given twice: {', '.join(sorted(call.keys() & kwargs.keys()))}")
        call.update(kwargs)
        check_call(call)
        config = self.config if sampler is None else replace(self.config, sampler=sampler)
        hsa = _hsa_option(steps, runtime)
        start = time.perf_counter()
        if refine is not None or agent is not None or editor is not None:
            if refine is None or search is not None or sampler is not None or hsa is not None or distributed:
                raise ValueError("agent= and editor= go with refine=; refine= does not combine with search=, "
                                 "sampler=, steps= or distributed=")
            out, stats = self._run_refine(call, refine, reward, nfe, agent, editor)
        elif search is not None or reward is not None or nfe is not None:
            if sampler not in (None, "fewstep") or hsa is not None:
                raise ValueError("sampler= and steps= do not apply to search: its strategy config picks the sampler "
                                 "(sampler='fewstep' searches over a distilled student's samples)")
            out, stats = self._run_search(call, search, reward, nfe, distributed, sampler)
        elif distributed is not False:
            raise ValueError("distributed= applies to search only (search=, reward=, nfe=)")
        elif config.sampler == "fewstep":
            if hsa is not None:
                raise ValueError("sampler='fewstep' runs a distilled student's own steps; it does not combine with "
                                 "steps='hsa'")
            out, stats = self._run_fewstep(call)
        elif hsa is not None:
            if sampler not in (None, "euler"):
                raise ValueError(f"steps='hsa' is an Euler method; it does not combine with sampler={sampler!r}")
            out, stats = self._run_hsa(call, hsa)
        else:
            out, stats = self._run(call, config)
        stats.seconds = time.perf_counter() - start
        self.stats = stats
        if not isinstance(out, tuple):
            out.stats = stats
        return out

    def _call_at_capacity(self, capacity, args: tuple, kwargs: dict[str, Any], options: dict[str, Any]):
        """One call with the expert-choice engine at `capacity` (accel.moe.elastic_capacity: applied and removed
        again, or switched and switched back where the model already has it); its expert FLOPs go into
        .stats.extra."""
        from accel.moe import elastic_capacity

        with elastic_capacity(self.adapter.transformer, capacity) as engine:
            out = self(*args, **options, **kwargs)
            self.stats.extra.update(engine.summary())
        return out

    def _run(self, call: dict[str, Any], config: AccelConfig):
        try:
            self.adapter.check_supported(call)
        except UnsupportedCall as e:
            # Fused kernels live in the modules, so the pipeline's own loop uses them too; a sampler does not.
            if config.sampler != "euler":
                raise ValueError(f"sampler={config.sampler!r} needs accel's sampling path, which this call cannot "
                                 f"take: {e}") from None
            return self._run_pipeline(call)  # same result by construction: it is the pipeline
        return self._run_accel(call, config)

    def _positional_names(self) -> list[str]:
        return [p.name for p in signature(self.pipe.__call__).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @torch.no_grad()
    def _run_accel(self, call: dict[str, Any], config: AccelConfig):
        adapter = self.adapter
        adapter.nfe = 0
        prepared = adapter.prepare(**call)
        n = prepared.grid.num_steps
        callback = None if self.step_callback is None else (lambda i, _x: self.step_callback(i, n))
        x = sample(adapter, prepared.x, prepared.grid, prepared.cond, step=get_step(config.sampler), callback=callback)
        out = adapter.decode(x, prepared)
        return out, Stats(nfe=adapter.nfe, steps=prepared.grid.num_steps, sampler=config.sampler, path="accel")

    def _student_call(self, call: dict[str, Any]):
        """(StudentSpec, step count) for a call on a distilled student; fills in the call arguments the student was
        trained with (call_defaults) where the caller left them out. ValueError if the pipeline is no student."""
        from accel.schedulers.fewstep import find_student

        spec = find_student(self.pipe)
        if spec is None:
            raise ValueError("sampler='fewstep' needs a distilled student (a pipeline folder with student.json, as "
                             "`accel distill` writes); this pipeline is not one")
        for key, value in spec.call_defaults.items():
            call.setdefault(key, value)
        nfe = call.get("num_inference_steps") or max(spec.nfes)
        spec.grid(nfe)  # ValueError naming the trained step counts
        call["num_inference_steps"] = nfe
        return spec, nfe

    @staticmethod
    def _check_student_cond(prepared, spec) -> None:
        if prepared.cond.passes != 1:
            raise ValueError("a distilled student runs without classifier-free guidance (the teacher's is baked in): "
                             f"leave guidance at the student's setting {spec.call_defaults or ''}".rstrip())

    @torch.no_grad()
    def _run_fewstep(self, call: dict[str, Any]):
        from accel.schedulers.fewstep import fewstep_sample, fewstep_stream

        spec, nfe = self._student_call(call)
        generator = call.get("generator")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("sampler='fewstep' takes one torch.Generator (it also draws the re-noising noise)")
        try:
            self.adapter.check_supported(call)
        except UnsupportedCall as e:
            raise ValueError(f"sampler='fewstep' needs accel's sampling path, which this call cannot take: {e}") \
                from None
        adapter = self.adapter
        adapter.nfe = 0
        prepared = adapter.prepare(**call)
        self._check_student_cond(prepared, spec)
        callback = None if self.step_callback is None else (lambda i, _x: self.step_callback(i, nfe))
        chunked = adapter.chunked(prepared.cond, prepared.x)
        if chunked is None:
            x = fewstep_sample(adapter, prepared.x, spec.grid(nfe), prepared.cond, spec.rule, generator, callback)
        else:  # an autoregressive student: chunk by chunk against its K/V cache
            step = None if callback is None else (lambda k, i, xk: callback(i, xk))
            x = chunked.join(list(fewstep_stream(chunked, prepared.x, spec.grid(nfe), spec.rule, generator, step)))
        out = adapter.decode(x, prepared)
        return out, Stats(nfe=adapter.nfe, steps=nfe, sampler="fewstep", path="accel",
                          extra={"student": spec.method, "rule": spec.rule,
                                 **({} if chunked is None else {"chunks": chunked.num_chunks})})

    @torch.no_grad()
    def _run_hsa(self, call: dict[str, Any], hsa):
        from accel.schedulers.hsa import hsa_sample

        adapter = self.adapter
        try:
            adapter.check_supported(call)
        except UnsupportedCall as e:
            raise ValueError(f"steps='hsa' needs accel's sampling path, which this call cannot take: {e}") from None
        adapter.nfe = 0
        prepared = adapter.prepare(**call)
        n = prepared.grid.num_steps
        callback = None if self.step_callback is None else (lambda i, steps: self.step_callback(i, steps))
        x, hsa_stats = hsa_sample(adapter, prepared.x, prepared.grid, prepared.cond, hsa, callback=callback)
        out = adapter.decode(x, prepared)
        return out, Stats(nfe=adapter.nfe, steps=n, sampler="euler", path="accel",
                          extra={"steps": "hsa", "runtime": hsa.runtime, "token_fraction": hsa_stats.token_fraction,
                                 "compute_fraction": hsa_stats.compute_fraction, "active_tokens": hsa_stats.active})

    @torch.no_grad()
    def _run_search(self, call: dict[str, Any], strategy, reward, nfe: int | None, distributed, sampler=None):
        from accel.rewards import get_reward
        from accel.search import search
        from accel.search.registry import for_student

        if strategy is None or reward is None or nfe is None:
            raise ValueError("search needs all of search=<strategy>, reward=<name or Reward> and nfe=<budget>")
        reward = get_reward(reward) if isinstance(reward, str) else reward
        if any(call.get(k, 1) not in (1, None) for k in ("num_images_per_prompt", "num_videos_per_prompt")):
            raise ValueError("search returns one sample per prompt: leave num_images_per_prompt at 1")
        generator = call.pop("generator", None)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("search takes one torch.Generator (the source of all its randomness)")
        generator = generator or torch.Generator().manual_seed(torch.seed() % 2**63)
        prompt = call.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if not prompts:
            raise ValueError("search needs prompt= (a string or a list of strings)")
        student = self._student_call(call) if self.config.sampler == "fewstep" or sampler == "fewstep" else None
        self.adapter.check_supported(call)
        plan = strategy if student is None else for_student(strategy, student[0].rule)
        samples, traces = [], []
        for i, p in enumerate(prompts):
            # The strategy draws every particle's noise from `generator`; prepare's own draw is not used.
            prepared = self.adapter.prepare(**(call | {"prompt": p, "generator": torch.Generator()}))
            if student is not None:  # the strategy's samplers run on the student's grid, without CFG
                prepared = replace(prepared, grid=student[0].grid(student[1]))
                self._check_student_cond(prepared, student[0])
            callback = None if self.search_callback is None else (
                lambda row, i=i: self.search_callback(row | {"prompt_index": i, "prompts": len(prompts)}))
            result = search(self.adapter, prepared, p, reward, plan, nfe, generator, distributed=distributed,
                            callback=callback)
            samples.append(result.best)
            traces.append(result.trace)
        out = self.adapter.decode(torch.cat(samples), prepared)
        stats = Stats(nfe=sum(t.nfe for t in traces), steps=prepared.grid.num_steps, path="accel",
                      extra={"search": traces[0].extra.get("strategy", str(strategy)), "budget_per_prompt": nfe,
                             "best_reward": [t.rewards[-1] if t.rewards else None for t in traces],
                             "traces": traces})
        unspent = [t.extra["unspent"] for t in traces if "unspent" in t.extra]
        if unspent:  # a strategy that stopped below its budget says why
            stats.extra["unspent"] = unspent[0] if len(traces) == 1 else f"{len(unspent)} prompts: {unspent[0]}"
        return out, stats

    @torch.no_grad()
    def _run_refine(self, call: dict[str, Any], refine, reward, nfe: int | None, agent, editor):
        from accel.rewards import get_reward
        from accel.search.raise_ import RefineInterrupted
        from accel.search.raise_ import refine as run_refine

        shapes = self.adapter.family == "shapes"
        if nfe is None or (not shapes and (reward is None or agent is None)):
            raise ValueError("refine needs nfe=<budget>, and outside the built-in shapes model also reward= and "
                             "agent= (e.g. accel.search.raise_vlm.VLMAgent)")
        if agent is None:
            from accel.search.raise_agents import ShapesAgent

            agent = ShapesAgent()  # the exact checker as its verifier (an oracle; see its docstring)
        reward = get_reward(reward or "shapes") if isinstance(reward, str) or reward is None else reward
        if not isinstance(call.get("prompt"), str) or call.get("num_images_per_prompt", 1) not in (1, None):
            raise ValueError("refine takes one prompt (a string) and returns one image: leave num_images_per_prompt "
                             "at 1")
        generator = call.pop("generator", None)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError("refine takes one torch.Generator (the source of all its randomness)")
        generator = generator or torch.Generator().manual_seed(torch.seed() % 2**63)
        self.adapter.check_supported(call)
        self.adapter.nfe = 0
        callback = self.search_callback
        try:
            result = run_refine(self.adapter, call, reward, refine, nfe, agent, editor, generator,
                                callback=callback)
        except RefineInterrupted as e:  # the best image so far, in the pipeline's output type, on the error
            e.output, self.stats = self._refine_output(call, e.result)
            raise
        return self._refine_output(call, result)

    def _refine_output(self, call: dict[str, Any], result):
        """The pipeline's own output object for RAISE's best image, and its Stats."""
        prepared = self.adapter.prepare(**(call | {"generator": torch.Generator()}))
        if result.latent is not None:
            out = self.adapter.decode(result.latent.to(prepared.x.device), prepared)
        else:  # an external editor's image: pixels only
            out = _pixels_output(result.best, prepared.options)
        trace = result.trace
        stats = Stats(nfe=trace.nfe, steps=prepared.grid.num_steps, path="accel",
                      extra={"refine": "raise", "budget_per_prompt": trace.budget,
                             "best_reward": float(result.fitness[0]), "traces": [trace],
                             **{k: trace.extra[k] for k in ("rounds", "stop", "agent_calls", "verifier_calls",
                                                            "editor_nfe") if k in trace.extra}})
        if not isinstance(out, tuple):
            out.stats = stats
        return out, stats

    def _run_pipeline(self, call: dict[str, Any]):
        counter = _ForwardCounter(self.adapter.denoising_modules())
        try:
            out = self.pipe(**call)
        finally:
            counter.remove()
        return out, Stats(nfe=counter.count, steps=int(call.get("num_inference_steps") or 0), path="pipeline")


def _pixels_output(images: torch.Tensor, options: dict[str, Any]):
    """(B, 3, H, W) pixels in [0, 1] as a diffusers image output of the requested output_type."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    kind = options.get("output_type", "pil")
    if kind == "pt":
        images_out = images
    else:
        arr = images.permute(0, 2, 3, 1).float().cpu().numpy()
        if kind == "pil":
            from PIL import Image

            images_out = [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]
        else:
            images_out = arr
    if not options.get("return_dict", True):
        return (images_out,)
    return ImagePipelineOutput(images=images_out)


def check_guidance(value, name: str = "guidance_scale") -> None:
    """A guidance scale is a finite number >= 0 (None: the pipeline's default). Values <= 1 turn classifier-free
    guidance off in diffusers' pipelines; a negative or NaN one would do so silently, an infinite one gives NaNs."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (values <= 1 turn classifier-free guidance off), "
                         f"got {value!r}")


def check_call(call: dict[str, Any]) -> None:
    """Reject pipeline arguments that diffusers would turn into a deep traceback or a silently wrong result."""
    prompt = call.get("prompt")
    if prompt is not None:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or \
                any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError(f"prompt must be a non-empty string or a non-empty list of them, got {prompt!r}")
    for key in ("num_images_per_prompt", "num_videos_per_prompt"):
        n = call.get(key)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{key} must be an int >= 1, got {n!r}")
    check_guidance(call.get("guidance_scale"))


def _hsa_option(steps, runtime):
    """The HSAConfig of steps= / runtime=, or None for uniform steps."""
    from accel.schedulers.hsa import HSAConfig

    if isinstance(steps, HSAConfig):
        if runtime is not None:
            return replace(steps, runtime=runtime)
        return steps
    if steps in (None, "uniform"):
        if runtime is not None:
            raise ValueError("runtime= applies to steps='hsa' only")
        return None
    if steps != "hsa":
        raise ValueError(f"steps must be 'uniform', 'hsa' or an HSAConfig, got {steps!r}")
    return HSAConfig() if runtime is None else HSAConfig(runtime=runtime)


def accelerate_pipeline(pipe, config: AccelConfig | None = None) -> AcceleratedPipeline:
    """Wrap a diffusers pipeline. Same outputs for the same seed by default; options plug in through `config`.

    Raises:
        ValueError: the pipeline's family is not supported (the message lists the supported ones).
    """
    if isinstance(pipe, AcceleratedPipeline):
        if config is None:
            return pipe
        pipe.remove()
        return AcceleratedPipeline(pipe.pipe, config)
    return AcceleratedPipeline(pipe, config)

"""The `accel` command line: generate, eval, info.

Bad input gets one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys

# Before anything imports torch: two OpenMP threads that spin while another process holds a core run many times
# slower (measured 25x on a loaded 2-core machine); passive waiting costs nothing on an idle one. A user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="accel: faster, better diffusion sampling.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model on a benchmark.")
app.add_typer(eval_app, name="eval")
bench_app = typer.Typer(no_args_is_help=True, help="Speed / quality benchmarks on the built-in models.")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def user_errors():
    try:
        yield
    except (UsageError, ValueError, FileNotFoundError) as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


# Images per pipeline call in `accel generate`: a large --num-images is made and written a chunk at a time, so memory
# stays bounded. The chunks draw their noise from one generator in turn, as a single call would.
CHUNK = 16


def check_outputs(paths, overwrite: bool) -> None:
    """Before a command runs: each file it will write can be written, and none exists unless --overwrite."""
    from accel.evals.io import check_writable

    for path in paths:
        if path is None:
            continue
        check_writable(path)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")


def record_state(json_out: Optional[Path], allow_dirty: bool) -> dict | None:
    """Before a command that records rows runs: the code it measures is committed (or --allow-dirty)."""
    from accel.evals.io import require_clean

    return require_clean(allow_dirty) if json_out is not None else None


@contextmanager
def saving(path: Path):
    """Report a failed write as the user's path in one line (not the temporary file it was written through)."""
    try:
        yield
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None


def record_rows(rows: list[dict], state: dict | None, json_out: Optional[Path], plot: Optional[Path] = None,
                plotter=None, extra: dict | None = None) -> list[dict]:
    """Stamp a benchmark's rows with machine, versions, command and sha, write them atomically, plot if asked."""
    from accel.evals.io import run_info, write_json

    info = run_info(state) | (extra or {})
    rows = [row | info for row in rows]
    if json_out is not None:
        with saving(json_out):
            write_json(json_out, rows)
    if plot is not None and not plotter(rows, str(plot)):
        console.print("plot skipped: matplotlib is not installed", highlight=False)
    return rows


def quiet_loaders() -> None:
    """Silence diffusers' and transformers' progress bars and warnings: they would bury the one line a user needs."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


def _load(model: str, device: Optional[str]):
    from accel.models import load_pipeline

    quiet_loaders()
    try:
        return load_pipeline(model, device=device)
    except Exception as e:  # our own checks, and hub / config errors from diffusers: which model, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        from accel.models import BUILTIN

        raise UsageError(f"cannot load model {model!r} (built-in models: {', '.join(BUILTIN)}; or a diffusers "
                         f"pipeline folder or hub id): {first}") from None


def _progress(disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=disable)


def _eval_progress(progress: Progress, description: str = "prompts"):
    """A callback progress(done, total) for the evals: the bar (prompts done, elapsed, ETA) starts at the first
    call, so that prompts a resumed run skips do not count as speed."""
    task = None

    def update(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            if done and not progress.disable:
                console.print(f"resuming: {done} of {total} prompts already done", highlight=False)
            task = progress.add_task(description, total=total, completed=done)
        else:
            progress.update(task, completed=done, total=total)
    return update


def _eval_bar(disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True, disable=disable)


def _launched_processes() -> int:
    """How many processes torchrun / accelerate launch started for this command (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def accel_call_options(apipe, student, steps, guidance, height, width, steps_mode, runtime, kv, search, reward,
                       nfe, model: str = "this student") -> dict:
    """The pipeline call's arguments for the sampling options the commands share (`accel generate`, `accel eval
    geneval`), validated: steps (a student's most by default), guidance, size, HSA, and search with its default
    budget of four plain samples. `student`: the pipeline's StudentSpec or None; `model` names it in errors."""
    from accel.api import check_guidance

    check_guidance(guidance, "--guidance")
    if student is not None and (search is not None or steps_mode != "uniform"):
        raise UsageError(f"{model} is a distilled student: --search and --steps-mode hsa need a teacher model")
    if student is not None and steps is not None and steps not in student.nfes:
        raise UsageError(f"{model} was trained for --steps {' or '.join(map(str, student.nfes))}, not {steps}")
    call = {}
    steps = steps or (max(student.nfes) if student is not None else None)
    for key, value in (("num_inference_steps", steps), ("guidance_scale", guidance), ("height", height),
                       ("width", width)):
        if value is not None:
            call[key] = value
    if steps_mode == "hsa":
        from accel.schedulers.hsa import HSAConfig

        call["steps"] = HSAConfig(runtime=0.5 if runtime is None else runtime, kv=kv or "auto")
    if search is not None:
        if nfe is None:
            cfg = guidance if guidance is not None else apipe.__signature__.parameters["guidance_scale"].default
            nfe = 4 * (steps or 25) * (2 if cfg and cfg > 1 else 1)
        call.update(search=search, reward=reward, nfe=nfe)
    return call


def _output_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(n)]


OVERWRITE = typer.Option(False, "--overwrite", help="Replace output files that already exist.")
ALLOW_DIRTY = typer.Option(False, "--allow-dirty", help="Record --json rows from a checkout with uncommitted "
                           "changes (the rows are marked dirty, with a hash of the diff).")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="Text prompt."),
    model: str = typer.Option("shapes", help="Built-in model name, diffusers folder, or hub id."),
    steps: Optional[int] = typer.Option(None, help="Number of sampling steps (default 25; for a distilled student "
                                        "the most it was trained for)."),
    seed: int = typer.Option(0, help="Random seed."),
    out: Path = typer.Option(Path("out.png"), help="Output file (.png; .gif or .mp4 for video models)."),
    num_images: int = typer.Option(1, help="Images to generate (files get _0, _1, ... suffixes)."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    height: Optional[int] = typer.Option(None, help="Image height (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Image width (default: the model's)."),
    sampler: Optional[str] = typer.Option(None, help="Sampler: euler or heun (flow ODE), fewstep (a distilled "
                                          "student's steps; the default for a student)."),
    steps_mode: str = typer.Option("uniform", help="uniform (every token every step) or hsa (heterogeneous "
                                   "per-token steps within --runtime)."),
    runtime: Optional[float] = typer.Option(None, help="For --steps-mode hsa: fraction of the full-step token "
                                            "compute in (0, 1] (default 0.5)."),
    kv: Optional[str] = typer.Option(None, help="For --steps-mode hsa: the skipped tokens' keys/values: auto (the "
                                     "model's default), extrapolate, refresh (one cache less) or stale (two less: "
                                     "the paper's cache)."),
    search: Optional[str] = typer.Option(None, help="Search strategy: bon, sop, smc, epf, svdd, rbf, beam."),
    reward: str = typer.Option("shapes", help="Reward for --search, the fitness for --refine (shapes, shapes-lenient, "
                               "shapes-verifier, shapes-detector)."),
    nfe: Optional[int] = typer.Option(None, help="NFE budget per prompt for --search (default: 4 x steps x 2) or "
                                      "--refine (default: 16 x steps x 2)."),
    refine: Optional[str] = typer.Option(None, help="Refinement: raise (RAISE rounds of rewritten prompts and edits; "
                                         "options as raise:population=4:k_max=3)."),
    agent: str = typer.Option("shapes", help="RAISE's agent: shapes (offline; the exact checker verifies), "
                              "shapes-verifier / shapes-detector (offline; the learned verifier / detector), or an "
                              "OpenAI-compatible endpoint URL (Ollama, vLLM) with --agent-model."),
    agent_model: Optional[str] = typer.Option(None, help="Model name at the --agent endpoint."),
    fused_kernels: bool = typer.Option(False, "--fused-kernels", help="Fused Triton kernels (CUDA; exact twins "
                                       "elsewhere)."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
    overwrite: bool = OVERWRITE,
):
    """Generate images (or videos) for a prompt."""
    with user_errors():
        if not prompt.strip():
            raise UsageError("the prompt is empty")
        if steps is not None and steps < 1:
            raise UsageError(f"--steps must be >= 1, got {steps}")
        if num_images < 1:
            raise UsageError(f"--num-images must be >= 1, got {num_images}")
        if steps_mode not in ("uniform", "hsa"):
            raise UsageError(f"--steps-mode must be uniform or hsa, got {steps_mode!r}")
        if runtime is not None and steps_mode != "hsa":
            raise UsageError("--runtime applies to --steps-mode hsa only")
        if kv is not None and steps_mode != "hsa":
            raise UsageError("--kv applies to --steps-mode hsa only")
        if steps_mode == "hsa" and search is not None:
            raise UsageError("--steps-mode hsa does not combine with --search")
        if search is not None and num_images > 1:
            raise UsageError("--search returns one image per prompt: leave --num-images at 1")
        if refine is not None and (search is not None or steps_mode == "hsa" or num_images > 1):
            raise UsageError("--refine returns one image and does not combine with --search, --steps-mode hsa or "
                             "--num-images")
        if refine is not None:
            from accel.search.raise_ import RAISEConfig
            from accel.search.registry import get_config

            if not isinstance(get_config(refine), RAISEConfig):
                raise UsageError(f"--refine takes raise (with options), got {refine!r}")
            raise_agent = _raise_agent(agent, agent_model)
        from accel.api import check_guidance

        check_guidance(guidance, "--guidance")
        if search is not None:
            from accel.search import get_config

            get_config(search)
        suffix = out.suffix.lower()
        if suffix not in (".png", ".jpg", ".jpeg", ".gif", ".mp4"):
            raise UsageError(f"unsupported output type {suffix or '(none)'}; allowed: .png, .jpg, .gif, .mp4")
        paths = _output_paths(out, num_images)
        check_outputs(paths, overwrite)
        import torch

        from accel.api import accelerate_pipeline
        from accel.config import AccelConfig

        if sampler is not None:
            AccelConfig(sampler=sampler)  # an unknown name fails before the model loads
        main_process = True
        if _launched_processes() > 1:
            # torchrun / accelerate launch: the processes share one search (its particles are spread over them);
            # accelerate's PartialState reports no distribution for CPU processes, so the group is set up here.
            if search is None:
                raise UsageError("several processes share one --search; without --search run accel generate "
                                 "directly (one process)")
            import torch.distributed as dist

            local = int(os.environ.get("LOCAL_RANK", "0"))
            if torch.cuda.is_available():
                torch.cuda.set_device(local)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            main_process = dist.get_rank() == 0
            device = device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        from accel.schedulers.fewstep import find_student

        base = _load(model, device)
        student = find_student(base)
        if sampler == "fewstep" and student is None:
            raise UsageError(f"--sampler fewstep needs a distilled student; {model} is not one (no student.json)")
        if student is not None and sampler not in (None, "fewstep"):
            raise UsageError(f"{model} is a distilled student: it samples with --sampler fewstep only")
        if student is not None and refine is not None:
            raise UsageError(f"{model} is a distilled student: --refine needs a teacher model")
        sampler = sampler or ("fewstep" if student is not None else "euler")
        steps = steps or (max(student.nfes) if student is not None else 25)
        pipe = accelerate_pipeline(base, AccelConfig(sampler=sampler, fused_kernels=fused_kernels))
        is_video = "num_frames" in pipe.__signature__.parameters
        if is_video and suffix not in (".gif", ".mp4"):
            raise UsageError(f"this model makes videos: use --out with .gif or .mp4, not {suffix}")
        if not is_video and suffix == ".mp4":
            raise UsageError("this model makes images: use --out with .png, .jpg or .gif")
        call = {"prompt": prompt, "output_type": "np", "generator": torch.Generator(device).manual_seed(seed),
                **accel_call_options(pipe, student, steps, guidance, height, width, steps_mode, runtime, kv, search,
                                     reward, nfe, model)}
        if search is not None:
            call["distributed"] = _launched_processes() > 1
        if refine is not None:
            if _launched_processes() > 1:
                raise UsageError("--refine runs in one process")
            if nfe is None:
                cfg = (guidance if guidance is not None else pipe.__signature__.parameters["guidance_scale"].default)
                nfe = 16 * steps * (2 if cfg and cfg > 1 else 1)
            call.update(refine=refine, reward=reward, nfe=nfe, agent=raise_agent)
        nfe_spent, seconds = _generate_files(pipe, call, paths, search or refine, main_process)
        if not main_process:
            return
    stats = pipe.stats
    spent = f"{nfe_spent} NFE, {seconds:.2f} s"
    if search is not None and "unspent" in stats.extra:
        spent += f"; {stats.extra['unspent']}"
    if refine is not None:
        extra = stats.extra
        spent += (f"; {extra['rounds']} rounds ({extra['stop']}), {extra['agent_calls']} agent and "
                  f"{extra['verifier_calls']} verifier calls")
    if "token_fraction" in stats.extra:  # HSA: the budget spent, and what of it went to computed tokens
        extra = stats.extra
        spent += f", {extra['compute_fraction']:.0%} of the full-step compute"
        if extra["compute_fraction"] - extra["token_fraction"] > 0.005:
            spent += f" ({extra['token_fraction']:.0%} on active tokens, the rest refreshing K/V)"
    names = ", ".join(map(str, paths)) if len(paths) <= 4 else f"{paths[0]} ... {paths[-1]} ({len(paths)} files)"
    console.print(f"wrote {names}  ({spent})", highlight=False)


def _raise_agent(agent: str, model: Optional[str]):
    """RAISE's agent from --agent / --agent-model."""
    if agent.startswith(("http://", "https://")):
        if not model:
            raise UsageError("--agent <endpoint URL> needs --agent-model (the model's name at that endpoint)")
        from accel.search.raise_vlm import OpenAIChat, VLMAgent

        return VLMAgent(OpenAIChat(agent, model))
    if model is not None:
        raise UsageError("--agent-model applies to an --agent endpoint URL only")
    from accel.search.raise_agents import ShapesAgent

    if agent == "shapes":
        return ShapesAgent()
    if agent == "shapes-verifier":
        from accel.rewards.verifier import ShapesVerifier

        return ShapesAgent(verifier=ShapesVerifier.from_pretrained())
    if agent == "shapes-detector":
        from accel.rewards.detector import DetectorVerifier

        return ShapesAgent(verifier=DetectorVerifier.from_pretrained())
    raise UsageError(f"unknown --agent {agent!r}; allowed: shapes, shapes-verifier, shapes-detector, or an endpoint "
                     "URL")


def _generate_files(pipe, call: dict, paths: list[Path], search: Optional[str], main_process: bool):
    """Run the pipeline a chunk of CHUNK images at a time, writing each image as it is made; returns (NFE, s)."""
    key = "num_videos_per_prompt" if "num_videos_per_prompt" in pipe.__signature__.parameters else \
        "num_images_per_prompt"
    nfe, seconds = 0, 0.0
    with _progress(disable=not main_process) as progress:
        task = progress.add_task(f"search {search} (NFE)" if search else "sampling",
                                 total=call.get("nfe") if search else call["num_inference_steps"])
        pipe.step_callback = lambda i, n: progress.update(task, completed=i + 1, total=n)
        pipe.search_callback = lambda row: progress.update(
            task, completed=row["nfe"], total=row["budget"],
            description=f"search {search}: best reward {row['best']:.3f}, NFE")
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            if len(paths) > 1:
                progress.update(task, description=f"sampling images {start + 1}-{start + len(chunk)} of "
                                                  f"{len(paths)}")
            result = _call_keeping_best(pipe, call | ({key: len(chunk)} if len(chunk) > 1 else {}), chunk)
            nfe, seconds = nfe + pipe.stats.nfe, seconds + pipe.stats.seconds
            if not main_process:
                continue
            frames = getattr(result, "frames", None)
            for path, item in zip(chunk, frames if frames is not None else result.images):
                _write_media(path, item)
    return nfe, seconds


def _call_keeping_best(pipe, call: dict, paths: list[Path]):
    """pipe(**call); a refinement stopped by an error writes its best image so far before reporting the error."""
    if "refine" not in call:
        return pipe(**call)
    from accel.search.raise_ import RefineInterrupted

    try:
        return pipe(**call)
    except RefineInterrupted as e:
        images = getattr(e, "output", None)
        if images is not None:
            _write_media(paths[0], images.images[0])
            raise UsageError(f"{e.__cause__ or e} (wrote the best image so far to {paths[0]})") from None
        raise


def _write_media(path: Path, item) -> None:
    import numpy as np

    from accel.evals.io import write_atomic
    import imageio.v3 as iio

    arr = (np.clip(np.asarray(item, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    suffix = path.suffix.lower()
    if arr.ndim == 4 and suffix in (".png", ".jpg", ".jpeg"):
        raise UsageError(f"this model makes videos: use --out with .gif or .mp4, not {suffix}")
    if arr.ndim == 3 and suffix == ".mp4":
        raise UsageError("this model makes images: use --out with .png, .jpg or .gif")
    extension = {".jpeg": ".jpg"}.get(suffix, suffix)
    kwargs = {"duration": 125, "loop": 0} if suffix == ".gif" and arr.ndim == 4 else {}
    if suffix == ".mp4":
        kwargs = {"fps": 8, "codec": "libx264", "macro_block_size": 1}
    data = iio.imwrite("<bytes>", arr, extension=extension, **kwargs)
    with saving(path):
        write_atomic(path, data)


def _shapes_eval(command: str, pipeline_class: str, evaluate, model: str, prompts: int, seed: int, steps: int,
                 batch_size: int, json_out: Optional[Path], device: Optional[str], call: dict,
                 overwrite: bool, allow_dirty: bool, record: dict | None = None) -> dict | None:
    """Loads a shapes-world model, runs evaluate(pipe, ..., **call) over the prompts with a progress bar, writes
    the JSON (with `record` merged in) and prints the per-tag table; returns the result (None on the processes
    other than the first when torchrun / accelerate launch started several: call["shard"])."""
    import torch

    from accel.evals.io import write_json

    shard = call.get("shard")
    main_process = shard is None or shard.main
    with user_errors():
        if prompts < 1 or steps < 1 or batch_size < 1:
            raise UsageError("--prompts, --steps and --batch-size must be >= 1")
        from accel.api import check_guidance

        check_guidance(call.get("guidance_scale"), "--guidance")
        check_outputs([json_out], overwrite)
        state = record_state(json_out, allow_dirty)
        if shard is not None and shard.world > 1 and torch.cuda.is_available():
            device = device or f"cuda:{torch.cuda.current_device()}"
        pipe = _load(model, device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if type(pipe).__name__ != pipeline_class:
            raise UsageError(f"{command} needs a {pipeline_class}, got {type(pipe).__name__}")
        from accel.schedulers.fewstep import find_student

        if find_student(pipe) is not None:  # it would be sampled as a teacher (its steps with CFG): wrong numbers
            raise UsageError(f"{model} is a distilled student, which {command} would sample as a teacher; "
                             f"measure it with: accel bench fewstep --students {model}")
        with _eval_bar(disable=not main_process) as progress:
            result = evaluate(pipe, prompts=prompts, seed=seed, steps=steps, batch_size=batch_size,
                              progress=_eval_progress(progress), state=state, **call)
        if not main_process:
            return None
        result.update(model=model, **(record or {}))
        if json_out is not None:
            with saving(json_out):
                write_json(json_out, result)
    table = Table(title=f"{command}: {result['n']} prompts, seed {seed}, {steps} steps")
    for col in ("tag", "accuracy", "strict"):
        table.add_column(col)
    for tag, acc in result["per_tag"].items():
        table.add_row(tag, f"{acc:.3f}", f"{result['per_tag_strict'][tag]:.3f}")
    table.add_row("overall", f"{result['overall']:.3f}", f"{result['overall_strict']:.3f}", style="bold")
    Console().print(table)
    return result


@eval_app.command("shapes")
def eval_shapes(
    model: str = typer.Option("shapes", help="A ShapesPipeline: the built-in model or a folder."),
    prompts: int = typer.Option(240, help="Number of prompts (the six tags in turn)."),
    seed: int = typer.Option(0, help="Picks the prompt set and the sampling seeds."),
    steps: int = typer.Option(25, help="Sampling steps."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    batch_size: int = typer.Option(48, help="Images per batch."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to this file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Keep the run's finished prompts in this folder: the "
                                       "same command resumes a killed run there (settings must match)."),
    device: Optional[str] = typer.Option(None, help="torch device."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Exact GenEval-style accuracy of a shapes-world model, per tag. Under torchrun / accelerate launch the prompts
    are shared out over the processes (same result as one process)."""
    from accel.evals.shapes import evaluate_shapes
    from accel.evals.shard import Shard

    with user_errors():
        shard = Shard.from_env()
    result = _shapes_eval("eval shapes", "ShapesPipeline", evaluate_shapes, model, prompts, seed, steps, batch_size,
                          json_out, device, {"guidance_scale": guidance, "out": out, "overwrite": overwrite,
                                             "shard": shard}, overwrite, allow_dirty)
    if result is not None:
        console.print(f"{result['nfe']} NFE, {result['seconds']:.1f} s", highlight=False)


@eval_app.command("shapes-video")
def eval_shapes_video(
    model: str = typer.Option("shapes-video", help="A ShapesVideoPipeline: the built-in video model or a folder."),
    prompts: int = typer.Option(48, help="Number of prompts (the tags in turn)."),
    seed: int = typer.Option(0, help="Picks the prompt set and the sampling seeds."),
    steps: int = typer.Option(25, help="Sampling steps."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    steps_mode: str = typer.Option("uniform", help="uniform or hsa (heterogeneous per-token steps)."),
    runtime: Optional[float] = typer.Option(None, help="For --steps-mode hsa: fraction of the token compute."),
    batch_size: int = typer.Option(16, help="Clips per batch."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON to this file."),
    device: Optional[str] = typer.Option(None, help="torch device."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Exact accuracy of a moving-shapes video model: per-frame detection, persistence, direction of motion."""
    from accel.evals.shapes import evaluate_shapes_video

    with user_errors():
        if steps_mode not in ("uniform", "hsa"):
            raise UsageError(f"--steps-mode must be uniform or hsa, got {steps_mode!r}")
        if runtime is not None and steps_mode != "hsa":
            raise UsageError("--runtime applies to --steps-mode hsa only")
    call = {"steps": "hsa", "runtime": 0.5 if runtime is None else runtime} if steps_mode == "hsa" else {}
    mode = f"hsa:runtime={call['runtime']}" if call else steps_mode
    result = _shapes_eval("eval shapes-video", "ShapesVideoPipeline", evaluate_shapes_video, model, prompts, seed,
                          steps, batch_size, json_out, device, {"guidance_scale": guidance, "pipeline_kwargs": call},
                          overwrite, allow_dirty, record={"steps_mode": mode})
    console.print(f"frame accuracy {result['frame_accuracy']:.3f}; {result['nfe']} NFE, {result['seconds']:.1f} s",
                  highlight=False)


@bench_app.command("search")
def bench_search_cmd(
    model: str = typer.Option("shapes", help="A ShapesPipeline: the built-in model or a folder."),
    prompts: int = typer.Option(24, help="Number of prompts (the six tags in turn)."),
    seed: int = typer.Option(0, help="Picks the prompt set and the sampling seeds."),
    strategies: str = typer.Option(
        "bon,sop,smc,epf,svdd,rbf,beam",
        help="Comma-separated strategies, each with optional :key=value options (rbf:chains=8); raise (with "
             "options, raise:population=4) runs RAISE with the offline shapes agent."),
    reward: str = typer.Option("exact", help="Search reward (accuracy is always the exact checker's): exact, "
                               "exact-lenient, shapes-verifier (the learned verifier, product over requirements), "
                               "shapes-verifier:prompt (asked of the whole prompt), shapes-detector[:prompt] (the "
                               "learned detector with GenEval's rules), clip:<folder or hub id>."),
    verifier: Optional[Path] = typer.Option(None, help="Learned shapes verifier (or detector) folder for --reward "
                                            "shapes-verifier (shapes-detector); default: the built-in one."),
    budgets: str = typer.Option("1,2,4,8,16", help="Comma-separated budgets, in plain samples' NFE."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default: the pipeline's)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG plot of accuracy vs budget (needs matplotlib)."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Checker accuracy of each search strategy against its NFE budget, with the exact or a learned reward."""
    from accel.search import bench_search, get_config, plot_search
    from accel.search.bench import bench_reward

    with user_errors():
        names = [s.strip() for s in strategies.split(",") if s.strip()]
        for name in names:
            get_config(name)
        try:
            levels = [float(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise UsageError(f"--budgets must be comma-separated numbers, got {budgets!r}") from None
        if prompts < 1 or not names or not levels:
            raise UsageError("--prompts must be >= 1 and --strategies / --budgets non-empty")
        check_outputs([json_out, plot], overwrite)
        search_reward, raise_verifier = bench_reward(reward, None if verifier is None else str(verifier))
        state = record_state(json_out, allow_dirty)
        pipe = _load(model, None)
        if type(pipe).__name__ != "ShapesPipeline":
            raise UsageError(f"bench search needs a ShapesPipeline, got {type(pipe).__name__}")
        with _progress() as progress:
            task = progress.add_task("runs", total=prompts * len(names) * len(levels))
            rows = bench_search(pipe, prompts=prompts, seed=seed, strategies=tuple(names), budgets=tuple(levels),
                                steps=steps, progress=lambda rec: progress.advance(task), reward=search_reward,
                                reward_name=reward, verifier=raise_verifier)
        rows = record_rows(rows, state, json_out, plot, plot_search)
    table = Table(title=f"search: {prompts} prompts, seed {seed}, reward {reward}")
    for col in ("strategy", "budget", "nfe", "accuracy", "strict", "oracle", "verifier calls", "seconds"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["strategy"], f"{r['budget']:g}x", f"{r['nfe']:.0f}", f"{r['accuracy']:.3f}",
                      f"{r['accuracy_strict']:.3f}", f"{r['oracle_accuracy']:.3f}", f"{r['verifier_calls']:.1f}",
                      f"{r['seconds']:.1f}")
    Console().print(table)


@bench_app.command("steps")
def bench_steps_cmd(
    model: str = typer.Option("image", help="image or video (the built-in models), or a ShapesPipeline / "
                              "ShapesVideoPipeline folder."),
    prompts: int = typer.Option(24, help="Number of prompts (the six tags in turn)."),
    seed: int = typer.Option(0, help="Picks the prompt set and the sampling seeds."),
    steps: int = typer.Option(25, help="Steps of the full-step run every method is measured against."),
    methods: Optional[str] = typer.Option(
        None, help="Comma-separated methods as name:key=value[,key=value] (uniform:steps=12, hsa:runtime=0.5, "
                   "hsa:runtime=0.25,decay=0,grid_steps=all, "
                   "fbc:threshold=0.1, taylorseer:interval=3, magcache:threshold=0.12, dbcache:threshold=0.16 "
                   "where cache-dit is installed); default: a grid of each."),
    repeats: int = typer.Option(1, help="Timing rounds: each runs every method once; each method's wall time is "
                                        "its best round."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON to this file."),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG plot of quality vs runtime (needs matplotlib)."),
    overwrite: bool = OVERWRITE,
    allow_dirty: bool = ALLOW_DIRTY,
):
    """Quality (checker accuracy, PSNR / SSIM against the full-step run) of step-saving methods against their
    measured runtime."""
    from accel.evals.steps import bench_steps, parse_method, plot_steps, split_methods

    with user_errors():
        names = None if methods is None else split_methods(methods)
        for name in names or []:
            parse_method(name)
        if prompts < 1 or steps < 2 or repeats < 1:
            raise UsageError(f"--prompts and --repeats must be >= 1 and --steps >= 2, got {prompts}, {repeats} and "
                             f"{steps}")
        check_outputs([json_out, plot], overwrite)
        state = record_state(json_out, allow_dirty)
        pipe = _load({"image": "shapes", "video": "shapes-video"}.get(model, model), None)
        if type(pipe).__name__ not in ("ShapesPipeline", "ShapesVideoPipeline"):
            raise UsageError(f"bench steps needs a ShapesPipeline or ShapesVideoPipeline, got {type(pipe).__name__}")
        with _progress() as progress:
            task = progress.add_task("methods", total=None)
            rows = bench_steps(pipe, prompts=prompts, seed=seed, steps=steps, methods=names, repeats=repeats,
                               progress=lambda row: progress.advance(task))
        rows = record_rows(rows, state, json_out, plot, plot_steps)
    table = Table(title=f"steps: {prompts} prompts, seed {seed}, {steps} full steps")
    for col in ("method", "runtime", "accuracy", "psnr", "ssim"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["method"], f"{r['runtime']:.2f}", f"{r['accuracy']:.3f}", f"{r['psnr']:.1f}",
                      f"{r['ssim']:.3f}")
    Console().print(table)


@app.command()
def info():
    """Versions, device, whether fused Triton kernels are active, and the supported pipeline families with the
    options each supports."""
    import importlib.metadata as md

    import torch

    from accel.kernels import status

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    table = Table(show_header=False)
    for name in ("accel", "torch", "diffusers", "transformers", "accelerate", "triton"):
        table.add_row(name, version(name))
    table.add_row("python", sys.version.split()[0])
    cuda = torch.cuda.is_available()
    table.add_row("device", torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)")
    k = status()
    table.add_row("triton kernels", f"{'active' if k['active'] else 'inactive'}: {k['reason']}")
    Console().print(table)
    Console().print(families_table())


def families_table() -> Table:
    """The supported pipeline classes, their family and the accel options each supports (accel.pipelines.registry)."""
    from accel.pipelines.registry import ADAPTERS, CONTRACT_OPTIONS, EXTRA_OPTIONS

    options = CONTRACT_OPTIONS + EXTRA_OPTIONS
    table = Table(title="pipeline families (a class derived from one is matched through it)")
    for col in ("pipeline", "family", *options):
        table.add_column(col)
    for name, family in ADAPTERS.items():
        table.add_row(name, family.name, *("yes" if o in family.options else "-" for o in options))
    return table


# Commands defined in their own modules register on `app` / `bench_app` when imported (after those exist).
from accel.cli import distill as _distill  # noqa: E402,F401
from accel.cli import dllm as _dllm  # noqa: E402,F401
from accel.cli import evals as _evals  # noqa: E402,F401
from accel.cli import fewstep as _fewstep  # noqa: E402,F401
from accel.cli import lmeval as _lmeval  # noqa: E402,F401
from accel.cli import moe as _moe  # noqa: E402,F401
from accel.cli import overhead as _overhead  # noqa: E402,F401
from accel.cli import report as _report  # noqa: E402,F401
from accel.cli import vbench as _vbench  # noqa: E402,F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()

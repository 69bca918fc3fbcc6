"""The `fertk` command line: a thin shell over library functions."""

from __future__ import annotations

import typer

from fertk.cli._common import FertkGroup

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
        import fertk

        typer.echo(f"fertk {fertk.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Facial-expression recognition with GAN-generated training data.

    Set FERTK_DEBUG=1 to see tracebacks instead of one-line errors.
    """


# Each module registers its commands on `app` when imported.
from fertk.cli import info as _info  # noqa: E402,F401
from fertk.cli import train as _train  # noqa: E402,F401
from fertk.cli import models as _models  # noqa: E402,F401
from fertk.cli import synth as _synth  # noqa: E402,F401
from fertk.cli import synth_report as _synth_report  # noqa: E402,F401
from fertk.cli import export as _export  # noqa: E402,F401
from fertk.cli import bench as _bench  # noqa: E402,F401
from fertk.cli import eval as _eval  # noqa: E402,F401
from fertk.cli import experiment as _experiment  # noqa: E402,F401


def main() -> None:
    """Console-script entry point."""
    app()

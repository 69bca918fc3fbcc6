"""Shared CLI plumbing: the error table, stdout/stderr consoles and JSON output."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from fertk.core.errors import FertkError

# Results go to stdout, progress and hints to stderr.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


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
        except Exception as exc:  # noqa: BLE001 - the error table is the point
            # Typer's (or click's) own exit/usage signals keep their meaning.
            if type(exc).__module__.split(".")[0] in ("typer", "click") or debug_enabled():
                raise
            raise SystemExit(report_error(exc)) from None


def print_json(data: Any) -> None:
    """Machine-readable result on stdout (data only)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout (data only).")

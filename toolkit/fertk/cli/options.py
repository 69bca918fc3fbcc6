"""Shared CLI options, spelled once: `Annotated` option types every command uses, and the output
they select (results on stdout, progress and hints on stderr, `--json` data only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

# Results go to stdout, progress and hints to stderr.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

# One default per shared option, whatever the command: `auto` is cuda when torch sees a GPU, else cpu.
DEFAULT_DEVICE = "auto"
DEFAULT_BACKEND = "torch"
DEFAULT_LAYOUT = "auto"
DEFAULT_DETECT = "auto"

JSON_HELP = "Print machine-readable JSON on stdout (data only)."
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda or cuda:N."
BACKEND_HELP = "Engine: torch (the PyTorch reference), ort, trt or auto."
LAYOUT_HELP = "Dataset layout: auto, folder, rafd, ckplus, oulu, mmi, affectnet, fer2013."
DETECT_HELP = "Face finding: auto, haar, box, none (pre-cropped faces)."

JsonOutput = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
Device = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
Backend = Annotated[str, typer.Option("--backend", help=BACKEND_HELP)]
Layout = Annotated[str, typer.Option("--layout", help=LAYOUT_HELP)]
Detect = Annotated[str, typer.Option("--detect", help=DETECT_HELP)]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads (default: torch's).")]
Seed = Annotated[int, typer.Option("--seed", help="Base seed (the same seed gives the same result).")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress output on stderr.")]

# The default-value spelling of JsonOutput, for command signatures not (yet) written with Annotated.
JSON_OPTION = typer.Option(False, "--json", help=JSON_HELP)


def out_option(help: str) -> Any:  # noqa: A002 - typer's own keyword
    """The `--out/-o` option (for `Annotated[...]`) with a command's own description of what goes there."""
    return typer.Option("--out", "-o", help=help)


OutDir = Annotated[Optional[Path], out_option("Output directory.")]


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

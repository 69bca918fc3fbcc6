"""The CLI frame: every command registered in fertk.cli.app, shared options spelled one way, and
`fertk --help` kept light (no command imports its library before it runs)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from typer.main import get_command

import fertk
from fertk.cli import app
from fertk.cli.options import DEFAULT_DEVICE

TOOLKIT = Path(fertk.__file__).resolve().parents[1]
COMMANDS = {"info", "train fer", "train stargan", "models list", "models show", "synth", "synth verify",
            "synth report", "export", "bench", "eval", "experiment run", "experiment init", "experiment report"}


# Typer ships its own copy of click: its commands are told apart by what they have, not by class.
def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    yield " ".join(path), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def _options(flag: str) -> dict[str, Any]:
    return {path: param for path, command in _walk(get_command(app)) for param in command.params
            if param.param_type_name == "option" and flag in param.opts}


def test_every_command_is_registered_once() -> None:
    paths = [path for path, command in _walk(get_command(app)) if not hasattr(command, "commands") or path == "synth"]
    assert set(paths) >= COMMANDS and len(paths) == len(set(paths))


def test_json_is_one_flag_everywhere() -> None:
    found = _options("--json")
    assert len(found) >= 10
    assert all(option.is_flag and option.default is False for option in found.values()), found


def test_device_defaults_agree() -> None:
    defaults = {path: option.default for path, option in _options("--device").items()}
    assert len(defaults) >= 4 and set(defaults.values()) == {DEFAULT_DEVICE}, defaults


def test_the_cli_imports_no_library_until_a_command_runs() -> None:
    code = ("import sys, fertk.cli\n"
            "heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'ray', 'cv2', 'matplotlib') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(TOOLKIT), "PATH": "/usr/bin:/bin"})


def test_a_closed_stdout_pipe_stops_quietly() -> None:
    """`fertk ... | head`: the reader leaves while a command still writes; fertk stops with exit 1
    (click's own code for this) and no "error: BrokenPipeError" line."""
    import typer
    from typer.testing import CliRunner

    from fertk.cli.app import FertkGroup

    demo = typer.Typer(cls=FertkGroup)

    @demo.command()
    def write() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    @demo.command()
    def other() -> None:  # a second command keeps `demo` a group (one command would run without its name)
        pass

    result = CliRunner().invoke(demo, ["write"])
    assert result.exit_code == 1, result.output
    assert "error" not in result.output and "BrokenPipe" not in result.output, result.output

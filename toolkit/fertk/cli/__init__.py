"""The `fertk` command line: a thin shell over library functions (the app and its wiring: `fertk.cli.app`)."""

from fertk.cli.app import app, main

__all__ = ["app", "main"]

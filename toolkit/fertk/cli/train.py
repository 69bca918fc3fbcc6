"""`fertk train ...`: the training command group (FER CNN, StarGAN)."""

from __future__ import annotations

import typer

from fertk.cli import app

train_app = typer.Typer(
    help="Train models: the paper's FER CNN (`fer`) or a StarGAN expression translator (`stargan`).",
    no_args_is_help=True,
)
app.add_typer(train_app, name="train")

# Subcommand modules register on `train_app` when imported (one import line each, below).
from fertk.cli import train_stargan as _train_stargan  # noqa: E402,F401
from fertk.cli import train_fer as _train_fer  # noqa: E402,F401

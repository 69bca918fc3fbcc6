"""`fertk models list|show`: the built-in architectures and their default configs."""

from __future__ import annotations

from pathlib import Path

import typer

from fertk.cli.options import JsonOutput, out, print_json

models_app = typer.Typer(help="List and inspect the built-in model architectures.", no_args_is_help=True)


def list_cmd(
    pattern: str = typer.Argument(None, help="Only names containing this text."),
    task: str = typer.Option(None, help="Only models of this task (classifier, generator, translator, ...)."),
    json_output: JsonOutput = False,
) -> None:
    """List registered models."""
    from fertk.models.registry import get_entry, list_models

    entries = [get_entry(name) for name in list_models(pattern, task=task)]
    if json_output:
        print_json([{"name": e.name, "task": e.task, "description": e.description} for e in entries])
        return
    from rich.table import Table

    table = Table("name", "task", "description")
    for e in entries:
        table.add_row(e.name, e.task, e.description)
    out.print(table)


def show_cmd(
    name: str = typer.Argument(..., help="A registered model name (see `fertk models list`)."),
    weights: Path = typer.Option(None, "--weights", "-w", help="Load these weights and show their card."),
    json_output: JsonOutput = False,
) -> None:
    """Show a model's card: architecture config, I/O specs, parameter count, weights hash."""
    from fertk.models.registry import load_model

    model, card = load_model(name, weights=weights)
    data = card.to_dict()
    data.setdefault("extra", {})["parameters"] = sum(p.numel() for p in model.parameters())
    if json_output:
        print_json(data)
        return
    out.print_json(data=data)
    extra = data["extra"]
    if extra.get("image_size_source"):
        # A StarGAN checkpoint holds no image size: say which one will be used, and why.
        out.print(f"image size: {extra['image_size']} px — {extra['image_size_source']}", highlight=False)
    if extra.get("fp16_layers") and extra.get("num_fp16_res"):
        out.print(f"fp16 layers (num_fp16_res {extra['num_fp16_res']}): {extra['fp16_layers']}", highlight=False)

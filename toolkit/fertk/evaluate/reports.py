"""Report files for evaluation results: per test set a JSON with every metric, confusion CSVs
(counts, row-normalised), a per-class CSV and two PNGs; a summary JSON + CSV over test sets."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.io import atomic_write_text, save_figure
from fertk.evaluate.metrics import EvalReport


def format_number(value: float | None) -> str:
    """A metric in a CSV cell: six decimals, empty for None."""
    return "" if value is None else f"{value:.6f}"


def csv_text(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as CSV text with \\n line ends."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def safe_name(name: str) -> str:
    """A file-name-safe version of a test-set name."""
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip())
    return cleaned.strip("._") or "test"


def unique_stems(names: Sequence[str]) -> list[str]:
    """File-name-safe stems for `names`, `_2`, `_3`, ... appended to repeats."""
    seen: dict[str, int] = {}
    stems = []
    for name in names:
        stem = safe_name(name)
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return stems


def write_report(report: EvalReport, out_dir: str | Path, name: str | None = None) -> dict[str, Path]:
    """Write `<name>.json`, confusion CSVs (counts, row-normalised), per-class CSV and two PNGs."""
    out_dir = Path(out_dir)
    stem = safe_name(name or report.name)
    header = ["true\\predicted", *report.classes]
    per_class = [[m.name, m.support, m.predicted, format_number(m.precision), format_number(m.recall),
                  format_number(m.f1)] for m in report.per_class]
    return {
        "json": atomic_write_text(out_dir / f"{stem}.json", json.dumps(report.to_dict(), indent=2) + "\n"),
        "confusion_csv": atomic_write_text(out_dir / f"{stem}_confusion.csv", csv_text(
            [header] + [[c, *map(int, row)] for c, row in zip(report.classes, report.confusion)])),
        "confusion_normalized_csv": atomic_write_text(out_dir / f"{stem}_confusion_normalized.csv", csv_text(
            [header] + [[c, *(f"{v:.6f}" for v in row)] for c, row in zip(report.classes, report.confusion_normalized)])),
        "per_class_csv": atomic_write_text(out_dir / f"{stem}_per_class.csv", csv_text(
            [["class", "support", "predicted", "precision", "recall", "f1"]] + per_class)),
        "confusion_png": save_figure(confusion_figure(report), out_dir / f"{stem}_confusion.png"),
        "per_class_png": save_figure(per_class_figure(report), out_dir / f"{stem}_per_class.png"),
    }


def write_reports(reports: Sequence[EvalReport], out_dir: str | Path) -> dict[str, Any]:
    """Write every report plus `summary.json` / `summary.csv` (one row per test set); return paths."""
    out_dir = Path(out_dir)
    stems = unique_stems([r.name for r in reports])
    files = {stem: write_report(report, out_dir, stem) for stem, report in zip(stems, reports)}
    rows = [r.summary() for r in reports]
    summary_csv = atomic_write_text(out_dir / "summary.csv", csv_text(
        [["name", "n", "accuracy", "macro_f1", "mean_recall", "excluded", "absent_classes"]]
        + [[r["name"], r["n"], format_number(r["accuracy"]), format_number(r["macro_f1"]),
            format_number(r["mean_recall"]), ";".join(f"{k}={v}" for k, v in r["excluded"].items()),
            ";".join(r["absent_classes"])] for r in rows]))
    summary_json = atomic_write_text(out_dir / "summary.json", json.dumps(
        {"reports": rows, "files": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in files.items()}},
        indent=2, default=str) + "\n")
    return {"summary_json": summary_json, "summary_csv": summary_csv, "reports": files}


def confusion_figure(report: EvalReport) -> Any:
    """Heat map of the row-normalised confusion matrix, each cell labelled with count and share."""
    from matplotlib.figure import Figure

    k = len(report.classes)
    side = max(4.0, 0.9 * k + 2.0)
    fig = Figure(figsize=(side, side * 0.85))
    ax = fig.add_subplot()
    norm = report.confusion_normalized
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            count = int(report.confusion[i, j])
            colour = "white" if norm[i, j] > 0.55 else "black"
            ax.text(j, i, f"{count}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(k), report.classes, rotation=45, ha="right")
    ax.set_yticks(range(k), report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report.name}: accuracy {report.accuracy:.1%}, macro-F1 {report.macro_f1:.3f} (n={report.n})")
    return fig


def per_class_figure(report: EvalReport) -> Any:
    """Grouped bars of precision, recall and F1 per class (absent classes left empty)."""
    from matplotlib.figure import Figure

    k = len(report.classes)
    fig = Figure(figsize=(max(5.0, 1.1 * k + 2.0), 3.6))
    ax = fig.add_subplot()
    x = np.arange(k)
    width = 0.27
    rows = report.per_class
    for offset, metric in zip((-width, 0.0, width), ("precision", "recall", "f1")):
        values = [getattr(m, metric) if getattr(m, metric) is not None else np.nan for m in rows]
        ax.bar(x + offset, values, width, label=metric)
    ax.set_xticks(x, [f"{m.name}\n(n={m.support})" for m in rows], fontsize=8)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("score")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), fontsize=8, ncols=3, frameon=False)
    ax.set_title(f"{report.name}: per-class scores", pad=24)
    return fig

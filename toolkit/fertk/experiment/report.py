"""The experiment's summary: a Table-2-like table with cross-database columns, a Figure-8-like plot
(accuracy vs synthetic units k, with the baselines as horizontal lines), and per-class
precision/recall/F1 with confusion matrices for the baselines and the best mix.

Every number over repeats is mean ± 95 % CI half-width, t-distribution with R - 1 degrees of
freedom (fertk.experiment.stats). Per-class reports pool the confusion counts of all repeats.
Gains of a mix over real-only are paired: the difference is taken within each repeat (same real
split, same initialisation seed) and its mean ± CI reported.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import InvalidInputError
from fertk.core.io import atomic_write_text, save_figure
from fertk.core.progress import Progress, emit
from fertk.evaluate import EvalReport, safe_name
from fertk.experiment.config import ExperimentConfig
from fertk.experiment.cells import DONE_FILE, METRICS_FILE, plan_cells
from fertk.experiment.stats import mean_ci
from fertk.train.fer_config import PLATEAU_FRACTION

CI_NOTE = ("mean ± 95 % confidence interval over repeats (Student t with R − 1 degrees of freedom; "
           "each repeat has its own real split, synthetic identities and initialisation)")
_KIND_ORDER = {"real": 0, "synthetic": 1, "mix": 2}


# -- aggregation ------------------------------------------------------------------------------------
def summarize(config: ExperimentConfig, metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate finished cells into rows (one per training mix) of intervals over repeats."""
    cross = [s.name for s in config.cross_db]
    test_sets = ["test", "test_real", *cross]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for m in metrics:
        groups.setdefault(m["cell"]["id"], []).append(m)
    real_by_repeat = {m["repeat"]: m for m in groups.get("real", [])}
    rows = []
    for cell_id, items in groups.items():
        items = sorted(items, key=lambda m: m["repeat"])
        cell = items[0]["cell"]
        accuracy = {}
        values = {}
        gains = {}
        for name in test_sets:
            series = [m["accuracy"][name] for m in items if name in m["accuracy"]]
            if not series:
                continue
            values[name] = series
            accuracy[name] = mean_ci(series).to_dict()
            if cell["kind"] == "mix" and real_by_repeat:
                base = "test" if name == "test_real" else name
                diffs = [m["accuracy"][name] - real_by_repeat[m["repeat"]]["accuracy"][base]
                         for m in items if m["repeat"] in real_by_repeat and base in real_by_repeat[m["repeat"]]["accuracy"]]
                if diffs:
                    gains[name] = mean_ci(diffs).to_dict()
        train_acc = [m["train"]["acc"] for m in items]
        rows.append({
            "cell": cell_id, "label": cell["label"], "kind": cell["kind"], "synthetic": cell["synthetic"],
            "k": cell["k"], "repeats": [m["repeat"] for m in items], "n": len(items),
            "train_faces": float(np.mean([m["counts"]["train"] for m in items])),
            "epochs": float(np.mean([m["train"]["epochs_run"] for m in items])),
            "train_acc": mean_ci(train_acc).to_dict(), "accuracy": accuracy,
            "plateau": sum(on_plateau(m, len(config.classes)) for m in items),
            "plateau_flags": [on_plateau(m, len(config.classes)) for m in items],
            "gain_vs_real": gains, "values": {"train_acc": train_acc, **values},
        })
    rows.sort(key=lambda r: (_KIND_ORDER[r["kind"]], r["synthetic"] or "", r["k"]))
    best = best_mix(rows, cross, exclude={s.name for s in config.synthetic if s.shuffle_labels})
    return {"ci": CI_NOTE, "level": 0.95, "repeats": config.repeats, "cross_db": cross, "test_sets": test_sets,
            "rows": rows, "best_mix": best, "cells_finished": len(metrics),
            "cells_planned": config.repeats * len(plan_cells(config))}


def on_plateau(metrics: Mapping[str, Any], num_classes: int) -> bool:
    """True when a cell's CNN never left its starting plateau: best validation loss ≈ ln K."""
    return bool(metrics["train"]["val_loss"] >= PLATEAU_FRACTION * math.log(num_classes))


def best_mix(rows: Sequence[Mapping[str, Any]], cross: Sequence[str],
             exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The real + k mix with the highest mean accuracy over the cross-database sets (the real part
    of the in-database test when there is none); ties go to the smaller k; `exclude` names
    synthetic sets that are controls (shuffled labels), never a candidate."""
    sets = list(cross) or ["test_real"]
    scored = []
    for row in rows:
        if row["kind"] != "mix" or row["synthetic"] in exclude or not all(s in row["accuracy"] for s in sets):
            continue
        scored.append((float(np.mean([row["accuracy"][s]["mean"] for s in sets])), -row["k"], row))
    if not scored:
        return None
    score, _, row = max(scored, key=lambda t: (t[0], t[1]))
    return {"cell": row["cell"], "label": row["label"], "score": score,
            "criterion": "mean accuracy over " + (", ".join(sets) if cross else "the real test split")}


# -- tables -----------------------------------------------------------------------------------------
def format_interval(interval: Mapping[str, Any] | None) -> str:
    """An accuracy interval as a percentage 'mean ± half-width' ('–' when there is none)."""
    if not interval or interval.get("mean") is None or math.isnan(interval["mean"]):
        return "–"
    text = f"{100 * interval['mean']:.1f}"
    return text if interval.get("half_width") is None else f"{text} ± {100 * interval['half_width']:.1f}"


def _fmt_gain(interval: Mapping[str, Any] | None) -> str:
    if not interval:
        return ""
    text = f"{100 * interval['mean']:+.1f}"
    return text if interval.get("half_width") is None else f"{text} ± {100 * interval['half_width']:.1f}"


def results_table(summary: Mapping[str, Any]) -> str:
    """The Markdown table: train / in-database test / real-test / cross-db accuracy per mix (percent)."""
    cross = summary["cross_db"]
    header = ["Training data", "Train faces", "Train acc", "Test acc (in-db)", "Real test acc", *cross]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in summary["rows"]:
        acc = row["accuracy"]
        real_test = acc.get("test_real") if row["kind"] == "mix" else (acc.get("test") if row["kind"] == "real" else None)
        cells = [row["label"] + (f" (n={row['n']})" if row["n"] != summary["repeats"] else "")
                 + (f" †{row['plateau']}" if row.get("plateau") else ""),
                 f"{row['train_faces']:.0f}", format_interval(row["train_acc"]), format_interval(acc.get("test")),
                 format_interval(real_test)]
        cells += [format_interval(acc.get(name)) for name in cross]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gains_table(summary: Mapping[str, Any]) -> str:
    """Paired gain of each mix over real-only (percentage points), per cross-db set and the real test."""
    sets = [*summary["cross_db"], "test_real"]
    mixes = [r for r in summary["rows"] if r["kind"] == "mix" and r["gain_vs_real"]]
    if not mixes:
        return ""
    header = ["Training data", *[("real test" if s == "test_real" else s) for s in sets]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(sets)) + "|"]
    for row in mixes:
        lines.append("| " + " | ".join([row["label"], *[_fmt_gain(row["gain_vs_real"].get(s)) for s in sets]]) + " |")
    return "\n".join(lines)


def results_csv(summary: Mapping[str, Any]) -> str:
    """One CSV row per (mix, metric): mean, half-width, n, and the per-repeat values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["cell", "label", "kind", "synthetic", "k", "metric", "mean", "ci95_half_width", "n", "values"])
    for row in summary["rows"]:
        metrics = [("train_acc", row["train_acc"])] + [(f"acc:{name}", iv) for name, iv in row["accuracy"].items()]
        metrics += [(f"gain:{name}", iv) for name, iv in row["gain_vs_real"].items()]
        for metric, iv in metrics:
            key = metric.split(":", 1)[-1] if metric.startswith("acc:") else metric
            values = row["values"].get(key, []) if not metric.startswith("gain:") else []
            writer.writerow([row["cell"], row["label"], row["kind"], row["synthetic"] or "", row["k"], metric,
                             f"{iv['mean']:.6f}", "" if iv["half_width"] is None else f"{iv['half_width']:.6f}",
                             iv["n"], ";".join(f"{v:.6f}" for v in values)])
    return buffer.getvalue()


# -- figures ----------------------------------------------------------------------------------------
def accuracy_vs_k_figure(summary: Mapping[str, Any], test_sets: Sequence[str], title: str) -> Any:
    """One panel per test set: each synthetic set's mix accuracy vs k (mean, 95 % CI band), with
    real-only (black) and synthetic-only (dashed, the set's colour) as horizontal lines."""
    from matplotlib.figure import Figure

    rows = summary["rows"]
    ks = sorted({r["k"] for r in rows if r["kind"] == "mix"})
    fig = Figure(figsize=(5.6 * len(test_sets), 4.8))
    axes = np.atleast_1d(fig.subplots(1, len(test_sets), squeeze=False)[0])
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    synthetic_sets = sorted({r["synthetic"] for r in rows if r["synthetic"]})
    for ax, name in zip(axes, test_sets):
        base_name = "test" if name == "test_real" else name
        real = next((r for r in rows if r["kind"] == "real" and base_name in r["accuracy"]), None)
        if real is not None:
            iv = real["accuracy"][base_name]
            ax.axhline(100 * iv["mean"], color="black", linewidth=1.5, label="real only")
            if iv["half_width"] is not None:
                ax.axhspan(max(0.0, 100 * (iv["mean"] - iv["half_width"])),
                           min(100.0, 100 * (iv["mean"] + iv["half_width"])), color="grey", alpha=0.12, linewidth=0)
        for colour, synth in zip(colours * 4, synthetic_sets):
            only = next((r for r in rows if r["kind"] == "synthetic" and r["synthetic"] == synth
                         and name in r["accuracy"]), None)
            if only is not None and name != "test_real":
                ax.axhline(100 * only["accuracy"][name]["mean"], color=colour, linestyle="--", linewidth=1,
                           label=f"synthetic only ({synth})")
            mixes = sorted((r for r in rows if r["kind"] == "mix" and r["synthetic"] == synth and name in r["accuracy"]),
                           key=lambda r: r["k"])
            if not mixes:
                continue
            x = np.array([r["k"] for r in mixes], dtype=float)
            mean = np.array([100 * r["accuracy"][name]["mean"] for r in mixes])
            half = np.array([np.nan if r["accuracy"][name]["half_width"] is None
                             else 100 * r["accuracy"][name]["half_width"] for r in mixes])
            low, high = np.clip(mean - half, 0, 100), np.clip(mean + half, 0, 100)
            ax.plot(x, mean, marker="o", color=colour, label=f"real + k × {synth}")
            if not np.isnan(half).all():
                ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
                ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=colour, capsize=3, linewidth=1)
            for r, xv in zip(mixes, x):  # each repeat, so a small R's spread is visible as it is
                values = 100 * np.array(r["values"][name], dtype=float)
                stuck = np.array(r.get("plateau_flags") or [False] * len(values), dtype=bool)[:len(values)]
                ax.scatter(np.full(int((~stuck).sum()), xv), values[~stuck], s=12, color=colour, alpha=0.5,
                           linewidths=0)
                ax.scatter(np.full(int(stuck.sum()), xv), values[stuck], s=22, color=colour, marker="x",
                           linewidths=1)
        if any(any(r.get("plateau_flags") or []) for r in rows if r["kind"] == "mix"):
            ax.scatter([], [], s=22, color="grey", marker="x", label="a repeat that never left the plateau")
        ax.set_xticks(ks)
        ax.set_ylim(0, 101)
        ax.set_xlabel("synthetic units added (k)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("real test split" if name == "test_real" else ("in-database test" if name == "test" else name))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2, frameon=False)
    repeats = summary["repeats"]
    fig.suptitle(f"{title} — mean ± 95 % CI over {repeats} repeat{'s' if repeats != 1 else ''}", fontsize=10)
    return fig


# -- per-class reports --------------------------------------------------------------------------------
def pooled_report(items: Sequence[Mapping[str, Any]], test_set: str, label: str) -> EvalReport | None:
    """One EvalReport whose confusion is the sum over repeats (per-class P/R/F1 from pooled counts)."""
    reports = [EvalReport.from_dict(m["reports"][test_set]) for m in items if test_set in m.get("reports", {})]
    if not reports:
        return None
    confusion = np.sum([r.confusion for r in reports], axis=0)
    excluded: dict[str, int] = {}
    for r in reports:
        for key, value in r.excluded.items():
            excluded[key] = excluded.get(key, 0) + int(value)
    return EvalReport(f"{label} on {test_set}", reports[0].classes, confusion, excluded,
                      {"pooled_repeats": [m["repeat"] for m in items if test_set in m.get("reports", {})]})


def _per_class_table(reports: Sequence[tuple[str, EvalReport]]) -> str:
    classes = reports[0][1].classes
    header = ["Model", "Metric", *classes, "macro"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(classes) + 1)) + "|"]
    for label, report in reports:
        per = report.per_class
        for metric in ("precision", "recall", "f1"):
            values = [getattr(m, metric) for m in per]
            macro = {"f1": report.macro_f1, "recall": report.mean_recall}.get(metric)
            cells = ["–" if v is None else f"{v:.2f}" for v in values]
            lines.append("| " + " | ".join([label if metric == "precision" else "", metric, *cells,
                                             "" if macro is None else f"{macro:.2f}"]) + " |")
    return "\n".join(lines)


def per_class_csv(reports: Sequence[tuple[str, EvalReport]]) -> str:
    """model, class, support, predicted, precision, recall, f1 (empty where undefined)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "class", "support", "predicted", "precision", "recall", "f1"])
    for label, report in reports:
        for m in report.per_class:
            writer.writerow([label, m.name, m.support, m.predicted,
                             *("" if v is None else f"{v:.6f}" for v in (m.precision, m.recall, m.f1))])
    return buffer.getvalue()


def confusion_grid_figure(reports: Sequence[tuple[str, EvalReport]], test_set: str) -> Any:
    """Row-normalised confusion matrices side by side (the paper's Figures 4, 6, 9), counts pooled over repeats."""
    from matplotlib.figure import Figure

    k = len(reports[0][1].classes)
    side = max(3.2, 0.55 * k + 1.4)
    fig = Figure(figsize=(side * len(reports), side + 0.6))
    axes = fig.subplots(1, len(reports), squeeze=False)[0]
    for ax, (label, report) in zip(axes, reports):
        norm = report.confusion_normalized
        ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.55 else "black")
        names = [c[:4] for c in report.classes]
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_title(f"{label}\nacc {report.accuracy:.1%}, n={report.n}", fontsize=8)
    axes[0].set_ylabel("true", fontsize=8)
    fig.suptitle(f"Confusion on {test_set} (rows: true class; repeats pooled)", fontsize=9)
    return fig


def per_class_figure(reports: Sequence[tuple[str, EvalReport]], test_set: str) -> Any:
    """Precision, recall and F1 per class, one bar per model (the paper's Figures 5, 7, 10)."""
    from matplotlib.figure import Figure

    classes = reports[0][1].classes
    fig = Figure(figsize=(max(6.0, 1.3 * len(classes) + 2.0), 7.0))
    axes = fig.subplots(3, 1, sharex=True)
    x = np.arange(len(classes))
    width = 0.8 / len(reports)
    for ax, metric in zip(axes, ("precision", "recall", "f1")):
        for i, (label, report) in enumerate(reports):
            values = [np.nan if getattr(m, metric) is None else getattr(m, metric) for m in report.per_class]
            ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xticks(x, classes, fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncols=min(3, len(reports)), loc="lower center", bbox_to_anchor=(0.5, -0.04))
    fig.suptitle(f"Per-class scores on {test_set} (repeats pooled)", fontsize=9)
    return fig


# -- the report ---------------------------------------------------------------------------------------
def write_report(run_dir: str | Path, config: ExperimentConfig, metrics: Sequence[Mapping[str, Any]],
                 resolved: Mapping[str, Any] | None = None, *,
                 progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write report/summary.md, results.json/.csv, the figures and per-class details; return (summary, files)."""
    out = Path(run_dir) / "report"
    summary = summarize(config, metrics)
    files: dict[str, Any] = {}
    cross = summary["cross_db"]
    rows = summary["rows"]
    if any(r["kind"] == "mix" for r in rows):
        panels = cross or ["test_real"]
        files["figure_cross_db"] = str(save_figure(
            accuracy_vs_k_figure(summary, panels, "Cross-database accuracy vs synthetic units" if cross
                                 else "Real test accuracy vs synthetic units"), out / "accuracy_vs_k.png"))
        files["figure_in_db"] = str(save_figure(
            accuracy_vs_k_figure(summary, ["test", "test_real"], "In-database test accuracy vs synthetic units"),
            out / "in_db_accuracy_vs_k.png"))

    # Per-class P/R/F1 and confusion matrices of the baselines and the best mix (repeats pooled),
    # on each cross-database set (the paper's Figures 4-7, 9-11), or the in-database test without one.
    controls = {spec.name for spec in config.synthetic if spec.shuffle_labels}
    chosen = [r for r in rows if r["kind"] == "real" or (r["kind"] == "synthetic" and r["synthetic"] not in controls)]
    if summary["best_mix"]:
        chosen.append(next(r for r in rows if r["cell"] == summary["best_mix"]["cell"]))
    by_cell: dict[str, list[Mapping[str, Any]]] = {}
    for m in metrics:
        by_cell.setdefault(m["cell"]["id"], []).append(m)
    per_set_reports: dict[str, list[tuple[str, EvalReport]]] = {}
    details: dict[str, Any] = {}
    for test_set in (cross or ["test"]):
        reports = []
        for row in chosen:
            report = pooled_report(by_cell[row["cell"]], test_set, row["label"])
            if report is not None:
                reports.append((row["label"], report))
                atomic_write_text(out / "details" / row["cell"] / f"{test_set}.json",
                                  json.dumps(report.to_dict(), indent=1, default=str) + "\n")
        if not reports:
            continue
        per_set_reports[test_set] = reports
        stem = _safe(test_set)
        details[test_set] = {
            "per_class_csv": str(atomic_write_text(out / f"per_class_{stem}.csv", per_class_csv(reports))),
            "confusion_png": str(save_figure(confusion_grid_figure(reports, test_set), out / f"confusion_{stem}.png")),
            "per_class_png": str(save_figure(per_class_figure(reports, test_set), out / f"per_class_{stem}.png")),
        }
    files["details"] = details

    results = {"summary": summary, "resolved": resolved or {}, "files": files}
    files["results_json"] = str(atomic_write_text(out / "results.json",
                                                   json.dumps(results, indent=1, default=str) + "\n"))
    files["results_csv"] = str(atomic_write_text(out / "results.csv", results_csv(summary)))
    files["summary_md"] = str(atomic_write_text(out / "summary.md", markdown(config, summary, files, per_set_reports,
                                                                           resolved or {}, out)))
    emit(progress, "report", f"report: {files['summary_md']}")
    return summary, files


def markdown(config: ExperimentConfig, summary: Mapping[str, Any], files: Mapping[str, Any],
             per_set_reports: Mapping[str, Sequence[tuple[str, EvalReport]]], resolved: Mapping[str, Any],
             out: Path) -> str:
    """The summary report's Markdown text (image links relative to the report folder)."""
    def rel(path: str) -> str:
        return Path(path).relative_to(out).as_posix()

    sizes = resolved.get("split_sizes") or {}
    lines = [f"# Experiment `{config.name}`", ""]
    lines.append(f"Real data: {', '.join(s.name for s in config.real)}; subject split "
                 + "/".join(str(sizes.get(p, '?')) for p in ("train", "val", "test"))
                 + f" (train/val/test subjects; requested {'/'.join(map(str, config.split_sizes))}); "
                 f"a synthetic unit = {resolved.get('unit_identities', '?')} identities × all {len(config.classes)} emotions.")
    if config.synthetic:
        lines.append("Synthetic sets: " + ", ".join(
            s.name + (" (labels shuffled — control)" if s.shuffle_labels else "") for s in config.synthetic) + ".")
    if config.cross_db:
        lines.append("Cross-database test sets: " + ", ".join(s.name for s in config.cross_db) + ".")
    train = config.train_config(seed=0)
    lines.append(f"FER CNN `{train.variant}` at {train.input_size} px, Adam lr {train.lr:g}, batch {train.batch_size}, "
                 f"≤ {train.epochs} epochs, patience {train.patience}"
                 + (f", min epochs {train.min_epochs}" if getattr(train, "min_epochs", 0) else "")
                 + f"; {summary['repeats']} repeat(s); k = {', '.join(map(str, config.k))}.")
    lines += ["", f"Accuracies in percent, {summary['ci']}.",
              "Train acc is the training accuracy (dropout on) of the epoch kept by early stopping; "
              "Test acc (in-db) is the mix's own held-out split (real test subjects + the units' synthetic test "
              "identities, as in the paper's Table 2); Real test acc is its real part only.", ""]
    if summary["cells_finished"] < summary["cells_planned"]:
        lines += [f"**Incomplete:** {summary['cells_finished']} of {summary['cells_planned']} cells finished.", ""]
    lines += [results_table(summary), ""]
    stuck = [r for r in summary["rows"] if r.get("plateau")]
    if stuck:
        lines += ["† n: n repeats of that mix never left the CNN's initial plateau (best validation loss ≈ ln K, "
                  "uniform predictions); they are in the mean. For a real mix that is the optimiser, not the data: "
                  "set [train] plateau_restarts (re-initialise after plateau_steps), or raise min_epochs / epochs "
                  "or the batch size. A shuffled-label control is expected to stay there.", ""]
    gains = gains_table(summary)
    if gains:
        lines += ["Gain over real only (percentage points, paired by repeat):", "", gains, ""]
    if summary["best_mix"]:
        lines += [f"Best mix: **{summary['best_mix']['label']}** ({summary['best_mix']['criterion']}).", ""]
    if "figure_cross_db" in files:
        lines += [f"![accuracy vs k]({rel(files['figure_cross_db'])})", "",
                  f"![in-database accuracy vs k]({rel(files['figure_in_db'])})", ""]
    for test_set, reports in per_set_reports.items():
        name = "the in-database test" if test_set == "test" else test_set
        lines += [f"## Per-class scores on {name} (repeats pooled)", "", _per_class_table(reports), ""]
        detail = files["details"].get(test_set)
        if detail:
            lines += [f"![confusion matrices on {name}]({rel(detail['confusion_png'])})", "",
                      f"![per-class scores on {name}]({rel(detail['per_class_png'])})", ""]
    notes = list(resolved.get("split_notes") or [])
    if notes:
        lines += ["Notes: " + "; ".join(notes), ""]
    return "\n".join(lines)


def _safe(name: str) -> str:
    return safe_name(name)


def read_run_json(path: Path) -> Any:
    """A JSON file of a run directory; a damaged one is a one-line error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not readable JSON ({exc})",
                                hint="delete it (a cell's files: its folder) and run the experiment again") from None


def collect_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics of every finished cell under a run directory."""
    out = []
    for done in sorted(Path(run_dir).glob(f"cells/*/r*/{DONE_FILE}")):
        metrics = done.parent / METRICS_FILE
        if metrics.is_file():
            out.append(read_run_json(metrics))
    return out


def report_from_run_dir(run_dir: str | Path, *, progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rebuild the report of a run directory from its finished cells (no training)."""
    run_dir = Path(run_dir)
    resolved_path = run_dir / "config.resolved.json"
    if not resolved_path.is_file():
        raise InvalidInputError(f"{run_dir} is not an experiment run directory (no config.resolved.json)")
    resolved = read_run_json(resolved_path)
    config = ExperimentConfig.from_dict(resolved["config"])
    planned = {c["id"] for c in resolved.get("cells", [])}
    metrics = [m for m in collect_metrics(run_dir)
               if m["cell"]["id"] in planned and m["repeat"] < config.repeats]
    return write_report(run_dir, config, metrics, resolved, progress=progress)


__all__ = ["CI_NOTE", "accuracy_vs_k_figure", "best_mix", "collect_metrics", "gains_table", "pooled_report",
           "report_from_run_dir", "results_csv", "results_table", "summarize", "write_report"]

"""`fertk synth report DIR --judge J`: how a judge (an FER classifier fertk did not train) reads a
synth dataset — any format (wds, folder, npy), read through `fertk.data.shards`.

What it measures (all in report.json; the PNG/CSV files repeat parts of it):

- per-emotion agreement: the share of faces made for emotion e that the judge's top-1 class
  calls e, and the judge's mean probability of e on them (emotions the judge lacks: null);
- confusion: rows = intended emotion (the dataset's classes), columns = the judge's classes
  (`confusion.json` / `.csv` / `.png`); counts and row shares;
- agreement vs expression intensity: agreement per intensity bin, overall and per emotion
  (`agreement_vs_intensity.png` when the intensities vary);
- class balance: faces per intended emotion, per judge-predicted class, and the normalised
  entropy of the predicted distribution (1 = the judge spreads its calls evenly, 0 = one class);
- identity diversity: each identity is represented by the judge's penultimate features of its
  neutral face (or, without neutral faces, the mean over its expressions); the measure is the
  mean pairwise cosine distance (1 − cos) between those L2-normalised vectors over identities
  (≤ 2,000, a seeded sample above that): 0 when every identity looks the same to the judge,
  larger the more identities differ. An ONNX judge exposes no features: then 16×16
  standardised pixels stand in and `features` says so;
- worst faces: a montage of the faces whose intended emotion gets the lowest judge probability
  (`worst_faces.png`), each labelled intended → judge's call (probability), listed in the JSON.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.emotions import NEUTRAL
from fertk.core.errors import DatasetError, InvalidInputError
from fertk.core.io import atomic_write_text, save_figure
from fertk.data.shards import layout_of, read_arrays
from fertk.synth.engines import FaceScorer

REPORT_DIR = "report"
MAX_DIVERSITY_IDS = 2000
INTENSITY_BINS = 5
DIVERSITY_MEASURE = ("mean pairwise cosine distance (1 - cos) between identities' L2-normalised judge "
                     "penultimate features of their neutral face (mean over expressions when the dataset has "
                     f"no neutral); over at most {MAX_DIVERSITY_IDS} identities")


@dataclass
class JudgeScores:
    """The judge's view of every face: probabilities [N, K] and (optionally) features [N, D]."""

    classes: tuple[str, ...]
    probs: np.ndarray
    features: np.ndarray | None
    judge: dict[str, Any]


@dataclass
class SynthReport:
    """The report's data (to_dict is report.json) and where its files went."""

    root: str
    judge: dict[str, Any]
    data: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"dataset": self.root, "judge": self.judge, **self.data, "files": self.files}

    def summary(self) -> dict[str, Any]:
        """The block a dataset card carries (no per-face lists)."""
        keep = ("agreement", "per_emotion", "class_balance", "identity_diversity", "agreement_vs_intensity")
        return {"judge": {k: self.judge.get(k) for k in ("name", "kind", "path", "sha256", "classes")},
                **{k: self.data[k] for k in keep if k in self.data}, "files": self.files}


def _manifest(root: Path) -> dict[str, dict[str, str]]:
    path = root / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"{root} has no manifest.csv: not a finished `fertk synth` output",
                           hint="rerun the same `fertk synth` command to finish it")
    with open(path, newline="") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def score_faces(scorer: Any, images: np.ndarray, *, batch_size: int = 256) -> JudgeScores:
    """Run a `FaceScorer` over uint8 faces [N, H, W]."""
    probs = scorer.probabilities(images, batch_size=batch_size)
    feats = scorer.features(images, batch_size=batch_size)
    return JudgeScores(tuple(scorer.classes), probs, feats, scorer.judge.describe())


def synth_report(root: str | Path, judge: str | Path, *, out: str | Path | None = None,
                 card: str | Path | None = None, backend: str = "torch", device: str = "cpu",
                 precision: str = "fp32", montage: int = 24, batch_size: int = 256) -> SynthReport:
    """Score a synth dataset with `judge` and write report.json, confusion.{json,csv,png},
    class_balance.csv, agreement_vs_intensity.png (varying intensity) and worst_faces.png into
    `out` (default DIR/report)."""
    root = Path(root)
    scorer = FaceScorer(judge, backend=backend, device=device, precision=precision, card=card)
    try:
        arrays = read_arrays(root)
        if len(arrays) == 0:
            raise DatasetError(f"{root} holds no faces")
        images = arrays.images if arrays.images.ndim == 3 else arrays.images[..., 0]
        scores = score_faces(scorer, images, batch_size=batch_size)
    finally:
        scorer.close()
    rows = _manifest(root)
    keyed = [rows.get(k) for k in arrays.keys]
    if any(r is None for r in keyed):
        raise DatasetError(f"{root}: manifest.csv does not list every sample of the shards",
                           hint=f"check the dataset with `fertk synth verify {root}`")
    identity = np.array([int(r["identity"]) for r in keyed], dtype=np.int64)
    intensity = np.array([float(r["intensity"]) for r in keyed], dtype=np.float64)
    report = build_report(images, arrays.labels, tuple(arrays.classes), identity, intensity, arrays.keys,
                          scores, root=str(root), montage=montage)
    report.data["dataset_format"] = layout_of(root)[0].fmt
    target = Path(out) if out is not None else root / REPORT_DIR
    report.files = write_report(report, images, target)
    return report


def build_report(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], identity: np.ndarray,
                 intensity: np.ndarray, keys: Sequence[str], scores: JudgeScores, *, root: str = "",
                 montage: int = 24) -> SynthReport:
    """The report's numbers from faces, their intended labels and the judge's scores."""
    if len(images) != len(labels) or len(scores.probs) != len(labels):
        raise InvalidInputError("faces, labels and judge scores differ in length")
    judge_classes = scores.classes
    pred = scores.probs.argmax(axis=1)
    jidx = {c: i for i, c in enumerate(judge_classes)}
    intended_j = np.array([jidx.get(classes[lab], -1) for lab in labels], dtype=np.int64)
    known = intended_j >= 0
    p_intended = np.full(len(labels), np.nan)
    p_intended[known] = scores.probs[np.flatnonzero(known), intended_j[known]]
    agree = known & (pred == intended_j)

    confusion = np.zeros((len(classes), len(judge_classes)), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_emotion = {}
    for i, emotion in enumerate(classes):
        mine = labels == i
        judged = emotion in jidx
        per_emotion[emotion] = {
            "faces": int(mine.sum()),
            "agreement": float(agree[mine].mean()) if judged and mine.any() else None,
            "mean_probability": float(np.nanmean(p_intended[mine])) if judged and mine.any() else None,
            "judge_calls_most": judge_classes[int(confusion[i].argmax())] if mine.any() else None,
            "judged": judged,
        }
    overall = float(agree[known].mean()) if known.any() else None

    predicted_counts = np.bincount(pred, minlength=len(judge_classes))
    share = predicted_counts / max(1, predicted_counts.sum())
    nz = share[share > 0]
    entropy = float(-(nz * np.log(nz)).sum() / np.log(len(judge_classes))) if len(judge_classes) > 1 else 0.0
    intended_counts = np.bincount(labels, minlength=len(classes))
    balance = {
        "intended": {c: int(n) for c, n in zip(classes, intended_counts)},
        "predicted": {c: int(n) for c, n in zip(judge_classes, predicted_counts)},
        "intended_max_over_min": float(intended_counts.max() / intended_counts.min()) if intended_counts.min() else None,
        "predicted_entropy": entropy,
    }
    data: dict[str, Any] = {
        "faces": int(len(labels)),
        "identities": int(len(np.unique(identity))),
        "classes": list(classes),
        "judge_classes": list(judge_classes),
        "agreement": overall,
        "agreement_scored_faces": int(known.sum()),
        "per_emotion": per_emotion,
        "confusion": {"rows": list(classes), "columns": list(judge_classes), "counts": confusion.tolist(),
                      "row_share": _row_share(confusion).tolist(),
                      "note": "rows: the emotion each face was made for; columns: the judge's top-1 class"},
        "class_balance": balance,
        "agreement_vs_intensity": intensity_table(intensity, labels, agree, known, classes),
        "identity_diversity": identity_diversity(identity, labels, classes, scores.features, images),
        "worst_faces": worst_faces(p_intended, pred, labels, classes, judge_classes, keys, identity, montage),
    }
    return SynthReport(root, scores.judge, data)


def _row_share(confusion: np.ndarray) -> np.ndarray:
    support = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)


def intensity_table(intensity: np.ndarray, labels: np.ndarray, agree: np.ndarray, known: np.ndarray,
                    classes: tuple[str, ...], bins: int = INTENSITY_BINS) -> dict[str, Any]:
    """Agreement per intensity bin (equal-width bins over the observed range), overall and per emotion."""
    scored = known & (np.array([c != NEUTRAL for c in classes])[labels] if len(labels) else known)
    values = intensity[scored]
    if not len(values):
        return {"varies": False, "bins": []}
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-6:
        return {"varies": False, "value": low, "bins": [], "note": "every face has the same intensity"}
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.searchsorted(edges, intensity, side="right") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        in_bin = scored & (which == b)
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "faces": int(in_bin.sum()),
               "agreement": float(agree[in_bin].mean()) if in_bin.any() else None, "per_emotion": {}}
        for i, emotion in enumerate(classes):
            sel = in_bin & (labels == i)
            if sel.any():
                row["per_emotion"][emotion] = float(agree[sel].mean())
        table.append(row)
    return {"varies": True, "bins": table}


def identity_diversity(identity: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                       features: np.ndarray | None, images: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Mean pairwise cosine distance between identity embeddings (see the module docstring)."""
    source = "judge penultimate features"
    if features is None:
        small = np.stack([_shrink(img) for img in images]).reshape(len(images), -1).astype(np.float64)
        features = (small - small.mean(axis=1, keepdims=True)) / (small.std(axis=1, keepdims=True) + 1e-6)
        source = "16x16 standardised pixels (the judge exposes no features)"
    features = np.asarray(features, dtype=np.float64)
    neutral = classes.index(NEUTRAL) if NEUTRAL in classes else None
    ids = np.unique(identity)
    rng = np.random.default_rng(seed)
    if len(ids) > MAX_DIVERSITY_IDS:
        ids = np.sort(rng.choice(ids, MAX_DIVERSITY_IDS, replace=False))
    vectors = []
    for i in ids:
        mine = identity == i
        if neutral is not None and (mine & (labels == neutral)).any():
            vectors.append(features[mine & (labels == neutral)].mean(axis=0))
        else:
            vectors.append(features[mine].mean(axis=0))
    result: dict[str, Any] = {"measure": DIVERSITY_MEASURE, "features": source,
                              "faces_used": "neutral" if neutral is not None else "mean over expressions",
                              "identities": int(len(ids)), "feature_dim": int(features.shape[1])}
    if len(ids) < 2:
        return {**result, "value": None, "note": "needs at least two identities"}
    v = np.stack(vectors)
    v = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)
    cos = v @ v.T
    upper = cos[np.triu_indices(len(v), k=1)]
    distance = 1.0 - upper
    return {**result, "value": float(distance.mean()), "std": float(distance.std()),
            "min": float(distance.min()), "max": float(distance.max())}


def _shrink(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(np.ascontiguousarray(image), (16, 16), interpolation=cv2.INTER_AREA)


def worst_faces(p_intended: np.ndarray, pred: np.ndarray, labels: np.ndarray, classes: tuple[str, ...],
                judge_classes: tuple[str, ...], keys: Sequence[str], identity: np.ndarray,
                count: int) -> list[dict[str, Any]]:
    """The `count` faces whose intended emotion gets the lowest judge probability (ties: key order)."""
    scored = np.flatnonzero(~np.isnan(p_intended))
    order = scored[np.lexsort((scored, p_intended[scored]))][:max(0, count)]
    return [{"index": int(i), "key": keys[i] if i < len(keys) else str(i), "identity": int(identity[i]),
             "intended": classes[labels[i]], "judge": judge_classes[pred[i]],
             "probability_intended": float(p_intended[i])} for i in order]


# -- files ------------------------------------------------------------------------------------------
def write_report(report: SynthReport, images: np.ndarray, out: str | Path) -> dict[str, str]:
    """Write the report's files into `out`; returns {kind: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report.data
    files: dict[str, str] = {}
    conf = data["confusion"]
    files["confusion_json"] = str(atomic_write_text(out / "confusion.json", json.dumps(conf, indent=2)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["intended \\ judge", *conf["columns"]])
    for name, row in zip(conf["rows"], conf["counts"]):
        writer.writerow([name, *row])
    files["confusion_csv"] = str(atomic_write_text(out / "confusion.csv", buffer.getvalue()))
    files["confusion_png"] = str(save_figure(confusion_figure(report), out / "confusion.png"))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "intended_faces", "judge_predicted"])
    balance = data["class_balance"]
    for name in dict.fromkeys([*balance["intended"], *balance["predicted"]]):
        writer.writerow([name, balance["intended"].get(name, ""), balance["predicted"].get(name, "")])
    files["class_balance_csv"] = str(atomic_write_text(out / "class_balance.csv", buffer.getvalue()))
    if data["agreement_vs_intensity"].get("varies"):
        files["agreement_vs_intensity_png"] = str(save_figure(intensity_figure(report),
                                                              out / "agreement_vs_intensity.png"))
    if data["worst_faces"]:
        files["worst_faces_png"] = str(save_figure(montage_figure(report, images), out / "worst_faces.png"))
    report.files = {**files, "report_json": str(out / "report.json")}
    atomic_write_text(out / "report.json", json.dumps(report.to_dict(), indent=2))
    return report.files


def confusion_figure(report: SynthReport) -> Any:
    """Intended × judge heat map of row shares, cells labelled with counts."""
    from matplotlib.figure import Figure

    conf = report.data["confusion"]
    counts = np.array(conf["counts"])
    share = np.array(conf["row_share"])
    rows, cols = conf["rows"], conf["columns"]
    fig = Figure(figsize=(max(4.5, 0.9 * len(cols) + 2.5), max(3.5, 0.75 * len(rows) + 2.0)))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the intended emotion")
    for i in range(len(rows)):
        for j in range(len(cols)):
            colour = "white" if share[i, j] > 0.55 else "black"
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(f"judge: {report.judge.get('name')}")
    ax.set_ylabel("intended")
    agreement = report.data["agreement"]
    ax.set_title(f"agreement {agreement:.1%}" if agreement is not None else "agreement n/a")
    return fig


def intensity_figure(report: SynthReport) -> Any:
    """Agreement per intensity bin: overall (bold) and per emotion."""
    from matplotlib.figure import Figure

    bins = report.data["agreement_vs_intensity"]["bins"]
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    for emotion in report.data["classes"]:
        values = [b["per_emotion"].get(emotion, np.nan) for b in bins]
        if not all(np.isnan(values)):
            ax.plot(centres, values, marker="o", linewidth=1, label=emotion)
    ax.plot(centres, [b["agreement"] if b["agreement"] is not None else np.nan for b in bins], color="black",
            linewidth=2.5, marker="s", label="all")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("expression intensity")
    ax.set_ylabel("judge agreement (top-1)")
    ax.legend(fontsize=7, ncols=2)
    ax.set_title(f"judge {report.judge.get('name')}: agreement vs intensity")
    return fig


def montage_figure(report: SynthReport, images: np.ndarray, columns: int = 6) -> Any:
    """The worst faces in a grid, each titled intended → judge (probability of the intended)."""
    from matplotlib.figure import Figure

    worst = report.data["worst_faces"]
    rows = (len(worst) + columns - 1) // columns
    fig = Figure(figsize=(1.6 * columns, 1.85 * rows))
    for n, face in enumerate(worst):
        ax = fig.add_subplot(rows, columns, n + 1)
        ax.imshow(images[face["index"]], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{face['intended']} →\n{face['judge']} p={face['probability_intended']:.2f}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"faces judge {report.judge.get('name')} disagrees with most", fontsize=9)
    return fig

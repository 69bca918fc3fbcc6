"""Artifact directories: layout, the JSON card, the cache location, atomic creation and listing.

An artifact is a directory:

    card.json            what it is (ArtifactCard): registry name, architecture config, weights
                         sha256, I/O specs, opset, library versions, parity report, variants
    model.onnx           the fp32 graph (model.onnx.data beside it only above 2 GB)
    model.fp16.onnx      optional: fp16 graph with fp32 I/O, for GPU execution providers
    model.int8.onnx      optional: INT8 QDQ graph for onnxruntime CPU, with its accuracy check
    engines/             TensorRT engines keyed by GPU, compute capability, TRT version,
                         precision and batch profile (see fertk.export.trt_build)

A directory is built under a hidden temporary name beside its final place and renamed into place
only once complete (parity passed, card written), so a directory that has a card.json is
complete. The cache root is `platformdirs.user_cache_dir("fertk")`, or $FERTK_CACHE_DIR when set;
artifacts live in `<root>/artifacts/<name>-<key12>`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fertk.core.errors import ArtifactError, OutputExistsError
from fertk.core.io import atomic_write_text
from fertk.core.paths import cache_dir
from fertk.core.specs import TensorSpec, argmax_outputs, specs_from_dicts
from fertk.core.versions import __version__, package_version

FORMAT = "fertk-artifact/1"
CARD_FILE = "card.json"
ENGINES_DIR = "engines"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def artifacts_root() -> Path:
    """Where exported artifacts are cached by default."""
    return cache_dir("artifacts")


def library_versions() -> dict[str, str | None]:
    """Versions that shape an exported graph (recorded in every card)."""
    return {
        "fertk": __version__,
        "python": sys.version.split()[0],
        "torch": package_version("torch"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime") or package_version("onnxruntime-gpu"),
        "onnxscript": package_version("onnxscript"),
        "numpy": package_version("numpy"),
    }


def utc_now() -> str:
    """ISO-8601 UTC timestamp, seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class ArtifactCard:
    """The JSON card of an artifact."""

    name: str                        # registry name ("fer-cnn") or the file/module it came from
    architecture: str                # class name of the exported module
    task: str                        # classifier | generator | translator | pipeline | unknown
    config: dict[str, Any]           # architecture config (JSON)
    key: str                         # sha256 of weights + config + specs + export options
    inputs: list[dict[str, Any]]     # TensorSpec dicts (+ optional "range")
    outputs: list[dict[str, Any]]
    onnx: dict[str, Any]             # OnnxExportInfo of model.onnx (file name, opset, sha256, ...)
    versions: dict[str, Any]
    created: str
    weights_sha256: str | None = None
    source: str | None = None
    parity: dict[str, Any] | None = None        # ParityReport dict (None only for foreign ONNX files)
    variants: dict[str, Any] = field(default_factory=dict)  # "fp16"/"int8" -> file, sha256, checks
    options: dict[str, Any] = field(default_factory=dict)   # export options used
    model_card: dict[str, Any] = field(default_factory=dict)  # the model's own registry card
    # Choices that shape the graph beyond config and weights, all in the key: StyleGAN2 sampling
    # (truncation, cutoff, noise mode, ws output), "fp16_layers", translator size and its source.
    graph_options: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    def input_specs(self) -> tuple[TensorSpec, ...]:
        """Declared input specs."""
        return specs_from_dicts(self.inputs)

    def output_specs(self) -> tuple[TensorSpec, ...]:
        """Declared output specs."""
        return specs_from_dicts(self.outputs)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Value ranges the card declares for inputs (used to draw parity inputs)."""
        return {d["name"]: (float(d["range"][0]), float(d["range"][1])) for d in self.inputs if d.get("range")}

    def argmax_outputs(self) -> list[str]:
        """Outputs whose argmax is meaningful (2-D outputs of classifiers)."""
        return argmax_outputs(self.task, self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)

    def to_json(self) -> str:
        """Pretty JSON text."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArtifactCard":
        """Inverse of to_dict; raises ArtifactError on a card of another format."""
        if data.get("format") != FORMAT:
            raise ArtifactError(f"card format {data.get('format')!r} is not {FORMAT!r}")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("name", "architecture", "task", "config", "key", "inputs", "outputs", "onnx",
                               "versions", "created") if k not in data]
        if missing:
            raise ArtifactError(f"card is missing fields {missing}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Artifact:
    """An artifact directory and its card."""

    path: Path
    card: ArtifactCard

    @property
    def card_path(self) -> Path:
        """The card file."""
        return self.path / CARD_FILE

    @property
    def engines_dir(self) -> Path:
        """Where TensorRT engines for this artifact live."""
        return self.path / ENGINES_DIR

    def onnx_path(self, precision: str = "fp32") -> Path:
        """The ONNX graph for a precision (fp32, fp16, int8); ArtifactError when not exported."""
        if precision not in VARIANT_FILES:
            raise ArtifactError(f"no ONNX variant for precision {precision!r}", hint="choose fp32, fp16 or int8")
        if precision != "fp32" and precision not in self.card.variants:
            raise ArtifactError(
                f"artifact {self.path} has no {precision} graph",
                hint=f"fertk export {self.card.name} --precision {precision}"
                     + (" --calib DATASET" if precision == "int8" else ""))
        path = self.path / VARIANT_FILES[precision]
        if not path.is_file():
            raise ArtifactError(f"artifact {self.path} is incomplete: {path.name} is missing")
        return path

    def size_bytes(self) -> int:
        """Total size of the directory's files."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def update_card(self, **changes: Any) -> None:
        """Rewrite card.json atomically with some fields changed (e.g. variants)."""
        data = self.card.to_dict()
        data.update(changes)
        self.card = ArtifactCard.from_dict(data)
        write_json_atomic(self.card_path, self.card.to_dict())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n", fsync=False)


def is_artifact_dir(path: str | Path) -> bool:
    """True when `path` is a directory holding a card.json."""
    path = Path(path)
    return path.is_dir() and (path / CARD_FILE).is_file()


def load_artifact(path: str | Path) -> Artifact:
    """Open an artifact directory (card read and checked; ArtifactError on a bad one)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"artifact directory {path} does not exist")
    card_file = path / CARD_FILE
    if not card_file.is_file():
        raise ArtifactError(f"{path} has no {CARD_FILE}: not a fertk artifact",
                            hint="export one with `fertk export MODEL --out DIR`")
    try:
        data = json.loads(card_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{card_file} is not valid JSON: {exc}", hint="re-export it with `fertk export`") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{card_file} does not hold a JSON object")
    try:
        artifact = Artifact(path, ArtifactCard.from_dict(data))
    except ArtifactError as exc:
        raise ArtifactError(f"{card_file}: {exc}", hint=exc.hint or "re-export it with `fertk export`") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ArtifactError(f"{card_file}: not a fertk artifact card ({exc})",
                            hint="re-export it with `fertk export`") from None
    model = path / artifact.card.onnx.get("file", VARIANT_FILES["fp32"])
    if not model.is_file():
        raise ArtifactError(f"artifact {path} is incomplete: {model.name} is missing")
    return artifact


def build_atomically(final: Path, build: Callable[[Path], None], *, replace: bool = False) -> Path:
    """Run `build(staging_dir)` and move the finished directory to `final`.

    The staging directory is a hidden sibling of `final` (same filesystem, so the rename is
    atomic); it is removed when `build` raises. An existing `final` is replaced only with
    `replace=True`, else OutputExistsError.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        if not replace:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputExistsError(f"{final} already exists and holds something else",
                                    hint="pass --force to replace it, or choose another --out")
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    elif final.exists():
        final.rmdir()
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class ArtifactSummary:
    """One row of `fertk export --list`."""

    name: str
    path: str
    key: str
    task: str
    size_bytes: int
    parity: str          # "pass" | "FAIL" | "none"
    max_error: float | None
    variants: list[str]
    created: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def summarize(artifact: Artifact) -> ArtifactSummary:
    """The listing row of one artifact."""
    parity = artifact.card.parity
    if parity is None:
        verdict, worst = "none", None
    else:
        verdict = "pass" if parity.get("passed") else "FAIL"
        errors = [o.get("max_abs") for o in parity.get("outputs", [])]
        numeric = [float(e) for e in errors if isinstance(e, (int, float))]
        worst = max(numeric) if numeric and len(numeric) == len(errors) else (float("inf") if errors else None)
    return ArtifactSummary(
        name=artifact.card.name, path=str(artifact.path), key=artifact.card.key[:12], task=artifact.card.task,
        size_bytes=artifact.size_bytes(), parity=verdict, max_error=worst,
        variants=["fp32", *sorted(artifact.card.variants)], created=artifact.card.created,
    )


def list_artifacts(root: str | Path | None = None) -> list[ArtifactSummary]:
    """Complete artifacts under `root` (default: the cache), newest first; unreadable ones skipped."""
    root = Path(root) if root is not None else artifacts_root()
    if not root.is_dir():
        return []
    rows = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not is_artifact_dir(path):
            continue
        try:
            rows.append(summarize(load_artifact(path)))
        except ArtifactError:
            continue
    return sorted(rows, key=lambda r: r.created, reverse=True)


def fingerprint(module: Any, extra: Mapping[str, Any]) -> str:
    """sha256 of a module's state (names, dtypes, shapes, bytes) and a JSON-able `extra` dict."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}\n".encode())
    # The graph depends on the code as much as on the weights: hash the source files of every
    # module class in the tree so an edited model never reuses a stale cached export.
    for source_file in sorted(_source_files(module)):
        digest.update(source_file.encode() + b"\n")
        digest.update(Path(source_file).read_bytes())
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _source_files(module: Any) -> set[str]:
    import inspect

    import torch

    files: set[str] = set()
    modules = module.modules() if isinstance(module, torch.nn.Module) else [module]
    for sub in modules:
        try:
            files.add(inspect.getfile(type(sub)))
        except (TypeError, OSError):  # builtins / classes defined in a REPL
            continue
    return {f for f in files if os.path.isfile(f) and "site-packages" not in f}


def spec_dicts(specs: Sequence[TensorSpec], ranges: Mapping[str, Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """Spec dicts for a card, with the value range where one is known."""
    out = []
    for spec in specs:
        data = spec.to_dict()
        if ranges and spec.name in ranges:
            data["range"] = [float(v) for v in ranges[spec.name]]
        out.append(data)
    return out

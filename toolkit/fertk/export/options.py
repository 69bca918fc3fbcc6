"""What an export takes: its options (`ExportOptions`) and the module it exports (`ModelSource`)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from fertk.core.errors import InvalidInputError
from fertk.core.specs import TensorSpec

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportOptions:
    """How to export (JSON-able). Only opset/exporter/optimize change the graph, so only they key the cache."""

    opset: int = 17
    exporter: str = "torchscript"            # "torchscript" | "dynamo" (see fertk.export.onnx)
    optimize: bool = True                    # onnxscript optimizer pass
    precision: str = "fp32"                  # fp16 / int8 also build that graph variant
    parity_batch: int = 3                    # differs from the traced batch (2) on purpose
    parity_seeds: tuple[int, ...] = (0, 1)
    atol: float | None = None                # override the fp32 tolerance of float outputs
    rtol: float | None = None
    int8_min_agreement: float = 0.9          # classifiers: INT8 vs fp32 argmax agreement required
    calibration_batch: int = 16
    calibration_samples: int = 512
    force: bool = False                      # replace an existing output directory

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"unknown export precision {self.precision!r}", hint="choose " + ", ".join(PRECISIONS))
        if not 13 <= self.opset <= 23:
            raise InvalidInputError(f"opset {self.opset} is outside the supported range 13..23")
        if self.exporter not in ("torchscript", "dynamo"):
            raise InvalidInputError(f"unknown exporter {self.exporter!r}", hint="choose torchscript or dynamo")
        if self.parity_batch < 1 or not self.parity_seeds:
            raise InvalidInputError("parity needs a batch >= 1 and at least one seed")
        self.parity_seeds = tuple(int(s) for s in self.parity_seeds)

    def graph_key(self) -> dict[str, Any]:
        """The options that shape model.onnx."""
        return {"opset": self.opset, "exporter": self.exporter, "optimize": self.optimize}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["parity_seeds"] = list(self.parity_seeds)
        return data


@dataclass
class ModelSource:
    """A module to export and what is known about it."""

    module: Any
    name: str
    input_specs: tuple[TensorSpec, ...]
    output_specs: tuple[TensorSpec, ...]
    task: str = "unknown"
    config: dict[str, Any] = field(default_factory=dict)
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    weights_sha256: str | None = None
    source: str | None = None
    model_card: dict[str, Any] = field(default_factory=dict)
    # Choices that shape the graph beyond config and weights (sampling, fp16 layers, sizes).
    graph_options: dict[str, Any] = field(default_factory=dict)


def slug(text: str) -> str:
    """A file-name-safe form of a model name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "model"

"""Reduced-precision ONNX graphs: fp16 (for GPU execution providers) and INT8 QDQ (for ORT CPU).

fp16: onnxruntime's own float16 converter (`onnxruntime.transformers.float16`, shipped in every
onnxruntime wheel, so no extra dependency) with graph I/O kept in fp32, so callers feed and read
the same dtypes as the fp32 graph.

INT8: `onnxruntime.quantization.quantize_static` in QDQ format, per-channel int8 weights, uint8
activations, calibrated (MinMax by default) on real inputs through a CalibrationDataReader. Its
accuracy against the fp32 graph is measured by `int8_accuracy` on held-out inputs and recorded in
the artifact card.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from fertk.core.errors import InvalidInputError
from fertk.core.io import sha256_file
from fertk.core.specs import TensorSpec
from fertk.engines.compare import Tolerance, compare_outputs
from fertk.engines.ort_engine import OrtEngine

Feed = dict[str, np.ndarray]
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def convert_fp16(src: str | Path, dst: str | Path, *, keep_io_types: bool = True,
                 op_block_list: Sequence[str] | None = None) -> dict[str, Any]:
    """Write an fp16 copy of the graph at `src` to `dst` (I/O stays fp32); return what was done."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values clamped to fp16 range
        half = convert_float_to_float16(model, keep_io_types=keep_io_types,
                                        op_block_list=list(op_block_list) if op_block_list else None)
    # The converter appends the I/O casts at the end of the node list; onnx.checker (and some
    # runtimes) require topological order.
    topological_sort(half.graph)
    onnx.save_model(half, str(dst))
    onnx.checker.check_model(str(dst))
    return {
        "file": Path(dst).name,
        "sha256": sha256_file(dst),
        "converter": f"onnxruntime.transformers.float16 (onnxruntime {ort_version})",
        "keep_io_types": keep_io_types,
        "op_block_list": list(op_block_list or []),
    }


def topological_sort(graph: Any) -> None:
    """Reorder `graph.node` in place so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):  # a cycle or a dangling input: leave the rest as it was
            ordered.extend(remaining)
            break
        pending = remaining
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def calibration_feeds(data: Any, input_specs: Sequence[TensorSpec], *, batch_size: int = 16,
                      max_samples: int | None = None,
                      ranges: Mapping[str, Sequence[float]] | None = None) -> list[Feed]:
    """Batches of model inputs from calibration data.

    `data` is one of: an array for the (single) input, a dict of arrays keyed by input name, a
    sequence of such dicts (used as given), or a FaceArrays dataset (uint8 faces mapped to the
    input's range, [0, 1] by default, channel axis added).
    """
    if batch_size < 1:
        raise InvalidInputError(f"calibration batch size must be >= 1, got {batch_size}")
    if isinstance(data, (list, tuple)) and data and isinstance(data[0], Mapping):
        return [{k: np.ascontiguousarray(v) for k, v in feed.items()} for feed in data]
    if hasattr(data, "images") and hasattr(data, "labels"):  # FaceArrays
        data = faces_to_input(data.images, input_specs[0], (ranges or {}).get(input_specs[0].name))
    if isinstance(data, np.ndarray):
        if len(input_specs) != 1:
            raise InvalidInputError(f"the model has {len(input_specs)} inputs; give calibration data as a "
                                    "dict keyed by " + ", ".join(s.name for s in input_specs))
        data = {input_specs[0].name: data}
    if not isinstance(data, Mapping):
        raise InvalidInputError(f"unsupported calibration data type {type(data).__name__}")
    names = [s.name for s in input_specs]
    if sorted(data) != sorted(names):
        raise InvalidInputError(f"calibration data has {sorted(data)}, the model takes {names}")
    count = min(len(v) for v in data.values())
    if count == 0:
        raise InvalidInputError("calibration data is empty")
    if max_samples is not None:
        count = min(count, max_samples)
    for spec in input_specs:
        value = data[spec.name]
        if value.dtype.name != spec.dtype:
            data = {**data, spec.name: value.astype(spec.dtype)}
        spec.check(data[spec.name][:1])
    return [{name: np.ascontiguousarray(data[name][start:start + batch_size]) for name in names}
            for start in range(0, count, batch_size)]


def faces_to_input(images: np.ndarray, spec: TensorSpec, value_range: Sequence[float] | None = None) -> np.ndarray:
    """uint8 faces [N, H, W] or [N, H, W, C] → float input [N, C, H, W] scaled to `value_range`."""
    if images.dtype != np.uint8:
        raise InvalidInputError(f"faces must be uint8, got {images.dtype}")
    x = images.astype(np.float32) / 255.0
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    low, high = (float(value_range[0]), float(value_range[1])) if value_range else (0.0, 1.0)
    x = x * (high - low) + low
    want = spec.shape[1:]
    if len(want) != 3 or any(isinstance(w, int) and w != g for w, g in zip(want, x.shape[1:])):
        raise InvalidInputError(f"faces of shape {list(x.shape[1:])} do not fit input {spec.name!r} "
                                f"{spec.describe()}", hint="preprocess the dataset to the model's input size")
    return np.ascontiguousarray(x.astype(spec.dtype))


def split_feeds(feeds: list[Feed], held_out_fraction: float = 0.25) -> tuple[list[Feed], list[Feed], bool]:
    """(calibration, evaluation, held_out): evaluation batches are unseen when there are >= 2 batches."""
    if len(feeds) < 2:
        return feeds, feeds, False
    n_eval = max(1, int(round(len(feeds) * held_out_fraction)))
    return feeds[:-n_eval], feeds[-n_eval:], True


class FeedReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._feeds = feeds
        self._iter: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        """The next batch, or None at the end."""
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._iter = iter(self._feeds)


def quantize_int8(src: str | Path, dst: str | Path, feeds: list[Feed], *, per_channel: bool = True,
                  method: str = "minmax") -> dict[str, Any]:
    """Static INT8 QDQ quantisation of the graph at `src`, calibrated on `feeds`, written to `dst`."""
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise InvalidInputError(f"unknown calibration method {method!r}", hint="choose " + ", ".join(CALIBRATION_METHODS))
    if not feeds:
        raise InvalidInputError("INT8 quantisation needs calibration data")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory(prefix="fertk-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + graph cleanup ORT recommends before quantising (symbolic shape
        # inference is for transformer graphs and is skipped).
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=calibrate,
                extra_options={"CalibTensorRangeSymmetric": False},
            )
    onnx.checker.check_model(str(dst))
    return {
        "file": Path(dst).name,
        "sha256": sha256_file(dst),
        "quantizer": f"onnxruntime.quantization.quantize_static QDQ (onnxruntime {ort_version})",
        "per_channel": per_channel,
        "activations": "uint8",
        "weights": "int8",
        "calibration_method": method,
        "calibration_batches": len(feeds),
        "calibration_samples": int(sum(len(next(iter(f.values()))) for f in feeds)),
    }


def int8_accuracy(fp32_path: str | Path, int8_path: str | Path, feeds: Iterable[Feed], *,
                  argmax_outputs: Sequence[str] = (), labels: np.ndarray | None = None,
                  held_out: bool = True) -> dict[str, Any]:
    """INT8 graph vs fp32 graph (both on ORT CPU) on `feeds`: errors per output, argmax agreement,
    and top-1 accuracy of both against `labels` when given (labels align with the feeds' rows)."""
    with OrtEngine(fp32_path) as ref, OrtEngine(int8_path, precision="int8") as q:
        outputs: dict[str, list[np.ndarray]] = {s.name: [] for s in ref.output_specs}
        q_outputs: dict[str, list[np.ndarray]] = {s.name: [] for s in ref.output_specs}
        samples = 0
        for feed in feeds:
            a, b = ref.run(feed), q.run(feed)
            for name in outputs:
                outputs[name].append(a[name])
                q_outputs[name].append(b[name])
            samples += len(next(iter(feed.values())))
        if samples == 0:
            raise InvalidInputError("no evaluation data for the INT8 accuracy check")
        expected = {k: np.concatenate(v) for k, v in outputs.items()}
        got = {k: np.concatenate(v) for k, v in q_outputs.items()}
        # Measurement only here (INT8 is lossy by design); callers decide what to gate on.
        loose = {s.name: Tolerance(atol=np.inf, rtol=0.0) for s in ref.output_specs}
        errors = compare_outputs(expected, got, ref.output_specs, loose, argmax_outputs=argmax_outputs)
    result: dict[str, Any] = {
        "samples": samples,
        "held_out": held_out,
        "outputs": [{k: v for k, v in e.to_dict().items() if k not in ("atol", "rtol", "passed", "bad_fraction")}
                    for e in errors],
    }
    agreements = [e.argmax_agreement for e in errors if e.argmax_agreement is not None]
    if agreements:
        result["argmax_agreement"] = min(agreements)
    if labels is not None and argmax_outputs:
        name = argmax_outputs[0]
        labels = np.asarray(labels)[:samples]
        result["fp32_accuracy"] = float(np.mean(expected[name].argmax(1) == labels))
        result["int8_accuracy"] = float(np.mean(got[name].argmax(1) == labels))
    return result

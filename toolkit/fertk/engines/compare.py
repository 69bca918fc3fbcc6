"""Parity: feed engines the same seeded inputs and report measured errors per output.

Running and comparing are separate (Polygraphy's comparator idea): `make_inputs` draws
reproducible inputs from the declared specs, `compare_outputs` measures one candidate's outputs
against a reference's, and `compare_engines` runs a reference and any number of candidates over a
few seeds and keeps the worst error seen per output. Export, tests and bench all use this module.

Error measures per output (computed in float64):
  max_abs   = max |candidate - reference|
  max_rel   = max |candidate - reference| / max(|reference|, floor), floor = 1e-3 * max|reference|
              (elementwise, with a floor so values near zero do not blow it up)
  range_rel = max_abs / max|reference|
  bad_fraction = share of elements with |candidate - reference| > atol + rtol * max|reference|
  passed    = bad_fraction <= max_bad_fraction (0 by default, i.e. max_abs within tolerance);
              shapes equal, and NaN/inf exactly where the reference has them
For classifier outputs ([batch, classes]) the argmax agreement is reported too. Integer (image)
outputs at reduced precision use a small `max_bad_fraction`: a pixel near a rendered edge may move
by several grey levels in fp16 while the image as a whole is right (see INTEGER_TOLERANCES), and a
broken conversion (overflow, wrong op) moves most pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fertk.engines.base import Engine
from fertk.core.specs import TensorSpec
from fertk.core.errors import InvalidInputError, ParityError

# A value range per input name, e.g. {"image": (0.0, 1.0)}; inputs without one draw N(0, 1).
Ranges = Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class Tolerance:
    """Elements pass within atol + rtol * max|reference|; an output passes when at most
    `max_bad_fraction` of its elements do not (see module docstring)."""

    atol: float
    rtol: float
    max_bad_fraction: float = 0.0

    def to_dict(self) -> dict[str, float]:
        """JSON-able dict."""
        return asdict(self)


# Defaults per engine precision for floating outputs.
FLOAT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-4),
    "fp16": Tolerance(atol=1e-3, rtol=2e-2),
    "bf16": Tolerance(atol=1e-2, rtol=6e-2),
    "int8": Tolerance(atol=1e-2, rtol=1.5e-1),
}
# Integer outputs (uint8 faces): fp32 allows one step of rounding difference everywhere. Measured
# on the procedural pipeline at 128 px, the fp16 graph is off by 0.15 grey levels on average,
# by > 2 levels on 0.3-0.6 % of pixels and by up to 7 at edges; bf16 through StyleGAN2 + StarGAN
# by up to 11. Reduced precisions therefore allow a few levels on all but a small share of pixels.
INTEGER_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1.0, rtol=0.0),
    "fp16": Tolerance(atol=2.0, rtol=0.0, max_bad_fraction=0.02),
    "bf16": Tolerance(atol=4.0, rtol=0.0, max_bad_fraction=0.05),
    "int8": Tolerance(atol=8.0, rtol=0.0, max_bad_fraction=0.05),
}
INTEGER_TOLERANCE = INTEGER_TOLERANCES["fp32"]


def default_tolerance(spec: TensorSpec, precision: str = "fp32") -> Tolerance:
    """The default tolerance for one output at an engine precision."""
    if precision not in FLOAT_TOLERANCES:
        raise InvalidInputError(f"unknown precision {precision!r}", hint="choose fp32, fp16, bf16 or int8")
    if np.dtype(spec.dtype).kind in "iub":
        return INTEGER_TOLERANCES[precision]
    return FLOAT_TOLERANCES[precision]


def make_inputs(specs: Sequence[TensorSpec], batch: int, seed: int, ranges: Ranges | None = None,
                dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Reproducible random inputs for `specs`: uniform over a given range, else N(0, 1) for floats.

    Integer inputs draw uniformly from their range (default [0, 2), uint8 [0, 256)); booleans are
    fair coin flips. Dynamic axes other than "batch" need a size in `dims`.
    """
    if batch < 1:
        raise InvalidInputError(f"batch must be >= 1, got {batch}")
    ranges = ranges or {}
    sizes = {"batch": batch, **(dims or {})}
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = []
        for d in spec.shape:
            if isinstance(d, int):
                shape.append(d)
            elif d in sizes:
                shape.append(sizes[d])
            else:
                raise InvalidInputError(f"input {spec.name!r} has dynamic axis {d!r}; give its size in dims")
        dtype = np.dtype(spec.dtype)
        span = ranges.get(spec.name)
        if dtype.kind == "f":
            if span is not None:
                value = rng.uniform(float(span[0]), float(span[1]), size=shape)
            else:
                value = rng.standard_normal(size=shape)
        elif dtype.kind == "b":
            value = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.kind in "iu":
            low, high = (int(span[0]), int(span[1]) + 1) if span is not None else (
                (0, 256) if dtype == np.uint8 else (0, 2))
            value = rng.integers(low, high, size=shape)
        else:
            raise InvalidInputError(f"cannot draw random values for input {spec.name!r} of dtype {spec.dtype}")
        out[spec.name] = np.ascontiguousarray(value.astype(dtype, copy=False))
    return out


@dataclass
class OutputError:
    """Measured error of one output (worst over the seeds compared)."""

    name: str
    max_abs: float
    max_rel: float
    range_rel: float
    mean_abs: float
    ref_max_abs: float
    bad_fraction: float          # share of elements outside atol + rtol * max|reference|
    atol: float
    rtol: float
    passed: bool
    argmax_agreement: float | None = None
    note: str = ""
    max_bad_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (non-finite numbers as strings)."""
        return {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OutputError":
        """Inverse of to_dict."""
        floats = {"max_abs", "max_rel", "range_rel", "mean_abs", "ref_max_abs", "bad_fraction", "atol", "rtol",
                  "max_bad_fraction"}
        kwargs = {k: (float(v) if k in floats else v) for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**kwargs)

    def merge(self, other: "OutputError") -> "OutputError":
        """Worst of two measurements of the same output."""
        agreement = None
        if self.argmax_agreement is not None and other.argmax_agreement is not None:
            agreement = min(self.argmax_agreement, other.argmax_agreement)
        return OutputError(
            self.name, _worst(self.max_abs, other.max_abs), _worst(self.max_rel, other.max_rel),
            _worst(self.range_rel, other.range_rel), _worst(self.mean_abs, other.mean_abs),
            max(self.ref_max_abs, other.ref_max_abs), max(self.bad_fraction, other.bad_fraction),
            self.atol, self.rtol, self.passed and other.passed, agreement, self.note or other.note,
            self.max_bad_fraction,
        )


def _worst(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return max(a, b)


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


@dataclass
class ParityReport:
    """A candidate engine's outputs against a reference over seeded inputs."""

    reference: str
    candidate: str
    batch: int
    seeds: list[int]
    outputs: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every output is within tolerance."""
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def worst(self) -> OutputError:
        """The output with the largest range-relative error (failing outputs first)."""
        return max(self.outputs, key=lambda o: (not o.passed, o.range_rel))

    def summary(self) -> str:
        """One line: pass/fail and the error of each output."""
        parts = []
        for o in self.outputs:
            text = f"{o.name}: max_abs {o.max_abs:.3g} (tol {o.atol + o.rtol * o.ref_max_abs:.3g})"
            if o.max_bad_fraction:
                text += f", {o.bad_fraction:.2%} outside (allowed {o.max_bad_fraction:.0%})"
            if o.argmax_agreement is not None:
                text += f", argmax {o.argmax_agreement:.1%}"
            parts.append(text)
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.candidate} vs {self.reference}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "reference": self.reference, "candidate": self.candidate, "batch": self.batch,
            "seeds": list(self.seeds), "passed": self.passed,
            "outputs": [o.to_dict() for o in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ParityReport":
        """Inverse of to_dict."""
        return cls(str(data["reference"]), str(data["candidate"]), int(data["batch"]),
                   [int(s) for s in data["seeds"]], [OutputError.from_dict(o) for o in data["outputs"]])

    def raise_if_failed(self, what: str = "artifact") -> None:
        """ParityError naming the worst output when any output is out of tolerance."""
        if self.passed:
            return
        bad = self.worst()
        limit = bad.atol + bad.rtol * bad.ref_max_abs
        detail = (f"{bad.bad_fraction:.2%} of elements off by more than {limit:.3g} (allowed {bad.max_bad_fraction:.0%})"
                  if bad.max_bad_fraction else f"max_abs {bad.max_abs:.3g} > tolerance {limit:.3g}")
        raise ParityError(
            f"{what}: {self.candidate} disagrees with {self.reference} on output {bad.name!r}: {detail}"
            + (f" ({bad.note})" if bad.note else ""),
            hint="the exported graph does not compute what the PyTorch model does; "
                 "check for ops that trace to constants (Python ints from tensor sizes, random ops)",
        )


def compare_outputs(reference: Mapping[str, Any], candidate: Mapping[str, Any], specs: Sequence[TensorSpec],
                    tolerances: Mapping[str, Tolerance] | None = None, *, precision: str = "fp32",
                    argmax_outputs: Iterable[str] = ()) -> list[OutputError]:
    """Measured error of each output in `specs` (numpy or torch values)."""
    tolerances = tolerances or {}
    argmax = set(argmax_outputs)
    errors = []
    for spec in specs:
        tol = tolerances.get(spec.name) or default_tolerance(spec, precision)
        if spec.name not in candidate or spec.name not in reference:
            errors.append(OutputError(spec.name, math.inf, math.inf, math.inf, math.inf, 0.0, 1.0,
                                      tol.atol, tol.rtol, False, None, "output missing"))
            continue
        errors.append(_measure(spec.name, _as_numpy(reference[spec.name]), _as_numpy(candidate[spec.name]),
                               tol, spec.name in argmax))
    return errors


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    detach = getattr(value, "detach", None)
    if detach is not None:  # a torch tensor; bf16 has no numpy dtype
        tensor = detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def _measure(name: str, ref: np.ndarray, got: np.ndarray, tol: Tolerance, want_argmax: bool) -> OutputError:
    if ref.shape != got.shape:
        return OutputError(name, math.inf, math.inf, math.inf, math.inf, 0.0, 1.0, tol.atol, tol.rtol, False,
                           None, f"shape {list(got.shape)} != reference {list(ref.shape)}")
    ref64 = ref.astype(np.float64)
    got64 = got.astype(np.float64)
    ref_finite = np.isfinite(ref64)
    # Non-finite values must match exactly; they are excluded from the numeric error.
    nonfinite_ok = np.array_equal(np.isnan(ref64), np.isnan(got64)) and np.array_equal(
        np.where(ref_finite, 0.0, ref64), np.where(ref_finite, 0.0, np.where(np.isfinite(got64), 0.0, got64)))
    diff = np.abs(np.where(ref_finite, got64 - ref64, 0.0))
    if diff.size == 0:
        return OutputError(name, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, tol.atol, tol.rtol, nonfinite_ok)
    diff = np.where(np.isnan(diff), np.inf, diff)
    ref_abs = np.abs(np.where(ref_finite, ref64, 0.0))
    ref_max = float(ref_abs.max())
    floor = max(1e-3 * ref_max, 1e-12)
    max_abs = float(diff.max())
    limit = tol.atol + tol.rtol * ref_max
    agreement = None
    if want_argmax and ref.ndim == 2 and ref.shape[1] > 1:
        agreement = float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))
    note = "" if nonfinite_ok else "NaN/inf pattern differs from the reference"
    bad_fraction = float(np.mean(diff > limit))
    return OutputError(
        name=name, max_abs=max_abs, max_rel=float((diff / np.maximum(ref_abs, floor)).max()),
        range_rel=max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else math.inf),
        mean_abs=float(diff.mean()), ref_max_abs=ref_max, bad_fraction=bad_fraction,
        atol=tol.atol, rtol=tol.rtol, passed=bool(bad_fraction <= tol.max_bad_fraction and nonfinite_ok),
        argmax_agreement=agreement, note=note, max_bad_fraction=tol.max_bad_fraction,
    )


def engine_label(engine: Engine) -> str:
    """Short label of an engine for reports: backend/device/precision (+ providers)."""
    info = engine.describe()
    parts = [str(info.get("backend", engine.backend)), str(info.get("device", "?")), str(info.get("precision", "?"))]
    if info.get("providers"):
        parts.append("+".join(p.removesuffix("ExecutionProvider") for p in info["providers"]))
    return "/".join(parts)


def compare_engines(reference: Engine, candidates: Sequence[Engine], *, batch: int = 3,
                    seeds: Sequence[int] = (0, 1), ranges: Ranges | None = None,
                    tolerances: Mapping[str, Tolerance] | None = None,
                    precisions: Sequence[str] | None = None, argmax_outputs: Iterable[str] = (),
                    dims: Mapping[str, int] | None = None) -> list[ParityReport]:
    """Run `reference` and each candidate on the same seeded inputs; one report per candidate.

    `precisions` gives each candidate's precision (for default tolerances); by default it is read
    from the candidate's describe().
    """
    argmax_outputs = tuple(argmax_outputs)
    if precisions is None:
        precisions = [str(c.describe().get("precision", "fp32")) for c in candidates]
    reports = [ParityReport(engine_label(reference), engine_label(c), batch, list(seeds)) for c in candidates]
    for seed in seeds:
        inputs = make_inputs(reference.input_specs, batch, seed, ranges, dims)
        expected = reference.run(inputs)
        for report, candidate, precision in zip(reports, candidates, precisions):
            got = candidate.run(inputs)
            errors = compare_outputs(expected, got, reference.output_specs, tolerances, precision=precision,
                                     argmax_outputs=argmax_outputs)
            if not report.outputs:
                report.outputs = errors
            else:
                report.outputs = [a.merge(b) for a, b in zip(report.outputs, errors)]
    return reports

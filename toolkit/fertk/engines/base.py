"""The Engine interface: one lifecycle (open → run → close) and one I/O contract for every backend.

A backend subclasses `Engine` and fills in `_run_impl` (and optionally `_close_impl`); the base
class checks input names, dtypes and shapes against the declared specs before any backend code
runs, converts between numpy and torch, and keeps simple timing counters.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fertk.errors import InvalidInputError

# A dimension is an int (fixed) or a string naming a dynamic axis ("batch").
Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype (numpy name, e.g. "float32", "uint8") and shape of one input or output."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def check(self, value: Any) -> None:
        """Raise InvalidInputError when `value` does not fit this spec."""
        shape = tuple(value.shape)
        dtype = _dtype_name(value)
        if dtype != self.dtype:
            raise InvalidInputError(f"input {self.name!r} has dtype {dtype}, expected {self.describe()}")
        if len(shape) != len(self.shape) or any(
            isinstance(want, int) and want != got for want, got in zip(self.shape, shape)
        ):
            raise InvalidInputError(f"input {self.name!r} has shape {list(shape)}, expected {self.describe()}")

    def describe(self) -> str:
        """E.g. 'float32[batch, 1, 64, 64]'."""
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The shape with every dynamic axis set to `batch`."""
        return tuple(d if isinstance(d, int) else batch for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        """Inverse of to_dict."""
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


def _dtype_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return value.dtype.name
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        raise InvalidInputError(f"expected a numpy array or torch tensor, got {type(value).__name__}")
    text = str(dtype)
    return text.removeprefix("torch.")


@dataclass
class EngineStats:
    """Counters the base class keeps: calls, items and seconds spent in `run`."""

    calls: int = 0
    items: int = 0
    seconds: float = 0.0
    open_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


class Engine(ABC):
    """Base class of every backend: declared specs, checked inputs, `run`, `close`, context manager."""

    backend: str = "base"

    def __init__(self, input_specs: Sequence[TensorSpec], output_specs: Sequence[TensorSpec]) -> None:
        self.input_specs: tuple[TensorSpec, ...] = tuple(input_specs)
        self.output_specs: tuple[TensorSpec, ...] = tuple(output_specs)
        self.stats = EngineStats()
        self._closed = False

    # -- public lifecycle -------------------------------------------------------------------
    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one batch. numpy in → numpy out; torch in → torch out (on the engine's device)."""
        if self._closed:
            raise InvalidInputError(f"{self.backend} engine is closed")
        self.check_inputs(inputs)
        as_torch = not isinstance(next(iter(inputs.values())), np.ndarray)
        start = time.perf_counter()
        outputs = self._run_impl({spec.name: inputs[spec.name] for spec in self.input_specs}, as_torch)
        self.stats.seconds += time.perf_counter() - start
        self.stats.calls += 1
        self.stats.items += int(next(iter(inputs.values())).shape[0])
        return outputs

    def check_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Names, dtypes, shapes and a consistent batch size, or one InvalidInputError."""
        names = {s.name for s in self.input_specs}
        missing = names - set(inputs)
        extra = set(inputs) - names
        if missing or extra:
            expected = ", ".join(s.name + ": " + s.describe() for s in self.input_specs)
            raise InvalidInputError(
                f"{self.backend} engine got inputs {sorted(inputs)}, expected {expected}"
            )
        batches = set()
        for spec in self.input_specs:
            value = inputs[spec.name]
            spec.check(value)
            for want, got in zip(spec.shape, value.shape):
                if not isinstance(want, int):
                    batches.add((want, int(got)))
        axes: dict[str, int] = {}
        for axis, size in batches:
            if axes.setdefault(axis, size) != size:
                raise InvalidInputError(f"inputs disagree on dynamic axis {axis!r}: {sorted(batches)}")

    def close(self) -> None:
        """Release the backend's resources; idempotent."""
        if not self._closed:
            self._closed = True
            self._close_impl()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What this engine is: backend, options and specs (for cards, bench rows and `info`)."""
        return {
            "backend": self.backend,
            "inputs": [s.to_dict() for s in self.input_specs],
            "outputs": [s.to_dict() for s in self.output_specs],
            **self._describe_impl(),
        }

    # -- backend hooks ------------------------------------------------------------------------
    @abstractmethod
    def _run_impl(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        """Run validated inputs; return outputs keyed by output spec name."""

    def _close_impl(self) -> None:
        """Free backend resources."""

    def _describe_impl(self) -> dict[str, Any]:
        """Backend-specific facts (device, precision, providers actually in use, ...)."""
        return {}

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

from fertk.core.errors import InvalidInputError
from fertk.core.specs import TensorSpec, specs_from_dicts

SpecsLike = Sequence[TensorSpec | Mapping[str, Any]]


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


def module_specs(module: Any, input_specs: SpecsLike | None = None, output_specs: SpecsLike | None = None,
                 card: Mapping[str, Any] | None = None) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The I/O specs of a module: given ones, else its `input_specs`/`output_specs`, else its card's dicts."""
    sides = []
    for given, name in ((input_specs, "inputs"), (output_specs, "outputs")):
        found = given if given is not None else getattr(module, f"{name[:-1]}_specs", None)
        if not found and card:
            found = card.get(name)
        sides.append(specs_from_dicts(found) if found else ())
    if not sides[0] or not sides[1]:
        raise InvalidInputError(f"no input/output specs for {type(module).__name__}",
                                hint="pass input_specs= and output_specs=, or define them on the module or its card")
    return sides[0], sides[1]

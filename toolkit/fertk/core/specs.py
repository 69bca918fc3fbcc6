"""Tensor specs: the name, dtype and shape of one model input or output, as every layer sees them.

Models declare them in their cards (`TensorSpec.to_dict` form), engines check inputs against them,
exporters write them into graphs; `match_specs` is the one rule for "do the specs a file declares
agree with the specs its graph or engine has".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fertk.core.errors import ArtifactError, InvalidInputError

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
        dtype = dtype_name(value)
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


def dtype_name(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return value.dtype.name
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        raise InvalidInputError(f"expected a numpy array or torch tensor, got {type(value).__name__}")
    text = str(dtype)
    return text.removeprefix("torch.")


def specs_from_dicts(items: Sequence[Mapping[str, Any] | TensorSpec]) -> tuple[TensorSpec, ...]:
    """TensorSpecs from card dicts (or specs already), in order."""
    return tuple(s if isinstance(s, TensorSpec) else TensorSpec.from_dict(s) for s in items)


def match_specs(kind: str, declared: Sequence[TensorSpec] | None, found: Sequence[TensorSpec], where: str, *,
                found_in: str = "graph", check_shapes: bool = True) -> tuple[TensorSpec, ...]:
    """The specs to use for one side (`kind` input or output) of a graph or engine at `where`.

    None declared → the found specs. Otherwise the declared ones must name the same tensors (any
    order), with the same dtypes and, when `check_shapes`, the same rank and fixed dims; a mismatch
    is an ArtifactError naming both sides. The declared specs (their order, their axis names) win.
    """
    found = tuple(found)
    if declared is None:
        return found
    declared = tuple(declared)
    by_name = {s.name: s for s in found}
    if sorted(by_name) != sorted(s.name for s in declared):
        raise ArtifactError(f"{where} has {kind}s {sorted(by_name)}, the card declares {[s.name for s in declared]}")
    for spec in declared:
        got = by_name[spec.name]
        if got.dtype != spec.dtype or check_shapes and not _same_fixed_dims(spec.shape, got.shape):
            shown = got.describe() if check_shapes else got.dtype
            raise ArtifactError(f"{where}: {kind} {spec.name!r} is {shown} in the {found_in}, "
                                f"the card declares {spec.describe()}")
    return declared


def _same_fixed_dims(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    return len(a) == len(b) and not any(
        isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a, b))


def argmax_outputs(task: str, outputs: Sequence[Mapping[str, Any] | TensorSpec]) -> list[str]:
    """Names of the outputs whose argmax means something: the 2-D ([batch, classes]) outputs of a classifier."""
    if task != "classifier":
        return []
    specs = specs_from_dicts(outputs)
    return [s.name for s in specs if len(s.shape) == 2]

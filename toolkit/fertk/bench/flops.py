"""FLOPs per item, counted from the architecture by running the PyTorch reference once.

Convolutions (plain and transposed) and matrix products are counted with torch's own formulas
(`torch.utils.flop_counter`): 2 × multiply-accumulates, bias and activation excluded. These
"dense" FLOPs are what a GEMM peak can be compared with. Everything else (pointwise ops,
reductions, norms, resampling) is counted roughly, one FLOP per output element of a pointwise
op and one per input element of a reduction, and reported separately as `other_flops`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

_REDUCTIONS = {
    "sum", "mean", "var", "var_mean", "std", "std_mean", "amax", "amin", "max", "min",
    "norm", "linalg_vector_norm", "prod", "logsumexp", "_softmax", "_log_softmax",
}
# Pooling and resampling: about one operation per input element (window compare / add).
_WINDOWED = {"max_pool2d_with_indices", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
             "upsample_nearest2d", "upsample_bilinear2d", "_upsample_bilinear2d_aa", "grid_sampler_2d"}
# Norm kernels: about five operations per element (mean, centre, square, scale, shift).
_NORMS = {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
          "native_group_norm", "native_layer_norm", "instance_norm", "batch_norm"}


@dataclass
class FlopCount:
    """FLOPs of one forward pass, in total and per item."""

    batch: int
    dense_flops: int                      # conv / conv-transpose / matmul: 2 × MACs
    other_flops: int                      # pointwise, reductions, norms (rough)
    by_module: dict[str, int] = field(default_factory=dict)   # dense FLOPs per top-level module

    @property
    def dense_per_item(self) -> float:
        """Dense FLOPs per item (the figure compared with the GEMM peak)."""
        return self.dense_flops / self.batch

    @property
    def other_per_item(self) -> float:
        """Rough non-dense FLOPs per item."""
        return self.other_flops / self.batch

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, per item."""
        return {
            "gflop_per_item": self.dense_per_item / 1e9,
            "other_gflop_per_item": self.other_per_item / 1e9,
            "by_module_gflop_per_item": {k: v / self.batch / 1e9 for k, v in self.by_module.items()},
            "counted_at_batch": self.batch,
        }


class _OtherFlops(TorchDispatchMode):
    """Counts the cheap ops FlopCounterMode ignores: pointwise, reductions, norms."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Mapping | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        name = packet.__name__.rstrip("_")
        if packet in flop_registry:
            return out
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name in _NORMS and first is not None:
            self.flops += 5 * first.numel()
        elif (name in _REDUCTIONS or name in _WINDOWED) and first is not None:
            self.flops += first.numel()
        elif torch.Tag.pointwise in func.tags:
            for value in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(value, torch.Tensor):
                    self.flops += value.numel()
        return out


def count_flops(module: nn.Module, inputs: Mapping[str, Any], *, batch: int | None = None) -> FlopCount:
    """Run `module(**inputs)` once under counters (no grad) and return its FLOPs.

    `inputs` are torch tensors or numpy arrays keyed by the forward's argument names (a single
    input may use any name: it is passed positionally). `batch` defaults to dim 0 of the first input.
    """
    tensors = {k: (v if isinstance(v, torch.Tensor) else torch.as_tensor(v)) for k, v in inputs.items()}
    if batch is None:
        batch = int(next(iter(tensors.values())).shape[0])
    counter = FlopCounterMode(display=False, depth=1)
    other = _OtherFlops()
    with torch.no_grad(), counter, other:
        if len(tensors) == 1:
            module(next(iter(tensors.values())))
        else:
            module(**tensors)
    by_module: dict[str, int] = defaultdict(int)
    for name, per_op in counter.get_flop_counts().items():
        if name != "Global" and name.count(".") == 1:
            by_module[name.split(".", 1)[1]] += sum(per_op.values())
    return FlopCount(batch=batch, dense_flops=int(counter.get_total_flops()), other_flops=other.flops,
                     by_module=dict(by_module))


def fer_cnn_hand_count(variant: str = "paper", input_size: int = 64, num_classes: int = 6) -> int:
    """Dense FLOPs per image of the Table-1 CNN, by hand: Σ 2·H_out·W_out·C_out·k²·C_in + 2·in·out."""
    pad = 1 if variant == "paper" else 0
    side = input_size
    flops = 0
    channels = [(1, 32), (32, 64), "pool", (64, 128), "pool", (128, 128), "pool"]
    for layer in channels:
        if layer == "pool":
            side //= 2
            continue
        c_in, c_out = layer
        side = side + 2 * pad - 2
        flops += 2 * side * side * c_out * 9 * c_in
    features = 128 * side * side
    flops += 2 * features * 1024 + 2 * 1024 * num_classes
    return flops

"""The PyTorch backend: eager or torch.compile, cpu/cuda, fp32/fp16/bf16, channels_last, CUDA graphs.

The module is called positionally with the inputs in declared-spec order. Floating inputs are cast
to the compute precision on the way in and every output is cast back to its declared dtype on the
way out, so callers see the same dtypes whatever the precision. The caller's module is never
modified: when device, dtype or memory format must change, the engine works on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from fertk.core.devices import resolve_device
from fertk.core.errors import InvalidInputError, UnsupportedPrecisionError
from fertk.core.specs import TensorSpec
from fertk.engines.base import Engine

PRECISIONS = ("fp32", "fp16", "bf16")


def fp32_only(module: Any) -> bool:
    """True when some submodule declares (`fp32_only = True`) that it computes in float32 only."""
    return any(getattr(m, "fp32_only", False) for m in module.modules())


def pins_fp32(module: Any) -> bool:
    """True when some submodule declares (`pins_fp32 = True`) that it casts to float32 internally."""
    return any(getattr(m, "pins_fp32", False) for m in module.modules())


def torch_dtype(name: str) -> Any:
    """torch dtype for a numpy dtype name ("float32", "uint8", ...) or a precision ("fp16")."""
    import torch

    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
    dtype = getattr(torch, aliases.get(name, name), None)
    if not isinstance(dtype, torch.dtype):
        raise InvalidInputError(f"no torch dtype for {name!r}")
    return dtype


def _placed(module: Any, device: Any, dtype: Any, channels_last: bool) -> Any:
    """`module` in eval() on `device` (cast to `dtype` unless None, NHWC when asked): a deep copy
    whenever anything must change, so the caller's module is never modified."""
    import torch

    current = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
    needs_copy = dtype is not None or channels_last or current != device
    model = copy.deepcopy(module) if needs_copy else module
    model = model.eval()
    if needs_copy:
        model = model.to(device=device)
        if dtype is not None:
            model = model.to(dtype=dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
    return model


class TorchEngine(Engine):
    """Runs an nn.Module under inference_mode in eval(), with optional compile / CUDA graphs."""

    backend = "torch"

    def __init__(
        self,
        module: Any,
        input_specs: Sequence[TensorSpec],
        output_specs: Sequence[TensorSpec],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        compile: bool = False,          # torch.compile (inductor); compiles on the first run per shape
        compile_mode: str | None = None,  # torch.compile mode, e.g. "max-autotune"
        channels_last: bool = False,    # 4-D inputs and conv weights in NHWC memory order
        cuda_graphs: bool = False,      # capture one CUDA graph per input shape (static batch), replay it
        autocast: bool = False,         # fp16/bf16 via torch.autocast (weights stay fp32) instead of casting
    ) -> None:
        import torch

        super().__init__(input_specs, output_specs)
        if precision not in PRECISIONS:
            raise InvalidInputError(
                f"torch backend runs {', '.join(PRECISIONS)}, not {precision!r}",
                hint="int8 runs on the ort backend (QDQ model) or trt")
        if precision != "fp32" and fp32_only(module):
            raise UnsupportedPrecisionError(
                f"{type(module).__name__} computes in float32 only, not {precision}",
                hint="use precision fp32 (its cost is in elementwise rendering math, not in GEMMs)")
        self.device = resolve_device(device)
        self.precision = precision
        self.compute_dtype = torch_dtype(precision)
        self.channels_last = channels_last
        self.compile = compile
        self.compile_mode = compile_mode
        self.cuda_graphs = cuda_graphs
        # Casting the module is the fast path; autocast is for modules that pin some math to fp32
        # internally (e.g. a StyleGAN2 mapping network calling .float()), which a cast module breaks.
        self.autocast = (autocast or pins_fp32(module)) and precision != "fp32"
        if cuda_graphs and not self.device.startswith("cuda"):
            raise InvalidInputError("cuda_graphs=True needs device='cuda'")
        self._torch = torch
        self._out_dtypes = tuple(torch_dtype(s.dtype) for s in self.output_specs)
        self._float_inputs = tuple(np.dtype(s.dtype).kind == "f" for s in self.input_specs)

        self._device = torch.device(self.device)
        cast = self.compute_dtype if precision != "fp32" and not self.autocast else None
        model = _placed(module, self._device, cast, channels_last)
        self.module = model
        if compile:
            # CUDA graphs under torch.compile come from its own "reduce-overhead" mode.
            mode = compile_mode or ("reduce-overhead" if cuda_graphs else None)
            self._forward = torch.compile(model, mode=mode)
        else:
            self._forward = model
        self._graphs: dict[tuple[tuple[int, ...], ...], tuple[list[Any], Any, list[Any]]] = {}

    # -- running --------------------------------------------------------------------------------
    def _run_impl(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        torch = self._torch
        args = []
        for spec, is_float in zip(self.input_specs, self._float_inputs):
            value = inputs[spec.name]
            tensor = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
            if tensor.device != self._device:
                tensor = tensor.to(self.device, non_blocking=True)
            if is_float and not self.autocast and tensor.dtype != self.compute_dtype:
                tensor = tensor.to(self.compute_dtype)
            if self.channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            args.append(tensor)
        with torch.inference_mode(), torch.autocast(self._device.type, self.compute_dtype, enabled=self.autocast):
            if self.cuda_graphs and not self.compile:
                outputs = self._graph_forward(args)
            else:
                outputs = self._split_outputs(self._forward(*args))
        result: dict[str, Any] = {}
        for spec, dtype, value in zip(self.output_specs, self._out_dtypes, outputs):
            if value.dtype != dtype:
                value = value.to(dtype)
            result[spec.name] = value if as_torch else value.cpu().numpy()
        return result

    def _split_outputs(self, raw: Any) -> list[Any]:
        if isinstance(raw, dict):
            missing = [s.name for s in self.output_specs if s.name not in raw]
            if missing:
                raise InvalidInputError(f"module returned keys {sorted(raw)}, missing declared outputs {missing}")
            return [raw[s.name] for s in self.output_specs]
        values = list(raw) if isinstance(raw, (tuple, list)) else [raw]
        if len(values) != len(self.output_specs):
            raise InvalidInputError(
                f"module returned {len(values)} outputs, {len(self.output_specs)} declared: "
                + ", ".join(s.name for s in self.output_specs))
        return values

    def _graph_forward(self, args: list[Any]) -> list[Any]:
        """Replay a CUDA graph captured for these input shapes (captured on first sight)."""
        torch = self._torch
        key = tuple(tuple(a.shape) for a in args)
        entry = self._graphs.get(key)
        if entry is None:
            static_in = [a.clone() for a in args]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up outside the capture (cuDNN autotune, allocator)
                    self._split_outputs(self._forward(*static_in))
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._split_outputs(self._forward(*static_in))
            entry = (static_in, graph, static_out)
            self._graphs[key] = entry
        static_in, graph, static_out = entry
        for buffer, value in zip(static_in, args):
            buffer.copy_(value)
        graph.replay()
        # The static outputs are overwritten by the next replay: hand out copies.
        return [o.clone() for o in static_out]

    def _close_impl(self) -> None:
        self._graphs.clear()
        self._forward = None
        self.module = None

    def _describe_impl(self) -> dict[str, Any]:
        torch = self._torch
        return {
            "device": self.device,
            "precision": self.precision,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
            "channels_last": self.channels_last,
            "cuda_graphs": self.cuda_graphs,
            "autocast": self.autocast,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "module": type(self.module).__name__ if self.module is not None else None,
        }

"""The native TensorRT backend (TensorRT 10 API), with I/O as torch CUDA tensors on torch's stream.

Why torch for buffers and streams, not pycuda: pycuda compiles against the CUDA driver at install
time and does not build on machines without one (all of fertk's dev/CI machines), and torch is
already a dependency that owns a CUDA caching allocator and streams. So inputs and outputs are
torch CUDA tensors whose addresses are bound with `set_tensor_address`, input shapes are set per
call with `set_input_shape`, and `execute_async_v3` is enqueued on
`torch.cuda.current_stream().cuda_stream`, which orders it after the producers of the inputs and
before any torch consumer of the outputs with no extra synchronisation.

The engine file is checked before it is deserialized (fertk.engines.trt_files.inspect_engine):
a corrupt, foreign (other GPU / compute capability / TensorRT version) or unknown-origin engine is
refused with a one-line reason, never run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import ArtifactError, InvalidInputError
from fertk.core.specs import TensorSpec, match_specs, specs_from_dicts
from fertk.engines.base import Engine
from fertk.engines.trt_files import BatchProfile, device_identity, inspect_engine, require_tensorrt

# TensorRT DataType member name -> numpy/torch dtype name
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
               "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


class TrtEngine(Engine):
    """A deserialized TensorRT engine with one execution context (optimisation profile 0)."""

    backend = "trt"

    def __init__(
        self,
        engine_path: str | Path,
        input_specs: Sequence[TensorSpec] | None = None,
        output_specs: Sequence[TensorSpec] | None = None,
        *,
        device: str = "cuda",
        onnx_sha256: str | None = None,   # when given, an engine built from another graph is refused
    ) -> None:
        import torch

        trt = require_tensorrt()
        self._torch = torch
        self.engine_path = Path(engine_path)
        gpu_name, capability = device_identity(device)
        check = inspect_engine(self.engine_path, gpu_name=gpu_name, compute_capability=capability,
                               trt_version=trt.__version__, onnx_sha256=onnx_sha256)
        if not check.ok:
            raise ArtifactError(f"refusing TensorRT engine ({check.status}): {check.reason}",
                                hint="rebuild it with `fertk export MODEL --trt` on this machine")
        meta = check.metadata or {}
        self.key = meta.get("key", {})
        self.precision = str(self.key.get("precision", "fp32"))
        self.profile = BatchProfile.parse(str(self.key.get("profile", "1:1:1")))
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        self.device = f"cuda:{index}"
        self._device = torch.device(self.device)

        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(index):
            engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if engine is None:
                raise ArtifactError(f"TensorRT {trt.__version__} cannot deserialize {self.engine_path.name} "
                                    "(corrupt, or built by another TensorRT version)",
                                    hint="rebuild it with `fertk export MODEL --trt`")
            self._engine = engine
            self._context = engine.create_execution_context()
        if self._context is None:
            raise ArtifactError(f"TensorRT could not create an execution context for {self.engine_path.name}")

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        dtypes = {n: _TRT_DTYPES.get(engine.get_tensor_dtype(n).name) for n in names}
        graph_in = tuple(TensorSpec(n, dtypes[n] or "unknown", _spec_shape(engine.get_tensor_shape(n)))
                         for n in names if is_input[n])
        graph_out = tuple(TensorSpec(n, dtypes[n] or "unknown", _spec_shape(engine.get_tensor_shape(n)))
                          for n in names if not is_input[n])
        if input_specs is None and meta.get("inputs"):
            input_specs = specs_from_dicts(meta["inputs"])
        if output_specs is None and meta.get("outputs"):
            output_specs = specs_from_dicts(meta["outputs"])
        super().__init__(match_specs("input", input_specs, graph_in, self.engine_path.name, found_in="engine", check_shapes=False),
                         match_specs("output", output_specs, graph_out, self.engine_path.name, found_in="engine", check_shapes=False))
        self._in_dtypes = tuple(getattr(torch, s.dtype) for s in self.input_specs)
        self._out_dtypes = tuple(getattr(torch, s.dtype) for s in self.output_specs)

    def _run_impl(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        torch = self._torch
        context = self._context
        batch = int(next(iter(inputs.values())).shape[0])
        if not self.profile.contains(batch):
            raise InvalidInputError(f"batch {batch} is outside this TensorRT engine's profile {self.profile}",
                                    hint="rebuild with --batch-profile MIN:OPT:MAX covering it")
        keep = []
        for spec, dtype in zip(self.input_specs, self._in_dtypes):
            value = inputs[spec.name]
            tensor = torch.as_tensor(value) if isinstance(value, np.ndarray) else value
            tensor = tensor.to(self._device, dtype, non_blocking=True).contiguous()
            keep.append(tensor)
            context.set_input_shape(spec.name, tuple(tensor.shape))
            context.set_tensor_address(spec.name, tensor.data_ptr())
        outputs = {}
        for spec, dtype in zip(self.output_specs, self._out_dtypes):
            shape = tuple(context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise ArtifactError(f"TensorRT could not infer the shape of output {spec.name!r}: {shape}")
            tensor = torch.empty(shape, dtype=dtype, device=self._device)
            context.set_tensor_address(spec.name, tensor.data_ptr())
            outputs[spec.name] = tensor
        stream = torch.cuda.current_stream(self._device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise ArtifactError(f"TensorRT execution failed for {self.engine_path.name}")
        del keep  # safe: the caching allocator reuses freed blocks only in this stream's order
        if as_torch:
            return outputs
        return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}

    def _close_impl(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None

    def _describe_impl(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.precision,
            "engine": str(self.engine_path),
            "profile": str(self.profile),
            "gpu": self.key.get("gpu_name"),
            "compute_capability": self.key.get("compute_capability"),
            "tensorrt": self.key.get("trt_version"),
        }


def _spec_shape(dims: Any) -> tuple[int | str, ...]:
    shape: list[int | str] = []
    for i, d in enumerate(tuple(dims)):
        shape.append(int(d) if d >= 0 else ("batch" if i == 0 else f"dim{i}"))
    return tuple(shape)

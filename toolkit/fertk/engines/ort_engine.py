"""The ONNX Runtime backend: CPU, CUDA EP and TensorRT EP, with the providers really in use reported.

The session is built by `fertk.engines.ort_session.load_session`, which refuses a silent CPU
fallback of onnxruntime-gpu (unless `allow_fallback=True`).

I/O: on the CPU provider, `session.run` with numpy views (torch CPU tensors via `.numpy()`, no
copy; ORT returns its output buffers to numpy without a copy either) — measured on a tiny graph,
5 µs per call against 10 µs through an IOBinding, and no slower on 6 MB outputs. On CUDA/TensorRT
providers an IOBinding binds inputs by address (torch CUDA tensors without a copy) and outputs into
freshly allocated torch/numpy buffers of the declared shape, on torch's current stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.errors import ArtifactError, InvalidInputError
from fertk.core.specs import TensorSpec, match_specs
from fertk.engines.base import Engine
from fertk.engines.ort_session import OrtSessionOptions, load_session

# onnxruntime type strings -> numpy dtype names
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
    "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool",
    "tensor(bfloat16)": "bfloat16",
}


def ort_available_providers() -> list[str]:
    """Providers this onnxruntime build lists (not a promise that they can run)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtEngine(Engine):
    """An onnxruntime InferenceSession behind the Engine interface.

    `session_options` are the fields of `OrtSessionOptions` (provider, intra_op_threads,
    inter_op_threads, graph_optimization_level, allow_fallback, trt_cache_dir,
    trt_int8_calibration_table, trt_max_workspace_bytes, provider_options).
    """

    backend = "ort"

    def __init__(
        self,
        model_path: str | Path,
        input_specs: Sequence[TensorSpec] | None = None,
        output_specs: Sequence[TensorSpec] | None = None,
        *,
        device: str = "cpu",
        precision: str = "fp32",              # the graph's precision (fp16/int8 graphs come from export)
        **session_options: Any,
    ) -> None:
        import onnxruntime as ort
        import torch

        self._ort = ort
        self._torch = torch
        self.model_path = Path(model_path)
        self.device = device
        self.precision = precision
        options = OrtSessionOptions.from_kwargs(session_options)
        loaded = load_session(self.model_path, device=device, precision=precision, options=options)
        self.session = loaded.session
        self.provider = loaded.provider
        self.providers = loaded.providers
        self.device_id = loaded.device_id
        self._on_gpu = loaded.on_gpu
        self.graph_optimization_level = options.graph_optimization_level
        self.intra_op_threads = int(options.intra_op_threads)

        graph_in = tuple(_spec_of(v) for v in self.session.get_inputs())
        graph_out = tuple(_spec_of(v) for v in self.session.get_outputs())
        super().__init__(match_specs("input", input_specs, graph_in, str(self.model_path)),
                         match_specs("output", output_specs, graph_out, str(self.model_path)))
        self._binding = self.session.io_binding()
        self._output_names = [s.name for s in self.output_specs]
        self._np_out = tuple(np.dtype(s.dtype) for s in self.output_specs)
        # Outputs whose only dynamic axes are named like input axes can be preallocated.
        self._static_out = all(all(isinstance(d, int) or d == "batch" for d in s.shape) for s in self.output_specs)

    # -- running --------------------------------------------------------------------------------
    def _run_impl(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        if not self._on_gpu:
            return self._run_cpu(inputs, as_torch)
        return self._run_bound(inputs, as_torch)

    def _run_cpu(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        feeds = {}
        for name, value in inputs.items():
            if not isinstance(value, np.ndarray):
                value = value.detach().cpu().numpy()
            feeds[name] = value if value.flags.c_contiguous else np.ascontiguousarray(value)
        arrays = self.session.run(self._output_names, feeds)
        if as_torch:
            from_numpy = self._torch.from_numpy
            return {name: from_numpy(array) for name, array in zip(self._output_names, arrays)}
        return dict(zip(self._output_names, arrays))

    def _run_bound(self, inputs: dict[str, Any], as_torch: bool) -> dict[str, Any]:
        binding = self._binding
        keep_alive = []  # contiguous copies must outlive the run
        batch = self._batch_of(inputs)
        for spec in self.input_specs:
            value = inputs[spec.name]
            if isinstance(value, np.ndarray):
                if not value.flags.c_contiguous:
                    value = np.ascontiguousarray(value)
                    keep_alive.append(value)
                binding.bind_cpu_input(spec.name, value)
            else:
                tensor = value.contiguous()
                keep_alive.append(tensor)
                kind = "cuda" if tensor.is_cuda else "cpu"
                binding.bind_input(spec.name, kind, tensor.device.index or 0, _np_dtype_of(tensor),
                                   tuple(tensor.shape), tensor.data_ptr())
        outputs: dict[str, Any] = {}
        if self._static_out:
            out_on_cuda = as_torch and self._on_gpu
            for spec, dtype in zip(self.output_specs, self._np_out):
                shape = spec.concrete_shape(batch)
                if as_torch:
                    device = f"cuda:{self.device_id}" if out_on_cuda else "cpu"
                    array = self._torch.empty(shape, dtype=_torch_dtype(dtype), device=device)
                    binding.bind_output(spec.name, "cuda" if out_on_cuda else "cpu",
                                        self.device_id if out_on_cuda else 0, dtype, shape, array.data_ptr())
                else:
                    array = np.empty(shape, dtype=dtype)
                    binding.bind_output(spec.name, "cpu", 0, dtype, shape, array.ctypes.data)
                outputs[spec.name] = array
            self.session.run_with_iobinding(binding)
            if out_on_cuda:
                binding.synchronize_outputs()
        else:
            for spec in self.output_specs:
                binding.bind_output(spec.name, "cpu")
            self.session.run_with_iobinding(binding)
            arrays = binding.copy_outputs_to_cpu()
            for spec, array in zip(self.output_specs, arrays):
                if as_torch:
                    outputs[spec.name] = self._torch.from_numpy(array)
                else:
                    outputs[spec.name] = array
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        del keep_alive
        return outputs

    def _batch_of(self, inputs: dict[str, Any]) -> int:
        for spec in self.input_specs:
            if spec.shape and spec.shape[0] == "batch":
                return int(inputs[spec.name].shape[0])
        return 1

    def _close_impl(self) -> None:
        self._binding = None
        self.session = None

    def _describe_impl(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "precision": self.precision,
            "provider": self.provider,
            "providers": list(self.providers),
            "model": str(self.model_path),
            "graph_optimization_level": self.graph_optimization_level,
            "intra_op_threads": self.intra_op_threads,
            "onnxruntime": self._ort.__version__,
        }


def _spec_of(value: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(value.type)
    if dtype is None:
        raise ArtifactError(f"graph I/O {value.name!r} has unsupported type {value.type}")
    shape = []
    for i, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif i == 0:
            shape.append("batch")
        else:
            shape.append(dim if isinstance(dim, str) and dim else f"{value.name}_dim{i}")
    return TensorSpec(value.name, dtype, tuple(shape))


def _np_dtype_of(tensor: Any) -> Any:
    name = str(tensor.dtype).removeprefix("torch.")
    if name == "bfloat16":
        raise InvalidInputError("bfloat16 tensors cannot be bound to onnxruntime; cast to float32")
    return np.dtype(name)


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    return getattr(torch, dtype.name)

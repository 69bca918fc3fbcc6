"""Engines: one interface (open, declared I/O specs, run, close) over torch, ONNX Runtime and TensorRT.

    from fertk.engines import open_engine
    with open_engine(module_or_graph, backend="auto", device=None, precision="fp32") as engine:
        outputs = engine.run({"image": batch})      # numpy in → numpy out, torch in → torch out

Built graphs in: an nn.Module (specs given, or its `input_specs`/`output_specs` attributes) on
torch, an .onnx file (no card: a warning, specs read from the graph) on ort, a TensorRT .engine
file with its metadata on trt. A module on ort/trt and an artifact directory open through
`fertk.export.open_engine`, which exports first (`fertk.engines.open` has the auto order).

The fused generation graph (`fertk synth --backend auto`) decides one step earlier, in
`fertk.engines.choice.choose_generation`: on CUDA without TensorRT it opens the torch backend
compiled + CUDA graphs in fp16/bf16 at a batch sized from free memory; otherwise the auto order.
"""

from __future__ import annotations

from fertk.core.specs import TensorSpec
from fertk.engines.base import Engine, EngineStats, module_specs
from fertk.engines.open import (
    AUTO_ORDER, BACKEND_ALIASES, BACKENDS, PRECISIONS, RUNS, BackendStatus, backend_report, canonical_backend_name,
    choose_backend, machine_info, open_engine,
)

__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_ALIASES", "BackendStatus", "Engine", "EngineStats", "PRECISIONS",
           "RUNS", "TensorSpec", "backend_report", "canonical_backend_name", "choose_backend", "machine_info",
           "module_specs", "open_engine"]

"""Export: PyTorch models → ONNX artifacts (card, parity report, fp16/int8 variants, TensorRT engines).

    from fertk.export import export_model, export_module, open_engine, ExportOptions
    artifact = export_model("fer-cnn")                      # registry name → cached artifact
    engine = open_engine(module, backend="ort")             # module → artifact → engine

The logic lives in `fertk.export.api` (exporting), `variants` (fp16 / INT8 graphs), `onnx`
(PyTorch → ONNX), `artifacts` (the directory, its card, the cache), `quantize`, `trt_build`
(TensorRT engines) and `open` (module → artifact → engine); this module re-exports them.
"""

from __future__ import annotations

from fertk.export.api import (
    artifact_key, export_model, export_module, export_onnx_file, export_source, module_source, remove_artifact,
    resolve_model,
)
from fertk.export.open import open_engine
from fertk.export.options import PRECISIONS, ExportOptions, ModelSource, slug
from fertk.export.variants import add_variant, build_variant

__all__ = ["ExportOptions", "ModelSource", "PRECISIONS", "add_variant", "artifact_key", "build_variant",
           "export_model", "export_module", "export_onnx_file", "export_source", "module_source", "open_engine",
           "remove_artifact", "resolve_model", "slug"]

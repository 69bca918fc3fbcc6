"""Engines for synth: the fused generation graph and the judge that scores faces (filter, report)."""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.specs import TensorSpec
from fertk.export import open_engine
from fertk.engines.base import Engine
from fertk.engines.choice import DEFAULT_BATCH, GenerationChoice, choose_generation
from fertk.engines.staged import StagedEngine
from fertk.engines.torch_engine import TorchEngine, fp32_only
from fertk.models.judges import load_judge


def auto_cpu_backend(generator: str) -> str:
    """The backend `--backend auto` runs a generation graph on when the device is the CPU.

    Measured per graph, not per machine (benchmarks/official, benchmarks/synth): the GAN graph
    (StyleGAN2 → StarGAN, conv-bound) runs faster on onnxruntime than on eager torch; the
    procedural graph (a long elementwise chain) runs ~2x faster on eager torch than on onnxruntime.
    """
    return "ort" if generator == "stylegan2" else "torch"


def concrete_precision(precision: str) -> str:
    """Precision "auto" where nothing chose another one: fp32 (the one place this rule lives)."""
    return "fp32" if precision == "auto" else precision


def open_generation_engine(module: torch.nn.Module, *, backend: str, device: str, precision: str,
                           **opts: Any) -> Engine:
    """An engine over the fused generation graph (specs from the module).

    With StarGAN in bf16 (`translator_precision`) on a backend other than torch, the graph runs in
    two stages: StyleGAN2 (fp32) on that backend, then StarGAN + postprocess on torch, where bf16
    autocast uses the CPU's AMX units (onnxruntime has no bf16 convolutions on CPU).
    """
    if backend == "auto" and str(device or "cpu").startswith("cpu") and precision == "fp32":
        backend = auto_cpu_backend(str(module.config.generator))
    if getattr(module.config, "translator_precision", None) and backend != "torch":
        if precision not in ("fp32", "auto"):
            raise InvalidInputError(f"--translator-precision {module.config.translator_precision} runs StyleGAN2 "
                                    f"in fp32; it cannot be combined with --precision {precision}")
        identities, translation = module.stages()
        first = _open(identities, backend=backend, device=device, precision="fp32",
                      input_specs=identities.input_specs, output_specs=identities.output_specs, **opts)
        try:
            second = TorchEngine(translation, translation.input_specs, translation.output_specs,
                                 device=device or "cpu", precision="fp32")
        except BaseException:
            first.close()
            raise
        return StagedEngine([("stylegan2", first), ("stargan", second)], module.input_specs, module.output_specs)
    return _open(module, backend=backend, device=device, precision=precision,
                 input_specs=module.input_specs, output_specs=module.output_specs, **opts)


def plan_generation(module: torch.nn.Module, *, backend: str, device: str, precision: str, batch: int | None,
                    compile: bool | None, max_batch: int) -> Any:
    """The GenerationChoice for this run: `--backend auto` decides (fertk.engines.choice); another
    backend keeps what was asked (precision "auto" → fp32, batch None → the default)."""
    if backend != "auto":
        chosen = concrete_precision(precision)
        size = batch if batch is not None else DEFAULT_BATCH
        return GenerationChoice(backend, chosen, size, {}, reason=f"--backend {backend}",
                                batch_reason="given" if batch is not None else f"default {DEFAULT_BATCH}")
    precisions = ("fp32",) if fp32_only(module) else ("fp32", "fp16", "bf16")
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    tensorrt = importlib.util.find_spec("tensorrt") is not None
    free = per_identity = None
    if on_gpu and not tensorrt and batch is None:
        first = choose_generation(device=device, tensorrt=False, precisions=precisions, precision=precision,
                                  batch=1, compile=compile)
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        per_identity = measure_bytes_per_identity(module, device, first.precision)
    return choose_generation(device=device, tensorrt=tensorrt, precisions=precisions, precision=precision, batch=batch,
                             free_bytes=free, bytes_per_identity=per_identity, compile=compile, max_batch=max_batch)


def measure_bytes_per_identity(module: torch.nn.Module, device: str, precision: str) -> int | None:
    """Peak CUDA memory per identity of one eager call, from calls at 2 and 8 identities (the slope;
    the larger call's per-identity peak when the slope is not positive). None if it cannot run."""
    try:
        engine = TorchEngine(module, module.input_specs, module.output_specs, device=device, precision=precision)
    except Exception:  # noqa: BLE001 - the batch then falls back to the default; the real open reports errors
        return None
    peaks = {}
    try:
        for size in (2, 8):
            inputs = _seeded_inputs(module, size, seed=0)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            engine.run({k: torch.as_tensor(v, device=device) for k, v in inputs.items()})
            torch.cuda.synchronize(device)
            peaks[size] = torch.cuda.max_memory_allocated(device) - base
    except Exception:  # noqa: BLE001 - e.g. out of memory at 8: no estimate
        return None
    finally:
        engine.close()
        torch.cuda.empty_cache()
    slope = (peaks[8] - peaks[2]) / 6
    return int(slope if slope > 0 else max(1, peaks[8] // 8))


def _seeded_inputs(module: torch.nn.Module, size: int, seed: int) -> dict[str, np.ndarray]:
    """Latents of the graph's kind and full intensities for `size` identities."""
    rng = np.random.default_rng(seed)
    dim = int(module.latent_dim)
    if getattr(module, "latent_kind", "normal") == "uniform":
        latent = rng.random((size, dim), dtype=np.float32)
    else:
        latent = rng.standard_normal((size, dim), dtype=np.float32)
    count = len(module.emotions)
    return {"latent": latent, "intensity": np.ones((size, count), np.float32)}


def parity_vs_fp32(module: torch.nn.Module, engine: Engine, device: str, batch: int, *,
                   identities: int = 4, seed: int = 4242) -> dict[str, Any]:
    """Faces of the chosen engine against torch eager fp32 on the same device, on seeded inputs.

    The engine is called at `batch` identities (its compiled / captured shape), the reference on
    the first `identities` of them. Grey levels: max and mean absolute difference, share of pixels
    off by more than one level.
    """
    inputs = _seeded_inputs(module, batch, seed)
    got = np.asarray(engine.run(inputs)["faces"])[:identities].astype(np.int16)
    reference_engine = TorchEngine(module, module.input_specs, module.output_specs, device=device, precision="fp32")
    full = getattr(module, "fp32_translator", None)
    try:
        few = {k: v[:identities] for k, v in inputs.items()}
        with full() if full is not None else nullcontext():
            want = np.asarray(reference_engine.run(few)["faces"]).astype(np.int16)
    finally:
        reference_engine.close()
    diff = np.abs(got - want[: len(got)])
    return {"reference": f"torch eager fp32 on {device}", "identities": int(len(got)), "seed": seed,
            "max_abs_grey_levels": int(diff.max()) if diff.size else 0,
            "mean_abs_grey_levels": round(float(diff.mean()), 4) if diff.size else 0.0,
            "share_off_by_more_than_1": round(float((diff > 1).mean()), 6) if diff.size else 0.0}


def _open(module: torch.nn.Module, **kwargs: Any) -> Engine:
    return open_engine(module, **kwargs)


class FaceScorer:
    """Scores faces with a judge (any FER classifier, `fertk.models.judges`): the judge's softmax
    probability of each face's intended emotion; also its full probabilities and features.

    `judge` is what `load_judge` takes: `fer-mini-xception`, a Keras .h5, an .onnx with its card, a
    fertk FER run directory or .safetensors. Module judges run on the chosen engine backend; ONNX
    judges on ONNX Runtime (or TensorRT with backend trt). Faces of another size than the judge's
    input are resized (area when shrinking, linear when enlarging).
    """

    def __init__(self, judge: str | Path, *, backend: str, device: str, precision: str,
                 card: str | Path | None = None) -> None:
        self.judge = load_judge(judge, card=card)
        self.card = self.judge.model_card()
        self.classes: tuple[str, ...] = tuple(self.judge.classes)
        size = self.judge.input_size
        self.input_size = size
        specs = {"input_specs": (TensorSpec("image", "float32", ("batch", 1, size, size)),),
                 "output_specs": (TensorSpec("logits", "float32", ("batch", len(self.classes))),)}
        if self.judge.module is not None:
            self.engine = _open(self.judge.module, backend=backend, device=device, precision=precision, **specs)
        else:
            onnx_backend = "trt" if backend == "trt" else "ort"
            self.engine = _open(self.judge.onnx_path, backend=onnx_backend, device=device, precision=precision,
                                **specs)

    def columns(self, emotions: tuple[str, ...]) -> list[tuple[int, int]]:
        """(emotion column, judge class index) for every emotion the judge knows."""
        return [(col, self.classes.index(e)) for col, e in enumerate(emotions) if e in self.classes]

    def _images(self, faces: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W] → float32 [N, 1, S, S] in [0, 1] at the judge's size."""
        faces = np.asarray(faces)
        if faces.ndim != 3:
            raise InvalidInputError(f"faces must be [N, H, W] gray, got shape {list(faces.shape)}")
        size = self.input_size
        if faces.shape[1:] != (size, size) and len(faces):
            import cv2

            interp = cv2.INTER_AREA if faces.shape[1] >= size else cv2.INTER_LINEAR
            faces = np.stack([cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=interp)
                              for f in faces])
        return faces.reshape(len(faces), 1, size, size).astype(np.float32) * np.float32(1 / 255)

    def probabilities(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """[N, K] float64 softmax over the judge's classes for uint8 gray faces [N, H, W]."""
        images = self._images(faces)
        chunks = []
        for first in range(0, len(images), batch_size):
            logits = self.engine.run({"image": images[first:first + batch_size]})["logits"]
            logits = np.asarray(logits, dtype=np.float64)
            if logits.ndim != 2 or logits.shape[1] != len(self.classes):
                raise CheckpointError(f"{self.judge.path}: the judge returned shape {list(logits.shape)}, "
                                      f"its card names {len(self.classes)} classes")
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            chunks.append(probs / probs.sum(axis=1, keepdims=True))
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)))

    def features(self, faces: np.ndarray, *, batch_size: int = 256) -> np.ndarray | None:
        """[N, D] penultimate features (module judges, PyTorch on CPU), or None for ONNX judges."""
        module = self.judge.module
        if module is None:
            return None
        images = self._images(faces)
        parts = []
        with torch.inference_mode():
            for first in range(0, len(images), batch_size):
                parts.append(module.features(torch.from_numpy(images[first:first + batch_size])).float().numpy())
        return np.concatenate(parts) if parts else None

    def score(self, faces: np.ndarray, emotions: tuple[str, ...]) -> np.ndarray:
        """[B, E] float32 probability of the intended emotion for faces [B, E, H, W] (NaN where the
        judge lacks that emotion)."""
        batch, count, height, width = faces.shape
        probs = self.probabilities(faces.reshape(batch * count, height, width)).reshape(batch, count, -1)
        out = np.full((batch, count), np.nan, dtype=np.float32)
        for col, cls in self.columns(emotions):
            out[:, col] = probs[:, col, cls]
        return out

    def describe(self) -> dict[str, Any]:
        """Judge, card and engine of the scorer."""
        return {"judge": self.judge.describe(), "model": self.card.to_dict(), "engine": self.engine.describe()}

    def close(self) -> None:
        """Release the engine."""
        self.engine.close()

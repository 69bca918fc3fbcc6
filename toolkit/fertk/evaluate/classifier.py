"""A FER classifier ready to score faces, always behind the Engine interface.

A classifier is opened from a training run / .safetensors (PyTorch, or exported on the fly for
backend ort/trt), an exported artifact / .onnx, or a judge. Whatever its origin it runs as a
`fertk.engines` Engine with `run({"image": float32[N, 1, S, S] in [0, 1]}) -> {"logits": ...}`; a
plain torch module handed to `predict_logits` is wrapped in the torch engine first, so the
PyTorch reference and an exported engine go through one code path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fertk.core.devices import resolve_device
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.specs import TensorSpec, specs_from_dicts
from fertk.data.options import canonical_class
from fertk.engines import Engine, open_engine
from fertk.models.fer_cnn import card_path_for, load_fer_model
from fertk.models.judges import judge_io, load_judge
from fertk.models.weights import STATE_DICT_SUFFIXES

DEFAULT_BATCH = 256


# How a model becomes an engine. evaluate sits beside export, so it cannot turn a module into an
# ONNX graph itself: the default opens built graphs only (a module on torch, an .onnx on ort, an
# .engine on trt); callers above both layers (cli, experiment, synth) pass `fertk.export.open_engine`,
# which also exports a module on the fly for ort/trt and opens artifact directories.
EngineOpener = Callable[..., Engine]


@dataclass
class Classifier:
    """A FER classifier ready to score faces: an engine, its classes and input side."""

    runner: Any                 # an Engine (or engine-like) with run({...}) -> {...}
    classes: tuple[str, ...]
    input_size: int
    source: str                 # the file or directory it came from
    backend: str                # "torch" for the PyTorch reference, else the engine's backend
    card: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Where it came from and how it runs (for report `info`)."""
        return {"source": self.source, "backend": self.backend, "classes": list(self.classes),
                "input_size": self.input_size, "variant": self.card.get("config", {}).get("variant")}

    def close(self) -> None:
        """Release the engine."""
        close = getattr(self.runner, "close", None)
        if callable(close):
            close()


def classifier_classes(model_or_engine: Any) -> tuple[str, ...] | None:
    """The class list a classifier declares (FerCNN config or an engine's card), if any."""
    if isinstance(model_or_engine, Classifier):
        return model_or_engine.classes
    config = getattr(model_or_engine, "config", None)
    if config is not None and getattr(config, "classes", None):
        return tuple(config.classes)
    card = getattr(model_or_engine, "card", None)
    outputs = getattr(card, "outputs", None) or (card.get("outputs") if isinstance(card, dict) else None)
    for spec in outputs or []:
        if isinstance(spec, Mapping) and spec.get("classes"):
            return tuple(spec["classes"])
    return None


def classifier_input_size(model_or_engine: Any) -> int:
    """The square input side a classifier expects (64 unless it declares otherwise)."""
    if isinstance(model_or_engine, Classifier):
        return model_or_engine.input_size
    config = getattr(model_or_engine, "config", None)
    if config is not None and getattr(config, "input_size", None):
        return int(config.input_size)
    for spec in getattr(model_or_engine, "input_specs", ()) or ():
        if isinstance(spec.shape[-1], int):
            return int(spec.shape[-1])
    return 64


@contextmanager
def module_engine(module: Any, input_size: int) -> Iterator[Any]:
    """A torch module mapping [N, 1, S, S] in [0, 1] to logits, as a torch Engine on the module's
    device; the module's train/eval mode is restored afterwards (the engine runs it in eval)."""
    param = next(module.parameters(), None)
    device = str(param.device) if param is not None else "cpu"
    was_training = module.training
    engine = open_engine(module, backend="torch", device=device,
                         input_specs=[TensorSpec("image", "float32", ("batch", 1, input_size, input_size))],
                         output_specs=[TensorSpec("logits", "float32", ("batch", "classes"))])
    try:
        yield engine
    finally:
        engine.close()
        module.train(was_training)


def predict_logits(model_or_engine: Any, faces: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Logits [N, K] for uint8 gray faces [N, 1, S, S], through an engine (a torch module is
    run as the torch engine)."""
    import torch

    if isinstance(model_or_engine, Classifier):
        model_or_engine = model_or_engine.runner
    if isinstance(model_or_engine, torch.nn.Module):
        with module_engine(model_or_engine, int(faces.shape[-1])) as engine:
            return engine_logits(engine, faces, batch_size)
    if not callable(getattr(model_or_engine, "run", None)):
        raise InvalidInputError(
            f"cannot evaluate a {type(model_or_engine).__name__}",
            hint="pass a torch module or an engine with run({'image': ...}) -> {'logits': ...}",
        )
    return engine_logits(model_or_engine, faces, batch_size)


def engine_logits(engine: Any, faces: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits [N, K] from an engine, `batch_size` faces per run, faces scaled to [0, 1]."""
    # An engine names its own input/output; "image" -> "logits" is the FER CNN's contract.
    in_specs = getattr(engine, "input_specs", None) or ()
    out_specs = getattr(engine, "output_specs", None) or ()
    in_name = in_specs[0].name if in_specs else "image"
    in_dtype = np.dtype(in_specs[0].dtype) if in_specs else np.dtype(np.float32)
    out_names = [spec.name for spec in out_specs]
    out_name = "logits" if "logits" in out_names or not out_names else out_names[0]
    chunks: list[np.ndarray] = []
    for start in range(0, len(faces), batch_size):
        x = (faces[start:start + batch_size].astype(np.float32) / np.float32(255.0)).astype(in_dtype)
        out = engine.run({in_name: x})
        logits = out[out_name] if isinstance(out, Mapping) else out
        if hasattr(logits, "detach"):
            logits = logits.detach().float().cpu().numpy()
        chunks.append(np.asarray(logits, dtype=np.float32))
    if not chunks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(chunks)


def open_classifier(path: str | Path, *, backend: str = "torch", device: str = "cpu", opener: EngineOpener = open_engine,
                    variant: str | None = None, classes: Sequence[str] | None = None) -> Classifier:
    """Open a FER CNN from a run directory / .safetensors (PyTorch, or exported on the fly for
    backend ort/trt) or an exported artifact directory / .onnx (through `fertk.engines`).

    `variant` and `classes` are expectations: a checkpoint that differs is a CheckpointError
    naming the file and what was expected.
    """
    path = Path(path).expanduser()
    want_classes = tuple(canonical_class(c) for c in classes) if classes else None
    if not path.exists():
        raise CheckpointError(f"model not found: {path}",
                              hint="pass a training run directory, a model.safetensors or an exported artifact")
    weights = path / "model.safetensors" if path.is_dir() else path
    if weights.suffix in STATE_DICT_SUFFIXES and weights.is_file():
        return open_weights(weights, backend=backend, device=device, variant=variant, classes=want_classes,
                            opener=opener)
    if path.is_dir() and (path / "card.json").is_file() or path.suffix == ".onnx":
        return open_exported(path, backend=backend, device=device, variant=variant, classes=want_classes,
                             opener=opener)
    raise CheckpointError(f"{path} is not a FER model: expected a run directory with model.safetensors, "
                          "a .safetensors (or .pt / .ckpt state dict) file, an exported artifact directory "
                          "or an .onnx file")


def open_weights(weights: Path, *, backend: str, device: str, variant: str | None,
                 classes: tuple[str, ...] | None, opener: EngineOpener = open_engine) -> Classifier:
    """A FER CNN state dict (+ card) as an engine: torch, or exported on the fly for ort/trt."""
    model, card = load_fer_model(weights, variant=variant, classes=classes)
    card_dict = card.to_dict()
    if not card_path_for(weights).is_file():
        card_dict.setdefault("extra", {})["note"] = "no JSON card beside the weights; config read from the file"
    if backend == "torch":
        engine_device: str | None = resolve_device(device)
    else:
        engine_device = None if device == "cpu" and backend in ("trt", "auto") else device
    runner = opener(model, backend=backend, device=engine_device,
                         input_specs=specs_from_dicts(card.inputs), output_specs=specs_from_dicts(card.outputs))
    used = getattr(runner, "backend", backend)
    return Classifier(runner, tuple(model.config.classes), int(model.config.input_size), str(weights), used, card_dict)


def read_artifact_card(path: Path) -> dict[str, Any]:
    """The JSON card beside an exported model ({} when there is none); a damaged one is a CheckpointError."""
    card_file = path / "card.json" if path.is_dir() else path.with_suffix(".json")
    if not card_file.is_file():
        return {}
    try:
        card = json.loads(card_file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{card_file} is not readable JSON ({exc})",
                              hint="re-export the model with fertk export") from None
    if not isinstance(card, dict) or not isinstance(card.get("config", {}), dict):
        raise CheckpointError(f"{card_file} is not a fertk artifact card (not a JSON object with a config)",
                              hint="re-export the model with fertk export")
    return card


def open_exported(path: Path, *, backend: str, device: str, variant: str | None,
                  classes: tuple[str, ...] | None, opener: EngineOpener = open_engine) -> Classifier:
    """An exported FER CNN through the engine layer; its card gives the classes and input side."""
    card = read_artifact_card(path)
    config = dict(card.get("config", {}))
    declared = tuple(config.get("classes") or ()) or next(
        (tuple(o["classes"]) for o in card.get("outputs", []) if isinstance(o, Mapping) and o.get("classes")), ())
    if not declared:
        raise CheckpointError(f"{path} does not declare its classes (no card with config.classes)",
                              hint="evaluate the .safetensors it was exported from, or re-export it with fertk export")
    if variant is not None and config.get("variant", variant) != variant:
        raise CheckpointError(f"{path} is a {config.get('variant')!r} FER CNN, expected {variant!r}")
    if classes is not None and tuple(declared) != classes:
        raise CheckpointError(f"{path} predicts classes {list(declared)}, expected {list(classes)}")
    engine = opener(path, backend="auto" if backend == "torch" else backend,
                         device=None if device == "cpu" and backend in ("torch", "auto") else device)
    size = int(config.get("input_size") or classifier_input_size(engine))
    return Classifier(engine, tuple(declared), size, str(path), getattr(engine, "backend", backend), card)


def open_judge(spec: str | Path, *, backend: str = "torch", device: str = "cpu",
               card: str | Path | None = None, opener: EngineOpener = open_engine) -> Classifier:
    """A judge (`fertk.models.judges`: alias, Keras .h5, .onnx + card, fertk run) as a Classifier:
    it takes faces in [0, 1] and returns logits like the FER CNN, its card's classes by name."""
    judge = load_judge(spec, card=card)
    describe = {**judge.model_card().to_dict(), "judge": judge.describe()}
    inputs, outputs = judge_io(judge.card)
    if judge.module is not None:
        runner = opener(judge.module, backend=backend, device=device,
                             input_specs=specs_from_dicts(inputs), output_specs=specs_from_dicts(outputs))
        used = getattr(runner, "backend", backend)
    else:
        runner = opener(judge.onnx_path, backend="trt" if backend == "trt" else "ort",
                             device=None if device == "cpu" else device,
                             input_specs=specs_from_dicts(inputs), output_specs=specs_from_dicts(outputs))
        used = getattr(runner, "backend", "ort")
    return Classifier(runner, judge.classes, judge.input_size, str(judge.path), used, describe)

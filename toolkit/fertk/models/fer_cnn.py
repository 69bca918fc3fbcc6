"""The paper's FER CNN (Table 1): Conv32-Conv64-Pool-Drop-Conv128-Pool-Conv128-Pool-Drop-Dense1024-Drop-Dense."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fertk.core.emotions import EKMAN
from fertk.core.io import atomic_target, atomic_write_text
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.io import sha256_file
from fertk.models.registry import ModelCard, count_parameters, register_model
from fertk.models.weights import load_into, read_json_object, read_safetensors_metadata, read_state_dict

VARIANTS = ("paper", "authors-code")
INPUT_SIZE = 64


@dataclass
class FerCNNConfig:
    """Architecture options: padding variant, class list, input size."""

    variant: str = "paper"  # "paper": 'same' padding (Table 1 shapes); "authors-code": 'valid'
    classes: tuple[str, ...] = EKMAN
    input_size: int = INPUT_SIZE

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InvalidInputError(f"unknown FER CNN variant {self.variant!r}", hint=f"choose one of {', '.join(VARIANTS)}")
        self.classes = tuple(self.classes)
        if len(self.classes) < 2:
            raise InvalidInputError("a classifier needs at least two classes")

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        return data


def _feature_size(variant: str, size: int) -> int:
    """Spatial side after the conv/pool stack (Keras floor semantics for 'valid')."""
    if variant == "paper":
        return size // 8
    side = size - 2 - 2          # two valid 3x3 convs
    side = (side // 2) - 2       # pool, valid conv
    side = (side // 2) - 2       # pool, valid conv
    return side // 2             # pool


class FerCNN(nn.Module):
    """Table-1 CNN: input [N, 1, 64, 64] float in [0, 1] -> logits [N, num_classes]."""

    def __init__(self, config: FerCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or FerCNNConfig()
        pad = 1 if self.config.variant == "paper" else 0
        side = _feature_size(self.config.variant, self.config.input_size)
        if side < 1:
            raise InvalidInputError(f"input size {self.config.input_size} is too small for variant {self.config.variant}")
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=pad), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=pad), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(0.25),
            nn.Conv2d(64, 128, 3, padding=pad), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 128, 3, padding=pad), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * side * side, 1024), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(1024, self.config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of gray faces in [0, 1]."""
        torch._assert(x.dim() == 4, "FerCNN expects [N, 1, H, W]")
        torch._assert(x.shape[1] == 1, "FerCNN expects one (gray) channel")
        return self.classifier(self.features(x))


def fer_card(model: FerCNN, *, weights: Path | None = None, extra: dict[str, Any] | None = None) -> ModelCard:
    """The card describing a FER CNN (config, I/O, provenance)."""
    cfg = model.config
    return ModelCard(
        name="fer-cnn",
        architecture="FerCNN",
        config=cfg.to_dict(),
        weights_sha256=sha256_file(weights) if weights else None,
        source=str(weights) if weights else "random-init",
        inputs=[{"name": "image", "dtype": "float32", "shape": ["batch", 1, cfg.input_size, cfg.input_size],
                 "range": [0.0, 1.0]}],
        outputs=[{"name": "logits", "dtype": "float32", "shape": ["batch", cfg.num_classes],
                  "classes": list(cfg.classes)}],
        extra={"parameters": count_parameters(model), **(extra or {})},
    )


def card_path_for(weights: Path) -> Path:
    """The JSON card stored beside a weights file: `model.safetensors` -> `model.json`."""
    return weights.with_suffix(".json")


def save_fer_model(model: FerCNN, path: str | Path, *, extra: dict[str, Any] | None = None) -> ModelCard:
    """Write weights (safetensors) and card (JSON) atomically; return the card."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_target(path) as tmp:  # safetensors writes 0600 files; atomic_target gives the umask's mode
        save_file(state, str(tmp), metadata={"fertk": json.dumps(model.config.to_dict())})
    card = fer_card(model, weights=path, extra=extra)
    atomic_write_text(card_path_for(path), card.to_json(), fsync=False)
    return card


def load_fer_model(path: str | Path, *, variant: str | None = None,
                   classes: tuple[str, ...] | None = None) -> tuple[FerCNN, ModelCard]:
    """Load a FER CNN from safetensors (+ card); `variant`/`classes` are checked against the card."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if path.suffix in (".h5", ".hdf5"):  # the Table-1 CNN saved by the authors' Keras code
        return _load_keras_table1(path, variant=variant, classes=classes)
    card_file = card_path_for(path)
    card_data: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if card_file.is_file():
        card_data = read_json_object(card_file, "FER CNN card")
        config = card_data.get("config", {})
        if not isinstance(config, dict):
            raise CheckpointError(f"{card_file}: 'config' is a {type(config).__name__}, not an object")
    elif path.suffix == ".safetensors" and path.is_file():
        meta = read_safetensors_metadata(path)
        if "fertk" in meta:
            try:
                config = json.loads(meta["fertk"])
            except ValueError:
                config = None
            if not isinstance(config, dict):
                raise CheckpointError(f"{path}: the fertk config in its header is not a JSON object")
    if variant is not None and config.get("variant", variant) != variant:
        raise CheckpointError(f"{path} is a {config['variant']!r} FER CNN, expected {variant!r}")
    if classes is not None and config.get("classes") and tuple(config["classes"]) != tuple(classes):
        raise CheckpointError(f"{path} was trained on classes {config['classes']}, expected {list(classes)}")
    try:
        cfg = FerCNNConfig(
            variant=config.get("variant", variant or "paper"),
            classes=tuple(config.get("classes", classes or EKMAN)),
            input_size=int(config.get("input_size", INPUT_SIZE)),
        )
        model = FerCNN(cfg)
    except (InvalidInputError, TypeError, ValueError) as exc:
        where = card_file if card_data else path
        raise CheckpointError(f"{where}: not a usable FER CNN config ({exc})") from None
    load_into(model, read_state_dict(path), source=path)
    model.eval()
    extra = card_data.get("extra")
    return model, fer_card(model, weights=path, extra=extra if isinstance(extra, dict) else {})


def _load_keras_table1(path: Path, *, variant: str | None, classes: tuple[str, ...] | None
                       ) -> tuple[FerCNN, ModelCard]:
    """A Keras .h5 of the Table-1 CNN as a FerCNN (classes: given, else the six Ekman classes)."""
    from fertk.models.keras_h5 import keras_to_fer_cnn, read_keras_h5, table1_variant

    keras = read_keras_h5(path)
    found = table1_variant(keras)
    if found is None:
        raise CheckpointError(f"{path} is not the Table-1 CNN; layers found: {keras.layer_summary()}",
                              hint="other Keras networks load as judges: --judge FILE.h5 with a .judge.json card")
    if variant is not None and found != variant:
        raise CheckpointError(f"{path} is a {found!r} FER CNN, expected {variant!r}")
    model = keras_to_fer_cnn(keras, tuple(classes or EKMAN))
    return model, fer_card(model, weights=path, extra={"imported_from": "keras-h5",
                                                       "keras_version": keras.keras_version})


@register_model("fer-cnn", description="The paper's Table-1 FER CNN (variants: paper, authors-code)",
                task="classifier", default_config=FerCNNConfig().to_dict())
def build_fer_cnn(weights: Path | None = None, **config: Any) -> tuple[FerCNN, ModelCard]:
    """Registry builder: random init from config, or load weights (config checked against the card)."""
    if weights is not None:
        return load_fer_model(weights, variant=config.get("variant"),
                              classes=tuple(config["classes"]) if "classes" in config else None)
    model = FerCNN(FerCNNConfig(**{k: (tuple(v) if k == "classes" else v) for k, v in config.items()}))
    model.eval()
    return model, fer_card(model)



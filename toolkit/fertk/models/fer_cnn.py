"""The paper's FER CNN (Table 1): Conv32-Conv64-Pool-Drop-Conv128-Pool-Conv128-Pool-Drop-Dense1024-Drop-Dense.

Weights: fertk's safetensors + JSON card, or the authors' Keras `.h5` (read by
`fertk.models.keras_h5`; this module holds the Keras-to-FerCNN key mapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fertk.core.emotions import EKMAN
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.io import atomic_write_text
from fertk.models.keras_h5 import KerasFile, pair, read_keras_h5, take_weight
from fertk.models.registry import ModelCard, count_parameters, register_model
from fertk.models.weights import (
    cpu_state, load_into, provenance, read_header_config, read_json_object, read_state_dict, write_safetensors,
)

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
        **provenance(weights),
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
    path = Path(path)
    write_safetensors(path, cpu_state(model), config=model.config.to_dict())
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
    elif path.is_file():
        config = read_header_config(path) or {}
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


# ----------------------------------------------------------------------------------------------
# The Table-1 CNN as the authors' Keras code saves it (its Keras key mapping)


_TABLE1 = ("Conv2D:32", "Conv2D:64", "MaxPooling2D", "Dropout", "Conv2D:128", "MaxPooling2D", "Conv2D:128",
           "MaxPooling2D", "Dropout", "Flatten", "Dense:1024", "Dropout", "Dense")


def table1_variant(keras: KerasFile) -> str | None:
    """'paper' / 'authors-code' when the file is the Table-1 CNN ('same' / 'valid' convs), else None."""
    layers = [layer for layer in keras.layers if layer.class_name != "InputLayer"]
    if layers and layers[-1].class_name == "Activation" and layers[-1].config.get("activation") == "softmax":
        layers = layers[:-1]
    signature = []
    for layer in layers:
        size = layer.config.get("filters") or layer.config.get("units")
        signature.append(f"{layer.class_name}:{size}" if size and layer.name != layers[-1].name else layer.class_name)
    if tuple(signature) != _TABLE1 or keras.input_shape[2] != 1 or keras.input_shape[0] != keras.input_shape[1]:
        return None
    convs = [layer for layer in layers if layer.class_name == "Conv2D"]
    if any(pair(c.config.get("kernel_size", 1)) != (3, 3) or pair(c.config.get("strides", 1)) != (1, 1)
           or c.config.get("activation") != "relu" for c in convs):
        return None
    if layers[10].config.get("activation") != "relu":
        return None
    pools = [layer for layer in layers if layer.class_name == "MaxPooling2D"]
    if any(pair(p.config.get("pool_size", 2)) != (2, 2) or p.config.get("padding", "valid") != "valid" for p in pools):
        return None
    paddings = {c.config.get("padding", "valid") for c in convs}
    if paddings == {"same"}:
        return "paper"
    if paddings == {"valid"}:
        return "authors-code"
    return None


def keras_to_fer_cnn(keras: KerasFile, classes: Sequence[str]) -> FerCNN:
    """A `FerCNN` carrying the weights of a Table-1 Keras file (the Flatten-order trap handled)."""
    variant = table1_variant(keras)
    if variant is None:
        raise CheckpointError(f"{keras.path} is not the Table-1 CNN; layers found: {keras.layer_summary()}")
    layers = [layer for layer in keras.layers if layer.class_name in ("Conv2D", "Dense")]
    dense_out = int(layers[-1].config["units"])
    if len(classes) != dense_out:
        raise InvalidInputError(f"{keras.path} has {dense_out} outputs but {len(classes)} classes were given")
    model = FerCNN(FerCNNConfig(variant=variant, classes=tuple(classes), input_size=keras.input_shape[0]))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    dense = [m for m in model.classifier if isinstance(m, nn.Linear)]
    for module, layer in zip(convs + dense, layers):
        w = keras.weights.get(layer.name, {})
        where = f"{keras.path}: layer {layer.name!r}"
        if isinstance(module, nn.Conv2d):
            shape = (3, 3, module.in_channels, module.out_channels)
            module.weight.data = take_weight(w, "kernel", shape, where).permute(3, 2, 0, 1).contiguous()
        module.bias.data = take_weight(w, "bias", (module.out_channels if isinstance(module, nn.Conv2d)
                                             else module.out_features,), where)
    # The first Dense reads Keras' NHWC flatten: reorder its kernel rows to NCHW (c, h, w).
    with torch.no_grad():
        side_feats = model.features(torch.zeros(1, 1, keras.input_shape[0], keras.input_shape[1]))
    c, h, w = side_feats.shape[1:]
    first = keras.weights.get(layers[4].name, {})
    k1 = take_weight(first, "kernel", (h * w * c, 1024), f"{keras.path}: layer {layers[4].name!r}")
    dense[0].weight.data = k1.reshape(h, w, c, 1024).permute(2, 0, 1, 3).reshape(c * h * w, 1024).t().contiguous()
    k2 = take_weight(keras.weights.get(layers[5].name, {}), "kernel", (1024, dense_out), f"{keras.path}: layer {layers[5].name!r}")
    dense[1].weight.data = k2.t().contiguous()
    model.eval()
    return model


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



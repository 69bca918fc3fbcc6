"""The comparator: seeded inputs, measured errors, tolerances, reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fertk.engines import open_engine
from fertk.core.specs import TensorSpec
from fertk.engines.compare import (
    INTEGER_TOLERANCE, ParityReport, Tolerance, compare_engines, compare_outputs, make_inputs,
)
from fertk.core.errors import InvalidInputError, ParityError

IMAGE = TensorSpec("image", "float32", ("batch", 1, 4, 4))
LABEL = TensorSpec("label", "int64", ("batch",))
FACES = TensorSpec("faces", "uint8", ("batch", 2, 3))
LOGITS = TensorSpec("logits", "float32", ("batch", 3))


def test_make_inputs_is_seeded_and_respects_ranges_and_dtypes() -> None:
    a = make_inputs([IMAGE, LABEL, FACES], 5, seed=3, ranges={"image": (0.0, 1.0)})
    b = make_inputs([IMAGE, LABEL, FACES], 5, seed=3, ranges={"image": (0.0, 1.0)})
    c = make_inputs([IMAGE, LABEL, FACES], 5, seed=4, ranges={"image": (0.0, 1.0)})
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].shape == (5, 1, 4, 4) and a["image"].dtype == np.float32
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    assert a["label"].dtype == np.int64 and set(np.unique(a["label"])) <= {0, 1}
    assert a["faces"].dtype == np.uint8
    unranged = make_inputs([IMAGE], 64, seed=0)["image"]
    assert unranged.min() < 0 < unranged.max()  # N(0, 1) without a range


def test_make_inputs_needs_sizes_for_other_dynamic_axes() -> None:
    spec = TensorSpec("seq", "float32", ("batch", "time"))
    with pytest.raises(InvalidInputError, match="time"):
        make_inputs([spec], 2, 0)
    assert make_inputs([spec], 2, 0, dims={"time": 5})["seq"].shape == (2, 5)


def test_compare_outputs_measures_known_perturbation() -> None:
    ref = np.array([[1.0, -2.0, 4.0], [0.5, 0.0, -1.0]], np.float32)
    got = ref.copy()
    got[0, 2] += 0.01
    (err,) = compare_outputs({"logits": ref}, {"logits": got}, [LOGITS], argmax_outputs=["logits"])
    assert err.max_abs == pytest.approx(0.01, rel=1e-4)
    assert err.ref_max_abs == 4.0
    assert err.range_rel == pytest.approx(0.0025, rel=1e-3)
    assert err.max_rel == pytest.approx(0.0025, rel=1e-3)
    assert err.argmax_agreement == 1.0
    assert not err.passed  # 0.01 > 1e-4 + 1e-4 * 4
    (loose,) = compare_outputs({"logits": ref}, {"logits": got}, [LOGITS], {"logits": Tolerance(0.02, 0.0)})
    assert loose.passed and loose.bad_fraction == 0.0


def test_argmax_agreement_counts_flipped_rows() -> None:
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]], np.float32)
    got = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    (err,) = compare_outputs({"logits": ref}, {"logits": torch.from_numpy(got)}, [LOGITS], argmax_outputs=["logits"])
    assert err.argmax_agreement == 0.5


def test_nan_shape_and_missing_outputs_fail() -> None:
    ref = np.zeros((2, 3), np.float32)
    nan = ref.copy()
    nan[1, 1] = np.nan
    (e_nan,) = compare_outputs({"logits": ref}, {"logits": nan}, [LOGITS])
    assert not e_nan.passed and math.isinf(e_nan.max_abs)
    (e_shape,) = compare_outputs({"logits": ref}, {"logits": ref[:1]}, [LOGITS])
    assert not e_shape.passed and "shape" in e_shape.note
    (e_missing,) = compare_outputs({"logits": ref}, {}, [LOGITS])
    assert not e_missing.passed and e_missing.note == "output missing"


def test_integer_outputs_allow_one_step() -> None:
    ref = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    one_off = ref + np.uint8(1)
    two_off = ref + np.uint8(2)
    assert compare_outputs({"faces": ref}, {"faces": one_off}, [FACES])[0].passed
    assert not compare_outputs({"faces": ref}, {"faces": two_off}, [FACES])[0].passed
    assert INTEGER_TOLERANCE.atol == 1.0


def test_reduced_precision_images_allow_a_small_share_of_off_pixels() -> None:
    spec = TensorSpec("faces", "uint8", ("batch", 100))
    ref = np.full((1, 100), 100, np.uint8)
    edge = ref.copy()
    edge[0, :1] = 107  # one pixel in a hundred moved by an edge: fine in fp16, not in fp32
    broken = ref.copy()
    broken[0, :10] = 0  # a tenth of the image wrong: a broken conversion
    assert not compare_outputs({"faces": ref}, {"faces": edge}, [spec])[0].passed
    (fp16,) = compare_outputs({"faces": ref}, {"faces": edge}, [spec], precision="fp16")
    assert fp16.passed and fp16.bad_fraction == 0.01 and fp16.max_abs == 7
    (bad,) = compare_outputs({"faces": ref}, {"faces": broken}, [spec], precision="fp16")
    assert not bad.passed
    report = ParityReport("a", "b", 1, [0], [bad])
    with pytest.raises(ParityError, match="10.00% of elements"):
        report.raise_if_failed()


def test_compare_engines_and_report_roundtrip(tiny_net) -> None:
    a = open_engine(tiny_net, backend="torch")
    b = open_engine(tiny_net, backend="torch", precision="bf16")
    (same,) = compare_engines(a, [a], batch=3, seeds=(0, 1), ranges={"image": (0.0, 1.0)}, argmax_outputs=["logits"])
    assert same.passed and same.outputs[0].max_abs == 0.0 and same.seeds == [0, 1]
    (half,) = compare_engines(a, [b], batch=3, seeds=(0,), ranges={"image": (0.0, 1.0)})
    assert half.outputs[0].max_abs > 0  # bf16 really differs, and is judged with bf16 tolerances
    assert "PASS" in half.summary() or "FAIL" in half.summary()
    again = ParityReport.from_dict(half.to_dict())
    assert again.to_dict() == half.to_dict()


def test_failed_report_raises_parity_error_naming_output() -> None:
    ref = {"logits": np.zeros((2, 3), np.float32)}
    got = {"logits": np.ones((2, 3), np.float32)}
    report = ParityReport("ref", "cand", 2, [0], compare_outputs(ref, got, [LOGITS]))
    assert not report.passed
    with pytest.raises(ParityError, match="logits"):
        report.raise_if_failed()
    assert report.to_dict()["passed"] is False

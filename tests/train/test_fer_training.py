"""FER CNN training: it learns (procedural faces, a world where the answer is known), keeps the
best epoch, stops early, resumes bit-identically after an interruption, and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fertk.data.records import FaceArrays
from fertk.core.progress import ProgressEvent
from fertk.core.errors import CheckpointError, DatasetError, InvalidInputError, OutputExistsError
from fertk.evaluate import evaluate
from fertk.models.fer_cnn import load_fer_model
from fertk.models.procedural import ProceduralConfig, ProceduralFaces, expression_aus, random_identities, to_gray01
from fertk.models.weights import read_state_dict
from fertk.train.fer import augment_batch, train_fer
from fertk.train.fer_config import FerTrainConfig, TrainResult
from fertk.train.fer_state import read_history

_RENDERERS: dict[int, ProceduralFaces] = {}


def procedural_faces(classes: tuple[str, ...], identities: int, seed: int, size: int, source: str) -> FaceArrays:
    """Every identity under every expression, rendered gray at `size` px (uint8 faces)."""
    renderer = _RENDERERS.setdefault(size, ProceduralFaces(ProceduralConfig(resolution=size, color=False)))
    with torch.no_grad():
        images = renderer.render_expressions(random_identities(identities, seed), expression_aus(classes))
    gray = (to_gray01(images.reshape(-1, images.shape[2], size, size))[:, 0] * 255).round().to(torch.uint8).numpy()
    k = len(classes)
    subjects = np.repeat([f"{source}{i:03d}" for i in range(identities)], k)
    return FaceArrays(gray, np.tile(np.arange(k), identities), classes, subjects,
                      np.array([source] * len(gray)), [f"{source}/{i}" for i in range(len(gray))],
                      {"path": f"procedural:{source}"})


def _rows_without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def two_class_statistics(seed: int, workdir: Path) -> dict[str, float]:
    """Train the authors-code CNN on two procedural expressions (training seed `seed`, data fixed);
    its test accuracy. Also run by tests/tools/threshold_sweep.py over several seeds."""
    classes = ("happiness", "surprise")
    train = procedural_faces(classes, 60, seed=1, size=32, source="train")
    val = procedural_faces(classes, 12, seed=2, size=32, source="val")
    test = procedural_faces(classes, 25, seed=3, size=32, source="test")
    # Small faces and a larger step than the paper's 1e-4 keep this a few seconds of CPU; the
    # CNN needs ~40-80 Adam steps to leave its initial plateau here, so 24 epochs x 4 steps.
    config = FerTrainConfig(variant="authors-code", input_size=32, epochs=24, batch_size=32, lr=1e-3,
                            patience=0, seed=seed, threads=2, device="cpu")
    result = train_fer(train, val, config, workdir / "run")
    model, _card = load_fer_model(result.model_path)
    return {"accuracy": evaluate(model, test).accuracy, "best_epoch": float(result.best_epoch)}


# (statistic, op, bound), checked over training seeds (tests/tools/threshold_sweep.py fer-two-class;
# 2-core AMD EPYC, AVX2, torch 2.13.0+cpu): seeds 0-3 all gave test accuracy 1.0 (best epoch
# 23-24), so 0.85 clears the worst seed by 0.15. The accuracy depends on the CPU's kernels (AVX2
# vs AVX-512) like any training run.
TWO_CLASS_LIMITS: tuple[tuple[str, str, float], ...] = (("accuracy", ">", 0.85),)  # chance is 0.5


def test_training_learns_procedural_expressions_well_above_chance(tmp_path: Path) -> None:
    stats = two_class_statistics(0, tmp_path)
    print(f"procedural 2-class test accuracy {stats['accuracy']:.3f} (best epoch {stats['best_epoch']:.0f})")
    assert stats["accuracy"] > TWO_CLASS_LIMITS[0][2], stats
    model, card = load_fer_model(tmp_path / "run" / "model.safetensors")
    assert card.extra["metrics"]["best_epoch"] == stats["best_epoch"]
    assert card.extra["training_data"]["train"]["classes"] == {"happiness": 60, "surprise": 60}


def _tiny(seed: int, identities: int, source: str) -> FaceArrays:
    # 16-px faces: the cheapest input the paper variant accepts (three 2x pools).
    return procedural_faces(("happiness", "sadness", "surprise"), identities, seed=seed, size=16, source=source)


def _tiny_config(**changes: object) -> FerTrainConfig:
    options = {"variant": "paper", "input_size": 16, "epochs": 4, "batch_size": 8, "lr": 1e-3, "patience": 0,
               "seed": 3, "augment": True, "threads": 1, "device": "cpu"}
    options.update(changes)
    return FerTrainConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_data() -> tuple[FaceArrays, FaceArrays]:
    return _tiny(11, 8, "tr"), _tiny(12, 3, "va")


def test_interrupted_run_resumes_to_the_same_history_and_weights(tmp_path: Path, tiny_data) -> None:
    train, val = tiny_data
    whole = train_fer(train, val, _tiny_config(), tmp_path / "whole")

    def interrupt_after_two(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    run = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_fer(train, val, _tiny_config(), run, on_epoch_end=interrupt_after_two)
    assert (run / "last.pt").is_file() and not (run / "result.json").exists()
    assert [r["epoch"] for r in read_history(run / "history.csv")] == [1, 2]
    state = torch.load(run / "last.pt", weights_only=True)  # tensors and plain types only
    assert state["epoch"] == 2 and "optimizer" in state

    seen: list[int] = []
    resumed = train_fer(train, val, _tiny_config(), run,
                        on_epoch_end=lambda row: seen.append(int(row["epoch"])))
    assert seen == [3, 4] and resumed.resumed_from == 2
    assert _rows_without_time(resumed.history) == _rows_without_time(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    for name, tensor in read_state_dict(whole.model_path).items():
        assert torch.equal(tensor, read_state_dict(resumed.model_path)[name]), name
    assert not (run / "last.pt").exists() and (run / "result.json").is_file()
    assert _rows_without_time(read_history(run / "history.csv")) == _rows_without_time(whole.history)
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"

    # A finished run is returned as is, without training again.
    again = train_fer(train, val, _tiny_config(), run, on_epoch_end=lambda row: seen.append(-1))
    assert -1 not in seen and again.best_epoch == resumed.best_epoch


def test_best_epoch_is_kept_not_the_last_and_early_stopping_ends_the_run(tmp_path: Path) -> None:
    # Four identities to train on and a high step size: it overfits fast, the val loss turns up.
    train, val = _tiny(21, 4, "tr"), _tiny(22, 6, "va")
    config = _tiny_config(epochs=40, lr=3e-3, patience=3, augment=False, batch_size=4)
    result = train_fer(train, val, config, tmp_path / "run")
    losses = [r["val_loss"] for r in result.history]
    assert result.stop_reason == "early-stopping"
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.epochs_run == result.best_epoch + 3 < 40
    # The saved weights are the best epoch's: their val loss is the minimum, not the last one.
    model, card = load_fer_model(result.model_path)
    faces = torch.from_numpy(val.images[:, None]).float() / 255
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(faces), torch.from_numpy(val.labels)).item()
    assert loss == pytest.approx(min(losses), rel=1e-5)
    assert loss < losses[-1]
    metrics = card.extra["metrics"]
    assert metrics["best_epoch"] == result.best_epoch and metrics["stop_reason"] == "early-stopping"
    assert metrics["val_loss"] == pytest.approx(min(losses))
    saved = TrainResult.from_dict(json.loads((tmp_path / "run" / "result.json").read_text()))
    assert saved.best_epoch == result.best_epoch


def test_augmentation_is_seeded_and_keeps_shape() -> None:
    x = torch.rand(5, 1, 16, 16)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_config_round_trips_and_rejects_bad_values() -> None:
    config = FerTrainConfig(variant="authors-code", classes=("anger", "happiness"), epochs=3)
    assert FerTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InvalidInputError, match="variant"):
        FerTrainConfig(variant="vgg")
    with pytest.raises(InvalidInputError, match="learning rate"):
        FerTrainConfig(lr=0)
    with pytest.raises(InvalidInputError, match="unknown FER training option"):
        FerTrainConfig.from_dict({"epoch": 3})


def test_bad_input_is_refused_with_one_line_errors(tmp_path: Path, tiny_data) -> None:
    train, val = tiny_data
    with pytest.raises(InvalidInputError, match="validation set"):
        train_fer(train, None, _tiny_config(), tmp_path / "a")
    empty = train.subset(np.zeros(len(train), bool))
    with pytest.raises(DatasetError, match="training set is empty"):
        train_fer(empty, val, _tiny_config(), tmp_path / "b")
    with pytest.raises(DatasetError, match=r"\['surprise'\] are not among the model classes"):
        train_fer(train, val, _tiny_config(classes=("happiness", "sadness")), tmp_path / "c")

    def stop(row: dict[str, float]) -> None:
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_fer(train, val, _tiny_config(), run, on_epoch_end=stop)
    # Resuming with another architecture, other data, or other options is refused, naming the file.
    with pytest.raises(CheckpointError, match=r"last\.pt belongs to a 'paper' FER CNN.*expected 'authors-code'"):
        train_fer(train, val, _tiny_config(variant="authors-code", input_size=32), run)
    with pytest.raises(OutputExistsError, match="different data"):
        train_fer(val, train, _tiny_config(), run)
    with pytest.raises(OutputExistsError, match="lr"):
        train_fer(train, val, _tiny_config(lr=5e-4), run)
    (run / "last.pt").write_bytes(b"not a torch archive")
    with pytest.raises(CheckpointError, match="cannot read the resume state"):
        train_fer(train, val, _tiny_config(), run)
    # --no-resume starts over.
    fresh = train_fer(train, val, _tiny_config(epochs=1), run, resume=False)
    assert fresh.epochs_run == 1 and fresh.resumed_from == 0
    # A damaged result.json of a finished run is an error naming it, not a raw JSON error.
    (run / "result.json").write_text('{"run_dir": ')
    with pytest.raises(CheckpointError, match=r"result\.json is not a readable fertk training result"):
        train_fer(train, val, _tiny_config(epochs=1), run)


def test_training_without_some_class_is_refused_unless_allowed(tmp_path: Path, tiny_data) -> None:
    train, val = tiny_data
    one = train.subset(np.asarray(train.labels) == 0)  # one class of the three the model would have
    assert len(one) and len(set(np.asarray(one.labels).tolist())) == 1
    with pytest.raises(DatasetError, match=r"training set has no sample of sadness, surprise") as caught:
        train_fer(one, val, _tiny_config(epochs=1), tmp_path / "refused")
    assert "--allow-missing-classes" in (caught.value.hint or "")
    assert not (tmp_path / "refused" / "model.safetensors").exists()

    result = train_fer(one, val, _tiny_config(epochs=1), tmp_path / "allowed",
                       allow_missing_classes=True)
    assert result.classes == ("happiness", "sadness", "surprise")
    assert result.data["absent_classes"] == {"train": ["sadness", "surprise"], "val": []}
    _model, card = load_fer_model(result.model_path)
    assert card.extra["training_data"]["absent_classes"]["train"] == ["sadness", "surprise"]


def _print_lines(event: ProgressEvent) -> None:
    if event.kind != "advance":
        print(event.kind, event.message)


def test_progress_events_count_batches_and_epochs_and_carry_the_metrics(tmp_path: Path, tiny_data) -> None:
    train, val = tiny_data
    events: list[ProgressEvent] = []
    result = train_fer(train, val, _tiny_config(), tmp_path / "run", progress=events.append)
    epochs = [e for e in events if e.kind == "epoch"]
    assert [(e.done, e.total, e.unit) for e in epochs] == [(1, 4, "epochs"), (2, 4, "epochs"), (3, 4, "epochs"),
                                                          (4, 4, "epochs")]
    for event, row in zip(epochs, result.history):
        assert event.data["val_acc"] == row["val_acc"] and event.data["val_loss"] == row["val_loss"]
    steps = -(-len(train) // 8)  # batch 8
    batches = [e for e in events if e.kind == "advance"]
    assert len(batches) == 4 * steps and {e.total for e in batches} == {steps} and batches[-1].done == steps
    assert all(0.0 <= e.data["acc"] <= 1.0 for e in batches)
    assert any(e.kind == "message" and e.message.startswith(f"best epoch {result.best_epoch}:") for e in events)
    # A finished run says nothing: it is returned as is.
    again: list[ProgressEvent] = []
    train_fer(train, val, _tiny_config(), tmp_path / "run", progress=again.append)
    assert again == []


@pytest.mark.slow
def test_paper_settings_on_six_procedural_expressions(tmp_path: Path) -> None:
    """The paper's hyper-parameters (Adam 1e-4, batch 64, patience 5) at 64 px on all six classes."""
    from fertk.core.emotions import EKMAN

    train = procedural_faces(EKMAN, 109, seed=1, size=64, source="train")
    val = procedural_faces(EKMAN, 10, seed=2, size=64, source="val")
    test = procedural_faces(EKMAN, 25, seed=3, size=64, source="test")
    result = train_fer(train, val, FerTrainConfig(epochs=60, seed=0, device="cpu"), tmp_path / "run",
                       progress=_print_lines)
    model, _card = load_fer_model(result.model_path)
    report = evaluate(model, test)
    print(f"procedural 6-class test accuracy {report.accuracy:.3f} after {result.epochs_run} epochs")
    assert report.accuracy >= 0.5  # chance is 1/6


def test_concatenated_datasets_keep_samples_and_subjects_apart() -> None:
    from fertk.data.splits import subject_ids
    from fertk.data.convert import concat_arrays

    first = procedural_faces(("happiness", "surprise"), 2, seed=1, size=16, source="synth")
    second = procedural_faces(("surprise", "happiness"), 2, seed=2, size=16, source="synth")  # same names
    first.meta["path"], second.meta["path"] = "/runs/a/synth", "/runs/b/synth"
    both = concat_arrays([first, second], ("happiness", "surprise"), size=16)
    assert len(both) == 8 and len(set(both.keys)) == 8
    assert len(set(subject_ids(both))) == 4  # two identities per dataset, not shared across them
    # Labels follow the class names, not the index order of each part.
    np.testing.assert_array_equal(both.labels[4:], 1 - second.labels)
    with pytest.raises(DatasetError, match="given twice"):
        concat_arrays([first, first], ("happiness", "surprise"), size=16)


def test_min_epochs_holds_off_early_stopping(tmp_path: Path) -> None:
    train, val = _tiny(21, 4, "tr"), _tiny(22, 6, "va")
    eager = _tiny_config(epochs=30, lr=3e-3, patience=1, augment=False, batch_size=4)
    first = train_fer(train, val, eager, tmp_path / "eager")
    assert first.stop_reason == "early-stopping"
    held = FerTrainConfig.from_dict({**eager.to_dict(), "min_epochs": first.epochs_run + 2})
    second = train_fer(train, val, held, tmp_path / "held")
    assert second.epochs_run >= first.epochs_run + 2
    # Same seed, same data: the runs agree on every epoch they share.
    assert _rows_without_time(second.history[:first.epochs_run]) == _rows_without_time(first.history)


def test_a_run_stuck_on_the_initial_plateau_is_restarted_from_a_new_initialisation(tmp_path: Path, tiny_data) -> None:
    train, val = tiny_data
    # Labels that carry no signal keep every attempt on the plateau (val loss ≈ ln K), so each
    # allowed restart is taken, at the epochs the config names.
    noise = FaceArrays(train.images, np.random.default_rng(0).permutation(train.labels), train.classes,
                       train.subjects, train.sources, train.keys, train.meta)
    config = _tiny_config(epochs=7, plateau_restarts=2, plateau_steps=6, patience=0, lr=1e-2)  # 3 steps/epoch
    result = train_fer(noise, val, config, tmp_path / "stuck")
    assert result.restarts == 2 and result.epochs_run == 7
    assert [row["epoch"] for row in result.history] == list(range(1, 8))  # one continuous history
    assert result.best_epoch > 4           # the kept model is the last attempt's (restarted after epoch 4)
    assert json.loads((tmp_path / "stuck" / "result.json").read_text())["restarts"] == 2
    # The default (the paper's rule) never restarts.
    plain = train_fer(noise, val, _tiny_config(epochs=5, lr=1e-2), tmp_path / "plain")
    assert plain.restarts == 0 and plain.epochs_run == 5

"""The FER run's state objects: early stopping's rule and RunState's round trip through last.pt's dict."""

from __future__ import annotations

import math

import torch

from fertk.train.fer_state import EarlyStopping, RunState


def test_early_stopping_counts_epochs_without_a_lower_loss_and_respects_min_epochs() -> None:
    stopping = EarlyStopping(patience=2, min_delta=0.1)
    assert stopping.update(1, 1.0) and stopping.best_epoch == 1
    assert not stopping.update(2, 0.95)          # lower, but not by more than min_delta
    assert not stopping.stopped and stopping.bad_epochs == 1
    assert not stopping.update(3, float("nan"))  # NaN never improves
    assert stopping.stopped and stopping.best_loss == 1.0 and stopping.best_epoch == 1

    late = EarlyStopping(patience=1, min_epochs=4)
    late.update(1, 1.0)
    late.update(2, 2.0)
    assert not late.stopped                      # patience reached, but only 2 epochs into the attempt
    late.update(5, 2.0, attempt_start=0)
    assert late.stopped
    late.reset()
    assert (late.best_loss, late.best_epoch, late.bad_epochs, late.stopped) == (math.inf, 0, 0, False)

    never = EarlyStopping(patience=0)
    for epoch in range(1, 20):
        never.update(epoch, float(epoch))
    assert not never.stopped and never.bad_epochs == 18


def test_run_state_survives_the_saved_dict() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = RunState(EarlyStopping(patience=3), restarts=1, attempt_start=2)
    state.history = [{"epoch": e, "val_loss": 1.0 / e} for e in (1, 2, 3)]
    state.stopping.update(3, 0.2, state.attempt_start)
    saved = state.to_saved({"format": "x"}, 3, model, optimizer)
    assert saved["format"] == "x" and saved["epoch"] == 3 and set(saved["model"]) == {"weight", "bias"}

    again = RunState(EarlyStopping(patience=3))
    again.restore(saved)
    assert again.start_epoch == 3 and again.history == state.history
    assert (again.restarts, again.attempt_start) == (1, 2)
    assert (again.stopping.best_loss, again.stopping.best_epoch, again.stopping.bad_epochs) == (0.2, 3, 0)
    assert again.best_row() == {"epoch": 3, "val_loss": 1.0 / 3}

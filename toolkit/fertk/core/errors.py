"""Typed errors raised at the library boundary; the CLI turns each into one line and an exit code."""

from __future__ import annotations


class FertkError(Exception):
    """Base class of every error fertk raises on purpose.

    `hint` is an optional next step shown after the message by the CLI.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class InvalidInputError(FertkError, ValueError):
    """Bad argument, option combination, tensor shape or dtype."""


class UnsupportedPrecisionError(InvalidInputError):
    """A model that computes at one precision only was asked for another."""


class DatasetError(FertkError):
    """A dataset cannot be read: missing root, empty, unknown label, bad layout."""


class CheckpointError(FertkError):
    """Weights cannot be loaded: wrong architecture, truncated, missing or unexpected keys."""


class UnsafeFileError(CheckpointError):
    """A file would need arbitrary code execution (an unrestricted unpickle) to load."""


class BackendUnavailableError(FertkError):
    """An engine backend cannot run here (missing package, no GPU, ...)."""


class ParityError(FertkError):
    """An exported artifact disagrees with its PyTorch reference beyond tolerance."""


class OutputExistsError(FertkError):
    """The output location holds something made with different options."""


class ArtifactError(FertkError):
    """An exported artifact or engine file is missing, corrupt, stale or foreign."""


class DeviceUnavailableError(BackendUnavailableError, InvalidInputError):
    """A device was named that this machine does not have (CUDA asked for, none visible)."""


def reject_unknown_keys(given: object, known: object, what: str) -> None:
    """Raise InvalidInputError naming the keys of `given` that are not in `known` (and listing the known ones)."""
    known_names = set(known)  # type: ignore[call-overload]
    unknown = sorted(set(given) - known_names)  # type: ignore[call-overload]
    if unknown:
        raise InvalidInputError(f"unknown {what}(s): {', '.join(unknown)}",
                                hint="known: " + ", ".join(sorted(known_names)))

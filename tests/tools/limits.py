"""The learning tests' bounds: (statistic, "<" | ">", bound) triples, checked one way everywhere.

Used by the tests that assert them and by tests/tools/threshold_sweep.py, which measures their
spread over seeds. Import as ``from tests.tools.limits import broken_limits``.
"""

from __future__ import annotations

Limits = tuple[tuple[str, str, float], ...]


def holds(value: float, op: str, bound: float) -> bool:
    """Whether `value op bound` (op is "<" or ">")."""
    return value < bound if op == "<" else value > bound


def broken_limits(stats: dict[str, float], limits: Limits) -> list[str]:
    """The limits `stats` breaks, as readable lines (empty: all hold)."""
    return [f"{name} = {stats[name]:.5f}, expected {op} {bound}" for name, op, bound in limits
            if not holds(stats[name], op, bound)]

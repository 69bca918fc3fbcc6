"""Confidence intervals over repeats: the t quantile against published table values, the interval."""

from __future__ import annotations

import math

import pytest

from fertk.core.errors import InvalidInputError
from fertk.experiment.stats import mean_ci, t_central_probability, t_quantile

# Two-sided 95 % and 99 % critical values of Student's t (standard statistical tables).
TABLE_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 9: 2.262, 10: 2.228, 20: 2.086,
            30: 2.042, 60: 2.000, 120: 1.980}
TABLE_99 = {1: 63.657, 2: 9.925, 4: 4.604, 9: 3.250, 30: 2.750}


@pytest.mark.parametrize("df,expected", sorted(TABLE_95.items()))
def test_t_quantile_95_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=6e-4)


@pytest.mark.parametrize("df,expected", sorted(TABLE_99.items()))
def test_t_quantile_99_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.99, df) == pytest.approx(expected, abs=6e-4)


def test_t_distribution_closed_forms() -> None:
    # df = 1 is the Cauchy distribution, df = 2 has P(|T| <= t) = t / sqrt(2 + t^2).
    for t in (0.3, 1.0, 4.0):
        assert t_central_probability(t, 1) == pytest.approx(2 / math.pi * math.atan(t), abs=1e-12)
        assert t_central_probability(t, 2) == pytest.approx(t / math.sqrt(2 + t * t), abs=1e-12)
    # Large df approaches the normal distribution's 1.95996.
    assert t_quantile(0.95, 2000) == pytest.approx(1.96, abs=2e-3)
    with pytest.raises(InvalidInputError):
        t_quantile(1.5, 3)
    with pytest.raises(InvalidInputError):
        t_central_probability(1.0, 0)


def test_mean_ci_of_repeats() -> None:
    interval = mean_ci([0.50, 0.60, 0.70])
    assert interval.n == 3 and interval.mean == pytest.approx(0.6)
    assert interval.std == pytest.approx(0.1)
    assert interval.half_width == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-3)
    assert interval.low < 0.6 < interval.high
    assert interval.format() == "60.0 ± 24.8"
    single = mean_ci([0.42])
    assert single.half_width is None and single.format() == "42.0"
    assert mean_ci([float("nan"), 0.5]).n == 1
    assert mean_ci([]).format() == "–"

"""Mean and 95 % confidence interval over repeats, with the Student t quantile computed here.

The interval is mean ± t(0.975, R - 1) · s / √R, s the sample standard deviation of R repeats:
the repeats are treated as independent draws (each has its own split, synthetic identities and
initialisation). With R = 1 there is no interval. No scipy: the t distribution's CDF has a closed
form for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4), inverted by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fertk.core.errors import InvalidInputError


def t_central_probability(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer `df` degrees of freedom."""
    if df < 1:
        raise InvalidInputError(f"degrees of freedom must be >= 1, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 1:
        # (2/π)[θ + sinθ cosθ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + …)], ending at the cos^(df-3) term.
        series, term = 0.0, 1.0
        if df > 1:
            series = term
            for k in range(1, (df - 3) // 2 + 1):
                term *= cos2 * (2 * k) / (2 * k + 1)
                series += term
        return (2.0 / math.pi) * (theta + math.sin(theta) * math.cos(theta) * series)
    # sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + …), ending at the cos^(df-2) term.
    series, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= cos2 * (2 * k - 1) / (2 * k)
        series += term
    return math.sin(theta) * series


def t_quantile(probability: float, df: int) -> float:
    """Two-sided critical value: the t with P(|T| <= t) = probability (0.95 → 12.706 at df 1)."""
    if not 0.0 < probability < 1.0:
        raise InvalidInputError(f"probability must be in (0, 1), got {probability}")
    lo, hi = 0.0, 1.0
    while t_central_probability(hi, df) < probability:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_central_probability(mid, df) < probability:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass
class Interval:
    """Mean of n values with the half-width of its confidence interval (None when n < 2)."""

    n: int
    mean: float
    std: float | None          # sample standard deviation (ddof 1)
    half_width: float | None   # mean ± half_width is the interval
    level: float = 0.95

    @property
    def low(self) -> float | None:
        """Lower bound of the interval."""
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        """Upper bound of the interval."""
        return None if self.half_width is None else self.mean + self.half_width

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (with the bounds)."""
        return {**asdict(self), "low": self.low, "high": self.high}

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """'61.2 ± 3.4' (or '61.2' for a single value), in percent by default."""
        if math.isnan(self.mean):
            return "–"
        text = f"{self.mean * scale:.{digits}f}"
        return text if self.half_width is None else f"{text} ± {self.half_width * scale:.{digits}f}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and t-based confidence interval of repeated measurements (NaNs are left out)."""
    data = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(data)
    if n == 0:
        return Interval(0, float("nan"), None, None, level)
    mean = sum(data) / n
    if n == 1:
        return Interval(1, mean, None, None, level)
    std = math.sqrt(sum((v - mean) ** 2 for v in data) / (n - 1))
    return Interval(n, mean, std, t_quantile(level, n - 1) * std / math.sqrt(n), level)


__all__ = ["Interval", "mean_ci", "t_central_probability", "t_quantile"]

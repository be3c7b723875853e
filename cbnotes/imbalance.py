"""Long-tailed class counts: the exponential profile of the paper's CIFAR-LT benchmarks (Sec. 5.1).

Class ``i`` of ``C`` keeps ``n_i = floor(n_max · (1/IF)^(i/(C-1)))`` samples, so the head class
keeps ``n_max`` and the tail class ``n_max / IF``. With ``n_max = 5000`` (CIFAR-10) and
``IF = 100`` this gives 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 (12,406 in total).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["long_tailed_counts"]

# A float within this relative distance of an integer is taken to be that integer before
# flooring, so that rounding error (e.g. 49.99999999999999 for an exact 50) cannot drop a sample.
_FLOOR_RTOL = 1e-9


def _floor_guarded(x: float) -> int:
    """Floor of ``x``, treating values within a relative 1e-9 of an integer as that integer."""
    nearest = round(x)
    if abs(x - nearest) <= _FLOOR_RTOL * max(1.0, abs(x)):
        return int(nearest)
    return math.floor(x)


def long_tailed_counts(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class counts ``floor(n_max · IF^(-i/(C-1)))`` of a long-tailed split (Sec. 5.1)."""
    if isinstance(n_max, bool) or not isinstance(n_max, Integral) or n_max < 1:
        raise ValueError(
            f"n_max must be a positive integer (the head class size, e.g. 5000 for CIFAR-10); "
            f"got {n_max!r}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
        raise ValueError(
            f"num_classes must be an integer >= 1 (e.g. 10 or 100); got {num_classes!r}."
        )
    if (
        isinstance(imbalance_factor, bool)
        or not isinstance(imbalance_factor, Real)
        or not math.isfinite(imbalance_factor)
        or imbalance_factor < 1
    ):
        raise ValueError(
            f"imbalance_factor must be a finite number >= 1 (n_max / n_min; 1 means balanced); "
            f"got {imbalance_factor!r}."
        )
    n_max, num_classes = int(n_max), int(num_classes)
    if num_classes == 1:
        return [n_max]
    if imbalance_factor > n_max:
        raise ValueError(
            f"imbalance_factor {imbalance_factor!r} exceeds n_max {n_max}: the tail class would "
            f"keep no sample. Use imbalance_factor <= n_max or a larger n_max."
        )
    ratio = 1.0 / float(imbalance_factor)
    return [_floor_guarded(n_max * ratio ** (i / (num_classes - 1))) for i in range(num_classes)]

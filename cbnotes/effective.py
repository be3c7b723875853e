"""Effective number of samples and class-balanced weights (Cui et al. 2019, Sec. 3, Eq. 3-4).

The effective number of ``n`` samples, with ``β = (N-1)/N`` and ``N`` the number of unique
prototypes of a class, is ``E_n = (1 - β^n) / (1 - β) = Σ_{j=1..n} β^(j-1)`` (Eq. 3). It is 1
for ``β = 0`` (every sample after the first adds nothing) and tends to ``n`` as ``β → 1``.

``1 - β^n`` is computed as ``-expm1(n · log β)`` with ``log β = log1p(β - 1)``, which keeps full
precision for ``β`` within 1e-7 of 1 and counts up to 1e7, where ``1 - β**n`` loses most digits.

:func:`class_weights` also gives the baselines the paper compares against (Sec. 3.1): no
re-weighting, inverse frequency ``1/n`` and its square root ``1/sqrt(n)``, all normalized the
same way (to sum to C).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import overload

import numpy as np
import torch

__all__ = [
    "WEIGHT_SCHEMES",
    "check_beta",
    "check_counts",
    "check_scheme",
    "class_balanced_weights",
    "class_weights",
    "effective_number",
]

CountsLike = Sequence[int] | np.ndarray | torch.Tensor

WEIGHT_SCHEMES = ("none", "inverse", "sqrt_inverse", "effective")


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float after checking ``0 <= beta < 1`` (Sec. 3: β = (N-1)/N)."""
    if isinstance(beta, bool) or not isinstance(beta, Real) or not 0.0 <= float(beta) < 1.0:
        raise ValueError(
            f"beta must be a number in [0, 1) (beta = (N-1)/N; 0 means no re-weighting, "
            f"values near 1 approach inverse frequency, e.g. 0.9999); got {beta!r}."
        )
    return float(beta)


def _count_error(name: str, detail: str) -> ValueError:
    """ValueError for bad sample counts, naming the argument and the remedy."""
    return ValueError(
        f"{name} must hold positive integer sample counts (>= 1), one per class, taken from the "
        f"whole training set; {detail}. A class with zero samples has no effective number: "
        f"drop that class or give it at least one sample."
    )


#: The largest count the weights are computed for (counts are stored as int64).
_MAX_COUNT = int(np.iinfo(np.int64).max)


def _object_detail(arr: np.ndarray) -> str:
    """Why an object array (Python ints too large for int64, or non-numbers) is not counts."""
    for value in arr.flat:
        if isinstance(value, bool) or not isinstance(value, Real):
            return f"got {value!r}, which is not a number"
        if isinstance(value, int) and value > _MAX_COUNT:
            return f"got {value}, larger than the largest supported count {_MAX_COUNT} (2**63 - 1)"
    return f"got values of dtype {arr.dtype}"


def _check_count_array(arr: np.ndarray, name: str) -> None:
    """Raise unless ``arr`` is a non-empty array of finite integers >= 1."""
    if arr.size == 0:
        raise _count_error(name, "got an empty collection")
    if arr.dtype == np.object_:
        raise _count_error(name, _object_detail(arr))
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise _count_error(name, f"got values of dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise _count_error(name, "got complex values")
    bad = ~np.isfinite(arr) | (arr < 1) | (arr != np.floor(arr))
    if bad.any():
        raise _count_error(name, f"got {arr[bad].flat[0]!r}")


def _to_numpy(values: CountsLike) -> np.ndarray:
    """Numpy view/copy of a sequence, array or tensor (tensors are copied to the CPU)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.double() if values.is_floating_point() else values).numpy()
    return np.asarray(values)


def check_counts(samples_per_class: CountsLike, name: str = "samples_per_class") -> np.ndarray:
    """Validate per-class counts (1-D, non-empty, integers >= 1); return them as int64 numpy."""
    try:
        arr = _to_numpy(samples_per_class)
    except (TypeError, ValueError) as err:
        raise _count_error(name, f"could not read {samples_per_class!r} as numbers") from err
    if arr.ndim != 1:
        raise _count_error(name, f"got an array of shape {tuple(arr.shape)}, expected (C,)")
    _check_count_array(arr, name)
    too_big = _too_big(arr)
    if too_big.any():
        raise _count_error(
            name,
            f"got {arr[too_big].flat[0].item()!r}, larger than the largest supported count "
            f"{_MAX_COUNT} (2**63 - 1)",
        )
    return arr.astype(np.int64)


def _too_big(arr: np.ndarray) -> np.ndarray:
    """Mask of the counts int64 cannot hold (only uint64 and float arrays can have them)."""
    if arr.dtype.kind == "f":
        return arr >= 2.0**63
    if arr.dtype.kind == "u":
        return arr > _MAX_COUNT
    return np.zeros(arr.shape, dtype=bool)


@overload
def effective_number(n: float, beta: float) -> float: ...
@overload
def effective_number(n: Sequence[int] | np.ndarray, beta: float) -> np.ndarray: ...
@overload
def effective_number(n: torch.Tensor, beta: float) -> torch.Tensor: ...


def effective_number(n, beta):
    """Effective number ``E_n = (1 - β^n)/(1 - β)`` (Eq. 3), for a number, array or tensor.

    Returns a float for a Python/numpy scalar, a float64 ndarray for a sequence or array, and a
    tensor (float64, or the input's dtype if it is floating) for a tensor. Counts must be
    integers >= 1; ``beta = 0`` gives 1 for every count.
    """
    beta = check_beta(beta)
    log_beta = math.log1p(beta - 1.0) if beta > 0.0 else -math.inf  # log β, exact near β = 1
    one_minus_beta = 1.0 - beta  # exact (Sterbenz) for β in [0.5, 1)
    if isinstance(n, torch.Tensor):
        _check_count_array(_to_numpy(n), "n")
        x = n if n.is_floating_point() else n.to(torch.float64)
        if beta == 0.0:
            return torch.ones_like(x)
        return -torch.expm1(x * log_beta) / one_minus_beta
    if isinstance(n, Real) and not isinstance(n, bool):
        _check_count_array(np.asarray(n, dtype=np.float64), "n")
        if beta == 0.0:
            return 1.0
        return -math.expm1(float(n) * log_beta) / one_minus_beta
    arr = np.asarray(n)
    _check_count_array(arr, "n")
    arr = arr.astype(np.float64)
    if beta == 0.0:
        return np.ones_like(arr)
    return -np.expm1(arr * log_beta) / one_minus_beta


def class_balanced_weights(samples_per_class: CountsLike, beta: float) -> torch.Tensor:
    """Class-balanced weights ``α_i ∝ 1/E_{n_i}`` (Eq. 4), normalized to sum to C (float32).

    Computed in float64 as ``w_i = (1-β)/(1-β^{n_i})`` and then ``w ← w / Σw · C``, as in the
    authors' code. ``beta = 0`` gives all ones; ``beta → 1`` approaches normalized inverse
    frequency. A tensor input keeps its device; other inputs give a CPU tensor.
    """
    beta = check_beta(beta)
    counts = check_counts(samples_per_class)
    weights = 1.0 / effective_number(counts, beta)
    weights = weights / weights.sum() * counts.size
    device = samples_per_class.device if isinstance(samples_per_class, torch.Tensor) else None
    return torch.as_tensor(weights, dtype=torch.float32, device=device)


def check_scheme(scheme: str) -> str:
    """Return ``scheme`` after checking it is one of :data:`WEIGHT_SCHEMES`."""
    if not isinstance(scheme, str) or scheme not in WEIGHT_SCHEMES:
        raise ValueError(
            f"scheme must be one of {', '.join(map(repr, WEIGHT_SCHEMES))} (no re-weighting, "
            f"1/n, 1/sqrt(n), or the effective number 1/E_n of Eq. 4); got {scheme!r}."
        )
    return scheme


def class_weights(
    samples_per_class: CountsLike, scheme: str = "effective", beta: float = 0.9999
) -> torch.Tensor:
    """Per-class weights of a re-weighting ``scheme``, normalized to sum to C (float32).

    "none" gives all ones, "inverse" ``∝ 1/n_i``, "sqrt_inverse" ``∝ 1/sqrt(n_i)`` and
    "effective" ``∝ 1/E_{n_i}`` (Eq. 4; bitwise :func:`class_balanced_weights`). ``beta`` is
    used (and checked) by "effective" only; the other schemes ignore it. Computed in float64,
    then ``w ← w / Σw · C``. A tensor input keeps its device; other inputs give a CPU tensor.
    """
    scheme = check_scheme(scheme)
    if scheme == "effective":
        return class_balanced_weights(samples_per_class, beta)
    counts = check_counts(samples_per_class).astype(np.float64)
    if scheme == "none":
        weights = np.ones_like(counts)
    elif scheme == "inverse":
        weights = 1.0 / counts
    else:
        weights = 1.0 / np.sqrt(counts)
    weights = weights / weights.sum() * counts.size
    device = samples_per_class.device if isinstance(samples_per_class, torch.Tensor) else None
    return torch.as_tensor(weights, dtype=torch.float32, device=device)

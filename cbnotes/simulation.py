"""The random-covering model behind the effective number of samples (Cui et al. 2019, Sec. 3.1).

A class is a space of ``N`` unique prototypes. Every sample lands on one prototype chosen
uniformly at random and covers it (one unit of volume). The *effective number* ``E_n`` is the
expected covered volume after ``n`` samples; the paper proves ``E_n = (1 - β^n) / (1 - β)`` with
``β = (N - 1) / N`` (Eq. 3). This module measures the covered volume by Monte Carlo and replays
the induction step of the proof, so that the notebooks can set both against the closed form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from cbnotes.effective import effective_number

__all__ = [
    "beta_from_prototypes",
    "covering_curves",
    "effective_number_recursive",
    "simulate_effective_number",
]


def _check_positive_int(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}; pass a positive count")


def beta_from_prototypes(num_prototypes: int) -> float:
    """β = (N - 1) / N for a class of N unique prototypes (Sec. 3.1)."""
    _check_positive_int("num_prototypes", num_prototypes)
    return (num_prototypes - 1) / num_prototypes


def covering_curves(
    num_prototypes: int,
    num_samples: int,
    trials: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Covered volume after each of ``num_samples`` uniform draws, one row per trial.

    Returns an int64 tensor of shape ``(trials, num_samples)`` whose entry ``[t, k]`` is the
    number of distinct prototypes hit by the first ``k + 1`` samples of trial ``t``.
    """
    _check_positive_int("num_prototypes", num_prototypes)
    _check_positive_int("num_samples", num_samples)
    _check_positive_int("trials", trials)
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but device={device}; "
            "create the generator with torch.Generator(device) for the same device"
        )
    draws = torch.randint(num_prototypes, (trials, num_samples), generator=generator, device=device)
    position = torch.arange(num_samples, device=device).expand(trials, -1)
    # first[t, j] = the draw index at which prototype j was first covered (num_samples: never)
    first = torch.full((trials, num_prototypes), num_samples, dtype=torch.long, device=device)
    first.scatter_reduce_(1, draws, position, reduce="amin")
    # one extra column collects the prototypes that were never covered; it is dropped below
    new = torch.zeros((trials, num_samples + 1), dtype=torch.long, device=device)
    new.scatter_add_(1, first, torch.ones_like(first))
    return new[:, :num_samples].cumsum(dim=1)


def simulate_effective_number(
    num_prototypes: int,
    sample_sizes: Sequence[int],
    trials: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Monte-Carlo covered volume (mean, standard error) next to E_n = (1 - β^n)/(1 - β) (Eq. 3).

    Columns: ``N``, ``beta``, ``n``, ``mean``, ``sem`` (standard error of the mean over
    ``trials``), ``formula`` (E_n from :func:`cbnotes.effective.effective_number` with
    β = (N - 1)/N) and ``z`` = (mean - formula) / sem (0 where sem is 0 and mean == formula).
    """
    sizes = [int(n) for n in sample_sizes]
    if not sizes:
        raise ValueError("sample_sizes is empty; pass at least one sample size n >= 1")
    for n in sizes:
        _check_positive_int("each entry of sample_sizes", n)
    if trials < 2:
        raise ValueError(f"trials must be >= 2 to estimate a standard error, got {trials}")
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    curves = covering_curves(num_prototypes, max(sizes), trials, generator, device)
    picked = curves[:, [n - 1 for n in sizes]].double()
    mean = picked.mean(dim=0).cpu().numpy()
    sem = (picked.std(dim=0, unbiased=True) / trials**0.5).cpu().numpy()
    beta = beta_from_prototypes(num_prototypes)
    formula = effective_number(sizes, beta)
    diff = mean - formula
    safe_sem = np.where(sem > 0, sem, 1.0)
    z = np.where(sem > 0, diff / safe_sem, np.where(np.isclose(diff, 0.0), 0.0, np.inf))
    return pd.DataFrame(
        {
            "N": num_prototypes,
            "beta": beta,
            "n": sizes,
            "mean": mean,
            "sem": sem,
            "formula": formula,
            "z": z,
        }
    )


def effective_number_recursive(n: int, beta: float) -> np.ndarray:
    """E_0..E_n from the induction step E_k = p E_{k-1} + (1 - p)(E_{k-1} + 1), p = E_{k-1}/N.

    Here ``N = 1 / (1 - β)``, so ``p = (1 - β) E_{k-1}`` (proof of Prop. 1). Entry ``k`` of the
    returned float64 array is ``E_k``; ``E_0 = 0``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must lie in [0, 1), got {beta!r}; β = (N - 1) / N for N >= 1")
    out = np.zeros(n + 1, dtype=np.float64)
    for k in range(1, n + 1):
        previous = out[k - 1]
        overlap = (1.0 - beta) * previous  # probability that the new sample lands on covered volume
        out[k] = overlap * previous + (1.0 - overlap) * (previous + 1.0)
    return out

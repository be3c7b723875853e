"""The random-covering model of Sec. 3.1: Monte Carlo and the induction step against Eq. 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cbnotes.effective import effective_number
from cbnotes.simulation import (
    beta_from_prototypes,
    covering_curves,
    effective_number_recursive,
    simulate_effective_number,
)


def expected_covered(n: np.ndarray, num_prototypes: int) -> np.ndarray:
    """Reference: each prototype stays uncovered with probability (1 - 1/N)^n."""
    return num_prototypes * (1.0 - (1.0 - 1.0 / num_prototypes) ** n)


def test_covering_curves_count_distinct_prototypes_like_a_python_set():
    trials, num_samples, num_prototypes = 20, 30, 12
    got = covering_curves(num_prototypes, num_samples, trials, torch.Generator().manual_seed(3))
    # the same draws, replayed from the same seed, counted with a set
    draws = torch.randint(
        num_prototypes, (trials, num_samples), generator=torch.Generator().manual_seed(3)
    )
    want = [[len(set(row[: k + 1].tolist())) for k in range(num_samples)] for row in draws]
    assert got.dtype == torch.int64
    assert got.tolist() == want


def test_covered_volume_grows_by_zero_or_one_and_never_exceeds_n_or_N():
    curves = covering_curves(50, 200, 64, torch.Generator().manual_seed(0))
    steps = curves.diff(dim=1)
    assert bool((curves[:, 0] == 1).all())
    assert set(steps.unique().tolist()) == {0, 1}
    k = torch.arange(1, 201)
    assert bool((curves <= torch.minimum(k, torch.tensor(50))).all())
    assert int(curves[:, -1].max()) <= 50


@pytest.mark.parametrize("num_prototypes", [2, 10, 100, 1000])
def test_monte_carlo_mean_matches_the_closed_form_within_a_few_standard_errors(num_prototypes):
    sizes = [1, 2, 5, num_prototypes // 2 + 1, num_prototypes, 3 * num_prototypes]
    table = simulate_effective_number(num_prototypes, sizes, trials=2000, seed=11)
    want = expected_covered(np.asarray(sizes, dtype=np.float64), num_prototypes)
    np.testing.assert_allclose(table["formula"], want, rtol=1e-12)
    informative = table["sem"] > 0
    assert informative.sum() >= 3  # the comparison below is not vacuous
    z = (table["mean"] - want) / table["sem"].where(informative)
    assert float(z[informative].abs().max()) < 4.5, table
    # where no trial varies (n = 1), every trial must hit exactly the formula's value
    np.testing.assert_allclose(table.loc[~informative, "mean"], want[~informative.to_numpy()])


def test_the_closed_form_is_the_papers_effective_number_with_beta_equal_to_n_minus_1_over_n():
    sizes = [1, 7, 50, 400]
    for num_prototypes in (3, 40, 10_000):
        beta = beta_from_prototypes(num_prototypes)
        table = simulate_effective_number(num_prototypes, sizes, trials=2, seed=0)
        np.testing.assert_allclose(table["formula"], effective_number(sizes, beta), rtol=1e-10)
        assert table["beta"].iloc[0] == pytest.approx(beta)


def test_one_prototype_means_beta_zero_and_every_sample_after_the_first_adds_nothing():
    table = simulate_effective_number(1, [1, 5, 100], trials=50, seed=0)
    assert table["beta"].iloc[0] == 0.0
    assert table["mean"].tolist() == [1.0, 1.0, 1.0]
    assert table["sem"].tolist() == [0.0, 0.0, 0.0]
    assert table["z"].tolist() == [0.0, 0.0, 0.0]


def test_the_same_seed_gives_the_same_table_and_another_seed_another():
    a = simulate_effective_number(30, [5, 30], trials=100, seed=1)
    b = simulate_effective_number(30, [5, 30], trials=100, seed=1)
    c = simulate_effective_number(30, [5, 30], trials=100, seed=2)
    assert a.equals(b)
    assert not a["mean"].equals(c["mean"])


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_the_induction_step_reproduces_the_closed_form(beta):
    n = 300
    recursive = effective_number_recursive(n, beta)
    k = np.arange(1, n + 1)
    geometric_sum = np.array([np.sum(beta ** np.arange(m)) for m in k])  # Σ_{j=1..m} β^(j-1)
    assert recursive[0] == 0.0
    np.testing.assert_allclose(recursive[1:], geometric_sum, rtol=1e-12)
    np.testing.assert_allclose(recursive[1:], effective_number(k, beta), rtol=1e-12)


def test_beta_zero_gives_one_and_beta_near_one_approaches_n():
    assert effective_number_recursive(10, 0.0)[1:].tolist() == [1.0] * 10
    assert effective_number_recursive(100, 1 - 1e-9)[100] == pytest.approx(100, rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_prototypes": 0, "num_samples": 5, "trials": 2}, "num_prototypes"),
        ({"num_prototypes": 5, "num_samples": 0, "trials": 2}, "num_samples"),
        ({"num_prototypes": 5, "num_samples": 5, "trials": 0}, "trials"),
        ({"num_prototypes": 2.5, "num_samples": 5, "trials": 2}, "num_prototypes"),
    ],
)
def test_covering_curves_reject_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        covering_curves(**kwargs)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="sample_sizes"):
        simulate_effective_number(10, [], trials=10)
    with pytest.raises(ValueError, match="sample_sizes"):
        simulate_effective_number(10, [0, 3], trials=10)
    with pytest.raises(ValueError, match="trials"):
        simulate_effective_number(10, [3], trials=1)
    with pytest.raises(ValueError, match="beta"):
        effective_number_recursive(5, 1.0)
    with pytest.raises(ValueError, match="n must"):
        effective_number_recursive(-1, 0.5)
    with pytest.raises(ValueError, match="num_prototypes"):
        beta_from_prototypes(0)

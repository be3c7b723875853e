"""Long-tailed CIFAR counts: n_i = floor(n_max · (1/IF)^(i/(C-1))) reproduces the paper's totals."""

import itertools

import pytest

from cbnotes.imbalance import long_tailed_counts

IMBALANCE_FACTORS = (200, 100, 50, 20, 10, 1)
CIFAR10_TOTALS = (11203, 12406, 13996, 17023, 20431, 50000)
CIFAR100_TOTALS = (9502, 10847, 12608, 15907, 19573, 50000)


@pytest.mark.parametrize(
    ("imbalance_factor", "total"), list(zip(IMBALANCE_FACTORS, CIFAR10_TOTALS, strict=True))
)
def test_cifar10_lt_totals_match_the_paper(imbalance_factor, total):
    counts = long_tailed_counts(5000, 10, imbalance_factor)
    assert len(counts) == 10
    assert sum(counts) == total


@pytest.mark.parametrize(
    ("imbalance_factor", "total"), list(zip(IMBALANCE_FACTORS, CIFAR100_TOTALS, strict=True))
)
def test_cifar100_lt_totals_match_the_paper(imbalance_factor, total):
    counts = long_tailed_counts(500, 100, imbalance_factor)
    assert len(counts) == 100
    assert sum(counts) == total


def test_cifar10_lt_if100_counts():
    assert long_tailed_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize(("n_max", "num_classes", "factor"), [(5000, 10, 100), (500, 100, 50)])
def test_head_is_n_max_tail_is_n_max_over_if_and_counts_decrease(n_max, num_classes, factor):
    counts = long_tailed_counts(n_max, num_classes, factor)
    assert counts[0] == n_max
    assert counts[-1] == n_max // factor
    assert all(a >= b for a, b in itertools.pairwise(counts))
    assert all(isinstance(n, int) for n in counts)


def test_imbalance_factor_one_is_balanced():
    assert long_tailed_counts(500, 100, 1) == [500] * 100
    assert long_tailed_counts(7, 3, 1.0) == [7, 7, 7]


def test_single_class_keeps_n_max():
    assert long_tailed_counts(123, 1, 10) == [123]


def test_exact_integers_are_not_floored_down():
    # 100 · (1/32)^(2/5) = 25 exactly, but the float power gives 24.999999999999996.
    assert long_tailed_counts(100, 6, 32) == [100, 50, 25, 12, 6, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_max": 0}, "n_max"),
        ({"n_max": -5}, "n_max"),
        ({"n_max": 2.5}, "n_max"),
        ({"n_max": True}, "n_max"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"imbalance_factor": 0.5}, "imbalance_factor"),
        ({"imbalance_factor": float("nan")}, "imbalance_factor"),
        ({"imbalance_factor": float("inf")}, "imbalance_factor"),
        ({"imbalance_factor": 6000}, "imbalance_factor"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, match):
    args = {"n_max": 5000, "num_classes": 10, "imbalance_factor": 100} | kwargs
    with pytest.raises(ValueError, match=match):
        long_tailed_counts(**args)

"""Effective number E_n = (1-β^n)/(1-β) (Eq. 3) and class-balanced weights α ∝ 1/E_n (Eq. 4)."""

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import torch

from cbnotes.effective import (
    WEIGHT_SCHEMES,
    class_balanced_weights,
    class_weights,
    effective_number,
)
from cbnotes.imbalance import long_tailed_counts

CIFAR10_LT_IF100 = long_tailed_counts(5000, 10, 100)


def reference_effective_number(n: int, beta: float) -> float:
    """(1 - β^n)/(1 - β) with 50 significant digits, β taken exactly from its float."""
    with localcontext() as ctx:
        ctx.prec = 50
        b = Decimal(beta)
        return float((1 - b**n) / (1 - b))


# --- Effective number -------------------------------------------------------------------------


def test_hand_computed_values():
    assert effective_number(3, 0.5) == 1.75  # 1 + 1/2 + 1/4
    assert effective_number(1, 0.9) == 1.0
    assert effective_number(2, 0.9) == pytest.approx(1.9, rel=1e-15)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9, 0.99, 0.999])
def test_equals_the_geometric_sum(beta):
    b = Fraction(beta)  # exact value of the float
    n = np.arange(1, 61)
    exact = [float(sum(b**j for j in range(k))) for k in n]
    np.testing.assert_allclose(effective_number(n, beta), exact, rtol=1e-14)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.999])
def test_satisfies_the_induction_step(beta):
    # A new sample overlaps the covered volume with probability p = E_{n-1}/N (Sec. 3).
    big_n = 1.0 / (1.0 - beta)
    for n in range(2, 200):
        previous = effective_number(n - 1, beta)
        p = previous / big_n
        expected = p * previous + (1 - p) * (previous + 1)
        assert effective_number(n, beta) == pytest.approx(expected, rel=1e-12)


def test_beta_zero_gives_one_for_every_count():
    n = [1, 2, 10, 10**7]
    np.testing.assert_array_equal(effective_number(n, 0.0), np.ones(4))
    assert effective_number(5, 0) == 1.0


def test_beta_to_one_gives_the_raw_count():
    n = np.array([1, 10, 1000, 50000])
    np.testing.assert_allclose(effective_number(n, 1 - 1e-12), n, rtol=1e-6)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999])
def test_increases_with_n_and_is_bounded_by_big_n(beta):
    e = effective_number(np.arange(1, 2001), beta)
    assert np.all(np.diff(e[:200]) > 0)  # each new sample adds β^(n-1) > 0
    assert np.all(np.diff(e) >= 0)  # (later increments fall below float resolution)
    assert np.all(e <= 1.0 / (1.0 - beta))


@pytest.mark.parametrize("beta", [1 - 1e-7, 1 - 1e-5, 0.9999, 0.5])
@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 123_457, 10**7])
def test_stable_near_beta_one_against_50_digit_reference(n, beta):
    assert effective_number(n, beta) == pytest.approx(
        reference_effective_number(n, beta), rel=1e-13
    )


def test_stable_form_beats_the_naive_formula_near_beta_one():
    beta, n = 1 - 1e-7, 2
    reference = reference_effective_number(n, beta)
    naive = (1 - beta**n) / (1 - beta)
    assert abs(effective_number(n, beta) - reference) <= 1e-15 * reference
    assert abs(naive - reference) > 1e-12 * reference  # the naive form loses digits


def test_kinds_in_give_kinds_out():
    assert type(effective_number(3, 0.5)) is float
    assert type(effective_number(np.int64(3), 0.5)) is float
    assert type(effective_number(3.0, 0.5)) is float
    out = effective_number([1, 2, 3], 0.5)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.float64
    out = effective_number(np.array([[1, 2], [3, 4]], dtype=np.int32), 0.5)
    assert out.dtype == np.float64
    assert out.shape == (2, 2)
    out = effective_number(torch.tensor([1, 2, 3]), 0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([1.0, 1.5, 1.75], dtype=torch.float64))
    out = effective_number(torch.tensor([1.0, 2.0, 3.0]), 0.5)
    assert out.dtype == torch.float32
    out = effective_number(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), 0.5)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("n", "beta", "match"),
    [
        (3, 1.0, "beta"),
        (3, -0.1, "beta"),
        (3, float("nan"), "beta"),
        (3, True, "beta"),
        (0, 0.9, "n must hold positive integer"),
        (-2, 0.9, "n must hold positive integer"),
        (2.5, 0.9, "n must hold positive integer"),
        (float("nan"), 0.9, "n must hold positive integer"),
        (float("inf"), 0.9, "n must hold positive integer"),
        ([], 0.9, "n must hold positive integer"),
        ([3, 0], 0.0, "n must hold positive integer"),
        (torch.tensor([1.5]), 0.9, "n must hold positive integer"),
    ],
)
def test_bad_input_raises_value_error(n, beta, match):
    with pytest.raises(ValueError, match=match):
        effective_number(n, beta)


# --- Class-balanced weights -----------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.99, 0.999, 0.9999])
def test_weights_are_float32_of_shape_c_and_sum_to_c(beta):
    w = class_balanced_weights(CIFAR10_LT_IF100, beta)
    assert w.dtype == torch.float32
    assert w.shape == (10,)
    assert float(w.double().sum()) == pytest.approx(10.0, rel=1e-6)


def test_hand_computed_weights():
    # counts (1, 3), β = 1/2: E = (1, 7/4), 1/E = (1, 4/7), normalized to sum 2: (14/11, 8/11).
    w = class_balanced_weights([1, 3], 0.5)
    torch.testing.assert_close(w, torch.tensor([14 / 11, 8 / 11]))


def test_beta_zero_gives_all_ones():
    torch.testing.assert_close(class_balanced_weights(CIFAR10_LT_IF100, 0.0), torch.ones(10))


def test_beta_to_one_approaches_normalized_inverse_frequency():
    counts = np.array(CIFAR10_LT_IF100, dtype=np.float64)
    inverse = (1 / counts) / (1 / counts).sum() * counts.size
    w = class_balanced_weights(CIFAR10_LT_IF100, 1 - 1e-9)
    np.testing.assert_allclose(w.numpy(), inverse, rtol=1e-4)


def test_cifar10_lt_if100_weights_quoted_in_the_paper():
    w = class_balanced_weights(CIFAR10_LT_IF100, 0.9999)
    assert round(float(w[0]), 3) == 0.051  # head
    assert round(float(w[-1]), 2) == 3.99  # tail
    w = class_balanced_weights(CIFAR10_LT_IF100, 0.99)
    assert round(float(w[0]), 2) == 0.78
    assert round(float(w[-1]), 2) == 1.98
    w = class_balanced_weights(CIFAR10_LT_IF100, 0.9)
    assert float(w.max() / w.min()) < 1.01  # almost uniform


def test_weights_decrease_with_the_class_count():
    w = class_balanced_weights(CIFAR10_LT_IF100, 0.999)
    assert torch.all(w[1:] > w[:-1])


def test_weights_accept_sequences_arrays_and_tensors_alike():
    expected = class_balanced_weights(CIFAR10_LT_IF100, 0.999)
    for counts in (
        tuple(CIFAR10_LT_IF100),
        np.array(CIFAR10_LT_IF100),
        torch.tensor(CIFAR10_LT_IF100),
    ):
        torch.testing.assert_close(class_balanced_weights(counts, 0.999), expected)
    # float-typed but integer-valued counts are fine
    torch.testing.assert_close(
        class_balanced_weights(np.array(CIFAR10_LT_IF100, float), 0.999), expected
    )


def test_weights_never_nan_for_extreme_counts():
    w = class_balanced_weights([1, 10**7], 1 - 1e-7)
    assert torch.isfinite(w).all()
    assert math.isclose(float(w.double().sum()), 2.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("counts", "beta", "match"),
    [
        ([10, 0, 3], 0.9, "samples_per_class.*zero samples"),
        ([10, -1], 0.9, "samples_per_class"),
        ([10, 2.5], 0.9, "samples_per_class"),
        ([10, float("nan")], 0.9, "samples_per_class"),
        ([10, float("inf")], 0.9, "samples_per_class"),
        ([], 0.9, "samples_per_class"),
        ([[1, 2], [3, 4]], 0.9, "samples_per_class"),
        (["a", "b"], 0.9, "samples_per_class"),
        ([10, 5], 1.0, "beta"),
        ([10, 5], -0.5, "beta"),
    ],
)
def test_bad_counts_or_beta_raise_value_error(counts, beta, match):
    with pytest.raises(ValueError, match=match):
        class_balanced_weights(counts, beta)


# --- Other re-weighting schemes ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES)
@pytest.mark.parametrize("counts", [CIFAR10_LT_IF100, [1, 3], [7], [10**7, 1, 49]])
def test_every_scheme_gives_float32_weights_summing_to_c(scheme, counts):
    w = class_weights(counts, scheme)
    assert w.dtype == torch.float32
    assert w.shape == (len(counts),)
    assert float(w.double().sum()) == pytest.approx(len(counts), rel=1e-6)
    assert torch.isfinite(w).all()
    assert (w > 0).all()


def test_schemes_by_hand():
    # counts (1, 4): 1/n = (1, 1/4) -> (8/5, 2/5); 1/sqrt(n) = (1, 1/2) -> (4/3, 2/3).
    torch.testing.assert_close(class_weights([1, 4], "inverse"), torch.tensor([1.6, 0.4]))
    torch.testing.assert_close(class_weights([1, 4], "sqrt_inverse"), torch.tensor([4 / 3, 2 / 3]))
    torch.testing.assert_close(class_weights([1, 4], "none"), torch.ones(2))


def test_none_equals_beta_zero_effective_weights():
    for counts in (CIFAR10_LT_IF100, [3, 1, 49, 7]):
        assert torch.equal(class_weights(counts, "none"), class_balanced_weights(counts, 0.0))
        assert torch.equal(class_weights(counts, "none"), torch.ones(len(counts)))


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999, 1 - 1e-9])
def test_effective_is_bitwise_class_balanced_weights(beta):
    got = class_weights(CIFAR10_LT_IF100, "effective", beta)
    assert torch.equal(got, class_balanced_weights(CIFAR10_LT_IF100, beta))
    assert torch.equal(
        class_weights(CIFAR10_LT_IF100), class_balanced_weights(CIFAR10_LT_IF100, 0.9999)
    )


def test_inverse_is_the_beta_to_one_limit_of_effective():
    # E_n = n - n(n-1)(1-β)/2 + ..., so at β = 1 - 1e-12 the float64 weights differ from 1/n by a
    # relative ~n(1-β)/2 <= 2.5e-9 for n <= 5000. Rounded to float32 they can then differ by at
    # most one float32 ulp, a relative 2^-23 < 1.2e-7.
    limit = class_balanced_weights(CIFAR10_LT_IF100, 1 - 1e-12)
    torch.testing.assert_close(
        class_weights(CIFAR10_LT_IF100, "inverse"), limit, rtol=1.2e-7, atol=0
    )


def test_sqrt_inverse_lies_between_none_and_inverse():
    none, sqrt, inverse = (
        class_weights(CIFAR10_LT_IF100, s) for s in ("none", "sqrt_inverse", "inverse")
    )
    assert none[-1] < sqrt[-1] < inverse[-1]  # tail
    assert inverse[0] < sqrt[0] < none[0]  # head
    torch.testing.assert_close(sqrt[-1] / sqrt[0], torch.tensor(math.sqrt(100)), rtol=1e-6, atol=0)


def test_only_the_effective_scheme_uses_beta():
    for scheme in ("none", "inverse", "sqrt_inverse"):
        assert torch.equal(
            class_weights(CIFAR10_LT_IF100, scheme, beta=5.0),
            class_weights(CIFAR10_LT_IF100, scheme),
        )
    with pytest.raises(ValueError, match="beta"):
        class_weights(CIFAR10_LT_IF100, "effective", beta=5.0)


def test_class_weights_keep_the_device_of_a_tensor_input():
    counts = torch.tensor(CIFAR10_LT_IF100)
    for scheme in WEIGHT_SCHEMES:
        assert class_weights(counts, scheme).device == counts.device
        torch.testing.assert_close(
            class_weights(counts, scheme), class_weights(CIFAR10_LT_IF100, scheme)
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_class_weights_of_a_cuda_tensor_are_on_cuda():
    counts = torch.tensor(CIFAR10_LT_IF100, device="cuda")
    for scheme in WEIGHT_SCHEMES:
        assert class_weights(counts, scheme).is_cuda


@pytest.mark.parametrize(
    ("counts", "scheme", "match"),
    [
        (
            [10, 5],
            "Inverse",
            "scheme must be one of 'none', 'inverse', 'sqrt_inverse', 'effective'",
        ),
        ([10, 5], "balanced", "scheme"),
        ([10, 5], None, "scheme"),
        ([10, 0], "inverse", "samples_per_class.*zero samples"),
        ([10, 2.5], "sqrt_inverse", "samples_per_class"),
        ([], "none", "samples_per_class"),
    ],
)
def test_class_weights_bad_input(counts, scheme, match):
    with pytest.raises(ValueError, match=match):
        class_weights(counts, scheme)

"""Later methods on the same benchmark: Balanced Softmax, logit adjustment, LDAM (LDAM-DRW)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cbnotes.effective import class_weights
from cbnotes.losses import (
    BalancedSoftmaxLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    balanced_softmax_loss,
    ldam_loss,
    ldam_margins,
    logit_adjusted_loss,
    posthoc_logit_adjustment,
)

COUNTS = [50, 20, 8, 3]  # a small long-tailed training set


def batch(seed: int = 0, size: int = 6, dtype: torch.dtype = torch.float32):
    """Random logits (size, 4) and labels covering every class."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(size, len(COUNTS), generator=gen, dtype=dtype)
    labels = torch.arange(size) % len(COUNTS)
    return logits, labels


def reference_ce(z: torch.Tensor, y: torch.Tensor, shift, weights=None) -> torch.Tensor:
    """Independent float64 cross-entropy of ``z + shift`` (weighted mean if ``weights``)."""
    z = z.double() + torch.as_tensor(shift, dtype=torch.float64)
    per_row = torch.logsumexp(z, dim=1) - z[torch.arange(len(y)), y]
    w = torch.ones(z.shape[1], dtype=torch.float64) if weights is None else weights.double()
    return (w[y] * per_row).sum() / w[y].sum()


def log_priors(counts) -> np.ndarray:
    """``log π_j = log(n_j / Σn)`` in float64."""
    n = np.asarray(counts, dtype=np.float64)
    return np.log(n / n.sum())


def reference_margins(counts, max_margin: float = 0.5) -> np.ndarray:
    """Δ_j = C / n_j^(1/4) with C chosen so that max Δ = max_margin (Cao et al., Eq. 13)."""
    n = np.asarray(counts, dtype=np.float64)
    return max_margin * n**-0.25 / (n.min() ** -0.25)


def reference_ldam(z, y, counts, max_margin=0.5, scale=30.0, weights=None) -> torch.Tensor:
    """Independent float64 LDAM: a one-hot mask subtracts Δ_y from the target logit."""
    mask = F.one_hot(y, z.shape[1]).double()
    delta = torch.as_tensor(reference_margins(counts, max_margin))
    return reference_ce(scale * (z.double() - mask * delta), y, 0.0, weights)


# --- Hand-computed values (2 x 3) -------------------------------------------------------------

HAND_COUNTS = [4, 2, 1]
HAND_LOGITS = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.0]], dtype=torch.float64)
HAND_LABELS = torch.tensor([0, 2])
E = math.e


def test_balanced_softmax_by_hand():
    # z + log n: row 0 is [log 4, log 2, 0] -> -log(4/7); row 1 -> -log(1/(4e + 2/e + 1)).
    expected = (math.log(7 / 4) + math.log(4 * E + 2 / E + 1)) / 2
    got = balanced_softmax_loss(HAND_LOGITS, HAND_LABELS, HAND_COUNTS)
    assert float(got) == pytest.approx(expected, rel=1e-14)
    module = BalancedSoftmaxLoss(HAND_COUNTS)  # float32 buffer: log n to float32 precision
    assert float(module(HAND_LOGITS, HAND_LABELS)) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_by_hand(tau):
    # z + τ log π multiplies exp(z_j) by π_j^τ, i.e. by n_j^τ up to a common factor.
    n = [4.0, 2.0, 1.0]
    row0 = -math.log(n[0] ** tau / sum(v**tau for v in n))
    row1 = -math.log(1.0 / (n[0] ** tau * E + n[1] ** tau / E + 1.0))
    got = logit_adjusted_loss(HAND_LOGITS, HAND_LABELS, HAND_COUNTS, tau)
    assert float(got) == pytest.approx((row0 + row1) / 2, rel=1e-14)


def test_logit_adjustment_with_tau_one_is_balanced_softmax():
    # log π_j and log n_j differ by the constant log Σn, which cross-entropy ignores.
    logits, labels = batch(seed=1, dtype=torch.float64)
    torch.testing.assert_close(
        logit_adjusted_loss(logits, labels, COUNTS, 1.0),
        balanced_softmax_loss(logits, labels, COUNTS),
    )


def test_posthoc_adjustment_by_hand():
    got = posthoc_logit_adjustment(torch.zeros(1, 3, dtype=torch.float64), HAND_COUNTS)
    expected = torch.tensor([[math.log(7 / 4), math.log(7 / 2), math.log(7)]], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-15, atol=0)
    half = posthoc_logit_adjustment(HAND_LOGITS, HAND_COUNTS, tau=0.5)
    torch.testing.assert_close(half, HAND_LOGITS - 0.5 * torch.as_tensor(log_priors(HAND_COUNTS)))


def test_ldam_by_hand():
    # n = (16, 1, 81): n^(-1/4) = (1/2, 1, 1/3); max 1, so Δ = (1/4, 1/2, 1/6) for max_margin 1/2.
    counts = [16, 1, 81]
    torch.testing.assert_close(
        ldam_margins(counts), torch.tensor([0.25, 0.5, 0.5 / 3]), rtol=0, atol=0
    )
    # s = 2, zero logits: the target logit becomes -2Δ_y, the others stay 0.
    z = torch.zeros(2, 3, dtype=torch.float64)
    y = torch.tensor([0, 2])
    expected = (math.log(1 + 2 * math.exp(0.5)) + math.log(1 + 2 * math.exp(1 / 3))) / 2
    got = ldam_loss(z, y, counts, max_margin=0.5, scale=2.0)
    assert float(got) == pytest.approx(expected, rel=1e-14)
    # weights (1, 1, 3): weighted mean (1·CE_0 + 3·CE_1) / (1 + 3)
    w = torch.tensor([1.0, 1.0, 3.0])
    weighted = (math.log(1 + 2 * math.exp(0.5)) + 3 * math.log(1 + 2 * math.exp(1 / 3))) / 4
    got = ldam_loss(z, y, counts, max_margin=0.5, scale=2.0, weights=w)
    assert float(got) == pytest.approx(weighted, rel=1e-14)


# --- Against independent float64 implementations ----------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_independent_float64_implementations(seed):
    logits, labels = batch(seed=seed, size=9, dtype=torch.float64)
    log_n = np.log(np.asarray(COUNTS, dtype=np.float64))
    torch.testing.assert_close(
        balanced_softmax_loss(logits, labels, COUNTS), reference_ce(logits, labels, log_n)
    )
    for tau in (0.0, 0.7, 1.0, 1.5):
        torch.testing.assert_close(
            logit_adjusted_loss(logits, labels, COUNTS, tau),
            reference_ce(logits, labels, tau * log_priors(COUNTS)),
        )
    cosine = torch.tanh(logits)  # cosine-like logits in [-1, 1]
    w = class_weights(COUNTS, "effective", 0.999)
    for max_margin, scale, weights in [(0.5, 30.0, None), (0.3, 10.0, w), (1.0, 1.0, None)]:
        torch.testing.assert_close(
            ldam_loss(cosine, labels, COUNTS, max_margin, scale, weights),
            reference_ldam(cosine, labels, COUNTS, max_margin, scale, weights),
        )


def test_float32_logits_agree_with_the_float64_reference():
    logits, labels = batch(seed=3, size=16)
    got = LDAMLoss(COUNTS, weights=class_weights(COUNTS, "inverse"))(logits.tanh(), labels)
    ref = reference_ldam(logits.tanh(), labels, COUNTS, weights=class_weights(COUNTS, "inverse"))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=1e-6)


def test_modules_equal_their_functions():
    logits, labels = batch(seed=4)
    torch.testing.assert_close(
        BalancedSoftmaxLoss(COUNTS)(logits, labels), balanced_softmax_loss(logits, labels, COUNTS)
    )
    torch.testing.assert_close(
        LogitAdjustedLoss(COUNTS, 0.5)(logits, labels),
        logit_adjusted_loss(logits, labels, COUNTS, 0.5),
    )
    w = class_weights(COUNTS, "effective", 0.9999)
    torch.testing.assert_close(
        LDAMLoss(COUNTS, 0.4, 20.0, w)(logits, labels),
        ldam_loss(logits, labels, COUNTS, 0.4, 20.0, w),
    )


# --- Limits -----------------------------------------------------------------------------------


def test_tau_zero_is_plain_cross_entropy():
    logits, labels = batch(seed=5)
    plain = F.cross_entropy(logits, labels)
    torch.testing.assert_close(logit_adjusted_loss(logits, labels, COUNTS, 0.0), plain)
    torch.testing.assert_close(LogitAdjustedLoss(COUNTS, tau=0.0)(logits, labels), plain)


def test_equal_counts_make_balanced_softmax_and_logit_adjustment_plain_cross_entropy():
    logits, labels = batch(seed=6)
    equal = [37] * len(COUNTS)
    plain = F.cross_entropy(logits, labels)
    torch.testing.assert_close(balanced_softmax_loss(logits, labels, equal), plain)
    torch.testing.assert_close(logit_adjusted_loss(logits, labels, equal, 1.0), plain)
    torch.testing.assert_close(BalancedSoftmaxLoss(equal)(logits, labels), plain)


def test_posthoc_tau_zero_is_the_identity_and_equal_counts_a_constant_shift():
    logits, _ = batch(seed=7)
    torch.testing.assert_close(posthoc_logit_adjustment(logits, COUNTS, 0.0), logits)
    shifted = posthoc_logit_adjustment(logits, [5] * len(COUNTS))
    torch.testing.assert_close(shifted - logits, torch.full_like(logits, math.log(len(COUNTS))))
    assert torch.equal(shifted.argmax(1), logits.argmax(1))


def test_posthoc_adjustment_favours_tail_classes_and_keeps_the_dtype():
    tie = torch.zeros(2, 4, dtype=torch.bfloat16)
    adjusted = posthoc_logit_adjustment(tie, COUNTS)
    assert adjusted.dtype == torch.bfloat16
    assert adjusted.argmax(1).tolist() == [3, 3]  # the rarest class wins a tie
    batched = posthoc_logit_adjustment(torch.zeros(2, 5, 4), COUNTS)
    assert batched.shape == (2, 5, 4)


def test_ldam_margins_follow_n_to_the_minus_one_quarter():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, IF 100
    m = ldam_margins(counts, max_margin=0.5).double()
    assert float(m.max()) == 0.5
    assert int(m.argmax()) == 9  # the rarest class gets the largest margin
    n = torch.tensor(counts, dtype=torch.float64)
    torch.testing.assert_close(m / m[0], (n / n[0]) ** -0.25, rtol=1e-6, atol=0)
    torch.testing.assert_close(LDAMLoss(counts).margins, ldam_margins(counts))


def test_ldam_shifts_only_the_target_column():
    # CE of s·z with z_y lowered by Δ_y (the other columns untouched), not s·(z - Δ).
    logits, labels = batch(seed=8)
    z = logits.tanh()
    delta = ldam_margins(COUNTS)
    by_hand = z.clone()
    by_hand[torch.arange(len(labels)), labels] -= delta[labels]
    torch.testing.assert_close(
        ldam_loss(z, labels, COUNTS), F.cross_entropy(30.0 * by_hand, labels)
    )
    shifted_all = F.cross_entropy(30.0 * (z - delta), labels)
    assert not torch.allclose(ldam_loss(z, labels, COUNTS), shifted_all)


def test_ldam_with_weights_is_pytorch_weighted_mean():
    logits, labels = batch(seed=9, size=10)
    z = logits.tanh()
    w = class_weights(COUNTS, "effective", 0.9999)
    delta = ldam_margins(COUNTS)
    shifted = z - F.one_hot(labels, 4) * delta
    expected = F.cross_entropy(30.0 * shifted, labels, weight=w)
    torch.testing.assert_close(ldam_loss(z, labels, COUNTS, weights=w), expected)
    torch.testing.assert_close(LDAMLoss(COUNTS, weights=w)(z, labels), expected)
    # ... which divides by Σ_b w_{y_b}, not by B as this paper's reduction does
    per_row = F.cross_entropy(30.0 * shifted, labels, reduction="none")
    assert not torch.allclose(expected, (w[labels] * per_row).mean(), rtol=1e-3)


def test_ldam_all_ones_weights_buffer_equals_the_plain_mean():
    logits, labels = batch(seed=10)
    module = LDAMLoss(COUNTS)
    assert module.weights.dtype == torch.float32
    assert torch.equal(module.weights, torch.ones(4))
    torch.testing.assert_close(module(logits, labels), ldam_loss(logits, labels, COUNTS))


def test_ldam_deferred_reweighting_by_copying_into_the_buffer():
    logits, labels = batch(seed=11)
    module = LDAMLoss(COUNTS)
    before = module(logits, labels)
    w = class_weights(COUNTS, "effective", 0.9999)
    module.weights.copy_(w)
    torch.testing.assert_close(module(logits, labels), ldam_loss(logits, labels, COUNTS, weights=w))
    assert not torch.allclose(module(logits, labels), before)
    assert torch.equal(module.state_dict()["weights"], w)  # the switch survives a checkpoint


def test_ldam_does_not_alias_the_callers_weights():
    w = torch.ones(4)
    module = LDAMLoss(COUNTS, weights=w)
    module.weights.mul_(2)
    assert torch.equal(w, torch.ones(4))


# --- Gradients, extremes, precision -----------------------------------------------------------

GRAD_CASES = {
    "balanced_softmax": lambda z, y: balanced_softmax_loss(z, y, COUNTS),
    "logit_adjusted": lambda z, y: logit_adjusted_loss(z, y, COUNTS, 0.7),
    "ldam": lambda z, y: ldam_loss(z, y, COUNTS, 0.5, 3.0),
    "ldam_weighted": lambda z, y: ldam_loss(z, y, COUNTS, 0.5, 3.0, torch.tensor([0.2, 1, 2, 3.0])),
    "posthoc": lambda z, y: posthoc_logit_adjustment(z, COUNTS, 0.5),
}


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradcheck_in_float64(name):
    logits, labels = batch(seed=12, size=5, dtype=torch.float64)
    logits.requires_grad_(True)
    fn = GRAD_CASES[name]
    assert fn(logits, labels).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda z: fn(z, labels), (logits,))


MODULES = {
    "balanced_softmax": lambda: BalancedSoftmaxLoss(COUNTS),
    "logit_adjusted": lambda: LogitAdjustedLoss(COUNTS, 1.0),
    "ldam": lambda: LDAMLoss(COUNTS),
    "ldam_weighted": lambda: LDAMLoss(COUNTS, weights=class_weights(COUNTS)),
}


@pytest.mark.parametrize("name", list(GRAD_CASES) + [f"module {m}" for m in MODULES])
def test_finite_loss_and_gradients_for_extreme_logits(name):
    values = torch.tensor([-1e4, 1e4, 0.0, -30.0, 30.0])
    logits = values[torch.randint(0, 5, (16, 4), generator=torch.Generator().manual_seed(13))]
    logits[:4, :] = torch.tensor([[-1e4, 1e4, -1e4, 1e4]])
    labels = torch.arange(16) % 4
    logits.requires_grad_(True)
    fn = MODULES[name[7:]]() if name.startswith("module ") else GRAD_CASES[name]
    loss = fn(logits, labels).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", list(GRAD_CASES) + [f"module {m}" for m in MODULES])
def test_cpu_bf16_autocast_computes_in_float32(name):
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(8, 5, generator=gen)
    layer = torch.nn.Linear(5, 4)
    labels = torch.arange(8) % 4
    fn = MODULES[name[7:]]() if name.startswith("module ") else GRAD_CASES[name]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        out = fn(logits, labels)
    if name == "posthoc":  # an adjustment, not a loss: it keeps the logits' dtype
        assert out.dtype == torch.bfloat16
        return
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fn(logits.float(), labels))  # same logits, fp32 math


@pytest.mark.parametrize("name", MODULES)
def test_module_buffers_are_float32_and_follow_to(name):
    module = MODULES[name]()
    for buffer in module.buffers():
        assert buffer.dtype == torch.float32
        assert buffer.shape == (4,)
    moved = module.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in moved.buffers())
    assert all(b.device.type == "meta" for b in module.to("meta").buffers())


def test_module_state_dicts_hold_only_what_can_change():
    assert list(BalancedSoftmaxLoss(COUNTS).state_dict()) == []
    assert list(LogitAdjustedLoss(COUNTS).state_dict()) == []
    assert list(LDAMLoss(COUNTS).state_dict()) == ["weights"]


def test_module_reprs_name_their_settings():
    assert "num_classes=4" in repr(BalancedSoftmaxLoss(COUNTS))
    assert "tau=0.5" in repr(LogitAdjustedLoss(COUNTS, 0.5))
    text = repr(LDAMLoss(COUNTS, 0.3, 16.0))
    for part in ("max_margin=0.3", "scale=16.0", "num_classes=4"):
        assert part in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_modules_match_cpu():
    logits, labels = batch()
    for name, make in MODULES.items():
        expected = make()(logits, labels)
        got = make().cuda()(logits.cuda(), labels.cuda())
        torch.testing.assert_close(got.cpu(), expected, msg=name)


# --- Validation -------------------------------------------------------------------------------

GOOD_LOGITS, GOOD_LABELS = batch()
NAN, INF = float("nan"), float("inf")


def call(fn_name: str, **overrides):
    """Call a functional loss with good arguments except ``overrides``."""
    args = {"logits": GOOD_LOGITS, "labels": GOOD_LABELS, "samples_per_class": COUNTS}
    fn = {
        "balanced": balanced_softmax_loss,
        "adjusted": logit_adjusted_loss,
        "ldam": ldam_loss,
        "posthoc": posthoc_logit_adjustment,
    }[fn_name]
    if fn_name == "posthoc":
        del args["labels"]
    return fn(**(args | overrides))


BAD_COMMON = [
    ({"samples_per_class": [50, 0, 8, 3]}, "samples_per_class"),
    ({"samples_per_class": [50, 2.5, 8, 3]}, "samples_per_class"),
    ({"samples_per_class": []}, "samples_per_class"),
    ({"samples_per_class": [50, 20, 8]}, "samples_per_class has 3 classes but logits have 4"),
    ({"logits": GOOD_LOGITS[0]}, "logits must be a 2-D"),
    ({"logits": GOOD_LOGITS.long()}, "logits must be a 2-D floating"),
]
BAD_LABELS = [
    ({"labels": GOOD_LABELS.float()}, "labels must be a 1-D integer"),
    ({"labels": GOOD_LABELS[:5]}, "same batch size"),
    ({"labels": GOOD_LABELS + 1}, r"labels must lie in \[0, 4\)"),
]
BAD_TAU = [
    ({"tau": -0.1}, "tau must be a finite number >= 0"),
    ({"tau": NAN}, "tau"),
    ({"tau": INF}, "tau"),
    ({"tau": True}, "tau"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_COMMON + BAD_LABELS)
def test_balanced_softmax_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        call("balanced", **kwargs)


@pytest.mark.parametrize(("kwargs", "match"), BAD_COMMON + BAD_LABELS + BAD_TAU)
def test_logit_adjusted_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        call("adjusted", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples_per_class": [50, 20, 8]}, "samples_per_class has 3 classes but logits have 4"),
        ({"samples_per_class": [0, 1, 2, 3]}, "samples_per_class"),
        ({"logits": GOOD_LOGITS.long()}, "logits must be a floating"),
        *BAD_TAU,
    ],
)
def test_posthoc_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        call("posthoc", **kwargs)


BAD_LDAM = [
    ({"max_margin": 0.0}, "max_margin must be a finite number > 0"),
    ({"max_margin": -0.5}, "max_margin"),
    ({"max_margin": NAN}, "max_margin"),
    ({"max_margin": INF}, "max_margin"),
    ({"scale": 0.0}, "scale must be a finite number > 0"),
    ({"scale": INF}, "scale"),
    ({"scale": "30"}, "scale"),
    ({"weights": torch.ones(3)}, r"weights must be a real tensor of shape \(4,\)"),
    ({"weights": torch.ones(4, 1)}, r"weights must be a real tensor of shape \(4,\)"),
    ({"weights": torch.tensor([1.0, -1.0, 1.0, 1.0])}, "weights must be finite and >= 0"),
    ({"weights": torch.tensor([1.0, NAN, 1.0, 1.0])}, "weights must be finite"),
    ({"weights": torch.tensor([1.0, INF, 1.0, 1.0])}, "weights must be finite"),
    ({"weights": torch.zeros(4)}, "at least one > 0"),
    ({"weights": ["a", "b", "c", "d"]}, "weights"),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_COMMON + BAD_LABELS + BAD_LDAM)
def test_ldam_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        call("ldam", **kwargs)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BalancedSoftmaxLoss([3, 0]), "samples_per_class"),
        (lambda: LogitAdjustedLoss(COUNTS, tau=-1.0), "tau"),
        (lambda: LogitAdjustedLoss([], tau=1.0), "samples_per_class"),
        (lambda: LDAMLoss(COUNTS, max_margin=0.0), "max_margin"),
        (lambda: LDAMLoss(COUNTS, scale=-30.0), "scale"),
        (lambda: LDAMLoss(COUNTS, weights=torch.ones(3)), "weights"),
        (lambda: LDAMLoss(COUNTS, weights=[1.0, -1.0, 1.0, 1.0]), "weights"),
    ],
)
def test_modules_validate_once_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", MODULES)
def test_modules_check_the_number_of_classes_and_labels(name):
    module = MODULES[name]()
    with pytest.raises(ValueError, match="samples_per_class with 4"):
        module(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must be a 1-D integer"):
        module(torch.zeros(2, 4), torch.zeros(2, 4))

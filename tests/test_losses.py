"""Class-balanced softmax, sigmoid and focal losses (Sec. 4) with the official reductions."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from cbnotes.effective import class_balanced_weights
from cbnotes.losses import (
    LOSS_TYPES,
    ClassBalancedLoss,
    class_balanced_loss,
    class_balanced_loss_from_weights,
    focal_modulator,
    prior_bias,
)

COUNTS = [50, 20, 8, 3]  # a small long-tailed training set
GAMMAS = (0.0, 0.5, 1.0, 2.0)


def batch(seed: int = 0, size: int = 6, dtype: torch.dtype = torch.float32):
    """Random logits (size, 4) and labels covering every class."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(size, len(COUNTS), generator=gen, dtype=dtype)
    labels = torch.arange(size) % len(COUNTS)
    return logits, labels


# --- Hand-computed values ---------------------------------------------------------------------

LN43, LN2, LN3 = math.log(4 / 3), math.log(2), math.log(3)


def test_two_class_values_by_hand():
    # z = [ln 3, 0]: softmax p_0 = 3/4, σ(ln 3) = 3/4, σ(0) = 1/2; α = (0.5, 1.5).
    logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    w = torch.tensor([0.5, 1.5])
    loss = lambda kind, gamma=1.0: float(
        class_balanced_loss_from_weights(logits, labels, w, kind, gamma)
    )
    assert loss("softmax") == pytest.approx((0.5 * LN43 + 1.5 * LN2) / 2)
    assert loss("sigmoid") == pytest.approx((0.5 * (LN43 + LN2) + 1.5 * 2 * LN2) / 2)
    # focal γ = 2: (1 - p_t)^2 is 1/16 for p_t = 3/4 and 1/4 for p_t = 1/2
    focal = (0.5 * (LN43 / 16 + LN2 / 4) + 1.5 * 2 * LN2 / 4) / 2
    assert loss("focal", 2.0) == pytest.approx(focal)


def test_three_class_uniform_logits_by_hand():
    logits = torch.zeros(1, 3)
    labels = torch.tensor([2])
    w = torch.tensor([0.25, 0.75, 2.0])
    f = lambda kind, gamma=1.0: float(
        class_balanced_loss_from_weights(logits, labels, w, kind, gamma)
    )
    assert f("softmax") == pytest.approx(2.0 * LN3)
    assert f("sigmoid") == pytest.approx(2.0 * 3 * LN2)
    assert f("focal", 1.0) == pytest.approx(2.0 * 3 * 0.5 * LN2)
    assert f("focal", 0.5) == pytest.approx(2.0 * 3 * math.sqrt(0.5) * LN2)


# --- Against PyTorch / torchvision references -------------------------------------------------


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_softmax_is_batch_mean_of_weighted_cross_entropy(beta):
    logits, labels = batch()
    alpha = class_balanced_weights(COUNTS, beta)
    reference = (alpha[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()
    got = class_balanced_loss(logits, labels, COUNTS, "softmax", beta)
    torch.testing.assert_close(got, reference)


def test_softmax_is_not_pytorch_weighted_cross_entropy():
    # All samples from the head class: PyTorch divides by Σ_b α_{y_b} = B·α_0 and so returns the
    # plain mean CE, while the paper's reduction divides by B and keeps the factor α_0.
    logits, _ = batch()
    labels = torch.zeros(6, dtype=torch.long)
    alpha = class_balanced_weights(COUNTS, 0.999)
    ours = class_balanced_loss(logits, labels, COUNTS, "softmax", 0.999)
    pytorch = F.cross_entropy(logits, labels, weight=alpha)
    torch.testing.assert_close(pytorch, F.cross_entropy(logits, labels))
    torch.testing.assert_close(ours, alpha[0] * pytorch)
    assert not torch.allclose(ours, pytorch, rtol=1e-2)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("beta", [0.0, 0.99, 0.9999])
def test_focal_matches_torchvision_weighted_per_row(gamma, beta):
    logits, labels = batch(seed=1, size=8)
    alpha = class_balanced_weights(COUNTS, beta)
    targets = F.one_hot(labels, len(COUNTS)).float()
    terms = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=gamma, reduction="none")
    reference = (alpha[labels, None] * terms).sum() / len(labels)
    got = class_balanced_loss(logits, labels, COUNTS, "focal", beta, gamma)
    torch.testing.assert_close(got, reference)


def test_sigmoid_is_focal_with_gamma_zero_and_matches_torchvision():
    logits, labels = batch(seed=2, size=8)
    alpha = class_balanced_weights(COUNTS, 0.999)
    targets = F.one_hot(labels, len(COUNTS)).float()
    terms = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0, reduction="none")
    reference = (alpha[labels, None] * terms).sum() / len(labels)
    sigmoid = class_balanced_loss(logits, labels, COUNTS, "sigmoid", 0.999)
    torch.testing.assert_close(sigmoid, reference)
    focal0 = class_balanced_loss(logits, labels, COUNTS, "focal", 0.999, gamma=0.0)
    torch.testing.assert_close(focal0, sigmoid)


def test_beta_zero_gives_the_plain_losses():
    logits, labels = batch(seed=3)
    targets = F.one_hot(labels, len(COUNTS)).float()
    plain = {
        "softmax": F.cross_entropy(logits, labels),
        "sigmoid": F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 6,
        "focal": sigmoid_focal_loss(logits, targets, alpha=-1, gamma=1.0, reduction="sum") / 6,
    }
    for kind in LOSS_TYPES:
        torch.testing.assert_close(
            class_balanced_loss(logits, labels, COUNTS, kind, 0.0), plain[kind]
        )
        module = ClassBalancedLoss.unweighted(len(COUNTS), kind)
        torch.testing.assert_close(module(logits, labels), plain[kind])


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int64])
def test_any_integer_label_dtype_is_accepted(dtype):
    logits, labels = batch(seed=8)
    for kind in LOSS_TYPES:
        expected = class_balanced_loss(logits, labels, COUNTS, kind, 0.99)
        got = class_balanced_loss(logits, labels.to(dtype), COUNTS, kind, 0.99)
        torch.testing.assert_close(got, expected)


def test_tail_samples_weigh_more_than_head_samples():
    logits = torch.zeros(1, 4)
    head = class_balanced_loss(logits, torch.tensor([0]), COUNTS, "softmax", 0.99)
    tail = class_balanced_loss(logits, torch.tensor([3]), COUNTS, "softmax", 0.99)
    assert tail > head


@pytest.mark.parametrize(
    ("kind", "gamma"),
    [("softmax", 1.0), ("sigmoid", 1.0)] + [("focal", g) for g in (0.5, 1.0, 2.0)],
)
def test_gradcheck_in_float64(kind, gamma):
    logits, labels = batch(seed=4, size=5, dtype=torch.float64)
    logits.requires_grad_(True)
    w = class_balanced_weights(COUNTS, 0.99).double()
    fn = lambda z: class_balanced_loss_from_weights(z, labels, w, kind, gamma)
    assert torch.autograd.gradcheck(fn, (logits,))
    assert fn(logits).dtype == torch.float64


# --- The stable focal modulator ---------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
def test_stable_modulator_equals_one_minus_p_t_to_the_gamma(gamma):
    z = torch.linspace(-12, 12, 97, dtype=torch.float64).repeat(2, 1)
    t = torch.stack([torch.zeros(97), torch.ones(97)]).double()
    p = torch.sigmoid(z)
    p_t = t * p + (1 - t) * (1 - p)
    torch.testing.assert_close(focal_modulator(z, t, gamma), (1 - p_t) ** gamma)


def test_naive_modulator_has_nan_gradient_where_the_stable_one_is_finite():
    z = torch.tensor([40.0], requires_grad=True)  # σ(40) rounds to 1 in float32: 1 - p_t = 0
    t = torch.ones(1)
    naive = (1 - torch.sigmoid(z)) ** 0.5
    (grad_naive,) = torch.autograd.grad(naive.sum(), z)
    stable = focal_modulator(z, t, 0.5)
    (grad_stable,) = torch.autograd.grad(stable.sum(), z)
    assert not torch.isfinite(grad_naive).all()
    assert torch.isfinite(grad_stable).all()


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_finite_loss_and_gradients_for_extreme_logits(kind, gamma):
    values = torch.tensor([-1e4, 1e4, 0.0, -30.0, 30.0])
    logits = values[torch.randint(0, 5, (16, 4), generator=torch.Generator().manual_seed(5))]
    logits[:4, :] = torch.tensor([[-1e4, 1e4, -1e4, 1e4]])
    labels = torch.arange(16) % 4
    logits.requires_grad_(True)
    loss = class_balanced_loss(logits, labels, COUNTS, kind, 0.9999, gamma)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


# --- Precision, autocast, devices ---------------------------------------------------------------


@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_cpu_bf16_autocast_computes_the_loss_in_float32(kind):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, 5, generator=gen)
    layer = torch.nn.Linear(5, 4)
    labels = torch.arange(8) % 4
    loss_fn = ClassBalancedLoss(COUNTS, kind, 0.999, gamma=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, labels)
        functional = class_balanced_loss(logits, labels, COUNTS, kind, 0.999, 0.5)
    assert loss.dtype == torch.float32
    assert functional.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(logits.float(), labels))  # same logits, fp32 math
    torch.testing.assert_close(loss, loss_fn(layer(x), labels), rtol=2e-2, atol=2e-2)


def test_module_buffer_follows_dtype_and_device_and_is_saved():
    module = ClassBalancedLoss(COUNTS, "focal", 0.99, gamma=2.0)
    assert module.weights.dtype == torch.float32
    torch.testing.assert_close(module.weights, class_balanced_weights(COUNTS, 0.99))
    assert "weights" in module.state_dict()
    torch.testing.assert_close(module.state_dict()["weights"], module.weights)
    assert module.to(torch.float64).weights.dtype == torch.float64
    assert module.to("meta").weights.device.type == "meta"
    fresh = ClassBalancedLoss(COUNTS, "focal", 0.99, gamma=2.0)
    fresh.load_state_dict(ClassBalancedLoss(COUNTS, "focal", 0.99, gamma=2.0).state_dict())


def test_module_equals_the_function():
    logits, labels = batch(seed=7)
    for kind in LOSS_TYPES:
        module = ClassBalancedLoss(COUNTS, kind, 0.999, gamma=0.5)
        expected = class_balanced_loss(logits, labels, COUNTS, kind, 0.999, 0.5)
        torch.testing.assert_close(module(logits, labels), expected)


def test_module_repr_names_its_settings():
    text = repr(ClassBalancedLoss(COUNTS, "focal", 0.999, gamma=0.5))
    for part in ("focal", "beta=0.999", "gamma=0.5", "num_classes=4"):
        assert part in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_weights_and_logits_on_different_devices():
    logits, labels = batch()
    w = class_balanced_weights(COUNTS, 0.99)
    expected = class_balanced_loss_from_weights(logits, labels, w, "focal", 1.0)
    got = class_balanced_loss_from_weights(logits.cuda(), labels.cuda(), w, "focal", 1.0)
    torch.testing.assert_close(got.cpu(), expected)
    module = ClassBalancedLoss(COUNTS, "focal", 0.99).cuda()
    assert module.weights.is_cuda
    torch.testing.assert_close(module(logits.cuda(), labels.cuda()).cpu(), expected)


# --- Prior bias -------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_prior_bias_makes_every_sigmoid_output_the_prior(num_classes):
    b = prior_bias(num_classes)
    assert b == pytest.approx(-math.log(num_classes - 1))
    assert torch.sigmoid(torch.tensor(b, dtype=torch.float64)) == pytest.approx(1 / num_classes)


# --- Validation -------------------------------------------------------------------------------

GOOD_LOGITS, GOOD_LABELS = batch()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 1.0}, r"beta must be a number in \[0, 1\)"),
        ({"beta": -0.1}, "beta"),
        ({"gamma": -1.0}, "gamma must be a finite number >= 0"),
        ({"gamma": float("nan")}, "gamma"),
        ({"gamma": float("inf")}, "gamma"),
        ({"samples_per_class": [50, 0, 8, 3]}, "samples_per_class"),
        ({"samples_per_class": [50, -1, 8, 3]}, "samples_per_class"),
        ({"samples_per_class": [50, 2.5, 8, 3]}, "samples_per_class"),
        ({"samples_per_class": [50, float("nan"), 8, 3]}, "samples_per_class"),
        ({"samples_per_class": []}, "samples_per_class"),
        ({"samples_per_class": [50, 20, 8]}, "samples_per_class has 3 classes but logits have 4"),
        ({"logits": GOOD_LOGITS[0]}, "logits must be a 2-D"),
        ({"logits": GOOD_LOGITS[None]}, "logits must be a 2-D"),
        ({"labels": GOOD_LABELS[:, None]}, "labels must be a 1-D integer"),
        ({"labels": GOOD_LABELS.float()}, "labels must be a 1-D integer"),
        ({"labels": GOOD_LABELS[:5]}, "same batch size"),
        ({"labels": GOOD_LABELS - 1}, r"labels must lie in \[0, 4\)"),
        ({"labels": GOOD_LABELS + 1}, r"labels must lie in \[0, 4\)"),
        ({"loss_type": "bce"}, "loss_type must be one of 'softmax', 'sigmoid', 'focal'"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, match):
    args = {
        "logits": GOOD_LOGITS,
        "labels": GOOD_LABELS,
        "samples_per_class": COUNTS,
        "loss_type": "focal",
        "beta": 0.99,
        "gamma": 1.0,
    } | kwargs
    with pytest.raises(ValueError, match=match):
        class_balanced_loss(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples_per_class": [3, 0]}, "samples_per_class"),
        ({"beta": 1.5}, "beta"),
        ({"gamma": -0.5}, "gamma"),
        ({"loss_type": "Softmax"}, "loss_type"),
    ],
)
def test_module_validates_once_at_construction(kwargs, match):
    args = {"samples_per_class": COUNTS} | kwargs
    with pytest.raises(ValueError, match=match):
        ClassBalancedLoss(**args)


def test_module_rejects_logits_with_the_wrong_number_of_classes():
    module = ClassBalancedLoss(COUNTS)
    with pytest.raises(ValueError, match="samples_per_class with 4"):
        module(torch.zeros(2, 5), torch.tensor([0, 1]))


def test_functional_rejects_weights_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"weights must be a tensor of shape \(4,\)"):
        class_balanced_loss_from_weights(GOOD_LOGITS, GOOD_LABELS, torch.ones(3))


@pytest.mark.parametrize("num_classes", [1, 0, 2.0, True])
def test_prior_bias_rejects_fewer_than_two_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        prior_bias(num_classes)

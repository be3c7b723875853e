"""Class-balanced softmax, sigmoid and focal losses (Sec. 4) with the official reductions."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from cbnotes.effective import WEIGHT_SCHEMES, class_balanced_weights, class_weights
from cbnotes.losses import (
    LOSS_TYPES,
    ClassBalancedLoss,
    _FocalLoss,
    _weighted_loss,
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


@pytest.mark.parametrize("bad", [4, -1, -100])  # -100 is F.cross_entropy's ignore_index
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("entry", ["function", "from_weights", "module", "no_grad"])
def test_a_label_out_of_range_is_named_on_every_path(entry, loss_type, bad):
    """Sigmoid and focal check the range where the labels index the weights (no extra pass),
    softmax before F.cross_entropy, which would skip -100; every path raises the same error,
    without the IndexError it replaces."""
    labels = GOOD_LABELS.clone()
    labels[3] = bad
    logits = GOOD_LOGITS.clone().requires_grad_(entry != "no_grad")
    weights = class_balanced_weights(COUNTS, 0.99)
    calls = {
        "function": lambda: class_balanced_loss(logits, labels, COUNTS, loss_type, 0.99, 1.0),
        "from_weights": lambda: class_balanced_loss_from_weights(
            logits, labels, weights, loss_type, 1.0
        ),
        "module": lambda: ClassBalancedLoss(COUNTS, loss_type, 0.99, 1.0)(logits, labels),
        "no_grad": lambda: ClassBalancedLoss(COUNTS, loss_type, 0.99, 1.0)(logits, labels),
    }
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\).*got {bad}\.") as error:
        calls[entry]()
    assert error.value.__suppress_context__


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


# --- Other weighting schemes and γ = None -------------------------------------------------------


@pytest.mark.parametrize("scheme", WEIGHT_SCHEMES)
@pytest.mark.parametrize("kind", LOSS_TYPES)
def test_scheme_chooses_the_weights(kind, scheme):
    logits, labels = batch(seed=20)
    w = class_weights(COUNTS, scheme, 0.99)
    expected = class_balanced_loss_from_weights(logits, labels, w, kind, 0.5)
    got = class_balanced_loss(logits, labels, COUNTS, kind, 0.99, 0.5, scheme=scheme)
    torch.testing.assert_close(got, expected)
    module = ClassBalancedLoss(COUNTS, kind, 0.99, 0.5, scheme=scheme)
    assert torch.equal(module.weights, w)
    torch.testing.assert_close(module(logits, labels), expected)


def test_softmax_with_inverse_frequency_weights_is_one_call():
    logits, labels = batch(seed=21)
    inverse = 1 / torch.tensor(COUNTS, dtype=torch.float64)
    alpha = (inverse / inverse.sum() * 4).float()
    reference = (alpha[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()
    got = class_balanced_loss(logits, labels, COUNTS, "softmax", scheme="inverse")
    torch.testing.assert_close(got, reference)


def test_none_scheme_is_the_plain_loss():
    logits, labels = batch(seed=22)
    for kind in LOSS_TYPES:
        torch.testing.assert_close(
            class_balanced_loss(logits, labels, COUNTS, kind, scheme="none"),
            class_balanced_loss(logits, labels, COUNTS, kind, 0.0),
        )


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_gamma_none_is_accepted_where_gamma_is_unused(kind):
    logits, labels = batch(seed=23)
    expected = class_balanced_loss(logits, labels, COUNTS, kind, 0.99, 1.0)
    module = ClassBalancedLoss(COUNTS, kind, 0.99, gamma=None)
    assert module.gamma is None
    torch.testing.assert_close(module(logits, labels), expected)
    torch.testing.assert_close(
        class_balanced_loss(logits, labels, COUNTS, kind, 0.99, None), expected
    )
    unweighted = ClassBalancedLoss.unweighted(4, kind, gamma=None)
    torch.testing.assert_close(
        unweighted(logits, labels), class_balanced_loss(logits, labels, COUNTS, kind, 0.0)
    )


def test_gamma_none_for_focal_says_focal_needs_gamma():
    with pytest.raises(ValueError, match=r"gamma.*got None for loss_type=.focal., which needs γ"):
        ClassBalancedLoss(COUNTS, "focal", 0.99, gamma=None)
    with pytest.raises(ValueError, match="gamma"):
        class_balanced_loss(GOOD_LOGITS, GOOD_LABELS, COUNTS, "focal", 0.99, None)


def test_repr_shows_the_scheme_and_beta_only_where_used():
    text = repr(ClassBalancedLoss(COUNTS, "softmax", 0.999))
    assert "scheme='effective', beta=0.999" in text
    text = repr(ClassBalancedLoss(COUNTS, "sigmoid", gamma=None, scheme="sqrt_inverse"))
    assert "scheme='sqrt_inverse'" in text
    assert "beta" not in text
    assert "gamma" not in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "inv"}, "scheme must be one of"),
        ({"scheme": "effective", "beta": 1.0}, "beta"),
    ],
)
def test_bad_scheme_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_balanced_loss(GOOD_LOGITS, GOOD_LABELS, COUNTS, "softmax", **kwargs)
    with pytest.raises(ValueError, match=match):
        ClassBalancedLoss(COUNTS, "softmax", **kwargs)


def test_other_schemes_ignore_beta():
    module = ClassBalancedLoss(COUNTS, "softmax", beta=2.0, scheme="inverse")
    assert torch.equal(module.weights, class_weights(COUNTS, "inverse"))


# --- The state-dict check ---------------------------------------------------------------------


def test_loading_weights_of_another_configuration_raises_naming_both():
    target = ClassBalancedLoss(COUNTS, "softmax", 0.9999)
    state = ClassBalancedLoss(COUNTS, "softmax", 0.0).state_dict()
    with pytest.raises(ValueError, match=r"beta=0\.0.*this module is .*beta=0\.9999") as err:
        target.load_state_dict(state)
    assert "scheme='effective'" in str(err.value)
    torch.testing.assert_close(target.weights, class_balanced_weights(COUNTS, 0.9999))  # unchanged


def test_state_dict_check_survives_saving_and_nesting(tmp_path):
    saved = torch.nn.Sequential(ClassBalancedLoss(COUNTS, "focal", 0.99, 2.0, scheme="inverse"))
    torch.save(saved.state_dict(), tmp_path / "loss.pt")
    state = torch.load(tmp_path / "loss.pt")
    target = torch.nn.Sequential(ClassBalancedLoss(COUNTS, "focal", 0.99, 2.0))
    with pytest.raises(ValueError, match=r"state_dict\['0.weights'\].*scheme='inverse'"):
        target.load_state_dict(state)
    # a plain dict has lost the metadata: the mismatch is still caught
    with pytest.raises(ValueError, match="a configuration the state dict does not record"):
        target.load_state_dict(dict(state))


def test_loading_the_same_configuration_works_in_any_float_dtype():
    module = ClassBalancedLoss(COUNTS, "sigmoid", 0.999, scheme="effective")
    module.load_state_dict(ClassBalancedLoss(COUNTS, "sigmoid", 0.999).state_dict())
    module.load_state_dict(ClassBalancedLoss(COUNTS, "focal", 0.999).state_dict())  # same weights
    module.load_state_dict(ClassBalancedLoss(COUNTS, "sigmoid", 0.999).double().state_dict())
    module.load_state_dict(ClassBalancedLoss(COUNTS, "sigmoid", 0.999).bfloat16().state_dict())
    module.load_state_dict({}, strict=False)


# --- Multi-label targets ----------------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
def test_one_hot_float_targets_give_exactly_the_integer_label_sigmoid_loss(gamma):
    logits, labels = batch(seed=24, size=8)
    targets = F.one_hot(labels, 4).float()
    module = ClassBalancedLoss(COUNTS, "sigmoid", 0.999, gamma)
    assert torch.equal(module(logits, targets), module(logits, labels))
    assert torch.equal(
        class_balanced_loss(logits, targets, COUNTS, "sigmoid", 0.999, gamma),
        class_balanced_loss(logits, labels, COUNTS, "sigmoid", 0.999, gamma),
    )


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0, 2.0])
def test_one_hot_float_targets_give_the_integer_label_focal_loss_and_gradient(gamma):
    """Focal takes another form for integer labels (fewer operations), equal to rounding."""
    z, labels = random_case(24, 3.0, multi_hot=False)
    targets = F.one_hot(labels, 100).float()
    module = ClassBalancedLoss(COUNTS * 25, "focal", 0.999, gamma)
    results = []
    for given in (labels, targets):
        logits = z.clone().requires_grad_(True)
        loss = module(logits, given)
        results.append((loss.detach(), *torch.autograd.grad(loss, logits)))
    (loss, grad), (loss_t, grad_t) = (r[:2] for r in results)
    torch.testing.assert_close(loss_t, loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_t, grad, rtol=1e-5, atol=1e-6 * float(grad.abs().max()))


def test_multi_hot_rows_by_hand():
    # z = 0: every BCE term is log 2 and the focal modulator (1-p_t)^γ is 1/2 for γ = 1.
    # Row weights: (α_0 + α_2)/2 = 1.25, 1 for the empty row, (0.5·α_0 + α_2)/1.5 = 1.5.
    w = torch.tensor([0.5, 1.5, 2.0])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.0, 1.0]])
    logits = torch.zeros(3, 3)
    sig = class_balanced_loss_from_weights(logits, targets, w, "sigmoid")
    assert float(sig) == pytest.approx((1.25 + 1.0 + 1.5) * 3 * LN2 / 3)
    focal = class_balanced_loss_from_weights(logits[:2], targets[:2], w, "focal", 1.0)
    assert float(focal) == pytest.approx((1.25 + 1.0) * 3 * 0.5 * LN2 / 2)


def test_multi_hot_against_torchvision_per_row():
    gen = torch.Generator().manual_seed(25)
    logits = 3 * torch.randn(8, 4, generator=gen)
    targets = (torch.rand(8, 4, generator=gen) < 0.4).float()
    targets[0] = 0.0  # a row with no positive label
    alpha = class_balanced_weights(COUNTS, 0.99)
    row = torch.where(targets.sum(1) > 0, (targets * alpha).sum(1) / targets.sum(1), 1.0)
    assert float(row[0]) == 1.0
    for gamma in (0.5, 2.0):
        terms = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=gamma, reduction="none")
        reference = (row[:, None] * terms).sum() / 8
        got = ClassBalancedLoss(COUNTS, "focal", 0.99, gamma)(logits, targets)
        torch.testing.assert_close(got, reference)


def test_a_row_without_positives_gets_the_mean_weight_one():
    logits = torch.randn(1, 4, generator=torch.Generator().manual_seed(26))
    empty = torch.zeros(1, 4)
    weighted = class_balanced_loss(logits, empty, COUNTS, "sigmoid", 0.9999)
    plain = class_balanced_loss(logits, empty, COUNTS, "sigmoid", 0.0)
    torch.testing.assert_close(weighted, plain)


def test_multi_hot_gradcheck_and_extremes():
    gen = torch.Generator().manual_seed(27)
    logits = 3 * torch.randn(5, 4, generator=gen, dtype=torch.float64)
    targets = (torch.rand(5, 4, generator=gen) < 0.5).double()
    w = class_balanced_weights(COUNTS, 0.99).double()
    for kind in ("sigmoid", "focal"):
        fn = lambda z, k=kind: class_balanced_loss_from_weights(z, targets, w, k, 0.5)
        assert torch.autograd.gradcheck(fn, (logits.requires_grad_(True),))
    extreme = torch.tensor([[-1e4, 1e4, -1e4, 1e4]]).repeat(4, 1).requires_grad_(True)
    hot = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    loss = ClassBalancedLoss(COUNTS, "focal", 0.9999, 0.5)(extreme, hot)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(extreme.grad).all()


def test_multi_hot_under_bf16_autocast_is_float32():
    layer = torch.nn.Linear(5, 4)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(28))
    targets = (torch.arange(32).reshape(8, 4) % 3 == 0).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        loss = ClassBalancedLoss(COUNTS, "focal", 0.99, 1.0)(logits, targets)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize(
    ("targets", "kind", "match"),
    [
        (torch.ones(6, 4), "softmax", "Use sigmoid or focal for multi-label"),
        (torch.ones(6, 5), "sigmoid", r"must have the shape of logits \(6, 4\)"),
        (torch.full((6, 4), 2.0), "focal", r"must lie in \[0, 1\]"),
        (torch.full((6, 4), -0.5), "sigmoid", r"must lie in \[0, 1\]"),
        (torch.full((6, 4), float("nan")), "sigmoid", r"must lie in \[0, 1\]"),
        (torch.ones(6, 4, dtype=torch.long), "sigmoid", "labels must be a 1-D integer"),
    ],
)
def test_bad_multi_hot_targets_raise_value_error(targets, kind, match):
    with pytest.raises(ValueError, match=match):
        class_balanced_loss(GOOD_LOGITS, targets, COUNTS, kind, 0.99)
    with pytest.raises(ValueError, match=match):
        ClassBalancedLoss(COUNTS, kind, 0.99)(GOOD_LOGITS, targets)


# --- The closed-form focal gradient -------------------------------------------------------------

FOCAL_GAMMAS = (0.1, 0.5, 0.9, 1.0, 2.0, 5.0)


def accurate_focal(z: torch.Tensor, targets: torch.Tensor, alpha: torch.Tensor, gamma: float):
    """Independent float64 CB focal loss for binary targets via the signed logit x = ±z.

    -log p^t = softplus(-x), (1-p^t)^γ = exp(-γ·softplus(x)); softplus(v) is log1p(exp(v)),
    so tiny terms keep their digits, up to v = 30, where v itself is exact to 1e-14.
    """
    z = z.detach().double().requires_grad_(True)
    x = (2 * targets.double() - 1) * z
    terms = torch.exp(-gamma * F.softplus(x, threshold=30)) * F.softplus(-x, threshold=30)
    loss = (alpha.double()[:, None] * terms).sum() / z.shape[0]
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def loss_and_grad(z: torch.Tensor, labels: torch.Tensor, gamma: float, reference: bool):
    """CB focal loss (β = 0.999) and its gradient, by the closed form or the reference."""
    z = z.detach().clone().requires_grad_(True)
    w = class_balanced_weights(COUNTS * 25, 0.999)
    loss = _weighted_loss(z, labels, w, "focal", gamma, reference=reference)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


def random_case(seed: int, scale: float, multi_hot: bool, dtype=torch.float32):
    """Logits (128, 100) and integer labels or multi-hot targets."""
    gen = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(128, 100, generator=gen, dtype=dtype)
    if multi_hot:
        return z, (torch.rand(128, 100, generator=gen) < 0.05).to(dtype)
    return z, torch.randint(0, 100, (128,), generator=gen)


def test_focal_uses_the_closed_form_gradient():
    logits, labels = batch(seed=30)
    loss = ClassBalancedLoss(COUNTS, "focal", 0.999, 1.0)(logits.requires_grad_(True), labels)
    assert "_FocalLoss" in type(loss.grad_fn).__name__
    sigmoid = ClassBalancedLoss(COUNTS, "focal", 0.999, 0.0)(logits, labels)  # γ = 0: plain BCE
    assert "_FocalLoss" not in type(sigmoid.grad_fn).__name__


@pytest.mark.parametrize("multi_hot", [False, True])
@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0, 2.0])
def test_closed_form_equals_the_reference_in_float32(gamma, multi_hot):
    z, labels = random_case(31, 3.0, multi_hot)
    loss, grad = loss_and_grad(z, labels, gamma, reference=False)
    ref_loss, ref_grad = loss_and_grad(z, labels, gamma, reference=True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6 * float(ref_grad.abs().max()))


@pytest.mark.parametrize("scale", [1.0, 3.0, 10.0, 30.0])
@pytest.mark.parametrize("gamma", FOCAL_GAMMAS)
def test_closed_form_against_an_accurate_float64_reference(gamma, scale):
    z, labels = random_case(32, scale, multi_hot=False, dtype=torch.float64)
    targets = F.one_hot(labels, 100)
    alpha = class_balanced_weights(COUNTS * 25, 0.999)[labels]
    ref_loss, ref_grad = accurate_focal(z, targets, alpha, gamma)
    loss, grad = loss_and_grad(z, labels, gamma, reference=False)
    # float64: every element, including the tiny ones, to 1e-12 relative
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-300)
    # float32: to 1e-6 of the largest gradient (the reference path reaches 3.5e-6 at γ = 5)
    loss32, grad32 = loss_and_grad(z.float(), labels, gamma, reference=False)
    torch.testing.assert_close(loss32.double(), ref_loss, rtol=1e-6, atol=0)
    tol = 1e-6 * float(ref_grad.abs().max())
    torch.testing.assert_close(grad32.double(), ref_grad, rtol=1e-6, atol=tol)


EXTREMES = [-1e4, -1e3, -100.0, -88.0, -30.0, -17.0, -1.0, 0.0, 1.0, 17.0, 30.0, 88.0, 100.0, 1e3]
EXTREMES += [1e4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, *FOCAL_GAMMAS])
def test_closed_form_is_finite_and_matches_the_reference_limit_at_extremes(gamma, dtype):
    # Every logit value against both targets; for γ < 1 the derivative of (1-p)^γ at p = 1 is
    # infinite, but the term's gradient m·(...) tends to 0, as the reference's autograd gives.
    values = torch.tensor(EXTREMES, dtype=dtype)
    z = torch.cat([values, values, torch.linspace(-1e4, 1e4, 101, dtype=dtype)]).reshape(-1, 1)
    z = z.repeat(1, 2)  # column 0 is the target of every row, column 1 a negative
    labels = torch.zeros(len(z), dtype=torch.long)
    loss, grad = loss_and_grad(z, labels, gamma, reference=False)
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    ref_loss, ref_grad = loss_and_grad(z, labels, gamma, reference=True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    # In float32 the reference itself is off by up to 4e-6 at z = -17 (its exponent
    # -γ·t·z - γ·softplus(-z) cancels); the exact values below hold the closed form to 1e-6.
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6 * float(ref_grad.abs().max()))
    if gamma > 0:  # (γ = 0 is PyTorch's BCE, whose gradient σ(z) - t cancels)
        alpha = class_balanced_weights(COUNTS * 25, 0.999)[labels]
        exact_loss, exact_grad = accurate_focal(z, F.one_hot(labels, 2), alpha, gamma)
        rtol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(loss.double(), exact_loss, rtol=rtol, atol=0)
        tiny = torch.finfo(dtype).tiny  # float32 flushes the smallest terms to zero
        torch.testing.assert_close(grad.double(), exact_grad, rtol=rtol, atol=tiny)
    # p^t rounds to 1 in both columns (target logit +v, the other -v): no loss, no gradient
    sure = torch.tensor([[1e3, -1e3], [1e4, -1e4]], dtype=dtype)
    loss, grad = loss_and_grad(sure, torch.zeros(2, dtype=torch.long), gamma, reference=False)
    assert float(loss) == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.5])
def test_closed_form_gradcheck_and_gradgradcheck_in_float64(gamma):
    gen = torch.Generator().manual_seed(33)
    z = (3 * torch.randn(4, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)
    soft = torch.rand(4, 5, generator=gen, dtype=torch.float64).requires_grad_(True)
    alpha = (torch.rand(4, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    fn = lambda a, t, r: _FocalLoss.apply(a, t, r, gamma)
    assert torch.autograd.gradcheck(fn, (z, soft, alpha))
    assert torch.autograd.gradgradcheck(fn, (z, soft, alpha))


def test_closed_form_with_soft_targets_equals_the_reference_formula():
    gen = torch.Generator().manual_seed(34)
    z = 3 * torch.randn(6, 4, generator=gen, dtype=torch.float64)
    soft = torch.rand(6, 4, generator=gen, dtype=torch.float64)
    w = class_balanced_weights(COUNTS, 0.99).double()
    for gamma in (0.5, 2.0):
        torch.testing.assert_close(
            _weighted_loss(z, soft, w, "focal", gamma),
            _weighted_loss(z, soft, w, "focal", gamma, reference=True),
        )


@pytest.mark.parametrize("multi_hot", [False, True])
def test_focal_without_gradient_gives_the_same_value(multi_hot):
    z, labels = random_case(35, 3.0, multi_hot)
    module = ClassBalancedLoss(COUNTS * 25, "focal", 0.999, 0.5)
    with_grad = module(z.clone().requires_grad_(True), labels)
    with torch.no_grad():
        assert torch.equal(module(z, labels), with_grad.detach())
    assert torch.equal(module(z, labels), with_grad.detach())  # z does not require grad


def test_focal_gradient_with_respect_to_the_weights():
    logits, labels = batch(seed=36, dtype=torch.float64)
    w = class_balanced_weights(COUNTS, 0.99).double().requires_grad_(True)
    for targets in (labels, F.one_hot(labels, 4).double()):
        fn = lambda weights, t=targets: class_balanced_loss_from_weights(
            logits, t, weights, "focal", 0.5
        )
        assert torch.autograd.gradcheck(fn, (w,))


@pytest.mark.parametrize("gamma", [0.3, 0.5, 1.0, 2.0])  # every branch of _signed_parts
def test_integer_label_focal_gradgradcheck_in_float64(gamma):
    logits, labels = batch(seed=37, size=5, dtype=torch.float64)
    w = class_balanced_weights(COUNTS, 0.99).double()
    fn = lambda z: class_balanced_loss_from_weights(z, labels, w, "focal", gamma)
    assert torch.autograd.gradgradcheck(fn, (logits.requires_grad_(True),))

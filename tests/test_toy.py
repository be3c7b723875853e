"""The 2-D long-tailed toy problem of notebook 03: data, trainer and evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cbnotes.losses import prior_bias
from cbnotes.toy import (
    TOY_COUNTS,
    class_centers,
    evaluate,
    make_blobs,
    predict_grid,
    toy_mlp,
    train_toy,
)


def test_blobs_have_the_requested_counts_per_class():
    x, y = make_blobs([300, 40, 7], seed=0)
    assert x.shape == (347, 2)
    assert x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [300, 40, 7]


def test_blobs_are_reproducible_for_a_seed_and_differ_across_seeds():
    a, b, c = (make_blobs(TOY_COUNTS, seed=s) for s in (5, 5, 6))
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_blob_means_sit_on_the_class_centres():
    x, y = make_blobs([4000] * 4, seed=1, spread=0.5, radius=3.0)
    centers = class_centers(4, radius=3.0)
    for k in range(4):
        torch.testing.assert_close(x[y == k].mean(dim=0), centers[k], atol=0.05, rtol=0)
        assert x[y == k].std(dim=0).sub(0.5).abs().max() < 0.05
    assert torch.linalg.vector_norm(centers, dim=1).sub(3.0).abs().max() < 1e-5


def test_beta_zero_training_starts_from_plain_cross_entropy_and_reduces_it():
    x, y = make_blobs(TOY_COUNTS, seed=0)
    run = train_toy(x, y, TOY_COUNTS, "softmax", beta=0.0, steps=200, seed=3)
    with torch.no_grad():
        first = F.cross_entropy(toy_mlp(3, seed=3)(x), y).item()
    assert run.losses[0] == pytest.approx(first, rel=1e-5)
    assert len(run.losses) == 200
    assert run.losses[-1] < 0.5 * run.losses[0]


@pytest.mark.parametrize("loss_type", ["sigmoid", "focal"])
def test_sigmoid_and_focal_heads_start_from_the_prior_bias(loss_type):
    x, y = make_blobs(TOY_COUNTS, seed=0)
    run = train_toy(x, y, TOY_COUNTS, loss_type, beta=0.999, steps=100, seed=0)
    model = toy_mlp(3, seed=0)
    with torch.no_grad():
        model[-1].bias.fill_(prior_bias(3))
        logits = model(x)
    # the first recorded loss is the one of the prior-initialised head
    targets = F.one_hot(y, 3).float()
    alpha = torch.tensor([0.0] * 3)
    for k, n in enumerate(TOY_COUNTS):
        alpha[k] = (1 - 0.999) / (1 - 0.999**n)
    alpha = alpha / alpha.sum() * 3
    terms = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if loss_type == "focal":
        terms = (1 - torch.where(targets == 1, logits.sigmoid(), 1 - logits.sigmoid())) * terms
    want = (alpha[y, None] * terms).sum().item() / len(y)
    assert run.losses[0] == pytest.approx(want, rel=1e-4)
    assert run.losses[-1] < run.losses[0]
    # with -log(C-1) and small initial weights every class starts near probability 1/C
    assert torch.sigmoid(logits).mean().item() == pytest.approx(1 / 3, abs=0.05)
    assert prior_bias(3) == pytest.approx(-math.log(2))


def test_class_balanced_weights_raise_tail_recall_on_a_balanced_test_set():
    tail_plain, tail_cb, mean_plain, mean_cb = [], [], [], []
    for seed in range(3):
        x, y = make_blobs(TOY_COUNTS, seed=seed)
        xt, yt = make_blobs([1000] * 3, seed=100 + seed)
        plain = evaluate(train_toy(x, y, TOY_COUNTS, beta=0.0, steps=300, seed=seed).model, xt, yt)
        cb = evaluate(train_toy(x, y, TOY_COUNTS, beta=0.9999, steps=300, seed=seed).model, xt, yt)
        tail_plain.append(plain[2].item())
        tail_cb.append(cb[2].item())
        mean_plain.append(plain.mean().item())
        mean_cb.append(cb.mean().item())
    assert sum(tail_cb) / 3 > sum(tail_plain) / 3 + 5.0  # percentage points
    assert sum(mean_cb) / 3 > sum(mean_plain) / 3


def test_evaluate_gives_per_class_accuracy_in_percent():
    model = toy_mlp(3, seed=0)
    x, y = make_blobs([50, 30, 20], seed=0)
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    want = [100.0 * (pred[y == k] == k).float().mean().item() for k in range(3)]
    torch.testing.assert_close(evaluate(model, x, y), torch.tensor(want, dtype=torch.float64))


def test_snapshots_hold_the_weights_after_the_requested_steps():
    x, y = make_blobs([60, 20], seed=0)
    run = train_toy(x, y, [60, 20], steps=30, seed=0, snapshot_steps=[10, 30])
    assert sorted(run.snapshots) == [10, 30]
    with torch.no_grad():
        torch.testing.assert_close(run.model_at(30)(x), run.model(x))
        assert not torch.allclose(run.model_at(10)(x), run.model(x))
    with pytest.raises(ValueError, match="snapshot"):
        run.model_at(20)
    with pytest.raises(ValueError, match="snapshot_steps"):
        train_toy(x, y, [60, 20], steps=5, snapshot_steps=[6])


def test_predict_grid_labels_every_grid_point():
    model = toy_mlp(3, seed=0)
    xs, ys, labels = predict_grid(model, (-1.0, 1.0), (-2.0, 2.0), resolution=17)
    assert xs.shape == (17,)
    assert ys.shape == (17,)
    assert labels.shape == (17, 17)
    with torch.no_grad():
        corner = model(torch.tensor([[1.0, -2.0]])).argmax(dim=1).item()
    assert labels[0, -1].item() == corner  # row = y index, column = x index


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_blobs([10]), "counts"),
        (lambda: make_blobs([10, 0]), "counts"),
        (lambda: make_blobs([10, 5], spread=0.0), "spread"),
        (lambda: class_centers(1), "num_classes"),
        (lambda: toy_mlp(3, hidden=0), "hidden"),
        (lambda: predict_grid(toy_mlp(2), (0, 1), (0, 1), resolution=1), "resolution"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_train_toy_rejects_bad_shapes_and_settings():
    x, y = make_blobs([20, 10], seed=0)
    with pytest.raises(ValueError, match="shape"):
        train_toy(x[:, :1], y, [20, 10])
    with pytest.raises(ValueError, match="steps"):
        train_toy(x, y, [20, 10], steps=0)
    with pytest.raises(ValueError, match="loss_type"):
        train_toy(x, y, [20, 10], loss_type="hinge", steps=1)


def test_any_registered_method_trains_on_the_toy_problem_with_its_head():
    from cbnotes.models import NormedLinear
    from cbnotes.toy import train_toy_method

    x, y = make_blobs(TOY_COUNTS, seed=0)
    ldam = train_toy_method(x, y, TOY_COUNTS, "ldam", steps=20)
    assert isinstance(ldam.model[-1], NormedLinear)
    focal = train_toy_method(x, y, TOY_COUNTS, "focal", {"gamma": 1.0}, steps=1)
    assert focal.model[-1].bias.detach().allclose(torch.full((3,), -math.log(2)), atol=0.05)
    for method in ("resample", "drw", "balanced_softmax", "logit_adjusted"):
        run = train_toy_method(x, y, TOY_COUNTS, method, steps=20)
        assert len(run.losses) == 20
        assert all(math.isfinite(v) for v in run.losses)


def test_prior_corrections_lift_the_tail_class_of_the_toy_problem():
    """Balanced Softmax, logit adjustment and post-hoc adjustment all trade head for tail."""
    from cbnotes.toy import train_toy_method

    x, y = make_blobs(TOY_COUNTS, seed=0)
    xt, yt = make_blobs((300, 300, 300), seed=1)
    plain = evaluate(train_toy_method(x, y, TOY_COUNTS, "softmax", steps=300).model, xt, yt)
    for method, tau in (("balanced_softmax", None), ("logit_adjusted", None), ("softmax", 1.0)):
        run = train_toy_method(x, y, TOY_COUNTS, method, steps=300, posthoc_tau=tau)
        adjusted = evaluate(run.model, xt, yt)
        assert adjusted[-1] > plain[-1] + 10, (method, adjusted, plain)
        assert adjusted[0] < plain[0], (method, adjusted, plain)

"""Metrics: top-1 error on the balanced test set, per-class and many/medium/few-shot accuracy."""

import json
import math

import numpy as np
import pytest
import torch

from cbnotes.metrics import (
    confusion_matrix,
    per_class_accuracy,
    shot_accuracy,
    summarize,
    top1_error,
)

CIFAR10_LT_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _random_predictions(n=500, c=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g), c


def test_confusion_matrix_counts_rows_as_true_classes():
    pred, target, c = _random_predictions()
    reference = np.zeros((c, c), dtype=np.int64)
    np.add.at(reference, (target.numpy(), pred.numpy()), 1)
    confusion = confusion_matrix(pred, target, c)
    assert confusion.dtype == torch.int64
    assert np.array_equal(confusion.numpy(), reference)
    # rows are true classes: row sums are the test-set class sizes
    assert torch.equal(confusion.sum(1), torch.bincount(target, minlength=c))


def test_confusion_matrix_of_a_tiny_example():
    confusion = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 2]), 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.tensor([0, 3]), torch.tensor([0, 1]), r"\[0, 2\]"),
        (torch.tensor([0, 1]), torch.tensor([-1, 1]), r"\[0, 2\]"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "pred"),
        (torch.tensor([0, 1, 2]), torch.tensor([0, 1]), "same length"),
        (torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), "1-D"),
    ],
)
def test_confusion_matrix_rejects_bad_labels(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target, 3)


def test_top1_error_is_the_percentage_of_wrong_predictions():
    pred, target, c = _random_predictions()
    expected = 100.0 * (pred != target).double().mean().item()
    assert top1_error(confusion_matrix(pred, target, c)) == pytest.approx(expected)
    perfect = confusion_matrix(target, target, c)
    assert top1_error(perfect) == 0.0


def test_top1_error_of_an_empty_test_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        top1_error(torch.zeros(3, 3, dtype=torch.long))


def test_per_class_accuracy_is_per_class_recall_in_percent():
    pred, target, c = _random_predictions()
    acc = per_class_accuracy(confusion_matrix(pred, target, c))
    for k in range(c):
        mask = target == k
        assert acc[k].item() == pytest.approx(100.0 * (pred[mask] == k).double().mean().item())


def test_per_class_accuracy_of_a_class_without_test_samples_is_nan():
    acc = per_class_accuracy(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), 3))
    assert acc[0].item() == 50.0
    assert math.isnan(acc[1].item())
    assert math.isnan(acc[2].item())


def test_balanced_test_set_error_is_one_minus_mean_per_class_accuracy():
    """On the balanced CIFAR test set, top-1 error = 100 - mean per-class accuracy."""
    target = torch.arange(5).repeat_interleave(20)
    pred = torch.where(
        torch.rand(100, generator=torch.Generator().manual_seed(1)) < 0.3, (target + 1) % 5, target
    )
    confusion = confusion_matrix(pred, target, 5)
    assert top1_error(confusion) == pytest.approx(100 - per_class_accuracy(confusion).mean().item())


def test_shot_groups_follow_the_oltr_thresholds():
    """many: > 100 training images, medium: 20..100, few: < 20 (Liu et al. 2019)."""
    counts = [101, 100, 20, 19]
    acc = [10.0, 20.0, 30.0, 40.0]
    assert shot_accuracy(acc, counts) == {"many": 10.0, "medium": 25.0, "few": 40.0}


def test_shot_groups_on_cifar10_lt_are_coarse():
    acc = torch.arange(10, dtype=torch.float64) * 10
    shots = shot_accuracy(acc, CIFAR10_LT_IF100)
    assert shots["many"] == pytest.approx(acc[:8].mean().item())
    assert shots["medium"] == pytest.approx(acc[8:].mean().item())
    assert shots["few"] is None  # an empty group is None, not NaN


def test_shot_accuracy_skips_classes_without_test_samples():
    shots = shot_accuracy([float("nan"), 50.0, float("nan")], [500, 500, 5])
    assert shots == {"many": 50.0, "medium": None, "few": None}


@pytest.mark.parametrize(
    ("acc", "counts", "kwargs", "match"),
    [
        ([1.0, 2.0], [10], {}, "one entry per class"),
        ([1.0], [-1], {}, "non-negative"),
        ([1.0], [1.5], {}, "integers"),
        ([1.0], [10], {"many": 10, "few": 20}, "few <= many"),
    ],
)
def test_shot_accuracy_rejects_bad_input(acc, counts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shot_accuracy(acc, counts, **kwargs)


def test_summary_is_json_serializable_and_consistent():
    pred, target, c = _random_predictions(c=10)
    pred[target == 9] = 0  # the tail class is never recognized
    confusion = confusion_matrix(pred, target, c)
    summary = summarize(confusion, CIFAR10_LT_IF100)
    round_trip = json.loads(json.dumps(summary, allow_nan=False))
    assert round_trip == summary
    assert summary["top1_error"] + summary["top1_accuracy"] == pytest.approx(100.0)
    assert summary["num_test"] == 500
    assert summary["per_class_accuracy"][9] == 0.0
    assert summary["confusion"] == confusion.tolist()
    assert summary["few_shot_accuracy"] is None
    assert summary["medium_shot_accuracy"] == pytest.approx(
        np.mean(summary["per_class_accuracy"][8:])
    )


def test_summary_with_a_missing_test_class_has_none_not_nan():
    confusion = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3)
    summary = summarize(confusion, [300, 50, 5])
    assert summary["per_class_accuracy"] == [100.0, 100.0, None]
    assert summary["few_shot_accuracy"] is None
    json.dumps(summary, allow_nan=False)

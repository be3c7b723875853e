"""Evaluation metrics: confusion matrix, top-1 error, per-class and many/medium/few-shot accuracy.

All accuracies and errors are percentages (0–100), as in the paper's tables. The paper reports
top-1 error on the full, balanced test set (Sec. 5); per-class and shot-group accuracies show
where a re-weighting helps (the tail) and what it costs (the head).

The functions take tensors on any device. :func:`confusion_matrix` synchronizes with the host
once (to validate labels and to size ``bincount``), so call it once per evaluation on the
concatenated predictions, not once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "confusion_matrix",
    "per_class_accuracy",
    "shot_accuracy",
    "summarize",
    "top1_error",
]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C) int64 with rows = true class and columns = predicted class, via bincount."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    for name, tensor in (("pred", pred), ("target", target)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor of class indices")
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise ValueError(
                f"{name} must hold integer class indices, got dtype {tensor.dtype}; "
                "take logits.argmax(dim=1) first"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same length, got {pred.numel()} and {target.numel()}"
        )
    if pred.device != target.device:
        raise ValueError(f"pred is on {pred.device} but target is on {target.device}")
    pred, target = pred.long(), target.long()
    out_of_range = (pred < 0) | (pred >= num_classes) | (target < 0) | (target >= num_classes)
    if bool(out_of_range.any()):
        raise ValueError(
            f"pred and target must lie in [0, {num_classes - 1}] (num_classes={num_classes}); "
            "check num_classes and the label encoding"
        )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def _check_confusion(confusion: torch.Tensor) -> None:
    """Raise ValueError unless ``confusion`` is a square (C, C) tensor of counts."""
    if (
        not isinstance(confusion, torch.Tensor)
        or confusion.dim() != 2
        or confusion.shape[0] != confusion.shape[1]
        or confusion.shape[0] == 0
    ):
        raise ValueError("confusion must be a square (C, C) tensor from confusion_matrix()")


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class in percent, (C,) float64; NaN for a class with no test samples."""
    _check_confusion(confusion)
    confusion = confusion.double()
    return 100.0 * confusion.diagonal() / confusion.sum(dim=1)


def top1_error(confusion: torch.Tensor) -> float:
    """Top-1 error in percent (0–100) over all test samples (paper Table 2)."""
    _check_confusion(confusion)
    total = int(confusion.sum())
    if total == 0:
        raise ValueError("confusion is empty (no test samples); evaluate on a non-empty test set")
    return 100.0 * (total - int(confusion.diagonal().sum())) / total


def shot_accuracy(
    per_class_acc: torch.Tensor | Sequence[float],
    train_counts: torch.Tensor | Sequence[int],
    many: int = 100,
    few: int = 20,
) -> dict[str, float | None]:
    """Mean accuracy over many-shot (> many), medium (few..many) and few-shot (< few) classes.

    This is the OLTR convention (Liu et al. 2019), defined on ImageNet-LT with thresholds 100 and
    20 training images. On 10-class datasets the groups are coarse: CIFAR-10-LT with IF 100 has
    eight many-shot classes, two medium ones (83 and 50 images) and no few-shot class. A group
    with no classes, or whose classes all lack test samples (NaN accuracy), is ``None``; classes
    with NaN accuracy are left out of their group's mean.
    """
    acc = torch.as_tensor(per_class_acc, dtype=torch.float64).detach().cpu()
    counts = torch.as_tensor(train_counts).detach().cpu()
    if acc.dim() != 1 or counts.dim() != 1 or acc.numel() != counts.numel():
        raise ValueError(
            "per_class_acc and train_counts must be 1-D with one entry per class, got shapes "
            f"{tuple(acc.shape)} and {tuple(counts.shape)}"
        )
    if counts.dtype.is_floating_point or bool((counts < 0).any()):
        raise ValueError("train_counts must be non-negative integers (training images per class)")
    if not 0 <= few <= many:
        raise ValueError(f"need 0 <= few <= many, got few={few}, many={many}")
    groups = {
        "many": counts > many,
        "medium": (counts >= few) & (counts <= many),
        "few": counts < few,
    }
    result: dict[str, float | None] = {}
    for name, mask in groups.items():
        values = acc[mask]
        values = values[~torch.isnan(values)]
        result[name] = float(values.mean()) if values.numel() else None
    return result


def summarize(
    confusion: torch.Tensor, train_counts: torch.Tensor | Sequence[int]
) -> dict[str, Any]:
    """JSON-serializable summary: top-1 error/accuracy, per-class and shot accuracies, confusion."""
    _check_confusion(confusion)
    confusion = confusion.detach().cpu()
    per_class = per_class_accuracy(confusion)
    shots = shot_accuracy(per_class, train_counts)
    correct, total = int(confusion.diagonal().sum()), int(confusion.sum())
    return {
        "top1_error": top1_error(confusion),
        "top1_accuracy": 100.0 * correct / total,
        "num_test": total,
        "per_class_accuracy": [None if math.isnan(a) else a for a in per_class.tolist()],
        "many_shot_accuracy": shots["many"],
        "medium_shot_accuracy": shots["medium"],
        "few_shot_accuracy": shots["few"],
        "confusion": confusion.tolist(),
    }

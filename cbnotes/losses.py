"""Class-balanced softmax, sigmoid and focal losses (Cui et al. 2019, Sec. 4, Eq. 5-7).

Each sample with label ``y`` is weighted by ``α_y = 1/E_{n_y}`` normalized to sum to C
(:func:`cbnotes.effective.class_balanced_weights`). The reductions match the authors' code:

- softmax: ``(1/B) Σ_b α_{y_b} CE_b``. This is *not* ``F.cross_entropy(weight=α)``, whose
  default "mean" reduction divides by ``Σ_b α_{y_b}`` instead of ``B``; it is
  ``F.cross_entropy(weight=α, reduction="sum") / B``, which is how it is computed (one fused
  kernel, faster than weighting the per-sample losses).
- sigmoid and focal: the ``B × C`` one-vs-all terms, each scaled by the ``α_y`` of its sample,
  summed and divided by ``B``.

The focal modulator ``(1 - p^t)^γ`` is evaluated as ``exp(-γ·t·z - γ·softplus(-z))`` with ``t``
the one-hot target, which stays finite (with finite gradients) for any logit and any γ >= 0.
All losses are computed in float32 (or float64 for float64 logits), with autocast disabled.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch
import torch.nn.functional as F
from torch import nn

from cbnotes.effective import CountsLike, check_beta, check_counts, class_balanced_weights

__all__ = [
    "LOSS_TYPES",
    "ClassBalancedLoss",
    "class_balanced_loss",
    "class_balanced_loss_from_weights",
    "focal_modulator",
    "prior_bias",
]

LOSS_TYPES = ("softmax", "sigmoid", "focal")


def prior_bias(num_classes: int) -> float:
    """Initial bias ``b = -log((1-π)/π)`` with prior ``π = 1/C``, i.e. ``-log(C-1)``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2 (the prior π = 1/C needs at least two "
            f"classes); got {num_classes!r}."
        )
    return -math.log(int(num_classes) - 1)


def _check_loss_type(loss_type: str) -> str:
    """Return ``loss_type`` after checking it is one of :data:`LOSS_TYPES`."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type must be one of {', '.join(map(repr, LOSS_TYPES))}; got {loss_type!r}."
        )
    return loss_type


def _check_gamma(gamma: float) -> float:
    """Return ``gamma`` as a float after checking it is finite and >= 0."""
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, Real)
        or not math.isfinite(gamma)
        or gamma < 0
    ):
        raise ValueError(
            f"gamma must be a finite number >= 0 (the focal exponent; 0 gives the sigmoid "
            f"loss, the paper searches 0.5, 1.0, 2.0); got {gamma!r}."
        )
    return float(gamma)


def _check_batch(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Check shapes and dtypes of ``logits`` (B, C) and integer ``labels`` (B,).

    The label range ``[0, C)`` is checked only for labels on the CPU: on CUDA it is not
    checked, to avoid a device sync; validate your labels once.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"logits must be a 2-D floating tensor of shape (batch, num_classes); got {shape}."
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(
            f"logits must have at least one row and one class; got shape {tuple(logits.shape)}."
        )
    if (
        not isinstance(labels, torch.Tensor)
        or labels.ndim != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        desc = (
            f"dtype {labels.dtype}, shape {tuple(labels.shape)}"
            if isinstance(labels, torch.Tensor)
            else type(labels).__name__
        )
        raise ValueError(
            f"labels must be a 1-D integer tensor of class indices (use .long()); got {desc}."
        )
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels and logits must have the same batch size; got {labels.shape[0]} labels "
            f"for {logits.shape[0]} rows of logits."
        )
    if labels.device.type == "cpu":
        num_classes = logits.shape[1]
        low, high = (int(v) for v in labels.aminmax())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for logits with {num_classes} classes; "
                f"got {bad}. Check the label mapping or the model's number of outputs."
            )


def focal_modulator(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal modulator ``(1-p^t)^γ`` as ``exp(-γ·t·z - γ·softplus(-z))`` (Sec. 4, Eq. 7)."""
    return torch.exp(-gamma * targets * logits - gamma * F.softplus(-logits))


def _weighted_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, loss_type: str, gamma: float
) -> torch.Tensor:
    """The class-balanced loss on validated inputs, in float32/float64 with autocast off."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        labels = labels.long()  # int32/uint8 labels are fine; no-op for int64
        weights = weights.to(device=z.device, dtype=z.dtype)
        batch = z.shape[0]
        if loss_type == "softmax":  # Σ_b α_{y_b} CE_b / B (not the weighted mean)
            return F.cross_entropy(z, labels, weight=weights, reduction="sum") / batch
        alpha = weights[labels]
        targets = F.one_hot(labels, z.shape[1]).to(z.dtype)
        terms = F.binary_cross_entropy_with_logits(z, targets, reduction="none")
        if loss_type == "focal" and gamma != 0.0:
            terms = focal_modulator(z, targets, gamma) * terms
        return (alpha.unsqueeze(1) * terms).sum() / batch


def class_balanced_loss_from_weights(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    loss_type: str = "softmax",
    gamma: float = 1.0,
) -> torch.Tensor:
    """Class-balanced loss with precomputed per-class ``weights`` (C,) (Sec. 4, Eq. 5-7).

    ``weights`` are moved to the logits' device and dtype. On CUDA the label range is not
    checked, to avoid a device sync; validate your labels once.
    """
    loss_type = _check_loss_type(loss_type)
    gamma = _check_gamma(gamma)
    _check_batch(logits, labels)
    if not isinstance(weights, torch.Tensor) or weights.shape != (logits.shape[1],):
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights)
        raise ValueError(
            f"weights must be a tensor of shape ({logits.shape[1]},), one per class of logits; "
            f"got {shape}. Build it with class_balanced_weights(samples_per_class, beta)."
        )
    return _weighted_loss(logits, labels, weights, loss_type, gamma)


def class_balanced_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    samples_per_class: CountsLike,
    loss_type: str = "softmax",
    beta: float = 0.9999,
    gamma: float = 1.0,
) -> torch.Tensor:
    """Class-balanced loss ``(1/B) Σ_b α_{y_b} L(z_b, y_b)`` (Sec. 4, Eq. 5-7).

    ``samples_per_class`` are the counts of the whole training set (not of the batch).
    ``loss_type`` is "softmax", "sigmoid" or "focal" (``gamma`` is used by focal only);
    ``beta = 0`` gives the plain, un-weighted loss. The weights are recomputed on every
    call: in a training loop prefer :class:`ClassBalancedLoss`. On CUDA the label range is
    not checked, to avoid a device sync; validate your labels once.
    """
    loss_type = _check_loss_type(loss_type)
    gamma = _check_gamma(gamma)
    weights = class_balanced_weights(samples_per_class, beta)
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and weights.numel() != logits.shape[1]:
        raise ValueError(
            f"samples_per_class has {weights.numel()} classes but logits have "
            f"{logits.shape[1]}; give one count per model output."
        )
    return class_balanced_loss_from_weights(logits, labels, weights, loss_type, gamma)


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss as a module; the weights live in the float32 buffer ``weights``.

    Arguments are validated once here. ``beta = 0`` (or :meth:`unweighted`) gives the plain
    softmax/sigmoid/focal loss. On CUDA the label range is not checked, to avoid a device
    sync; validate your labels once.
    """

    weights: torch.Tensor

    def __init__(
        self,
        samples_per_class: CountsLike,
        loss_type: str = "softmax",
        beta: float = 0.9999,
        gamma: float = 1.0,
    ) -> None:
        super().__init__()
        self.loss_type = _check_loss_type(loss_type)
        self.beta = check_beta(beta)
        self.gamma = _check_gamma(gamma)
        self.samples_per_class = tuple(int(n) for n in check_counts(samples_per_class))
        self.register_buffer("weights", class_balanced_weights(self.samples_per_class, self.beta))

    @classmethod
    def unweighted(
        cls, num_classes: int, loss_type: str = "softmax", gamma: float = 1.0
    ) -> ClassBalancedLoss:
        """The plain (β = 0, all weights 1) loss of the given type for ``num_classes`` classes."""
        valid = isinstance(num_classes, Integral) and not isinstance(num_classes, bool)
        if not valid or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}.")
        return cls([1] * int(num_classes), loss_type=loss_type, beta=0.0, gamma=gamma)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self.weights.numel()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, C) against integer ``labels`` (B,)."""
        _check_batch(logits, labels)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes but the loss was built from "
                f"samples_per_class with {self.num_classes}; give one count per model output."
            )
        return _weighted_loss(logits, labels, self.weights, self.loss_type, self.gamma)

    def extra_repr(self) -> str:
        """Loss type, β, γ (focal only) and number of classes."""
        gamma = f", gamma={self.gamma}" if self.loss_type == "focal" else ""
        return (
            f"loss_type={self.loss_type!r}, beta={self.beta}{gamma}, num_classes={self.num_classes}"
        )

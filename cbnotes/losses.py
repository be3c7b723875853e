"""Class-balanced softmax, sigmoid and focal losses (Cui et al. 2019, Sec. 4, Eq. 5-7).

Each sample with label ``y`` is weighted by ``α_y = 1/E_{n_y}`` normalized to sum to C
(:func:`cbnotes.effective.class_balanced_weights`; other schemes via ``scheme=``, see
:func:`cbnotes.effective.class_weights`). The reductions match the authors' code:

- softmax: ``(1/B) Σ_b α_{y_b} CE_b``. This is *not* ``F.cross_entropy(weight=α)``, whose
  default "mean" reduction divides by ``Σ_b α_{y_b}`` instead of ``B``; it is
  ``F.cross_entropy(weight=α, reduction="sum") / B``, which is how it is computed (one fused
  kernel, faster than weighting the per-sample losses).
- sigmoid and focal: the ``B × C`` one-vs-all terms, each scaled by the ``α_y`` of its sample,
  summed and divided by ``B``.

Multi-label data: the sigmoid and focal losses also take float multi-hot targets ``t`` of
shape (B, C), values in [0, 1], instead of integer labels (B,). Row ``b`` is weighted by the
target-weighted mean of its positive classes' weights, ``Σ_i t_i α_i / Σ_i t_i`` (exactly
``α_y`` for a one-hot row, so single-label results are unchanged), and by 1 (the mean weight,
since ``Σα = C``) for a row with no positive label. The reduction stays ``/B``. Softmax needs
one label per sample and rejects such targets.

The focal modulator ``(1 - p^t)^γ`` is ``exp(-γ·t·z - γ·softplus(-z))`` with ``t`` the one-hot
target (:func:`focal_modulator`), which stays finite (with finite gradients) for any logit and
any γ >= 0. The focal loss itself is a ``torch.autograd.Function`` with a closed-form gradient
(for integer labels from softplus, sigmoid and exp of non-positive numbers only), cheaper than
differentiating the terms with autograd (``create_graph=True`` still gives second
derivatives). All losses are computed in float32 (or float64 for float64 logits), with
autocast disabled.

Later methods on the same benchmark, with the same conventions (float32 buffers in the module
forms, validation once in ``__init__``, no device sync per step):

- Balanced Softmax (Ren et al. 2020): cross-entropy of ``z_j + log n_j``.
- Logit adjustment (Menon et al. 2021): cross-entropy of ``z_j + τ log π_j``, ``π_j = n_j/Σn``,
  or the post-hoc correction ``z_j - τ log π_j`` of a plainly trained model.
- LDAM (Cao et al. 2019): cross-entropy of ``s·(z - Δ_y e_y)`` with margins ``Δ_j ∝ n_j^(-1/4)``,
  the largest equal to ``max_margin``; optional per-class weights (LDAM-DRW) use PyTorch's
  weighted mean, as the LDAM authors' code does.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cbnotes.effective import (
    CountsLike,
    check_beta,
    check_counts,
    check_scheme,
    class_weights,
)

__all__ = [
    "LOSS_TYPES",
    "BalancedSoftmaxLoss",
    "ClassBalancedLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "balanced_softmax_loss",
    "class_balanced_loss",
    "class_balanced_loss_from_weights",
    "focal_modulator",
    "ldam_loss",
    "ldam_margins",
    "logit_adjusted_loss",
    "posthoc_logit_adjustment",
    "prior_bias",
]

LOSS_TYPES = ("softmax", "sigmoid", "focal")

WeightsLike = Sequence[float] | np.ndarray | torch.Tensor


def prior_bias(num_classes: int) -> float:
    """Initial bias ``b = -log((1-π)/π)`` with prior ``π = 1/C``, i.e. ``-log(C-1)``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2 (the prior π = 1/C needs at least two "
            f"classes); got {num_classes!r}."
        )
    return -math.log(int(num_classes) - 1)


# --- Validation -------------------------------------------------------------------------------


def _check_loss_type(loss_type: str) -> str:
    """Return ``loss_type`` after checking it is one of :data:`LOSS_TYPES`."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type must be one of {', '.join(map(repr, LOSS_TYPES))}; got {loss_type!r}."
        )
    return loss_type


def _check_gamma(gamma: float | None, loss_type: str = "focal") -> float | None:
    """Return ``gamma`` as a float (finite, >= 0), or None where ``loss_type`` is not focal."""
    if gamma is None and loss_type != "focal":
        return None
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, Real)
        or not math.isfinite(gamma)
        or gamma < 0
    ):
        raise ValueError(
            f"gamma must be a finite number >= 0 (the focal exponent; 0 gives the sigmoid "
            f"loss, the paper searches 0.5, 1.0, 2.0); got {gamma!r}"
            + (" for loss_type='focal', which needs γ." if gamma is None else ".")
        )
    return float(gamma)


def _check_real(value: float, name: str, hint: str, *, positive: bool) -> float:
    """Return ``value`` as a float after checking it is finite and > 0 (or >= 0)."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound} ({hint}); got {value!r}.")
    return float(value)


def _check_tau(tau: float) -> float:
    """Return ``tau`` after checking it is finite and >= 0 (Menon et al.: τ = 1)."""
    return _check_real(
        tau, "tau", "the logit-adjustment strength; 1 is the usual, 0 is plain CE", positive=False
    )


def _check_logits(logits: torch.Tensor) -> None:
    """Check that ``logits`` is a non-empty 2-D floating tensor (B, C)."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"logits must be a 2-D floating tensor of shape (batch, num_classes); got {shape}."
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(
            f"logits must have at least one row and one class; got shape {tuple(logits.shape)}."
        )


def _check_label_range(labels: torch.Tensor, num_classes: int) -> None:
    """Raise unless integer ``labels`` lie in ``[0, num_classes)`` (reads them: a device sync)."""
    low, high = (int(v) for v in labels.aminmax())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for logits with {num_classes} classes; "
            f"got {bad}. Check the label mapping or the model's number of outputs."
        ) from None  # raised while handling an IndexError: that one adds nothing


def _check_batch(logits: torch.Tensor, labels: torch.Tensor, *, check_range: bool = True) -> None:
    """Check shapes and dtypes of ``logits`` (B, C) and integer ``labels`` (B,).

    The label range ``[0, C)`` is checked only for labels on the CPU: on CUDA it is not
    checked, to avoid a device sync; validate your labels once. ``check_range=False`` leaves
    it to the caller, which must then index with the labels through :func:`_label_weights`.
    """
    _check_logits(logits)
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
    if check_range and labels.device.type == "cpu":
        _check_label_range(labels, logits.shape[1])


def _label_weights(weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``weights[labels]``, whose indexing checks the label range on the CPU for free: a label
    outside ``[0, C)`` raises :func:`_check_label_range`'s error instead of an IndexError."""
    try:
        return weights.index_select(0, labels)
    except IndexError:
        _check_label_range(labels, weights.numel())
        raise


def _is_multi_hot(labels: Any) -> bool:
    """True for a 2-D floating tensor, the multi-label form of ``labels``."""
    return isinstance(labels, torch.Tensor) and labels.ndim == 2 and labels.is_floating_point()


def _check_targets(logits: torch.Tensor, labels: torch.Tensor, loss_type: str) -> None:
    """Check integer ``labels`` (B,), or float multi-hot targets (B, C) for sigmoid/focal.

    For sigmoid and focal the label range is left to :func:`_weighted_loss`, whose indexing
    checks it (:func:`_label_weights`).

    Target values in [0, 1] are checked only on the CPU: on CUDA they are not, to avoid a
    device sync.
    """
    if not _is_multi_hot(labels):  # the range is checked where the labels index the weights
        _check_batch(logits, labels, check_range=loss_type == "softmax")
        return
    _check_logits(logits)
    if loss_type == "softmax":
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} with float (multi-hot) targets need "
            f"loss_type='sigmoid' or 'focal': softmax assumes one label per sample. Use sigmoid "
            f"or focal for multi-label data, or give integer class indices of shape (B,)."
        )
    if labels.shape != logits.shape:
        raise ValueError(
            f"labels given as multi-hot targets must have the shape of logits "
            f"{tuple(logits.shape)}; got {tuple(labels.shape)}."
        )
    if labels.device.type == "cpu" and not bool(((labels >= 0) & (labels <= 1)).all()):
        raise ValueError(
            "labels given as multi-hot targets must lie in [0, 1] (1 for a positive class, "
            "0 for a negative one); got values outside [0, 1] or NaN."
        )


def _check_num_classes(logits: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise unless a 2-D ``logits`` has ``num_classes`` columns, naming the argument."""
    if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[1] != num_classes:
        raise ValueError(
            f"{name} has {num_classes} classes but logits have {logits.shape[1]}; give one "
            f"count per model output."
        )


def _check_module_classes(logits: torch.Tensor, num_classes: int) -> None:
    """Raise unless ``logits`` has the module's ``num_classes`` columns."""
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} classes but the loss was built from "
            f"samples_per_class with {num_classes}; give one count per model output."
        )


def _check_class_weights(weights: WeightsLike, num_classes: int) -> torch.Tensor:
    """Return per-class ``weights`` as a tensor after checking shape (C,), finite, >= 0.

    Values are checked for CPU inputs only (no device sync for a CUDA tensor).
    """
    if not isinstance(weights, torch.Tensor):
        try:
            weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"weights must be {num_classes} per-class numbers; could not read {weights!r}."
            ) from err
    if weights.shape != (num_classes,) or weights.dtype == torch.bool or weights.is_complex():
        raise ValueError(
            f"weights must be a real tensor of shape ({num_classes},), one per class; got "
            f"dtype {weights.dtype}, shape {tuple(weights.shape)}. Build it with "
            f"class_weights(samples_per_class, scheme, beta)."
        )
    if weights.device.type == "cpu":
        w = weights.detach().double()
        if not bool((torch.isfinite(w) & (w >= 0)).all()) or not bool((w > 0).any()):
            raise ValueError(
                f"weights must be finite and >= 0 with at least one > 0 (a weighted mean "
                f"divides by the weights of the batch's labels); got {weights.tolist()}."
            )
    return weights


# --- Class-balanced losses ------------------------------------------------------------------


def focal_modulator(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Focal modulator ``(1-p^t)^γ`` as ``exp(-γ·t·z - γ·softplus(-z))`` (Sec. 4, Eq. 7)."""
    return torch.exp(-gamma * targets * logits - gamma * F.softplus(-logits))


def _focal_terms_reference(z: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-element focal terms ``(1-p^t)^γ · BCE(z, t)`` (Eq. 7), differentiated by autograd."""
    terms = F.binary_cross_entropy_with_logits(z, targets, reduction="none")
    return focal_modulator(z, targets, gamma) * terms


def _focal_parts(
    z: torch.Tensor, targets: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1-p^t)^γ = exp(-γu)`` and ``b = -log p^t`` of the focal term, without cancellation.

    With ``L = log(1 + e^{-|z|})``: ``b = L + (relu(z) - t·z)`` (``= softplus(-z) + (1-t)·z``,
    the BCE) and ``u = L + (relu(-z) + t·z)`` (``= t·z + softplus(-z)``, the modulator's
    exponent), both >= 0 for ``t`` in [0, 1]; for a binary ``t`` the bracket is exactly
    ``relu(±z)`` or 0, so tiny values keep their digits where ``softplus(-z) + z`` would not.
    """
    positive = torch.relu(z)
    log_term = torch.log1p(torch.exp(torch.sub(z, positive, alpha=2.0)))  # z - 2relu(z) = -|z|
    tz = targets * z
    bce = log_term + (positive - tz)
    exponent = log_term + ((positive - z) + tz)  # relu(z) - z = relu(-z), exactly
    return torch.exp(exponent * -gamma), bce


def _focal_grad(
    z: torch.Tensor,
    targets: torch.Tensor,
    modulator: torch.Tensor,
    bce: torch.Tensor,
    scale: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """``scale·∂f/∂z = scale·m·(p·c_1 - q·c_2)`` of the focal terms (see :class:`_FocalLoss`)."""
    negatives = 1.0 - targets
    c_1 = torch.addcmul(negatives, bce, targets, value=-gamma)
    c_2 = torch.addcmul(targets, bce, negatives, value=-gamma)
    slope = torch.addcmul(torch.sigmoid(z) * c_1, torch.sigmoid(-z), c_2, value=-1.0)
    return slope * modulator * scale


class _FocalLoss(torch.autograd.Function):
    """``Σ_b r_b Σ_i (1-p^t_bi)^γ BCE(z_bi, t_bi)`` with a closed-form gradient (Eq. 7).

    ``r_b = α_b / B``. Per element, with ``u = t·z + softplus(-z)`` (``= -log(1-p^t)`` for
    binary ``t``), ``b = softplus(-z) + (1-t)·z`` (``= -log p^t``) and ``m = exp(-γu)``
    ``= (1-p^t)^γ``: ``f = m·b``, ``∂f/∂z = m·((σ(z) - t) - γ·b·(σ(z) + t - 1))`` and
    ``∂f/∂t = -z·m·(1 + γ·b)``. Only log1p, exp of non-positive numbers and sigmoid appear,
    never a power of ``1-p^t``: where ``p^t`` rounds to 1 the term and its gradient are 0 for
    every γ >= 0, including γ < 1 (the limit of the reference's autograd, not ``0^(γ-1)``).
    ``∂f/∂z`` is evaluated as ``m·(p·c_1 - q·c_2)`` with ``p = σ(z)``, ``q = σ(-z)``,
    ``c_1 = (1-t) - γb·t``, ``c_2 = t - γb·(1-t)``: for binary ``t`` one of ``p·c_1``, ``q·c_2``
    vanishes, where ``σ(z) - t`` and ``σ(z) + t - 1`` would lose digits.

    The gradient with respect to ``z`` is computed in the forward pass, which shares its
    intermediate values (call it only when a gradient is wanted); with ``create_graph=True``
    it is rebuilt from ``z``, so it is itself differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, targets: torch.Tensor, row: torch.Tensor, gamma: float
    ) -> torch.Tensor:
        """Focal terms of ``z`` (B, C) against ``targets`` (B, C), weighted by ``row`` (B,)."""
        modulator, bce = _focal_parts(z, targets, gamma)
        grad_z = _focal_grad(z, targets, modulator, bce, row.unsqueeze(1), gamma)
        ctx.save_for_backward(grad_z, z, targets, row)
        ctx.gamma = gamma
        return torch.dot(row, (modulator * bce).sum(dim=1))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Gradients with respect to ``z`` (precomputed), ``targets`` and ``row``."""
        grad_z, z, targets, row = ctx.saved_tensors
        gamma = ctx.gamma
        needs_z, needs_t, needs_row = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled() or needs_t or needs_row:  # create_graph=True, or rare grads
            modulator, bce = _focal_parts(z, targets, gamma)
            if torch.is_grad_enabled():
                grad_z = _focal_grad(z, targets, modulator, bce, row.unsqueeze(1), gamma)
        grad_t = grad_row = None
        if needs_t:
            grad_t = -z * modulator * torch.add(1.0, bce, alpha=gamma) * (grad * row).unsqueeze(1)
        if needs_row:
            grad_row = grad * (modulator * bce).sum(dim=1)
        return grad_z * grad if needs_z else None, grad_t, grad_row, None


def _signed_parts(
    negated: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``b = -log p^t``, ``s = 1 - p^t`` and ``m = (1-p^t)^γ`` from ``n = -x``, the negated
    signed logit (``z`` with its target column negated; ``p^t = σ(x)``).

    ``b = softplus(n)`` and ``s = σ(n)``, one fused kernel each and exact to rounding for every
    ``n`` (softplus is ``log1p(exp(n))`` up to n = 40, past which it is ``n`` to 1e-17 relative);
    ``m`` is ``s``, ``sqrt(s)`` and ``s·s`` for the paper's γ = 1, 0.5 and 2, else
    ``exp(γ·log s)``; all keep ``s``'s relative precision (``pow`` does too, at three times the
    cost of ``exp(γ·log s)``).
    """
    bce = F.softplus(negated, threshold=40.0)
    below = torch.sigmoid(negated)
    if gamma == 1.0:
        return bce, below, below
    if gamma == 0.5:
        return bce, below, torch.sqrt(below)
    if gamma == 2.0:
        return bce, below, below * below
    return bce, below, torch.exp(torch.log(below) * _constant(gamma, negated.dtype))


def _signed_slope(bce: torch.Tensor, below: torch.Tensor, gamma: float) -> torch.Tensor:
    """``∂f/∂n / m = σ(n) + γ·b·σ(-n)``, a sum of non-negative terms (no cancellation), with
    ``σ(-n) = exp(-b)`` (relative error ``b·ε`` where ``σ(-n)`` is tiny and its term with it)."""
    above = torch.exp(torch.neg(bce))
    if gamma == 1.0:
        return torch.addcmul(below, bce, above)
    return torch.addcmul(below, bce, above, value=gamma)


def _label_signs(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sign`` of the shape of ``z``: -1 at each row's label, +1 elsewhere (``n = sign·z``)."""
    return torch.ones_like(z).scatter_(1, labels.unsqueeze(1), -1.0)


class _FocalLossLabels(torch.autograd.Function):
    """:class:`_FocalLoss` for int64 labels, with ``sign`` (B, C) -1 at the targets.

    Works on ``n = sign·z = -x``: per element ``f = m·b`` with ``b = softplus(n)`` and
    ``m = σ(n)^γ`` (:func:`_signed_parts`), ``∂f/∂n = m·(σ(n) + γ·b·σ(-n))``
    (:func:`_signed_slope`) and ``∂f/∂z = sign·∂f/∂n``: about half the tensor operations of
    :class:`_FocalLoss`'s form for soft targets, which is what costs most at a classifier's
    batch size (``benchmarks/bench_losses.py``). For a one-hot row the two agree to rounding,
    not bit for bit. As in :class:`_FocalLoss`, the gradient is computed in the forward pass.
    """

    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, labels: torch.Tensor, row: torch.Tensor, gamma: float
    ) -> torch.Tensor:
        """Focal terms of ``z`` (B, C) for int64 ``labels`` (B,), weighted by ``row`` (B,)."""
        sign = _label_signs(z, labels)
        bce, below, modulator = _signed_parts(z * sign, gamma)
        scaled = modulator * row.unsqueeze(1)  # m·r_b
        grad_z = _signed_slope(bce, below, gamma).mul_(scaled).mul_(sign)
        ctx.save_for_backward(grad_z, z, labels, row)
        ctx.gamma = gamma
        return bce.mul_(scaled).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Gradients with respect to ``z`` (precomputed) and ``row``."""
        grad_z, z, labels, row = ctx.saved_tensors
        gamma = ctx.gamma
        needs_row = ctx.needs_input_grad[2]
        if torch.is_grad_enabled() or needs_row:  # create_graph=True, or a gradient for row
            sign = _label_signs(z, labels)
            bce, below, modulator = _signed_parts(z * sign, gamma)
            if torch.is_grad_enabled():
                slope = _signed_slope(bce, below, gamma)
                grad_z = slope * (modulator * row.unsqueeze(1)) * sign
        grad_row = grad * (modulator * bce).sum(dim=1) if needs_row else None
        return grad_z * grad if ctx.needs_input_grad[0] else None, None, grad_row, None


def _signed_focal_value(z: torch.Tensor, labels: torch.Tensor, row: torch.Tensor, gamma: float):
    """:class:`_FocalLossLabels`'s value without its gradient (the same operations)."""
    bce, _, modulator = _signed_parts(z * _label_signs(z, labels), gamma)
    return bce.mul_(modulator * row.unsqueeze(1)).sum()


@functools.lru_cache(maxsize=64)
def _constant(value: float, dtype: torch.dtype) -> torch.Tensor:
    """A cached 0-dim CPU tensor holding ``value`` (cheaper operand than a Python float)."""
    return torch.scalar_tensor(value, dtype=dtype)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``device_type`` (a no-op where it is off)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        enabled = True
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _row_weights(targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-row weights ``Σ_i t_i α_i / Σ_i t_i`` of multi-hot ``targets``; 1 for empty rows."""
    positives = targets.sum(dim=1)
    has_positive = positives > 0
    mean = (targets @ weights) / torch.where(has_positive, positives, 1.0)
    return torch.where(has_positive, mean, 1.0)


def _weighted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    loss_type: str,
    gamma: float | None,
    *,
    reference: bool = False,
) -> torch.Tensor:
    """The class-balanced loss on validated inputs, in float32/float64 with autocast off.

    Focal with γ > 0 uses the closed-form :class:`_FocalLossLabels` (integer labels) or
    :class:`_FocalLoss` (float targets); ``reference=True`` differentiates
    :func:`_focal_terms_reference` with autograd instead (kept for tests and benchmarks).
    """
    with _autocast_off(logits.device.type):
        z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        weights = weights.to(z)  # dtype and device of z
        batch = z.shape[0]
        fast_focal = loss_type == "focal" and bool(gamma) and not reference
        wants_grad = torch.is_grad_enabled() and (z.requires_grad or weights.requires_grad)
        if labels.is_floating_point():  # multi-hot targets (B, C), sigmoid or focal
            targets = labels.to(z.dtype)
            alpha = _row_weights(targets, weights)
            if fast_focal and (wants_grad or targets.requires_grad):
                return _FocalLoss.apply(z, targets, alpha / batch, gamma)
            if fast_focal:  # the same terms, no gradient wanted
                modulator, bce = _focal_parts(z, targets, gamma)
                return torch.dot(alpha / batch, (modulator * bce).sum(dim=1))
        else:
            labels = labels.long()  # int32/uint8 labels are fine; no-op for int64
            if loss_type == "softmax":  # Σ_b α_{y_b} CE_b / B (not the weighted mean)
                return F.cross_entropy(z, labels, weight=weights, reduction="sum") / batch
            alpha = _label_weights(weights, labels)  # checks the label range (CPU)
            if fast_focal:
                row = alpha / _constant(batch, z.dtype)  # = alpha / batch, without wrapping batch
                if wants_grad:
                    return _FocalLossLabels.apply(z, labels, row, gamma)
                return _signed_focal_value(z, labels, row, gamma)  # no gradient wanted
            targets = torch.zeros_like(z).scatter_(1, labels.unsqueeze(1), 1.0)  # one-hot
        if loss_type == "focal" and gamma:
            terms = _focal_terms_reference(z, targets, gamma)
        else:
            terms = F.binary_cross_entropy_with_logits(z, targets, reduction="none")
        return (alpha.unsqueeze(1) * terms).sum() / batch


def class_balanced_loss_from_weights(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    loss_type: str = "softmax",
    gamma: float | None = 1.0,
) -> torch.Tensor:
    """Class-balanced loss with precomputed per-class ``weights`` (C,) (Sec. 4, Eq. 5-7).

    ``labels`` are integer class indices (B,) or, for sigmoid and focal, float multi-hot
    targets (B, C) in [0, 1]; a row is then weighted by ``Σ_i t_i α_i / Σ_i t_i`` (1 if it has
    no positive). ``weights`` are moved to the logits' device and dtype. On CUDA the label
    range is not checked, to avoid a device sync; validate your labels once.
    """
    loss_type = _check_loss_type(loss_type)
    gamma = _check_gamma(gamma, loss_type)
    _check_targets(logits, labels, loss_type)
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
    gamma: float | None = 1.0,
    *,
    scheme: str = "effective",
) -> torch.Tensor:
    """Class-balanced loss ``(1/B) Σ_b α_{y_b} L(z_b, y_b)`` (Sec. 4, Eq. 5-7).

    ``samples_per_class`` are the counts of the whole training set (not of the batch).
    ``loss_type`` is "softmax", "sigmoid" or "focal" (``gamma`` is used by focal only and may
    be None for the others); ``beta = 0`` gives the plain, un-weighted loss. ``scheme``
    chooses the weights (:func:`cbnotes.effective.class_weights`: "effective" ``∝ 1/E_n``,
    "inverse" ``∝ 1/n``, "sqrt_inverse", "none"); ``beta`` is used by "effective" only.
    ``labels`` are integer class indices (B,) or, for sigmoid and focal, float multi-hot
    targets (B, C) in [0, 1]; a row is then weighted by ``Σ_i t_i α_i / Σ_i t_i`` (exactly
    ``α_y`` for a one-hot row; 1 for a row with no positive). The weights are recomputed on
    every call: in a training loop prefer :class:`ClassBalancedLoss`. On CUDA the label range
    is not checked, to avoid a device sync; validate your labels once.
    """
    loss_type = _check_loss_type(loss_type)
    gamma = _check_gamma(gamma, loss_type)
    weights = class_weights(samples_per_class, scheme, beta)
    _check_num_classes(logits, weights.numel(), "samples_per_class")
    return class_balanced_loss_from_weights(logits, labels, weights, loss_type, gamma)


_CONFIG_KEY = "cbnotes_config"


def _record_config(module: nn.Module, state: Any, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: note the module's configuration in the state dict's metadata."""
    local_metadata[_CONFIG_KEY] = module._config_text()


class ClassBalancedLoss(nn.Module):
    """Class-balanced loss as a module; the weights live in the float32 buffer ``weights``.

    Arguments are validated once here. ``beta = 0`` (or :meth:`unweighted`) gives the plain
    softmax/sigmoid/focal loss; ``scheme`` picks other weights ("none", "inverse",
    "sqrt_inverse"; they ignore ``beta``); ``gamma`` may be None except for focal.
    :meth:`load_state_dict` refuses ``weights`` that are not those of this configuration.
    ``forward`` takes integer labels (B,) or, for sigmoid and focal, float multi-hot targets
    (B, C) in [0, 1], each row weighted by ``Σ_i t_i α_i / Σ_i t_i`` (1 if it has no positive)::

        loss_fn = ClassBalancedLoss(counts, "focal", beta=0.999, gamma=0.5)
        loss = loss_fn(logits, labels)  # labels: (B,) int64
        targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # multi-label rows
        loss = loss_fn(logits, targets)  # row weights (α_0 + α_2)/2 and 1
        inverse = ClassBalancedLoss(counts, "softmax", gamma=None, scheme="inverse")

    On CUDA the label range is not checked, to avoid a device sync; validate your labels once.
    """

    weights: torch.Tensor

    def __init__(
        self,
        samples_per_class: CountsLike,
        loss_type: str = "softmax",
        beta: float = 0.9999,
        gamma: float | None = 1.0,
        *,
        scheme: str = "effective",
    ) -> None:
        super().__init__()
        self.loss_type = _check_loss_type(loss_type)
        self.scheme = check_scheme(scheme)
        self.beta = check_beta(beta) if self.scheme == "effective" else beta
        self.gamma = _check_gamma(gamma, self.loss_type)
        self.samples_per_class = tuple(int(n) for n in check_counts(samples_per_class))
        self.register_buffer("weights", self._expected_weights())
        register = getattr(self, "register_state_dict_post_hook", None)  # public in torch 2.5+
        (register or self._register_state_dict_hook)(_record_config)

    @classmethod
    def unweighted(
        cls, num_classes: int, loss_type: str = "softmax", gamma: float | None = 1.0
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

    def _expected_weights(self) -> torch.Tensor:
        """The float32 weights of this configuration (CPU)."""
        return class_weights(self.samples_per_class, self.scheme, self.beta)

    def _config_text(self) -> str:
        """This configuration as ``ClassBalancedLoss(...)``."""
        return f"{type(self).__name__}({self.extra_repr()})"

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        """Load as usual after checking the saved ``weights`` are this configuration's."""
        loaded = state_dict.get(prefix + "weights")
        if (
            isinstance(loaded, torch.Tensor)
            and loaded.shape == self.weights.shape
            and loaded.is_floating_point()
            and loaded.device.type != "meta"
        ):
            expected = self._expected_weights().double()
            rtol = max(1e-6, 2 * torch.finfo(loaded.dtype).eps)
            got = loaded.detach().to(device="cpu", dtype=torch.float64)
            if not torch.allclose(got, expected, rtol=rtol, atol=0.0):
                saved = local_metadata.get(
                    _CONFIG_KEY, "a configuration the state dict does not record"
                )
                raise ValueError(
                    f"state_dict[{prefix + 'weights'!r}] holds the weights of {saved}, but "
                    f"this module is {self._config_text()}: loading would replace its weights "
                    f"while it still shows its own settings. Build the loss with the saved "
                    f"configuration before loading (saved weights {got.tolist()}, expected "
                    f"{expected.tolist()})."
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, C) against integer ``labels`` (B,) or multi-hot (B, C)."""
        weights = self.weights  # a buffer: each read goes through nn.Module.__getattr__
        _check_targets(logits, labels, self.loss_type)
        _check_module_classes(logits, weights.numel())
        return _weighted_loss(logits, labels, weights, self.loss_type, self.gamma)

    def extra_repr(self) -> str:
        """Loss type, scheme, β ("effective" only), γ (focal only) and number of classes."""
        beta = f", beta={self.beta}" if self.scheme == "effective" else ""
        gamma = f", gamma={self.gamma}" if self.loss_type == "focal" else ""
        return (
            f"loss_type={self.loss_type!r}, scheme={self.scheme!r}{beta}{gamma}, "
            f"num_classes={self.num_classes}"
        )


# --- Later methods: Balanced Softmax, logit adjustment, LDAM --------------------------------


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in float32, or as they are if float32/float64."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _log_counts(counts: np.ndarray) -> np.ndarray:
    """``log n_j`` in float64."""
    return np.log(counts.astype(np.float64))


def _log_priors(counts: np.ndarray) -> np.ndarray:
    """``log π_j = log n_j - log Σn`` in float64."""
    return _log_counts(counts) - math.log(float(counts.sum()))


def _margins(counts: np.ndarray, max_margin: float) -> np.ndarray:
    """LDAM margins ``Δ_j ∝ n_j^(-1/4)``, the largest exactly ``max_margin`` (float64)."""
    m = counts.astype(np.float64) ** -0.25
    return m / m.max() * max_margin


def _as_constant(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``values`` on the device of ``like``, in float64 for float64 ``like``, else float32."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.as_tensor(values, dtype=dtype, device=like.device)


def _shifted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``logits + shift`` (shift (C,)), in float32/64, autocast off."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = _upcast(logits)
        return F.cross_entropy(z + shift.to(device=z.device, dtype=z.dtype), labels.long())


def _ldam(
    logits: torch.Tensor,
    labels: torch.Tensor,
    margins: torch.Tensor,
    scale: float,
    weights: torch.Tensor | None,
) -> torch.Tensor:
    """LDAM cross-entropy of ``scale·(z - Δ_y e_y)`` on validated inputs, autocast off."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = _upcast(logits)
        labels = labels.long()
        margins = margins.to(device=z.device, dtype=z.dtype)
        index = labels.unsqueeze(1)
        shifted = z.scatter_add(1, index, -margins[labels].unsqueeze(1))  # target column only
        w = None if weights is None else weights.to(device=z.device, dtype=z.dtype)
        return F.cross_entropy(scale * shifted, labels, weight=w)


def balanced_softmax_loss(
    logits: torch.Tensor, labels: torch.Tensor, samples_per_class: CountsLike
) -> torch.Tensor:
    """Balanced Softmax (Ren et al. 2020): mean cross-entropy of ``z_j + log n_j``.

    Train with it and predict with the plain logits. The constants are rebuilt on every call:
    in a training loop prefer :class:`BalancedSoftmaxLoss`.
    """
    counts = check_counts(samples_per_class)
    _check_num_classes(logits, counts.size, "samples_per_class")
    _check_batch(logits, labels)
    return _shifted_cross_entropy(logits, labels, _as_constant(_log_counts(counts), logits))


def logit_adjusted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    samples_per_class: CountsLike,
    tau: float = 1.0,
) -> torch.Tensor:
    """Logit-adjusted loss (Menon et al. 2021): mean cross-entropy of ``z_j + τ log π_j``.

    ``π_j = n_j / Σn``; ``tau = 0`` is plain cross-entropy, ``tau = 1`` equals Balanced
    Softmax. The constants are rebuilt on every call: prefer :class:`LogitAdjustedLoss`.
    """
    tau = _check_tau(tau)
    counts = check_counts(samples_per_class)
    _check_num_classes(logits, counts.size, "samples_per_class")
    _check_batch(logits, labels)
    return _shifted_cross_entropy(logits, labels, _as_constant(tau * _log_priors(counts), logits))


def posthoc_logit_adjustment(
    logits: torch.Tensor, samples_per_class: CountsLike, tau: float = 1.0
) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al. 2021): ``z_j - τ log π_j``, ``π_j = n_j/Σn``.

    For evaluating a plainly trained model: predict ``argmax_j`` of the result. ``logits`` have
    the classes in their last dimension; the result has their dtype (computed in float32 or
    float64).
    """
    tau = _check_tau(tau)
    counts = check_counts(samples_per_class)
    if not isinstance(logits, torch.Tensor) or logits.ndim < 1 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"logits must be a floating tensor with the classes in the last dimension, e.g. "
            f"(batch, num_classes); got {shape}."
        )
    if logits.shape[-1] != counts.size:
        raise ValueError(
            f"samples_per_class has {counts.size} classes but logits have {logits.shape[-1]}; "
            f"give one count per model output."
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = _upcast(logits)
        return (z - _as_constant(tau * _log_priors(counts), z)).to(logits.dtype)


def _check_ldam_args(max_margin: float, scale: float) -> tuple[float, float]:
    """Return ``(max_margin, scale)`` after checking both are finite and > 0."""
    max_margin = _check_real(
        max_margin, "max_margin", "the largest LDAM margin, 0.5 in Cao et al.", positive=True
    )
    scale = _check_real(
        scale, "scale", "the logit scale s for cosine logits, 30 in Cao et al.", positive=True
    )
    return max_margin, scale


def ldam_margins(samples_per_class: CountsLike, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM margins ``Δ_j ∝ n_j^(-1/4)``, the largest equal to ``max_margin`` (float32, (C,))."""
    max_margin, _ = _check_ldam_args(max_margin, 1.0)
    counts = check_counts(samples_per_class)
    return torch.as_tensor(_margins(counts, max_margin), dtype=torch.float32)


def ldam_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    samples_per_class: CountsLike,
    max_margin: float = 0.5,
    scale: float = 30.0,
    weights: WeightsLike | None = None,
) -> torch.Tensor:
    """LDAM loss (Cao et al. 2019): cross-entropy of ``scale·(z - Δ_y e_y)``, ``Δ_j ∝ n_j^-¼``.

    The margin ``Δ_y`` is subtracted from the target column only; the largest margin (rarest
    class) is ``max_margin``. ``logits`` are meant to be cosine similarities of a normalized
    head (in [-1, 1]), but any real logits work. Without ``weights`` the reduction is the batch
    mean. With per-class ``weights`` (C,) (LDAM-DRW) it is PyTorch's weighted mean
    ``F.cross_entropy(..., weight=w)``, which divides by ``Σ_b w_{y_b}`` as the LDAM authors'
    code does; this differs from this paper's ``(1/B) Σ_b α_{y_b} CE_b``. Weight values are
    checked on the CPU only.
    """
    max_margin, scale = _check_ldam_args(max_margin, scale)
    counts = check_counts(samples_per_class)
    _check_num_classes(logits, counts.size, "samples_per_class")
    _check_batch(logits, labels)
    if weights is not None:
        weights = _check_class_weights(weights, counts.size)
    margins = _as_constant(_margins(counts, max_margin), logits)
    return _ldam(logits, labels, margins, scale, weights)


class BalancedSoftmaxLoss(nn.Module):
    """Balanced Softmax (Ren et al. 2020): mean cross-entropy of ``z_j + log n_j``.

    ``log n_j`` lives in the float32 buffer ``log_counts`` (not saved in the state dict: it is
    rebuilt from ``samples_per_class``), which ``.to(device)`` moves with the module.
    """

    log_counts: torch.Tensor

    def __init__(self, samples_per_class: CountsLike) -> None:
        super().__init__()
        counts = check_counts(samples_per_class)
        self.samples_per_class = tuple(int(n) for n in counts)
        log_counts = torch.as_tensor(_log_counts(counts), dtype=torch.float32)
        self.register_buffer("log_counts", log_counts, persistent=False)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self.log_counts.numel()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, C) against integer ``labels`` (B,)."""
        _check_batch(logits, labels)
        _check_module_classes(logits, self.num_classes)
        return _shifted_cross_entropy(logits, labels, self.log_counts)

    def extra_repr(self) -> str:
        """Number of classes and the count range."""
        counts = self.samples_per_class
        return f"num_classes={self.num_classes}, counts={min(counts)}..{max(counts)}"


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted loss (Menon et al. 2021): mean cross-entropy of ``z_j + τ log π_j``.

    ``τ log π_j`` lives in the float32 buffer ``adjustment`` (not saved in the state dict: it is
    rebuilt from ``samples_per_class`` and ``tau``), which ``.to(device)`` moves.
    """

    adjustment: torch.Tensor

    def __init__(self, samples_per_class: CountsLike, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        counts = check_counts(samples_per_class)
        self.samples_per_class = tuple(int(n) for n in counts)
        adjustment = torch.as_tensor(self.tau * _log_priors(counts), dtype=torch.float32)
        self.register_buffer("adjustment", adjustment, persistent=False)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self.adjustment.numel()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, C) against integer ``labels`` (B,)."""
        _check_batch(logits, labels)
        _check_module_classes(logits, self.num_classes)
        return _shifted_cross_entropy(logits, labels, self.adjustment)

    def extra_repr(self) -> str:
        """τ and number of classes."""
        return f"tau={self.tau}, num_classes={self.num_classes}"


class LDAMLoss(nn.Module):
    """LDAM loss (Cao et al. 2019) with margins ``Δ_j ∝ n_j^(-1/4)`` and logit scale ``s``.

    Float32 buffers: ``margins`` (rebuilt from the arguments, not saved) and ``weights``
    (saved; all ones when ``weights=None``, which gives the plain batch mean). The reduction is
    PyTorch's weighted mean ``Σ_b w_{y_b} CE_b / Σ_b w_{y_b}``, as in the LDAM authors' code
    (not this paper's ``/B``). For deferred re-weighting (LDAM-DRW) assign new weights in place
    at the switch, e.g. ``loss_fn.weights.copy_(class_weights(counts, "effective", 0.9999))``.
    """

    margins: torch.Tensor
    weights: torch.Tensor

    def __init__(
        self,
        samples_per_class: CountsLike,
        max_margin: float = 0.5,
        scale: float = 30.0,
        weights: WeightsLike | None = None,
    ) -> None:
        super().__init__()
        self.max_margin, self.scale = _check_ldam_args(max_margin, scale)
        counts = check_counts(samples_per_class)
        self.samples_per_class = tuple(int(n) for n in counts)
        margins = torch.as_tensor(_margins(counts, self.max_margin), dtype=torch.float32)
        self.register_buffer("margins", margins, persistent=False)
        if weights is None:
            w = torch.ones(counts.size, dtype=torch.float32)
        else:
            w = weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights
            w = _check_class_weights(w, counts.size).to(torch.float32)
        self.register_buffer("weights", w.clone())

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return self.margins.numel()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` (B, C) against integer ``labels`` (B,)."""
        _check_batch(logits, labels)
        _check_module_classes(logits, self.num_classes)
        return _ldam(logits, labels, self.margins, self.scale, self.weights)

    def extra_repr(self) -> str:
        """Largest margin, scale and number of classes."""
        return f"max_margin={self.max_margin}, scale={self.scale}, num_classes={self.num_classes}"

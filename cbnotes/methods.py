"""The method registry: every training method cbnotes runs, declared once.

A run names its method by a key of :data:`METHODS` (the ``loss_type`` of a
:class:`~cbnotes.config.RunConfig`). The entry says everything the rest of the package needs:

- the **head** (``"linear"``, or ``"cosine"``: normalized features and class vectors, as LDAM
  uses) and whether its bias starts at the prior ``-log(C-1)`` (sigmoid and focal, Sec. 4);
- which parameters are **exempt from weight decay** (the prior bias of sigmoid/focal heads);
- its **parameters** with their defaults (:data:`REQUIRED` where there is none);
- its **display name** and **sort order** for tables and figures;
- **how it re-balances**: through the loss weights, weights switched on late (deferred
  re-weighting, DRW), the sampling of the training set, or not at all (the loss itself
  carries the prior or a margin);
- its **criterion**, built from the training counts, the parameters and the recipe.

Models (:mod:`cbnotes.models`), training, the runner, the CLI, presets, analysis and plots read
this registry; no other module spells a method's name. Adding a method is one
:func:`register` call, its loss function in :mod:`cbnotes.losses`, and its tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import torch
from torch import nn

from cbnotes.effective import WEIGHT_SCHEMES, check_beta, class_weights

__all__ = [
    "HEADS",
    "METHODS",
    "PARAMS",
    "REQUIRED",
    "WEIGHTINGS",
    "DeferredReweighting",
    "Method",
    "build_criterion",
    "get_method",
    "method_choices",
    "method_label",
    "register",
    "resolve_params",
    "sampling_weights",
]

HEADS = ("linear", "cosine")
#: How a method re-balances: "none" (the loss carries the prior or a margin, or nothing),
#: "loss" (per-class loss weights), "deferred" (weights from the first lr decay on, DRW),
#: "sampling" (class-balanced re-sampling of the training set).
WEIGHTINGS = ("none", "loss", "deferred", "sampling")


class _Required:
    """Marker of a parameter without a default."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _real(name: str, value: Any, low: float, low_open: bool, hint: str) -> float:
    """``value`` as a finite float > low (or >= low); ValueError naming ``name`` otherwise."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if not ok:
        sign = ">" if low_open else ">="
        raise ValueError(f"{name} must be a finite number {sign} {low:g} ({hint}); got {value!r}")
    return float(value)


def _check_scheme(value: Any) -> str:
    if value not in WEIGHT_SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(WEIGHT_SCHEMES)}; got {value!r}")
    return value


#: Every method parameter a run can set, with its check (value -> canonical value).
PARAMS: dict[str, Callable[[Any], Any]] = {
    "beta": check_beta,
    "gamma": lambda v: _real("gamma", v, 0.0, False, "the focal exponent; the paper: 0.5, 1, 2"),
    "scheme": _check_scheme,
    "tau": lambda v: _real(
        "tau", v, 0.0, False, "the logit-adjustment strength; 1 in Menon et al."
    ),
    "max_margin": lambda v: _real("max_margin", v, 0.0, True, "LDAM's largest margin, 0.5"),
    "scale": lambda v: _real("scale", v, 0.0, True, "LDAM's logit scale, 30"),
}


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method: head, decay exemptions, parameters, display, re-balancing, loss."""

    name: str
    title: str
    order: int
    changes: str
    reference: str
    build: Callable[[Sequence[int], Mapping[str, Any]], nn.Module]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weighting: str = "none"
    head: str = "linear"
    prior_bias: bool = False
    decay_exempt: tuple[str, ...] = ()
    posthoc: bool = False
    label: Callable[[Mapping[str, Any]], str] | None = None

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {self.head!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}; got {self.weighting!r}")
        unknown = sorted(set(self.params) - set(PARAMS))
        if unknown:
            raise ValueError(f"unknown method parameter(s) {unknown}; known: {sorted(PARAMS)}")
        if self.weighting != "none" and "scheme" not in self.params:
            raise ValueError(f"method {self.name!r} re-balances, so it needs a 'scheme' parameter")

    def display(self, params: Mapping[str, Any]) -> str:
        """Display name of this method with resolved ``params`` (see :func:`method_label`)."""
        return self.label(params) if self.label is not None else self.title

    def rebalanced(self, params: Mapping[str, Any]) -> bool:
        """True when the resolved ``params`` make this method differ from its plain loss."""
        if self.weighting == "none":
            return self.name not in _PLAIN_LOSSES
        return not _uniform(params)


_PLAIN_LOSSES = ("softmax", "sigmoid", "focal")


def _uniform(params: Mapping[str, Any]) -> bool:
    """True when the weighting scheme gives every class weight 1."""
    return params["scheme"] == "none" or (params["scheme"] == "effective" and params["beta"] == 0)


#: The registry, in display order.
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (a name can be registered once); return it."""
    if not isinstance(method, Method):
        raise ValueError(f"method must be a Method; got {type(method).__name__}")
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``; ValueError listing the choices otherwise."""
    method = METHODS.get(name) if isinstance(name, str) else None
    if method is None:
        raise ValueError(f"method (loss_type) must be one of {', '.join(METHODS)}; got {name!r}")
    return method


def method_choices() -> tuple[str, ...]:
    """Names of the registered methods, in display order."""
    return tuple(sorted(METHODS, key=lambda n: (METHODS[n].order, n)))


def resolve_params(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of :data:`PARAMS` for method ``name``: checked, defaults filled in.

    ``given`` maps parameter names to values, None meaning "the method's default". A parameter
    the method does not take must be None (it stays None). ``beta`` belongs to
    ``scheme="effective"``: with another scheme it must be None or 0 and becomes 0.
    """
    method = get_method(name)
    unknown = sorted(set(given) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown method parameter(s) {unknown}; known: {sorted(PARAMS)}")
    out: dict[str, Any] = {}
    for key in sorted(PARAMS, key=lambda k: k != "scheme"):  # beta depends on the scheme
        value = given.get(key)
        if key not in method.params:
            if value is not None:
                takes = ", ".join(method.params) or "no parameters"
                raise ValueError(
                    f"{key} does not apply to method {name!r} (it takes {takes}); "
                    f"leave it None (got {key}={value!r})"
                )
            out[key] = None
            continue
        if key == "beta" and out.get("scheme") not in (None, "effective"):
            if value not in (None, 0, 0.0):
                raise ValueError(
                    f"beta is used only by scheme='effective'; method {name!r} has "
                    f"scheme={out['scheme']!r}, so leave beta None (got beta={value!r})"
                )
            out[key] = 0.0
            continue
        if value is None:
            value = method.params[key]
            if value is REQUIRED:
                raise ValueError(f"method {name!r} needs {key}; give a value (got None)")
        out[key] = PARAMS[key](value)
    return {key: out[key] for key in PARAMS}


def _number(value: float) -> str:
    """'1.0' for 1, '0.9999' for 0.9999 (Python's repr of the float)."""
    return repr(float(value))


_SCHEME_TEXT = {"inverse": "1/n", "sqrt_inverse": "1/√n", "none": "no"}


def _weighting_text(params: Mapping[str, Any]) -> str:
    """'β=0.9999' for effective numbers, '1/n' or '1/√n' otherwise."""
    if params["scheme"] == "effective":
        return f"β={_number(params['beta'])}"
    return _SCHEME_TEXT[params["scheme"]]


def _reweighted_label(base: str) -> Callable[[Mapping[str, Any]], str]:
    """Labels of the paper's losses: 'focal γ=1.0', 'CB focal γ=1.0 (β=0.9999)', 'softmax 1/n'."""

    def label(params: Mapping[str, Any]) -> str:
        name = base if params.get("gamma") is None else f"{base} γ={_number(params['gamma'])}"
        if _uniform(params):
            return name
        if params["scheme"] == "effective":
            return f"CB {name} ({_weighting_text(params)})"
        return f"{name}, {_SCHEME_TEXT[params['scheme']]} weights"

    return label


def method_label(name: str, params: Mapping[str, Any]) -> str:
    """Display name of method ``name`` with ``params`` (resolved by :func:`resolve_params`)."""
    return get_method(name).display(resolve_params(name, params))


# ----------------------------------------------------------------------------- criteria


def _weights(counts: Sequence[int], params: Mapping[str, Any]) -> torch.Tensor:
    """The method's per-class weights (float32, sum C) from its scheme and β."""
    return class_weights(counts, scheme=params["scheme"], beta=params["beta"] or 0.0)


class DeferredReweighting(nn.Module):
    """Deferred re-weighting (DRW, Cao et al. 2019): the plain criterion until epoch ``start``
    (the first learning-rate decay), the class-weighted one from then on.

    The trainer calls :meth:`set_epoch` before each epoch, so a resumed run switches at the
    same epoch as an uninterrupted one.
    """

    def __init__(self, plain: nn.Module, weighted: nn.Module, start: int) -> None:
        super().__init__()
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an integer epoch >= 0; got {start!r}")
        self.plain = plain
        self.weighted = weighted
        self.start = start
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the criterion of ``epoch``: plain before ``start``, weighted from it on."""
        self.epoch = int(epoch)

    @property
    def active(self) -> nn.Module:
        """The criterion in use for the current epoch."""
        return self.weighted if self.epoch >= self.start else self.plain

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The current epoch's criterion."""
        return self.active(logits, labels)

    def extra_repr(self) -> str:
        return f"start={self.start}"


def _drw_start(recipe: Any) -> int:
    """DRW switches at the recipe's first lr decay (epoch 160 of 200 in the paper's recipe)."""
    if not recipe.decay_epochs:
        raise ValueError(
            f"deferred re-weighting starts at the first learning-rate decay, but this recipe "
            f"({recipe.epochs} epochs) has none; train for more epochs"
        )
    return int(recipe.decay_epochs[0])


def build_criterion(
    name: str, counts: Sequence[int], params: Mapping[str, Any], recipe: Any
) -> nn.Module:
    """The training criterion of method ``name`` for the training ``counts`` and ``recipe``."""
    method = get_method(name)
    resolved = resolve_params(name, params)
    criterion = method.build(counts, resolved)
    if method.weighting == "deferred":
        plain = method.build(counts, {**resolved, "scheme": "none", "beta": 0.0})
        criterion = DeferredReweighting(plain, criterion, _drw_start(recipe))
    return criterion


def sampling_weights(
    name: str, counts: Sequence[int], params: Mapping[str, Any]
) -> torch.Tensor | None:
    """Per-class sample weights of a re-sampling method (None for every other method).

    A training image of class j is drawn with probability ∝ w_j, so class j makes up a share
    n_j·w_j / Σ n·w of each epoch (uniform over classes for ``scheme="inverse"``).
    """
    method = get_method(name)
    if method.weighting != "sampling":
        return None
    return _weights(counts, resolve_params(name, params))


# ----------------------------------------------------------------------------- the methods


def _cb_loss(loss_type: str) -> Callable[[Sequence[int], Mapping[str, Any]], nn.Module]:
    def build(counts: Sequence[int], params: Mapping[str, Any]) -> nn.Module:
        from cbnotes.losses import ClassBalancedLoss

        return ClassBalancedLoss(
            counts,
            loss_type,
            beta=params["beta"] or 0.0,
            gamma=params.get("gamma"),
            scheme=params["scheme"],
        )

    return build


def _plain_softmax(counts: Sequence[int], params: Mapping[str, Any]) -> nn.Module:
    from cbnotes.losses import ClassBalancedLoss

    return ClassBalancedLoss(counts, "softmax", beta=0.0, scheme="none")


def _balanced_softmax(counts: Sequence[int], params: Mapping[str, Any]) -> nn.Module:
    from cbnotes.losses import BalancedSoftmaxLoss

    return BalancedSoftmaxLoss(counts)


def _logit_adjusted(counts: Sequence[int], params: Mapping[str, Any]) -> nn.Module:
    from cbnotes.losses import LogitAdjustedLoss

    return LogitAdjustedLoss(counts, tau=params["tau"])


def _ldam(counts: Sequence[int], params: Mapping[str, Any]) -> nn.Module:
    from cbnotes.losses import LDAMLoss

    weights = None if params["scheme"] is None else _weights(counts, params)
    return LDAMLoss(counts, max_margin=params["max_margin"], scale=params["scale"], weights=weights)


_EFFECTIVE = {"beta": 0.0, "scheme": "effective"}
_DRW = {"beta": 0.9999, "scheme": "effective"}
_SIGMOID_HEAD = {"prior_bias": True, "decay_exempt": ("fc.bias",)}
_CUI = "Cui et al., CVPR 2019"
_CAO = "Cao et al., NeurIPS 2019"

register(
    Method(
        "softmax",
        "softmax",
        0,
        "the loss: per-class weights (1/E_n, 1/n or 1/√n; none when β = 0)",
        _CUI,
        _cb_loss("softmax"),
        params=_EFFECTIVE,
        weighting="loss",
        posthoc=True,
        label=_reweighted_label("softmax"),
    )
)
register(
    Method(
        "sigmoid",
        "sigmoid",
        1,
        "the loss: one-vs-all sigmoids with per-class weights, prior bias init",
        _CUI,
        _cb_loss("sigmoid"),
        params=_EFFECTIVE,
        weighting="loss",
        label=_reweighted_label("sigmoid"),
        **_SIGMOID_HEAD,
    )
)
register(
    Method(
        "focal",
        "focal",
        2,
        "the loss: sigmoid focal loss (1-p)^γ with per-class weights, prior bias init",
        _CUI,
        _cb_loss("focal"),
        params={**_EFFECTIVE, "gamma": REQUIRED},
        weighting="loss",
        label=_reweighted_label("focal"),
        **_SIGMOID_HEAD,
    )
)
register(
    Method(
        "resample",
        "CB re-sampling",
        3,
        "the sampling: each epoch draws images with class probabilities ∝ n_j·w_j",
        "class-balanced sampling, as compared in Cao et al., NeurIPS 2019",
        _plain_softmax,
        params={"beta": 0.0, "scheme": "inverse"},
        weighting="sampling",
        label=lambda p: f"CB re-sampling ({_weighting_text(p)})",
    )
)
register(
    Method(
        "drw",
        "DRW",
        4,
        "the schedule: plain softmax until the first lr decay, class weights after it",
        _CAO,
        _cb_loss("softmax"),
        params=_DRW,
        weighting="deferred",
        label=lambda p: f"softmax DRW ({_weighting_text(p)})",
    )
)
register(
    Method(
        "ldam",
        "LDAM",
        5,
        "the margin: the target logit of class j is lowered by Δ_j ∝ n_j^(-1/4) (cosine head)",
        _CAO,
        _ldam,
        params={"max_margin": 0.5, "scale": 30.0},
        head="cosine",
        label=lambda p: "LDAM",
    )
)
register(
    Method(
        "ldam_drw",
        "LDAM-DRW",
        6,
        "margin and schedule: LDAM, with class weights from the first lr decay on",
        _CAO,
        _ldam,
        params={"max_margin": 0.5, "scale": 30.0, **_DRW},
        weighting="deferred",
        head="cosine",
        label=lambda p: f"LDAM-DRW ({_weighting_text(p)})",
    )
)
register(
    Method(
        "balanced_softmax",
        "Balanced Softmax",
        7,
        "the prior: softmax of z_j + log n_j in training, plain logits at test",
        "Ren et al., NeurIPS 2020",
        _balanced_softmax,
    )
)
register(
    Method(
        "logit_adjusted",
        "logit-adjusted loss",
        8,
        "the prior: softmax of z_j + τ·log π_j in training, plain logits at test",
        "Menon et al., ICLR 2021",
        _logit_adjusted,
        params={"tau": 1.0},
        label=lambda p: f"logit-adjusted loss (τ={_number(p['tau'])})",
    )
)

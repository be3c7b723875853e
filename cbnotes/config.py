"""What one training run is: :class:`RunConfig`, and its stable ``run_id``.

A run's ``run_id`` is a readable prefix and a hash of its configuration. The hash must not
change when a field is added to :class:`RunConfig` later, or every finished run on disk would
be orphaned. So the hash covers the fields of the first release (:data:`BASE_FIELDS`) always,
and a field added since (:data:`ADDED_FIELDS`) only when its value differs from the behaviour
every run had before that field existed. Adding a field is then: add it to the dataclass and
to :data:`ADDED_FIELDS` with its old implicit value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from cbnotes.methods import PARAMS, get_method, resolve_params

#: Allowed values of ``RunConfig.amp`` (passed to the trainer).
AMP_CHOICES: tuple[str, ...] = ("auto", "off", "bf16", "fp16")
#: Fields of the first release: always part of the run hash.
BASE_FIELDS: tuple[str, ...] = (
    "dataset",
    "imbalance_factor",
    "loss_type",
    "beta",
    "gamma",
    "seed",
    "depth",
    "base_width",
    "epochs",
    "batch_size",
    "pad",
    "data_seed",
    "amp",
    "eval_every",
)
#: Fields added later -> the value every run had before the field existed. Such a field is
#: part of the run hash only when it differs from this value, and a stored config without it
#: (an older result or checkpoint) is read with this value.
ADDED_FIELDS: dict[str, Any] = {
    "scheme": "effective",
    "tau": None,
    "max_margin": None,
    "scale": None,
    "shortcut": "subsample",
    "init": "kaiming",
}

_FLOAT_FIELDS = ("imbalance_factor",)
_INT_FIELDS = ("seed", "data_seed", "depth", "base_width", "epochs", "batch_size", "pad")


def _format_number(value: float) -> str:
    """Shortest exact text for a number: 100.0 -> '100', 0.9999 -> '0.9999'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _known_datasets() -> tuple[str, ...]:
    """Names accepted by ``cbnotes.data.load_dataset``."""
    from cbnotes.data import DATASETS

    return tuple(DATASETS)


def _model_choices() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Shortcut and initialization choices of ``cbnotes.models.resnet_cifar``."""
    from cbnotes.models import INITS, SHORTCUTS

    return SHORTCUTS, INITS


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (and hence its ``run_id``).

    ``loss_type`` names the method (a key of :data:`cbnotes.methods.METHODS`: the paper's
    softmax, sigmoid and focal losses, and the methods it is measured against). The method
    parameters ``beta``, ``gamma``, ``scheme``, ``tau``, ``max_margin`` and ``scale`` take the
    method's default when None, and must stay None where the method does not use them. For
    the paper's losses ``beta = 0`` is the plain loss and ``beta > 0`` the class-balanced loss
    with α_i ∝ (1 - β) / (1 - β^{n_i}) (Eq. 7-8); ``scheme`` picks other weights (1/n, 1/√n).

    ``shortcut`` and ``init`` default to the official code's ResNet (2×2 average-pool
    shortcut, Glorot-uniform init). ``data_seed`` fixes the long-tailed training subset; it
    defaults to 0 for every ``seed``, because the paper trains all methods on one subset.
    ``seed`` varies the model initialization, batch order and augmentation.
    """

    dataset: str
    imbalance_factor: float = 100.0
    loss_type: str = "softmax"
    beta: float | None = None
    gamma: float | None = None
    seed: int = 0
    depth: int = 32
    base_width: int = 16
    epochs: int = 200
    batch_size: int = 128
    pad: int = 4
    data_seed: int = 0
    amp: str = "auto"
    eval_every: int = 1
    scheme: str | None = None
    tau: float | None = None
    max_margin: float | None = None
    scale: float | None = None
    shortcut: str = "avgpool"
    init: str = "glorot"

    def __post_init__(self) -> None:
        """Validate every field; store numbers in one canonical type (int or float)."""
        if not isinstance(self.dataset, str) or self.dataset not in _known_datasets():
            raise ValueError(
                f"dataset must be one of {', '.join(_known_datasets())}; got {self.dataset!r}"
            )
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number; got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in (*_INT_FIELDS, "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer; got {value!r}")
        if not (math.isfinite(self.imbalance_factor) and self.imbalance_factor >= 1):
            raise ValueError(
                f"imbalance_factor must be a finite number >= 1 (n_max / n_min); "
                f"got {self.imbalance_factor!r}"
            )
        params = resolve_params(self.loss_type, {k: getattr(self, k) for k in PARAMS})
        for name, value in params.items():
            object.__setattr__(self, name, value)
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); got {self.depth}"
            )
        for name in ("base_width", "epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("seed", "data_seed", "pad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}; got {self.amp!r}")
        shortcuts, inits = _model_choices()
        if self.shortcut not in shortcuts:
            raise ValueError(
                f"shortcut must be one of {', '.join(shortcuts)}; got {self.shortcut!r}"
            )
        if self.init not in inits:
            raise ValueError(f"init must be one of {', '.join(inits)}; got {self.init!r}")

    @property
    def method(self) -> Any:
        """The :class:`cbnotes.methods.Method` this run trains."""
        return get_method(self.loss_type)

    @property
    def params(self) -> dict[str, Any]:
        """The method parameters (None where the method does not use one)."""
        return {name: getattr(self, name) for name in PARAMS}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        A missing field of :data:`ADDED_FIELDS` takes the value runs had before it existed, so
        that results and checkpoints written by older versions read back as what they were.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a run config must be a mapping of fields; got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown RunConfig field(s) {unknown}; allowed: {', '.join(sorted(names))}"
            )
        return cls(**{**ADDED_FIELDS, **data})

    def identity(self) -> dict[str, Any]:
        """The fields the run hash covers: all base fields, added ones that differ from before."""
        data = self.to_dict()
        return {
            key: value
            for key, value in data.items()
            if key in BASE_FIELDS or value != ADDED_FIELDS[key]
        }

    def canonical_json(self) -> str:
        """Key-sorted compact JSON of :meth:`identity`: the input of the run hash."""
        return json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))

    @property
    def config_hash(self) -> str:
        """First 8 hex digits of SHA-256 of :meth:`canonical_json` (stable across processes)."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:8]

    @property
    def run_id(self) -> str:
        """Readable, unique id, e.g. ``fashion_mnist-if100-softmax-b0.9999-s0-1a2b3c4d``."""
        parts = [self.dataset, f"if{_format_number(self.imbalance_factor)}", self.loss_type]
        if self.gamma is not None:
            parts.append(f"g{_format_number(self.gamma)}")
        if self.scheme not in (None, "effective"):
            parts.append(self.scheme)
        if self.beta is not None:
            parts.append(f"b{_format_number(self.beta)}")
        return "-".join([*parts, f"s{self.seed}", self.config_hash])

    @property
    def label(self) -> str:
        """Method name for tables, e.g. 'softmax' or 'CB focal γ=1.0 (β=0.9999)'."""
        return self.method.display(self.params)

    @property
    def class_balanced(self) -> bool:
        """True when the method re-balances (for the paper's losses: non-uniform weights)."""
        return self.method.rebalanced(self.params)

    def recipe(self) -> Any:
        """Training recipe: the paper's (Sec. 5) scaled to ``epochs`` (200 = the paper's)."""
        from cbnotes.training import Recipe

        return Recipe.scaled(self.epochs, batch_size=self.batch_size)

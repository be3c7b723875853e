"""cbnotes: Class-Balanced Loss Based on Effective Number of Samples (Cui et al., CVPR 2019).

The public names below are imported lazily (PEP 562): ``import cbnotes`` does no work and
pulls in no heavy module until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "effective_number": "cbnotes.effective",
    "class_balanced_weights": "cbnotes.effective",
    "class_weights": "cbnotes.effective",
    "WEIGHT_SCHEMES": "cbnotes.effective",
    "long_tailed_counts": "cbnotes.imbalance",
    "class_balanced_loss": "cbnotes.losses",
    "ClassBalancedLoss": "cbnotes.losses",
    "prior_bias": "cbnotes.losses",
    "LOSS_TYPES": "cbnotes.losses",
    "class_balanced_loss_from_weights": "cbnotes.losses",
    "focal_modulator": "cbnotes.losses",
    "balanced_softmax_loss": "cbnotes.losses",
    "logit_adjusted_loss": "cbnotes.losses",
    "posthoc_logit_adjustment": "cbnotes.losses",
    "ldam_loss": "cbnotes.losses",
    "ldam_margins": "cbnotes.losses",
    "BalancedSoftmaxLoss": "cbnotes.losses",
    "LogitAdjustedLoss": "cbnotes.losses",
    "LDAMLoss": "cbnotes.losses",
    "resnet_cifar": "cbnotes.models",
    "init_head_for_loss": "cbnotes.models",
    "confusion_matrix": "cbnotes.metrics",
    "summarize": "cbnotes.metrics",
    "Recipe": "cbnotes.training",
    "Trainer": "cbnotes.training",
    "seed_everything": "cbnotes.training",
    "ImageSet": "cbnotes.data",
    "DATASETS": "cbnotes.data",
    "load_dataset": "cbnotes.data",
    "DeviceLoader": "cbnotes.pipeline",
    "augment_batch": "cbnotes.pipeline",
    "RunConfig": "cbnotes.config",
    "run_experiment": "cbnotes.runner",
    "run_sweep": "cbnotes.runner",
    "load_results": "cbnotes.results",
    "aggregate": "cbnotes.results",
    "METHODS": "cbnotes.methods",
    "Method": "cbnotes.methods",
    "register": "cbnotes.methods",
    "get_method": "cbnotes.methods",
    "PRESETS": "cbnotes.presets",
    "get_preset": "cbnotes.presets",
    "paper_table2": "cbnotes.paper",
    "compare_with_paper": "cbnotes.report",
    "simulate_effective_number": "cbnotes.simulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cbnotes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

"""Published numbers, machine-readable: the paper's Table 2 and the LDAM paper's Table 2.

``table2.csv`` (package data) is a tidy copy of Table 2: top-1 error (%) of ResNet-32 on
long-tailed CIFAR-10/100, one row per (dataset, imbalance factor, method). The
``class-balanced`` rows carry the best (loss, β, γ) the paper reports for that column; at
imbalance factor 1 every class has the same count, so the class-balanced weights are all 1
and the paper gives no β (``beta`` is empty there).
"""

from __future__ import annotations

from importlib import resources
from io import StringIO

import pandas as pd

#: Row order of Table 2.
PAPER_METHODS: tuple[str, ...] = (
    "softmax",
    "sigmoid",
    "focal γ=0.5",
    "focal γ=1.0",
    "focal γ=2.0",
    "class-balanced",
)
#: Column order of Table 2 (dataset, imbalance factor).
PAPER_COLUMNS: tuple[tuple[str, int], ...] = tuple(
    (dataset, imbalance)
    for dataset in ("cifar10", "cifar100")
    for imbalance in (200, 100, 50, 20, 10, 1)
)
#: Datasets that appear in Table 2.
PAPER_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")


def paper_table2() -> pd.DataFrame:
    """Table 2 of the paper as a tidy DataFrame (top-1 error in percent, as printed)."""
    text = resources.files("cbnotes").joinpath("table2.csv").read_text(encoding="utf-8")
    df = pd.read_csv(StringIO(text), dtype={"dataset": str, "method": str, "loss_type": str})
    df["imbalance_factor"] = df["imbalance_factor"].astype(float)
    return df


def paper_table2_wide() -> pd.DataFrame:
    """Table 2 laid out as printed: methods × (dataset, imbalance factor)."""
    df = paper_table2()
    wide = df.pivot(index="method", columns=["dataset", "imbalance_factor"], values="top1_error")
    columns = [(d, float(f)) for d, f in PAPER_COLUMNS]
    return wide.loc[list(PAPER_METHODS), columns]


def ldam_table2() -> pd.DataFrame:
    """Table 2 of the LDAM paper (Cao et al., NeurIPS 2019): top-1 error (%) on CIFAR-LT.

    ResNet-32 on CIFAR-10/100-LT at imbalance factors 100 and 10, the LDAM authors' runs of
    ERM, class-balanced re-sampling, re-weighting and focal loss, LDAM and LDAM-DRW.
    ``our_method`` is the display name of the closest cbnotes method. Their "CB" rows are not
    computed exactly as this paper's code (their re-weighted CE divides by the sum of the
    weights, their focal loss is the softmax focal loss), and their selection protocol is not
    this paper's, so these are references for the order of magnitude, not for decimals.
    """
    text = resources.files("cbnotes").joinpath("ldam_table2.csv").read_text(encoding="utf-8")
    df = pd.read_csv(StringIO(text), dtype={"dataset": str, "method": str, "our_method": str})
    df["imbalance_factor"] = df["imbalance_factor"].astype(float)
    return df

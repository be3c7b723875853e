"""Tables and figures from finished runs, with the paper's Table 2 beside our numbers.

All errors and accuracies are percentages. Figures are built on ``matplotlib.figure.Figure``
(no pyplot state, no backend change on import): Jupyter shows the returned figure, and
``path=`` saves it atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cbnotes._files import atomic_path
from cbnotes.data import dataset_title
from cbnotes.methods import PARAMS
from cbnotes.paper import paper_table2
from cbnotes.results import GROUP_KEYS, aggregate, sort_methods

#: Column names that make clear which number is whose.
OURS = "ours (mean)"
OURS_STD = "ours (std)"
PAPER = "paper (reference)"
PAPER_EPOCHS = 200
PAPER_DEPTH = 32


def _same(a: Any, b: Any) -> bool:
    """Equality that treats two NaN/None as equal."""
    a_nan = a is None or (isinstance(a, float) and math.isnan(a))
    b_nan = b is None or (isinstance(b, float) and math.isnan(b))
    return (a_nan and b_nan) or (not a_nan and not b_nan and float(a) == float(b))


def _paper_match(row: pd.Series, paper: pd.DataFrame) -> pd.Series | None:
    """The Table 2 row for our (dataset, IF, loss, β, γ), if the paper reports that setting."""
    if row["scheme"] != "effective":  # Table 2 has effective-number weights only
        return None
    cells = paper[
        (paper["dataset"] == row["dataset"])
        & (paper["imbalance_factor"] == row["imbalance_factor"])
        & (paper["loss_type"] == row["loss_type"])
    ]
    for _, cell in cells.iterrows():
        if not _same(cell["gamma"], row["gamma"]):
            continue
        if _same(cell["beta"], row["beta"]):
            return cell
        # IF 1: the paper's class-balanced row has no β (all weights are 1 for any β).
        if cell["method"] == "class-balanced" and pd.isna(cell["beta"]) and row["beta"] > 0:
            return cell
    return None


def _note(row: pd.Series, cell: pd.Series | None, paper_datasets: set[str]) -> str:
    """Why a row has no paper number, or why it is not directly comparable."""
    if row["dataset"] not in paper_datasets:
        return f"no paper number: {row['dataset']} is not in the paper's Table 2"
    if cell is None:
        if row["class_balanced"]:
            return "no paper number: Table 2 lists only the best class-balanced setting"
        return "no paper number for this setting"
    notes = []
    if cell["method"] == "class-balanced":
        notes.append("paper's best class-balanced setting for this column")
    if row["epochs"] != PAPER_EPOCHS or row["depth"] != PAPER_DEPTH:
        notes.append(
            f"not comparable: ResNet-{row['depth']}, {row['epochs']} epochs "
            f"(paper: ResNet-{PAPER_DEPTH}, {PAPER_EPOCHS} epochs)"
        )
    return "; ".join(notes)


def compare_with_paper(results_df: pd.DataFrame) -> pd.DataFrame:
    """Our last-epoch top-1 error (mean ± std over seeds) beside Table 2 where it has the cell.

    Fashion-MNIST (and the synthetic set) are not in the paper: their paper column is empty and
    the ``note`` says so.
    """
    agg = aggregate(results_df, metrics=("top1_error",))
    paper = paper_table2()
    paper_datasets = set(paper["dataset"])
    rows = []
    for _, row in agg.iterrows():
        cell = _paper_match(row, paper)
        ours = row["top1_error_mean"]
        ref = None if cell is None else float(cell["top1_error"])
        rows.append(
            {
                "dataset": row["dataset"],
                "imbalance_factor": row["imbalance_factor"],
                "method": row["label"],
                "epochs": row["epochs"],
                "depth": row["depth"],
                "n": row["n"],
                OURS: ours,
                OURS_STD: row["top1_error_std"],
                PAPER: ref,
                "ours - paper": None if ref is None else ours - ref,
                "note": _note(row, cell, paper_datasets),
            }
        )
    return pd.DataFrame(rows)


def _cell_text(mean: float, std: float, n: int) -> str:
    """'25.43 ± 0.31 (n=3)', or '25.43 (n=1)' when there is one seed."""
    if n < 2 or pd.isna(std):
        return f"{mean:.2f} (n={n})"
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def results_table(df: pd.DataFrame, metric: str = "top1_error") -> pd.DataFrame:
    """Methods × (dataset, imbalance factor) of 'mean ± std (n)' strings for display.

    Settings that vary in ``df`` besides the method (epochs, depth, ...) become index levels.
    """
    agg = aggregate(df, metrics=(metric,))
    if agg.empty:
        raise ValueError("df has no finished runs; run a preset first (cbnotes run --preset ...)")
    agg["cell"] = [
        _cell_text(m, s, int(n))
        for m, s, n in zip(agg[f"{metric}_mean"], agg[f"{metric}_std"], agg["n"], strict=True)
    ]
    fixed = {"dataset", "imbalance_factor", "label", "class_balanced", "loss_type", *PARAMS}
    varying = [k for k in GROUP_KEYS if k not in fixed and agg[k].nunique(dropna=False) > 1]
    index = ["label", *varying]
    order = list(dict.fromkeys(agg["label"]))
    table = agg.pivot_table(
        index=index, columns=["dataset", "imbalance_factor"], values="cell", aggfunc="first"
    )
    table = table.reindex(columns=sorted(table.columns, key=lambda c: (c[0], -c[1])))
    labels = table.index.get_level_values("label")
    return table.iloc[sorted(range(len(table)), key=lambda i: order.index(labels[i]))]


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` atomically; the format follows the file suffix (default PNG)."""
    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    return target


def _facets(df: pd.DataFrame) -> list[tuple[str, float]]:
    """(dataset, IF) pairs in display order."""
    pairs = df[["dataset", "imbalance_factor"]].drop_duplicates()
    return sorted(map(tuple, pairs.to_numpy()), key=lambda p: (p[0], -p[1]))


def _check_rows(df: pd.DataFrame, columns: tuple[str, ...]) -> None:
    """Raise a clear error for an empty or incomplete results frame."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the output of load_results()")
    if df.empty:
        raise ValueError("df has no finished runs; run a preset first (cbnotes run --preset ...)")


def _figure_legend(fig: Figure, axes: Iterable[Axes], **kwargs: Any) -> None:
    """One legend for all panels (first handle per label), placed outside them; removes theirs."""
    legend: dict[str, Any] = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        legend.update(
            (label, handle)
            for handle, label in zip(handles, labels, strict=True)
            if label not in legend
        )
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    kwargs.setdefault("ncols", len(legend))  # one row unless the caller wraps it
    fig.legend(legend.values(), legend.keys(), **kwargs)


def plot_results(df: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> Figure:
    """Top-1 error per method (bar = mean over seeds, dots = seeds), one panel per (dataset, IF)."""
    import seaborn as sns

    _check_rows(df, ("dataset", "imbalance_factor", "label", "top1_error", "class_balanced"))
    facets = _facets(df)
    fig = Figure(figsize=(4.2 * len(facets), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(facets), squeeze=False)[0])
    for ax, (dataset, imbalance) in zip(axes, facets, strict=True):
        part = sort_methods(
            df[(df["dataset"] == dataset) & (df["imbalance_factor"] == imbalance)].copy()
        )
        part["kind"] = np.where(part["class_balanced"].astype(bool), "class-balanced", "plain")
        order = list(dict.fromkeys(part["label"]))
        palette = {"plain": "#9aa5b1", "class-balanced": "#d1495b"}
        sns.barplot(
            data=part,
            x="label",
            y="top1_error",
            hue="kind",
            order=order,
            palette=palette,
            errorbar=None,
            dodge=False,
            ax=ax,
            alpha=0.8,
        )
        sns.swarmplot(  # deterministic dot positions (a strip plot's jitter is random)
            data=part, x="label", y="top1_error", order=order, color="black", size=4, ax=ax
        )
        ax.set_title(f"{dataset_title(dataset)}, imbalance factor {imbalance:g}")
        ax.set_xlabel("")
        ax.set_ylabel("top-1 error (%, last epoch)")
        ax.tick_params(axis="x", labelrotation=60)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    # Above the panels, so that it never hides a seed's dot.
    _figure_legend(fig, axes, loc="outside upper center")
    if path is not None:
        save_figure(fig, path)
    return fig


def _mean_per_class(values: pd.Series) -> np.ndarray:
    """Mean per-class accuracy over runs (None = no test sample -> NaN)."""
    stacked = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    return np.nanmean(stacked, axis=0) if len(stacked) else stacked


def plot_per_class(df: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> Figure:
    """Per-class test accuracy vs class index (head → tail), train counts on a log twin axis."""
    _check_rows(df, ("dataset", "imbalance_factor", "label", "per_class_accuracy", "train_counts"))
    facets = _facets(df)
    fig = Figure(figsize=(5.5 * len(facets), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(facets), squeeze=False)[0])
    for ax, (dataset, imbalance) in zip(axes, facets, strict=True):
        part = sort_methods(
            df[(df["dataset"] == dataset) & (df["imbalance_factor"] == imbalance)].copy()
        )
        counts = np.asarray(part["train_counts"].iloc[0], dtype=float)
        classes = np.arange(len(counts))
        twin = ax.twinx()
        twin.bar(classes, counts, color="#dddddd", width=0.8, zorder=0)
        twin.set_yscale("log")
        twin.set_ylabel("training images (log)")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        for label, runs in part.groupby("label", sort=False):
            cb = bool(runs["class_balanced"].iloc[0])
            ax.plot(
                classes,
                _mean_per_class(runs["per_class_accuracy"]),
                marker="o",
                linestyle="-" if cb else "--",
                label=f"{label} (n={len(runs)})",
            )
        ax.set_title(f"{dataset_title(dataset)}, imbalance factor {imbalance:g}")
        ax.set_xlabel("class index (most → fewest training images)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
    # Below the panels, so that no curve or bar is hidden (n = seeds averaged per curve).
    _figure_legend(fig, axes, loc="outside lower center", ncols=3, fontsize="small")
    if path is not None:
        save_figure(fig, path)
    return fig

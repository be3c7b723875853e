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
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

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
    """Save ``fig`` atomically at the series' dpi (150); the format follows the file suffix."""
    from cbnotes.plots import STYLE

    target = Path(path)
    fmt = target.suffix.lstrip(".").lower() or "png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=fmt, dpi=STYLE["savefig.dpi"], bbox_inches="tight")
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
            if label not in legend and not label.startswith("_")
        )
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    kwargs.setdefault("ncols", len(legend))  # one row unless the caller wraps it
    fig.legend(legend.values(), legend.keys(), **kwargs)


def _label_order(df: pd.DataFrame) -> list[str]:
    """Method labels in the registry's order, each plain loss followed by its class-balanced
    versions (so that the two sit side by side), whatever the data set."""
    from cbnotes.methods import METHODS

    keys = pd.DataFrame(
        {
            "l": df["loss_type"].map({n: m.order for n, m in METHODS.items()}).fillna(99),
            "g": df["gamma"].fillna(-1.0),
            "cb": df["class_balanced"].astype(bool),
            "s": df["scheme"].fillna(""),
            "b": df["beta"].fillna(-1.0),
        },
        index=df.index,
    )
    index = keys.sort_values(list(keys.columns), kind="stable").index
    return list(dict.fromkeys(df.loc[index, "label"]))


def _method_styles(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Label -> line style (:func:`cbnotes.plots.method_style`): one hue per method, light and
    dashed when plain, saturated when class-balanced, another marker per further CB setting."""
    from cbnotes.plots import method_style

    styles: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, bool], int] = {}
    rows = df.drop_duplicates("label").set_index("label")
    for label in _label_order(df):
        loss, cb = rows.loc[label, "loss_type"], bool(rows.loc[label, "class_balanced"])
        variant = seen.get((loss, cb), 0)
        seen[(loss, cb)] = variant + 1
        styles[label] = method_style(loss, cb, variant)
    return styles


def plot_results(df: pd.DataFrame, path: str | os.PathLike[str] | None = None) -> Figure:
    """Top-1 error per method as horizontal bars (mean over seeds) with one dot per seed, one
    panel per (dataset, IF). Each method has its hue: light for the plain loss, saturated for
    its class-balanced versions; the mean is written at the end of its bar."""
    from cbnotes.plots import OKABE_ITO, lighten, style

    _check_rows(df, ("dataset", "imbalance_factor", "label", "top1_error", "class_balanced"))
    facets, order = _facets(df), _label_order(df)
    styles = _method_styles(df)
    with style():
        fig = Figure(
            figsize=(3.4 * len(facets) + 1.8, 0.42 * len(order) + 1.5), layout="constrained"
        )
        axes = np.atleast_1d(fig.subplots(1, len(facets), squeeze=False, sharey=True)[0])
        for ax, (dataset, imbalance) in zip(axes, facets, strict=True):
            part = df[(df["dataset"] == dataset) & (df["imbalance_factor"] == imbalance)]
            for y, label in enumerate(order):
                errors = np.sort(part.loc[part["label"] == label, "top1_error"].to_numpy(float))
                if len(errors) == 0:
                    continue
                color = styles[label]["color"]
                ax.barh(y, errors.mean(), height=0.7, color=color, edgecolor="none")
                offsets = np.linspace(-0.18, 0.18, len(errors)) if len(errors) > 1 else [0.0]
                ax.scatter(errors, y + np.asarray(offsets), s=14, color="black", zorder=3)
                ax.text(errors.max(), y, f"  {errors.mean():.2f}", va="center", fontsize=9)
            ax.set_yticks(range(len(order)), order)
            ax.set_title(f"{dataset_title(dataset)}, IF {imbalance:g}")
            ax.set_xlabel("top-1 error (%, last epoch)")
            ax.margins(x=0.18)
            ax.grid(True, axis="x")
        axes[0].invert_yaxis()
        proxies = [
            Patch(color=lighten(OKABE_ITO["blue"]), label="plain loss (light)"),
            Patch(color=OKABE_ITO["blue"], label="class-balanced (saturated)"),
            Line2D([], [], marker="o", color="black", linestyle="none", label="one seed"),
        ]
        fig.legend(handles=proxies, loc="outside lower center", ncols=3)
    if path is not None:
        save_figure(fig, path)
    return fig


def _per_class_stats(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=1; 0 for one run) of per-class accuracy over runs (None -> NaN)."""
    stacked = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    mean = np.nanmean(stacked, axis=0)
    std = np.nanstd(stacked, axis=0, ddof=1) if len(stacked) > 1 else np.zeros_like(mean)
    return mean, std


def plot_per_class(
    df: pd.DataFrame,
    path: str | os.PathLike[str] | None = None,
    *,
    by_loss: bool = False,
) -> Figure:
    """Per-class test accuracy from the most to the fewest training images (train counts as grey
    bars on a log twin axis), one panel per (dataset, IF), or with ``by_loss`` one row per
    (dataset, IF) and one panel per loss (its plain and class-balanced versions). Lines: mean over
    seeds, band ±1 std; class names on the axis where the data set has them."""
    from cbnotes.analysis import class_names
    from cbnotes.plots import style

    _check_rows(df, ("dataset", "imbalance_factor", "label", "per_class_accuracy", "train_counts"))
    facets, styles = _facets(df), _method_styles(df)
    losses = list(dict.fromkeys(sort_methods(df)["loss_type"])) if by_loss else [None]
    panels = [(facet, loss) for facet in facets for loss in losses]
    rows, cols = (len(facets), len(losses)) if by_loss else (1, len(facets))
    with style():
        fig = Figure(figsize=(3.6 * cols + 1.0, 3.3 * rows + 0.9), layout="constrained")
        grid = fig.subplots(rows, cols, squeeze=False, sharey=True)
        for i, ((dataset, imbalance), loss) in enumerate(panels):
            ax = grid.flat[i]
            part = df[(df["dataset"] == dataset) & (df["imbalance_factor"] == imbalance)]
            counts = np.asarray(part["train_counts"].iloc[0], dtype=float)
            runs_of = part if loss is None else part[part["loss_type"] == loss]
            names = class_names(dataset, len(counts))
            _per_class_panel(ax, sort_methods(runs_of), counts, names, styles)
            suffix = "" if loss is None else f": {loss}"
            ax.set_title(f"{dataset_title(dataset)}, IF {imbalance:g}{suffix}")
        for ax in grid[:, 0]:
            ax.set_ylabel("test accuracy (%)")
        _figure_legend(fig, grid.flat, loc="outside lower center", ncols=min(3, len(styles)))
    if path is not None:
        save_figure(fig, path)
    return fig


def _per_class_panel(
    ax: Axes,
    runs: pd.DataFrame,
    counts: np.ndarray,
    names: list[str],
    styles: dict[str, dict[str, Any]],
) -> None:
    """One panel of :func:`plot_per_class`: grey bars of the training counts (log scale, the
    counts in the tick labels), a line per method."""
    classes = np.arange(len(counts))
    twin = ax.twinx()
    twin.bar(classes, counts, color="#e6e6e6", width=0.8, zorder=0, label="_counts")
    twin.set_yscale("log")
    twin.set_ylim(counts.min() / 3, counts.max() * 1.5)
    twin.tick_params(axis="y", which="both", right=False, labelright=False)
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    for label, group in runs.groupby("label", sort=False):
        mean, std = _per_class_stats(group["per_class_accuracy"])
        line = styles[label]
        ax.plot(classes, mean, markersize=4, label=f"{label} (n={len(group)})", **line)
        ax.fill_between(classes, mean - std, mean + std, color=line["color"], alpha=0.15, lw=0)
    ax.set_ylim(0, 102)
    ax.grid(True, axis="y")
    if len(classes) <= 12:
        ticks = [f"{name} ({count:,.0f})" for name, count in zip(names, counts, strict=True)]
        ax.set_xticks(classes, ticks, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_xlabel("class (training images; grey bars, log scale)")
    else:
        ax.set_xlabel("class index, most → fewest training images (grey bars, log scale)")

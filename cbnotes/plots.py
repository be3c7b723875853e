"""Plot helpers shared by the notebooks. Each draws on a given matplotlib Axes and returns it.

Nothing here changes global matplotlib state; matplotlib is imported only when a helper runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from torch import nn

__all__ = [
    "class_colors",
    "plot_class_counts",
    "plot_class_weights",
    "plot_decision_regions",
]


def class_colors(num_classes: int) -> list[tuple[float, float, float]]:
    """One distinct colour per class (seaborn's colour-blind palette, husl beyond 10)."""
    import seaborn as sns

    if num_classes <= 10:
        return list(sns.color_palette("colorblind", num_classes))
    return list(sns.color_palette("husl", num_classes))


def plot_class_counts(
    ax: Axes,
    counts: Sequence[int],
    title: str,
    log: bool = False,
    annotate: bool | None = None,
    color: str | tuple[float, float, float] = "tab:blue",
) -> Axes:
    """Bar chart of training images per class index (log y-axis when counts span decades)."""
    if len(counts) == 0:
        raise ValueError("counts is empty; pass one count per class")
    positions = range(len(counts))
    bars = ax.bar(positions, counts, color=color, width=0.8)
    if annotate if annotate is not None else len(counts) <= 12:
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8, padding=2)
        ax.margins(y=0.15)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("class index (sorted by frequency)")
    ax.set_ylabel("training images" + (" (log scale)" if log else ""))
    ax.set_title(title)
    if len(counts) <= 12:
        ax.set_xticks(list(positions))
    return ax


def plot_class_weights(
    ax: Axes,
    weights_by_label: Mapping[str, Sequence[float] | torch.Tensor],
    title: str,
    log: bool = True,
) -> Axes:
    """One line of per-class weights per label (e.g. per β), with the uniform weight 1 dashed."""
    if not weights_by_label:
        raise ValueError("weights_by_label is empty; pass {label: per-class weights}")
    num_classes = 0
    for label, weights in weights_by_label.items():
        values = torch.as_tensor(weights, dtype=torch.float64).cpu().tolist()
        num_classes = max(num_classes, len(values))
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform (1)")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("class index (sorted by frequency)")
    ax.set_ylabel("class weight α_i" + (" (log scale)" if log else ""))
    ax.set_title(title)
    if num_classes <= 12:
        ax.set_xticks(range(num_classes))
    ax.legend(fontsize=8)
    return ax


def plot_decision_regions(
    ax: Axes,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    title: str,
    resolution: int = 200,
    pad: float = 0.5,
    limits: tuple[float, float, float, float] | None = None,
) -> Axes:
    """Shade the class that ``model`` predicts over the plane and scatter the points (x, y).

    The shaded area is ``limits = (x_min, x_max, y_min, y_max)``, or else the points' bounding
    box widened by ``pad``.
    """
    from matplotlib.colors import ListedColormap

    from cbnotes.toy import predict_grid

    x_cpu, y_cpu = x.detach().cpu(), y.detach().cpu()
    num_classes = int(list(model.parameters())[-1].shape[0])
    colors = class_colors(num_classes)
    if limits is None:
        lo, hi = x_cpu.min(dim=0).values - pad, x_cpu.max(dim=0).values + pad
        limits = (lo[0].item(), hi[0].item(), lo[1].item(), hi[1].item())
    if not (limits[0] < limits[1] and limits[2] < limits[3]):
        raise ValueError(
            f"limits must be (x_min, x_max, y_min, y_max) with min < max, got {limits}"
        )
    xs, ys, labels = predict_grid(model, limits[:2], limits[2:], resolution)
    cmap = ListedColormap(colors)
    ax.pcolormesh(
        xs, ys, labels, cmap=cmap, vmin=-0.5, vmax=num_classes - 0.5, alpha=0.25, shading="auto"
    )
    for k in range(num_classes):  # outline each region; shared borders overlap as one line
        if bool((labels == k).any()) and not bool((labels == k).all()):
            ax.contour(xs, ys, (labels == k).float(), levels=[0.5], colors="k", linewidths=0.6)
    counts = torch.bincount(y_cpu, minlength=num_classes).tolist()
    for k in range(num_classes):
        pts = x_cpu[y_cpu == k]
        size = 6 if counts[k] > 200 else 14
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=size,
            color=colors[k],
            edgecolors="k",
            linewidths=0.2,
            label=f"class {k} (n={counts[k]})",
        )
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(title)
    ax.set_xlim(limits[0], limits[1])
    ax.set_ylim(limits[2], limits[3])
    ax.set_aspect("equal")
    return ax

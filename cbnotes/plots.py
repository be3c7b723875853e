"""The series' figure style and plot helpers, shared by the notebooks and the CLI figures.

One palette for every figure: each β of the paper's grid has its own colour (:data:`BETA_COLORS`),
each loss (method) a hue whose light, dashed form is the plain loss and whose saturated, solid
form is its class-balanced version (:func:`method_style`), and "CB better / worse / within the
noise" has a diverging pair of colours (:data:`EFFECT_COLORS`). All of them come from the
Okabe–Ito palette, which stays distinct under the common colour-vision deficiencies.

Nothing here changes global matplotlib state on import: :func:`style` is a context manager
(the figure functions of this module and of :mod:`cbnotes.report` draw inside it), and a notebook
that wants the style for its own figures calls :func:`use_style` once. matplotlib is imported
only when a helper runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from torch import nn

__all__ = [
    "BETA_COLORS",
    "EFFECT_COLORS",
    "INVERSE_FREQUENCY_COLOR",
    "METHOD_COLORS",
    "OKABE_ITO",
    "PLAIN_COLOR",
    "STYLE",
    "beta_color",
    "class_colors",
    "lighten",
    "method_style",
    "plot_augmentations",
    "plot_cb_vs_plain",
    "plot_class_counts",
    "plot_class_weights",
    "plot_confusions",
    "plot_decision_regions",
    "row_normalized",
    "style",
    "use_style",
]

#: The Okabe–Ito palette (Okabe & Ito 2008), safe for the common colour-vision deficiencies.
OKABE_ITO: dict[str, str] = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
}
#: Neutral grey: the plain loss (β = 0, uniform weights) where β is what the colour encodes.
PLAIN_COLOR = "#7F7F7F"
#: β -> colour, the same in every figure of the series (β = 0: the plain loss).
BETA_COLORS: dict[float, str] = {
    0.0: PLAIN_COLOR,
    0.9: OKABE_ITO["sky blue"],
    0.99: OKABE_ITO["bluish green"],
    0.999: OKABE_ITO["orange"],
    0.9999: OKABE_ITO["vermillion"],
}
#: Inverse class frequency (weights ∝ 1/n, the limit β → 1).
INVERSE_FREQUENCY_COLOR = OKABE_ITO["reddish purple"]
#: Hue of each method of the registry (its class-balanced, saturated form; plain is lighter).
METHOD_COLORS: dict[str, str] = {
    "softmax": OKABE_ITO["blue"],
    "sigmoid": OKABE_ITO["bluish green"],
    "focal": OKABE_ITO["vermillion"],
    "resample": OKABE_ITO["sky blue"],
    "drw": OKABE_ITO["orange"],
    "ldam": OKABE_ITO["reddish purple"],
    "ldam_drw": "#882255",
    "balanced_softmax": OKABE_ITO["black"],
    "logit_adjusted": "#999933",
}
#: Class-balanced minus plain: blue where CB has the lower error beyond the seed noise.
EFFECT_COLORS: dict[str, str] = {
    "CB better": OKABE_ITO["blue"],
    "CB worse": OKABE_ITO["vermillion"],
    "within seed noise": "#BBBBBB",
    "one seed: no noise estimate": "#BBBBBB",
    "no value": "#BBBBBB",
}
#: The series' rcParams: fonts of at least 9 pt, 150 dpi on screen and on disk.
STYLE: dict[str, Any] = {
    "figure.dpi": 150,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "legend.framealpha": 0.9,
    "lines.linewidth": 1.8,
}
_CYCLE = ("blue", "orange", "bluish green", "vermillion", "reddish purple", "sky blue", "black")


def _rc() -> dict[str, Any]:
    from cycler import cycler

    return {**STYLE, "axes.prop_cycle": cycler(color=[OKABE_ITO[c] for c in _CYCLE])}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The series' figure style for the figures created inside the ``with`` block."""
    import matplotlib as mpl

    with mpl.rc_context(_rc()):
        yield


def use_style() -> None:
    """Apply the series' figure style for the rest of the session (a notebook's own figures).

    Inside IPython it also shows the ``Figure`` objects that the package's figure functions
    return as PNG, as the inline backend does only once pyplot has drawn a figure.
    """
    import sys

    import matplotlib as mpl

    mpl.rcParams.update(_rc())
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and hasattr(shell, "display_formatter"):
        from IPython.core.pylabtools import select_figure_formats

        select_figure_formats(shell, {"png"})


def lighten(color: str | tuple[float, ...], amount: float = 0.55) -> tuple[float, float, float]:
    """``color`` mixed with white (``amount`` = 0: unchanged, 1: white)."""
    from matplotlib.colors import to_rgb

    return tuple(c + (1.0 - c) * amount for c in to_rgb(color))  # type: ignore[return-value]


def beta_color(beta: float) -> str:
    """The colour of ``beta`` (a β of the paper's grid, or 0); other values are black."""
    for known, color in BETA_COLORS.items():
        if math.isclose(float(beta), known, rel_tol=0.0, abs_tol=1e-12):
            return color
    return OKABE_ITO["black"]


_MARKERS = ("o", "s", "^", "D", "v", "P")


def method_style(loss_type: str, class_balanced: bool, variant: int = 0) -> dict[str, Any]:
    """Line style of a method: its hue, light and dashed when plain, saturated and solid when
    class-balanced; ``variant`` (0, 1, ...) picks another marker for a second CB setting."""
    hue = METHOD_COLORS.get(loss_type, OKABE_ITO["black"])
    marker = _MARKERS[variant % len(_MARKERS)]
    if class_balanced:
        return {"color": hue, "linestyle": "-", "marker": marker}
    light = lighten(hue)
    return {"color": light, "linestyle": "--", "marker": marker, "markerfacecolor": "white"}


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
    color: str | tuple[float, float, float] = OKABE_ITO["blue"],
) -> Axes:
    """Bar chart of training images per class index (log y-axis when counts span decades)."""
    if len(counts) == 0:
        raise ValueError("counts is empty; pass one count per class")
    with style():
        positions = range(len(counts))
        bars = ax.bar(positions, counts, color=color, width=0.8)
        if annotate if annotate is not None else len(counts) <= 12:
            ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=9, padding=2)
            ax.margins(y=0.15)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("class index (sorted by frequency)")
        ax.set_ylabel("training images" + (" (log scale)" if log else ""))
        ax.set_title(title)
        if len(counts) <= 12:
            ax.set_xticks(list(positions))
    return ax


def _label_and_color(key: str | float) -> tuple[str, str | None]:
    """Legend label and colour of a key of :func:`plot_class_weights`."""
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        return f"β = {float(key):g}", beta_color(float(key))
    if str(key).replace(" ", "") in ("1/n", "1/n_i", "1/n_j"):
        return str(key), INVERSE_FREQUENCY_COLOR
    return str(key), None


def _same_curve(a: Sequence[float], b: Sequence[float], log: bool, tol: float) -> bool:
    """True when two curves lie within ``tol`` of each other everywhere (in log units on a log
    axis), i.e. one would be drawn on top of the other."""
    if len(a) != len(b):
        return False
    if log:
        return all(abs(math.log(x / y)) <= tol for x, y in zip(a, b, strict=True))
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def plot_class_weights(
    ax: Axes,
    weights_by_label: Mapping[str | float, Sequence[float] | torch.Tensor],
    title: str,
    log: bool = True,
    tol: float = 0.015,
) -> Axes:
    """One line of per-class weights per key: a β (float key, drawn in its series colour), "1/n"
    (inverse frequency) or any label.

    Curves that would hide each other (apart by less than ``tol`` of the axis range everywhere)
    are drawn once, with one legend entry naming all of them; the uniform weight 1 is a dashed
    line unless a curve is already uniform.
    """
    if not weights_by_label:
        raise ValueError("weights_by_label is empty; pass {beta or label: per-class weights}")
    curves = [
        (key, torch.as_tensor(w, dtype=torch.float64).cpu().tolist())
        for key, w in weights_by_label.items()
    ]
    every = [v for _, values in curves for v in values] + [1.0]
    span = math.log(max(every) / min(every)) if log else max(every) - min(every)
    close = tol * (span or 1.0)
    groups: list[tuple[list[str], list[float], str | None]] = []
    for key, values in curves:
        label, color = _label_and_color(key)
        for names, first, _ in groups:
            if _same_curve(values, first, log, close):
                names.append(label)
                break
        else:
            groups.append(([label], values, color))
    with style():
        num_classes = 0
        uniform_drawn = False
        for names, values, color in groups:
            num_classes = max(num_classes, len(values))
            uniform = _same_curve(values, [1.0] * len(values), log, close)
            uniform_drawn |= uniform
            label = ", ".join(names)
            if uniform:
                label += ": all ≈ 1 (uniform)" if len(names) > 1 else ": ≈ 1 (uniform)"
            elif len(names) > 1:
                label += " (identical at this scale)"
            ax.plot(range(len(values)), values, marker="o", markersize=4, color=color, label=label)
        if not uniform_drawn:
            ax.axhline(1.0, color=PLAIN_COLOR, linestyle="--", linewidth=1, label="uniform (1)")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("class index (sorted by frequency)")
        ax.set_ylabel("class weight α_i" + (" (log scale)" if log else ""))
        ax.set_title(title)
        if num_classes <= 12:
            ax.set_xticks(range(num_classes))
        ax.grid(True, which="major")
        ax.legend(loc="upper left")
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
    with style():
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


def plot_augmentations(
    originals: torch.Tensor, copies: Sequence[torch.Tensor], names: Sequence[str], title: str
) -> Any:
    """A grid of images: the originals (uint8, N×C×H×W) in the first row, one row per batch of
    augmented copies; one column per image, titled with its class name. Returns the Figure."""
    from matplotlib.figure import Figure

    rows = [originals, *copies]
    with style():
        fig = Figure(
            figsize=(1.15 * len(originals) + 0.6, 1.25 * len(rows) + 0.5), layout="constrained"
        )
        axes = fig.subplots(len(rows), len(originals), squeeze=False)
        cmap = "gray" if originals.shape[1] == 1 else None
        for i, batch in enumerate(rows):
            for j in range(len(originals)):
                image = batch[j].permute(1, 2, 0).squeeze(-1).cpu().numpy()
                axes[i, j].imshow(image, cmap=cmap, vmin=0, vmax=255)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
            axes[i, 0].set_ylabel("original" if i == 0 else f"augmented {i}")
        for j, name in enumerate(names):
            axes[0, j].set_title(name, fontsize=9)
        fig.suptitle(title)
    return fig


def plot_cb_vs_plain(ax: Axes, table: Any, noise_se: float = 2.0) -> Axes:
    """Class-balanced minus plain top-1 error per (loss, IF) of :func:`cbnotes.analysis.
    cb_vs_plain`, with ±``noise_se`` standard errors; blue where CB is better beyond the noise,
    vermillion where it is worse, grey within the noise (the legend says which is which)."""
    from matplotlib.patches import Patch

    with style():
        x = list(range(len(table)))
        colors = [EFFECT_COLORS.get(v, PLAIN_COLOR) for v in table["verdict"]]
        ax.bar(x, table["diff"], color=colors, width=0.7)
        yerr = noise_se * table["se"].fillna(0)
        ax.errorbar(x, table["diff"], yerr=yerr, fmt="none", ecolor="black", capsize=4)
        ax.axhline(0, color="black", linewidth=0.8)
        labels = [f"{r.loss}\nIF {r.imbalance_factor:g}" for r in table.itertuples(index=False)]
        ax.set_xticks(x, labels)
        ax.set_ylabel("Δ top-1 error, CB − plain (points)")
        ax.grid(True, axis="y")
        shown = dict.fromkeys(table["verdict"])
        legend = [
            Patch(color=EFFECT_COLORS.get(v, PLAIN_COLOR), label=_VERDICT_TEXT.get(v, v))
            for v in shown
        ]
        legend.append(Patch(facecolor="none", edgecolor="black", label=f"bars: ±{noise_se:g} SE"))
        ax.legend(handles=legend, loc="best")
    return ax


_VERDICT_TEXT = {
    "CB better": "CB lower error, beyond the seed noise",
    "CB worse": "CB higher error, beyond the seed noise",
    "within seed noise": "within the seed noise",
}


def row_normalized(record: Mapping[str, Any]) -> Any:
    """A run's confusion matrix (rows: true class) as % of each true class."""
    import numpy as np

    confusion = np.array(record["final_metrics"]["confusion"], dtype=float)
    return 100 * confusion / confusion.sum(axis=1, keepdims=True)


def plot_confusions(
    plain: Mapping[str, Any], balanced: Mapping[str, Any], names: Sequence[str]
) -> Any:
    """Row-normalised confusion matrices of a plain and a class-balanced run, and their
    difference (blue: CB predicts that column more often; vermillion: less). Returns the Figure."""
    import numpy as np
    import seaborn as sns
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    counts = plain["train_counts"]
    small = len(names) <= 12
    ticks = [f"{n} ({c:,})" for n, c in zip(names, counts, strict=True)] if small else False
    diverging = LinearSegmentedColormap.from_list(
        "cb_diff", [OKABE_ITO["vermillion"], "#ffffff", OKABE_ITO["blue"]]
    )
    annot = {"annot": small, "fmt": ".0f", "annot_kws": {"fontsize": 9}}
    with style():
        fig = Figure(figsize=(13, 5), layout="constrained")
        axes = fig.subplots(1, 3, sharey=True)
        for ax, record in ((axes[0], plain), (axes[1], balanced)):
            matrix = row_normalized(record)
            sns.heatmap(matrix, ax=ax, cmap="Greys", vmin=0, vmax=100, cbar=False, **annot)
            ax.set_title(f"{record['label']}: error {record['top1_error']:.2f} %")
        diff = np.round(row_normalized(balanced) - row_normalized(plain)) + 0.0  # no "−0"
        bar = {"label": "CB − plain (points)", "shrink": 0.8}
        sns.heatmap(
            diff, ax=axes[2], cmap=diverging, center=0, vmin=-40, vmax=40, cbar_kws=bar, **annot
        )
        axes[2].set_title("CB − plain")
        for ax in axes:
            ax.set_xlabel("predicted class")
            if small:
                ax.set_xticks([i + 0.5 for i in range(len(names))], ticks, rotation=45, ha="right")
        if small:
            axes[0].set_yticks([i + 0.5 for i in range(len(names))], ticks, rotation=0)
        axes[0].set_ylabel("true class (training images)")
    return fig

"""The series' figure style: one palette, readable text, no hidden lines, no global state."""

from __future__ import annotations

import struct
import subprocess
import sys

import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text

from cbnotes import plots
from cbnotes.analysis import results_for
from cbnotes.data import DATASETS
from cbnotes.notebook import results_dir
from cbnotes.presets import PAPER_BETAS, get_preset
from cbnotes.report import plot_per_class, plot_results


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    df = results_for(get_preset("cpu"), results_dir("cpu-study"))
    if df.empty:
        pytest.skip("the committed CPU study is not in this checkout")
    return df


def _texts(fig: Figure) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def test_importing_and_drawing_leave_global_matplotlib_state_alone():
    code = (
        "import matplotlib as mpl; before = dict(mpl.rcParams);"
        "import cbnotes, cbnotes.plots, cbnotes.report;"
        "from matplotlib.figure import Figure;"
        "cbnotes.plots.plot_class_weights(Figure().subplots(), {0.9: [1, 2]}, 't');"
        "print(dict(mpl.rcParams) == before)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_style_is_a_context_and_use_style_is_explicit():
    before = dict(mpl.rcParams)
    with plots.style():
        assert mpl.rcParams["figure.dpi"] >= 150
        assert min(mpl.rcParams[k] for k in ("xtick.labelsize", "legend.fontsize")) >= 9
    assert dict(mpl.rcParams) == before


def test_every_beta_of_the_grid_has_its_own_colour():
    betas = (0.0, *PAPER_BETAS)
    colours = [plots.beta_color(b) for b in betas]
    assert len(set(colours)) == len(betas)
    assert plots.INVERSE_FREQUENCY_COLOR not in colours


def test_plain_and_class_balanced_of_one_loss_share_a_hue():
    for loss in ("softmax", "sigmoid", "focal"):
        plain, cb = plots.method_style(loss, False), plots.method_style(loss, True)
        assert np.allclose(plain["color"], plots.lighten(cb["color"]))
        assert (plain["linestyle"], cb["linestyle"]) == ("--", "-")
    hues = {plots.method_style(loss, True)["color"] for loss in ("softmax", "sigmoid", "focal")}
    assert len(hues) == 3


def test_curves_that_would_hide_each_other_are_drawn_once_with_one_legend_entry():
    ax = Figure().subplots()
    head_to_tail = np.geomspace(0.05, 4, 10)
    plots.plot_class_weights(
        ax,
        {0.0: np.ones(10), 0.9: np.ones(10) * 1.001, 0.9999: head_to_tail, "1/n": head_to_tail},
        "weights",
    )
    labels = ax.get_legend_handles_labels()[1]
    assert len(ax.lines) == len(labels) == 2
    assert "β = 0, β = 0.9" in labels[0]
    assert "uniform" in labels[0]
    assert labels[1] == "β = 0.9999, 1/n (identical at this scale)"
    assert to_rgb(ax.lines[1].get_color()) == to_rgb(plots.beta_color(0.9999))


def test_distinct_curves_keep_their_own_lines_and_the_uniform_reference():
    ax = Figure().subplots()
    plots.plot_class_weights(
        ax, {0.99: np.geomspace(0.8, 2, 10), 0.9999: np.geomspace(0.05, 4, 10)}, "w"
    )
    assert ax.get_legend_handles_labels()[1] == ["β = 0.99", "β = 0.9999", "uniform (1)"]


@pytest.mark.parametrize("plot", [plot_results, plot_per_class], ids=lambda f: f.__name__)
def test_report_figures_are_readable_named_and_saved_at_150_dpi(plot, study, tmp_path):
    path = tmp_path / "figure.png"
    fig = plot(study, path)
    sizes = {t.get_text(): t.get_fontsize() for t in _texts(fig)}
    assert min(sizes.values()) >= 9, {k: v for k, v in sizes.items() if v < 9}
    text = " ".join(sizes)
    assert "fashion_mnist" not in text
    assert "Fashion-MNIST-LT" in text
    png = path.read_bytes()
    at = png.find(b"pHYs")
    assert struct.unpack(">I", png[at + 4 : at + 8])[0] * 0.0254 >= 149.9


def test_per_class_figure_names_the_classes_and_relates_plain_and_cb(study):
    fig = plot_per_class(study, by_loss=True)
    ticks = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    assert any(t.startswith("Ankle boot") for t in ticks)
    legend = fig.legends[0]
    colours = {
        t.get_text(): h.get_color()
        for t, h in zip(legend.texts, legend.legend_handles, strict=True)
    }
    plain = to_rgb(colours["softmax (n=3)"])
    cb = to_rgb(colours["CB softmax (β=0.9999) (n=3)"])
    assert np.allclose(plain, plots.lighten(cb))


def test_results_figure_has_one_legend_that_explains_the_colours(study):
    fig = plot_results(study)
    assert len(fig.legends) == 1
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert {t.get_text() for t in fig.legends[0].texts} == {
        "plain loss (light)",
        "class-balanced (saturated)",
        "one seed",
    }


def test_cb_vs_plain_bars_are_blue_where_cb_is_better():
    table = pd.DataFrame(
        {
            "loss": ["softmax", "sigmoid"],
            "imbalance_factor": [100.0, 10.0],
            "diff": [-4.0, 0.1],
            "se": [0.5, 0.3],
            "verdict": ["CB better", "within seed noise"],
        }
    )
    ax = Figure().subplots()
    plots.plot_cb_vs_plain(ax, table)
    colours = [to_rgb(p.get_facecolor()) for p in ax.patches[:2]]
    assert colours[0] == to_rgb(plots.EFFECT_COLORS["CB better"])
    assert colours[1] == to_rgb(plots.EFFECT_COLORS["within seed noise"])
    assert "beyond the seed noise" in ax.get_legend().texts[0].get_text()


def test_class_names_are_those_of_the_data_set():
    from cbnotes.analysis import class_names

    assert class_names("fashion_mnist")[-1] == "Ankle boot"
    assert class_names("cifar10")[0] == "airplane"
    assert class_names("cifar100", DATASETS["cifar100"].num_classes)[99] == "class 99"

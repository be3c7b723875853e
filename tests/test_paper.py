"""Table 2 as data, and the report that sets our numbers beside it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cbnotes.methods import method_label
from cbnotes.paper import PAPER_COLUMNS, PAPER_METHODS, paper_table2, paper_table2_wide
from cbnotes.presets import PAPER_BEST_CB
from cbnotes.report import PAPER, compare_with_paper, plot_per_class, plot_results, results_table
from cbnotes.results import SUMMARY_COLUMNS


def test_table2_has_six_methods_times_twelve_columns():
    wide = paper_table2_wide()
    assert wide.shape == (6, 12)
    assert not wide.isna().any().any()
    assert len(paper_table2()) == 72


@pytest.mark.parametrize(
    ("dataset", "imbalance", "method", "error"),
    [
        ("cifar10", 200, "softmax", 34.32),
        ("cifar10", 100, "softmax", 29.64),
        ("cifar10", 100, "class-balanced", 25.43),
        ("cifar10", 200, "focal γ=2.0", 35.12),
        ("cifar10", 1, "focal γ=0.5", 6.75),
        ("cifar100", 1, "sigmoid", 28.39),
        ("cifar100", 20, "focal γ=1.0", 48.05),
        ("cifar100", 10, "class-balanced", 42.01),
        ("cifar100", 50, "sigmoid", 55.85),
    ],
)
def test_table2_cells_match_the_paper(dataset, imbalance, method, error):
    assert paper_table2_wide().loc[method, (dataset, float(imbalance))] == error


def test_class_balanced_rows_carry_the_papers_best_setting():
    df = paper_table2()
    cb = df[df["method"] == "class-balanced"]
    assert len(cb) == 12
    for _, row in cb.iterrows():
        key = (row["dataset"], int(row["imbalance_factor"]))
        if key[1] == 1:
            assert math.isnan(row["beta"]), "the paper gives no β at IF 1"
            continue
        loss, beta, gamma = PAPER_BEST_CB[key]
        assert (row["loss_type"], row["beta"]) == (loss, beta)
        assert (gamma is None and math.isnan(row["gamma"])) or row["gamma"] == gamma
    assert len(PAPER_BEST_CB) == 10


def test_class_balanced_is_never_worse_than_the_plain_losses():
    wide = paper_table2_wide()
    plain = wide.drop(index="class-balanced")
    assert (wide.loc["class-balanced"] <= plain.min()).all()


def test_at_imbalance_1_class_balanced_equals_its_plain_loss():
    # With equal counts every class weight is 1, whatever β is.
    wide = paper_table2_wide()
    df = paper_table2()
    for dataset in ("cifar10", "cifar100"):
        cell = df[
            (df["dataset"] == dataset)
            & (df["imbalance_factor"] == 1)
            & (df["method"] == "class-balanced")
        ].iloc[0]
        assert wide.loc[cell["loss_type"], (dataset, 1.0)] == cell["top1_error"]


def test_plain_rows_use_our_method_labels():
    df = paper_table2()
    plain = df[df["method"] != "class-balanced"]
    for _, row in plain.iterrows():
        gamma = None if math.isnan(row["gamma"]) else row["gamma"]
        params = {"beta": row["beta"], "gamma": gamma}
        assert method_label(row["loss_type"], params) == row["method"]
    assert list(PAPER_METHODS[:5]) == list(dict.fromkeys(plain["method"]))
    assert len(PAPER_COLUMNS) == 12


def _fake_results(rows: list[tuple]) -> pd.DataFrame:
    """Result rows (dataset, IF, loss, β, γ, seed, error, epochs, depth) in load_results form."""
    records = []
    for dataset, imbalance, loss, beta, gamma, seed, error, epochs, depth in rows:
        record = dict.fromkeys(SUMMARY_COLUMNS)
        record.update(
            run_id=f"{dataset}-{imbalance}-{loss}-{beta}-{gamma}-{seed}-{epochs}",
            label=method_label(loss, {"beta": beta, "gamma": gamma}),
            class_balanced=beta > 0,
            scheme="effective",
            shortcut="avgpool",
            init="glorot",
            dataset=dataset,
            imbalance_factor=float(imbalance),
            loss_type=loss,
            beta=beta,
            gamma=np.nan if gamma is None else gamma,
            seed=seed,
            data_seed=0,
            depth=depth,
            base_width=16,
            epochs=epochs,
            batch_size=128,
            pad=4,
            amp="auto",
            eval_every=1,
            top1_error=error,
            best_top1_error=error - 1,
            many=90.0,
            medium=70.0,
            few=50.0,
        )
        records.append(record)
    return pd.DataFrame(records, columns=list(SUMMARY_COLUMNS))


def test_compare_puts_the_paper_number_beside_ours_where_the_paper_has_one():
    df = _fake_results(
        [
            ("cifar10", 100, "softmax", 0.0, None, 0, 30.0, 200, 32),
            ("cifar10", 100, "softmax", 0.0, None, 1, 31.0, 200, 32),
            ("cifar10", 100, "focal", 0.9999, 1.0, 0, 26.0, 200, 32),
            ("cifar10", 100, "softmax", 0.9, None, 0, 29.0, 200, 32),
            ("cifar10", 1, "sigmoid", 0.9999, None, 0, 6.0, 200, 32),
            ("fashion_mnist", 100, "softmax", 0.0, None, 0, 20.0, 12, 8),
        ]
    )
    table = compare_with_paper(df).set_index(["dataset", "imbalance_factor", "method"])
    softmax = table.loc[("cifar10", 100.0, "softmax")]
    assert softmax[PAPER] == 29.64
    assert softmax["n"] == 2
    assert softmax["ours (mean)"] == pytest.approx(30.5)
    assert softmax["ours (std)"] == pytest.approx(np.std([30.0, 31.0], ddof=1))
    assert softmax["ours - paper"] == pytest.approx(30.5 - 29.64)
    cb = table.loc[("cifar10", 100.0, "CB focal γ=1.0 (β=0.9999)")]
    assert cb[PAPER] == 25.43
    assert "best class-balanced" in cb["note"]
    other = table.loc[("cifar10", 100.0, "CB softmax (β=0.9)")]
    assert pd.isna(other[PAPER])
    assert "only the best" in other["note"]
    assert table.loc[("cifar10", 1.0, "CB sigmoid (β=0.9999)")][PAPER] == 6.36
    fmnist = table.loc[("fashion_mnist", 100.0, "softmax")]
    assert pd.isna(fmnist[PAPER])
    assert "not in the paper" in fmnist["note"]


def test_compare_flags_a_shorter_schedule_as_not_comparable():
    df = _fake_results([("cifar10", 100, "softmax", 0.0, None, 0, 40.0, 12, 8)])
    row = compare_with_paper(df).iloc[0]
    assert row[PAPER] == 29.64
    assert "not comparable" in row["note"]


def test_results_table_shows_mean_std_and_n_per_method_and_column():
    df = _fake_results(
        [
            ("cifar10", 100, "softmax", 0.0, None, 0, 30.0, 200, 32),
            ("cifar10", 100, "softmax", 0.0, None, 1, 32.0, 200, 32),
            ("cifar10", 10, "softmax", 0.0, None, 0, 13.0, 200, 32),
            ("cifar10", 100, "softmax", 0.9999, None, 0, 27.0, 200, 32),
        ]
    )
    table = results_table(df)
    assert table.loc["softmax", ("cifar10", 100.0)] == "31.00 ± 1.41 (n=2)"
    assert table.loc["softmax", ("cifar10", 10.0)] == "13.00 (n=1)"
    assert table.loc["CB softmax (β=0.9999)", ("cifar10", 100.0)] == "27.00 (n=1)"
    assert list(table.index) == ["softmax", "CB softmax (β=0.9999)"]
    assert list(table.columns) == [("cifar10", 100.0), ("cifar10", 10.0)]


def test_plots_are_saved_atomically_as_png(tmp_path):
    df = _fake_results(
        [
            ("cifar10", 100, "softmax", 0.0, None, 0, 30.0, 200, 32),
            ("cifar10", 100, "softmax", 0.0, None, 1, 31.0, 200, 32),
            ("cifar10", 100, "softmax", 0.9999, None, 0, 27.0, 200, 32),
        ]
    )
    df["per_class_accuracy"] = [[90.0 - 5 * i for i in range(10)]] * 3
    df["train_counts"] = [[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]] * 3
    for plot, name in ((plot_results, "results.png"), (plot_per_class, "per_class.png")):
        fig = plot(df, tmp_path / "figs" / name)
        assert fig.axes
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["per_class.png", "results.png"]


def test_plots_reject_an_empty_frame():
    with pytest.raises(ValueError, match="no finished runs"):
        plot_results(_fake_results([]))


def test_the_ldam_papers_table_2_is_transcribed_and_maps_to_our_methods():
    from cbnotes.paper import ldam_table2
    from cbnotes.presets import LATER_METHODS

    df = ldam_table2()
    assert len(df) == 24
    cell = df.set_index(["dataset", "imbalance_factor", "method"])["top1_error"]
    assert cell[("cifar10", 100.0, "LDAM-DRW")] == 22.97
    assert cell[("cifar100", 100.0, "CB re-weighting")] == 66.01
    assert cell[("cifar100", 10.0, "ERM (softmax)")] == 44.30
    # the ERM and CB focal rows repeat this paper's own Table 2 numbers (CIFAR-10 IF 100)
    ours = paper_table2_wide()
    assert cell[("cifar10", 100.0, "ERM (softmax)")] == ours.loc["softmax", ("cifar10", 100.0)]
    assert cell[("cifar10", 100.0, "CB focal")] == ours.loc["class-balanced", ("cifar10", 100.0)]
    from cbnotes.config import RunConfig

    labels = {RunConfig("cifar10", loss_type=m, **p).label for m, p in LATER_METHODS}
    assert set(df["our_method"]) <= labels

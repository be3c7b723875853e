"""Reading a study: finished runs of a preset, their provenance, and CB beside the plain loss."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from cbnotes.analysis import (
    NOISE_SE,
    cb_vs_plain,
    cb_vs_plain_markdown,
    provenance,
    provenance_text,
    results_for,
    summary_markdown,
)
from cbnotes.config import RunConfig
from cbnotes.results import SUMMARY_COLUMNS, result_path, summary_row


def _config(loss="softmax", beta=0.0, gamma=None, seed=0, imbalance=100, epochs=12):
    return RunConfig(
        "fashion_mnist", imbalance, loss, beta, gamma, seed=seed, depth=8, base_width=8,
        epochs=epochs,
    )  # fmt: skip


def _record(config, error, rev="a" * 40, device="cpu (test)"):
    """A minimal result record of the runner's format."""
    return {
        "run_id": config.run_id,
        "label": config.label,
        "config": config.to_dict(),
        "top1_error": error,
        "best_top1_error": error - 0.5,
        "final_metrics": {"per_class_accuracy": [100 - error] * 10},
        "train_counts": [6000, 60],
        "environment": {"device": device, "torch": "2.x", "git_rev": rev, "git_dirty": False},
        "finished": f"2026-01-0{config.seed + 1}T00:00:00+00:00",
        "wall_seconds": 60.0,
    }


def _frame(pairs):
    """Tidy rows like load_results from (config, error) pairs."""
    return pd.DataFrame([summary_row(_record(c, e)) for c, e in pairs], columns=SUMMARY_COLUMNS)


PLAIN = [25.0, 24.0, 26.0]
CB = [20.0, 20.5, 19.5]


def _study():
    pairs = [(_config(seed=s), e) for s, e in enumerate(PLAIN)]
    pairs += [(_config(beta=0.9999, seed=s), e) for s, e in enumerate(CB)]
    return pairs


def test_cb_is_compared_with_the_mean_and_spread_of_its_own_plain_loss():
    (row,) = cb_vs_plain(_frame(_study())).to_dict("records")
    assert row["loss"] == "softmax"
    assert row["beta"] == 0.9999
    assert row["plain_mean"] == pytest.approx(np.mean(PLAIN))
    assert row["cb_mean"] == pytest.approx(np.mean(CB))
    assert row["plain_std"] == pytest.approx(np.std(PLAIN, ddof=1))
    assert row["diff"] == pytest.approx(np.mean(CB) - np.mean(PLAIN))
    se = math.sqrt(np.var(PLAIN, ddof=1) / 3 + np.var(CB, ddof=1) / 3)
    assert row["se"] == pytest.approx(se)
    assert (row["plain_n"], row["cb_n"], row["cb_lower"]) == (3, 3, "3/3")
    assert row["verdict"] == "CB better"


def test_a_difference_inside_the_seed_noise_is_called_so():
    pairs = [(_config(seed=s), e) for s, e in enumerate(PLAIN)]
    pairs += [(_config(beta=0.9999, seed=s), e - 0.5) for s, e in enumerate([26.0, 24.0, 25.0])]
    (row,) = cb_vs_plain(_frame(pairs)).to_dict("records")
    assert abs(row["diff"]) <= NOISE_SE * row["se"]
    assert row["verdict"] == "within seed noise"
    assert row["cb_lower"] == "2/3"  # seed by seed: 25.5 > 25, 23.5 < 24, 24.5 < 26


def test_a_worse_class_balanced_loss_is_reported_as_worse():
    pairs = [(_config(seed=s), e) for s, e in enumerate(CB)]
    pairs += [(_config(beta=0.9999, seed=s), e) for s, e in enumerate(PLAIN)]
    (row,) = cb_vs_plain(_frame(pairs)).to_dict("records")
    assert row["diff"] > 0
    assert row["verdict"] == "CB worse"


def test_one_seed_gives_a_difference_but_no_noise_estimate():
    frame = _frame([(_config(), 25.0), (_config(beta=0.99), 21.0)])
    (row,) = cb_vs_plain(frame).to_dict("records")
    assert row["diff"] == pytest.approx(-4.0)
    assert math.isnan(row["se"])
    assert row["verdict"] == "one seed: no noise estimate"


def test_focal_runs_are_paired_by_gamma_and_other_settings_must_match():
    pairs = [
        (_config("focal", 0.0, 1.0), 24.0),
        (_config("focal", 0.0, 2.0), 30.0),
        (_config("focal", 0.9999, 1.0), 20.0),
        (_config("focal", 0.9999, 2.0), 21.0),
        (_config("softmax", 0.9999, epochs=6), 22.0),  # its plain run has other epochs
    ]
    table = cb_vs_plain(_frame(pairs))
    assert list(table["loss"]) == ["focal γ=1.0", "focal γ=2.0"]
    assert list(table["diff"]) == pytest.approx([-4.0, -9.0])


def test_one_row_per_beta_and_imbalance_factor_head_first():
    pairs = [(_config(imbalance=i), 20.0) for i in (10, 100)]
    pairs += [(_config(beta=b, imbalance=i), 19.0) for i in (10, 100) for b in (0.9999, 0.9)]
    table = cb_vs_plain(_frame(pairs))
    assert list(zip(table["imbalance_factor"], table["beta"], strict=True)) == [
        (100.0, 0.9),
        (100.0, 0.9999),
        (10.0, 0.9),
        (10.0, 0.9999),
    ]


def test_cb_vs_plain_names_missing_columns():
    with pytest.raises(ValueError, match="lacks columns"):
        cb_vs_plain(pd.DataFrame({"top1_error": [1.0]}))


def _write(tmp_path, pairs, rev="a" * 40):
    for config, error in pairs:
        path = result_path(tmp_path, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_record(config, error, rev=rev)), encoding="utf-8")


def test_results_for_keeps_only_the_requested_finished_runs_in_their_order(tmp_path):
    pairs = _study()
    _write(tmp_path, pairs)
    _write(tmp_path, [(_config("sigmoid"), 30.0)])  # another preset's run in the same folder
    wanted = [c for c, _ in reversed(pairs)] + [_config("focal", 0.0, 0.5)]  # last: not run
    df = results_for(wanted, tmp_path)
    assert list(df["run_id"]) == [c.run_id for c, _ in reversed(pairs)]
    assert df["per_class_accuracy"].iloc[0] == [100 - CB[-1]] * 10


def test_results_for_a_missing_folder_is_empty_with_the_usual_columns(tmp_path):
    df = results_for([_config()], tmp_path / "nothing-here")
    assert df.empty
    assert {"run_id", "top1_error", "per_class_accuracy", "train_counts"} <= set(df.columns)
    assert cb_vs_plain(df).empty


def test_results_for_needs_configs(tmp_path):
    with pytest.raises(ValueError, match="configs is empty"):
        results_for([], tmp_path)


def test_provenance_counts_runs_per_revision_and_device(tmp_path):
    pairs = _study()
    _write(tmp_path, pairs[:4], rev="a" * 40)
    _write(tmp_path, pairs[4:], rev="b" * 40)
    table = provenance(results_for([c for c, _ in pairs], tmp_path))
    assert list(table["git_rev"]) == ["a" * 40, "b" * 40]
    assert list(table["runs"]) == [4, 2]
    assert list(table["wall_minutes"]) == pytest.approx([4.0, 2.0])
    assert table["device"].unique().tolist() == ["cpu (test)"]
    assert table["last_finished"].iloc[1] == "2026-01-03T00:00:00+00:00"


def test_the_markdown_table_has_one_row_per_comparison_with_the_numbers_of_cb_vs_plain():
    pairs = _study() + [(_config(seed=s, imbalance=10), 13.0 + s) for s in range(3)]
    pairs += [(_config(beta=0.9999, seed=s, imbalance=10), 13.5 + s) for s in range(3)]
    table = cb_vs_plain(_frame(pairs))
    lines = cb_vs_plain_markdown(table).splitlines()
    assert len(lines) == 2 + len(table) == 4
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    first = lines[2]
    assert f"| {np.mean(PLAIN):.2f} ± {np.std(PLAIN, ddof=1):.2f} |" in first
    assert f"| {np.mean(CB):.2f} ± {np.std(CB, ddof=1):.2f} (0.9999) |" in first
    assert first.startswith("| Fashion-MNIST-LT | 100 | softmax |")
    assert first.endswith("| 3/3 seeds | CB better |")
    assert "| +0.50 ± " in lines[3]
    assert lines[3].endswith("| 0/3 seeds | within seed noise |")


def test_the_markdown_table_refuses_an_empty_or_foreign_table():
    with pytest.raises(ValueError, match="no rows"):
        cb_vs_plain_markdown(cb_vs_plain(_frame([(_config(), 25.0)])))
    with pytest.raises(ValueError, match="cb_vs_plain"):
        cb_vs_plain_markdown(pd.DataFrame({"x": [1]}))


def test_provenance_text_names_revision_device_and_dates(tmp_path):
    pairs = _study()
    _write(tmp_path, pairs)
    text = provenance_text(results_for([c for c, _ in pairs], tmp_path))
    assert text == (
        "6 runs at git revision aaaaaaa (clean) on cpu (test), torch 2.x, "
        "finished 2026-01-01 to 2026-01-03, 6 min of training."
    )


def test_summary_markdown_reads_a_preset_and_says_how_to_make_missing_runs(tmp_path):
    from cbnotes.presets import get_preset

    with pytest.raises(ValueError, match="python -m cbnotes run --preset smoke"):
        summary_markdown(tmp_path, "smoke")
    configs = get_preset("smoke")
    plain = [c for c in configs if c.beta == 0 and c.loss_type == "softmax"]
    cb = [c for c in configs if c.beta > 0 and c.loss_type == "softmax"]
    assert plain
    assert cb
    _write(tmp_path, [(c, 30.0) for c in plain] + [(c, 20.0) for c in cb])
    text = summary_markdown(tmp_path, "smoke")
    assert text.startswith("| data | IF | loss |")
    assert "| -10.00" in text
    assert "Preset `smoke`: " in text
    assert "git revision aaaaaaa" in text

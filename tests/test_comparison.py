"""Every method against plain softmax and CB softmax: differences, standard errors, verdicts."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from cbnotes.comparison import (
    CB_SOFTMAX,
    PLAIN,
    POSTHOC,
    SETTING_KEYS,
    compare_methods,
    compare_methods_markdown,
    describe_methods,
)
from cbnotes.config import RunConfig


def _rows(method: str, params: dict, errors: list[float], posthoc: list[float] | None = None):
    """Result rows (the columns compare_methods reads) of one method over seeds 0, 1, 2, ..."""
    rows = []
    for seed, error in enumerate(errors):
        config = RunConfig("fashion_mnist", 100, method, seed=seed, depth=8, epochs=12, **params)
        row = {key: getattr(config, key) for key in SETTING_KEYS}
        row.update(
            label=config.label,
            loss_type=method,
            seed=seed,
            top1_error=error,
            many=90.0,
            medium=70.0 + seed,
            few=40.0,
            posthoc_top1_error=None if posthoc is None else posthoc[seed],
        )
        rows.append(row)
    return rows


@pytest.fixture
def study() -> pd.DataFrame:
    return pd.DataFrame(
        _rows("softmax", {}, [24.0, 25.0, 26.0], posthoc=[20.0, 21.0, 22.0])
        + _rows("softmax", {"beta": 0.9999}, [20.0, 21.0, 22.0])
        + _rows("ldam", {}, [24.5, 25.0, 25.5])
        + _rows("drw", {}, [30.0])
    )


def test_each_method_is_set_beside_both_baselines(study):
    table = compare_methods(study).set_index("method")
    assert list(table.index[:3]) == [PLAIN, POSTHOC, CB_SOFTMAX], "baselines first"
    cb = table.loc[CB_SOFTMAX]
    assert cb["n"] == 3
    assert cb["mean"] == pytest.approx(21.0)
    assert cb["std"] == pytest.approx(1.0)
    assert cb["vs_plain"] == pytest.approx(-4.0)
    assert cb["vs_plain_se"] == pytest.approx(math.sqrt(1 / 3 + 1 / 3))
    assert cb["vs_plain_verdict"] == "better"  # 4 > 2 × 0.82
    assert math.isnan(cb["vs_cb"])
    ldam = table.loc["LDAM"]
    assert ldam["vs_plain"] == pytest.approx(0.0)
    assert ldam["vs_plain_verdict"] == "within seed noise"
    assert ldam["vs_cb"] == pytest.approx(4.0)
    assert ldam["vs_cb_verdict"] == "worse"
    assert ldam["medium"] == pytest.approx(71.0)
    assert table.loc["softmax DRW (β=0.9999)", "vs_plain_verdict"] == "one seed: no noise estimate"


def test_post_hoc_adjustment_is_a_method_scored_from_the_plain_runs(study):
    posthoc = compare_methods(study).set_index("method").loc[POSTHOC]
    assert posthoc["n"] == 3
    assert posthoc["mean"] == pytest.approx(21.0)
    assert posthoc["vs_plain"] == pytest.approx(-4.0)
    assert posthoc["vs_cb"] == pytest.approx(0.0)


def test_the_markdown_table_has_one_line_per_method(study):
    text = compare_methods_markdown(compare_methods(study))
    lines = text.splitlines()
    assert len(lines) == 2 + 5
    cb_row = "| CB softmax (β=0.9999) | 3 | 21.00 ± 1.00 | -4.00 ± 0.82 (better) | – |"
    assert f"| Fashion-MNIST-LT | 100 {cb_row}" in text
    with pytest.raises(ValueError, match="no finished runs"):
        compare_methods_markdown(compare_methods(study.iloc[0:0]))


def test_the_plain_words_name_the_winners_and_losers_beyond_the_noise(study):
    sentences = describe_methods(compare_methods(study))
    assert sentences[0] == (
        "Fashion-MNIST-LT at IF 100: the lowest mean error is 21.00 %, for softmax + post-hoc "
        "logit adjustment (τ=1.0) and CB softmax (β=0.9999) (plain softmax: 25.00 %)."
    )
    against_plain, against_cb, single = sentences[1:]
    assert "lower error for softmax + post-hoc logit adjustment (τ=1.0) (-4.00)" in against_plain
    assert "CB softmax (β=0.9999) (-4.00)" in against_plain
    assert "higher for no method" in against_plain
    assert "higher for softmax (+4.00), LDAM (+4.00);" in against_cb
    assert single.startswith("One seed only, so no verdict: softmax DRW (β=0.9999);")


def test_with_one_seed_everywhere_no_verdict_is_claimed(study):
    first = study[study["seed"] == 0]
    sentences = describe_methods(compare_methods(first))
    assert len(sentences) == 2
    assert "no difference carries a verdict" in sentences[1]
    assert not any("beyond" in s for s in sentences)

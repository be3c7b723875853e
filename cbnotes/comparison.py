"""Every method against two baselines: plain softmax and the paper's CB softmax.

The methods study (preset ``cpu-methods``; ``beyond`` on a GPU) trains each method of the
registry with several seeds on one data set. :func:`compare_methods` sets each method beside
plain softmax and beside class-balanced softmax (β = 0.9999): mean ± std over seeds, the
difference of the means with its standard error, and a verdict that needs |Δ| > 2 SE, overall
and for the many/medium/few-shot classes. Post-hoc logit adjustment of the plain softmax runs
(no extra training) appears as a method of its own.
"""

from __future__ import annotations

import math
import os

import pandas as pd

from cbnotes.analysis import (
    NOISE_SE,
    difference,
    mean_std_text,
    preset_results,
    provenance_text,
    verdict,
)
from cbnotes.data import dataset_title
from cbnotes.methods import METHODS, PARAMS
from cbnotes.results import GROUP_KEYS

#: The two baselines, by display name.
PLAIN = "softmax"
CB_SOFTMAX = "CB softmax (β=0.9999)"
#: Display name of post-hoc logit adjustment applied to the plain softmax runs.
POSTHOC = "softmax + post-hoc logit adjustment (τ=1.0)"
#: What stays fixed within one comparison: every grouping key but the method and its parameters.
SETTING_KEYS: tuple[str, ...] = tuple(
    k for k in GROUP_KEYS if k not in ("label", "class_balanced", "loss_type", *PARAMS)
)
_SHOTS = ("many", "medium", "few")


def with_posthoc(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus one row per plain softmax run that recorded post-hoc logit adjustment."""
    plain = df[(df["label"] == PLAIN) & df["posthoc_top1_error"].notna()]
    extra = plain.assign(
        label=POSTHOC,
        top1_error=plain["posthoc_top1_error"],
        **{shot: plain.get(f"posthoc_{shot}", math.nan) for shot in _SHOTS},
    )
    return pd.concat([df, extra], ignore_index=True)


def _order(label: str, loss_type: str) -> tuple[int, int, str]:
    """Display order: the baselines first, then the registry's order."""
    first = {PLAIN: 0, POSTHOC: 1, CB_SOFTMAX: 2}
    return (first.get(label, 3), METHODS[loss_type].order if loss_type in METHODS else 99, label)


def compare_methods(df: pd.DataFrame, metric: str = "top1_error") -> pd.DataFrame:
    """Each method (display name) beside plain softmax and CB softmax, per setting.

    Columns: the setting, ``method``, ``n`` seeds, mean and std of ``metric`` and the mean
    many/medium/few-shot accuracy; ``vs_plain`` and ``vs_cb`` = method - baseline (points),
    their SEs and verdicts ('better' / 'worse' when |Δ| > NOISE_SE·SE, else 'within seed
    noise'). A setting without plain softmax runs gets NaN differences.
    """
    missing = [c for c in (*SETTING_KEYS, "label", "loss_type", "seed", metric) if c not in df]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the output of load_results()")
    data = with_posthoc(df) if metric == "top1_error" else df
    rows = []
    for setting, part in data.groupby(list(SETTING_KEYS), dropna=False, sort=False):
        base = {name: part.loc[part["label"] == name, metric] for name in (PLAIN, CB_SOFTMAX)}
        for label, runs in part.groupby("label", sort=False):
            values = runs[metric].astype(float)
            row = dict(zip(SETTING_KEYS, setting, strict=True))
            row.update(
                method=label,
                loss_type=runs["loss_type"].iloc[0],
                n=int(values.notna().sum()),
                mean=float(values.mean()),
                std=float(values.std(ddof=1)) if values.notna().sum() > 1 else math.nan,
                **{shot: float(runs[shot].astype(float).mean()) for shot in _SHOTS},
            )
            for key, name in (("vs_plain", PLAIN), ("vs_cb", CB_SOFTMAX)):
                if label == name or base[name].empty:
                    row.update({key: math.nan, f"{key}_se": math.nan, f"{key}_verdict": ""})
                    continue
                diff, se = difference(base[name], values)
                row.update(
                    {
                        key: diff,
                        f"{key}_se": se,
                        f"{key}_verdict": verdict(diff, se, len(base[name]), row["n"], "").strip(),
                    }
                )
            rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    order = [_order(m, t) for m, t in zip(out["method"], out["loss_type"], strict=True)]
    out = out.assign(_o=order, _i=-out["imbalance_factor"])
    return (
        out.sort_values(["dataset", "_i", "_o"]).drop(columns=["_o", "_i"]).reset_index(drop=True)
    )


def _delta(diff: float, se: float, verdict_text: str) -> str:
    if math.isnan(diff):
        return "–"
    text = f"{diff:+.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}")
    return f"{text} ({verdict_text})" if verdict_text else text


def compare_methods_display(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`compare_methods` as display strings, one column per table column of
    :func:`compare_methods_markdown` (notebooks show it as a styled table)."""
    if table.empty:
        raise ValueError("table has no rows: no finished runs of the methods study")
    rows = []
    for row in table.itertuples(index=False):
        rows.append(
            {
                "data": dataset_title(row.dataset),
                "IF": f"{row.imbalance_factor:g}",
                "method": row.method,
                "n": str(row.n),
                "top-1 error": mean_std_text(row.mean, row.std),
                "vs softmax ± SE": _delta(row.vs_plain, row.vs_plain_se, row.vs_plain_verdict),
                "vs CB softmax ± SE": _delta(row.vs_cb, row.vs_cb_se, row.vs_cb_verdict),
                **{
                    shot: "–" if math.isnan(value) else f"{value:.1f}"
                    for shot, value in zip(_SHOTS, (row.many, row.medium, row.few), strict=True)
                },
            }
        )
    return pd.DataFrame(rows)


def compare_methods_markdown(table: pd.DataFrame) -> str:
    """The rows of :func:`compare_methods` as a GitHub Markdown table."""
    shown = compare_methods_display(table)
    right = {"IF", "n", "top-1 error", "vs softmax ± SE", "vs CB softmax ± SE", *_SHOTS}
    lines = [
        "| " + " | ".join(shown.columns) + " |",
        "|" + "|".join("---:" if c in right else "---" for c in shown.columns) + "|",
    ]
    lines += ["| " + " | ".join(values) + " |" for values in shown.itertuples(index=False)]
    return "\n".join(lines)


def methods_note(df: pd.DataFrame) -> str:
    """What the table's numbers are, for the line under it."""
    seeds = int(df["seed"].nunique()) if not df.empty else 0
    return (
        f"Top-1 error (%) on the balanced test set after the last epoch, mean ± std over {seeds} "
        f"seed(s); many/medium/few: mean test accuracy (%) of the classes with > 100, 20-100 and "
        f"< 20 training images; Δ = method − baseline with the standard error of the difference "
        f"of the means; 'better'/'worse' needs |Δ| > {NOISE_SE:g} SE. Post-hoc logit adjustment "
        f"re-scores the plain softmax runs (no training)."
    )


def _listing(rows: pd.DataFrame, key: str) -> str:
    """'A (−1.20), B (−0.80)': the methods of ``rows`` with their difference ``key``."""
    pairs = zip(rows["method"], rows[key], strict=True)
    return ", ".join(f"{method} ({diff:+.2f})" for method, diff in pairs) or "no method"


def describe_methods(table: pd.DataFrame) -> list[str]:
    """Plain-words sentences about a :func:`compare_methods` table, one setting after another:
    the lowest error, which methods beat plain softmax and CB softmax beyond the seed noise,
    which lost to it, and the caveat when a method has a single seed."""
    sentences = []
    for setting, part in table.groupby(list(SETTING_KEYS), dropna=False, sort=False):
        where = f"{dataset_title(setting[0])} at IF {setting[1]:g}"
        lowest = part["mean"].min()
        best = part.loc[part["mean"].round(2) == round(lowest, 2), "method"]
        sentences.append(
            f"{where}: the lowest mean error is {lowest:.2f} %, for {' and '.join(best)} "
            f"(plain softmax: {part.loc[part['method'] == PLAIN, 'mean'].mean():.2f} %)."
        )
        if (part["n"] < 2).all():
            sentences.append(
                "Every method has one seed here, and one seed gives no noise estimate: no "
                "difference carries a verdict; train more seeds (run --seeds 0 1 2)."
            )
            continue
        for key, name in (("vs_plain", "plain softmax"), ("vs_cb", CB_SOFTMAX)):
            better = part[part[f"{key}_verdict"] == "better"].sort_values(key)
            worse = part[part[f"{key}_verdict"] == "worse"].sort_values(key)
            sentences.append(
                f"Against {name}, beyond {NOISE_SE:g} standard errors of the seed noise: "
                f"lower error for {_listing(better, key)}; higher for {_listing(worse, key)}; "
                "every other difference is within the noise."
            )
        single = part.loc[part["n"] < 2, "method"].tolist()
        if single:
            sentences.append(
                f"One seed only, so no verdict: {', '.join(single)}; train more seeds "
                "(run --seeds 0 1 2)."
            )
    return sentences


def methods_markdown(out_dir: str | os.PathLike[str], preset: str) -> str:
    """Markdown: every method of ``preset`` beside plain and CB softmax, then what the numbers
    are and where they came from. What ``cbnotes summary --markdown`` prints for a methods
    preset, and what the README's methods table shows."""
    df = preset_results(out_dir, preset)
    table = compare_methods_markdown(compare_methods(df))
    return f"{table}\n\n{methods_note(df)} Preset `{preset}`: {provenance_text(df)}"


__all__ = [
    "CB_SOFTMAX",
    "PLAIN",
    "POSTHOC",
    "SETTING_KEYS",
    "compare_methods",
    "compare_methods_display",
    "compare_methods_markdown",
    "describe_methods",
    "methods_markdown",
    "methods_note",
    "with_posthoc",
]

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

import pandas as pd

from cbnotes.analysis import NOISE_SE, difference, verdict
from cbnotes.data import dataset_title
from cbnotes.methods import METHODS

#: The two baselines, by display name.
PLAIN = "softmax"
CB_SOFTMAX = "CB softmax (β=0.9999)"
#: Display name of post-hoc logit adjustment applied to the plain softmax runs.
POSTHOC = "softmax + post-hoc logit adjustment (τ=1.0)"
#: What stays fixed within one comparison (everything but the method and its parameters).
SETTING_KEYS: tuple[str, ...] = (
    "dataset",
    "imbalance_factor",
    "depth",
    "base_width",
    "epochs",
    "batch_size",
    "pad",
    "data_seed",
    "amp",
    "shortcut",
    "init",
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


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def _delta(diff: float, se: float, verdict_text: str) -> str:
    if math.isnan(diff):
        return "–"
    text = f"{diff:+.2f}" + ("" if math.isnan(se) else f" ± {se:.2f}")
    return f"{text} ({verdict_text})" if verdict_text else text


def compare_methods_markdown(table: pd.DataFrame) -> str:
    """The rows of :func:`compare_methods` as a GitHub Markdown table."""
    if table.empty:
        raise ValueError("table has no rows: no finished runs of the methods study")
    lines = [
        "| data | IF | method | n | top-1 error | vs softmax ± SE | vs CB softmax ± SE "
        "| many | medium | few |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.itertuples(index=False):
        shots = " | ".join(
            "–" if math.isnan(v) else f"{v:.1f}" for v in (row.many, row.medium, row.few)
        )
        vs_plain = _delta(row.vs_plain, row.vs_plain_se, row.vs_plain_verdict)
        vs_cb = _delta(row.vs_cb, row.vs_cb_se, row.vs_cb_verdict)
        lines.append(
            f"| {dataset_title(row.dataset)} | {row.imbalance_factor:g} | {row.method} | {row.n} "
            f"| {_pm(row.mean, row.std)} | {vs_plain} | {vs_cb} | {shots} |"
        )
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


__all__ = [
    "CB_SOFTMAX",
    "PLAIN",
    "POSTHOC",
    "SETTING_KEYS",
    "compare_methods",
    "compare_methods_markdown",
    "methods_note",
    "with_posthoc",
]

"""Reading a study for the notebooks: its finished runs, where they came from, CB vs plain.

The notebooks 00, 04 and 05 show the same committed results; these helpers keep the reading of
them in one place. Every error is a percentage, and the headline is the last-epoch top-1 error
on the full balanced test set (Sec. 5), as in :mod:`cbnotes.results`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

import numpy as np
import pandas as pd

from cbnotes.config import RunConfig
from cbnotes.data import dataset_title
from cbnotes.methods import METHODS
from cbnotes.results import GROUP_KEYS, frame, load_results

#: A class-balanced result "exceeds the seed noise" when |CB - plain| > NOISE_SE standard errors.
NOISE_SE = 2.0
#: Config fields that identify the plain run a class-balanced run is compared with (all but the
#: weighting: β and the scheme).
PAIR_KEYS: tuple[str, ...] = tuple(
    k for k in GROUP_KEYS if k not in ("label", "class_balanced", "beta", "scheme")
)
_EXTRA = ("per_class_accuracy", "train_counts")


def empty_results() -> pd.DataFrame:
    """A results frame with the columns of ``load_results`` and no rows."""
    return frame([], extra=_EXTRA)


def results_for(configs: Iterable[RunConfig], out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The finished runs of ``configs`` in ``out_dir`` (rows of ``load_results``); none -> empty."""
    ids = list(dict.fromkeys(c.run_id for c in configs))
    if not ids:
        raise ValueError("configs is empty: pass the RunConfigs of a preset (get_preset(name))")
    try:
        df = load_results(out_dir)
    except FileNotFoundError:
        return empty_results()
    df = df[df["run_id"].isin(ids)]
    order = {run_id: i for i, run_id in enumerate(ids)}
    return df.sort_values("run_id", key=lambda s: s.map(order)).reset_index(drop=True)


def provenance(df: pd.DataFrame) -> pd.DataFrame:
    """Who made the results: runs per (git revision, dirty flag, device, torch), with dates."""
    needed = ("run_id", "git_rev", "git_dirty", "device", "torch", "finished", "wall_seconds")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the output of load_results()")
    keys = ["git_rev", "git_dirty", "device", "torch"]
    out = (
        df.assign(git_rev=df["git_rev"].fillna("unknown"), git_dirty=df["git_dirty"].fillna("?"))
        .groupby(keys, dropna=False, sort=True)
        .agg(
            runs=("run_id", "size"),
            first_finished=("finished", "min"),
            last_finished=("finished", "max"),
            wall_minutes=("wall_seconds", lambda s: float(np.nansum(s.astype(float))) / 60),
        )
        .reset_index()
    )
    return out


def _verdict(diff: float, se: float, n_plain: int, n_cb: int) -> str:
    """Whether a CB - plain difference exceeds NOISE_SE standard errors of the seed noise."""
    if math.isnan(diff):
        return "no value"
    if n_plain < 2 or n_cb < 2 or math.isnan(se):
        return "one seed: no noise estimate"
    if abs(diff) <= NOISE_SE * se:
        return "within seed noise"
    return "CB better" if diff < 0 else "CB worse"


def _paired_wins(plain: pd.DataFrame, cb: pd.DataFrame, metric: str) -> str:
    """'k/m': in how many of the m seeds run with both losses CB has the lower ``metric``."""
    both = pd.DataFrame(
        {"plain": plain.set_index("seed")[metric], "cb": cb.set_index("seed")[metric]}
    )
    joined = both.astype(float).dropna()
    return f"{int((joined['cb'] < joined['plain']).sum())}/{len(joined)}"


def cb_vs_plain(df: pd.DataFrame, metric: str = "top1_error") -> pd.DataFrame:
    """Each class-balanced setting beside its plain loss (same method, data, model, schedule,
    with uniform weights).

    Columns: mean, std (ddof=1) and n over seeds for both, ``diff`` = CB - plain, ``se`` =
    sqrt(s_plain²/n_plain + s_cb²/n_cb) (the standard error of the difference of the means),
    ``cb_lower`` (in how many seeds run with both CB has the lower value, e.g. '3/3') and a
    ``verdict``: 'CB better' / 'CB worse' when |diff| > NOISE_SE·se, else 'within seed noise'.
    Lower is better for errors; pass an accuracy ``metric`` and read the signs the other way.
    A CB setting without a plain partner in ``df`` is left out (for example every method that
    has no plain form, such as LDAM). ``weighting`` is 'β' for effective-number weights and
    '1/n' or '1/√n' for the other schemes.
    """
    missing = [c for c in (*GROUP_KEYS, "seed", metric) if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the output of load_results()")
    columns = [
        "dataset",
        "imbalance_factor",
        "loss",
        "beta",
        "weighting",
        "plain_mean",
        "plain_std",
        "plain_n",
        "cb_mean",
        "cb_std",
        "cb_n",
        "diff",
        "se",
        "cb_lower",
        "verdict",
    ]
    # NaN never equals NaN, so group on filled copies of the parameters a method may lack.
    fill = {k: df[k].astype(float).fillna(-1.0) for k in ("gamma", "tau", "max_margin", "scale")}
    data = df.assign(**{f"_{k}": v for k, v in fill.items()})
    keys = [f"_{k}" if k in fill else k for k in PAIR_KEYS]
    balanced = data["class_balanced"].astype(bool)
    plain_groups = {
        key: group for key, group in data[~balanced].groupby(keys, dropna=False, sort=False)
    }
    rows = []
    for key, cb in data[balanced].groupby([*keys, "label"], dropna=False, sort=False):
        plain = plain_groups.get(key[:-1])
        if plain is None:
            continue
        p, c = plain[metric].astype(float), cb[metric].astype(float)
        p_n, c_n = int(p.notna().sum()), int(c.notna().sum())
        diff = float(c.mean() - p.mean())
        se = math.sqrt(p.var(ddof=1) / p_n + c.var(ddof=1) / c_n) if min(p_n, c_n) > 1 else math.nan
        rows.append(
            {
                "dataset": cb["dataset"].iloc[0],
                "imbalance_factor": float(cb["imbalance_factor"].iloc[0]),
                "loss": plain["label"].iloc[0],
                "beta": float(cb["beta"].iloc[0]),
                "weighting": _weighting(cb["scheme"].iloc[0], float(cb["beta"].iloc[0])),
                "loss_type": cb["loss_type"].iloc[0],
                "plain_mean": float(p.mean()),
                "plain_std": float(p.std(ddof=1)) if p_n > 1 else math.nan,
                "plain_n": p_n,
                "cb_mean": float(c.mean()),
                "cb_std": float(c.std(ddof=1)) if c_n > 1 else math.nan,
                "cb_n": c_n,
                "diff": diff,
                "se": se,
                "cb_lower": _paired_wins(plain, cb, metric),
                "verdict": _verdict(diff, se, p_n, c_n),
            }
        )
    out = pd.DataFrame(rows, columns=[*columns, "loss_type"])
    if out.empty:
        return out.drop(columns="loss_type")
    rank = out["loss_type"].map({name: m.order for name, m in METHODS.items()})
    out = out.assign(_d=out["dataset"], _i=-out["imbalance_factor"], _l=rank)
    return (
        out.sort_values(["_d", "_i", "_l", "loss", "weighting", "beta"], kind="stable")
        .drop(columns=["_d", "_i", "_l", "loss_type"])
        .reset_index(drop=True)
    )


def _weighting(scheme: str, beta: float) -> str:
    """How a row is weighted, for tables: the β of effective numbers, or '1/n' / '1/√n'."""
    return {"inverse": "1/n", "sqrt_inverse": "1/√n"}.get(scheme, f"{beta:g}")


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def cb_vs_plain_markdown(table: pd.DataFrame) -> str:
    """The rows of :func:`cb_vs_plain` as a GitHub Markdown table (one line per row)."""
    missing = [c for c in ("plain_mean", "cb_mean", "diff", "se", "verdict") if c not in table]
    if missing:
        raise ValueError(f"table lacks columns {missing}; pass the output of cb_vs_plain()")
    if table.empty:
        raise ValueError("table has no rows: no class-balanced run has a plain partner")
    lines = [
        "| data | IF | loss | plain | class-balanced (β) | CB − plain ± SE | CB lower in "
        "| verdict |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for row in table.itertuples(index=False):
        diff = f"{row.diff:+.2f}" + ("" if math.isnan(row.se) else f" ± {row.se:.2f}")
        lines.append(
            f"| {dataset_title(row.dataset)} | {row.imbalance_factor:g} "
            f"| {row.loss} | {_mean_std(row.plain_mean, row.plain_std)} "
            f"| {_mean_std(row.cb_mean, row.cb_std)} ({row.weighting}) | {diff} "
            f"| {row.cb_lower} seeds | {row.verdict} |"
        )
    return "\n".join(lines)


def provenance_text(df: pd.DataFrame) -> str:
    """One sentence per (revision, device, torch) group of :func:`provenance`."""
    sentences = []
    for row in provenance(df).itertuples(index=False):
        rev = str(row.git_rev)[:7]
        state = {True: "with uncommitted changes", False: "clean"}.get(row.git_dirty, "state ?")
        first, last = str(row.first_finished)[:10], str(row.last_finished)[:10]
        dates = first if first == last else f"{first} to {last}"
        sentences.append(
            f"{row.runs} runs at git revision {rev} ({state}) on {row.device}, "
            f"torch {row.torch}, finished {dates}, {row.wall_minutes:.0f} min of training."
        )
    return " ".join(sentences)


def summary_markdown(out_dir: str | os.PathLike[str], preset: str) -> str:
    """Markdown: CB vs plain for the finished runs of ``preset`` in ``out_dir``, and provenance.

    This is what ``python -m cbnotes summary --markdown`` prints and what the README shows.
    """
    from cbnotes.presets import get_preset

    df = results_for(get_preset(preset), out_dir)
    if df.empty:
        raise ValueError(
            f"no finished runs of preset {preset!r} in {out_dir}; "
            f"run `python -m cbnotes run --preset {preset} --out {out_dir}` first"
        )
    table = cb_vs_plain_markdown(cb_vs_plain(df))
    seeds = int(df["seed"].nunique())
    note = (
        f"Top-1 error (%) on the balanced test set after the last epoch, mean ± std over "
        f"{seeds} seed(s); SE is the standard error of the difference of the means; the verdict "
        f"needs |CB − plain| > {NOISE_SE:g} SE. Preset `{preset}`: {provenance_text(df)}"
    )
    return f"{table}\n\n{note}"

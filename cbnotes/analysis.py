"""Reading a study for the notebooks: its finished runs, where they came from, CB vs plain.

The notebooks 00, 04 and 05 show the same committed results; these helpers keep the reading of
them in one place. Every error is a percentage, and the headline is the last-epoch top-1 error
on the full balanced test set (Sec. 5), as in :mod:`cbnotes.results`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

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


def preset_results(out_dir: str | os.PathLike[str], preset: str) -> pd.DataFrame:
    """The finished runs of preset ``preset`` in ``out_dir`` (:func:`results_for`); when there
    are none, a ValueError that names the command training them."""
    from cbnotes.presets import get_preset

    df = results_for(get_preset(preset), out_dir)
    if df.empty:
        raise ValueError(
            f"no finished runs of preset {preset!r} in {out_dir}; "
            f"run `python -m cbnotes run --preset {preset} --out {out_dir}` first"
        )
    return df


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


def verdict(diff: float, se: float, n_base: int, n_new: int, name: str = "CB") -> str:
    """Whether an error difference new - base exceeds NOISE_SE standard errors of the seed
    noise: '<name> better' / '<name> worse', 'within seed noise', or why there is no verdict."""
    if math.isnan(diff):
        return "no value"
    if n_base < 2 or n_new < 2 or math.isnan(se):
        return "one seed: no noise estimate"
    if abs(diff) <= NOISE_SE * se:
        return "within seed noise"
    return f"{name} better" if diff < 0 else f"{name} worse"


def difference(base: pd.Series, new: pd.Series) -> tuple[float, float]:
    """new - base of the means, and its standard error sqrt(s_b²/n_b + s_n²/n_n) (NaN for n < 2)."""
    b, n = base.astype(float).dropna(), new.astype(float).dropna()
    diff = float(n.mean() - b.mean())
    if min(len(b), len(n)) < 2:
        return diff, math.nan
    return diff, math.sqrt(b.var(ddof=1) / len(b) + n.var(ddof=1) / len(n))


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
        diff, se = difference(p, c)
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
                "verdict": verdict(diff, se, p_n, c_n),
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
    df = preset_results(out_dir, preset)
    table = cb_vs_plain_markdown(cb_vs_plain(df))
    seeds = int(df["seed"].nunique())
    note = (
        f"Top-1 error (%) on the balanced test set after the last epoch, mean ± std over "
        f"{seeds} seed(s); SE is the standard error of the difference of the means; the verdict "
        f"needs |CB − plain| > {NOISE_SE:g} SE. Preset `{preset}`: {provenance_text(df)}"
    )
    return f"{table}\n\n{note}"


# ----------------------------------------------------------------------------- for the notebooks

#: Class names of the datasets whose classes a figure can name (index order = long-tail order:
#: class i keeps n_i images). CIFAR-100 has too many for tick labels; figures number its classes.
_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def class_names(dataset: str, num_classes: int | None = None) -> list[str]:
    """Display names of the classes of ``dataset`` ("class 3" where the names are unknown)."""
    names: tuple[str, ...] = ()
    if dataset == "cifar10":
        names = _CIFAR10_CLASSES
    elif dataset == "fashion_mnist":
        from torchvision.datasets import FashionMNIST

        names = tuple(FashionMNIST.classes)
    spec_classes = num_classes if num_classes is not None else len(names)
    if len(names) != spec_classes:
        from cbnotes.data import DATASETS

        count = num_classes if num_classes is not None else DATASETS[dataset].num_classes
        return [f"class {i}" for i in range(count)]
    return list(names)


def mean_std_text(mean: float, std: float, n: int | None = None) -> str:
    """'24.39 ± 0.90' (with ' (n=3)' when ``n`` is given); the mean alone for one value."""
    core = _mean_std(float(mean), float(std) if std is not None else math.nan)
    return core if n is None else f"{core} (n={int(n)})"


def cb_vs_plain_display(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`cb_vs_plain` as display strings (data, IF, loss, plain, CB, Δ, ...)."""
    rows = []
    for r in table.itertuples(index=False):
        se = "–" if math.isnan(r.se) else f"{r.se:.2f}"
        rows.append(
            {
                "data": dataset_title(r.dataset),
                "IF": f"{r.imbalance_factor:g}",
                "loss": r.loss,
                "plain": mean_std_text(r.plain_mean, r.plain_std),
                "class-balanced": f"{mean_std_text(r.cb_mean, r.cb_std)} ({r.weighting})",
                "Δ = CB − plain": f"{r.diff:+.2f}",
                "SE of Δ": se,
                "seeds": f"{r.plain_n} + {r.cb_n}",
                "CB lower in": f"{r.cb_lower} seeds",
                "verdict": r.verdict,
            }
        )
    return pd.DataFrame(rows)


def _signed(value: float) -> str:
    """'−3.99' / '+0.03' (a typographic minus)."""
    return f"{value:+.2f}".replace("-", "−")


def describe_cb_vs_plain(table: pd.DataFrame, indent: str = "") -> str:
    """Markdown bullets, one per (data set, IF): which losses class-balancing helps, by how much
    (Δ ± SE, in points of top-1 error), and where the difference is within the seed noise."""
    if table.empty:
        return f"{indent}- no class-balanced run has a plain partner among these results."
    lines = []
    for (dataset, imbalance), part in table.groupby(["dataset", "imbalance_factor"], sort=False):
        clauses = []
        for verdict, rows in part.groupby("verdict", sort=False):
            items = ", ".join(
                f"{r.loss} ({_signed(r.diff)}"
                + ("" if math.isnan(r.se) else f" ± {r.se:.2f}")
                + ")"
                for r in rows.itertuples(index=False)
            )
            clauses.append(f"{verdict}: {items}")
        title = f"{dataset_title(dataset)}, IF {imbalance:g}"
        lines.append(f"{indent}- **{title}** — " + "; ".join(clauses))
    return "\n".join(lines)


def effect_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Per (data set, IF): softmax, the best plain and the best class-balanced error, and the
    gains of the best CB setting over both (negative = lower error with CB).

    ``table`` has columns dataset, imbalance_factor, label, class_balanced and ``error`` (one row
    per setting: Table 2 rows, or means over seeds). Both "best" values are minima over the
    settings in ``table``.
    """
    rows = []
    for (dataset, imbalance), part in table.groupby(["dataset", "imbalance_factor"], sort=False):
        balanced = part["class_balanced"].astype(bool)
        plain, cb = part[~balanced], part[balanced]
        if plain.empty or cb.empty or "softmax" not in set(plain["label"]):
            continue
        softmax = float(plain.loc[plain["label"] == "softmax", "error"].iloc[0])
        best_plain, best_cb = plain.loc[plain["error"].idxmin()], cb.loc[cb["error"].idxmin()]
        rows.append(
            {
                "source": source,
                "data": dataset_title(dataset),
                "IF": f"{imbalance:g}",
                "softmax": softmax,
                "best plain": float(best_plain["error"]),
                "best plain loss": best_plain["label"],
                "best CB": float(best_cb["error"]),
                "best CB setting": best_cb["label"],
                "CB − softmax": float(best_cb["error"]) - softmax,
                "CB − best plain": float(best_cb["error"] - best_plain["error"]),
            }
        )
    return pd.DataFrame(rows)


def paper_effects(imbalance_factors: Iterable[float] | None = None) -> pd.DataFrame:
    """:func:`effect_table` of the paper's Table 2 (both data sets; all or the given IFs > 1)."""
    from cbnotes.paper import paper_table2

    paper = paper_table2()
    paper = paper[paper["imbalance_factor"] > 1]
    if imbalance_factors is not None:
        paper = paper[paper["imbalance_factor"].isin([float(f) for f in imbalance_factors])]
    cb = paper["method"] == "class-balanced"
    labels = [
        (f"CB {loss}" + ("" if pd.isna(gamma) else f" γ={gamma:g}") + f" (β={beta:g})")
        if is_cb
        else method
        for method, loss, beta, gamma, is_cb in zip(
            paper["method"], paper["loss_type"], paper["beta"], paper["gamma"], cb, strict=True
        )
    ]
    tidy = paper.assign(label=labels, class_balanced=cb, error=paper["top1_error"])
    return effect_table(tidy, "paper (Table 2)")


def study_effects(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`effect_table` of finished runs (means over seeds), e.g. the committed CPU study."""
    from cbnotes.results import aggregate

    if df.empty:
        return effect_table(df.assign(error=[]), "ours")
    agg = aggregate(df, metrics=("top1_error",)).rename(columns={"top1_error_mean": "error"})
    depth, epochs = int(df["depth"].iloc[0]), int(df["epochs"].iloc[0])
    return effect_table(agg, f"ours: ResNet-{depth}, {epochs} epochs, mean of {agg['n'].max()}")


def pair_records(
    df: pd.DataFrame, records: dict[str, dict]
) -> dict[tuple[str, float, str], dict[str, list[dict]]]:
    """The result records of each plain loss and its class-balanced version, by seed.

    Keys are (dataset, IF, plain loss label); values ``{"plain": [...], "CB": [...]}``. Where a
    loss has several CB settings, the one with the most seeds (then the largest β) is used.
    ``records`` maps run ids to result records (:meth:`cbnotes.notebook.Study.records`).
    """
    from cbnotes.methods import method_label

    pairs = cb_vs_plain(df)
    if pairs.empty:
        return {}
    keys = ["dataset", "imbalance_factor", "loss"]
    pairs = pairs.sort_values(["cb_n", "beta"]).groupby(keys, sort=False).tail(1).sort_index()
    out = {}
    for r in pairs.itertuples(index=False):
        part = df[(df["dataset"] == r.dataset) & (df["imbalance_factor"] == r.imbalance_factor)]
        plain = part[part["label"] == r.loss]
        first = plain.iloc[0]
        gamma = None if pd.isna(first["gamma"]) else float(first["gamma"])
        label = method_label(first["loss_type"], {"beta": r.beta, "gamma": gamma})
        chosen = {"plain": plain, "CB": part[part["label"] == label]}
        out[(r.dataset, r.imbalance_factor, r.loss)] = {
            kind: [records[i] for i in runs.sort_values("seed")["run_id"] if i in records]
            for kind, runs in chosen.items()
        }
    return out


def stack_records(records: Iterable[dict], get: Callable[[dict], Iterable]) -> np.ndarray:
    """Array (runs, ...) of one per-run quantity ``get(record)``; None (no test sample) -> NaN."""
    return np.array([[np.nan if v is None else v for v in get(r)] for r in records], dtype=float)


def _per_class(record: dict) -> list[float | None]:
    return record["final_metrics"]["per_class_accuracy"]


def per_class_table(
    paired: dict[tuple[str, float, str], dict[str, list[dict]]],
    dataset: str,
    imbalance: float,
    names: list[str],
) -> pd.DataFrame:
    """Mean per-class test accuracy (%) over seeds: one row per class (and a mean row), columns
    (loss, plain / CB), plus the training images per class."""
    table, counts = {}, None
    for (ds, factor, loss), runs in paired.items():
        if ds != dataset or factor != imbalance or not runs["plain"] or not runs["CB"]:
            continue
        counts = runs["plain"][0]["train_counts"]
        for kind in ("plain", "CB"):
            table[(loss, kind)] = np.nanmean(stack_records(runs[kind], _per_class), axis=0)
    if counts is None:
        return pd.DataFrame()
    out = pd.DataFrame(table, index=pd.Index(names, name="class"))
    out.insert(0, ("", "train images"), counts)
    out.loc["mean (= 100 − error)"] = [np.nan, *out.iloc[:, 1:].mean().tolist()]
    return out


def describe_per_class(table: pd.DataFrame) -> str:
    """Markdown: which classes class-balancing helps and hurts most in a
    :func:`per_class_table` (ranges over the losses), and what happens to the hardest class."""
    classes = table.drop(index="mean (= 100 − error)")
    losses = [loss for loss, kind in classes.columns if kind == "CB"]
    delta = pd.DataFrame(
        {loss: classes[(loss, "CB")] - classes[(loss, "plain")] for loss in losses}
    )
    plain = classes[[(loss, "plain") for loss in losses]]
    cb = classes[[(loss, "CB") for loss in losses]]
    counts = classes[("", "train images")]

    def span(values: pd.Series) -> str:
        low, high = float(values.min()), float(values.max())
        return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f} to {high:.0f}"

    def who(index: Iterable[str]) -> str:
        return " and ".join(f"{name} ({int(counts[name]):,} images)" for name in index)

    order = delta.mean(axis=1).sort_values()
    gainers, losers = order.index[::-1][:2], order.index[:2]
    hardest = plain.mean(axis=1).idxmin()
    means = table.loc["mean (= 100 − error)"]
    mean_plain = means[[(loss, "plain") for loss in losses]]
    mean_cb = means[[(loss, "CB") for loss in losses]]
    return (
        f"Class-balancing helps {who(gainers)} most, by {span(delta.loc[gainers].stack())} "
        f"points (over the losses), and costs {who(losers)} {span(-delta.loc[losers].stack())} "
        f"points. The class the plain losses recognise worst is {hardest} "
        f"({int(counts[hardest]):,} images, {span(plain.loc[hardest])} %); class-balancing "
        f"brings it to {span(cb.loc[hardest])} %. The mean over the classes (= 100 − top-1 "
        f"error) goes from {span(mean_plain)} % (plain) to {span(mean_cb)} % (class-balanced)."
    )


def sweep_runs(df: pd.DataFrame, over: str, at_least: int) -> pd.DataFrame:
    """The runs of ``df`` that belong to a sweep over ``over`` ("beta" or "gamma"): groups of
    (dataset, IF, method and the other parameter) with at least ``at_least`` values of it. Adds
    a ``method`` column (loss, with γ for a β sweep)."""
    other = "gamma" if over == "beta" else "beta"
    data = df.assign(_o=df[other].astype(float).fillna(-1.0))
    keys = ["dataset", "imbalance_factor", "loss_type", "_o"]
    sizes = data.groupby(keys)[over].transform("nunique")
    swept = data[sizes >= at_least]
    method = [
        lt + ("" if pd.isna(g) else f" γ={g:g}") if over == "beta" else lt
        for lt, g in zip(swept["loss_type"], swept["gamma"], strict=True)
    ]
    return swept.drop(columns="_o").assign(method=method)

"""Finished runs on disk: one JSON result per run, a tidy summary per results folder.

Files under a results folder ``out_dir``::

    out_dir/runs/<run_id>.json         finished result record (written once, atomically)
    out_dir/checkpoints/<run_id>.pt    last saved epoch of an unfinished run
    out_dir/summary.csv                one tidy row per finished run

The headline metric is the top-1 error of the **last** epoch on the full balanced test set, as
in the paper. The best-epoch error is also recorded, labeled as selected on the test set: later
papers report it, and it is only meant for comparison with them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cbnotes._files import write_text_atomic
from cbnotes.config import RunConfig
from cbnotes.methods import METHODS, PARAMS

#: Label of the best-epoch numbers wherever they are stored or shown.
BEST_EPOCH_NOTE = "best-epoch, selected on the test set, for comparison with later papers only"


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a DataFrame as CSV (no index) to ``path`` atomically."""
    write_text_atomic(path, df.to_csv(index=False))


def result_path(out_dir: str | os.PathLike[str], config: RunConfig) -> Path:
    """Where the finished result of ``config`` lives."""
    return Path(out_dir) / "runs" / f"{config.run_id}.json"


def checkpoint_path(out_dir: str | os.PathLike[str], config: RunConfig) -> Path:
    """Where the last complete epoch of an unfinished ``config`` lives."""
    return Path(out_dir) / "checkpoints" / f"{config.run_id}.pt"


def run_status(config: RunConfig, out_dir: str | os.PathLike[str]) -> str:
    """'finished', 'interrupted' (a checkpoint exists) or 'pending'."""
    if result_path(out_dir, config).exists():
        return "finished"
    if checkpoint_path(out_dir, config).exists():
        return "interrupted"
    return "pending"


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one result JSON (clear error if it is not valid JSON)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"result file {path} is not valid JSON ({err}); delete it to rerun"
        ) from err


#: The fields of a run's configuration, in RunConfig order.
CONFIG_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))
#: Columns of summary.csv (one tidy row per finished run), in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "label",
    "class_balanced",
    *CONFIG_FIELDS,
    "top1_error",
    "best_top1_error",
    "best_epoch",
    "many",
    "medium",
    "few",
    "posthoc_top1_error",
    "device",
    "torch",
    "git_rev",
    "git_dirty",
    "wall_seconds",
    "images_per_second",
    "finished",
)
#: Columns that define a method setting; aggregation pools runs over the rest (the seed, and
#: how often the test set was evaluated).
GROUP_KEYS: tuple[str, ...] = (
    "label",
    "class_balanced",
    *(name for name in CONFIG_FIELDS if name not in ("seed", "eval_every")),
)
#: Columns that hold numbers or NaN (None in a record).
_FLOAT_COLUMNS = ("imbalance_factor", *(p for p in PARAMS if p != "scheme"))
_SHOTS = ("many", "medium", "few")


def _shot(final: Mapping[str, Any], name: str) -> float | None:
    """Many/medium/few-shot accuracy from the metrics dict, whatever its exact key."""
    for key in (name, f"{name}_accuracy", f"{name}_shot_accuracy", f"{name}_shot"):
        value = final.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def summary_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One tidy row (see ``SUMMARY_COLUMNS``) from a result record.

    The config is read through :meth:`RunConfig.from_dict`, so a record written before a
    field existed gets the value that field had then, and label and ``class_balanced`` come
    from the method registry.
    """
    config = RunConfig.from_dict(record["config"])
    final = record.get("final_metrics", {})
    env = record.get("environment", {})
    posthoc = final.get("posthoc_logit_adjusted") or {}
    row = {key: value for key, value in config.to_dict().items() if key in SUMMARY_COLUMNS}
    row.update(
        run_id=record["run_id"],
        label=config.label,
        class_balanced=config.class_balanced,
        top1_error=record["top1_error"],
        posthoc_top1_error=posthoc.get("top1_error"),
        best_top1_error=record.get("best_top1_error"),
        best_epoch=record.get("best_epoch"),
        **{name: _shot(final, name) for name in _SHOTS},
        device=env.get("device"),
        torch=env.get("torch"),
        git_rev=env.get("git_rev"),
        git_dirty=env.get("git_dirty"),
        wall_seconds=record.get("wall_seconds"),
        images_per_second=record.get("images_per_second"),
        finished=record.get("finished"),
    )
    return {key: row.get(key) for key in SUMMARY_COLUMNS}


def frame(rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """DataFrame with the summary columns (plus ``extra``) even when there are no rows."""
    df = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *extra])
    for name in _FLOAT_COLUMNS:
        df[name] = df[name].astype(float)
    return df


def load_results(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All finished runs under ``out_dir`` as tidy rows, plus list columns for plots.

    The extra columns ``per_class_accuracy`` and ``train_counts`` hold lists (one per run).
    """
    runs = Path(out_dir) / "runs"
    if not Path(out_dir).is_dir():
        raise FileNotFoundError(
            f"results folder {out_dir} does not exist; run `cbnotes run --preset ...` first "
            f"or pass the folder you used with --out"
        )
    rows = []
    for path in sorted(runs.glob("*.json")):
        record = read_result(path)
        row = summary_row(record)
        row["per_class_accuracy"] = record.get("final_metrics", {}).get("per_class_accuracy")
        row["train_counts"] = record.get("train_counts")
        rows.append(row)
    return frame(rows, extra=("per_class_accuracy", "train_counts"))


def write_summary(out_dir: str | os.PathLike[str]) -> Path:
    """(Re)write ``out_dir/summary.csv`` from the result JSON files; return its path."""
    path = Path(out_dir) / "summary.csv"
    write_csv_atomic(load_results(out_dir).loc[:, list(SUMMARY_COLUMNS)], path)
    return path


def aggregate(
    df: pd.DataFrame, metrics: tuple[str, ...] = ("top1_error", "best_top1_error", *_SHOTS)
) -> pd.DataFrame:
    """Mean ± std (ddof=1) over seeds per method setting (``GROUP_KEYS``), with n and seeds."""
    missing = [c for c in (*GROUP_KEYS, "seed", *metrics) if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; pass the output of load_results/run_sweep")
    groups = df.groupby(list(GROUP_KEYS), dropna=False, sort=False)
    out = groups.agg(
        **{f"{m}_mean": (m, "mean") for m in metrics},
        **{f"{m}_std": (m, "std") for m in metrics},
        n=("seed", "size"),
        seeds=("seed", lambda s: " ".join(str(int(v)) for v in sorted(s))),
    ).reset_index()
    return sort_methods(out)


def sort_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Order rows: dataset, imbalance factor (high first), plain before re-balanced, then the
    registry's method order, γ, weighting scheme, β."""
    order = {name: method.order for name, method in METHODS.items()}
    keys = pd.DataFrame(
        {
            "d": df["dataset"],
            "i": -df["imbalance_factor"],
            "cb": df["class_balanced"].astype(bool),
            "l": df["loss_type"].map(order).fillna(len(order)),
            "g": df["gamma"].fillna(-1.0),
            "s": df["scheme"].fillna(""),
            "b": df["beta"].fillna(-1.0),
        },
        index=df.index,
    )
    index = keys.sort_values(list(keys.columns), kind="stable").index
    return df.loc[index].reset_index(drop=True)

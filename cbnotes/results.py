"""Finished runs on disk: one JSON result per run, a tidy summary per results folder.

Files under a results folder ``out_dir``::

    out_dir/runs/<run_id>.json         finished result record (written once, atomically)
    out_dir/checkpoints/<run_id>.pt    last saved epoch of an unfinished run
    out_dir/summary.csv                one tidy row per finished run

The headline metric is the top-1 error of the **last** epoch on the full balanced test set, as
in the paper. The best-epoch error is also recorded, labeled as selected on the test set: later
papers report it, and it is only meant for comparison with them.

Every result is checked when it is read (:func:`read_result`): it must be a JSON object with
a run id, a top-1 error in [0, 100] and a config that :meth:`RunConfig.from_dict` accepts and
whose run id is the record's; the other fields the runner writes must have their types when
present. Results written since
:data:`RESULT_FORMAT` existed carry ``"format"``; older ones (the committed study) have none
and stay valid. The run id inside a file, not the file name, identifies a run:
:func:`load_results` skips an invalid file and counts a run found in two files (a sync tool's
``<run_id> (1).json``) once, each with a one-line warning on stderr.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cbnotes._files import check_out_dir, write_text_atomic, write_text_if_changed
from cbnotes.config import RunConfig
from cbnotes.methods import METHODS, PARAMS

#: Label of the best-epoch numbers wherever they are stored or shown.
BEST_EPOCH_NOTE = "best-epoch, selected on the test set, for comparison with later papers only"
#: Version of the result records this code writes; a record without one is format 0.
RESULT_FORMAT = 1
#: Fields every result record must have: what identifies the run and its headline number.
REQUIRED_FIELDS: tuple[str, ...] = ("run_id", "config", "top1_error")
#: Fields the runner always writes whose type is checked when present (a hand-made record,
#: as in tests and notebooks, may leave them out).
_CONTAINERS: tuple[tuple[str, type], ...] = (
    ("final_metrics", dict),
    ("history", list),
    ("environment", dict),
)
_NUMBER = (int, float)
#: Optional fields -> the types they must have when present (None is allowed for all).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "label": (str,),
    "best_top1_error": _NUMBER,
    "best_epoch": (int,),
    "classifier": (dict,),
    "train_counts": (list,),
    "session_environments": (list,),
    "started": (str,),
    "finished": (str,),
    "sessions": (int,),
    "wall_seconds": _NUMBER,
    "train_seconds": _NUMBER,
    "images_per_second": _NUMBER,
}
#: What a user does about a results folder that does not exist.
_NO_FOLDER_HINT = "run `cbnotes run --preset ...` first or pass the folder you used with --out"


class InvalidResultError(ValueError):
    """A result file that cannot be used: unreadable, not JSON, or not a result record.

    ``path`` is the file and ``reason`` what is wrong with it, in a few words.
    """

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"result file {self.path} is not a valid result ({reason}); "
            f"{move_away(self.path.parent)}"
        )


def move_away(folder: Path) -> str:
    """What a user does about an invalid result file in ``folder``."""
    return f"move it out of {folder} (or delete it)"


def warn(message: str) -> None:
    """Print a one-line warning on stderr (read-only commands skip what they cannot use)."""
    print(f"warning: {message}", file=sys.stderr)


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
    """'finished', 'invalid' (its result file is not a valid result of it), 'interrupted' (a
    checkpoint exists) or 'pending'."""
    done = result_path(out_dir, config)
    if done.exists():
        try:
            read_result(done, run_id=config.run_id)
        except InvalidResultError:
            return "invalid"
        return "finished"
    if checkpoint_path(out_dir, config).exists():
        return "interrupted"
    return "pending"


def _is_number(value: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    """JSON's name for the type of a parsed value."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if _is_number(value):
        return "a number"
    return names.get(type(value), type(value).__name__)


def check_record(record: Any) -> str | None:
    """What is wrong with a parsed result record, in a few words; None if it is valid."""
    if not isinstance(record, dict):
        return f"the JSON is {_type_name(record)}, not an object"
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        return f"it lacks the field(s) {', '.join(missing)}"
    version = record.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return f"format must be a whole number; got {version!r}"
    if version > RESULT_FORMAT:
        return (
            f"it has format {version}, newer than the {RESULT_FORMAT} this cbnotes reads; "
            "upgrade cbnotes"
        )
    if not isinstance(record["run_id"], str):
        return f"run_id is {_type_name(record['run_id'])}, not a string"
    try:
        config = RunConfig.from_dict(record["config"])
    except (TypeError, ValueError) as err:
        return f"its config is not valid: {err}"
    if config.run_id != record["run_id"]:
        return f"its run_id {record['run_id']} is not that of its config ({config.run_id})"
    error = record["top1_error"]
    if not _is_number(error) or not 0 <= error <= 100:
        return f"top1_error must be a number in [0, 100]; got {error!r}"
    for name, kind in _CONTAINERS:
        if name in record and not isinstance(record[name], kind):
            return f"{name} is {_type_name(record[name])}, not {_type_name(kind())}"
    for name, kinds in _FIELD_TYPES.items():
        value = record.get(name)
        bad_number = kinds is _NUMBER and value is not None and not _is_number(value)
        if bad_number or (value is not None and not isinstance(value, kinds)):
            return f"{name} is {_type_name(value)}, of the wrong type"
        if kinds is _NUMBER and value is not None and not math.isfinite(value):
            return f"{name} is {value!r}, not a finite number"
    return None


#: Result fields that depend on the clock, the session or the machine, not on the training.
VOLATILE_KEYS: tuple[str, ...] = (
    "environment",
    "session_environments",
    "started",
    "finished",
    "wall_seconds",
    "train_seconds",
    "images_per_second",
    "sessions",
)
#: The same for each epoch's record in ``history``.
VOLATILE_HISTORY_KEYS: tuple[str, ...] = ("seconds", "images_per_s")


def trained_part(record: Mapping[str, Any]) -> dict[str, Any]:
    """What training determines in a result record: everything but :data:`VOLATILE_KEYS`
    (and :data:`VOLATILE_HISTORY_KEYS` per epoch). Two runs of one config on one machine with
    the same thread count have equal trained parts, whatever stopped and resumed them."""
    history = [
        {k: v for k, v in epoch.items() if k not in VOLATILE_HISTORY_KEYS}
        for epoch in record["history"]
    ]
    return {**{k: v for k, v in record.items() if k not in VOLATILE_KEYS}, "history": history}


def recorded_channels_last(record: Any) -> bool | None:
    """Whether the last session of a result record (or of a checkpoint's progress record, which
    keeps sessions the same way) trained channels-last; None where it records no memory format
    (before cbnotes recorded it, CPU runs used the default layout)."""
    try:
        return bool(record["session_environments"][-1]["runtime"]["channels_last"])
    except (KeyError, IndexError, TypeError):
        return None


def read_result(path: str | os.PathLike[str], *, run_id: str | None = None) -> dict[str, Any]:
    """Read and check one result file (see :func:`check_record`); with ``run_id``, also that it
    holds that run. Raises :class:`InvalidResultError` naming the file and the reason."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidResultError(file, f"it is not UTF-8 text ({err.reason})") from err
    except OSError as err:
        raise InvalidResultError(file, f"it cannot be read: {err.strerror or err}") from err
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidResultError(file, f"it is not valid JSON: {err}") from err
    problem = check_record(record)
    if problem is None and run_id is not None and record["run_id"] != run_id:
        problem = f"it holds run {record['run_id']}, not {run_id}"
    if problem is not None:
        raise InvalidResultError(file, problem)
    return record


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


def read_results(out_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every valid result record under ``out_dir/runs``, by run id (see :func:`load_results`).

    An invalid file is skipped and a run found in a second file is counted once (the file
    named ``<run_id>.json`` wins, else the first by name), each with a warning on stderr.
    """
    folder = check_out_dir(out_dir, write=False, hint=_NO_FOLDER_HINT)
    runs = folder / "runs"
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        try:
            record = read_result(path)
        except InvalidResultError as err:
            warn(f"skipped {path}: not a valid result ({err.reason}); {move_away(runs)}")
            continue
        found.setdefault(record["run_id"], []).append((path, record))
    records: dict[str, dict[str, Any]] = {}
    for run_id, copies in sorted(found.items(), key=lambda item: item[1][0][0].name):
        copies.sort(key=lambda copy: copy[0].stem != run_id)  # stable: then by name
        (kept, record), others = copies[0], copies[1:]
        for path, other in others:
            same = "" if other == record else ", with different content"
            warn(
                f"{path} holds run {run_id}, already read from {kept}{same}; counted once "
                f"(delete the copy)"
            )
        records[run_id] = record
    return records


def load_results(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All finished runs under ``out_dir`` as tidy rows, plus list columns for plots.

    The extra columns ``per_class_accuracy`` and ``train_counts`` hold lists (one per run).
    A file that is not a valid result is skipped, and a run stored twice is one row (with a
    warning on stderr each), so that reading never fails for one bad file.
    """
    rows = []
    for record in read_results(out_dir).values():
        row = summary_row(record)
        row["per_class_accuracy"] = record.get("final_metrics", {}).get("per_class_accuracy")
        row["train_counts"] = record.get("train_counts")
        rows.append(row)
    return frame(rows, extra=("per_class_accuracy", "train_counts"))


def summary_text(out_dir: str | os.PathLike[str]) -> str:
    """The CSV text of ``out_dir/summary.csv`` as the result files make it now."""
    return load_results(out_dir).loc[:, list(SUMMARY_COLUMNS)].to_csv(index=False)


def write_summary(out_dir: str | os.PathLike[str]) -> Path:
    """(Re)write ``out_dir/summary.csv`` from the result files; return its path.

    The file is written only when its content changes, so that a folder where nothing new
    finished is not written at all (it may be read-only).
    """
    path = Path(out_dir) / "summary.csv"
    write_text_if_changed(path, summary_text(out_dir))
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

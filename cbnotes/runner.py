"""Resumable experiment runner: train a :class:`RunConfig`, write its result, skip finished runs.

A finished run (``out_dir/runs/<run_id>.json``) is never trained again; an interrupted one
resumes from ``out_dir/checkpoints/<run_id>.pt`` and ends bit for bit as an uninterrupted run
would (same device and torch thread count). The checkpoint is written after an epoch once
``checkpoint_every`` seconds have passed since the last one (:func:`checkpoint_seconds`: every
epoch on a CPU, at most one a minute on a GPU, whose epochs can be shorter than a save).
Runtime options (``compile``, ``checkpoint_every``) change how fast a run trains, not what it
is: they are not fields of :class:`RunConfig` and leave run ids alone. Every file is written
to a temporary file in the same folder and moved into place with ``os.replace``, so nothing
half-written is ever left on disk. What the files hold is described in :mod:`cbnotes.results`.

What can go wrong, and what happens:

- The results folder cannot be written (a file, read-only, full): a
  :class:`~cbnotes._files.PlaceError` before any data is loaded or any epoch trained.
- A checkpoint that cannot be read (truncated, empty, garbage): it is set aside as
  ``<run_id>.pt.damaged-<UTC time>`` (never deleted), a note goes to stderr, and the run
  starts again from epoch 0. If it cannot even be moved, the run fails with a
  :class:`RunError`.
- A run's own failure (:class:`RunError`: a checkpoint of another config, an invalid result
  file, which is never overwritten; or a ``FloatingPointError``, the loss became nan):
  :func:`run_sweep` goes on with the other runs and raises :class:`SweepError` at the end,
  listing the failed runs and why. Ctrl-C stops the sweep at once; run it again to resume.

``run_sweep(..., fused=True)`` trains pending runs that share a dataset and model shape in
packs (:mod:`cbnotes.packs`), with the same promises and result files; the default,
``fused="auto"``, does so only where a pack is measured to be faster (on a GPU, never on a CPU).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from cbnotes._files import (
    check_out_dir,
    describe_os_error,
    write_bytes_atomic,
    write_json_atomic,
)
from cbnotes.config import RunConfig
from cbnotes.provenance import environment, now, resolve_device
from cbnotes.results import (
    BEST_EPOCH_NOTE,
    RESULT_FORMAT,
    InvalidResultError,
    checkpoint_path,
    move_away,
    read_result,
    recorded_channels_last,
    result_path,
    run_status,
    summary_row,
    write_summary,
)

#: Batch size used for evaluation (BatchNorm is in eval mode, so it does not change results).
EVAL_BATCH_SIZE = 500
#: Strength of the post-hoc logit adjustment reported for plain softmax runs (Menon et al.).
POSTHOC_TAU = 1.0
#: Seconds between checkpoints when none are asked for, by device type (see
#: :func:`checkpoint_seconds`).
CHECKPOINT_SECONDS = {"cpu": 0.0, "cuda": 60.0}
#: What a checkpoint must hold (besides what ``Trainer.load_state_dict`` checks itself).
_CHECKPOINT_KEYS = ("config", "trainer", "rng", "progress")
#: The clock of :class:`CheckpointTimer` (tests replace it with a fake one).
_monotonic = time.monotonic
_PROGRESS_KEYS = ("train_seconds", "wall_seconds", "images", "started", "sessions")


class RunError(ValueError):
    """A run cannot be done for a reason of its own (its files); a sweep goes on without it."""


class DamagedCheckpointError(RunError):
    """A checkpoint that cannot be read or does not hold what the runner writes."""


class SweepError(RuntimeError):
    """Some runs of a sweep failed; the others finished.

    ``failures`` maps each failed run id to why it failed, ``results`` holds the rows of the
    runs that finished (as :func:`run_sweep` returns them) and ``total`` counts all runs.
    """

    def __init__(self, failures: dict[str, str], results: pd.DataFrame, total: int) -> None:
        self.failures = dict(failures)
        self.results = results
        self.total = total
        lines = "".join(f"\n  {run_id}: {why}" for run_id, why in self.failures.items())
        super().__init__(f"{len(self.failures)} of {total} run(s) failed:{lines}")


OOM_HINT = (
    "train fewer runs at once on this GPU (--jobs, --pack-size, --runs-per-gpu) or free the "
    "memory other programs hold"
)


class PackFallback(Exception):
    """A pack that cannot be trained fused (see :mod:`cbnotes.packs`): the sweep trains its
    runs one by one instead. The message says why."""


def _rng_state() -> dict[str, Any]:
    """Global torch RNG states for exact resumption: the CPU's and, once CUDA is in use, that
    of the current CUDA device, the one a run trains on (not every visible GPU's: a resume, as
    a Ray task for one, may see fewer GPUs)."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved, or the list of every GPU's states that earlier
    versions saved (the current device's entry, or the first if there are fewer)."""
    import torch

    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list | tuple):
        if not cuda:
            return
        index = torch.cuda.current_device()
        cuda = cuda[index] if index < len(cuda) else cuda[0]
    torch.cuda.set_rng_state(cuda)


def checkpoint_seconds(every: float | None, device: Any) -> float:
    """Seconds between checkpoints: ``every`` if given (0: after every epoch), else
    :data:`CHECKPOINT_SECONDS` of the device: every epoch on a CPU, where an epoch takes
    seconds and a save milliseconds; at most one a minute on a GPU, where a save (a copy of
    the state to the host and a file write) can take as long as a short epoch."""
    if every is None:
        return CHECKPOINT_SECONDS.get(getattr(device, "type", str(device)), 0.0)
    if isinstance(every, bool) or not isinstance(every, int | float) or not every >= 0:
        raise ValueError(
            f"checkpoint_every must be a number of seconds >= 0 (0: after every epoch); got "
            f"{every!r}"
        )
    return float(every)


class CheckpointTimer:
    """Whether a checkpoint is due after an epoch: once ``every`` seconds have passed since the
    last save (or since training started in this session). ``saved_epochs`` counts the epochs
    the newest checkpoint holds (0: there is none)."""

    def __init__(self, every: float, saved_epochs: int) -> None:
        self.every = every
        self.saved_epochs = saved_epochs
        self.last = _monotonic()

    def due(self) -> bool:
        """True when a checkpoint should be written now."""
        return _monotonic() - self.last >= self.every

    def saved(self, epochs: int) -> None:
        """Record a checkpoint holding ``epochs`` epochs, written now."""
        self.saved_epochs = epochs
        self.last = _monotonic()

    def describe(self, total: int, ckpt: Path) -> str:
        """What an interruption leaves and what to do, for messages: '3 of 12 epochs saved;
        run again to resume from <ckpt>'."""
        if not self.saved_epochs:
            return f"no epoch of {total} saved yet; run again to start it over"
        return f"{self.saved_epochs} of {total} epochs saved; run again to resume from {ckpt}"


def _why(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 160 else f"{text[:157]}..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def missing_keys(state: Any, keys: tuple[str, ...]) -> str | None:
    """Whether a loaded checkpoint is a dict with ``keys``, in a few words; None if it is."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    missing = [k for k in keys if k not in state]
    return f"it lacks {', '.join(missing)}" if missing else None


def _checkpoint_problem(state: Any) -> str | None:
    """What a loaded checkpoint lacks of what the runner writes, in a few words; None if nothing."""
    return missing_keys(state, _CHECKPOINT_KEYS) or progress_problem(state["progress"])


def progress_problem(progress: Any) -> str | None:
    """What a checkpoint's progress record (see :func:`new_progress`) lacks; None if nothing."""
    if not isinstance(progress, dict) or any(k not in progress for k in _PROGRESS_KEYS):
        return "its progress record is incomplete"
    counts = [progress[k] for k in _PROGRESS_KEYS if k != "started"]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in counts):
        return "its progress record holds a value that is not a number"
    return None


def read_checkpoint(
    path: Path, problem: Callable[[Any], str | None] = _checkpoint_problem
) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``) and check it with ``problem`` (what it lacks
    of what the runner writes, or None; a pack checkpoint has its own, see :mod:`cbnotes.packs`).

    Raises :class:`DamagedCheckpointError` naming ``path`` when the file is empty, cannot be
    read or lacks what the runner writes.
    """
    import torch

    try:
        if path.stat().st_size == 0:
            raise DamagedCheckpointError(f"checkpoint {path} is damaged: it is empty")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except DamagedCheckpointError:
        raise
    except Exception as err:  # torch.load of a damaged file raises many types
        raise DamagedCheckpointError(
            f"checkpoint {path} is damaged: torch.load fails with {_why(err)}"
        ) from err
    lacks = problem(state)
    if lacks is not None:
        raise DamagedCheckpointError(
            f"checkpoint {path} is damaged: it is not a cbnotes checkpoint ({lacks})"
        )
    return state


def _load_checkpoint(path: Path, config: RunConfig) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``) and check that it belongs to ``config``.

    Raises :class:`DamagedCheckpointError` when the file cannot be read or lacks what the
    runner writes, and :class:`RunError` when it was written for another config.
    """
    state = read_checkpoint(path)
    stored = state.get("config")
    try:
        same = RunConfig.from_dict(stored) == config
    except (TypeError, ValueError):
        same = False
    if not same:
        diff = "unknown format"
        if isinstance(stored, dict):
            diff = (
                ", ".join(
                    f"{k}: {stored.get(k)!r} != {v!r}"
                    for k, v in config.to_dict().items()
                    if k in stored and stored.get(k) != v
                )
                or f"keys {sorted(set(stored) ^ set(config.to_dict()))}"
            )
        raise RunError(
            f"checkpoint {path} was written for a different config ({diff}); "
            f"delete it to start this run from scratch, or use another out_dir"
        )
    return state


def _set_aside(path: Path, problem: str) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged-<UTC time>``; return the new path.

    Raises :class:`RunError` when the file cannot be moved (the run cannot go on without
    either resuming from it or setting it aside, and it is never deleted).
    """
    moment = datetime.now(timezone.utc)
    target = path.with_name(f"{path.name}.damaged-{moment:%Y%m%dT%H%M%SZ}")
    if target.exists():  # a second one within the same second
        target = path.with_name(f"{path.name}.damaged-{moment:%Y%m%dT%H%M%S.%fZ}")
    try:
        os.rename(path, target)
    except OSError as err:
        why, _ = describe_os_error(err)
        raise RunError(
            f"{problem}, and it cannot be set aside ({why}); move or delete it yourself and "
            f"run again"
        ) from err
    return target


def _restart_note(what: str, problem: str, moved: Path) -> None:
    """Tell the user (stderr) that a damaged checkpoint was set aside and ``what`` (a run id,
    or a pack of runs) is trained again."""
    print(
        f"warning: {problem}; set it aside as {moved} and training {what} again from epoch 0",
        file=sys.stderr,
    )


def _check_out_dirs(out_dir: str | os.PathLike[str]) -> None:
    """Check that the results folder and its runs/ and checkpoints/ can be written."""
    check_out_dir(out_dir, write=True)
    for sub in ("runs", "checkpoints"):
        check_out_dir(Path(out_dir) / sub, write=True, what=f"{sub} folder")


@dataclasses.dataclass
class RunParts:
    """What one run trains, built as :func:`build_trainer` builds it: the seeded model with its
    head initialization, criterion, training loader, training counts and post-hoc τ."""

    model: Any
    criterion: Any
    train_loader: Any
    counts: list[int]
    posthoc_tau: float | None


def build_parts(config: RunConfig, train_set: Any, device: Any) -> RunParts:
    """The model, criterion and training loader of ``config`` on its training set.

    Everything method-specific comes from the registry (:mod:`cbnotes.methods`): the head and
    its initialization, the criterion and the re-sampling weights. The global random
    generators are seeded with ``config.seed`` first, so the model's initialization does not
    depend on what was built before.
    """
    from cbnotes.methods import build_criterion, sampling_weights
    from cbnotes.models import init_head_for_loss, resnet_cifar
    from cbnotes.pipeline import DeviceLoader
    from cbnotes.training import seed_everything

    counts = [int(c) for c in train_set.counts()]
    method = config.method
    seed_everything(config.seed)
    model = resnet_cifar(
        depth=config.depth,
        num_classes=train_set.num_classes,
        in_channels=int(train_set.images.shape[1]),
        base_width=config.base_width,
        shortcut=config.shortcut,
        init=config.init,
        head=method.head,
    )
    init_head_for_loss(model, config.loss_type)
    criterion = build_criterion(config.loss_type, counts, config.params, config.recipe())
    train_loader = DeviceLoader(
        train_set,
        config.batch_size,
        train=True,
        device=device,
        seed=config.seed,
        pad=config.pad,
        class_weights=sampling_weights(config.loss_type, counts, config.params),
    )
    posthoc = method.posthoc and not config.class_balanced
    return RunParts(model, criterion, train_loader, counts, POSTHOC_TAU if posthoc else None)


class DataCache:
    """The training and test sets of the last (dataset, imbalance factor, data seed) loaded,
    on the device: the runs and packs of a sweep that share them load them once (the sweep
    keeps one cache; :func:`cbnotes.packs.plan_sweep` puts packs of one dataset together)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._sets: tuple[Any, Any] | None = None

    def get(
        self,
        config: RunConfig,
        device: Any,
        data_root: str | os.PathLike[str] | None = None,
        download: bool = False,
    ) -> tuple[Any, Any]:
        """(Training set, test set) of ``config`` on ``device``, loaded if not held already."""
        from cbnotes.data import load_dataset

        key = (config.dataset, config.imbalance_factor, config.data_seed, str(device), data_root)
        if key != self._key or self._sets is None:
            self._key, self._sets = None, None  # let the previous sets go first
            train, test = load_dataset(
                config.dataset,
                imbalance_factor=config.imbalance_factor,
                root=data_root,
                seed=config.data_seed,
                download=download,
            )
            self._key, self._sets = key, (train.to(device), test.to(device))
        return self._sets


def build_trainer(
    config: RunConfig,
    device: Any,
    *,
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    compile: bool | str = False,
    data: DataCache | None = None,
    channels_last: bool | None = None,
) -> Any:
    """Data, model, criterion, loaders and :class:`~cbnotes.training.Trainer` for ``config``
    (the run's parts from :func:`build_parts`, weight-decay groups from the registry);
    ``compile`` and ``channels_last`` go to the Trainer; ``data`` keeps the data sets between
    runs of a sweep."""
    from cbnotes.pipeline import DeviceLoader
    from cbnotes.training import Trainer

    train_set, test_set = (data or DataCache()).get(config, device, data_root, download)
    parts = build_parts(config, train_set, device)
    test_loader = DeviceLoader(test_set, EVAL_BATCH_SIZE, train=False, device=device)
    return Trainer(
        parts.model,
        parts.criterion,
        parts.train_loader,
        test_loader,
        config.recipe(),
        loss_type=config.loss_type,
        device=device,
        num_classes=train_set.num_classes,
        train_counts=parts.counts,
        amp=config.amp,
        progress=progress,
        compile=compile,
        posthoc_tau=parts.posthoc_tau,
        channels_last=channels_last,
    )


def run_experiment(
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    after_checkpoint: Callable[[int], None] | None = None,
    compile: bool | str = False,
    checkpoint_every: float | None = None,
    data: DataCache | None = None,
) -> dict[str, Any]:
    """Train and evaluate one config; return its result record (skip if already finished).

    Resumes from ``out_dir/checkpoints/<run_id>.pt`` when present, saves a checkpoint after an
    epoch once ``checkpoint_every`` seconds have passed since the last one (default
    :func:`checkpoint_seconds`; 0: every epoch), writes ``out_dir/runs/<run_id>.json`` at the
    end and then deletes the checkpoint. Ctrl-C leaves the last complete checkpoint in place;
    calling again resumes from it. ``after_checkpoint(epoch)`` is called after each checkpoint
    is saved (a test hook). ``compile`` (True or a ``torch.compile`` mode, see
    :data:`cbnotes.training.COMPILE_MODES`) compiles the model; like ``checkpoint_every`` it
    changes the speed, not the run id.

    The results folder is checked before any data is loaded (PlaceError). A damaged checkpoint
    is set aside and the run starts again; an invalid result file is never overwritten: it is
    a :class:`RunError`, as is a checkpoint of another config.
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a RunConfig; got {type(config).__name__}")
    done = result_path(out_dir, config)
    if done.exists():
        try:
            return read_result(done, run_id=config.run_id)
        except InvalidResultError as err:
            raise RunError(
                f"its result file {done} is not a valid result ({err.reason}); it is not "
                f"overwritten: {move_away(done.parent)} to train {config.run_id} again"
            ) from err
    _check_out_dirs(out_dir)
    ckpt = checkpoint_path(out_dir, config)
    dev = resolve_device(device)
    from cbnotes.training import precision_name, resolve_compile

    every = checkpoint_seconds(checkpoint_every, dev)
    options = {"progress": progress, "data_root": data_root, "download": download}
    options["compile"] = resolve_compile(compile)
    options["data"] = data or DataCache()
    saved = None
    if ckpt.exists():
        try:
            saved = _load_checkpoint(ckpt, config)
        except DamagedCheckpointError as err:
            _restart_note(config.run_id, str(err), _set_aside(ckpt, str(err)))
    # A resumed run keeps the memory format it started with (its rounding).
    layout = recorded_channels_last(saved["progress"]) if saved is not None else None
    trainer = build_trainer(config, dev, channels_last=layout, **options)
    state = new_progress()
    if saved is not None:
        try:
            trainer.load_state_dict(saved["trainer"])
            _set_rng_state(saved["rng"])
        except Exception as err:  # any failure here means a damaged checkpoint
            problem = f"checkpoint {ckpt} is damaged: resuming from it fails with {_why(err)}"
            _restart_note(config.run_id, problem, _set_aside(ckpt, problem))
            trainer = build_trainer(config, dev, **options)  # a fresh start: today's layout
        else:
            state.update(saved["progress"])
    runtime = {
        "compile": options["compile"],
        "checkpoint_every": every,
        "channels_last": trainer.channels_last,
        "precision": precision_name(trainer.amp_dtype),
    }
    _start_session(state, dev, config, runtime=runtime)
    timer = CheckpointTimer(every, trainer.next_epoch)
    final = _train(config, trainer, ckpt, state, timer, after_checkpoint)
    record = _result_record(config, trainer, final, state, dev)
    write_json_atomic(done, record)
    _delete_checkpoint(ckpt)
    return record


def _delete_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint that is no longer needed; a warning (not an error) if it cannot be."""
    try:
        ckpt.unlink(missing_ok=True)
    except OSError as err:
        why, _ = describe_os_error(err)
        print(f"warning: could not delete the checkpoint {ckpt} ({why})", file=sys.stderr)


def new_progress() -> dict[str, Any]:
    """The progress record of a run that has not trained yet (kept in its checkpoints)."""
    return {
        "train_seconds": 0.0,
        "wall_seconds": 0.0,
        "images": 0,
        "started": now(),
        "sessions": 0,
        "session_environments": [],
    }


def _start_session(
    state: dict[str, Any],
    device: Any,
    config: RunConfig,
    env: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
) -> None:
    """Count a new session and record its environment; warn if the thread count changed.

    CPU kernels split work by thread, so a resume with another torch thread count gives a
    result that is correct but not bit-identical to an uninterrupted run. ``env`` is
    :func:`~cbnotes.provenance.environment` of ``device`` when the caller has it already;
    ``runtime`` (the session's compile mode, checkpoint interval and memory format) is
    recorded with it.
    """
    env = environment(device) if env is None else env
    sessions = state.setdefault("session_environments", [])
    if sessions and sessions[-1].get("torch_threads") != env["torch_threads"]:
        print(
            f"note: {config.run_id} was trained with {sessions[-1].get('torch_threads')} torch "
            f"threads and resumes with {env['torch_threads']}; its result will be valid but not "
            f"bit-identical to an uninterrupted run",
            file=sys.stderr,
        )
    state["sessions"] += 1
    sessions.append({"started": now(), **env, **({"runtime": runtime} if runtime else {})})


def _train(
    config: RunConfig,
    trainer: Any,
    ckpt: Path,
    state: dict[str, Any],
    timer: CheckpointTimer,
    after_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train to the end with ``Trainer.fit``, checkpointing when ``timer`` says so; return the
    final metrics."""
    session_start = time.perf_counter()
    wall_before = state["wall_seconds"]
    train_size = len(trainer.train_loader.data)

    def epoch_end(record: dict[str, Any]) -> None:
        state["train_seconds"] += record["seconds"]
        state["images"] += train_size
        state["wall_seconds"] = wall_before + time.perf_counter() - session_start
        if timer.due():
            _save_checkpoint(ckpt, config, trainer, state)
            timer.saved(record["epoch"] + 1)
            if after_checkpoint is not None:
                after_checkpoint(record["epoch"])

    try:
        trainer.fit(eval_every=config.eval_every, on_epoch_end=epoch_end, desc=config.label)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {config.run_id} has {timer.describe(config.epochs, ckpt)}",
            file=sys.stderr,
        )
        raise
    if trainer.last_evaluation is None:  # resumed with every epoch trained but none evaluated
        return trainer.evaluate()
    return trainer.last_evaluation


def _save_checkpoint(path: Path, config: RunConfig, trainer: Any, state: dict[str, Any]) -> None:
    """Atomically save trainer state, RNG state and run progress.

    The checkpoint is serialized in memory and written like every other file, so that a full
    disk is an OSError (a PlaceError naming the file), not a RuntimeError from torch.save.
    """

    payload = {
        "config": config.to_dict(),
        "run_id": config.run_id,
        "trainer": trainer.state_dict(),
        "rng": _rng_state(),
        "progress": state,
    }
    save_atomic(path, payload)


def save_atomic(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save(payload)`` into memory, then written atomically like every other file."""
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _best(history: list[dict[str, Any]]) -> tuple[float | None, int | None]:
    """Lowest evaluated top-1 error and its epoch index (0-based; earliest on ties)."""
    evaluated = [h for h in history if h.get("top1_error") is not None]
    if not evaluated:
        return None, None
    best = min(evaluated, key=lambda h: (h["top1_error"], h["epoch"]))
    return float(best["top1_error"]), int(best["epoch"])


def _result_record(
    config: RunConfig,
    trainer: Any,
    final: dict[str, Any],
    state: dict[str, Any],
    device: Any,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON result of one finished run (epoch indices count from 0, as in the history).

    ``trainer`` is a :class:`~cbnotes.training.Trainer` or a
    :class:`~cbnotes.fused.PackMember` (both have ``history``, ``model``, ``train_counts``).
    """
    from cbnotes.models import classifier_stats

    best_error, best_epoch = _best(trainer.history)
    seconds = state["train_seconds"]
    return {
        "format": RESULT_FORMAT,
        "run_id": config.run_id,
        "label": config.label,
        "config": config.to_dict(),
        "top1_error": float(final["top1_error"]),
        "top1_error_note": "last epoch, full balanced test set (the paper's headline metric)",
        "best_top1_error": best_error,
        "best_epoch": best_epoch,
        "best_top1_error_note": BEST_EPOCH_NOTE,
        "final_metrics": final,
        "classifier": classifier_stats(trainer.model),
        "train_counts": trainer.train_counts,
        "history": list(trainer.history),
        "environment": environment(device) if env is None else env,
        "session_environments": state["session_environments"],
        "started": state["started"],
        "finished": now(),
        "sessions": state["sessions"],
        "wall_seconds": state["wall_seconds"],
        "train_seconds": seconds,
        "images_per_second": state["images"] / seconds if seconds > 0 else None,
    }


def run_sweep(
    configs: Iterable[RunConfig],
    out_dir: str | os.PathLike[str],
    *,
    fused: bool | str = "auto",
    pack_size: int | None = None,
    jobs: int | str = 1,
    **kwargs: Any,
) -> pd.DataFrame:
    """Run every config (finished ones are skipped), write ``summary.csv``; return their rows.

    ``kwargs`` go to :func:`run_experiment` (and :func:`cbnotes.packs.run_pack`): device,
    progress, data folder and download, and the runtime options ``compile`` and
    ``checkpoint_every``, which leave run ids alone. ``out_dir/summary.csv`` lists every
    finished run in ``out_dir`` (also those of earlier sweeps); it is written only when that
    list changed.
    The returned DataFrame holds only these configs. A run that fails for a reason of its own
    (:class:`RunError`, ``FloatingPointError``) is reported on stderr and the sweep goes on;
    at the end a :class:`SweepError` lists the failed runs. Anything else (a results folder
    that cannot be written, missing data, Ctrl-C) stops the sweep at once.

    With ``fused=True``, pending runs that can share a model shape and dataset are trained
    together in packs of up to ``pack_size`` (default: what the device holds, see
    :func:`cbnotes.packs.plan_sweep`); each still writes its own result file, and every other
    run is trained one by one as with ``fused=False``. ``fused="auto"`` (the default) trains
    in packs where that is faster: never on a CPU, and on a GPU if a measured pack beats its
    runs one by one (:func:`cbnotes.packs.choose_units`).

    ``jobs`` > 1 trains that many runs (or packs) at once in worker processes, the CPU cores
    shared out among them (:mod:`cbnotes.parallel`); "auto" is one per core on a CPU, 1 on a
    GPU. A run's numbers depend on its torch thread count, which its result records.
    """
    from cbnotes.results import frame

    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: pass at least one RunConfig (see cbnotes.presets)")
    bad = [c for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise ValueError(f"configs must all be RunConfig; got {type(bad[0]).__name__}")
    if fused not in (True, False, "auto"):
        raise ValueError(f'fused must be True, False or "auto"; got {fused!r}')
    from cbnotes.parallel import resolve_jobs

    workers = resolve_jobs(jobs, kwargs.get("device", "auto"))
    cache = DataCache()  # the data sets are loaded once per sweep
    units: list[list[RunConfig]] = [[c] for c in configs]
    if fused == "auto":
        from cbnotes.packs import choose_units

        units = choose_units(
            configs,
            out_dir,
            pack_size=pack_size,
            device=kwargs.get("device", "auto"),
            data_root=kwargs.get("data_root"),
            download=kwargs.get("download", False),
            data=cache,
            sharing=workers,
        )
    elif fused:
        from cbnotes.packs import plan_sweep

        units = plan_sweep(
            configs, out_dir, pack_size=pack_size, device=kwargs.get("device"), sharing=workers
        )
    here: list[list[RunConfig]] = units  # finished runs are read here, not by a worker
    todo: list[list[RunConfig]] = []
    if workers > 1:
        here = []
        for unit in units:
            finished = len(unit) == 1 and run_status(unit[0], out_dir) == "finished"
            (here if finished else todo).append(unit)
        if len(todo) < 2:
            here, todo = units, []
    records, failures = _run_units(here, out_dir, kwargs, cache)
    if todo:
        from cbnotes.parallel import run_units

        more, failed = run_units(todo, out_dir, kwargs, workers)
        records.update(more)
        failures.update(failed)
    if Path(out_dir).is_dir():
        write_summary(out_dir)
    results = frame([summary_row(records[c.run_id]) for c in configs if c.run_id in records])
    if failures:
        raise SweepError(failures, results, len(configs))
    return results


def _unit_name(unit: list[RunConfig]) -> str:
    """'run <id>', or 'pack of N runs (<ids>)'."""
    if len(unit) == 1:
        return f"run {unit[0].run_id}"
    return f"pack of {len(unit)} runs ({', '.join(c.run_id for c in unit)})"


def train_unit(
    unit: list[RunConfig],
    out_dir: str | os.PathLike[str],
    data: DataCache,
    kwargs: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Train one run (:func:`run_experiment`) or one pack (:func:`cbnotes.packs.run_pack`);
    the result records by run id. ``kwargs`` go to either."""
    if len(unit) == 1:
        return {unit[0].run_id: run_experiment(unit[0], out_dir, data=data, **kwargs)}
    from cbnotes.packs import run_pack

    return run_pack(unit, out_dir, data=data, **kwargs)


def _run_units(
    units: list[list[RunConfig]],
    out_dir: str | os.PathLike[str],
    kwargs: dict[str, Any],
    cache: DataCache,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Train each unit (one run, or a pack of runs); return the records and failures by run id.

    A pack that falls back (:class:`PackFallback`) is replaced by its runs, one by one.
    """
    from tqdm.auto import tqdm

    queue = collections.deque(units)
    records: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    bar = tqdm(
        total=sum(len(u) for u in units),
        desc="runs",
        unit="run",
        disable=not kwargs.get("progress", True),
    )
    while queue:
        unit = queue.popleft()
        bar.set_postfix_str(unit[0].run_id if len(unit) == 1 else f"pack of {len(unit)}")
        left = sum(len(u) for u in queue)
        instead = settle_unit(
            unit,
            functools.partial(train_unit, unit, out_dir, cache, kwargs),
            records,
            failures,
            left,
        )
        if instead:
            queue.extendleft(reversed(instead))
        else:
            bar.update(len(unit))
    bar.close()
    return records, failures


def settle_unit(
    unit: list[RunConfig],
    outcome: Callable[[], dict[str, dict[str, Any]]],
    records: dict[str, dict[str, Any]],
    failures: dict[str, str],
    left: int,
) -> list[list[RunConfig]]:
    """File what training ``unit`` gave (``outcome()`` returns its records or raises) into
    ``records`` or ``failures``, saying so where a sweep goes on; return the units to train
    instead (a pack that falls back, :class:`PackFallback`, becomes its runs), else [].

    The one policy of the sequential loop and of ``--jobs`` workers
    (:func:`cbnotes.parallel.run_units`); ``left`` is the number of runs still to train. A
    run that runs out of GPU memory is that run's failure, a pack that does falls back to its
    runs (:func:`cbnotes.packs.run_pack` also deletes its checkpoint when that happens while
    it trains), and afterwards the memory the unit left cached is given back for the next.
    """
    import torch

    instead: list[list[RunConfig]] = []
    try:
        records.update(outcome())
    except PackFallback as err:
        print(f"note: {err}; training its runs one by one", file=sys.stderr)
        instead = [[config] for config in unit]
    except torch.cuda.OutOfMemoryError as err:
        if len(unit) > 1:  # wherever the pack ran out (building, data, training)
            print(
                f"note: the {_unit_name(unit)} ran out of GPU memory; training its runs one by one",
                file=sys.stderr,
            )
            instead = [[config] for config in unit]
        else:
            detail = str(err).splitlines()[0] if str(err) else "no detail"
            _record_failure(unit, f"ran out of GPU memory ({detail}); {OOM_HINT}", failures, left)
    except (RunError, FloatingPointError) as err:
        _record_failure(unit, str(err), failures, left)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # for the next unit, or another process on this GPU
    return instead


def _record_failure(unit: list[RunConfig], why: str, failures: dict[str, str], left: int) -> None:
    """File ``why`` as the failure of every run of ``unit``; say so if the sweep goes on."""
    failures.update((c.run_id, why) for c in unit)
    if left:
        print(
            f"error: {_unit_name(unit)} failed: {why}; going on with the other {left} run(s)",
            file=sys.stderr,
        )

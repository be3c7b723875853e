"""Runs of a sweep trained at once in worker processes on one machine (``cbnotes run --jobs N``).

On a CPU a small model uses several cores poorly: on the project's 2-core machine two
processes with one torch thread each train the CPU study's model about 1.4 to 1.6 times as
fast in all as one process with two threads (``benchmarks/bench_main_job.py``), and a
one-thread process never waits at a thread barrier, so it does not collapse when other work
shares the machine. :func:`run_units` trains the units of a sweep (single runs, or packs) in
``jobs`` spawned processes (at most one per unit) with the cores shared out among them as
torch threads; every process keeps its data sets between the units it trains.

The runner's promises hold: each run writes its result and checkpoints as it would alone; a
run that fails for a reason of its own is listed and the others go on; a pack that cannot be
trained fused is replaced by its runs; anything else (a results folder that cannot be written,
missing data) and Ctrl-C stop every worker at once, keeping their last checkpoints, so that the
same command resumes. A run's numbers depend on its thread count: the result records it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import pickle
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cbnotes._files import PlaceError
from cbnotes.config import RunConfig
from cbnotes.provenance import resolve_device
from cbnotes.runner import DataCache, RunError, _check_out_dirs, settle_unit, train_unit

__all__ = ["resolve_jobs", "run_units", "threads_per_job"]

_STOP = getattr(signal, "SIGUSR1", None)  # how the main process stops a worker (POSIX)
_busy = False  # True while this worker trains a unit
_data: DataCache | None = None  # this worker's data sets


def resolve_jobs(jobs: int | str, device: Any = "auto") -> int:
    """``jobs`` as a number of processes: "auto" is one per CPU core on a CPU and 1 on a GPU;
    a ValueError for anything but "auto" or an integer >= 1."""
    if jobs == "auto":
        if resolve_device(str(device)).type == "cuda":
            return 1
        return max(1, os.cpu_count() or 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f'jobs must be an integer >= 1 or "auto"; got {jobs!r}')
    return jobs


def threads_per_job(jobs: int) -> int:
    """Torch threads of each of ``jobs`` processes: the CPU cores shared out, at least 1."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _init_worker(threads: int) -> None:
    """In a new worker: its torch threads; Ctrl-C is left to the main process (see
    :func:`_stop_workers`)."""
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _STOP is not None:
        signal.signal(_STOP, _on_stop)


def _on_stop(signum: int, frame: Any) -> None:
    """The main process stops the sweep: interrupt a unit in training (its last checkpoint
    stays), or leave at once when idle."""
    if _busy:
        raise KeyboardInterrupt
    os._exit(0)


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (the way back to the main process), else an exception
    of a near kind with the same message."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:
        kind = RunError if isinstance(err, ValueError) else RuntimeError
        kind = PlaceError if isinstance(err, OSError) else kind
        return kind(str(err))
    return err


def _train_unit(
    unit: list[RunConfig], out_dir: str, kwargs: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """In a worker: train one run or one pack; their result records by run id."""
    global _busy, _data
    _data = _data or DataCache()
    _busy = True
    try:
        return train_unit(unit, out_dir, _data, kwargs)
    except BaseException as err:
        raise _portable(err) from None
    finally:
        _busy = False


def _stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Ask every worker of ``pool`` to stop now (a unit in training is interrupted)."""
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(ProcessLookupError, OSError, AttributeError):
            if _STOP is not None:
                os.kill(process.pid, _STOP)
            else:
                process.terminate()


def _download_once(units: Sequence[list[RunConfig]], data_root: Any) -> None:
    """Download the data sets of ``units`` here, once each, so that the workers (which load
    them with ``download`` too) never download the same files at the same time."""
    from cbnotes.data import load_dataset

    done: set[str] = set()
    for unit in units:
        config = unit[0]
        if config.dataset not in done:
            load_dataset(
                config.dataset,
                imbalance_factor=config.imbalance_factor,
                root=data_root,
                seed=config.data_seed,
                download=True,
            )
            done.add(config.dataset)


def run_units(
    units: Sequence[list[RunConfig]],
    out_dir: str | os.PathLike[str],
    kwargs: dict[str, Any],
    jobs: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Train ``units`` in ``jobs`` worker processes (fewer if there are fewer units, each with
    a larger share of the cores); the records and failures by run id.

    ``kwargs`` go to :func:`cbnotes.runner.run_experiment` (and ``run_pack``); the workers
    show no progress bars, this process shows one for the runs.
    """
    from tqdm.auto import tqdm

    _check_out_dirs(out_dir)  # before any worker starts
    if kwargs.get("download"):
        _download_once(units, kwargs.get("data_root"))
    show = kwargs.get("progress", True)
    kwargs = {**kwargs, "progress": False}
    folder = str(Path(out_dir))
    records: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    bar = tqdm(total=sum(len(u) for u in units), desc="runs", unit="run", disable=not show)
    workers = max(1, min(jobs, len(units)))  # the cores are shared among those that work
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads_per_job(workers),),
    )
    try:
        pending = {pool.submit(_train_unit, list(u), folder, kwargs): list(u) for u in units}
        while pending:
            done, _ = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                unit = pending.pop(future)
                left = sum(len(u) for u in pending.values())
                instead = settle_unit(unit, future.result, records, failures, left)
                for retry in instead:
                    pending[pool.submit(_train_unit, retry, folder, kwargs)] = retry
                if not instead:
                    bar.update(len(unit))
    except BaseException:  # Ctrl-C, or an error that stops the sweep: stop every worker now
        _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    return records, failures

"""Sweeps on Ray: every run a Ray task, on the GPUs and CPUs of one machine or a cluster.

``run_sweep_ray`` keeps every promise of :func:`cbnotes.runner.run_sweep`, because each task
simply calls :func:`cbnotes.runner.run_experiment` on the worker:

- **Shared results folder.** Workers write results and checkpoints straight into ``out_dir``,
  which on a cluster must be storage every node mounts at the same path (NFS, a cluster file
  system). The driver leaves a marker file there and each task first checks that it can see
  it: a worker that cannot fails with a message naming its host, instead of training into a
  folder nobody reads.
- **Finished runs are skipped** by the driver (nothing is submitted for them), and an
  interrupted run resumes from its checkpoint, so re-submitting a finished sweep trains
  nothing and a re-submitted interrupted one continues.
- **A worker that dies** (killed, out of memory, node lost) is retried by Ray
  (``max_retries``); the retry resumes from the run's last checkpoint.
- **Two drivers on one folder** cannot corrupt it: every file is written atomically; at worst
  both train the same run and the second result replaces an identical first.
- **Ctrl-C** on the driver cancels the tasks; checkpoints are written atomically, so every
  run resumes where its last saved epoch left it.

Ray is optional: ``pip install "cbnotes[ray]"``.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from cbnotes.config import RunConfig

#: Small ResNets leave a GPU mostly idle: by default this many runs share one GPU.
RUNS_PER_GPU = 4
#: Runs per fused pack on a GPU worker when none is asked for: a ResNet-32 run at batch 128
#: needs about 1 GB of activations, so 8 fit a 16 GB T4 (each pack asks for a whole GPU).
RAY_PACK_SIZE = 8
#: How often Ray retries a run whose worker died (each retry resumes from the checkpoint).
MAX_RETRIES = 3
_MARKER_PREFIX = ".cbnotes-ray-driver-"
#: Test hook: a file of this name in the results folder, holding a run id, makes the worker
#: training that run die right after its first checkpoint (once: the file is removed).
CRASH_FILE = ".cbnotes-test-crash-once"


def import_ray() -> Any:
    """The ``ray`` module, or a ValueError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ValueError(
            "--backend ray needs Ray, which is not installed; install it with "
            '`pip install "cbnotes[ray]"` (or `pip install ray`)'
        ) from err
    return ray


def _crash_once_hook(out_dir: Path, run_id: str) -> Callable[[int], None] | None:
    """The test hook of :data:`CRASH_FILE`: kill this worker once, after its first checkpoint.

    The worker exits abruptly (``os._exit``, as a killed process would), so Ray's retry has to
    resume the run from that checkpoint. Tests use it; a user never creates the file.
    """
    flag = out_dir / CRASH_FILE
    if not flag.exists() or flag.read_text(encoding="utf-8").strip() != run_id:
        return None

    def crash(epoch: int) -> None:
        flag.unlink(missing_ok=True)
        os._exit(17)

    return crash


def _worker_folder(out_dir: str, marker: str, threads: int) -> Path:
    """The shared results folder as this worker sees it (a RuntimeError if it cannot see the
    driver's marker there); sets the worker's torch thread count."""
    import torch

    folder = Path(out_dir)
    if not (folder / marker).exists():
        raise RuntimeError(
            f"worker {socket.gethostname()} cannot see the results folder {out_dir} (the "
            f"driver's marker {marker} is missing there): on a cluster --out must be shared "
            f"storage mounted at the same path on every node"
        )
    torch.set_num_threads(threads)
    return folder


def _task(
    config: RunConfig,
    out_dir: str,
    marker: str,
    threads: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    """One run on a worker: check the shared folder, train (or resume), return its summary row."""
    from cbnotes import runner
    from cbnotes.results import summary_row

    folder = _worker_folder(out_dir, marker, threads)
    hook = _crash_once_hook(folder, config.run_id)
    record = runner.run_experiment(config, folder, progress=False, after_checkpoint=hook, **options)
    return summary_row(record)


def _pack_task(
    configs: list[RunConfig],
    out_dir: str,
    marker: str,
    threads: int,
    options: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """A fused pack on a worker (its runs one by one if it cannot be fused, as the local
    runner does): the summary rows of the runs that finished, and why the others failed."""
    from cbnotes import runner

    folder = _worker_folder(out_dir, marker, threads)
    try:
        df = runner.run_sweep(
            configs, folder, fused=True, pack_size=len(configs), progress=False, **options
        )
    except runner.SweepError as err:
        return err.results.to_dict("records"), err.failures
    return df.to_dict("records"), {}


def _resources(device: str, cpus_per_run: int, runs_per_gpu: int) -> dict[str, float]:
    """Ray resource request of one run (a share of a GPU, or CPU cores); a fused pack asks for
    a whole GPU (``runs_per_gpu=1``).

    A GPU task gets a fresh worker process (``max_calls=1``): CUDA reads the GPU that Ray
    assigns (``CUDA_VISIBLE_DEVICES``) once per process, so a reused worker would train on
    the GPU of its first task, and keep that task's CUDA memory. ``ray.remote`` takes this
    option, ``.options()`` does not.
    """
    if device == "cpu":
        return {"num_cpus": cpus_per_run, "num_gpus": 0}
    return {"num_cpus": cpus_per_run, "num_gpus": 1.0 / runs_per_gpu, "max_calls": 1}


def _units(
    configs: list[RunConfig],
    folder: Path,
    fused: bool,
    pack_size: int | None,
    device: str,
) -> list[list[RunConfig]]:
    """What becomes a Ray task: each run alone, or with ``fused`` the packs of
    :func:`cbnotes.packs.plan_sweep` (``pack_size``, default :data:`RAY_PACK_SIZE` on GPUs
    and 1 on CPUs, where a pack is no faster) and the runs left alone."""
    if not fused:
        return [[c] for c in configs]
    from cbnotes.packs import plan_sweep

    size = pack_size if pack_size is not None else (RAY_PACK_SIZE if device == "cuda" else 1)
    return plan_sweep(configs, folder, pack_size=size, device=device)


def run_sweep_ray(
    configs: Iterable[RunConfig],
    out_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    workers: int | None = None,
    device: str = "auto",
    cpus_per_run: int = 1,
    runs_per_gpu: int = RUNS_PER_GPU,
    max_retries: int = MAX_RETRIES,
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    compile: bool | str = False,
    checkpoint_every: float | None = None,
    fused: bool = False,
    pack_size: int | None = None,
) -> pd.DataFrame:
    """Run every config as a Ray task; write ``summary.csv``; return the rows of ``configs``.

    With ``fused``, pending runs of one dataset and model shape are grouped into packs of up
    to ``pack_size`` (:mod:`cbnotes.packs`); each pack is one task that asks for a whole GPU
    (or ``cpus_per_run`` cores) and writes every member's result file.

    ``address`` is that of a running Ray cluster ("auto" or "HOST:PORT"); without it a local
    Ray instance is started (``workers`` CPUs, default all), which uses every GPU of this
    machine. On a GPU each run asks for ``1/runs_per_gpu`` of one; on ``device="cpu"`` for
    ``cpus_per_run`` cores, which is also its torch thread count. Runs that fail (for a reason
    of their own, or because their worker died more than ``max_retries`` times) do not stop the
    others: a :class:`cbnotes.runner.SweepError` lists them at the end, as the local runner's.
    ``compile`` and ``checkpoint_every`` go to each run (:func:`cbnotes.runner.run_experiment`).
    """
    from tqdm.auto import tqdm

    from cbnotes._files import check_out_dir, write_text_atomic
    from cbnotes.results import (
        frame,
        read_result,
        result_path,
        run_status,
        summary_row,
        write_summary,
    )
    from cbnotes.runner import SweepError

    ray = import_ray()
    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: pass at least one RunConfig (see cbnotes.presets)")
    for name, value in (
        ("workers", workers),
        ("cpus_per_run", cpus_per_run),
        ("runs_per_gpu", runs_per_gpu),
        ("pack_size", pack_size),
    ):
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
        if value is not None and bad:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    folder = check_out_dir(out_dir).resolve()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=workers if address is None else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    gpus = ray.cluster_resources().get("GPU", 0)
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    elif device == "cuda" and not gpus:  # its tasks could never be scheduled: a silent hang
        if started_here:
            ray.shutdown()
        raise ValueError(
            "device 'cuda' was asked for, but the Ray cluster has no GPU; use --device cpu "
            "(or auto), or join a cluster with GPUs (--address)"
        )
    marker = f"{_MARKER_PREFIX}{uuid.uuid4().hex}"
    write_text_atomic(folder / marker, f"{socket.gethostname()} {os.getpid()}\n")
    options = {
        "device": device,
        "data_root": data_root,
        "download": download,
        "compile": compile,
        "checkpoint_every": checkpoint_every,
    }
    run_task = ray.remote(
        **_resources(device, cpus_per_run, runs_per_gpu), max_retries=max_retries
    )(_task)
    pack_task = ray.remote(**_resources(device, cpus_per_run, 1), max_retries=max_retries)(
        _pack_task
    )
    rows: dict[str, dict[str, Any]] = {}
    pending: dict[Any, list[RunConfig]] = {}
    for unit in _units(configs, folder, fused, pack_size, device):
        if len(unit) > 1:
            pending[pack_task.remote(unit, str(folder), marker, cpus_per_run, options)] = unit
        elif run_status(unit[0], folder) == "finished":  # nothing is submitted for it
            rows[unit[0].run_id] = summary_row(read_result(result_path(folder, unit[0])))
        else:
            pending[run_task.remote(unit[0], str(folder), marker, cpus_per_run, options)] = unit
    failed: dict[str, str] = {}
    bar = tqdm(total=len(configs), initial=len(rows), desc="runs", unit="run", disable=not progress)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except Exception as err:  # a run's own failure must not stop the sweep
                cause = getattr(err, "cause", None) or err
                why = f"{type(cause).__name__}: {cause}".splitlines()[0]
                failed.update({c.run_id: why for c in unit})
            else:
                finished, failures = ([result], {}) if len(unit) == 1 else result
                rows.update({row["run_id"]: row for row in finished})
                failed.update(failures)
            bar.update(len(unit))
            bar.set_postfix(done=len(rows), running=len(pending), failed=len(failed))
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        print(
            f"\ninterrupted: {len(pending)} run(s) cancelled; their checkpoints are kept, run "
            f"the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
        (folder / marker).unlink(missing_ok=True)
        if started_here:
            ray.shutdown()
    write_summary(folder)
    results = frame([rows[c.run_id] for c in configs if c.run_id in rows])
    if failed:
        raise SweepError(failed, results, len(configs))
    return results

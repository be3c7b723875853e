"""Fused sweeps (``cbnotes run --fused``): pending runs trained in packs, one result per run.

Without ``--fused`` or ``--no-fused`` (``run_sweep(fused="auto")``) :func:`choose_units`
decides: runs one by one on a CPU, packs on a GPU if a measured pack beats its runs there.

:func:`plan_sweep` groups the runs of a sweep that can share a pack (:func:`pack_key`: one
dataset, imbalance factor and data seed, one model shape and head, one number of epochs, batch
size, AMP mode and evaluation interval; they may differ in method, method parameters, seed,
initialization and padding) into packs of at most ``pack_size``. :func:`run_pack` trains one
pack with :class:`cbnotes.fused.PackTrainer` and writes every member's result file in the
format of an ordinary run (:mod:`cbnotes.results`), with one more field, ``pack``, saying it
was trained in a pack of N. Everything else follows the runner (:mod:`cbnotes.runner`):

- A finished run is never trained again, and a run with its own checkpoint (interrupted
  while trained alone) resumes alone; only pending runs are packed. A pack of one is an
  ordinary run.
- The pack checkpoints as a whole, atomically, as often as a run does (``checkpoint_every``,
  see :func:`cbnotes.runner.checkpoint_seconds`), to
  ``out_dir/checkpoints/pack-<hash of its run ids>.pt``; Ctrl-C leaves it in place and the
  same command resumes the pack, bit for bit on one machine. Packs are formed over the whole
  selection, finished runs included, so that a re-run forms the same packs.
- A damaged pack checkpoint is set aside (``*.pt.damaged-<UTC time>``, never deleted) with a
  warning, and the pack is trained again from epoch 0.
- A pack that cannot be built, or whose loss becomes nan, falls back: its runs are trained
  one by one (a note says so), and a run that fails then fails alone.

The dataset is loaded once per (dataset, imbalance factor, data seed): packs that share one
follow each other and keep it on the device (:class:`DataCache`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cbnotes._files import write_json_atomic
from cbnotes.config import RunConfig
from cbnotes.provenance import device_name, environment, now, resolve_device
from cbnotes.results import checkpoint_path, result_path, run_status
from cbnotes.runner import (
    EVAL_BATCH_SIZE,
    CheckpointTimer,
    DamagedCheckpointError,
    DataCache,
    PackFallback,
    RunError,
    _check_out_dirs,
    _delete_checkpoint,
    _restart_note,
    _result_record,
    _rng_state,
    _set_aside,
    _set_rng_state,
    _start_session,
    _why,
    build_parts,
    checkpoint_seconds,
    missing_keys,
    new_progress,
    progress_problem,
    read_checkpoint,
    save_atomic,
)

__all__ = [
    "AUTO_MIN_SPEEDUP",
    "CHOICE_FILE",
    "MAX_PACK_SIZE",
    "PACK_FIELDS",
    "DataCache",
    "choose_units",
    "default_pack_size",
    "measure_pack_speedup",
    "pack_checkpoint_path",
    "pack_key",
    "plan_sweep",
    "run_pack",
]

#: RunConfig fields the runs of one pack share (besides the method's head): the data, the
#: model's shape, and what :class:`cbnotes.fused.PackTrainer` trains in lockstep.
PACK_FIELDS: tuple[str, ...] = (
    "dataset",
    "imbalance_factor",
    "data_seed",
    "depth",
    "base_width",
    "shortcut",
    "epochs",
    "batch_size",
    "amp",
    "eval_every",
)
#: Largest pack :func:`default_pack_size` picks: the largest benchmarks/bench_fused.py
#: measures by default (larger packs are untested; --pack-size allows them).
MAX_PACK_SIZE = 16
#: How much faster a pack must train than its runs one by one for ``fused="auto"`` to use it.
AUTO_MIN_SPEEDUP = 1.1
#: Where ``fused="auto"`` records its measurement, in the results folder.
CHOICE_FILE = "fused-choice.json"
#: Share of the free GPU memory :func:`default_pack_size` plans to use for activations.
MEMORY_SHARE = 0.5
#: What the ``pack`` field of a result record means.
PACK_NOTE = (
    "trained in a pack of runs fused into one model (cbnotes.packs); wall_seconds and "
    "train_seconds are this run's 1/size share of the pack's time, so images_per_second is "
    "the pack's rate over all its runs"
)
_PACK_KEYS = ("kind", "run_ids", "configs", "pack", "rng", "progress")


def pack_key(config: RunConfig) -> tuple[Any, ...]:
    """What runs must share to be trained in one pack: :data:`PACK_FIELDS` and the head."""
    return (*(getattr(config, name) for name in PACK_FIELDS), config.method.head)


def pack_checkpoint_path(out_dir: str | os.PathLike[str], configs: Sequence[RunConfig]) -> Path:
    """Where the last complete epoch of the pack of ``configs`` (in this order) lives."""
    ids = "\n".join(c.run_id for c in configs)
    digest = hashlib.sha256(ids.encode("utf-8")).hexdigest()[:12]
    return Path(out_dir) / "checkpoints" / f"pack-{digest}.pt"


def _member_bytes(config: RunConfig) -> int:
    """Rough activation memory of one member in training (float32, twice for backward)."""
    from cbnotes.data import DATASETS

    _, height, width = DATASETS[config.dataset].image_shape
    blocks = (config.depth - 2) // 6
    # ~7 saved tensors per block (convs, BatchNorms, ReLUs, sum) and 3 for the stem; stages 2
    # and 3 hold 1/2 and 1/4 of stage 1's elements (a quarter of the pixels, twice the width).
    per_image = (7 * blocks * (1 + 1 / 2 + 1 / 4) + 3) * config.base_width * height * width
    return int(2 * 4 * config.batch_size * per_image)


def default_pack_size(device: Any, configs: Iterable[RunConfig], *, sharing: int = 1) -> int:
    """Runs per pack when none is asked for: 1 on a CPU, where a pack is a little slower than
    its runs one by one (benchmarks/bench_fused.py); on a GPU as many as
    :data:`MEMORY_SHARE` of its free memory holds by a rough estimate of each run's
    activations, at most :data:`MAX_PACK_SIZE`. ``sharing`` processes training packs on the
    GPU at once (``--jobs``) split that share between them."""
    dev = resolve_device("auto" if device is None else str(device))
    if dev.type != "cuda":
        return 1
    import torch

    free, _ = torch.cuda.mem_get_info(dev)
    need = max((_member_bytes(c) for c in configs), default=1)
    return max(1, min(MAX_PACK_SIZE, int(MEMORY_SHARE * free / max(1, sharing) // need)))


def _check_pack_size(pack_size: Any) -> int:
    """``pack_size`` if it is an integer >= 1, else a ValueError."""
    if isinstance(pack_size, bool) or not isinstance(pack_size, int) or pack_size < 1:
        raise ValueError(f"pack_size must be an integer >= 1; got {pack_size!r}")
    return pack_size


def _data_key(config: RunConfig) -> tuple[Any, ...]:
    """What a run's training and test sets depend on."""
    return (config.dataset, config.imbalance_factor, config.data_seed)


def _chunks(group: list[RunConfig], size: int) -> list[list[RunConfig]]:
    """``group`` cut, in order, into lists of ``size`` (the last may be shorter)."""
    return [group[i : i + size] for i in range(0, len(group), size)]


def plan_sweep(
    configs: Iterable[RunConfig],
    out_dir: str | os.PathLike[str],
    *,
    pack_size: int | None = None,
    device: Any = None,
    sharing: int = 1,
) -> list[list[RunConfig]]:
    """The units a fused sweep trains, in order: lists of one run (trained, resumed or read
    as without packs) and packs of 2 to ``pack_size`` pending runs.

    Runs are grouped by :func:`pack_key` over the whole selection (finished runs included,
    so that a re-run forms the same packs) and cut, in their order, into chunks of
    ``pack_size`` (default :func:`default_pack_size`, for ``sharing`` processes on the
    device); a chunk's pending runs form its pack.
    Packs come after the single runs, those of one dataset one after another. A pack
    checkpoint in ``out_dir`` that no planned pack resumes is kept, with a note.
    """
    configs = list(configs)
    if pack_size is None:
        pack_size = default_pack_size(device, configs, sharing=sharing)
    size = _check_pack_size(pack_size)
    folder = Path(out_dir)
    unique = list({c.run_id: c for c in configs}.values())
    pending = {
        c.run_id for c in unique if not folder.is_dir() or run_status(c, folder) == "pending"
    }
    groups: dict[tuple[Any, ...], list[RunConfig]] = {}
    for config in unique:
        groups.setdefault(pack_key(config), []).append(config)
    packs = [
        members
        for group in groups.values()
        for chunk in _chunks(group, size)
        if len(members := [c for c in chunk if c.run_id in pending]) > 1
    ]
    ranks: dict[tuple[Any, ...], int] = {}
    for config in configs:
        ranks.setdefault(_data_key(config), len(ranks))
    packs.sort(key=lambda pack: ranks[_data_key(pack[0])])
    packed = {c.run_id for pack in packs for c in pack}
    _note_other_pack_checkpoints(folder, packs)
    return [[c] for c in configs if c.run_id not in packed] + packs


def measure_pack_speedup(
    configs: Sequence[RunConfig],
    *,
    device: Any = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    data: DataCache | None = None,
    epochs: int = 2,
) -> dict[str, float]:
    """Seconds per training epoch of ``configs`` trained as one pack and of its first run alone,
    and the pack's ``speedup``: ``len(configs)`` × one run's epoch / the pack's epoch.

    Throwaway models on the runs' real data and pipeline; nothing is written and the global
    random generators are restored, so the runs trained afterwards do not change. Each is
    trained ``epochs`` epochs (at most the recipe's), alternating, and its last epoch is timed:
    the first includes cuDNN's autotuning and the first allocations.
    """
    import torch

    from cbnotes.runner import build_trainer
    from cbnotes.training import epoch_seconds

    configs = list(configs)
    dev = resolve_device(str(device))
    cache = data or DataCache()
    train_set, test_set = cache.get(configs[0], dev, data_root, download)
    state = _rng_state()
    try:
        one = build_trainer(
            configs[0], dev, progress=False, data_root=data_root, download=download, data=cache
        )
        pack = _build_pack(configs, train_set, test_set, dev, progress=False)
        seconds = {"one run": 0.0, "pack": 0.0}
        for epoch in range(max(1, min(epochs, configs[0].epochs))):
            for name, trainer in (("one run", one), ("pack", pack)):
                seconds[name] = epoch_seconds(trainer, epoch)
    finally:
        _set_rng_state(state)
    del one, pack
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    speedup = len(configs) * seconds["one run"] / seconds["pack"]
    return {
        "one_run_seconds": seconds["one run"],
        "pack_seconds": seconds["pack"],
        "speedup": speedup,
    }


def choose_units(
    configs: Iterable[RunConfig],
    out_dir: str | os.PathLike[str],
    *,
    pack_size: int | None = None,
    device: Any = "auto",
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    data: DataCache | None = None,
    sharing: int = 1,
) -> list[list[RunConfig]]:
    """The units ``fused="auto"`` trains (packs sized for ``sharing`` processes on the
    device, as :func:`plan_sweep`): :func:`plan_sweep`'s packs where a pack trains at
    least :data:`AUTO_MIN_SPEEDUP` times as fast as its runs one by one, else every run alone.

    On a CPU every run is trained alone without measuring (benchmarks/bench_fused.py: a pack is
    a little slower there). On a GPU the first planned pack is measured once
    (:func:`measure_pack_speedup`) and the decision recorded in ``out_dir/``:data:`CHOICE_FILE`
    with the device, the pack's shape and the times; a later sweep into the same folder on the
    same device and pack shape reuses it, and planned packs with a checkpoint are resumed
    whatever the record says. A note on stderr says what was decided and why.
    """
    import torch

    configs = list(configs)
    dev = resolve_device(str(device))
    if dev.type != "cuda":
        return [[c] for c in configs]
    units = plan_sweep(configs, out_dir, pack_size=pack_size, device=dev, sharing=sharing)
    packs = [unit for unit in units if len(unit) > 1]
    if not packs:
        return units
    if any(pack_checkpoint_path(out_dir, p).exists() for p in packs):
        print("note: fused auto: resuming interrupted packs, training in packs", file=sys.stderr)
        return units
    key = {"device": device_name(dev), "pack_size": len(packs[0]), "shape": _describe_key(packs[0])}
    choice = _recorded_choice(Path(out_dir) / CHOICE_FILE, key)
    if choice is None:
        try:
            measured = measure_pack_speedup(
                packs[0], device=dev, data_root=data_root, download=download, data=data
            )
        except (PackFallback, RunError, FloatingPointError, torch.cuda.OutOfMemoryError) as err:
            torch.cuda.empty_cache()  # what a pack that ran out of memory held
            print(
                f"note: fused auto: could not measure a pack ({_why(err)}); training runs one "
                f"by one",
                file=sys.stderr,
            )
            return [[c] for c in configs]
        choice = {
            **key,
            **measured,
            "fused": measured["speedup"] >= AUTO_MIN_SPEEDUP,
            "min_speedup": AUTO_MIN_SPEEDUP,
            "measured_at": now(),
        }
        _check_out_dirs(out_dir)
        write_json_atomic(Path(out_dir) / CHOICE_FILE, choice)
        how = "measured"
    else:
        how = f"as measured at {choice['measured_at']}"
    verdict = (
        "training in packs (--no-fused: one by one)"
        if choice["fused"]
        else "training runs one by one (--fused: in packs anyway)"
    )
    print(
        f"note: fused auto: a pack of {choice['pack_size']} runs trains "
        f"{choice['speedup']:.2f}x as fast as its runs one by one on {choice['device']} "
        f"({how}, {Path(out_dir) / CHOICE_FILE}): {verdict}",
        file=sys.stderr,
    )
    return units if choice["fused"] else [[c] for c in configs]


def _describe_key(pack: Sequence[RunConfig]) -> str:
    """The shared settings of ``pack`` (:func:`pack_key`) as text."""
    return ", ".join(f"{name}={getattr(pack[0], name)}" for name in PACK_FIELDS)


def _recorded_choice(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The choice recorded at ``path`` if it was made for ``key`` and is readable, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none yet, or unreadable: measured again and rewritten
    fields = ("fused", "speedup", "pack_size", "device", "measured_at")
    if not isinstance(record, dict) or any(name not in record for name in fields):
        return None
    if any(record.get(name) != value for name, value in key.items()):
        return None
    if not isinstance(record["fused"], bool) or not isinstance(record["speedup"], (int, float)):
        return None
    return record


def _note_other_pack_checkpoints(folder: Path, packs: list[list[RunConfig]]) -> None:
    """A note (stderr) for each pack checkpoint that none of ``packs`` resumes."""
    planned = {pack_checkpoint_path(folder, p).name for p in packs}
    checkpoints = folder / "checkpoints"
    for path in sorted(checkpoints.glob("pack-*.pt")) if checkpoints.is_dir() else []:
        if path.name not in planned:
            print(
                f"note: {path} holds a pack of runs that this sweep does not form (another "
                f"selection of runs or --pack-size); it is kept: run that command again to "
                f"resume it, or delete it",
                file=sys.stderr,
            )


def _describe(configs: Sequence[RunConfig]) -> str:
    """'the pack of N runs (<ids>)', for messages."""
    return f"the pack of {len(configs)} runs ({', '.join(c.run_id for c in configs)})"


def _check_pack(configs: Iterable[RunConfig], out_dir: str | os.PathLike[str]) -> list[RunConfig]:
    """``configs`` as a list, or a ValueError saying why they cannot be one pack."""
    configs = list(configs)
    if not configs or not all(isinstance(c, RunConfig) for c in configs):
        raise ValueError("configs must be a non-empty list of RunConfig (see plan_sweep)")
    ids = [c.run_id for c in configs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"configs must be different runs; got {ids}")
    for config in configs[1:]:
        if pack_key(config) != pack_key(configs[0]):
            diff = [
                f"{name}: {getattr(config, name)!r} != {getattr(configs[0], name)!r}"
                for name in PACK_FIELDS
                if getattr(config, name) != getattr(configs[0], name)
            ] or [f"head: {config.method.head} != {configs[0].method.head}"]
            raise ValueError(
                f"{config.run_id} cannot share a pack with {configs[0].run_id} "
                f"({'; '.join(diff)}); group runs with plan_sweep"
            )
    for config in configs:
        if result_path(out_dir, config).exists() or checkpoint_path(out_dir, config).exists():
            raise ValueError(
                f"{config.run_id} is finished or has its own checkpoint in {out_dir}; pack "
                f"only pending runs (plan_sweep does)"
            )
    return configs


def _pack_problem(state: Any) -> str | None:
    """What a loaded pack checkpoint lacks of what :func:`run_pack` writes; None if nothing."""
    lacks = missing_keys(state, _PACK_KEYS)
    if lacks is not None:
        return lacks
    progress, ids = state["progress"], state["run_ids"]
    if state["kind"] != "pack" or not isinstance(ids, list):
        return "it is not a pack checkpoint"
    if not isinstance(progress, list) or len(progress) != len(ids):
        return "it lacks a progress record per run"
    return next(filter(None, map(progress_problem, progress)), None)


def _load_pack_checkpoint(path: Path, configs: Sequence[RunConfig]) -> dict[str, Any]:
    """A pack checkpoint of exactly ``configs``: DamagedCheckpointError if it cannot be read
    or is not one, RunError if it holds another pack."""
    state = read_checkpoint(path, _pack_problem)
    if state["run_ids"] != [c.run_id for c in configs] or state["configs"] != [
        c.to_dict() for c in configs
    ]:
        raise RunError(
            f"checkpoint {path} was written for another pack (runs {state['run_ids']}); "
            f"delete it to train this pack from scratch, or use another out_dir"
        )
    return state


def _save_pack_checkpoint(
    path: Path, configs: Sequence[RunConfig], pack: Any, states: list[dict[str, Any]]
) -> None:
    """Atomically save the pack's state, the RNG state and every run's progress."""

    payload = {
        "kind": "pack",
        "run_ids": [c.run_id for c in configs],
        "configs": [c.to_dict() for c in configs],
        "pack": pack.state_dict(),
        "rng": _rng_state(),
        "progress": states,
    }
    save_atomic(path, payload)


def _build_pack(
    configs: Sequence[RunConfig],
    train_set: Any,
    test_set: Any,
    device: Any,
    progress: bool,
    compile: str | None = None,
) -> Any:
    """The :class:`~cbnotes.fused.PackTrainer` of ``configs`` (``compile``: a torch.compile
    mode, or None); PackFallback if it refuses them."""
    from cbnotes.fused import PackMember, PackTrainer
    from cbnotes.pipeline import DeviceLoader

    members = []
    for config in configs:
        parts = build_parts(config, train_set, device)
        members.append(
            PackMember(
                parts.model,
                parts.criterion,
                parts.train_loader,
                config.recipe(),
                config.loss_type,
                parts.counts,
                posthoc_tau=parts.posthoc_tau,
                name=config.run_id,
            )
        )
    test_loader = DeviceLoader(test_set, EVAL_BATCH_SIZE, train=False, device=device)
    try:
        return PackTrainer(
            members,
            test_loader,
            device=device,
            num_classes=train_set.num_classes,
            amp=configs[0].amp,
            progress=progress,
            compile=compile or False,
        )
    except ValueError as err:
        raise PackFallback(f"{_describe(configs)} cannot be trained fused ({err})") from err


def run_pack(
    configs: Iterable[RunConfig],
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    after_checkpoint: Callable[[int], None] | None = None,
    data: DataCache | None = None,
    compile: bool | str = False,
    checkpoint_every: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Train pending ``configs`` as one pack; write each run's result; return them by run id.

    Resumes from :func:`pack_checkpoint_path` when present and saves it after an epoch once
    ``checkpoint_every`` seconds have passed since the last save (as
    :func:`cbnotes.runner.run_experiment`; ``compile`` too); deletes it once every result is
    written. ``after_checkpoint(epoch)`` is called after
    each checkpoint (a test hook); ``data`` keeps datasets between packs. Raises
    :class:`~cbnotes.runner.PackFallback` when the runs cannot be trained fused (the sweep
    then trains them one by one), :class:`~cbnotes.runner.RunError` for a checkpoint of
    another pack, and ValueError for runs that cannot share a pack or are not pending.
    """
    from cbnotes.training import precision_name, resolve_compile

    configs = _check_pack(configs, out_dir)
    _check_out_dirs(out_dir)
    dev = resolve_device(device)
    every = checkpoint_seconds(checkpoint_every, dev)
    mode = resolve_compile(compile)
    ckpt = pack_checkpoint_path(out_dir, configs)
    saved = None
    if ckpt.exists():
        try:
            saved = _load_pack_checkpoint(ckpt, configs)
        except DamagedCheckpointError as err:
            _restart_note(_describe(configs), str(err), _set_aside(ckpt, str(err)))
    train_set, test_set = (data or DataCache()).get(configs[0], dev, data_root, download)
    pack = _build_pack(configs, train_set, test_set, dev, progress, mode)
    states = [new_progress() for _ in configs]
    if saved is not None:
        try:
            pack.load_state_dict(saved["pack"])
            _set_rng_state(saved["rng"])
        except Exception as err:  # any failure here means a damaged checkpoint
            problem = f"checkpoint {ckpt} is damaged: resuming from it fails with {_why(err)}"
            _restart_note(_describe(configs), problem, _set_aside(ckpt, problem))
            pack = _build_pack(configs, train_set, test_set, dev, progress, mode)
        else:
            states = saved["progress"]
    env = environment(dev)
    runtime = {
        "compile": mode,
        "checkpoint_every": every,
        "channels_last": pack.channels_last,
        "precision": precision_name(pack.amp_dtype),
    }
    for config, state in zip(configs, states, strict=True):
        _start_session(state, dev, config, env, runtime)
    timer = CheckpointTimer(every, pack.next_epoch)
    finals = _train_pack(configs, pack, ckpt, states, timer, after_checkpoint)
    return _write_results(configs, pack, finals, states, dev, out_dir, ckpt)


def _train_pack(
    configs: Sequence[RunConfig],
    pack: Any,
    ckpt: Path,
    states: list[dict[str, Any]],
    timer: CheckpointTimer,
    after_checkpoint: Callable[[int], None] | None,
) -> list[dict[str, Any]]:
    """Train the pack to the end, checkpointing when ``timer`` says so; return each run's
    final metrics.

    Each run's progress counts its 1/N share of the pack's time (see :data:`PACK_NOTE`).
    Running out of GPU memory, like a non-finite loss, deletes the checkpoint and raises
    :class:`~cbnotes.runner.PackFallback`: the runs then train one at a time.
    """
    import torch

    n = len(configs)
    session_start = time.perf_counter()
    walls = [state["wall_seconds"] for state in states]
    train_size = len(pack.members[0].train_loader.data)

    def epoch_end(records: list[dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - session_start
        for state, wall in zip(states, walls, strict=True):
            state["train_seconds"] += records[0]["seconds"] / n
            state["images"] += train_size
            state["wall_seconds"] = wall + elapsed / n
        if timer.due():
            _save_pack_checkpoint(ckpt, configs, pack, states)
            timer.saved(records[0]["epoch"] + 1)
            if after_checkpoint is not None:
                after_checkpoint(records[0]["epoch"])

    try:
        pack.fit(eval_every=configs[0].eval_every, on_epoch_end=epoch_end, desc=f"pack of {n}")
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {_describe(configs)} has {timer.describe(pack.epochs, ckpt)} "
            "(with --fused)",
            file=sys.stderr,
        )
        raise
    except FloatingPointError as err:
        _delete_checkpoint(ckpt)  # the pack cannot go on; its runs start again one by one
        raise PackFallback(f"{_describe(configs)} stopped: {err}") from err
    except torch.cuda.OutOfMemoryError:
        _delete_checkpoint(ckpt)  # as above: one run at a time needs less memory
        raise PackFallback(f"{_describe(configs)} ran out of GPU memory") from None
    if pack.members[0].last_evaluation is None:  # resumed with every epoch trained
        pack.evaluate()
    return [m.last_evaluation for m in pack.members]


def _write_results(
    configs: Sequence[RunConfig],
    pack: Any,
    finals: list[dict[str, Any]],
    states: list[dict[str, Any]],
    device: Any,
    out_dir: str | os.PathLike[str],
    ckpt: Path,
) -> dict[str, dict[str, Any]]:
    """Write every run's result record (an ordinary run's, plus ``pack``), then delete the
    pack checkpoint; return the records by run id."""
    env = environment(device)
    ids = [c.run_id for c in configs]
    records = {}
    for index, (config, member, final, state) in enumerate(
        zip(configs, pack.members, finals, states, strict=True)
    ):
        record = _result_record(config, member, final, state, device, env)
        record["pack"] = {"size": len(configs), "index": index, "run_ids": ids, "note": PACK_NOTE}
        write_json_atomic(result_path(out_dir, config), record)
        records[config.run_id] = record
    _delete_checkpoint(ckpt)
    return records

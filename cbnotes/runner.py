"""Resumable experiment runner: train a :class:`RunConfig`, write its result, skip finished runs.

A finished run (``out_dir/runs/<run_id>.json``) is never trained again; an interrupted one
resumes from ``out_dir/checkpoints/<run_id>.pt``, written after every epoch, and ends bit for
bit as an uninterrupted run would (same device and torch thread count). Every file is written
to a temporary file in the same folder and moved into place with ``os.replace``, so nothing
half-written is ever left on disk. What the files hold is described in :mod:`cbnotes.results`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cbnotes._files import atomic_path, write_json_atomic
from cbnotes.config import RunConfig
from cbnotes.provenance import environment, now, resolve_device
from cbnotes.results import (
    BEST_EPOCH_NOTE,
    checkpoint_path,
    read_result,
    result_path,
    summary_row,
    write_summary,
)

#: Batch size used for evaluation (BatchNorm is in eval mode, so it does not change results).
EVAL_BATCH_SIZE = 500
#: Strength of the post-hoc logit adjustment reported for plain softmax runs (Menon et al.).
POSTHOC_TAU = 1.0


def _rng_state() -> dict[str, Any]:
    """Global torch RNG states (CPU and CUDA) for exact resumption."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_rng_state` saved."""
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_checkpoint(path: Path, config: RunConfig) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``) and check that it belongs to ``config``."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    stored = state.get("config") if isinstance(state, dict) else None
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
        raise ValueError(
            f"checkpoint {path} was written for a different config ({diff}); "
            f"delete it to start this run from scratch, or use another out_dir"
        )
    return state


def build_trainer(
    config: RunConfig,
    device: Any,
    *,
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Any:
    """Data, model, criterion, loaders and :class:`~cbnotes.training.Trainer` for ``config``.

    Everything method-specific comes from the registry (:mod:`cbnotes.methods`): the head and
    its initialization, the criterion, the re-sampling weights and the weight-decay groups.
    """
    from cbnotes.data import load_dataset
    from cbnotes.methods import build_criterion, sampling_weights
    from cbnotes.models import init_head_for_loss, resnet_cifar
    from cbnotes.pipeline import DeviceLoader
    from cbnotes.training import Trainer, seed_everything

    train_set, test_set = load_dataset(
        config.dataset,
        imbalance_factor=config.imbalance_factor,
        root=data_root,
        seed=config.data_seed,
        download=download,
    )
    counts = [int(c) for c in train_set.counts()]
    method = config.method
    recipe = config.recipe()
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
    criterion = build_criterion(config.loss_type, counts, config.params, recipe)
    train_loader = DeviceLoader(
        train_set,
        config.batch_size,
        train=True,
        device=device,
        seed=config.seed,
        pad=config.pad,
        class_weights=sampling_weights(config.loss_type, counts, config.params),
    )
    test_loader = DeviceLoader(test_set, EVAL_BATCH_SIZE, train=False, device=device)
    posthoc = method.posthoc and not config.class_balanced
    return Trainer(
        model,
        criterion,
        train_loader,
        test_loader,
        recipe,
        loss_type=config.loss_type,
        device=device,
        num_classes=train_set.num_classes,
        train_counts=counts,
        amp=config.amp,
        progress=progress,
        posthoc_tau=POSTHOC_TAU if posthoc else None,
    )


def run_experiment(
    config: RunConfig,
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    progress: bool = True,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> dict[str, Any]:
    """Train and evaluate one config; return its result record (skip if already finished).

    Resumes from ``out_dir/checkpoints/<run_id>.pt`` when present, saves a checkpoint after every
    epoch, writes ``out_dir/runs/<run_id>.json`` at the end and then deletes the checkpoint.
    Ctrl-C leaves the last complete checkpoint in place; calling again resumes from it.
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"config must be a RunConfig; got {type(config).__name__}")
    done = result_path(out_dir, config)
    if done.exists():
        return read_result(done)
    ckpt = checkpoint_path(out_dir, config)
    dev = resolve_device(device)
    trainer = build_trainer(config, dev, progress=progress, data_root=data_root, download=download)
    state: dict[str, Any] = {
        "train_seconds": 0.0,
        "wall_seconds": 0.0,
        "images": 0,
        "started": now(),
        "sessions": 0,
        "session_environments": [],
    }
    if ckpt.exists():
        saved = _load_checkpoint(ckpt, config)
        trainer.load_state_dict(saved["trainer"])
        _set_rng_state(saved["rng"])
        state.update(saved["progress"])
    _start_session(state, dev, config)
    final = _train(config, trainer, ckpt, state)
    record = _result_record(config, trainer, final, state, dev)
    write_json_atomic(done, record)
    ckpt.unlink(missing_ok=True)
    return record


def _start_session(state: dict[str, Any], device: Any, config: RunConfig) -> None:
    """Count a new session and record its environment; warn if the thread count changed.

    CPU kernels split work by thread, so a resume with another torch thread count gives a
    result that is correct but not bit-identical to an uninterrupted run.
    """
    env = environment(device)
    sessions = state.setdefault("session_environments", [])
    if sessions and sessions[-1].get("torch_threads") != env["torch_threads"]:
        print(
            f"note: {config.run_id} was trained with {sessions[-1].get('torch_threads')} torch "
            f"threads and resumes with {env['torch_threads']}; its result will be valid but not "
            f"bit-identical to an uninterrupted run",
            file=sys.stderr,
        )
    state["sessions"] += 1
    sessions.append({"started": now(), **env})


def _train(config: RunConfig, trainer: Any, ckpt: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Train to the end with ``Trainer.fit``, checkpointing each epoch; return the final metrics."""
    session_start = time.perf_counter()
    wall_before = state["wall_seconds"]
    train_size = len(trainer.train_loader.data)

    def save(record: dict[str, Any]) -> None:
        state["train_seconds"] += record["seconds"]
        state["images"] += train_size
        state["wall_seconds"] = wall_before + time.perf_counter() - session_start
        _save_checkpoint(ckpt, config, trainer, state)

    try:
        trainer.fit(eval_every=config.eval_every, on_epoch_end=save, desc=config.label)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {config.run_id} has {trainer.next_epoch} of {config.epochs} epochs "
            f"saved; run again to resume from {ckpt}",
            file=sys.stderr,
        )
        raise
    if trainer.last_evaluation is None:  # resumed with every epoch trained but none evaluated
        return trainer.evaluate()
    return trainer.last_evaluation


def _save_checkpoint(path: Path, config: RunConfig, trainer: Any, state: dict[str, Any]) -> None:
    """Atomically save trainer state, RNG state and run progress."""
    import torch

    payload = {
        "config": config.to_dict(),
        "run_id": config.run_id,
        "trainer": trainer.state_dict(),
        "rng": _rng_state(),
        "progress": state,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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
) -> dict[str, Any]:
    """The JSON result of one finished run (epoch indices count from 0, as in the history)."""
    from cbnotes.models import classifier_stats

    best_error, best_epoch = _best(trainer.history)
    seconds = state["train_seconds"]
    return {
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
        "environment": environment(device),
        "session_environments": state["session_environments"],
        "started": state["started"],
        "finished": now(),
        "sessions": state["sessions"],
        "wall_seconds": state["wall_seconds"],
        "train_seconds": seconds,
        "images_per_second": state["images"] / seconds if seconds > 0 else None,
    }


def run_sweep(
    configs: Iterable[RunConfig], out_dir: str | os.PathLike[str], **kwargs: Any
) -> pd.DataFrame:
    """Run every config (finished ones are skipped), write ``summary.csv``; return their rows.

    ``kwargs`` go to :func:`run_experiment`. ``out_dir/summary.csv`` lists every finished run
    in ``out_dir`` (also those of earlier sweeps); the returned DataFrame only these configs.
    """
    from tqdm.auto import tqdm

    from cbnotes.results import frame

    configs = list(configs)
    if not configs:
        raise ValueError("configs is empty: pass at least one RunConfig (see cbnotes.presets)")
    bad = [c for c in configs if not isinstance(c, RunConfig)]
    if bad:
        raise ValueError(f"configs must all be RunConfig; got {type(bad[0]).__name__}")
    show = kwargs.get("progress", True)
    rows = []
    bar = tqdm(configs, desc="runs", unit="run", disable=not show)
    for config in bar:
        bar.set_postfix_str(config.run_id)
        rows.append(summary_row(run_experiment(config, out_dir, **kwargs)))
    write_summary(out_dir)
    return frame(rows)

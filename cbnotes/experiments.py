"""Resumable experiment runner: one JSON result per run, a tidy summary per sweep.

A run is fully described by a :class:`RunConfig`; its ``run_id`` (readable prefix + a hash of
the canonical JSON of the config) names its files under ``out_dir``::

    out_dir/runs/<run_id>.json         finished result record (written once, atomically)
    out_dir/checkpoints/<run_id>.pt    last complete epoch of an unfinished run
    out_dir/summary.csv                one tidy row per finished run

A finished run is never trained again; an interrupted one resumes from its last complete epoch.
Every file is written to a temporary file in the same folder and moved into place with
``os.replace``, so nothing half-written is ever left on disk.

The headline metric is the top-1 error of the **last** epoch on the full balanced test set, as
in the paper. The best-epoch error is also recorded, labeled as selected on the test set: later
papers report it, and it is only meant for comparison with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from cbnotes._files import atomic_path

#: Label of the best-epoch numbers wherever they are stored or shown.
BEST_EPOCH_NOTE = "best-epoch, selected on the test set, for comparison with later papers only"
#: Batch size used for evaluation (BatchNorm is in eval mode, so it does not change results).
EVAL_BATCH_SIZE = 500
#: Allowed values of ``RunConfig.amp`` (passed to the trainer).
AMP_CHOICES: tuple[str, ...] = ("auto", "off", "bf16", "fp16")

_FLOAT_FIELDS = ("imbalance_factor", "beta")
_INT_FIELDS = (
    "seed",
    "data_seed",
    "depth",
    "base_width",
    "epochs",
    "batch_size",
    "pad",
    "eval_every",
)


def _format_number(value: float) -> str:
    """Shortest exact text for a number: 100.0 -> '100', 0.9999 -> '0.9999'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def method_label(loss_type: str, beta: float, gamma: float | None) -> str:
    """Display name of a method: 'softmax', 'focal γ=1.0', 'CB focal γ=1.0 (β=0.9999)'."""
    name = loss_type if gamma is None else f"{loss_type} γ={float(gamma)}"
    return name if beta == 0 else f"CB {name} (β={float(beta)})"


def _known_datasets() -> tuple[str, ...]:
    """Names accepted by ``cbnotes.data.load_dataset``."""
    from cbnotes.data import DATASETS

    return tuple(DATASETS)


def _loss_types() -> tuple[str, ...]:
    """Loss types accepted by ``cbnotes.losses.ClassBalancedLoss``."""
    from cbnotes.losses import LOSS_TYPES

    return tuple(LOSS_TYPES)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run (and hence its ``run_id``).

    ``beta = 0`` is the plain loss (every class weight is 1, Sec. 3); ``beta > 0`` is the
    class-balanced loss with α_i ∝ (1 - β) / (1 - β^{n_i}) (Eq. 7-8). ``gamma`` is the focal
    exponent and exists only for ``loss_type="focal"`` (``None`` otherwise), so two
    non-focal configs never differ by an irrelevant γ.

    ``data_seed`` fixes the long-tailed training subset; it defaults to 0 for every ``seed``,
    because the paper trains all methods on one subset. ``seed`` varies the model
    initialization, batch order and augmentation.
    """

    dataset: str
    imbalance_factor: float = 100.0
    loss_type: str = "softmax"
    beta: float = 0.0
    gamma: float | None = None
    seed: int = 0
    depth: int = 32
    base_width: int = 16
    epochs: int = 200
    batch_size: int = 128
    pad: int = 4
    data_seed: int = 0
    amp: str = "auto"
    eval_every: int = 1

    def __post_init__(self) -> None:
        """Validate every field; store numbers in one canonical type (int or float)."""
        if not isinstance(self.dataset, str) or self.dataset not in _known_datasets():
            raise ValueError(
                f"dataset must be one of {', '.join(_known_datasets())}; got {self.dataset!r}"
            )
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number; got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer; got {value!r}")
        if not (math.isfinite(self.imbalance_factor) and self.imbalance_factor >= 1):
            raise ValueError(
                f"imbalance_factor must be a finite number >= 1 (n_max / n_min); "
                f"got {self.imbalance_factor!r}"
            )
        if self.loss_type not in _loss_types():
            raise ValueError(
                f"loss_type must be one of {', '.join(_loss_types())}; got {self.loss_type!r}"
            )
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(
                f"beta must be in [0, 1) (0 = plain loss, e.g. 0.9999 = class-balanced); "
                f"got {self.beta!r}"
            )
        self._check_gamma()
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110); got {self.depth}"
            )
        for name in ("base_width", "epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        for name in ("seed", "data_seed", "pad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}; got {self.amp!r}")

    def _check_gamma(self) -> None:
        """γ is required for focal loss and must be None for the others."""
        if self.loss_type != "focal":
            if self.gamma is not None:
                raise ValueError(
                    f"gamma applies only to loss_type='focal'; leave it None for "
                    f"{self.loss_type!r} (got gamma={self.gamma!r})"
                )
            return
        value = self.gamma
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(
                f"gamma must be a number >= 0 for loss_type='focal' (the paper uses 0.5, 1.0, "
                f"2.0); got {value!r}"
            )
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"gamma must be a finite number >= 0; got {value!r}")
        object.__setattr__(self, "gamma", float(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown RunConfig field(s) {unknown}; allowed: {', '.join(sorted(names))}"
            )
        return cls(**data)

    def canonical_json(self) -> str:
        """Key-sorted compact JSON of the config: the input of the run hash."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def config_hash(self) -> str:
        """First 8 hex digits of SHA-256 of :meth:`canonical_json` (stable across processes)."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:8]

    @property
    def run_id(self) -> str:
        """Readable, unique id, e.g. ``fashion_mnist-if100-softmax-b0.9999-s0-1a2b3c4d``."""
        loss = self.loss_type
        if self.gamma is not None:
            loss += f"-g{_format_number(self.gamma)}"
        return (
            f"{self.dataset}-if{_format_number(self.imbalance_factor)}-{loss}"
            f"-b{_format_number(self.beta)}-s{self.seed}-{self.config_hash}"
        )

    @property
    def label(self) -> str:
        """Method name for tables, e.g. 'softmax' or 'CB focal γ=1.0 (β=0.9999)'."""
        return method_label(self.loss_type, self.beta, self.gamma)

    @property
    def class_balanced(self) -> bool:
        """True when the loss is re-weighted by effective numbers (β > 0)."""
        return self.beta > 0

    def recipe(self) -> Any:
        """Training recipe: the paper's (Sec. 5) scaled to ``epochs`` (200 = the paper's)."""
        from cbnotes.training import Recipe

        return Recipe.scaled(self.epochs, batch_size=self.batch_size)


# ----------------------------------------------------------------------------- file helpers


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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


# ----------------------------------------------------------------------------- environment


def resolve_device(device: str = "auto") -> Any:
    """'auto' -> cuda if available else cpu; anything else is passed to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]'; got {device!r}") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' was requested but no CUDA GPU is available; use --device cpu"
        )
    return resolved


def device_name(device: Any) -> str:
    """Human-readable name of the device the run used."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine() or "unknown"
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def git_revision() -> dict[str, Any]:
    """``{"git_rev": sha or None, "git_dirty": bool or None}`` of the repository of this package."""
    where = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return {"git_rev": None, "git_dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"git_rev": None, "git_dirty": None}
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"git_rev": rev.stdout.strip(), "git_dirty": dirty}


def cpu_description() -> dict[str, str | None]:
    """The CPU's model name and the vector ISA torch's CPU kernels use (e.g. "AVX2", "AVX512").

    Results on the CPU are bit-identical on one machine, but kernels for another ISA round
    differently, and training amplifies that: record both to tell such runs apart.
    """
    import torch

    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        capability: str | None = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {"cpu_model": model or platform.processor() or None, "cpu_capability": capability}


def environment(device: Any) -> dict[str, Any]:
    """Versions, device, CPU and git revision, stored with every result."""
    import torch

    import cbnotes

    try:
        import torchvision

        tv_version: str | None = torchvision.__version__
    except ImportError:
        tv_version = None
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": tv_version,
        "cbnotes": cbnotes.__version__,
        "python": platform.python_version(),
        **cpu_description(),
        **git_revision(),
    }


def _now() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- one run


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
    if stored != config.to_dict():
        diff = "unknown format"
        if isinstance(stored, dict):
            diff = (
                ", ".join(
                    f"{k}: {stored.get(k)!r} != {v!r}"
                    for k, v in config.to_dict().items()
                    if stored.get(k) != v
                )
                or f"extra keys {sorted(set(stored) - set(config.to_dict()))}"
            )
        raise ValueError(
            f"checkpoint {path} was written for a different config ({diff}); "
            f"delete it to start this run from scratch, or use another out_dir"
        )
    return state


def _build_run(
    config: RunConfig,
    device: Any,
    progress: bool,
    data_root: str | os.PathLike[str] | None,
    download: bool,
) -> tuple[Any, list[int], int]:
    """Data, model, loss, loaders and trainer for ``config`` (seeded)."""
    from cbnotes.data import load_dataset
    from cbnotes.losses import ClassBalancedLoss
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
    seed_everything(config.seed)
    model = resnet_cifar(
        depth=config.depth,
        num_classes=train_set.num_classes,
        in_channels=int(train_set.images.shape[1]),
        base_width=config.base_width,
    )
    init_head_for_loss(model, config.loss_type)
    model = model.to(device)
    focal = {} if config.gamma is None else {"gamma": config.gamma}
    loss_fn = ClassBalancedLoss(counts, loss_type=config.loss_type, beta=config.beta, **focal)
    loss_fn = loss_fn.to(device)
    train_loader = DeviceLoader(
        train_set, config.batch_size, train=True, device=device, seed=config.seed, pad=config.pad
    )
    test_loader = DeviceLoader(test_set, EVAL_BATCH_SIZE, train=False, device=device)
    trainer = Trainer(
        model,
        loss_fn,
        train_loader,
        test_loader,
        config.recipe(),
        loss_type=config.loss_type,
        device=device,
        num_classes=train_set.num_classes,
        train_counts=counts,
        amp=config.amp,
        progress=progress,
    )
    return trainer, counts, len(train_set)


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
    trainer, counts, train_size = _build_run(config, dev, progress, data_root, download)

    state: dict[str, Any] = {
        "train_seconds": 0.0,
        "wall_seconds": 0.0,
        "images": 0,
        "started": _now(),
        "sessions": 0,
    }
    if ckpt.exists():
        saved = _load_checkpoint(ckpt, config)
        trainer.load_state_dict(saved["trainer"])
        _set_rng_state(saved["rng"])
        state.update(saved["progress"])
    state["sessions"] += 1
    final = _train(config, trainer, ckpt, state, train_size, progress)
    record = _result_record(config, trainer, final, counts, state, dev)
    write_json_atomic(done, record)
    ckpt.unlink(missing_ok=True)
    return record


def _train(
    config: RunConfig,
    trainer: Any,
    ckpt: Path,
    state: dict[str, Any],
    train_size: int,
    progress: bool,
) -> dict[str, Any]:
    """Train from ``trainer.next_epoch`` to the end, checkpointing; return the final metrics."""
    from tqdm.auto import tqdm

    first = saved = trainer.next_epoch
    session_start = time.perf_counter()
    wall_before = state["wall_seconds"]
    final: dict[str, Any] | None = None
    bar = tqdm(
        range(first, config.epochs),
        desc=config.label,
        unit="epoch",
        leave=False,
        initial=first,
        total=config.epochs,
        disable=not progress,
    )
    try:
        for epoch in bar:
            record = trainer.train_epoch(epoch)  # appended to trainer.history
            state["train_seconds"] += record["seconds"]
            state["images"] += train_size
            final = None
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                final = trainer.evaluate()  # also fills history[-1]["top1_error"]
                bar.set_postfix(err=f"{final['top1_error']:.2f}%")
            state["wall_seconds"] = wall_before + time.perf_counter() - session_start
            _save_checkpoint(ckpt, config, trainer, state)
            saved = epoch + 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {config.run_id} has {saved} of {config.epochs} epochs "
            f"saved; run again to resume from {ckpt}",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    if final is None:  # resumed after the last epoch had been trained and saved
        final = trainer.evaluate()
    return final


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
    counts: list[int],
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
        "train_counts": counts,
        "history": list(trainer.history),
        "environment": environment(device),
        "started": state["started"],
        "finished": _now(),
        "sessions": state["sessions"],
        "wall_seconds": state["wall_seconds"],
        "train_seconds": seconds,
        "images_per_second": state["images"] / seconds if seconds > 0 else None,
    }


# ----------------------------------------------------------------------------- sweeps & tables

#: Columns of summary.csv (one tidy row per finished run), in order.
SUMMARY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "label",
    "dataset",
    "imbalance_factor",
    "loss_type",
    "beta",
    "gamma",
    "seed",
    "data_seed",
    "depth",
    "base_width",
    "epochs",
    "batch_size",
    "pad",
    "amp",
    "eval_every",
    "top1_error",
    "best_top1_error",
    "best_epoch",
    "many",
    "medium",
    "few",
    "device",
    "torch",
    "git_rev",
    "git_dirty",
    "wall_seconds",
    "images_per_second",
    "finished",
)
#: Config fields that define a method setting; aggregation pools runs over everything else
#: (the seed).
GROUP_KEYS: tuple[str, ...] = (
    "dataset",
    "imbalance_factor",
    "label",
    "loss_type",
    "beta",
    "gamma",
    "depth",
    "base_width",
    "epochs",
    "batch_size",
    "pad",
    "data_seed",
    "amp",
)
_SHOTS = ("many", "medium", "few")


def _shot(final: Mapping[str, Any], name: str) -> float | None:
    """Many/medium/few-shot accuracy from the metrics dict, whatever its exact key."""
    for key in (name, f"{name}_accuracy", f"{name}_shot_accuracy", f"{name}_shot"):
        value = final.get(key)
        if isinstance(value, int | float):
            return float(value)
    return None


def summary_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One tidy row (see ``SUMMARY_COLUMNS``) from a result record."""
    config = record["config"]
    final = record.get("final_metrics", {})
    env = record.get("environment", {})
    row = {key: config.get(key) for key in SUMMARY_COLUMNS if key in config}
    row.update(
        run_id=record["run_id"],
        label=record["label"],
        top1_error=record["top1_error"],
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


def _frame(rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """DataFrame with the summary columns (plus ``extra``) even when there are no rows."""
    df = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *extra])
    for name in ("imbalance_factor", "beta", "gamma"):
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
    return _frame(rows, extra=("per_class_accuracy", "train_counts"))


def run_sweep(
    configs: Iterable[RunConfig], out_dir: str | os.PathLike[str], **kwargs: Any
) -> pd.DataFrame:
    """Run every config (finished ones are skipped), write ``summary.csv``; return their rows.

    ``kwargs`` go to :func:`run_experiment`. ``out_dir/summary.csv`` lists every finished run
    in ``out_dir`` (also those of earlier sweeps); the returned DataFrame only these configs.
    """
    from tqdm.auto import tqdm

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
    return _frame(rows)


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
    """Order rows: dataset, imbalance factor (high first), plain before CB, loss, γ, β."""
    order = {"softmax": 0, "sigmoid": 1, "focal": 2}
    keys = pd.DataFrame(
        {
            "d": df["dataset"],
            "i": -df["imbalance_factor"],
            "cb": df["beta"] > 0,
            "l": df["loss_type"].map(order).fillna(9),
            "g": df["gamma"].fillna(-1.0),
            "b": df["beta"],
        },
        index=df.index,
    )
    index = keys.sort_values(list(keys.columns), kind="stable").index
    return df.loc[index].reset_index(drop=True)

"""The paper's CIFAR training recipe (Sec. 5.2): SGD, linear warm-up, step decays, and a Trainer.

Recipe (ResNet-32 on CIFAR-LT): SGD with momentum 0.9, batch 128, 200 epochs, learning rate 0.1
scaled by batch/128, linear warm-up over the first 5 epochs, ×0.01 at epoch 160 and ×0.01 again
at epoch 180 (1 → 0.01 → 0.0001), weight decay 2e-4. These match the authors' TensorFlow code
(``cifar_main.py`` run with ``--learning-rate-multiplier 1 0.01 0.0001``).

The :class:`Trainer` keeps the GPU busy: a training step never waits for the device (the loss
is summed there and read once per epoch; the learning rate is a tensor that a ``torch.optim``
scheduler fills in place every iteration; SGD is one fused kernel on CUDA, whose gradient-scaler
check stays on the device too), mixed precision (bf16, or fp16 with a gradient scaler) is chosen
from the device, and on CUDA the model and batches are channels-last with cuDNN's autotuner on.
On the CPU the step is torch's ``foreach`` SGD, bit for bit the per-parameter loop it replaces
(tested), in the default memory format (channels-last would be faster there but round
differently, see :class:`Trainer`). Its state (model, optimizer, scheduler, scaler,
history) holds only tensors and plain Python values, so a checkpoint written with
``torch.save`` loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import numbers
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cbnotes.losses import posthoc_logit_adjustment
from cbnotes.methods import get_method
from cbnotes.metrics import confusion_matrix, summarize

__all__ = [
    "AMP_MODES",
    "COMPILE_MODES",
    "SGD_STEPS",
    "PaperLrFactor",
    "Recipe",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "pick_amp_dtype",
    "seed_everything",
]

AMP_MODES = ("auto", "off", "bf16", "fp16")
REFERENCE_BATCH_SIZE = 128  # the paper's lr 0.1 is for batch 128 (linear scaling rule)
_STATE_KEYS = (
    "format",
    "recipe",
    "loss_type",
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "history",
    "last_evaluation",
)
_POSTFIX_EVERY = 50  # progress-bar postfix updates (no host sync) every this many steps
#: ``torch.compile`` modes a Trainer accepts (``compile=True`` is "default").
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: How :func:`build_optimizer` runs the SGD step. "auto": "fused" on CUDA, "foreach" elsewhere,
#: both with a tensor learning rate; "for-loop": torch's per-parameter loop with a float
#: learning rate, the step before issue 9 (benchmarks compare against it).
SGD_STEPS = ("auto", "fused", "foreach", "for-loop")
#: A tensor learning rate that SGD reads on the device (torch >= 2.5); older torch gets a float.
_TENSOR_LR = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def _is_int(value: Any) -> bool:
    """True for integers (Python or NumPy), False for bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _round_half_up(value: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds halves to even)."""
    return math.floor(value + 0.5)


@dataclass(frozen=True)
class Recipe:
    """Optimization hyper-parameters; the defaults are the paper's CIFAR recipe (Sec. 5.2)."""

    epochs: int = 200
    batch_size: int = 128
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    warmup_epochs: int = 5
    decay_epochs: tuple[int, ...] = (160, 180)
    decay_factor: float = 0.01
    nesterov: bool = False

    def __post_init__(self) -> None:
        """Validate every field and normalize numbers to int/float and decay_epochs to a tuple."""
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("warmup_epochs", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("base_lr", "momentum", "weight_decay", "decay_factor"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 < self.base_lr < math.inf:
            raise ValueError(f"base_lr must be a finite number > 0, got {self.base_lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum} (the paper: 0.9)")
        if not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be finite and >= 0, got {self.weight_decay}")
        if not 0.0 < self.decay_factor <= 1.0:
            raise ValueError(
                f"decay_factor must be in (0, 1], got {self.decay_factor} (the paper: 0.01)"
            )
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov must be a bool, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0; set momentum or nesterov=False")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs must be <= epochs ({self.epochs}), got {self.warmup_epochs}"
            )
        self._normalize_decay_epochs()

    def _normalize_decay_epochs(self) -> None:
        """Check decay epochs: integers, strictly increasing, in [max(warmup, 1), epochs)."""
        decays = self.decay_epochs
        if isinstance(decays, (str, bytes)) or not isinstance(decays, Iterable):
            raise ValueError(f"decay_epochs must be a sequence of integers, got {decays!r}")
        decays = tuple(decays)
        low = max(self.warmup_epochs, 1)
        if not all(_is_int(d) for d in decays):
            raise ValueError(f"decay_epochs must hold integers, got {decays!r}")
        decays = tuple(int(d) for d in decays)
        if any(b <= a for a, b in itertools.pairwise(decays)):
            raise ValueError(f"decay_epochs must be strictly increasing, got {decays}")
        if decays and not (low <= decays[0] and decays[-1] < self.epochs):
            raise ValueError(
                f"decay_epochs must lie in [{low}, {self.epochs - 1}] (after the warm-up, before "
                f"the last epoch), got {decays}; use Recipe.scaled(epochs) for short runs"
            )
        object.__setattr__(self, "decay_epochs", decays)

    @property
    def lr(self) -> float:
        """Peak learning rate, linearly scaled: base_lr · batch_size / 128."""
        return self.base_lr * self.batch_size / REFERENCE_BATCH_SIZE

    @classmethod
    def scaled(cls, epochs: int, **overrides: Any) -> Recipe:
        """The paper's recipe with its schedule compressed from 200 epochs to ``epochs``.

        Warm-up and decay epochs are scaled by epochs/200 and rounded (halves up). The warm-up
        lasts at least one epoch when ``epochs >= 2``; the decays are kept strictly increasing,
        after the warm-up and before the last epoch, pulled earlier where rounding would break
        that (a decay that no longer fits is dropped, the last one first kept). Other fields,
        or an explicit schedule, go in ``overrides``. ``Recipe.scaled(200)`` is ``Recipe()``.
        """
        if not _is_int(epochs) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"epochs"}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(
                f"unknown Recipe fields {sorted(unknown)}; allowed overrides: {sorted(names)} "
                "(epochs is the first argument)"
            )
        paper = cls()
        factor = epochs / paper.epochs
        warmup = (
            0
            if epochs < 2
            else min(max(1, _round_half_up(paper.warmup_epochs * factor)), epochs - 1)
        )
        decays: list[int] = []
        upper = epochs
        for milestone in reversed(paper.decay_epochs):
            epoch = min(_round_half_up(milestone * factor), upper - 1)
            if epoch <= warmup:
                break
            decays.insert(0, epoch)
            upper = epoch
        fields = {"epochs": int(epochs), "warmup_epochs": warmup, "decay_epochs": tuple(decays)}
        fields.update(overrides)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict (decay_epochs as a list)."""
        data = dataclasses.asdict(self)
        data["decay_epochs"] = list(self.decay_epochs)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; missing fields take the paper's defaults."""
        if not isinstance(data, Mapping):
            raise ValueError(f"data must be a mapping from Recipe.to_dict(), got {type(data)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown Recipe fields {sorted(unknown)}; allowed: {sorted(names)}")
        return cls(**dict(data))


def build_optimizer(
    model: nn.Module, recipe: Recipe, loss_type: str, *, step: str = "auto"
) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every trainable parameter except those the method
    exempts (:attr:`cbnotes.methods.Method.decay_exempt`: ``fc.bias`` for sigmoid and focal).

    ``step`` (:data:`SGD_STEPS`) picks the implementation; "auto" is one fused kernel on CUDA
    and torch's ``foreach`` step elsewhere, each group with its own learning-rate tensor on the
    parameters' device (float64 on the CPU, where the update is then bit for bit that of the
    per-parameter loop with a Python float; float32 on CUDA, which the fused kernel reads), so
    a scheduler fills it in place and the step never reads it on the host.

    "Every trainable parameter" means conv and linear weights, the head bias, and the BatchNorm
    scales γ and shifts β. The authors' TensorFlow code decays every trainable variable
    (``tf.trainable_variables()``) and, for sigmoid and focal losses, every one except the dense
    bias, whose prior initialization -log(C-1) would otherwise be pulled toward 0.
    PyTorch's ``weight_decay=λ`` adds λ·w to the gradient, the same update as TF's
    λ·``l2_loss(w)`` = λ·‖w‖²/2 term in the loss.
    """
    method = get_method(loss_type)
    if not isinstance(recipe, Recipe):
        raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    named = dict(getattr(model, "_orig_mod", model).named_parameters())
    missing = [name for name in method.decay_exempt if name not in named]
    if missing:
        raise ValueError(
            f"loss_type={loss_type!r} exempts {missing} from weight decay, but the model has no "
            f"such parameter (build it with resnet_cifar, whose head with bias is named `fc`)"
        )
    exempt = [named[name] for name in method.decay_exempt if named[name].requires_grad]
    decay = [p for p in model.parameters() if p.requires_grad and all(p is not e for e in exempt)]
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": recipe.weight_decay}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    device = next(iter(named.values())).device if named else torch.device("cpu")
    kind = _sgd_step(step, device)
    for group in groups:
        group["lr"] = _lr_value(recipe.lr, kind, device)
        # The schedule's base: the recipe's lr itself, not a float32 tensor's value of it.
        group["initial_lr"] = float(recipe.lr)
    return torch.optim.SGD(
        groups,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov,
        **({"foreach": False} if kind == "for-loop" else {kind: True}),
    )


def _sgd_step(step: str, device: torch.device) -> str:
    """The SGD implementation ``step`` (:data:`SGD_STEPS`) means on ``device``."""
    if step not in SGD_STEPS:
        raise ValueError(f"step must be one of {SGD_STEPS}, got {step!r}")
    if step == "auto":
        return "fused" if device.type == "cuda" else "foreach"
    return step


def lr_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a learning-rate tensor on ``device``: float32 on CUDA, whose fused SGD
    kernel reads its lr as float32 whatever the parameters' dtype; float64 elsewhere, which
    holds the scheduler's float exactly. A pack rounds its learning rates the same way, so
    that it updates its members as their runs alone do (:class:`cbnotes.fused.PackTrainer`)."""
    return torch.float32 if torch.device(device).type == "cuda" else torch.float64


def _lr_value(lr: float, kind: str, device: torch.device) -> float | torch.Tensor:
    """A param group's learning rate: a tensor of :func:`lr_dtype` on ``device``, or the float
    itself for the for-loop step."""
    if kind == "for-loop" or not _TENSOR_LR:
        return float(lr)
    return torch.tensor(float(lr), dtype=lr_dtype(device), device=device)


def _prime_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter without one a zero momentum buffer.

    Fused SGD allocates its buffers uninitialized at the first step and fills them in the
    kernel, which skips everything when a gradient scaler found an overflow: the next step
    would read garbage. With zero buffers the first update is the same (0.9·0 + g = g) and a
    skipped one changes nothing.
    """
    for group in optimizer.param_groups:
        if group["momentum"]:
            for p in group["params"]:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(p)


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every loaded momentum buffer its parameter's memory layout.

    A checkpoint written in another layout (by a CPU run, or before channels-last on CUDA)
    loads its buffers with their own strides; fused SGD needs them to match the parameters'.
    """
    for p, state in optimizer.state.items():
        buf = state.get("momentum_buffer")
        if isinstance(buf, torch.Tensor) and buf.stride() != p.stride():
            state["momentum_buffer"] = torch.empty_like(p).copy_(buf)


def _keep_lr_tensors(optimizer: torch.optim.Optimizer, live: Sequence[Any]) -> None:
    """After ``optimizer.load_state_dict``: give each group back its live learning-rate
    tensor (``live``, one per group, as before loading) holding the loaded value.

    ``load_state_dict`` replaces the groups with the saved ones, whose learning rate is a
    float (a checkpoint of an older version) or a tensor on the CPU (``map_location``); the
    step needs its own tensor on the device, and a captured CUDA graph the same object.
    """
    for group, tensor in zip(optimizer.param_groups, live, strict=True):
        if isinstance(tensor, torch.Tensor):
            value = group["lr"]
            tensor.fill_(value.item() if isinstance(value, torch.Tensor) else float(value))
            group["lr"] = tensor


class PaperLrFactor:
    """Learning-rate multiplier per iteration: linear warm-up, then ×decay_factor at milestones.

    Iteration ``k < warmup_steps`` uses ``(k + 1) / warmup_steps`` (the TF code uses
    ``k / warmup_steps``, whose first step has lr 0); afterwards the factor is
    ``decay_factor ** (number of milestone steps <= k)``. A plain object (not a lambda) so that
    ``LambdaLR.state_dict()`` records its settings.
    """

    def __init__(self, warmup_steps: int, milestone_steps: Sequence[int], decay_factor: float):
        self.warmup_steps = int(warmup_steps)
        self.milestone_steps = [int(m) for m in milestone_steps]
        self.decay_factor = float(decay_factor)

    def __call__(self, step: int) -> float:
        """Multiplier of the peak lr at iteration ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        passed = sum(1 for m in self.milestone_steps if step >= m)
        return self.decay_factor**passed

    def settings(self) -> dict[str, Any]:
        """Plain dict of the schedule, comparable with a checkpoint's."""
        return {
            "warmup_steps": self.warmup_steps,
            "milestone_steps": list(self.milestone_steps),
            "decay_factor": self.decay_factor,
        }


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: warm-up over ``warmup_epochs``, ×decay_factor at ``decay_epochs``.

    Call ``scheduler.step()`` after every optimizer step. With the paper's recipe the lr rises
    linearly to 0.1 during epochs 0–4, stays at 0.1 until epoch 159, is 0.001 from epoch 160 and
    1e-5 from epoch 180.
    """
    if not _is_int(steps_per_epoch) or steps_per_epoch < 1:
        raise ValueError(
            f"steps_per_epoch must be an integer >= 1 (len(train_loader)), got {steps_per_epoch!r}"
        )
    factor = PaperLrFactor(
        warmup_steps=recipe.warmup_epochs * steps_per_epoch,
        milestone_steps=[e * steps_per_epoch for e in recipe.decay_epochs],
        decay_factor=recipe.decay_factor,
    )
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            # A float base lr: the scheduler computes every lr in Python float64, the same
            # numbers as with a float lr, and fills them into the group's tensor.
            group.setdefault("initial_lr", group["lr"].item())
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pick_amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """Autocast dtype for ``device``: bf16 on CUDA GPUs with native bf16 (Ampere+), fp16 on
    older CUDA GPUs (e.g. T4; use a GradScaler), None (fp32) elsewhere. Weights stay fp32."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index) >= (8, 0) and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """The precision a step computes in, as a run's record names it: "bfloat16" or "float16"
    (autocast), else "float32" (``amp="auto"`` picks by GPU, so a record must say which)."""
    return "float32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and all CUDA devices) random generators.

    This fixes model initialization and anything else drawn from the global generators. Runs on
    CPU are then bitwise reproducible; on CUDA, bitwise equality additionally needs
    ``torch.use_deterministic_algorithms(True)`` (some kernels are non-deterministic).
    """
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed))  # noqa: NPY002 (the legacy global generator is the point)
    torch.manual_seed(int(seed))


class Loader(Protocol):
    """What the Trainer needs from a data loader (e.g. ``cbnotes.pipeline.DeviceLoader``)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self) -> Any: ...

    def __len__(self) -> int: ...


def _resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Map the ``amp`` option to an autocast dtype (None = fp32) for ``device``."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "auto":
        return pick_amp_dtype(device)
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp='fp16' needs a CUDA device, got {device}; use 'auto' or 'off'")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def resolve_compile(compile: bool | str | None) -> str | None:
    """The ``torch.compile`` mode of the ``compile`` option: None (off) for False/None/"off",
    "default" for True, else one of :data:`COMPILE_MODES`."""
    if compile is None or compile is False or compile == "off":
        return None
    if compile is True:
        return "default"
    if compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True/False or one of {COMPILE_MODES}, got {compile!r}")
    return compile


def compile_model(model: nn.Module, mode: str | None) -> nn.Module:
    """``model`` wrapped in ``torch.compile`` with ``mode`` (None: the model itself)."""
    if mode is None:
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def tune_backends(device: torch.device) -> None:
    """On CUDA, let cuDNN pick the fastest convolution algorithms for the shapes it sees
    (``torch.backends.cudnn.benchmark``; a process-wide setting). Nothing elsewhere."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on ``device`` is done (CUDA); nothing elsewhere. For timing."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_seconds(trainer: Any, epoch: int, *, clock: str = "wall") -> float:
    """Seconds of one training epoch of ``trainer`` (a :class:`Trainer` or a
    :class:`cbnotes.fused.PackTrainer`), measured between two syncs of its device by ``clock``:
    "wall" (``time.perf_counter``) or "cpu" (this process's CPU time on all threads: the work
    done, whatever else runs on the machine)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu'; got {clock!r}.")
    timer = time.process_time if clock == "cpu" else time.perf_counter
    synchronize(trainer.device)
    start = timer()
    trainer.train_epoch(epoch)
    synchronize(trainer.device)
    return timer() - start


def _mark_step(mode: str | None, device: torch.device) -> None:
    """Tell cudagraph trees that a new iteration begins: the compile modes that replay CUDA
    graphs ("reduce-overhead", "max-autotune") overwrite their outputs at the next replay."""
    if device.type == "cuda" and mode in ("reduce-overhead", "max-autotune"):
        torch.compiler.cudagraph_mark_step_begin()


def run_epochs(
    train_epoch: Callable[[int], Any],
    evaluate: Callable[[], Any],
    *,
    start: int,
    epochs: int | None,
    limit: int,
    eval_every: int,
    on_epoch_end: Callable[[Any], None] | None,
    desc: str,
    progress: bool,
    postfix: Callable[[Any], dict[str, str]] | None = None,
) -> None:
    """The epoch loop of :class:`Trainer` and :class:`cbnotes.fused.PackTrainer`: train epochs
    ``start`` .. ``epochs`` - 1 (default ``limit``, the recipe's), evaluate every
    ``eval_every`` epochs and after the last one, then call ``on_epoch_end`` with the epoch's
    record(s); a tqdm bar shows ``postfix(record)`` when given."""
    end = limit if epochs is None else epochs
    if not _is_int(end) or not start <= end <= limit:
        raise ValueError(
            f"epochs must be an integer in [{start}, {limit}] (next epoch .. recipe.epochs), "
            f"got {epochs!r}"
        )
    if not _is_int(eval_every) or eval_every < 1:
        raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}")
    bar = tqdm(
        range(start, end),
        desc=desc,
        unit="epoch",
        initial=start,
        total=end,
        leave=False,
        disable=not progress,
    )
    try:
        for epoch in bar:
            record = train_epoch(epoch)
            if (epoch + 1) % eval_every == 0 or epoch + 1 == end:
                evaluate()
            if postfix is not None:
                bar.set_postfix(postfix(record))
            if on_epoch_end is not None:
                on_epoch_end(record)
    finally:
        bar.close()


class Trainer:
    """Train a classifier with the paper's recipe and evaluate it on the balanced test set.

    ``model`` should already carry the loss's head initialization
    (:func:`cbnotes.models.init_head_for_loss`); ``loss_fn(logits, labels)`` returns the batch
    loss (e.g. :class:`cbnotes.losses.ClassBalancedLoss`) and is evaluated in fp32. Loaders yield
    ``(images, labels)`` batches and have ``set_epoch`` and ``len``. ``train_counts`` are the
    training images per class (for the many/medium/few-shot accuracies). ``amp``: "auto" (see
    :func:`pick_amp_dtype`), "off", "bf16" or "fp16" (CUDA only). ``compile``: True or a mode
    of :data:`COMPILE_MODES` wraps the model in ``torch.compile`` (meant for CUDA; checkpoints
    keep the uncompiled names). ``channels_last``: the model and its batches in channels-last
    memory format; None (default) means on CUDA and on the CPU, where it is faster for the CPU
    study's model (1.16x per epoch with 1 thread, ``benchmarks/bench_training.py``). It rounds
    differently from the default layout, which training amplifies as much as another CPU does:
    CPU runs trained before it became the default (cbnotes before 2026-11-30, among them the
    committed studies) repeat bit for bit only with ``channels_last=False``. On CUDA the
    Trainer also turns on cuDNN's autotuner (:func:`tune_backends`).

    :meth:`train_epoch` appends one record per epoch to :attr:`history`; :meth:`evaluate`
    writes the test top-1 error into the latest record; :meth:`fit` runs both to the end.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        train_loader: Loader,
        test_loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
        recipe: Recipe,
        *,
        loss_type: str,
        device: torch.device | str,
        num_classes: int,
        train_counts: Sequence[int],
        amp: str = "auto",
        progress: bool = True,
        compile: bool | str = False,
        posthoc_tau: float | None = None,
        channels_last: bool | None = None,
    ) -> None:
        get_method(loss_type)
        if not isinstance(recipe, Recipe):
            raise ValueError(f"recipe must be a Recipe, got {type(recipe).__name__}")
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        counts = [int(c) for c in train_counts]
        if len(counts) != num_classes or any(c < 0 for c in counts):
            raise ValueError(
                f"train_counts must hold {num_classes} non-negative counts (one per class), "
                f"got {counts}"
            )
        head = getattr(model, "fc", None)
        if getattr(head, "out_features", num_classes) != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but model.fc has {head.out_features} outputs; "
                "build the model with the dataset's number of classes"
            )
        loader_batch = getattr(train_loader, "batch_size", None)
        if loader_batch is not None and loader_batch != recipe.batch_size:
            raise ValueError(
                f"train_loader.batch_size={loader_batch} differs from recipe.batch_size="
                f"{recipe.batch_size}; the lr is scaled by recipe.batch_size/128, so make them "
                "equal"
            )
        steps = len(train_loader)
        if steps < 1:
            raise ValueError("train_loader has no batches; check the dataset and batch size")
        self.device = torch.device(device)
        self.amp_dtype = _resolve_amp(amp, self.device)
        self.compile_mode = resolve_compile(compile)
        if channels_last is None:
            channels_last = self.device.type in ("cuda", "cpu")
        self.channels_last = bool(channels_last)
        self.memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        tune_backends(self.device)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = compile_model(self.model, self.compile_mode)
        self.loss_fn = loss_fn.to(self.device) if isinstance(loss_fn, nn.Module) else loss_fn
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.recipe = recipe
        self.loss_type = loss_type
        self.num_classes = int(num_classes)
        self.train_counts = counts
        self.progress = bool(progress)
        self.posthoc_tau = None if posthoc_tau is None else float(posthoc_tau)
        self.steps_per_epoch = steps
        self.optimizer = build_optimizer(self.model, recipe, loss_type)
        self.scheduler = build_scheduler(self.optimizer, recipe, steps)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self._prime_momentum()
        self.history: list[dict[str, Any]] = []
        self.last_evaluation: dict[str, Any] | None = None

    def _prime_momentum(self) -> None:
        """Fused SGD under a gradient scaler starts from zero momentum buffers
        (:func:`_prime_momentum`)."""
        if self.scaler.is_enabled() and self.optimizer.defaults.get("fused"):
            _prime_momentum(self.optimizer)

    def _lr(self) -> float:
        """The learning rate of the next step (the first group's), computed on the host as the
        scheduler computes it: reading the group's tensor would wait for the device."""
        scheduler = self.scheduler
        return float(scheduler.base_lrs[0]) * scheduler.lr_lambdas[0](scheduler.last_epoch)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the model's memory format."""
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    @property
    def next_epoch(self) -> int:
        """Index of the next epoch to train (= epochs trained so far)."""
        return len(self.history)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for the chosen AMP dtype, or a no-op for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (= :attr:`next_epoch`) and append its record to :attr:`history`.

        Returns the record: epoch, mean train loss, last lr used, images/s, seconds, and
        ``top1_error`` (None until :meth:`evaluate` fills it in). No step waits for the device:
        the loss is summed there and read once at the end (one host sync per epoch), and the
        learning rate shown and recorded is computed on the host.
        """
        if not _is_int(epoch) or epoch != self.next_epoch:
            raise ValueError(
                f"epoch must be the next epoch, {self.next_epoch} (epochs are trained in order "
                f"and the lr schedule has advanced to there), got {epoch!r}"
            )
        if epoch >= self.recipe.epochs:
            raise ValueError(f"all {self.recipe.epochs} epochs of the recipe are already trained")
        self.model.train()
        self.train_loader.set_epoch(epoch)
        set_loss_epoch = getattr(self.loss_fn, "set_epoch", None)
        if callable(set_loss_epoch):  # e.g. deferred re-weighting switches at an epoch
            set_loss_epoch(epoch)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        images = 0
        lr = self._lr()
        start = time.perf_counter()
        bar = tqdm(
            self.train_loader,
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}",
            leave=False,
            disable=not self.progress,
        )
        for step, (x, y) in enumerate(bar):
            x = self._input(x)
            y = y.to(self.device, non_blocking=True)
            _mark_step(self.compile_mode, self.device)
            with self._autocast():
                logits = self._forward(x)
            loss = self.loss_fn(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr = self._lr()
            self.scheduler.step()
            loss_sum += loss.detach() * x.shape[0]
            images += x.shape[0]
            if step % _POSTFIX_EVERY == 0:
                bar.set_postfix(lr=f"{lr:.3g}", refresh=False)
        if images == 0:
            raise ValueError(f"train_loader yielded no batches in epoch {epoch}")
        mean_loss = float(loss_sum / images)  # the one host sync of the epoch
        seconds = time.perf_counter() - start
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}")
        bar.close()
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"the train loss became {mean_loss} in epoch {epoch}; lower the learning rate, "
                "check the loss inputs, or train with amp='off'"
            )
        record = {
            "epoch": epoch,
            "train_loss": mean_loss,
            "lr": float(lr),
            "images_per_s": images / seconds if seconds > 0 else None,
            "seconds": seconds,
            "top1_error": None,
        }
        self.history.append(record)
        return record

    @torch.inference_mode()
    def evaluate(self) -> dict[str, Any]:
        """Evaluate on the test loader: :func:`cbnotes.metrics.summarize` of the predictions.

        With ``posthoc_tau`` set, the metrics of the post-hoc logit-adjusted predictions
        ``argmax(z - τ log π)`` (Menon et al. 2021) are added under
        ``"posthoc_logit_adjusted"``. The top-1 error is also written into the latest
        :attr:`history` record.
        """
        was_training = self.model.training
        self.model.eval()
        preds, adjusted, targets = [], [], []
        try:
            for x, y in self.test_loader:
                x = self._input(x)
                _mark_step(self.compile_mode, self.device)
                with self._autocast():
                    logits = self._forward(x)
                preds.append(logits.argmax(dim=1))
                if self.posthoc_tau is not None:
                    shifted = posthoc_logit_adjustment(
                        logits.float(), self.train_counts, self.posthoc_tau
                    )
                    adjusted.append(shifted.argmax(dim=1))
                targets.append(y.to(self.device, non_blocking=True))
        finally:
            self.model.train(was_training)
        if not preds:
            raise ValueError("test_loader yielded no batches; check the test set")
        target = torch.cat(targets)
        confusion = confusion_matrix(torch.cat(preds), target, self.num_classes)
        evaluation = summarize(confusion, self.train_counts)
        if adjusted:
            posthoc = confusion_matrix(torch.cat(adjusted), target, self.num_classes)
            evaluation["posthoc_logit_adjusted"] = {
                "tau": self.posthoc_tau,
                **summarize(posthoc, self.train_counts),
            }
        self.last_evaluation = evaluation
        if self.history:
            self.history[-1]["top1_error"] = evaluation["top1_error"]
        return evaluation

    def fit(
        self,
        epochs: int | None = None,
        *,
        eval_every: int = 1,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        desc: str = "training",
    ) -> list[dict[str, Any]]:
        """Train from :attr:`next_epoch` up to ``epochs`` (default: the recipe's); evaluate
        every ``eval_every`` epochs and after the last one. Returns :attr:`history`.

        ``on_epoch_end(record)`` is called after each epoch (and its evaluation, if any) with
        the epoch's history record; the experiment runner saves its checkpoints there.
        """

        def postfix(record: dict[str, Any]) -> dict[str, str]:
            shown = {"loss": f"{record['train_loss']:.4f}"}
            if record["top1_error"] is not None:
                shown["err"] = f"{record['top1_error']:.2f}%"
            return shown

        run_epochs(
            self.train_epoch,
            self.evaluate,
            start=self.next_epoch,
            epochs=epochs,
            limit=self.recipe.epochs,
            eval_every=eval_every,
            on_epoch_end=on_epoch_end,
            desc=desc,
            progress=self.progress,
            postfix=postfix,
        )
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint of model, optimizer, scheduler, scaler and history (tensors + plain types).

        Tensors are shared with the live objects (as in PyTorch's own ``state_dict``): save the
        dict or deep-copy it before training on.
        """
        return {
            "format": 1,
            "recipe": self.recipe.to_dict(),
            "loss_type": self.loss_type,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": copy.deepcopy(self.history),
            "last_evaluation": copy.deepcopy(self.last_evaluation),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` made with the same recipe, loss type and loader length."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"state is missing {missing}; pass a dict from Trainer.state_dict()")
        if state["format"] != 1:
            raise ValueError(f"unsupported checkpoint format {state['format']!r} (expected 1)")
        if Recipe.from_dict(state["recipe"]) != self.recipe:
            raise ValueError(
                f"checkpoint recipe {state['recipe']} differs from this trainer's "
                f"{self.recipe.to_dict()}; build the Trainer with the checkpoint's recipe"
            )
        if state["loss_type"] != self.loss_type:
            raise ValueError(
                f"checkpoint loss_type {state['loss_type']!r} differs from {self.loss_type!r}"
            )
        saved = state["scheduler"].get("lr_lambdas", [None])[0]
        current = self.scheduler.lr_lambdas[0].settings()
        if saved is None or {k: saved.get(k) for k in current} != current:
            raise ValueError(
                f"checkpoint lr schedule {saved} differs from this trainer's {current}; "
                "the train loader must have the same number of batches per epoch"
            )
        live = [group["lr"] for group in self.optimizer.param_groups]
        settings = [
            {k: group[k] for k in ("foreach", "fused") if k in group}
            for group in self.optimizer.param_groups
        ]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group, own in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(own)  # this device's step, whatever device wrote the checkpoint
        _keep_lr_tensors(self.optimizer, live)
        _match_layouts(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.base_lrs = [float(lr) for lr in self.scheduler.base_lrs]
        if self.scaler.is_enabled() and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self._prime_momentum()
        self.history = copy.deepcopy(list(state["history"]))
        self.last_evaluation = copy.deepcopy(state["last_evaluation"])

"""A 2-D long-tailed toy problem: Gaussian classes, a tiny MLP and a full-batch trainer.

Small enough to train in about a second on a CPU, so that notebook 03 can show the decision
boundaries of the plain and the class-balanced losses side by side (Cui et al. 2019, Sec. 4).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cbnotes.losses import class_balanced_loss, prior_bias
from cbnotes.metrics import confusion_matrix, per_class_accuracy

__all__ = [
    "TOY_COUNTS",
    "ToyRun",
    "class_centers",
    "evaluate",
    "make_blobs",
    "predict_grid",
    "toy_mlp",
    "train_toy",
    "train_toy_method",
]

TOY_COUNTS: tuple[int, ...] = (1000, 100, 20)
"""Default training counts: a head, a medium and a tail class (imbalance factor 50)."""


def _check_counts(counts: Sequence[int]) -> list[int]:
    """Validate per-class counts (at least two classes, each an integer >= 1)."""
    values = list(counts)
    if len(values) < 2:
        raise ValueError(f"counts needs at least 2 classes, got {values!r}")
    for c in values:
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"every entry of counts must be an integer >= 1, got {values!r}")
    return values


def class_centers(num_classes: int, radius: float = 1.5) -> torch.Tensor:
    """Centres of the classes, evenly spaced on a circle of the given radius; shape (C, 2)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    angles = torch.arange(num_classes, dtype=torch.float64) * (2 * math.pi / num_classes)
    angles = angles + math.pi / 2  # class 0 at the top
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def make_blobs(
    counts: Sequence[int],
    seed: int = 0,
    spread: float = 1.0,
    radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``counts[k]`` points of class k from N(centre_k, spread² I); returns (x, y).

    ``x`` is float32 of shape (sum(counts), 2), ``y`` int64 labels, grouped by class. The same
    ``seed`` always gives the same points.
    """
    values = _check_counts(counts)
    if spread <= 0:
        raise ValueError(f"spread must be > 0, got {spread}")
    generator = torch.Generator().manual_seed(seed)
    centers = class_centers(len(values), radius)
    labels = torch.repeat_interleave(torch.arange(len(values)), torch.tensor(values))
    noise = torch.randn((len(labels), 2), generator=generator)
    return centers[labels] + spread * noise, labels


def toy_mlp(num_classes: int, hidden: int = 32, seed: int = 0) -> nn.Sequential:
    """A 2 → hidden → hidden → C ReLU network with a seeded initialisation."""
    if num_classes < 2 or hidden < 1:
        raise ValueError(f"need num_classes >= 2 and hidden >= 1, got {num_classes}, {hidden}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


@dataclass
class ToyRun:
    """A trained toy model, its full-batch loss at every step and optional weight snapshots."""

    model: nn.Sequential
    losses: list[float] = field(default_factory=list)
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def model_at(self, step: int) -> nn.Sequential:
        """A copy of the model as it was after ``step`` optimisation steps (a snapshot step)."""
        if step not in self.snapshots:
            raise ValueError(
                f"no snapshot at step {step}; available: {sorted(self.snapshots)} "
                "(pass snapshot_steps to train_toy)"
            )
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.snapshots[step])
        return model.eval()


def train_toy(
    x: torch.Tensor,
    y: torch.Tensor,
    samples_per_class: Sequence[int],
    loss_type: str = "softmax",
    beta: float = 0.0,
    gamma: float = 1.0,
    steps: int = 300,
    lr: float = 0.01,
    hidden: int = 32,
    weight_decay: float = 0.0,
    seed: int = 0,
    snapshot_steps: Sequence[int] = (),
) -> ToyRun:
    """Full-batch AdamW on the class-balanced loss (β = 0: the plain loss); returns the run.

    Sigmoid and focal heads start from the prior bias -log(C - 1); the softmax head
    keeps PyTorch's default initialisation. Runs on the device of ``x``. The weights after
    each step count in ``snapshot_steps`` are kept (see ``ToyRun.model_at``).
    """
    counts = _check_counts(samples_per_class)
    if steps < 1 or lr <= 0 or weight_decay < 0:
        raise ValueError(
            f"need steps >= 1, lr > 0 and weight_decay >= 0, got {steps}, {lr}, {weight_decay}"
        )
    if x.ndim != 2 or x.shape[1] != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must have shape (n, 2) and y shape (n,), got {x.shape}, {y.shape}")
    wanted = set(snapshot_steps)
    if any(not 1 <= s <= steps for s in wanted):
        raise ValueError(f"snapshot_steps must lie in 1..steps={steps}, got {sorted(wanted)}")
    model = toy_mlp(len(counts), hidden, seed).to(x.device)
    if loss_type in ("sigmoid", "focal"):
        with torch.no_grad():
            model[-1].bias.fill_(prior_bias(len(counts)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = torch.empty(steps, device=x.device)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = class_balanced_loss(model(x), y, counts, loss_type=loss_type, beta=beta, gamma=gamma)
        loss.backward()
        optimizer.step()
        history[step] = loss.detach()  # stays on the device: no host sync per step
        if step + 1 in wanted:
            snapshots[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    return ToyRun(model=model, losses=history.cpu().tolist(), snapshots=snapshots)


class _PosthocAdjusted(nn.Module):
    """A trained model whose logits are shifted by -τ log π_j at prediction time."""

    def __init__(self, model: nn.Module, counts: Sequence[int], tau: float) -> None:
        super().__init__()
        self.model = model
        prior = torch.tensor(counts, dtype=torch.float64)
        self.register_buffer("shift", (tau * (prior / prior.sum()).log()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) - self.shift


def train_toy_method(
    x: torch.Tensor,
    y: torch.Tensor,
    samples_per_class: Sequence[int],
    method: str = "softmax",
    params: dict | None = None,
    steps: int = 300,
    lr: float = 0.01,
    hidden: int = 32,
    seed: int = 0,
    posthoc_tau: float | None = None,
) -> ToyRun:
    """Full-batch AdamW with any method of the registry (:mod:`cbnotes.methods`).

    The head, its bias init and the criterion come from the registry. A step plays the role
    of an epoch: deferred re-weighting switches at 80 % of the steps (the paper's first lr
    decay, 160 of 200), and re-sampling draws a new full batch with replacement every step.
    ``posthoc_tau`` wraps the trained model so that it predicts with post-hoc logit adjustment.
    """
    from cbnotes.methods import build_criterion, get_method, sampling_weights
    from cbnotes.models import NormedLinear
    from cbnotes.training import Recipe

    counts = _check_counts(samples_per_class)
    spec = get_method(method)
    params = dict(params or {})
    model = toy_mlp(len(counts), hidden, seed).to(x.device)
    if spec.head == "cosine":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model[-1] = NormedLinear(hidden, len(counts)).to(x.device)
    if spec.prior_bias:
        with torch.no_grad():
            model[-1].bias.fill_(prior_bias(len(counts)))
    criterion = build_criterion(method, counts, params, Recipe.scaled(steps)).to(x.device)
    weights = sampling_weights(method, counts, params)
    draw = None if weights is None else weights.to(x.device)[y].double()
    generator = torch.Generator(device=x.device).manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    history = torch.empty(steps, device=x.device)
    for step in range(steps):
        getattr(criterion, "set_epoch", lambda _: None)(step)
        xb, yb = x, y
        if draw is not None:
            index = torch.multinomial(draw, len(y), replacement=True, generator=generator)
            xb, yb = x[index], y[index]
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        history[step] = loss.detach()
    model.eval()
    if posthoc_tau is not None:
        model = _PosthocAdjusted(model, counts, posthoc_tau).to(x.device).eval()
    return ToyRun(model=model, losses=history.cpu().tolist())


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-class accuracy in percent, (C,) float64 on the CPU (via :mod:`cbnotes.metrics`)."""
    logits = model(x)
    confusion = confusion_matrix(logits.argmax(dim=1), y, logits.shape[1])
    return per_class_accuracy(confusion).cpu()


@torch.no_grad()
def predict_grid(
    model: nn.Module,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    resolution: int = 200,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted class on a regular grid: (xs, ys, labels) with labels of shape (res, res)."""
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    device = next(model.parameters()).device
    xs = torch.linspace(*xlim, resolution, device=device)
    ys = torch.linspace(*ylim, resolution, device=device)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    labels = model(points).argmax(dim=1).reshape(resolution, resolution)
    return xs.cpu(), ys.cpu(), labels.cpu()

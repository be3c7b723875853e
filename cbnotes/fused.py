"""Many runs, one GPU: a *pack* of N CIFAR ResNets trained concurrently as one fused model.

One ResNet-32 at batch 128 leaves a modern GPU mostly idle (the paper's Table 2 is 72 such
runs). A pack trains N runs of one model shape at once, HFTA-style (Wang et al., MLSys 2021,
"Horizontally Fused Training Array"): the members' layers are fused into single wider layers.

- **Convolutions** become grouped convolutions with ``groups = N``: member i owns channel group
  i. The members' input batches are concatenated along the channel axis, (B, N·C, H, W).
- **BatchNorm** is one ``BatchNorm2d`` over the N·C channels, so every member keeps its own
  batch statistics, running statistics, γ and β.
- The **option-A shortcut** subsamples every channel and zero-pads each member's new channels
  inside the member's own channel group (half before, half after, as in
  :class:`cbnotes.models.BasicBlock`).
- The **head** is a batched matmul with a weight (N, classes, features) and bias (N, classes),
  or a cosine head normalized per member. The fused model returns logits (N, B, classes).

Parameters keep the names of :class:`cbnotes.models.ResNetCifar` (``conv1.weight``,
``layer2.0.bn1.running_mean``, ``fc.bias``, ...): each fused tensor holds the members' tensors
concatenated along dimension 0 (the head's are stacked), so member i's tensor is a contiguous
slice. :meth:`FusedResNet.from_models` copies N ordinary models exactly and
:meth:`FusedResNet.member_state_dict` gives member i back in the ``resnet_cifar`` format.

:class:`PackTrainer` mirrors :class:`cbnotes.training.Trainer`: every member has its own seed
and initialization (its model), data order and augmentation (its loader), criterion (DRW's
``set_epoch`` included), learning-rate schedule and weight-decay groups (from
:func:`cbnotes.training.build_optimizer`), loss scale under fp16, history and evaluation. The
members' losses are summed and back-propagated once; their parameters are disjoint, so each
gets exactly its own gradient. :class:`FusedSGD` then updates all parameters in one flat
buffer with a learning rate and weight decay per member, as ``torch.optim.SGD`` would update
each member. In float64 a pack equals its runs trained one by one to about 1e-14 (relative
to each tensor's largest entry: parameters, BatchNorm statistics, momentum buffers), with the
same per-epoch losses and confusion matrices; in float32 it differs from them by less than
the same run differs from itself in another memory format (tests/test_fused.py).

Why not ``torch.func`` (``stack_module_state`` + ``functional_call`` + ``vmap``)? vmap turns a
batched convolution into the same grouped convolution, but BatchNorm's in-place running
statistics cannot be updated under vmap (they must be dropped or carried outside), and on the
CPU study's model (ResNet-8, width 8, 28×28×1, batch 128) a raw training step of a pack of
1-16 took 1.26-1.51× as long with vmap as with the fused modules, even without running
statistics (``benchmarks/bench_fused.py --vmap``, 1 thread, CPU time). The fused modules
are used. On CPU a pack is a little slower than its runs one by one (0.86-0.93× for N <= 8,
0.58× for N = 16, whose activations outgrow the caches); the gain is meant for GPUs, which
one small model leaves mostly idle.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cbnotes.losses import posthoc_logit_adjustment
from cbnotes.methods import get_method
from cbnotes.metrics import confusion_matrix, summarize
from cbnotes.models import (
    BN_EPS,
    BN_MOMENTUM,
    HEADS,
    SHORTCUTS,
    NormedLinear,
    ResNetCifar,
)
from cbnotes.training import (
    Loader,
    PaperLrFactor,
    Recipe,
    _is_int,
    _mark_step,
    _resolve_amp,
    build_optimizer,
    build_scheduler,
    compile_model,
    lr_dtype,
    resolve_compile,
    run_epochs,
    tune_backends,
)

__all__ = [
    "FusedResNet",
    "FusedSGD",
    "PackMember",
    "PackTrainer",
    "model_shape",
]

#: What members of one pack must share (the fused model's shape).
SHAPE_FIELDS = ("blocks_per_stage", "num_classes", "in_channels", "base_width", "shortcut", "head")
_STATE_KEYS = (
    "format",
    "kind",
    "members",
    "steps_per_epoch",
    "step",
    "model",
    "optimizer",
    "loss_scale",
    "growth_tracker",
)
# GradScaler's defaults: each fp16 member scales its loss as torch.amp.GradScaler would.
_INIT_SCALE, _GROWTH, _BACKOFF, _GROWTH_INTERVAL = 2.0**16, 2.0, 0.5, 2000


def model_shape(model: nn.Module) -> dict[str, Any]:
    """The shape of a :func:`cbnotes.models.resnet_cifar` model: what packed members share."""
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, ResNetCifar):
        raise ValueError(
            f"model must be a ResNetCifar (build it with cbnotes.models.resnet_cifar), got "
            f"{type(model).__name__}"
        )
    return {
        "blocks_per_stage": len(model.layer1),
        "num_classes": model.num_classes,
        "in_channels": model.conv1.in_channels,
        "base_width": model.conv1.out_channels,
        "shortcut": model.layer2[0].shortcut,
        "head": "cosine" if isinstance(model.fc, NormedLinear) else "linear",
    }


def _grouped_conv3x3(members: int, in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """N 3×3 convolutions without bias as one grouped convolution (member i = group i)."""
    return nn.Conv2d(
        members * in_planes,
        members * out_planes,
        3,
        stride=stride,
        padding=1,
        bias=False,
        groups=members,
    )


def _fused_bn(members: int, planes: int) -> nn.BatchNorm2d:
    """N BatchNorms (momentum 0.1, eps 1e-5) as one over N·planes channels."""
    return nn.BatchNorm2d(members * planes, eps=BN_EPS, momentum=BN_MOMENTUM)


class FusedBlock(nn.Module):
    """N :class:`cbnotes.models.BasicBlock` s side by side on member-major channels."""

    def __init__(
        self, members: int, in_planes: int, planes: int, stride: int, shortcut: str
    ) -> None:
        super().__init__()
        self.conv1 = _grouped_conv3x3(members, in_planes, planes, stride)
        self.bn1 = _fused_bn(members, planes)
        self.conv2 = _grouped_conv3x3(members, planes, planes)
        self.bn2 = _fused_bn(members, planes)
        self.members = members
        self.stride = stride
        self.shortcut = shortcut
        self.planes = planes
        self.pad_channels = planes - in_planes

    def _shortcut(self, x: Tensor) -> Tensor:
        """Identity, or subsample + zero-pad each member's new channels within its group."""
        if self.stride != 1:
            if self.shortcut == "avgpool":
                x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
            else:
                x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            b, _, h, w = x.shape
            before = self.pad_channels // 2
            channels_last = not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last
            )
            x = x.reshape(b, self.members, -1, h, w)
            x = F.pad(x, (0, 0, 0, 0, before, self.pad_channels - before))
            x = x.reshape(b, self.members * self.planes, h, w)
            if channels_last:  # keep the layout of the residual branch
                x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), every member at once."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class FusedLinear(nn.Module):
    """N linear heads: weight (N, out, in), bias (N, out); (N, B, in) -> (N, B, out)."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.zeros(members, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(members, out_features))

    def forward(self, x: Tensor) -> Tensor:
        """Per member ``x_i @ W_iᵀ + b_i`` as one batched matmul."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class FusedNormedLinear(nn.Module):
    """N cosine heads (:class:`cbnotes.models.NormedLinear`): weight (N, out, in), no bias."""

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.zeros(members, out_features, in_features))
        self.bias = None

    def forward(self, x: Tensor) -> Tensor:
        """Per member, cosine similarity of each feature vector with each class vector."""
        return torch.bmm(F.normalize(x, dim=2), F.normalize(self.weight, dim=2).transpose(1, 2))


class FusedResNet(nn.Module):
    """N CIFAR ResNets of one shape as one model: (B, N·C, H, W) -> logits (N, B, classes).

    The state dict has the keys of :class:`cbnotes.models.ResNetCifar`; each tensor holds the
    members' tensors concatenated along dimension 0 (``fc`` tensors stacked, one shared
    ``num_batches_tracked`` per BatchNorm). Build it from trained or freshly initialized
    models with :meth:`from_models`; the constructor's own initialization is PyTorch's default.
    """

    def __init__(
        self,
        num_members: int,
        blocks_per_stage: int,
        num_classes: int,
        in_channels: int,
        base_width: int,
        shortcut: str = "avgpool",
        head: str = "linear",
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("num_members", num_members, 1),
            ("blocks_per_stage", blocks_per_stage, 1),
            ("num_classes", num_classes, 2),
            ("in_channels", in_channels, 1),
            ("base_width", base_width, 1),
        ):
            if not _is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        n = int(num_members)
        widths = (base_width, 2 * base_width, 4 * base_width)
        self.conv1 = _grouped_conv3x3(n, in_channels, base_width)
        self.bn1 = _fused_bn(n, base_width)
        stages = []
        in_planes = base_width
        for index, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(FusedBlock(n, in_planes, width, stride, shortcut))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        head_cls = FusedLinear if head == "linear" else FusedNormedLinear
        self.fc = head_cls(n, widths[-1], num_classes)
        self.num_members = n
        self.num_classes = int(num_classes)
        self.shape = {
            "blocks_per_stage": int(blocks_per_stage),
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "base_width": int(base_width),
            "shortcut": shortcut,
            "head": head,
        }

    @classmethod
    def from_models(cls, models: Sequence[nn.Module]) -> FusedResNet:
        """Fuse N ``resnet_cifar`` models of one shape, copying their parameters and buffers.

        The pack lives on the models' device in their dtype and starts in training mode; the
        global random generators are not used.
        """
        models = [getattr(m, "_orig_mod", m) for m in models]
        if not models:
            raise ValueError("models is empty: a pack needs at least one model (N >= 1)")
        shapes = [model_shape(m) for m in models]
        for i, shape in enumerate(shapes[1:], start=1):
            if models[i] in models[:i]:
                raise ValueError(f"models[{i}] is the same object as an earlier model")
            diff = [
                f"{k}: {shape[k]!r} != {shapes[0][k]!r}"
                for k in SHAPE_FIELDS
                if shape[k] != shapes[0][k]
            ]
            if diff:
                raise ValueError(
                    f"models[{i}] differs in shape from models[0] ({'; '.join(diff)}); the "
                    "members of a pack need one depth, width, shortcut, head and class count"
                )
        states = [m.state_dict() for m in models]
        first = next(iter(models[0].parameters()))
        for i, model in enumerate(models):
            for name, t in model.state_dict().items():
                ref = states[0][name]
                if t.device != first.device or (t.is_floating_point() and t.dtype != first.dtype):
                    raise ValueError(
                        f"models[{i}].{name} is {t.dtype} on {t.device} but models[0] is "
                        f"{first.dtype} on {first.device}; move every member to one device/dtype"
                    )
                if name.endswith("num_batches_tracked") and not torch.equal(t, ref):
                    raise ValueError(
                        f"models[{i}].{name} is {int(t)} but models[0]'s is {int(ref)}; members "
                        "of a pack must have taken the same number of BatchNorm steps"
                    )
        with torch.device("meta"):
            fused = cls(len(models), **shapes[0])
        fused = fused.to_empty(device=first.device).to(first.dtype)
        fused.load_state_dict(_fuse_states(states))
        return fused

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features of every member, (N, B, 4w)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return pooled.view(pooled.shape[0], self.num_members, -1).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, B, classes) of the member-major channel-concatenated batch ``x``."""
        expected = self.num_members * self.shape["in_channels"]
        if x.dim() != 4 or x.shape[1] != expected:
            raise ValueError(
                f"x must have shape (B, {expected}, H, W) (the {self.num_members} members' "
                f"batches concatenated along channels), got {tuple(x.shape)}"
            )
        return self.fc(self.features(x))

    def member_tensors(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s parameters and buffers as views of the fused tensors (shared storage)."""
        if not _is_int(i) or not 0 <= i < self.num_members:
            raise ValueError(f"i must be a member index in [0, {self.num_members}), got {i!r}")
        return {k: _member_slice(k, t, self.num_members, i) for k, t in self.state_dict().items()}

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s state dict in the :func:`cbnotes.models.resnet_cifar` format (a copy)."""
        return {k: t.detach().clone() for k, t in self.member_tensors(i).items()}

    def member_model(self, i: int) -> ResNetCifar:
        """A new ordinary ResNet holding a copy of member ``i`` (e.g. for ``classifier_stats``)."""
        state = self.member_state_dict(i)
        with torch.device("meta"):
            model = ResNetCifar(**self.shape)
        ref = state["conv1.weight"]
        model = model.to_empty(device=ref.device).to(ref.dtype)
        model.load_state_dict(state)
        return model.train(self.training)


def _member_slice(name: str, tensor: Tensor, members: int, i: int) -> Tensor:
    """Member ``i``'s part of a fused tensor: a dim-0 slice (the shared counter as is)."""
    if name.endswith("num_batches_tracked"):
        return tensor
    if name.startswith("fc."):
        return tensor[i]
    rows = tensor.shape[0] // members
    return tensor[i * rows : (i + 1) * rows]


def _fuse_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate (stack, for ``fc``) the members' state dicts into a fused one."""
    fused = {}
    for name in states[0]:
        parts = [s[name] for s in states]
        if name.endswith("num_batches_tracked"):
            fused[name] = parts[0]
        elif name.startswith("fc."):
            fused[name] = torch.stack(parts)
        else:
            fused[name] = torch.cat(parts)
    return fused


class FusedSGD:
    """SGD with momentum over a pack's parameters, a learning rate and weight decay per member.

    Updates each member exactly as ``torch.optim.SGD`` (dampening 0) would: ``d = g + λ_i·p``,
    ``buf = μ·buf + d`` (``buf = d`` on a member's first step), ``p -= lr_i·buf`` (Nesterov:
    ``p -= lr_i·(d + μ·buf)``). The parameters and their gradients are moved into one flat
    buffer each (the parameters become views of it), so a step is a handful of elementwise
    kernels whatever the depth. ``weight_decay[j]`` holds parameter j's decay for every member.
    Gradients are zeroed in place, never set to None: build this after the model is on its
    device and dtype, and do not move the model afterwards.
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        num_members: int,
        weight_decay: Sequence[Sequence[float]],
        *,
        momentum: float,
        nesterov: bool = False,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("params is empty; pass the fused model's parameters")
        if not _is_int(num_members) or num_members < 1:
            raise ValueError(f"num_members must be an integer >= 1, got {num_members!r}")
        if len(weight_decay) != len(params):
            raise ValueError(
                f"weight_decay must hold one row per parameter ({len(params)}), got "
                f"{len(weight_decay)}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        ref = params[0]
        n = int(num_members)
        sizes = []
        for j, (p, decay) in enumerate(zip(params, weight_decay, strict=True)):
            if p.dtype != ref.dtype or p.device != ref.device or p.shape[0] % n:
                raise ValueError(
                    f"params[{j}] must be {ref.dtype} on {ref.device} with a first dimension "
                    f"divisible by num_members={n}, got {p.dtype} on {p.device}, {tuple(p.shape)}"
                )
            if len(decay) != n:
                raise ValueError(f"weight_decay[{j}] must hold {n} values (one per member)")
            sizes.append(p.numel())
        self.params = params
        self.num_members = n
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        total = sum(sizes)
        self.flat = torch.empty(total, dtype=ref.dtype, device=ref.device)
        self.flat_grad = torch.zeros_like(self.flat)
        member, decay_full, offset = [], [], 0
        for p, size, decay in zip(params, sizes, weight_decay, strict=True):
            self.flat[offset : offset + size].copy_(p.detach().reshape(-1))
            p.data = self.flat[offset : offset + size].view(p.shape)
            p.grad = self.flat_grad[offset : offset + size].view(p.shape)
            member.append(torch.arange(n, dtype=torch.int32).repeat_interleave(size // n))
            per_member = torch.tensor([float(d) for d in decay], dtype=torch.float64)
            decay_full.append(per_member.repeat_interleave(size // n))
            offset += size
        self.member_index = torch.cat(member).to(ref.device)
        self.decay = torch.cat(decay_full).to(ref.device, ref.dtype)
        self.decays = bool((self.decay != 0).any())
        self.momentum_buffer = torch.zeros_like(self.flat) if self.momentum else None
        self.initialized = torch.zeros(n, dtype=torch.bool, device=ref.device)
        self.offsets = [0, *itertools.accumulate(sizes)]

    def zero_grad(self) -> None:
        """Set every gradient to 0 (in place: the gradients are views of one buffer)."""
        self.flat_grad.zero_()

    def _full(self, per_member: Tensor) -> Tensor:
        """Broadcast a (N,) tensor to one value per element of the flat buffer."""
        return per_member.index_select(0, self.member_index)

    @torch.no_grad()
    def step(self, lr: Tensor, skip: Tensor | None = None) -> None:
        """One update with learning rates ``lr`` (N,); members with ``skip[i]`` keep everything."""
        lr_full = self._full(lr.to(self.flat.dtype))
        d = torch.addcmul(self.flat_grad, self.decay, self.flat) if self.decays else self.flat_grad
        skip_full = None if skip is None else self._full(skip)
        if self.momentum_buffer is not None:
            buf = self.momentum_buffer
            new = torch.where(self._full(self.initialized), buf.mul(self.momentum).add_(d), d)
            if skip_full is not None:
                new = torch.where(skip_full, buf, new)
            buf.copy_(new)
            if skip is None:
                self.initialized.fill_(True)
            else:
                self.initialized |= ~skip
            d = d.add(buf, alpha=self.momentum) if self.nesterov else buf
        update = lr_full * d
        if skip_full is not None:
            update = torch.where(skip_full, torch.zeros_like(update), update)
        self.flat.sub_(update)

    def param_view(self, flat: Tensor, j: int) -> Tensor:
        """Parameter ``j``'s part of a flat buffer (e.g. the momentum buffer), in its shape."""
        return flat[self.offsets[j] : self.offsets[j + 1]].view(self.params[j].shape)

    def state_dict(self) -> dict[str, Any]:
        """Momentum buffer and which members have one yet (tensors; shared with the live state)."""
        return {"momentum_buffer": self.momentum_buffer, "initialized": self.initialized}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of an optimizer of the same pack."""
        buf = state.get("momentum_buffer")
        if (buf is None) != (self.momentum_buffer is None) or (
            buf is not None and buf.shape != self.momentum_buffer.shape
        ):
            raise ValueError("optimizer state does not fit this pack (momentum or parameters)")
        if buf is not None:
            self.momentum_buffer.copy_(buf)
        self.initialized.copy_(state["initialized"])


@dataclasses.dataclass(eq=False)
class PackMember:
    """One run of a pack: what a :class:`cbnotes.training.Trainer` gets, and its history.

    ``model`` is an ordinary ``resnet_cifar`` model with the method's head initialization;
    once a :class:`PackTrainer` holds it, its parameters and buffers are views of the pack's,
    so it always shows the member's current weights (like ``Trainer.model``).
    """

    model: nn.Module
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    train_loader: Loader
    recipe: Recipe
    loss_type: str
    train_counts: Sequence[int]
    posthoc_tau: float | None = None
    name: str = ""
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    last_evaluation: dict[str, Any] | None = None


def _check_same_value(what: str, values: Sequence[Any], names: Sequence[str] = ()) -> None:
    """ValueError naming ``what`` unless all ``values`` (one per member) are equal."""
    for i, value in enumerate(values):
        if value != values[0]:
            name = f" ({names[i]})" if i < len(names) and names[i] else ""
            raise ValueError(
                f"members differ in {what}: member {i}{name} has {value!r}, member 0 has "
                f"{values[0]!r}; the runs of one pack must share it"
            )


class PackTrainer:
    """Train the N runs of ``members`` as one fused model; the interface of ``Trainer``.

    Members share the dataset (``num_classes``, one ``test_loader``), model shape, number of
    epochs, batch size, momentum and loader length; they may differ in method, loss
    parameters, seed, data order, augmentation, re-sampling, learning rate and schedule and
    weight decay. :meth:`train_epoch` and :meth:`evaluate` return one record / metric dict per
    member (``Trainer``'s), also kept in ``members[i].history`` and ``last_evaluation``.
    ``seconds`` in a record is the pack's wall time; ``images_per_s`` is per member.

    With ``amp="fp16"`` each member scales its loss as its own ``torch.amp.GradScaler`` would
    (a member whose gradients overflow skips its step alone). ``channels_last=True`` feeds the
    fused model channels-last batches (the convolutions then run in that layout; the weights
    stay in the flat buffer); ``compile`` (True or a mode of
    :data:`cbnotes.training.COMPILE_MODES`) wraps it in ``torch.compile`` (CUDA). On CUDA
    cuDNN's autotuner is turned on (:func:`cbnotes.training.tune_backends`).
    """

    def __init__(
        self,
        members: Sequence[PackMember],
        test_loader: Iterable[tuple[Tensor, Tensor]],
        *,
        device: torch.device | str,
        num_classes: int,
        amp: str = "auto",
        progress: bool = True,
        compile: bool | str = False,
        channels_last: bool = False,
    ) -> None:
        members = list(members)
        if not members:
            raise ValueError("members is empty: a pack needs at least one PackMember (N >= 1)")
        for i, m in enumerate(members):
            if not isinstance(m, PackMember):
                raise ValueError(f"members[{i}] must be a PackMember, got {type(m).__name__}")
            self._check_member(i, m, num_classes)
        for what, get in (
            ("recipe.epochs", lambda m: m.recipe.epochs),
            ("recipe.batch_size", lambda m: m.recipe.batch_size),
            ("recipe.momentum", lambda m: m.recipe.momentum),
            ("recipe.nesterov", lambda m: m.recipe.nesterov),
            ("len(train_loader) (batches per epoch)", lambda m: len(m.train_loader)),
        ):
            _check_same_value(what, [get(m) for m in members], [m.name for m in members])
        self.device = torch.device(device)
        self.amp_dtype = _resolve_amp(amp, self.device)
        self.compile_mode = resolve_compile(compile)
        tune_backends(self.device)
        models = [getattr(m.model, "_orig_mod", m.model).to(self.device) for m in members]
        self.model = FusedResNet.from_models(models)
        self._forward = compile_model(self.model, self.compile_mode)
        self.members = members
        self.num_members = len(members)
        self.num_classes = int(num_classes)
        self.test_loader = test_loader
        self.progress = bool(progress)
        self.channels_last = bool(channels_last)
        self.steps_per_epoch = len(members[0].train_loader)
        self.epochs = members[0].recipe.epochs
        for m in members:
            if isinstance(m.loss_fn, nn.Module):
                m.loss_fn = m.loss_fn.to(self.device)
            m.train_counts = [int(c) for c in m.train_counts]
            m.posthoc_tau = None if m.posthoc_tau is None else float(m.posthoc_tau)
        self._factors = [self._lr_factor(m.recipe) for m in members]
        self.optimizer = FusedSGD(
            list(self.model.parameters()),
            self.num_members,
            self._weight_decay(models),
            momentum=members[0].recipe.momentum,
            nesterov=members[0].recipe.nesterov,
        )
        self.step = 0
        self.scaling = self.amp_dtype == torch.float16
        self.loss_scale = torch.full((self.num_members,), _INIT_SCALE, device=self.device)
        self.growth_tracker = torch.zeros(self.num_members, dtype=torch.int32, device=self.device)
        for i, model in enumerate(models):
            _bind(model, self.model.member_tensors(i))
            members[i].model = model

    @staticmethod
    def _check_member(i: int, m: PackMember, num_classes: int) -> None:
        """Trainer's checks of one member (method, recipe, counts, head, loader)."""
        method = get_method(m.loss_type)
        if not isinstance(m.recipe, Recipe):
            raise ValueError(f"members[{i}].recipe must be a Recipe, got {type(m.recipe)}")
        if not _is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        counts = [int(c) for c in m.train_counts]
        if len(counts) != num_classes or any(c < 0 for c in counts):
            raise ValueError(
                f"members[{i}].train_counts must hold num_classes={num_classes} counts >= 0, got "
                f"{counts}"
            )
        shape = model_shape(m.model)
        if shape["num_classes"] != num_classes:
            raise ValueError(
                f"num_classes={num_classes} but members[{i}].model has {shape['num_classes']} "
                "outputs"
            )
        if shape["head"] != method.head:
            raise ValueError(
                f"members[{i}] trains {m.loss_type!r}, which needs a {method.head} head, but its "
                f"model has a {shape['head']} head"
            )
        if not all(p.requires_grad for p in m.model.parameters()):
            raise ValueError(f"members[{i}].model has frozen parameters; a pack trains them all")
        loader_batch = getattr(m.train_loader, "batch_size", None)
        if loader_batch is not None and loader_batch != m.recipe.batch_size:
            raise ValueError(
                f"members[{i}].train_loader.batch_size={loader_batch} differs from its "
                f"recipe.batch_size={m.recipe.batch_size}"
            )
        if len(m.train_loader) < 1:
            raise ValueError(f"members[{i}].train_loader has no batches")

    def _lr_factor(self, recipe: Recipe) -> PaperLrFactor:
        """The member's lr multiplier per iteration, as :func:`build_scheduler` makes it."""
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=recipe.lr)
        return build_scheduler(optimizer, recipe, self.steps_per_epoch).lr_lambdas[0]

    def _weight_decay(self, models: Sequence[nn.Module]) -> list[list[float]]:
        """Per fused parameter, each member's decay from :func:`build_optimizer`'s groups."""
        per_member = []
        for model, m in zip(models, self.members, strict=True):
            groups = build_optimizer(model, m.recipe, m.loss_type).param_groups
            decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
            per_member.append({name: decay[id(p)] for name, p in model.named_parameters()})
        names = [name for name, _ in self.model.named_parameters()]
        return [[decay[name] for decay in per_member] for name in names]

    @property
    def next_epoch(self) -> int:
        """Index of the next epoch to train (= epochs trained so far)."""
        return len(self.members[0].history)

    def lr(self, i: int, step: int) -> float:
        """Member ``i``'s learning rate at iteration ``step``, as its LambdaLR computes it."""
        return self.members[i].recipe.lr * self._factors[i](step)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for the chosen AMP dtype, or a no-op for fp32."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self, epoch: int) -> Iterable[tuple[Tensor, list[Tensor]]]:
        """The members' batches of ``epoch`` in lockstep: (channel-concatenated x, labels)."""
        for batch in zip(*(m.train_loader for m in self.members), strict=True):
            xs = [x.to(self.device, non_blocking=True) for x, _ in batch]
            ys = [y.to(self.device, non_blocking=True) for _, y in batch]
            for i, x in enumerate(xs[1:], start=1):
                if x.shape != xs[0].shape:
                    raise ValueError(
                        f"member {i}'s batch has shape {tuple(x.shape)} but member 0's has "
                        f"{tuple(xs[0].shape)} in epoch {epoch}; the members' loaders must "
                        "yield batches of one size"
                    )
            yield self._layout(torch.cat(xs, dim=1)), ys

    def _layout(self, x: Tensor) -> Tensor:
        """``x`` in the pack's memory format (channels_last if asked for)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _unscale(self) -> Tensor:
        """GradScaler's unscale per member; returns which members found inf/NaN gradients."""
        grad = self.optimizer.flat_grad
        nonfinite = (~torch.isfinite(grad)).to(torch.float32)
        found = torch.zeros(self.num_members, device=self.device).index_add_(
            0, self.optimizer.member_index, nonfinite
        )
        inv = self.loss_scale.double().reciprocal().float()
        grad.mul_(self.optimizer._full(inv).to(grad.dtype))
        return found > 0

    def _update_scale(self, skip: Tensor) -> None:
        """GradScaler.update per member: back off on overflow, grow after 2000 clean steps."""
        tracker = torch.where(skip, torch.zeros_like(self.growth_tracker), self.growth_tracker + 1)
        grow = tracker == _GROWTH_INTERVAL
        grown = self.loss_scale * _GROWTH
        grown = torch.where(torch.isfinite(grown), grown, self.loss_scale)
        self.loss_scale = torch.where(
            skip, self.loss_scale * _BACKOFF, torch.where(grow, grown, self.loss_scale)
        )
        self.growth_tracker = torch.where(grow, torch.zeros_like(tracker), tracker)

    def train_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Train epoch ``epoch`` (= :attr:`next_epoch`) of every member; one record per member.

        The records are ``Trainer.train_epoch``'s (epoch, train_loss, lr, images_per_s,
        seconds, top1_error = None) and are appended to each member's ``history``.
        """
        if not _is_int(epoch) or epoch != self.next_epoch:
            raise ValueError(
                f"epoch must be the next epoch, {self.next_epoch} (epochs are trained in order), "
                f"got {epoch!r}"
            )
        if epoch >= self.epochs:
            raise ValueError(f"all {self.epochs} epochs of the recipe are already trained")
        self.model.train()
        for m in self.members:
            m.train_loader.set_epoch(epoch)
            set_loss_epoch = getattr(m.loss_fn, "set_epoch", None)
            if callable(set_loss_epoch):
                set_loss_epoch(epoch)
        n = self.num_members
        start_step = self.step
        lrs = [[self.lr(i, start_step + s) for i in range(n)] for s in range(self.steps_per_epoch)]
        # Each lr as a run's own SGD holds it (lr_dtype: float32 on CUDA), then in the
        # parameters' dtype: float64 packs update exactly as their runs do on CUDA too.
        exact = torch.tensor(lrs, dtype=torch.float64)
        lr_table = exact.to(lr_dtype(self.device)).to(self.optimizer.flat.dtype).to(self.device)
        loss_sum = torch.zeros(n, device=self.device, dtype=torch.float32)
        images = 0
        start = time.perf_counter()
        bar = tqdm(
            self._batches(epoch),
            total=self.steps_per_epoch,
            desc=f"pack of {n}, epoch {epoch}",
            leave=False,
            disable=not self.progress,
        )
        for step, (x, ys) in enumerate(bar):
            _mark_step(self.compile_mode, self.device)
            with self._autocast():
                logits = self._forward(x)
            losses = torch.stack(
                [m.loss_fn(logits[i].float(), ys[i]) for i, m in enumerate(self.members)]
            )
            self.optimizer.zero_grad()
            (losses * self.loss_scale if self.scaling else losses).sum().backward()
            skip = self._unscale() if self.scaling else None
            self.optimizer.step(lr_table[step], skip)
            if skip is not None:
                self._update_scale(skip)
            self.step += 1
            loss_sum += losses.detach() * x.shape[0]
            images += x.shape[0]
        bar.close()
        if images == 0:
            raise ValueError(f"the train loaders yielded no batches in epoch {epoch}")
        mean_losses = (loss_sum / images).tolist()  # the one host sync of the epoch
        seconds = time.perf_counter() - start
        bad = [i for i, loss in enumerate(mean_losses) if not math.isfinite(loss)]
        if bad:
            raise FloatingPointError(
                f"the train loss of member(s) {bad} became {[mean_losses[i] for i in bad]} in "
                f"epoch {epoch}; lower their learning rate, check the loss inputs, or use amp='off'"
            )
        records = []
        for i, m in enumerate(self.members):
            record = {
                "epoch": epoch,
                "train_loss": mean_losses[i],
                "lr": float(self.lr(i, self.step - 1)) if self.step else m.recipe.lr,
                "images_per_s": images / seconds if seconds > 0 else None,
                "seconds": seconds,
                "top1_error": None,
            }
            m.history.append(record)
            records.append(record)
        return records

    @torch.inference_mode()
    def evaluate(self) -> list[dict[str, Any]]:
        """Evaluate every member on the test loader: ``Trainer.evaluate``'s dict per member."""
        was_training = self.model.training
        self.model.eval()
        n = self.num_members
        preds: list[list[Tensor]] = [[] for _ in range(n)]
        adjusted: list[list[Tensor]] = [[] for _ in range(n)]
        targets = []
        try:
            for x, y in self.test_loader:
                x = x.to(self.device, non_blocking=True)
                _mark_step(self.compile_mode, self.device)
                with self._autocast():
                    logits = self._forward(self._layout(x.repeat(1, n, 1, 1)))
                top = logits.argmax(dim=2)
                for i, m in enumerate(self.members):
                    preds[i].append(top[i])
                    if m.posthoc_tau is not None:
                        shifted = posthoc_logit_adjustment(
                            logits[i].float(), m.train_counts, m.posthoc_tau
                        )
                        adjusted[i].append(shifted.argmax(dim=1))
                targets.append(y.to(self.device, non_blocking=True))
        finally:
            self.model.train(was_training)
        if not targets:
            raise ValueError("test_loader yielded no batches; check the test set")
        target = torch.cat(targets)
        evaluations = []
        for i, m in enumerate(self.members):
            confusion = confusion_matrix(torch.cat(preds[i]), target, self.num_classes)
            evaluation = summarize(confusion, m.train_counts)
            if adjusted[i]:
                posthoc = confusion_matrix(torch.cat(adjusted[i]), target, self.num_classes)
                evaluation["posthoc_logit_adjusted"] = {
                    "tau": m.posthoc_tau,
                    **summarize(posthoc, m.train_counts),
                }
            m.last_evaluation = evaluation
            if m.history:
                m.history[-1]["top1_error"] = evaluation["top1_error"]
            evaluations.append(evaluation)
        return evaluations

    def fit(
        self,
        epochs: int | None = None,
        *,
        eval_every: int = 1,
        on_epoch_end: Callable[[list[dict[str, Any]]], None] | None = None,
        desc: str = "pack",
    ) -> list[list[dict[str, Any]]]:
        """Train from :attr:`next_epoch` up to ``epochs`` (default: the recipes'); evaluate
        every ``eval_every`` epochs and after the last one. Returns each member's history.

        ``on_epoch_end(records)`` gets the epoch's per-member records after each epoch (and
        its evaluation, if any): the place to save a pack checkpoint.
        """
        run_epochs(
            self.train_epoch,
            self.evaluate,
            start=self.next_epoch,
            epochs=epochs,
            limit=self.epochs,
            eval_every=eval_every,
            on_epoch_end=on_epoch_end,
            desc=desc,
            progress=self.progress,
        )
        return [m.history for m in self.members]

    # ------------------------------------------------------------------------- per member

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s model state dict in the ``resnet_cifar`` format (a copy)."""
        return self.model.member_state_dict(i)

    def member_model(self, i: int) -> ResNetCifar:
        """A new ordinary model holding a copy of member ``i``'s current weights."""
        return self.model.member_model(i)

    def member_trainer_state(self, i: int) -> dict[str, Any]:
        """Member ``i``'s state in the format of ``Trainer.state_dict()``: a Trainer built for
        the member's run can load it and train on alone (or the runner can save it as the
        run's checkpoint). Tensors are copies."""
        if not _is_int(i) or not 0 <= i < self.num_members:
            raise ValueError(f"i must be a member index in [0, {self.num_members}), got {i!r}")
        m = self.members[i]
        model = self.member_model(i)
        optimizer = build_optimizer(model, m.recipe, m.loss_type)
        scheduler = build_scheduler(optimizer, m.recipe, self.steps_per_epoch)
        params = dict(model.named_parameters())
        if self.optimizer.momentum_buffer is not None and bool(self.optimizer.initialized[i]):
            for j, (name, _) in enumerate(self.model.named_parameters()):
                view = self.optimizer.param_view(self.optimizer.momentum_buffer, j)
                buf = _member_slice(name, view, self.num_members, i)
                optimizer.state[params[name]]["momentum_buffer"] = buf.detach().clone()
        lr = self.lr(i, self.step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scheduler.last_epoch = self.step
        scheduler._step_count = self.step + 1
        scheduler._last_lr = [lr for _ in optimizer.param_groups]
        scaler: dict[str, Any] = {}
        if self.scaling:
            scaler = {
                "scale": float(self.loss_scale[i]),
                "growth_factor": _GROWTH,
                "backoff_factor": _BACKOFF,
                "growth_interval": _GROWTH_INTERVAL,
                "_growth_tracker": int(self.growth_tracker[i]),
            }
        return {
            "format": 1,
            "recipe": m.recipe.to_dict(),
            "loss_type": m.loss_type,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler,
            "history": copy.deepcopy(m.history),
            "last_evaluation": copy.deepcopy(m.last_evaluation),
        }

    def load_member_states(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Restore every member from a ``Trainer.state_dict()``-format state (one per member,
        e.g. from :meth:`member_trainer_state` or an ordinary run's checkpoint). All must have
        trained the same number of steps; a pack resumed this way trains on bit for bit as
        the pack that wrote the states."""
        states = list(states)
        if len(states) != self.num_members:
            raise ValueError(f"states must hold {self.num_members} states (one per member)")
        steps = [int(s["scheduler"]["last_epoch"]) for s in states]
        _check_same_value("scheduler.last_epoch (iterations trained)", steps)
        shared = {}
        for i, (m, state) in enumerate(zip(self.members, states, strict=True)):
            self._check_member_state(i, m, state)
            for name, tensor in state["model"].items():
                if name.endswith("num_batches_tracked"):
                    shared.setdefault(name, []).append(int(tensor))
        for name, counts in shared.items():
            _check_same_value(f"model.{name}", counts)
        with torch.no_grad():
            for i, (m, state) in enumerate(zip(self.members, states, strict=True)):
                views = self.model.member_tensors(i)
                for name, tensor in state["model"].items():
                    views[name].copy_(tensor)
                self._load_member_momentum(i, m, state["optimizer"])
                if self.scaling and state["scaler"]:
                    self.loss_scale[i] = float(state["scaler"]["scale"])
                    self.growth_tracker[i] = int(state["scaler"]["_growth_tracker"])
                m.history = copy.deepcopy(list(state["history"]))
                m.last_evaluation = copy.deepcopy(state["last_evaluation"])
        self.step = steps[0]

    def _check_member_state(self, i: int, m: PackMember, state: Mapping[str, Any]) -> None:
        """ValueError unless ``state`` is a Trainer state of member ``i``'s run."""
        keys = ("recipe", "loss_type", "model", "optimizer", "scheduler", "scaler", "history")
        missing = [k for k in ("format", *keys, "last_evaluation") if k not in state]
        if missing:
            raise ValueError(f"states[{i}] is missing {missing}; pass Trainer.state_dict()s")
        if Recipe.from_dict(state["recipe"]) != m.recipe or state["loss_type"] != m.loss_type:
            raise ValueError(
                f"states[{i}] is for {state['loss_type']!r} with recipe {state['recipe']}, but "
                f"member {i} trains {m.loss_type!r} with {m.recipe.to_dict()}"
            )
        saved = state["scheduler"].get("lr_lambdas", [None])[0]
        current = self._factors[i].settings()
        if saved is None or {k: saved.get(k) for k in current} != current:
            raise ValueError(
                f"states[{i}] has the lr schedule {saved}, member {i} {current}; the train "
                "loader must have the same number of batches per epoch"
            )

    def _load_member_momentum(self, i: int, m: PackMember, saved: Mapping[str, Any]) -> None:
        """Copy an SGD state dict's momentum buffers into member ``i``'s part of the pack's."""
        opt = self.optimizer
        buffers = {int(k): v.get("momentum_buffer") for k, v in saved["state"].items()}
        has = [b is not None for b in buffers.values()]
        if opt.momentum_buffer is None or not any(has):
            opt.initialized[i] = False
            return
        groups = build_optimizer(m.model, m.recipe, m.loss_type).param_groups
        order = [p for g in groups for p in g["params"]]
        names = {id(p): name for name, p in m.model.named_parameters()}
        by_name = {names[id(order[k])]: b for k, b in buffers.items() if b is not None}
        fused_names = [name for name, _ in self.model.named_parameters()]
        if set(by_name) != set(fused_names):
            raise ValueError(f"states[{i}] lacks momentum buffers for some parameters")
        for j, name in enumerate(fused_names):
            view = _member_slice(name, opt.param_view(opt.momentum_buffer, j), self.num_members, i)
            view.copy_(by_name[name])
        opt.initialized[i] = True

    # ------------------------------------------------------------------------- checkpoints

    def _member_settings(self) -> list[dict[str, Any]]:
        """What identifies each member in a checkpoint."""
        return [
            {
                "name": m.name,
                "recipe": m.recipe.to_dict(),
                "loss_type": m.loss_type,
                "posthoc_tau": m.posthoc_tau,
            }
            for m in self.members
        ]

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint of the whole pack (tensors and plain Python; ``weights_only``-loadable).

        Tensors are shared with the live objects: save the dict or deep-copy it before
        training on.
        """
        return {
            "format": 1,
            "kind": "pack",
            "members": [
                {
                    **s,
                    "history": copy.deepcopy(m.history),
                    "last_evaluation": copy.deepcopy(m.last_evaluation),
                }
                for s, m in zip(self._member_settings(), self.members, strict=True)
            ],
            "steps_per_epoch": self.steps_per_epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loss_scale": self.loss_scale,
            "growth_tracker": self.growth_tracker,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a pack of the same members (recipes, methods, order)."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(
                f"state is missing {missing}; pass a dict from PackTrainer.state_dict()"
            )
        if state["format"] != 1 or state["kind"] != "pack":
            raise ValueError(
                f"unsupported checkpoint format {state['format']!r}/{state['kind']!r} "
                "(expected 1/'pack')"
            )
        keys = ("name", "recipe", "loss_type", "posthoc_tau")
        saved = [{k: s[k] for k in keys} for s in state["members"]]
        current = self._member_settings()
        if len(saved) != len(current):
            raise ValueError(
                f"checkpoint has {len(saved)} members but this pack has {len(current)}"
            )
        for i, (a, b) in enumerate(zip(saved, current, strict=True)):
            if a != b:
                diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
                raise ValueError(f"checkpoint member {i} differs from this pack's: {diff}")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise ValueError(
                f"checkpoint has {state['steps_per_epoch']} batches per epoch, this pack "
                f"{self.steps_per_epoch}; the loaders must have the same length"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loss_scale = state["loss_scale"].to(self.device).clone()
        self.growth_tracker = state["growth_tracker"].to(self.device).clone()
        self.step = int(state["step"])
        for m, s in zip(self.members, state["members"], strict=True):
            m.history = copy.deepcopy(list(s["history"]))
            m.last_evaluation = copy.deepcopy(s["last_evaluation"])


def _bind(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Make ``model``'s parameters and buffers the given views (names as in its state dict)."""
    for name, tensor in tensors.items():
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if attr in module._parameters:
            module._parameters[attr].data = tensor
        else:
            module._buffers[attr] = tensor

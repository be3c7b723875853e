"""ResNet for CIFAR (He et al. 2016, Sec. 4.2), the backbone of the paper's CIFAR-LT experiments.

ResNet-``6n+2`` v1 (post-activation): a 3×3 conv stem, three stages of ``n`` basic blocks with
widths ``w, 2w, 4w`` (stride 2 at the start of stages 2 and 3), global average pooling and a
linear head named ``fc``. ResNet-32 (``n = 5``, ``w = 16``) has about 0.46M parameters.

The shortcut is He et al.'s parameter-free "option A": the identity, or, where a block halves
the resolution and doubles the width, a spatial subsampling followed by zero-padding of the new
channels. Two subsampling rules are available (``shortcut=``):

- ``"avgpool"`` (default): 2×2 average pooling with stride 2, as in the authors' TensorFlow
  code (``model_base.py``, ``_residual_v1``), which produced the paper's Table 2.
- ``"subsample"``: keep every other pixel, ``x[:, :, ::2, ::2]`` (He et al.; also the LDAM
  authors' code).

Two initializations (``init=``): ``"glorot"`` (default), Glorot-uniform kernels for every conv
and the head as the official code's TF1 ``tf.layers`` defaults, or ``"kaiming"``, Kaiming-normal
(fan-out) kernels as in most PyTorch CIFAR code. BatchNorm starts at γ = 1, β = 0 and the head
bias at 0 either way. The head (``head=``) is a linear layer, or for LDAM a cosine head
(:class:`NormedLinear`: normalized features times normalized class vectors, no bias).

The model works on any input of at least 8×8 pixels (CIFAR 32×32, Fashion-MNIST 28×28, small
synthetic images) and with ``torch.channels_last`` memory format. It expects already normalized
input (the data pipeline maps uint8 pixels to ``x/128 - 1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cbnotes.losses import prior_bias
from cbnotes.methods import HEADS, get_method

SHORTCUTS = ("avgpool", "subsample")
INITS = ("glorot", "kaiming")

__all__ = [
    "HEADS",
    "INITS",
    "SHORTCUTS",
    "BasicBlock",
    "NormedLinear",
    "ResNetCifar",
    "classifier_stats",
    "init_head_for_loss",
    "resnet_cifar",
]

BN_MOMENTUM = 0.1  # PyTorch convention; equals the official code's TF batch-norm decay 0.9
BN_EPS = 1e-5


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution without bias (BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _bn(planes: int) -> nn.BatchNorm2d:
    """BatchNorm with the recipe's momentum 0.1 and eps 1e-5."""
    return nn.BatchNorm2d(planes, eps=BN_EPS, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with a parameter-free option-A shortcut (He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.stride = stride
        self.shortcut = shortcut
        self.pad_channels = planes - in_planes

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or subsample + zero-pad the new channels (half before, half after)."""
        if self.stride != 1:
            if self.shortcut == "avgpool":
                # TF 'SAME' pooling: a trailing odd row/column is averaged alone.
                x = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
            else:
                x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            before = self.pad_channels // 2
            x = F.pad(x, (0, 0, 0, 0, before, self.pad_channels - before))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class NormedLinear(nn.Module):
    """Cosine head: ``normalize(x) @ normalize(W)ᵀ``, logits in [-1, 1], no bias (LDAM).

    ``weight`` has shape (out_features, in_features) like ``nn.Linear``'s, and starts as random
    unit-norm rows (uniform in [-1, 1], then normalized), as in the LDAM authors' code.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in [-1, 1], each class vector scaled to unit length."""
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each feature vector with each class vector."""
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class ResNetCifar(nn.Module):
    """CIFAR ResNet v1: stem, three stages of basic blocks, global average pool, ``fc``."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int,
        in_channels: int,
        base_width: int,
        shortcut: str,
        init: str = "glorot",
        head: str = "linear",
    ) -> None:
        super().__init__()
        widths = (base_width, 2 * base_width, 4 * base_width)
        self.conv1 = _conv3x3(in_channels, base_width)
        self.bn1 = _bn(base_width)
        stages = []
        in_planes = base_width
        for index, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_planes, width, stride, shortcut))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        linear = head == "linear"
        self.fc = (
            nn.Linear(widths[-1], num_classes) if linear else NormedLinear(widths[-1], num_classes)
        )
        self.num_classes = num_classes
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv and linear kernels by ``init`` (Glorot-uniform or Kaiming-normal), BN γ = 1 and
        β = 0, head bias 0; a cosine head keeps its own unit-norm initialization."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                if self.init == "glorot":
                    nn.init.xavier_uniform_(module.weight)
                elif isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, NormedLinear):
                module.reset_parameters()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the globally average-pooled output of stage 3, (B, 4w)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.fc(self.features(x))


def _check_positive_int(name: str, value: int, minimum: int, hint: str) -> None:
    """Raise ValueError unless ``value`` is an int ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")


def resnet_cifar(
    depth: int = 32,
    num_classes: int = 10,
    in_channels: int = 3,
    base_width: int = 16,
    *,
    shortcut: str = "avgpool",
    init: str = "glorot",
    head: str = "linear",
) -> ResNetCifar:
    """Build the CIFAR ResNet-``depth`` v1 of He et al. (2016), depth = 6n + 2 (ResNet-32: n=5).

    The defaults build it as the paper's official code does (average-pool shortcut,
    Glorot-uniform init, linear head); see the module docstring for the alternatives.
    """
    _check_positive_int("depth", depth, 8, "use 6n+2: 8, 14, 20, 32, 44, 56, 110")
    if (depth - 2) % 6:
        raise ValueError(
            f"depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}; "
            "pick the nearest such depth (the paper uses 32)"
        )
    _check_positive_int("num_classes", num_classes, 2, "a classifier needs at least 2 classes")
    _check_positive_int("in_channels", in_channels, 1, "use 3 for RGB, 1 for grayscale")
    _check_positive_int("base_width", base_width, 1, "the paper uses 16")
    for name, value, choices in (
        ("shortcut", shortcut, SHORTCUTS),
        ("init", init, INITS),
        ("head", head, HEADS),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return ResNetCifar((depth - 2) // 6, num_classes, in_channels, base_width, shortcut, init, head)


def init_head_for_loss(model: nn.Module, loss_type: str) -> nn.Module:
    """Give ``model.fc`` the head initialization of method ``loss_type``; in place.

    Methods with a prior bias (sigmoid, focal) start the head bias at -log(C-1) (see
    :func:`cbnotes.losses.prior_bias`); the head's kind must match the method's (linear or
    cosine, :data:`cbnotes.methods.METHODS`).
    """
    method = get_method(loss_type)
    fc = getattr(model, "fc", None)
    kind = {nn.Linear: "linear", NormedLinear: "cosine"}.get(type(fc))
    if kind is None:
        raise ValueError("model must have a head named `fc` (build it with resnet_cifar)")
    if kind != method.head:
        raise ValueError(
            f"method {loss_type!r} needs a {method.head} head but model.fc is {kind}; "
            f"build the model with resnet_cifar(..., head={method.head!r})"
        )
    if method.prior_bias:
        if fc.bias is None:
            raise ValueError(f"method {loss_type!r} needs a head bias, but model.fc has none")
        with torch.no_grad():
            fc.bias.fill_(prior_bias(fc.out_features))
    return model


def classifier_stats(model: nn.Module) -> dict[str, list[float]]:
    """Per-class L2 norm of the head's weight rows and its bias (frequent classes grow larger)."""
    fc = getattr(model, "_orig_mod", model).fc  # unwrap torch.compile
    with torch.no_grad():
        norms = fc.weight.detach().float().norm(dim=1).cpu().tolist()
        bias = fc.bias.detach().float().cpu().tolist() if fc.bias is not None else []
    return {"weight_norms": norms, "bias": bias}

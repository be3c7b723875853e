"""Device-resident input pipeline: the paper's augmentation as batched tensor ops (Sec. 5.2).

The whole (small) training set lives on the training device as uint8. Each batch is gathered,
augmented (zero-pad 4, random 32×32 crop, random horizontal flip) and normalized (x/128 - 1)
there, with no worker processes and no host synchronisation. The shuffle and augmentation of an
epoch are a pure function of (seed, epoch), so a run resumed at epoch k sees exactly the batches
an uninterrupted run would (on the same device type).

With ``class_weights`` (one weight w_j per class, e.g. from
:func:`cbnotes.effective.class_weights`) the loader re-samples instead of shuffling: each epoch
draws as many images as the training set has, with replacement, image i with probability
∝ w_{y_i}, so class j makes up a share n_j·w_j / Σ_k n_k·w_k of the epoch (class-balanced
re-sampling: uniform over classes for w ∝ 1/n).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from cbnotes.data import ImageSet


def _check_int(name: str, value: int, minimum: int, hint: str) -> int:
    """Return ``value`` if it is an int ≥ ``minimum``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; {hint}")
    return value


def _check_uint8_batch(images: Tensor) -> None:
    """Raise ValueError unless ``images`` is a uint8 tensor of shape (B, C, H, W)."""
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        dtype = images.dtype if isinstance(images, Tensor) else None
        raise ValueError(
            f"images must be a torch.uint8 tensor of shape (B, C, H, W), got {got} {dtype}; "
            "augment and normalize raw uint8 pixels"
        )


def augment_batch(
    images: Tensor, *, pad: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Zero-pad ``pad``, random crop back to H×W, random horizontal flip (p = 0.5), per image."""
    _check_uint8_batch(images)
    _check_int("pad", pad, 0, "the paper pads 4 pixels on each side")
    b, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=device)
    flip = torch.randint(0, 2, (b, 1), generator=generator, device=device).bool()
    # Output pixel (i, j) reads input pixel (oy + i - pad, ox + j - pad); a flip mirrors j.
    rows = offsets[:, :1] - pad + torch.arange(h, device=device)
    cols = offsets[:, 1:] - pad + torch.arange(w, device=device)
    cols = torch.where(flip, cols.flip(1), cols)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]
    out = images.reshape(b, c, h * w).gather(2, flat.reshape(b, 1, h * w).expand(b, c, h * w))
    return out.reshape(b, c, h, w) * inside[:, None]


def normalize(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Map uint8 pixels to x/128 - 1 (the official input scaling), float32 unless ``dtype``.

    The values are exact in any floating dtype (multiples of 1/128 in [-1, 1)).
    """
    _check_uint8_batch(images)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return images.to(dtype).div_(128.0).sub_(1.0)


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed that is a pure function of (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class DeviceLoader:
    """Batches (x normalized, float32 unless ``dtype``; y int64) of an ImageSet on the device."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str,
        seed: int = 0,
        pad: int = 4,
        drop_last: bool = False,
        channels_last: bool = False,
        class_weights: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Move ``data`` to ``device``; ``train`` turns on per-epoch shuffle and augmentation,
        and ``class_weights`` (training only) per-epoch re-sampling by class. ``dtype`` is the
        dtype of the images it yields (e.g. float64 for exactness tests)."""
        if not isinstance(data, ImageSet):
            raise ValueError(f"data must be a cbnotes.data.ImageSet, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("data must hold at least one image; check the dataset and its counts")
        self.batch_size = _check_int("batch_size", batch_size, 1, "the paper uses 128")
        self.seed = _check_int("seed", seed, 0, "use any non-negative integer")
        self.pad = _check_int("pad", pad, 0, "the paper pads 4 pixels on each side")
        self.train = bool(train)
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.epoch = 0
        self.sample_weights = self._sample_weights(class_weights)
        if self.drop_last and len(self) == 0:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(data)} images with drop_last=True, "
                "so an epoch would be empty; lower batch_size or set drop_last=False"
            )

    def _sample_weights(self, class_weights: torch.Tensor | None) -> Tensor | None:
        """Per-image sampling weights w_{y_i} on the device (None: a plain shuffle)."""
        if class_weights is None:
            return None
        if not self.train:
            raise ValueError("class_weights re-sample the training set; leave them None for test")
        num_classes = self.data.num_classes
        weights = torch.as_tensor(class_weights, dtype=torch.float64)
        if weights.shape != (num_classes,) or not bool(
            torch.isfinite(weights).all() and (weights >= 0).all() and (weights > 0).any()
        ):
            raise ValueError(
                f"class_weights must hold {num_classes} finite weights >= 0, not all 0 (one per "
                f"class); got {class_weights!r}"
            )
        return weights.to(self.device)[self.data.labels.long()]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle and augmentation the next iteration replays."""
        self.epoch = _check_int("epoch", epoch, 0, "epochs count from 0")

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def generator(self) -> torch.Generator:
        """A generator on the loader's device seeded from (seed, epoch)."""
        return torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, self.epoch))

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the batches of the current epoch, all on the loader's device."""
        images, labels = self.data.images, self.data.labels
        if self.train:
            g = self.generator()
            n = len(self.data)
            if self.sample_weights is None:
                order = torch.randperm(n, generator=g, device=self.device)
            else:
                order = torch.multinomial(self.sample_weights, n, replacement=True, generator=g)
        for k in range(len(self)):
            lo, hi = k * self.batch_size, (k + 1) * self.batch_size
            if self.train:
                idx = order[lo:hi]
                x = augment_batch(images.index_select(0, idx), pad=self.pad, generator=g)
                y = labels.index_select(0, idx)
            else:
                x, y = images[lo:hi], labels[lo:hi]
            x = normalize(x, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

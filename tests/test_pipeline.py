"""Device-resident pipeline: the paper's pad-4 / random-crop / flip augmentation and x/128 - 1."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from cbnotes.data import ImageSet
from cbnotes.pipeline import DeviceLoader, augment_batch, epoch_seed, normalize

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def reference_augment(
    image: torch.Tensor, top: int, left: int, flip: bool, pad: int
) -> torch.Tensor:
    """torchvision: zero-pad, crop the original size at (top, left), optionally flip."""
    h, w = image.shape[-2:]
    out = TF.crop(TF.pad(image, [pad], fill=0), top, left, h, w)
    return TF.horizontal_flip(out) if flip else out


def matching_draws(image: torch.Tensor, out: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flip) whose torchvision reference equals ``out``."""
    return [
        (top, left, flip)
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
        for flip in (False, True)
        if torch.equal(reference_augment(image, top, left, flip, pad), out)
    ]


def coordinate_images(n: int, size: int = 32) -> torch.Tensor:
    """Images whose channel 0 holds row + 1 and channel 1 holds column + 1 (0 = padding)."""
    grid = torch.arange(1, size + 1, dtype=torch.uint8)
    one = torch.stack([grid[:, None].expand(size, size), grid[None, :].expand(size, size)])
    return one.expand(n, 2, size, size).contiguous()


def decode_draws(out: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, flip) of each augmented coordinate image, read at its always-valid centre."""
    c = out.shape[-1] // 2
    row, col, right = out[:, 0, c, c].long(), out[:, 1, c, c].long(), out[:, 1, c, c + 1].long()
    flip = right < col
    top = row - 1 - c + pad
    left = torch.where(flip, col - 1 - (out.shape[-1] - 1 - c), col - 1 - c) + pad
    return top, left, flip


def test_augment_keeps_shape_dtype_device_and_input():
    """Output is uint8 of the input's shape and device; the input is not modified."""
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    before = images.clone()
    out = augment_batch(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    assert out.dtype == torch.uint8
    assert out.device == images.device
    assert torch.equal(images, before)


def test_augment_is_pad_crop_flip_of_torchvision():
    """Each output equals exactly one torchvision pad-4 + crop (+ flip) of its input image."""
    images = torch.randint(
        0, 256, (48, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    out = augment_batch(images, pad=4, generator=torch.Generator().manual_seed(2))
    draws = [matching_draws(img, o, 4) for img, o in zip(images, out, strict=True)]
    assert all(len(d) == 1 for d in draws)
    assert len({d[0] for d in draws}) > 24  # many different crops, not one repeated draw
    top, left, flip = decode_draws(
        augment_batch(coordinate_images(48), pad=4, generator=torch.Generator().manual_seed(2)), 4
    )
    assert [
        (t, lft, f) for t, lft, f in zip(top.tolist(), left.tolist(), flip.tolist(), strict=True)
    ] == [d[0] for d in draws]


def test_augment_crops_and_flips_are_uniform():
    """Over 16,200 draws each of the 9×9 offsets × 2 flips appears about 100 times (chi-square)."""
    pad, per_cell = 4, 100
    cells = (2 * pad + 1) ** 2 * 2
    out = augment_batch(
        coordinate_images(cells * per_cell), pad=pad, generator=torch.Generator().manual_seed(0)
    )
    top, left, flip = decode_draws(out, pad)
    assert top.min() >= 0
    assert top.max() <= 2 * pad
    assert left.min() >= 0
    assert left.max() <= 2 * pad
    cell = (top * (2 * pad + 1) + left) * 2 + flip.long()
    counts = torch.bincount(cell, minlength=cells).double()
    assert counts.numel() == cells
    assert counts.sum() == cells * per_cell
    assert counts.min() > 0
    chi2 = ((counts - per_cell) ** 2 / per_cell).sum().item()
    # 161 degrees of freedom: mean 161, sd 18; 270 is p < 1e-9. A fixed crop would give ~1.6e6.
    assert chi2 < 270
    assert abs(flip.double().mean().item() - 0.5) < 0.02


def test_augment_follows_the_generator():
    """The same generator seed gives the same batch; another seed a different one."""
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = augment_batch(images, generator=torch.Generator().manual_seed(5))
    b = augment_batch(images, generator=torch.Generator().manual_seed(5))
    c = augment_batch(images, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert augment_batch(images).shape == images.shape  # global generator when none is given


def test_pad_zero_only_flips():
    """With pad = 0 every output is its input or its mirror image, and both occur."""
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    out = augment_batch(images, pad=0, generator=torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored)
    assert same.any()
    assert mirrored.any()


def test_augment_rejects_bad_input():
    """Float images and negative padding raise ValueError naming the argument."""
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="pad"):
        augment_batch(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), pad=-1)


def test_normalize_is_x_over_128_minus_1():
    """Pixel 0 → -1, 128 → 0, 255 → 0.9921875, as float32."""
    x = normalize(torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1))
    assert x.dtype == torch.float32
    assert x.flatten().tolist() == [-1.0, 0.0, 0.9921875]
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 3, 2, 2))


def unique_label_set(n: int = 300, size: int = 8) -> ImageSet:
    """n random images, each its own class, so labels identify samples."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n), tuple(str(i) for i in range(n)))


def collect(loader: DeviceLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of one epoch, concatenated."""
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_eval_loader_is_ordered_and_unaugmented():
    """train=False yields every image in order, normalized, with batch_size-sized batches."""
    data = unique_label_set()
    loader = DeviceLoader(data, 128, train=False, device="cpu")
    assert len(loader) == 3
    batches = list(loader)
    assert [len(y) for _, y in batches] == [128, 128, 44]
    x, y = collect(loader)
    assert torch.equal(y, data.labels)
    assert torch.equal(x, normalize(data.images))


def test_train_loader_covers_every_sample_once_per_epoch():
    """Each epoch is a permutation of the data; with pad = 0 each image is itself or mirrored."""
    data = unique_label_set()
    loader = DeviceLoader(data, 128, train=True, device="cpu", pad=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        x, y = collect(loader)
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert torch.equal(torch.sort(y).values, torch.arange(len(data)))
        assert not torch.equal(y, torch.arange(len(data)))  # shuffled
        source = normalize(data.images[y])
        same = (x == source).flatten(1).all(1)
        assert torch.all(same | (x == source.flip(-1)).flatten(1).all(1))


def test_drop_last_and_batch_count():
    """len() counts batches: ceil(N/B), or floor(N/B) with drop_last."""
    data = unique_label_set(300)
    assert len(DeviceLoader(data, 128, train=True, device="cpu")) == 3
    loader = DeviceLoader(data, 128, train=True, device="cpu", drop_last=True)
    assert len(loader) == 2
    assert [len(y) for _, y in loader] == [128, 128]


def test_epoch_randomness_is_a_pure_function_of_seed_and_epoch():
    """A loader resumed at epoch 2 replays the batches of an uninterrupted run's epoch 2."""
    data = unique_label_set()
    run = DeviceLoader(data, 64, train=True, device="cpu", seed=3)
    epochs = []
    for epoch in range(3):
        run.set_epoch(epoch)
        epochs.append(collect(run))
    resumed = DeviceLoader(data, 64, train=True, device="cpu", seed=3)
    resumed.set_epoch(2)
    x, y = collect(resumed)
    assert torch.equal(x, epochs[2][0])
    assert torch.equal(y, epochs[2][1])
    assert not torch.equal(epochs[1][1], epochs[2][1])
    other = DeviceLoader(data, 64, train=True, device="cpu", seed=4)
    other.set_epoch(2)
    assert not torch.equal(collect(other)[1], y)
    assert len({epoch_seed(s, e) for s in range(20) for e in range(20)}) == 400


def test_channels_last_layout():
    """channels_last=True yields channels-last float batches with the same values."""
    data = unique_label_set(50)
    plain = next(iter(DeviceLoader(data, 16, train=False, device="cpu")))[0]
    x = next(iter(DeviceLoader(data, 16, train=False, device="cpu", channels_last=True)))[0]
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, plain)


def test_loader_rejects_bad_arguments():
    """Bad batch sizes, pads, seeds and epochs raise ValueError naming the argument."""
    data = unique_label_set(10)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(data, 0, train=True, device="cpu")
    with pytest.raises(ValueError, match="pad"):
        DeviceLoader(data, 4, train=True, device="cpu", pad=-1)
    with pytest.raises(ValueError, match="seed"):
        DeviceLoader(data, 4, train=True, device="cpu", seed=-1)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(data, 11, train=True, device="cpu", drop_last=True)
    with pytest.raises(ValueError, match="ImageSet"):
        DeviceLoader(data.images, 4, train=True, device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch"):
        DeviceLoader(data, 4, train=True, device="cpu").set_epoch(-1)


@CUDA
def test_cuda_loader_stays_on_device_without_host_sync():
    """On CUDA, batches are on the device and an epoch runs with no host synchronisation."""
    data = unique_label_set(1000, 32)
    loader = DeviceLoader(data, 128, train=True, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(x.is_cuda and y.is_cuda for x, y in batches)
    y = torch.cat([y for _, y in batches]).cpu()
    assert torch.equal(torch.sort(y).values, torch.arange(1000))
    cpu_images = data.images[:64]
    out = augment_batch(cpu_images.cuda(), generator=torch.Generator("cuda").manual_seed(0)).cpu()
    assert all(len(matching_draws(i, o, 4)) == 1 for i, o in zip(cpu_images, out, strict=True))

"""Throughput of the device-resident pipeline vs a torchvision DataLoader with PIL transforms.

Both pipelines apply the paper's augmentation (pad 4, random 32×32 crop, horizontal flip,
x/128 - 1) to the same synthetic CIFAR-sized uint8 images. Reported, in one run:

- pipeline only: images/s of producing batches on the device (no model);
- training: images/s of SGD steps of the same ResNet fed by each pipeline.

Ratios are DeviceLoader / DataLoader. Example:

    python benchmarks/bench_pipeline.py --depth 32 --steps 100 --device cuda --json bench.json
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cbnotes._files import write_json_atomic as write_json
from cbnotes.data import ImageSet
from cbnotes.models import resnet_cifar
from cbnotes.pipeline import DeviceLoader
from cbnotes.training import synchronize


class PilDataset(Dataset):
    """uint8 HWC images through a PIL transform, the classic torchvision way."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        """Keep the arrays and the transform."""
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        """Number of images."""
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Transformed image i and its label."""
        return self.transform(self.images[i]), int(self.labels[i])


def pil_transform() -> T.Compose:
    """ToPILImage → RandomCrop(32, padding=4) → RandomHorizontalFlip → ToTensor → x/128 - 1."""
    scale = 128 / 255  # ToTensor gives x/255; (x/255 - 128/255) / (128/255) = x/128 - 1
    return T.Compose(
        [
            T.ToPILImage(),
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((scale,) * 3, (scale,) * 3),
        ]
    )


def device_batches(loader: DeviceLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of a DeviceLoader, epoch after epoch."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def host_batches(
    loader: DataLoader, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of a DataLoader, copied to ``device``."""
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def timed(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    step: Callable[[torch.Tensor, torch.Tensor], None],
    steps: int,
    warmup: int,
    device: torch.device,
) -> float:
    """Images per second of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(*next(batches))
    synchronize(device)
    images, start = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        step(x, y)
        images += x.shape[0]
    synchronize(device)
    return images / (time.perf_counter() - start)


def train_step(depth: int, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """An SGD step (lr 0.1, momentum 0.9, wd 2e-4) of a freshly seeded ResNet-``depth``."""
    torch.manual_seed(0)
    model = resnet_cifar(depth=depth, num_classes=10, in_channels=3).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        """Forward, backward, update."""
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def no_step(x: torch.Tensor, y: torch.Tensor) -> None:
    """Consume a batch (pipeline-only timing)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=32, help="ResNet depth 6n+2 (default 32)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=10000, help="synthetic training images")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    for name in ("depth", "steps", "batch_size", "images"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.workers < 0 or args.threads < 0:
        p.error("--warmup, --workers and --threads must be >= 0")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the four measurements, print them and return them as a dict."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    data = ImageSet(images, labels, tuple(str(i) for i in range(10)))
    dev_loader = DeviceLoader(data, args.batch_size, train=True, device=device, drop_last=True)
    host_loader = DataLoader(
        PilDataset(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), pil_transform()),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    common = {"steps": args.steps, "warmup": args.warmup, "device": device}
    results: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: v for k, v in vars(args).items() if k not in ("json", "device")},
    }
    for label, step_fn in (("pipeline", lambda: no_step), ("training", None)):
        make = step_fn or (lambda: train_step(args.depth, device))
        fast = timed(device_batches(dev_loader), make(), **common)
        slow = timed(host_batches(host_loader, device), make(), **common)
        results[label] = {"device_loader": fast, "dataloader": slow, "ratio": fast / slow}
        print(
            f"{label:>9}: DeviceLoader {fast:10.0f} img/s | DataLoader({args.workers} workers, "
            f"PIL) {slow:10.0f} img/s | ratio {fast / slow:6.2f}x"
        )
    if args.json is not None:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

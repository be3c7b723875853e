"""Long-tailed datasets: CIFAR-10/100-LT, Fashion-MNIST-LT and a small synthetic set (Sec. 5.1).

The training set of each dataset is subsampled to the exponential profile
n_i = floor(n_max · (1/IF)^(i/(C-1))) (class 0 most frequent); the test set stays balanced and
complete. Files are read with torchvision's dataset classes from a data root:

1. the ``root`` argument, else
2. the environment variable ``CBNOTES_DATA``, else
3. ``~/.cache/cbnotes/data`` (the default).

Fashion-MNIST is also found in the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``, overridable with ``CBNOTES_FASHION_MNIST_DIR``); its
gzipped files are decompressed into ``<root>/FashionMNIST/raw/`` on first use, so the data
root must then be writable: if it is not, the error names the folder and ``CBNOTES_DATA``
(the files are not read from the package without being decompressed, so that every run reads
the same files through torchvision). Each idx file in ``raw/`` is checked against the size
its header promises before it is read, so a truncated file is reported as such, by path.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cbnotes._files import PlaceError, atomic_path
from cbnotes.imbalance import long_tailed_counts

DATA_ENV = "CBNOTES_DATA"
DEFAULT_ROOT = Path("~/.cache/cbnotes/data")
FASHION_MNIST_ENV = "CBNOTES_FASHION_MNIST_DIR"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SYNTHETIC_SEED = 20190601


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images (uint8, N×C×H×W), labels (int64, N) and class names, all on one device."""

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        """Check dtypes, shapes, devices and the label range."""
        if not isinstance(self.images, Tensor) or self.images.dtype != torch.uint8:
            raise ValueError("images must be a torch.uint8 tensor of shape (N, C, H, W)")
        if self.images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(self.images.shape)}")
        if not isinstance(self.labels, Tensor) or self.labels.dtype != torch.int64:
            raise ValueError("labels must be a torch.int64 tensor of shape (N,)")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match images, "
                f"got {tuple(self.labels.shape)}"
            )
        if self.labels.device != self.images.device:
            raise ValueError(
                f"images ({self.images.device}) and labels ({self.labels.device}) must be on "
                "the same device; move both with ImageSet.to(device)"
            )
        if not isinstance(self.classes, tuple) or not self.classes:
            raise ValueError("classes must be a non-empty tuple of class names")
        if self.labels.numel() and not (
            int(self.labels.min()) >= 0 and int(self.labels.max()) < len(self.classes)
        ):
            raise ValueError(f"labels must lie in [0, {len(self.classes) - 1}] (one per class)")

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes C (including classes with no images)."""
        return len(self.classes)

    def counts(self) -> list[int]:
        """Images per class, length C, in class order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def to(self, device: torch.device | str) -> ImageSet:
        """A copy of this set on ``device``."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)


@dataclass(frozen=True)
class DatasetSpec:
    """What ``load_dataset`` needs to know about a dataset.

    ``n_max`` is the head-class size of the long-tailed training set, ``test_per_class`` the
    size of each class in the balanced test set, ``source`` the torchvision dataset class that
    reads the files (or ``"generated"`` for the synthetic set).
    """

    name: str
    num_classes: int
    n_max: int
    image_shape: tuple[int, int, int]
    test_per_class: int
    source: str
    title: str  # how tables and figures name the long-tailed training set


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec("cifar10", 10, 5000, (3, 32, 32), 1000, "CIFAR10", "CIFAR-10-LT"),
    "cifar100": DatasetSpec("cifar100", 100, 500, (3, 32, 32), 100, "CIFAR100", "CIFAR-100-LT"),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", 10, 6000, (1, 28, 28), 1000, "FashionMNIST", "Fashion-MNIST-LT"
    ),
    "synthetic": DatasetSpec("synthetic", 10, 200, (3, 16, 16), 50, "generated", "synthetic-LT"),
}


def dataset_title(name: str) -> str:
    """Display name of a dataset ("fashion_mnist" -> "Fashion-MNIST-LT"); unknown names as given."""
    spec = DATASETS.get(name)
    return spec.title if spec is not None else name


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Data root: ``root``, else ``$CBNOTES_DATA``, else ``~/.cache/cbnotes/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_ROOT.expanduser()


def fashion_mnist_system_dir() -> Path:
    """Folder of the Debian ``dataset-fashion-mnist`` files (``$CBNOTES_FASHION_MNIST_DIR``)."""
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env).expanduser() if env else FASHION_MNIST_SYSTEM_DIR


def long_tailed_indices(labels: Tensor, counts: list[int], seed: int) -> Tensor:
    """Indices keeping ``counts[i]`` seeded-random images of class i, in ascending order.

    Class i keeps the first ``counts[i]`` of a random permutation of its images, drawn from one
    ``torch.Generator`` seeded with ``seed`` (the official code draws the same way, unseeded).
    """
    labels = torch.as_tensor(labels).cpu()
    if labels.dim() != 1 or labels.dtype != torch.int64:
        raise ValueError("labels must be a 1-D torch.int64 tensor")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
        raise ValueError(f"counts must be non-negative integers, got {counts!r}")
    if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < len(counts)):
        raise ValueError(
            f"labels must lie in [0, {len(counts) - 1}]: give one count per class "
            f"(got {len(counts)} counts)"
        )
    generator = torch.Generator().manual_seed(_check_seed(seed))
    available = torch.bincount(labels, minlength=len(counts)).tolist()
    short = [i for i, (n, a) in enumerate(zip(counts, available, strict=True)) if a < n]
    if short:
        i = short[0]
        raise ValueError(
            f"counts asks for {counts[i]} images of class {i} but only {available[i]} exist "
            f"(classes short of images: {short}); lower n_max or check the dataset files"
        )
    kept = []
    for i, n in enumerate(counts):
        members = torch.nonzero(labels == i).flatten()
        kept.append(members[torch.randperm(members.numel(), generator=generator)[:n]])
    return torch.sort(torch.cat(kept)).values


def load_dataset(
    name: str,
    *,
    imbalance_factor: float = 100,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    download: bool = False,
) -> tuple[ImageSet, ImageSet]:
    """(Long-tailed training set, full balanced test set) of dataset ``name`` (Sec. 5.1)."""
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    _check_seed(seed)
    spec = DATASETS[name]
    counts = long_tailed_counts(spec.n_max, spec.num_classes, imbalance_factor)
    if spec.source == "generated":
        train, test = _synthetic(spec)
    elif spec.source == "FashionMNIST":
        train, test = _read_fashion_mnist(resolve_root(root), download)
    else:
        train, test = _read_cifar(spec, resolve_root(root), download)
    keep = long_tailed_indices(train.labels, counts, seed)
    return ImageSet(train.images[keep], train.labels[keep], train.classes), test


def _check_seed(seed: int) -> int:
    """Return ``seed`` if it is a non-negative int, else raise ValueError."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def _synthetic(spec: DatasetSpec) -> tuple[ImageSet, ImageSet]:
    """Balanced train/test pools: a smooth random template per class plus pixel noise."""
    g = torch.Generator().manual_seed(SYNTHETIC_SEED)
    c, h, w = spec.image_shape
    coarse = torch.rand(spec.num_classes, c, 4, 4, generator=g)
    pattern = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")
    colour = torch.rand(spec.num_classes, c, 1, 1, generator=g)
    templates = 0.5 * colour + 0.5 * pattern

    def sample(per_class: int) -> tuple[Tensor, Tensor]:
        """Shuffled labels and their noisy template images."""
        labels = torch.arange(spec.num_classes).repeat(per_class)
        labels = labels[torch.randperm(labels.numel(), generator=g)]
        noise = 0.12 * torch.randn(labels.numel(), c, h, w, generator=g)
        pixels = (templates[labels] + noise).clamp(0, 1).mul(255).round()
        return pixels.to(torch.uint8), labels

    classes = tuple(f"class_{i}" for i in range(spec.num_classes))
    train = ImageSet(*sample(spec.n_max), classes)
    test = ImageSet(*sample(spec.test_per_class), classes)
    return train, test


def _read_cifar(spec: DatasetSpec, root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """Full CIFAR-10/100 train and test sets through torchvision (which checks MD5s)."""
    from torchvision import datasets

    cls = getattr(datasets, spec.source)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except (OSError, RuntimeError) as err:
        raise FileNotFoundError(
            f"{spec.name}: no valid {cls.base_folder}/ under the data root {root} "
            f"(looked for {root / cls.base_folder}; torchvision said: {err}). To fix: call "
            f"load_dataset({spec.name!r}, download=True) on a machine with internet, or put "
            f"the extracted '{cls.base_folder}' folder of {cls.url} under {root}, or point "
            f"root= or the {DATA_ENV} environment variable at a folder that holds it."
        ) from err
    return _from_cifar(train), _from_cifar(test)


def _from_cifar(dataset: Any) -> ImageSet:
    """ImageSet from a torchvision CIFAR dataset (HWC numpy → NCHW tensor)."""
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(dataset.targets, dtype=torch.int64)
    return ImageSet(images, labels, tuple(dataset.classes))


def _read_fashion_mnist(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    """Full Fashion-MNIST train and test sets through torchvision."""
    from torchvision import datasets

    raw = root / "FashionMNIST" / "raw"
    system = fashion_mnist_system_dir()
    from_system = all((system / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES)
    if not all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        if from_system:
            _unpack_system_files(system, raw)
        elif not download:
            raise FileNotFoundError(_fashion_mnist_missing(raw, system))
    for name in FASHION_MNIST_FILES:
        if (raw / name).is_file():
            fix = (
                f"delete it to have it decompressed again from {system}"
                if from_system
                else "delete it and load with download=True (--download) to fetch it again"
            )
            _check_idx(raw / name, raw / name, fix)
    try:
        train = datasets.FashionMNIST(str(root), train=True, download=download)
        test = datasets.FashionMNIST(str(root), train=False, download=False)
    except (OSError, RuntimeError) as err:
        if all((raw / f).is_file() for f in FASHION_MNIST_FILES):
            raise ValueError(
                f"fashion_mnist: the files in {raw} cannot be read ({err}); delete them and "
                f"load again to re-create them"
            ) from err
        raise FileNotFoundError(f"{_fashion_mnist_missing(raw, system)} ({err})") from err
    classes = tuple(datasets.FashionMNIST.classes)
    return (
        ImageSet(train.data.unsqueeze(1).contiguous(), train.targets.long(), classes),
        ImageSet(test.data.unsqueeze(1).contiguous(), test.targets.long(), classes),
    )


def _unpack_system_files(system: Path, raw: Path) -> None:
    """Decompress the Debian package's missing idx files into ``raw`` (PlaceError if it cannot
    be written, naming the folder and the environment variable to change)."""
    try:
        for f in FASHION_MNIST_FILES:
            if not (raw / f).is_file():
                _gunzip_idx(system / f"{f}.gz", raw / f)
    except PlaceError as err:
        raise PlaceError(
            f"fashion_mnist: cannot write to the data folder {raw} ({err.why}), where the "
            f"Debian files of {system} are decompressed on first use; set {DATA_ENV} (or "
            f"--data-root, root=) to a folder you can write to",
            err.why,
        ) from err


def _fashion_mnist_missing(raw: Path, system: Path) -> str:
    """Error message for missing Fashion-MNIST files: every place looked and how to fix."""
    return (
        f"fashion_mnist: files not found. Looked for {', '.join(FASHION_MNIST_FILES)} in "
        f"{raw}, and for the same names + '.gz' in {system} (Debian package "
        f"dataset-fashion-mnist; folder set by ${FASHION_MNIST_ENV}). To fix: "
        f"'apt-get install dataset-fashion-mnist', or call load_dataset('fashion_mnist', "
        f"download=True) on a machine with internet, or point root= or ${DATA_ENV} at a "
        f"folder that holds FashionMNIST/raw/."
    )


def _gunzip_idx(source: Path, target: Path) -> None:
    """Decompress an idx ``.gz`` file to ``target`` atomically, checking its header and size."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out, gzip.open(source, "rb") as src:
            try:
                shutil.copyfileobj(src, out, length=1 << 20)
            except (EOFError, gzip.BadGzipFile) as err:
                msg = f"{source} is not a valid gzip file ({err}); reinstall it"
                raise ValueError(msg) from err
        _check_idx(tmp, source, "reinstall it", "decompresses to")


def _check_idx(path: Path, source: Path, fix: str, verb: str = "has") -> None:
    """Raise ValueError unless ``path`` is a uint8 idx file whose size matches its header.

    The message names ``source`` (the file the user knows) and ends with ``fix``.
    """
    with open(path, "rb") as f:
        header = f.read(4)
        ndim = header[3] if len(header) == 4 else 0
        dims = f.read(4 * ndim)
    if header[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 3 or len(dims) < 4 * ndim:
        raise ValueError(
            f"{source} is not a uint8 idx file (bad magic number, or truncated); {fix}"
        )
    expected = 4 + 4 * ndim
    payload = 1
    for k in range(ndim):
        payload *= int.from_bytes(dims[4 * k : 4 * k + 4], "big")
    actual = path.stat().st_size
    if actual != expected + payload:
        raise ValueError(
            f"{source} {verb} {actual} bytes but its header promises {expected + payload}; "
            f"the file is truncated or corrupt, {fix}"
        )

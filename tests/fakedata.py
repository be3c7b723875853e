"""Tiny datasets written in the official on-disk formats, for tests that must run offline.

- CIFAR-10 (``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``) and CIFAR-100
  (``cifar-100-python/train, test, meta``): pickled dicts, images as uint8 rows of 3072 bytes
  (1024 red, 1024 green, 1024 blue), as on https://www.cs.toronto.edu/~kriz/cifar.html.
- Fashion-MNIST: gzipped idx files (magic 0x00000803 / 0x00000801, big-endian dims, bytes).

torchvision checks the MD5 of every CIFAR file against constants in its dataset classes; fake
files cannot match them. ``patch_cifar_checksums`` replaces those constants (class attributes
``train_list``, ``test_list`` and ``meta["md5"]``) with the MD5s of the files written here, through
pytest's ``monkeypatch`` so the change is undone after each test. Library code is untouched:
without the patch, torchvision rejects the fake files (a test checks that).
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{k}" for k in range(1, 6)],
        "test": "test_batch",
        "meta": "batches.meta",
        "label_key": "labels",
        "names_key": "label_names",
        "num_classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": "test",
        "meta": "meta",
        "label_key": "fine_labels",
        "names_key": "fine_label_names",
        "num_classes": 100,
    },
}


def class_names(kind: str) -> list[str]:
    """Made-up class names for a fake CIFAR dataset."""
    return [f"{kind}_class_{i}" for i in range(CIFAR[kind]["num_classes"])]


def shuffled_labels(per_class: int | Sequence[int], num_classes: int, seed: int) -> np.ndarray:
    """``per_class[i]`` copies of label i in a seeded random order, like the real files."""
    counts = [per_class] * num_classes if isinstance(per_class, int) else list(per_class)
    labels = np.repeat(np.arange(num_classes), counts)
    return np.random.default_rng(seed).permutation(labels)


def fake_images(n: int, row_bytes: int, seed: int, fill: str) -> np.ndarray:
    """``n`` uint8 image rows: seeded noise (``fill="random"``) or all zeros (``"zeros"``)."""
    if fill == "zeros":
        return np.zeros((n, row_bytes), dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (n, row_bytes), dtype=np.uint8)


def _dump(path: Path, obj: dict) -> str:
    """Pickle ``obj`` to ``path`` and return the file's MD5."""
    data = pickle.dumps(obj, protocol=4)
    path.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def write_cifar(
    root: Path,
    kind: str,
    train_per_class: int | Sequence[int],
    test_per_class: int,
    *,
    seed: int = 0,
    fill: str = "random",
) -> dict[str, str]:
    """Write a fake CIFAR-10/100 under ``root`` in the official format; return {file: md5}."""
    spec = CIFAR[kind]
    folder = Path(root) / spec["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    c = spec["num_classes"]
    md5s = {}
    train_labels = shuffled_labels(train_per_class, c, seed)
    train_images = fake_images(len(train_labels), 3072, seed + 1, fill)
    parts = np.array_split(np.arange(len(train_labels)), len(spec["train"]))
    for name, part in zip(spec["train"], parts, strict=True):
        entry = {
            "batch_label": name,
            spec["label_key"]: train_labels[part].tolist(),
            "data": train_images[part],
            "filenames": [f"{k}.png" for k in part],
        }
        if kind == "cifar100":
            entry["coarse_labels"] = (train_labels[part] // 5).tolist()
        md5s[name] = _dump(folder / name, entry)
    test_labels = shuffled_labels(test_per_class, c, seed + 2)
    test = {
        "batch_label": spec["test"],
        spec["label_key"]: test_labels.tolist(),
        "data": fake_images(len(test_labels), 3072, seed + 3, fill),
        "filenames": [f"test_{k}.png" for k in range(len(test_labels))],
    }
    md5s[spec["test"]] = _dump(folder / spec["test"], test)
    md5s[spec["meta"]] = _dump(folder / spec["meta"], {spec["names_key"]: class_names(kind)})
    return md5s


def read_cifar_files(root: Path, kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images N×3×32×32, labels) read straight from the fake files, without torchvision."""
    spec = CIFAR[kind]
    names = spec["train"] if split == "train" else [spec["test"]]
    images, labels = [], []
    for name in names:
        with open(Path(root) / spec["folder"] / name, "rb") as f:
            entry = pickle.load(f)
        images.append(entry["data"])
        labels.extend(entry[spec["label_key"]])
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64)


def patch_cifar_checksums(monkeypatch: pytest.MonkeyPatch, kind: str, md5s: dict[str, str]) -> None:
    """Make torchvision's CIFAR class for ``kind`` expect the MD5s of our fake files (test-only)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    spec = CIFAR[kind]
    monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n in spec["train"]])
    monkeypatch.setattr(cls, "test_list", [[spec["test"], md5s[spec["test"]]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[spec["meta"]]})


def idx_bytes(array: np.ndarray) -> bytes:
    """An uncompressed uint8 idx file: magic 0x0000080D (D = ndim), big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.tobytes()


def write_fashion_mnist_gz(
    folder: Path, train_per_class: int, test_per_class: int, *, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four gzipped Fashion-MNIST idx files into ``folder``; return the arrays."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    splits = (("train", train_per_class, seed), ("t10k", test_per_class, seed + 1))
    for prefix, per_class, split_seed in splits:
        labels = shuffled_labels(per_class, 10, split_seed).astype(np.uint8)
        # A pattern that identifies each image and compresses well: pixel = (index + row) % 256.
        images = (np.arange(len(labels))[:, None, None] + np.arange(28)[None, :, None]) % 256
        images = np.broadcast_to(images, (len(labels), 28, 28)).astype(np.uint8)
        arrays[f"{prefix}-images-idx3-ubyte"] = images
        arrays[f"{prefix}-labels-idx1-ubyte"] = labels
    for name, array in arrays.items():
        with gzip.open(folder / f"{name}.gz", "wb", compresslevel=1) as f:
            f.write(idx_bytes(array))
    return arrays

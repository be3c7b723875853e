"""Long-tailed datasets: the paper's CIFAR-LT counts through the real torchvision loaders."""

from __future__ import annotations

import gzip
import os
from urllib.error import URLError

import numpy as np
import pytest
import torch
from fakedata import (
    idx_bytes,
    patch_cifar_checksums,
    read_cifar_files,
    write_cifar,
    write_fashion_mnist_gz,
)

from cbnotes import data as cbdata
from cbnotes.data import (
    DATASETS,
    ImageSet,
    dataset_title,
    load_dataset,
    long_tailed_indices,
    resolve_root,
)
from cbnotes.imbalance import long_tailed_counts

PAPER_TOTALS = {  # Cui et al. 2019, Table 1: IF 200/100/50/20/10/1
    "cifar10": {200: 11203, 100: 12406, 50: 13996, 20: 17023, 10: 20431, 1: 50000},
    "cifar100": {200: 9502, 100: 10847, 50: 12608, 20: 15907, 10: 19573, 1: 50000},
}
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
FULL_SIZE = {"cifar10": (5000, 1000), "cifar100": (500, 100)}  # images per class: train, test


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests start without the data-location environment variables of the machine."""
    monkeypatch.delenv("CBNOTES_DATA", raising=False)
    monkeypatch.delenv("CBNOTES_FASHION_MNIST_DIR", raising=False)


@pytest.fixture(scope="session")
def full_cifar(tmp_path_factory):
    """Fake CIFAR-10 and CIFAR-100 with the real per-class sizes (about 3 s to write)."""
    root = tmp_path_factory.mktemp("cifar_full")
    md5s = {kind: write_cifar(root, kind, *FULL_SIZE[kind]) for kind in FULL_SIZE}
    return root, md5s


@pytest.fixture
def patched(full_cifar, monkeypatch):
    """The full-size fake root, with torchvision expecting the fake files' MD5s."""
    root, md5s = full_cifar
    for kind, sums in md5s.items():
        patch_cifar_checksums(monkeypatch, kind, sums)
    return root


@pytest.fixture(scope="session")
def loaded_if100(full_cifar):
    """load_dataset(kind, imbalance_factor=100, seed=0) for both CIFARs, loaded once."""
    root, md5s = full_cifar
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for kind, sums in md5s.items():
            patch_cifar_checksums(mp, kind, sums)
            out[kind] = load_dataset(kind, imbalance_factor=100, root=root, seed=0)
    return out


# --- the paper's counts ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_if100_counts_through_torchvision_loaders(loaded_if100, kind):
    """CIFAR-10-LT IF 100 keeps 12,406 images (5000 ... 50), CIFAR-100-LT IF 100 keeps 10,847."""
    train, _ = loaded_if100[kind]
    assert len(train) == PAPER_TOTALS[kind][100]
    assert train.counts() == long_tailed_counts(DATASETS[kind].n_max, train.num_classes, 100)
    if kind == "cifar10":
        assert train.counts() == CIFAR10_IF100
    assert train.counts()[-1] == DATASETS[kind].n_max // 100
    assert train.images.shape[1:] == (3, 32, 32)
    assert train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_paper_totals_for_every_imbalance_factor(full_cifar, kind):
    """Subsampling the full training labels gives the paper's totals for IF 200 ... 1."""
    _, labels = read_cifar_files(full_cifar[0], kind, "train")
    labels = torch.from_numpy(labels)
    for factor, total in PAPER_TOTALS[kind].items():
        counts = long_tailed_counts(DATASETS[kind].n_max, DATASETS[kind].num_classes, factor)
        assert long_tailed_indices(labels, counts, seed=0).numel() == total


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_test_set_is_balanced_complete_and_in_file_order(full_cifar, loaded_if100, kind):
    """The test set is the whole official test file: every image, in order, balanced."""
    _, test = loaded_if100[kind]
    images, labels = read_cifar_files(full_cifar[0], kind, "test")
    per_class = FULL_SIZE[kind][1]
    assert test.counts() == [per_class] * test.num_classes
    assert torch.equal(test.images, torch.from_numpy(images))
    assert torch.equal(test.labels, torch.from_numpy(labels))


def test_kept_images_are_the_files_images_in_ascending_index_order(full_cifar, loaded_if100):
    """Each kept image is an image of its class in the file, in ascending original index order."""
    train, _ = loaded_if100["cifar10"]
    images, labels = read_cifar_files(full_cifar[0], "cifar10", "train")
    where = {row[:16].tobytes(): k for k, row in enumerate(images.reshape(len(images), -1))}
    assert len(where) == len(images)  # random images: the first 16 bytes identify each one
    kept = np.array([where[row[:16].tobytes()] for row in train.images.flatten(1).numpy()])
    assert np.all(np.diff(kept) > 0)
    assert np.array_equal(train.labels.numpy(), labels[kept])
    assert np.array_equal(train.images.numpy(), images[kept])
    assert train.classes == tuple(f"cifar10_class_{i}" for i in range(10))


def test_seeded_subset_is_reproducible_and_seed_dependent(patched, loaded_if100):
    """Same seed → the same images; another seed → another subset with the same counts."""
    again, _ = load_dataset("cifar10", imbalance_factor=100, root=patched, seed=0)
    first, _ = loaded_if100["cifar10"]
    assert torch.equal(again.images, first.images)
    assert torch.equal(again.labels, first.labels)
    other, _ = load_dataset("cifar10", imbalance_factor=100, root=patched, seed=1)
    assert other.counts() == first.counts()
    assert not torch.equal(other.images, first.images)
    # the head class keeps all its images whatever the seed, so the difference is in the tail
    head = first.labels == 0
    assert torch.equal(other.images[other.labels == 0], first.images[head])


# --- long_tailed_indices ---------------------------------------------------------------------


def test_long_tailed_indices_exact_counts_sorted_unique():
    """Indices are sorted, unique, and keep exactly counts[i] of class i."""
    order = torch.randperm(120, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(4).repeat(30)[order]
    idx = long_tailed_indices(labels, [30, 12, 5, 1], seed=7)
    assert torch.all(idx[1:] > idx[:-1])
    assert torch.bincount(labels[idx], minlength=4).tolist() == [30, 12, 5, 1]
    assert torch.equal(idx, long_tailed_indices(labels, [30, 12, 5, 1], seed=7))
    assert not torch.equal(idx, long_tailed_indices(labels, [30, 12, 5, 1], seed=8))


def test_long_tailed_indices_rejects_classes_short_of_images():
    """Asking for more images than a class has is an error naming the class and the counts."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"3 images of class 2 but only 1 exist"):
        long_tailed_indices(labels, [3, 2, 3], seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        long_tailed_indices(labels, [3, 2], seed=0)
    with pytest.raises(ValueError, match="seed"):
        long_tailed_indices(labels, [1, 1, 1], seed=-1)


# --- errors, integrity, data location --------------------------------------------------------


def test_missing_cifar_error_says_where_and_how(tmp_path):
    """Without files and offline, the error names the folder looked in and three fixes."""
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar100", root=tmp_path)
    message = str(info.value)
    for part in (str(tmp_path), "cifar-100-python", "download=True", "CBNOTES_DATA", "root="):
        assert part in message


def test_failed_download_becomes_the_same_clear_error(tmp_path, monkeypatch):
    """download=True on a machine without internet raises FileNotFoundError, not URLError."""
    from torchvision import datasets

    def offline(self):
        raise URLError("no network")

    monkeypatch.setattr(datasets.CIFAR10, "download", offline)
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert isinstance(info.value.__cause__, URLError)


def test_torchvision_integrity_check_is_not_bypassed(full_cifar):
    """Without the test-only checksum patch, torchvision rejects the fake files."""
    with pytest.raises(FileNotFoundError, match="corrupted"):
        load_dataset("cifar10", root=full_cifar[0])


def test_data_root_resolution(tmp_path, monkeypatch):
    """root= wins, then $CBNOTES_DATA, then ~/.cache/cbnotes/data."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_root() == tmp_path / "home" / ".cache" / "cbnotes" / "data"
    monkeypatch.setenv("CBNOTES_DATA", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"


def test_cbnotes_data_is_honoured(patched, monkeypatch):
    """load_dataset without root reads from $CBNOTES_DATA."""
    monkeypatch.setenv("CBNOTES_DATA", str(patched))
    train, test = load_dataset("cifar100", imbalance_factor=100)
    assert len(train) == PAPER_TOTALS["cifar100"][100]
    assert len(test) == 10000


def test_bad_arguments_are_rejected():
    """Unknown names, bad imbalance factors and seeds raise ValueError naming the argument."""
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("cifar-10")
    with pytest.raises(ValueError, match="imbalance_factor"):
        load_dataset("synthetic", imbalance_factor=0.5)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("synthetic", seed=1.5)


# --- Fashion-MNIST ---------------------------------------------------------------------------


def test_fashion_mnist_debian_fallback_decompresses_atomically(tmp_path, monkeypatch):
    """Gzipped idx files in the system folder are decompressed into <root>/FashionMNIST/raw/."""
    system = tmp_path / "system"
    arrays = write_fashion_mnist_gz(system, train_per_class=6000, test_per_class=7)
    monkeypatch.setenv("CBNOTES_FASHION_MNIST_DIR", str(system))
    root = tmp_path / "root"
    train, test = load_dataset("fashion_mnist", imbalance_factor=100, root=root)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(arrays)  # no temporary files left behind
    for name, array in arrays.items():
        assert (raw / name).read_bytes() == idx_bytes(array)
    assert train.counts() == long_tailed_counts(6000, 10, 100)
    assert train.images.shape[1:] == (1, 28, 28)
    assert torch.equal(test.images[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert test.counts() == [7] * 10


def test_fashion_mnist_corrupt_gzip_leaves_nothing_half_written(tmp_path, monkeypatch):
    """A truncated .gz raises ValueError and leaves no partial file in the raw folder."""
    system = tmp_path / "system"
    write_fashion_mnist_gz(system, train_per_class=3, test_per_class=2)
    full = gzip.decompress((system / "train-images-idx3-ubyte.gz").read_bytes())
    (system / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(full[:-5]))
    monkeypatch.setenv("CBNOTES_FASHION_MNIST_DIR", str(system))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_dataset("fashion_mnist", root=tmp_path / "root")
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    assert "train-images-idx3-ubyte" not in os.listdir(raw)
    assert not [f for f in os.listdir(raw) if f.endswith(".tmp")]


def test_fashion_mnist_missing_error_lists_every_place(tmp_path, monkeypatch):
    """Without files the error names the raw folder, the Debian folder and the three fixes."""
    monkeypatch.setenv("CBNOTES_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion_mnist", root=tmp_path / "root")
    message = str(info.value)
    for part in (
        str(tmp_path / "root" / "FashionMNIST" / "raw"),
        str(tmp_path / "nowhere"),
        "apt-get install dataset-fashion-mnist",
        "download=True",
        "CBNOTES_DATA",
    ):
        assert part in message


def test_a_truncated_raw_fashion_mnist_file_is_named_not_called_missing(tmp_path, monkeypatch):
    """A damaged idx file in <root>/FashionMNIST/raw is reported as truncated, by path."""
    arrays = write_fashion_mnist_gz(tmp_path / "gz", train_per_class=3, test_per_class=2)
    monkeypatch.setenv("CBNOTES_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        (raw / name).write_bytes(idx_bytes(array)[: 6 if "t10k-labels" in name else None])
    with pytest.raises(ValueError, match="truncated") as info:
        load_dataset("fashion_mnist", root=tmp_path / "root")
    assert str(info.value) == (
        f"{raw / 't10k-labels-idx1-ubyte'} is not a uint8 idx file (bad magic number, or "
        f"truncated); delete it and load with download=True (--download) to fetch it again"
    )


@pytest.mark.skipif(
    not cbdata.FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_if100_counts(tmp_path):
    """The real Fashion-MNIST (Debian package) gives floor(6000·0.01^(i/9)) per class at IF 100."""
    train, test = load_dataset("fashion_mnist", imbalance_factor=100, root=tmp_path)
    assert train.counts() == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert len(train) == 14886
    assert test.counts() == [1000] * 10
    assert train.classes[0] == "T-shirt/top"
    assert int(train.images.max()) > 0


# --- synthetic and ImageSet ------------------------------------------------------------------


def test_synthetic_is_deterministic_long_tailed_and_learnable():
    """The synthetic set is the same on every call, long-tailed, and nearest-mean separable."""
    train, test = load_dataset("synthetic", imbalance_factor=100)
    again, _ = load_dataset("synthetic", imbalance_factor=100)
    assert torch.equal(train.images, again.images)
    assert train.counts() == long_tailed_counts(200, 10, 100)
    assert test.counts() == [50] * 10
    assert train.images.shape[1:] == DATASETS["synthetic"].image_shape
    means = torch.stack([train.images[train.labels == i].float().mean(0) for i in range(10)])
    dist = (test.images.float()[:, None] - means[None]).flatten(2).pow(2).sum(-1)
    accuracy = (dist.argmin(1) == test.labels).float().mean().item()
    assert accuracy > 0.9
    assert test.images.float().std() > 20  # noisy, not constant templates


def test_imageset_counts_len_and_to():
    """counts() covers every class (zeros included); to() returns a new ImageSet."""
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    s = ImageSet(images, torch.tensor([2, 0, 2]), ("a", "b", "c"))
    assert s.counts() == [1, 0, 2]
    assert len(s) == 3
    assert s.num_classes == 3
    moved = s.to("cpu")
    assert isinstance(moved, ImageSet)
    assert moved is not s
    assert torch.equal(moved.labels, s.labels)


_U8 = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), "uint8"),
        (torch.zeros(2, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), "shape"),
        (_U8, torch.tensor([0, 1], dtype=torch.int32), "int64"),
        (_U8, torch.tensor([0]), r"shape \(2,\)"),
        (_U8, torch.tensor([0, 2]), r"\[0, 1\]"),
    ],
)
def test_imageset_rejects_bad_tensors(images, labels, message):
    """Wrong dtypes, shapes or label ranges raise ValueError saying what is expected."""
    with pytest.raises(ValueError, match=message):
        ImageSet(images, labels, ("a", "b"))


def test_imageset_is_immutable():
    """ImageSet is a frozen dataclass."""
    s = ImageSet(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), torch.tensor([0]), ("a",))
    with pytest.raises(AttributeError):
        s.classes = ("b",)  # type: ignore[misc]


def test_every_dataset_has_a_long_tailed_display_title():
    assert dataset_title("fashion_mnist") == "Fashion-MNIST-LT"
    assert dataset_title("cifar100") == "CIFAR-100-LT"
    assert all(spec.title.endswith("-LT") for spec in DATASETS.values())
    assert dataset_title("my_data") == "my_data"  # unknown names are shown as given

"""What the notebooks share: the mode, where results live, load-or-train, styled tables.

Every notebook has ``MODE = "auto"`` in its parameters cell: ``auto`` is ``full`` on a machine
with a CUDA GPU and ``cpu`` otherwise, ``smoke`` runs everything in seconds. Notebooks 04 and 05
read a study through :func:`open_study` and :meth:`Study.load`, which train only when asked
(``TRAIN = True``; the seconds-long ``smoke`` preset always) and say first how many runs that
is and about how long it takes.

Results are found by :func:`results_dir`: next to the notebook (``../results/NAME``, the
repository layout), else in the source checkout of the installed package (an editable install,
which is what the Colab install cell makes of its clone), else under ``$CBNOTES_RESULTS``.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

    from cbnotes.config import RunConfig

#: The values of a notebook's ``MODE`` parameter.
MODES: tuple[str, ...] = ("auto", "cpu", "full", "smoke")
#: Environment variable naming a folder that holds results folders (``$CBNOTES_RESULTS/NAME``).
RESULTS_ENV = "CBNOTES_RESULTS"
#: The results folder each training mode of notebooks 04 and 05 reads and writes.
STUDY_DIRS: dict[str, str] = {"cpu": "cpu-study", "full": "paper"}
#: Where smoke mode trains its three tiny runs (shared by notebooks 04 and 05).
SMOKE_DIR = Path(tempfile.gettempdir()) / "cbnotes-notebook-smoke"
#: Google Drive on Colab, and the folder under it that keeps results across sessions.
DRIVE_MOUNT = Path("/content/drive")
DRIVE_RESULTS = DRIVE_MOUNT / "MyDrive" / "cbnotes" / "results"
#: Training images per second assumed for ResNet-32 on a Colab-class GPU (a T4 with fp16):
#: a guess used only to estimate how long a GPU preset takes, not a measurement of ours.
ASSUMED_GPU_IMAGES_PER_SECOND = 4000.0


def on_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def resolve_mode(mode: str) -> str:
    """``"auto"`` -> ``"full"`` with a CUDA GPU, else ``"cpu"``; other modes as given."""
    if mode not in MODES:
        raise ValueError(
            f"MODE must be one of {MODES}, got {mode!r}: 'smoke' for a quick check, 'cpu' for "
            "the Fashion-MNIST-LT study, 'full' for the paper's CIFAR-LT runs (GPU), 'auto' to pick"
        )
    if mode != "auto":
        return mode
    import torch

    return "full" if torch.cuda.is_available() else "cpu"


def results_candidates(name: str) -> list[Path]:
    """Where a results folder called ``name`` may be, in the order :func:`results_dir` looks."""
    import cbnotes

    candidates = [
        Path.cwd().parent / "results" / name,  # next to the notebook (its folder is the cwd)
        Path(cbnotes.__file__).resolve().parents[1] / "results" / name,  # the source checkout
    ]
    if os.environ.get(RESULTS_ENV):
        candidates.append(Path(os.environ[RESULTS_ENV]).expanduser() / name)
    return candidates


def results_dir(name: str) -> Path:
    """The results folder ``name`` (e.g. "cpu-study"): the first of :func:`results_candidates`
    that exists. When none does (a study not run yet), the first one inside an existing
    ``results/`` folder, so that new runs land beside the committed ones; else ``./results/name``.
    """
    candidates = results_candidates(name)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    for candidate in candidates:
        if candidate.parent.is_dir():
            return candidate.parent.resolve() / name
    return Path.cwd() / "results" / name


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it is close by, else absolute."""
    absolute = Path(path).resolve()
    relative = os.path.relpath(absolute)
    return relative if not relative.startswith(os.path.join("..", "..")) else str(absolute)


def mount_drive_results(name: str) -> Path:
    """Mount Google Drive (Colab asks for permission); return ``MyDrive/cbnotes/results/NAME``."""
    if not on_colab():
        raise RuntimeError("USE_DRIVE = True works on Colab only; set RESULTS_DIR instead")
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount(str(DRIVE_MOUNT))
    folder = DRIVE_RESULTS / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def train_images(config: RunConfig) -> int:
    """Training images one run processes: the long-tailed training set times its epochs."""
    from cbnotes.data import DATASETS
    from cbnotes.imbalance import long_tailed_counts

    spec = DATASETS[config.dataset]
    counts = long_tailed_counts(spec.n_max, spec.num_classes, config.imbalance_factor)
    return sum(counts) * config.epochs


def _cpu_seconds_per_image() -> tuple[float, int] | None:
    """Wall seconds per training image (evaluation included) of the committed CPU study's runs
    (median over its runs), and how many runs that is; None when it cannot be read."""
    from cbnotes.results import read_result

    runs = results_dir(STUDY_DIRS["cpu"]) / "runs"
    paces = []
    for path in sorted(runs.glob("*.json")) if runs.is_dir() else []:
        record = read_result(path)
        images = sum(record["train_counts"]) * record["config"]["epochs"]
        if record.get("wall_seconds") and images:
            paces.append(record["wall_seconds"] / images)
    return (statistics.median(paces), len(paces)) if paces else None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(configs: Sequence[RunConfig], cuda: bool | None = None) -> str:
    """How much training ``configs`` are, and about how long they take here, with the source
    of the estimate (a measurement of the committed CPU study, or an assumption for a GPU)."""
    from cbnotes.presets import CPU_BASE_WIDTH, CPU_DEPTH

    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    images = sum(train_images(c) for c in configs)
    text = f"{len(configs)} runs, {images / 1e6:.1f} M training images"
    if all(c.dataset == "synthetic" for c in configs):
        return f"{text}: a few seconds"
    if cuda:
        seconds = images / ASSUMED_GPU_IMAGES_PER_SECOND
        return (
            f"{text}: about {_duration(seconds)} on one GPU at an assumed "
            f"{ASSUMED_GPU_IMAGES_PER_SECOND:,.0f} training images/s (a T4-class GPU; our guess, "
            "not a measurement)"
        )
    small = all(c.depth == CPU_DEPTH and c.base_width == CPU_BASE_WIDTH for c in configs)
    pace = _cpu_seconds_per_image() if small else None
    if pace is None:
        return f"{text}: ResNet-{max(c.depth for c in configs)} on a CPU, days; use a GPU"
    seconds_per_image, runs = pace
    return (
        f"{text}: about {_duration(images * seconds_per_image)} on 2 CPU cores at the pace of "
        f"the committed CPU study (median over its {runs} runs; a slower CPU takes up to twice "
        "as long)"
    )


@dataclass
class Study:
    """The runs a notebook shows: its presets' configs in one results folder."""

    mode: str
    presets: tuple[str, ...]
    results_dir: Path
    presets_by_mode: Mapping[str, Sequence[str]] = field(repr=False)
    study_dirs: Mapping[str, str] = field(default_factory=lambda: dict(STUDY_DIRS), repr=False)
    fallback: bool = False
    trained_now: int = 0

    @property
    def configs(self) -> list[RunConfig]:
        """The distinct runs of the presets, in preset order."""
        from cbnotes.presets import get_preset

        runs = {c.run_id: c for name in self.presets for c in get_preset(name)}
        return list(runs.values())

    def status(self) -> Counter[str]:
        """How many runs are 'finished', 'interrupted' and 'pending'."""
        from cbnotes.results import run_status

        return Counter(run_status(c, self.results_dir) for c in self.configs)

    def unfinished(self) -> list[RunConfig]:
        """The runs without a result file yet."""
        from cbnotes.results import run_status

        return [c for c in self.configs if run_status(c, self.results_dir) != "finished"]

    def load(
        self,
        train: bool = False,
        *,
        data_root: str | os.PathLike[str] | None = None,
        download: bool = False,
        progress: bool = True,
    ) -> pd.DataFrame:
        """The finished runs as :func:`cbnotes.analysis.results_for` rows; trains the unfinished
        ones first when ``train`` is True (always in smoke mode), saying how many and how long.

        Without training, and with no finished run at all outside cpu mode, it falls back to
        the committed CPU study (and says so), so that the sections below still show results.
        """
        from cbnotes.analysis import results_for
        from cbnotes.runner import run_sweep

        status, todo = self.status(), self.unfinished()
        print(
            f"{len(self.configs)} runs in preset(s) {', '.join(self.presets)}: "
            f"{status['finished']} finished, {status['interrupted']} interrupted, "
            f"{status['pending']} not started ({display_path(self.results_dir)})"
        )
        if not todo:
            print("nothing to train: every result is read from the files written by the runner")
        elif train or self.mode == "smoke":
            print(f"training now: {estimate(todo)}.")
            print("Each run is saved when it ends and checkpointed every epoch: re-run to resume.")
            run_sweep(
                todo, self.results_dir, progress=progress, data_root=data_root, download=download
            )
            self.trained_now = len(todo)
        else:
            on_drive = str(self.results_dir).startswith(str(DRIVE_MOUNT))
            hint = "; on Colab, USE_DRIVE = True keeps them" if on_colab() and not on_drive else ""
            print(f"not trained (TRAIN = False): {estimate(todo)}.")
            print(f"Set TRAIN = True to train them{hint}.")
        df = results_for(self.configs, self.results_dir)
        if df.empty and self.mode != "cpu" and not train:
            self._fall_back()
            return self.load(train=False)
        return df

    def _fall_back(self) -> None:
        """Read the committed CPU study instead (nothing is finished here yet)."""
        self.mode, self.fallback = "cpu", True
        self.presets = tuple(self.presets_by_mode["cpu"])
        self.results_dir = results_dir(self.study_dirs["cpu"])
        print(
            "No finished run to show yet: the sections below show the committed CPU study "
            f"({display_path(self.results_dir)}) instead."
        )

    def records(self) -> dict[str, dict[str, Any]]:
        """The full result record (per-class accuracy, confusion, history, ...) of every finished
        run, by run id."""
        from cbnotes.results import read_result, result_path

        out = {}
        for config in self.configs:
            path = result_path(self.results_dir, config)
            if path.exists():
                out[config.run_id] = read_result(path)
        return out


def _quiet_progress_fallback() -> None:
    """Without ipywidgets, tqdm.auto warns and draws text progress bars: keep the bars, not the
    warning (Colab and JupyterLab with ipywidgets draw widget bars)."""
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")


def open_study(
    mode: str,
    presets_by_mode: Mapping[str, Sequence[str]],
    results: str | os.PathLike[str] | None = None,
    *,
    use_drive: bool = False,
    study_dirs: Mapping[str, str] | None = None,
) -> Study:
    """The study a notebook shows in ``mode``: its presets (``presets_by_mode[mode]``) and its
    results folder (``results``, else Drive when ``use_drive`` in full mode on Colab, else
    :func:`results_dir` of the mode's study, or a temporary folder in smoke mode).

    ``study_dirs`` names the results folder of the "cpu" and "full" modes (default
    :data:`STUDY_DIRS`, the paper's losses; notebook 06 reads the methods study)."""
    dirs = {**STUDY_DIRS, **(study_dirs or {})}
    resolved = resolve_mode(mode)
    _quiet_progress_fallback()
    if use_drive and (resolved != "full" or not on_colab()):
        print("USE_DRIVE = True applies to full mode on Colab only; ignored here")
        use_drive = False
    if results is not None:
        folder = Path(results)
    elif resolved == "smoke":
        folder = SMOKE_DIR
    elif use_drive:
        folder = mount_drive_results(dirs[resolved])
    else:
        folder = results_dir(dirs[resolved])
    study = Study(resolved, tuple(presets_by_mode[resolved]), folder, presets_by_mode, dirs)
    print(
        f"MODE = {mode!r} -> {resolved}: preset(s) {', '.join(study.presets)} "
        f"({len(study.configs)} runs), results folder {display_path(folder)}"
    )
    if resolved == "full":
        import torch

        if not torch.cuda.is_available():
            print("warning: full mode without a CUDA GPU would train ResNet-32 on the CPU (days)")
        if on_colab() and not use_drive and results is None:
            print("This folder is on Colab's temporary disk: set USE_DRIVE = True to keep runs.")
    return study


def styled(
    df: pd.DataFrame,
    formats: str | Mapping[str, Any] | None = None,
    *,
    caption: str | None = None,
    hide_index: bool = True,
) -> Styler:
    """``df`` as a styled table: ``formats`` per column, or one format for its float columns
    (default "{:.2f}"), a caption, no index by default, '–' for missing values. The table's
    HTML id is a hash of what it shows (caption and formatted cells), so that re-running a
    notebook gives the same output, also where a number changes only in digits not shown."""
    styler = df.style.format(na_rep="–")
    if isinstance(formats, Mapping):
        styler = styler.format(dict(formats), na_rep="–")
    else:
        floats = df.select_dtypes("float").columns
        styler = styler.format(formats or "{:.2f}", subset=floats, na_rep="–")
    from pandas.api.types import is_numeric_dtype

    text = [c for c in df.columns if not is_numeric_dtype(df[c])]
    if text:  # words left, numbers right
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    if hide_index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    digest = hashlib.sha1(f"{caption}\n{styler.to_string()}".encode()).hexdigest()[:10]
    return styler.set_uuid(digest).set_table_styles(
        [
            {"selector": "caption", "props": "caption-side: top; text-align: left;"},
            {"selector": "th", "props": "text-align: left;"},
        ],
        overwrite=False,
    )


def color_by(values: Iterable[str], colors: Mapping[str, str]) -> list[str]:
    """CSS ``color`` declarations for a Styler column, one per value (unknown: none)."""
    return [f"color: {colors[v]}; font-weight: bold" if v in colors else "" for v in values]


def fmt_points(value: float) -> str:
    """A difference in points of error with its sign ('−3.99', '+0.03'); '–' for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.2f}".replace("-", "−")


def learning_rates(recipe: Any, steps_per_epoch: int) -> Any:
    """The learning rate of every SGD step of ``recipe`` (numpy array), from the package's own
    scheduler (:func:`cbnotes.training.build_scheduler`) stepped without training."""
    import numpy as np
    import torch

    from cbnotes.training import build_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.lr)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    lrs = []
    for _ in range(recipe.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def augmentation_demo(
    dataset: str,
    *,
    seed: int = 0,
    copies: int = 3,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> tuple[str, Any, list[Any], list[str]]:
    """The first training image of 8 classes from head to tail and ``copies`` augmented batches
    of them (:func:`cbnotes.pipeline.augment_batch`, pad 4): (data set used, originals, copies,
    class names). Without the data files it shows the synthetic set and says so."""
    import numpy as np
    import torch

    from cbnotes.data import load_dataset
    from cbnotes.pipeline import augment_batch

    try:
        train, _ = load_dataset(dataset, imbalance_factor=100, root=data_root, download=download)
    except (FileNotFoundError, OSError, RuntimeError) as err:
        print(f"{dataset} is not available here ({type(err).__name__}); showing the synthetic set")
        dataset = "synthetic"
        train, _ = load_dataset(dataset, imbalance_factor=100)
    classes = np.unique(np.linspace(0, train.num_classes - 1, 8).round().astype(int))
    first = [int(torch.nonzero(train.labels == k)[0]) for k in classes]
    originals = train.images[first]
    generator = torch.Generator().manual_seed(seed)
    augmented = [augment_batch(originals, pad=4, generator=generator) for _ in range(copies)]
    names = [train.classes[int(train.labels[i])] for i in first]
    return dataset, originals, augmented, names

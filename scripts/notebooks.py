"""Maintain the notebook series: execute, clean, and sync Colab links from pyproject.toml.

Usage (from the repository root; with no notebook given, every numbered notebook):
    python scripts/notebooks.py execute [NOTEBOOK ...]   # run in a fresh kernel, clean, save
    python scripts/notebooks.py clean [NOTEBOOK ...]     # strip volatile metadata
    python scripts/notebooks.py sync [NOTEBOOK ...]      # Colab badge + install URL
    python scripts/notebooks.py check [NOTEBOOK ...]     # exit 1 if not clean or not synced
    python scripts/notebooks.py slides [NOTEBOOK ...]    # reveal.js slides into ./slides

The public repository URL lives in one place, ``[project.urls] Repository`` in pyproject.toml;
``sync`` rewrites every notebook's Colab badge and Colab install cell from it. Run without
notebooks, ``sync`` also rewrites the README's links and its results block (from the committed
study in results/, via ``cbnotes.analysis.summary_markdown``), and ``check`` fails if either
is stale.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import tomllib

from cbnotes._files import atomic_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
INSTALL_RE = re.compile(r'"cbnotes @ git\+[^"]*"')
KEEP_NOTEBOOK_METADATA = ("kernelspec", "language_info")
KEEP_CELL_METADATA = ("tags",)


def repository_url() -> str:
    """The public repository URL from pyproject.toml's [project.urls] Repository."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        url = tomllib.load(f)["project"]["urls"]["Repository"]
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(
            f"[project.urls] Repository = {url!r} must look like https://github.com/OWNER/REPO "
            "(Colab opens notebooks from GitHub); fix it in pyproject.toml"
        )
    return url


def colab_url(notebook: Path, branch: str = "main") -> str:
    """Colab link that opens this notebook from the repository on GitHub."""
    slug = repository_url().removeprefix("https://github.com/")
    rel = notebook.resolve().relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{rel}"


def badge(notebook: Path) -> str:
    """Markdown for the 'Open in Colab' badge of this notebook."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(notebook)})"


def install_spec() -> str:
    """The pip requirement used by the Colab install cell."""
    return f'"cbnotes @ git+{repository_url()}"'


def sync(nb: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    """Rewrite the Colab badge and the Colab install cell from pyproject.toml."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = BADGE_RE.sub(lambda _: badge(path), cell.source)
        elif "colab-install" in cell.metadata.get("tags", []):
            cell.source = INSTALL_RE.sub(lambda _: install_spec(), cell.source)
    return nb


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip volatile metadata (timings, papermill, widget state), keep tags and outputs."""
    nb.metadata = {k: nb.metadata[k] for k in KEEP_NOTEBOOK_METADATA if k in nb.metadata}
    nb.metadata.get("language_info", {}).pop("version", None)
    for cell in nb.cells:
        cell.metadata = {k: cell.metadata[k] for k in KEEP_CELL_METADATA if k in cell.metadata}
        for output in cell.get("outputs", []):
            # widget views cannot be rendered on GitHub and carry session ids
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)
    return nb


def write_atomic(nb: nbformat.NotebookNode, path: Path) -> None:
    """Validate and write a notebook without ever leaving a half-written file."""
    nbformat.validate(nb)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)


def execute(path: Path, timeout: int = 3600) -> float:
    """Run a notebook top to bottom in a fresh python3 kernel (cwd = its folder); return seconds."""
    from nbconvert.preprocessors import ExecutePreprocessor

    nb = nbformat.read(path, as_version=4)
    sync(nb, path)
    # The kernel inherits the environment: a non-interactive MPLBACKEND (e.g. Agg, as set by
    # scripts/test.sh) would replace the inline backend and leave the saved notebook without
    # figures, so the kernel runs without it.
    backend = os.environ.pop("MPLBACKEND", None)
    start = time.perf_counter()
    try:
        ExecutePreprocessor(timeout=timeout, kernel_name="python3").preprocess(
            nb, {"metadata": {"path": str(path.parent)}}
        )
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    seconds = time.perf_counter() - start
    if not any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", [])):
        raise RuntimeError(f"{path}: executed without any figure output; not saved")
    write_atomic(clean(nb), path)
    return seconds


def slide_type(cell: nbformat.NotebookNode) -> str:
    """Reveal.js role of a cell: a new slide per `#`/`##` heading, sub-slides per `###`."""
    tags = cell.metadata.get("tags", [])
    if "colab-install" in tags or "parameters" in tags:
        return "skip"
    if cell.cell_type == "markdown":
        first = cell.source.lstrip().split("\n", 1)[0]
        if re.match(r"#{1,2} ", first):
            return "slide"
        if first.startswith("### "):
            return "subslide"
    return "-"


def slides(path: Path, out_dir: Path) -> Path:
    """Export a notebook (with its committed outputs) as reveal.js slides for a journal club."""
    from nbconvert import SlidesExporter

    nb = nbformat.read(path, as_version=4)
    nb.cells = [cell for cell in nb.cells if slide_type(cell) != "skip"]
    for cell in nb.cells:
        cell.metadata["slideshow"] = {"slide_type": slide_type(cell)}
    exporter = SlidesExporter(reveal_scroll=True, exclude_input_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    target = out_dir / f"{path.stem}.slides.html"
    with atomic_path(target) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return target


README = ROOT / "README.md"
COLAB_PREFIX_RE = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/")
GIT_URL_RE = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+")


RESULTS_DIR, RESULTS_PRESET = "results/cpu-study", "cpu"
RESULTS_BEGIN = (
    f"<!-- results: written by `python -m cbnotes summary --out {RESULTS_DIR} "
    f"--preset {RESULTS_PRESET} --markdown` (scripts/notebooks.py sync); do not edit -->"
)
RESULTS_END = "<!-- end of results -->"


def results_block() -> str:
    """The README's results block, computed from the committed study."""
    from cbnotes.analysis import summary_markdown

    body = summary_markdown(ROOT / RESULTS_DIR, RESULTS_PRESET)
    return f"{RESULTS_BEGIN}\n{body}\n{RESULTS_END}"


def sync_text(text: str) -> str:
    """Point every Colab link and `git+` install URL at the repository URL; refresh results."""
    slug = repository_url().removeprefix("https://github.com/")
    text = COLAB_PREFIX_RE.sub(f"https://colab.research.google.com/github/{slug}/", text)
    text = GIT_URL_RE.sub(f"git+{repository_url()}", text)
    begin, end = text.find(RESULTS_BEGIN), text.find(RESULTS_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{README}: the results block markers are missing:\n{RESULTS_BEGIN}")
    return text[:begin] + results_block() + text[end + len(RESULTS_END) :]


def problems(path: Path) -> list[str]:
    """What `clean` or `sync` would change in this notebook, as readable lines."""
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    after = nbformat.writes(clean(sync(nbformat.reads(before, as_version=4), path)))
    return [] if before == after else [f"{path}: not clean or not synced (run `clean`/`sync`)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["execute", "clean", "sync", "check", "slides"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "slides", help="folder for slides")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    failed = []
    if not args.notebooks and args.command in ("sync", "check"):
        readme = README.read_text(encoding="utf-8")
        if sync_text(readme) != readme:
            if args.command == "sync":
                with atomic_path(README) as tmp:
                    tmp.write_text(sync_text(readme), encoding="utf-8")
            else:
                failed.append(f"{README}: links or results block are stale (run `sync`)")
    for path in paths:
        if args.command == "execute":
            print(f"{path}: executed in {execute(path):.0f} s", flush=True)
        elif args.command == "slides":
            print(slides(path, args.out))
        elif args.command == "check":
            failed += problems(path)
        else:
            nb = nbformat.read(path, as_version=4)
            write_atomic(clean(nb) if args.command == "clean" else sync(nb, path), path)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Maintain the notebook series: execute, clean, and sync Colab links from pyproject.toml.

Usage (from the repository root; with no notebook given, every numbered notebook):
    python scripts/notebooks.py execute [NOTEBOOK ...]   # run in a fresh kernel, clean, save
    python scripts/notebooks.py clean [NOTEBOOK ...]     # strip volatile metadata
    python scripts/notebooks.py sync [NOTEBOOK ...]      # Colab badge + install URL
    python scripts/notebooks.py check [NOTEBOOK ...]     # exit 1 if not clean or not synced
    python scripts/notebooks.py slides [NOTEBOOK ...]    # reveal.js slides into ./slides
                                                         # (offline: scripts/get_slide_assets.sh)

The public repository URL lives in one place, ``[project.urls] Repository`` in pyproject.toml;
``sync`` rewrites every notebook's Colab badge and Colab install cell (which clones the
repository on Colab) from it. Run without
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
# The Colab install cell of every notebook (tag `colab-install`), written by `sync`: on Colab it
# clones the repository (the package and the committed results that notebooks 00, 04 and 05
# read) and installs it editable, so `cbnotes.notebook.results_dir` finds the results in the
# package's source checkout; elsewhere it does nothing.
INSTALL_CELL = """\
# Setup. On Colab: clone the repository (the package and the committed results that notebooks
# 00, 04 and 05 read) and install it editable. Elsewhere nothing happens: install the package
# once with `pip install -e .` in the repository root (scripts/test.sh does).
import subprocess
import sys
from pathlib import Path

{spec}
if "google.colab" in sys.modules:
    checkout = Path("/content/cbnotes")
    if not checkout.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, str(checkout)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(checkout)], check=True)
    sys.path.insert(0, str(checkout))  # import it in this session without a restart"""
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
    """The line of the Colab install cell that names the repository it clones."""
    return f'REPOSITORY = "{repository_url()}"'


def install_cell() -> str:
    """The source of every notebook's Colab install cell."""
    return INSTALL_CELL.format(spec=install_spec())


def sync(nb: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    """Rewrite the Colab badge and the Colab install cell from pyproject.toml."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = BADGE_RE.sub(lambda _: badge(path), cell.source)
        elif "colab-install" in cell.metadata.get("tags", []):
            cell.source = install_cell()
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


SLIDES_TEMPLATE = ROOT / "scripts" / "slides_template" / "cbnotes_slides.html.j2"
# reveal.js and MathJax for offline slides, installed from npm by scripts/get_slide_assets.sh
# (versions pinned there); CBNOTES_SLIDE_VENDOR may point at another node_modules folder.
SLIDE_VENDOR = Path(
    os.environ.get("CBNOTES_SLIDE_VENDOR", ROOT / ".cache" / "slide-assets" / "node_modules")
)
SLIDE_ASSETS_COMMAND = "bash scripts/get_slide_assets.sh"
# What a deck needs, copied into OUT/_assets: destination -> source under SLIDE_VENDOR.
SLIDE_ASSETS = {
    "reveal.js/dist/reveal.js": "reveal.js/dist/reveal.js",
    "reveal.js/dist/reveal.css": "reveal.js/dist/reveal.css",
    "reveal.js/dist/theme/white.css": "reveal.js/dist/theme/white.css",
    "reveal.js/dist/theme/fonts/source-sans-pro": "reveal.js/dist/theme/fonts/source-sans-pro",
    "mathjax/tex-chtml-full.js": "mathjax/es5/tex-chtml-full.js",
    # MathJax finds its fonts next to its script: [mathjax]/output/chtml/fonts/woff-v2
    "mathjax/output/chtml/fonts/woff-v2": "mathjax/es5/output/chtml/fonts/woff-v2",
}
SHOW_CODE_TAG = "slide-show-code"  # a code cell with this tag shows its code on the slide
SKIP_TAGS = ("colab-install", "parameters", "injected-parameters")
TOOL_TAG_RE = re.compile(r"(nbval|papermill)", re.IGNORECASE)
MARKER_LINE_RE = re.compile(r"^[ \t]*#[ \t]*(NBVAL_\w+|papermill\b.*)[ \t]*(\n|$)", re.M)
NOTEBOOK_LINK_RE = re.compile(r"\]\((\d\d_[\w-]+)\.ipynb(#[^)\s]*)?\)")


def slide_type(cell: nbformat.NotebookNode) -> str:
    """Reveal.js role of a cell: a new slide per `#`/`##` heading, sub-slides per `###`."""
    tags = cell.metadata.get("tags", [])
    if any(tag in tags for tag in SKIP_TAGS):
        return "skip"
    if cell.cell_type == "markdown":
        first = cell.source.lstrip().split("\n", 1)[0]
        if re.match(r"#{1,2} ", first):
            return "slide"
        if first.startswith("### "):
            return "subslide"
    return "-"


def missing_slide_assets() -> list[Path]:
    """The reveal.js and MathJax files under SLIDE_VENDOR that a deck needs and that are absent."""
    return [
        SLIDE_VENDOR / src for src in SLIDE_ASSETS.values() if not (SLIDE_VENDOR / src).exists()
    ]


def copy_slide_assets(out_dir: Path) -> None:
    """Copy reveal.js and MathJax next to the decks (OUT/_assets), so OUT works offline."""
    import shutil

    for dest, src in SLIDE_ASSETS.items():
        source, target = SLIDE_VENDOR / src, out_dir / "_assets" / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, target)


def _split_at_headings(source: str) -> list[str]:
    """Markdown cut before each `#`..`###` heading line after the first line (not in code)."""
    parts, fenced = [[]], False
    for line in source.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and re.match(r"#{1,3} ", line) and any(x.strip() for x in parts[-1]):
            parts.append([])
        parts[-1].append(line)
    return ["\n".join(part).strip() for part in parts]


def slide_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells of the deck, each with its reveal.js role, from a copy of the notebook's cells.

    Code inputs are left out unless tagged `slide-show-code` (then without nbval/papermill
    marker lines); a code cell with neither shown code nor outputs is dropped. The title cell is
    split: its `#` heading (and the "Part of the series" line) alone on the title slide, each
    paragraph that starts in bold (**What you will learn**, **Runtime and hardware**) on a
    sub-slide of its own. A markdown cell that opens with a bold lead (**What we see.**) starts
    a sub-slide too. The Colab badge (an image from the web) is left out, and links to other
    notebooks point at their decks.
    """
    cells: list[nbformat.NotebookNode] = []

    def add(cell: nbformat.NotebookNode, kind: str) -> None:
        cell.metadata["slideshow"] = {"slide_type": kind}
        cells.append(cell)

    for original in nb.cells:
        kind = slide_type(original)
        if kind == "skip":
            continue
        cell = nbformat.from_dict(original)  # a deep copy: nothing is written back
        tags = cell.metadata.get("tags", [])
        cell.metadata["tags"] = [t for t in tags if not TOOL_TAG_RE.search(t)]
        if cell.cell_type == "code":
            if SHOW_CODE_TAG in tags:
                cell.source = MARKER_LINE_RE.sub("", cell.source)
            elif cell.outputs:
                cell.metadata["transient"] = {"remove_source": True}
            else:
                continue
        elif cell.cell_type == "markdown":
            source = NOTEBOOK_LINK_RE.sub(r"](\1.slides.html\2)", BADGE_RE.sub("", cell.source))
            cell.source = source.strip()
            if kind == "slide" and cell.source.startswith("# "):
                title, _, rest = cell.source.partition("\n")
                subtitle, parts = [], []
                for paragraph in re.split(r"\n\s*\n", rest.strip()):
                    if paragraph.startswith("Part of "):
                        subtitle.append(paragraph)
                    elif paragraph.startswith("**") or not parts:
                        parts.append(paragraph)
                    else:
                        parts[-1] += "\n\n" + paragraph
                add(nbformat.v4.new_markdown_cell("\n\n".join([title, *subtitle])), "slide")
                for part in filter(None, parts):
                    add(nbformat.v4.new_markdown_cell(part), "subslide")
                continue
            previous = cells[-1].metadata["slideshow"]["slide_type"] if cells else "slide"
            if kind == "-" and cell.source.startswith("**") and previous == "-":
                kind = "subslide"
            # a heading inside a cell starts its own slide too (## 5 · Map ... after a table)
            first, *rest = _split_at_headings(cell.source)
            if rest:
                cell.source = first
                add(cell, kind)
                for part in rest:
                    extra = nbformat.v4.new_markdown_cell(part)
                    add(extra, slide_type(extra))
                continue
        add(cell, kind)
    return cells


# Slide layout (slides_template/slides.js): a 1280x720 frame, text at 27 px that the deck may
# shrink to 62%. `split_long_slides` estimates heights in px of that frame to keep each slide
# short enough to be read at 80% or more: figures at their natural size (100 dpi) up to 560 px.
SLIDE_WIDTH, SLIDE_HEIGHT, SLIDE_MIN_TEXT_SCALE = 1240, 700, 0.8
LINE, CHARS_PER_LINE, CODE_LINE = 35, 95, 21


def _markdown_height(source: str) -> float:
    """Estimated height of rendered markdown: headings, display maths, tables, wrapped text."""
    height = 0.0
    for block in re.split(r"\n\s*\n", source.strip()):
        if block.startswith("#"):
            height += 60 if block.startswith(("# ", "## ")) else 48
            block = block.partition("\n")[2]
        if not block.strip():
            continue
        if block.lstrip().startswith("$$"):
            height += 50 * (block.count("\\\\") + 1) + 16
        elif block.lstrip().startswith("|"):
            height += 0.72 * LINE * len(block.splitlines())
        else:  # a paragraph or a list, one item per line
            items = re.split(r"\n(?=\s*(?:[-*+]|\d+\.) )", block)
            plain = [re.sub(r"[*`$]|\]\([^)]*\)", "", item) for item in items]
            height += LINE * sum(-(-len(item) // CHARS_PER_LINE) for item in plain) + 12
    return height


def _figure_height(png_base64: str) -> float:
    import base64
    import struct

    width, height = struct.unpack(">II", base64.b64decode(png_base64[:44])[16:24])
    return min(560.0, height * min(1.0, SLIDE_WIDTH / max(width, 1)))


def _cell_heights(cell: nbformat.NotebookNode) -> tuple[float, float]:
    """Estimated (text, figure) heights of a cell on a slide, in px of the 1280x720 frame."""
    if cell.cell_type == "markdown":
        return _markdown_height(cell.source), 0.0
    text = figures = 0.0
    if not cell.metadata.get("transient", {}).get("remove_source"):
        text += CODE_LINE * len(cell.source.splitlines()) + 16
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if "image/png" in data:
            figures += _figure_height(data["image/png"]) + 10
        elif "text/html" in data:
            text += 0.72 * LINE * max(1, data["text/html"].count("<tr"))
        else:
            body = output.get("text") or data.get("text/plain", "") or ""
            text += CODE_LINE * len(body.rstrip("\n").splitlines()) + 16
    return text, figures


def split_long_slides(cells: list[nbformat.NotebookNode]) -> list[nbformat.NotebookNode]:
    """Start a continuation sub-slide wherever a slide's cells would not fit the 16:9 frame.

    Cells are never cut; a continuation repeats the slide's heading, marked (continued).
    """
    out: list[nbformat.NotebookNode] = []
    text = figures = 0.0
    heading = ""
    for cell in cells:
        kind = cell.metadata["slideshow"]["slide_type"]
        cell_text, cell_figures = _cell_heights(cell)
        if kind in ("slide", "subslide"):
            text, figures = cell_text, cell_figures
            first = cell.source.lstrip().split("\n", 1)[0] if cell.cell_type == "markdown" else ""
            heading = first.lstrip("#").strip() if first.startswith("#") else ""
            out.append(cell)
            continue
        fits = (text + cell_text) * SLIDE_MIN_TEXT_SCALE + figures + cell_figures <= SLIDE_HEIGHT
        if not fits and (text or figures):
            label = f"#### {heading} (continued)" if heading else ""
            continued = nbformat.v4.new_markdown_cell(label, metadata={"tags": []})
            continued.metadata["slideshow"] = {"slide_type": "subslide"}
            out.append(continued)
            text, figures = _cell_heights(continued)[0], 0.0
        text, figures = text + cell_text, figures + cell_figures
        out.append(cell)
    return out


def slides(path: Path, out_dir: Path) -> Path:
    """Export a notebook (with its committed outputs) as reveal.js slides for a journal club.

    The deck loads reveal.js and MathJax from OUT/_assets (copied there from SLIDE_VENDOR when
    present, see `missing_slide_assets`), so the folder works offline, opened with file://.
    """
    from nbconvert import SlidesExporter

    nb = nbformat.read(path, as_version=4)
    nb.cells = split_long_slides(slide_cells(nb))
    exporter = SlidesExporter(
        template_file=str(SLIDES_TEMPLATE),
        reveal_url_prefix="_assets/reveal.js",
        reveal_theme="white",
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        mathjax_url="_assets/mathjax/tex-chtml-full.js",
    )
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    if not missing_slide_assets():
        copy_slide_assets(out_dir)
    target = out_dir / f"{path.stem}.slides.html"
    with atomic_path(target) as tmp:
        tmp.write_text(body, encoding="utf-8")
    return target


README = ROOT / "README.md"
COLAB_PREFIX_RE = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/")
GIT_URL_RE = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+")


#: The README's generated results blocks: (results folder, preset), each between its markers.
RESULTS_BLOCKS: tuple[tuple[str, str], ...] = (
    ("results/cpu-study", "cpu"),
    ("results/methods-study", "cpu-methods"),
)
RESULTS_END = "<!-- end of results -->"


def results_begin(folder: str, preset: str) -> str:
    """The opening marker of the README block written from ``folder``'s runs of ``preset``."""
    return (
        f"<!-- results: written by `python -m cbnotes summary --out {folder} "
        f"--preset {preset} --markdown` (scripts/notebooks.py sync); do not edit -->"
    )


def results_block(folder: str, preset: str) -> str:
    """One README results block, computed from the committed study (``cbnotes summary``)."""
    from cbnotes.analysis import summary_markdown
    from cbnotes.comparison import methods_markdown
    from cbnotes.presets import PRESETS

    markdown = methods_markdown if PRESETS[preset].methods else summary_markdown
    body = markdown(ROOT / folder, preset)
    return f"{results_begin(folder, preset)}\n{body}\n{RESULTS_END}"


def sync_text(text: str) -> str:
    """Point every Colab link and `git+` install URL at the repository URL; refresh results."""
    slug = repository_url().removeprefix("https://github.com/")
    text = COLAB_PREFIX_RE.sub(f"https://colab.research.google.com/github/{slug}/", text)
    text = GIT_URL_RE.sub(f"git+{repository_url()}", text)
    for folder, preset in RESULTS_BLOCKS:
        begin_marker = results_begin(folder, preset)
        begin = text.find(begin_marker)
        end = text.find(RESULTS_END, begin)
        if begin < 0 or end < begin:
            raise SystemExit(f"{README}: the results block markers are missing:\n{begin_marker}")
        text = text[:begin] + results_block(folder, preset) + text[end + len(RESULTS_END) :]
    return text


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
    if args.command == "slides" and missing_slide_assets():
        print(
            f"slides: reveal.js and MathJax are not in {SLIDE_VENDOR} (needed offline); "
            f"get them with `{SLIDE_ASSETS_COMMAND}` (npm, about 30 MB)",
            file=sys.stderr,
        )
        return 2
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

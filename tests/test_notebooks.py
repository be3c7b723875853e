"""The notebook series: hygiene of the committed files, a papermill run of each in smoke mode, and
a run of each notebook that reads results copied alone into an empty folder (as Colab opens it).

nbval (run by scripts/test.sh with --nbval-lax) re-executes each notebook in its default mode and
compares the outputs of the cells marked `# NBVAL_CHECK_OUTPUT` with the committed ones.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import sys
from pathlib import Path

import nbformat
import pytest

import notebooks as nbtools
from cbnotes.presets import get_preset

NOTEBOOKS = sorted(nbtools.NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CLOSING_SECTIONS = ("## Summary", "## Questions for discussion", "## Exercises", "## References")
#: The notebooks that show the committed results (they locate them with cbnotes.notebook).
READS_RESULTS = [
    p for p in NOTEBOOKS if re.search(r"results_dir\(|open_study\(", p.read_text(encoding="utf-8"))
]
STUDY = nbtools.ROOT / "results" / "cpu-study"
MAX_CODE_LINES = 20
SMALL_FONT_RE = re.compile(
    r"""fontsize["']?\s*[=:]\s*(?:[0-8](?:\.\d+)?\b|["'](?:x{0,2}-?small|smaller)["'])"""
)


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _tagged(nb: nbformat.NotebookNode, tag: str) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def test_the_series_is_numbered_without_gaps():
    numbers = [int(p.name[:2]) for p in NOTEBOOKS]
    assert numbers == list(range(len(numbers))), numbers
    assert len(numbers) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
class TestHygiene:
    def test_valid_nbformat_and_python3_kernel(self, path):
        nb = _read(path)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"

    def test_no_volatile_metadata(self, path):
        nb = _read(path)
        assert "widgets" not in nb.metadata
        assert "papermill" not in nb.metadata
        for cell in nb.cells:
            assert set(cell.metadata) <= {"tags"}, (cell.get("id"), dict(cell.metadata))
        assert nbtools.problems(path) == []

    def test_opens_with_title_and_colab_badge_for_its_own_path(self, path):
        first = _read(path).cells[0]
        assert first.cell_type == "markdown"
        assert first.source.startswith(f"# {path.name[:2]} ")
        assert nbtools.badge(path) in first.source
        assert f"/blob/main/notebooks/{path.name})" in first.source
        for heading in ("**What you will learn**", "**Runtime and hardware**"):
            assert heading in first.source

    def test_install_cell_runs_only_on_colab_and_uses_the_repository_url(self, path):
        (cell,) = _tagged(_read(path), "colab-install")
        assert 'if "google.colab" in sys.modules:' in cell.source
        assert nbtools.install_spec() in cell.source
        assert cell.source == nbtools.install_cell()  # the same cell everywhere (`sync` writes it)

    def test_code_cells_are_short(self, path):
        long = {
            i: len(c.source.splitlines())
            for i, c in enumerate(_read(path).cells)
            if c.cell_type == "code" and len(c.source.splitlines()) > MAX_CODE_LINES
        }
        assert long == {}, f"cells over {MAX_CODE_LINES} lines (index: lines); move code to cbnotes"

    def test_figure_text_is_at_least_9_pt(self, path):
        code = "\n".join(c.source for c in _read(path).cells if c.cell_type == "code")
        assert SMALL_FONT_RE.findall(code) == []

    def test_committed_figures_are_150_dpi(self, path):
        dpis = [_png_dpi(png) for png in _pngs(_read(path))]
        assert dpis, "no figure"
        assert min(dpis) >= 150, dpis

    def test_every_exercise_has_a_collapsed_solution(self, path):
        (cell,) = [c for c in _read(path).cells if c.source.startswith("## Exercises")]
        exercises = re.findall(r"^\d+\. ", cell.source, re.MULTILINE)
        solutions = re.findall(r"<details><summary>Solution</summary>", cell.source)
        assert len(exercises) >= 2
        assert len(solutions) == len(exercises), (len(exercises), len(solutions))
        assert cell.source.count("</details>") == len(solutions)

    def test_exactly_one_parameters_cell_with_a_mode(self, path):
        (cell,) = _tagged(_read(path), "parameters")
        assert re.search(r'^MODE = "auto"', cell.source, re.MULTILINE)

    def test_papermill_sees_every_parameter_with_its_default(self, path):
        import papermill

        (cell,) = _tagged(_read(path), "parameters")
        names = re.findall(r"^(\w+) = ", cell.source, re.MULTILINE)
        inferred = papermill.inspect_notebook(str(path))
        assert list(inferred) == names  # a "=" in a comment hides a parameter from papermill
        assert inferred["MODE"]["default"] == '"auto"'

    def test_closes_with_summary_questions_exercises_references(self, path):
        headings = [
            line
            for cell in _read(path).cells
            if cell.cell_type == "markdown"
            for line in cell.source.splitlines()
            if line.startswith("## ")
        ]
        tail = [h for h in headings if h.startswith(CLOSING_SECTIONS)]
        assert [h.split(" (")[0] for h in tail[-4:]] == list(CLOSING_SECTIONS)

    def test_committed_outputs_come_from_one_top_to_bottom_run(self, path):
        code = [c for c in _read(path).cells if c.cell_type == "code"]
        counts = [c.execution_count for c in code]
        assert counts == list(range(1, len(code) + 1)), "re-run: scripts/notebooks.py execute"
        errors = [o for c in code for o in c.outputs if o.output_type == "error"]
        assert errors == []

    def test_checked_cells_exist(self, path):
        checked = [c for c in _read(path).cells if "# NBVAL_CHECK_OUTPUT" in c.source]
        if path.name.startswith("00_"):
            pytest.skip("the overview notebook only links and summarizes")
        assert checked, "mark the cells whose numbers matter with # NBVAL_CHECK_OUTPUT"
        assert all(c.outputs for c in checked)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_runs_in_smoke_mode_with_papermill(path, tmp_path):
    papermill = pytest.importorskip("papermill")
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path),
        str(out),
        parameters={"MODE": "smoke"},
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    executed = _read(out)
    assert executed.metadata["papermill"]["parameters"] == {"MODE": "smoke"}


def _pngs(nb: nbformat.NotebookNode) -> list[bytes]:
    return [
        base64.b64decode(output["data"]["image/png"])
        for cell in nb.cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]


def _png_dpi(png: bytes) -> float:
    """The resolution a PNG declares (its pHYs chunk), in dots per inch; 0 without one."""
    at = png.find(b"pHYs")
    if at < 0:
        return 0.0
    per_metre, _, unit = struct.unpack(">IIB", png[at + 4 : at + 13])
    return per_metre * 0.0254 if unit == 1 else 0.0


@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if p.name[:2] in ("04", "05", "06")], ids=lambda p: p.stem
)
def test_training_a_preset_is_an_explicit_opt_in(path):
    (cell,) = _tagged(_read(path), "parameters")
    assert re.search(r"^TRAIN = False\b", cell.source, re.MULTILINE)
    assert re.search(r"^USE_DRIVE = False\b", cell.source, re.MULTILINE)


def test_install_cell_clones_the_repository_and_installs_it_editable_on_colab(monkeypatch):
    import subprocess
    import types

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(list(args)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(compile(nbtools.install_cell(), "install cell", "exec"), {})
    clone, install = calls
    assert clone[:4] == ["git", "clone", "--depth", "1"]
    assert clone[4] == nbtools.repository_url()
    assert install[1:] == ["-m", "pip", "install", "-q", "-e", clone[5]]
    assert sys.path[0] == clone[5]  # importable in the running kernel without a restart


def _solution_blocks(path: Path) -> list[str]:
    (cell,) = [c for c in _read(path).cells if c.source.startswith("## Exercises")]
    blocks = []
    for solution in re.findall(r"<summary>Solution</summary>(.*?)</details>", cell.source, re.S):
        for block in re.findall(r"```python\n(.*?)```", solution, re.S):
            blocks.append("\n".join(line.removeprefix("   ") for line in block.splitlines()))
    return blocks


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_the_solutions_code_runs(path, monkeypatch):
    """Every Python block of a solution runs as written (cwd: the notebook's folder); those that
    train toy models (minutes on a loaded 2-core machine) are only compiled."""
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for block in _solution_blocks(path):
        code = compile(block, f"{path.name} solution", "exec")
        if "train_toy" not in block:
            exec(code, {"__name__": "__main__"})


def _study_files() -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in sorted((nbtools.ROOT / "results").rglob("*"))}


def _committed_revisions() -> set[str]:
    """The git revisions of every committed study's runs (cpu-study, methods-study, ...)."""
    return {
        json.loads(p.read_text(encoding="utf-8"))["environment"]["git_rev"][:7]
        for p in (nbtools.ROOT / "results").glob("*/runs/*.json")
    }


def test_results_are_found_next_to_the_notebook_then_in_the_checkout_then_by_env(
    tmp_path, monkeypatch
):
    from cbnotes import notebook

    monkeypatch.delenv(notebook.RESULTS_ENV, raising=False)
    alone = tmp_path / "colab"
    alone.mkdir()
    monkeypatch.chdir(alone)  # a notebook opened without its repository (Colab)
    assert notebook.results_dir("cpu-study") == STUDY.resolve()  # the package's source checkout
    beside = tmp_path / "results" / "cpu-study"
    beside.mkdir(parents=True)
    assert notebook.results_dir("cpu-study") == beside.resolve()  # ../results next to it first
    monkeypatch.setenv(notebook.RESULTS_ENV, str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere" / "mine").mkdir(parents=True)
    assert notebook.results_dir("mine") == (tmp_path / "elsewhere" / "mine").resolve()
    assert notebook.results_dir("new") == (tmp_path / "results" / "new").resolve()


def test_full_mode_without_train_trains_nothing_and_shows_the_committed_study(
    tmp_path, monkeypatch, capsys
):
    """What a Colab GPU session meets first (auto -> full): no run is trained without TRAIN =
    True; the notebooks say how much training the preset is and show the committed study."""
    from cbnotes import notebook, runner

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "run_sweep", lambda *a, **k: pytest.fail("trained"))
    study = notebook.open_study("full", {"cpu": ["cpu"], "full": ["paper-best"]}, tmp_path / "p")
    results = study.load(train=False)
    out = capsys.readouterr().out
    assert "70 runs" in out
    assert "272.2 M training images" in out
    assert "Set TRAIN = True" in out
    assert study.fallback
    assert study.results_dir == STUDY.resolve()
    assert len(results) == len(get_preset("cpu"))
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", READS_RESULTS, ids=_ids(READS_RESULTS))
def test_runs_alone_in_an_empty_folder_and_shows_the_committed_results(path, tmp_path):
    """As Colab opens a notebook: no repository around it (here the package's source checkout
    holds the results, as the Colab install cell's clone does). In cpu mode it must show the
    committed study, train nothing and change nothing under results/."""
    papermill = pytest.importorskip("papermill")
    alone = tmp_path / "colab" / path.name
    alone.parent.mkdir()
    shutil.copyfile(path, alone)
    before = _study_files()
    papermill.execute_notebook(
        str(alone),
        str(alone),
        parameters={"MODE": "cpu"},
        cwd=str(alone.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    text = json.dumps([c.get("outputs", []) for c in _read(alone).cells])
    assert "no committed results" not in text
    assert any(rev in text for rev in _committed_revisions()), "the provenance is not shown"
    if "open_study(" in path.read_text(encoding="utf-8"):
        assert "nothing to train" in text or "not trained (TRAIN = False)" in text
        assert "training now" not in text
    assert _study_files() == before


def test_slides_have_one_section_per_heading(tmp_path):
    path = next(p for p in NOTEBOOKS if p.name.startswith("02_"))
    html = nbtools.slides(path, tmp_path).read_text(encoding="utf-8")
    headings = sum(nbtools.slide_type(c) == "slide" for c in _read(path).cells)
    assert "reveal" in html
    assert headings >= 5
    assert html.count("<section") >= headings
    assert "google.colab" not in html  # the Colab install cell is left out


def test_readme_links_follow_the_repository_url():
    text = nbtools.README.read_text(encoding="utf-8")
    assert nbtools.sync_text(text) == text
    assert nbtools.repository_url() in text


def test_a_styled_table_is_named_after_what_it_shows():
    """The HTML id of a table (which nbval compares) changes with a shown digit or the caption,
    not with digits the format hides, so a rounding change below them keeps the output."""
    import pandas as pd

    from cbnotes.notebook import styled

    def table(value, caption="‖g‖"):
        return styled(pd.DataFrame({"loss": ["focal"], "g": [value]}), "{:.4f}", caption=caption)

    shown = table(0.123456781)
    assert table(0.123456789).to_html() == shown.to_html()
    assert table(0.1236).uuid != shown.uuid  # shown: 0.1235
    assert table(0.123456781, caption="other").uuid != shown.uuid
    assert shown.uuid in shown.to_html()

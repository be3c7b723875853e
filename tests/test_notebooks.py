"""The notebook series: hygiene of the committed files, and a papermill run of each in smoke mode.

nbval (run by scripts/test.sh with --nbval-lax) re-executes each notebook in its default mode and
compares the outputs of the cells marked `# NBVAL_CHECK_OUTPUT` with the committed ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import notebooks as nbtools

NOTEBOOKS = sorted(nbtools.NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CLOSING_SECTIONS = ("## Summary", "## Questions for discussion", "## Exercises", "## References")


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

"""The package's public surface: every advertised name resolves, and import does no work."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import cbnotes


def test_every_public_name_resolves():
    missing = [name for name in cbnotes.__all__ if getattr(cbnotes, name, None) is None]
    assert missing == []


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        cbnotes.no_such_name  # noqa: B018


def test_import_is_cheap_and_does_no_work():
    code = "import sys, cbnotes; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# The newest torch / Python API the package relies on decides the lower bound in pyproject.toml.
# Each entry: a pattern found in cbnotes/*.py -> (the first torch version that has it, what it is).
# Raising the bound is needed when a pattern from a newer row appears; add a row for every newer
# torch API the package starts to use.
TORCH_APIS: dict[str, tuple[tuple[int, int], str]] = {
    r"torch\.amp\.GradScaler\(": ((2, 3), "device-generic GradScaler('cuda' / 'cpu', ...)"),
    r"torch\.amp\.autocast\(": ((2, 3), "torch.amp.autocast(device_type, ...)"),
    r"torch\.library\.custom_op": ((2, 4), "torch.library.custom_op"),
    r"torch\.compile\(": ((2, 0), "torch.compile"),
    r"torch\.func\.": ((2, 0), "torch.func transforms"),
    r"torch\.backends\.cpu\.get_cpu_capability": ((2, 1), "the CPU's vector ISA"),
    r"weights_only=": ((1, 13), "torch.load(..., weights_only=True)"),
    r"torch\.autocast\(": ((1, 10), "torch.autocast(device_type, ...)"),
    r"torch\.inference_mode": ((1, 9), "torch.inference_mode"),
}
# torchvision releases paired with torch minor releases (torchvision 0.(x+15) goes with torch 2.x).
TORCHVISION_FOR_TORCH = {(2, minor): (0, minor + 15) for minor in range(12)}
PYTHON_APIS: dict[str, tuple[tuple[int, int], str]] = {
    r"\bitertools\.pairwise\b|from itertools import .*\bpairwise\b": ((3, 10), "pairwise"),
    r"^import tomllib|^from tomllib": ((3, 11), "tomllib"),
}


def _declared(name: str) -> tuple[int, ...]:
    """The lower bound of dependency ``name`` declared in pyproject.toml, e.g. (2, 3)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    with open(root / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    if name == "python":
        spec = project["requires-python"]
    else:
        (spec,) = [d for d in project["dependencies"] if re.match(rf"{name}\b", d)]
    bound = re.search(r">=\s*([\d.]+)", spec).group(1)
    return tuple(int(part) for part in bound.split("."))


def _package_source() -> str:
    root = Path(__file__).resolve().parents[1] / "cbnotes"
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")))


def _needed(table: dict[str, tuple[tuple[int, int], str]]) -> dict[str, tuple[int, int]]:
    source = _package_source()
    return {
        what: version
        for pattern, (version, what) in table.items()
        if re.search(pattern, source, re.MULTILINE)
    }


def test_torch_lower_bound_covers_every_torch_api_the_package_uses():
    needed = _needed(TORCH_APIS)
    assert needed, "the API table matches nothing: check the patterns"
    declared = _declared("torch")
    too_new = {what: v for what, v in needed.items() if v > declared[:2]}
    assert too_new == {}, (
        f"pyproject.toml says torch>={declared}; raise it to {max(needed.values())}"
    )


def test_torch_lower_bound_is_the_newest_api_it_needs():
    """Not higher than needed either: Colab and other hosted runtimes keep their own torch."""
    assert _declared("torch")[:2] == max(_needed(TORCH_APIS).values())


def test_torchvision_lower_bound_is_the_release_paired_with_the_torch_bound():
    assert _declared("torchvision")[:2] == TORCHVISION_FOR_TORCH[_declared("torch")[:2]]


def test_python_lower_bound_covers_the_standard_library_the_package_uses():
    needed = _needed(PYTHON_APIS)
    declared = _declared("python")
    assert {what: v for what, v in needed.items() if v > declared[:2]} == {}


@pytest.mark.parametrize("failure", ["not a checkout", "no git"])
def test_git_revision_outside_a_checkout_comes_from_the_environment(monkeypatch, failure):
    """A copy of the files (no .git) records CBNOTES_GIT_REV if set, else no revision; either
    way "dirty" is unknown, not False."""
    from cbnotes import provenance

    def git(*args, **kwargs):
        if failure == "no git":
            raise FileNotFoundError("git")
        return subprocess.CompletedProcess(args, 128, "", "fatal: not a git repository")

    monkeypatch.setattr(provenance.subprocess, "run", git)
    monkeypatch.delenv("CBNOTES_GIT_REV", raising=False)
    assert provenance.git_revision() == {"git_rev": None, "git_dirty": None}
    monkeypatch.setenv("CBNOTES_GIT_REV", "31c1ad2")
    assert provenance.git_revision() == {"git_rev": "31c1ad2", "git_dirty": None}

"""The package's public surface: every advertised name resolves, and import does no work."""

import subprocess
import sys

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

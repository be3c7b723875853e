"""Shared pytest configuration: make `scripts/` importable for the notebook hygiene tests."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pytest  # noqa: E402


@pytest.fixture
def ctrl_c_at(monkeypatch):
    """``ctrl_c_at(epoch)``: from then on ``Trainer.train_epoch`` raises KeyboardInterrupt, as
    Ctrl-C would, when it reaches ``epoch``. Returns the original method (to wrap or restore)."""
    from cbnotes.training import Trainer

    original = Trainer.train_epoch

    def interrupt(epoch: int):
        def train_epoch(self, current):
            if current == epoch:
                raise KeyboardInterrupt
            return original(self, current)

        monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
        return original

    return interrupt

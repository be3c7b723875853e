"""benchmarks/device_check.sh cannot rot: its --dry-run runs every step on CPU, tiny."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbnotes.provenance import git_revision

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"
STEPS = ["cuda_tests", "bench", "bench_channels_last", "amp", "paper", "bench_training"]


@pytest.mark.slow
def test_dry_run_passes_every_step_and_writes_its_reports(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["dry_run"] is True
    assert report["passed"] is True
    assert [s["step"] for s in report["steps"]] == STEPS
    assert [p["n"] for p in report["bench"]["packs"]] == [1, 2, 4]
    assert report["amp"]["bf16"]["trainer"]["master_dtype"] == "torch.float32"
    assert len(report["paper"]["pack"]["members"]) == 4
    assert report["paper"]["run"]["history"][-1]["epoch"] == 1  # two epochs
    assert report["paper"]["auto"] == {  # fused auto on a CPU: one by one, nothing measured
        "units": [1, 1, 1, 1],
        "choice": None,
        "seconds": report["paper"]["auto"]["seconds"],
    }
    names = [c["name"] for c in report["bench_training"]["comparisons"]]
    assert names == ["sgd", "sgd_step", "channels_last", "checkpoint", "omp_passive"]
    assert all(c["ratio"] > 0 for c in report["bench_training"]["comparisons"])
    markdown = (out / "report.md").read_text()
    assert "all steps passed" in markdown
    revision = git_revision()  # the report names the code it measured
    assert (report["git_rev"], report["git_dirty"]) == (revision["git_rev"], revision["git_dirty"])
    assert f"git {(revision['git_rev'] or 'unknown')[:7]}" in markdown
    assert report["bench"]["git_rev"] == report["bench_training"]["git_rev"] == revision["git_rev"]
    assert "| 4 |" in markdown  # the pack-size table
    assert "| omp_passive |" in markdown  # the training-step table
    assert "Default sweep (fused auto): units [1, 1, 1, 1]; no measurement" in markdown


def test_usage_errors_exit_2(tmp_path):
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "unknown option --bogus" in proc.stderr
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(tmp_path / "a"), str(tmp_path / "b")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "one OUT_DIR" in proc.stderr

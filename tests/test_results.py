"""The committed CPU study: complete, with provenance, consistent with its summary table.

The notebooks read these results in their default mode; if a preset gained a run that is not
committed, re-executing them would silently train for an hour. These tests make that loud.
Re-create the study with `python -m cbnotes run --preset cpu --out results/cpu-study` (and
`--preset cpu-sweep`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cbnotes.config import ADDED_FIELDS, RunConfig
from cbnotes.presets import get_preset
from cbnotes.results import load_results, read_result, result_path, run_status

STUDY = Path(__file__).resolve().parents[1] / "results" / "cpu-study"
PRESETS = ("cpu", "cpu-sweep")


def _configs():
    seen = {}
    for name in PRESETS:
        for config in get_preset(name):
            seen.setdefault(config.run_id, config)
    return list(seen.values())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_run_of_the_committed_presets_is_finished(preset):
    pending = [c.run_id for c in get_preset(preset) if run_status(c, STUDY) != "finished"]
    assert pending == [], f"re-run: python -m cbnotes run --preset {preset} --out {STUDY}"


def test_no_stray_or_half_written_files():
    runs = {p.name for p in (STUDY / "runs").iterdir()}
    expected = {result_path(STUDY, c).name for c in _configs()}
    assert runs == expected
    assert not (STUDY / "checkpoints").exists() or not any((STUDY / "checkpoints").iterdir())
    assert not list(STUDY.rglob("*.tmp"))


def test_each_result_records_its_config_device_versions_and_revision():
    for config in _configs():
        record = read_result(result_path(STUDY, config))
        assert RunConfig.from_dict(record["config"]) == config
        env = record["environment"]
        assert env["device"]
        assert env["torch"]
        assert isinstance(env["git_rev"], str)
        assert len(env["git_rev"]) == 40
        assert env["git_dirty"] is False, "results must come from committed code"
        assert len(record["history"]) == config.epochs
        assert record["top1_error"] == record["history"][-1]["top1_error"]


def test_summary_csv_matches_the_json_records():
    summary = pd.read_csv(STUDY / "summary.csv").set_index("run_id").sort_index()
    records = load_results(STUDY).set_index("run_id").sort_index()
    assert list(summary.index) == list(records.index)
    pd.testing.assert_series_equal(
        summary["top1_error"], records["top1_error"], check_dtype=False, check_names=False
    )
    for run_id, error in summary["top1_error"].items():
        assert json.loads((STUDY / "runs" / f"{run_id}.json").read_text())["top1_error"] == error


def test_every_committed_run_keeps_its_id_and_is_still_found_finished():
    """Fields added to RunConfig since the study was run must not rename its runs."""
    records = [read_result(path) for path in sorted((STUDY / "runs").glob("*.json"))]
    assert len(records) == 46
    for record in records:
        assert not set(ADDED_FIELDS) & set(record["config"]), "written before the new fields"
        config = RunConfig.from_dict(record["config"])
        assert config.run_id == record["run_id"]
        assert run_status(config, STUDY) == "finished"
        assert config.label == record["label"]

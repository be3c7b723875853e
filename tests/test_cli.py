"""The command line: help for newcomers, presets, a smoke run, clean errors (exit status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cbnotes.cli import main
from cbnotes.presets import PRESETS, get_preset
from cbnotes.results import SUMMARY_COLUMNS, result_path

STUDY = Path(__file__).resolve().parents[1] / "results" / "cpu-study"

SUBCOMMANDS = ("run", "run-one", "list", "export", "compare", "presets", "figures")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cbnotes {command}")


def test_main_help_lists_subcommands_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out
    for command in SUBCOMMANDS:
        assert command in out
    assert "exit status: 0 done; 1 some runs failed" in out
    assert "2 a user" in out


def test_python_dash_m_cbnotes_runs():
    result = subprocess.run(
        [sys.executable, "-m", "cbnotes", "presets"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "smoke" in result.stdout


def test_presets_lists_every_preset_with_its_run_count(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        line = next(row for row in out.splitlines() if row.split()[0] == name)
        assert f"{len(get_preset(name))} runs" in line


def test_an_unknown_preset_is_a_one_line_error_with_status_2(capsys):
    assert main(["run", "--preset", "nope", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbnotes run: error: unknown preset 'nope'")
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_methods_lists_the_registry(capsys):
    from cbnotes.methods import METHODS

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, method in METHODS.items():
        line = next(row for row in out.splitlines() if row.split()[0] == name)
        assert method.title in line
    assert "max_margin=0.5, scale=30.0" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loss", "hinge"], "method (loss_type) must be one of softmax"),
        (["--loss", "ldam", "--tau", "1"], "tau does not apply to method 'ldam'"),
        (["--scheme", "inverse", "--beta", "0.9"], "beta is used only by scheme='effective'"),
        (["--shortcut", "conv"], "shortcut must be one of"),
    ],
)
def test_bad_method_options_are_one_line_errors(argv, message, tmp_path, capsys):
    code = main(["run-one", "--dataset", "synthetic", *argv, "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_focal_without_gamma_is_a_user_error(tmp_path, capsys):
    code = main(["run-one", "--dataset", "synthetic", "--loss", "focal", "--out", str(tmp_path)])
    assert code == 2
    assert "gamma" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_results_folder_is_a_user_error(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_smoke_preset_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    configs = get_preset("smoke")
    assert main(["run", "--preset", "smoke", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("pending") == len(configs)

    assert (
        main(["run", "--preset", "smoke", "--out", str(out), "--device", "cpu", "--no-progress"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "CB softmax (β=0.9999)" in printed
    assert str(out / "summary.csv") in printed
    assert len(pd.read_csv(out / "summary.csv")) == len(configs)

    assert main(["run", "--preset", "smoke", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("finished") == len(configs)

    assert main(["list", "--out", str(out)]) == 0
    listed = capsys.readouterr().out
    assert all(c.run_id in listed for c in configs)

    target = tmp_path / "export.csv"
    assert main(["export", "--out", str(out), "--to", str(target)]) == 0
    exported = pd.read_csv(target)
    assert list(exported.columns) == list(SUMMARY_COLUMNS)
    assert len(exported) == len(configs)

    assert main(["compare", "--out", str(out)]) == 0
    assert "not in the paper" in capsys.readouterr().out

    assert main(["summary", "--out", str(out), "--preset", "smoke"]) == 0
    printed = capsys.readouterr().out
    assert "verdict" in printed
    assert "runs at git revision" in printed
    in_short = printed.split("\nIn short:\n", 1)[1]
    assert "- synthetic-LT at IF 100: " in in_short
    assert "points of top-1 error" in in_short
    assert "one seed cannot separate the methods from seed noise" in in_short
    assert main(["summary", "--out", str(out), "--preset", "smoke", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| data | IF | loss |")
    assert main(["summary", "--out", str(out), "--preset", "cpu-quick"]) == 2
    assert "no finished runs of preset 'cpu-quick'" in capsys.readouterr().err

    assert main(["figures", "--out", str(out), "--preset", "cpu-quick"]) == 2
    assert "no finished runs" in capsys.readouterr().err
    assert main(["figures", "--out", str(out), "--preset", "smoke"]) == 0
    capsys.readouterr()
    assert main(["figures", "--out", str(out)]) == 0
    paths = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[-1] for p in paths) == ["per_class.png", "results.png"]
    assert all(
        (out / "figures" / name).stat().st_size > 0 for name in ("results.png", "per_class.png")
    )


def test_run_one_trains_a_single_configuration(tmp_path, capsys):
    args = [
        "run-one",
        "--dataset",
        "synthetic",
        "--if",
        "10",
        "--loss",
        "sigmoid",
        "--beta",
        "0.99",
        "--epochs",
        "1",
        "--depth",
        "8",
        "--base-width",
        "4",
        "--batch-size",
        "64",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "CB sigmoid (β=0.99)" in capsys.readouterr().out
    (result,) = (tmp_path / "runs").glob("*.json")
    assert result.name.startswith("synthetic-if10-sigmoid-b0.99-s0-")


def _copy_committed(out: Path, preset: str, change: dict | None = None) -> list:
    """Copy the committed results of ``preset`` into ``out``; change the first one's fields."""
    configs = get_preset(preset)
    (out / "runs").mkdir(parents=True)
    for i, config in enumerate(configs):
        record = json.loads(result_path(STUDY, config).read_text(encoding="utf-8"))
        if i == 0 and change:
            record = {**record, **change, "environment": {**record["environment"], **change}}
        result_path(out, config).write_text(json.dumps(record), encoding="utf-8")
    return configs


def test_summary_says_when_runs_match_the_committed_study(tmp_path, capsys):
    _copy_committed(tmp_path, "cpu-quick")
    assert main(["summary", "--out", str(tmp_path), "--preset", "cpu-quick"]) == 0
    printed = capsys.readouterr().out
    assert (
        "- All 4 of these runs that the committed study in results/cpu-study also holds end "
        "with the same top-1 error there, to the last digit." in printed
    )
    assert "one seed cannot separate the methods from seed noise" in printed
    assert (
        "- Fashion-MNIST-LT at IF 100: class-balanced softmax (β = 0.9999) ended 5.57 points of "
        "top-1 error below plain softmax (19.86 % class-balanced, 25.43 % plain)." in printed
    )


def test_summary_explains_why_runs_can_differ_from_the_committed_study(tmp_path, capsys):
    change = {"top1_error": 22.26, "cpu_model": "Some CPU", "cpu_capability": "AVX2"}
    (first, *_) = _copy_committed(tmp_path, "cpu-quick", change)
    assert main(["summary", "--out", str(tmp_path), "--preset", "cpu-quick"]) == 0
    printed = capsys.readouterr().out
    assert (
        f"- 1 of the 4 runs that the committed study in results/cpu-study also holds ends with "
        f"another top-1 error there (e.g. {first.label}: 22.26 % here, " in printed
    )
    assert "a different CPU, vector ISA (AVX2, AVX-512), torch thread count or memory" in printed
    assert "training amplifies it" in printed
    assert "(default memory format); this one on cpu (x86_64, 2 cores, 2 torch threads)" in printed
    assert "Some CPU, AVX2 (default memory format)." in printed


def test_summary_names_the_memory_format_of_each_side(tmp_path, capsys):
    sessions = [{"runtime": {"compile": None, "checkpoint_every": 0.0, "channels_last": True}}]
    change = {"top1_error": 22.26, "session_environments": sessions}
    _copy_committed(tmp_path, "cpu-quick", change)
    assert main(["summary", "--out", str(tmp_path), "--preset", "cpu-quick"]) == 0
    printed = capsys.readouterr().out
    assert "(default memory format); this one on " in printed
    assert "(channels-last)." in printed


def test_figures_can_write_elsewhere(tmp_path, capsys):
    _copy_committed(tmp_path / "study", "cpu-quick")
    target = tmp_path / "figs"
    assert main(["figures", "--out", str(tmp_path / "study"), "--to", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["per_class.png", "results.png"]
    assert not (tmp_path / "study" / "figures").exists()


def test_speed_options_reach_the_runner_without_changing_the_runs(tmp_path, monkeypatch):
    from cbnotes import runner

    calls = []

    def fake_sweep(configs, out, **options):
        calls.append(([c.run_id for c in configs], options))
        return pd.DataFrame()

    monkeypatch.setattr(runner, "run_sweep", fake_sweep)
    base = ["run", "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu"]
    assert main(base) == 0
    assert main([*base, "--compile", "--checkpoint-every", "120"]) == 0
    assert main([*base, "--compile", "reduce-overhead"]) == 0
    (ids, plain), (same_ids, fast), (_, graphs) = calls
    assert same_ids == ids  # runtime options do not rename runs
    assert (plain["compile"], plain["checkpoint_every"]) == (False, None)
    assert (fast["compile"], fast["checkpoint_every"]) == ("default", 120.0)
    assert graphs["compile"] == "reduce-overhead"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--compile", "fastest"], "--compile takes no value or one of default"),
        (["--checkpoint-every", "-5"], "--checkpoint-every must be a number of seconds >= 0"),
    ],
)
def test_bad_speed_options_are_one_line_errors(argv, message, tmp_path, capsys):
    for command in (["run", "--preset", "smoke"], ["run-one", "--dataset", "synthetic"]):
        assert main([*command, *argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_lets_idle_openmp_threads_sleep_before_torch_loads(given, expected):
    """OMP_WAIT_POLICY=PASSIVE unless the environment sets it, before torch is imported (its
    OpenMP runtime reads the variable once, when it loads)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    code = (
        "import os, sys, cbnotes.cli\nprint(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [expected, "False"]

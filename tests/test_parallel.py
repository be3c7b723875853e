"""Runs trained at once in worker processes (`cbnotes run --jobs N`): the same result files as
runs trained alone with the same thread count, failures listed, Ctrl-C stops every worker and
the same command resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cbnotes.cli import main
from cbnotes.parallel import resolve_jobs, threads_per_job
from cbnotes.presets import get_preset
from cbnotes.results import checkpoint_path, result_path, run_status, trained_part
from cbnotes.runner import SweepError, run_experiment, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_preset("smoke")  # 3 runs: ResNet-8 width 4, 2 epochs, synthetic data


def _records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in (out / "runs").glob("*")}


def _alone(out: Path, configs, threads: int) -> dict[str, dict]:
    """``configs`` trained one after another in this process with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_sweep(configs, out, device="cpu", progress=False, fused=False)
    finally:
        torch.set_num_threads(before)
    return _records(out)


def test_runs_trained_in_workers_write_the_files_of_runs_trained_alone(tmp_path):
    parallel = tmp_path / "jobs"
    run_sweep(SMOKE, parallel, device="cpu", progress=False, jobs=2)
    alone = _alone(tmp_path / "alone", SMOKE, threads_per_job(2))
    records = _records(parallel)
    assert records.keys() == alone.keys()
    assert len(records) == len(SMOKE)
    for name, record in records.items():
        assert trained_part(record) == trained_part(alone[name])
        assert record["environment"]["torch_threads"] == threads_per_job(2)
    assert (parallel / "summary.csv").exists()
    # Again: every run is finished, nothing is trained or rewritten, no worker is needed.
    before = {p.name: p.read_bytes() for p in (parallel / "runs").iterdir()}
    run_sweep(SMOKE, parallel, device="cpu", progress=False, jobs=2)
    assert {p.name: p.read_bytes() for p in (parallel / "runs").iterdir()} == before


def test_a_run_that_fails_in_a_worker_is_listed_and_the_others_finish(tmp_path, ctrl_c_at):
    first, second, third = SMOKE
    ctrl_c_at(1)
    with pytest.raises(KeyboardInterrupt):  # leaves the checkpoint of `first` after epoch 0
        run_experiment(first, tmp_path / "first", device="cpu", progress=False)
    other = dataclasses.replace(first, seed=7)  # its checkpoint file will hold `first`'s run
    ckpt = checkpoint_path(tmp_path, other)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(checkpoint_path(tmp_path / "first", first).read_bytes())
    with pytest.raises(SweepError) as info:
        run_sweep([other, second, third], tmp_path, device="cpu", progress=False, jobs=2)
    assert list(info.value.failures) == [other.run_id]
    assert "different config" in info.value.failures[other.run_id]
    assert run_status(second, tmp_path) == "finished"
    assert run_status(third, tmp_path) == "finished"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cbnotes", "run", "--preset", "smoke", "--device", "cpu",
            "--no-progress", *args]  # fmt: skip


def test_ctrl_c_stops_every_worker_and_the_same_command_resumes(tmp_path):
    """30-epoch smoke runs, 2 jobs: Ctrl-C once a checkpoint exists ends with exit 130, no
    temporary file and no result of an unfinished run; the same command then finishes with the
    results of a sweep that was never interrupted."""
    args = ("--epochs", "30", "--jobs", "2")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [*_cli(*args, "--out", str(out))], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("*.pt")) if out.exists() else True:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    configs = [dataclasses.replace(c, epochs=30) for c in SMOKE]
    statuses = [run_status(c, out) for c in configs]
    assert "finished" not in statuses or statuses.count("finished") < len(configs)
    assert "interrupted" in statuses
    again = subprocess.run([*_cli(*args, "--out", str(out))], cwd=ROOT, env=env)
    assert again.returncode == 0
    straight = tmp_path / "straight"
    assert subprocess.run([*_cli(*args, "--out", str(straight))], cwd=ROOT, env=env).returncode == 0
    resumed, expected = _records(out), _records(straight)
    assert resumed.keys() == expected.keys()
    for name, record in resumed.items():
        assert trained_part(record) == trained_part(expected[name])
    assert all(result_path(out, c).exists() for c in configs)
    assert not list((out / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "0"], "--jobs must be an integer >= 1 or auto; got '0'"),
        (["--jobs", "many"], "--jobs must be an integer >= 1 or auto; got 'many'"),
        (["--jobs", "2", "--backend", "ray"], "--jobs is for --backend local"),
    ],
)
def test_bad_jobs_are_one_line_errors(args, message, tmp_path, capsys):
    code = main(["run", "--preset", "smoke", "--device", "cpu", "--out", str(tmp_path), *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cbnotes run: error: {message}")
    assert "\n" not in err


def test_resolve_jobs():
    assert resolve_jobs("auto", "cpu") == max(1, os.cpu_count() or 1)
    assert resolve_jobs(3) == 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
            resolve_jobs(bad)


def test_with_download_each_data_set_is_fetched_once_before_the_workers_start(monkeypatch):
    import cbnotes.data
    from cbnotes import parallel

    calls = []
    monkeypatch.setattr(cbnotes.data, "load_dataset", lambda name, **kw: calls.append((name, kw)))
    cifar = dataclasses.replace(SMOKE[0], dataset="cifar10", imbalance_factor=100.0)
    parallel._download_once([[SMOKE[0]], [SMOKE[1]], [cifar], SMOKE[1:]], "/data")
    assert [name for name, _ in calls] == ["synthetic", "cifar10"]
    assert all(kw["download"] is True for _, kw in calls)
    assert all(kw["root"] == "/data" for _, kw in calls)


def test_fewer_runs_than_jobs_share_all_the_cores(tmp_path, monkeypatch):
    from cbnotes import parallel

    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 16)  # read here, not in the workers
    run_sweep(SMOKE[:2], tmp_path, device="cpu", progress=False, jobs="auto")
    threads = [r["environment"]["torch_threads"] for r in _records(tmp_path).values()]
    assert threads == [8, 8]  # 2 runs: 2 workers of 16 // 2 threads, not 16 workers of 1


def test_both_loops_settle_a_unit_the_same_way(capsys):
    """runner.settle_unit, the one policy of the sequential loop and of the workers: records
    kept; a pack that falls back becomes its runs (a note); a failed run or pack is listed and
    the sweep goes on (said while runs are left)."""
    from cbnotes.runner import PackFallback, RunError, settle_unit

    pack, records, failures = list(SMOKE[:2]), {}, {}

    def fails(err):
        def outcome():
            raise err

        return outcome

    done = {c.run_id: {"run_id": c.run_id} for c in pack}
    assert settle_unit(pack, lambda: done, records, failures, left=1) == []
    assert records == done
    instead = settle_unit(pack, fails(PackFallback("the pack cannot")), records, failures, 1)
    assert instead == [[pack[0]], [pack[1]]]
    assert capsys.readouterr().err == "note: the pack cannot; training its runs one by one\n"
    assert settle_unit(pack, fails(RunError("boom")), records, failures, left=3) == []
    assert failures == {c.run_id: "boom" for c in pack}
    assert "failed: boom; going on with the other 3 run(s)" in capsys.readouterr().err
    assert settle_unit([SMOKE[2]], fails(FloatingPointError("nan")), records, failures, 0) == []
    assert failures[SMOKE[2].run_id] == "nan"
    assert capsys.readouterr().err == ""  # the last unit: nothing goes on
    full = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")
    assert settle_unit([SMOKE[2]], fails(full), records, failures, left=2) == []  # one run
    assert failures[SMOKE[2].run_id].startswith(
        "ran out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB); train fewer "
        "runs at once on this GPU (--jobs, --pack-size, --runs-per-gpu)"
    )
    assert "going on with the other 2 run(s)" in capsys.readouterr().err
    assert settle_unit(pack, fails(full), records, failures, 1) == [[pack[0]], [pack[1]]]
    assert "ran out of GPU memory; training its runs one by one" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):  # anything else stops the sweep
        settle_unit(pack, fails(KeyboardInterrupt()), records, failures, 1)

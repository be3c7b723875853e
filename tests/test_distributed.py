"""Sweeps on Ray keep the local runner's promises: same results, retries resume, no rework.

One local Ray instance (2 worker CPUs) serves the whole module; each run is a Ray task with
one CPU and one torch thread, so the local reference runs use one thread too (CPU results are
bit-identical only for the same thread count).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from cbnotes import distributed
from cbnotes.cli import main
from cbnotes.presets import get_preset
from cbnotes.results import frame, read_result, result_path
from cbnotes.runner import run_sweep

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'cbnotes[ray]'")


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module.

    Ray's raylet gives its dashboard agent a fixed 15 s to start (ray-project/ray#65983); on a
    machine busy with other work that can fail, so start is tried three times, and if Ray
    cannot start at all the module is skipped saying so (the raylet log has the details).
    """
    error: Exception | None = None
    for _ in range(3):
        try:
            ray.init(
                num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False
            )
            break
        except Exception as err:  # Ray raises a bare Exception for a startup timeout
            error = err
            ray.shutdown()
    else:
        pytest.skip(f"Ray could not start on this machine (3 tries): {error}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory):
    """The smoke preset trained by the local runner with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("local")
        run_sweep(get_preset("smoke"), out, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _comparable(record: dict) -> dict:
    """What a seeded run must reproduce wherever it trains (not timings or provenance)."""
    fields = ("epoch", "train_loss", "lr", "top1_error")
    history = [{k: h[k] for k in fields} for h in record["history"]]
    keys = ("run_id", "label", "config", "top1_error", "final_metrics", "classifier")
    return {"history": history, **{k: record[k] for k in keys}}


def test_the_smoke_sweep_on_ray_writes_the_local_runners_results(
    ray_instance, local_smoke, tmp_path
):
    configs = get_preset("smoke")
    df = distributed.run_sweep_ray(configs, tmp_path, device="cpu", progress=False)
    assert list(df["run_id"]) == [c.run_id for c in configs]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(
        p.name for p in (local_smoke / "runs").iterdir()
    )
    for config in configs:
        ours = read_result(result_path(tmp_path, config))
        local = read_result(result_path(local_smoke, config))
        assert _comparable(ours) == _comparable(local)
    assert (tmp_path / "summary.csv").exists()
    assert not list(tmp_path.glob(".cbnotes-ray-driver-*")), "the driver's marker is removed"

    # re-submitted, a finished sweep trains nothing and rewrites no result
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}
    again = distributed.run_sweep_ray(configs, tmp_path, device="cpu", progress=False)
    assert list(again["top1_error"]) == list(df["top1_error"])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == stamps


def test_a_fused_pack_is_one_ray_task_and_writes_the_local_packs_results(
    ray_instance, tmp_path_factory
):
    """With fused, the smoke preset's 3 runs are one pack, trained by one task; its result
    files equal those of the same pack trained by the local runner (one thread each)."""
    configs = get_preset("smoke")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = tmp_path_factory.mktemp("local-pack")
        run_sweep(configs, local, device="cpu", progress=False, fused=True, pack_size=3)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("ray-pack")
    assert distributed._units(configs, out, True, 3, "cpu") == [configs]
    df = distributed.run_sweep_ray(
        configs, out, device="cpu", progress=False, fused=True, pack_size=3
    )
    assert list(df["run_id"]) == [c.run_id for c in configs]
    for config in configs:
        ours = read_result(result_path(out, config))
        assert ours["pack"]["size"] == 3
        assert _comparable(ours) == _comparable(read_result(result_path(local, config)))


def test_a_worker_killed_mid_run_is_retried_and_resumes_from_its_checkpoint(
    ray_instance, local_smoke, tmp_path
):
    config = get_preset("smoke")[0]
    (tmp_path / distributed.CRASH_FILE).write_text(config.run_id, encoding="utf-8")
    distributed.run_sweep_ray([config], tmp_path, device="cpu", progress=False)
    assert not (tmp_path / distributed.CRASH_FILE).exists(), "the worker died once"
    record = read_result(result_path(tmp_path, config))
    assert record["sessions"] == 2, "the retry resumed from the checkpoint, not from scratch"
    assert _comparable(record) == _comparable(read_result(result_path(local_smoke, config)))
    assert not (tmp_path / "checkpoints" / f"{config.run_id}.pt").exists()


def test_a_worker_that_cannot_see_the_results_folder_fails_clearly(tmp_path):
    config = get_preset("smoke")[0]
    with pytest.raises(RuntimeError, match=r"cannot see the results folder .* shared storage"):
        distributed._task(config, str(tmp_path), ".cbnotes-ray-driver-missing", 1, {})


def test_without_ray_the_backend_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["run", "--preset", "smoke", "--backend", "ray", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert 'pip install "cbnotes[ray]"' in err
    assert len(err.splitlines()) == 1


def test_the_ray_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="runs_per_gpu must be an integer >= 1"):
        distributed.run_sweep_ray(get_preset("smoke"), tmp_path, runs_per_gpu=0)
    with pytest.raises(ValueError, match="cpus_per_run must be an integer >= 1"):
        distributed.run_sweep_ray(get_preset("smoke"), tmp_path, cpus_per_run=0)
    with pytest.raises(ValueError, match="configs is empty"):
        distributed.run_sweep_ray([], tmp_path)
    assert json.loads(json.dumps(distributed._resources("cuda", 1, 4))) == {
        "num_cpus": 1,
        "num_gpus": 0.25,
        "max_calls": 1,  # a fresh process per GPU task: CUDA reads its GPU once per process
    }
    assert distributed._resources("cpu", 2, 4) == {"num_cpus": 2, "num_gpus": 0}


def test_asking_for_cuda_on_a_cluster_without_gpus_is_an_error_not_a_hang(ray_instance, tmp_path):
    """Tasks that ask for a GPU no node has are never scheduled: say so at once."""
    with pytest.raises(ValueError, match="the Ray cluster has no GPU; use --device cpu"):
        distributed.run_sweep_ray(get_preset("smoke"), tmp_path, device="cuda", progress=False)
    assert list(tmp_path.iterdir()) == []  # no driver marker left behind


def test_the_cli_passes_the_cores_of_each_run_to_ray(monkeypatch, tmp_path):
    """--cpus-per-run sets each task's cores and torch threads (a run's numbers depend on its
    thread count: the local runner's count reproduces its files exactly)."""
    seen = {}

    def fake_sweep(configs, out_dir, **kwargs):
        seen.update(kwargs)
        return frame([])

    monkeypatch.setattr(distributed, "run_sweep_ray", fake_sweep)
    args = ["run", "--preset", "smoke", "--backend", "ray", "--out", str(tmp_path)]
    assert main([*args, "--cpus-per-run", "2", "--workers", "2"]) == 0
    assert seen["cpus_per_run"] == 2
    assert seen["workers"] == 2

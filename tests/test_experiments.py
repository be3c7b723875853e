"""The runner: stable run ids, one JSON per run, skipping finished runs, exact resumption."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cbnotes import _files
from cbnotes.config import ADDED_FIELDS, BASE_FIELDS, RunConfig
from cbnotes.imbalance import long_tailed_counts
from cbnotes.presets import (
    CPU_DEPTH,
    PRESETS,
    filter_configs,
    get_preset,
    with_overrides,
    with_seeds,
)
from cbnotes.results import (
    BEST_EPOCH_NOTE,
    SUMMARY_COLUMNS,
    aggregate,
    checkpoint_path,
    load_results,
    read_result,
    result_path,
    run_status,
    trained_part,
)
from cbnotes.runner import run_experiment, run_sweep
from cbnotes.training import Recipe, Trainer

TINY = RunConfig(
    "synthetic", 100, "softmax", 0.9999, depth=8, base_width=4, epochs=2, batch_size=64
)


def _no_temp_files(folder: Path) -> bool:
    """True when no half-written temporary file is left anywhere under ``folder``."""
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- RunConfig


def test_run_id_is_readable_and_ends_with_a_hash():
    config = RunConfig("fashion_mnist", 100, "softmax", 0.9999, seed=0)
    prefix, digest = config.run_id.rsplit("-", 1)
    assert prefix == "fashion_mnist-if100-softmax-b0.9999-s0"
    assert len(digest) == 8
    assert set(digest) <= set("0123456789abcdef")
    focal = RunConfig("cifar10", 50, "focal", 0.0, 2.0, seed=3)
    assert focal.run_id.startswith("cifar10-if50-focal-g2-b0-s3-")


def test_run_id_is_the_same_in_another_process():
    # The hash must not depend on dict order or Python's per-process hash randomization.
    config = RunConfig(
        seed=4, gamma=0.5, loss_type="focal", beta=0.99, dataset="cifar100", imbalance_factor=20
    )
    code = (
        "from cbnotes.config import RunConfig;"
        "print(RunConfig('cifar100', 20.0, 'focal', 0.99, 0.5, seed=4).run_id)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == config.run_id


def test_every_field_changes_the_run_id():
    base = RunConfig("synthetic", 100, "focal", 0.9999, 1.0)
    changes = dict(
        dataset="cifar10",
        imbalance_factor=50,
        loss_type="sigmoid",
        beta=0.99,
        gamma=2.0,
        seed=1,
        depth=14,
        base_width=8,
        epochs=3,
        batch_size=32,
        pad=2,
        data_seed=1,
        amp="off",
        eval_every=5,
        scheme="inverse",
        shortcut="subsample",
        init="kaiming",
    )
    method_only = {"tau", "max_margin", "scale"}  # tested per method below
    assert set(changes) | method_only == {f.name for f in dataclasses.fields(RunConfig)}
    ids = {base.run_id}
    for name, value in changes.items():
        extra = {"gamma": None} if name == "loss_type" else {}
        extra = {"beta": None} if name == "scheme" else extra
        ids.add(dataclasses.replace(base, **{name: value}, **extra).run_id)
    assert len(ids) == len(changes) + 1


@pytest.mark.parametrize(
    ("method", "param", "value"),
    [
        ("logit_adjusted", "tau", 0.5),
        ("ldam", "max_margin", 0.3),
        ("ldam", "scale", 10.0),
        ("drw", "beta", 0.999),
        ("resample", "scheme", "sqrt_inverse"),
    ],
)
def test_every_method_parameter_changes_the_run_id(method, param, value):
    default = RunConfig("synthetic", 100, method)
    changed = RunConfig("synthetic", 100, method, **{param: value})
    assert default.run_id != changed.run_id
    assert RunConfig("synthetic", 100, method, **{param: getattr(default, param)}) == default


def test_fields_added_later_keep_the_ids_of_runs_that_behave_as_before():
    """A run with the old behaviour of every added field hashes its first-release fields only."""
    config = RunConfig("synthetic", 100, "focal", 0.9999, 1.0, shortcut="subsample", init="kaiming")
    old = {k: v for k, v in config.to_dict().items() if k in BASE_FIELDS}
    text = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert config.config_hash == hashlib.sha256(text.encode()).hexdigest()[:8]
    assert set(ADDED_FIELDS) == {f.name for f in dataclasses.fields(RunConfig)} - set(BASE_FIELDS)
    assert RunConfig.from_dict(old) == config  # an old record reads back as what it was
    assert dataclasses.replace(config, shortcut="avgpool").config_hash != config.config_hash


def test_an_integer_and_a_float_imbalance_factor_are_the_same_run():
    assert RunConfig("synthetic", 100).run_id == RunConfig("synthetic", 100.0).run_id


def test_gamma_belongs_to_focal_loss_only():
    with pytest.raises(ValueError, match="gamma does not apply to method 'softmax'"):
        RunConfig("synthetic", 100, "softmax", 0.9999, gamma=1.0)
    with pytest.raises(ValueError, match="method 'focal' needs gamma"):
        RunConfig("synthetic", 100, "focal", 0.9999)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        RunConfig("synthetic", 100, "focal", 0.9999, "1")
    assert RunConfig("synthetic", 100, "focal", 0.9999, 1).gamma == 1.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": "imagenet"}, "dataset must be one of"),
        ({"imbalance_factor": 0.5}, "imbalance_factor must be"),
        ({"beta": 1.0}, r"beta must be a number in \[0, 1\)"),
        ({"beta": -0.1}, r"beta must be a number in \[0, 1\)"),
        ({"loss_type": "hinge"}, r"method \(loss_type\) must be one of softmax, sigmoid"),
        ({"scheme": "log"}, "scheme must be one of none, inverse"),
        ({"scheme": "inverse", "beta": 0.9}, "beta is used only by scheme='effective'"),
        ({"tau": 1.0}, "tau does not apply to method 'softmax'"),
        ({"loss_type": "logit_adjusted", "tau": -1}, "tau must be a finite number >= 0"),
        ({"loss_type": "ldam", "scale": 0}, "scale must be a finite number > 0"),
        ({"shortcut": "conv"}, "shortcut must be one of avgpool, subsample"),
        ({"init": "zeros"}, "init must be one of glorot, kaiming"),
        ({"depth": 10}, "depth must be 6n"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"amp": "yes"}, "amp must be one of"),
    ],
)
def test_bad_configs_are_rejected_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{"dataset": "synthetic", **changes})


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = RunConfig("synthetic", 100, "focal", 0.9, 0.5, seed=2)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        RunConfig.from_dict({**config.to_dict(), "lr": 0.1})


def test_200_epochs_is_the_papers_recipe_and_labels_name_the_method():
    assert RunConfig("cifar10").recipe() == Recipe()
    assert RunConfig("cifar10", batch_size=256, epochs=12).recipe().batch_size == 256
    assert RunConfig("cifar10").label == "softmax"
    assert RunConfig("cifar10", loss_type="focal", gamma=1).label == "focal γ=1.0"
    assert RunConfig("cifar10", 100, "focal", 0.9999, 1.0).label == "CB focal γ=1.0 (β=0.9999)"


# ----------------------------------------------------------------------------- presets


def test_presets_have_the_documented_sizes_and_unique_runs():
    sizes = {"paper": 260, "paper-best": 70, "beyond": 52, "cpu": 36, "cpu-quick": 4}
    sizes.update({"cpu-sweep": 14, "cpu-methods": 39, "smoke": 3, "smoke-methods": 26})
    assert {name: len(get_preset(name)) for name in PRESETS} == sizes
    for name in PRESETS:
        ids = [c.run_id for c in get_preset(name)]
        assert len(set(ids)) == len(ids), name
    paper_ids = {c.run_id for c in get_preset("paper")}
    assert {c.run_id for c in get_preset("paper-best")} <= paper_ids
    assert {c.run_id for c in get_preset("cpu-quick")} <= {c.run_id for c in get_preset("cpu")}
    sweep = {c.run_id for c in get_preset("cpu-sweep")}
    shared = sweep & {c.run_id for c in get_preset("cpu")}
    assert shared == {c.run_id for c in get_preset("cpu-quick")}  # plain and CB, softmax + focal
    assert all(c.depth == CPU_DEPTH for c in get_preset("cpu"))
    assert all(PRESETS[name].methods for name in ("beyond", "cpu-methods", "smoke-methods"))
    assert not any(PRESETS[name].methods for name in ("paper", "paper-best", "cpu", "smoke"))


def test_the_paper_preset_uses_the_papers_grid():
    runs = get_preset("paper")
    assert {c.beta for c in runs} == {0.0, 0.9, 0.99, 0.999, 0.9999}
    assert {c.gamma for c in runs if c.loss_type == "focal"} == {0.5, 1.0, 2.0}
    assert all(c.depth == 32 and c.epochs == 200 and c.batch_size == 128 for c in runs)
    # 5 plain + 4 β × (softmax, sigmoid, 3 focal γ) per column, plain only at IF 1
    assert len(filter_configs(runs, dataset="cifar10", imbalance_factor=100)) == 25
    assert len(filter_configs(runs, dataset="cifar10", imbalance_factor=1)) == 5


def test_filters_select_and_reject_values_no_run_has():
    cpu = get_preset("cpu")
    picked = filter_configs(cpu, imbalance_factor=10, loss_type=["focal"], seeds=[0, 2])
    assert len(picked) == 4
    assert all(c.imbalance_factor == 10 and c.loss_type == "focal" for c in picked)
    with pytest.raises(ValueError, match="imbalance_factor"):
        filter_configs(cpu, imbalance_factor=7)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("papr")
    assert len(with_seeds(get_preset("cpu-quick"), [0, 1, 2, 3])) == 16
    assert {c.epochs for c in with_overrides(cpu, epochs=3)} == {3}


# ----------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """A finished smoke sweep (3 tiny runs on synthetic data)."""
    out = tmp_path_factory.mktemp("smoke")
    df = run_sweep(get_preset("smoke"), out, device="cpu", progress=False)
    return out, df


def test_a_sweep_writes_one_json_per_run_and_a_tidy_summary(smoke_dir):
    out, df = smoke_dir
    configs = get_preset("smoke")
    assert sorted(p.stem for p in (out / "runs").glob("*.json")) == sorted(
        c.run_id for c in configs
    )
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert sorted(summary["run_id"]) == sorted(c.run_id for c in configs)
    assert list(df["run_id"]) == [c.run_id for c in configs]
    assert df["top1_error"].between(0, 100).all()
    assert not list((out / "checkpoints").glob("*.pt"))
    assert _no_temp_files(out)


def test_a_result_records_the_headline_the_best_epoch_and_provenance(smoke_dir):
    out, _ = smoke_dir
    config = get_preset("smoke")[0]
    record = json.loads(result_path(out, config).read_text(encoding="utf-8"))
    assert record["config"] == config.to_dict()
    assert record["top1_error"] == record["final_metrics"]["top1_error"]
    assert record["top1_error"] == record["history"][-1]["top1_error"]
    assert record["best_top1_error"] == min(h["top1_error"] for h in record["history"])
    assert record["best_top1_error_note"] == BEST_EPOCH_NOTE
    assert len(record["history"]) == config.epochs
    assert record["train_counts"] == long_tailed_counts(200, 10, 100)
    assert len(record["final_metrics"]["per_class_accuracy"]) == 10
    assert len(record["classifier"]["weight_norms"]) == 10
    for key in ("device", "torch", "torchvision", "cbnotes", "git_rev", "cpu_capability"):
        assert key in record["environment"]
    assert record["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["images_per_second"] > 0
    assert run_status(config, out) == "finished"


def test_rerunning_skips_finished_runs(smoke_dir, monkeypatch):
    out, df = smoke_dir

    def must_not_train(self, epoch):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Trainer, "train_epoch", must_not_train)
    again = run_sweep(get_preset("smoke"), out, device="cpu", progress=False)
    pd.testing.assert_frame_equal(again, df)


def test_load_results_and_aggregate_pool_seeds(smoke_dir):
    out, _ = smoke_dir
    df = load_results(out)
    assert len(df) == 3
    assert isinstance(df["per_class_accuracy"].iloc[0], list)
    fake = pd.concat([df.iloc[[0]]] * 3, ignore_index=True)
    fake["seed"] = [0, 1, 2]
    fake["top1_error"] = [10.0, 12.0, 17.0]
    agg = aggregate(fake)
    assert len(agg) == 1
    assert agg["n"].iloc[0] == 3
    assert agg["seeds"].iloc[0] == "0 1 2"
    assert agg["top1_error_mean"].iloc[0] == pytest.approx(13.0)
    assert agg["top1_error_std"].iloc[0] == pytest.approx(np.std([10, 12, 17], ddof=1))


def _comparable(record: dict) -> dict:
    """What must be identical between an interrupted-and-resumed run and an uninterrupted one."""
    history = [
        {k: h[k] for k in ("epoch", "train_loss", "lr", "top1_error")} for h in record["history"]
    ]
    return {
        "history": history,
        "final": record["final_metrics"],
        "best": (record["best_top1_error"], record["best_epoch"]),
    }


def test_an_interrupted_run_resumes_where_it_stopped_and_ends_identically(
    tmp_path, monkeypatch, ctrl_c_at
):
    reference = run_experiment(TINY, tmp_path / "straight", device="cpu", progress=False)

    out = tmp_path / "interrupted"
    trained: list[int] = []
    original = ctrl_c_at(1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, out, device="cpu", progress=False)
    assert checkpoint_path(out, TINY).exists()
    assert not result_path(out, TINY).exists()
    assert run_status(TINY, out) == "interrupted"
    assert _no_temp_files(out)

    def record_epochs(self, epoch):
        trained.append(epoch)
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", record_epochs)
    resumed = run_experiment(TINY, out, device="cpu", progress=False)
    assert trained == [1], "epoch 0 must not be trained again"
    assert resumed["sessions"] == 2
    assert _comparable(resumed) == _comparable(reference)
    assert not checkpoint_path(out, TINY).exists()
    assert result_path(out, TINY).exists()


def test_a_run_resumes_in_the_memory_format_it_started_with(tmp_path, monkeypatch, ctrl_c_at):
    """A checkpoint written in the default layout (cbnotes on the CPU before channels-last
    became the default there) resumes in that layout, so that the run ends as it would have
    uninterrupted, bit for bit; a new run uses channels-last."""
    from cbnotes import runner

    today = runner.build_trainer

    def flat_by_default(*args, channels_last=None, **kwargs):
        return today(
            *args, channels_last=False if channels_last is None else channels_last, **kwargs
        )

    monkeypatch.setattr(runner, "build_trainer", flat_by_default)
    reference = run_experiment(TINY, tmp_path / "straight", device="cpu", progress=False)
    assert reference["session_environments"][0]["runtime"]["channels_last"] is False
    out = tmp_path / "interrupted"
    train_epoch = ctrl_c_at(1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, out, device="cpu", progress=False)
    monkeypatch.setattr(runner, "build_trainer", today)
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    resumed = run_experiment(TINY, out, device="cpu", progress=False)
    assert [s["runtime"]["channels_last"] for s in resumed["session_environments"]] == [False] * 2
    assert _comparable(resumed) == _comparable(reference)
    fresh = run_experiment(TINY, tmp_path / "fresh", device="cpu", progress=False)
    assert fresh["session_environments"][0]["runtime"]["channels_last"] is True


def test_a_checkpoint_of_another_config_is_refused(tmp_path, ctrl_c_at):
    ctrl_c_at(1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, tmp_path, device="cpu", progress=False)
    other = dataclasses.replace(TINY, seed=1)
    checkpoint_path(tmp_path, other).write_bytes(checkpoint_path(tmp_path, TINY).read_bytes())
    with pytest.raises(ValueError, match=r"different config \(seed: 0 != 1\)"):
        run_experiment(other, tmp_path, device="cpu", progress=False)


def test_run_sweep_needs_configs(tmp_path):
    with pytest.raises(ValueError, match="configs is empty"):
        run_sweep([], tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "missing")


def test_atomic_writes_leave_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.json"
    _files.write_json_atomic(target, {"x": 1})

    def crash_while_writing() -> None:
        with _files.atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash"):
        crash_while_writing()
    assert json.loads(target.read_text()) == {"x": 1}
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_give_an_ordinary_files_permissions_not_mkstemps_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        _files.write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask


def test_a_write_that_fails_keeps_the_old_file_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    _files.write_json_atomic(target, {"x": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(_files.PlaceError) as info:
        _files.write_json_atomic(target, {"x": 2})
    assert str(info.value) == (
        f"cannot write {target} (no space left on device); free some space or choose a place "
        f"on another disk"
    )
    assert json.loads(target.read_text()) == {"x": 1}
    assert _no_temp_files(tmp_path)


def test_check_out_dir_creates_the_folder_and_leaves_nothing_in_it(tmp_path):
    folder = _files.check_out_dir(tmp_path / "new" / "deeper")
    assert folder.is_dir()
    assert list(folder.iterdir()) == []
    with pytest.raises(FileNotFoundError, match=r"results folder .* does not exist; check"):
        _files.check_out_dir(tmp_path / "missing", write=False)
    assert not (tmp_path / "missing").exists(), "a read check creates nothing"


def test_summary_csv_is_written_only_when_its_content_changes(tmp_path):
    _files.write_text_atomic(tmp_path / "s.csv", "a\n")
    before = (tmp_path / "s.csv").stat().st_mtime_ns
    assert _files.write_text_if_changed(tmp_path / "s.csv", "a\n") is False
    assert (tmp_path / "s.csv").stat().st_mtime_ns == before
    assert _files.write_text_if_changed(tmp_path / "s.csv", "b\n") is True
    assert (tmp_path / "s.csv").read_text() == "b\n"


# ----------------------------------------------------------------------------- runtime options


def _trained(path: Path) -> dict:
    """A result file's trained part (:func:`cbnotes.results.trained_part`)."""
    return trained_part(json.loads(path.read_text(encoding="utf-8")))


def test_runtime_options_are_not_run_config_fields():
    """compile and checkpoint_every change the speed, not the run: not hashed, not stored."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert not fields & {"compile", "checkpoint_every", "channels_last"}


def test_compile_reaches_the_trainer_keeps_the_run_id_and_is_recorded(tmp_path, monkeypatch):
    from cbnotes import training

    modes = []

    def fake_compile(model, mode):
        modes.append(mode)
        return model

    monkeypatch.setattr(training, "compile_model", fake_compile)
    record = run_experiment(TINY, tmp_path, device="cpu", progress=False, compile=True)
    assert modes == ["default"]
    assert record["run_id"] == TINY.run_id
    assert result_path(tmp_path, TINY).exists()
    assert record["session_environments"][-1]["runtime"] == {
        "compile": "default",
        "checkpoint_every": 0.0,
        "channels_last": True,
        "precision": "float32",  # amp="auto" on a CPU: no autocast
    }
    with pytest.raises(ValueError, match="compile must be"):
        run_experiment(dataclasses.replace(TINY, seed=5), tmp_path, device="cpu", compile="x")


def test_checkpoint_seconds_default_by_device_and_reject_bad_values():
    from cbnotes.runner import checkpoint_seconds

    assert checkpoint_seconds(None, torch.device("cpu")) == 0.0
    assert checkpoint_seconds(None, torch.device("cuda")) == 60.0
    assert checkpoint_seconds(30, torch.device("cuda")) == 30.0
    for bad in (-1, float("nan"), "60", True):
        with pytest.raises(ValueError, match="checkpoint_every"):
            checkpoint_seconds(bad, torch.device("cpu"))


def test_time_based_checkpoints_resume_to_the_same_result_file(tmp_path, monkeypatch):
    """Every epoch takes 6 s by a fake clock and checkpoints come at most every 10 s: the one
    written after epoch 1 (12 s) holds 2 epochs; Ctrl-C in epoch 3 and a resume from it end
    with the result file of an uninterrupted run, bit for bit (but for clocks and sessions)."""
    from cbnotes import runner

    config = dataclasses.replace(TINY, epochs=4)
    run_experiment(config, tmp_path / "straight", device="cpu", progress=False)
    clock = [0.0]
    monkeypatch.setattr(runner, "_monotonic", lambda: clock[0])
    original = Trainer.train_epoch
    interrupt_at, trained = [3], []

    def six_seconds(self, epoch):
        if epoch == interrupt_at[0]:
            raise KeyboardInterrupt
        trained.append(epoch)
        clock[0] += 6.0
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", six_seconds)
    out, saved = tmp_path / "timed", []
    with pytest.raises(KeyboardInterrupt):
        run_experiment(
            config,
            out,
            device="cpu",
            progress=False,
            checkpoint_every=10,
            after_checkpoint=saved.append,
        )
    assert saved == [1]  # not after epoch 0 (6 s) nor after epoch 2 (6 s after the save)
    state = torch.load(checkpoint_path(out, config), weights_only=True)
    assert len(state["trainer"]["history"]) == 2
    interrupt_at[0], trained[:] = None, []
    resumed = run_experiment(config, out, device="cpu", progress=False, checkpoint_every=10)
    assert trained == [2, 3]
    assert resumed["sessions"] == 2
    assert not checkpoint_path(out, config).exists()
    straight = _trained(result_path(tmp_path / "straight", config))
    assert _trained(result_path(out, config)) == straight


def test_an_interruption_before_the_first_time_based_checkpoint_says_so(
    tmp_path, capsys, ctrl_c_at
):
    ctrl_c_at(1)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, tmp_path, device="cpu", progress=False, checkpoint_every=3600)
    assert not checkpoint_path(tmp_path, TINY).exists()
    assert f"{TINY.run_id} has no epoch of 2 saved yet" in capsys.readouterr().err


def test_the_headline_is_the_last_epoch_when_evaluating_every_k_epochs(tmp_path):
    config = dataclasses.replace(TINY, epochs=3, eval_every=2)
    record = run_experiment(config, tmp_path, device="cpu", progress=False)
    assert [h["top1_error"] is not None for h in record["history"]] == [False, True, True]
    assert record["top1_error"] == record["history"][-1]["top1_error"]
    assert record["top1_error"] == record["final_metrics"]["top1_error"]


def test_a_sweep_loads_each_data_set_once(tmp_path, monkeypatch):
    """The smoke preset's 3 runs share one data set: the sweep reads it once (DataCache),
    and the runs end as they do when each loads its own (compared with single runs)."""
    from cbnotes import data

    calls = []
    real = data.load_dataset

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs["name"])
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "load_dataset", counting)
    configs = get_preset("smoke")
    swept = run_sweep(configs, tmp_path / "sweep", device="cpu", progress=False)
    assert calls == ["synthetic"]
    alone = run_experiment(configs[-1], tmp_path / "alone", device="cpu", progress=False)
    assert len(calls) == 2
    assert swept["top1_error"].iloc[-1] == alone["top1_error"]
    assert (
        alone["history"][-1]["train_loss"]
        == read_result(tmp_path / "sweep" / "runs" / f"{configs[-1].run_id}.json")["history"][-1][
            "train_loss"
        ]
    )


def test_the_cuda_rng_state_is_the_training_devices_and_old_lists_still_resume(monkeypatch):
    """A checkpoint holds the current CUDA device's RNG state, not every visible GPU's: a run
    saved where 2 GPUs were visible resumes where 1 is (a Ray task), which restoring the list
    of all of them failed on (IndexError, and the checkpoint was set aside as damaged).
    Checkpoints of earlier versions hold that list: its current device's entry is used."""
    from cbnotes.runner import _rng_state, _set_rng_state

    states = [torch.full((4,), i, dtype=torch.uint8) for i in range(2)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[1])
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state)
    )
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    saved = _rng_state()
    assert torch.equal(saved["cuda"], states[1])
    _set_rng_state(saved)
    _set_rng_state({"cpu": saved["cpu"], "cuda": states})  # an older checkpoint, 2 GPUs
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)  # a GPU it did not list
    _set_rng_state({"cpu": saved["cpu"], "cuda": states})
    assert [int(s[0]) for s in restored] == [1, 0, 0]

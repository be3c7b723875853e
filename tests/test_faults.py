"""Fault injection: bad files and bad places get a one-line message and the right exit status,
and no sweep dies for one run.

Each section reproduces one item of the hardening issue: damaged checkpoints (1), an --out
that cannot be written (2), a read-only results folder (3), copied result files (4), result
files of the wrong shape (5), a read-only data folder (6), export to a bad place (7),
misleading messages (8), the loss state-dict check (9) and the torch thread count (10).

The machine that runs the tests may be root, whom chmod does not stop: every read-only case
runs twice, once with chmod (skipped, with the reason, when a probe shows it has no effect)
and once with the writes into the folder made to fail with PermissionError, as they would.
Training is kept to a few one-epoch runs of a tiny ResNet on the synthetic set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from fakedata import idx_bytes, write_fashion_mnist_gz

from cbnotes import _files, presets
from cbnotes import runner as cbrunner
from cbnotes.analysis import cb_vs_plain, results_for
from cbnotes.cli import main
from cbnotes.config import RunConfig
from cbnotes.losses import ClassBalancedLoss
from cbnotes.results import (
    InvalidResultError,
    aggregate,
    checkpoint_path,
    load_results,
    read_result,
    result_path,
    run_status,
    write_summary,
)
from cbnotes.runner import RunError, SweepError, run_experiment, run_sweep
from cbnotes.training import Trainer

FAST = RunConfig("synthetic", 100, "softmax", 0.0, depth=8, base_width=4, epochs=1, batch_size=64)
FAST_CB = dataclasses.replace(FAST, beta=0.9999)
#: `cbnotes run-one` options that give FAST (without --out).
FAST_ARGS = [
    *("--dataset", "synthetic", "--if", "100", "--loss", "softmax", "--beta", "0"),
    *("--epochs", "1", "--depth", "8", "--base-width", "4", "--batch-size", "64"),
    *("--device", "cpu", "--no-progress"),
]


# ----------------------------------------------------------------------------- helpers


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return (status, stdout, stderr), and check no traceback shows."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one line a user error prints (and check that it is one line)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _no_temp_files(folder: Path) -> bool:
    """True when no half-written temporary file is left anywhere under ``folder``."""
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _deny(path: object) -> None:
    raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))


def simulate_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make every way this package creates, replaces or removes a file inside ``folder`` fail
    with PermissionError, as in a folder without write permission (mkdir of an existing
    folder still says it exists, as the kernel does)."""
    root = folder.resolve()

    def inside(path: object) -> bool:
        return Path(os.fspath(path)).resolve().is_relative_to(root)

    real_mkstemp, real_mkdir = tempfile.mkstemp, os.mkdir
    real_replace, real_rename, real_unlink = os.replace, os.rename, os.unlink

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            _deny(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, "File exists", os.fspath(path))
            _deny(path)
        return real_mkdir(path, *args, **kwargs)

    def move(real):
        def guarded(src, dst, *args, **kwargs):
            if inside(src) or inside(dst):
                _deny(dst)
            return real(src, dst, *args, **kwargs)

        return guarded

    def unlink(path, *args, **kwargs):
        if inside(path):
            _deny(path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "replace", move(real_replace))
    monkeypatch.setattr(os, "rename", move(real_rename))
    monkeypatch.setattr(os, "unlink", unlink)


def _chmod_tree(folder: Path, mode: int) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(mode)


def _chmod_stops_writes(folder: Path) -> bool:
    """Probe: can this process still create a file in ``folder`` after chmod 555?"""
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return True
    probe.unlink()
    return False


@pytest.fixture(params=["chmod", "simulated"])
def read_only(request, monkeypatch):
    """A function that makes a folder read-only: by chmod 555 (skipped where it has no
    effect, as for root), or by making the writes into it fail as they would."""
    changed: list[Path] = []

    def apply(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if request.param == "simulated":
            simulate_read_only(monkeypatch, folder)
            return folder
        _chmod_tree(folder, 0o555)
        changed.append(folder)
        if not _chmod_stops_writes(folder):
            pytest.skip(
                "chmod does not stop this process from writing (it runs as root); the "
                "'simulated' case covers the same code path"
            )
        return folder

    yield apply
    for folder in changed:
        _chmod_tree(folder, 0o755)


def disk_full(monkeypatch: pytest.MonkeyPatch, only: str = "") -> None:
    """Make every flush to disk whose file name contains ``only`` fail with ENOSPC."""
    real = _files._write_all

    def write_all(path: Path, data: bytes) -> None:
        if only in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(_files, "_write_all", write_all)


def must_not_load_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any data is loaded (a bad place must be found before that)."""

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the results folder was checked")

    monkeypatch.setattr("cbnotes.data.load_dataset", refuse)


def must_not_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any epoch is trained."""

    def refuse(self, epoch):
        raise AssertionError("an epoch was trained")

    monkeypatch.setattr(Trainer, "train_epoch", refuse)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """FAST finished with 1 torch thread, the checkpoint it wrote after its one epoch, and
    beside it a FAST_CB result made from FAST's (one epoch of training, once per module)."""
    finished = tmp_path_factory.mktemp("finished")
    kept = {}

    def keep(epoch: int) -> None:
        kept["checkpoint"] = checkpoint_path(finished, FAST).read_bytes()

    with torch_threads(1):
        record = run_experiment(FAST, finished, device="cpu", progress=False, after_checkpoint=keep)
    balanced = {
        **record,
        "run_id": FAST_CB.run_id,
        "label": FAST_CB.label,
        "config": FAST_CB.to_dict(),
        "top1_error": record["top1_error"] / 2,
    }
    _files.write_json_atomic(result_path(finished, FAST_CB), balanced)
    write_summary(finished)
    return finished, kept["checkpoint"]


@pytest.fixture
def out(tmp_path, trained):
    """A copy of the finished results folder (FAST and FAST_CB) to damage."""
    folder = tmp_path / "out"
    shutil.copytree(trained[0], folder)
    return folder


@pytest.fixture
def faults_preset(monkeypatch):
    """A preset 'faults' of FAST and FAST_CB, for `summary --preset`."""
    preset = presets.Preset("faults", "test preset", lambda: [FAST, FAST_CB])
    monkeypatch.setitem(presets.PRESETS, "faults", preset)


# ----------------------------------------------------------------------------- 1. checkpoints


@pytest.mark.parametrize("damage", ["junk", "empty", "truncated", "half", "not a checkpoint"])
def test_a_damaged_checkpoint_is_recognized_as_damaged_with_its_path(damage, tmp_path, trained):
    good = trained[1]
    content = {
        "junk": b"junk\n",
        "empty": b"",
        "truncated": good[:-10],
        "half": good[: len(good) // 2],
    }
    path = tmp_path / "run.pt"
    if damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content[damage])
    with pytest.raises(cbrunner.DamagedCheckpointError, match="is damaged") as info:
        cbrunner._load_checkpoint(path, FAST)
    assert str(path) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_a_junk_checkpoint_is_set_aside_and_its_run_trained_again(tmp_path, capsys):
    out = tmp_path / "o"
    ckpt = checkpoint_path(out, FAST)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"junk\n")
    code, printed, err = cli(["run-one", *FAST_ARGS, "--out", out], capsys)
    assert code == 0
    assert f"warning: checkpoint {ckpt} is damaged: torch.load fails with KeyError" in err
    assert f"training {FAST.run_id} again from epoch 0" in err
    (aside,) = ckpt.parent.glob(f"{ckpt.name}.damaged-*")
    assert aside.read_bytes() == b"junk\n", "a damaged checkpoint is never deleted"
    assert str(aside) in err
    assert run_status(FAST, out) == "finished"
    assert "1 run(s)" in printed
    assert main(["list", "--out", str(out)]) == 0
    assert f"damaged checkpoint set aside (delete it when you no longer need it): {aside}" in (
        capsys.readouterr().out
    )


def test_a_checkpoint_that_loads_but_cannot_be_resumed_is_set_aside(tmp_path, trained, capsys):
    ckpt = checkpoint_path(tmp_path, FAST)
    ckpt.parent.mkdir(parents=True)
    state = torch.load(io.BytesIO(trained[1]), weights_only=True)
    state["trainer"]["format"] = 7  # a trainer state this version cannot load
    torch.save(state, ckpt)
    record = run_experiment(FAST, tmp_path, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert f"warning: checkpoint {ckpt} is damaged: resuming from it fails with ValueError" in err
    assert record["sessions"] == 1
    assert len(record["history"]) == 1, "trained again from epoch 0"
    assert len(list(ckpt.parent.glob("*.damaged-*"))) == 1


def test_a_checkpoint_that_cannot_be_set_aside_fails_only_its_run(out, monkeypatch, capsys):
    stuck = dataclasses.replace(FAST, seed=3)
    ckpt = checkpoint_path(out, stuck)
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(b"")
    real_rename = os.rename
    monkeypatch.setattr(
        os, "rename", lambda src, dst: _deny(src) if src == ckpt else real_rename(src, dst)
    )
    must_not_train(monkeypatch)
    with pytest.raises(SweepError) as info:
        run_sweep([stuck, FAST], out, device="cpu", progress=False)
    why = info.value.failures[stuck.run_id]
    assert why == (
        f"checkpoint {ckpt} is damaged: it is empty, and it cannot be set aside (permission "
        f"denied); move or delete it yourself and run again"
    )
    assert list(info.value.results["run_id"]) == [FAST.run_id]
    assert info.value.total == 2
    assert f"error: run {stuck.run_id} failed: " in capsys.readouterr().err
    assert ckpt.exists()


def test_a_sweep_goes_on_after_a_failed_run_and_lists_it_at_the_end(out, capsys):
    bad = dataclasses.replace(FAST, seed=1)
    result_path(out, bad).write_text("[]\n", encoding="utf-8")
    fresh = dataclasses.replace(FAST, seed=2)
    with pytest.raises(SweepError) as info:
        run_sweep([bad, fresh], out, device="cpu", progress=False)
    assert set(info.value.failures) == {bad.run_id}
    assert run_status(fresh, out) == "finished", "the run after the failed one was trained"
    assert result_path(out, bad).read_text(encoding="utf-8") == "[]\n", "never overwritten"


def test_the_cli_exits_1_when_some_runs_failed_and_says_what_to_do(out, capsys):
    path = result_path(out, FAST)
    path.write_text('{"run_id": "x"}', encoding="utf-8")
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", out], capsys)
    assert code == 1
    reason = "it lacks the field(s) config, top1_error"
    assert err.splitlines() == [
        f"warning: skipped {path}: not a valid result ({reason}); move it out of "
        f"{path.parent} (or delete it)",
        "cbnotes run-one: 1 of 1 run(s) failed (the others finished):",
        f"  {FAST.run_id}: its result file {path} is not a valid result ({reason}); it is not "
        f"overwritten: move it out of {path.parent} (or delete it) to train {FAST.run_id} "
        f"again",
        "do what each line says and run the same command again; finished runs are skipped",
    ]
    assert path.read_text(encoding="utf-8") == '{"run_id": "x"}'


def test_a_loss_that_becomes_nan_fails_its_run_not_the_sweep(out, monkeypatch, capsys):
    def nan_loss(self, epoch):
        raise FloatingPointError(f"the train loss became nan in epoch {epoch}; lower the lr")

    monkeypatch.setattr(Trainer, "train_epoch", nan_loss)
    nan_run = dataclasses.replace(FAST, seed=4)
    with pytest.raises(SweepError) as info:
        run_sweep([nan_run, FAST_CB], out, device="cpu", progress=False)
    assert info.value.failures == {
        nan_run.run_id: "the train loss became nan in epoch 0; lower the lr"
    }
    assert list(info.value.results["run_id"]) == [FAST_CB.run_id]
    code, _, err = cli(["run-one", *FAST_ARGS, "--seed", "4", "--out", out], capsys)
    assert code == 1
    assert f"  {nan_run.run_id}: the train loss became nan in epoch 0" in err


def test_a_checkpoint_of_another_config_fails_only_its_run(out, trained, monkeypatch):
    other = dataclasses.replace(FAST, seed=1)
    ckpt = checkpoint_path(out, other)
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(trained[1])  # FAST's checkpoint under another run's name
    must_not_train(monkeypatch)
    with pytest.raises(SweepError) as info:
        run_sweep([other, FAST], out, device="cpu", progress=False)
    assert "was written for a different config (seed: 0 != 1)" in info.value.failures[other.run_id]
    assert ckpt.read_bytes() == trained[1], "kept: it is not damaged"


def test_ctrl_c_stops_the_sweep_at_once(tmp_path, monkeypatch, capsys):
    def interrupt(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_epoch", interrupt)
    second = dataclasses.replace(FAST, seed=5)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([FAST, second], tmp_path, device="cpu", progress=False)
    assert run_status(second, tmp_path) == "pending", "the next run never started"
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", tmp_path], capsys)
    assert code == 130
    assert "run the same command again to resume" in err


# ----------------------------------------------------------------------------- 2. bad --out


def test_an_out_that_is_a_file_is_refused_before_any_data_is_loaded(tmp_path, monkeypatch, capsys):
    must_not_load_data(monkeypatch)
    target = tmp_path / "afile"
    target.write_text("x")
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", target], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes run-one: error: results folder {target} is a file, not a folder; give the "
        f"path of a folder"
    )
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", target / "sub"], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes run-one: error: cannot create results folder {target / 'sub'} (a part of "
        f"its path is a file, not a folder); choose another path"
    )


def test_a_read_only_out_is_refused_before_any_data_is_loaded(
    tmp_path, read_only, monkeypatch, capsys
):
    must_not_load_data(monkeypatch)
    folder = read_only(tmp_path / "ro")
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", folder], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes run-one: error: cannot write to results folder {folder} (permission "
        f"denied); choose a place you can write to"
    )


def test_a_full_disk_is_found_before_any_data_is_loaded(tmp_path, monkeypatch, capsys):
    must_not_load_data(monkeypatch)
    disk_full(monkeypatch)
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes run-one: error: cannot write to results folder {tmp_path / 'o'} (no space "
        f"left on device); free some space or choose a place on another disk"
    )
    assert _no_temp_files(tmp_path)


def test_a_disk_that_fills_up_during_training_is_a_clear_error(tmp_path, monkeypatch, capsys):
    def one_instant_epoch(self, *, on_epoch_end, **kwargs):
        on_epoch_end({"epoch": 0, "seconds": 0.0})  # the runner saves its checkpoint here

    monkeypatch.setattr(Trainer, "fit", one_instant_epoch)
    disk_full(monkeypatch, only=".pt.")  # checkpoints only: the folder check passes
    code, _, err = cli(["run-one", *FAST_ARGS, "--out", tmp_path], capsys)
    assert code == 2
    ckpt = checkpoint_path(tmp_path, FAST)
    assert error_line(err) == (
        f"cbnotes run-one: error: cannot write {ckpt} (no space left on device); free some "
        f"space or choose a place on another disk"
    )
    assert _no_temp_files(tmp_path)
    assert not ckpt.exists()


# ----------------------------------------------------------------------------- 3. read-only


def test_run_with_nothing_to_train_writes_nothing(out, read_only, monkeypatch, capsys):
    summary = out / "summary.csv"
    before = (summary.read_bytes(), summary.stat().st_mtime_ns)
    read_only(out)
    must_not_train(monkeypatch)
    code, printed, _ = cli(["run-one", *FAST_ARGS, "--out", out], capsys)
    assert code == 0
    assert "1 run(s)" in printed
    assert (summary.read_bytes(), summary.stat().st_mtime_ns) == before


def test_a_current_summary_is_not_rewritten_and_a_stale_one_is(out, monkeypatch):
    summary = out / "summary.csv"
    stamp = summary.stat().st_mtime_ns
    must_not_train(monkeypatch)
    run_sweep([FAST], out, device="cpu", progress=False)
    assert summary.stat().st_mtime_ns == stamp
    summary.write_text("stale\n")
    run_sweep([FAST], out, device="cpu", progress=False)
    assert len(load_results(out)) == 2
    assert summary.read_text().count("\n") == 3


def test_reading_commands_work_in_a_read_only_folder(out, read_only, faults_preset, capsys):
    read_only(out)
    for argv in (["list"], ["compare"], ["summary", "--preset", "faults"]):
        code, printed, err = cli([*argv, "--out", out], capsys)
        assert code == 0, err
        assert err == ""
        assert printed


def test_figures_in_a_read_only_folder_say_where_to_write_instead(out, tmp_path, read_only, capsys):
    read_only(out)
    code, _, err = cli(["figures", "--out", out], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes figures: error: cannot create figures folder {out / 'figures'} (permission "
        f"denied); choose a place you can write to"
    )
    elsewhere = tmp_path / "figs"
    assert cli(["figures", "--out", out, "--to", elsewhere], capsys)[0] == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["per_class.png", "results.png"]
    assert not (out / "figures").exists()


# ----------------------------------------------------------------------------- 4. copies


def test_a_copied_result_file_is_one_run(out, faults_preset, capsys):
    original = result_path(out, FAST)
    copy = original.with_name(f"{FAST.run_id} (1).json")
    shutil.copy(original, copy)
    df = load_results(out)
    assert sorted(df["run_id"]) == sorted([FAST.run_id, FAST_CB.run_id])
    warning = capsys.readouterr().err
    assert warning == (
        f"warning: {copy} holds run {FAST.run_id}, already read from {original}; counted once "
        f"(delete the copy)\n"
    )
    code, printed, err = cli(["list", "--out", out], capsys)
    assert code == 0
    assert printed.count(FAST.run_id) == 1
    assert err == warning
    assert aggregate(load_results(out))["n"].tolist() == [1, 1]
    assert cb_vs_plain(results_for([FAST, FAST_CB], out))["plain_n"].tolist() == [1]
    assert cli(["summary", "--out", out, "--preset", "faults"], capsys)[0] == 0
    target = out.parent / "export.csv"
    assert cli(["export", "--out", out, "--to", target], capsys)[0] == 0
    assert target.read_text().count("\n") == 3


def test_the_run_id_inside_a_file_identifies_the_run_not_its_name(out, capsys):
    original = result_path(out, FAST)
    moved = original.with_name("renamed by hand.json")
    original.rename(moved)
    assert FAST.run_id in list(load_results(out)["run_id"])
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- 5. wrong shape


WRONG_SHAPES = {
    "[]": "the JSON is a list, not an object",
    '{"run_id": "x"}': "it lacks the field(s) config, top1_error",
    "": "it is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    "{": "it is not valid JSON",
}


@pytest.mark.parametrize("text", list(WRONG_SHAPES))
def test_a_result_of_the_wrong_shape_is_skipped_by_every_reading_command(
    text, out, faults_preset, capsys
):
    bad = out / "runs" / "x.json"
    bad.write_text(text, encoding="utf-8")
    expected = f"warning: skipped {bad}: not a valid result ({WRONG_SHAPES[text]}"
    target = out.parent / "export.csv"
    for argv in (
        ["list"],
        ["compare"],
        ["summary", "--preset", "faults"],
        ["export", "--to", target],
    ):
        code, _, err = cli([*argv, "--out", out], capsys)
        assert code == 0, err
        assert error_line(err).startswith(expected)
        assert err.rstrip().endswith(f"move it out of {bad.parent} (or delete it)")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"top1_error": "12"}, "top1_error must be a number in [0, 100]; got '12'"),
        ({"top1_error": 140.0}, "top1_error must be a number in [0, 100]; got 140.0"),
        ({"config": {"dataset": "imagenet"}}, "its config is not valid: dataset must be one of"),
        ({"run_id": "other"}, "its run_id other is not that of its config"),
        ({"history": {}}, "history is an object, not a list"),
        ({"wall_seconds": "long"}, "wall_seconds is a string, of the wrong type"),
        ({"format": 99}, "it has format 99, newer than the 1 this cbnotes reads; upgrade"),
    ],
)
def test_a_result_record_is_checked_field_by_field(change, reason, out):
    record = read_result(result_path(out, FAST))
    path = out / "runs" / "edited.json"
    path.write_text(json.dumps({**record, **change}), encoding="utf-8")
    with pytest.raises(InvalidResultError) as info:
        read_result(path)
    assert info.value.reason.startswith(reason)
    assert str(info.value).startswith(f"result file {path} is not a valid result ({reason}")


def test_results_of_format_0_and_1_are_both_valid(out):
    record = read_result(result_path(out, FAST))
    assert record["format"] == 1
    old = {k: v for k, v in record.items() if k not in ("format", "session_environments")}
    path = out / "runs" / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    assert read_result(path) == old


def test_dry_run_shows_an_invalid_result_as_invalid(out, faults_preset, capsys):
    result_path(out, FAST).write_text("[]", encoding="utf-8")
    code, printed, _ = cli(["run", "--preset", "faults", "--dry-run", "--out", out], capsys)
    assert code == 0
    assert f"invalid     {FAST.run_id}" in printed
    assert f"finished    {FAST_CB.run_id}" in printed


# ----------------------------------------------------------------------------- 6. data folder


def test_a_read_only_data_folder_with_the_debian_files_says_which_variable_to_change(
    tmp_path, read_only, monkeypatch, capsys
):
    system = tmp_path / "debian"
    write_fashion_mnist_gz(system, train_per_class=3, test_per_class=2)
    monkeypatch.setenv("CBNOTES_FASHION_MNIST_DIR", str(system))
    data = read_only(tmp_path / "ro")
    monkeypatch.setenv("CBNOTES_DATA", str(data))
    args = ["run-one", *FAST_ARGS, "--dataset", "fashion_mnist", "--out", tmp_path / "o"]
    code, _, err = cli(args, capsys)
    assert code == 2
    raw = data / "FashionMNIST" / "raw"
    assert error_line(err) == (
        f"cbnotes run-one: error: fashion_mnist: cannot write to the data folder {raw} "
        f"(permission denied), where the Debian files of {system} are decompressed on first "
        f"use; set CBNOTES_DATA (or --data-root, root=) to a folder you can write to"
    )


def test_a_truncated_fashion_mnist_file_is_reported_as_truncated(tmp_path, monkeypatch, capsys):
    from cbnotes.data import load_dataset

    system = tmp_path / "debian"
    arrays = write_fashion_mnist_gz(system, train_per_class=3, test_per_class=2)
    monkeypatch.setenv("CBNOTES_FASHION_MNIST_DIR", str(system))
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        (raw / name).write_bytes(idx_bytes(array))
    damaged = raw / "train-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated") as info:
        load_dataset("fashion_mnist", root=tmp_path / "root")
    message = str(info.value)
    assert message.startswith(f"{damaged} has ")
    assert "the file is truncated or corrupt, delete it to have it decompressed again from" in (
        message
    )
    assert "not found" not in message


# ----------------------------------------------------------------------------- 7. export


def test_export_to_a_folder_or_an_unwritable_place_is_one_line(
    out, tmp_path, read_only, monkeypatch, capsys
):
    code, _, err = cli(["export", "--out", out, "--to", tmp_path], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes export: error: cannot write {tmp_path}: it is a folder; give the path of a "
        f"file, not of a folder"
    )
    folder = read_only(tmp_path / "ro")
    code, _, err = cli(["export", "--out", out, "--to", folder / "x.csv"], capsys)
    assert code == 2
    assert error_line(err) == (
        f"cbnotes export: error: cannot write {folder / 'x.csv'} (permission denied); choose "
        f"a place you can write to"
    )


def test_export_to_a_full_disk_leaves_no_half_written_file(out, tmp_path, monkeypatch, capsys):
    disk_full(monkeypatch)
    target = tmp_path / "x.csv"
    code, _, err = cli(["export", "--out", out, "--to", target], capsys)
    assert code == 2
    assert "(no space left on device); free some space" in error_line(err)
    assert not target.exists()
    assert _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- 8. messages


def test_listing_a_regular_file_says_it_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    for command in ("list", "compare"):
        code, _, err = cli([command, "--out", target], capsys)
        assert code == 2
        assert error_line(err) == (
            f"cbnotes {command}: error: results folder {target} is a file, not a folder; give "
            f"the path of a folder"
        )


def test_a_count_too_large_for_int64_is_named():
    from cbnotes.effective import class_balanced_weights

    with pytest.raises(ValueError, match=r"got 1180591620717411303424, larger than the largest"):
        class_balanced_weights([2**70, 5], 0.9)
    with pytest.raises(ValueError, match=r"got 1e\+30, larger than the largest supported count"):
        class_balanced_weights([1e30, 5], 0.9)
    with pytest.raises(ValueError, match=r"got None, which is not a number"):
        class_balanced_weights([None, 5], 0.9)
    assert class_balanced_weights([2**63 - 1, 5], 0.9).shape == (2,)


# ----------------------------------------------------------------------------- 9. losses


def test_a_non_focal_loss_takes_gamma_none_and_a_state_dict_of_other_weights_is_refused():
    counts = [500, 50, 5]
    loss = ClassBalancedLoss(counts, "softmax", 0.9999, gamma=None)
    assert torch.isfinite(loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])))
    with pytest.raises(ValueError, match=r"beta=0\.0"):
        loss.load_state_dict(ClassBalancedLoss(counts, "softmax", 0.0).state_dict())


# ----------------------------------------------------------------------------- 10. threads


def test_a_resume_with_another_thread_count_says_so_and_records_both(tmp_path, trained, capsys):
    ckpt = checkpoint_path(tmp_path, FAST)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(trained[1])  # its one epoch, trained with 1 torch thread
    with torch_threads(2):
        record = run_experiment(FAST, tmp_path, device="cpu", progress=False)
    assert (
        f"note: {FAST.run_id} was trained with 1 torch threads and resumes with 2; its "
        f"result will be valid but not bit-identical to an uninterrupted run"
    ) in capsys.readouterr().err
    assert [s["torch_threads"] for s in record["session_environments"]] == [1, 2]
    assert record["sessions"] == 2
    assert read_result(result_path(tmp_path, FAST)) == record


def test_run_error_is_a_value_error_for_library_callers():
    assert issubclass(RunError, ValueError)
    assert issubclass(_files.PlaceError, OSError)

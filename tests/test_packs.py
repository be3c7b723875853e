"""Fused sweeps (`cbnotes run --fused`): packs write the results of ordinary runs, resume bit
for bit, skip finished runs, set damaged checkpoints aside and fall back to single runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cbnotes import packs
from cbnotes.cli import main
from cbnotes.config import RunConfig
from cbnotes.fused import PackTrainer
from cbnotes.presets import get_preset
from cbnotes.results import checkpoint_path, read_result, result_path, trained_part
from cbnotes.runner import run_sweep
from cbnotes.training import Trainer

SMOKE = get_preset("smoke")  # 3 runs: ResNet-8 width 4, 2 epochs, synthetic data


def _run(*args: str) -> int:
    return main(["run", "--preset", "smoke", "--device", "cpu", "--no-progress", *args])


def _records(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in (out / "runs").glob("*")}


@pytest.fixture(scope="module")
def unfused(tmp_path_factory):
    """The smoke preset trained as today, through the CLI."""
    out = tmp_path_factory.mktemp("unfused")
    assert _run("--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """The smoke preset trained as one pack of 3, through the CLI."""
    out = tmp_path_factory.mktemp("fused")
    assert _run("--out", str(out), "--fused", "--pack-size", "3") == 0
    return out


# ----------------------------------------------------------------------------- results


def test_a_fused_sweep_writes_the_result_files_of_the_unfused_one(unfused, fused, capsys):
    plain, packed = _records(unfused), _records(fused)
    assert sorted(packed) == sorted(plain) == sorted(f"{c.run_id}.json" for c in SMOKE)
    for name, record in packed.items():
        assert set(record) == set(plain[name]) | {"pack"}
        assert read_result(fused / "runs" / name, run_id=record["run_id"]) == record
        assert record["config"] == plain[name]["config"]
        assert record["pack"]["size"] == 3
        assert sorted(record["pack"]["run_ids"]) == sorted(c.run_id for c in SMOKE)
        assert [set(h) for h in record["history"]] == [set(h) for h in plain[name]["history"]]
    assert not list((fused / "checkpoints").iterdir())
    assert (fused / "summary.csv").read_text().splitlines()[0] == (
        (unfused / "summary.csv").read_text().splitlines()[0]
    )
    capsys.readouterr()
    assert main(["summary", "--out", str(fused), "--preset", "smoke"]) == 0
    assert "warning" not in capsys.readouterr().err  # every result file read as valid


def test_in_float32_the_members_end_where_their_unfused_runs_end(unfused, fused):
    """Grouped convolutions round differently from plain ones, so a pack drifts from its runs
    in float32 (float64: 1e-14, tests/test_fused.py). Measured here (CPU, 1 thread, smoke
    preset): the same last-epoch top-1 error for all 3 runs (one test image of 500 differs
    after epoch 0 of plain softmax: 88.2 % vs 88.0 %), per-epoch train losses within 2.4e-4
    relative, head weight norms within 1.5e-3 (absolute). Asserted with margin for other
    CPUs: top-1 within 2 points at every epoch, losses within 1e-2, norms within 2e-2."""
    plain = _records(unfused)
    for name, record in _records(fused).items():
        other = plain[name]
        assert abs(record["top1_error"] - other["top1_error"]) <= 2.0
        for a, b in zip(record["history"], other["history"], strict=True):
            assert a["lr"] == b["lr"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-2)
            assert abs(a["top1_error"] - b["top1_error"]) <= 2.0
        norms = zip(
            record["classifier"]["weight_norms"], other["classifier"]["weight_norms"], strict=True
        )
        assert max(abs(a - b) for a, b in norms) <= 2e-2
        assert record["train_counts"] == other["train_counts"]


def test_a_finished_fused_sweep_trains_nothing(fused, monkeypatch):
    before = {p.name: p.read_bytes() for p in (fused / "runs").iterdir()}

    def refuse(self, epoch):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Trainer, "train_epoch", refuse)
    monkeypatch.setattr(PackTrainer, "train_epoch", refuse)
    assert _run("--out", str(fused), "--fused", "--pack-size", "3") == 0
    assert {p.name: p.read_bytes() for p in (fused / "runs").iterdir()} == before


# ----------------------------------------------------------------------------- checkpoints


def test_ctrl_c_leaves_a_pack_checkpoint_that_resumes_bit_for_bit(
    fused, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    real = packs._save_pack_checkpoint

    def save_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # as Ctrl-C right after the first checkpoint

    monkeypatch.setattr(packs, "_save_pack_checkpoint", save_then_interrupt)
    assert _run("--out", str(out), "--fused", "--pack-size", "3") == 130
    (ckpt,) = (out / "checkpoints").glob("pack-*.pt")
    assert ckpt == packs.pack_checkpoint_path(out, SMOKE)
    assert not list((out / "runs").glob("*.json"))
    monkeypatch.setattr(packs, "_save_pack_checkpoint", real)
    capsys.readouterr()
    assert main(["list", "--out", str(out)]) == 0
    assert f"interrupted pack (resumable with run --fused): {ckpt.stem}" in capsys.readouterr().out
    assert _run("--out", str(out), "--fused", "--pack-size", "3", "--dry-run") == 0
    assert f"pack of 3, resumes from {ckpt}: " in capsys.readouterr().out

    trained: list[int] = []
    train_epoch = PackTrainer.train_epoch

    def record_epochs(self, epoch):
        trained.append(epoch)
        return train_epoch(self, epoch)

    monkeypatch.setattr(PackTrainer, "train_epoch", record_epochs)
    assert _run("--out", str(out), "--fused", "--pack-size", "3") == 0
    assert trained == [1], "epoch 0 must not be trained again"
    assert not ckpt.exists()
    resumed, straight = _records(out), _records(fused)
    assert sorted(resumed) == sorted(straight)
    for name, record in resumed.items():
        assert record["sessions"] == 2
        assert trained_part(record) == trained_part(straight[name])  # bit for bit


def test_a_damaged_pack_checkpoint_is_set_aside_and_the_pack_trained_again(fused, tmp_path, capsys):
    out = tmp_path / "out"
    ckpt = packs.pack_checkpoint_path(out, SMOKE)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"junk\n")
    assert _run("--out", str(out), "--fused", "--pack-size", "3") == 0
    err = capsys.readouterr().err
    assert f"warning: checkpoint {ckpt} is damaged: torch.load fails with" in err
    assert "training the pack of 3 runs (" in err
    (aside,) = ckpt.parent.glob(f"{ckpt.name}.damaged-*")
    assert aside.read_bytes() == b"junk\n", "a damaged checkpoint is never deleted"
    again, straight = _records(out), _records(fused)
    assert {n: trained_part(r) for n, r in again.items()} == {
        n: trained_part(r) for n, r in straight.items()
    }


# ----------------------------------------------------------------------------- fallback


@pytest.mark.parametrize("failure", ["refused", "nan", "out of memory", "out of memory early"])
def test_a_pack_that_cannot_train_fused_falls_back_to_single_runs(
    failure, unfused, tmp_path, monkeypatch, capsys
):
    """PackTrainer refusing the runs, a loss that becomes nan in the pack, or the GPU's memory
    running out while it trains or is built: a note, then the runs one by one, with the
    results of an unfused sweep (bit for bit)."""
    configs = SMOKE[:2]
    out_of_memory = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if failure == "refused":

        def refuse(self, *args, **kwargs):
            raise ValueError("members differ in something")

        monkeypatch.setattr(PackTrainer, "__init__", refuse)
    elif failure == "out of memory early":

        def full(self, *args, **kwargs):
            raise out_of_memory

        monkeypatch.setattr(PackTrainer, "__init__", full)
    else:

        def fail(self, epoch):
            if failure == "out of memory":
                raise out_of_memory
            raise FloatingPointError("the train loss of member(s) [1] became [nan]")

        monkeypatch.setattr(PackTrainer, "train_epoch", fail)
    df = run_sweep(configs, tmp_path, fused=True, pack_size=2, device="cpu", progress=False)
    assert list(df["run_id"]) == [c.run_id for c in configs]
    err = capsys.readouterr().err
    assert "note: the pack of 2 runs (" in err
    assert err.rstrip().endswith("; training its runs one by one")
    assert not list((tmp_path / "checkpoints").glob("pack-*"))
    plain = _records(unfused)
    for name, record in _records(tmp_path).items():
        assert "pack" not in record
        assert trained_part(record) == trained_part(plain[name])


# ----------------------------------------------------------------------------- planning


def _pending_units(units):
    return [[c.run_id for c in unit] for unit in units]


def test_plan_groups_runs_that_can_share_a_pack_in_chunks(tmp_path):
    other = [RunConfig(**{**c.to_dict(), "depth": 14}) for c in SMOKE]  # another model shape
    units = packs.plan_sweep([*SMOKE, *other], tmp_path / "new", pack_size=2)
    ids = [[c.run_id for c in SMOKE], [c.run_id for c in other]]
    assert _pending_units(units) == [
        [ids[0][2]],
        [ids[1][2]],
        ids[0][:2],
        ids[1][:2],
    ]
    assert _pending_units(packs.plan_sweep(SMOKE, tmp_path, pack_size=1)) == [[i] for i in ids[0]]


def test_plan_leaves_finished_and_interrupted_runs_out_of_packs(unfused, tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    shutil.copy(result_path(unfused, SMOKE[1]), result_path(out, SMOKE[1]))
    checkpoint_path(out, SMOKE[2]).parent.mkdir()
    checkpoint_path(out, SMOKE[2]).write_bytes(b"a run's own checkpoint")
    extra = RunConfig(**{**SMOKE[0].to_dict(), "seed": 5})
    units = packs.plan_sweep([*SMOKE, extra], out, pack_size=4)
    assert _pending_units(units) == [
        [SMOKE[1].run_id],  # finished: read, not trained
        [SMOKE[2].run_id],  # its own checkpoint: resumes alone
        [SMOKE[0].run_id, extra.run_id],
    ]


def test_the_pack_size_on_a_cpu_is_one_and_a_gpu_estimate_is_sane():
    assert packs.default_pack_size("cpu", SMOKE) == 1
    resnet32 = RunConfig("cifar10")
    assert 0.5 * 2**30 < packs._member_bytes(resnet32) < 2 * 2**30


def test_processes_sharing_a_gpu_split_its_memory_between_their_packs(monkeypatch):
    """--jobs 2 on one GPU: each worker trains a pack at the same time, so each gets half of
    the share one would (a T4's 15 GiB free: 7 ResNet-32 runs alone, 3 each for two)."""
    monkeypatch.setattr(packs, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (15 * 2**30, 16 * 2**30))
    resnet32 = [RunConfig("cifar10")]
    alone = packs.default_pack_size("cuda", resnet32)
    assert alone == int(packs.MEMORY_SHARE * 15 * 2**30 // packs._member_bytes(resnet32[0]))
    assert packs.default_pack_size("cuda", resnet32, sharing=2) == int(
        packs.MEMORY_SHARE * 15 * 2**30 / 2 // packs._member_bytes(resnet32[0])
    )
    assert (alone, packs.default_pack_size("cuda", resnet32, sharing=2)) == (7, 3)
    units = packs.plan_sweep(
        [RunConfig("cifar10", seed=s) for s in range(8)], "missing", device="cuda", sharing=2
    )
    assert len(units[0]) == packs.default_pack_size("cuda", resnet32, sharing=2)


def test_run_pack_refuses_runs_that_cannot_share_a_pack(tmp_path):
    deeper = RunConfig(**{**SMOKE[0].to_dict(), "depth": 14})
    with pytest.raises(ValueError, match=r"cannot share a pack .*depth: 14 != 8"):
        packs.run_pack([SMOKE[0], deeper], tmp_path)


# ----------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--no-fused", "--pack-size", "2"],
            "--pack-size sets the size of fused packs: drop --no-fused",
        ),
        (
            ["--backend", "ray", "--pack-size", "2"],
            "--pack-size sets the size of fused packs: with --backend ray add --fused",
        ),
        (["--fused", "--pack-size", "0"], "--pack-size must be >= 1; got 0"),
    ],
)
def test_fused_flags_that_cannot_work_are_one_line_errors(args, message, tmp_path, capsys):
    assert _run("--out", str(tmp_path), *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"cbnotes run: error: {message}")
    assert "\n" not in err


def test_without_fused_flags_a_cpu_trains_one_by_one_and_says_so(tmp_path, capsys):
    assert _run("--out", str(tmp_path), "--dry-run") == 0
    assert "fused auto: on a CPU the runs are trained one by one\n" in capsys.readouterr().out
    assert _run("--out", str(tmp_path), "--pack-size", "2", "--dry-run") == 0
    assert "one by one (add --fused for packs of --pack-size)" in capsys.readouterr().out


def test_dry_run_shows_the_packs_and_the_cpu_default(tmp_path, capsys):
    assert _run("--out", str(tmp_path), "--fused", "--dry-run") == 0
    captured = capsys.readouterr()
    assert "note: --fused on a CPU trains one run at a time" in captured.err
    assert "--fused: 0 pack(s) of up to 1 runs, 3 run(s) alone" in captured.out
    assert _run("--out", str(tmp_path), "--fused", "--pack-size", "2", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"pack of 2: {SMOKE[0].run_id} {SMOKE[1].run_id}" in out
    assert "--fused: 1 pack(s) of up to 2 runs, 1 run(s) alone" in out


def test_a_fused_sweep_checkpoints_by_time_too(fused, tmp_path, monkeypatch):
    """--checkpoint-every reaches the pack: with an hour between checkpoints a 2-epoch pack
    writes none, and ends with the results of the pack that checkpointed every epoch."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pack checkpoint was written before its time")

    monkeypatch.setattr(packs, "_save_pack_checkpoint", refuse)
    out = tmp_path / "out"
    assert _run("--out", str(out), "--fused", "--pack-size", "3", "--checkpoint-every", "3600") == 0
    timed, straight = _records(out), _records(fused)
    assert {k: trained_part(v) for k, v in timed.items()} == {
        k: trained_part(v) for k, v in straight.items()
    }
    runtime = next(iter(timed.values()))["session_environments"][-1]["runtime"]
    assert runtime == {
        "compile": None,
        "checkpoint_every": 3600.0,
        "channels_last": False,
        "precision": "float32",
    }


# ----------------------------------------------------------------------------- fused="auto"


def test_auto_trains_one_by_one_on_a_cpu_without_measuring(unfused, tmp_path, monkeypatch):
    def no_measuring(*args, **kwargs):
        raise AssertionError("fused auto measured a pack on a CPU")

    monkeypatch.setattr(packs, "measure_pack_speedup", no_measuring)
    run_sweep(SMOKE, tmp_path, device="cpu", progress=False, pack_size=3)  # fused="auto"
    assert _records(tmp_path).keys() == _records(unfused).keys()
    assert not any("pack" in record for record in _records(tmp_path).values())
    assert not (tmp_path / packs.CHOICE_FILE).exists()


@pytest.fixture
def fake_gpu(monkeypatch):
    """choose_units sees a CUDA device named 'Fake GPU'; measurements return ``speedups``."""
    import torch

    measured: list[list[str]] = []
    speedups: list[float] = []

    def measure(configs, **kwargs):
        measured.append([c.run_id for c in configs])
        return {"one_run_seconds": 1.0, "pack_seconds": 1.0, "speedup": speedups.pop(0)}

    monkeypatch.setattr(packs, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(packs, "device_name", lambda device: "Fake GPU")
    monkeypatch.setattr(packs, "measure_pack_speedup", measure)
    return measured, speedups


def _shape(units: list[list[RunConfig]]) -> list[int]:
    return [len(unit) for unit in units]


def test_auto_on_a_gpu_packs_when_a_measured_pack_is_faster_and_records_why(
    fake_gpu, tmp_path, capsys
):
    measured, speedups = fake_gpu
    speedups.append(2.5)
    units = packs.choose_units(SMOKE, tmp_path, pack_size=3)
    assert _shape(units) == [3]
    assert measured == [[c.run_id for c in SMOKE]]
    record = json.loads((tmp_path / packs.CHOICE_FILE).read_text(encoding="utf-8"))
    assert record["fused"] is True
    assert record["speedup"] == 2.5
    assert record["device"] == "Fake GPU"
    assert record["pack_size"] == 3
    assert "depth=8" in record["shape"]
    err = capsys.readouterr().err
    assert "a pack of 3 runs trains 2.50x as fast as its runs one by one on Fake GPU" in err
    assert "training in packs (--no-fused: one by one)" in err
    # The same folder, device and pack shape: the record is reused, nothing measured again.
    assert _shape(packs.choose_units(SMOKE, tmp_path, pack_size=3)) == [3]
    assert len(measured) == 1
    assert "as measured at" in capsys.readouterr().err


def test_auto_on_a_gpu_trains_one_by_one_when_the_pack_is_not_faster(fake_gpu, tmp_path, capsys):
    measured, speedups = fake_gpu
    speedups.extend([1.05, 1.5])
    assert _shape(packs.choose_units(SMOKE, tmp_path, pack_size=3)) == [1, 1, 1]
    assert "training runs one by one (--fused: in packs anyway)" in capsys.readouterr().err
    assert json.loads((tmp_path / packs.CHOICE_FILE).read_text())["fused"] is False
    # Another pack size is another measurement, which replaces the record.
    assert _shape(packs.choose_units(SMOKE, tmp_path, pack_size=2)) == [1, 2]
    assert len(measured) == 2
    assert json.loads((tmp_path / packs.CHOICE_FILE).read_text())["pack_size"] == 2


@pytest.mark.parametrize("text", ["{not json", "[]", '{"fused": "yes"}'])
def test_auto_measures_again_over_an_unreadable_record(fake_gpu, tmp_path, text):
    measured, speedups = fake_gpu
    speedups.append(3.0)
    (tmp_path / packs.CHOICE_FILE).write_text(text, encoding="utf-8")
    assert _shape(packs.choose_units(SMOKE, tmp_path, pack_size=3)) == [3]
    assert len(measured) == 1
    assert json.loads((tmp_path / packs.CHOICE_FILE).read_text())["speedup"] == 3.0


def test_auto_trains_one_by_one_when_the_pack_cannot_be_measured(
    fake_gpu, tmp_path, monkeypatch, capsys
):
    def refused(configs, **kwargs):
        raise packs.PackFallback("the pack of 3 runs cannot be trained fused (a reason)")

    monkeypatch.setattr(packs, "measure_pack_speedup", refused)
    assert _shape(packs.choose_units(SMOKE, tmp_path, pack_size=3)) == [1, 1, 1]
    err = capsys.readouterr().err
    assert "fused auto: could not measure a pack (" in err
    assert "a reason" in err
    assert not (tmp_path / packs.CHOICE_FILE).exists()


def test_auto_resumes_an_interrupted_pack_without_measuring(fake_gpu, tmp_path, capsys):
    measured, _ = fake_gpu
    ckpt = packs.pack_checkpoint_path(tmp_path, SMOKE)
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"a pack checkpoint")
    assert _shape(packs.choose_units(SMOKE, tmp_path, pack_size=3)) == [3]
    assert measured == []
    assert "resuming interrupted packs" in capsys.readouterr().err


def test_measuring_a_pack_writes_nothing_and_changes_no_run(unfused, tmp_path):
    import torch

    before = torch.get_rng_state()
    measured = packs.measure_pack_speedup(SMOKE[:2], device="cpu", epochs=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert measured["one_run_seconds"] > 0
    assert measured["pack_seconds"] > 0
    assert measured["speedup"] == pytest.approx(
        2 * measured["one_run_seconds"] / measured["pack_seconds"]
    )
    run_sweep(SMOKE, tmp_path, device="cpu", progress=False, fused=False)
    plain = _records(unfused)
    for name, record in _records(tmp_path).items():
        assert trained_part(record) == trained_part(plain[name])


def test_run_sweep_refuses_an_unknown_fused_value(tmp_path):
    with pytest.raises(ValueError, match="fused must be True, False or \"auto\"; got 'yes'"):
        run_sweep(SMOKE, tmp_path, fused="yes")

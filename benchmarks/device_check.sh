#!/usr/bin/env bash
# GPU checks of cbnotes in one command (at most about 8 minutes, no internet needed):
#
#   1. cuda_tests  the CUDA tests (pytest -k cuda)
#   2. bench       benchmarks/bench_fused.py: packs of 1-16 ResNet-32s vs one by one, 32x32x3,
#                  then packs of 1, 4 and 16 with channels-last batches (bench_channels_last)
#   3. amp         a few training steps of Trainer and of a pack with amp=bf16 and amp=fp16
#   4. paper       two epochs of a paper-style ResNet-32 run (cbnotes.runner) on fake CIFAR-10
#                  files in the official format (tests/fakedata.py; torchvision's MD5 check is
#                  pointed at the fake files, as tests/test_data.py does), two epochs of a
#                  pack of 4 such runs, and the default sweep's choice (fused auto) for them
#   5. bench_training  benchmarks/bench_training.py: each choice of the training step as a
#                  ratio against its baseline (fused SGD with a tensor lr vs the for-loop,
#                  channels-last, cuDNN autotuner, checkpoint cost, torch.compile default and
#                  reduce-overhead), ResNet-32 on 32x32x3
#
# Usage:
#   bash benchmarks/device_check.sh [OUT_DIR]            # on a CUDA machine
#   bash benchmarks/device_check.sh --dry-run [OUT_DIR]  # the same steps, tiny, on CPU (<1 min)
#
# OUT_DIR defaults to benchmarks/results/<date>-<device>/. It receives device_check.json and
# report.md (every step's status, seconds and results), bench_fused*.json, amp.json,
# paper.json, bench_training.json and one log per step. Exit status: 0 if every step
# passed, 1 otherwise, 2 on bad usage or (without --dry-run) no CUDA device. PYTHON overrides
# the interpreter (default: .venv/bin/python if present, else python3). In a copy of the files
# without .git, set CBNOTES_GIT_REV=<commit> so that the report names the code it measured.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DRY=0
OUT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "device_check.sh: unknown option $arg (use --dry-run or -h)" >&2; exit 2 ;;
    *)
      if [ -n "$OUT" ]; then echo "device_check.sh: give one OUT_DIR, got '$OUT' and '$arg'" >&2; exit 2; fi
      OUT="$arg" ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 0 ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "device_check.sh: no CUDA device; run with --dry-run to check the script on CPU" >&2
    exit 2
  fi
  DEVICE_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
else
  DEVICE_NAME="cpu-dry-run"
fi
SLUG=$(printf '%s' "$DEVICE_NAME" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
OUT="${OUT:-benchmarks/results/$(date -u +%Y-%m-%d)-$SLUG}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STEPS="$OUT/steps.tsv"
: >"$STEPS"
echo "device check on $DEVICE_NAME (dry run: $DRY) -> $OUT"

# run_step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record status.
run_step() {
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (limit ${limit}s)"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >>"$STEPS"
  tail -n 15 "$OUT/$name.log"
  echo "== $name: exit $rc after $(($(date +%s) - start))s"
}

if [ "$DRY" = 1 ]; then
  TESTS=(tests/test_fused.py)  # the CUDA tests skip on CPU; one file keeps the dry run short
  BENCH=(--tiny --device cpu --threads 1)
  TRAINING=(--tiny --device cpu --threads 1 --omp-threads 1)
  CL_SIZES=1,2
  LIMITS=(120 120 120 120 120 120)  # generous: CI machines are shared
else
  # Every test file that mentions CUDA (collecting all of tests/ would need the notebook
  # packages, which a GPU image may lack).
  mapfile -t TESTS < <(grep -l cuda tests/test_*.py | grep -v test_device_check)
  BENCH=(--device cuda)
  TRAINING=(--device cuda)
  CL_SIZES=1,4,16
  # Seconds per step: 440 in all, so that with start-up, the report and a kill's grace the
  # whole check ends inside 8 minutes. bench_training gets the most: two cold torch.compile
  # builds (default, then reduce-overhead, which reuses most of the first one's kernels).
  LIMITS=(70 70 40 45 70 145)
fi

# --continue-on-collection-errors: a file that cannot be imported there (say, a torchvision
# that does not match the torch) must not stop the CUDA tests of every other file.
run_step cuda_tests "${LIMITS[0]}" "$PY" -m pytest -q -p no:cacheprovider \
  --continue-on-collection-errors -k cuda "${TESTS[@]}"
run_step bench "${LIMITS[1]}" "$PY" benchmarks/bench_fused.py "${BENCH[@]}" --json "$OUT/bench_fused.json"
run_step bench_channels_last "${LIMITS[2]}" "$PY" benchmarks/bench_fused.py "${BENCH[@]}" \
  --channels-last --sizes "$CL_SIZES" --json "$OUT/bench_fused_channels_last.json"

run_step amp "${LIMITS[3]}" "$PY" - "$OUT" "$DRY" <<'EOF'
"""A few steps of Trainer and of a pack of 2 with amp=bf16 and amp=fp16 (bf16 only on CPU)."""
import json, math, sys, time
from pathlib import Path

import torch
from cbnotes.data import ImageSet, load_dataset
from cbnotes.fused import PackMember, PackTrainer
from cbnotes.methods import build_criterion
from cbnotes.models import init_head_for_loss, resnet_cifar
from cbnotes.pipeline import DeviceLoader
from cbnotes.training import Recipe, Trainer, seed_everything

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
if dry:
    torch.set_num_threads(1)
device = "cpu" if dry else "cuda"
train, test = load_dataset("synthetic", imbalance_factor=10)
if dry:  # 128 training images: two batches
    train = ImageSet(train.images[:128], train.labels[:128], train.classes)
depth, width = (8, 4) if dry else (32, 16)
recipe = Recipe(epochs=2, batch_size=64, warmup_epochs=1, decay_epochs=())
counts = train.counts()


def member(loss_type, params, seed):
    seed_everything(seed)
    model = init_head_for_loss(resnet_cifar(depth, 10, 3, width), loss_type)
    loader = DeviceLoader(train, 64, train=True, device=device, seed=seed)
    return PackMember(model, build_criterion(loss_type, counts, params, recipe), loader, recipe,
                      loss_type, counts)


test_loader = DeviceLoader(test, 500, train=False, device=device)
results = {}
for amp in ("bf16",) if dry else ("bf16", "fp16"):
    m = member("softmax", {"beta": 0.9999}, 0)
    trainer = Trainer(m.model, m.loss_fn, m.train_loader, test_loader, recipe, loss_type="softmax",
                      device=device, num_classes=10, train_counts=counts, amp=amp, progress=False)
    start = time.perf_counter()
    trainer.fit(1)
    pack = PackTrainer([member("softmax", {"beta": 0.9999}, 1), member("focal", {"gamma": 1.0}, 2)],
                       test_loader, device=device, num_classes=10, amp=amp, progress=False)
    pack.fit(1)
    results[amp] = {
        "trainer": {"train_loss": trainer.history[0]["train_loss"],
                    "top1_error": trainer.history[0]["top1_error"],
                    "master_dtype": str(next(trainer.model.parameters()).dtype)},
        "pack": [{"train_loss": m.history[0]["train_loss"], "top1_error": m.history[0]["top1_error"]}
                 for m in pack.members],
        "pack_loss_scale": pack.loss_scale.tolist() if pack.scaling else None,
        "seconds": time.perf_counter() - start,
    }
    losses = [results[amp]["trainer"]["train_loss"]] + [r["train_loss"] for r in results[amp]["pack"]]
    assert all(math.isfinite(x) for x in losses), (amp, losses)
    assert results[amp]["trainer"]["master_dtype"] == "torch.float32"
    print(amp, json.dumps(results[amp]))
    (out / "amp.json").write_text(json.dumps(results, indent=2) + "\n")  # keep bf16 if fp16 fails
if dry:
    results["fp16"] = "skipped: fp16 autocast needs CUDA"
(out / "amp.json").write_text(json.dumps(results, indent=2) + "\n")
EOF

run_step paper "${LIMITS[4]}" "$PY" - "$OUT" "$DRY" <<'EOF'
"""Two epochs of a paper-style run (runner + fake official-format CIFAR-10), then a pack of 4."""
import dataclasses, json, sys, tempfile, time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, "tests")
from fakedata import patch_cifar_checksums, write_cifar  # noqa: E402

import cbnotes.data as cbdata  # noqa: E402
from cbnotes.config import RunConfig  # noqa: E402
from cbnotes.data import load_dataset  # noqa: E402
from cbnotes.fused import PackMember, PackTrainer  # noqa: E402
from cbnotes.methods import build_criterion, get_method  # noqa: E402
from cbnotes.models import init_head_for_loss, resnet_cifar  # noqa: E402
from cbnotes.pipeline import DeviceLoader  # noqa: E402
from cbnotes.runner import run_experiment  # noqa: E402
from cbnotes.training import seed_everything  # noqa: E402

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
if dry:
    torch.set_num_threads(1)
device = "cpu" if dry else "cuda"
# Dry run: CIFAR-10 shrunk to 60 training images per class (IF 10) and 10 test images per
# class, ResNet-8 width 4, batch 32. A real run: the full-size files, IF 100, ResNet-32.
per_class, test_per_class = (60, 10) if dry else (5000, 1000)
imbalance = 10 if dry else 100
model_args = {"depth": 8, "base_width": 4, "batch_size": 32} if dry else {}
results = {}


def save():
    """Write what is measured so far: a later part that fails or runs out of time keeps it."""
    (out / "paper.json").write_text(json.dumps(results, indent=2) + "\n")


with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
    if dry:
        spec = cbdata.DATASETS["cifar10"]
        small = dataclasses.replace(spec, n_max=per_class, test_per_class=test_per_class)
        mp.setitem(cbdata.DATASETS, "cifar10", small)
    root = Path(tmp) / "data"
    start = time.perf_counter()
    md5s = write_cifar(root, "cifar10", per_class, test_per_class)
    patch_cifar_checksums(mp, "cifar10", md5s)  # the fake files' MD5s, test-style
    results["write_fake_cifar_s"] = time.perf_counter() - start
    config = RunConfig("cifar10", imbalance_factor=imbalance, loss_type="softmax", beta=0.9999,
                       epochs=2, amp="auto", **model_args)
    start = time.perf_counter()
    record = run_experiment(config, Path(tmp) / "runs", device=device, progress=False,
                            data_root=root)
    results["run"] = {k: record[k] for k in ("run_id", "label", "top1_error", "wall_seconds",
                                             "train_seconds", "images_per_second")}
    results["run"]["seconds"] = time.perf_counter() - start
    results["run"]["history"] = record["history"]
    print("run", json.dumps(results["run"]["history"]))
    save()

    # The same model and schedule, four methods as one pack (what the runner will do).
    train, test = load_dataset("cifar10", imbalance_factor=imbalance, root=root)
    counts = train.counts()
    recipe = config.recipe()
    runs = [("softmax", {"beta": 0.9999}, 0), ("focal", {"gamma": 1.0, "beta": 0.9999}, 1),
            ("sigmoid", {"beta": 0.9999}, 2), ("logit_adjusted", {}, 3)]
    members = []
    for loss_type, params, seed in runs:
        seed_everything(seed)
        model = resnet_cifar(config.depth, 10, 3, config.base_width, shortcut=config.shortcut,
                             init=config.init, head=get_method(loss_type).head)
        init_head_for_loss(model, loss_type)
        loader = DeviceLoader(train, config.batch_size, train=True, device=device, seed=seed)
        members.append(PackMember(model, build_criterion(loss_type, counts, params, recipe),
                                  loader, recipe, loss_type, counts, name=loss_type))
    pack = PackTrainer(members, DeviceLoader(test, 500, train=False, device=device),
                       device=device, num_classes=10, amp="auto", progress=False)
    start = time.perf_counter()
    pack.fit()
    seconds = sum(h["seconds"] for h in pack.members[0].history)  # training only, as the run's
    images = len(members) * config.epochs * len(train)
    results["pack"] = {
        "members": [m.name for m in pack.members],
        "top1_error": [m.history[-1]["top1_error"] for m in pack.members],
        "train_loss": [[h["train_loss"] for h in m.history] for m in pack.members],
        "train_seconds": seconds,
        "wall_seconds": time.perf_counter() - start,
        "images_per_second": images / seconds,
        "speedup_vs_one_run": images / seconds / record["images_per_second"],
    }
    print("pack", json.dumps(results["pack"]))
    save()

    # What `cbnotes run` does by default (fused auto): on CUDA it trains a pack of these four
    # runs and one of them alone for two epochs each and keeps packs if they are faster; on a
    # CPU it trains them one by one without measuring.
    from cbnotes.packs import CHOICE_FILE, choose_units  # noqa: E402

    auto = [RunConfig("cifar10", imbalance_factor=imbalance, loss_type=loss_type, seed=seed,
                      epochs=2, amp="auto", **params, **model_args)
            for loss_type, params, seed in runs]
    auto_out = Path(tmp) / "auto"
    start = time.perf_counter()
    units = choose_units(auto, auto_out, pack_size=4, device=device, data_root=root)
    choice = auto_out / CHOICE_FILE
    results["auto"] = {
        "units": [len(u) for u in units],
        "choice": json.loads(choice.read_text()) if choice.exists() else None,
        "seconds": time.perf_counter() - start,
    }
    print("auto", json.dumps(results["auto"]))
save()
EOF

# Last: its torch.compile comparisons take the longest, and it writes its JSON after every
# comparison, so a step cut short by its limit keeps what it measured.
run_step bench_training "${LIMITS[5]}" "$PY" benchmarks/bench_training.py "${TRAINING[@]}" \
  --json "$OUT/bench_training.json"

"$PY" - "$OUT" "$DRY" "$DEVICE_NAME" <<'EOF'
"""Collect the steps' status and results into device_check.json and report.md."""
import json, platform, sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from cbnotes.provenance import git_revision

out, dry, name = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    step, rc, seconds = line.split("\t")
    steps.append({"step": step, "exit": int(rc), "seconds": int(seconds),
                  "status": "passed" if rc == "0" else ("timed out" if rc in ("124", "137") else "failed")})
results = {}
for key, file in (("bench", "bench_fused.json"), ("bench_channels_last", "bench_fused_channels_last.json"),
                  ("amp", "amp.json"), ("paper", "paper.json"), ("bench_training", "bench_training.json")):
    path = out / file
    results[key] = json.loads(path.read_text()) if path.exists() else None
report = {
    "device": name, "dry_run": dry, "torch": torch.__version__,
    "cuda": torch.version.cuda, "python": platform.python_version(), **git_revision(),
    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "passed": all(s["exit"] == 0 for s in steps), "steps": steps, **results,
}
(out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
lines = [f"# Device check: {name}{' (dry run)' if dry else ''}", "",
         f"torch {report['torch']}, CUDA {report['cuda']}, git {(report['git_rev'] or 'unknown')[:7]}"
         f"{' (uncommitted changes)' if report['git_dirty'] else ''}, finished {report['finished']}; "
         f"{'all steps passed' if report['passed'] else 'SOME STEPS FAILED'}.", "",
         "| step | status | seconds |", "| --- | --- | --- |"]
lines += [f"| {s['step']} | {s['status']} (exit {s['exit']}) | {s['seconds']} |" for s in steps]
for key in ("bench", "bench_channels_last"):
    bench = results[key]
    if not bench:
        continue
    lines += ["", f"## Packs vs one by one ({bench['model']}, {bench['input']}, amp={bench['amp']}, "
              f"{bench['clock']} time)", "",
              "| N | one run images/s | pack images/s | per member | vs one by one | peak GiB |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['n']} | {r['one_run_images_per_s']:.0f} | {r['images_per_s']:.0f} | "
              f"{r['per_member']:.0f} | {r['speedup']:.2f}x | {r.get('peak_memory_gib', float('nan')):.2f} |"
              for r in bench["packs"]]
paper = results["paper"]
if paper:
    run, pack = paper["run"], paper["pack"]
    lines += ["", "## Paper-style run on fake CIFAR-10-LT (2 epochs)", "",
              f"One run ({run['label']}): top-1 error {run['top1_error']:.2f}%, "
              f"{run['images_per_second']:.0f} images/s.",
              f"Pack of {len(pack['members'])} ({', '.join(pack['members'])}): "
              f"{pack['images_per_second']:.0f} images/s, "
              f"{pack['speedup_vs_one_run']:.2f}x one run's."]
    auto = paper.get("auto")
    if auto:
        choice = auto["choice"]
        decided = (f"measured {choice['speedup']:.2f}x for a pack of {choice['pack_size']}, "
                   f"{'packs' if choice['fused'] else 'one by one'}" if choice
                   else "no measurement (CPU: one by one)")
        lines.append(f"Default sweep (fused auto): units {auto['units']}; {decided}.")
training = results["bench_training"]
if training:
    lines += ["", f"## The training step, each choice vs its baseline ({training['model']}, "
              f"{training['input']}, amp={training['amp']}, {training['clock']} time)", "",
              "| comparison | what | baseline s | variant s | ratio |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['name']} | {c['what']} | {c['baseline_s']:.4g} | {c['variant_s']:.4g} | "
              f"{c['ratio']:.2f}x |" for c in training["comparisons"]]
amp = results["amp"]
if amp:
    lines += ["", "## Mixed precision (1 epoch each)", ""]
    for key, value in amp.items():
        if isinstance(value, dict):
            lines.append(f"- {key}: Trainer loss {value['trainer']['train_loss']:.4f}, pack losses "
                         + ", ".join(f"{m['train_loss']:.4f}" for m in value["pack"]))
        else:
            lines.append(f"- {key}: {value}")
(out / "report.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
sys.exit(0 if report["passed"] else 1)
EOF

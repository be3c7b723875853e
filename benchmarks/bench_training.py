"""Speed of each choice of the training step (issue 9) as a ratio against its baseline, one run.

Each comparison trains real epochs of :class:`cbnotes.training.Trainer` (augmentation, loss,
SGD and the lr schedule included) on synthetic uint8 images: a baseline Trainer and a variant
Trainer, one warm-up epoch each (compilation), then ``--repeats`` timed epochs alternating; the
fastest epoch of each counts (the least disturbed by other work on the machine). ``ratio`` is
baseline seconds / variant seconds: above 1 the variant is faster.

- ``sgd``: torch's per-parameter SGD loop with a float learning rate (the step before issue 9)
  vs :func:`cbnotes.training.build_optimizer`'s step (``foreach`` with a tensor learning rate on
  the CPU, one fused kernel on CUDA), in whole epochs; ``sgd_step`` times the optimizer step
  alone.
- ``channels_last``: the default memory format vs a channels-last model and batches.
- ``omp_passive`` (CPU): ``OMP_WAIT_POLICY`` unset vs ``PASSIVE``. Each side is a fresh
  subprocess (the variable is read when torch loads its OpenMP runtime) training with
  ``--omp-threads`` threads, the main job's default; sides alternate ``--omp-rounds`` times,
  and the clock is the wall clock, since waiting threads are what the policy changes.
- ``compile`` (``--compile``; on CUDA always): eager vs ``torch.compile``, on CUDA also
  ``compile_reduce_overhead`` (CUDA graphs).
- ``cudnn_benchmark`` (CUDA): cuDNN's autotuner off vs on.
- ``checkpoint``: one epoch vs one save of the runner's checkpoint (state to a file):
  ``ratio`` is how many saves take as long as one epoch.

On CPU the clock is the process's CPU time by default (``--clock``; the omp comparison always
uses wall time) and the model is the CPU study's (ResNet-8, width 8, 28×28×1, batch 128); on
CUDA ResNet-32 on 32×32×3. Results are printed and, with ``--json``, written after every
comparison, so a run cut short keeps what it measured.

Measured on the project's 2-core CPU machine while it trained a study (nice 19, CPU study's
model): ``sgd_step`` 1.43x, ``sgd`` 1.05-1.08x (within noise: the step is under 1% of an
epoch), ``channels_last`` 1.12x (1 thread) and 1.16x (2 threads), one epoch = 158 checkpoint
saves, ``omp_passive`` 5.40x in wall time (4.12x in CPU time) with 2 threads; idle, 1 thread:
``channels_last`` 1.16x, since then the Trainer's default on the CPU too (it rounds
differently; see :class:`cbnotes.training.Trainer`).
Examples:

    python benchmarks/bench_training.py --device cpu --json results/bench_training_cpu.json
    python benchmarks/bench_training.py --device cpu --only omp_passive --omp-rounds 4
    python benchmarks/bench_training.py --device cuda --json results/bench_training_cuda.json
    python benchmarks/bench_training.py --tiny      # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_fused import add_model_args, header, resolve_model_args, synthetic_set, write_json

from cbnotes.data import ImageSet
from cbnotes.methods import build_criterion
from cbnotes.models import resnet_cifar
from cbnotes.pipeline import DeviceLoader
from cbnotes.runner import _rng_state, save_atomic
from cbnotes.training import (
    Recipe,
    Trainer,
    build_optimizer,
    build_scheduler,
    epoch_seconds,
    seed_everything,
    synchronize,
)

NUM_CLASSES = 10
CPU_COMPARISONS = ("sgd", "sgd_step", "channels_last", "checkpoint", "omp_passive")
CUDA_COMPARISONS = (
    "sgd",
    "sgd_step",
    "channels_last",
    "cudnn_benchmark",
    "checkpoint",
    "compile",
    "compile_reduce_overhead",
)


def build(args: argparse.Namespace, data: ImageSet, test: ImageSet, **options: Any) -> Trainer:
    """A softmax Trainer of the benchmark's model (seed 0); ``options`` go to the Trainer,
    except ``step`` (an SGD implementation of :data:`cbnotes.training.SGD_STEPS`)."""
    step = options.pop("step", "auto")
    recipe = Recipe(
        epochs=args.repeats + 1, batch_size=args.batch_size, warmup_epochs=0, decay_epochs=()
    )
    seed_everything(0)
    model = resnet_cifar(
        args.depth, NUM_CLASSES, args.channels, args.width, shortcut=args.shortcut, init=args.init
    )
    counts = data.counts()
    loader = DeviceLoader(
        data, args.batch_size, train=True, device=args.device, seed=0, drop_last=True
    )
    trainer = Trainer(
        model,
        build_criterion("softmax", counts, {"beta": 0.0}, recipe),
        loader,
        DeviceLoader(test, 500, train=False, device=args.device),
        recipe,
        loss_type="softmax",
        device=args.device,
        num_classes=NUM_CLASSES,
        train_counts=counts,
        amp=args.amp,
        progress=False,
        **options,
    )
    if step != "auto":
        trainer.optimizer = build_optimizer(trainer.model, recipe, "softmax", step=step)
        trainer.scheduler = build_scheduler(trainer.optimizer, recipe, len(loader))
    return trainer


def pair(
    args: argparse.Namespace,
    baseline: Callable[[], Trainer],
    variant: Callable[[], Trainer],
    before: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> dict[str, float]:
    """Fastest epoch of a baseline and a variant Trainer, alternating; ``before`` runs before
    each epoch of either side (e.g. to set a process-wide flag)."""
    sides = [baseline(), variant()]
    hooks = before or (lambda: None, lambda: None)
    for trainer, hook in zip(sides, hooks, strict=True):
        hook()
        trainer.train_epoch(0)  # warm-up: compilation, autotuning, caches
    times: list[list[float]] = [[], []]
    for epoch in range(1, args.repeats + 1):
        for side, (trainer, hook) in enumerate(zip(sides, hooks, strict=True)):
            hook()
            times[side].append(epoch_seconds(trainer, epoch, clock=args.clock))
    base, var = min(times[0]), min(times[1])
    return {"baseline_s": base, "variant_s": var, "ratio": base / var}


def sgd_steps(args: argparse.Namespace, data: ImageSet, test: ImageSet) -> dict[str, float]:
    """Seconds per optimizer step alone (gradients in place): the for-loop with a float lr vs
    the default step, alternating ``args.repeats`` rounds of 50 steps."""
    timer = time.process_time if args.clock == "cpu" else time.perf_counter
    optimizers = []
    for step in ("for-loop", "auto"):
        trainer = build(args, data, test, step=step)
        for p in trainer.model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        optimizers.append(trainer.optimizer)
    times: list[list[float]] = [[], []]
    for _ in range(args.repeats + 1):
        for side, optimizer in enumerate(optimizers):
            synchronize(args.device)
            start = timer()
            for _ in range(50):
                optimizer.step()
            synchronize(args.device)
            times[side].append((timer() - start) / 50)
    base, var = min(times[0][1:]), min(times[1][1:])  # the first round warms up
    return {"baseline_s": base, "variant_s": var, "ratio": base / var}


def checkpoint_cost(args: argparse.Namespace, data: ImageSet, test: ImageSet) -> dict[str, float]:
    """Fastest epoch vs fastest of 5 checkpoint saves (wall clock: a save is mostly I/O)."""
    trainer = build(args, data, test)
    trainer.train_epoch(0)
    epochs = [epoch_seconds(trainer, e) for e in range(1, args.repeats + 1)]
    saves = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(5):
            start = time.perf_counter()
            payload = {"trainer": trainer.state_dict(), "rng": _rng_state()}
            save_atomic(Path(folder) / "checkpoint.pt", payload)
            saves.append(time.perf_counter() - start)
    epoch, save = min(epochs), min(saves)
    return {"baseline_s": epoch, "variant_s": save, "ratio": epoch / save, "clock": "wall"}


def omp_child(args: argparse.Namespace) -> None:
    """In a subprocess: train warm-up + ``repeats`` epochs, print the fastest epoch (JSON)."""
    data = synthetic_set(args.steps * args.batch_size, args.channels, args.size)
    test = synthetic_set(100, args.channels, args.size)
    trainer = build(args, data, test)
    trainer.train_epoch(0)
    wall, cpu = [], []
    for epoch in range(1, args.repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train_epoch(epoch)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    print(json.dumps({"wall_s": min(wall), "cpu_s": min(cpu), "threads": torch.get_num_threads()}))


def omp_passive(args: argparse.Namespace) -> dict[str, Any]:
    """OMP_WAIT_POLICY unset vs PASSIVE, in fresh subprocesses, alternating."""
    flags = [
        *("--device", "cpu", "--steps", str(args.steps), "--repeats", str(args.repeats)),
        *("--batch-size", str(args.batch_size), "--depth", str(args.depth)),
        *("--width", str(args.width), "--size", str(args.size), "--channels", str(args.channels)),
        *("--threads", str(args.omp_threads)),
    ]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = str(args.omp_threads)
    runs: list[list[dict[str, float]]] = [[], []]
    for _ in range(args.omp_rounds):
        for side, policy in enumerate((None, "PASSIVE")):
            child_env = dict(env, **({"OMP_WAIT_POLICY": policy} if policy else {}))
            proc = subprocess.run(
                [sys.executable, __file__, "--omp-child", *flags],
                env=child_env,
                capture_output=True,
                text=True,
                check=True,
            )
            runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = min(r["wall_s"] for r in runs[0])
    var = min(r["wall_s"] for r in runs[1])
    return {
        "baseline_s": base,
        "variant_s": var,
        "ratio": base / var,
        "clock": "wall",
        "threads": args.omp_threads,
        "cpu_ratio": min(r["cpu_s"] for r in runs[0]) / min(r["cpu_s"] for r in runs[1]),
        "runs": {"unset": runs[0], "PASSIVE": runs[1]},
    }


def set_cudnn_benchmark(value: bool) -> Callable[[], None]:
    """A hook that sets ``torch.backends.cudnn.benchmark`` (the Trainer turns it on)."""

    def hook() -> None:
        torch.backends.cudnn.benchmark = value

    return hook


def measure(name: str, args: argparse.Namespace, data: ImageSet, test: ImageSet) -> dict:
    """One comparison by name (see the module docstring)."""
    if name == "sgd":
        return pair(
            args,
            lambda: build(args, data, test, step="for-loop"),
            lambda: build(args, data, test),
        )
    if name == "sgd_step":
        return sgd_steps(args, data, test)
    if name == "channels_last":
        return pair(
            args,
            lambda: build(args, data, test, channels_last=False),
            lambda: build(args, data, test, channels_last=True),
        )
    if name == "cudnn_benchmark":
        return pair(
            args,
            lambda: build(args, data, test),
            lambda: build(args, data, test),
            before=(set_cudnn_benchmark(False), set_cudnn_benchmark(True)),
        )
    if name == "checkpoint":
        return checkpoint_cost(args, data, test)
    if name == "omp_passive":
        return omp_passive(args)
    if name in ("compile", "compile_reduce_overhead"):
        mode = "default" if name == "compile" else "reduce-overhead"
        return pair(
            args, lambda: build(args, data, test), lambda: build(args, data, test, compile=mode)
        )
    raise ValueError(f"unknown comparison {name!r}")


WHAT = {
    "sgd": "SGD for-loop, float lr -> default step (epochs)",
    "sgd_step": "SGD for-loop, float lr -> default step (step alone)",
    "channels_last": "default memory format -> channels-last",
    "cudnn_benchmark": "cuDNN autotuner off -> on",
    "checkpoint": "one epoch / one checkpoint save",
    "omp_passive": "OMP_WAIT_POLICY unset -> PASSIVE (subprocesses)",
    "compile": "eager -> torch.compile",
    "compile_reduce_overhead": "eager -> torch.compile reduce-overhead",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; model defaults depend on the device (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--only", default=None, help="comma-separated comparisons (default: all)")
    p.add_argument("--compile", action="store_true", help="on CPU, also time torch.compile")
    p.add_argument(
        "--omp-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads of the omp_passive subprocesses (default: the cores, as the main job)",
    )
    p.add_argument("--omp-rounds", type=int, default=3, help="subprocess pairs for omp_passive")
    p.add_argument("--omp-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny and args.omp_rounds == p.get_default("omp_rounds"):
        args.omp_rounds = 1
    resolve_model_args(p, args)
    names = list(CUDA_COMPARISONS if args.device.type == "cuda" else CPU_COMPARISONS)
    if args.compile and args.device.type != "cuda":
        names.append("compile")
    if args.only is not None:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(WHAT))
        if unknown:
            p.error(f"--only: unknown comparison(s) {unknown}; choose from {sorted(WHAT)}")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run every selected comparison, print a table and return the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.omp_child:
        omp_child(args)
        return {}
    data = synthetic_set(args.steps * args.batch_size, args.channels, args.size)
    test = synthetic_set(100, args.channels, args.size)
    results: dict[str, Any] = {
        **header(args),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "comparisons": [],
    }
    print(f"{'comparison':<24} | {'what':<52} | {'baseline':>10} | {'variant':>10} | ratio")
    for name in args.names:
        row = {"name": name, "what": WHAT[name], **measure(name, args, data, test)}
        results["comparisons"].append(row)
        print(
            f"{name:<24} | {row['what']:<52} | {row['baseline_s']:10.4g} | "
            f"{row['variant_s']:10.4g} | {row['ratio']:.3f}",
            flush=True,
        )
        if args.json is not None:
            write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

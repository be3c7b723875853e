"""Throughput of packs (N runs fused into one model) against the same runs trained one by one.

Each measurement trains real epochs: :class:`cbnotes.fused.PackTrainer` for a pack of N, and
:class:`cbnotes.training.Trainer` for one ordinary run, on synthetic uint8 images through
:class:`cbnotes.pipeline.DeviceLoader` (augmentation, loss, optimizer and lr schedule included).
N runs trained one by one take N times as long as one, so the speed-up of a pack is

    pack images/s (all members together) / one run's images/s,

measured in the same process: for each N, one run and the pack alternate epoch by epoch and
the fastest epoch of each counts. On CPU the clock is the process's CPU time by default
(``--clock``): on a machine shared with other work, wall time mostly measures the others.
Defaults: on CPU the CPU study's model (ResNet-8, width 8, subsample shortcut, 28×28×1,
batch 128); on CUDA ResNet-32 (average-pool shortcut) on 32×32×3.
``--vmap`` also times a raw training step of the ``torch.func`` alternative (stacked
parameters, ``functional_call`` under ``vmap``, BatchNorm without running statistics) against
the fused modules.

``--runner PRESET`` times the whole runner path instead (data loading, training, evaluation,
checkpoints and result files): ``run_sweep`` of the preset's runs one by one against
``run_sweep(..., fused=True)`` with all of them in one pack (``--pack-size``), in fresh
folders, alternating, ``--repeats`` times; the fastest sweep of each counts. Examples:

    python benchmarks/bench_fused.py --device cpu --sizes 1,2,4 --vmap
    python benchmarks/bench_fused.py --device cuda --json results/bench_fused.json
    python benchmarks/bench_fused.py --tiny        # seconds, for CI
    python benchmarks/bench_fused.py --device cpu --runner smoke
    python benchmarks/bench_fused.py --device cpu --runner cpu-quick --runner-epochs 1 --repeats 1
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cbnotes._files import write_json_atomic as write_json
from cbnotes.data import ImageSet
from cbnotes.fused import FusedResNet, PackMember, PackTrainer
from cbnotes.methods import build_criterion
from cbnotes.models import resnet_cifar
from cbnotes.pipeline import DeviceLoader
from cbnotes.provenance import cpu_description, git_revision
from cbnotes.training import Recipe, Trainer, epoch_seconds, seed_everything, synchronize

NUM_CLASSES = 10


def header(args: argparse.Namespace, *, channels_last: bool = False) -> dict[str, Any]:
    """What a report records of where and what it measured (device, torch, threads, CPU, git
    revision, model, input, steps, repeats, amp, clock); also printed as one line."""
    device = args.device
    head = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **cpu_description(),
        **git_revision(),
        "model": f"ResNet-{args.depth} width {args.width}, {args.shortcut} shortcut",
        "input": f"{args.channels}x{args.size}x{args.size}, batch {args.batch_size}"
        + (", channels_last" if channels_last else ""),
        "steps": args.steps,
        "repeats": args.repeats,
        "amp": args.amp,
        "clock": args.clock,
    }
    print(
        f"{head['model']}, {head['input']} on {head['device_name']} "
        f"({head['threads']} threads), amp={args.amp}, {args.clock} time"
    )
    return head


def synthetic_set(images: int, channels: int, size: int) -> ImageSet:
    """Seeded random uint8 images with random labels (the speed does not depend on content)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, NUM_CLASSES, (images,), generator=g)
    return ImageSet(x, y, tuple(str(i) for i in range(NUM_CLASSES)))


def member(args: argparse.Namespace, data: ImageSet, seed: int, device: torch.device) -> Any:
    """One softmax run of the benchmark's model, seeded as the runner seeds it."""
    recipe = Recipe(
        epochs=args.repeats + 1, batch_size=args.batch_size, warmup_epochs=0, decay_epochs=()
    )
    seed_everything(seed)
    model = resnet_cifar(
        args.depth, NUM_CLASSES, args.channels, args.width, shortcut=args.shortcut, init=args.init
    )
    counts = data.counts()
    loader = DeviceLoader(
        data,
        args.batch_size,
        train=True,
        device=device,
        seed=seed,
        drop_last=True,
        channels_last=args.channels_last,
    )
    criterion = build_criterion("softmax", counts, {"beta": 0.0}, recipe)
    return PackMember(model, criterion, loader, recipe, "softmax", counts, name=f"s{seed}")


def build_one(args: argparse.Namespace, data: ImageSet, test: ImageSet, device: torch.device):
    """One ordinary Trainer run (seed 0)."""
    m = member(args, data, 0, device)
    test_loader = DeviceLoader(test, 500, train=False, device=device)
    if args.channels_last:
        m.model = m.model.to(memory_format=torch.channels_last)
    return Trainer(
        m.model,
        m.loss_fn,
        m.train_loader,
        test_loader,
        m.recipe,
        loss_type="softmax",
        device=device,
        num_classes=NUM_CLASSES,
        train_counts=m.train_counts,
        amp=args.amp,
        progress=False,
        channels_last=args.channels_last,  # the packs' layout (None would mean channels-last)
    )


def build_pack(
    args: argparse.Namespace, n: int, data: ImageSet, test: ImageSet, device: torch.device
) -> PackTrainer:
    """A pack of ``n`` runs (seeds 0 .. n-1)."""
    members = [member(args, data, seed, device) for seed in range(n)]
    test_loader = DeviceLoader(test, 500, train=False, device=device)
    return PackTrainer(
        members,
        test_loader,
        device=device,
        num_classes=NUM_CLASSES,
        amp=args.amp,
        progress=False,
        channels_last=args.channels_last,
    )


def compare(
    args: argparse.Namespace, n: int, data: ImageSet, test: ImageSet, device: torch.device
) -> tuple[float, float]:
    """(one run's images/s, the pack's images/s over all members): one warm-up epoch each,
    then ``args.repeats`` timed epochs of each, alternating; the fastest epoch of each counts
    (the least disturbed by other work on the machine)."""
    one, pack = build_one(args, data, test, device), build_pack(args, n, data, test, device)
    one.train_epoch(0)
    pack.train_epoch(0)
    one_s, pack_s = [], []
    for epoch in range(1, args.repeats + 1):
        one_s.append(epoch_seconds(one, epoch, clock=args.clock))
        pack_s.append(epoch_seconds(pack, epoch, clock=args.clock))
    images = args.steps * args.batch_size
    return images / min(one_s), n * images / min(pack_s)


def raw_steps(args: argparse.Namespace, n: int, device: torch.device) -> dict[str, float]:
    """Seconds per raw training step (forward, backward, SGD) of a pack of ``n``: the fused
    modules against ``torch.func`` stacking under ``vmap`` (BatchNorm without running stats)."""
    from torch.func import functional_call, stack_module_state, vmap

    models = []
    for seed in range(n):
        seed_everything(seed)
        models.append(
            resnet_cifar(
                args.depth,
                NUM_CLASSES,
                args.channels,
                args.width,
                shortcut=args.shortcut,
                init=args.init,
            ).to(device)
        )
    shape = (n, args.batch_size, args.channels, args.size, args.size)
    xs = torch.randn(shape, device=device)
    ys = torch.randint(0, NUM_CLASSES, (n, args.batch_size), device=device)

    fused = FusedResNet.from_models(models)
    fused_x = xs.transpose(0, 1).reshape(args.batch_size, -1, args.size, args.size)
    fused_opt = torch.optim.SGD(fused.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)

    def fused_step() -> None:
        fused_opt.zero_grad(set_to_none=True)
        logits = fused(fused_x)
        F.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="sum").backward()
        fused_opt.step()

    stacked = [copy.deepcopy(m) for m in models]
    for m in stacked:
        torch.func.replace_all_batch_norm_modules_(m)
    params, buffers = stack_module_state(stacked)
    base = copy.deepcopy(stacked[0]).to("meta")
    vmap_opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9, weight_decay=2e-4)

    def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    def vmap_step() -> None:
        vmap_opt.zero_grad(set_to_none=True)
        logits = vmap(one)(params, buffers, xs)
        F.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="sum").backward()
        vmap_opt.step()

    steps = {"fused": fused_step, "vmap": vmap_step}
    for step in steps.values():
        for _ in range(2):
            step()
    timer = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):  # alternate; the fastest repeat counts
        for name, step in steps.items():
            synchronize(device)
            start = timer()
            for _ in range(args.steps):
                step()
            synchronize(device)
            times[name].append((timer() - start) / args.steps)
    out = {name: min(t) for name, t in times.items()}
    return out


def runner_sweeps(args: argparse.Namespace) -> dict[str, Any]:
    """Seconds of the preset's sweep one run after another and as fused packs (the fastest of
    ``args.repeats`` alternating sweeps each, by ``args.clock``), and their ratio."""
    from cbnotes.presets import get_preset, with_overrides
    from cbnotes.runner import run_sweep

    configs = with_overrides(get_preset(args.runner), epochs=args.runner_epochs)
    size = args.pack_size or len(configs)
    timer = time.process_time if args.clock == "cpu" else time.perf_counter
    ways = {"unfused": {}, "fused": {"fused": True, "pack_size": size}}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, options in ways.items():
            with tempfile.TemporaryDirectory() as folder:
                start = timer()
                run_sweep(configs, folder, device=str(args.device), progress=False, **options)
                times[name].append(timer() - start)
    best = {name: min(t) for name, t in times.items()}
    return {
        "preset": args.runner,
        "runs": len(configs),
        "epochs": configs[0].epochs,
        "pack_size": size,
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "seconds": times,
        "unfused_s": best["unfused"],
        "fused_s": best["fused"],
        "speedup": best["unfused"] / best["fused"],
    }


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags every training benchmark shares: device, timing, model and input shape."""
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--steps", type=int, default=None, help="batches per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs of each (fastest counts)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--depth", type=int, default=None, help="ResNet depth (CPU 8, CUDA 32)")
    p.add_argument("--width", type=int, default=None, help="base width (CPU 8, CUDA 16)")
    p.add_argument("--size", type=int, default=None, help="image side (CPU 28, CUDA 32)")
    p.add_argument("--channels", type=int, default=None, help="image channels (CPU 1, CUDA 3)")
    p.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="wall time, or process CPU time (robust on a busy CPU); auto: cpu on CPU, else wall",
    )
    p.add_argument("--amp", default="auto", help="auto, off, bf16 or fp16 (both sides)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--tiny", action="store_true", help="a few seconds on CPU (CI smoke run)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")


def resolve_model_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the device-dependent defaults of :func:`add_model_args` (CPU: the CPU study's
    model; CUDA: ResNet-32 on 32x32x3; --tiny: seconds) and check them (``p.error``)."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(auto if args.device == "auto" else args.device)
    cuda = args.device.type == "cuda"
    if args.tiny:
        defaults = {"depth": 8, "width": 4, "size": 16, "channels": 3, "steps": 2}
        args.batch_size = min(args.batch_size, 32)
        if args.repeats == p.get_default("repeats"):
            args.repeats = 1
    elif cuda:
        defaults = {"depth": 32, "width": 16, "size": 32, "channels": 3, "steps": 40}
    else:
        defaults = {"depth": 8, "width": 8, "size": 28, "channels": 1, "steps": 24}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.shortcut, args.init = ("avgpool", "glorot") if cuda else ("subsample", "kaiming")
    if args.clock == "auto":
        args.clock = "wall" if cuda else "cpu"
    for name in ("steps", "repeats", "batch_size", "depth", "width", "size", "channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; model defaults depend on the device (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(p)
    p.add_argument("--sizes", default="1,2,4,8,16", help="pack sizes N, comma-separated")
    p.add_argument(
        "--channels-last", action="store_true", help="channels-last batches (and single model)"
    )
    p.add_argument("--vmap", action="store_true", help="also time torch.func stacking + vmap")
    p.add_argument(
        "--runner",
        default=None,
        metavar="PRESET",
        help="time the runner path of this preset, fused vs one by one (see above)",
    )
    p.add_argument(
        "--runner-epochs", type=int, default=None, help="with --runner: override the epochs"
    )
    p.add_argument(
        "--pack-size", type=int, default=None, help="with --runner: runs per pack (default: all)"
    )
    args = p.parse_args(argv)
    if args.tiny and args.sizes == p.get_default("sizes"):
        args.sizes = "1,2,4"
    resolve_model_args(p, args)
    try:
        args.sizes = [int(s) for s in str(args.sizes).split(",")]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes must hold pack sizes >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Measure every pack size against one run, print a table and return the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runner is not None:
        result = runner_sweeps(args)
        print(
            f"preset {result['preset']}: {result['runs']} runs x {result['epochs']} epochs on "
            f"{args.device} ({result['threads']} threads), {result['clock']} time: one by one "
            f"{result['unfused_s']:.1f} s, fused (packs of {result['pack_size']}) "
            f"{result['fused_s']:.1f} s: {result['speedup']:.2f}x"
        )
        if args.json is not None:
            write_json(args.json, result)
        return result
    device = args.device
    data = synthetic_set(args.steps * args.batch_size, args.channels, args.size)
    test = synthetic_set(100, args.channels, args.size)
    results: dict[str, Any] = {
        **header(args, channels_last=args.channels_last),
        **{k: v for k, v in vars(args).items() if k in ("sizes", "channels_last")},
    }
    print(
        f"{'N':>3} | {'one run img/s':>13} | {'pack img/s':>11} | {'per member':>10} | "
        f"{'vs one by one':>13}" + (" | vmap/fused step" if args.vmap else "")
    )
    rows = []
    for n in args.sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        single, total = compare(args, n, data, test, device)
        row = {
            "n": n,
            "one_run_images_per_s": single,
            "images_per_s": total,
            "per_member": total / n,
            "speedup": total / single,
        }
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        text = (
            f"{n:>3} | {single:13.0f} | {total:11.0f} | {total / n:10.0f} | {total / single:12.2f}x"
        )
        if args.vmap:
            raw = raw_steps(args, n, device)
            row["raw_step_s"] = raw
            row["vmap_over_fused"] = raw["vmap"] / raw["fused"]
            text += f" | {raw['vmap'] / raw['fused']:14.2f}x"
        rows.append(row)
        print(text)
        results["packs"] = rows
        if args.json is not None:  # after every size: a run cut short keeps what it measured
            write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()

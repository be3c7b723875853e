"""Command line: ``python -m cbnotes`` / ``cbnotes`` runs presets, lists and compares results.

Exit statuses:

- 0: done.
- 1: some runs of ``run`` / ``run-one`` failed for a reason of their own (a damaged checkpoint
  that cannot be set aside, an invalid result file, which is never overwritten, a checkpoint
  of another config, a loss that became nan). The other runs went on and finished; the
  failed ones are listed on stderr with what to do.
- 2: a user error, printed in one line without a traceback: an unknown preset, a bad value,
  missing data, or a place that cannot be used (``--out`` a file, a read-only folder, a full
  disk), found before any data is loaded or any epoch trained where that is possible.
- 130: interrupted (Ctrl-C); run the same command again to resume.

Commands that only read (``list``, ``compare``, ``summary``) never write; ``figures`` writes
only figures and ``run`` rewrites ``summary.csv`` only when a run finished. A result file that
is not a valid result is skipped by them with a one-line warning on stderr, and a run stored
in two files (a sync tool's ``<run_id> (1).json``) is counted once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

# OpenMP threads that wait for work sleep instead of spinning, unless the environment says
# otherwise: on a CPU shared with other work spinning threads burn the cores the training
# needs. On a loaded 2-core machine an epoch of the CPU study's model with 2 torch threads
# took 5.4x less wall time (4.1x less CPU time) with it (benchmarks/bench_training.py
# --only omp_passive); with one other busy process, 1.9x less. On an idle machine it costs
# 8 to 13 % of wall time (threads wake up later); runs of one thread each (--jobs auto) have
# no thread to wait for and are faster still. OpenMP reads the variable when torch loads,
# which this module does only later, inside the commands (`python -m cbnotes` and the
# `cbnotes` script both start here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cbnotes._files import check_out_dir

if TYPE_CHECKING:
    import pandas as pd

    from cbnotes.config import RunConfig

DEFAULT_OUT = "runs"

_MAIN_EPILOG = """\
examples:
  cbnotes presets                                  what can be run, and how many runs each is
  cbnotes run --preset smoke --out runs/smoke      the whole pipeline in seconds
  cbnotes run --preset cpu-quick --download        4 runs on Fashion-MNIST-LT (~10 min, 2 cores)
  cbnotes run --preset paper-best --dataset cifar10 --if 100 --device cuda --download
  cbnotes compare --out runs                       our numbers beside the paper's Table 2
  cbnotes summary --out runs --preset cpu-quick   does class-balancing beat the seed noise?
  cbnotes figures --out runs                       PNG figures into runs/figures

Runs are resumable: interrupt with Ctrl-C and run the same command again. Finished runs are
never trained twice; each is one JSON file in OUT/runs, and OUT/summary.csv lists them all.
A damaged checkpoint is set aside (renamed *.pt.damaged-<time>) and its run starts again.

exit status: 0 done; 1 some runs failed (listed on stderr; the others finished); 2 a user
error (bad value, missing data, a results folder that cannot be written), in one line;
130 interrupted (run the same command again to resume).
"""

_RUN_EPILOG = """\
examples:
  cbnotes run --preset cpu --dry-run               list the runs and which are finished
  cbnotes run --preset cpu --if 100 --loss focal   only IF 100, only focal runs
  cbnotes run --preset cpu --seeds 0 1 2 3 4       the preset's runs for 5 seeds
  cbnotes run --preset cpu --jobs auto             one run per CPU core at once (1 thread each)
  cbnotes run --preset paper --dataset cifar10 --if 50 --device cuda --download
  cbnotes run --preset paper --backend ray --download     every GPU of this machine, 4 runs per GPU
  cbnotes run --preset paper --backend ray --address auto --out /shared/runs   a Ray cluster
  cbnotes run --preset paper --fused --device cuda   runs of one shape always trained as fused packs
  cbnotes run --preset paper --device cuda --compile --checkpoint-every 120   faster, same run ids
"""

_RUN_ONE_EPILOG = """\
examples:
  cbnotes run-one --dataset fashion_mnist --if 100 --loss softmax --beta 0.9999 --epochs 12 \\
      --depth 8 --base-width 8 --download
  cbnotes run-one --dataset cifar10 --if 100 --loss focal --gamma 1.0 --beta 0.9999 --download

--beta 0 (the default for softmax, sigmoid and focal) is the plain loss; --beta > 0 re-weights by
the effective number of samples (0.9999 is close to inverse class frequency). `cbnotes methods`
lists every method with its parameters and defaults.
"""


class UserError(Exception):
    """An error caused by the command line or the environment, shown without a traceback."""


def _add_execution(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``run-one``."""
    parser.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where to train (default: auto = cuda if available)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="dataset folder (default: the data module's default)",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the dataset if it is not in the data folder",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    speed = parser.add_argument_group(
        "speed (runtime options: they do not change run ids, so finished runs stay finished)"
    )
    speed.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODE",
        help="compile the model with torch.compile (meant for CUDA; a first epoch of minutes "
        "on a CPU); MODE: default, reduce-overhead (CUDA graphs), max-autotune or "
        "max-autotune-no-cudagraphs (default: default)",
    )
    speed.add_argument(
        "--checkpoint-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="save a run's checkpoint after an epoch once SECONDS have passed since the last "
        "one; 0: every epoch (default: every epoch on a CPU, at most once a minute on a GPU)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="cbnotes",
        description="Reproduce 'Class-Balanced Loss Based on Effective Number of Samples' "
        "(Cui et al., CVPR 2019): run preset sweeps, list results, compare with Table 2.",
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of errors (for bug reports)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    run = sub.add_parser(
        "run",
        help="run a preset sweep (resumable)",
        epilog=_RUN_EPILOG,
        formatter_class=raw,
        description="Run every run of a preset (optionally filtered); "
        "finished runs are skipped, interrupted ones resume.",
    )
    run.add_argument(
        "--preset",
        required=True,
        metavar="NAME",
        help="preset name (see `cbnotes presets`); auto = paper-best with a CUDA GPU, "
        "cpu-quick without",
    )
    run.add_argument("--dataset", nargs="+", default=None, help="keep only these datasets")
    run.add_argument(
        "--if",
        dest="imbalance_factor",
        nargs="+",
        type=float,
        default=None,
        metavar="IF",
        help="keep only these imbalance factors",
    )
    run.add_argument(
        "--loss",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="keep only these methods (see `cbnotes methods`)",
    )
    run.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="SEED",
        help="run each selected setting with these seeds (replaces the preset's)",
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="override the number of epochs (new run ids)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list the selected runs and their status, train nothing",
    )
    _add_execution(run)
    run.add_argument(
        "--jobs",
        default="1",
        metavar="N|auto",
        help="train N runs at once in worker processes, the CPU cores shared out among them "
        "(auto: one per core on a CPU, 1 on a GPU; default: 1). On a CPU, runs of one thread "
        "each are faster in all than one run using every core; a run's numbers depend on its "
        "thread count, which its result records",
    )
    ray = run.add_argument_group(
        "distributed (Ray)",
        "Each run becomes a Ray task. --out must be storage every node sees at the same path; "
        'needs `pip install "cbnotes[ray]"`.',
    )
    ray.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: one run after another in this process (default); ray: runs as Ray tasks",
    )
    ray.add_argument(
        "--address",
        default=None,
        metavar="auto|HOST:PORT",
        help="Ray cluster to join (default: start a local Ray instance on this machine)",
    )
    ray.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="CPUs of the local Ray instance (default: all); ignored with --address",
    )
    ray.add_argument(
        "--cpus-per-run",
        type=int,
        default=1,
        metavar="N",
        help="CPU cores (and torch threads) of each run (default: 1); a run's numbers depend on "
        "its thread count, so use the local run's thread count to reproduce it exactly",
    )
    ray.add_argument(
        "--runs-per-gpu",
        type=int,
        default=4,
        metavar="N",
        help="runs sharing one GPU, each asking for 1/N of it (default: 4)",
    )
    packs = run.add_argument_group(
        "fused packs",
        "Pending runs of one dataset and model shape are trained together as one fused model "
        "(grouped convolutions, HFTA); each still writes its own result file. By default "
        "(neither flag) packs are used where they are faster: never on a CPU, where a pack "
        "is a little slower than its runs one by one; on a GPU when a pack measured at the "
        "start (one epoch, recorded in OUT/fused-choice.json) beats its runs one by one "
        "(with --backend ray: only with --fused).",
    )
    packs.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="always train pending runs in packs (with --backend ray: one task per pack, on a "
        "whole GPU); --no-fused: always one by one",
    )
    packs.add_argument(
        "--pack-size",
        type=int,
        default=None,
        metavar="N",
        help="at most N runs per pack (default: 1 on a CPU; on a GPU as many as half its free "
        "memory holds, at most 16; with --backend ray 8 on GPU workers)",
    )

    one = sub.add_parser(
        "run-one",
        help="run a single configuration",
        epilog=_RUN_ONE_EPILOG,
        formatter_class=raw,
        description="Train and evaluate one configuration.",
    )
    one.add_argument(
        "--dataset", required=True, help="cifar10, cifar100, fashion_mnist or synthetic"
    )
    one.add_argument(
        "--if",
        dest="imbalance_factor",
        type=float,
        default=100.0,
        metavar="IF",
        help="imbalance factor n_max / n_min (default: 100)",
    )
    one.add_argument(
        "--loss",
        default="softmax",
        metavar="METHOD",
        help="method: softmax, sigmoid, focal, or a later method (see `cbnotes methods`; "
        "default: softmax)",
    )
    one.add_argument(
        "--beta",
        type=float,
        default=None,
        help="β in [0, 1) of the effective-number weights; 0 = plain loss (default: the method's)",
    )
    one.add_argument(
        "--gamma",
        type=float,
        default=None,
        help="focal exponent γ (required for --loss focal, e.g. 1.0)",
    )
    one.add_argument(
        "--scheme",
        default=None,
        help="class weights: effective (1/E_n), inverse (1/n), sqrt_inverse (1/√n) or none "
        "(default: the method's)",
    )
    one.add_argument("--tau", type=float, default=None, help="logit-adjustment τ (default: 1)")
    one.add_argument(
        "--max-margin", type=float, default=None, help="LDAM's largest margin (default: 0.5)"
    )
    one.add_argument("--scale", type=float, default=None, help="LDAM's logit scale (default: 30)")
    one.add_argument(
        "--shortcut",
        default="avgpool",
        help="ResNet shortcut: avgpool (the official code) or subsample (default: avgpool)",
    )
    one.add_argument(
        "--init",
        default="glorot",
        help="initialization: glorot (the official code) or kaiming (default: glorot)",
    )
    one.add_argument("--seed", type=int, default=0, help="model/order seed (default: 0)")
    one.add_argument("--epochs", type=int, default=200, help="epochs (default: 200)")
    one.add_argument("--depth", type=int, default=32, help="ResNet depth 6n+2 (default: 32)")
    one.add_argument("--base-width", type=int, default=16, help="first stage width (default: 16)")
    one.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    one.add_argument(
        "--eval-every",
        type=int,
        default=1,
        help="evaluate every N epochs (and at the end; default: 1)",
    )
    _add_execution(one)

    lst = sub.add_parser(
        "list",
        help="list finished (and interrupted) runs",
        description="List finished runs in a results folder.",
    )
    lst.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )

    exp = sub.add_parser(
        "export",
        help="write all finished runs to one CSV file",
        description="Write one tidy row per finished run to a CSV file.",
    )
    exp.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )
    exp.add_argument("--to", required=True, metavar="FILE.csv", help="CSV file to write")

    cmp_ = sub.add_parser(
        "compare",
        help="our results beside the paper's Table 2",
        description="Aggregate our runs over seeds (mean ± std) and show the "
        "paper's Table 2 number for the same setting where it exists.",
    )
    cmp_.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )

    sub.add_parser(
        "methods",
        help="list the methods with their parameters",
        description="List every registered method: display name, what it changes, its "
        "parameters with defaults, head and source.",
    )

    sub.add_parser(
        "presets",
        help="list the presets with run counts",
        description="List the presets, their run counts and what they are for.",
    )

    summ = sub.add_parser(
        "summary",
        help="class-balanced vs plain, with the seed noise",
        description="For each class-balanced setting of a preset: its plain loss beside it "
        "(mean ± std over seeds), the difference with its standard error, in how many seeds CB "
        "won, and whether the difference exceeds the seed noise; then where the runs came from. "
        "For a methods preset (cpu-methods, beyond, smoke-methods): every method beside plain "
        "softmax and CB softmax, overall and many/medium/few-shot.",
    )
    summ.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )
    summ.add_argument("--preset", required=True, help="whose runs to read (cbnotes presets)")
    summ.add_argument("--markdown", action="store_true", help="print a Markdown table")

    fig = sub.add_parser(
        "figures",
        help="write the report figures (PNG)",
        description="Write results.png and per_class.png into DIR/figures (or --to).",
    )
    fig.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )
    fig.add_argument(
        "--preset", default=None, help="plot only this preset's runs (default: every run in DIR)"
    )
    fig.add_argument(
        "--to",
        default=None,
        metavar="FIGDIR",
        help="folder for the PNG files (default: DIR/figures), e.g. when DIR is read-only",
    )
    return parser


def _print_table(df: pd.DataFrame) -> None:
    """Print a DataFrame fully (no truncation)."""
    import pandas as pd

    with pd.option_context(
        "display.max_rows",
        None,
        "display.max_columns",
        None,
        "display.width",
        200,
        "display.max_colwidth",
        80,
    ):
        print(df.to_string())


def _cmd_presets(args: argparse.Namespace) -> int:
    """List presets with run counts."""
    from cbnotes.presets import AUTO_PRESETS, PRESETS, resolve_preset_name

    for preset in PRESETS.values():
        print(f"{preset.name:11s} {len(preset.configs()):4d} runs  {preset.description}")
    gpu, cpu = AUTO_PRESETS[True], AUTO_PRESETS[False]
    print(
        f"{'auto':11s}   ->  {gpu} with a CUDA GPU, {cpu} without (now: "
        f"{resolve_preset_name('auto')})"
    )
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    """List the method registry."""
    from cbnotes.methods import METHODS, method_choices

    for name in method_choices():
        method = METHODS[name]
        params = ", ".join(f"{k}={v!r}" for k, v in method.params.items()) or "none"
        print(f"{name:17s} {method.title} ({method.reference})")
        print(f"{'':17s}   changes {method.changes}")
        print(f"{'':17s}   parameters: {params}; head: {method.head}")
    return 0


def _selected(args: argparse.Namespace) -> list[RunConfig]:
    """The preset's configs after filters and overrides."""
    from cbnotes.presets import filter_configs, get_preset, with_overrides, with_seeds

    configs = filter_configs(
        get_preset(args.preset),
        dataset=args.dataset,
        imbalance_factor=args.imbalance_factor,
        loss_type=args.loss,
    )
    if args.seeds is not None:
        configs = with_seeds(configs, args.seeds)
    return with_overrides(configs, epochs=args.epochs)


def _sweep(configs: list[RunConfig], args: argparse.Namespace) -> int:
    """Run configs, print the summary table and where the results are; 1 if some runs failed."""
    from cbnotes.report import results_table
    from cbnotes.runner import SweepError, run_sweep

    failed: SweepError | None = None
    options = {
        "device": args.device,
        "progress": not args.no_progress,
        "data_root": args.data_root,
        "download": args.download,
        "compile": args.compile or False,
        "checkpoint_every": args.checkpoint_every,
    }
    if getattr(args, "jobs", 1) != 1 and getattr(args, "backend", "local") == "local":
        options["jobs"] = args.jobs
    fused = getattr(args, "fused", None)
    if fused is not None or getattr(args, "backend", "local") == "ray":
        options.update(fused=bool(fused), pack_size=args.pack_size)  # Ray: packs only if asked
    try:
        if getattr(args, "backend", "local") == "ray":
            from cbnotes.distributed import run_sweep_ray

            df = run_sweep_ray(
                configs,
                args.out,
                address=args.address,
                workers=args.workers,
                cpus_per_run=args.cpus_per_run,
                runs_per_gpu=args.runs_per_gpu,
                **options,
            )
        else:
            df = run_sweep(configs, args.out, **options)
    except SweepError as err:
        failed, df = err, err.results
    out = Path(args.out)
    if not df.empty:
        _print_table(results_table(df))
        print(f"\n{len(df)} run(s); results in {out / 'runs'}, table in {out / 'summary.csv'}")
        print(f"compare with the paper: cbnotes compare --out {out}")
    if failed is None:
        return 0
    print(
        f"cbnotes {args.command}: {len(failed.failures)} of {failed.total} run(s) failed "
        f"(the others finished):",
        file=sys.stderr,
    )
    for run_id, why in failed.failures.items():
        print(f"  {run_id}: {why}", file=sys.stderr)
    print(
        "do what each line says and run the same command again; finished runs are skipped",
        file=sys.stderr,
    )
    return 1


def _check_runtime(args: argparse.Namespace) -> None:
    """UserError for --compile / --checkpoint-every values that cannot work."""
    from cbnotes.training import COMPILE_MODES

    if args.compile is not None and args.compile not in COMPILE_MODES:
        raise UserError(
            f"--compile takes no value or one of {', '.join(COMPILE_MODES)}; got {args.compile!r}"
        )
    every = args.checkpoint_every
    if every is not None and not (every >= 0 and every != float("inf")):
        raise UserError(
            f"--checkpoint-every must be a number of seconds >= 0 (0: every epoch); got {every}"
        )


def _check_jobs(args: argparse.Namespace) -> None:
    """--jobs as "auto" or an integer >= 1 in ``args.jobs``; a UserError otherwise, and for
    --jobs with --backend ray."""
    text = args.jobs
    try:
        value = text if text == "auto" else int(text)
    except ValueError:
        value = 0
    if value != "auto" and value < 1:
        raise UserError(f"--jobs must be an integer >= 1 or auto; got {text!r}")
    if value != 1 and args.backend == "ray":
        raise UserError("--jobs is for --backend local; Ray runs as many runs as --workers allows")
    args.jobs = value


def _cmd_run(args: argparse.Namespace) -> int:
    """Run (or list with --dry-run) a preset."""
    from cbnotes.presets import resolve_preset_name
    from cbnotes.results import run_status

    if args.preset == "auto":
        args.preset = resolve_preset_name("auto")
        print(f"--preset auto: running {args.preset!r} on this machine", flush=True)
    _check_fused(args)
    _check_jobs(args)
    _check_runtime(args)
    configs = _selected(args)
    if args.fused and args.pack_size is None and args.backend == "local":
        args.pack_size = _default_pack_size(args, configs)  # Ray picks it on the cluster
    auto = _auto_note(args) if args.fused is None and args.backend == "local" else None
    if auto and args.pack_size is not None and not args.dry_run:
        print(f"note: {auto}", file=sys.stderr)
    if args.dry_run:
        if Path(args.out).exists():
            check_out_dir(args.out, write=False)
        for config in configs:
            print(f"{run_status(config, args.out):11s} {config.run_id}  {config.label}")
        print(
            f"{len(configs)} run(s) in preset {args.preset!r} after filters; "
            f"results folder {args.out}"
        )
        if args.fused:
            _print_packs(configs, args)
        elif auto:
            print(auto)
        return 0
    return _sweep(configs, args)


def _check_fused(args: argparse.Namespace) -> None:
    """UserError for --fused / --pack-size values that cannot work together."""
    if args.pack_size is not None and args.fused is False:
        raise UserError("--pack-size sets the size of fused packs: drop --no-fused")
    if args.pack_size is not None and args.fused is None and args.backend == "ray":
        raise UserError("--pack-size sets the size of fused packs: with --backend ray add --fused")
    if args.pack_size is not None and args.pack_size < 1:
        raise UserError(f"--pack-size must be >= 1; got {args.pack_size}")


def _default_pack_size(args: argparse.Namespace, configs: list[RunConfig]) -> int:
    """The device's pack size (cbnotes.packs.default_pack_size), with a note on a CPU."""
    from cbnotes.packs import default_pack_size
    from cbnotes.parallel import resolve_jobs

    size = default_pack_size(args.device, configs, sharing=resolve_jobs(args.jobs, args.device))
    if size == 1:
        print(
            "note: --fused on a CPU trains one run at a time (a pack is a little slower than "
            "its runs one by one there, see benchmarks/bench_fused.py); add --pack-size N to "
            "pack anyway",
            file=sys.stderr,
        )
    return size


def _auto_note(args: argparse.Namespace) -> str:
    """What the default (neither --fused nor --no-fused) does on the device."""
    from cbnotes.provenance import resolve_device

    if resolve_device(args.device).type == "cuda":
        return "fused auto: a pack is measured when the sweep starts; packs if it is faster"
    extra = " (add --fused for packs of --pack-size)" if args.pack_size else ""
    return f"fused auto: on a CPU the runs are trained one by one{extra}"


def _print_packs(configs: list[RunConfig], args: argparse.Namespace) -> None:
    """How a fused sweep would train the selected runs (for --dry-run)."""
    from cbnotes.packs import pack_checkpoint_path, plan_sweep

    units = plan_sweep(configs, args.out, pack_size=args.pack_size, device=args.device)
    packs = [unit for unit in units if len(unit) > 1]
    for pack in packs:
        ckpt = pack_checkpoint_path(args.out, pack)
        resume = f", resumes from {ckpt}" if ckpt.exists() else ""
        print(f"pack of {len(pack)}{resume}: {' '.join(c.run_id for c in pack)}")
    alone = len(units) - len(packs)
    print(f"--fused: {len(packs)} pack(s) of up to {args.pack_size} runs, {alone} run(s) alone")


def _cmd_run_one(args: argparse.Namespace) -> int:
    """Run a single configuration."""
    from cbnotes.config import RunConfig

    _check_runtime(args)
    config = RunConfig(
        dataset=args.dataset,
        imbalance_factor=args.imbalance_factor,
        loss_type=args.loss,
        beta=args.beta,
        gamma=args.gamma,
        scheme=args.scheme,
        tau=args.tau,
        max_margin=args.max_margin,
        scale=args.scale,
        shortcut=args.shortcut,
        init=args.init,
        seed=args.seed,
        epochs=args.epochs,
        depth=args.depth,
        base_width=args.base_width,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
    )
    return _sweep([config], args)


def _cmd_list(args: argparse.Namespace) -> int:
    """Finished runs plus interrupted ones (checkpoints) and damaged checkpoints set aside."""
    from cbnotes.results import load_results

    df = load_results(args.out)
    if df.empty:
        print(f"no finished runs in {args.out}")
    else:
        columns = ["run_id", "label", "epochs", "top1_error", "best_top1_error", "device"]
        _print_table(df[columns])
    checkpoints = Path(args.out) / "checkpoints"
    for path in sorted(checkpoints.glob("*.pt")):
        if path.name.startswith("pack-"):
            print(f"interrupted pack (resumable with run --fused): {path.stem}")
        else:
            print(f"interrupted (resumable): {path.stem}")
    for path in sorted(checkpoints.glob("*.pt.damaged-*")):
        print(f"damaged checkpoint set aside (delete it when you no longer need it): {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Write the summary of all finished runs to a CSV file."""
    from cbnotes.results import SUMMARY_COLUMNS, load_results, write_csv_atomic

    df = load_results(args.out)
    write_csv_atomic(df.loc[:, list(SUMMARY_COLUMNS)], args.to)
    print(f"wrote {len(df)} run(s) to {args.to}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """Our aggregated results beside Table 2."""
    from cbnotes.report import compare_with_paper
    from cbnotes.results import load_results

    df = load_results(args.out)
    if df.empty:
        raise UserError(f"no finished runs in {args.out}; run a preset first")
    table = compare_with_paper(df)
    _print_table(table.round(2))
    print(
        "\nours = last-epoch top-1 error (%), mean ± std over seeds; paper = Table 2 of "
        "Cui et al. (2019), ResNet-32, 200 epochs."
    )
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    """Write the report figures as PNG."""
    from cbnotes.report import plot_per_class, plot_results
    from cbnotes.results import load_results

    if args.preset is None:
        df = load_results(args.out)
    else:
        from cbnotes.analysis import results_for
        from cbnotes.presets import get_preset

        df = results_for(get_preset(args.preset), args.out)
    if df.empty:
        raise UserError(f"no finished runs in {args.out}; run a preset first")
    folder = Path(args.out) / "figures" if args.to is None else Path(args.to)
    check_out_dir(folder, what="figures folder")
    for name, plot in (("results.png", plot_results), ("per_class.png", plot_per_class)):
        plot(df, folder / name)
        print(folder / name)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    """Class-balanced vs plain for one preset's runs (every method vs the baselines for a
    methods preset)."""
    from cbnotes.analysis import cb_vs_plain, preset_results, provenance_text, summary_markdown
    from cbnotes.presets import PRESETS, resolve_preset_name

    name = resolve_preset_name(args.preset)
    if name in PRESETS and PRESETS[name].methods:
        return _summary_methods(args, name)
    if args.markdown:
        print(summary_markdown(args.out, args.preset))
        return 0
    df = preset_results(args.out, args.preset)
    table = cb_vs_plain(df)
    _print_table(
        table.round({c: 2 for c in table.columns if c.endswith(("mean", "std", "diff", "se"))})
    )
    print(f"\n{provenance_text(df)}")
    sentences = _in_short(table, args) + _against_committed(df, args.out)
    _print_in_short(sentences)
    return 0


def _summary_methods(args: argparse.Namespace, preset: str) -> int:
    """Every method of a methods preset beside plain softmax and CB softmax."""
    from cbnotes.analysis import preset_results, provenance_text
    from cbnotes.comparison import (
        compare_methods,
        compare_methods_markdown,
        describe_methods,
        methods_markdown,
        methods_note,
    )

    if args.markdown:
        print(methods_markdown(args.out, preset))
        return 0
    df = preset_results(args.out, preset)
    table = compare_methods(df)
    print(compare_methods_markdown(table))
    print(f"\n{methods_note(df)}\n\n{provenance_text(df)}")
    _print_in_short(describe_methods(table))
    return 0


def _print_in_short(sentences: list[str]) -> None:
    """The closing plain-words list of ``summary``."""
    if sentences:
        print("\nIn short:")
        for sentence in sentences:
            print(f"- {sentence}")


def _in_short(table: pd.DataFrame, args: argparse.Namespace) -> list[str]:
    """Which loss won each class-balanced vs plain pair, by how much; the one-seed caveat."""
    from cbnotes.analysis import NOISE_SE
    from cbnotes.data import dataset_title

    sentences = []
    for row in table.itertuples(index=False):
        where = f"{dataset_title(row.dataset)} at IF {row.imbalance_factor:g}"
        scheme = row.weighting.startswith("1/")  # 1/n or 1/√n weights, else a β
        weights = f"{row.weighting} weights" if scheme else f"β = {row.weighting}"
        cb = f"class-balanced {row.loss} ({weights})"
        plain = f"plain {row.loss}"
        winner, loser = (cb, plain) if row.diff < 0 else (plain, cb)
        points = f"{abs(row.diff):.2f} points of top-1 error"
        numbers = f"{row.cb_mean:.2f} % class-balanced, {row.plain_mean:.2f} % plain"
        if row.verdict in ("CB better", "CB worse"):
            text = (
                f"{where}: {winner} beat {loser} by {points} ({numbers}), more than "
                f"{NOISE_SE:g} standard errors of the seed noise"
            )
        elif row.verdict == "within seed noise":
            text = (
                f"{where}: {cb} and {plain} differ by {points} ({numbers}), within "
                f"{NOISE_SE:g} standard errors of the seed noise: no clear winner"
            )
        elif row.diff == 0:
            text = f"{where}: {cb} and {plain} tie at {row.cb_mean:.2f} % top-1 error"
        else:
            text = f"{where}: {winner} ended {points} below {loser} ({numbers})"
        sentences.append(f"{text}.")
    if not table.empty and min(table["plain_n"].min(), table["cb_n"].min()) < 2:
        sentences.append(
            f"These numbers come from one seed per setting, and one seed cannot separate the "
            f"methods from seed noise: add seeds (cbnotes run --preset {args.preset} --seeds "
            f"0 1 2 --out {args.out}); results/cpu-study holds the 3 seeds of preset cpu."
        )
    return sentences


def _machine(env: dict) -> str:
    """The machine a result was trained on, from its environment record."""
    parts = [str(env.get("device") or "an unknown device")]
    parts += [str(env[k]) for k in ("cpu_model", "cpu_capability") if env.get(k)]
    if not env.get("cpu_capability"):
        parts.append("CPU model and vector ISA not recorded")
    return ", ".join(parts)


def _layout(record: dict) -> str:
    """The memory format of a result's last session, in words (the default where none is
    recorded: :func:`cbnotes.results.recorded_channels_last`)."""
    from cbnotes.results import recorded_channels_last

    return "channels-last" if recorded_channels_last(record) else "default memory format"


def _against_committed(df: pd.DataFrame, out: str) -> list[str]:
    """Whether these runs match the committed CPU study's runs of the same id, and why not."""
    from cbnotes.results import InvalidResultError, read_result

    study = Path(__file__).resolve().parents[1] / "results" / "cpu-study"
    if not (study / "runs").is_dir() or Path(out).resolve() == study.resolve():
        return []
    pairs = []
    for run_id in df["run_id"]:
        try:
            ours = read_result(Path(out) / "runs" / f"{run_id}.json", run_id=run_id)
            theirs = read_result(study / "runs" / f"{run_id}.json", run_id=run_id)
        except InvalidResultError:
            continue
        pairs.append((ours, theirs))
    if not pairs:
        return []
    differ = [(o, t) for o, t in pairs if o["top1_error"] != t["top1_error"]]
    if not differ:
        return [
            f"All {len(pairs)} of these runs that the committed study in results/cpu-study "
            f"also holds end with the same top-1 error there, to the last digit."
        ]
    ours, theirs = differ[0]
    return [
        f"{len(differ)} of the {len(pairs)} runs that the committed study in results/cpu-study "
        f"also holds {'ends' if len(differ) == 1 else 'end'} with another top-1 error there "
        f"(e.g. {ours['label']}: "
        f"{ours['top1_error']:.2f} % here, {theirs['top1_error']:.2f} % committed). Expect "
        f"that on another machine: a different CPU, vector ISA (AVX2, AVX-512), torch "
        f"thread count or memory format rounds differently, and training amplifies it. The "
        f"committed run was trained on {_machine(theirs['environment'])} ({_layout(theirs)}); "
        f"this one on {_machine(ours['environment'])} ({_layout(ours)})."
    ]


_COMMANDS = {
    "run": _cmd_run,
    "run-one": _cmd_run_one,
    "list": _cmd_list,
    "export": _cmd_export,
    "compare": _cmd_compare,
    "methods": _cmd_methods,
    "presets": _cmd_presets,
    "summary": _cmd_summary,
    "figures": _cmd_figures,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 some runs failed, 2 user error, 130
    interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (UserError, ValueError, OSError, FloatingPointError) as err:
        if args.debug:
            raise
        print(f"cbnotes {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130

"""Command line: ``python -m cbnotes`` / ``cbnotes`` runs presets, lists and compares results.

User errors (unknown preset, missing data, bad value) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
"""

_RUN_EPILOG = """\
examples:
  cbnotes run --preset cpu --dry-run               list the runs and which are finished
  cbnotes run --preset cpu --if 100 --loss focal   only IF 100, only focal runs
  cbnotes run --preset cpu --seeds 0 1 2 3 4       the preset's runs for 5 seeds
  cbnotes run --preset paper --dataset cifar10 --if 50 --device cuda --download
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
        "won, and whether the difference exceeds the seed noise; then where the runs came from.",
    )
    summ.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )
    summ.add_argument("--preset", required=True, help="whose runs to read (cbnotes presets)")
    summ.add_argument("--markdown", action="store_true", help="print a Markdown table")

    fig = sub.add_parser(
        "figures",
        help="write the report figures (PNG)",
        description="Write results.png and per_class.png into DIR/figures.",
    )
    fig.add_argument(
        "--out", default=DEFAULT_OUT, metavar="DIR", help=f"results folder (default: {DEFAULT_OUT})"
    )
    fig.add_argument(
        "--preset", default=None, help="plot only this preset's runs (default: every run in DIR)"
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
    """Run configs, print the summary table and where the results are."""
    from cbnotes.report import results_table
    from cbnotes.runner import run_sweep

    df = run_sweep(
        configs,
        args.out,
        device=args.device,
        progress=not args.no_progress,
        data_root=args.data_root,
        download=args.download,
    )
    _print_table(results_table(df))
    out = Path(args.out)
    print(f"\n{len(df)} run(s); results in {out / 'runs'}, table in {out / 'summary.csv'}")
    print(f"compare with the paper: cbnotes compare --out {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Run (or list with --dry-run) a preset."""
    from cbnotes.presets import resolve_preset_name
    from cbnotes.results import run_status

    if args.preset == "auto":
        args.preset = resolve_preset_name("auto")
        print(f"--preset auto: running {args.preset!r} on this machine", flush=True)
    configs = _selected(args)
    if args.dry_run:
        for config in configs:
            print(f"{run_status(config, args.out):11s} {config.run_id}  {config.label}")
        print(
            f"{len(configs)} run(s) in preset {args.preset!r} after filters; "
            f"results folder {args.out}"
        )
        return 0
    return _sweep(configs, args)


def _cmd_run_one(args: argparse.Namespace) -> int:
    """Run a single configuration."""
    from cbnotes.config import RunConfig

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
    """Finished runs plus interrupted ones (checkpoints)."""
    from cbnotes.results import load_results

    df = load_results(args.out)
    if df.empty:
        print(f"no finished runs in {args.out}")
    else:
        columns = ["run_id", "label", "epochs", "top1_error", "best_top1_error", "device"]
        _print_table(df[columns])
    pending = sorted((Path(args.out) / "checkpoints").glob("*.pt"))
    for path in pending:
        print(f"interrupted (resumable): {path.stem}")
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
    folder = Path(args.out) / "figures"
    for name, plot in (("results.png", plot_results), ("per_class.png", plot_per_class)):
        plot(df, folder / name)
        print(folder / name)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    """Class-balanced vs plain for one preset's runs."""
    from cbnotes.analysis import cb_vs_plain, provenance_text, results_for, summary_markdown
    from cbnotes.presets import get_preset

    if args.markdown:
        print(summary_markdown(args.out, args.preset))
        return 0
    df = results_for(get_preset(args.preset), args.out)
    if df.empty:
        raise UserError(f"no finished runs of preset {args.preset!r} in {args.out}")
    table = cb_vs_plain(df)
    _print_table(
        table.round({c: 2 for c in table.columns if c.endswith(("mean", "std", "diff", "se"))})
    )
    print(f"\n{provenance_text(df)}")
    return 0


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
    """Entry point; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except (UserError, ValueError, FileNotFoundError, FloatingPointError) as err:
        if args.debug:
            raise
        print(f"cbnotes {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130

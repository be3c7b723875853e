"""The main job (``cbnotes run --preset cpu-quick``) at a baseline revision against this tree.

Both are run by the same interpreter on the same machine, alternating (baseline, current,
baseline, ...), each into a fresh results folder, ``--repeats`` times; the baseline's code comes
from ``git worktree add`` of ``--baseline`` (default: 9526e13, the last revision before the
GPU-ready training step, the data cache and the CLI's thread settings). Reported per job: wall
time and the CPU time of the job's process tree, the fastest of the repeats of each counting
(the least disturbed by other work), and the ratios baseline / current. ``--busy N`` keeps N
busy-looping processes running during every job, as on a machine shared with other work.
``--epochs`` shortens every run (the same for both); ``--current-args`` adds options the
baseline may not know to the current tree's job. Examples::

    python benchmarks/bench_main_job.py --repeats 2 --json bench_main_job.json
    python benchmarks/bench_main_job.py --current-args '--jobs auto'
    python benchmarks/bench_main_job.py --epochs 2 --busy 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cbnotes._files import write_json_atomic
from cbnotes.provenance import cpu_description, git_revision

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "9526e13"


def _spin() -> None:
    """Burn one core until killed."""
    while True:
        pass


def job_seconds(
    tree: Path, args: argparse.Namespace, out: Path, extra: list[str]
) -> dict[str, float]:
    """Run the main job with the code of ``tree`` (and ``extra`` options); its wall and CPU
    seconds (children only)."""
    command = [sys.executable, "-m", "cbnotes", "run", "--preset", args.preset, "--out", str(out)]
    command += ["--device", "cpu", "--no-progress", *extra]
    if args.epochs is not None:
        command += ["--epochs", str(args.epochs)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("OMP_WAIT_POLICY", None)  # each revision sets (or not) its own
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"the main job failed in {tree}:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def check_tree_is_used(tree: Path) -> None:
    """Fail unless ``python -m cbnotes`` run in ``tree`` imports the package from ``tree``."""
    code = "import cbnotes, pathlib; print(pathlib.Path(cbnotes.__file__).resolve())"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True
    ).stdout.strip()
    if not found.startswith(str(tree.resolve())):
        raise SystemExit(f"{tree} does not provide cbnotes to its jobs (imported {found})")


def measure(args: argparse.Namespace, baseline: Path) -> dict[str, Any]:
    """Alternate the two jobs ``args.repeats`` times; the fastest of each and the ratios."""
    trees = {"baseline": baseline, "current": ROOT}
    for tree in trees.values():
        check_tree_is_used(tree)
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for spinner in spinners:
        spinner.start()
    times: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                for name, tree in trees.items():
                    extra = args.current_args.split() if name == "current" else []
                    result = job_seconds(tree, args, Path(tmp) / f"{name}-{repeat}", extra)
                    times[name].append(result)
                    print(
                        f"{name:8s} repeat {repeat}: {result['wall_s']:7.1f} s wall, "
                        f"{result['cpu_s']:7.1f} s CPU",
                        flush=True,
                    )
    finally:
        for spinner in spinners:
            spinner.kill()
    best = {
        name: {key: min(r[key] for r in runs) for key in ("wall_s", "cpu_s")}
        for name, runs in times.items()
    }
    ratios = {key: best["baseline"][key] / best["current"][key] for key in ("wall_s", "cpu_s")}
    return {"times": times, "best": best, "baseline_over_current": ratios}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, check out the baseline, measure, print and optionally save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision (default {BASELINE})")
    parser.add_argument("--preset", default="cpu-quick", help="preset (default cpu-quick)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per run (default: the preset's)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="jobs of each (default 2)")
    parser.add_argument("--busy", type=int, default=0, help="busy-looping processes alongside")
    parser.add_argument(
        "--current-args",
        default="",
        metavar="'OPTIONS'",
        help="options of `cbnotes run` for the current tree only, e.g. '--jobs auto'",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.busy < 0 or (args.epochs is not None and args.epochs < 1):
        parser.error("--repeats and --epochs must be >= 1, --busy >= 0")
    revision = git_revision()  # the tree measured as "current"
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(baseline), args.baseline],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            result = measure(args, baseline)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=False
            )
    ratios = result["baseline_over_current"]
    print(
        f"main job ({args.preset}, epochs {args.epochs or 'as the preset'}, busy {args.busy}, "
        f"current with {args.current_args or 'no options'!r}): "
        f"current is {ratios['wall_s']:.2f}x faster in wall time and needs "
        f"{ratios['cpu_s']:.2f}x less CPU time than {args.baseline}"
    )
    payload = {
        "meta": {
            "baseline": args.baseline,
            "current": (revision["git_rev"] or "unknown")[:7]
            + ("-dirty" if revision["git_dirty"] else ""),
            "preset": args.preset,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "busy": args.busy,
            "current_args": args.current_args,
            "cores": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            **cpu_description(),
            "python": platform.python_version(),
        },
        **result,
    }
    if args.json is not None:
        write_json_atomic(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

"""Forward + backward cost of the class-balanced losses relative to ``F.cross_entropy`` (CPU).

Every case runs on the same logits (B = 128, C = 100) and labels in the same process, timed with
``torch.utils.benchmark.Timer.blocked_autorange``. The cases are timed in turn, ``--rounds``
times over; each reports the smallest of its per-round medians and, as its cost relative to
plain cross-entropy, the median over rounds of its ratio to cross-entropy's median of the same
round (both robust to other load on the machine), and the ratio of the smallest medians (the
least disturbed timings). The focal cases are timed twice: the closed-form gradient used by the
package, and the previous autograd path ("reference"), which ``ClassBalancedLoss`` no longer
uses. On the project's 2-core virtual machine, 8 runs of the same code measured 1.9x to 3.1x
(median of the rounds' ratios; 2.3x in the middle run) and 1.7x to 2.6x (best times), γ = 1: the
ratio moves with the load of the host. Usage::

    python benchmarks/bench_losses.py [--threads 1] [--rounds 5] [--min-run-time 0.2] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from cbnotes._files import write_json_atomic as write_json
from cbnotes.effective import class_balanced_weights
from cbnotes.imbalance import long_tailed_counts
from cbnotes.losses import (
    LOSS_TYPES,
    ClassBalancedLoss,
    _check_targets,
    _weighted_loss,
    class_balanced_loss,
    class_balanced_loss_from_weights,
)
from cbnotes.provenance import cpu_description, git_revision

BATCH, NUM_CLASSES, BETA, GAMMA = 128, 100, 0.9999, 1.0
OTHER_GAMMAS = (0.5, 2.0)


def cases() -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Loss functions to time, keyed by a short label; the first is the baseline."""
    counts = long_tailed_counts(500, NUM_CLASSES, 100)  # CIFAR-100-LT, IF 100
    weights = class_balanced_weights(counts, BETA)
    table: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "F.cross_entropy": F.cross_entropy,
    }
    for kind in LOSS_TYPES:
        table[f"class_balanced_loss {kind}"] = lambda z, y, k=kind: class_balanced_loss(
            z, y, counts, k, BETA, GAMMA
        )
        table[f"..._from_weights {kind}"] = lambda z, y, k=kind: class_balanced_loss_from_weights(
            z, y, weights, k, GAMMA
        )
        table[f"ClassBalancedLoss {kind}"] = ClassBalancedLoss(counts, kind, BETA, GAMMA)
    module = ClassBalancedLoss(counts, "focal", BETA, GAMMA)

    def reference_focal(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``ClassBalancedLoss`` focal through the previous autograd path, same validation."""
        _check_targets(z, y, "focal")
        return _weighted_loss(z, y, module.weights, "focal", GAMMA, reference=True)

    table["ClassBalancedLoss focal (reference)"] = reference_focal
    for gamma in OTHER_GAMMAS:  # the paper's other focal settings (m = σ^γ costs more)
        table[f"ClassBalancedLoss focal γ={gamma}"] = ClassBalancedLoss(
            counts, "focal", BETA, gamma
        )
    return table


def measure(min_run_time: float, rounds: int) -> list[dict[str, float | str]]:
    """Forward+backward time of every case and its ratio to the baseline.

    The time is the smallest per-round median; the ratio is the median over rounds of the
    ratio to the baseline's median of the same round (robust to load that drifts).
    """
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(BATCH, NUM_CLASSES, generator=gen).requires_grad_(True)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=gen)
    table = cases()
    timers = {
        name: Timer(
            stmt="torch.autograd.grad(fn(z, y), z)",
            globals={"torch": torch, "fn": fn, "z": logits, "y": labels},
            label="fwd+bwd",
            description=name,
        )
        for name, fn in table.items()
    }
    medians: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(rounds):  # interleaved, so a burst of load hits every case alike
        for name, timer in timers.items():
            medians[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    baseline = medians[next(iter(table))]
    rows: list[dict[str, float | str]] = []
    for name, values in medians.items():
        ratios = sorted(v / b for v, b in zip(values, baseline, strict=True))
        rows.append(
            {
                "case": name,
                "median_us": min(values) * 1e6,
                "ratio": ratios[len(ratios) // 2],  # median over rounds of the same-round ratio
                "best_ratio": min(values) / min(baseline),  # of the least disturbed timings
            }
        )
    return rows


def main() -> None:
    """Parse arguments, time the cases, print the table and optionally save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds per case")
    parser.add_argument(
        "--min-run-time", type=float, default=0.2, help="seconds per case and round"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.min_run_time, args.rounds)
    print(f"B={BATCH}, C={NUM_CLASSES}, CPU, {args.threads} thread(s), torch {torch.__version__}")
    print(f"{'case':<36} {'best (us)':>10} {'x CE (median)':>14} {'x CE (best)':>12}")
    for row in rows:
        print(
            f"{row['case']:<36} {row['median_us']:>10.1f} {row['ratio']:>14.2f} "
            f"{row['best_ratio']:>12.2f}"
        )
    for key, how in (("ratio", "median of the rounds' ratios"), ("best_ratio", "best times")):
        ratio = {row["case"]: row[key] for row in rows}
        print(
            f"CB focal (γ={GAMMA}) forward+backward, {how}: "
            f"{ratio['ClassBalancedLoss focal']:.2f}x cross_entropy (closed-form gradient), "
            f"{ratio['ClassBalancedLoss focal (reference)']:.2f}x (previous autograd path); "
            + ", ".join(
                f"γ={g}: {ratio[f'ClassBalancedLoss focal γ={g}']:.2f}x" for g in OTHER_GAMMAS
            )
        )
    if args.json is not None:
        meta = {
            "batch": BATCH,
            "num_classes": NUM_CLASSES,
            "beta": BETA,
            "gamma": GAMMA,
            "threads": args.threads,
            "rounds": args.rounds,
            "min_run_time": args.min_run_time,
            "torch": torch.__version__,
            "machine": platform.machine(),
            **cpu_description(),
            **git_revision(),
        }
        write_json(args.json, {"meta": meta, "results": rows})


if __name__ == "__main__":
    main()

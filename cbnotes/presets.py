"""Named sweeps: the paper's grid and the later methods (GPU), Fashion-MNIST studies sized for
2 CPU cores, a smoke test.

``get_preset(name)`` returns the list of :class:`~cbnotes.config.RunConfig`; ``PRESETS``
maps each name to a :class:`Preset` with a one-paragraph description.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from cbnotes.config import RunConfig

#: The paper's hyper-parameter search (Sec. 5.2).
PAPER_BETAS: tuple[float, ...] = (0.9, 0.99, 0.999, 0.9999)
PAPER_GAMMAS: tuple[float, ...] = (0.5, 1.0, 2.0)
PAPER_IMBALANCE: tuple[int, ...] = (200, 100, 50, 20, 10, 1)
PAPER_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")

#: Best class-balanced (loss, β, γ) per Table 2 column (dataset, IF); IF 1 has none.
PAPER_BEST_CB: dict[tuple[str, int], tuple[str, float, float | None]] = {
    ("cifar10", 200): ("softmax", 0.9999, None),
    ("cifar10", 100): ("focal", 0.9999, 1.0),
    ("cifar10", 50): ("focal", 0.9999, 2.0),
    ("cifar10", 20): ("softmax", 0.9999, None),
    ("cifar10", 10): ("sigmoid", 0.9999, None),
    ("cifar100", 200): ("focal", 0.9, 1.0),
    ("cifar100", 100): ("focal", 0.9, 1.0),
    ("cifar100", 50): ("sigmoid", 0.99, None),
    ("cifar100", 20): ("focal", 0.99, 0.5),
    ("cifar100", 10): ("focal", 0.999, 0.5),
}

#: The methods the paper is measured against, beside its own losses (``beyond``, ``cpu-methods``):
#: (method, parameters) with the registry's defaults for everything not given.
LATER_METHODS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("softmax", {}),
    ("softmax", {"scheme": "inverse"}),
    ("softmax", {"scheme": "sqrt_inverse"}),
    ("softmax", {"beta": 0.999}),
    ("softmax", {"beta": 0.9999}),
    ("sigmoid", {"beta": 0.9999}),
    ("focal", {"beta": 0.9999, "gamma": 1.0}),
    ("resample", {}),
    ("drw", {}),
    ("ldam", {}),
    ("ldam_drw", {}),
    ("balanced_softmax", {}),
    ("logit_adjusted", {}),
)
BEYOND_IMBALANCE: tuple[int, ...] = (100, 10)

# CPU study (Fashion-MNIST-LT on 2 cores): the one place to tune its size. Its model keeps the
# subsample shortcut and Kaiming init it was first run with, so the committed runs stay valid.
CPU_MODEL = {"shortcut": "subsample", "init": "kaiming"}
CPU_DEPTH = 8
CPU_BASE_WIDTH = 8
CPU_EPOCHS = 12
CPU_BATCH_SIZE = 128
CPU_BETA = 0.9999
CPU_GAMMA = 1.0
CPU_IMBALANCE: tuple[int, ...] = (100, 10)
CPU_SEEDS: tuple[int, ...] = (0, 1, 2)
CPU_EVAL_EVERY = 1

# Smoke test (synthetic data, seconds).
SMOKE_DEPTH = 8
SMOKE_BASE_WIDTH = 4
SMOKE_EPOCHS = 2
SMOKE_BATCH_SIZE = 64
SMOKE_SEEDS: tuple[int, ...] = (0, 1)
SMOKE_METHODS_EPOCHS = 3  # DRW needs a learning-rate decay: the 3-epoch schedule has one


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named list of runs with a description for ``cbnotes presets``."""

    name: str
    description: str
    build: Callable[[], list[RunConfig]]
    #: True for a study of many methods (summarised against plain and CB softmax by
    #: :func:`cbnotes.comparison.compare_methods`), False for the paper's plain/CB pairs.
    methods: bool = False

    def configs(self) -> list[RunConfig]:
        """The runs of this preset."""
        return self.build()


def _methods(betas: Sequence[float], gammas: Sequence[float]) -> list[tuple[str, float, Any]]:
    """(loss, β, γ) for plain (β = 0) and class-balanced runs of the three losses."""
    out: list[tuple[str, float, Any]] = []
    for beta in (0.0, *betas):
        out += [("softmax", beta, None), ("sigmoid", beta, None)]
        out += [("focal", beta, gamma) for gamma in gammas]
    return out


def _paper_runs() -> list[RunConfig]:
    """Full Table 2 grid: 5 plain + 20 class-balanced runs per column (plain only at IF 1)."""
    runs = []
    for dataset in PAPER_DATASETS:
        for imbalance in PAPER_IMBALANCE:
            # At IF 1 every class weight is 1 whatever β is: the CB runs equal the plain ones.
            betas = () if imbalance == 1 else PAPER_BETAS
            for loss, beta, gamma in _methods(betas, PAPER_GAMMAS):
                runs.append(RunConfig(dataset, imbalance, loss, beta, gamma))
    return runs


def _paper_best_runs() -> list[RunConfig]:
    """Plain baselines + the paper's best class-balanced setting per column."""
    runs = []
    for dataset in PAPER_DATASETS:
        for imbalance in PAPER_IMBALANCE:
            for loss, beta, gamma in _methods((), PAPER_GAMMAS):
                runs.append(RunConfig(dataset, imbalance, loss, beta, gamma))
            best = PAPER_BEST_CB.get((dataset, imbalance))
            if best is not None:
                runs.append(RunConfig(dataset, imbalance, *best))
    return runs


def _beyond_runs() -> list[RunConfig]:
    """CIFAR-LT IF 100 and 10: every method of LATER_METHODS, ResNet-32, the paper's recipe."""
    return [
        RunConfig(dataset, imbalance, loss, **params)
        for dataset in PAPER_DATASETS
        for imbalance in BEYOND_IMBALANCE
        for loss, params in LATER_METHODS
    ]


def _cpu_config(
    imbalance: int,
    seed: int,
    loss: str,
    beta: float | None = None,
    gamma: float | None = None,
    **params: Any,
) -> RunConfig:
    """One Fashion-MNIST-LT run with the CPU study's model and schedule."""
    return RunConfig(
        "fashion_mnist",
        imbalance,
        loss,
        beta,
        gamma,
        seed=seed,
        depth=CPU_DEPTH,
        base_width=CPU_BASE_WIDTH,
        epochs=CPU_EPOCHS,
        batch_size=CPU_BATCH_SIZE,
        eval_every=CPU_EVAL_EVERY,
        **CPU_MODEL,
        **params,
    )


def _cpu_methods_runs() -> list[RunConfig]:
    """Fashion-MNIST-LT IF 100: every method of LATER_METHODS, seeds 0-2, the 'cpu' model."""
    return [
        _cpu_config(100, seed, loss, **params)
        for seed in CPU_SEEDS
        for loss, params in LATER_METHODS
    ]


def _cpu_runs(imbalances: Sequence[int], seeds: Sequence[int]) -> list[RunConfig]:
    """Fashion-MNIST-LT: softmax/sigmoid/focal(γ=1), plain and CB (β=0.9999), small ResNet."""
    return [
        _cpu_config(imbalance, seed, *method)
        for imbalance in imbalances
        for seed in seeds
        for method in _methods((CPU_BETA,), (CPU_GAMMA,))
    ]


def _cpu_quick_runs() -> list[RunConfig]:
    """Softmax and focal, plain and CB, IF 100, seed 0: the runs 'cpu' and 'cpu-sweep' share."""
    return [c for c in _cpu_runs((100,), (0,)) if c.loss_type in ("softmax", "focal")]


def _cpu_sweep_runs() -> list[RunConfig]:
    """β sweep (softmax, focal γ=1) and γ sweep (focal, plain and CB) at IF 100, seed 0."""
    methods = [
        (loss, beta, gamma)
        for loss, gamma in (("softmax", None), ("focal", CPU_GAMMA))
        for beta in (0.0, *PAPER_BETAS)
    ]
    methods += [
        ("focal", beta, gamma)
        for gamma in PAPER_GAMMAS
        if gamma != CPU_GAMMA
        for beta in (0.0, CPU_BETA)
    ]
    return [_cpu_config(100, 0, *method) for method in methods]


def _smoke_config(
    loss: str,
    beta: float | None = None,
    gamma: float | None = None,
    epochs: int = SMOKE_EPOCHS,
    **params: Any,
) -> RunConfig:
    """One run on the synthetic data with the smoke model and schedule."""
    return RunConfig(
        "synthetic",
        100,
        loss,
        beta,
        gamma,
        depth=SMOKE_DEPTH,
        base_width=SMOKE_BASE_WIDTH,
        epochs=epochs,
        batch_size=SMOKE_BATCH_SIZE,
        **params,
    )


def _smoke_methods_runs() -> list[RunConfig]:
    """Every method of LATER_METHODS on the synthetic data, seeds 0 and 1."""
    return [
        _smoke_config(loss, seed=seed, epochs=SMOKE_METHODS_EPOCHS, **params)
        for seed in SMOKE_SEEDS
        for loss, params in LATER_METHODS
    ]


def _smoke_runs() -> list[RunConfig]:
    """Synthetic data, tiny ResNet, 2 epochs: plain softmax vs CB softmax and CB focal."""
    methods = [("softmax", 0.0, None), ("softmax", 0.9999, None), ("focal", 0.9999, 1.0)]
    return [_smoke_config(*method) for method in methods]


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "paper",
            "Table 2 grid on CIFAR-10-LT and CIFAR-100-LT, IF 200/100/50/20/10/1: softmax, "
            "sigmoid, focal (γ 0.5/1/2), each plain and class-balanced with β 0.9/0.99/0.999/"
            "0.9999 (plain only at IF 1, where all weights are 1); ResNet-32, 200 epochs, seed 0. "
            "GPU only.",
            _paper_runs,
        ),
        Preset(
            "paper-best",
            "Table 2 rows only: the plain baselines plus the class-balanced (loss, β, γ) the "
            "paper reports as best per column; ResNet-32, 200 epochs, seed 0. GPU only.",
            _paper_best_runs,
        ),
        Preset(
            "beyond",
            "The paper beside the methods measured against it, on CIFAR-10-LT and CIFAR-100-LT at "
            "IF 100 and 10: plain softmax; softmax weighted by 1/n, 1/√n and 1/E_n (β 0.999, "
            "0.9999); CB sigmoid and CB focal (γ=1); CB re-sampling; DRW; LDAM; LDAM-DRW; "
            "Balanced Softmax; logit-adjusted loss (post-hoc adjustment is reported for the "
            "plain runs). ResNet-32, the paper's recipe, seed 0. GPU only.",
            _beyond_runs,
            methods=True,
        ),
        Preset(
            "cpu",
            f"Fashion-MNIST-LT, IF {'/'.join(map(str, CPU_IMBALANCE))}: softmax, sigmoid, focal "
            f"(γ={CPU_GAMMA}), each plain and class-balanced (β={CPU_BETA}), seeds "
            f"{', '.join(map(str, CPU_SEEDS))}; ResNet-{CPU_DEPTH} (width {CPU_BASE_WIDTH}), "
            f"{CPU_EPOCHS} epochs. Sized for 2 CPU cores.",
            lambda: _cpu_runs(CPU_IMBALANCE, CPU_SEEDS),
        ),
        Preset(
            "cpu-quick",
            "The main job on a CPU: softmax and focal (γ=1), plain and class-balanced, at IF 100, "
            "seed 0; 4 runs of 'cpu' (5 to 10 minutes on 2 CPU cores).",
            _cpu_quick_runs,
        ),
        Preset(
            "cpu-sweep",
            f"Fashion-MNIST-LT IF 100, seed 0: β in 0/{'/'.join(map(str, PAPER_BETAS))} for "
            f"softmax and focal (γ={CPU_GAMMA}), and focal γ in "
            f"{'/'.join(map(str, PAPER_GAMMAS))} plain and CB (β={CPU_BETA}); the 'cpu' model "
            "and schedule. Runs shared with 'cpu' are reused.",
            _cpu_sweep_runs,
        ),
        Preset(
            "cpu-methods",
            f"Fashion-MNIST-LT IF 100, seeds {', '.join(map(str, CPU_SEEDS))}: every method of "
            "'beyond' (the paper's losses, 1/n and 1/√n weights, re-sampling, DRW, LDAM, "
            "LDAM-DRW, Balanced Softmax, logit adjustment) with the 'cpu' model and schedule "
            "(its plain and CB runs have the ids of those in 'cpu', so one folder holding both "
            "trains them once).",
            _cpu_methods_runs,
            methods=True,
        ),
        Preset(
            "smoke",
            "Synthetic data, ResNet-8 (width 4), 2 epochs, 3 methods: checks the whole pipeline "
            "in seconds.",
            _smoke_runs,
        ),
        Preset(
            "smoke-methods",
            "Synthetic data, the smoke model for 3 epochs (DRW needs an lr decay), every method "
            "of 'cpu-methods', seeds 0 and 1: checks the methods study and notebook 06 in about "
            "a minute.",
            _smoke_methods_runs,
            methods=True,
        ),
    )
}


#: What ``--preset auto`` (the README's main job) runs on a machine with / without CUDA.
AUTO_PRESETS: dict[bool, str] = {True: "paper-best", False: "cpu-quick"}


def resolve_preset_name(name: str) -> str:
    """``"auto"`` becomes "paper-best" with a CUDA GPU and "cpu-quick" without; others stay."""
    if name != "auto":
        return name
    import torch

    return AUTO_PRESETS[torch.cuda.is_available()]


def get_preset(name: str) -> list[RunConfig]:
    """The runs of preset ``name`` (see ``PRESETS``; "auto" picks by hardware)."""
    name = resolve_preset_name(name)
    if name not in PRESETS:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or auto "
            f"(`cbnotes presets` describes them)"
        )
    return PRESETS[name].configs()


def _as_set(value: Any) -> set[Any] | None:
    """None -> None; a scalar -> {scalar}; an iterable (not a string) -> its set."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        return {value}
    return set(value)


def filter_configs(
    configs: Iterable[RunConfig],
    dataset: str | Iterable[str] | None = None,
    imbalance_factor: float | Iterable[float] | None = None,
    loss_type: str | Iterable[str] | None = None,
    seeds: int | Iterable[int] | None = None,
) -> list[RunConfig]:
    """Keep the configs that match every given filter (a value or a collection of values).

    A requested value that no config has is an error (it is most likely a typo).
    """
    configs = list(configs)
    wanted = {
        "dataset": _as_set(dataset),
        "imbalance_factor": _as_set(imbalance_factor),
        "loss_type": _as_set(loss_type),
        "seed": _as_set(seeds),
    }
    for field, values in wanted.items():
        if values is None:
            continue
        if field == "imbalance_factor":
            values = {float(v) for v in values}
            wanted[field] = values
        present = {getattr(c, field) for c in configs}
        unknown = values - present
        if unknown:
            name = "seeds" if field == "seed" else field
            raise ValueError(
                f"{name} {sorted(unknown, key=str)} matches no run; available: "
                f"{sorted(present, key=str)}"
            )
    return [
        c
        for c in configs
        if all(values is None or getattr(c, f) in values for f, values in wanted.items())
    ]


def with_seeds(configs: Iterable[RunConfig], seeds: Iterable[int]) -> list[RunConfig]:
    """Each distinct config once per seed in ``seeds`` (replacing the preset's seeds)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: pass at least one seed, e.g. 0 1 2")
    out: dict[str, RunConfig] = {}
    for config in configs:
        for seed in seeds:
            new = dataclasses.replace(config, seed=seed)
            out.setdefault(new.run_id, new)
    return list(out.values())


def with_overrides(configs: Iterable[RunConfig], **fields: Any) -> list[RunConfig]:
    """Copies of ``configs`` with the given fields replaced (None values are ignored)."""
    changes = {k: v for k, v in fields.items() if v is not None}
    return [dataclasses.replace(c, **changes) for c in configs]

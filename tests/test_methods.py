"""The method registry and the training-side methods: DRW, re-sampling, LDAM heads, post-hoc LA.

Each method is one registry entry; these tests state what the entry promises (head, bias init,
decay exemptions, parameters, criterion, sampling) and that training and resuming honour it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbnotes.config import RunConfig
from cbnotes.data import ImageSet
from cbnotes.effective import class_weights
from cbnotes.methods import (
    METHODS,
    DeferredReweighting,
    Method,
    build_criterion,
    get_method,
    method_choices,
    register,
    resolve_params,
    sampling_weights,
)
from cbnotes.models import resnet_cifar
from cbnotes.pipeline import DeviceLoader
from cbnotes.presets import get_preset
from cbnotes.results import checkpoint_path, load_results, result_path
from cbnotes.runner import run_experiment, run_sweep
from cbnotes.training import Recipe, Trainer, build_optimizer

COUNTS = [500, 120, 30, 8]


def _defaults(name: str) -> dict:
    """The smallest valid parameters of a method (focal needs γ)."""
    return {"gamma": 1.0} if name == "focal" else {}


def _batch(seed: int = 0, classes: int = 4, batch: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, generator=g), torch.randint(
        0, classes, (batch,), generator=g
    )


# ----------------------------------------------------------------------------- the registry


def test_the_registry_holds_the_paper_and_the_methods_it_is_measured_against():
    assert method_choices() == (
        "softmax",
        "sigmoid",
        "focal",
        "resample",
        "drw",
        "ldam",
        "ldam_drw",
        "balanced_softmax",
        "logit_adjusted",
    )
    assert len({m.order for m in METHODS.values()}) == len(METHODS)
    labels = {RunConfig("synthetic", loss_type=n, **_defaults(n)).label for n in METHODS}
    assert len(labels) == len(METHODS), "every method has its own display name"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_builds_a_finite_criterion_with_gradients(name):
    criterion = build_criterion(name, COUNTS, _defaults(name), Recipe.scaled(12))
    logits, labels = _batch()
    logits.requires_grad_(True)
    loss = criterion(logits, labels)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_heads_bias_init_and_decay_exemptions_are_declared_per_method():
    assert {n for n, m in METHODS.items() if m.head == "cosine"} == {"ldam", "ldam_drw"}
    assert {n for n, m in METHODS.items() if m.prior_bias} == {"sigmoid", "focal"}
    assert {n: m.decay_exempt for n, m in METHODS.items() if m.decay_exempt} == {
        "sigmoid": ("fc.bias",),
        "focal": ("fc.bias",),
    }
    for name in ("sigmoid", "softmax"):
        optimizer = build_optimizer(resnet_cifar(8, 4, base_width=4), Recipe(), name)
        decays = [g["weight_decay"] for g in optimizer.param_groups]
        assert decays == ([2e-4, 0.0] if name == "sigmoid" else [2e-4])


def test_parameters_take_the_methods_defaults_and_belong_to_their_method():
    assert resolve_params("drw", {})["beta"] == 0.9999
    assert resolve_params("ldam", {}) | {} == {
        "beta": None,
        "gamma": None,
        "scheme": None,
        "tau": None,
        "max_margin": 0.5,
        "scale": 30.0,
    }
    assert resolve_params("resample", {})["scheme"] == "inverse"
    assert resolve_params("softmax", {"scheme": "inverse"})["beta"] == 0.0
    with pytest.raises(ValueError, match="tau does not apply to method 'ldam'"):
        resolve_params("ldam", {"tau": 1.0})
    with pytest.raises(ValueError, match="unknown method parameter"):
        resolve_params("ldam", {"margin": 1.0})
    with pytest.raises(ValueError, match="already registered"):
        register(METHODS["softmax"])


@pytest.mark.parametrize(
    ("name", "params", "label", "balanced"),
    [
        ("softmax", {}, "softmax", False),
        ("softmax", {"beta": 0.9999}, "CB softmax (β=0.9999)", True),
        ("softmax", {"scheme": "inverse"}, "softmax, 1/n weights", True),
        ("softmax", {"scheme": "sqrt_inverse"}, "softmax, 1/√n weights", True),
        ("softmax", {"scheme": "none"}, "softmax", False),
        ("focal", {"gamma": 1.0, "beta": 0.9999}, "CB focal γ=1.0 (β=0.9999)", True),
        ("drw", {}, "softmax DRW (β=0.9999)", True),
        ("resample", {}, "CB re-sampling (1/n)", True),
        ("ldam", {}, "LDAM", True),
        ("ldam_drw", {}, "LDAM-DRW (β=0.9999)", True),
        ("balanced_softmax", {}, "Balanced Softmax", True),
        ("logit_adjusted", {"tau": 0.5}, "logit-adjusted loss (τ=0.5)", True),
    ],
)
def test_labels_and_whether_a_run_rebalances_come_from_the_registry(name, params, label, balanced):
    config = RunConfig("synthetic", loss_type=name, **params)
    assert config.label == label
    assert config.class_balanced is balanced


def test_the_weighted_methods_use_their_schemes_weights():
    for scheme in ("inverse", "sqrt_inverse", "effective"):
        beta = 0.999 if scheme == "effective" else None
        criterion = build_criterion("softmax", COUNTS, {"scheme": scheme, "beta": beta}, Recipe())
        assert torch.equal(criterion.weights, class_weights(COUNTS, scheme, 0.999))
    expected = class_weights(COUNTS, "inverse")
    assert torch.equal(sampling_weights("resample", COUNTS, {}), expected)
    assert sampling_weights("softmax", COUNTS, {"beta": 0.9999}) is None


# ----------------------------------------------------------------------------- DRW


def test_drw_is_plain_until_the_first_lr_decay_and_class_weighted_from_it():
    recipe = Recipe.scaled(12)  # decays at epochs 10 and 11
    criterion = build_criterion("drw", COUNTS, {}, recipe)
    assert isinstance(criterion, DeferredReweighting)
    assert criterion.start == recipe.decay_epochs[0] == 10
    logits, labels = _batch()
    weights = class_weights(COUNTS, "effective", 0.9999)
    plain = F.cross_entropy(logits, labels)
    weighted = (weights[labels] * F.cross_entropy(logits, labels, reduction="none")).mean()
    for epoch, expected in ((0, plain), (9, plain), (10, weighted), (11, weighted)):
        criterion.set_epoch(epoch)
        torch.testing.assert_close(criterion(logits, labels), expected)
    with pytest.raises(ValueError, match="has none; train for more epochs"):
        build_criterion("drw", COUNTS, {}, Recipe.scaled(1))


def test_ldam_drw_switches_the_ldam_loss_to_weighted_at_the_first_decay():
    recipe = Recipe.scaled(200)
    criterion = build_criterion("ldam_drw", COUNTS, {}, recipe)
    assert criterion.start == 160
    logits, labels = _batch()
    logits = logits.tanh()  # cosines
    weights = class_weights(COUNTS, "effective", 0.9999)
    margins = 0.5 * torch.tensor(COUNTS, dtype=torch.float64) ** -0.25
    margins = (margins / margins.max()).float() * 0.5
    shifted = 30.0 * (logits - F.one_hot(labels, 4) * margins)
    criterion.set_epoch(159)
    torch.testing.assert_close(criterion(logits, labels), F.cross_entropy(shifted, labels))
    criterion.set_epoch(160)
    expected = F.cross_entropy(shifted, labels, weight=weights)  # the LDAM code's weighted mean
    torch.testing.assert_close(criterion(logits, labels), expected)


class _EpochSpy(nn.Module):
    """Plain cross-entropy that records the epochs the trainer announces."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def forward(self, logits, labels):
        return F.cross_entropy(logits, labels)


def _image_set(counts, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    images = torch.randint(0, 256, (len(labels), 3, size, size), generator=g, dtype=torch.uint8)
    return ImageSet(images, labels, tuple(f"class {c}" for c in range(len(counts))))


def test_the_trainer_tells_the_criterion_each_epoch_before_training_it():
    data = _image_set([40, 20, 10, 6])
    loader = DeviceLoader(data, 16, train=True, device="cpu")
    spy = _EpochSpy()
    model = resnet_cifar(8, 4, base_width=4)
    trainer = Trainer(
        model,
        spy,
        loader,
        DeviceLoader(data, 50, train=False, device="cpu"),
        Recipe.scaled(3, batch_size=16),
        loss_type="softmax",
        device="cpu",
        num_classes=4,
        train_counts=data.counts(),
        progress=False,
    )
    trainer.fit()
    assert spy.epochs == [0, 1, 2]


# ----------------------------------------------------------------------------- re-sampling


def test_resampling_draws_each_class_with_its_target_share():
    counts = [400, 150, 60, 20, 8]
    data = _image_set(counts, size=4)
    weights = class_weights(counts, "inverse")
    loader = DeviceLoader(data, 64, train=True, device="cpu", seed=3, class_weights=weights)
    n = len(data)
    drawn = torch.zeros(len(counts))
    epochs = 30
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        labels = torch.cat([y for _, y in loader])
        assert len(labels) == n, "an epoch has as many samples as the training set"
        drawn += torch.bincount(labels, minlength=len(counts))
    share = torch.tensor(counts) * weights.double()
    target = (share / share.sum()).float()  # uniform over classes for 1/n weights
    torch.testing.assert_close(target, torch.full((5,), 0.2))
    freq = drawn / drawn.sum()
    total = epochs * n
    se = torch.sqrt(target * (1 - target) / total)
    assert ((freq - target).abs() < 4 * se).all(), (freq, target)
    # seeded: the same (seed, epoch) replays the same draw, another seed does not
    loader.set_epoch(5)
    first = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loader])
    other = DeviceLoader(data, 64, train=True, device="cpu", seed=4, class_weights=weights)
    other.set_epoch(5)
    assert torch.equal(first, again)
    assert not torch.equal(first, torch.cat([y for _, y in other]))


def test_resampling_rejects_bad_weights():
    data = _image_set([10, 5])
    with pytest.raises(ValueError, match="class_weights must hold 2 finite weights"):
        DeviceLoader(data, 4, train=True, device="cpu", class_weights=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="class_weights must hold 2"):
        DeviceLoader(data, 4, train=True, device="cpu", class_weights=torch.tensor([0.0, 0.0]))
    with pytest.raises(ValueError, match="leave them None for test"):
        DeviceLoader(data, 4, train=False, device="cpu", class_weights=torch.ones(2))


# ----------------------------------------------------------------------------- running them


def _tiny(name: str, **params) -> RunConfig:
    """A 4-epoch synthetic run (DRW switches at epoch 2) of method ``name``."""
    return RunConfig(
        "synthetic", 100, name, depth=8, base_width=4, epochs=4, batch_size=64, **params
    )


def _comparable(record: dict) -> dict:
    history = [
        {k: h[k] for k in ("epoch", "train_loss", "lr", "top1_error")} for h in record["history"]
    ]
    return {
        "history": history,
        "final": record["final_metrics"],
        "classifier": record["classifier"],
    }


@pytest.mark.parametrize(
    "name", ["drw", "resample", "ldam_drw", "balanced_softmax", "logit_adjusted"]
)
def test_every_new_method_resumes_bit_for_bit(name, tmp_path, monkeypatch, ctrl_c_at):
    config = _tiny(name)
    reference = run_experiment(config, tmp_path / "straight", device="cpu", progress=False)
    original = ctrl_c_at(3)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, device="cpu", progress=False)
    assert checkpoint_path(out, config).exists()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = run_experiment(config, out, device="cpu", progress=False)
    assert resumed["sessions"] == 2
    assert _comparable(resumed) == _comparable(reference)


def test_plain_softmax_runs_also_report_post_hoc_logit_adjustment(tmp_path):
    plain, balanced = _tiny("softmax"), _tiny("softmax", beta=0.9999)
    run_sweep([plain, balanced], tmp_path, device="cpu", progress=False)
    record = run_experiment(plain, tmp_path)  # finished: read back
    posthoc = record["final_metrics"]["posthoc_logit_adjusted"]
    assert posthoc["tau"] == 1.0
    assert 0 <= posthoc["top1_error"] <= 100
    assert "posthoc_logit_adjusted" not in run_experiment(balanced, tmp_path)["final_metrics"]
    table = load_results(tmp_path).set_index("run_id")
    assert table.loc[plain.run_id, "posthoc_top1_error"] == posthoc["top1_error"]
    assert math.isnan(table.loc[balanced.run_id, "posthoc_top1_error"])


def test_a_ldam_run_trains_a_cosine_head_without_bias(tmp_path):
    record = run_experiment(_tiny("ldam"), tmp_path, device="cpu", progress=False)
    assert record["classifier"]["bias"] == []
    assert len(record["classifier"]["weight_norms"]) == 10  # one class vector per class
    assert record["config"]["shortcut"] == "avgpool"
    assert 0 <= record["top1_error"] <= 100


# ----------------------------------------------------------------------------- a new method


class _SquaredError(nn.Module):
    """A toy loss: mean squared error between softmax probabilities and the one-hot target."""

    def __init__(self, counts) -> None:
        super().__init__()
        self.num_classes = len(counts)

    def forward(self, logits, labels):
        target = F.one_hot(labels, self.num_classes).float()
        return ((logits.float().softmax(dim=1) - target) ** 2).sum(dim=1).mean()


def test_a_new_method_is_one_registry_entry_and_its_loss(tmp_path):
    """Registering a toy method is all it takes to run the smoke preset with it."""
    toy = Method(
        "toy_squared_error",
        "toy squared error",
        99,
        "the loss: squared error of the probabilities",
        "this test",
        lambda counts, params: _SquaredError(counts),
    )
    register(toy)
    try:
        configs = [
            dataclasses.replace(c, loss_type=toy.name, beta=None, gamma=None, scheme=None)
            for c in get_preset("smoke")[:1]
        ]
        df = run_sweep(configs, tmp_path, device="cpu", progress=False)
        assert list(df["label"]) == ["toy squared error"]
        assert result_path(tmp_path, configs[0]).exists()
        assert load_results(tmp_path)["loss_type"].tolist() == [toy.name]
        assert get_method(toy.name) is toy
    finally:
        METHODS.pop(toy.name)

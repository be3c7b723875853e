"""The paper's training recipe (Sec. 5.2), its optimizer and lr schedule, and the Trainer."""

import itertools
import json
import math

import pytest
import torch
from torch import nn

from cbnotes.losses import ClassBalancedLoss
from cbnotes.models import init_head_for_loss, resnet_cifar
from cbnotes.training import (
    Recipe,
    Trainer,
    build_optimizer,
    build_scheduler,
    pick_amp_dtype,
    seed_everything,
)

# ----------------------------------------------------------------------------- recipe


def test_default_recipe_is_the_papers():
    r = Recipe()
    assert (r.epochs, r.batch_size, r.base_lr, r.momentum) == (200, 128, 0.1, 0.9)
    assert (r.weight_decay, r.warmup_epochs, r.decay_epochs) == (2e-4, 5, (160, 180))
    assert r.decay_factor == 0.01
    assert r.lr == 0.1


def test_lr_scales_linearly_with_the_batch_size():
    assert Recipe(batch_size=256).lr == pytest.approx(0.2)
    assert Recipe(batch_size=64, base_lr=0.2).lr == pytest.approx(0.1)


def test_scaled_to_200_epochs_is_the_paper_recipe():
    assert Recipe.scaled(200) == Recipe()


@pytest.mark.parametrize(
    ("epochs", "warmup", "decays"),
    [
        (100, 3, (80, 90)),
        (20, 1, (16, 18)),
        (10, 1, (8, 9)),
        (5, 1, (3, 4)),
        (2, 1, ()),
        (1, 0, ()),
    ],
)
def test_scaled_compresses_warmup_and_decays(epochs, warmup, decays):
    r = Recipe.scaled(epochs)
    assert (r.epochs, r.warmup_epochs, r.decay_epochs) == (epochs, warmup, decays)


@pytest.mark.parametrize("epochs", range(1, 61))
def test_scaled_schedule_is_always_valid(epochs):
    r = Recipe.scaled(epochs)
    if epochs >= 2:
        assert 1 <= r.warmup_epochs < epochs
    assert all(r.warmup_epochs < d < epochs for d in r.decay_epochs)
    assert list(r.decay_epochs) == sorted(set(r.decay_epochs))
    if epochs >= 10:
        assert len(r.decay_epochs) == 2


def test_scaled_keeps_overrides():
    r = Recipe.scaled(20, batch_size=256, base_lr=0.05)
    assert (r.epochs, r.batch_size, r.base_lr, r.decay_epochs) == (20, 256, 0.05, (16, 18))
    with pytest.raises(ValueError, match="unknown Recipe fields"):
        Recipe.scaled(20, lr=0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"base_lr": 0.0}, "base_lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"decay_factor": 0.0}, "decay_factor"),
        ({"decay_epochs": (180, 160)}, "strictly increasing"),
        ({"decay_epochs": (160, 200)}, "decay_epochs"),
        ({"decay_epochs": (3, 180)}, "decay_epochs"),
        ({"decay_epochs": (160.5,)}, "integers"),
        ({"warmup_epochs": 201}, "warmup_epochs"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov"),
    ],
)
def test_recipe_rejects_bad_values_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Recipe(**kwargs)


def test_recipe_json_round_trip():
    r = Recipe.scaled(30, batch_size=64, nesterov=True)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    with pytest.raises(ValueError, match="unknown"):
        Recipe.from_dict({"epochs": 10, "lr": 0.1})


# ----------------------------------------------------------------------------- lr schedule


def _lrs(recipe, steps_per_epoch):
    """The lr used at every iteration of the whole run."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=recipe.lr, momentum=recipe.momentum)
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch)
    lrs = []
    for _ in range(recipe.epochs * steps_per_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_follows_the_paper_schedule():
    """Warm-up to 0.1 over 5 epochs, 0.1 until epoch 159, 0.001 from 160, 1e-5 from 180."""
    spe = 3
    lrs = _lrs(Recipe(), spe)

    def at(epoch, step=0):
        return lrs[epoch * spe + step]

    assert at(0) == pytest.approx(0.1 / (5 * spe))  # starts small
    assert at(4, spe - 1) == pytest.approx(0.1)  # end of warm-up
    rises = [b - a for a, b in itertools.pairwise(lrs[: 5 * spe])]
    assert rises == pytest.approx([0.1 / (5 * spe)] * (5 * spe - 1))  # rises linearly
    assert at(5) == pytest.approx(0.1)
    assert at(159, spe - 1) == pytest.approx(0.1)
    assert at(160) == pytest.approx(1e-3)
    assert at(179, spe - 1) == pytest.approx(1e-3)
    assert at(180) == pytest.approx(1e-5)
    assert at(199, spe - 1) == pytest.approx(1e-5)


def test_lr_schedule_of_a_compressed_run():
    recipe = Recipe.scaled(10, batch_size=256)
    lrs = _lrs(recipe, 2)
    assert lrs[1] == pytest.approx(0.2)  # one warm-up epoch of two steps
    assert lrs[2 * 8 - 1] == pytest.approx(0.2)
    assert lrs[2 * 8] == pytest.approx(0.2 * 0.01)
    assert lrs[2 * 9] == pytest.approx(0.2 * 1e-4)


def test_scheduler_rejects_empty_epochs():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        build_scheduler(optimizer, Recipe(), 0)


# ----------------------------------------------------------------------------- optimizer


def _tiny_model(num_classes=3, seed=0):
    seed_everything(seed)
    return resnet_cifar(8, num_classes=num_classes, base_width=4)


def test_softmax_decays_every_trainable_parameter():
    model = _tiny_model()
    optimizer = build_optimizer(model, Recipe(), "softmax")
    decayed = [p for g in optimizer.param_groups if g["weight_decay"] == 2e-4 for p in g["params"]]
    assert len(decayed) == len(list(model.parameters()))
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.1, 0.9, False)


@pytest.mark.parametrize("loss_type", ["sigmoid", "focal"])
def test_sigmoid_and_focal_exclude_the_final_bias_from_decay(loss_type):
    model = _tiny_model()
    optimizer = build_optimizer(model, Recipe(), loss_type)
    by_decay = {g["weight_decay"]: g["params"] for g in optimizer.param_groups}
    assert set(by_decay) == {2e-4, 0.0}
    assert len(by_decay[0.0]) == 1
    assert by_decay[0.0][0] is model.fc.bias
    assert len(by_decay[2e-4]) == len(list(model.parameters())) - 1


@pytest.mark.parametrize(("loss_type", "bias_moves"), [("softmax", True), ("sigmoid", False)])
def test_weight_decay_pulls_the_prior_bias_only_for_softmax(loss_type, bias_moves):
    """A zero-gradient step: only weight decay moves parameters, w ← w - lr·λ·w."""
    model = init_head_for_loss(_tiny_model(), "sigmoid")
    optimizer = build_optimizer(model, Recipe(), loss_type)
    bias, weight = model.fc.bias.detach().clone(), model.fc.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.allclose(model.fc.weight, weight * (1 - 0.1 * 2e-4))
    assert torch.equal(model.fc.bias, bias) is not bias_moves


def test_optimizer_rejects_unknown_loss_types():
    with pytest.raises(ValueError, match="loss_type"):
        build_optimizer(_tiny_model(), Recipe(), "hinge")


# ----------------------------------------------------------------------------- amp


def test_cpu_trains_in_fp32():
    assert pick_amp_dtype("cpu") is None


@pytest.mark.parametrize(
    ("capability", "bf16", "expected"),
    [((9, 0), True, torch.bfloat16), ((8, 0), True, torch.bfloat16), ((7, 5), True, torch.float16)],
)
def test_cuda_amp_dtype_follows_the_gpu(monkeypatch, capability, bf16, expected):
    """A100/H100 → bf16; T4 (sm 7.5, bf16 only emulated) → fp16 with a GradScaler."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: bf16)
    assert pick_amp_dtype("cuda:0") == expected


# ----------------------------------------------------------------------------- trainer


class TinyLoader:
    """Stand-in for DeviceLoader: in-memory batches, shuffled per epoch from (seed, epoch)."""

    def __init__(self, x, y, batch_size, *, train, seed=0):
        self.x, self.y, self.batch_size, self.train, self.seed = x, y, batch_size, train, seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        order = torch.arange(len(self.y))
        if self.train:
            g = torch.Generator().manual_seed(1000 * self.seed + self.epoch)
            order = torch.randperm(len(self.y), generator=g)
        for start in range(0, len(self.y), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]


COUNTS = [24, 16, 8]


def _dataset(counts, seed):
    """Class k is a noisy constant image of brightness k - 1: easy to learn."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    x = (y.float() - 1).view(-1, 1, 1, 1) + 0.3 * torch.randn(len(y), 3, 8, 8, generator=g)
    return x, y


def _trainer(epochs=2, loss_type="softmax", progress=False, amp="off", batch_size=16, **kwargs):
    model = init_head_for_loss(_tiny_model(), loss_type)
    x, y = _dataset(COUNTS, seed=1)
    xt, yt = _dataset([10, 10, 10], seed=2)
    recipe = Recipe.scaled(epochs, batch_size=batch_size)
    return Trainer(
        model,
        ClassBalancedLoss(COUNTS, loss_type=loss_type, beta=0.99),
        TinyLoader(x, y, batch_size, train=True),
        TinyLoader(xt, yt, 10, train=False),
        recipe,
        loss_type=loss_type,
        device="cpu",
        num_classes=3,
        train_counts=COUNTS,
        amp=amp,
        progress=progress,
        **kwargs,
    )


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_epoch_records_loss_lr_speed_and_history():
    trainer = _trainer(epochs=2)
    record = trainer.train_epoch(0)
    assert set(record) == {"epoch", "train_loss", "lr", "images_per_s", "seconds", "top1_error"}
    assert record["epoch"] == 0
    assert math.isfinite(record["train_loss"])
    assert record["train_loss"] > 0
    assert record["lr"] == pytest.approx(0.1 * 16 / 128)  # the last warm-up step reaches the peak
    assert record["top1_error"] is None
    summary = trainer.evaluate()
    assert trainer.history == [record]
    assert record["top1_error"] == summary["top1_error"]
    assert 0.0 <= summary["top1_error"] <= 100.0
    assert summary["num_test"] == 30
    with pytest.raises(ValueError, match="next epoch, 1"):
        trainer.train_epoch(0)


def test_evaluate_restores_training_mode():
    trainer = _trainer()
    trainer.model.train()
    trainer.evaluate()
    assert trainer.model.training


def test_training_learns_an_easy_task():
    trainer = _trainer(epochs=6)
    history = trainer.fit()
    assert [h["epoch"] for h in history] == list(range(6))
    assert all(h["top1_error"] is not None for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["top1_error"] < 100 * 2 / 3  # better than chance


def test_same_seed_gives_bitwise_identical_training():
    a, b = _trainer(epochs=2), _trainer(epochs=2)
    a.fit()
    b.fit()
    _assert_bitwise_equal(_weights(a), _weights(b))
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


@pytest.mark.parametrize("loss_type", ["softmax", "focal"])
def test_resume_from_a_checkpoint_file_equals_training_straight_through(tmp_path, loss_type):
    straight = _trainer(epochs=2, loss_type=loss_type)
    straight.fit()

    first = _trainer(epochs=2, loss_type=loss_type)
    first.fit(1)
    path = tmp_path / "ckpt.pt"
    torch.save(first.state_dict(), path)
    state = torch.load(path, weights_only=True)

    resumed = _trainer(epochs=2, loss_type=loss_type)
    resumed.train_epoch(0)  # diverge first: loading must overwrite everything
    resumed.load_state_dict(state)
    assert resumed.next_epoch == 1
    resumed.fit()
    _assert_bitwise_equal(_weights(resumed), _weights(straight))
    timing = {"seconds", "images_per_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in timing} for h in straight.history
    ]
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_checkpoint_of_another_recipe_is_rejected():
    state = _trainer(epochs=2).state_dict()
    with pytest.raises(ValueError, match="recipe"):
        _trainer(epochs=3).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        _trainer(epochs=2).load_state_dict({"model": {}})


def test_bf16_autocast_keeps_fp32_master_weights():
    trainer = _trainer(epochs=1, amp="bf16")
    trainer.fit()
    assert trainer.amp_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert math.isfinite(trainer.history[0]["train_loss"])


def test_progress_bars_do_not_change_the_result():
    quiet, shown = _trainer(epochs=1), _trainer(epochs=1, progress=True)
    quiet.fit()
    shown.fit()
    _assert_bitwise_equal(_weights(quiet), _weights(shown))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"amp": "fp8"}, "amp"),
        ({"amp": "fp16"}, "CUDA"),
        ({"loss_type": "hinge"}, "loss_type"),
    ],
)
def test_trainer_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(**kwargs)


def test_trainer_rejects_a_loader_with_another_batch_size():
    model = _tiny_model()
    x, y = _dataset(COUNTS, seed=1)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(
            model,
            nn.CrossEntropyLoss(),
            TinyLoader(x, y, 8, train=True),
            TinyLoader(x, y, 8, train=False),
            Recipe.scaled(2, batch_size=16),
            loss_type="softmax",
            device="cpu",
            num_classes=3,
            train_counts=COUNTS,
            progress=False,
        )


def test_seed_everything_fixes_the_initialization():
    a, b = _tiny_model(seed=3), _tiny_model(seed=3)
    _assert_bitwise_equal(a.state_dict(), b.state_dict())
    c = _tiny_model(seed=4)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)

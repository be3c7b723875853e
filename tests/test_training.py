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
    epoch_seconds,
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


def test_epoch_seconds_times_one_epoch_of_the_trainer_by_the_clock_asked_for():
    class Counting:  # a trainer's interface as epoch_seconds uses it
        device = torch.device("cpu")

        def __init__(self):
            self.epochs = []

        def train_epoch(self, epoch):
            self.epochs.append(epoch)

    trainer = Counting()
    for clock in ("wall", "cpu"):
        assert epoch_seconds(trainer, 3, clock=clock) >= 0.0
    assert trainer.epochs == [3, 3]
    with pytest.raises(ValueError, match="clock must be 'wall' or 'cpu'; got 'gpu'"):
        epoch_seconds(trainer, 0, clock="gpu")
    assert trainer.epochs == [3, 3]  # a bad clock trains nothing


# ----------------------------------------------------------------------------- the step (issue 9)


def _momentum(trainer):
    return {
        name: trainer.optimizer.state[p]["momentum_buffer"].clone()
        for name, p in trainer.model.named_parameters()
    }


@pytest.mark.parametrize("loss_type", ["softmax", "focal"])  # focal: two weight-decay groups
def test_the_default_cpu_step_is_bitwise_the_for_loop_with_a_float_lr(loss_type):
    """foreach SGD with a float64 lr tensor updates exactly as torch's per-parameter loop with
    a Python float lr (the step of every committed CPU run), schedule included."""
    loop, default = _trainer(epochs=3, loss_type=loss_type), _trainer(epochs=3, loss_type=loss_type)
    loop.optimizer = build_optimizer(loop.model, loop.recipe, loss_type, step="for-loop")
    loop.scheduler = build_scheduler(loop.optimizer, loop.recipe, loop.steps_per_epoch)
    assert loop.optimizer.param_groups[0]["foreach"] is False
    assert default.optimizer.param_groups[0]["foreach"] is True
    loop.fit()
    default.fit()
    _assert_bitwise_equal(_weights(default), _weights(loop))
    _assert_bitwise_equal(_momentum(default), _momentum(loop))
    pairs = zip(loop.history, default.history, strict=True)
    assert default.history == [{**h, **_timing(d)} for h, d in pairs]


def _timing(record):
    return {k: record[k] for k in ("seconds", "images_per_s")}


def test_the_learning_rate_is_one_tensor_per_group_filled_in_place_with_the_same_numbers():
    trainer = _trainer(epochs=3)
    tensors = [g["lr"] for g in trainer.optimizer.param_groups]
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in tensors)
    expected = _lrs(trainer.recipe, trainer.steps_per_epoch)  # a float lr, as before
    seen = []
    for _ in range(len(expected)):
        seen.append(trainer.optimizer.param_groups[0]["lr"].item())
        assert trainer._lr() == seen[-1]
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert seen == expected
    assert all(g["lr"] is t for g, t in zip(trainer.optimizer.param_groups, tensors, strict=True))


def test_resume_keeps_the_live_lr_tensor_and_the_step_and_reads_older_checkpoints(tmp_path):
    """A checkpoint of an older version (float lr, default step) resumes exactly, with this
    trainer's own lr tensor and foreach step."""
    straight = _trainer(epochs=2)
    straight.fit()
    first = _trainer(epochs=2)
    first.fit(1)
    state = first.state_dict()
    old = dict(state, optimizer=json.loads(json.dumps(_plain_groups(state["optimizer"]))))
    old["optimizer"]["state"] = state["optimizer"]["state"]
    resumed = _trainer(epochs=2)
    tensors = [g["lr"] for g in resumed.optimizer.param_groups]
    resumed.load_state_dict(old)
    assert all(g["lr"] is t for g, t in zip(resumed.optimizer.param_groups, tensors, strict=True))
    assert all(g["foreach"] is True for g in resumed.optimizer.param_groups)
    assert all(isinstance(lr, float) for lr in resumed.scheduler.base_lrs)
    resumed.fit()
    _assert_bitwise_equal(_weights(resumed), _weights(straight))


def test_resume_gives_momentum_buffers_the_layout_of_the_parameters():
    """A checkpoint of a run in the default layout resumed channels-last (as a CPU or older
    CUDA checkpoint on CUDA): the buffers follow the parameters, the numbers are kept."""
    first = _trainer(epochs=2, channels_last=False)
    first.fit(1)
    resumed = _trainer(epochs=2, channels_last=True)
    resumed.load_state_dict(first.state_dict())
    for name, p in resumed.model.named_parameters():
        buf = resumed.optimizer.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride(), name
    _assert_bitwise_equal(_momentum(resumed), _momentum(first))


def _plain_groups(optimizer_state):
    """An optimizer state dict as torch wrote it before issue 9: float lr, foreach None."""
    groups = []
    for group in optimizer_state["param_groups"]:
        plain = {k: v for k, v in group.items() if k != "lr"}
        plain.update(lr=float(group["lr"]), foreach=None, fused=None)
        groups.append(plain)
    return {"param_groups": groups}


def test_a_training_step_reads_nothing_from_the_device():
    """Per step, the Trainer itself never reads a tensor on the host (item, float, bool, int,
    tolist, cpu, format): an epoch of 6 steps reads as much as one of 2 (once per epoch)."""
    from torch.overrides import TorchFunctionMode

    reads = {"item", "__float__", "__bool__", "__int__", "tolist", "cpu", "__format__", "numpy"}

    class Recorder(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.count += getattr(func, "__name__", "") in reads
            return func(*args, **(kwargs or {}))

    counts = []
    for batch_size in (24, 8):  # 48 images: 2 and 6 steps
        trainer = _trainer(epochs=1, batch_size=batch_size)
        trainer.loss_fn = nn.CrossEntropyLoss()  # the CB loss checks labels on the CPU only
        with Recorder() as recorder:
            trainer.train_epoch(0)
        counts.append(recorder.count)
    assert counts[0] == counts[1] <= 2, counts


def test_fused_sgd_with_primed_momentum_survives_a_skipped_first_step():
    """A gradient scaler skips an overflowing step inside the fused kernel; fused SGD would
    then keep uninitialized momentum buffers. Primed with zeros, the skipped step changes
    nothing and the next one is stock SGD's first step (CPU fused kernel and scaler)."""
    from cbnotes.training import _prime_momentum

    model = _tiny_model()
    reference = _tiny_model()
    fused = build_optimizer(model, Recipe(), "softmax", step="fused")
    stock = build_optimizer(reference, Recipe(), "softmax", step="for-loop")
    _prime_momentum(fused)
    assert all(
        torch.equal(fused.state[p]["momentum_buffer"], torch.zeros_like(p))
        for p in model.parameters()
    )
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(torch.ones(()))  # the scaler starts at its first scale()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    scaler.step(fused)
    scaler.update()
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert all(not fused.state[p]["momentum_buffer"].any() for p in model.parameters())
    grads = [torch.randn_like(p) for p in model.parameters()]
    for p, q, g in zip(model.parameters(), reference.parameters(), grads, strict=True):
        p.grad, q.grad = g * scaler.get_scale(), g.clone()
    scaler.scale(torch.ones(()))
    scaler.step(fused)
    stock.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("step", ["for-loop", "foreach", "fused"])
def test_every_sgd_step_keeps_the_weight_decay_groups(step):
    model = _tiny_model()
    optimizer = build_optimizer(model, Recipe(), "focal", step=step)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [2e-4, 0.0]
    assert optimizer.param_groups[1]["params"] == [model.fc.bias]
    with pytest.raises(ValueError, match="step must be one of"):
        build_optimizer(model, Recipe(), "focal", step="adam")


def test_channels_last_is_on_the_cpu_by_default_and_trains_like_the_default_layout():
    last, flat = _trainer(epochs=1), _trainer(epochs=1, channels_last=False)
    assert last.channels_last
    assert last.memory_format == torch.channels_last
    assert last.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not flat.channels_last
    assert flat.memory_format == torch.preserve_format
    assert flat.model.conv1.weight.is_contiguous()
    assert not flat.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    last.fit()
    flat.fit()
    for k, v in _weights(flat).items():
        torch.testing.assert_close(_weights(last)[k], v, rtol=1e-4, atol=1e-5)


def test_compile_takes_a_mode_and_wraps_the_model(monkeypatch):
    calls = []

    def fake_compile(model, mode=None):
        calls.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    assert _trainer(compile=True).compile_mode == "default"
    assert _trainer(compile="reduce-overhead").compile_mode == "reduce-overhead"
    assert _trainer(compile=False).compile_mode is None
    assert calls == [None, "reduce-overhead"]
    with pytest.raises(ValueError, match="compile must be"):
        _trainer(compile="fastest")


def test_fit_evaluates_every_k_epochs_and_after_the_last():
    trainer = _trainer(epochs=5)
    history = trainer.fit(eval_every=2)
    assert [h["top1_error"] is not None for h in history] == [False, True, False, True, True]
    assert trainer.last_evaluation["top1_error"] == history[-1]["top1_error"]


def _cuda_trainer(amp):
    """A Trainer as the runner builds one on CUDA: data on the device (DeviceLoader), the CB
    loss; 256 images in 4 batches of 64 (one batch shape: cuDNN autotunes it once)."""
    from cbnotes.data import ImageSet
    from cbnotes.pipeline import DeviceLoader

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.arange(256) % 3
    data = ImageSet(x, y, ("a", "b", "c"))
    counts = data.counts()
    model = init_head_for_loss(_tiny_model(), "softmax")
    return Trainer(
        model,
        ClassBalancedLoss(counts, loss_type="softmax", beta=0.99),
        DeviceLoader(data, 64, train=True, device="cuda"),
        DeviceLoader(data, 128, train=False, device="cuda"),
        Recipe.scaled(1, batch_size=64),
        loss_type="softmax",
        device="cuda",
        num_classes=3,
        train_counts=counts,
        amp=amp,
        progress=False,
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_step_is_fused_channels_last_and_never_syncs(amp):
    """On CUDA: fused SGD with a float32 lr tensor on the device, channels-last model and
    batches, cuDNN autotuning; after the first step no step synchronizes with the host."""
    trainer = _cuda_trainer(amp)
    group = trainer.optimizer.param_groups[0]
    assert group["fused"] is True
    assert group["lr"].device.type == "cuda"
    assert group["lr"].dtype == torch.float32
    assert trainer.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.backends.cudnn.benchmark
    trainer.train_loader = _SyncGuard(trainer.train_loader)
    record = trainer.train_epoch(0)
    assert math.isfinite(record["train_loss"])
    assert record["lr"] == pytest.approx(trainer.recipe.lr)


class _SyncGuard:
    """A loader whose batches after the first are trained with CUDA sync debugging on "error":
    a step that waits for the device raises."""

    def __init__(self, loader):
        self.loader = loader
        self.batch_size = loader.batch_size

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        yield next(batches)
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from batches
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_overflow_on_the_first_step_leaves_fused_sgd_clean():
    trainer = _cuda_trainer("fp16")
    assert trainer.scaler.is_enabled()
    buffers = [trainer.optimizer.state[p]["momentum_buffer"] for p in trainer.model.parameters()]
    assert all(not b.any() for b in buffers)  # primed with zeros
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=float("inf"))  # it overflows
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    x, y = next(iter(trainer.train_loader))
    with trainer._autocast():
        loss = trainer.loss_fn(trainer._forward(trainer._input(x)).float(), y)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, start[name]), name
        assert not trainer.optimizer.state[p]["momentum_buffer"].any(), name


def test_a_records_precision_names_what_autocast_computes_in():
    from cbnotes.training import precision_name

    assert precision_name(None) == "float32"
    assert precision_name(torch.bfloat16) == "bfloat16"
    assert precision_name(torch.float16) == "float16"

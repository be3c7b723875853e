"""Packs: N runs trained as one fused model equal the same runs trained one by one."""

from __future__ import annotations

import math

import pytest
import torch

from cbnotes import fused, training
from cbnotes.data import ImageSet, load_dataset
from cbnotes.fused import FusedResNet, FusedSGD, PackMember, PackTrainer, model_shape
from cbnotes.methods import build_criterion, get_method, sampling_weights
from cbnotes.models import classifier_stats, init_head_for_loss, resnet_cifar
from cbnotes.pipeline import DeviceLoader
from cbnotes.training import Recipe, Trainer, seed_everything

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
EPOCHS, BATCH = 3, 32  # Recipe.scaled(3): one warm-up epoch, a decay (DRW's switch) at epoch 2
TIMING = ("seconds", "images_per_s")
#: (method, parameters, seed, recipe overrides, post-hoc τ): five different linear-head runs.
LINEAR_RUNS = [
    ("softmax", {"beta": 0.0}, 0, {}, 1.0),
    ("focal", {"gamma": 1.0, "beta": 0.9999}, 1, {}, None),  # prior bias, bias not decayed
    ("drw", {}, 2, {}, None),  # plain softmax until epoch 2, then class weights
    ("logit_adjusted", {}, 3, {"base_lr": 0.05, "weight_decay": 5e-4}, None),
    ("resample", {}, 4, {}, None),  # its own re-sampled data order
]
COSINE_RUNS = [("ldam", {}, 0, {}, None), ("ldam_drw", {}, 1, {}, None)]


@pytest.fixture(scope="module")
def data():
    """A small long-tailed synthetic set: 128 training and 50 test images of 10 classes, the
    central 8×8 pixels of the 16×16×3 synthetic images (4 batches of 32 per epoch)."""
    train, test = load_dataset("synthetic", imbalance_factor=10)
    crop = (slice(None), slice(None), slice(4, 12), slice(4, 12))
    return (
        ImageSet(train.images[:128][crop].contiguous(), train.labels[:128], train.classes),
        ImageSet(test.images[:50][crop].contiguous(), test.labels[:50], test.classes),
    )


def _run(
    data,
    spec,
    *,
    dtype,
    shortcut="avgpool",
    init="glorot",
    depth=8,
    width=4,
    epochs=EPOCHS,
    device="cpu",
):
    """What the runner builds for one run: model (seeded), criterion, loaders, counts."""
    loss_type, params, seed, overrides, tau = spec
    train, test = data
    counts = train.counts()
    recipe = Recipe.scaled(epochs, batch_size=BATCH, **overrides)
    seed_everything(seed)
    head = get_method(loss_type).head
    model = resnet_cifar(depth, 10, 3, width, shortcut=shortcut, init=init, head=head)
    init_head_for_loss(model, loss_type)
    loader = DeviceLoader(
        train,
        BATCH,
        train=True,
        device=device,
        seed=seed,
        class_weights=sampling_weights(loss_type, counts, params),
        dtype=dtype,
    )
    test_loader = DeviceLoader(test, 50, train=False, device=device, dtype=dtype)
    member = PackMember(
        model.to(dtype),
        build_criterion(loss_type, counts, params, recipe),
        loader,
        recipe,
        loss_type,
        counts,
        posthoc_tau=tau,
        name=f"{loss_type}-s{seed}",
    )
    return member, test_loader


def _trainer(member, test_loader, amp="off", channels_last=False):
    """The ordinary Trainer of one run (on the device of its loader), by default in the
    default memory format, as a pack trains unless told otherwise."""
    return Trainer(
        member.model,
        member.loss_fn,
        member.train_loader,
        test_loader,
        member.recipe,
        loss_type=member.loss_type,
        device=member.train_loader.device,
        num_classes=10,
        train_counts=member.train_counts,
        amp=amp,
        progress=False,
        posthoc_tau=member.posthoc_tau,
        channels_last=channels_last,
    )


def _pack(data, specs, amp="off", **kwargs):
    members, test_loader = zip(*(_run(data, s, **kwargs) for s in specs), strict=True)
    device = kwargs.get("device", "cpu")
    return PackTrainer(
        members, test_loader[0], device=device, num_classes=10, amp=amp, progress=False
    )


def _max_diff(a, b, path="", relative=True):
    """Largest difference of two nested states (tensors: relative to max |b|, 1e-300 floor);
    ints, strings and structure must match exactly. Returns (difference, where)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.shape == b.shape, path
        assert a.dtype == b.dtype, path
        if not a.is_floating_point():
            assert torch.equal(a, b), path
            return 0.0, path
        scale = float(b.abs().max()) if relative and b.numel() else 1.0
        diff = float((a - b).abs().max()) / max(scale, 1e-300) if a.numel() else 0.0
        return diff, path
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        found = [_max_diff(a[k], b[k], f"{path}.{k}", relative) for k in a if k not in TIMING]
        return max(found, default=(0.0, path))
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        found = [
            _max_diff(x, y, f"{path}[{i}]", relative)
            for i, (x, y) in enumerate(zip(a, b, strict=True))
        ]
        return max(found, default=(0.0, path))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) / max(abs(b), 1e-300), path
    assert a == b, (path, a, b)
    return 0.0, path


@pytest.fixture(scope="module")
def float64_runs(data):
    """The five linear-head runs in float64: trained separately and as one pack."""
    separate = []
    for spec in LINEAR_RUNS:
        trainer = _trainer(*_run(data, spec, dtype=torch.float64))
        trainer.fit()
        separate.append(trainer)
    pack = _pack(data, LINEAR_RUNS, dtype=torch.float64)
    pack.fit()
    return separate, pack


# ----------------------------------------------------------------------------- exactness


def test_float64_pack_equals_the_runs_trained_one_by_one(float64_runs):
    """Parameters, BatchNorm statistics, momentum buffers, lr schedule, per-epoch losses and
    test metrics of every member equal its separate run to 1e-12 (relative to the largest
    magnitude of each tensor); confusion matrices and every integer exactly. Measured: 1.2e-14
    at worst (a momentum buffer), 2e-15 for the parameters, identical losses."""
    separate, pack = float64_runs
    for i, trainer in enumerate(separate):
        diff, where = _max_diff(pack.member_trainer_state(i), trainer.state_dict())
        assert diff <= 1e-12, (i, where, diff)
        assert pack.members[i].history[-1]["top1_error"] == trainer.history[-1]["top1_error"]
        assert pack.members[i].last_evaluation == trainer.last_evaluation  # confusion included


def test_a_float64_pack_rounds_its_lr_as_its_runs_sgd_does(data, monkeypatch):
    """On CUDA a run's fused SGD reads its lr as float32 (``training.lr_dtype``), so a float64
    pack must round its learning rates the same way to stay exact there. Emulated on the CPU by
    making learning-rate tensors float32 here too: pack and runs still agree to 1e-12, and the
    runs' schedule starts from the recipe's lr, not from its float32 value (which alone moves
    the recorded lr by 1.5e-8). Either half undone fails this test (measured: 3e-8 and more)."""

    def float32(device):
        return torch.float32

    monkeypatch.setattr(training, "lr_dtype", float32)
    monkeypatch.setattr(fused, "lr_dtype", float32)
    specs = LINEAR_RUNS[:2]
    separate = []
    for spec in specs:
        trainer = _trainer(*_run(data, spec, dtype=torch.float64))
        assert trainer.optimizer.param_groups[0]["lr"].dtype == torch.float32
        trainer.fit()
        separate.append(trainer)
    pack = _pack(data, specs, dtype=torch.float64)
    pack.fit()
    for i, trainer in enumerate(separate):
        diff, where = _max_diff(pack.member_trainer_state(i), trainer.state_dict())
        assert diff <= 1e-12, (i, where, diff)
        recipe = trainer.recipe
        assert trainer.scheduler.base_lrs == [recipe.lr] * len(trainer.optimizer.param_groups)


def test_every_member_really_differs(float64_runs):
    """The members are different runs (methods, seeds, lr), not copies of one."""
    _, pack = float64_runs
    losses = {tuple(h["train_loss"] for h in m.history) for m in pack.members}
    assert len(losses) == len(LINEAR_RUNS)
    biases = [pack.member_state_dict(i)["fc.bias"] for i in range(len(LINEAR_RUNS))]
    assert not torch.allclose(biases[0], biases[1])


def test_records_and_posthoc_metrics_look_like_the_trainers(float64_runs):
    separate, pack = float64_runs
    for member, trainer in zip(pack.members, separate, strict=True):
        assert [set(r) for r in member.history] == [set(r) for r in trainer.history]
        assert [r["lr"] for r in member.history] == [r["lr"] for r in trainer.history]
    assert "posthoc_logit_adjusted" in pack.members[0].last_evaluation
    assert "posthoc_logit_adjusted" not in pack.members[1].last_evaluation


def test_member_models_are_live_views_and_export_like_resnet_cifar(float64_runs):
    separate, pack = float64_runs
    for i, trainer in enumerate(separate):
        state = pack.member_state_dict(i)
        assert state.keys() == trainer.model.state_dict().keys()
        live = pack.members[i].model.state_dict()
        assert all(torch.equal(live[k], state[k]) for k in state)
        stats = classifier_stats(pack.member_model(i))
        assert stats == classifier_stats(pack.members[i].model)
        expected = classifier_stats(trainer.model)
        assert stats["weight_norms"] == pytest.approx(expected["weight_norms"], rel=1e-6)


def test_member_state_resumes_as_an_ordinary_trainer(data):
    """A member's state after epoch 1 of a pack, loaded into its own Trainer, trains on to the
    separate run's end (float64, 1e-12)."""
    pack = _pack(data, LINEAR_RUNS[:2], dtype=torch.float64)
    pack.fit(2)
    spec = LINEAR_RUNS[1]
    alone = _trainer(*_run(data, spec, dtype=torch.float64))
    alone.fit()
    resumed = _trainer(*_run(data, spec, dtype=torch.float64))
    resumed.load_state_dict(pack.member_trainer_state(1))
    resumed.fit()
    diff, where = _max_diff(resumed.state_dict(), alone.state_dict())
    assert diff <= 1e-12, (where, diff)


def test_cosine_head_pack_equals_the_runs_one_by_one(data):
    """LDAM and LDAM-DRW (cosine heads, no bias), subsample shortcut, Kaiming init."""
    kwargs = {"dtype": torch.float64, "shortcut": "subsample", "init": "kaiming"}
    separate = []
    for spec in COSINE_RUNS:
        trainer = _trainer(*_run(data, spec, **kwargs))
        trainer.fit()
        separate.append(trainer)
    pack = _pack(data, COSINE_RUNS, **kwargs)
    pack.fit()
    for i, trainer in enumerate(separate):
        diff, where = _max_diff(pack.member_trainer_state(i), trainer.state_dict())
        assert diff <= 1e-12, (i, where, diff)


def _params_diff(a, b):
    """Relative L2 distance of the model tensors (parameters and BatchNorm statistics, all
    concatenated) of two Trainer-format states: ||θ_a - θ_b|| / ||θ_b||."""
    flat = [
        torch.cat(
            [
                s["model"][k].double().flatten()
                for k in sorted(s["model"])
                if s["model"][k].is_floating_point()
            ]
        )
        for s in (a, b)
    ]
    return float((flat[0] - flat[1]).norm() / flat[1].norm())


def test_float32_pack_drifts_no_more_than_a_change_of_memory_format(data):
    """float32: a pack differs from its separate runs by no more than the same run trained in
    channels_last memory format differs from itself in the default format (both: rounding in
    another order, amplified by training). Measured here after 3 epochs, as the relative L2
    distance of all model tensors: pack 6e-8 to 7e-8, memory format 1.5e-7 (softmax) and
    3e-3 (CB focal)."""
    specs = LINEAR_RUNS[:2]
    separate = []
    for spec in specs:
        trainer = _trainer(*_run(data, spec, dtype=torch.float32))
        trainer.fit()
        separate.append(trainer)
    pack = _pack(data, specs, dtype=torch.float32)
    pack.fit()
    pack_drift = max(
        _params_diff(pack.member_trainer_state(i), t.state_dict()) for i, t in enumerate(separate)
    )
    layout_drift = 0.0
    for spec, trainer in zip(specs, separate, strict=True):
        member, test_loader = _run(data, spec, dtype=torch.float32)
        member.model = member.model.to(memory_format=torch.channels_last)
        member.train_loader.channels_last = True
        other = _trainer(member, test_loader, channels_last=True)
        other.fit()
        layout_drift = max(layout_drift, _params_diff(other.state_dict(), trainer.state_dict()))
    assert pack_drift < 1e-5
    assert pack_drift <= max(layout_drift, 1e-6), (pack_drift, layout_drift)


def test_loss_scaling_is_exact_and_skips_only_the_overflowing_member(data):
    """What amp="fp16" turns on (CUDA only), forced on CPU in float32: a power-of-two loss
    scale changes nothing, bit for bit; a member whose scaled gradients overflow skips its
    updates alone (GradScaler's rule per member) while the others train on."""
    specs = LINEAR_RUNS[:2]
    plain = _pack(data, specs, dtype=torch.float32)
    plain.fit(1)
    scaled = _pack(data, specs, dtype=torch.float32)
    scaled.scaling = True
    scaled.loss_scale[1] = float("inf")  # member 1's gradients overflow at every step
    start = {k: v.clone() for k, v in scaled.members[1].model.named_parameters()}
    scaled.fit(1)
    a, b = scaled.member_state_dict(0), plain.member_state_dict(0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(p, start[k]) for k, p in scaled.members[1].model.named_parameters())
    assert scaled.loss_scale[0] == 2.0**16
    assert scaled.growth_tracker.tolist() == [plain.steps_per_epoch, 0]
    assert scaled.optimizer.initialized.tolist() == [True, False]
    assert math.isfinite(scaled.members[1].history[0]["train_loss"])  # the loss is unscaled
    assert scaled.member_trainer_state(1)["optimizer"]["state"] == {}  # no momentum yet


# ----------------------------------------------------------------------------- checkpoints


def test_a_resumed_pack_ends_bit_identical_to_an_uninterrupted_one(data, tmp_path):
    specs = [LINEAR_RUNS[0], LINEAR_RUNS[2]]
    straight = _pack(data, specs, dtype=torch.float32)
    straight.fit()

    first = _pack(data, specs, dtype=torch.float32)
    first.fit(1)
    path = tmp_path / "pack.pt"
    torch.save(first.state_dict(), path)
    state = torch.load(path, weights_only=True)

    resumed = _pack(data, specs, dtype=torch.float32)
    resumed.train_epoch(0)  # diverge first: loading must overwrite everything
    resumed.load_state_dict(state)
    assert resumed.next_epoch == 1
    resumed.fit()
    a, b = resumed.state_dict(), straight.state_dict()
    for key in ("model", "optimizer"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    strip = [
        [{k: v for k, v in r.items() if k not in TIMING} for r in m.history]
        for m in (resumed.members + straight.members)
    ]
    assert strip[:2] == strip[2:]


def test_a_pack_resumed_from_its_members_trainer_states_is_bit_identical(data, tmp_path):
    """Per-run checkpoints in today's Trainer format are enough to resume a pack."""
    specs = [LINEAR_RUNS[1], LINEAR_RUNS[4]]  # focal (decay-exempt bias) and re-sampling
    straight = _pack(data, specs, dtype=torch.float32)
    straight.fit()
    first = _pack(data, specs, dtype=torch.float32)
    first.fit(2)
    for i in range(2):
        torch.save(first.member_trainer_state(i), tmp_path / f"run{i}.pt")
    states = [torch.load(tmp_path / f"run{i}.pt", weights_only=True) for i in range(2)]
    resumed = _pack(data, specs, dtype=torch.float32)
    resumed.load_member_states(states)
    assert resumed.next_epoch == 2
    resumed.fit()
    for i in range(2):
        a, b = resumed.member_trainer_state(i), straight.member_trainer_state(i)
        assert _max_diff(a, b)[0] == 0.0  # bit-identical (timing aside)
    with pytest.raises(ValueError, match="but member 0 trains"):
        _pack(data, specs[::-1], dtype=torch.float32).load_member_states(states)


def test_loader_dtype_gives_the_same_values_in_float64(data):
    a = DeviceLoader(data[0], BATCH, train=True, device="cpu", seed=3)
    b = DeviceLoader(data[0], BATCH, train=True, device="cpu", seed=3, dtype=torch.float64)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xb.dtype == torch.float64
        assert torch.equal(xa.double(), xb)
        assert torch.equal(ya, yb)
    with pytest.raises(ValueError, match="dtype"):
        DeviceLoader(data[0], BATCH, train=True, device="cpu", dtype=torch.int32)


def test_checkpoint_of_another_pack_is_rejected(data):
    state = _pack(data, LINEAR_RUNS[:2], dtype=torch.float32).state_dict()
    with pytest.raises(ValueError, match="2 members but this pack has 3"):
        _pack(data, LINEAR_RUNS[:3], dtype=torch.float32).load_state_dict(state)
    with pytest.raises(ValueError, match="loss_type"):
        _pack(data, LINEAR_RUNS[1:3], dtype=torch.float32).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        _pack(data, LINEAR_RUNS[:2], dtype=torch.float32).load_state_dict({"model": {}})


# ----------------------------------------------------------------------------- the fused model


def test_from_models_copies_exactly_and_member_state_dict_round_trips():
    models = []
    for seed in range(3):
        seed_everything(seed)
        models.append(resnet_cifar(14, 10, 1, 4, shortcut="subsample"))
    rng = torch.get_rng_state()
    fused = FusedResNet.from_models(models)
    assert torch.equal(rng, torch.get_rng_state())  # fusing draws no random numbers
    for i, model in enumerate(models):
        state = fused.member_state_dict(i)
        assert state.keys() == model.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert model_shape(fused.member_model(i)) == model_shape(model)


@pytest.mark.parametrize(("shortcut", "head"), [("avgpool", "linear"), ("subsample", "cosine")])
def test_fused_forward_equals_each_members_forward(shortcut, head):
    """Training-mode forward on odd-sized images (28×28 -> 14 -> 7 -> 4), float64."""
    models = []
    for seed in range(3):
        seed_everything(seed)
        models.append(resnet_cifar(8, 10, 1, 4, shortcut=shortcut, head=head).double())
    fused = FusedResNet.from_models(models)
    xs = [torch.randn(5, 1, 28, 28, dtype=torch.float64) for _ in models]
    out = fused(torch.cat(xs, dim=1))
    for i, (model, x) in enumerate(zip(models, xs, strict=True)):
        torch.testing.assert_close(out[i], model(x), rtol=1e-13, atol=1e-13)
        state = fused.member_state_dict(i)
        for k, v in model.state_dict().items():  # BatchNorm running statistics too
            torch.testing.assert_close(state[k], v, rtol=1e-13, atol=1e-13)


def test_channels_last_batches_give_the_same_logits():
    models = []
    for seed in range(2):
        seed_everything(seed)
        models.append(resnet_cifar(8, 10, 3, 4).double())
    fused = FusedResNet.from_models(models).eval()
    x = torch.randn(4, 6, 12, 12, dtype=torch.float64)
    channels_last = fused(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, fused(x), rtol=1e-13, atol=1e-13)


def test_channels_last_pack_trains_like_the_default_layout(data):
    """float64, one epoch: the same pack with channels-last batches agrees to 1e-10."""
    specs = LINEAR_RUNS[:2]
    default = _pack(data, specs, dtype=torch.float64)
    members, test_loader = zip(*(_run(data, s, dtype=torch.float64) for s in specs), strict=True)
    other = PackTrainer(
        members, test_loader[0], device="cpu", num_classes=10, progress=False, channels_last=True
    )
    default.fit(1)
    other.fit(1)
    for i in range(2):
        diff, where = _max_diff(other.member_trainer_state(i), default.member_trainer_state(i))
        assert diff < 1e-10, (where, diff)


def test_fused_sgd_is_torch_sgd_per_member():
    """Per-member lr and weight decay, Nesterov momentum, a skipped step for one member."""
    torch.manual_seed(0)
    n, shapes = 3, [(6, 2, 3, 3), (6,), (3, 4, 5)]
    fused_params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    members = [
        [p.detach()[_rows(p, n, i)].clone().requires_grad_() for p in fused_params]
        for i in range(n)
    ]
    decay = [[1e-2, 0.0, 2e-2], [1e-2, 1e-2, 1e-2], [0.0, 0.0, 5e-2]]  # [param][member]
    opt = FusedSGD(fused_params, n, decay, momentum=0.9, nesterov=True)
    refs = [
        torch.optim.SGD(
            [{"params": [p], "weight_decay": decay[j][i]} for j, p in enumerate(params)],
            lr=0.1,
            momentum=0.9,
            nesterov=True,
        )
        for i, params in enumerate(members)
    ]
    lrs = [0.1, 0.05, 0.2]
    for step in range(4):
        skip = torch.tensor([False, step == 0, step == 2])
        grads = [torch.randn(s, dtype=torch.float64) for s in shapes]
        opt.zero_grad()
        for p, g in zip(fused_params, grads, strict=True):
            p.grad += g
        opt.step(torch.tensor(lrs, dtype=torch.float64), skip)
        for i, (params, ref) in enumerate(zip(members, refs, strict=True)):
            if skip[i]:
                continue
            for group in ref.param_groups:
                group["lr"] = lrs[i]
            for p, g, fp in zip(params, grads, fused_params, strict=True):
                p.grad = g[_rows(fp, n, i)].clone()
            ref.step()
    for i, params in enumerate(members):
        for p, fp in zip(params, fused_params, strict=True):
            torch.testing.assert_close(fp.detach()[_rows(fp, n, i)], p.detach(), rtol=0, atol=1e-15)


def _rows(tensor, n, i):
    rows = tensor.shape[0] // n
    return slice(i * rows, (i + 1) * rows)


# ----------------------------------------------------------------------------- bad input


def test_pack_of_no_members_is_rejected():
    with pytest.raises(ValueError, match="N >= 1"):
        PackTrainer([], [], device="cpu", num_classes=10)
    with pytest.raises(ValueError, match="N >= 1"):
        FusedResNet.from_models([])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"epochs": 4}, "recipe.epochs"),
        ({"batch_size": 16}, "recipe.batch_size"),
        ({"momentum": 0.8}, "recipe.momentum"),
        ({"width": 8}, "base_width"),
        ({"depth": 14}, "blocks_per_stage"),
        ({"shortcut": "subsample"}, "shortcut"),
    ],
)
def test_members_that_cannot_share_a_pack_are_rejected_by_what_differs(data, change, match):
    first, test_loader = _run(data, LINEAR_RUNS[0], dtype=torch.float32)
    batch = change.pop("batch_size", BATCH)
    momentum = change.pop("momentum", 0.9)
    second, _ = _run(data, LINEAR_RUNS[1], dtype=torch.float32, **change)
    if batch != BATCH or momentum != 0.9:
        second.recipe = Recipe.scaled(EPOCHS, batch_size=batch, momentum=momentum)
        second.train_loader = DeviceLoader(data[0], batch, train=True, device="cpu")
    with pytest.raises(ValueError, match=match):
        PackTrainer([first, second], test_loader, device="cpu", num_classes=10, progress=False)


def test_member_with_the_wrong_head_or_classes_is_rejected(data):
    member, test_loader = _run(data, LINEAR_RUNS[0], dtype=torch.float32)
    member.loss_type = "ldam"
    with pytest.raises(ValueError, match="cosine head"):
        PackTrainer([member], test_loader, device="cpu", num_classes=10)
    member.loss_type = "softmax"
    with pytest.raises(ValueError, match="num_classes"):
        PackTrainer([member], test_loader, device="cpu", num_classes=5)


def test_fused_model_rejects_a_wrongly_shaped_batch():
    fused = FusedResNet(2, 1, 10, 3, 4)
    with pytest.raises(ValueError, match=r"\(B, 6, H, W\)"):
        fused(torch.zeros(2, 3, 16, 16))


# ----------------------------------------------------------------------------- CUDA


@CUDA
def test_cuda_float64_pack_equals_the_runs_one_by_one(data):
    """On the GPU too (cuDNN's grouped and plain convolutions, float64): 1e-10 relative."""
    specs = LINEAR_RUNS[:3]
    separate = []
    for spec in specs:
        trainer = _trainer(*_run(data, spec, dtype=torch.float64, device="cuda"))
        trainer.fit()
        separate.append(trainer)
    pack = _pack(data, specs, dtype=torch.float64, device="cuda")
    pack.fit()
    for i, trainer in enumerate(separate):
        diff, where = _max_diff(pack.member_trainer_state(i), trainer.state_dict())
        assert diff <= 1e-10, (i, where, diff)
        assert pack.members[i].last_evaluation == trainer.last_evaluation


@CUDA
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_pack_trains_with_mixed_precision_like_its_runs(data, amp):
    """fp32 master weights, finite losses, per-epoch losses near the separate runs' (mixed
    precision rounds differently in grouped and plain kernels), a loss scale per member."""
    specs = LINEAR_RUNS[:3]
    separate = []
    for spec in specs:
        trainer = _trainer(*_run(data, spec, dtype=torch.float32, device="cuda"), amp=amp)
        trainer.fit(2)
        separate.append(trainer)
    pack = _pack(data, specs, amp=amp, dtype=torch.float32, device="cuda")
    pack.fit(2)
    assert all(p.dtype == torch.float32 for p in pack.model.parameters())
    for member, trainer in zip(pack.members, separate, strict=True):
        losses = [h["train_loss"] for h in member.history]
        assert all(math.isfinite(x) for x in losses)
        assert losses == pytest.approx([h["train_loss"] for h in trainer.history], rel=0.05)
    if amp == "fp16":  # each member's own GradScaler-style scale: 2^16, halved per overflow
        assert pack.scaling
        assert all(0 < s <= 2.0**16 and math.log2(s).is_integer() for s in pack.loss_scale.tolist())

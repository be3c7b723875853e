"""ResNet for CIFAR (He et al. 2016) and the sigmoid/focal head initialization of the paper."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cbnotes.losses import prior_bias
from cbnotes.models import BasicBlock, classifier_stats, init_head_for_loss, resnet_cifar


def _weighted_layers(model: nn.Module) -> int:
    """Convolutions and linear layers: what "depth" counts in He et al."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_resnet32_has_the_0_46m_parameters_he_et_al_report():
    model = resnet_cifar(32, num_classes=10)
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == 0.46
    # 31 convs + 1 linear layer: the 32 weighted layers of ResNet-32.
    assert _weighted_layers(model) == 32


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 44, 56])
def test_depth_is_6n_plus_2_weighted_layers(depth):
    model = resnet_cifar(depth, base_width=4)
    assert _weighted_layers(model) == depth
    n = (depth - 2) // 6
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [n, n, n]


@pytest.mark.parametrize("depth", [33, 30, 7, 2, 0, -4])
def test_depth_not_of_the_form_6n_plus_2_is_rejected(depth):
    with pytest.raises(ValueError, match="depth"):
        resnet_cifar(depth)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"base_width": 0}, "base_width"),
        ({"shortcut": "conv"}, "shortcut"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs, name):
    with pytest.raises(ValueError, match=name):
        resnet_cifar(8, **kwargs)


def test_stages_have_widths_w_2w_4w_and_halve_the_resolution():
    model = resnet_cifar(8, base_width=16).eval()
    shapes = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
    model(torch.randn(2, 3, 32, 32))
    assert shapes == {"layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8)}


@pytest.mark.parametrize(("size", "channels"), [(32, 3), (28, 1), (16, 3), (8, 3)])
def test_any_input_of_at_least_8_pixels_gives_logits(size, channels):
    model = resnet_cifar(8, num_classes=7, in_channels=channels, base_width=4)
    assert model(torch.randn(3, channels, size, size)).shape == (3, 7)


def test_option_a_shortcut_is_parameter_free():
    model = resnet_cifar(20, base_width=4)
    for name, _ in model.named_parameters():
        leaf = name.rsplit(".", 2)[-2]
        assert leaf.startswith(("conv", "bn", "fc")), name


def test_option_a_shortcut_subsamples_and_zero_pads_the_new_channels():
    block = BasicBlock(4, 8, stride=2, shortcut="subsample")
    x = torch.randn(2, 4, 6, 6)
    out = block._shortcut(x)
    assert out.shape == (2, 8, 3, 3)
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
    assert not out[:, :2].any()
    assert not out[:, 6:].any()


def test_avgpool_shortcut_matches_the_authors_tf_code():
    """model_base.py: 2×2 average pooling with stride 2, then zero-padding of the channels."""
    block = BasicBlock(4, 8, stride=2, shortcut="avgpool")
    x = torch.randn(2, 4, 6, 6)
    out = block._shortcut(x)
    assert torch.allclose(out[:, 2:6], F.avg_pool2d(x, 2))
    assert not out[:, :2].any()
    assert not out[:, 6:].any()
    # TF 'SAME' pooling on an odd size averages the trailing row/column alone.
    odd = block._shortcut(x[:, :, :5, :5])
    assert odd.shape == (2, 8, 3, 3)
    assert torch.allclose(odd[:, 2:6, 2, 2], x[:, :, 4, 4])


def test_identity_shortcut_inside_a_stage():
    block = BasicBlock(8, 8, stride=1, shortcut="subsample")
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block._shortcut(x), x)


def test_by_default_the_model_is_built_as_the_official_code_builds_it():
    """2×2 average-pool shortcut and Glorot-uniform kernels (TF1 tf.layers defaults)."""
    torch.manual_seed(0)
    model = resnet_cifar(32)
    assert {b.shortcut for b in model.modules() if isinstance(b, BasicBlock)} == {"avgpool"}
    conv = model.layer3[-1].conv2  # 64 -> 64 channels, 3×3: fan_in = fan_out = 576
    bound = math.sqrt(6.0 / (576 + 576))
    assert conv.weight.abs().max().item() <= bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    head_bound = math.sqrt(6.0 / (64 + 10))
    assert model.fc.weight.abs().max().item() <= head_bound
    assert model.fc.weight.std().item() == pytest.approx(head_bound / math.sqrt(3), rel=0.1)
    assert torch.equal(model.fc.bias, torch.zeros(10))


def test_the_cosine_head_gives_cosines_of_unit_class_vectors():
    torch.manual_seed(0)
    model = resnet_cifar(8, num_classes=5, base_width=4, head="cosine")
    assert model.fc.bias is None
    assert torch.allclose(model.fc.weight.norm(dim=1), torch.ones(5))
    features = torch.randn(3, 16)
    expected = nn.functional.cosine_similarity(
        features[:, None, :], model.fc.weight[None, :, :], dim=2
    )
    assert torch.allclose(model.fc(features), expected, atol=1e-6)
    logits = model(torch.randn(3, 3, 16, 16))
    assert logits.abs().max() <= 1 + 1e-6


def test_the_head_follows_the_method_registry():
    linear = resnet_cifar(8, num_classes=5, base_width=4)
    assert init_head_for_loss(linear, "focal").fc.bias.allclose(torch.full((5,), -math.log(4)))
    with pytest.raises(ValueError, match="method 'ldam' needs a cosine head"):
        init_head_for_loss(linear, "ldam")
    cosine = resnet_cifar(8, num_classes=5, base_width=4, head="cosine")
    with pytest.raises(ValueError, match="method 'softmax' needs a linear head"):
        init_head_for_loss(cosine, "softmax")
    assert init_head_for_loss(cosine, "ldam_drw") is cosine


def test_initialization_kaiming_normal_convs_and_unit_batchnorm():
    torch.manual_seed(0)
    model = resnet_cifar(32, init="kaiming")
    conv = model.layer3[-1].conv2  # 64 -> 64 channels, 3×3: fan_out = 576
    expected_std = math.sqrt(2.0 / (64 * 9))
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=0.05 * expected_std)
    assert conv.bias is None
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
            assert m.momentum == 0.1
            assert m.eps == 1e-5
    assert torch.equal(model.fc.bias, torch.zeros(10))


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    model = resnet_cifar(8, base_width=8)
    x = torch.randn(4, 3, 16, 16)
    for train in (True, False):
        model.train(train)
        ref = model(x)
        last = model.to(memory_format=torch.channels_last)
        out = last(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
        assert torch.allclose(out, ref, atol=1e-5)


def test_model_backpropagates_to_every_parameter():
    model = resnet_cifar(8, num_classes=3, base_width=4)
    model(torch.randn(4, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("loss_type", ["sigmoid", "focal"])
def test_sigmoid_and_focal_heads_start_at_the_class_prior(loss_type):
    """b = -log((1-π)/π) with π = 1/C: every sigmoid output starts at 1/C (paper Sec. 4.2)."""
    model = init_head_for_loss(resnet_cifar(8, num_classes=10, base_width=4), loss_type)
    assert torch.allclose(model.fc.bias, torch.full((10,), -math.log(9.0)))
    assert model.fc.bias[0].item() == pytest.approx(prior_bias(10))
    assert torch.allclose(torch.sigmoid(model.fc.bias), torch.full((10,), 0.1))


def test_softmax_head_keeps_the_default_init():
    model = resnet_cifar(8, num_classes=10, base_width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_head_for_loss(model, "softmax")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_init_head_rejects_unknown_loss_types_and_headless_models():
    with pytest.raises(ValueError, match="loss_type"):
        init_head_for_loss(resnet_cifar(8, base_width=4), "hinge")
    with pytest.raises(ValueError, match="fc"):
        init_head_for_loss(nn.Sequential(nn.Linear(3, 3)), "sigmoid")


def test_classifier_stats_reports_each_class_row_norm_and_bias():
    model = resnet_cifar(depth=8, num_classes=3, base_width=4)
    with torch.no_grad():
        model.fc.weight.copy_(
            torch.tensor([[3.0] + [0.0] * 15, [0.0, 4.0] + [0.0] * 14, [0.0] * 16])
        )
        model.fc.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    stats = classifier_stats(model)
    assert stats == {"weight_norms": [3.0, 4.0, 0.0], "bias": [1.0, -2.0, 0.5]}

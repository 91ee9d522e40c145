"""Tests for the CIFAR ResNets (ResNet-20/56 option A, CIFAR ResNet-18)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from mass_lightning.backbones.cifar_resnet import (
    CifarResNet,
    PadChannelsShortcut,
    cifar_resnet18,
    resnet20,
    resnet56,
)

# Exact counts for 10 classes (He et al. report 0.27M and 0.85M; ResNet-18 has 11.2M).
PARAMS = {resnet20: 269_722, resnet56: 853_018, cifar_resnet18: 11_173_962}
BUILDERS = list(PARAMS)


@pytest.fixture(autouse=True)
def _single_thread():
    # Small models: one thread avoids OpenMP overhead on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_parameter_count(builder):
    assert _num_params(builder()) == PARAMS[builder]


def test_parameter_count_rounded():
    assert round(_num_params(resnet20()) / 1e6, 2) == 0.27
    assert round(_num_params(resnet56()) / 1e6, 2) == 0.85
    assert round(_num_params(cifar_resnet18()) / 1e6, 1) == 11.2


@pytest.mark.parametrize("builder", [resnet20, cifar_resnet18], ids=lambda b: b.__name__)
@pytest.mark.parametrize("size", [(32, 32), (32, 48), (17, 23)])
def test_output_shape(builder, size):
    model = builder(num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 7)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_in_channels_and_batch_one(builder):
    model = builder(num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("builder", [resnet20, cifar_resnet18], ids=lambda b: b.__name__)
def test_forward_backward_smoke(builder):
    model = builder().train()
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_resnet56_depth():
    convs = [m for m in resnet56().modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == 56  # 6n + 1 convolutions and the fc layer


@pytest.mark.parametrize("builder", [resnet20, resnet56], ids=lambda b: b.__name__)
def test_option_a_shortcuts(builder):
    model = builder()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) and m.kernel_size != 1 for m in model.modules())
    for stage, (in_ch, out_ch) in zip((model.layer1, model.layer2, model.layer3), ((16, 16), (16, 32), (32, 64))):
        for index, block in enumerate(stage):
            assert isinstance(block, BasicBlock)
            if index == 0 and in_ch != out_ch:
                shortcut = block.downsample
                assert isinstance(shortcut, PadChannelsShortcut)
                assert isinstance(shortcut.pool, nn.MaxPool2d)
                assert (shortcut.pool.kernel_size, shortcut.pool.stride) == (1, 2)
                assert dict(shortcut.named_children()) == {"pool": shortcut.pool}
                assert block.conv1.stride == (2, 2)
            else:
                assert block.downsample is None


def test_pad_channels_shortcut_is_subsample_and_zero_pad():
    shortcut = PadChannelsShortcut(16, 32, stride=2)
    x = torch.randn(2, 16, 9, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 5, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.equal(y[:, :8], torch.zeros(2, 8, 5, 4)) and torch.equal(y[:, 24:], torch.zeros(2, 8, 5, 4))
    assert PadChannelsShortcut(3, 6)(torch.randn(1, 3, 4, 4)).shape == (1, 6, 2, 2)  # odd split: 1 before, 2 after
    with pytest.raises(ValueError, match=r"PadChannelsShortcut expects \(N, 16, H, W\)"):
        shortcut(torch.randn(2, 8, 4, 4))
    with pytest.raises(ValueError, match=r"in_channels <= out_channels"):
        PadChannelsShortcut(32, 16)


def test_cifar_resnet18_structure():
    model = cifar_resnet18()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    for name in ("layer2", "layer3", "layer4"):
        shortcut = getattr(model, name)[0].downsample
        assert isinstance(shortcut, nn.Sequential)
        assert isinstance(shortcut[0], nn.Conv2d) and shortcut[0].kernel_size == (1, 1) and shortcut[0].stride == (2, 2)
        assert isinstance(shortcut[1], nn.BatchNorm2d)
    assert model.layer1[0].downsample is None


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__)
def test_convs_use_zero_padding_and_named_like_torchvision(builder):
    model = builder()
    assert all(m.padding_mode == "zeros" for m in model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and isinstance(model.fc, nn.Linear)


def test_builders_are_keyword_only_and_validate():
    with pytest.raises(TypeError):
        resnet20(10)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"resnet18: num_classes must be a positive int"):
        cifar_resnet18(num_classes=0)
    with pytest.raises(ValueError, match=r"CifarResNet: in_channels must be a positive int"):
        resnet20(in_channels=0)
    with pytest.raises(ValueError, match=r"three stages"):
        CifarResNet((3, 3))

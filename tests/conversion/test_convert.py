"""convert(): weight transfer, untouched original, shared origins, natural images, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from mass_lightning import convert
from mass_lightning.data.paths import data_root
from mass_lightning.layers import DDAC, EquivariantDownsample, MASSConv2d, MASSMaxPool2d, OriginScope


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def test_state_dict_keys_and_values_identical(resnet18):
    converted = convert(resnet18, method="mass")
    original, new = resnet18.state_dict(), converted.state_dict()
    assert list(original) == list(new)
    assert all(torch.equal(original[k], new[k]) for k in original)
    # Loads both ways.
    converted.load_state_dict(original)
    resnet18.load_state_dict(new)


@pytest.mark.parametrize("method,antialias", [("aps", None), ("baseline", "lpf3"), ("mass", "lpf5")])
def test_keys_identical_without_ddac(resnet18, method, antialias):
    assert list(convert(resnet18, method=method, antialias=antialias).state_dict()) == list(resnet18.state_dict())


def test_ddac_adds_only_filter_parameters(resnet18):
    converted = convert(resnet18, method="mass", antialias="ddac3")
    extra = set(converted.state_dict()) - set(resnet18.state_dict())
    assert extra and all(".antialias." in k for k in extra)
    assert any(isinstance(m, DDAC) for m in converted.modules())


def test_original_untouched(resnet18):
    before = {n: type(m) for n, m in resnet18.named_modules()}
    converted = convert(resnet18, method="mass")
    assert {n: type(m) for n, m in resnet18.named_modules()} == before
    assert isinstance(converted.conv1, MASSConv2d) and isinstance(converted.maxpool, MASSMaxPool2d)
    assert converted.conv1.weight is not resnet18.conv1.weight


def test_residual_blocks_share_origin(resnet18):
    converted = convert(resnet18, method="mass").eval()
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(converted, name)[0]
        assert isinstance(block.conv1.scope, OriginScope)
        assert block.conv1.scope is block.downsample[0].scope
    converted(torch.randn(3, 3, 64, 64))
    block = converted.layer3[0]
    assert torch.equal(block.conv1.last_origin, block.downsample[0].last_origin)
    assert converted.conv1.scope is None  # the stem is not a residual block


def test_bottleneck_shares_origin():
    model = convert(torchvision.models.resnet50(), method="mass").eval()
    block = model.layer2[0]
    assert block.conv2.scope is block.downsample[0].scope is not None
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(block.conv2.last_origin, block.downsample[0].last_origin)


def test_strided_layers_found_in_every_torchvision_family():
    expected = {"densenet121": 5, "mobilenet_v2": 5, "convnext_tiny": 4}
    for name, count in expected.items():
        model = convert(torchvision.models.get_model(name), method="mass")
        strided = [m for m in model.modules() if isinstance(m, EquivariantDownsample) and m._stride_pair() != (1, 1)]
        assert len(strided) == count, name


def _natural_images(size: tuple[int, int]) -> torch.Tensor:
    folder = data_root() / "camvid" / "test"
    files = sorted(Path(folder).glob("*.jpg"))[:2] if folder.is_dir() else []
    if not files:
        pytest.skip(f"no CamVid images under {folder}")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    images = []
    for file in files:
        image = torchvision.transforms.functional.pil_to_tensor(Image.open(file).convert("RGB")).float() / 255
        images.append(((image - mean) / std)[:, : size[0], : size[1]])
    return torch.stack(images)


def test_consistent_on_natural_images(resnet18):
    x = _natural_images((128, 160))
    mass = convert(resnet18, method="mass").eval()
    baseline = convert(resnet18, method="baseline").eval()
    shifts = [(1, 0), (0, 1), (3, 5), (17, 29), (100, 131)]
    with torch.no_grad():
        batch = torch.cat([x] + [torch.roll(x, s, (2, 3)) for s in shifts])
        logits = mass(batch).view(len(shifts) + 1, x.shape[0], -1)
        base = baseline(batch).view(len(shifts) + 1, x.shape[0], -1)
    for i in range(1, len(shifts) + 1):
        torch.testing.assert_close(logits[i], logits[0], atol=1e-4, rtol=1e-4)
        assert torch.equal(logits[i].argmax(-1), logits[0].argmax(-1))
    assert (base[1:] - base[0]).abs().max() > 1e-2  # the circular baseline alone is not invariant


def test_zero_padding_is_the_original(resnet18):
    copy = convert(resnet18, method="baseline", padding="zeros")
    assert type(copy.conv1) is nn.Conv2d and copy is not resnet18


def test_bad_arguments():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    with pytest.raises(ValueError, match="Unknown method"):
        convert(model, method="blur")
    with pytest.raises(ValueError, match="Unknown antialias"):
        convert(model, antialias="gauss3")
    with pytest.raises(ValueError, match="padding='zeros'"):
        convert(model, method="mass", padding="zeros")


def test_single_layer_and_warnings():
    assert isinstance(convert(nn.Conv2d(3, 4, 3, stride=2, padding=1)), MASSConv2d)
    with pytest.warns(UserWarning, match="pads non-circularly"):
        convert(nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 3, 3)))


def test_global_pool_is_order_independent_so_logits_are_bit_identical():
    from mass_lightning import get_backbone
    from mass_lightning.layers import ExactGlobalAvgPool2d

    torch.manual_seed(5)
    model = get_backbone("resnet20", method="mass", num_classes=10).eval()
    assert isinstance(model.avgpool, ExactGlobalAvgPool2d)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        for shift in [(1, 0), (0, 1), (3, 29), (17, 5)]:
            assert torch.equal(model(torch.roll(x, shift, (2, 3))), reference)


@pytest.mark.parametrize("method", ["mass", "aps"])
def test_input_memory_layout_does_not_change_the_logits(resnet18, method):
    # Convolution kernels round differently per layout. A decoded picture (H, W, C) permuted
    # to (C, H, W) is channels-last, and torch.roll of it is NCHW: the padded copies are made
    # in one fixed layout, so both must give the same bits, and so must their shifts.
    model = convert(resnet18, method=method).eval()
    torch.manual_seed(3)
    picture = torch.rand(1, 96, 128, 3).permute(0, 3, 1, 2)  # channels-last strides
    assert picture.is_contiguous(memory_format=torch.channels_last) and not picture.is_contiguous()
    with torch.no_grad():
        reference = model(picture)
        assert torch.equal(model(picture.contiguous()), reference)
        for shift in [(1, 3), (5, 11), (0, 1)]:
            shifted = torch.roll(picture, shift, (2, 3))  # NCHW
            assert torch.equal(model(shifted), reference)
            assert torch.equal(model(shifted.contiguous(memory_format=torch.channels_last)), reference)

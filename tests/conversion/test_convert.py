"""convert(): weight transfer, untouched original, shared origins, natural images, errors, re-conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from mass_lightning import check_equivariance, convert
from mass_lightning.conversion import ShiftEquivariantModel
from mass_lightning.data.paths import data_root
from mass_lightning.errors import ConversionError, MassLightningError, ShiftEquivarianceWarning
from mass_lightning.layers import DDAC, MASSConv2d, MASSMaxPool2d


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


def _origin_calls(model: ShiftEquivariantModel) -> dict[str, object]:
    """For every downsampling call of the eval graph: "choose" or the module that chose its origin."""
    calls = {}
    for node in model.conversion.graphs["eval"].nodes:
        if node.kwargs.get("return_origin"):
            calls[str(node.target)] = "choose"
        elif "origin" in node.kwargs and node.op == "call_module":
            chooser = node.kwargs["origin"].args[0]  # getitem(chooser call, 1)
            calls[str(node.target)] = str(chooser.target)
    return calls


def test_residual_blocks_share_origin(resnet18):
    """The strided main branch chooses from its input; the shortcut gets that origin as a value."""
    calls = _origin_calls(convert(resnet18, method="mass"))
    for name in ("layer2", "layer3", "layer4"):
        assert calls[f"{name}.0.conv1"] == "choose"
        assert calls[f"{name}.0.downsample.0"] == f"{name}.0.conv1"
    assert calls["conv1"] == "choose" and calls["maxpool"] == "choose"


def test_bottleneck_shares_origin():
    calls = _origin_calls(convert(torchvision.models.resnet50(), method="mass"))
    assert calls["layer2.0.conv2"] == "choose"
    assert calls["layer2.0.downsample.0"] == "layer2.0.conv2"


def test_origin_groups_found_in_every_torchvision_family():
    expected = {"densenet121": 5, "mobilenet_v2": 5, "convnext_tiny": 4, "regnet_x_400mf": 5, "googlenet": 5}
    for name, count in expected.items():
        calls = _origin_calls(convert(torchvision.models.get_model(name), method="mass"))
        assert sum(1 for v in calls.values() if v == "choose") == count, name


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
    with pytest.raises(ValueError, match="unknown method"):
        convert(model, method="blur")
    with pytest.raises(ValueError, match="Unknown antialias"):
        convert(model, antialias="gauss3")
    with pytest.raises(ValueError, match="padding='zeros'"):
        convert(model, method="mass", padding="zeros")
    with pytest.raises(MassLightningError, match="already converted"):
        convert(convert(model), method="baseline", padding="zeros")


def test_single_layer_and_folded_padding():
    conv = convert(nn.Conv2d(3, 4, 3, stride=2, padding=1)).eval()
    assert isinstance(conv, ShiftEquivariantModel)
    assert check_equivariance(conv, torch.randn(2, 3, 8, 12)).ok
    padded = convert(nn.Sequential(nn.ZeroPad2d(1), nn.Conv2d(3, 3, 3, stride=2))).eval()
    x = torch.randn(1, 3, 8, 8)
    reference = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), padded[1].weight,
                                     padded[1].bias)
    with torch.no_grad():
        assert check_equivariance(padded, x).ok
        y = padded(x)
    # the folded zero padding became circular: the output is one polyphase component of the
    # circular stride-1 conv (the one at the chosen origin)
    phases = [reference[..., i::2, j::2] for i in range(2) for j in range(2)]
    assert y.shape == (1, 3, 4, 4)
    assert any(torch.allclose(y, phase, atol=1e-5) for phase in phases)


def test_refusal_names_module_reason_and_what_to_do():
    model = torchvision.models.vgg11()
    with pytest.raises(ConversionError) as caught:
        convert(model)
    error = caught.value
    assert error.path == "avgpool" and "fixed 7x7 grid" in error.reason and "global pool" in error.hint
    assert isinstance(error, ValueError)
    with pytest.warns(ShiftEquivarianceWarning, match="NOT exactly shift-equivariant"):
        kept = convert(model, strict=False)
    assert isinstance(kept, ShiftEquivariantModel)


def test_global_pool_is_order_independent_so_logits_are_bit_identical():
    from mass_lightning import get_backbone
    from mass_lightning.layers import ExactGlobalAvgPool2d

    torch.manual_seed(5)
    model = get_backbone("resnet20", method="mass", num_classes=10).eval()
    assert isinstance(model, ShiftEquivariantModel) and "exact_mean" in model.code
    del ExactGlobalAvgPool2d
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

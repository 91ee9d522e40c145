"""Tests for the exactly equivariant DeepLabV3+ (smp encoders, decoder patches, factory)."""

from __future__ import annotations

import os
import urllib.error

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from segmentation_models_pytorch import encoders as smp_encoders
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPPPooling

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from mass_lightning.backbones.segmentation import (  # noqa: E402
    FrameAlignedUpsample,
    GlobalPoolingBranch,
    convert_deeplabv3plus,
    get_segmentation_model,
)
from mass_lightning.backbones.smp_encoders import (  # noqa: E402
    SMP_RESNETS,
    EquivariantResNetEncoder,
    register_smp_encoders,
    smp_encoder_name,
)
from mass_lightning.data.paths import data_root  # noqa: E402
from mass_lightning.layers import CircularConv2d  # noqa: E402

HAND_PICKED = [(1, 0), (0, 1), (3, -5), (15, 17), (-9, 31)]


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(method: str = "mass", output_stride: int = 16, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_segmentation_model(method=method, num_classes=5, output_stride=output_stride, **kwargs).eval()


def _shifts(height: int, width: int, count: int, seed: int) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    dy = torch.randint(0, height, (count,), generator=generator).tolist()
    dx = torch.randint(0, width, (count,), generator=generator).tolist()
    return list(zip(dy, dx))


def _equivariance(model, x, shifts) -> tuple[float, float]:
    """Worst relative error and worst argmax agreement of model(roll(x)) vs roll(model(x))."""
    with torch.no_grad():
        y = model(x)
        errors, agreements = [], []
        for shift in shifts:
            shifted = model(torch.roll(x, shift, dims=(2, 3)))
            expected = torch.roll(y, shift, dims=(2, 3))
            errors.append(((shifted - expected).abs().max() / y.abs().max().clamp_min(1.0)).item())
            agreements.append((shifted.argmax(1) == expected.argmax(1)).float().mean().item())
    return max(errors), min(agreements)


# -- exact equivariance -------------------------------------------------------------------


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("method", ["mass", "aps"])
def test_equivariant_on_random_tensors(method, output_stride):
    model = _model(method, output_stride)
    x = torch.randn(2, 3, 64, 96)
    shifts = _shifts(64, 96, 3, seed=output_stride) + HAND_PICKED
    error, agreement = _equivariance(model, x, shifts)
    assert error < 1e-5
    assert agreement == 1.0


@pytest.mark.parametrize("output_stride", [16, 8])
def test_baseline_is_not_equivariant(output_stride):
    model = _model("baseline", output_stride)
    x = torch.randn(2, 3, 64, 96)
    error, agreement = _equivariance(model, x, [(1, 0), (3, 5)])
    assert error > 1e-2
    assert agreement < 1.0
    # ... but it is for shifts that the total stride divides (its fixed phase is kept).
    error, agreement = _equivariance(model, x, [(output_stride, 2 * output_stride)])
    assert error < 1e-5 and agreement == 1.0


def test_decoder_must_undo_the_origins():
    model = _model("mass")
    for module in model.modules():
        if isinstance(module, FrameAlignedUpsample):
            module.undo_origins = False
    error, _ = _equivariance(model, torch.randn(2, 3, 64, 64), [(1, 0), (0, 3), (5, 7)])
    assert error > 1e-2


def _camvid_crop() -> torch.Tensor:
    folder = data_root() / "camvid" / "val"
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not images:
        pytest.skip(f"CamVid not found under {folder} (set MASS_LIGHTNING_DATA).")
    pixels = np.asarray(Image.open(images[0]).convert("RGB"), dtype=np.float32) / 255.0
    top = (pixels.shape[0] - 352) // 2
    image = torch.from_numpy(pixels[top : top + 352, :480]).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((image - mean.view(3, 1, 1)) / std.view(3, 1, 1)).unsqueeze(0)


@pytest.mark.slow
@pytest.mark.parametrize("output_stride", [16, 8])
def test_equivariant_on_real_camvid_image(output_stride):
    x = _camvid_crop()
    assert x.shape == (1, 3, 352, 480)
    shifts = [(5, 11)] + _shifts(352, 480, 1, seed=output_stride)
    error, agreement = _equivariance(_model("mass", output_stride), x, shifts)
    assert error < 1e-5
    assert agreement == 1.0
    if output_stride == 16:
        error, agreement = _equivariance(_model("baseline", output_stride), x, [(5, 11)])
        assert error > 1e-2 and agreement < 1.0


def test_batch_one_and_non_square():
    model = _model("mass")
    x = torch.randn(1, 3, 32, 80)
    with torch.no_grad():
        assert model(x).shape == (1, 5, 32, 80)
    error, agreement = _equivariance(model, x, [(3, 41)])
    assert error < 1e-5 and agreement == 1.0


@pytest.mark.parametrize("method", ["mass", "aps"])
def test_bf16_autocast_argmax_agrees(method):
    model = _model(method)
    x = torch.randn(2, 3, 32, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, agreement = _equivariance(model, x, [(5, 7), (-13, 29)])
    assert agreement == 1.0


def test_antialiased_encoder_is_equivariant():
    model = _model("mass", antialias="lpf3")
    error, agreement = _equivariance(model, torch.randn(2, 3, 64, 64), [(1, 2), (9, -5)])
    assert error < 1e-5 and agreement == 1.0


def test_train_mode_backward():
    model = _model("mass").train()
    logits = model(torch.randn(2, 3, 64, 64))
    F.cross_entropy(logits, torch.randint(0, 5, (2, 64, 64))).backward()
    assert model.encoder.conv1.weight.grad is not None


# -- encoder frames, dilation -----------------------------------------------------------------


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("method", ["mass", "aps"])
def test_encoder_frames_locate_every_level(method, output_stride):
    """Level S pixel i sits at input position S*i + phi_S: f(roll(x, d)) == roll(f(x), k)."""
    model = _model(method, output_stride)
    x = torch.randn(2, 3, 64, 96)
    d = torch.tensor([7, 13])
    with torch.no_grad():
        features = model.encoder(x)
        frames = model.encoder.frames
        shifted = model.encoder(torch.roll(x, tuple(d.tolist()), dims=(2, 3)))
        frames_shifted = model.encoder.frames
    for f, g in zip(features[1:], shifted[1:]):
        stride = (64 // f.shape[-2], 96 // f.shape[-1])
        move = d + frames.offsets[stride] - frames_shifted.offsets[stride]  # (B, 2), input pixels
        assert (move % torch.tensor(stride) == 0).all()
        for b in range(2):
            k = (move[b] // torch.tensor(stride)).tolist()
            torch.testing.assert_close(g[b], torch.roll(f[b], k, dims=(1, 2)), atol=1e-5, rtol=1e-5)


def test_baseline_frames_are_zero():
    model = _model("baseline")
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert all(not phi.any() for phi in model.encoder.frames.offsets.values())


def test_output_stride_8_dilated_convs_pad_circularly():
    """make_dilated patches our convs in place; a cached pad amount would shrink or misalign them."""
    model = _model("mass", output_stride=8)
    encoder = model.encoder
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        shapes = [tuple(f.shape[-2:]) for f in encoder(x)]
    assert shapes == [(64, 96), (32, 48), (16, 24), (8, 12), (8, 12), (8, 12)]
    assert encoder.output_stride == 8
    conv = encoder.layer4[1].conv1
    assert isinstance(conv, CircularConv2d)
    assert conv.stride == (1, 1) and conv.dilation == (4, 4) and conv.padding == (4, 4)
    assert encoder.layer3[0].downsample[0].stride == (1, 1)
    z = torch.randn(1, conv.in_channels, 8, 12)
    reference = F.conv2d(F.pad(z, (4, 4, 4, 4), mode="circular"), conv.weight, dilation=4)
    with torch.no_grad():
        torch.testing.assert_close(conv(z), reference)
    assert encoder.frames.offsets.keys() == {(1, 1), (2, 2), (4, 4), (8, 8)}


def test_aspp_pads_circularly_beyond_the_map_size():
    model = _model("mass")
    depthwise = model.decoder.aspp[0].convs[3][0][0]  # dilation 36 on a 4x4 map (64x64 input)
    assert isinstance(depthwise, CircularConv2d) and depthwise.dilation == (36, 36)
    z = torch.randn(1, depthwise.in_channels, 4, 4)
    rolled = [torch.roll(z, (36 * (1 - a) % 4, 36 * (1 - b) % 4), dims=(2, 3)) for a in range(3) for b in range(3)]
    weight = depthwise.weight.flatten(1).T.reshape(9, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(depthwise(z), sum(w * r for w, r in zip(weight, rolled)), atol=1e-5, rtol=1e-5)


def test_global_pooling_branch_is_constant_and_matches_smp():
    smp_branch = ASPPPooling(8, 4).eval()
    branch = GlobalPoolingBranch(*smp_branch.children()).eval()
    assert branch.state_dict().keys() == smp_branch.state_dict().keys()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        out = branch(x)
        torch.testing.assert_close(out, smp_branch(x))
    assert out.shape == (2, 4, 5, 7) and (out == out[..., :1, :1]).all()


# -- weights, registration ------------------------------------------------------------------


@pytest.mark.parametrize("name", SMP_RESNETS)
def test_encoder_state_dict_matches_smp(name):
    register_smp_encoders()
    ours = smp_encoders.get_encoder(smp_encoder_name(name, "mass"), output_stride=16).state_dict()
    theirs = smp_encoders.get_encoder(name, output_stride=16).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[k].shape == theirs[k].shape for k in theirs)


def test_model_state_dict_matches_smp():
    ours = _model("aps").state_dict()
    theirs = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=5).state_dict()
    assert ours.keys() == theirs.keys()


@pytest.fixture
def fake_download(monkeypatch):
    state = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **k: dict(state))
    return state


def test_imagenet_weights_transfer_unchanged(fake_download):
    model = get_segmentation_model(num_classes=3, encoder_weights="imagenet")
    encoder_state = model.encoder.state_dict()
    assert all(torch.equal(encoder_state[k], v) for k, v in fake_download.items() if not k.startswith("fc."))
    grey = get_segmentation_model(num_classes=3, encoder_weights="imagenet", in_channels=1)
    torch.testing.assert_close(grey.encoder.conv1.weight, fake_download["conv1.weight"].sum(1, keepdim=True))
    with torch.no_grad():
        assert grey.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_imagenet_weights_offline_error(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="Without internet access.*resnet18-"):
        get_segmentation_model(num_classes=3, encoder_weights="imagenet")


def test_registration_is_idempotent():
    first = register_smp_encoders()
    assert register_smp_encoders() == first
    assert {"circular-resnet18", "mass-resnet34", "aps-resnet50"} <= set(first)
    assert set(first) <= set(smp_encoders.get_encoder_names())
    assert "mass-resnet18-lpf3" in register_smp_encoders("LPF3")
    entry = smp_encoders.encoders["mass-resnet18"]
    assert entry["encoder"] is EquivariantResNetEncoder and entry["params"]["method"] == "mass"


def test_registration_refuses_a_conflicting_name(monkeypatch):
    monkeypatch.setitem(smp_encoders.encoders, "aps-resnet34", dict(smp_encoders.encoders["resnet34"]))
    with pytest.raises(ValueError, match="aps-resnet34"):
        register_smp_encoders()


def test_convert_deeplabv3plus_with_smp_built_model():
    register_smp_encoders()
    torch.manual_seed(0)
    original = smp.DeepLabV3Plus("mass-resnet18", encoder_weights=None, classes=4).eval()
    model = convert_deeplabv3plus(original)
    assert isinstance(original.decoder.up, torch.nn.Upsample)
    assert isinstance(model.decoder.up, FrameAlignedUpsample) and model.decoder.up.encoder is model.encoder
    error, agreement = _equivariance(model, torch.randn(1, 3, 64, 64), [(3, 5)])
    assert error < 1e-5 and agreement == 1.0
    with pytest.raises(TypeError, match="register_smp_encoders"):
        convert_deeplabv3plus(smp.DeepLabV3Plus("resnet18", encoder_weights=None))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "unet"}, "Unknown segmentation arch 'unet'.*deeplabv3plus"),
        ({"encoder": "vgg16"}, "Unknown encoder 'vgg16'.*resnet18"),
        ({"method": "blurpool"}, "Unknown method 'blurpool'.*mass"),
        ({"output_stride": 32}, "output_stride must be 16 or 8"),
        ({"num_classes": 0}, "num_classes"),
        ({"antialias": "lpf9"}, "Unknown antialias"),
        ({"encoder_weights": "SOMETHING"}, "Unknown weights"),
        ({"classes": 4}, "sets classes itself"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"num_classes": 3, **kwargs}
    arch = arguments.pop("arch", "deeplabv3plus")
    with pytest.raises(ValueError, match=match):
        get_segmentation_model(arch, **arguments)


def test_bad_input_sizes():
    model = _model("mass")
    with pytest.raises(ValueError, match=r"70x96 .* total stride 16.*64x96 or 80x96"):
        model(torch.randn(1, 3, 70, 96))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 64, 64))
    os8 = _model("mass", output_stride=8)
    with torch.no_grad():
        assert os8(torch.randn(1, 3, 40, 24)).shape == (1, 5, 40, 24)
    with pytest.raises(ValueError, match="multiples of 8"):
        os8(torch.randn(1, 3, 36, 24))

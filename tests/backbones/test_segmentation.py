"""Segmentation: smp's CNN decoders with any convertible encoder, exactly equivariant.

The contract covers the must-be-exact matrix of decoders x encoders x {MASS, APS} x {no
anti-aliasing, LPF-3}: random shifts of a non-square input and every shift of one small
input (its sides are the total stride) give label maps and logits that are the shifted
originals, bit for bit; the circular baseline is shown not to be. The conditional decoders
(PSPNet, UPerNet, PAN) are exact at an accepted size and refuse another with a clear error;
MAnet is refused.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from PIL import Image

from mass_lightning import convert, get_segmentation_model
from mass_lightning.backbones.segmentation import EXACT_ARCHS, input_multiple
from mass_lightning.data.paths import data_root
from mass_lightning.errors import ConfigError, ConversionError, InputSizeError
from mass_lightning.testing import assert_shift_equivariant, randomize_norms, tie_images

ENCODERS = ("resnet34", "mobilenet_v2", "efficientnet-b0", "tu-regnety_008")
#: Slim decoders keep the every-shift checks fast; the layers are smp's all the same.
SLIM = {"unet": {"decoder_channels": (32, 16, 16, 16, 16)}, "unetplusplus": {"decoder_channels": (16, 16, 16, 16, 16)},
        "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
        "linknet": {}, "deeplabv3": {"decoder_channels": 32}, "deeplabv3plus": {"decoder_channels": 32}}


def _model(arch: str, encoder: str = "resnet34", method: str = "mass", antialias=None, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_segmentation_model(arch, encoder=encoder, method=method, antialias=antialias, num_classes=3,
                                   **{**SLIM.get(arch, {}), **kwargs})
    return randomize_norms(model).eval()


def _shifts(size: tuple[int, int], count: int, seed: int) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    return [(int(torch.randint(size[0], (), generator=generator)), int(torch.randint(size[1], (), generator=generator)))
            for _ in range(count)]


def _equivariant(model, x: torch.Tensor, shifts) -> bool:
    with torch.inference_mode():
        y = model(x)
        for shift in shifts:
            shifted = model(torch.roll(x, shift, (2, 3)))
            if not torch.equal(shifted, torch.roll(y, shift, (2, 3))):
                return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("antialias", [None, "lpf3"])
@pytest.mark.parametrize("method", ["mass", "aps"])
@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", EXACT_ARCHS)
def test_contract_exact_for_every_decoder_and_encoder(arch, encoder, method, antialias):
    model = _model(arch, encoder, method, antialias)
    multiple = model.conversion.input_multiple
    x = torch.randn(2, 3, multiple[0] * 2, multiple[1] * 3, generator=torch.Generator().manual_seed(1))
    assert _equivariant(model, x, _shifts(tuple(x.shape[-2:]), 3, seed=2)), "random shifts"
    small = torch.randn(1, 3, *multiple, generator=torch.Generator().manual_seed(3))
    assert_shift_equivariant(model, small, list(itertools.product(range(multiple[0]), range(multiple[1]))), chunk=64)


@pytest.mark.parametrize("arch", EXACT_ARCHS)
def test_baseline_is_not_equivariant_but_is_for_multiples_of_the_stride(arch):
    model = _model(arch, method="baseline")
    multiple = model.conversion.input_multiple
    x = torch.randn(2, 3, multiple[0] * 2, multiple[1] * 2, generator=torch.Generator().manual_seed(4))
    assert not _equivariant(model, x, [(1, 0), (3, 5)])
    assert _equivariant(model, x, [(multiple[0], 0), (0, multiple[1])])


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus", "fpn"])
def test_tie_families_give_exactly_shifted_maps(arch):
    """Constant, striped, checkerboard and lattice inputs, whose polyphase norms tie: upsampling
    keeps constant maps exactly constant, so the label maps still shift exactly."""
    model = _model(arch, encoder="resnet18")
    size = (64, 96)
    shifts = [(1, 0), (0, 1), (1, 1)] + _shifts(size, 3, seed=12)
    for kind, image in tie_images(3, size, dense=True).items():
        assert _equivariant(model, image, shifts), kind


def test_argmax_maps_agree_on_every_pixel_under_bf16_autocast():
    model = _model("unet")
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x).argmax(1)
        for shift in [(3, 5), (17, 41)]:
            assert torch.equal(model(torch.roll(x, shift, (2, 3))).argmax(1), torch.roll(y, shift, (1, 2)))


@pytest.mark.parametrize("arch", ["pspnet", "upernet", "pan"])
def test_conditional_decoders_exact_at_accepted_sizes_and_refused_elsewhere(arch):
    model = _model(arch, encoder="resnet18")
    multiple = model.conversion.input_multiple
    assert multiple == (input_multiple(arch),) * 2
    x = torch.randn(1, 3, multiple[0], multiple[1] * 2, generator=torch.Generator().manual_seed(5))
    assert _equivariant(model, x, _shifts(tuple(x.shape[-2:]), 2, seed=6) + [(1, 1)])
    bad = multiple[0] + 32
    with pytest.raises(InputSizeError, match=rf"not a multiple of {multiple[0]}x{multiple[1]}"):
        model(torch.randn(1, 3, bad, multiple[1]))


def test_manet_is_refused_with_the_reason():
    with pytest.raises(ConversionError, match="decoder.center.*positions"):
        get_segmentation_model("manet", encoder="resnet18", num_classes=3)


def test_pyramid_pooling_needs_an_accepted_probe():
    with pytest.raises(ConversionError, match=r"bins tile the map"):
        convert(smp.PSPNet("resnet18", encoder_weights=None, classes=3), example_input=torch.randn(1, 3, 64, 64))


def test_any_smp_model_converted_by_hand_is_the_factory_model():
    """convert(smp.Unet(...)) gives what get_segmentation_model builds, also from zero-padded weights."""
    torch.manual_seed(0)
    plain = randomize_norms(smp.Unet("resnet34", encoder_weights=None, classes=3, decoder_channels=(32, 16, 16, 16, 16)))
    ours = convert(plain.eval(), example_input=torch.randn(2, 3, 64, 96))
    factory = _model("unet")
    factory.load_state_dict(plain.state_dict())  # a model trained with zero padding: the weight transfer
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.equal(ours(x), factory(x))
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert _equivariant(ours, x, [(7, 11)])


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus"])
def test_state_dict_keys_are_smps(arch):
    ours = _model(arch, encoder="resnet18").state_dict()
    theirs = smp.create_model(arch, encoder_name="resnet18", encoder_weights=None, classes=3,
                              **SLIM.get(arch, {})).state_dict()
    assert ours.keys() == theirs.keys()


def _camvid_crop() -> torch.Tensor:
    folder = data_root() / "camvid" / "val"
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not images:
        pytest.skip(f"CamVid not found under {folder} (set MASS_LIGHTNING_DATA).")
    pixels = np.asarray(Image.open(images[0]).convert("RGB"), dtype=np.float32) / 255.0
    top = (pixels.shape[0] - 352) // 2
    image = torch.from_numpy(pixels[top: top + 352, :480]).permute(2, 0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return ((image - mean.view(3, 1, 1)) / std.view(3, 1, 1)).unsqueeze(0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus"])
def test_real_camvid_photo(arch):
    x = _camvid_crop()
    model = _model(arch, encoder="resnet18")
    assert _equivariant(model, x, [(5, 11)] + _shifts((352, 480), 1, seed=7))
    baseline = _model(arch, encoder="resnet18", method="baseline")
    assert not _equivariant(baseline, x, [(5, 11)])


def test_bad_arguments():
    for kwargs, match in [({"arch": "segformer2"}, "Unknown segmentation arch"),
                          ({"encoder": "vgg999"}, "Unknown encoder"),
                          ({"method": "blurpool"}, "Unknown method"),
                          ({"output_stride": 32}, "output_stride must be 16 or 8"),
                          ({"arch": "unet", "output_stride": 16}, "deeplabv3 and deeplabv3plus only"),
                          ({"num_classes": 0}, "num_classes"),
                          ({"classes": 4}, "sets classes itself")]:
        arguments = {"num_classes": 3, **kwargs}
        arch = arguments.pop("arch", "deeplabv3plus")
        with pytest.raises(ConfigError, match=match):
            get_segmentation_model(arch, **arguments)


def test_bad_input_sizes():
    model = _model("deeplabv3plus", encoder="resnet18")
    with pytest.raises(InputSizeError, match=r"70x96 is not a multiple of 16x16.*64 or 80"):
        model(torch.randn(1, 3, 70, 96))
    with pytest.raises(InputSizeError, match="3 input channels"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(InputSizeError, match="4-D input"):
        model(torch.randn(3, 64, 64))

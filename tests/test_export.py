"""ONNX and torch.export round trips: the exported graph is exactly equivariant in its runtime.

onnxruntime runs its own kernels, so equivariance is checked inside onnxruntime (shifted
inputs give bit-identical logits, or exactly shifted maps) on natural images and on tie
families, and agreement with PyTorch to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mass_lightning import convert, get_segmentation_model
from mass_lightning.data import data_root
from mass_lightning.errors import ConfigError, InputSizeError
from mass_lightning.export import check_format, check_onnx, example_input, export_onnx, export_program
from mass_lightning.testing import build, randomize_norms, tie_images

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def random_shifts(height: int, width: int, count: int, seed: int) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    return [(int(torch.randint(height, (1,), generator=generator)), int(torch.randint(width, (1,), generator=generator)))
            for _ in range(count)]  # fmt: skip


def camvid_crops(height: int, width: int, count: int = 2) -> list[torch.Tensor]:
    """Normalised centre crops of the first CamVid validation photos (skips when CamVid is absent)."""
    folder = data_root() / "camvid" / "val"
    files = sorted(folder.glob("*.jpg"))[:count] if folder.is_dir() else []
    if not files:
        pytest.skip(f"CamVid not found under {folder} (set MASS_LIGHTNING_DATA).")
    crops = []
    for file in files:
        pixels = torch.from_numpy(np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255.0)
        top, left = (pixels.shape[0] - height) // 2, (pixels.shape[1] - width) // 2
        image = pixels[top : top + height, left : left + width].permute(2, 0, 1)
        crops.append(((image - MEAN) / STD).unsqueeze(0))
    return crops


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return convert(randomize_norms(build("resnet18")), method="mass").eval()


def test_classifier_round_trip_is_exact_in_onnxruntime(resnet18, tmp_path, single_thread):
    inputs = camvid_crops(96, 128)
    path = export_onnx(resnet18, inputs[0], tmp_path / "resnet18.onnx")
    check = check_onnx(path, resnet18, inputs, shifts=[(1, 0), (0, 1), *random_shifts(96, 128, 3, seed=1)])
    assert check.ok, check.failures
    assert set(check.equivariant) >= {"input 0", "input 1", *tie_images(3, (96, 128))}
    assert check.max_difference < 1e-3


def test_the_check_catches_an_unconverted_model(tmp_path, single_thread):
    torch.manual_seed(0)
    baseline = randomize_norms(build("resnet18")).eval()
    inputs = camvid_crops(64, 64, count=1)
    path = export_onnx(baseline, inputs[0], tmp_path / "baseline.onnx")
    check = check_onnx(path, baseline, inputs, ties=False)
    assert check.failures == ["input 0"]


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet"])
def test_segmenter_round_trip_is_exact_in_onnxruntime(arch, tmp_path, single_thread):
    torch.manual_seed(0)
    model = randomize_norms(get_segmentation_model(arch, encoder="resnet18", num_classes=5, encoder_weights=None)).eval()
    inputs = camvid_crops(96, 128, count=1)
    path = export_onnx(model, inputs[0], tmp_path / f"{arch}.onnx")
    check = check_onnx(path, model, inputs, shifts=[(1, 3), *random_shifts(96, 128, 2, seed=2)])
    assert check.ok, check.failures
    assert set(check.equivariant) == {"input 0", *tie_images(3, (96, 128), dense=True)}
    assert check.max_difference < 1e-3


def test_program_round_trip(resnet18, tmp_path, single_thread):
    x = camvid_crops(64, 96, count=1)[0]
    path = tmp_path / "resnet18.pt2"
    torch.export.save(export_program(resnet18, x), str(path))
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        reference = program(x)
        torch.testing.assert_close(reference, resnet18(x), rtol=0, atol=1e-4)
        for shift in [(1, 0), (5, 7)]:
            assert torch.equal(program(torch.roll(x, shift, (2, 3))), reference)


def test_bad_arguments(resnet18):
    with pytest.raises(InputSizeError, match="multiple of 32x32"):
        example_input(resnet18, (100, 96))
    with pytest.raises(ConfigError, match="'onnx' or 'pt2'"):
        check_format("tflite")
    assert example_input(resnet18, (64, 96), batch=2).shape == (2, 3, 64, 96)

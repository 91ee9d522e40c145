"""Backbone registry, weights loading, and the registry-wide exactness contract.

Every registered backbone x {mass, aps} x {no antialias, lpf3}, random init, eval mode:
logits agree to float tolerance and argmax predictions are identical under every circular
shift of a small input and under random shifts of a larger non-square one. The same
backbones with ``method="baseline"`` are shown *not* to be consistent, so the test can fail.
"""

from __future__ import annotations

import itertools
import urllib.error

import pytest
import torch
from torch import nn

from mass_lightning import get_backbone, list_backbones, register_backbone
from mass_lightning.backbones import load_checkpoint, registry
from mass_lightning.errors import ConfigError

# Every shift of a (size x size) input: 16x16 for the CIFAR ResNets (total stride <= 8),
# 32x32 for the ImageNet models (1024 shifts, every residue of their total stride 32).
SMALL_SIZE = {"resnet20": 16, "resnet56": 16, "cifar_resnet18": 16}
LARGE_SIZE = (64, 96)


def total_stride(model: nn.Module) -> int:
    return model.conversion.input_multiple[0]


def predict(model: nn.Module, batch: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(part) for part in batch.split(chunk)])


def consistent_under(model: nn.Module, x: torch.Tensor, shifts, chunk: int = 128) -> None:
    """Each chunk holds the unshifted image first, so reference and shifted copies share one
    batch: kernels may round differently for another batch size (see docs/exactness.md)."""
    for start in range(0, len(shifts), chunk - 1):
        part = shifted_batch(x, [(0, 0)] + shifts[start : start + chunk - 1])
        logits = predict(model, part, chunk)
        assert_consistent(logits[1:], logits[:1])


def shifted_batch(x: torch.Tensor, shifts) -> torch.Tensor:
    return torch.cat([torch.roll(x, s, dims=(2, 3)) for s in shifts])


def assert_consistent(logits: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(logits, reference.expand_as(logits), atol=1e-4 * float(scale), rtol=1e-4)
    assert torch.equal(logits.argmax(-1), reference.argmax(-1).expand(logits.shape[0]))


def test_registry_lists_expected_models():
    names = set(list_backbones())
    assert {"resnet20", "resnet56", "cifar_resnet18", "resnet18", "resnet34", "resnet50", "densenet121",
            "mobilenet_v2", "convnext_tiny", "convnext_large"} <= names


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("method", ["mass", "aps"])
@pytest.mark.parametrize("antialias", [None, "lpf3"])
def test_contract_consistent_under_circular_shifts(name, method, antialias):
    torch.manual_seed(0)
    model = get_backbone(name, method=method, antialias=antialias, num_classes=10).eval()
    stride = total_stride(model)
    size = SMALL_SIZE.get(name, max(stride, 16))
    x = torch.randn(1, 3, size, size)
    shifts = list(itertools.product(range(size), range(size)))
    consistent_under(model, x, shifts)

    big = torch.randn(1, 3, *LARGE_SIZE)
    generator = torch.Generator().manual_seed(1)
    random_shifts = [tuple(int(v) for v in (torch.randint(0, LARGE_SIZE[0], (1,), generator=generator),
                                            torch.randint(0, LARGE_SIZE[1], (1,), generator=generator)))
                     for _ in range(6)]
    consistent_under(model, big, random_shifts)


@pytest.mark.parametrize("name", list_backbones())
def test_contract_baseline_is_not_consistent(name):
    torch.manual_seed(0)
    model = get_backbone(name, method="baseline", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    logits = predict(model, shifted_batch(x, [(0, 0), (1, 0), (0, 1), (1, 1), (3, 7)])).view(5, 2, -1)
    deviation = (logits[1:] - logits[:1]).abs().max() / logits.abs().max()
    assert deviation > 1e-3, f"baseline {name} looks shift-invariant (relative deviation {deviation:.2e})"


def test_register_duplicate_raises():
    @register_backbone("_test_tiny")
    def tiny(*, num_classes: int = 10, weights=None) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    with pytest.raises(ValueError, match="already registered"):
        register_backbone("_test_tiny")(tiny)
    assert "_test_tiny" in list_backbones()


def _tiny(*, num_classes: int = 10, weights=None) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


def test_register_backbone_three_forms(monkeypatch):
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))  # leave the real registry as it was

    @register_backbone
    def _test_bare(*, num_classes: int = 10, weights=None) -> nn.Module:
        return _tiny(num_classes=num_classes)

    @register_backbone("_test_named")
    def build(*, num_classes: int = 10, weights=None) -> nn.Module:
        return _tiny(num_classes=num_classes)

    assert register_backbone("_test_call", _tiny) is _tiny
    assert callable(_test_bare) and callable(build)  # the decorators return the builder unchanged
    for name in ("_test_bare", "_test_named", "_test_call"):
        assert name in list_backbones()
        assert get_backbone(name, num_classes=3)(torch.randn(1, 3, 8, 8)).shape == (1, 3)


def test_register_backbone_fails_loudly(monkeypatch):
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    with pytest.raises(ConfigError, match="model instance"):
        register_backbone("_test_instance", _tiny())
    with pytest.raises(ConfigError, match="non-empty string"):
        register_backbone(123)
    with pytest.raises(ConfigError, match="lambda"):
        register_backbone(lambda **kwargs: _tiny())
    with pytest.raises(ConfigError, match="no second argument"):
        register_backbone(_tiny, "_test_swapped")
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("resnet20", _tiny)


def test_unknown_names_and_weights():
    with pytest.raises(ValueError, match="Unknown backbone 'resnet999'.*resnet20"):
        get_backbone("resnet999")
    with pytest.raises(ValueError, match="Unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        get_backbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="no published pretrained weights"):
        get_backbone("resnet20", weights="DEFAULT")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        get_backbone("resnet20", weights="/nonexistent/missing.ckpt")


def test_offline_download_error_is_clear(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="Could not download.*local path"):
        get_backbone("resnet18", weights="IMAGENET1K_V1")


@pytest.mark.parametrize("wrap", ["plain", "lightning"])
def test_checkpoint_path_round_trip(tmp_path, wrap):
    torch.manual_seed(0)
    model = get_backbone("resnet20", method="baseline", padding="zeros", num_classes=10)
    state = model.state_dict()
    if wrap == "lightning":
        state = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "weights.ckpt"
    torch.save(state, path)
    mass = get_backbone("resnet20", method="mass", num_classes=10, weights=str(path)).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(mass.state_dict()[key], value)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="Could not read checkpoint"):
        load_checkpoint(mass, corrupt)
    with pytest.raises(ValueError, match="does not match the model"):
        get_backbone("resnet56", num_classes=10, weights=str(path))

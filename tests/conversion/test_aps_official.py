"""``method="aps_official"``: APS placed as the official APS code places it (docs/aps_official.md).

Structure: a strided ``conv -> BN -> activation`` chain runs its conv at stride 1, BN and the
activation at full resolution, and selects the polyphase component after the activation; the
block's shortcut takes the component of the main branch's choice. Exactness: the converted
networks give bit-identical outputs under circular shifts, ties included.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mass_lightning import convert
from mass_lightning.backbones import get_backbone
from mass_lightning.errors import ConversionError
from mass_lightning.layers import select_origin
from mass_lightning.testing import assert_shift_invariant, randomize_norms, tie_images


def _official(model: nn.Module, antialias: str | None = None) -> nn.Module:
    return convert(randomize_norms(model), method="aps_official", antialias=antialias).eval()


def _record_inputs_and_outputs(modules: dict[str, nn.Module]) -> tuple[dict, list]:
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name: str):
        def record(module, args, out):
            seen[name] = (args[0].detach().clone(), out.detach().clone())
        return record

    return seen, [module.register_forward_hook(hook(name)) for name, module in modules.items()]


def _phase(x: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    return torch.stack([x[b, :, oy::2, ox::2] for b, (oy, ox) in enumerate(origin.tolist())])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_selection_sits_after_bn_and_activation_and_the_shortcut_shares_it(arch):
    """Hooks on the first block of layer2: its strided conv now runs at stride 1; the next
    conv sees the phase of relu(bn(conv)) that the exact rule picks on that activation; the
    1x1 shortcut conv's output is that same phase of its stride-1 output."""
    torch.manual_seed(0)
    model = _official(getattr(torchvision.models, arch)(num_classes=10))
    block = model.layer2[0]
    strided_conv, bn, after = ("conv1", "bn1", "conv2") if arch == "resnet18" else ("conv2", "bn2", "conv3")
    assert block.get_submodule(strided_conv).stride == (1, 1)
    seen, handles = _record_inputs_and_outputs({name: block.get_submodule(name)
                                               for name in (strided_conv, bn, after, "downsample.0")})
    x = torch.randn(3, 3, 64, 64)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    bn_in, bn_out = seen[bn]
    assert bn_in.shape[-2:] == seen[strided_conv][0].shape[-2:] == (16, 16)  # BN at full resolution
    activation = F.relu(bn_out)
    origin = select_origin(activation, 2)
    assert torch.equal(seen[after][0], _phase(activation, origin))
    shortcut_in, shortcut_out = seen["downsample.0"]
    conv = block.downsample[0]
    with torch.no_grad():
        dense = F.conv2d(shortcut_in, conv.weight, conv.bias)  # the 1x1 shortcut at stride 1
    for b in range(x.shape[0]):
        errors = [float((shortcut_out[b] - dense[b, :, oy::2, ox::2]).abs().max())
                  for oy, ox in itertools.product(range(2), range(2))]
        assert min(range(4), key=errors.__getitem__) == origin[b, 0] * 2 + origin[b, 1], errors
        assert min(errors) < 1e-5


def test_cifar_resnet20_strided_convs_run_at_stride_1():
    model = get_backbone("resnet20", method="aps_official", num_classes=10).eval()
    strided = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
               and m.in_channels != m.out_channels]
    assert strided and all(m.stride == (1, 1) for m in strided)  # the strided convs run at stride 1


@pytest.mark.parametrize(("name", "antialias"), [("resnet20", None), ("resnet20", "lpf3"), ("resnet18", None)])
def test_every_shift_residue_and_random_shifts_are_exact(name, antialias):
    torch.manual_seed(1)
    model = get_backbone(name, method="aps_official", antialias=antialias, num_classes=10)
    model = randomize_norms(model).eval()
    size = 32
    x = torch.randn(1, 3, size, size)
    shifts = list(itertools.product(range(8), range(8)))  # every residue of the total stride
    shifts += [tuple(torch.randint(0, size, (2,)).tolist()) for _ in range(16)]
    assert_shift_invariant(model, x, shifts)


def test_circular_baseline_is_not_invariant_on_the_same_data():
    """Negative control for the exactness tests above: the same network with phase-0
    subsampling changes its output under shifts."""
    torch.manual_seed(1)
    model = randomize_norms(get_backbone("resnet20", method="baseline", num_classes=10)).eval()
    with pytest.raises(AssertionError, match="differs from the unshifted one"):
        assert_shift_invariant(model, torch.randn(1, 3, 32, 32), [(0, 1), (1, 0), (1, 1)])


def test_ties_and_batch_size_one_are_exact():
    model = _official(torchvision.models.resnet18(num_classes=10))
    for image in tie_images(3, (64, 64)).values():
        assert_shift_invariant(model, image, [(0, 1), (1, 1), (17, 40)], chunk=1)


def test_bf16_autocast_is_exact():
    torch.manual_seed(2)
    model = randomize_norms(get_backbone("resnet20", method="aps_official", num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_shift_invariant(model, x, [(0, 1), (1, 0), (5, 3), (31, 30)])


def test_ddac_is_refused_with_the_reason():
    with pytest.raises(ConversionError, match="official APS code has no DDAC"):
        convert(torchvision.models.resnet18(), method="aps_official", antialias="ddac3")

"""The conversion keeps what every layer and network computes, only made circular.

* Module level: with ``method="baseline"`` (phase-0 sampling), every replaced module applied
  to its input ``x`` equals the original module applied to ``x`` tiled 3x3, centre crop.
  Covered module types: ``nn.Conv2d`` (strided, dilated, grouped, depthwise), timm's
  ``Conv2dSame``, ``StdConv2d``, ``ScaledStdConv2dSame``, ``MaxPool2dSame``, parametrized
  and LoRA-style convs, ``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.ConvTranspose2d``,
  ``nn.GroupNorm`` and ``nn.InstanceNorm2d`` (functional replacements are tested with
  their functions, in ``tests/layers``).
* Network level: in eval mode, for models without spatial statistics inside (no
  squeeze-excitation, GroupNorm or attention pooling), the converted network's last feature
  map on ``x`` equals the original's on ``x`` tiled periodically (enough tiles to cover the
  receptive field), centre crop, to 1e-3 of its scale: the original runs on a much larger
  input, where convolutions sum in another order, and the rounding differences grow with
  depth (about 1e-6 per layer).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.utils import parametrizations

from mass_lightning import convert
from mass_lightning.conversion.spatial import Spatial
from mass_lightning.conversion.tracing import GraphRun
from mass_lightning.testing import build, randomize_norms


def tile(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.repeat(1, 1, k, k)


def centre(y: torch.Tensor, k: int, size: tuple[int, int]) -> torch.Tensor:
    """The middle tile of a map computed from a ``k x k`` tiling, at that map's resolution."""
    height, width = y.shape[-2] // k, y.shape[-1] // k
    del size
    return y[..., (k // 2) * height:(k // 2 + 1) * height, (k // 2) * width:(k // 2 + 1) * width]


class LoRAConv2d(nn.Conv2d):
    """A user's conv with a forward of its own (a low-rank update of the weight)."""

    def __init__(self, *args, rank: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.down = nn.Parameter(torch.randn(rank, self.weight[0].numel()) * 0.1)
        self.up = nn.Parameter(torch.randn(self.out_channels, rank) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight + (self.up @ self.down).view_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Zoo(nn.Module):
    """One of every replaceable module type."""

    def __init__(self) -> None:
        super().__init__()
        same = timm.layers.create_conv2d(3, 8, 3, stride=2, padding="same")  # Conv2dSame
        assert type(same).__name__ == "Conv2dSame"
        self.stem = same
        self.std = timm.layers.StdConv2d(8, 8, 3, padding=1)
        self.scaled = timm.layers.ScaledStdConv2dSame(8, 8, 3, stride=1, padding="same")
        self.lora = LoRAConv2d(8, 8, 3, padding=1)
        self.weight_norm = parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=2, dilation=2))
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.grouped = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
        self.max_same = timm.layers.create_pool2d("max", 3, 2, padding="same")
        self.max = nn.MaxPool2d(3, 1, 1)
        self.avg = nn.AvgPool2d(2)
        self.group_norm = nn.GroupNorm(4, 16)
        self.instance_norm = nn.InstanceNorm2d(16, affine=True)
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)
        self.linear = nn.Linear(8, 8)
        self.space_to_depth = timm.layers.SpaceToDepth(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lora(self.scaled(self.std(self.stem(x))))
        x = self.grouped(self.depthwise(self.weight_norm(x)))
        x = self.avg(self.max(self.max_same(x)))
        x = self.up(self.instance_norm(self.group_norm(x)))
        x = self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.space_to_depth(x)


def _inputs_of(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    def record(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, args[0])

        return hook

    handles = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("source", ["zoo", "resnet50", "densenet121", "timm/tf_efficientnet_b0",
                                    "timm/resnetv2_50x1_bit", "timm/dm_nfnet_f0", "timm/tresnet_m"])
def test_every_replaced_module_is_the_original_made_circular(source):
    torch.manual_seed(0)
    model = randomize_norms(Zoo()).eval() if source == "zoo" else build(source)
    converted = convert(model, method="baseline").eval()
    replaced = converted.conversion.sources
    assert replaced, "nothing was replaced"
    probe = converted.conversion.probe_shape
    inputs = _inputs_of(converted, torch.randn(1, *probe[1:]))
    checked = set()
    for path, original in replaced.items():
        new = converted.get_submodule(path)
        x = inputs.get(path)
        if x is None or x.dim() != 4:
            continue  # replaced by a function in the graph (a global pool), or not run in eval mode
        tiled = tile(x, 3)
        folded = _folded_padding(original, new)
        if folded:  # a ZeroPad2d in front was folded into this layer: pad the tiled input like it
            tiled = F.pad(tiled, (folded[1], folded[1], folded[0], folded[0]))
        with torch.no_grad():
            ours = new(x)
            reference = centre(original(tiled), 3, tuple(x.shape[-2:]))
        scale = reference.abs().max().clamp_min(1e-6)
        assert ours.shape == reference.shape, path
        assert (ours - reference).abs().max() <= 1e-5 * scale, f"{path} ({type(original).__name__})"
        checked.add(type(original).__name__)
    if source == "zoo":
        assert {"Conv2d", "Conv2dSame", "StdConv2d", "ScaledStdConv2dSame", "LoRAConv2d", "ParametrizedConv2d",
                "MaxPool2dSame", "MaxPool2d", "AvgPool2d", "GroupNorm", "InstanceNorm2d",
                "ConvTranspose2d"} <= checked, checked


def _folded_padding(original: nn.Module, new: nn.Module) -> tuple[int, int] | None:
    before, after = getattr(original, "padding", None), getattr(new, "padding", None)
    if isinstance(before, str) or isinstance(after, str) or before is None or type(original).__name__.endswith("Same"):
        return None
    pair = lambda p: (p, p) if isinstance(p, int) else tuple(p)  # noqa: E731
    extra = tuple(a - b for a, b in zip(pair(after), pair(before)))
    return extra if any(extra) else None


def _last_map(converted) -> str:
    """Name of the last full-stride feature map before the model pools it away."""
    names = [n.name for n in converted.conversion.graphs["eval"].nodes
             if isinstance(n.meta.get("mass_info"), Spatial) and n.meta["mass_info"].flat is None
             and n.meta["mass_info"].h is not None]
    return names[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name,tiles", [("resnet18", 9), ("resnet50", 9), ("mobilenet_v2", 9), ("densenet121", 13),
                                        ("regnet_x_400mf", 9), ("convnext_tiny", 9), ("timm/resnet18d", 9),
                                        ("timm/hrnet_w18_small", 9), ("timm/dla34", 11)])
def test_network_computes_the_original_on_a_periodic_input(name, tiles):
    model = build(name)
    converted = convert(model, method="baseline").eval()
    node = _last_map(converted)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    source = converted.source_model().eval()
    with torch.no_grad():
        ours = GraphRun(converted, converted.conversion.graphs["eval"]).values(x)
        names = {n.name: n for n in converted.conversion.graphs["eval"].nodes}
        original = GraphRun(source, converted.conversion.source_graphs["eval"]).values(tile(x, tiles))
        source_names = {n.name: n for n in converted.conversion.source_graphs["eval"].nodes}
    ours_value = ours[names[node]]
    reference = centre(original[source_names[node]], tiles, tuple(ours_value.shape[-2:]))
    scale = reference.abs().max()
    assert ours_value.shape == reference.shape
    assert (ours_value - reference).abs().max() <= 1e-3 * scale, f"{name} at {node}"

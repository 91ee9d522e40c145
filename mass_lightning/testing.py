"""Tools to test exactness: the model zoo, randomized norms, bitwise shift checks.

The zoo is what the conversion is tested on: every torchvision classifier and timm CNN
families (:data:`TIMM_MODELS`). :func:`build` makes a model with random weights and
*randomized norm layers* (random BatchNorm/GroupNorm affine parameters and running
statistics, as a trained network has; a fresh init hides misaligned branches).

:func:`assert_shift_invariant` and :func:`assert_shift_equivariant` compare outputs bit
for bit. Each shifted batch is compared with a reference batch of the same shape, so
every sample is computed by the same kernels at the same batch position (CPU matrix
products round differently by row position; see ``docs/exactness.md``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: timm models, at least one per family (module), smallest variants first. The names the
#: model-agnostic issue lists are all here (mixnet_s, hrnet_w18_small, tresnet_m, fbnetv3_b,
#: efficientnetv2_rw_t, nf/dm_nfnet, resnetv2 BiT, tf_efficientnet with "same" padding).
TIMM_MODELS: dict[str, str] = {
    "resnet18d": "resnet",
    "resnetblur18": "resnet",
    "ecaresnet26t": "resnet",
    "seresnext26d_32x4d": "resnet",
    "regnetx_002": "regnet",
    "regnety_002": "regnet",
    "repvgg_a0": "byobnet",
    "gernet_s": "byobnet",
    "mobileone_s0": "byobnet",
    "efficientnet_b0": "efficientnet",
    "mixnet_s": "efficientnet",
    "tf_mixnet_s": "efficientnet",
    "tf_efficientnet_b0": "efficientnet",
    "efficientnetv2_rw_t": "efficientnet",
    "efficientnet_b0_gn": "efficientnet",
    "mnasnet_small": "efficientnet",
    "spnasnet_100": "efficientnet",
    "tinynet_e": "efficientnet",
    "hardcorenas_a": "hardcorenas",
    "mobilenetv3_small_050": "mobilenetv3",
    "fbnetv3_b": "mobilenetv3",
    "lcnet_050": "mobilenetv3",
    "mobilenetv4_conv_small": "mobilenetv3",
    "hrnet_w18_small": "hrnet",
    "nf_resnet26": "nfnet",
    "nf_regnet_b0": "nfnet",
    "dm_nfnet_f0": "nfnet",
    "resnetv2_50x1_bit": "resnetv2",
    "tresnet_m": "tresnet",
    "cspresnet50": "cspnet",
    "cs3darknet_focus_s": "cspnet",
    "darknet17": "cspnet",
    "dla34": "dla",
    "dla46_c": "dla",
    "dpn48b": "dpn",
    "densenet121": "densenet",
    "res2net50_14w_8s": "res2net",
    "resnest14d": "resnest",
    "ghostnet_050": "ghostnet",
    "ghostnetv2_100": "ghostnet",
    "rexnet_100": "rexnet",
    "skresnet18": "sknet",
    "selecsls42b": "selecsls",
    "ese_vovnet19b_dw": "vovnet",
    "xception41": "xception_aligned",
    "legacy_seresnet18": "senet",
    "convnext_atto": "convnext",
    "hgnetv2_b0": "hgnet",
    "repghostnet_050": "repghost",
    "rdnet_tiny": "rdnet",
    "fasternet_t0": "fasternet",
    "starnet_s1": "starnet",
    "mambaout_femto": "mambaout",
    "inception_next_atto": "inception_next",
    "repvit_m0_9": "repvit",
    "lcnetv2_small": "lcnetv2",
    "cspnext_tiny": "cspnext",
    # refused, each for its reason
    "inception_v3": "inception_v3",
    "legacy_xception": "xception",
    "vgg11": "vgg",
    "gcresnet33ts": "byobnet",
    "levit_128s": "levit",
}

#: Models that cannot be made exact, with a fragment of the reason and of the module path.
REFUSED: dict[str, tuple[str, str]] = {
    # torchvision
    "alexnet": ("valid (unpadded)", "features.0"),
    "squeezenet1_0": ("valid (unpadded)", "features.0"),
    "squeezenet1_1": ("valid (unpadded)", "features.0"),
    "inception_v3": ("valid (unpadded)", "Conv2d_1a_3x3"),
    "maxvit_t": ("mixing positions", "window_attention"),
    **{f"vgg{d}{bn}": ("fixed 7x7 grid", "avgpool") for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    **{name: ("class token", "<top level>") for name in ("vit_b_16", "vit_b_32", "vit_h_14", "vit_l_16", "vit_l_32")},
    **{name: ("shifted_window_attention", "features.1.0.attn")
       for name in ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")},
    # timm
    "timm/inception_v3": ("valid (unpadded)", "Conv2d_1a_3x3"),
    "timm/legacy_xception": ("valid (unpadded)", "conv1"),
    "timm/vgg11": ("different branches for inputs of different sizes", "pre_logits"),
    "timm/gcresnet33ts": ("along a spatial axis", "attn"),
    "timm/levit_128s": ("mixing positions", "attn"),
}

#: One model per family for the slower checks (bf16 autocast, forced ties).
FAMILY_REPRESENTATIVES: tuple[str, ...] = (
    "resnet18", "regnet_y_400mf", "densenet121", "mobilenet_v3_small", "efficientnet_b0", "shufflenet_v2_x0_5",
    "googlenet", "mnasnet0_5", "convnext_tiny", "timm/mixnet_s", "timm/hrnet_w18_small", "timm/tresnet_m",
    "timm/nf_regnet_b0", "timm/resnetv2_50x1_bit", "timm/cs3darknet_focus_s", "timm/dla34",
)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random affine parameters and running statistics in every BatchNorm/GroupNorm layer."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and \
                    getattr(module, "weight", None) is not None:
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.5, 0.5)
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                uniform(module.running_mean, -0.5, 0.5)
                uniform(module.running_var, 0.5, 2.0)
    return model


def build(name: str, seed: int = 0) -> nn.Module:
    """A zoo model by name (``"timm/<name>"`` for timm), random weights, randomized norms, eval mode."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.startswith("timm/"):
            import timm

            model = timm.create_model(name[len("timm/"):], pretrained=False)
        else:
            import torchvision

            model = torchvision.models.get_model(name)
    return randomize_norms(model, seed).eval()


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    return [f"timm/{name}" for name in TIMM_MODELS]


def _batches(x: Tensor, shifts: Sequence[tuple[int, int]], chunk: int):
    """``(shifts, reference batch, shifted batch)`` per chunk of shifts of the single image ``x``."""
    for start in range(0, len(shifts), chunk):
        part = list(shifts[start:start + chunk])
        reference = x.expand(len(part), *x.shape[1:]).contiguous()
        shifted = torch.cat([torch.roll(x, s, dims=(-2, -1)) for s in part])
        yield part, reference, shifted


def assert_shift_invariant(model: nn.Module, x: Tensor, shifts: Sequence[tuple[int, int]], chunk: int = 64) -> None:
    """Every shift of the one-image batch ``x`` gives bit-identical outputs (a classifier)."""
    if x.shape[0] != 1:
        raise ValueError("assert_shift_invariant takes a batch of one image.")
    with torch.inference_mode():
        cache: dict[int, Tensor] = {}
        for part, reference, shifted in _batches(x, shifts, chunk):
            expected = cache.setdefault(len(part), model(reference))
            got = model(shifted)
            for i, shift in enumerate(part):
                if not torch.equal(got[i], expected[i]):
                    error = float((got[i] - expected[i]).abs().max())
                    raise AssertionError(f"output for shift {shift} differs from the unshifted one (max {error:.3g})")


def assert_shift_equivariant(model: nn.Module, x: Tensor, shifts: Sequence[tuple[int, int]], chunk: int = 16) -> None:
    """Every shift of the one-image batch ``x`` gives the same shift of the output, bit for bit
    (a dense predictor whose output has the input's size)."""
    if x.shape[0] != 1:
        raise ValueError("assert_shift_equivariant takes a batch of one image.")
    with torch.inference_mode():
        cache: dict[int, Tensor] = {}
        for part, reference, shifted in _batches(x, shifts, chunk):
            expected = cache.setdefault(len(part), model(reference))
            got = model(shifted)
            for i, shift in enumerate(part):
                if not torch.equal(got[i], torch.roll(expected[i], shift, dims=(-2, -1))):
                    error = float((got[i] - torch.roll(expected[i], shift, dims=(-2, -1))).abs().max())
                    raise AssertionError(f"output for shift {shift} is not the shifted output (max {error:.3g})")


def tie_images(channels: int, size: tuple[int, int], dense: bool = False) -> dict[str, Tensor]:
    """Inputs whose polyphase statistics tie, one ``(1, channels, *size)`` image each.

    Constant maps, stripes, checkerboards, a tiled random 4x4 cell, a lattice of a cell and
    its mirror image (period 4x8) and a point-symmetric 4x4 lattice; for invariant outputs
    (``dense=False``) also a mirror lattice of odd period (3x6). The origin rule cannot break
    these ties by content, so they test that the tie-breaking keeps outputs exact. A dense
    output cannot be exact on an input that repeats with a period the stride does not divide
    (the odd lattice at sizes that are multiples of 3: ``docs/exactness.md``, section 3), so
    ``dense=True`` leaves it out.
    """
    height, width = size
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    cols = torch.arange(width).view(1, -1).expand(height, width)

    def tile(cell: Tensor) -> Tensor:
        return cell.repeat(1, -(-height // cell.shape[1]), -(-width // cell.shape[2]))[:, :height, :width]

    def random_cell(rows: int, cols: int, seed: int) -> Tensor:
        return torch.randn(channels, rows, cols, generator=torch.Generator().manual_seed(seed))

    mirrored = random_cell(4, 4, 9)
    corner = random_cell(2, 2, 10)
    half = torch.cat([corner, corner.flip(-1)], -1)
    images = {
        "constant": torch.full((channels, height, width), 0.7),
        "stripes": ((cols % 2) * 2.0 - 1.0).expand(channels, height, width),
        "checkerboard": (((rows + cols) % 2) * 2.0 - 1.0).expand(channels, height, width),
        "tiled random cell": tile(random_cell(4, 4, 8)),
        "mirror lattice": tile(torch.cat([mirrored, mirrored.flip(-1)], -1)),
        "point-symmetric lattice": tile(torch.cat([half, half.flip(-2)], -2)),
    }
    if not dense:
        odd = random_cell(3, 3, 7)
        images["odd-period mirror lattice"] = tile(torch.cat([odd, odd.flip(-1)], -1))
    return {name: image.unsqueeze(0).contiguous() for name, image in images.items()}

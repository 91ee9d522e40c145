"""Exactly shift-equivariant segmentation models: segmentation-models-pytorch (smp), converted.

:func:`get_segmentation_model` builds an smp model with a plain smp encoder (any of smp's
encoders, or a timm one through the ``"tu-"`` prefix) and converts it with
:func:`mass_lightning.convert`. The conversion works on the whole model's dataflow: every
skip connection is aligned by the phases the encoder recorded, every upsampling undoes the
origins of the levels it skips, and the decoder's GroupNorm statistics and image pooling
become order-independent. It is the same conversion a user gets from
``convert(smp.Unet(...))``; ``state_dict`` keys stay smp's, so smp, torchvision and timm
weights load unchanged. See ``docs/segmentation.md`` for the design and the per-decoder
rules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..conversion import METHODS, convert
from ..errors import ConfigError

__all__ = [
    "EXACT_ARCHS",
    "SEGMENTATION_ARCHS",
    "get_segmentation_model",
    "input_multiple",
    "register_smp_encoders",
]

SEGMENTATION_ARCHS: tuple[str, ...] = (
    "unet", "unetplusplus", "fpn", "linknet", "deeplabv3", "deeplabv3plus", "pspnet", "upernet", "pan", "manet",
)
"""smp architectures :func:`get_segmentation_model` accepts (``manet`` is refused: attention)."""

EXACT_ARCHS: tuple[str, ...] = ("unet", "unetplusplus", "fpn", "linknet", "deeplabv3", "deeplabv3plus")
"""Architectures that are exact at every size the encoder's total stride divides."""

_DEEPLAB = ("deeplabv3", "deeplabv3plus")
_PYRAMID_BINS = {"pspnet": (1, 2, 3, 6), "upernet": (1, 2, 3, 6)}
_RESERVED_SMP_KWARGS = ("encoder_name", "encoder_weights", "encoder_output_stride", "in_channels", "classes")


def input_multiple(arch: str, output_stride: int | None = None, encoder_depth: int = 5) -> int:
    """The number that the height and width of inputs to ``arch`` must be multiples of.

    * DeepLabV3/V3+: the encoder's output stride, 16 or 8 (the dilated stages keep the size);
    * PSPNet (encoder depth 3 by default, total stride 8) and UPerNet (stride 32): the
      pyramid pooling splits the deepest map into 1, 2, 3 and 6 bins, so the deepest map
      must be a multiple of 6;
    * PAN: smp runs its encoder at output stride 16, and the feature pyramid attention halves
      that map three more times (128);
    * the others: ``2 ** encoder_depth`` (32).
    """
    arch = arch.lower()
    if arch in _DEEPLAB:
        return output_stride or 16
    if arch == "pspnet":
        return 2 ** min(encoder_depth, 3) * math.lcm(*_PYRAMID_BINS[arch])
    if arch == "upernet":
        return 2 ** encoder_depth * math.lcm(*_PYRAMID_BINS[arch])
    if arch == "pan":
        return 16 * 8
    return 2 ** encoder_depth


def get_segmentation_model(
    arch: str = "deeplabv3plus",
    *,
    encoder: str = "resnet18",
    method: str = "mass",
    antialias: str | None = None,
    num_classes: int,
    output_stride: int | None = None,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **smp_kwargs: Any,
) -> nn.Module:
    """An exactly shift-equivariant smp segmentation model.

    Args:
        arch: one of :data:`SEGMENTATION_ARCHS` (case-insensitive): ``"unet"``,
            ``"unetplusplus"``, ``"fpn"``, ``"linknet"``, ``"deeplabv3"``,
            ``"deeplabv3plus"`` (exact at every size the total stride divides), ``"pspnet"``,
            ``"upernet"`` and ``"pan"`` (exact at the sizes :func:`input_multiple` gives).
        encoder: any smp encoder name (``"resnet34"``, ``"mobilenet_v2"``,
            ``"efficientnet-b0"``, ``"tu-regnety_008"``, ...).
        method: ``"mass"``, ``"aps"`` or ``"baseline"`` (circular padding only, phase-0
            subsampling: not equivariant to shifts that the total stride does not divide).
        antialias: ``None``, ``"lpf3"``, ``"ddac3"``, ... for the strided layers.
        num_classes: output channels.
        output_stride: DeepLabV3/V3+ only: 16 (default) or 8 (smp dilates the last stages).
        encoder_weights: ``None`` (random) or an smp weights name such as ``"imagenet"``
            (downloaded by smp when online).
        in_channels: input channels.
        **smp_kwargs: further arguments of the smp model (``decoder_channels``,
            ``decoder_atrous_rates``, ``decoder_aspp_separable``, ...).

    Returns:
        A :class:`~mass_lightning.conversion.ShiftEquivariantModel` whose ``forward`` maps
        :math:`(B, C_{in}, H, W)` to logits :math:`(B, \\text{num\\_classes}, H, W)`.

    Raises:
        ConfigError: a bad argument.
        ConversionError: the architecture cannot be made exact (``"manet"``: attention).

    Example:
        >>> model = get_segmentation_model("unet", encoder="resnet34", num_classes=3).eval()
        >>> model(torch.randn(1, 3, 64, 96)).shape
        torch.Size([1, 3, 64, 96])
    """
    import segmentation_models_pytorch as smp

    key = str(arch).lower()
    if key not in SEGMENTATION_ARCHS:
        raise ConfigError(f"Unknown segmentation arch {arch!r}; choose one of {', '.join(SEGMENTATION_ARCHS)}.")
    if method not in METHODS:
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}.")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive int, got {in_channels!r}.")
    reserved = [k for k in _RESERVED_SMP_KWARGS if k in smp_kwargs]
    if reserved:
        raise ConfigError(f"get_segmentation_model sets {', '.join(reserved)} itself; use encoder, method, "
                          "num_classes, output_stride, encoder_weights and in_channels instead.")
    if key in _DEEPLAB:
        output_stride = 16 if output_stride is None else output_stride
        if output_stride not in (8, 16):
            raise ConfigError(f"output_stride must be 16 or 8 for {arch}, got {output_stride!r}.")
        smp_kwargs["encoder_output_stride"] = output_stride
    elif output_stride is not None:
        raise ConfigError(f"output_stride applies to deeplabv3 and deeplabv3plus only, not to {arch}.")
    if encoder not in smp.encoders.get_encoder_names() and not encoder.startswith("tu-"):
        raise ConfigError(f"Unknown encoder {encoder!r}; use an smp encoder name (see "
                          "segmentation_models_pytorch.encoders.get_encoder_names()) or 'tu-<timm model>'.")
    try:
        model = smp.create_model(key, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels,
                                 classes=num_classes, **smp_kwargs)
    except (OSError, RuntimeError) as error:
        if encoder_weights is None:
            raise
        raise RuntimeError(f"Could not get smp's {encoder_weights!r} weights for the {encoder} encoder ({error}). "
                           "Without internet access, download them elsewhere (smp caches them under "
                           "$TORCH_HOME / the Hugging Face cache) or pass encoder_weights=None.") from error
    except (KeyError, ValueError) as error:
        raise ConfigError(f"smp could not build {arch} with encoder {encoder!r}: {error}") from error
    depth = int(smp_kwargs.get("encoder_depth", 3 if key == "pspnet" else 5))
    multiple = input_multiple(key, output_stride, depth)
    rows, cols = (2, 3) if multiple <= 64 else (1, 2)
    probe = torch.randn(2, in_channels, multiple * rows, multiple * cols, generator=torch.Generator().manual_seed(0))
    return convert(model, method=method, antialias=antialias, example_input=probe)  # type: ignore[arg-type]


def register_smp_encoders(*args: Any, **kwargs: Any) -> None:
    """Removed: an encoder alone cannot make an smp model equivariant.

    The decoder must undo the encoder's origins, so convert the whole model instead:
    ``convert(smp.Unet("resnet34", ...))`` or :func:`get_segmentation_model`.
    """
    raise ConfigError(
        "register_smp_encoders() is gone: a converted encoder alone leaves the decoder misaligned. Build the "
        "plain smp model and convert the whole of it, e.g. mass_lightning.convert(smp.Unet('resnet34', "
        "encoder_weights=None, classes=3)), or use mass_lightning.get_segmentation_model('unet', ...)."
    )

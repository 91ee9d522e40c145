"""Exactly shift-equivariant DeepLabV3+ built with segmentation-models-pytorch (smp).

``smp.DeepLabV3Plus`` is built with one of this project's encoders
(:mod:`~mass_lightning.backbones.smp_encoders`) and then patched:

* every padded conv of the decoder (ASPP, its separable convs, the fusion block) pads
  circularly (:func:`mass_lightning.convert`; dilations larger than the map wrap around);
* ASPP's global-pooling branch broadcasts its ``1 x 1`` map instead of interpolating it;
* the two bilinear upsamplings (ASPP output to the low-level features, and the head to
  the input size) become circular (:func:`~mass_lightning.layers.circular_interpolate`)
  and undo the encoder's origins (:class:`FrameAlignedUpsample`), so the decoder works
  in the input's frame and ``model(roll(x, d)) == roll(model(x), d)`` for every ``d``.

See ``docs/segmentation.md`` for the derivation.
"""

from __future__ import annotations

import copy
import urllib.error
from pathlib import Path
from typing import Any, Literal

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPPPooling
from torch import Tensor, nn

from ..conversion import METHODS, convert
from ..layers import DDAC, circular_interpolate, unshift
from ..layers.polyphase import as_pair
from .smp_encoders import SMP_RESNETS, EquivariantResNetEncoder, register_smp_encoders, smp_encoder_name
from .zoo import resolve_weights

__all__ = [
    "SEGMENTATION_ARCHS",
    "FrameAlignedUpsample",
    "GlobalPoolingBranch",
    "convert_deeplabv3plus",
    "get_segmentation_model",
    "load_encoder_weights",
]

SEGMENTATION_ARCHS: tuple[str, ...] = ("deeplabv3plus",)
"""Architectures :func:`get_segmentation_model` builds."""

_RESERVED_SMP_KWARGS = ("encoder_name", "encoder_weights", "encoder_output_stride", "in_channels", "classes")


class FrameAlignedUpsample(nn.Module):
    """Circular upsampling that moves a decoder map into the frame of a finer encoder level.

    The input is a map at total stride ``S_a`` whose pixel ``i`` sits at input position
    ``S_a * i + phi_a`` (see :class:`~mass_lightning.backbones.smp_encoders.EncoderFrames`).
    It is upsampled by ``r`` with wrap-around borders, then rolled per sample by
    ``(phi_a - phi_b) / S_b`` pixels, where ``S_b = S_a / r``: the result is aligned with
    the encoder's level of stride ``S_b`` (the input itself when ``S_b = 1``). The strides
    are read from the sizes, the offsets from the encoder's latest call.

    Args:
        scale_factor: integer upsampling factor ``r``.
        encoder: the encoder whose frames to follow (not registered as a submodule).
        mode: ``"bilinear"`` (``align_corners=False``) or ``"nearest"``.
        undo_origins: ``False`` for plain circular upsampling (the baseline).

    Shape:
        - Input: :math:`(B, C, h, w)` with ``h`` dividing the encoder input height.
        - Output: :math:`(B, C, h r, w r)`.

    Example:
        >>> model = get_segmentation_model(num_classes=3)
        >>> model.segmentation_head[1]
        FrameAlignedUpsample(scale_factor=(4, 4), mode='bilinear', undo_origins=True)
    """

    def __init__(
        self,
        scale_factor: int | tuple[int, int],
        encoder: EquivariantResNetEncoder,
        mode: Literal["bilinear", "nearest"] = "bilinear",
        undo_origins: bool = True,
    ) -> None:
        super().__init__()
        self.scale_factor = as_pair(scale_factor, "scale_factor")
        self.mode = mode
        self.undo_origins = undo_origins
        self.__dict__["_encoder"] = encoder  # not a submodule: it already belongs to the model

    @property
    def encoder(self) -> EquivariantResNetEncoder:
        return self.__dict__["_encoder"]

    def forward(self, y: Tensor) -> Tensor:
        up = circular_interpolate(y, self.scale_factor, self.mode)
        if not self.undo_origins:
            return up
        return unshift(up, self._shift(y))

    def _shift(self, y: Tensor) -> Tensor:
        frames = self.encoder.frames
        if frames is None:
            raise RuntimeError(f"{type(self).__name__}: the encoder has not run yet; call the whole model, "
                               "not the decoder alone.")
        (height, width), (h, w) = frames.input_size, y.shape[-2:]
        if height % h or width % w or (height // h) % self.scale_factor[0] or (width // w) % self.scale_factor[1]:
            raise ValueError(f"{type(self).__name__}: a {h}x{w} map upsampled x{self.scale_factor} does not match "
                             f"an encoder level of the {height}x{width} input.")
        source = (height // h, width // w)
        target = (source[0] // self.scale_factor[0], source[1] // self.scale_factor[1])
        missing = [s for s in (source, target) if s not in frames.offsets]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: the encoder has no level of stride {missing[0]} "
                               f"(levels: {sorted(frames.offsets)}).")
        phi_source, phi_target = frames.offsets[source], frames.offsets[target]
        if phi_source.shape[0] != y.shape[0]:
            raise ValueError(f"{type(self).__name__}: batch size {y.shape[0]} does not match the encoder's latest "
                             f"call ({phi_source.shape[0]}).")
        # Exact: the difference only has terms of strided layers after level `target`.
        return torch.div(phi_source - phi_target, torch.tensor(target, device=y.device), rounding_mode="floor")

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}, mode={self.mode!r}, undo_origins={self.undo_origins}"


class GlobalPoolingBranch(nn.Sequential):
    """ASPP's image-pooling branch with its ``1 x 1`` output broadcast to the input size.

    smp interpolates the ``1 x 1`` map bilinearly, which rounds differently per pixel;
    broadcasting gives an exactly constant map. Same submodules and ``state_dict`` keys
    as smp's ``ASPPPooling``.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`.
        - Output: :math:`(B, C_{out}, H, W)`, constant over ``H, W``.
    """

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return x.expand(-1, -1, *size)


def convert_deeplabv3plus(model: smp.DeepLabV3Plus) -> smp.DeepLabV3Plus:
    """Return an exactly shift-equivariant copy of an smp DeepLabV3+ with one of our encoders.

    The decoder and head get circular padding, a broadcasting ASPP pooling branch and
    :class:`FrameAlignedUpsample` layers; the encoder is kept. ``state_dict`` keys are
    unchanged. ``model`` itself is left untouched.

    Args:
        model: ``smp.DeepLabV3Plus(encoder_name=<a name from register_smp_encoders()>, ...)``.

    Returns:
        The converted copy.

    Example:
        >>> _ = register_smp_encoders()
        >>> model = convert_deeplabv3plus(smp.DeepLabV3Plus("mass-resnet18", encoder_weights=None, classes=3))
    """
    if not isinstance(model, smp.DeepLabV3Plus):
        raise TypeError(f"convert_deeplabv3plus expects an smp.DeepLabV3Plus, got {type(model).__name__}.")
    if not isinstance(model.encoder, EquivariantResNetEncoder):
        raise TypeError(
            f"convert_deeplabv3plus: the encoder is a {type(model.encoder).__name__}; build the model with an "
            "encoder from mass_lightning's register_smp_encoders() (e.g. encoder_name='mass-resnet18'), whose "
            "origins the decoder can undo."
        )
    model = copy.deepcopy(model)
    _patch_deeplabv3plus(model)
    return model


def _patch_deeplabv3plus(model: smp.DeepLabV3Plus) -> None:
    encoder = model.encoder
    undo = encoder.method != "baseline"
    model.decoder = convert(model.decoder, method="baseline")  # stride-1 convs: circular padding only
    for name, module in list(model.decoder.named_modules()):
        if isinstance(module, ASPPPooling):
            parent, _, attr = name.rpartition(".")
            setattr(model.decoder.get_submodule(parent), attr, GlobalPoolingBranch(*module.children()))
    model.decoder.up = FrameAlignedUpsample(_integer_scale(model.decoder.up), encoder, undo_origins=undo)
    head = convert(model.segmentation_head, method="baseline")
    if isinstance(head[1], nn.Upsample):
        head[1] = FrameAlignedUpsample(_integer_scale(head[1]), encoder, undo_origins=undo)
    model.segmentation_head = head
    model.requires_divisible_input_shape = False  # _prepare_forward raises a ValueError instead
    model.register_forward_pre_hook(_prepare_forward)


def _integer_scale(upsample: nn.Upsample) -> tuple[int, int]:
    scale = upsample.scale_factor
    pair = tuple(scale) if isinstance(scale, (tuple, list)) else (scale, scale)
    if any(float(s) != int(s) for s in pair):
        raise ValueError(f"convert_deeplabv3plus: {upsample} has a non-integer scale factor; exact "
                         "equivariance needs integer upsampling factors.")
    return int(pair[0]), int(pair[1])


def _prepare_forward(model: smp.DeepLabV3Plus, args: tuple[Any, ...]) -> None:
    """Forward pre-hook: check the input, and link the upsamplings to this model's encoder.

    The link is refreshed on every call so that copies made without ``deepcopy`` (the
    replicas of ``nn.DataParallel``) read their own encoder's frames.
    """
    for module in model.modules():
        if isinstance(module, FrameAlignedUpsample):
            module.__dict__["_encoder"] = model.encoder
    x = args[0] if args else None
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{model.name}: expects a (B, C, H, W) tensor, got {shape}.")
    channels, stride = model.encoder._in_channels, model.encoder.output_stride
    if x.shape[1] != channels:
        raise ValueError(f"{model.name}: expects {channels} input channels, got input of shape {tuple(x.shape)}.")
    height, width = x.shape[-2:]
    if height % stride or width % stride:
        below = f"{max(stride, height // stride * stride)}x{max(stride, width // stride * stride)}"
        above = f"{-(-height // stride) * stride}x{-(-width // stride) * stride}"
        raise ValueError(
            f"{model.name}: input size {height}x{width} is not divisible by the encoder's total stride {stride}. "
            f"Exact shift equivariance needs height and width that are multiples of {stride} (e.g. {below} or "
            f"{above} here): crop or pad the input, or use a smaller output_stride."
        )


def load_encoder_weights(encoder: EquivariantResNetEncoder, name: str, weights: str = "imagenet") -> None:
    """Load torchvision's ImageNet weights for ResNet ``name`` into ``encoder``, in place.

    torchvision downloads them where online (or reads its cache,
    ``$TORCH_HOME/hub/checkpoints``). The encoder has smp's (= torchvision's, minus
    ``fc``) keys, so they load unchanged; only DDAC filters (new parameters) stay random.

    Args:
        encoder: an encoder from :func:`~mass_lightning.backbones.smp_encoders.register_smp_encoders`.
        name: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        weights: ``"imagenet"`` (torchvision's ``IMAGENET1K_V1``, the weights smp's ResNet
            encoders use) or a torchvision weights name (``"IMAGENET1K_V2"``, ``"DEFAULT"``).

    Raises:
        RuntimeError: the weights could not be downloaded (offline), with what to do.
    """
    enum = resolve_weights(name, "IMAGENET1K_V1" if weights == "imagenet" else weights)
    try:
        state = enum.get_state_dict(progress=False)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        raise RuntimeError(
            f"Could not download torchvision's {enum} weights for the {name} encoder ({error}). Without internet "
            f"access, download {enum.url} elsewhere and copy it to {cache}, or pass encoder_weights=None."
        ) from error
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = nn.Module.load_state_dict(encoder, state, strict=False)
    ddac = tuple(f"{n}." for n, m in encoder.named_modules() if isinstance(m, DDAC))
    missing = [k for k in result.missing_keys if not k.startswith(ddac)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{enum} does not match the {name} encoder: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}.")


def get_segmentation_model(
    arch: str = "deeplabv3plus",
    *,
    encoder: str = "resnet18",
    method: str = "mass",
    antialias: str | None = None,
    num_classes: int,
    output_stride: int = 16,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **smp_kwargs: Any,
) -> nn.Module:
    """An exactly shift-equivariant DeepLabV3+ (smp's architecture, converted).

    Args:
        arch: ``"deeplabv3plus"``.
        encoder: ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``.
        method: ``"mass"``, ``"aps"`` or ``"baseline"`` (circular padding only, phase-0
            subsampling: not equivariant to shifts that the total stride does not divide).
        antialias: ``None``, ``"lpf3"``, ``"ddac3"``, ... for the encoder's strided layers.
        num_classes: output channels.
        output_stride: 16 or 8 (smp dilates the last stages).
        encoder_weights: ``None`` (random) or ``"imagenet"`` (torchvision's weights, see
            :func:`load_encoder_weights`).
        in_channels: input channels (smp adapts the pretrained first conv).
        **smp_kwargs: further ``smp.DeepLabV3Plus`` arguments (``decoder_channels``,
            ``decoder_atrous_rates``, ``decoder_aspp_separable``, ``decoder_aspp_dropout``, ...).

    Returns:
        The model; ``forward`` maps :math:`(B, C_{in}, H, W)` to logits
        :math:`(B, \\text{num\\_classes}, H, W)` for ``H, W`` multiples of ``output_stride``.

    Example:
        >>> model = get_segmentation_model(encoder="resnet18", method="mass", num_classes=11).eval()
        >>> model(torch.randn(1, 3, 64, 96)).shape
        torch.Size([1, 11, 64, 96])
    """
    if str(arch).lower() not in SEGMENTATION_ARCHS:
        raise ValueError(f"Unknown segmentation arch {arch!r}; choose one of {', '.join(SEGMENTATION_ARCHS)}.")
    if encoder not in SMP_RESNETS:
        raise ValueError(f"Unknown encoder {encoder!r} for {arch}; choose one of {', '.join(SMP_RESNETS)}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 16 or 8 for {arch}, got {output_stride!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
    if encoder_weights is not None and encoder_weights != "imagenet":
        resolve_weights(encoder, encoder_weights)  # ValueError for an unknown name
    reserved = [k for k in _RESERVED_SMP_KWARGS if k in smp_kwargs]
    if reserved:
        raise ValueError(f"get_segmentation_model sets {', '.join(reserved)} itself; use encoder, method, "
                         "num_classes, output_stride, encoder_weights and in_channels instead.")
    register_smp_encoders(antialias)
    pretrained = encoder_weights is not None
    model = smp.DeepLabV3Plus(
        encoder_name=smp_encoder_name(encoder, method, antialias),
        encoder_weights=None,
        encoder_output_stride=output_stride,
        in_channels=3 if pretrained else in_channels,
        classes=num_classes,
        **smp_kwargs,
    )
    if pretrained:
        load_encoder_weights(model.encoder, encoder, encoder_weights)
        model.encoder.set_in_channels(in_channels, pretrained=True)
    _patch_deeplabv3plus(model)
    return model

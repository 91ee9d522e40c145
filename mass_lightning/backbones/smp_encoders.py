"""This project's ResNets as segmentation-models-pytorch (smp) encoders.

The encoders are smp's own :class:`~segmentation_models_pytorch.encoders.resnet.ResNetEncoder`
(a torchvision ResNet), made shift-equivariant by :func:`mass_lightning.convert`. They
keep smp's ``state_dict`` keys, so smp's and torchvision's ResNet weights load unchanged,
and they follow the ``EncoderMixin`` contract, so ``make_dilated`` (output stride 16 or
8) works: it patches stride, dilation and padding of our circular convs in place, and
they recompute their circular padding from those on every call.

On top of smp's encoder, each forward records the *frame* of every feature level: the
per-sample offset ``phi_S`` (in input pixels) of the feature map of total stride ``S``
(see :class:`EncoderFrames`). The decoder uses it to undo the MASS/APS origins.

Registered names are ``"<prefix>-<resnet>[-<antialias>]"`` with prefix ``circular``
(method ``"baseline"``: circular padding only), ``mass`` or ``aps``, for example
``"mass-resnet18"``, ``"aps-resnet50"``, ``"circular-resnet34"`` or
``"mass-resnet18-lpf3"``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from segmentation_models_pytorch import encoders as smp_encoders
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder, resnet_encoders
from torch import Tensor, nn

from ..conversion import METHODS, convert, parse_antialias
from ..layers import EquivariantDownsample

__all__ = [
    "SMP_RESNETS",
    "EncoderFrames",
    "EquivariantResNetEncoder",
    "register_smp_encoders",
    "smp_encoder_name",
]

SMP_RESNETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
"""The ResNets registered as smp encoders."""

_PREFIX = {"baseline": "circular", "mass": "mass", "aps": "aps"}


@dataclass(frozen=True)
class EncoderFrames:
    """Where each feature level of the latest encoder call sits in the input's frame.

    Pixel ``i`` of the feature map of total stride ``S`` was computed at input position
    ``S * i + phi_S`` (per sample, per axis, modulo the input size), where
    ``phi_S = sum_l origin_l * (total stride before layer l)`` over the strided layers
    ``l`` before that level (the origins of layers that share an
    :class:`~mass_lightning.layers.OriginScope` counted once).

    Attributes:
        input_size: ``(H, W)`` of the encoder input.
        offsets: ``{(Sy, Sx): phi}`` with ``phi`` an ``int64`` tensor ``(B, 2)``;
            ``(1, 1)`` maps to zeros.
    """

    input_size: tuple[int, int]
    offsets: dict[tuple[int, int], Tensor]


class EquivariantResNetEncoder(ResNetEncoder):
    """smp's ResNet encoder converted with :func:`mass_lightning.convert`.

    Args:
        out_channels: channels of the ``depth + 1`` features (smp's registry entry).
        depth: number of stages, 1 to 5.
        output_stride: 32, or 16/8 after smp's ``make_dilated``.
        method: ``"baseline"`` (circular padding only), ``"mass"`` or ``"aps"``.
        antialias: ``None``, ``"lpf3"``, ``"ddac3"``, ... (see :func:`mass_lightning.convert`).
        **kwargs: torchvision ``ResNet`` arguments (``block``, ``layers``, ...).

    Attributes:
        frames: the :class:`EncoderFrames` of the latest forward call (``None`` before).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`, ``H`` and ``W`` multiples of the total stride.
        - Output: ``depth + 1`` maps, the ``k``-th of shape
          :math:`(B, C_k, H / S_k, W / S_k)` with :math:`S_k = \\min(2^k, \\text{output\\_stride})`.

    Example:
        >>> _ = register_smp_encoders()
        >>> encoder = smp_encoders.get_encoder("mass-resnet18", output_stride=16)
        >>> [f.shape[-1] for f in encoder(torch.randn(1, 3, 64, 64))]
        [64, 32, 16, 8, 4, 4]
    """

    _is_torch_scriptable = False
    _is_torch_exportable = False

    def __init__(
        self,
        out_channels: list[int],
        depth: int = 5,
        output_stride: int = 32,
        *,
        method: str = "mass",
        antialias: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(out_channels=out_channels, depth=depth, output_stride=output_stride, **kwargs)
        self.method = method
        self.antialias = antialias
        self.frames: EncoderFrames | None = None
        converted = convert(self, method=method, antialias=antialias)  # type: ignore[arg-type]
        for name, child in converted.named_children():
            setattr(self, name, child)

    def _stages(self) -> list[list[nn.Module]]:
        """The modules of each stage in execution order (as in smp's ``forward``)."""
        stages = [[self.conv1], [self.maxpool, self.layer1], [self.layer2], [self.layer3], [self.layer4]]
        return stages[: self._depth]

    def forward(self, x: Tensor) -> list[Tensor]:
        features = super().forward(x)
        self.frames = self._record_frames(x)
        return features

    def _record_frames(self, x: Tensor) -> EncoderFrames:
        stride = (1, 1)
        phi = torch.zeros(x.shape[0], 2, dtype=torch.int64, device=x.device)
        offsets = {stride: phi}
        seen: set[int] = set()
        for stage in self._stages():
            for module in stage:
                for layer in module.modules():
                    if not isinstance(layer, EquivariantDownsample) or layer._stride_pair() == (1, 1):
                        continue  # stride 1 (also a dilated stage after make_dilated): no origin
                    key = id(layer.scope) if layer.scope is not None else id(layer)
                    if key in seen:
                        continue  # the shortcut of a residual block shares the main branch's origin
                    seen.add(key)
                    origin = layer.last_origin
                    if origin is None or origin.shape[0] != x.shape[0]:
                        raise RuntimeError(f"{type(self).__name__}: {layer._describe()} recorded no origin "
                                           "for this call.")
                    phi = phi + origin * torch.tensor(stride, device=origin.device)
                    step = layer._stride_pair()
                    stride = (stride[0] * step[0], stride[1] * step[1])
                    offsets[stride] = phi
        return EncoderFrames((x.shape[-2], x.shape[-1]), offsets)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, antialias={self.antialias!r}"


def smp_encoder_name(encoder: str = "resnet18", method: str = "mass", antialias: str | None = None) -> str:
    """The smp registry name of ``encoder`` converted with ``method`` and ``antialias``.

    Example:
        >>> smp_encoder_name("resnet50", "baseline", "lpf3")
        'circular-resnet50-lpf3'
    """
    if encoder not in SMP_RESNETS:
        raise ValueError(f"Unknown encoder {encoder!r}; choose one of {', '.join(SMP_RESNETS)}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    spec = parse_antialias(antialias)
    suffix = f"-{spec.kind}{spec.kernel_size}" if spec is not None else ""
    return f"{_PREFIX[method]}-{encoder}{suffix}"


def register_smp_encoders(antialias: str | None = None) -> list[str]:
    """Register ResNet-18/34/50 x {baseline, mass, aps} in smp's encoder registry.

    Idempotent: registering again is a no-op. The entries keep smp's
    ``pretrained_settings``, so ``smp.DeepLabV3Plus("mass-resnet18",
    encoder_weights="imagenet")`` downloads smp's ResNet weights where online. A plain
    smp model only gets the equivariant *encoder*; use
    :func:`mass_lightning.backbones.segmentation.get_segmentation_model` for a model whose
    decoder undoes the encoder's origins.

    Args:
        antialias: ``None`` or a spec such as ``"lpf3"``; it becomes a name suffix.

    Returns:
        The registered names, for example ``["circular-resnet18", "mass-resnet18", ...]``.

    Raises:
        ValueError: a different encoder is already registered under one of the names.

    Example:
        >>> "mass-resnet18" in register_smp_encoders()
        True
    """
    spec = parse_antialias(antialias)
    antialias = f"{spec.kind}{spec.kernel_size}" if spec is not None else None
    names = []
    for encoder in SMP_RESNETS:
        for method in METHODS:
            name = smp_encoder_name(encoder, method, antialias)
            base = resnet_encoders[encoder]
            entry = {
                "encoder": EquivariantResNetEncoder,
                "pretrained_settings": copy.deepcopy(base["pretrained_settings"]),
                "params": {**base["params"], "method": method, "antialias": antialias},
            }
            existing = smp_encoders.encoders.get(name)
            if existing is not None and (existing.get("encoder") is not EquivariantResNetEncoder
                                         or existing.get("params") != entry["params"]):
                raise ValueError(f"register_smp_encoders: smp already has a different encoder named {name!r} "
                                 f"({existing.get('encoder')}); remove it from "
                                 "segmentation_models_pytorch.encoders.encoders first.")
            smp_encoders.encoders.setdefault(name, entry)
            names.append(name)
    return names

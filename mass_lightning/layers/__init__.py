"""Exactly shift-equivariant down- and upsampling layers (MASS, APS, LPF, DDAC)."""

from .blur import Blur2d, BlurPool2d, binomial_kernel, blur2d, blur_pool2d
from .circular import circular_interpolate, circular_pad, conv_padding, shift_and_pad, unshift
from .ddac import DDAC, ddac2d
from .downsample import (
    APSAvgPool2d,
    APSConv2d,
    APSMaxPool2d,
    CircularAvgPool2d,
    CircularConv2d,
    CircularMaxPool2d,
    DownsampleState,
    EquivariantDownsample,
    MASSAvgPool2d,
    MASSConv2d,
    MASSMaxPool2d,
    subsample,
)
from .generic import MASSDownsample, mass_downsample
from .pooling import ExactGlobalAvgPool2d, exact_global_avg_pool2d
from .polyphase import check_divisible, polyphase_energy, polyphase_statistics, select_origin
from .scope import OriginScope
from .upsample import (
    APSUpsample2d,
    MASSConvTranspose2d,
    MASSMaxUnpool2d,
    MASSUpsample,
    aps_upsample,
    circular_conv_transpose2d,
)

__all__ = [
    "APSAvgPool2d",
    "APSConv2d",
    "APSMaxPool2d",
    "APSUpsample2d",
    "Blur2d",
    "BlurPool2d",
    "CircularAvgPool2d",
    "CircularConv2d",
    "CircularMaxPool2d",
    "DDAC",
    "DownsampleState",
    "EquivariantDownsample",
    "ExactGlobalAvgPool2d",
    "MASSAvgPool2d",
    "MASSConv2d",
    "MASSConvTranspose2d",
    "MASSDownsample",
    "MASSMaxPool2d",
    "MASSMaxUnpool2d",
    "MASSUpsample",
    "OriginScope",
    "aps_upsample",
    "binomial_kernel",
    "blur2d",
    "blur_pool2d",
    "check_divisible",
    "circular_conv_transpose2d",
    "circular_interpolate",
    "circular_pad",
    "conv_padding",
    "exact_global_avg_pool2d",
    "ddac2d",
    "mass_downsample",
    "polyphase_energy",
    "polyphase_statistics",
    "select_origin",
    "shift_and_pad",
    "subsample",
    "unshift",
]

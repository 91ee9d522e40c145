"""Conversion of any CNN into an exactly shift-equivariant one, and its verification."""

from .check import EquivarianceReport, LayerCheck, check_equivariance
from .convert import METHODS, Antialias, convert, parse_antialias
from .model import ConversionRecord, ShiftEquivariantModel

__all__ = [
    "METHODS",
    "Antialias",
    "ConversionRecord",
    "EquivarianceReport",
    "LayerCheck",
    "ShiftEquivariantModel",
    "check_equivariance",
    "convert",
    "parse_antialias",
]

"""Conversion of pretrained CNNs into exactly shift-equivariant ones."""

from .convert import METHODS, Antialias, convert, parse_antialias

__all__ = ["METHODS", "Antialias", "convert", "parse_antialias"]

"""Shift-consistency metrics (torchmetrics) and per-sample circular shift utilities."""

from mass_lightning.metrics.consistency import CircularConsistency
from mass_lightning.metrics.segmentation_consistency import SegmentationCircularConsistency
from mass_lightning.metrics.shifts import ShiftSampler, roll_per_sample, sample_shifts, unroll_per_sample

__all__ = [
    "CircularConsistency",
    "SegmentationCircularConsistency",
    "ShiftSampler",
    "roll_per_sample",
    "sample_shifts",
    "unroll_per_sample",
]

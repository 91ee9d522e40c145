"""Circular consistency of a classifier (eq. 4 of the MASS paper)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["CircularConsistency"]


def _class_labels(preds: Tensor, name: str) -> Tensor:
    """Turn ``(B, C)`` scores into ``(B,)`` labels (top-1); pass ``(B,)`` labels through."""
    if not isinstance(preds, Tensor):
        raise TypeError(f"CircularConsistency: `{name}` must be a torch.Tensor, got {type(preds).__name__}.")
    if preds.ndim == 2:
        if preds.shape[1] < 2:
            raise ValueError(
                f"CircularConsistency: `{name}` has shape {tuple(preds.shape)}; (B, C) scores need C >= 2 "
                "classes. For a single binary logit, threshold it into (B,) integer labels first."
            )
        return preds.argmax(dim=1)
    if preds.ndim == 1:
        if preds.is_floating_point() or preds.is_complex():
            raise ValueError(
                f"CircularConsistency: `{name}` is a 1-D {preds.dtype} tensor of shape {tuple(preds.shape)}; "
                "pass (B, C) logits/probabilities or (B,) integer labels."
            )
        return preds
    raise ValueError(
        f"CircularConsistency: `{name}` must be (B, C) logits/probabilities or (B,) integer labels, "
        f"got shape {tuple(preds.shape)}."
    )


class CircularConsistency(Metric):
    r"""Fraction of images whose top-1 class survives two random circular shifts.

    Implements the circular consistency of the MASS paper (eq. 4):

    .. math::
        \frac{1}{N} \sum_n \mathbf{1}\left[y(S_{h_1, w_1}(x_n)) = y(S_{h_2, w_2}(x_n))\right]

    where :math:`S_{h, w}` is a circular shift with :math:`(h, w)` drawn uniformly over
    all offsets (see :func:`~mass_lightning.metrics.sample_shifts`) and :math:`y` is the
    top-1 prediction. The metric never calls the model: the task predicts on
    ``roll_per_sample(x, shifts_a)`` and ``roll_per_sample(x, shifts_b)`` and passes both
    outputs to :meth:`update`. An exactly shift-invariant model scores 1.0.

    States ``agree`` and ``total`` are integer counts, summed across processes, so the
    DDP result equals the single-process result exactly. ``compute`` returns NaN if no
    image was seen (like ``torchmetrics.MeanMetric``).

    Shape:
        - preds_a, preds_b: :math:`(B, C)` logits/probabilities (top-1 taken with
          ``argmax``, ties go to the lowest index) or :math:`(B,)` integer labels.
        - Output: scalar float tensor in :math:`[0, 1]`.

    Example:
        >>> metric = CircularConsistency()
        >>> metric.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))
        >>> metric.compute()
        tensor(0.7500)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    agree: Tensor
    total: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("agree", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds_a: Tensor, preds_b: Tensor) -> None:
        """Accumulate agreement between predictions for two shifted copies of a batch.

        Args:
            preds_a: Model output for the batch under the first shifts, ``(B, C)`` or ``(B,)``.
            preds_b: Model output for the same batch under the second shifts.
        """
        labels_a = _class_labels(preds_a, "preds_a")
        labels_b = _class_labels(preds_b, "preds_b")
        if labels_a.shape[0] != labels_b.shape[0]:
            raise ValueError(
                "CircularConsistency: `preds_a` and `preds_b` must hold the same images, got batch sizes "
                f"{labels_a.shape[0]} (shape {tuple(preds_a.shape)}) and {labels_b.shape[0]} "
                f"(shape {tuple(preds_b.shape)})."
            )
        if preds_a.ndim == 2 and preds_b.ndim == 2 and preds_a.shape[1] != preds_b.shape[1]:
            raise ValueError(
                "CircularConsistency: `preds_a` and `preds_b` have different numbers of classes, shapes "
                f"{tuple(preds_a.shape)} and {tuple(preds_b.shape)}."
            )
        self.agree += (labels_a == labels_b.to(labels_a.device)).sum()
        self.total += labels_a.shape[0]

    def compute(self) -> Tensor:
        """Return ``agree / total`` as a float tensor (NaN before any image)."""
        return self.agree.float() / self.total

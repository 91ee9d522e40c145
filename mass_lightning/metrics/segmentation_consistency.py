"""Segmentation circular consistency, mASCC (eq. 5 of the MASS paper)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from mass_lightning.metrics.shifts import unroll_per_sample

__all__ = ["SegmentationCircularConsistency"]

_NAME = "SegmentationCircularConsistency"


def _label_maps(preds: Tensor, name: str) -> Tensor:
    """Turn ``(B, C, H, W)`` scores into ``(B, H, W)`` labels; pass label maps through."""
    if not isinstance(preds, Tensor):
        raise TypeError(f"{_NAME}: `{name}` must be a torch.Tensor, got {type(preds).__name__}.")
    if preds.ndim == 4:
        if preds.shape[1] < 2:
            raise ValueError(
                f"{_NAME}: `{name}` has shape {tuple(preds.shape)}; (B, C, H, W) scores need C >= 2 classes. "
                "For a single binary logit map, threshold it into (B, H, W) integer labels first."
            )
        return preds.argmax(dim=1)
    if preds.ndim == 3:
        if preds.is_floating_point() or preds.is_complex():
            raise ValueError(
                f"{_NAME}: `{name}` is a 3-D {preds.dtype} tensor of shape {tuple(preds.shape)}; pass "
                "(B, C, H, W) logits/probabilities or (B, H, W) integer label maps."
            )
        return preds
    raise ValueError(
        f"{_NAME}: `{name}` must be (B, C, H, W) logits/probabilities or (B, H, W) integer label maps, "
        f"got shape {tuple(preds.shape)}."
    )


class SegmentationCircularConsistency(Metric):
    r"""Mean per-image fraction of pixels whose label survives two random circular shifts.

    This is the mASCC of the MASS paper (eq. 5), introduced by Zou et al. (2020) as
    mASSC:

    .. math::
        \mathrm{mASCC} = \frac{1}{N} \sum_n \frac{1}{|V_n|} \sum_{(i, j) \in V_n}
        \mathbf{1}\left[S^{-1}_{h_1, w_1}(f(S_{h_1, w_1}(x_n)))_{i,j}
        = S^{-1}_{h_2, w_2}(f(S_{h_2, w_2}(x_n)))_{i,j}\right]

    The task predicts label maps for ``roll_per_sample(x, shifts_a)`` and
    ``roll_per_sample(x, shifts_b)`` and passes both, with their shifts, to
    :meth:`update`. The metric undoes each shift (back to the unshifted frame), compares
    labels pixel by pixel over the valid pixels :math:`V_n` (those whose ``target`` is
    not ``ignore_index``), and averages the per-image agreement fractions over images.
    Images without a valid pixel are skipped. An exactly shift-equivariant model scores
    1.0. Predictions must be at input resolution, since shifts are in input pixels.

    With ``average="pixel"`` the metric instead pools pixels over all images:
    agreeing valid pixels / valid pixels (images with more valid pixels weigh more).

    States (all summed across processes): ``fraction_sum`` and ``num_images`` for the
    per-image mean, ``agree_pixels`` and ``valid_pixels`` (integer) for the pooled
    variant. ``compute`` returns NaN if no valid image/pixel was seen.

    Args:
        ignore_index: Target value whose pixels are excluded; ``None`` keeps all pixels.
        average: ``"image"`` (mean over images, the paper's mASCC) or ``"pixel"``
            (pooled over all pixels).
        kwargs: Passed to :class:`torchmetrics.Metric`.

    Shape:
        - preds_a, preds_b: :math:`(B, C, H, W)` scores (``argmax`` over ``C``) or
          :math:`(B, H, W)` integer label maps.
        - shifts_a, shifts_b: :math:`(B, 2)` integer ``(dy, dx)`` per image.
        - target: :math:`(B, H, W)`, optional, in the unshifted frame.
        - Output: scalar float tensor in :math:`[0, 1]`.

    Example:
        >>> from mass_lightning.metrics import roll_per_sample
        >>> labels = torch.tensor([[[0, 1], [2, 3]]])
        >>> shifts_a, shifts_b = torch.tensor([[1, 0]]), torch.tensor([[0, 1]])
        >>> metric = SegmentationCircularConsistency()
        >>> metric.update(roll_per_sample(labels, shifts_a), roll_per_sample(labels, shifts_b), shifts_a, shifts_b)
        >>> metric.compute()
        tensor(1.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    fraction_sum: Tensor
    num_images: Tensor
    agree_pixels: Tensor
    valid_pixels: Tensor

    def __init__(
        self,
        ignore_index: int | None = None,
        average: Literal["image", "pixel"] = "image",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise TypeError(f"{_NAME}: `ignore_index` must be an int or None, got {ignore_index!r}.")
        if average not in ("image", "pixel"):
            raise ValueError(f"{_NAME}: `average` must be 'image' or 'pixel', got {average!r}.")
        self.ignore_index = ignore_index
        self.average = average
        self.add_state("fraction_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("num_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("agree_pixels", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("valid_pixels", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        preds_a: Tensor,
        preds_b: Tensor,
        shifts_a: Tensor,
        shifts_b: Tensor,
        target: Tensor | None = None,
    ) -> None:
        """Accumulate per-pixel agreement between predictions for two shifted copies.

        Args:
            preds_a: Prediction for ``roll_per_sample(x, shifts_a)``.
            preds_b: Prediction for ``roll_per_sample(x, shifts_b)``.
            shifts_a: ``(B, 2)`` shifts that produced ``preds_a``'s input.
            shifts_b: ``(B, 2)`` shifts that produced ``preds_b``'s input.
            target: Optional ``(B, H, W)`` ground truth in the unshifted frame; only used to
                mask out ``ignore_index`` pixels.
        """
        labels_a = _label_maps(preds_a, "preds_a")
        labels_b = _label_maps(preds_b, "preds_b")
        if labels_a.shape != labels_b.shape:
            raise ValueError(
                f"{_NAME}: `preds_a` and `preds_b` must give label maps of the same (B, H, W) shape, got "
                f"{tuple(labels_a.shape)} (from {tuple(preds_a.shape)}) and {tuple(labels_b.shape)} "
                f"(from {tuple(preds_b.shape)})."
            )
        if target is not None and (not isinstance(target, Tensor) or target.shape != labels_a.shape):
            shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"{_NAME}: `target` must be a (B, H, W) tensor matching the label maps "
                f"{tuple(labels_a.shape)}, got {shape}."
            )
        # Back to the unshifted frame (validates the shift shapes too).
        agree = unroll_per_sample(labels_a, shifts_a) == unroll_per_sample(labels_b.to(labels_a.device), shifts_b)
        batch_size, height, width = agree.shape
        if target is not None and self.ignore_index is not None:
            valid = target.to(agree.device) != self.ignore_index
            agree = agree & valid
            valid_count = valid.flatten(1).sum(dim=1)
        else:
            valid_count = torch.full((batch_size,), height * width, device=agree.device)
        agree_count = agree.flatten(1).sum(dim=1)

        # Images without valid pixels add 0 to the sum and are not counted (no host sync).
        has_valid = valid_count > 0
        fractions = agree_count.to(self.fraction_sum.dtype) / valid_count.clamp(min=1)
        self.fraction_sum += torch.where(has_valid, fractions, 0.0).sum()
        self.num_images += has_valid.sum()
        self.agree_pixels += agree_count.sum()
        self.valid_pixels += valid_count.sum()

    def compute(self) -> Tensor:
        """Return the per-image mean (``average="image"``) or pooled pixel fraction."""
        if self.average == "pixel":
            return self.agree_pixels.to(self.fraction_sum.dtype) / self.valid_pixels
        return self.fraction_sum / self.num_images

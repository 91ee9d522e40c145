"""Image classification with any registered backbone, made shift-invariant by MASS, APS or nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..backbones import get_backbone
from ..metrics import CircularConsistency
from .base import BaseTask, Network, Schedule, shift_columns

__all__ = ["ClassificationTask"]


class ClassificationTask(BaseTask):
    """Train and evaluate a backbone of :func:`~mass_lightning.get_backbone` on labelled images.

    The default recipe is the MASS paper's CIFAR-10 one: SGD with momentum 0.9, weight
    decay 5e-4, learning rate 0.2, cosine schedule (per step, over
    ``trainer.estimated_stepping_batches``); the datamodule adds random horizontal flips.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc`` (top-1 on the unshifted
    images) and ``val/consistency`` (:class:`~mass_lightning.metrics.CircularConsistency`
    on two random circular shifts per image, see :class:`~mass_lightning.tasks.BaseTask`),
    and the same for ``test``.

    ``predict`` returns, per image, the class (``label``), its softmax ``probability``, and
    ``unchanged``: whether the class is the same for two random circular shifts of the image
    (``shift_a``, ``shift_b``); :class:`~mass_lightning.tasks.PredictionWriter` writes them
    as a CSV.

    Args:
        backbone: A name of :func:`~mass_lightning.list_backbones` (``"resnet20"``,
            ``"cifar_resnet18"``, ``"resnet50"``, ``"convnext_tiny"``, ...), or your own
            classifier (an ``nn.Module`` that maps images to ``num_classes`` logits), as an
            instance or, in a config, as ``class_path``/``init_args``. It is converted with
            ``method``, ``antialias`` and ``padding`` (see
            :class:`~mass_lightning.tasks.BaseTask` for how its checkpoints load).
        method: Downsampling: ``"baseline"``, ``"mass"`` or ``"aps"``; ``"aps_official"`` is APS
            placed as in the official APS code (``docs/aps_official.md``).
        antialias: ``None``, ``"lpf3"`` or ``"ddac3"`` (any of ``convert``'s specs).
        num_classes: Classifier outputs; must match the datamodule.
        weights: Initial weights: ``None``, a torchvision weights name (``"DEFAULT"``,
            ``"IMAGENET1K_V1"``), or a checkpoint path. Checkpoints of this task store
            ``None`` here, as their ``state_dict`` holds the weights.
        padding: ``"circular"`` (needed for exact equivariance) or ``"zeros"`` (the
            unmodified network; only with ``method="baseline"``, no antialias).
        lr: Base learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay (L2), on all parameters.
        nesterov: Nesterov momentum.
        schedule: ``"cosine"``, ``"poly"`` or ``"constant"``.
        warmup_steps: Optimiser steps of linear warmup.
        label_smoothing: Label smoothing of the cross-entropy loss.
        consistency_seed: Seed of the evaluation shifts.
        eval_consistency: Run the two shifted forward passes and log the consistency.

    Example:
        >>> task = ClassificationTask(backbone="resnet20", method="mass", num_classes=10)
        >>> task(torch.randn(2, 3, 32, 32)).shape  # doctest: +SKIP
        torch.Size([2, 10])
        >>> task = ClassificationTask(backbone=MyNet(num_classes=10), method="mass", num_classes=10)  # doctest: +SKIP
    """

    pretrained_hparams = ("weights",)
    consistency_name = "consistency"

    def __init__(
        self,
        backbone: Network = "resnet20",
        method: Literal["baseline", "mass", "aps", "aps_official"] = "mass",
        antialias: str | None = None,
        num_classes: int = 10,
        weights: str | None = None,
        padding: Literal["circular", "zeros"] = "circular",
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        schedule: Schedule = "cosine",
        warmup_steps: int = 0,
        label_smoothing: float = 0.0,
        consistency_seed: int = 0,
        eval_consistency: bool = True,
    ) -> None:
        super().__init__(network=backbone)

    def configure_models(self) -> None:
        """``self.model = get_backbone(backbone, method=..., antialias=..., num_classes=..., weights=...)``."""
        hparams = self.hparams
        self.model = get_backbone(
            hparams["backbone"],
            method=hparams["method"],
            antialias=hparams["antialias"],
            num_classes=hparams["num_classes"],
            weights=hparams["weights"],
            padding=hparams["padding"],
        )

    def configure_losses(self) -> None:
        """Cross-entropy with optional label smoothing."""
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams["label_smoothing"])

    def task_metrics(self) -> MetricCollection:
        """Top-1 accuracy (``acc``)."""
        return MetricCollection({"acc": MulticlassAccuracy(self.hparams["num_classes"], average="micro")})

    def consistency_metric(self) -> Metric:
        """Top-1 agreement between two shifts (eq. 4 of the paper)."""
        return CircularConsistency()

    def update_consistency(
        self, metric: Metric, preds_a: Tensor, preds_b: Tensor, shifts_a: Tensor, shifts_b: Tensor, target: Tensor
    ) -> None:
        """Classes must agree; the shifts themselves do not matter for an invariant output."""
        metric.update(preds_a, preds_b)

    def summarize_predictions(
        self, logits: Tensor, shifted: Optional[tuple[Tensor, Tensor, Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """``label``, ``probability`` (softmax of that class) and, with the shifts, ``unchanged``."""
        probabilities = logits.float().softmax(dim=1)
        probability, label = probabilities.max(dim=1)
        out = {"label": label, "probability": probability}
        if shifted is not None:
            preds_a, preds_b, shifts_a, shifts_b = shifted
            out["unchanged"] = (preds_a.argmax(dim=1) == label) & (preds_b.argmax(dim=1) == label)
            out["shift_a"], out["shift_b"] = shifts_a, shifts_b
        return out

    def prediction_rows(
        self, predictions: Mapping[str, Tensor], names: Sequence[str], folder: Path, classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """``class, class_id, probability, unchanged_under_shifts, shift_a, shift_b`` per image."""
        rows = []
        for i in range(len(names)):
            label = int(predictions["label"][i])
            row = {
                "class": classes[label] if label < len(classes) else str(label),
                "class_id": label,
                "probability": f"{float(predictions['probability'][i]):.6f}",
            }
            rows.append({**row, **shift_columns(predictions, i, "unchanged_under_shifts")})
        return rows

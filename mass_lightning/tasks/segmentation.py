"""Semantic segmentation with an exactly shift-equivariant DeepLabV3+ (segmentation-models-pytorch)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..metrics import SegmentationCircularConsistency, unroll_per_sample
from .base import BaseTask, Network, Schedule, shift_columns

__all__ = ["SegmentationTask"]


class SegmentationTask(BaseTask):
    """Train and evaluate a model of ``mass_lightning.get_segmentation_model`` on image/mask pairs.

    The default recipe follows the MASS paper (itself after VainF's DeepLabV3Plus-Pytorch):
    SGD with momentum 0.9, weight decay 1e-4, learning rate 0.01 with the polynomial
    schedule ``(1 - step / total) ** 0.9`` over ``trainer.max_steps`` (30k iterations at
    batch 16 in the VOC config), cross-entropy that ignores ``ignore_index``.

    Logs ``train/loss``, ``{split}/miou`` (macro mIoU over the classes present, torchmetrics
    ``MulticlassJaccardIndex``), ``{split}/pixel_acc`` and, for ``val``/``test``,
    ``{split}/mascc`` (:class:`~mass_lightning.metrics.SegmentationCircularConsistency`:
    label maps for two random circular shifts per image, shifted back and compared on the
    non-ignored pixels).

    ``predict`` returns, per image, the label map (``label_map``, ``(H, W)``) and ``unchanged``:
    the fraction of pixels whose class is the same in the label maps of two random circular
    shifts of the image, shifted back (``shift_a``, ``shift_b``);
    :class:`~mass_lightning.tasks.PredictionWriter` saves the maps as PNG files (class ids,
    with a colour palette) and lists them in a CSV.

    Args:
        arch: Architecture of the factory (``"deeplabv3plus"``), or your own segmentation
            model (an ``nn.Module`` that maps ``(B, 3, H, W)`` images to ``(B, num_classes,
            H, W)`` logits), as an instance or, in a config, as ``class_path``/``init_args``.
            It is converted with ``method`` and ``antialias``; ``encoder``,
            ``output_stride`` and ``encoder_weights`` then do not apply.
        encoder: Encoder backbone (``"resnet18"``, ``"resnet34"``, ``"resnet50"``).
        method: Downsampling: ``"baseline"``, ``"mass"`` or ``"aps"``.
        antialias: ``None``, ``"lpf3"``, ``"ddac3"``, ...
        num_classes: Output classes (without the ignored label); must match the datamodule.
        output_stride: Encoder output stride, 16 or 8 (dilated last stages).
        decoder_atrous_rates: Dilation rates of ASPP's three 3x3 branches (smp's default;
            VainF's DeepLabV3+ uses ``(6, 12, 18)`` at output stride 16).
        decoder_aspp_separable: Depthwise-separable ASPP branches (smp's default; VainF's
            default ASPP is not separable).
        decoder_aspp_dropout: Dropout after ASPP's projection (smp's default; VainF: 0.1).
        encoder_weights: Initial encoder weights (e.g. ``"imagenet"``) or ``None``.
            Checkpoints of this task store ``None`` here.
        ignore_index: Target label excluded from loss and metrics; must match the datamodule.
        lr: Base learning rate (of the decoder; the encoder gets ``lr * encoder_lr_factor``).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        nesterov: Nesterov momentum.
        schedule: ``"poly"``, ``"cosine"`` or ``"constant"``.
        poly_power: Exponent of the poly schedule.
        warmup_steps: Optimiser steps of linear warmup.
        encoder_lr_factor: Learning-rate factor of the encoder (VainF uses 0.1 with a
            pretrained encoder).
        consistency_seed: Seed of the evaluation shifts.
        eval_consistency: Run the two shifted forward passes and log mASCC.

    Example:
        >>> task = SegmentationTask(encoder="resnet18", method="mass", num_classes=11, ignore_index=11)
        >>> task(torch.randn(1, 3, 64, 64)).shape  # doctest: +SKIP
        torch.Size([1, 11, 64, 64])
    """

    pretrained_hparams = ("encoder_weights",)
    consistency_name = "mascc"
    network_hparam = "arch"

    def __init__(
        self,
        arch: Network = "deeplabv3plus",
        encoder: str = "resnet18",
        method: Literal["baseline", "mass", "aps"] = "mass",
        antialias: str | None = None,
        num_classes: int = 21,
        output_stride: Literal[8, 16] = 16,
        decoder_atrous_rates: tuple[int, int, int] = (12, 24, 36),
        decoder_aspp_separable: bool = True,
        decoder_aspp_dropout: float = 0.5,
        encoder_weights: str | None = None,
        ignore_index: int = 255,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        schedule: Schedule = "poly",
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        encoder_lr_factor: float = 1.0,
        consistency_seed: int = 0,
        eval_consistency: bool = True,
    ) -> None:
        super().__init__(network=arch)

    def configure_models(self) -> None:
        """``self.model = get_segmentation_model(arch, encoder=..., method=..., ...)``."""
        from ..backbones.segmentation import get_segmentation_model  # smp is imported only when needed

        hparams = self.hparams
        self.model = get_segmentation_model(
            hparams["arch"],
            encoder=hparams["encoder"],
            method=hparams["method"],
            antialias=hparams["antialias"],
            num_classes=hparams["num_classes"],
            output_stride=hparams["output_stride"],
            encoder_weights=hparams["encoder_weights"],
            decoder_atrous_rates=tuple(hparams["decoder_atrous_rates"]),
            decoder_aspp_separable=hparams["decoder_aspp_separable"],
            decoder_aspp_dropout=hparams["decoder_aspp_dropout"],
        )

    def configure_losses(self) -> None:
        """Cross-entropy that ignores ``ignore_index`` pixels."""
        self.criterion = nn.CrossEntropyLoss(ignore_index=self.hparams["ignore_index"])

    def task_metrics(self) -> MetricCollection:
        """mIoU (``miou``) and pixel accuracy (``pixel_acc``), both without ignored pixels."""
        num_classes, ignore_index = self.hparams["num_classes"], self.hparams["ignore_index"]
        return MetricCollection(
            {
                "miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
                "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
            }
        )

    def consistency_metric(self) -> Metric:
        """mASCC over the non-ignored pixels (eq. 5 of the paper)."""
        return SegmentationCircularConsistency(ignore_index=self.hparams["ignore_index"])

    def update_consistency(
        self, metric: Metric, preds_a: Tensor, preds_b: Tensor, shifts_a: Tensor, shifts_b: Tensor, target: Tensor
    ) -> None:
        """Shift both label maps back to the input frame and compare them pixel by pixel."""
        metric.update(preds_a, preds_b, shifts_a, shifts_b, target)

    def summarize_predictions(
        self, logits: Tensor, shifted: Optional[tuple[Tensor, Tensor, Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """``label_map`` and, with the shifts, ``unchanged``: the fraction of pixels that keep their class."""
        label_map = logits.argmax(dim=1)
        out = {"label_map": label_map}
        if shifted is not None:
            preds_a, preds_b, shifts_a, shifts_b = shifted
            back_a = unroll_per_sample(preds_a, shifts_a).argmax(dim=1)
            back_b = unroll_per_sample(preds_b, shifts_b).argmax(dim=1)
            out["unchanged"] = ((back_a == label_map) & (back_b == label_map)).flatten(1).float().mean(dim=1)
            out["shift_a"], out["shift_b"] = shifts_a, shifts_b
        return out

    def prediction_rows(
        self, predictions: Mapping[str, Tensor], names: Sequence[str], folder: Path, classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """Save each label map as ``label_maps/<name>.png``; columns ``label_map, pixels_unchanged_under_shifts``."""
        rows = []
        palette = label_palette()
        for i, name in enumerate(names):
            relative = Path("label_maps") / Path(name).with_suffix(".png")
            target = folder / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(predictions["label_map"][i].to("cpu", dtype=torch.uint8).numpy(), mode="P")
            image.putpalette(palette)
            image.save(target)
            rows.append({"label_map": relative.as_posix(),
                         **shift_columns(predictions, i, "pixels_unchanged_under_shifts")})  # fmt: skip
        return rows

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Encoder parameters at ``lr * encoder_lr_factor``, the rest at ``lr``."""
        factor = float(self.hparams["encoder_lr_factor"])
        encoder = getattr(self.model, "encoder", None)
        if factor == 1.0 or not isinstance(encoder, nn.Module):
            return super().parameter_groups()
        encoder_ids = {id(p) for p in encoder.parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) in encoder_ids], "lr": self.hparams["lr"] * factor},
            {"params": [p for p in trainable if id(p) not in encoder_ids]},
        ]


def label_palette() -> list[int]:
    """The PASCAL VOC colour map (256 RGB triples, flattened): distinct colours for class ids in a PNG.

    Example:
        >>> label_palette()[3:6]
        [128, 0, 0]
    """
    palette = []
    for label in range(256):
        red = green = blue = 0
        value = label
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette

"""Shared LightningModule logic: optimiser and schedule, metrics per split, shifted evaluation."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from typing_extensions import Self

from ..checkpoints import CONVERT_COMMAND, refuse_pickled_code
from ..conversion import convert
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError
from ..metrics import ShiftSampler, roll_per_sample

__all__ = ["BaseTask", "Network", "Schedule", "lr_factor", "network_name", "shift_columns"]

Network = Union[str, nn.Module]
"""A registry name, or your own model (an instance, or ``class_path``/``init_args`` in a config)."""

_INSTANCE_PREFIX = "instance of "


def network_name(value: Any) -> str:
    """A short name for a network hyperparameter: the registry name or the model's class name.

    Example:
        >>> network_name("resnet20"), network_name({"class_path": "my_models.TinyNet", "init_args": {}})
        ('resnet20', 'TinyNet')
    """
    if isinstance(value, nn.Module):
        return type(value).__name__
    if isinstance(value, Mapping) and "class_path" in value:
        return str(value["class_path"]).rsplit(".", 1)[-1]
    if isinstance(value, str) and value.startswith(_INSTANCE_PREFIX):
        return value[len(_INSTANCE_PREFIX) :].rsplit(".", 1)[-1]
    return str(value)

Schedule = Literal["cosine", "poly", "constant"]
SCHEDULES: tuple[str, ...] = ("cosine", "poly", "constant")
EVAL_SPLITS: tuple[str, ...] = ("val", "test")


def shift_columns(predictions: Mapping[str, Tensor], index: int, column: str) -> dict[str, str]:
    """The shift columns of one prediction row: ``column`` (is it unchanged?), ``shift_a``, ``shift_b``.

    ``column`` is ``True``/``False`` for a class and the fraction of unchanged pixels for
    a label map; the shifts are ``(dy, dx)`` in pixels. All three are empty when the
    shifted predictions were skipped (``eval_consistency: false``).
    """
    if "shift_a" not in predictions:
        return {column: "", "shift_a": "", "shift_b": ""}
    unchanged = predictions["unchanged"][index]
    value = str(bool(unchanged)) if unchanged.dtype == torch.bool else f"{float(unchanged):.6f}"
    shift_a, shift_b = (tuple(int(v) for v in predictions[key][index]) for key in ("shift_a", "shift_b"))
    return {column: value, "shift_a": str(shift_a), "shift_b": str(shift_b)}


def lr_factor(
    step: int,
    *,
    total_steps: int,
    schedule: Schedule = "cosine",
    warmup_steps: int = 0,
    power: float = 0.9,
) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based).

    A linear warmup over ``warmup_steps`` steps (from ``1 / warmup_steps`` to 1), then,
    over the remaining steps, cosine annealing to 0, polynomial decay
    ``(1 - progress) ** power`` (the DeepLab "poly" schedule) or a constant.

    Args:
        step: Optimiser steps taken so far.
        total_steps: Steps of the whole run (``trainer.estimated_stepping_batches``).
        schedule: ``"cosine"``, ``"poly"`` or ``"constant"``.
        warmup_steps: Steps of linear warmup.
        power: Exponent of the ``"poly"`` schedule.

    Returns:
        The factor applied to the base learning rate.

    Example:
        >>> lr_factor(0, total_steps=100), lr_factor(50, total_steps=100), lr_factor(100, total_steps=100)
        (1.0, 0.5, 0.0)
        >>> round(lr_factor(50, total_steps=100, schedule="poly", power=1.0), 6)
        0.5
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1.0 - progress) ** power
    return 1.0


class BaseTask(LightningModule):
    """Base of the MASS tasks (torchgeo style): hooks build the model, loss and metrics.

    Subclasses take plain hyperparameters (strings, numbers), which
    :meth:`save_hyperparameters` stores in every checkpoint, so
    ``Task.load_from_checkpoint(path)`` rebuilds the network without pickled modules, and
    reads the checkpoint without running pickled code (see :meth:`load_from_checkpoint`).
    They implement :meth:`configure_models` (sets ``self.model`` from a registry name),
    :meth:`configure_losses` (sets ``self.criterion``), :meth:`task_metrics`,
    :meth:`consistency_metric`, :meth:`update_consistency`, :meth:`summarize_predictions`
    and :meth:`prediction_rows`.

    Your own model: the network hyperparameter (``backbone``, ``arch``; the subclass's
    :attr:`network_hparam`) also takes an ``nn.Module``. It is converted with
    :func:`~mass_lightning.convert` and the task's ``method`` and ``antialias`` (see
    :meth:`convert_network`) instead of going through :meth:`configure_models`.

    * In a config, give it as ``class_path``/``init_args``: the checkpoint then stores
      that dict, and both ``mass-lightning validate --config <run>/config.yaml
      --ckpt_path ...`` and ``Task.load_from_checkpoint(path)`` rebuild the model.
    * In Python, pass an instance: ``ClassificationTask(backbone=MyNet(), ...)``. The
      checkpoint stores ``"instance of my_package.MyNet"`` in its place (no pickled
      module), so load it with a fresh, unconverted instance of the same model:
      ``ClassificationTask.load_from_checkpoint(path, backbone=MyNet())``.

    Every subclass takes these shared hyperparameters (read from ``self.hparams``):
    ``lr``, ``momentum``, ``weight_decay``, ``nesterov`` (SGD), ``schedule`` and
    ``warmup_steps`` (per-step learning-rate schedule, see :func:`lr_factor`),
    ``poly_power`` (optional, default 0.9), ``consistency_seed`` and
    ``eval_consistency``.

    Shifted evaluation: every validation/test batch ``x`` gets an ordinary forward pass
    for the loss and the task metrics (accuracy, mIoU: the numbers the paper reports),
    and, if ``eval_consistency``, two more forward passes on ``roll_per_sample(x, a)``
    and ``roll_per_sample(x, b)``, where ``a`` and ``b`` hold an independent uniform
    circular shift per image. :class:`~mass_lightning.metrics.ShiftSampler` draws them
    from ``(consistency_seed, rank, dataloader_idx, batch_idx)``, so they do not depend
    on the global RNG and are the same in every epoch and run. Evaluation therefore
    costs three forward passes per batch.

    Logged keys: ``train/loss``, ``{split}/loss``, ``{split}/<metric>`` for each task
    metric, and ``{split}/<consistency_name>`` for ``split`` in ``val``, ``test``.

    Example:
        >>> from mass_lightning.tasks import ClassificationTask
        >>> task = ClassificationTask(backbone="resnet20", method="mass", num_classes=6)
        >>> Trainer(max_epochs=1).fit(task, datamodule=PeriodicDefectsDataModule())  # doctest: +SKIP
        >>> task = ClassificationTask.load_from_checkpoint("last.ckpt")  # doctest: +SKIP
    """

    #: Hyperparameters that only say where the initial weights come from. The trained
    #: weights are in the checkpoint's ``state_dict``, so they are set to ``None`` in saved
    #: checkpoints (``load_from_checkpoint`` then neither downloads nor needs the file).
    pretrained_hparams: tuple[str, ...] = ()
    #: Name of the consistency metric in the logs (``val/<consistency_name>``).
    consistency_name: str = "consistency"
    #: The hyperparameter that names the network (a registry name or your own model).
    network_hparam: str = "backbone"

    model: nn.Module
    criterion: nn.Module

    def __init__(self, network: Optional[Network] = None) -> None:
        """Save the subclass's ``__init__`` arguments as hyperparameters and build the model, loss and metrics.

        Args:
            network: The subclass's network argument when it is an ``nn.Module`` (your own
                model); a registry name goes through :meth:`configure_models` instead.
        """
        super().__init__()
        with warnings.catch_warnings():  # a model instance is replaced below: checkpoints keep no pickled module
            module_warning = f"Attribute '{self.network_hparam}' is an instance of `nn.Module`"
            warnings.filterwarnings("ignore", message=module_warning)
            self.save_hyperparameters(ignore=["network"])
        schedule = self.hparams.get("schedule", "cosine")
        if schedule not in SCHEDULES:
            raise ConfigError(f"{type(self).__name__}: schedule must be one of {SCHEDULES}, got {schedule!r}.")
        self.shift_sampler = ShiftSampler(int(self.hparams.get("consistency_seed", 0)))
        if isinstance(network, nn.Module):
            if isinstance(self.hparams.get(self.network_hparam), nn.Module):  # an instance, not a config's class_path
                module_type = type(network)
                placeholder = f"{_INSTANCE_PREFIX}{module_type.__module__}.{module_type.__qualname__}"
                self.hparams[self.network_hparam] = placeholder
                self._hparams_initial[self.network_hparam] = placeholder  # what loggers record
            self.model = self.convert_network(network)
        else:
            self._check_network_is_a_name()
            self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def convert_network(self, network: nn.Module) -> nn.Module:
        """Your own model made shift-equivariant: ``convert(network, method=..., antialias=..., padding=...)``.

        ``network`` itself is left untouched (``convert`` works on a copy). A model that
        cannot be made exact raises :class:`~mass_lightning.errors.ConversionError`,
        naming the layer.
        """
        hparams = self.hparams
        return convert(
            network,
            method=hparams["method"],
            antialias=hparams.get("antialias"),
            padding=hparams.get("padding", "circular"),
        )

    def _check_network_is_a_name(self) -> None:
        """Refuse the placeholder that a checkpoint of a model instance holds, with what to do instead."""
        value = self.hparams.get(self.network_hparam)
        if isinstance(value, str) and value.startswith(_INSTANCE_PREFIX):
            class_name = value[len(_INSTANCE_PREFIX) :]
            task = type(self).__name__
            raise ConfigError(
                f"{task}: this checkpoint was trained with your own model ({class_name}), passed as an instance, so "
                f"it does not hold the model itself. Load it with a fresh, unconverted instance: "
                f"{task}.load_from_checkpoint(path, {self.network_hparam}={class_name.rsplit('.', 1)[-1]}(...)). "
                f"In configs, give the model as {self.network_hparam}: {{class_path: {class_name}, init_args: ...}} "
                "so that checkpoints rebuild it."
            )

    # ------------------------------------------------------------------ hooks
    def configure_models(self) -> None:
        """Build ``self.model`` from the hyperparameters (a registry name)."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_models().")

    def configure_losses(self) -> None:
        """Build ``self.criterion`` from the hyperparameters."""
        raise NotImplementedError(f"{type(self).__name__} must implement configure_losses().")

    def task_metrics(self) -> MetricCollection:
        """The metrics of one split, without prefix (they are cloned per split)."""
        raise NotImplementedError(f"{type(self).__name__} must implement task_metrics().")

    def consistency_metric(self) -> Metric:
        """A fresh shift-consistency metric."""
        raise NotImplementedError(f"{type(self).__name__} must implement consistency_metric().")

    def update_consistency(
        self, metric: Metric, preds_a: Tensor, preds_b: Tensor, shifts_a: Tensor, shifts_b: Tensor, target: Tensor
    ) -> None:
        """Feed the outputs for the two shifted copies of a batch to ``metric``."""
        raise NotImplementedError(f"{type(self).__name__} must implement update_consistency().")

    def summarize_predictions(
        self, logits: Tensor, shifted: Optional[tuple[Tensor, Tensor, Tensor, Tensor]]
    ) -> dict[str, Tensor]:
        """Per-image predictions of a batch, from the logits and (if computed) the two shifted outputs.

        Args:
            logits: Outputs for the unshifted images.
            shifted: ``(preds_a, preds_b, shifts_a, shifts_b)`` of :meth:`shifted_predictions`,
                or ``None`` when ``eval_consistency`` is off.

        Returns:
            Tensors whose first dimension is the batch.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement summarize_predictions().")

    def prediction_rows(
        self, predictions: Mapping[str, Tensor], names: Sequence[str], folder: Path, classes: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The columns of one table row per image of a :meth:`predict_step` output; may write files into ``folder``.

        Args:
            predictions: The output of :meth:`predict_step` for one batch.
            names: The images' paths relative to the predict folder (``lot7/a.jpg``), or
                ``test/<index>`` for the test split; unique, so usable as file names.
            folder: The run's prediction folder.
            classes: Class names by id (empty when the datamodule has none).

        Returns:
            One dict per image (the writer adds its ``path`` first).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement prediction_rows().")

    def configure_metrics(self) -> None:
        """One prefixed clone of :meth:`task_metrics` per split, one consistency metric per eval split."""
        metrics = self.task_metrics()
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_consistency = self.consistency_metric()
        self.test_consistency = self.consistency_metric()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Parameter groups of the optimiser (one group by default)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    # ------------------------------------------------------------------ model
    def forward(self, x: Tensor) -> Tensor:
        """Logits of ``self.model``."""
        return self.model(x)

    def setup(self, stage: str) -> None:
        """Check that the datamodule's classes match the model's (a clear error instead of a CUDA assert)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for name in ("num_classes", "ignore_index"):
            expected = getattr(datamodule, name, None)
            configured = self.hparams.get(name)
            if isinstance(expected, int) and configured is not None and expected != configured:
                raise ConfigError(
                    f"{type(self).__name__}: model {name}={configured} but the datamodule "
                    f"{type(datamodule).__name__} has {name}={expected}. Set model.init_args.{name}: {expected} "
                    "in the config (or --model.init_args." + name + f" {expected})."
                )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the pretrained-weight sources: the checkpoint's ``state_dict`` holds the weights."""
        hparams = checkpoint.get("hyper_parameters")
        if isinstance(hparams, dict):
            for name in self.pretrained_hparams:
                if name in hparams:
                    hparams[name] = None

    @_restricted_classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: Union[str, os.PathLike, IO],
        map_location: Any = None,
        hparams_file: Optional[Union[str, os.PathLike]] = None,
        strict: Optional[bool] = None,
        weights_only: Optional[bool] = True,
        **kwargs: Any,
    ) -> Self:
        """Lightning's ``load_from_checkpoint``, reading only tensors and plain values.

        The checkpoint is loaded with ``weights_only=True``: a file that holds pickled
        Python objects (which could run code on load) is refused. Checkpoints saved by
        these tasks hold none. Arguments are those of
        :meth:`lightning.pytorch.LightningModule.load_from_checkpoint`.

        Raises:
            CheckpointNotFoundError: If ``checkpoint_path`` is a local path that is not a file.
            UnsafeCheckpointError: If the checkpoint holds pickled Python objects; the
                message says how to convert it.
            CheckpointError: If ``weights_only=False`` is asked for.

        Example:
            >>> task = ClassificationTask.load_from_checkpoint("best.ckpt")  # doctest: +SKIP
        """
        if weights_only is False:
            raise CheckpointError(
                f"{cls.__name__}.load_from_checkpoint reads checkpoints with weights_only=True only, so that "
                f"loading cannot run pickled code. Convert a trusted checkpoint with: {CONVERT_COMMAND} OLD NEW"
            )
        is_local_path = isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path)
        if is_local_path and not Path(checkpoint_path).expanduser().is_file():  # type: ignore[arg-type]
            raise CheckpointNotFoundError(f"Checkpoint {str(checkpoint_path)!r} does not exist or is not a file.")
        with refuse_pickled_code(checkpoint_path if is_local_path else "<checkpoint>"):  # type: ignore[arg-type]
            return super().load_from_checkpoint(
                checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
                weights_only=True, **kwargs,
            )  # fmt: skip

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """SGD with momentum and weight decay, and a per-step warmup + cosine/poly/constant schedule."""
        hparams = self.hparams
        optimizer = torch.optim.SGD(
            self.parameter_groups(),
            lr=hparams["lr"],
            momentum=hparams.get("momentum", 0.9),
            weight_decay=hparams.get("weight_decay", 5e-4),
            nesterov=hparams.get("nesterov", False),
        )
        schedule = hparams.get("schedule", "cosine")
        total_steps = self.trainer.estimated_stepping_batches
        if schedule != "constant" and not math.isfinite(total_steps):
            raise ConfigError(
                f"{type(self).__name__}: the {schedule!r} schedule needs a finite run; set trainer.max_epochs or "
                "trainer.max_steps, or use schedule: constant."
            )
        factor = partial(
            lr_factor,
            total_steps=int(total_steps) if math.isfinite(total_steps) else 1,
            schedule=schedule,
            warmup_steps=int(hparams.get("warmup_steps", 0)),
            power=float(hparams.get("poly_power", 0.9)),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _images(batch: Any) -> Tensor:
        """The images of a labelled ``(image, target)`` or an unlabelled ``{"image": ...}`` batch."""
        if isinstance(batch, Mapping):
            return batch["image"]
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    @staticmethod
    def _unpack(batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        raise TypeError(
            f"Expected (image, target) batches, got {type(batch).__name__}"
            f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}. "
            "Use a mass_lightning.data datamodule or a loader that yields (image, target) pairs."
        )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Loss on the batch; logs ``train/loss`` and the task metrics."""
        x, y = self._unpack(batch)
        logits = self(x)
        loss = self.criterion(logits, y)
        self.train_metrics.update(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss, task metrics and shift consistency on a validation batch."""
        self._evaluate("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loss, task metrics and shift consistency on a test batch."""
        self._evaluate("test", batch, batch_idx, dataloader_idx)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Predictions for the images of a batch, and whether they survive two random circular shifts.

        Takes ``(image, target)``, ``{"image": ..., "path": ...}`` (new images, see
        ``predict_dir``) or an image tensor. The shifts are drawn as in validation (seeded
        by ``consistency_seed`` and the batch index); ``eval_consistency: false`` skips them.

        Returns:
            :meth:`summarize_predictions` of the batch (per-image tensors), e.g. ``label``.
        """
        x = self._images(batch)
        logits = self(x)
        shifted = self.shifted_predictions(x, batch_idx, dataloader_idx) if self.hparams.get(
            "eval_consistency", True
        ) else None
        return self.summarize_predictions(logits, shifted)

    def shifted_predictions(
        self, x: Tensor, batch_idx: int, dataloader_idx: int = 0
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Outputs for two seeded random circular shifts of every image of ``x``.

        Returns:
            ``(preds_a, preds_b, shifts_a, shifts_b)``: the model's outputs on
            ``roll_per_sample(x, shifts_a)`` and ``roll_per_sample(x, shifts_b)``, and the
            ``(B, 2)`` shifts.
        """
        batch_size, height, width = x.shape[0], x.shape[-2], x.shape[-1]
        shifts_a, shifts_b = self.shift_sampler.sample_pair(
            batch_size, height, width, batch_idx=batch_idx, rank=self.global_rank,
            dataloader_idx=dataloader_idx, device=x.device,
        )  # fmt: skip
        return self(roll_per_sample(x, shifts_a)), self(roll_per_sample(x, shifts_b)), shifts_a, shifts_b

    def _evaluate(self, split: str, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        x, y = self._unpack(batch)
        batch_size = x.shape[0]
        logits = self(x)
        metrics: MetricCollection = getattr(self, f"{split}_metrics")
        metrics.update(logits, y)
        self.log(f"{split}/loss", self.criterion(logits, y), prog_bar=split == "val", sync_dist=True,
                 batch_size=batch_size)  # fmt: skip
        self.log_dict(metrics, prog_bar=split == "val", batch_size=batch_size)
        if self.hparams.get("eval_consistency", True):
            consistency: Metric = getattr(self, f"{split}_consistency")
            preds_a, preds_b, shifts_a, shifts_b = self.shifted_predictions(x, batch_idx, dataloader_idx)
            self.update_consistency(consistency, preds_a, preds_b, shifts_a, shifts_b, y)
            self.log(f"{split}/{self.consistency_name}", consistency, prog_bar=split == "val", batch_size=batch_size)

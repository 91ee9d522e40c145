"""ClassificationTask and SegmentationTask: schedules, shifted evaluation, checkpoints, predict, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from mass_lightning.data import PeriodicDefectsDataModule, PeriodicDefectsSegmentationDataModule
from mass_lightning.metrics import roll_per_sample
from mass_lightning.tasks import ClassificationTask, SegmentationTask, lr_factor

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_data(batch_size: int = 2) -> PeriodicDefectsDataModule:
    return PeriodicDefectsDataModule(num_train=4, num_val=4, num_test=4, image_size=16, batch_size=batch_size)


def tiny_segmentation_data() -> PeriodicDefectsSegmentationDataModule:
    return PeriodicDefectsSegmentationDataModule(num_train=2, num_val=2, num_test=2, image_size=64, batch_size=2)


def trainer(tmp_path: Path, **kwargs) -> Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


class ShiftSensitive(nn.Module):
    """A linear classifier with a random weight per pixel: not invariant to circular shifts."""

    def __init__(self, num_classes: int, size: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, 3, size, size, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight)


# ---------------------------------------------------------------- schedule
def test_lr_factor_cosine_poly_constant_warmup():
    assert lr_factor(0, total_steps=10) == 1.0
    assert lr_factor(10, total_steps=10) == 0.0
    assert lr_factor(5, total_steps=10) == pytest.approx(0.5)
    assert lr_factor(5, total_steps=10, schedule="poly", power=0.9) == pytest.approx(0.5**0.9)
    assert lr_factor(99, total_steps=10, schedule="poly") == 0.0  # clamped after the end
    assert lr_factor(7, total_steps=10, schedule="constant") == 1.0
    warm = [lr_factor(step, total_steps=12, warmup_steps=4) for step in range(5)]
    assert warm == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert lr_factor(8, total_steps=12, warmup_steps=4) == pytest.approx(0.5)


def test_optimizer_and_per_step_schedule(tmp_path):
    task = ClassificationTask(num_classes=6, lr=0.1, weight_decay=1e-3, nesterov=True, warmup_steps=2)
    fit = trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    fit.fit(task, datamodule=tiny_data())
    optimizer = fit.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 1e-3, True)
    # 2 epochs x 2 batches = 4 steps: after the last one the cosine reaches 0
    assert fit.global_step == 4
    assert group["lr"] == pytest.approx(0.1 * lr_factor(4, total_steps=4, warmup_steps=2))


def test_bad_schedule_is_rejected():
    with pytest.raises(ValueError, match="schedule must be one of"):
        ClassificationTask(num_classes=6, schedule="step")  # type: ignore[arg-type]


def test_unbounded_run_needs_constant_schedule(tmp_path):
    fit = trainer(tmp_path, max_epochs=-1, max_steps=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match="needs a finite run"):
        fit.fit(ClassificationTask(num_classes=6), datamodule=tiny_data())


# ---------------------------------------------------------------- shifted evaluation
def test_mass_validation_is_consistent_and_logs_all_keys(tmp_path):
    task = ClassificationTask(num_classes=6, method="mass")
    metrics = trainer(tmp_path).validate(task, datamodule=tiny_data())[0]
    assert set(metrics) == {"val/loss", "val/acc", "val/consistency"}
    assert metrics["val/consistency"] == 1.0


def test_shift_sensitive_model_is_caught(tmp_path):
    task = ClassificationTask(num_classes=6)
    task.model = ShiftSensitive(6)
    metrics = trainer(tmp_path).validate(task, datamodule=tiny_data(batch_size=4))[0]
    assert metrics["val/consistency"] < 1.0


def test_shifted_predictions_are_seeded_and_per_sample():
    task = ClassificationTask(num_classes=6, consistency_seed=3).eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        first = task.shifted_predictions(x, batch_idx=5)
        again = task.shifted_predictions(x, batch_idx=5)
        other_batch = task.shifted_predictions(x, batch_idx=6)
        preds_a, _, shifts_a, shifts_b = first
        assert all(torch.equal(a, b) for a, b in zip(first, again))
        assert not torch.equal(shifts_a, other_batch[2])
        assert not torch.equal(shifts_a, shifts_b)
        assert len({tuple(s) for s in shifts_a.tolist()}) > 1  # each image gets its own shift
        assert torch.equal(preds_a, task(roll_per_sample(x, shifts_a)))
    assert ClassificationTask(num_classes=6, consistency_seed=4).shifted_predictions(x, batch_idx=5)[2].ne(
        shifts_a
    ).any()


def test_eval_consistency_off_skips_shifted_passes(tmp_path):
    task = ClassificationTask(num_classes=6, eval_consistency=False)
    metrics = trainer(tmp_path).test(task, datamodule=tiny_data())[0]
    assert set(metrics) == {"test/loss", "test/acc"}


def test_num_classes_must_match_datamodule(tmp_path):
    with pytest.raises(ValueError, match="model num_classes=10 but the datamodule"):
        trainer(tmp_path).validate(ClassificationTask(num_classes=10), datamodule=tiny_data())


def test_batches_must_be_pairs():
    with pytest.raises(TypeError, match=r"Expected \(image, target\) batches"):
        ClassificationTask(num_classes=6).training_step({"image": torch.zeros(1)}, 0)


# ---------------------------------------------------------------- checkpoints and predict
def test_checkpoint_round_trip_reproduces_logits(tmp_path):
    task = ClassificationTask(num_classes=6, method="mass", antialias="ddac3", lr=0.05)
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=1)
    fit.fit(task, datamodule=tiny_data())
    path = tmp_path / "task.ckpt"
    fit.save_checkpoint(path)
    loaded = ClassificationTask.load_from_checkpoint(path).eval()
    assert loaded.hparams["antialias"] == "ddac3" and loaded.hparams["num_classes"] == 6
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), task.eval()(x))


def test_checkpoint_does_not_need_the_initial_weights_file(tmp_path):
    source = ClassificationTask(num_classes=6)
    weights = tmp_path / "init.pt"
    torch.save(source.model.state_dict(), weights)
    task = ClassificationTask(num_classes=6, weights=str(weights))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(task.eval()(x), source.eval()(x))
    task.train()  # Lightning keeps the mode a module starts fit in
    fit = trainer(tmp_path, max_steps=1, limit_val_batches=0)
    fit.fit(task, datamodule=tiny_data())
    fit.save_checkpoint(tmp_path / "task.ckpt")
    weights.unlink()
    loaded = ClassificationTask.load_from_checkpoint(tmp_path / "task.ckpt").eval()
    assert loaded.hparams["weights"] is None
    with torch.no_grad():
        assert torch.equal(loaded(x), task.eval()(x))


def test_predict_returns_classes_and_their_shift_check(tmp_path):
    task = ClassificationTask(num_classes=6)
    batches = trainer(tmp_path).predict(task, datamodule=tiny_data())
    assert [tuple(b["label"].shape) for b in batches] == [(2,), (2,)]
    assert all(b["label"].dtype == torch.int64 and b["label"].min() >= 0 and b["label"].max() < 6 for b in batches)
    assert all(b["unchanged"].all() and b["shift_a"].shape == (2, 2) for b in batches)  # MASS
    assert all(((b["probability"] > 0) & (b["probability"] <= 1)).all() for b in batches)


# ---------------------------------------------------------------- segmentation
def test_segmentation_fit_validate_and_round_trip(tmp_path):
    task = SegmentationTask(encoder="resnet18", method="mass", num_classes=7, lr=0.01)
    fit = trainer(tmp_path, max_steps=1, limit_val_batches=1)
    fit.fit(task, datamodule=tiny_segmentation_data())
    metrics = fit.validate(task, datamodule=tiny_segmentation_data())[0]
    assert set(metrics) == {"val/loss", "val/miou", "val/pixel_acc", "val/mascc"}
    assert metrics["val/mascc"] == 1.0
    fit.save_checkpoint(tmp_path / "seg.ckpt")
    loaded = SegmentationTask.load_from_checkpoint(tmp_path / "seg.ckpt").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), task.eval()(x))
    predictions = fit.predict(task, datamodule=tiny_segmentation_data())
    assert predictions[0]["label_map"].shape == (2, 64, 64) and predictions[0]["label_map"].dtype == torch.int64
    assert torch.equal(predictions[0]["unchanged"], torch.ones(2))


def test_segmentation_ignore_index_must_match(tmp_path):
    task = SegmentationTask(encoder="resnet18", num_classes=7, ignore_index=11)
    with pytest.raises(ValueError, match="model ignore_index=11 but the datamodule"):
        trainer(tmp_path).validate(task, datamodule=tiny_segmentation_data())


def test_segmentation_encoder_lr_factor_groups():
    task = SegmentationTask(encoder="resnet18", num_classes=7, lr=0.02, encoder_lr_factor=0.1)
    encoder_group, rest_group = task.parameter_groups()
    assert encoder_group["lr"] == pytest.approx(0.002) and "lr" not in rest_group
    encoder_params = sum(p.numel() for p in task.model.encoder.parameters())
    assert sum(p.numel() for p in encoder_group["params"]) == encoder_params
    total = sum(p.numel() for p in task.parameters())
    assert encoder_params + sum(p.numel() for p in rest_group["params"]) == total
    assert len(SegmentationTask(encoder="resnet18", num_classes=7).parameter_groups()) == 1


def test_segmentation_ignored_pixels_do_not_count():
    task = SegmentationTask(encoder="resnet18", num_classes=3, ignore_index=255)
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = 1.0  # predicts class 0 everywhere
    target = torch.tensor([[[0, 0], [255, 255]]])
    task.val_metrics.update(logits, target)
    assert task.val_metrics.compute()["val/pixel_acc"] == 1.0
    loss_all = task.criterion(logits, target).item()
    assert math.isclose(loss_all, task.criterion(logits[..., :1, :], target[..., :1, :]).item())


def test_segmentation_vainf_head_is_built_and_stays_equivariant():
    """Table 5's config: ASPP rates 6/12/18, plain (not separable) 3x3 branches, dropout 0.1."""
    torch.manual_seed(0)
    vainf = dict(decoder_atrous_rates=(6, 12, 18), decoder_aspp_separable=False, decoder_aspp_dropout=0.1)
    task = SegmentationTask(encoder="resnet18", method="mass", num_classes=5, **vainf).eval()
    aspp = task.model.decoder.aspp[0]
    branches = [branch[0] for branch in aspp.convs[1:4]]
    assert [b.dilation for b in branches] == [(6, 6), (12, 12), (18, 18)]
    assert all(isinstance(b, nn.Conv2d) and b.groups == 1 and b.kernel_size == (3, 3) for b in branches)
    assert aspp.project[-1].p == 0.1
    default = SegmentationTask(encoder="resnet18", num_classes=5).model.decoder.aspp[0]
    assert default.convs[1][0][0].dilation == (12, 12) and default.project[-1].p == 0.5  # smp's defaults

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        y = task(x)
        for shift in [(1, 0), (5, 37), (33, 2)]:
            shifted = task(torch.roll(x, shift, dims=(2, 3)))
            expected = torch.roll(y, shift, dims=(2, 3))
            assert torch.equal(shifted.argmax(1), expected.argmax(1))
            assert torch.allclose(shifted, expected, atol=1e-4)
    baseline = SegmentationTask(encoder="resnet18", method="baseline", num_classes=5, **vainf).eval()
    with torch.no_grad():  # the same head on the fixed-phase baseline is not equivariant
        y = baseline(x)
        assert not torch.allclose(baseline(torch.roll(x, (1, 0), dims=(2, 3))), torch.roll(y, (1, 0), dims=(2, 3)),
                                  atol=1e-2)

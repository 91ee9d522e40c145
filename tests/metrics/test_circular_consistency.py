"""Tests for CircularConsistency (eq. 4 of the MASS paper)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mass_lightning.metrics import CircularConsistency, roll_per_sample, sample_shifts


def test_three_of_four_agree():
    metric = CircularConsistency()
    metric.update(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]))
    assert metric.compute().item() == 0.75
    assert metric.agree.item() == 3 and metric.total.item() == 4


def test_logits_use_top1_and_mix_with_labels():
    logits = F.one_hot(torch.tensor([2, 0, 1]), 3).float() * 5 - 1
    probs = logits.softmax(dim=1)
    metric = CircularConsistency()
    metric.update(logits, torch.tensor([2, 0, 0]))
    metric.update(probs, logits)
    assert metric.compute().item() == pytest.approx(5 / 6)


def test_accumulates_over_batches_and_resets():
    metric = CircularConsistency()
    metric.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    metric.update(torch.tensor([0, 1, 2]), torch.tensor([1, 1, 1]))
    assert metric.compute().item() == pytest.approx(3 / 5)
    metric.reset()
    metric.update(torch.tensor([4]), torch.tensor([4]))
    assert metric.compute().item() == 1.0


def test_no_images_gives_nan():
    metric = CircularConsistency()
    metric.update(torch.zeros(0, 3), torch.zeros(0, 3))
    assert math.isnan(metric.compute().item())


def test_shift_invariant_model_scores_one_and_shift_sensitive_model_does_not():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 8, 8, generator=generator)
    weight = torch.randn(5, 3, generator=generator)
    shifts_a = sample_shifts(16, 8, 8, generator=generator)
    shifts_b = sample_shifts(16, 8, 8, generator=generator)

    def invariant(x):  # global average pool, then linear
        return x.mean(dim=(2, 3)) @ weight.T

    def sensitive(x):  # reads only the top-left pixel
        return x[:, :, 0, 0] @ weight.T

    for model, expect_one in ((invariant, True), (sensitive, False)):
        metric = CircularConsistency()
        metric.update(model(roll_per_sample(images, shifts_a)), model(roll_per_sample(images, shifts_b)))
        assert (metric.compute().item() == 1.0) is expect_one


def test_metric_attributes():
    assert CircularConsistency.is_differentiable is False
    assert CircularConsistency.higher_is_better is True
    assert CircularConsistency.full_state_update is False


@pytest.mark.parametrize(
    ("preds_a", "preds_b", "match"),
    [
        (torch.zeros(4, dtype=torch.long), torch.zeros(3, dtype=torch.long), "batch sizes 4"),
        (torch.zeros(2, 3), torch.zeros(2, 4), "different numbers of classes"),
        (torch.zeros(2, 1), torch.zeros(2, 1), "C >= 2"),
        (torch.zeros(4), torch.zeros(4), "1-D torch.float32"),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), r"got shape \(2, 3, 4\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(preds_a, preds_b, match):
    with pytest.raises(ValueError, match=match):
        CircularConsistency().update(preds_a, preds_b)

"""Tests for SegmentationCircularConsistency (mASCC, eq. 5 of the MASS paper)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mass_lightning.metrics import SegmentationCircularConsistency, roll_per_sample, sample_shifts

IGNORE = 255


def _distinct_labels(batch_size: int, height: int, width: int) -> torch.Tensor:
    return torch.arange(batch_size * height * width).reshape(batch_size, height, width)


def test_shifted_map_with_its_shifts_scores_one():
    labels = _distinct_labels(3, 4, 5)
    generator = torch.Generator().manual_seed(0)
    shifts_a = sample_shifts(3, 4, 5, generator=generator)
    shifts_b = sample_shifts(3, 4, 5, generator=generator)
    preds_a, preds_b = roll_per_sample(labels, shifts_a), roll_per_sample(labels, shifts_b)
    metric = SegmentationCircularConsistency()
    metric.update(preds_a, preds_b, shifts_a, shifts_b)
    assert metric.compute().item() == 1.0
    # The shifts matter: with them swapped, distinct labels no longer line up.
    wrong = SegmentationCircularConsistency()
    wrong.update(preds_a, preds_b, shifts_b, shifts_a)
    assert wrong.compute().item() < 1.0


def test_one_flipped_pixel_gives_known_fraction():
    labels = _distinct_labels(1, 4, 4)
    flipped = labels.clone()
    flipped[0, 2, 3] = -1  # in the unshifted frame
    shifts_a, shifts_b = torch.tensor([[1, 3]]), torch.tensor([[-2, 5]])
    metric = SegmentationCircularConsistency()
    metric.update(roll_per_sample(labels, shifts_a), roll_per_sample(flipped, shifts_b), shifts_a, shifts_b)
    assert metric.compute().item() == pytest.approx(15 / 16)


def test_logits_are_argmaxed():
    labels = torch.randint(0, 4, (2, 3, 5), generator=torch.Generator().manual_seed(0))
    logits = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    shifts_a, shifts_b = torch.tensor([[0, 1], [2, 2]]), torch.tensor([[1, 0], [0, 4]])
    metric = SegmentationCircularConsistency()
    metric.update(roll_per_sample(logits, shifts_a), roll_per_sample(labels, shifts_b), shifts_a, shifts_b)
    assert metric.compute().item() == 1.0


def test_image_mean_vs_pixel_pooled_and_ignored_pixels():
    # Image 0: 4 valid pixels, all agree. Image 1: 2 valid pixels, 1 agrees, 2 ignored
    # pixels that disagree. Image 2: every pixel ignored (skipped).
    preds_a = torch.tensor([[[0, 1], [2, 3]], [[0, 1], [2, 3]], [[0, 0], [0, 0]]])
    preds_b = torch.tensor([[[0, 1], [2, 3]], [[0, 9], [9, 9]], [[1, 1], [1, 1]]])
    target = torch.tensor([[[0, 0], [0, 0]], [[0, 0], [IGNORE, IGNORE]], [[IGNORE] * 2] * 2])
    zeros = torch.zeros(3, 2, dtype=torch.long)

    per_image = SegmentationCircularConsistency(ignore_index=IGNORE)
    pooled = SegmentationCircularConsistency(ignore_index=IGNORE, average="pixel")
    for metric in (per_image, pooled):
        metric.update(preds_a, preds_b, zeros, zeros, target=target)
    assert per_image.compute().item() == pytest.approx((1 + 0.5) / 2)
    assert per_image.num_images.item() == 2
    assert pooled.compute().item() == pytest.approx(5 / 6)

    # Without ignore_index, target is not used and every pixel counts.
    unmasked = SegmentationCircularConsistency()
    unmasked.update(preds_a, preds_b, zeros, zeros, target=target)
    assert unmasked.compute().item() == pytest.approx((1 + 0.25 + 0) / 3)


def test_target_is_in_the_unshifted_frame():
    labels = _distinct_labels(1, 3, 3)
    disagree = labels.clone()
    disagree[0, 0, 0] = -1  # the only disagreeing pixel, at (0, 0) unshifted
    target = torch.zeros(1, 3, 3, dtype=torch.long)
    target[0, 0, 0] = IGNORE
    shifts_a, shifts_b = torch.tensor([[1, 2]]), torch.tensor([[2, 1]])
    metric = SegmentationCircularConsistency(ignore_index=IGNORE)
    metric.update(roll_per_sample(labels, shifts_a), roll_per_sample(disagree, shifts_b), shifts_a, shifts_b, target)
    assert metric.compute().item() == 1.0


def test_all_ignored_gives_nan():
    metric = SegmentationCircularConsistency(ignore_index=IGNORE)
    labels = torch.zeros(2, 2, 2, dtype=torch.long)
    zeros = torch.zeros(2, 2, dtype=torch.long)
    metric.update(labels, labels, zeros, zeros, target=torch.full((2, 2, 2), IGNORE))
    assert math.isnan(metric.compute().item())


def test_equivariant_model_scores_one_and_strided_model_does_not():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 8, generator=generator)
    weight = torch.randn(5, 3, 1, 1, generator=generator)
    shifts_a = sample_shifts(4, 8, 8, generator=generator)
    shifts_b = sample_shifts(4, 8, 8, generator=generator)

    def pointwise(x):  # 1x1 conv: exactly shift-equivariant
        return F.conv2d(x, weight)

    def strided(x):  # stride-2 subsampling + nearest upsampling: not equivariant
        return F.interpolate(F.conv2d(x, weight, stride=2), scale_factor=2, mode="nearest")

    for model, expect_one in ((pointwise, True), (strided, False)):
        metric = SegmentationCircularConsistency()
        metric.update(
            model(roll_per_sample(images, shifts_a)), model(roll_per_sample(images, shifts_b)), shifts_a, shifts_b
        )
        assert (metric.compute().item() == 1.0) is expect_one


def test_metric_attributes():
    assert SegmentationCircularConsistency.is_differentiable is False
    assert SegmentationCircularConsistency.higher_is_better is True
    assert SegmentationCircularConsistency.full_state_update is False


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="average"):
        SegmentationCircularConsistency(average="batch")
    with pytest.raises(TypeError, match="ignore_index"):
        SegmentationCircularConsistency(ignore_index=2.5)


@pytest.mark.parametrize(
    ("preds_a", "preds_b", "shifts", "target", "error", "match"),
    [
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), torch.zeros(2, 2, dtype=torch.long), None, ValueError, "3-D"),
        (
            torch.zeros(2, 1, 4, 4),
            torch.zeros(2, 1, 4, 4),
            torch.zeros(2, 2, dtype=torch.long),
            None,
            ValueError,
            "C >= 2",
        ),
        (
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, 4, 5, dtype=torch.long),
            torch.zeros(2, 2, dtype=torch.long),
            None,
            ValueError,
            "same",
        ),
        (
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, dtype=torch.long),
            None,
            ValueError,
            r"\(B, 2\)",
        ),
        (
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, 4, 4, dtype=torch.long),
            torch.zeros(2, 2, dtype=torch.long),
            torch.zeros(2, 4, 5, dtype=torch.long),
            ValueError,
            "target",
        ),
        (torch.zeros(4, 4), torch.zeros(4, 4), torch.zeros(4, 2, dtype=torch.long), None, ValueError, r"\(B, H, W\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(preds_a, preds_b, shifts, target, error, match):
    metric = SegmentationCircularConsistency(ignore_index=IGNORE)
    with pytest.raises(error, match=match):
        metric.update(preds_a, preds_b, shifts, shifts, target)

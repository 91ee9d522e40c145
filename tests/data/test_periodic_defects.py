"""Synthetic periodic-defect data: determinism, exact periodicity, shift equivariance, loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mass_lightning.data import (
    DEFECT_TYPES,
    SEGMENTATION_CLASSES,
    Defect,
    LatticeParams,
    PeriodicDefects,
    PeriodicDefectsDataModule,
    PeriodicDefectsSegmentation,
    PeriodicDefectsSegmentationDataModule,
    render_lattice,
)
from mass_lightning.data.periodic_defects import periodic_texture, sample_defect

PLAIN = LatticeParams(
    phase=(1.25, 6.5), radius=2.0, exponent=3.0, background=(0.1, 0.2, 0.3), foreground=(0.9, 0.8, 0.7)
)


def _with(defect: Defect) -> LatticeParams:
    return LatticeParams(**{**PLAIN.__dict__, "defects": (defect,)})


def test_classification_items_shapes_and_balanced_labels() -> None:
    data = PeriodicDefects(num_samples=12)
    image, label = data[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert [data[i][1] for i in range(12)] == [i % 6 for i in range(12)]
    assert data.classes == list(DEFECT_TYPES) and len(data) == 12


def test_items_are_deterministic_per_seed_split_and_index() -> None:
    first, again = PeriodicDefects(num_samples=4, seed=3), PeriodicDefects(num_samples=4, seed=3)
    for i in range(4):
        assert torch.equal(first[i][0], again[i][0])
    assert not torch.equal(first[1][0], PeriodicDefects(num_samples=4, seed=4)[1][0])
    assert not torch.equal(first[1][0], PeriodicDefects(num_samples=4, seed=3, split="val")[1][0])
    assert torch.equal(first[2][0], PeriodicDefects(num_samples=100, seed=3)[2][0])  # independent of size


def test_defect_free_lattice_is_exactly_periodic() -> None:
    image, labels = render_lattice(PLAIN, 32, 8)
    for dy, dx in [(8, 0), (0, 8), (16, 24)]:
        assert np.array_equal(np.roll(image, (dy, dx), axis=(0, 1)), image)
        assert np.array_equal(np.roll(labels, (dy, dx), axis=(0, 1)), labels)
    assert not np.array_equal(np.roll(image, 1, axis=0), image)


@pytest.mark.parametrize("kind", DEFECT_TYPES[1:])
def test_circular_shift_of_an_image_is_the_image_of_the_shifted_scene(kind: str) -> None:
    rng = np.random.default_rng(0)
    params = _with(sample_defect(rng, kind, (1, 2), period=4, radius=1.1))
    params = LatticeParams(**{**params.__dict__, "radius": 1.1})
    image, labels = render_lattice(params, 16, 4)
    for dy in range(16):
        for dx in range(16):
            moved, moved_labels = render_lattice(params.shifted(dy, dx), 16, 4)
            assert np.array_equal(moved, np.roll(image, (dy, dx), axis=(0, 1))), (dy, dx)
            assert np.array_equal(moved_labels, np.roll(labels, (dy, dx), axis=(0, 1))), (dy, dx)


@pytest.mark.parametrize("kind", DEFECT_TYPES[1:])
def test_each_defect_is_visible_and_labelled(kind: str) -> None:
    clean, _ = render_lattice(PLAIN, 32, 8)
    rng = np.random.default_rng(1)
    image, labels = render_lattice(_with(sample_defect(rng, kind, (2, 1), period=8, radius=2.0)), 32, 8)
    changed = np.abs(image - clean).max(axis=2) > 0.25
    assert changed.sum() >= 4, f"{kind} changes only {changed.sum()} pixels clearly"
    code = SEGMENTATION_CLASSES.index(kind)
    assert (labels == code).sum() >= 4
    assert set(np.unique(labels)) <= {0, 1, code}


def test_defect_wraps_across_the_border_seamlessly() -> None:
    # a pad near the corner, enlarged: its footprint must appear on all four corners
    params = LatticeParams((0.0, 0.0), 2.0, 2.0, (0.0,) * 3, (1.0,) * 3, (Defect("size", (0, 0), size=3.5),))
    _, labels = render_lattice(params, 32, 8)
    code = SEGMENTATION_CLASSES.index("size")
    assert all(labels[y, x] == code for y in (0, 31) for x in (0, 31))


def test_noise_and_colour_options() -> None:
    grey = PeriodicDefects(num_samples=2, color=False, noise_std=0.0, normalize=False)
    image, _ = grey[0]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert image.min() >= 0 and image.max() <= 1
    noisy = PeriodicDefects(num_samples=2, color=False, noise_std=0.05, normalize=False)[0][0]
    assert not torch.equal(noisy, image)
    assert PeriodicDefects(num_samples=1, channels=1)[0][0].shape == (1, 32, 32)


@pytest.mark.parametrize(("image_size", "period"), [(30, 8), (32, 3), (8, 8)])
def test_bad_geometry_raises(image_size: int, period: int) -> None:
    with pytest.raises(ValueError, match="period"):
        PeriodicDefects(num_samples=1, image_size=image_size, period=period)


def test_index_out_of_range_raises() -> None:
    with pytest.raises(IndexError, match="out of range"):
        PeriodicDefects(num_samples=2)[2]


def test_segmentation_items_and_classes() -> None:
    data = PeriodicDefectsSegmentation(num_samples=6, min_defects=2, max_defects=3)
    seen = set()
    for i in range(len(data)):
        image, mask = data[i]
        assert image.shape == (3, 64, 64) and mask.shape == (64, 64) and mask.dtype == torch.int64
        values = set(mask.unique().tolist())
        assert {0, 1} <= values and values <= set(range(len(SEGMENTATION_CLASSES)))
        assert len(values - {0, 1}) >= 1
        assert 2 <= len(data.params(i).defects) <= 3
        seen |= values
    assert len(seen) >= 5
    with pytest.raises(ValueError, match="min_defects"):
        PeriodicDefectsSegmentation(num_samples=1, min_defects=3, max_defects=2)


def test_classification_datamodule_loaders() -> None:
    dm = PeriodicDefectsDataModule(num_train=10, num_val=6, num_test=5, batch_size=4)
    assert dm.num_classes == 6
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (4,) and labels.dtype == torch.int64
    assert sum(len(y) for _, y in dm.val_dataloader()) == 6
    dm.setup("predict")
    predicted = torch.cat([x for x, _ in dm.predict_dataloader()])
    tested = torch.cat([x for x, _ in dm.test_dataloader()])
    assert torch.equal(predicted, tested) and len(tested) == 5


def test_datamodule_shuffling_is_seeded() -> None:
    def first_labels(seed: int) -> list[int]:
        dm = PeriodicDefectsDataModule(num_train=30, num_val=1, num_test=1, batch_size=30, seed=seed)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[1].tolist()

    assert first_labels(0) == first_labels(0)
    assert first_labels(0) != first_labels(1)


def test_segmentation_datamodule_loaders() -> None:
    dm = PeriodicDefectsSegmentationDataModule(num_train=4, num_val=2, num_test=2, batch_size=2, image_size=32)
    assert (dm.num_classes, dm.ignore_index) == (7, 255)
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32) and masks.dtype == torch.int64


def test_texture_is_periodic_and_optional() -> None:
    plain = PeriodicDefects(num_samples=2, noise_std=0.0)
    assert torch.equal(plain[0][0], PeriodicDefects(num_samples=2, noise_std=0.0, texture=0.0)[0][0])
    textured = PeriodicDefects(num_samples=2, noise_std=0.0, texture=0.4, texture_period=2, normalize=False)
    image = textured[0][0]  # label 0: no defect
    assert not torch.equal(image, PeriodicDefects(num_samples=2, noise_std=0.0, normalize=False)[0][0])
    for shift in [(8, 0), (0, 16)]:  # the texture period divides the lattice period: still a perfect lattice
        assert torch.equal(torch.roll(image, shift, dims=(1, 2)), image)
    assert not torch.equal(torch.roll(image, (0, 2), dims=(1, 2)), image)
    tile = periodic_texture(np.random.default_rng(0), 6, 3)[..., 0]
    assert np.allclose(tile[:3, :3], tile[3:, 3:]) and abs(tile[:3, :3].mean()) < 1e-6


def test_texture_options_are_checked() -> None:
    with pytest.raises(ValueError, match="texture_period=3 must be >= 1 and divide image_size=32"):
        PeriodicDefects(num_samples=1, texture=0.2, texture_period=3)
    with pytest.raises(ValueError, match="texture=-0.1 must be >= 0"):
        PeriodicDefects(num_samples=1, texture=-0.1)
    dm = PeriodicDefectsSegmentationDataModule(num_train=1, num_val=1, num_test=1, texture=0.3, texture_period=4)
    assert dm.dataset("train").texture == 0.3

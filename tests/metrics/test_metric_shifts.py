"""Tests for mass_lightning.metrics.shifts: sampling, applying and undoing per-sample shifts."""

import copy
import doctest
import pickle

import pytest
import torch

import mass_lightning.metrics.consistency
import mass_lightning.metrics.segmentation_consistency
import mass_lightning.metrics.shifts
from mass_lightning.metrics import ShiftSampler, roll_per_sample, sample_shifts, unroll_per_sample


def _roll_loop(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.roll(x[i], tuple(shifts[i].tolist()), dims=(-2, -1)) for i in range(x.shape[0])])


def _random_batch(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    return torch.randint(0, 100, shape, generator=generator).to(dtype)


# sample_shifts


def test_sample_shifts_shape_dtype_and_range():
    shifts = sample_shifts(64, 3, 5, generator=torch.Generator().manual_seed(0))
    assert shifts.shape == (64, 2)
    assert shifts.dtype == torch.long
    assert shifts[:, 0].min() >= 0 and shifts[:, 0].max() < 3
    assert shifts[:, 1].min() >= 0 and shifts[:, 1].max() < 5


def test_sample_shifts_covers_every_offset():
    shifts = sample_shifts(500, 2, 3, generator=torch.Generator().manual_seed(0))
    offsets = {tuple(row) for row in shifts.tolist()}
    assert offsets == {(dy, dx) for dy in range(2) for dx in range(3)}


def test_sample_shifts_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a = sample_shifts(8, 32, 32, generator=torch.Generator().manual_seed(123))
    b = sample_shifts(8, 32, 32, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_shifts_device_and_empty_batch():
    assert sample_shifts(3, 4, 4, device="cpu").device.type == "cpu"
    assert sample_shifts(0, 4, 4).shape == (0, 2)


@pytest.mark.parametrize(("args", "name"), [((-1, 4, 4), "batch_size"), ((2, 0, 4), "height"), ((2, 4, 2.0), "width")])
def test_sample_shifts_rejects_bad_sizes(args, name):
    with pytest.raises(ValueError, match=name):
        sample_shifts(*args)


# roll_per_sample / unroll_per_sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.uint8, torch.bool])
@pytest.mark.parametrize("shape", [(4, 3, 5), (3, 2, 4, 6), (2, 2, 3, 5, 4), (1, 7, 3)])
def test_roll_per_sample_matches_torch_roll_loop(dtype, shape):
    generator = torch.Generator().manual_seed(0)
    x = _random_batch(shape, dtype, generator)
    # Include negative shifts and shifts larger than the image.
    shifts = torch.randint(-20, 20, (shape[0], 2), generator=generator)
    out = roll_per_sample(x, shifts)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.equal(out, _roll_loop(x, shifts))
    assert torch.equal(unroll_per_sample(out, shifts), x)


def test_roll_per_sample_every_shift_of_a_small_image():
    height, width = 3, 5
    shifts = torch.tensor([(dy, dx) for dy in range(height) for dx in range(width)])
    x = torch.arange(height * width).reshape(1, 1, height, width).repeat(len(shifts), 2, 1, 1)
    out = roll_per_sample(x, shifts)
    assert torch.equal(out, _roll_loop(x, shifts))
    # out[i, ..., h, w] = x[i, ..., (h - dy) % H, (w - dx) % W]
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert out[i, 0, dy % height, dx % width] == x[i, 0, 0, 0]


def test_roll_per_sample_non_contiguous_input_and_list_shifts():
    x = torch.arange(2 * 4 * 6).reshape(2, 6, 4).transpose(1, 2)  # non-contiguous (2, 4, 6)
    shifts = [[1, -2], [3, 7]]
    assert torch.equal(roll_per_sample(x, shifts), _roll_loop(x, torch.tensor(shifts)))


def test_roll_per_sample_is_differentiable():
    x = torch.randn(2, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    shifts = torch.tensor([[1, 2], [-1, 3]])
    assert torch.autograd.gradcheck(lambda t: roll_per_sample(t, shifts), (x,))


def test_roll_per_sample_empty_batch():
    x = torch.zeros(0, 3, 4, 4)
    assert roll_per_sample(x, torch.zeros(0, 2, dtype=torch.long)).shape == x.shape


@pytest.mark.parametrize("fn", [roll_per_sample, unroll_per_sample])
def test_roll_per_sample_rejects_bad_shifts(fn):
    x = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, 2\) = \(3, 2\).*got shape \(3,\)"):
        fn(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(3, 3\)"):
        fn(x, torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(4, 2\)"):
        fn(x, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        fn(x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least 3 dims"):
        fn(torch.zeros(4, 4), torch.zeros(4, 2, dtype=torch.long))


# ShiftSampler


def test_shift_sampler_is_reproducible_and_keyed():
    sampler = ShiftSampler(seed=7)
    state = torch.get_rng_state()
    first = sampler.sample_pair(16, 32, 32, batch_idx=2, rank=0)
    assert torch.equal(torch.get_rng_state(), state)
    # Same key, new sampler, after other draws: same shifts.
    ShiftSampler(seed=7).sample(16, 32, 32, batch_idx=5, rank=0)
    again = ShiftSampler(seed=7).sample_pair(16, 32, 32, batch_idx=2, rank=0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert torch.equal(sampler.sample(16, 32, 32, batch_idx=2, rank=0), first[0])
    assert not torch.equal(first[0], first[1])
    # Every part of the key changes the draw.
    others = [
        ShiftSampler(seed=8).sample(16, 32, 32, batch_idx=2, rank=0),
        sampler.sample(16, 32, 32, batch_idx=3, rank=0),
        sampler.sample(16, 32, 32, batch_idx=2, rank=1),
        sampler.sample(16, 32, 32, batch_idx=2, rank=0, dataloader_idx=1),
        sampler.sample(16, 32, 32, batch_idx=2, rank=0, epoch=1),
    ]
    assert all(not torch.equal(other, first[0]) for other in others)


def test_shift_sampler_defaults_to_rank_zero_and_pickles():
    sampler = ShiftSampler(seed=3)
    assert torch.equal(sampler.sample(4, 8, 8, batch_idx=0), sampler.sample(4, 8, 8, batch_idx=0, rank=0))
    for clone in (copy.deepcopy(sampler), pickle.loads(pickle.dumps(sampler))):
        assert torch.equal(clone.sample(4, 8, 8, batch_idx=1), sampler.sample(4, 8, 8, batch_idx=1))
    with pytest.raises(TypeError, match="seed"):
        ShiftSampler(seed=1.5)


@pytest.mark.parametrize(
    "module",
    [
        mass_lightning.metrics.shifts,
        mass_lightning.metrics.consistency,
        mass_lightning.metrics.segmentation_consistency,
    ],
)
def test_docstring_examples(module):
    result = doctest.testmod(module, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shifts_and_metrics_on_cuda():
    from mass_lightning.metrics import CircularConsistency, SegmentationCircularConsistency

    shifts_cpu = sample_shifts(4, 6, 7, generator=torch.Generator().manual_seed(0))
    shifts = sample_shifts(4, 6, 7, generator=torch.Generator().manual_seed(0), device="cuda")
    assert shifts.is_cuda and torch.equal(shifts.cpu(), shifts_cpu)
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.bool):
        x = _random_batch((4, 3, 6, 7), dtype, torch.Generator().manual_seed(1))
        out = roll_per_sample(x.cuda(), shifts_cpu)  # CPU shifts are moved to x's device
        assert out.is_cuda and torch.equal(out.cpu(), _roll_loop(x, shifts_cpu))

    labels = torch.randint(0, 3, (4, 6, 7), device="cuda")
    seg = SegmentationCircularConsistency(ignore_index=255).to("cuda")
    seg.update(roll_per_sample(labels, shifts), roll_per_sample(labels, shifts.flip(0)), shifts, shifts.flip(0), labels)
    assert seg.compute().item() == 1.0
    cls = CircularConsistency().to("cuda")
    cls.update(torch.randn(4, 3, device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda"))
    assert 0.0 <= cls.compute().item() <= 1.0

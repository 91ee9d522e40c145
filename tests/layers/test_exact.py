"""Order-independent reductions: bit-identical under any permutation, close to torch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mass_lightning.layers import ExactGroupNorm, ExactInstanceNorm2d, exact_group_norm, exact_mean, exact_sum


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sum_and_mean_ignore_the_order(dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 5, 7, 9, generator=generator) * torch.logspace(-6, 6, 9)).to(dtype)
    for dims in [(2, 3), (1,), (1, 2, 3), None]:
        reference_sum, reference_mean = exact_sum(x, dims), exact_mean(x, dims)
        for _ in range(3):
            permuted = x.flatten(2)[..., torch.randperm(63, generator=generator)].view_as(x)
            if dims in ((2, 3), None) or dims == (1, 2, 3):
                assert torch.equal(exact_sum(permuted, dims), reference_sum)
                assert torch.equal(exact_mean(permuted, dims), reference_mean)
        tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(reference_mean.double(), x.double().mean(dims if dims else None), rtol=tolerance,
                                   atol=tolerance * float(x.double().abs().max()) * 1e-3)


def test_shift_gives_identical_bits_where_torch_mean_does_not():
    generator = torch.Generator().manual_seed(1)
    shifted_differs = False
    for _ in range(20):
        x = torch.randn(2, 64, 7, 9, generator=generator)
        rolled = torch.roll(x, (3, 4), (2, 3))
        assert torch.equal(exact_mean(rolled, (2, 3)), exact_mean(x, (2, 3)))
        shifted_differs |= not torch.equal(rolled.mean((2, 3)), x.mean((2, 3)))
    assert shifted_differs  # the point of the exercise


def test_non_finite_values_give_nan():
    x = torch.randn(2, 3, 4, 4)
    x[1, 2, 0, 0] = float("inf")
    x[0, 1, 3, 3] = float("nan")
    mean = exact_mean(x, (2, 3))
    assert torch.isnan(mean[1, 2]) and torch.isnan(mean[0, 1])
    assert torch.isfinite(mean[0, 0]) and torch.isfinite(mean[1, 0])


def test_zeros_and_tiny_values():
    assert torch.equal(exact_sum(torch.zeros(2, 3, 4, 4), (2, 3)), torch.zeros(2, 3))
    tiny = torch.full((1, 1, 4, 4), 1e-30)
    torch.testing.assert_close(exact_mean(tiny, (2, 3)), torch.full((1, 1), 1e-30))


def test_gradient_is_the_sums():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    exact_mean(x, (2, 3)).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 20))


def test_group_and_instance_norm_match_torch():
    x = torch.randn(2, 8, 5, 7)
    weight, bias = torch.randn(8), torch.randn(8)
    torch.testing.assert_close(exact_group_norm(x, 4, weight, bias), F.group_norm(x, 4, weight, bias), atol=1e-5,
                               rtol=1e-5)
    norm = torch.nn.GroupNorm(2, 8)
    assert list(ExactGroupNorm.from_module(norm).state_dict()) == list(norm.state_dict())
    instance = torch.nn.InstanceNorm2d(8, affine=True)
    torch.testing.assert_close(ExactInstanceNorm2d.from_module(instance)(x), instance(x), atol=1e-5, rtol=1e-5)
    rolled = torch.roll(x, (2, 3), (2, 3))
    assert torch.equal(exact_group_norm(rolled, 4, weight, bias), torch.roll(exact_group_norm(x, 4, weight, bias),
                                                                             (2, 3), (2, 3)))

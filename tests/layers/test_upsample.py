"""Paired upsampling: down then up returns features in the input's frame, exactly."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mass_lightning.layers import (
    APSConv2d,
    APSUpsample2d,
    MASSConv2d,
    MASSConvTranspose2d,
    MASSMaxPool2d,
    MASSMaxUnpool2d,
    MASSUpsample,
    circular_interpolate,
)


def roll(x, shift):
    return torch.roll(x, tuple(shift), dims=(2, 3))


class Pair(nn.Module):
    """Down then up, the origin (and max-pool indices) passed from one call to the other."""

    def __init__(self, down: nn.Module, up: nn.Module, indices: bool = False) -> None:
        super().__init__()
        self.down, self.up, self.indices = down, up, indices

    def forward(self, x):
        out, origin = self.down(x, return_origin=True)
        if self.indices:
            values, indices = out
            return self.up(values, indices, origin)
        return self.up(out, origin)


def pairs():
    torch.manual_seed(0)
    yield "max-unpool", Pair(MASSMaxPool2d(2, return_indices=True), MASSMaxUnpool2d(2), indices=True)
    yield "max-unpool-k3", Pair(MASSMaxPool2d(3, stride=2, padding=1, return_indices=True), MASSMaxUnpool2d(2),
                                indices=True)
    yield "bilinear", Pair(MASSConv2d(3, 3, 3, stride=2, padding=1), MASSUpsample(2, "bilinear"))
    yield "nearest", Pair(MASSConv2d(3, 3, 3, stride=2, padding=1), MASSUpsample(2, "nearest"))
    yield "conv-transpose", Pair(MASSConv2d(3, 4, 3, stride=2, padding=1),
                                 MASSConvTranspose2d(4, 3, 4, stride=2, padding=1))
    yield "bilinear-s4", Pair(MASSConv2d(3, 3, 4, stride=4), MASSUpsample(4, "bilinear"))
    yield "aps", Pair(APSConv2d(3, 3, 3, stride=2, padding=1), APSUpsample2d(2))


@pytest.mark.parametrize("name,pair", list(pairs()), ids=[p[0] for p in pairs()])
def test_down_up_is_equivariant_every_shift(name, pair):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 12)
    y = pair(x)
    assert y.shape[-2:] == x.shape[-2:]
    for shift in itertools.product(range(8), range(12)):
        torch.testing.assert_close(pair(roll(x, shift)), roll(y, shift), atol=1e-6, rtol=1e-6)


def test_conv_transpose_is_bitwise_equivariant():
    """Every output pixel sums its contributions in the same order, also where they wrap."""
    torch.manual_seed(5)
    up = MASSConvTranspose2d(3, 2, 4, stride=2, padding=1)
    y = torch.randn(2, 3, 5, 6)
    out = up(y)
    for shift in itertools.product(range(5), range(6)):
        assert torch.equal(up(roll(y, shift)), roll(out, (2 * shift[0], 2 * shift[1])))


def test_unpool_restores_maxima_in_input_frame():
    torch.manual_seed(2)
    pool, unpool = MASSMaxPool2d(2, return_indices=True), MASSMaxUnpool2d(2)
    x = torch.randn(3, 2, 8, 8)
    (values, indices), origin = pool(x, return_origin=True)
    out = unpool(values, indices, origin)
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # every kept value sits where it came from
    assert int(kept.sum()) == 3 * 2 * 16


def test_one_pool_reused_at_two_levels():
    """A pool reused at several levels (U-Net style): each call's origin is its own value."""
    torch.manual_seed(3)
    pool, unpool = MASSMaxPool2d(2, return_indices=True), MASSMaxUnpool2d(2)
    x = torch.randn(2, 1, 16, 16)

    def net(t):
        (a, ia), oa = pool(t, return_origin=True)
        (b, ib), ob = pool(a, return_origin=True)
        return unpool(unpool(b, ib, ob) + a, ia, oa)

    y = net(x)
    for shift in [(1, 0), (0, 3), (5, 7), (9, 2)]:
        torch.testing.assert_close(net(roll(x, shift)), roll(y, shift))


def test_errors():
    unpool = MASSMaxUnpool2d(2)
    with pytest.raises(ValueError, match=r"origin must have shape \(1, 2\)"):
        unpool(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="origin must have shape"):
        MASSUpsample(2)(torch.randn(2, 1, 4, 4), torch.zeros(1, 2, dtype=torch.int64))


def test_circular_bilinear_wraps_borders():
    torch.manual_seed(4)
    x = torch.randn(1, 2, 5, 7)
    up = circular_interpolate(x, 2)
    for shift in itertools.product(range(5), range(7)):
        torch.testing.assert_close(circular_interpolate(roll(x, shift), 2), roll(up, (2 * shift[0], 2 * shift[1])))
    # Interior agrees with the ordinary (clamped) bilinear interpolation.
    plain = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1])

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


def pairs():
    torch.manual_seed(0)
    pool = MASSMaxPool2d(2)
    yield "max-unpool", pool, MASSMaxUnpool2d(pool)
    pool3 = MASSMaxPool2d(3, stride=2, padding=1)
    yield "max-unpool-k3", pool3, MASSMaxUnpool2d(pool3)
    conv = MASSConv2d(3, 3, 3, stride=2, padding=1)
    yield "bilinear", conv, MASSUpsample(2, "bilinear", paired=conv)
    conv_n = MASSConv2d(3, 3, 3, stride=2, padding=1)
    yield "nearest", conv_n, MASSUpsample(2, "nearest", paired=conv_n)
    conv_t = MASSConv2d(3, 4, 3, stride=2, padding=1)
    yield "conv-transpose", conv_t, MASSConvTranspose2d(4, 3, 4, stride=2, padding=1, paired=conv_t)
    conv4 = MASSConv2d(3, 3, 4, stride=4)
    yield "bilinear-s4", conv4, MASSUpsample(4, "bilinear", paired=conv4)
    aps = APSConv2d(3, 3, 3, stride=2, padding=1)
    yield "aps", aps, APSUpsample2d(2, paired=aps)


@pytest.mark.parametrize("name,down,up", list(pairs()), ids=[p[0] for p in pairs()])
def test_down_up_is_equivariant_every_shift(name, down, up):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 12)
    y = up(down(x))
    assert y.shape[-2:] == x.shape[-2:]
    for shift in itertools.product(range(8), range(12)):
        torch.testing.assert_close(up(down(roll(x, shift))), roll(y, shift), atol=1e-6, rtol=1e-6)


def test_unpool_restores_maxima_in_input_frame():
    torch.manual_seed(2)
    pool = MASSMaxPool2d(2)
    unpool = MASSMaxUnpool2d(pool)
    x = torch.randn(3, 2, 8, 8)
    out = unpool(pool(x))
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # every kept value sits where it came from
    assert int(kept.sum()) == 3 * 2 * 16


def test_states_are_per_call_last_in_first_out():
    """A pool reused at several levels (U-Net style) is undone in reverse order."""
    torch.manual_seed(3)
    pool = MASSMaxPool2d(2)
    unpool = MASSMaxUnpool2d(pool)
    x = torch.randn(2, 1, 16, 16)

    def net(t):
        a = pool(t)
        b = pool(a)
        return unpool(unpool(b) + a)

    y = net(x)
    for shift in [(1, 0), (0, 3), (5, 7), (9, 2)]:
        torch.testing.assert_close(net(roll(x, shift)), roll(y, shift))
    assert pool._history == []


def test_errors():
    pool = MASSMaxPool2d(2)
    unpool = MASSMaxUnpool2d(pool)
    with pytest.raises(RuntimeError, match="no stored origin"):
        unpool(torch.randn(1, 1, 4, 4))
    with pytest.raises(TypeError, match="pairs with"):
        MASSMaxUnpool2d(nn.MaxPool2d(2))
    with pytest.raises(TypeError, match="paired must be"):
        MASSUpsample(2, paired=nn.Conv2d(1, 1, 1))
    pool(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="batch size"):
        unpool(torch.randn(1, 1, 2, 2))


def test_circular_bilinear_wraps_borders():
    torch.manual_seed(4)
    x = torch.randn(1, 2, 5, 7)
    up = circular_interpolate(x, 2)
    for shift in itertools.product(range(5), range(7)):
        torch.testing.assert_close(circular_interpolate(roll(x, shift), 2), roll(up, (2 * shift[0], 2 * shift[1])))
    # Interior agrees with the ordinary (clamped) bilinear interpolation.
    plain = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], plain[..., 1:-1, 1:-1])

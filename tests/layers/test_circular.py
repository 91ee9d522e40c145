"""Circular padding and per-sample shifts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mass_lightning.layers import circular_pad, conv_padding, shift_and_pad, unshift


def test_circular_pad_matches_torch_and_wraps_beyond_size():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(circular_pad(x, (1, 2, 2, 1)), F.pad(x, (1, 2, 2, 1), mode="circular"))
    big = circular_pad(x, (7, 6, 9, 8))  # more than the size: wraps several times
    assert big.shape == (2, 3, 4 + 17, 5 + 13)
    rows = torch.arange(-9, 4 + 8) % 4
    cols = torch.arange(-7, 5 + 6) % 5
    torch.testing.assert_close(big, x[:, :, rows][:, :, :, cols])


def test_shift_and_pad_per_sample():
    x = torch.randn(3, 2, 6, 8)
    origin = torch.tensor([[0, 0], [1, 3], [5, 7]])
    out = shift_and_pad(x, origin, (1, 1, 2, 0))
    for b in range(3):
        expected = F.pad(torch.roll(x[b : b + 1], tuple((-origin[b]).tolist()), (2, 3)), (1, 1, 2, 0), mode="circular")
        torch.testing.assert_close(out[b : b + 1], expected)
    torch.testing.assert_close(unshift(shift_and_pad(x, origin), origin), x)
    with pytest.raises(ValueError, match="origin must have shape"):
        shift_and_pad(x, origin[:2])


def test_conv_padding_same_and_asymmetric():
    assert conv_padding((3, 3), (1, 1), (1, 1)) == (1, 1, 1, 1)
    assert conv_padding((4, 4), (1, 1), (0, 0)) == (0, 3, 0, 3)
    assert conv_padding((3, 3), (2, 2), "same") == (2, 2, 2, 2)

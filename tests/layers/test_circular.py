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


def _gather_reference(x: torch.Tensor, origin: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    batch, _, height, width = x.shape
    rows = (torch.arange(-top, height + bottom).unsqueeze(0) + origin[:, :1]) % height
    cols = (torch.arange(-left, width + right).unsqueeze(0) + origin[:, 1:]) % width
    sample = torch.arange(batch).view(batch, 1, 1)
    return x[sample, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


@pytest.mark.parametrize("seed", range(4))
def test_shift_and_pad_values_and_gradient_match_a_gather(seed):
    # Random batches, sizes, origins and paddings (also wider than the map): the grouped
    # window copy and its adjoint must equal a plain gather and its autograd gradient.
    generator = torch.Generator().manual_seed(seed)
    for _ in range(25):
        batch, height, width = (int(v) for v in torch.randint(1, 7, (3,), generator=generator))
        pad = tuple(int(v) for v in torch.randint(0, 9, (4,), generator=generator))
        x = torch.randn(batch, 3, height, width, dtype=torch.double, generator=generator, requires_grad=True)
        origin = torch.stack(
            [torch.randint(0, height, (batch,), generator=generator), torch.randint(0, width, (batch,), generator=generator)], 1
        )
        out, expected = shift_and_pad(x, origin, pad), _gather_reference(x, origin, pad)
        assert torch.equal(out, expected)
        grad_out = torch.randn(out.shape, dtype=torch.double, generator=generator)
        (grad,) = torch.autograd.grad(out, x, grad_out)
        (grad_expected,) = torch.autograd.grad(expected, x, grad_out)
        torch.testing.assert_close(grad, grad_expected, rtol=0, atol=1e-12)

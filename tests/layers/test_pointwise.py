"""Position-free pointwise ops: the same bits at every position, and the values of the originals.

The first test also records, on the machine that runs it, that the originals do round
differently by position; if a PyTorch release fixes that, the test says so (and the
replacements can go).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from mass_lightning.layers import pointwise

SHAPES = [(1, 3, 5, 7), (2, 5, 3, 3), (1, 1, 7, 9), (3, 7, 11, 13), (1, 24, 3, 5)]

OPS = {
    "sigmoid": (pointwise.sigmoid, torch.sigmoid),
    "silu": (pointwise.silu, F.silu),
    "softplus": (lambda x: pointwise.softplus(x, 2.0, 5.0), lambda x: F.softplus(x, 2.0, 5.0)),
    "mish": (pointwise.mish, F.mish),
    "elu": (lambda x: pointwise.elu(x, 0.7), lambda x: F.elu(x, 0.7)),
    "selu": (pointwise.selu, F.selu),
    "celu": (lambda x: pointwise.celu(x, 1.3), lambda x: F.celu(x, 1.3)),
    "gelu_tanh": (pointwise.gelu_tanh, lambda x: F.gelu(x, approximate="tanh")),
    "channel_sum": (lambda x: pointwise.position_free_sum(x, 1, keepdim=True), lambda x: x.sum(1, keepdim=True)),
    "channel_mean": (lambda x: pointwise.position_free_mean(x, 1, keepdim=True), lambda x: x.mean(1, keepdim=True)),
    "softmax": (lambda x: pointwise.softmax(x, 1), lambda x: torch.softmax(x, 1)),
    "log_softmax": (lambda x: pointwise.log_softmax(x, 1), lambda x: torch.log_softmax(x, 1)),
    "linear": (lambda x: _channels_last(pointwise.linear, x), lambda x: _channels_last(F.linear, x)),
}
WEIGHT = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
BIAS = torch.randn(32, generator=torch.Generator().manual_seed(1))


def _channels_last(linear, x: torch.Tensor) -> torch.Tensor:
    """A linear layer on the channels of a map (as ConvNeXt's MLP on channels-last maps)."""
    channels = x.shape[1]
    return linear(x.permute(0, 2, 3, 1), WEIGHT[:channels, :channels], BIAS[:channels]).permute(0, 3, 1, 2)


def _shifted_equal(fn, x: torch.Tensor) -> bool:
    y = fn(x)
    return all(torch.equal(fn(torch.roll(x, s, (2, 3))), torch.roll(y, s, (2, 3))) for s in [(1, 0), (0, 1), (2, 3)])


@pytest.mark.parametrize("name", list(OPS))
def test_same_bits_at_every_position_and_same_values(name):
    ours, original = OPS[name]
    generator = torch.Generator().manual_seed(2)
    differs = 0
    for shape, trial in itertools.product(SHAPES, range(6)):
        x = torch.randn(shape, generator=generator) * 3
        assert _shifted_equal(ours, x), f"{name} is not position-free for {shape}"
        differs += not _shifted_equal(original, x)
        torch.testing.assert_close(ours(x), original(x), atol=1e-5, rtol=1e-5)
    print(f"{name}: the original rounds by position in {differs} of {len(SHAPES) * 6} trials")


def test_inplace_variants_write_into_the_input():
    x = torch.randn(2, 3, 5, 7)
    expected = pointwise.silu(x.clone())
    result = pointwise.silu(x, inplace=True)
    assert result is x and torch.equal(x, expected)


def test_long_channel_sums_are_exact_sums():
    x = torch.randn(1, 300, 3, 5)
    torch.testing.assert_close(pointwise.position_free_sum(x, 1), x.double().sum(1).float(), atol=1e-5, rtol=1e-5)
    assert _shifted_equal(lambda t: pointwise.position_free_sum(t, 1, keepdim=True), x)

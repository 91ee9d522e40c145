"""Tests for the binomial low-pass filters (Blur2d, BlurPool2d)."""

from __future__ import annotations

import pytest
import torch

from mass_lightning.layers.blur import Blur2d, BlurPool2d, binomial_kernel, blur2d, blur_pool2d

ROWS = {
    1: [1.0],
    2: [1.0, 1.0],
    3: [1.0, 2.0, 1.0],
    4: [1.0, 3.0, 3.0, 1.0],
    5: [1.0, 4.0, 6.0, 4.0, 1.0],
    6: [1.0, 5.0, 10.0, 10.0, 5.0, 1.0],
    7: [1.0, 6.0, 15.0, 20.0, 15.0, 6.0, 1.0],
}


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors: one thread avoids OpenMP overhead on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rolled_reference(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Independent circular filtering: sum of shifted copies, pad-before = (k - 1) // 2."""
    kernel = binomial_kernel(kernel_size, dtype=torch.float64)
    before = (kernel_size - 1) // 2
    out = torch.zeros_like(x, dtype=torch.float64)
    for a in range(kernel_size):
        for b in range(kernel_size):
            out += kernel[a, b] * torch.roll(x.double(), (before - a, before - b), (2, 3))
    return out


def _assert_equivariant_every_shift(fn, x: torch.Tensor) -> None:
    y = fn(x)
    for dy in range(x.shape[2]):
        for dx in range(x.shape[3]):
            shifted = fn(torch.roll(x, (dy, dx), (2, 3)))
            assert torch.equal(shifted, torch.roll(y, (dy, dx), (2, 3))), f"shift {(dy, dx)}"


# --- binomial_kernel ------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", range(1, 8))
def test_binomial_kernel_values(kernel_size):
    row = torch.tensor(ROWS[kernel_size], dtype=torch.float64)
    expected = torch.outer(row, row) / row.sum() ** 2
    kernel = binomial_kernel(kernel_size, dtype=torch.float64)
    assert kernel.shape == (kernel_size, kernel_size)
    torch.testing.assert_close(kernel, expected)
    assert torch.equal(kernel, kernel.flip(0)) and torch.equal(kernel, kernel.T)
    assert binomial_kernel(kernel_size).dtype == torch.get_default_dtype()


@pytest.mark.parametrize("bad", [0, 8, -1, 2.5, True, "3"])
def test_binomial_kernel_bad_size(bad):
    with pytest.raises(ValueError, match=r"kernel_size must be an integer in 1\.\.7"):
        binomial_kernel(bad)


# --- blur2d / Blur2d ------------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", range(1, 8))
def test_blur_matches_rolled_reference(kernel_size):
    # Also pins the even-size convention: (k - 1) // 2 before, k // 2 after.
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(blur2d(x, kernel_size), _rolled_reference(x, kernel_size))
    torch.testing.assert_close(Blur2d(kernel_size)(x), _rolled_reference(x, kernel_size))


def test_blur_even_kernel_impulse_position():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 4.0
    y = blur2d(x, 2)  # output i averages inputs i and i + 1
    expected = torch.zeros(1, 1, 5, 5)
    expected[0, 0, 1:3, 1:3] = 1.0
    assert torch.equal(y, expected)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 3, 9, 14), (1, 5, 7, 4)])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5])
def test_blur_shapes(shape, kernel_size):
    x = torch.randn(shape)
    assert Blur2d(kernel_size)(x).shape == shape
    assert blur2d(x, kernel_size).shape == shape


def test_blur_size_one_is_identity():
    x = torch.randn(2, 3, 5, 6)
    assert torch.equal(Blur2d(1)(x), x)


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5, 7])
def test_blur_exactly_equivariant_every_shift(kernel_size):
    x = torch.randn(2, 4, 8, 12)
    _assert_equivariant_every_shift(Blur2d(kernel_size), x)


def test_blur_exactly_equivariant_channels_last_and_float64():
    x = torch.randn(2, 8, 8, 12).to(memory_format=torch.channels_last)
    _assert_equivariant_every_shift(Blur2d(3), x)
    _assert_equivariant_every_shift(Blur2d(4), x.double())


def test_blur_exactly_equivariant_bfloat16():
    x = torch.randn(2, 4, 8, 12, dtype=torch.bfloat16)
    _assert_equivariant_every_shift(Blur2d(3), x)


def test_blur_channels_last_matches_contiguous():
    x = torch.randn(2, 8, 9, 10)
    y = Blur2d(3)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, Blur2d(3)(x))


def test_blur_preserves_mean_and_constants():
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(blur2d(x, 5).mean((2, 3)), x.mean((2, 3)))
    const = torch.full((1, 2, 6, 7), 3.0)
    torch.testing.assert_close(blur2d(const, 3), const)


def test_blur_kernel_buffer_not_persistent_and_follows_dtype():
    layer = Blur2d(3)
    assert "kernel" in dict(layer.named_buffers())
    assert layer.state_dict() == {}
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    assert layer(x).dtype == torch.float64  # float32 buffer cast to the input
    assert layer.double().kernel.dtype == torch.float64


def test_blur_bf16_autocast_smoke():
    layer = Blur2d(3)
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), layer(x), atol=5e-2, rtol=5e-2)


def test_blur_gradcheck():
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(Blur2d(3), (x,))
    assert torch.autograd.gradcheck(lambda t: blur_pool2d(t, 4, 2), (x,))


def test_blur_compile_smoke():
    # Dynamo tracing only (no C++ codegen): checks the layer has no graph breaks.
    layer = Blur2d(3)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(compiled(x), layer(x))


def test_blur_bad_inputs():
    with pytest.raises(ValueError, match=r"Blur2d expects a 4-D input"):
        Blur2d(3)(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"blur2d expects a 4-D input"):
        blur2d(torch.randn(8, 8), 3)
    with pytest.raises(ValueError, match=r"Blur2d: kernel_size must be an integer in 1\.\.7"):
        Blur2d(9)
    with pytest.raises(ValueError, match=r"Blur2d was built for 4 channels but got an input with 3"):
        Blur2d(3, channels=4)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"Blur2d\(kernel_size=7\) needs H and W >= 3.*2x8"):
        Blur2d(7)(torch.randn(1, 3, 2, 8))
    with pytest.raises(TypeError, match=r"floating-point"):
        Blur2d(3)(torch.ones(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"channels must be a positive int"):
        Blur2d(3, channels=0)


# --- blur_pool2d / BlurPool2d ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (2, 3, 9, 14), (1, 5, 7, 5)])
@pytest.mark.parametrize("kernel_size", [1, 2, 3, 5])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_blur_pool_is_blur_then_phase_zero(shape, kernel_size, stride):
    x = torch.randn(shape)
    expected = blur2d(x, kernel_size)[:, :, ::stride, ::stride]
    y = BlurPool2d(kernel_size, stride)(x)
    assert y.shape == (shape[0], shape[1], -(-shape[2] // stride), -(-shape[3] // stride))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(blur_pool2d(x, kernel_size, stride), expected, rtol=0, atol=1e-6)


def test_blur_pool_bad_stride():
    with pytest.raises(ValueError, match=r"BlurPool2d: stride must be a positive integer"):
        BlurPool2d(3, stride=0)
    with pytest.raises(ValueError, match=r"blur_pool2d: stride must be a positive integer"):
        blur_pool2d(torch.randn(1, 1, 4, 4), 3, 1.5)


def test_blur_pool_repr_and_state_dict():
    layer = BlurPool2d(3, stride=2, channels=8)
    assert "stride=2" in repr(layer) and "circular" in repr(layer)
    assert layer.state_dict() == {}


def test_blur_pool_is_not_a_stride_one_blur():
    # Conversions find the stride-1 filters with isinstance(m, Blur2d).
    assert not isinstance(BlurPool2d(3, 2), Blur2d)

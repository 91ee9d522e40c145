"""MASS / APS / circular downsampling layers: exact equivariance, shapes, dtypes, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mass_lightning.layers import (
    DDAC,
    APSAvgPool2d,
    APSConv2d,
    APSMaxPool2d,
    Blur2d,
    CircularAvgPool2d,
    CircularConv2d,
    CircularMaxPool2d,
    MASSAvgPool2d,
    MASSConv2d,
    MASSDownsample,
    MASSMaxPool2d,
    mass_downsample,
)
from mass_lightning.layers.circular import circular_pad, shift_and_pad


def roll(x, shift):
    return torch.roll(x, tuple(shift), dims=(2, 3))


def make(kind: str, sampling: str, stride: int, antialias: str | None, channels: int = 3) -> nn.Module:
    aa = None
    if antialias == "lpf3":
        aa = Blur2d(3)
    classes = {
        "conv": {"fixed": CircularConv2d, "mass": MASSConv2d, "aps": APSConv2d},
        "max": {"fixed": CircularMaxPool2d, "mass": MASSMaxPool2d, "aps": APSMaxPool2d},
        "avg": {"fixed": CircularAvgPool2d, "mass": MASSAvgPool2d, "aps": APSAvgPool2d},
    }[kind][sampling]
    if kind == "conv":
        if antialias == "ddac3":
            aa = DDAC(4, 3)
        kernel, padding = (3, 1) if stride == 2 else (4, 0)
        return classes(channels, 4, kernel, stride=stride, padding=padding, antialias=aa)
    if antialias == "ddac3":
        aa = DDAC(channels, 3, group=1)
    kernel, padding = (3, 1) if kind == "max" else (stride, 0)
    return classes(kernel, stride, padding, antialias=aa)


def check_equivariant(layer: nn.Module, x: torch.Tensor, shifts, exact: bool = True) -> None:
    """All shifted copies go through the layer as one batch (origins are per sample)."""
    # The unshifted copy is part of the same batch: results must not depend on the batch size.
    stride = torch.tensor(layer._stride_pair())
    shifts = torch.tensor([(0, 0)] + list(shifts)).view(-1, 2)
    batch = x.shape[0]
    shifted = torch.cat([roll(x, d.tolist()) for d in shifts])
    out, origins = layer(shifted, return_origin=True)
    y2 = out.view(len(shifts), batch, *out.shape[1:])
    origin2 = origins.view(len(shifts), batch, 2)
    y, origin = y2[0], origin2[0]
    for i, d in enumerate(shifts):
        k = torch.div(d + origin - origin2[i], stride, rounding_mode="floor")
        for b in range(batch):
            expected = torch.roll(y[b], tuple(k[b].tolist()), dims=(1, 2))
            if exact:
                assert torch.equal(y2[i, b], expected), f"{layer} not exact for shift {d.tolist()}"
            else:
                torch.testing.assert_close(y2[i, b], expected, atol=1e-5, rtol=1e-5)


KINDS = ["conv", "max", "avg"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampling", ["mass", "aps"])
@pytest.mark.parametrize("antialias", [None, "lpf3", "ddac3"])
@pytest.mark.parametrize("stride", [2, 4])
def test_every_shift_exact(kind, sampling, antialias, stride):
    torch.manual_seed(0)
    layer = make(kind, sampling, stride, antialias).eval()
    x = torch.randn(2, 3, 8, 12)
    check_equivariant(layer, x, itertools.product(range(8), range(12)))


@pytest.mark.parametrize("kind", KINDS)
def test_random_shifts_larger_input(kind):
    torch.manual_seed(1)
    layer = make(kind, "mass", 2, None, channels=8).eval()
    x = torch.randn(3, 8, 48, 80)
    shifts = [(int(a), int(b)) for a, b in zip(torch.randint(0, 48, (20,)), torch.randint(0, 80, (20,)))]
    check_equivariant(layer, x, shifts)


@pytest.mark.parametrize("kind", KINDS)
def test_baseline_is_not_equivariant(kind):
    torch.manual_seed(2)
    layer = make(kind, "fixed", 2, None).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(AssertionError):
        check_equivariant(layer, x, [(1, 0), (0, 1), (1, 1)])


@pytest.mark.parametrize("kind", KINDS)
def test_mass_equals_original_op_on_shifted_input(kind):
    """MASS runs the original op unchanged: at origin (0, 0) it is the circular op itself."""
    torch.manual_seed(3)
    mass = make(kind, "mass", 2, None)
    x = torch.randn(1, 3, 8, 8)
    y, origins = mass(x, return_origin=True)
    origin = origins[0]
    plain = make(kind, "fixed", 2, None)
    plain.load_state_dict(mass.state_dict())
    torch.testing.assert_close(y, plain(roll(x, (-origin).tolist())))


def test_zero_padded_weights_mean_the_same_in_the_interior():
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    circ = CircularConv2d.from_conv(conv)
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(circ(x)[..., 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1])
    assert list(circ.state_dict()) == list(conv.state_dict())


@pytest.mark.parametrize("sampling", ["mass", "aps"])
def test_widening_conv_restores_the_input_order_with_the_same_bits(sampling, monkeypatch):
    """A conv whose output is larger than its padded input (a stem) puts the input back in
    batch order instead of the output: equivariant, and bit-identical to the other order."""
    torch.manual_seed(6)
    cls = MASSConv2d if sampling == "mass" else APSConv2d
    layer = cls(2, 24, 3, stride=2, padding=1)
    x = torch.randn(2, 2, 8, 12)
    assert layer._widens(x)
    check_equivariant(layer.eval(), x, itertools.product(range(2), range(4)))
    batch = torch.cat([roll(x, (dy, dx)) for dy in range(2) for dx in range(2)]).requires_grad_()
    layer.train()
    out = layer(batch)
    (grad,) = torch.autograd.grad(out.square().sum(), batch)
    monkeypatch.setattr(cls, "_widens", lambda self, x: False)
    other = layer(batch)
    (other_grad,) = torch.autograd.grad(other.square().sum(), batch)
    assert torch.equal(out, other) and torch.equal(grad, other_grad)


def test_batch_one_non_square_channels_last_stride4():
    torch.manual_seed(5)
    layer = make("conv", "mass", 4, None).eval()
    x = torch.randn(1, 3, 16, 24).to(memory_format=torch.channels_last)
    check_equivariant(layer, x, [(1, 3), (5, 7), (15, 23)])
    assert layer(x).shape == (1, 4, 4, 6)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast(kind):
    torch.manual_seed(6)
    layer = make(kind, "mass", 2, None).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_equivariant(layer, x, itertools.product(range(0, 8, 3), range(8)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampling", ["mass", "aps"])
def test_gradcheck(kind, sampling):
    torch.manual_seed(7)
    layer = make(kind, sampling, 2, None).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_errors_are_clear():
    conv = MASSConv2d(3, 4, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"MASSConv2d.*7x8 is not divisible by the stride 2x2"):
        conv(torch.randn(1, 3, 7, 8))
    with pytest.raises(ValueError, match="4-D input"):
        conv(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        conv(torch.randn(1, 5, 8, 8))
    with pytest.raises(ValueError, match="not divisible"):
        MASSMaxPool2d(2)(torch.randn(1, 1, 6, 5))


def test_origin_is_shared_by_passing_it():
    """The shortcut of a residual block takes the main branch's origin as an argument."""
    torch.manual_seed(8)
    main, shortcut = MASSConv2d(3, 4, 3, stride=2, padding=1), MASSConv2d(3, 4, 1, stride=2)
    x, other = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    _, origin = main(x, return_origin=True)
    _, used = shortcut(other, origin=origin, return_origin=True)
    assert torch.equal(used, origin)
    assert not torch.equal(shortcut(other, return_origin=True)[1], origin)  # would choose differently alone
    with pytest.raises(ValueError, match=r"origin must have shape \(4, 2\)"):
        shortcut(other, origin=origin[:2])


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_input_names_the_layer(kind):
    layer = make(kind, "mass", 2, None)
    layer.name = "layer2.0.conv1"
    x = torch.randn(3, 3, 8, 8)
    x[1, 0, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"layer2.0.conv1: the input of sample\(s\) \[1\] holds NaN or Inf"):
        layer(x)
    x[1, 0, 2, 5] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(x)


def test_generic_wrapper_and_functional():
    torch.manual_seed(9)
    pool = nn.AvgPool2d(2)
    wrapped = MASSDownsample(pool, stride=2)
    x = torch.randn(2, 3, 8, 8)
    y, origin = mass_downsample(x, pool, 2)
    torch.testing.assert_close(wrapped(x), y)
    assert torch.equal(wrapped(x, return_origin=True)[1], origin)
    check_equivariant(wrapped, x, itertools.product(range(8), range(8)))
    conv = nn.Conv2d(3, 4, 2, stride=2)
    state = MASSDownsample(conv, 2).state_dict()
    assert list(state) == ["weight", "bias"]
    fresh = MASSDownsample(nn.Conv2d(3, 4, 2, stride=2), 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.module.weight, conv.weight)


MAX_POOLS = {"fixed": CircularMaxPool2d, "mass": MASSMaxPool2d, "aps": APSMaxPool2d}
MAX_POOL_CASES = [("fixed", False), ("fixed", True), ("mass", False), ("mass", True), ("aps", False)]  # APS: no indices


@pytest.mark.parametrize(("sampling", "return_indices"), MAX_POOL_CASES)
def test_max_pool_gradient_equals_the_nchw_reference(sampling, return_indices):
    """The channels-last max-pool hands its gradient back channels-last (a fast kernel): the
    gradient is bit-identical to running the op on an NCHW shifted, padded copy."""
    torch.manual_seed(8)
    layer = MAX_POOLS[sampling](3, 2, 1, return_indices=return_indices)
    x = torch.randn(2, 5, 8, 12)
    batch = torch.cat([roll(x, (dy, dx)) for dy in range(2) for dx in range(3)]).requires_grad_()
    out, origin = layer(batch, return_origin=True)
    values = out[0] if return_indices else out
    weight = torch.randn_like(values)
    (grad,) = torch.autograd.grad((values * weight).sum(), batch)

    reference = batch.detach().clone().requires_grad_()
    if sampling == "aps":
        dense = F.max_pool2d(circular_pad(reference, (1, 1, 1, 1)), 3, 1)
        expected = torch.stack([dense[b, :, oy::2, ox::2] for b, (oy, ox) in enumerate(origin.tolist())])
    else:
        expected = F.max_pool2d(shift_and_pad(reference, origin, (1, 1, 1, 1)), 3, 2)
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), reference)
    assert values.is_contiguous() and torch.equal(values, expected)
    assert torch.equal(grad, expected_grad)


@pytest.mark.parametrize(("sampling", "return_indices"), MAX_POOL_CASES)
def test_max_pool_batch_chunks_change_no_bit(sampling, return_indices, monkeypatch):
    """Large batches max-pool in chunks (padded copies the allocator can reuse): values,
    indices, origins and gradients are bit-identical to one whole-batch call, at the default
    thread count, with an uneven last chunk."""
    from mass_lightning.layers import downsample

    torch.manual_seed(9)
    layer = MAX_POOLS[sampling](3, 2, 1, return_indices=return_indices)
    x = torch.randn(2, 4, 8, 10)
    batch = torch.cat([roll(x, (dy, dx)) for dy in range(2) for dx in range(4)])  # 16 samples
    sizes = []
    on_shifted = downsample._on_shifted
    monkeypatch.setattr(downsample, "_on_shifted", lambda op, x, *a, **k: sizes.append(len(x)) or on_shifted(op, x, *a, **k))

    def run(chunk_bytes: int) -> list[torch.Tensor]:
        monkeypatch.setattr(downsample, "_CHUNK_BYTES", chunk_bytes)
        with torch.no_grad():
            frozen, _ = layer(batch, return_origin=True)
        source = batch.clone().requires_grad_()
        out, origin = layer(source, return_origin=True)
        values = out[0] if return_indices else out
        weight = torch.linspace(-1, 1, values.numel()).view_as(values)
        (grad,) = torch.autograd.grad((values * weight).sum(), source)
        flat = lambda t: list(t) if isinstance(t, tuple) else [t]  # noqa: E731
        return [*flat(frozen), *flat(out), origin, grad]

    whole = run(1 << 40)
    assert sizes == [16, 16]
    sizes.clear()
    chunked = run(3 * 4 * 10 * 12 * batch.element_size())  # padded copies of 3 samples
    assert sizes == [3, 3, 3, 3, 3, 1] * 2
    for expected, actual in zip(whole, chunked, strict=True):
        assert torch.equal(expected, actual)


@pytest.mark.parametrize("stride", [2, 4])
@pytest.mark.parametrize("antialias", [None, "lpf3"])
def test_strided_1x1_conv_runs_on_the_origin_component(stride, antialias, monkeypatch):
    """A 1x1 strided conv (a ResNet shortcut) reads only the origin's polyphase component, not
    a shifted copy of its whole input: exactly equivariant, the values of the op on the
    shifted input, and gradients through it."""
    from mass_lightning.layers import downsample

    torch.manual_seed(10)
    layer = MASSConv2d(3, 5, 1, stride=stride, antialias=Blur2d(3) if antialias else None).eval()
    x = torch.randn(2, 3, 8, 12)
    check_equivariant(layer, x, itertools.product(range(stride + 1), range(stride)))
    # Negative control, same data and weights: the fixed-phase circular conv is not equivariant.
    baseline = CircularConv2d(3, 5, 1, stride=stride, antialias=layer.antialias).eval()
    baseline.load_state_dict(layer.state_dict())
    with torch.no_grad():
        y, y_shifted = baseline(x), baseline(roll(x, (1, 0)))
    assert not any(torch.equal(y_shifted, roll(y, (a, b))) for a in range(y.shape[2]) for b in range(y.shape[3]))
    copies = []
    on_shifted = downsample._on_shifted
    monkeypatch.setattr(downsample, "_on_shifted", lambda *a, **k: copies.append(a) or on_shifted(*a, **k))
    y, origin = layer(x, return_origin=True)
    assert not copies
    source = x if layer.antialias is None else layer.antialias(x)
    expected = F.conv2d(shift_and_pad(source, origin), layer.weight, layer.bias, stride)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    double = layer.double().train()
    assert torch.autograd.gradcheck(double, (x.double().requires_grad_(),))

"""Tests for the DDAC content-aware low-pass filter."""

from __future__ import annotations

import pytest
import torch

from mass_lightning.layers.ddac import DDAC, ddac2d, exact_global_avg_pool2d


@pytest.fixture(autouse=True)
def _single_thread():
    # Tiny tensors: one thread avoids OpenMP overhead on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _eval_layer(channels: int = 8, seed: int = 0, **kwargs) -> DDAC:
    """A DDAC in eval mode with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    layer = DDAC(channels, **kwargs)
    for bn in (layer.bn, layer.channel_bn):
        if bn is not None:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.normal_()
            bn.bias.data.normal_()
    return layer.eval()


def _assert_equivariant_every_shift(fn, x: torch.Tensor) -> None:
    y = fn(x)
    for dy in range(x.shape[2]):
        for dx in range(x.shape[3]):
            shifted = fn(torch.roll(x, (dy, dx), (2, 3)))
            assert torch.equal(shifted, torch.roll(y, (dy, dx), (2, 3))), f"shift {(dy, dx)}"


def _loop_reference(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Pixel-by-pixel circular filtering; ``filters`` is (N, G, k*k, H, W)."""
    n, c, h, w = x.shape
    groups, taps = filters.shape[1:3]
    k = int(taps**0.5)
    out = torch.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            g = ch // (c // groups)
            for i in range(h):
                for j in range(w):
                    for p in range(k):
                        for q in range(k):
                            value = x[b, ch, (i + p - k // 2) % h, (j + q - k // 2) % w]
                            out[b, ch, i, j] += filters[b, g, p * k + q, i, j] * value
    return out


# --- shapes and exactness --------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 8, 16, 16), (2, 8, 9, 14), (1, 8, 7, 5)])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("channel_adaptive", [True, False])
def test_ddac_shapes(shape, kernel_size, channel_adaptive):
    layer = _eval_layer(8, kernel_size=kernel_size, channel_adaptive=channel_adaptive)
    assert layer(torch.randn(shape)).shape == shape


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"group": 4, "channel_groups": 2},
        {"channel_adaptive": False},
        {"joint_softmax": True},
        {"kernel_size": 5, "group": 1},
    ],
)
def test_ddac_exactly_equivariant_every_shift_eval(kwargs):
    layer = _eval_layer(8, **kwargs)
    _assert_equivariant_every_shift(layer, torch.randn(2, 8, 8, 12))


def test_ddac_exactly_equivariant_channels_last():
    layer = _eval_layer(8)
    _assert_equivariant_every_shift(layer, torch.randn(2, 8, 8, 12).to(memory_format=torch.channels_last))


def test_ddac2d_exactly_equivariant_with_shifted_filters():
    x = torch.randn(2, 6, 8, 12)
    spatial = torch.rand(2, 3, 9, 8, 12)
    channel = torch.rand(2, 6, 9)
    y = ddac2d(x, spatial, channel)
    for shift in [(1, 0), (0, 5), (3, 7), (7, 11)]:
        rolled = ddac2d(torch.roll(x, shift, (2, 3)), torch.roll(spatial, shift, (3, 4)), channel)
        assert torch.equal(rolled, torch.roll(y, shift, (2, 3)))


def test_exact_global_avg_pool_is_order_independent():
    x = torch.randn(2, 5, 8, 12)
    pooled = exact_global_avg_pool2d(x)
    assert pooled.shape == (2, 5, 1, 1)
    torch.testing.assert_close(pooled, x.mean((2, 3), keepdim=True))
    permuted = x.flatten(2)[:, :, torch.randperm(96)].reshape(2, 5, 8, 12)
    assert torch.equal(exact_global_avg_pool2d(permuted), pooled)


# --- semantics -------------------------------------------------------------------------


def test_ddac2d_matches_pixel_loop_reference():
    x = torch.randn(1, 4, 3, 4, dtype=torch.float64)
    spatial = torch.rand(1, 2, 9, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(ddac2d(x, spatial), _loop_reference(x, spatial))


def test_ddac2d_averages_spatial_and_channel_outputs():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    spatial = torch.rand(2, 2, 9, 5, 6, dtype=torch.float64)
    channel = torch.rand(2, 4, 9, dtype=torch.float64)
    channel_as_spatial = channel[..., None, None].expand(2, 4, 9, 5, 6)
    expected = (ddac2d(x, spatial) + ddac2d(x, channel_as_spatial)) / 2
    torch.testing.assert_close(ddac2d(x, spatial, channel), expected)


def test_ddac_layer_uses_its_predicted_filters():
    layer = _eval_layer(4, group=2, channel_groups=4).double()
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    spatial, channel = layer.spatial_filters(x), layer.channel_filters(x)
    assert spatial.shape == (1, 2, 9, 5, 6) and channel.shape == (1, 4, 9)
    channel_as_spatial = channel[..., None, None].expand(1, 4, 9, 5, 6)
    expected = (_loop_reference(x, spatial) + _loop_reference(x, channel_as_spatial)) / 2
    torch.testing.assert_close(layer(x), expected)


def test_ddac_filters_are_softmax_normalized():
    layer = _eval_layer(8, group=2)
    x = torch.randn(2, 8, 6, 7)
    spatial, channel = layer.spatial_filters(x), layer.channel_filters(x)
    assert (spatial >= 0).all() and (channel >= 0).all()
    torch.testing.assert_close(spatial.sum(2), torch.ones(2, 2, 6, 7))
    torch.testing.assert_close(channel.sum(2), torch.ones(2, 8))
    # Unit DC gain: a constant map stays constant.
    const = torch.full((2, 8, 6, 7), 1.5)
    torch.testing.assert_close(layer(const), const)


def test_ddac_joint_softmax_matches_reference_normalization():
    layer = _eval_layer(8, group=2, joint_softmax=True, channel_adaptive=False)
    x = torch.randn(2, 8, 6, 7)
    spatial = layer.spatial_filters(x)
    torch.testing.assert_close(spatial.sum((1, 2)), torch.ones(2, 6, 7))  # one softmax over all logits
    logits = layer.bn(layer.conv(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")))
    torch.testing.assert_close(spatial.reshape(2, 18, 6, 7), logits.softmax(1))


def test_ddac_state_dict_keys_match_reference_layout():
    spatial_only = DDAC(8, channel_adaptive=False)
    assert spatial_only.conv.weight.shape == (2 * 9, 8, 3, 3)
    assert {k.split(".")[0] for k in spatial_only.state_dict()} == {"conv", "bn"}
    full = DDAC(8)
    assert full.channel_conv.weight.shape == (8 * 9, 8, 1, 1)
    assert full.conv.padding == (0, 0)  # the layer pads circularly itself


# --- training, gradients, precision ------------------------------------------------------


def test_ddac_gradcheck():
    layer = _eval_layer(4, group=2).double()
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    layer.train()
    x2 = torch.randn(2, 4, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x2,))


def test_ddac2d_gradcheck_filters():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    spatial = torch.rand(1, 1, 9, 3, 4, dtype=torch.float64, requires_grad=True)
    channel = torch.rand(1, 2, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ddac2d, (x, spatial, channel))


def test_ddac_train_backward_smoke():
    layer = DDAC(8).train()
    y = layer(torch.randn(2, 8, 8, 8))
    y.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_ddac_bf16_autocast_smoke():
    layer = _eval_layer(8)
    x = torch.randn(2, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), layer(x), atol=1e-1, rtol=1e-1)


# --- errors ----------------------------------------------------------------------------


def test_ddac_bad_inputs():
    with pytest.raises(ValueError, match=r"DDAC expects a 4-D input"):
        DDAC(8)(torch.randn(8, 8, 8))
    with pytest.raises(ValueError, match=r"DDAC was built for channels=8 but got an input with 4 channels"):
        DDAC(8).eval()(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"kernel_size must be odd"):
        DDAC(8, kernel_size=4)
    with pytest.raises(ValueError, match=r"group=3 must divide channels=8"):
        DDAC(8, group=3)
    with pytest.raises(ValueError, match=r"channel_groups=3 must divide channels=8"):
        DDAC(8, channel_groups=3)
    with pytest.raises(ValueError, match=r"channels must be a positive int"):
        DDAC(0)
    with pytest.raises(ValueError, match=r"at least 2 samples in training"):
        DDAC(8).train()(torch.randn(1, 8, 8, 8))
    DDAC(8, channel_adaptive=False).train()(torch.randn(1, 8, 8, 8))  # fine without the channel branch
    with pytest.raises(ValueError, match=r"DDAC\(kernel_size=5\) needs H and W >= 2.*1x8"):
        DDAC(8, kernel_size=5).eval()(torch.randn(1, 8, 1, 8))


def test_ddac2d_bad_filters():
    x = torch.randn(1, 4, 5, 6)
    with pytest.raises(ValueError, match=r"spatial_filters must have shape"):
        ddac2d(x, torch.rand(1, 2, 9, 5, 5))
    with pytest.raises(ValueError, match=r"k\*k taps for an odd k"):
        ddac2d(x, torch.rand(1, 2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"cannot be split into 3 filter groups"):
        ddac2d(x, torch.rand(1, 3, 9, 5, 6))
    with pytest.raises(ValueError, match=r"channel_filters must have shape"):
        ddac2d(x, torch.rand(1, 2, 9, 5, 6), torch.rand(1, 4, 25))

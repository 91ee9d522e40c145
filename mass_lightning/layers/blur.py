"""Binomial low-pass filters (LPF) for anti-aliasing, with circular padding.

The filters are those of Zhang, "Making Convolutional Networks Shift-Invariant Again"
(ICML 2019, ``antialiased-cnns``): the outer product of a binomial row
``[1]``, ``[1, 1]``, ``[1, 2, 1]``, ..., ``[1, 6, 15, 20, 15, 6, 1]``, normalized to sum 1.

:class:`Blur2d` is a *stride-1* filter: it keeps ``H x W`` and is exactly equivariant to every
circular shift, because circular padding plus a depthwise convolution does the same
arithmetic at every pixel. The antialiased MASS / APS layers apply it first and subsample
afterwards. :class:`BlurPool2d` is the plain baseline BlurPool (blur, then keep phase 0).

Even kernel sizes have no centre tap. As in ``antialiased-cnns`` the padding is asymmetric:
``(k - 1) // 2`` rows/columns before and ``k // 2`` after, so output pixel ``i`` averages
input pixels ``i - (k - 1) // 2, ..., i + k // 2`` (indices modulo the size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Blur2d", "BlurPool2d", "binomial_kernel", "blur2d", "blur_pool2d"]

_BINOMIAL_ROWS: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, 1.0),
    3: (1.0, 2.0, 1.0),
    4: (1.0, 3.0, 3.0, 1.0),
    5: (1.0, 4.0, 6.0, 4.0, 1.0),
    6: (1.0, 5.0, 10.0, 10.0, 5.0, 1.0),
    7: (1.0, 6.0, 15.0, 20.0, 15.0, 6.0, 1.0),
}


def _check_kernel_size(kernel_size: int, layer: str) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size not in _BINOMIAL_ROWS:
        raise ValueError(
            f"{layer}: kernel_size must be an integer in 1..7 (binomial filters), got {kernel_size!r}. "
            "Use 3 (the common LPF-3) or 5."
        )
    return kernel_size


def _check_stride(stride: int, layer: str) -> int:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{layer}: stride must be a positive integer, got {stride!r}.")
    return stride


def _padding(kernel_size: int) -> tuple[int, int, int, int]:
    before, after = (kernel_size - 1) // 2, kernel_size // 2
    return (before, after, before, after)  # F.pad order: left, right, top, bottom


def _check_input(x: Tensor, kernel_size: int, layer: str, channels: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got {shape}.")
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point input, got dtype {x.dtype}.")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(
            f"{layer} was built for {channels} channels but got an input with {x.shape[1]} "
            f"(shape {tuple(x.shape)}). Build it with channels={x.shape[1]} or channels=None."
        )
    pad = kernel_size // 2
    if pad > 0 and min(x.shape[-2:]) < pad:
        raise ValueError(
            f"{layer}(kernel_size={kernel_size}) needs H and W >= {pad} for circular padding, "
            f"got {x.shape[-2]}x{x.shape[-1]}. Use a smaller kernel_size or a larger input."
        )


def binomial_kernel(
    kernel_size: int, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Return the normalized 2-D binomial filter of size ``kernel_size x kernel_size``.

    Args:
        kernel_size: Filter size, 1 to 7. Size 1 is the identity filter ``[[1.]]``.
        dtype: Dtype of the result (default: the global default dtype).
        device: Device of the result.

    Returns:
        Tensor of shape ``(kernel_size, kernel_size)``, non-negative, summing to 1.

    Raises:
        ValueError: If ``kernel_size`` is not an integer in 1..7.

    Example:
        >>> binomial_kernel(3) * 16
        tensor([[1., 2., 1.],
                [2., 4., 2.],
                [1., 2., 1.]])
    """
    _check_kernel_size(kernel_size, "binomial_kernel")
    row = torch.tensor(_BINOMIAL_ROWS[kernel_size], dtype=torch.float64)
    kernel = torch.outer(row, row)
    kernel = kernel / kernel.sum()
    return kernel.to(dtype=dtype or torch.get_default_dtype(), device=device)


def _blur(x: Tensor, kernel: Tensor, stride: int = 1) -> Tensor:
    """Depthwise circular convolution of ``x`` with a 2-D ``kernel`` (any dtype/device)."""
    k = kernel.shape[-1]
    if k == 1:  # binomial size 1 is the identity filter
        return x if stride == 1 else x[:, :, ::stride, ::stride]
    channels = x.shape[1]
    weight = kernel.to(dtype=x.dtype, device=x.device).reshape(1, 1, k, k).expand(channels, 1, k, k).contiguous()
    padded = F.pad(x, _padding(k), mode="circular")
    return F.conv2d(padded, weight, stride=stride, groups=channels)


def blur2d(x: Tensor, kernel_size: int = 3) -> Tensor:
    """Blur each channel with a binomial filter, circular padding, stride 1.

    Exactly equivariant to circular shifts:
    ``blur2d(torch.roll(x, s, (2, 3)), k)`` equals ``torch.roll(blur2d(x, k), s, (2, 3))``
    bit for bit. Even sizes pad ``(k - 1) // 2`` before and ``k // 2`` after (the
    ``antialiased-cnns`` convention).

    Args:
        x: Input feature map.
        kernel_size: Binomial filter size, 1 to 7 (1 returns ``x`` unchanged).

    Returns:
        The blurred feature map, same shape, dtype and device as ``x``.

    Shape:
        - Input: :math:`(N, C, H, W)` with ``H, W >= kernel_size // 2``.
        - Output: :math:`(N, C, H, W)`.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> x[0, 0, 0, 0] = 16.0
        >>> blur2d(x, 3)[0, 0]  # the impulse response wraps around the border
        tensor([[4., 2., 0., 2.],
                [2., 1., 0., 1.],
                [0., 0., 0., 0.],
                [2., 1., 0., 1.]])
    """
    _check_kernel_size(kernel_size, "blur2d")
    _check_input(x, kernel_size, "blur2d")
    return _blur(x, binomial_kernel(kernel_size, dtype=x.dtype, device=x.device))


def blur_pool2d(x: Tensor, kernel_size: int = 3, stride: int = 2) -> Tensor:
    """Plain BlurPool: circular binomial blur, then keep every ``stride``-th pixel from 0.

    This is the baseline LPF downsampling (not shift-equivariant for shifts that are not
    multiples of ``stride``). It equals ``blur2d(x, kernel_size)[..., ::stride, ::stride]``
    but only computes the kept pixels.

    Args:
        x: Input feature map.
        kernel_size: Binomial filter size, 1 to 7.
        stride: Subsampling factor.

    Returns:
        The downsampled feature map.

    Shape:
        - Input: :math:`(N, C, H, W)`.
        - Output: :math:`(N, C, \\lceil H / s \\rceil, \\lceil W / s \\rceil)`.

    Example:
        >>> blur_pool2d(torch.randn(2, 8, 32, 30), 3, 2).shape
        torch.Size([2, 8, 16, 15])
    """
    _check_kernel_size(kernel_size, "blur_pool2d")
    _check_stride(stride, "blur_pool2d")
    _check_input(x, kernel_size, "blur_pool2d")
    return _blur(x, binomial_kernel(kernel_size, dtype=x.dtype, device=x.device), stride)


class _BinomialFilter(nn.Module):
    """Holds the binomial filter as a non-persistent buffer (shared by the two modules)."""

    kernel: Tensor

    def __init__(self, kernel_size: int, channels: int | None) -> None:
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _check_kernel_size(kernel_size, name)
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise ValueError(f"{name}: channels must be a positive int or None, got {channels!r}.")
        self.channels = channels
        self.register_buffer("kernel", binomial_kernel(kernel_size), persistent=False)


class Blur2d(_BinomialFilter):
    """Stride-1 binomial low-pass filter with circular padding (module form of :func:`blur2d`).

    The filter is a non-persistent buffer: it follows ``.to()`` but is not saved in the
    ``state_dict``. In ``forward`` it is cast to the input's dtype and device, so the layer
    works for float16/bfloat16/float64, under autocast and for channels-last inputs.

    Args:
        kernel_size: Binomial filter size, 1 to 7 (1 is the identity).
        channels: Expected number of input channels, checked in ``forward``. ``None``
            (default) accepts any number, since the filter is depthwise.

    Shape:
        - Input: :math:`(N, C, H, W)` with ``H, W >= kernel_size // 2``.
        - Output: :math:`(N, C, H, W)`.

    Example:
        >>> blur = Blur2d(3)
        >>> x = torch.randn(2, 8, 12, 10)
        >>> y = blur(x)
        >>> y.shape
        torch.Size([2, 8, 12, 10])
        >>> torch.equal(blur(torch.roll(x, (3, 1), (2, 3))), torch.roll(y, (3, 1), (2, 3)))
        True
    """

    def __init__(self, kernel_size: int = 3, channels: int | None = None) -> None:
        super().__init__(kernel_size, channels)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.kernel_size, type(self).__name__, self.channels)
        return _blur(x, self.kernel)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, channels={self.channels}, padding_mode='circular'"


class BlurPool2d(_BinomialFilter):
    """Plain BlurPool baseline: circular binomial blur, then subsample at phase 0.

    Module form of :func:`blur_pool2d`. Use :class:`Blur2d` followed by a MASS / APS
    subsampling layer for the exactly equivariant variants. Not a subclass of
    :class:`Blur2d`, so ``isinstance(m, Blur2d)`` only finds stride-1 filters.

    Args:
        kernel_size: Binomial filter size, 1 to 7.
        stride: Subsampling factor.
        channels: Expected number of input channels, or ``None`` for any.

    Shape:
        - Input: :math:`(N, C, H, W)`.
        - Output: :math:`(N, C, \\lceil H / s \\rceil, \\lceil W / s \\rceil)`.

    Example:
        >>> BlurPool2d(3, stride=2)(torch.randn(1, 4, 9, 8)).shape
        torch.Size([1, 4, 5, 4])
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2, channels: int | None = None) -> None:
        super().__init__(kernel_size, channels)
        self.stride = _check_stride(stride, type(self).__name__)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.kernel_size, type(self).__name__, self.channels)
        return _blur(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, channels={self.channels}, "
            "padding_mode='circular'"
        )

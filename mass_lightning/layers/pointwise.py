"""Per-position ops that give the same bits at every position of a map.

PyTorch's CPU kernels vectorise elementwise ops and reductions, and handle the elements
that do not fill a vector (at the end of a tensor, or of a block of rows) with scalar code.
For some ops the two paths round differently: ``torch.sigmoid``, ``F.silu``,
``F.softplus``, ``F.mish``, ``F.elu``/``selu``/``celu``, the tanh approximation of GELU,
sums, means and softmax over channels, and matrix products (``F.linear`` on a
channels-last map). A circular shift moves a value from one path to the other, so its
result changes in the last bit, and the change spreads to every later value.

The functions here compute the same values with ops whose paths agree (``exp``, ``log``,
``tanh``, arithmetic, ``where``, convolution), so every position is computed alike.
:func:`mass_lightning.convert` uses them on feature maps in place of the originals; they
agree with them to float rounding. ``tests/layers/test_pointwise.py`` checks both
properties for every op here, on the machine that runs the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .exact import exact_sum
from .kernels import conv2d

__all__ = [
    "celu",
    "elu",
    "gelu_tanh",
    "linear",
    "log_softmax",
    "mish",
    "position_free_mean",
    "position_free_sum",
    "selu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
]

_SEQUENTIAL_LIMIT = 64
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _inplace(x: Tensor, result: Tensor, inplace: bool) -> Tensor:
    return x.copy_(result) if inplace else result


def sigmoid(x: Tensor, inplace: bool = False) -> Tensor:
    """``torch.sigmoid`` as ``1 / (1 + exp(-x))``."""
    return _inplace(x, 1.0 / (1.0 + torch.exp(-x)), inplace)


def silu(x: Tensor, inplace: bool = False) -> Tensor:
    """``F.silu`` as ``x * sigmoid(x)``."""
    return _inplace(x, x * (1.0 / (1.0 + torch.exp(-x))), inplace)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``F.softplus``: ``log(1 + exp(beta x)) / beta``, linear above ``threshold``."""
    scaled = x * beta
    smooth = torch.log(1.0 + torch.exp(torch.clamp(scaled, max=threshold))) / beta
    return torch.where(scaled > threshold, x, smooth)


def mish(x: Tensor, inplace: bool = False) -> Tensor:
    """``F.mish``: ``x * tanh(softplus(x))``."""
    return _inplace(x, x * torch.tanh(softplus(x)), inplace)


def elu(x: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``F.elu``: ``x`` above 0, ``alpha * (exp(x) - 1)`` below."""
    return _inplace(x, torch.where(x > 0, x, alpha * (torch.exp(torch.clamp(x, max=0.0)) - 1.0)), inplace)


def selu(x: Tensor, inplace: bool = False) -> Tensor:
    """``F.selu``."""
    return _inplace(x, _SELU_SCALE * elu(x, _SELU_ALPHA), inplace)


def celu(x: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """``F.celu``: ``x`` above 0, ``alpha * (exp(x / alpha) - 1)`` below."""
    below = alpha * (torch.exp(torch.clamp(x / alpha, max=0.0)) - 1.0)
    return _inplace(x, torch.where(x > 0, x, below), inplace)


def gelu_tanh(x: Tensor) -> Tensor:
    """``F.gelu(x, approximate="tanh")``."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def _dims(x: Tensor, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(x.dim()))
    return tuple(sorted({d % x.dim() for d in ((dim,) if isinstance(dim, int) else dim)}))


def position_free_sum(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    """A sum over ``dim`` (channels, not positions) computed alike at every position.

    Up to 64 terms are added one after the other in index order (ordinary float sums);
    longer reductions use :func:`~mass_lightning.layers.exact_sum`.
    """
    dims = _dims(x, dim)
    count = math.prod([x.shape[d] for d in dims])
    if count > _SEQUENTIAL_LIMIT or len(dims) != 1:
        return exact_sum(x, dims, keepdim=keepdim)
    parts = x.unbind(dims[0])
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total.unsqueeze(dims[0]) if keepdim else total


def position_free_mean(x: Tensor, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Tensor:
    """A mean over ``dim`` computed alike at every position (see :func:`position_free_sum`)."""
    dims = _dims(x, dim)
    return position_free_sum(x, dims, keepdim) / math.prod([x.shape[d] for d in dims])


def softmax(x: Tensor, dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.softmax`` over ``dim``, computed alike at every position."""
    if dtype is not None:
        x = x.to(dtype)
    exps = torch.exp(x - x.amax(dim, keepdim=True))
    return exps / position_free_sum(exps, dim, keepdim=True)


def log_softmax(x: Tensor, dim: int, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.log_softmax`` over ``dim``, computed alike at every position."""
    if dtype is not None:
        x = x.to(dtype)
    shifted = x - x.amax(dim, keepdim=True)
    return shifted - torch.log(position_free_sum(torch.exp(shifted), dim, keepdim=True))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` over the last axis as a oneDNN convolution, so every row is computed alike.

    Shape:
        - Input: :math:`(*, C_{in})`.
        - Output: :math:`(*, C_{out})`.
    """
    rows = x.reshape(1, -1, x.shape[-1]).transpose(1, 2).unsqueeze(-1)  # (1, C_in, rows, 1)
    out = conv2d(rows, weight[:, :, None, None], bias)
    return out.squeeze(-1).transpose(1, 2).reshape(*x.shape[:-1], weight.shape[0])

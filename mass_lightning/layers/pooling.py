"""Global average pooling whose result does not depend on the order of the pixels."""

from __future__ import annotations

from torch import Tensor, nn

from .ddac import exact_global_avg_pool2d

__all__ = ["ExactGlobalAvgPool2d", "exact_global_avg_pool2d"]


class ExactGlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` that is bit-identical for circularly shifted inputs.

    A float sum over a shifted map adds the same terms in another order and can differ in
    the last bit, which can flip the argmax of nearly tied logits. Summing each channel's
    sorted values makes the mean a function of the multiset of values only.
    :func:`mass_lightning.convert` swaps every global ``AdaptiveAvgPool2d`` for this.

    Shape:
        - Input: :math:`(B, C, H, W)`.
        - Output: :math:`(B, C, 1, 1)`.

    Example:
        >>> pool = ExactGlobalAvgPool2d()
        >>> x = torch.randn(2, 3, 8, 12)
        >>> torch.equal(pool(torch.roll(x, (3, 5), (2, 3))), pool(x))
        True
    """

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: Tensor) -> Tensor:
        return exact_global_avg_pool2d(x)

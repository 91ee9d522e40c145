"""Origin sharing between the downsampling layers of one residual block."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["OriginScope"]


class OriginScope:
    """One origin per forward call of a block, shared by every downsampler inside it.

    A residual block downsamples twice in parallel: the main branch (a strided conv) and
    the shortcut (a strided 1x1 conv, or plain subsampling). Both must use the same origin,
    or their outputs are misaligned and their sum is no longer equivariant. The first
    downsampling layer that runs inside the block selects the origin from its own input;
    the others reuse it. The inputs of the two branches are related by stride-1,
    circularly padded (fully shift-equivariant) layers, so the shared origin moves with
    the input exactly as each branch's own origin would.

    :func:`mass_lightning.convert` attaches a scope to each block that has a shortcut
    branch, as a forward pre-hook that clears it, so it holds no tensors between calls.
    """

    def __init__(self) -> None:
        self.origin: Tensor | None = None
        self.stride: tuple[int, int] | None = None

    def reset(self, module: nn.Module | None = None, args: Any = None) -> None:
        """Forget the origin (a forward pre-hook of the block)."""
        self.origin = None
        self.stride = None

    def lookup(self, stride: tuple[int, int], batch: int) -> Tensor | None:
        """The shared origin, if one was chosen for this stride and batch size."""
        if self.origin is None or self.stride != stride or self.origin.shape[0] != batch:
            return None
        return self.origin

    def store(self, origin: Tensor, stride: tuple[int, int]) -> None:
        self.origin = origin
        self.stride = stride

    def attach(self, block: nn.Module) -> torch.utils.hooks.RemovableHandle:
        """Clear this scope whenever ``block`` is called."""
        return block.register_forward_pre_hook(self.reset)

"""Per-sample circular shifts: sampling, applying and undoing them.

These helpers implement the evaluation protocol of the MASS paper (eqs. 4 and 5):
every image of a batch gets its own random circular shift ``(dy, dx)``, drawn
uniformly over all ``H x W`` offsets. Tasks, notebooks and tests share them so
that "shift" means the same thing everywhere:

* :func:`sample_shifts` draws a ``(B, 2)`` tensor of shifts.
* :func:`roll_per_sample` applies them, :func:`unroll_per_sample` undoes them.
* :class:`ShiftSampler` draws reproducible shifts for validation, independent of
  the global RNG, different per DDP rank and per batch.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ShiftSampler", "roll_per_sample", "sample_shifts", "unroll_per_sample"]


def _check_size(value: int, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"sample_shifts: `{name}` must be an int >= {minimum}, got {value!r}.")


def sample_shifts(
    batch_size: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw one uniform random circular shift per sample.

    Each row ``(dy, dx)`` is drawn independently and uniformly over all
    ``height * width`` offsets, i.e. ``dy`` in ``{0, ..., H-1}`` and ``dx`` in
    ``{0, ..., W-1}``, as in the paper's consistency protocol (eq. 4).

    Args:
        batch_size: Number of shifts ``B`` to draw.
        height: Image height ``H``; ``dy`` is drawn from ``[0, H)``.
        width: Image width ``W``; ``dx`` is drawn from ``[0, W)``.
        generator: Optional generator for reproducible draws. The draw happens on
            the generator's device, so a CPU generator gives the same shifts
            whatever ``device`` is.
        device: Device of the returned tensor. Defaults to the generator's device
            (CPU without a generator).

    Returns:
        ``LongTensor`` of shape ``(B, 2)`` holding ``(dy, dx)`` per sample.

    Shape:
        - Output: :math:`(B, 2)`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> shifts = sample_shifts(4, 32, 32, generator=g)
        >>> shifts.shape, shifts.dtype
        (torch.Size([4, 2]), torch.int64)
        >>> bool(((shifts >= 0) & (shifts < 32)).all())
        True
    """
    _check_size(batch_size, "batch_size", minimum=0)
    _check_size(height, "height", minimum=1)
    _check_size(width, "width", minimum=1)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    # One draw over all H*W offsets, split into (dy, dx).
    flat = torch.randint(height * width, (batch_size,), generator=generator, device=draw_device)
    shifts = torch.stack((flat // width, flat % width), dim=1)
    return shifts if device is None else shifts.to(device)


def _validated_shifts(x: Tensor, shifts: Tensor, caller: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{caller}: `x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim < 3:
        raise ValueError(
            f"{caller}: `x` must have shape (B, ..., H, W) with at least 3 dims, got shape "
            f"{tuple(x.shape)}. Add a batch dim (x.unsqueeze(0)) or use torch.roll for one image."
        )
    shifts = torch.as_tensor(shifts)
    batch_size = x.shape[0]
    if shifts.shape != (batch_size, 2):
        raise ValueError(
            f"{caller}: `shifts` must have shape (B, 2) = ({batch_size}, 2) with one (dy, dx) row "
            f"per sample of `x` (shape {tuple(x.shape)}), got shape {tuple(shifts.shape)}. "
            "Use sample_shifts(B, H, W) to draw them."
        )
    if shifts.is_floating_point() or shifts.is_complex() or shifts.dtype == torch.bool:
        raise TypeError(
            f"{caller}: `shifts` must be an integer tensor, got dtype {shifts.dtype}. "
            "Shifts are whole pixels; cast with shifts.long()."
        )
    return shifts.to(device=x.device, dtype=torch.long)


def roll_per_sample(x: Tensor, shifts: Tensor) -> Tensor:
    """Circularly shift each sample of a batch by its own ``(dy, dx)``.

    Sample ``i`` of the output equals ``torch.roll(x[i], shifts[i].tolist(), dims=(-2, -1))``,
    i.e. ``out[i, ..., h, w] = x[i, ..., (h - dy_i) % H, (w - dx_i) % W]``. Shifts may be
    negative or larger than the image. Works for any dtype (float, bf16, integer masks,
    bool) on any device, without a Python loop over the batch, and is differentiable
    with respect to ``x``.

    Args:
        x: Batch of shape ``(B, ..., H, W)``, e.g. images ``(B, C, H, W)`` or label maps
            ``(B, H, W)``.
        shifts: Integer tensor of shape ``(B, 2)`` holding ``(dy, dx)`` per sample.

    Returns:
        Tensor of the same shape, dtype and device as ``x``.

    Raises:
        ValueError: If ``x`` has fewer than 3 dims or ``shifts`` is not ``(B, 2)``.
        TypeError: If ``shifts`` is not an integer tensor.

    Shape:
        - x: :math:`(B, *, H, W)`.
        - shifts: :math:`(B, 2)`.
        - Output: :math:`(B, *, H, W)`.

    Example:
        >>> x = torch.arange(8).reshape(2, 1, 4)
        >>> roll_per_sample(x, torch.tensor([[0, 1], [0, -1]]))
        tensor([[[3, 0, 1, 2]],
        <BLANKLINE>
                [[5, 6, 7, 4]]])
    """
    shifts = _validated_shifts(x, shifts, "roll_per_sample")
    height, width = x.shape[-2], x.shape[-1]
    if x.numel() == 0:
        return x.clone()
    # Source row/column for every output row/column, per sample.
    rows = (torch.arange(height, device=x.device) - shifts[:, :1]) % height  # (B, H)
    cols = (torch.arange(width, device=x.device) - shifts[:, 1:]) % width  # (B, W)
    lead = (x.shape[0],) + (1,) * (x.ndim - 3)
    out = x.gather(-2, rows.view(*lead, height, 1).expand_as(x))
    return out.gather(-1, cols.view(*lead, 1, width).expand_as(x))


def unroll_per_sample(x: Tensor, shifts: Tensor) -> Tensor:
    """Undo :func:`roll_per_sample`: shift each sample by ``-shifts``.

    ``unroll_per_sample(roll_per_sample(x, s), s)`` equals ``x`` exactly. Use it to bring
    predictions made on shifted inputs back to the unshifted frame.

    Args:
        x: Batch of shape ``(B, ..., H, W)``.
        shifts: Integer tensor of shape ``(B, 2)``: the shifts that were applied.

    Returns:
        Tensor of the same shape, dtype and device as ``x``.

    Shape:
        - x: :math:`(B, *, H, W)`.
        - shifts: :math:`(B, 2)`.
        - Output: :math:`(B, *, H, W)`.

    Example:
        >>> x = torch.arange(24).reshape(2, 3, 4)
        >>> s = torch.tensor([[1, 2], [-4, 5]])
        >>> torch.equal(unroll_per_sample(roll_per_sample(x, s), s), x)
        True
    """
    shifts = _validated_shifts(x, shifts, "unroll_per_sample")
    return roll_per_sample(x, -shifts)


class ShiftSampler:
    """Reproducible per-batch shift sampling for validation.

    Each call seeds a fresh ``torch.Generator`` from the key
    ``(seed, rank, dataloader_idx, epoch, batch_idx)``, so:

    * the global RNG is neither read nor advanced;
    * the shifts depend only on the key, not on call order: re-running a validation
      loop (or resuming) gives the same shifts for the same batches;
    * with the default ``epoch=0`` every validation epoch uses the same shifts, so
      consistency curves compare models under the same perturbations; pass the
      current epoch to draw new shifts each epoch instead;
    * under DDP each rank draws different shifts for its (different) samples, because
      the rank is part of the key. Results are reproducible for a fixed world size and
      sampler; with another world size the samples move between ranks and so do
      their shifts.

    The sampler only stores ``seed``, so it pickles and deep-copies with the module
    that holds it.

    Args:
        seed: Base seed of the validation shifts.

    Example:
        >>> sampler = ShiftSampler(seed=0)
        >>> a, b = sampler.sample_pair(8, 32, 32, batch_idx=3)
        >>> a.shape, b.shape
        (torch.Size([8, 2]), torch.Size([8, 2]))
        >>> torch.equal(a, sampler.sample(8, 32, 32, batch_idx=3))
        True
    """

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"ShiftSampler: `seed` must be an int, got {seed!r}.")
        self.seed = seed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed})"

    def generator(
        self,
        batch_idx: int,
        *,
        rank: int | None = None,
        dataloader_idx: int = 0,
        epoch: int = 0,
    ) -> torch.Generator:
        """Return a CPU generator seeded from ``(seed, rank, dataloader_idx, epoch, batch_idx)``.

        Args:
            batch_idx: Index of the batch within its dataloader.
            rank: Global rank; defaults to ``torch.distributed``'s rank when it is
                initialized, else 0. Lightning tasks pass ``self.global_rank``.
            dataloader_idx: Index of the validation dataloader.
            epoch: Epoch to fold into the key; keep 0 for the same shifts every epoch.

        Returns:
            A freshly seeded ``torch.Generator`` on CPU.
        """
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        key = f"{self.seed}:{rank}:{dataloader_idx}:{epoch}:{batch_idx}".encode()
        # Stable across processes and Python versions (unlike hash()).
        derived = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        return torch.Generator().manual_seed(derived)

    def sample(
        self,
        batch_size: int,
        height: int,
        width: int,
        *,
        batch_idx: int,
        rank: int | None = None,
        dataloader_idx: int = 0,
        epoch: int = 0,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Draw one ``(B, 2)`` set of shifts for a batch (see :func:`sample_shifts`).

        Equals the first element of :meth:`sample_pair` for the same key.
        """
        generator = self.generator(batch_idx, rank=rank, dataloader_idx=dataloader_idx, epoch=epoch)
        return sample_shifts(batch_size, height, width, generator=generator, device=device)

    def sample_pair(
        self,
        batch_size: int,
        height: int,
        width: int,
        *,
        batch_idx: int,
        rank: int | None = None,
        dataloader_idx: int = 0,
        epoch: int = 0,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw two independent ``(B, 2)`` sets of shifts for a batch.

        This is what the consistency metrics need: the task predicts on
        ``roll_per_sample(x, shifts_a)`` and ``roll_per_sample(x, shifts_b)``.
        """
        generator = self.generator(batch_idx, rank=rank, dataloader_idx=dataloader_idx, epoch=epoch)
        shifts_a = sample_shifts(batch_size, height, width, generator=generator, device=device)
        shifts_b = sample_shifts(batch_size, height, width, generator=generator, device=device)
        return shifts_a, shifts_b

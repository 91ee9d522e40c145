"""The zoo contract: every torchvision classifier and the timm families are exact, or refused by name.

For each model (random weights, randomized norm layers), :func:`convert` either raises a
:class:`ConversionError` naming the module and the reason, or returns a model whose logits
are *bit-identical* under circular shifts:

* random shifts of a non-square input (batch of 2);
* every shift of one small input (its sides are the model's total stride; batch of 1);
* a batch of one, shifted;
* for one model per family, also under bf16 autocast and on forced polyphase ties
  (constant maps, stripes, checkerboards, tiled and mirror-symmetric lattices).

Each shifted batch is compared with an unshifted batch of the same shape (CPU matrix
products round by row position; see docs/exactness.md, batch composition).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools

import pytest
import torch

from mass_lightning import convert
from mass_lightning.errors import ConversionError
from mass_lightning.testing import FAMILY_REPRESENTATIVES, REFUSED, assert_shift_invariant, build, tie_images, \
    timm_names, torchvision_names

ZOO = torchvision_names() + timm_names()
_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


@pytest.fixture(autouse=True)
def _return_freed_memory():
    """Giant models (up to 2.6 GB of weights) come one after another: hand the freed heap back
    to the OS after each, so that a test worker does not hold the peak of every previous one."""
    yield
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _random_shifts(size: tuple[int, int], count: int, seed: int) -> list[tuple[int, int]]:
    generator = torch.Generator().manual_seed(seed)
    return [(int(torch.randint(size[0], (), generator=generator)), int(torch.randint(size[1], (), generator=generator)))
            for _ in range(count)]


def _input(model, scale: tuple[int, int], batch: int, seed: int) -> torch.Tensor:
    record = model.conversion
    channels = record.probe_shape[1]
    height, width = record.input_multiple[0] * scale[0], record.input_multiple[1] * scale[1]
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))


def _logits_equal_under(model, x: torch.Tensor, shifts) -> None:
    with torch.inference_mode():
        reference = model(x)
        for shift in shifts:
            shifted = model(torch.roll(x, shift, (2, 3)))
            assert torch.equal(shifted, reference), f"logits change under the shift {shift}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_exact_or_refused_with_the_module(name):
    model = build(name)
    if name in REFUSED:
        reason, path = REFUSED[name]
        with pytest.raises(ConversionError) as caught:
            convert(model)
        assert reason in caught.value.reason and path in caught.value.path, str(caught.value)
        assert caught.value.hint or caught.value.reason
        return
    converted = convert(model)
    multiple = converted.conversion.input_multiple
    # random shifts of a non-square input
    x = _input(converted, (2, 3), batch=2, seed=1)
    _logits_equal_under(converted, x, _random_shifts(tuple(x.shape[-2:]), 3, seed=2))
    # a batch of one
    one = _input(converted, (1, 2), batch=1, seed=3)
    _logits_equal_under(converted, one, _random_shifts(tuple(one.shape[-2:]), 2, seed=4))
    # every shift of one small input
    small = _input(converted, (1, 1), batch=1, seed=5)
    shifts = list(itertools.product(range(multiple[0]), range(multiple[1])))
    assert_shift_invariant(converted, small, shifts)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_family_bf16_autocast_and_forced_ties(name):
    converted = convert(build(name))
    x = _input(converted, (1, 2), batch=2, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _logits_equal_under(converted, x, _random_shifts(tuple(x.shape[-2:]), 2, seed=10))
    size = (converted.conversion.input_multiple[0] * 2, converted.conversion.input_multiple[1] * 2)
    for kind, image in tie_images(x.shape[1], size).items():
        shifts = [(1, 0), (0, 1), (1, 1)] + _random_shifts(size, 3, seed=11)
        try:
            _logits_equal_under(converted, image, shifts)
        except AssertionError as error:
            raise AssertionError(f"{kind}: {error}") from error

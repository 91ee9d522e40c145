"""Origin selection: exact covariance under every shift, ties, summation order, autocast."""

from __future__ import annotations

import itertools

import pytest
import torch

from mass_lightning.layers import polyphase_energy, polyphase_statistics, select_origin


def roll(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    return torch.roll(x, shift, dims=(2, 3))


def assert_covariant(x: torch.Tensor, stride: int | tuple[int, int], shifts=None) -> None:
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    height, width = x.shape[-2:]
    base = select_origin(x, stride)
    shifts = shifts if shifts is not None else itertools.product(range(height), range(width))
    for dy, dx in shifts:
        expected = (base + torch.tensor([dy, dx])) % torch.tensor([sy, sx])
        got = select_origin(roll(x, (dy, dx)), stride)
        # Candidates that give the same input up to a stride-multiple shift are equivalent.
        for b in range(x.shape[0]):
            if not torch.equal(got[b], expected[b]):
                shifted = roll(x[b : b + 1], (dy, dx))
                a = roll(shifted, tuple((-got[b]).tolist()))
                c = roll(shifted, tuple((-expected[b]).tolist()))
                equivalent = any(
                    torch.equal(a, roll(c, (ky * sy, kx * sx)))
                    for ky in range(height // sy)
                    for kx in range(width // sx)
                )
                assert equivalent, f"origin not covariant for shift {(dy, dx)}: {got[b]} vs {expected[b]}"


@pytest.mark.parametrize("stride", [2, 4, (2, 4)])
def test_every_shift_random_non_square(stride):
    torch.manual_seed(0)
    assert_covariant(torch.randn(3, 4, 8, 12), stride)


def test_random_shifts_large_batch_one():
    torch.manual_seed(1)
    x = torch.randn(1, 16, 64, 96)
    shifts = [tuple(torch.randint(0, 64, (1,)).tolist() + torch.randint(0, 96, (1,)).tolist()) for _ in range(25)]
    assert_covariant(x, 2, shifts)
    assert_covariant(x, 4, shifts)


def test_origin_range_and_example():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 3] = 1.0
    assert select_origin(x, 2).tolist() == [[1, 1]]
    origin = select_origin(torch.randn(5, 3, 8, 8), 4)
    assert origin.dtype == torch.int64 and origin.shape == (5, 2)
    assert int(origin.min()) >= 0 and int(origin.max()) < 4


def _lattice(tile: torch.Tensor, height: int, width: int) -> torch.Tensor:
    reps = (height // tile.shape[-2], width // tile.shape[-1])
    return tile.repeat(1, 1, *reps)


@pytest.mark.parametrize(
    "name",
    ["constant", "zeros", "stripes_h", "stripes_v", "checkerboard", "mirror_1d", "mirror_2d", "tiled_texture"],
)
@pytest.mark.parametrize("stride", [2, 4])
def test_forced_ties_every_shift(name, stride):
    torch.manual_seed(2)
    height, width = 8, 16
    if name == "constant":
        x = torch.full((1, 3, height, width), 0.7)
    elif name == "zeros":
        x = torch.zeros(1, 3, height, width)
    elif name == "stripes_h":
        x = _lattice(torch.tensor([[1.0], [-2.0]]).view(1, 1, 2, 1).expand(1, 2, 2, 1), height, width)
    elif name == "stripes_v":
        x = _lattice(torch.tensor([[0.3, 0.9, 0.3, -0.9]]).view(1, 1, 1, 4), height, width)
    elif name == "checkerboard":
        x = _lattice(torch.tensor([[1.5, -0.5], [-0.5, 1.5]]).view(1, 1, 2, 2), height, width)
    elif name == "mirror_1d":  # components hold the same values in another order
        a, b = torch.rand(2).tolist()
        x = _lattice(torch.tensor([[a, b, b, a]]).view(1, 1, 1, 4).repeat(1, 2, 1, 1), height, width)
    elif name == "mirror_2d":
        t = torch.rand(1, 1, 4, 4)
        t = (t + t.flip(-1) + t.flip(-2) + t.flip(-1, -2)) / 4  # symmetric cell
        x = _lattice(t, height, width)
    else:
        x = _lattice(torch.randn(1, 2, 4, 8), height, width)
    assert_covariant(x, stride)


def test_summation_order_mirror_symmetric_lattice():
    # Two components with the same multiset of values in different orders: their float32
    # sums of squares can differ by an ulp, the exact integer energies cannot.
    torch.manual_seed(3)
    values = torch.rand(1, 8, 1, 16) * 10
    x = torch.cat([values, values.flip(-1)], dim=-1)  # 1 x 8 x 1 x 32, mirror symmetric
    x = x.expand(1, 8, 4, 32).contiguous()
    energy = polyphase_energy(x, 2)
    shifted = polyphase_energy(roll(x, (0, 1)), 2)
    assert torch.equal(energy.sort().values, shifted.sort().values)
    assert_covariant(x, 2, [(0, d) for d in range(32)] + [(1, d) for d in range(32)])


def test_energy_is_order_independent_integer():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 8, 8)
    perm = torch.randperm(16)
    energy = polyphase_energy(x, 2)
    # Permuting the pixels inside one component leaves its energy bit-identical.
    comp = x[:, :, 0::2, 0::2].reshape(2, 3, 16)[:, :, perm].reshape(2, 3, 4, 4)
    y = x.clone()
    y[:, :, 0::2, 0::2] = comp
    assert energy.dtype == torch.int64
    assert torch.equal(polyphase_energy(y, 2)[:, 0], energy[:, 0])


def test_statistics_shape_and_priority():
    x = torch.randn(2, 3, 8, 8)
    stats = polyphase_statistics(x, 2)
    assert stats.shape == (2, 7, 4) and stats.dtype == torch.int64
    assert torch.equal(stats[:, 0], polyphase_energy(x, 2))


def test_bf16_autocast():
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.nn.functional.conv2d(torch.randn(2, 4, 8, 8), torch.randn(4, 4, 1, 1))
        assert x.dtype == torch.bfloat16
        assert_covariant(x, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_inputs(dtype):
    torch.manual_seed(5)
    assert_covariant(torch.randn(2, 4, 8, 8).to(dtype), 2)


def test_scale_extremes():
    torch.manual_seed(6)
    for scale in (1e-30, 1e-8, 1.0, 1e8, 1e30):
        assert_covariant(torch.randn(2, 2, 4, 8) * scale, 2)


def test_errors_name_size_and_stride():
    with pytest.raises(ValueError, match=r"7x8 is not divisible by the stride 2x2"):
        select_origin(torch.randn(1, 1, 7, 8), 2)
    with pytest.raises(ValueError, match="4-D input"):
        select_origin(torch.randn(3, 8, 8), 2)
    with pytest.raises(ValueError, match="stride"):
        select_origin(torch.randn(1, 1, 8, 8), 0)


def test_batch_chunks_change_no_bit(monkeypatch):
    """Eager statistics run over batch chunks; per-sample chunks give the same origins,
    on a batch that mixes decided samples, near-ties and exact ties (lattices)."""
    from mass_lightning.layers import polyphase

    torch.manual_seed(7)
    tied = _lattice(torch.randn(2, 3, 2, 4), 8, 16)
    mirror = torch.cat([torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8).flip(-1)], dim=-1)
    x = torch.cat([torch.randn(5, 3, 8, 16), tied, torch.full((1, 3, 8, 16), 0.25), mirror])
    whole = {stride: select_origin(x, stride) for stride in (2, 4, (2, 4))}
    monkeypatch.setattr(polyphase, "_CHUNK_BYTES", 1)  # one sample per chunk
    for stride, expected in whole.items():
        assert torch.equal(select_origin(x, stride), expected)
    assert_covariant(x, 2, [(0, 0), (1, 0), (0, 1), (3, 5), (7, 15)])
    assert select_origin(x[:0], 2).shape == (0, 2)  # an empty batch has no chunk to take a size from


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_selection_equals_eager_on_every_branch(backend):
    """Under torch.compile the exact rule is a torch.cond: decided batches, tied lattices
    (every statistic) and spatially constant maps (index 0 without statistics) each give
    the eager origins, shifted or not."""
    torch.manual_seed(8)
    compiled = torch.compile(select_origin, fullgraph=True, backend=backend, dynamic=False)
    batches = {
        "decided": torch.randn(3, 4, 8, 16),
        "lattice": _lattice(torch.randn(3, 4, 2, 4), 8, 16),
        "constant": torch.randn(3, 4, 1, 1).expand(3, 4, 8, 16).contiguous(),
        "mixed": torch.cat([torch.randn(1, 4, 8, 16), torch.full((2, 4, 8, 16), -0.5)]),
    }
    for name, x in batches.items():
        for shift in [(0, 0), (1, 0), (0, 1), (3, 7)]:
            shifted = roll(x, shift)
            assert torch.equal(compiled(shifted, 2), select_origin(shifted, 2)), (name, shift)

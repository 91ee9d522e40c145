"""Synthetic periodic-defect images: lattices of a repeating unit cell with one odd element.

Think of a wafer or a display panel: a pad repeats every ``period`` pixels, and
an inspection model must say which defect (if any) the image shows, wherever it
is. Because the lattice is drawn with modular (wrapped) coordinates, every image
is exactly periodic apart from its defects and noise, and a circular shift of an
image is the image of a shifted lattice: circular shifts are physically
meaningful here, which is what MASS is equivariant to.

Everything is seeded per ``(seed, split, index)``, so an item is the same in every
run, worker and process, and no files are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .base import BaseDataModule
from .predict import ImageTransform, normalize_uint8

DEFECT_TYPES = ("none", "missing", "extra", "bridge", "shifted", "size")
"""Classification labels: no defect, a pad removed, a particle between pads, two
neighbouring pads joined, a pad displaced, a pad enlarged."""

SEGMENTATION_CLASSES = ("background", "pattern", *DEFECT_TYPES[1:])
"""Segmentation labels: 0 background, 1 normal pad, 2..6 the pixels of each defect type."""

MEAN = 0.3
"""Approximate pixel mean of the raw images in [0, 1], used for normalisation."""
STD = 0.2
"""Approximate pixel standard deviation of the raw images."""

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Defect:
    """One defect of a lattice image.

    Attributes:
        kind: One of :data:`DEFECT_TYPES` except ``"none"``.
        cell: ``(row, col)`` lattice index of the affected pad.
        offset: Pixel offset from that pad's centre: the particle position
            (``extra``), the neighbour the bar goes to (``bridge``) or the
            displacement (``shifted``); unused otherwise.
        size: Particle radius (``extra``), bar half width (``bridge``) or new
            pad radius (``size``), in pixels; unused otherwise.
    """

    kind: str
    cell: tuple[int, int]
    offset: tuple[float, float] = (0.0, 0.0)
    size: float = 0.0


@dataclass(frozen=True)
class LatticeParams:
    """Everything needed to draw one noise-free image (see :func:`render_lattice`).

    Attributes:
        phase: ``(y, x)`` pixel position of the centre of pad ``(0, 0)``; a
            multiple of 1/4 so that integer shifts are exact in floating point.
        radius: Pad radius in pixels.
        exponent: Pad shape: 2 = disc, larger = rounder square (superellipse).
        background: Background colour per channel, in [0, 1].
        foreground: Pad colour per channel, in [0, 1].
        defects: The defects, drawn in order.
    """

    phase: tuple[float, float]
    radius: float
    exponent: float
    background: tuple[float, ...]
    foreground: tuple[float, ...]
    defects: tuple[Defect, ...] = ()

    def shifted(self, dy: int, dx: int) -> "LatticeParams":
        """The same scene moved by ``(dy, dx)`` pixels (its image is the circular roll)."""
        return replace(self, phase=(self.phase[0] + dy, self.phase[1] + dx))


def _check_geometry(owner: str, image_size: int, period: int) -> int:
    """Return the number of cells per side; raise if ``period`` does not tile the image."""
    if period < 4:
        raise ConfigError(f"{owner}: period={period} is too small to draw a pad; use period >= 4 (default 8).")
    if image_size % period:
        raise ConfigError(
            f"{owner}: period={period} must divide image_size={image_size} so that the lattice wraps "
            f"seamlessly; use e.g. image_size={image_size // period * period or period} or a divisor period."
        )
    cells = image_size // period
    if cells < 2:
        raise ConfigError(f"{owner}: image_size={image_size} holds only {cells} cell of period={period}; need >= 2.")
    return cells


def _cell_distance(a: tuple[int, int], b: tuple[int, int], cells: int) -> int:
    """Chebyshev distance between two lattice cells on the torus."""
    dy, dx = abs(a[0] - b[0]) % cells, abs(a[1] - b[1]) % cells
    return max(min(dy, cells - dy), min(dx, cells - dx))


def _wrap(delta: np.ndarray, modulus: float) -> np.ndarray:
    """Map a coordinate difference to ``[-modulus/2, modulus/2)`` (nearest periodic copy)."""
    return (delta + modulus / 2) % modulus - modulus / 2


def _pad(dy: np.ndarray, dx: np.ndarray, radius: float, exponent: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a superellipse pad centred at ``dy = dx = 0``."""
    distance = (np.abs(dy) ** exponent + np.abs(dx) ** exponent) ** (1.0 / exponent)
    return np.clip(radius - distance + 0.5, 0.0, 1.0)


def _quarter(value: float) -> float:
    """Round to a multiple of 1/4 pixel (exact in binary floating point)."""
    return round(value * 4) / 4


def periodic_texture(rng: np.random.Generator, image_size: int, period: int) -> np.ndarray:
    """A random zero-mean texture that repeats every ``period`` pixels, as ``(H, W, 1)`` in [-0.5, 0.5].

    One random ``period x period`` tile, tiled over the image: the fine, regular surface
    structure (grain, metal lines) that an inspection camera sees under the pads. With a
    period of 2 or 3 pixels it holds frequencies close to the sampling limit, which a
    stride-2 layer aliases.

    Example:
        >>> periodic_texture(np.random.default_rng(0), 8, 2).shape
        (8, 8, 1)
    """
    if period < 1 or image_size % period:
        raise ConfigError(
            f"texture_period={period} must be >= 1 and divide image_size={image_size} so that the texture wraps "
            "seamlessly."
        )
    tile = rng.uniform(-0.5, 0.5, size=(period, period))
    tile -= tile.mean()
    reps = image_size // period
    return np.tile(tile, (reps, reps))[..., None].astype(np.float32)


def render_lattice(params: LatticeParams, image_size: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one noise-free lattice image and its label map.

    Args:
        params: Scene description (see :class:`LatticeParams`).
        image_size: Height and width in pixels; ``period`` must divide it.
        period: Lattice period in pixels.

    Returns:
        ``(image, labels)``: ``image`` is ``(H, W, C)`` ``float32`` in [0, 1];
        ``labels`` is ``(H, W)`` ``uint8`` with :data:`SEGMENTATION_CLASSES` ids.

    Example:
        >>> params = LatticeParams((2.0, 3.0), 2.0, 2.0, (0.1,) * 3, (0.8,) * 3)
        >>> image, labels = render_lattice(params, 32, 8)
        >>> image.shape, labels.shape
        ((32, 32, 3), (32, 32))
    """
    cells = _check_geometry("render_lattice", image_size, period)
    coords = np.arange(image_size, dtype=np.float64)
    ys, xs = coords[:, None], coords[None, :]
    phase_y, phase_x = params.phase
    lattice = _pad(_wrap(ys - phase_y, period), _wrap(xs - phase_x, period), params.radius, params.exponent)
    cell_y = np.floor((ys - phase_y + period / 2) / period).astype(np.int64) % cells
    cell_x = np.floor((xs - phase_x + period / 2) / period).astype(np.int64) % cells
    coverage = lattice.copy()
    labels = (lattice >= 0.5).astype(np.uint8)

    for defect in params.defects:
        code = SEGMENTATION_CLASSES.index(defect.kind)
        row, col = defect.cell
        centre_y, centre_x = phase_y + row * period, phase_x + col * period
        own_cell = (cell_y == row) & (cell_x == col)

        def around(offset_y: float, offset_x: float) -> tuple[np.ndarray, np.ndarray]:
            return _wrap(ys - centre_y - offset_y, image_size), _wrap(xs - centre_x - offset_x, image_size)

        if defect.kind in ("missing", "shifted"):
            vacated = own_cell & (labels == 1)
            coverage = np.where(own_cell, 0.0, coverage)
            labels[vacated] = code if defect.kind == "missing" else 0
            if defect.kind == "shifted":
                moved = _pad(*around(*defect.offset), params.radius, params.exponent)
                coverage = np.maximum(coverage, moved)
                labels[moved >= 0.5] = code
        elif defect.kind == "extra":
            particle = _pad(*around(*defect.offset), defect.size, 2.0)
            coverage = np.maximum(coverage, particle)
            labels[(particle >= 0.5) & (labels == 0)] = code
        elif defect.kind == "bridge":
            horizontal = defect.offset[1] != 0
            length = abs(defect.offset[1] if horizontal else defect.offset[0])
            sign = np.sign(defect.offset[1] if horizontal else defect.offset[0])
            along = (sign * ((xs - centre_x) if horizontal else (ys - centre_y))) % image_size
            across = _wrap((ys - centre_y) if horizontal else (xs - centre_x), image_size)
            bar = np.clip(np.minimum(along, length - along) + 0.5, 0.0, 1.0) * np.clip(
                defect.size - np.abs(across) + 0.5, 0.0, 1.0
            )
            coverage = np.maximum(coverage, bar)
            labels[(bar >= 0.5) & (labels == 0)] = code
        elif defect.kind == "size":
            enlarged = _pad(*around(0.0, 0.0), defect.size, params.exponent)
            coverage = np.maximum(coverage, enlarged)
            labels[enlarged >= 0.5] = code
        else:
            raise ConfigError(f"render_lattice: unknown defect kind '{defect.kind}'; use one of {DEFECT_TYPES[1:]}.")

    background = np.asarray(params.background, dtype=np.float64)
    foreground = np.asarray(params.foreground, dtype=np.float64)
    image = background + (foreground - background) * coverage[..., None]
    return image.astype(np.float32), labels


def sample_defect(rng: np.random.Generator, kind: str, cell: tuple[int, int], period: int, radius: float) -> Defect:
    """Draw the random geometry of one defect of ``kind`` at ``cell`` (sizes scale with ``period``)."""
    if kind == "extra":
        sign_y, sign_x = rng.choice([-1, 1], size=2)
        offset = (sign_y * period / 2, sign_x * period / 2)  # the empty spot between four pads
        return Defect(kind, cell, offset, float(rng.uniform(0.2, 0.25) * period))
    if kind == "bridge":
        sign = float(rng.choice([-1, 1]))
        offset = (0.0, sign * period) if rng.random() < 0.5 else (sign * period, 0.0)
        return Defect(kind, cell, offset, float(rng.uniform(0.13, 0.17) * period))
    if kind == "shifted":
        directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
        dy, dx = directions[rng.integers(len(directions))]
        distance = rng.uniform(0.35, 0.45) * period / np.hypot(dy, dx)
        return Defect(kind, cell, (_quarter(dy * distance), _quarter(dx * distance)))
    if kind == "size":
        return Defect(kind, cell, size=float(min(radius * rng.uniform(1.6, 1.8), 0.5 * period)))
    if kind == "missing":
        return Defect(kind, cell)
    raise ConfigError(f"Unknown defect kind '{kind}'; use one of {DEFECT_TYPES[1:]}.")


def sample_lattice(
    rng: np.random.Generator,
    period: int,
    defect_kinds: tuple[str, ...],
    cells: int,
    channels: int = 3,
    color: bool = False,
) -> LatticeParams:
    """Draw a random scene: phase, pad shape, colours, and one defect per entry of ``defect_kinds``.

    Defects go to distinct, non-neighbouring cells; defects that find no free cell are dropped.
    """
    phase = (float(rng.integers(0, 4 * period)) / 4, float(rng.integers(0, 4 * period)) / 4)
    radius = float(rng.uniform(0.22, 0.28) * period)
    exponent = float(rng.uniform(2.0, 4.0))
    low = rng.uniform(0.05, 0.35)  # pads are brighter than the background by a random contrast
    high = low + rng.uniform(0.35, 0.6)
    if color and channels > 1:
        background = tuple(low * rng.uniform(0.6, 1.0, channels))
        foreground = tuple(high * rng.uniform(0.6, 1.0, channels))
    else:
        background, foreground = (low,) * channels, (high,) * channels

    kinds = [kind for kind in defect_kinds if kind != "none"]
    defects: list[Defect] = []
    taken: list[tuple[int, int]] = []
    for flat in rng.permutation(cells * cells) if kinds else ():
        if len(defects) == len(kinds):
            break
        cell = divmod(int(flat), cells)
        if any(_cell_distance(cell, other, cells) <= 1 for other in taken):
            continue  # keep defects apart so that their footprints never overlap
        taken.append(cell)
        defects.append(sample_defect(rng, kinds[len(defects)], cell, period, radius))
    return LatticeParams(
        phase, radius, exponent, tuple(map(float, background)), tuple(map(float, foreground)), tuple(defects)
    )


class _PeriodicDataset(Dataset):
    """Shared generator of both periodic datasets; subclasses pick defects and targets."""

    def __init__(
        self,
        num_samples: int,
        image_size: int,
        period: int,
        split: str,
        seed: int,
        noise_std: float,
        color: bool,
        channels: int,
        normalize: bool,
        texture: float = 0.0,
        texture_period: int = 2,
    ) -> None:
        name = type(self).__name__
        self.cells = _check_geometry(name, image_size, period)
        if texture < 0:
            raise ConfigError(f"{name}: texture={texture} must be >= 0 (0 = no background texture).")
        if texture > 0:
            periodic_texture(np.random.default_rng(0), image_size, texture_period)  # checks the period
        if split not in _SPLIT_CODES:
            raise ConfigError(f"{name}: split must be one of {tuple(_SPLIT_CODES)}, got '{split}'.")
        if num_samples < 0 or channels < 1 or noise_std < 0:
            raise ConfigError(f"{name}: need num_samples >= 0, channels >= 1, noise_std >= 0.")
        self.num_samples = num_samples
        self.image_size = image_size
        self.period = period
        self.split = split
        self.seed = seed
        self.noise_std = noise_std
        self.color = color
        self.channels = channels
        self.normalize = normalize
        self.texture = texture
        self.texture_period = texture_period

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {self.num_samples} samples.")
        return np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])

    def _defect_kinds(self, index: int, rng: np.random.Generator) -> tuple[str, ...]:
        raise NotImplementedError

    def params(self, index: int) -> LatticeParams:
        """The scene of item ``index`` (no noise)."""
        return self._params(index, self._rng(index))

    def _params(self, index: int, rng: np.random.Generator) -> LatticeParams:
        kinds = self._defect_kinds(index, rng)
        return sample_lattice(rng, self.period, kinds, self.cells, self.channels, self.color)

    def render(self, index: int, noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(image, labels)`` of item ``index`` as in :func:`render_lattice`, plus noise if asked."""
        rng = self._rng(index)
        image, labels = render_lattice(self._params(index, rng), self.image_size, self.period)
        if self.texture > 0:
            texture = periodic_texture(rng, self.image_size, self.texture_period)
            image = np.clip(image + self.texture * texture, 0.0, 1.0)
        if noise and self.noise_std > 0:
            image = np.clip(image + rng.normal(0.0, self.noise_std, image.shape).astype(np.float32), 0.0, 1.0)
        return image, labels

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return (tensor - MEAN) / STD if self.normalize else tensor


class PeriodicDefects(_PeriodicDataset):
    """Classify which defect a periodic lattice image shows.

    Each image is a ``period``-pixel lattice of pads with a random phase, pad
    shape, brightness, contrast, optional colour tint and mild Gaussian noise, plus one
    defect of type ``classes[label]`` at a random cell (``"none"``: no defect).
    Labels cycle through the classes (``label = index % 6``), so every split is
    balanced.

    Args:
        num_samples: Number of images.
        image_size: Height and width; must be a multiple of ``period``.
        period: Lattice period in pixels.
        split: ``"train"``, ``"val"`` or ``"test"`` (each split draws different images).
        seed: Base seed; item ``i`` depends only on ``(seed, split, i)``.
        noise_std: Standard deviation of the pixel noise (images are in [0, 1]).
        color: Random colour tints; ``False`` gives grey images.
        channels: Image channels.
        normalize: Normalise with :data:`MEAN` / :data:`STD`; ``False`` returns [0, 1].
        texture: Contrast of a fine periodic background texture (see :func:`periodic_texture`);
            0 draws none. Images without texture are the same as before the option existed.
        texture_period: Period of that texture in pixels; must divide ``image_size``.

    Shape:
        - Image: ``(channels, image_size, image_size)`` ``float32``.
        - Label: ``int`` in ``[0, 6)``.

    Example:
        >>> data = PeriodicDefects(num_samples=12)
        >>> image, label = data[3]
        >>> image.shape, data.classes[label]
        (torch.Size([3, 32, 32]), 'bridge')
    """

    classes = list(DEFECT_TYPES)

    def __init__(
        self,
        num_samples: int = 1000,
        image_size: int = 32,
        period: int = 8,
        split: str = "train",
        seed: int = 0,
        noise_std: float = 0.03,
        color: bool = False,
        channels: int = 3,
        normalize: bool = True,
        texture: float = 0.0,
        texture_period: int = 2,
    ) -> None:
        super().__init__(
            num_samples, image_size, period, split, seed, noise_std, color, channels, normalize, texture, texture_period
        )

    def _defect_kinds(self, index: int, rng: np.random.Generator) -> tuple[str, ...]:
        return (DEFECT_TYPES[index % len(DEFECT_TYPES)],)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.render(index)
        return self._to_tensor(image), index % len(DEFECT_TYPES)


class PeriodicDefectsSegmentation(_PeriodicDataset):
    """Segment pads and defects in periodic lattice images.

    Same images as :class:`PeriodicDefects`, with ``min_defects..max_defects``
    defects of random types at separate cells. The mask holds
    :data:`SEGMENTATION_CLASSES` ids: 0 background, 1 normal pad, 2 ``missing``
    (the footprint of the removed pad), 3 ``extra``, 4 ``bridge`` (the bar
    outside the pads), 5 ``shifted`` (the displaced pad), 6 ``size`` (the
    enlarged pad). No pixel is ignored; ``ignore_index = 255`` is declared for
    interface compatibility.

    Args:
        num_samples: Number of images.
        image_size: Height and width; must be a multiple of ``period`` (64 is
            divisible by a total stride of 32).
        period: Lattice period in pixels.
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: Base seed; item ``i`` depends only on ``(seed, split, i)``.
        min_defects: Fewest defects per image.
        max_defects: Most defects per image.
        noise_std: Standard deviation of the pixel noise.
        color: Random colour tints.
        channels: Image channels.
        normalize: Normalise with :data:`MEAN` / :data:`STD`.
        texture: Contrast of a fine periodic background texture; 0 draws none.
        texture_period: Period of that texture in pixels; must divide ``image_size``.

    Shape:
        - Image: ``(channels, image_size, image_size)`` ``float32``.
        - Mask: ``(image_size, image_size)`` ``int64``.

    Example:
        >>> image, mask = PeriodicDefectsSegmentation(num_samples=2)[0]
        >>> image.shape, mask.shape, mask.dtype
        (torch.Size([3, 64, 64]), torch.Size([64, 64]), torch.int64)
    """

    classes = list(SEGMENTATION_CLASSES)
    ignore_index = 255

    def __init__(
        self,
        num_samples: int = 1000,
        image_size: int = 64,
        period: int = 8,
        split: str = "train",
        seed: int = 0,
        min_defects: int = 1,
        max_defects: int = 3,
        noise_std: float = 0.03,
        color: bool = False,
        channels: int = 3,
        normalize: bool = True,
        texture: float = 0.0,
        texture_period: int = 2,
    ) -> None:
        super().__init__(
            num_samples, image_size, period, split, seed, noise_std, color, channels, normalize, texture, texture_period
        )
        if not 0 <= min_defects <= max_defects:
            raise ConfigError(
                f"PeriodicDefectsSegmentation: need 0 <= min_defects <= max_defects, got {min_defects}, {max_defects}."
            )
        self.min_defects = min_defects
        self.max_defects = max_defects

    def _defect_kinds(self, index: int, rng: np.random.Generator) -> tuple[str, ...]:
        count = int(rng.integers(self.min_defects, self.max_defects + 1))
        return tuple(DEFECT_TYPES[1:][k] for k in rng.integers(0, len(DEFECT_TYPES) - 1, size=count))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.render(index)
        return self._to_tensor(image), torch.from_numpy(labels.astype(np.int64))


class PeriodicDefectsDataModule(BaseDataModule):
    """Defect classification on synthetic periodic lattices (no files; see :class:`PeriodicDefects`).

    Args:
        num_train: Training images.
        num_val: Validation images.
        num_test: Test (and predict) images.
        image_size: Height and width; must be a multiple of ``period``.
        period: Lattice period in pixels.
        noise_std: Pixel noise standard deviation.
        color: Random colour tints.
        texture: Contrast of a fine periodic background texture; 0 draws none.
        texture_period: Period of that texture in pixels; must divide ``image_size``.
        batch_size: Images per batch.
        num_workers: Loader worker processes.
        seed: Seeds the images (per split and index) and the shuffling.
        pin_memory: Pin host memory; ``None`` = when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images (e.g. JPEGs of this generator's
            images) for ``predict``; ``None`` predicts on the test split.

    Example:
        >>> dm = PeriodicDefectsDataModule(num_train=8, num_val=4, num_test=4, batch_size=4)
        >>> dm.setup("fit")
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> images.shape, labels.dtype, dm.num_classes
        (torch.Size([4, 3, 32, 32]), torch.int64, 6)
    """

    classes = list(DEFECT_TYPES)
    num_classes = len(DEFECT_TYPES)

    def __init__(
        self,
        num_train: int = 5000,
        num_val: int = 1000,
        num_test: int = 1000,
        image_size: int = 32,
        period: int = 8,
        noise_std: float = 0.03,
        color: bool = False,
        texture: float = 0.0,
        texture_period: int = 2,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: Optional[bool] = None,
        drop_last: bool = False,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, drop_last, predict_dir)
        _check_geometry(type(self).__name__, image_size, period)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = image_size
        self.period = period
        self.noise_std = noise_std
        self.color = color
        self.texture = texture
        self.texture_period = texture_period

    def predict_transform(self) -> ImageTransform:
        """Scale to [0, 1] and normalise with :data:`MEAN` / :data:`STD`, as the generated images."""
        return normalize_uint8((MEAN,) * 3, (STD,) * 3)

    def build_dataset(self, split: str) -> Dataset:
        return PeriodicDefects(
            self.sizes[split], self.image_size, self.period, split, self.seed, self.noise_std, self.color,
            texture=self.texture, texture_period=self.texture_period,
        )  # fmt: skip


class PeriodicDefectsSegmentationDataModule(BaseDataModule):
    """Pad/defect segmentation on synthetic periodic lattices (see :class:`PeriodicDefectsSegmentation`).

    Args:
        num_train: Training images.
        num_val: Validation images.
        num_test: Test (and predict) images.
        image_size: Height and width; a multiple of ``period`` (and of the
            network's total stride, 32 for ResNets, for exact equivariance).
        period: Lattice period in pixels.
        min_defects: Fewest defects per image.
        max_defects: Most defects per image.
        noise_std: Pixel noise standard deviation.
        color: Random colour tints.
        texture: Contrast of a fine periodic background texture; 0 draws none.
        texture_period: Period of that texture in pixels; must divide ``image_size``.
        batch_size: Images per batch.
        num_workers: Loader worker processes.
        seed: Seeds the images and the shuffling.
        pin_memory: Pin host memory; ``None`` = when CUDA is available.
        drop_last: Drop the last incomplete training batch.
        predict_dir: Folder of new, unlabelled images (e.g. JPEGs of this generator's
            images) for ``predict``; ``None`` predicts on the test split.

    Example:
        >>> dm = PeriodicDefectsSegmentationDataModule(num_train=4, num_val=2, num_test=2, batch_size=2)
        >>> dm.setup("fit")
        >>> images, masks = next(iter(dm.train_dataloader()))
        >>> masks.shape, dm.num_classes, dm.ignore_index
        (torch.Size([2, 64, 64]), 7, 255)
    """

    classes = list(SEGMENTATION_CLASSES)
    num_classes = len(SEGMENTATION_CLASSES)
    ignore_index = 255

    def __init__(
        self,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        image_size: int = 64,
        period: int = 8,
        min_defects: int = 1,
        max_defects: int = 3,
        noise_std: float = 0.03,
        color: bool = False,
        texture: float = 0.0,
        texture_period: int = 2,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: Optional[bool] = None,
        drop_last: bool = False,
        predict_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory, drop_last, predict_dir)
        _check_geometry(type(self).__name__, image_size, period)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = image_size
        self.period = period
        self.min_defects = min_defects
        self.max_defects = max_defects
        self.noise_std = noise_std
        self.color = color
        self.texture = texture
        self.texture_period = texture_period

    def predict_transform(self) -> ImageTransform:
        """Scale to [0, 1] and normalise with :data:`MEAN` / :data:`STD`, as the generated images."""
        return normalize_uint8((MEAN,) * 3, (STD,) * 3)

    def build_dataset(self, split: str) -> Dataset:
        return PeriodicDefectsSegmentation(
            self.sizes[split],
            self.image_size,
            self.period,
            split,
            self.seed,
            self.min_defects,
            self.max_defects,
            self.noise_std,
            self.color,
            texture=self.texture,
            texture_period=self.texture_period,
        )

"""Reading images, label maps and split files with errors that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image
from torchvision import datasets

from ..errors import DataError, DatasetNotFoundError

PathLike = Union[str, Path]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def require_dir(path: PathLike, what: str, hint: str) -> Path:
    """Return ``path`` if it is a folder, else raise a :class:`~mass_lightning.errors.DatasetNotFoundError`.

    Args:
        path: Folder to check.
        what: What the folder is, for the message (e.g. ``"CamVid root"``).
        hint: What the user should do about it.

    Raises:
        DatasetNotFoundError: If ``path`` is not an existing folder.
    """
    path = Path(path)
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DatasetNotFoundError(f"{what} {state}: '{path}'. {hint}")
    return path


def require_file(path: PathLike, what: str, hint: str) -> Path:
    """Return ``path`` if it is a file, else raise a :class:`~mass_lightning.errors.DatasetNotFoundError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"{what} not found: '{path}'. {hint}")
    return path


def check_files_exist(paths: Iterable[PathLike], listed_in: PathLike, hint: str) -> None:
    """Raise one clear error if any of ``paths`` (listed in a split file) is missing.

    Args:
        paths: Files a split file refers to.
        listed_in: The split file (or folder) that lists them, named in the message.
        hint: What the user should do about it.

    Raises:
        DatasetNotFoundError: Naming the split file, the number of missing files
            and the first few of them.
    """
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetNotFoundError(
            f"{len(missing)} file(s) listed in '{listed_in}' do not exist:\n  {shown}{more}\n{hint}"
        )


def read_split_file(path: PathLike, what: str, hint: str) -> list[str]:
    """Read a split file: one entry per line, blank lines and ``#`` comments skipped.

    Raises:
        DatasetNotFoundError: If the file is missing.
        DataError: If it lists nothing.
    """
    path = require_file(path, what, hint)
    lines = [line.strip() for line in path.read_text().splitlines()]
    entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise DataError(f"{what} '{path}' is empty: it lists no samples. {hint}")
    return entries


def open_image(path: PathLike, mode: Optional[str] = "RGB") -> Image.Image:
    """Open and fully decode an image, turning PIL errors into clear ones.

    Args:
        path: Image file.
        mode: PIL mode to convert to (``"RGB"``, ``"L"``), or ``None`` to keep
            the stored mode (label maps: palette ``"P"`` stays indices).

    Returns:
        The decoded image (detached from the file).

    Raises:
        DatasetNotFoundError: If the file does not exist.
        DataError: If the file cannot be decoded (corrupt, truncated, not an image).

    Example:
        >>> open_image("missing.jpg")  # doctest: +SKIP
        DatasetNotFoundError: Image file not found: 'missing.jpg'. ...
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode is not None else image.copy()
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"Image file not found: '{path}'. Check the dataset root and that the download/extraction "
            "finished; a split file may list an image that is not on disk."
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(
            f"Cannot decode image '{path}' ({type(error).__name__}: {error}). The file is corrupt, "
            "truncated or not an image: re-download/re-extract the dataset or delete the file."
        ) from error


def pil_rgb_loader(path: str) -> Image.Image:
    """``loader`` for :class:`torchvision.datasets.ImageFolder` with clear errors."""
    return open_image(path, "RGB")


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an image as an ``(H, W, 3)`` ``uint8`` RGB array (see :func:`open_image`)."""
    return np.array(open_image(path, "RGB"), dtype=np.uint8)


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a label map stored as a palette or grayscale PNG as ``(H, W)`` ``uint8`` class ids.

    Raises:
        DataError: If the file holds a colour (RGB) image instead of class ids.
    """
    image = open_image(path, mode=None)
    if image.mode in ("P", "L"):
        return np.array(image, dtype=np.uint8)
    if image.mode in ("I", "I;16", "I;16B", "F"):
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 255:
            raise DataError(f"Label map '{path}' has values outside 0..255 ({array.min()}..{array.max()}).")
        return array.astype(np.uint8)
    raise DataError(
        f"Label map '{path}' has PIL mode '{image.mode}'; expected a single-channel class-id map "
        "(palette 'P' or grayscale 'L'). Colour-coded masks must be converted to class ids first."
    )


def read_sbd_mat(path: PathLike) -> np.ndarray:
    """Read the class map of an SBD ``cls/*.mat`` file as ``(H, W)`` ``uint8``.

    Reads ``GTcls.Segmentation`` exactly as :class:`torchvision.datasets.SBDataset`
    does (``scipy.io.loadmat``; scipy comes with albumentations).

    Raises:
        DatasetNotFoundError: If the file is missing.
        DataError: If it is not a MATLAB file with a ``GTcls.Segmentation`` field.
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"SBD label file not found: '{path}'. Re-extract SBD's benchmark.tgz.")
    try:
        mat = loadmat(str(path))
        return np.asarray(mat["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    except Exception as error:  # scipy raises many kinds; all mean "not a valid SBD file"
        raise DataError(
            f"Cannot read SBD label file '{path}' ({type(error).__name__}: {error}); expected a MATLAB "
            "file with a 'GTcls' struct holding 'Segmentation'. Re-extract SBD's benchmark.tgz."
        ) from error


def read_label(path: PathLike) -> np.ndarray:
    """Read a label map by file type: SBD ``.mat`` or a PNG (see :func:`read_label_png`)."""
    if str(path).lower().endswith(".mat"):
        return read_sbd_mat(path)
    return read_label_png(path)


def list_images(folder: PathLike) -> list[Path]:
    """Sorted image files directly inside ``folder`` (by extension)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def resolve_listed_path(entry: str, root: PathLike, alternative_suffixes: Sequence[str] = ()) -> Optional[Path]:
    """Find the file a split-file entry refers to, tolerating foreign path prefixes.

    Split files are often written on another machine (``/SegNet/CamVid/train/x.png``).
    Tried in order: the entry as is (absolute); ``root/entry``; ``root`` joined with
    the last 2, then the last 1 path components; each also with the file suffix
    replaced by ``alternative_suffixes`` (e.g. a ``.png`` re-encoded as ``.jpg``).

    Args:
        entry: The path as written in the split file.
        root: The dataset root.
        alternative_suffixes: Other suffixes to try if the listed one is missing.

    Returns:
        The existing file, or ``None`` if nothing matched.
    """
    root = Path(root)
    listed = Path(entry.replace("\\", "/"))
    parts = [p for p in listed.parts if p not in ("/", "")]
    candidates = [listed] if listed.is_absolute() else []
    candidates.append(root / Path(*parts))
    for keep in (2, 1):
        if len(parts) > keep:
            candidates.append(root / Path(*parts[-keep:]))
    for candidate in candidates:
        for suffix in (candidate.suffix, *alternative_suffixes):
            path = candidate.with_suffix(suffix) if suffix else candidate
            if path.is_file():
                return path
    return None


def image_folder(
    folder: PathLike,
    transform: Optional[Callable],
    expected_classes: Optional[tuple[str, ...]] = None,
    owner: str = "ImageFolder",
) -> datasets.ImageFolder:
    """:class:`torchvision.datasets.ImageFolder` with clear errors and decoding errors naming the file.

    Args:
        folder: ``folder/<class>/<image>``.
        transform: Image transform.
        expected_classes: If given, the class folders must be exactly these.
        owner: Name used in error messages.

    Raises:
        DatasetNotFoundError: If ``folder`` is missing, has no class folders, or a class has no image.
        DataError: If the class folders differ from ``expected_classes``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"{owner}: image folder '{folder}' does not exist; expected '{folder}/<class>/<image>.jpg'."
        )
    try:
        dataset = datasets.ImageFolder(str(folder), transform=transform, loader=pil_rgb_loader)
    except FileNotFoundError as error:
        raise DatasetNotFoundError(
            f"{owner}: '{folder}' must hold one sub-folder of images per class ({error})"
        ) from error
    if expected_classes is not None and tuple(dataset.classes) != tuple(expected_classes):
        raise DataError(
            f"{owner}: class folders in '{folder}' are {dataset.classes}, expected {list(expected_classes)}."
        )
    return dataset

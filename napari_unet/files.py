"""Reading images and label images, pairing them by file stem, writing outputs.

TIFF through tifffile, PNG/JPEG through imageio, zarr through zarr.  Every
problem raises a ValueError that names the file.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
ZARR_SUFFIX = ".zarr"


def stem(path: str | os.PathLike[str]) -> str:
    """File name without its image suffix (``a.ome.tif`` -> ``a``)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *IMAGE_SUFFIXES, ZARR_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_input(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(ZARR_SUFFIX):
        return path.is_dir()
    return path.is_file() and name.endswith(IMAGE_SUFFIXES)


def find_inputs(specs: str | Sequence[str], what: str = "input") -> list[Path]:
    """Files named by folders, globs or paths, sorted; errors name the spec."""
    if isinstance(specs, str | os.PathLike):
        specs = [str(specs)]
    found: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir() and not p.name.lower().endswith(ZARR_SUFFIX):
            items = sorted(c for c in p.iterdir() if _is_input(c))
            if not items:
                raise ValueError(f"{what} folder {spec} contains no TIFF, PNG, JPEG or zarr image")
            found += items
        elif p.exists():
            if not _is_input(p):
                raise ValueError(
                    f"{what} {spec} is not a TIFF, PNG, JPEG or zarr image (by its name)"
                )
            found.append(p)
        elif any(ch in str(spec) for ch in "*?["):
            items = sorted(Path(m) for m in glob.glob(str(spec)) if _is_input(Path(m)))
            if not items:
                raise ValueError(f"{what} pattern {spec} matches no image file")
            found += items
        else:
            raise ValueError(f"{what} {spec} does not exist")
    return found


def pair_by_stem(images: Iterable[Path], labels: Iterable[Path]) -> list[tuple[Path, Path]]:
    """Pair image and label files that share a stem; error when nothing pairs."""
    lab = {}
    for p in labels:
        if stem(p) in lab:
            raise ValueError(f"two label files share the stem {stem(p)!r}: {lab[stem(p)]} and {p}")
        lab[stem(p)] = p
    pairs = []
    unpaired = []
    for p in images:
        if stem(p) in lab:
            pairs.append((p, lab[stem(p)]))
        else:
            unpaired.append(p)
    if not pairs:
        raise ValueError(
            "no image has a label file with the same name stem (e.g. images/a.png and labels/a.png)"
        )
    if unpaired:
        log.warning(
            "%d image(s) have no labels and are not used, e.g. %s", len(unpaired), unpaired[0]
        )
    return pairs


def read_image(path: str | os.PathLike[str], lazy: bool = False) -> np.ndarray:
    """Read a TIFF, PNG, JPEG or zarr array; ``lazy`` keeps zarr on disk."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p} does not exist")
    name = p.name.lower()
    try:
        if name.endswith(ZARR_SUFFIX):
            arr = _open_zarr(p)
            return arr if lazy else np.asarray(arr[...])
        if name.endswith((".tif", ".tiff")):
            import tifffile

            data = tifffile.imread(p)
        elif name.endswith(IMAGE_SUFFIXES):
            import imageio.v3 as iio

            data = iio.imread(p)
        else:
            raise ValueError(f"{p} is not a TIFF, PNG, JPEG or zarr image (by its name)")
    except ValueError as exc:
        if str(p) in str(exc):
            raise
        raise ValueError(f"{p} could not be read as an image: {exc}") from None
    except (OSError, SyntaxError, RuntimeError, IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"{p} could not be read as an image: {exc}") from None
    data = np.asarray(data)
    if data.dtype.kind not in "biuf" or data.size == 0:
        raise ValueError(
            f"{p} holds no numeric image data (dtype {data.dtype}, shape {data.shape})"
        )
    return data


def _open_zarr(path: Path):
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node
    # an OME-Zarr group: take the first (full-resolution) dataset
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if ms:
        return node[ms[0]["datasets"][0]["path"]]
    arrays = sorted(name for name, _ in node.arrays())
    if not arrays:
        raise ValueError(f"{path} is a zarr group without arrays")
    return node[arrays[0]]


def looks_rgb(shape: tuple[int, ...]) -> bool:
    """(Y, X, 3|4) with a real image plane, as PNG/JPEG readers return colour images."""
    return len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4


def grey_if_rgb(image: np.ndarray, where: str = "image") -> np.ndarray:
    """Drop an alpha channel; turn grey stored as RGB(A) into one channel.

    Colour images (channels that differ) are returned as (Y, X, 3) unchanged.
    """
    if not looks_rgb(image.shape):
        return image
    rgb = image[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    log.debug("%s is a colour image; kept as 3 channels", where)
    return rgb


def write_tif(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a TIFF atomically (temp file in the same folder, then rename)."""
    import tifffile

    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, np.asarray(array), compression="zlib")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p

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
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LAZY_TIFF_BYTES = 512 * 2**20
"""TIFF files larger than this are read lazily (region by region) by batch prediction."""
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
    """Read a TIFF, PNG, JPEG or zarr array.

    ``lazy`` keeps zarr, and TIFF files larger than :data:`LAZY_TIFF_BYTES`, on disk:
    the result is then a read-only zarr array read region by region.
    """
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

            if lazy and p.stat().st_size > LAZY_TIFF_BYTES:
                return _open_tiff_lazy(p)
            data = tifffile.imread(p)
        elif name.endswith(IMAGE_SUFFIXES):
            import imageio.v3 as iio

            data = iio.imread(p)
        else:
            raise ValueError(f"{p} is not a TIFF, PNG, JPEG or zarr image (by its name)")
    except ValueError as exc:
        if str(p) in str(exc):
            raise
        raise ValueError(f"{p} could not be read as an image: {_short(exc)}") from None
    except MemoryError:
        raise ValueError(f"{p} could not be read as an image: too large for memory") from None
    except Exception as exc:  # noqa: BLE001 - decoders fail on damaged files in many ways
        # (struct.error from PIL, EOFError, zarr's own exceptions, ...): each is reported
        # as the bad input it is, naming the file; found by tests/test_fuzz.py
        raise ValueError(f"{p} could not be read as an image: {_short(exc)}") from None
    data = np.asarray(data)
    if data.dtype.kind not in "biuf" or data.size == 0:
        raise ValueError(
            f"{p} holds no numeric image data (dtype {data.dtype}, shape {data.shape})"
        )
    return data


def _short(exc: BaseException) -> str:
    """A decoder's message in one line of at most 160 characters (some are paragraphs)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    first = text.split(". ")[0]
    return first if len(first) <= 160 else first[:157] + "..."


def _open_tiff_lazy(path: Path):
    """A TIFF's first series as a read-only zarr array (tifffile's zarr store)."""
    import tifffile
    import zarr

    node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    if hasattr(node, "shape"):
        arr = node
    else:  # a pyramid: level 0 is the full resolution
        arr = node[sorted(name for name, _ in node.arrays())[0]]
    if arr.dtype.kind not in "biuf" or 0 in arr.shape:
        raise ValueError(f"{path} holds no numeric image data (dtype {arr.dtype})")
    return arr


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
    except OSError as exc:  # e.g. a full disk: the message names the file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, f"could not write {p}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


# --- pixel sizes and OME-Zarr ------------------------------------------------------------

_UNITS = {
    "micron": "micrometer",
    "microns": "micrometer",
    "um": "micrometer",
    "µm": "micrometer",
    "micrometer": "micrometer",
    "nm": "nanometer",
    "nanometer": "nanometer",
    "mm": "millimeter",
    "millimeter": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "s": "second",
    "sec": "second",
    "ms": "millisecond",
    "min": "minute",
    "h": "hour",
}
"""Unit spellings of TIFF/ImageJ/OME metadata -> OME-Zarr (UDUNITS-2) names."""

PixelSizes = dict[str, tuple[float, str | None]]
"""Axis letter (``T``, ``Z``, ``Y``, ``X``) -> (size per pixel, unit or None)."""


def _unit(name: Any) -> str | None:
    if not name:
        return None
    return _UNITS.get(str(name).strip().lower().replace("\\u00b5", "µ"))


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def pixel_sizes(path: str | os.PathLike[str]) -> PixelSizes:
    """Physical pixel sizes recorded in an image file; ``{}`` when there are none.

    Reads OME-TIFF (``PhysicalSizeX/Y/Z``, ``TimeIncrement``), ImageJ TIFF
    (resolution tags, ``spacing``, ``unit``), plain TIFF resolution tags in
    inch or centimetre, and OME-Zarr ``multiscales`` (first dataset's scale).
    Unreadable metadata is ignored: sizes are a convenience, never an error.
    """
    p = Path(path)
    name = p.name.lower()
    try:
        if name.endswith(ZARR_SUFFIX):
            return _zarr_sizes(p)
        if name.endswith((".tif", ".tiff")):
            return _tiff_sizes(p)
    except Exception as exc:  # noqa: BLE001 - metadata is optional
        log.debug("no pixel sizes from %s: %s", p, exc)
    return {}


def _tiff_sizes(p: Path) -> PixelSizes:
    import tifffile

    sizes: PixelSizes = {}
    with tifffile.TiffFile(p) as tf:
        if tf.is_ome and tf.ome_metadata:
            from xml.etree import ElementTree

            root = ElementTree.fromstring(tf.ome_metadata)
            pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels")), None)
            if pixels is not None:
                for ax, key in (
                    ("X", "PhysicalSizeX"),
                    ("Y", "PhysicalSizeY"),
                    ("Z", "PhysicalSizeZ"),
                ):
                    v = _positive(pixels.get(key))
                    if v is not None:
                        sizes[ax] = (v, _unit(pixels.get(key + "Unit", "µm")))
                t = _positive(pixels.get("TimeIncrement"))
                if t is not None:
                    sizes["T"] = (t, _unit(pixels.get("TimeIncrementUnit", "s")))
            return sizes
        page = tf.pages.first
        unit = None
        factor = 1.0
        if tf.is_imagej:
            ij = tf.imagej_metadata or {}
            unit = _unit(ij.get("unit"))
            z = _positive(ij.get("spacing"))
            if z is not None:
                sizes["Z"] = (z, unit)
            t = _positive(ij.get("finterval"))
            if t is not None:
                sizes["T"] = (t, "second")
        else:
            res_unit = (
                int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 1
            )
            if res_unit == 2:  # inch
                unit, factor = "micrometer", 25400.0
            elif res_unit == 3:  # centimetre
                unit, factor = "micrometer", 10000.0
            else:
                return sizes
        for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
            if tag in page.tags:
                num, den = page.tags[tag].value
                v = _positive(den / num * factor) if num else None
                if v is not None and not (v == 1.0 and unit is None):
                    sizes[ax] = (v, unit)
    return sizes


def _zarr_sizes(p: Path) -> PixelSizes:
    import zarr

    node = zarr.open(str(p), mode="r")
    attrs = dict(node.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not ms:
        return {}
    axes = ms[0].get("axes", [])
    scale = next(
        (
            t["scale"]
            for t in ms[0]["datasets"][0].get("coordinateTransformations", [])
            if t.get("type") == "scale"
        ),
        None,
    )
    if scale is None or len(scale) != len(axes):
        return {}
    sizes: PixelSizes = {}
    for ax, v in zip(axes, scale, strict=True):
        name = ax if isinstance(ax, str) else ax.get("name", "")
        unit = None if isinstance(ax, str) else ax.get("unit")
        if name.upper() in ("T", "Z", "Y", "X") and _positive(v) is not None:
            sizes[name.upper()] = (float(v), unit)
    return sizes


_AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}


def ome_zarr_array(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    axes: str,
    sizes: PixelSizes | None = None,
    *,
    labels: bool = False,
    name: str = "",
    chunk: int = 256,
):
    """Create an OME-Zarr (NGFF 0.5) image at ``path`` and return its full-resolution array.

    The image has one resolution level (``0``) chunked ``chunk`` pixels along Y
    and X and 1 along the other axes; ``sizes`` become the level's scale (1 where
    unknown) and the space/time axes' units.  ``labels=True`` marks it as a label
    image (``image-label``), which napari's OME-Zarr reader opens as a Labels layer.
    """
    import zarr

    axes = axes.upper()
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not match the output shape {tuple(shape)}")
    sizes = sizes or {}
    ax_meta = []
    for ax in axes:
        entry: dict[str, Any] = {"name": ax.lower()}
        if ax in _AXIS_TYPES:
            entry["type"] = _AXIS_TYPES[ax]
        unit = sizes.get(ax, (1.0, None))[1]
        if unit and ax != "C":
            entry["unit"] = unit
        ax_meta.append(entry)
    scale = [float(sizes[ax][0]) if ax in sizes and ax != "C" else 1.0 for ax in axes]
    chunks = tuple(
        min(int(n), chunk) if ax in "YX" else 1 for ax, n in zip(axes, shape, strict=True)
    )
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array("0", shape=tuple(int(n) for n in shape), chunks=chunks, dtype=dtype)
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": ax_meta,
                "datasets": [
                    {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
                ],
            }
        ],
    }
    if labels:
        ome["image-label"] = {"version": "0.5"}
    group.attrs["ome"] = ome
    return array

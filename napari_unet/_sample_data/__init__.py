"""Sample data for the napari manifest (``napari.yaml``) and for demos and tests.

The commands return napari "LayerData" tuples ``(data, kwargs, layer_type)``; building them
needs neither napari nor Qt, so this module imports only numpy, scipy and imageio.

``dsb2018_nuclei``
    Three 256x256 fluorescence images of nuclei with their instance masks, from the Kaggle
    Data Science Bowl 2018 (BBBC038), CC0 1.0. See ``README.md`` beside this file.
``synthetic_nuclei_3d``
    A small 3D stack of blob-shaped nuclei with ground-truth instances, generated from a fixed
    seed, so it is the same on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DATA_DIR",
    "dsb2018_nuclei",
    "load_dsb2018",
    "make_synthetic_nuclei_3d",
    "synthetic_nuclei_3d",
]

DATA_DIR = Path(__file__).resolve().parent
"""Folder with ``images/<id>.png`` (uint8) and ``labels/<id>.png`` (uint16 instance ids)."""

LayerData = tuple[Any, dict[str, Any], str]


def load_dsb2018() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Load the bundled DSB2018 images and their instance masks.

    Returns
    -------
    images : list of numpy.ndarray
        2D ``uint8`` fluorescence images, sorted by file name.
    labels : list of numpy.ndarray
        2D ``uint16`` instance masks (0 = background, one id per nucleus), same order.
    """
    import imageio.v3 as iio

    image_paths = sorted((DATA_DIR / "images").glob("*.png"))
    if not image_paths:
        raise FileNotFoundError(f"no sample images found in {DATA_DIR / 'images'}")
    images = []
    labels = []
    for path in image_paths:
        image = np.asarray(iio.imread(path))
        mask = np.asarray(iio.imread(DATA_DIR / "labels" / path.name))
        if image.shape != mask.shape:
            raise ValueError(
                f"sample {path.name}: image shape {image.shape} != labels shape {mask.shape}"
            )
        images.append(image)
        labels.append(mask)
    return images, labels


def dsb2018_nuclei() -> list[LayerData]:
    """napari sample-data command: DSB2018 nuclei images and instance labels.

    The three 256x256 images are stacked along a leading axis (one image per slider step).

    Returns
    -------
    list of tuple
        ``[(images, {...}, "image"), (labels, {...}, "labels")]`` with ``images`` of shape
        ``(3, 256, 256)`` and dtype ``uint8`` and ``labels`` of the same shape, dtype ``uint16``.
    """
    images, labels = load_dsb2018()
    source = "Kaggle DSB2018 stage1_train (BBBC038), CC0 1.0; Caicedo et al. 2019, Nat. Methods"
    return [
        (np.stack(images), {"name": "DSB2018 nuclei", "metadata": {"source": source}}, "image"),
        (
            np.stack(labels),
            {"name": "DSB2018 nuclei labels", "metadata": {"source": source}},
            "labels",
        ),
    ]


def make_synthetic_nuclei_3d(
    shape: tuple[int, int, int] = (32, 128, 128),
    n_nuclei: int = 60,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a 3D stack of blob-shaped nuclei with ground-truth instance labels.

    Nuclei are ellipsoids flattened along z, with random size, brightness and texture; some
    touch. The image is blurred with an anisotropic point spread function and gets shot noise
    and read noise, like a widefield or confocal stack.

    Parameters
    ----------
    shape : tuple of int
        Stack size ``(z, y, x)``; each axis at least 16.
    n_nuclei : int
        Number of nuclei tried; fewer are placed when the stack is too crowded.
    seed : int
        Seed of the random generator: the same arguments always give the same stack.

    Returns
    -------
    image : numpy.ndarray
        ``uint16`` stack of ``shape``.
    labels : numpy.ndarray
        ``uint16`` instance ids of ``shape``, 0 = background, ids ``1..N`` consecutive.
    """
    from scipy import ndimage as ndi

    if len(shape) != 3 or any(int(s) < 16 for s in shape):
        raise ValueError(f"shape must be three sizes >= 16, got {shape!r}")
    if n_nuclei < 1:
        raise ValueError(f"n_nuclei must be >= 1, got {n_nuclei}")
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint16)
    signal = np.zeros(shape, dtype=np.float32)
    # Smooth texture shared by all nuclei (chromatin-like blotches).
    texture = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.5)
    texture /= max(float(np.abs(texture).max()), 1e-6)

    centres: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    next_id = 1
    for _ in range(n_nuclei * 20):
        if next_id > n_nuclei:
            break
        r = np.array([rng.uniform(3.0, 5.0), rng.uniform(6.0, 10.0), rng.uniform(6.0, 10.0)])
        c = np.array([rng.uniform(r[i], shape[i] - 1 - r[i]) for i in range(3)])
        # Accept when it overlaps no placed nucleus by more than ~10 % of the radii (touching ok).
        too_close = (
            np.linalg.norm((c - c2) / ((r + r2) / 2)) < 1.8
            for c2, r2 in zip(centres, radii, strict=True)
        )
        if any(too_close):
            continue
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.ogrid[box]
        dist = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r, strict=True))
        inside = (dist <= 1.0) & (labels[box] == 0)
        if not inside.any():
            continue
        labels[box][inside] = next_id
        brightness = rng.uniform(0.5, 1.0)
        signal[box][inside] = brightness * (1.0 + 0.35 * texture[box][inside])
        centres.append(c)
        radii.append(r)
        next_id += 1

    blurred = ndi.gaussian_filter(signal, sigma=(1.5, 1.0, 1.0))
    photons = 400.0 * (blurred + 0.05)
    noisy = rng.poisson(photons).astype(np.float32) + rng.normal(100.0, 5.0, shape)
    image = np.clip(noisy, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return image, labels


def synthetic_nuclei_3d() -> list[LayerData]:
    """napari sample-data command: synthetic 3D nuclei stack with ground-truth instances.

    Returns
    -------
    list of tuple
        ``[(image, {...}, "image"), (labels, {...}, "labels")]``, both of shape
        ``(32, 128, 128)`` and dtype ``uint16``.
    """
    image, labels = make_synthetic_nuclei_3d()
    return [
        (image, {"name": "synthetic 3D nuclei"}, "image"),
        (labels, {"name": "synthetic 3D nuclei labels"}, "labels"),
    ]

"""Synthetic nuclei data sets with the layout of ../shared/data (for the ``--tiny`` runs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def nuclei(shape=(128, 128), n=20, seed=0):
    """A grey image of round bright nuclei and its instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        r = rng.uniform(5, 9)
        cy, cx = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - r)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    image = (labels > 0) * 160.0 + rng.normal(30, 10, shape)
    return image.clip(0, 255).astype(np.uint8), labels


def write_dataset(folder: Path, count: int = 12) -> Path:
    assert 1 <= count <= 26
    """``folder/images/*.png`` and ``folder/labels/*.png`` like dsb2018-nuclei."""
    import imageio.v3 as iio

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # names 14..25: "synthetic025" falls in the held-out split (sha1 of the stem % 10 == 0)
    for i in range(26 - count, 26):
        image, labels = nuclei(seed=i)
        iio.imwrite(folder / "images" / f"synthetic{i:03d}.png", image)
        iio.imwrite(folder / "labels" / f"synthetic{i:03d}.png", labels)
    return folder


def membranes(shape=(96, 96), cells=12, seed=0):
    """An EM-like slice (dark membranes between bright cells) and its 0 / 255 labels."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    points = rng.integers(0, shape, size=(cells, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, cells + 1)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    regions = seeds[iy, ix]
    edge = ndimage.morphological_gradient(regions, size=3) > 0
    labels = np.where(edge, 0, 255).astype(np.uint8)
    image = np.where(edge, 40.0, 180.0) + rng.normal(0, 10, shape)
    return image.clip(0, 255).astype(np.uint8), labels


def write_em(folder: Path, count: int = 30) -> Path:
    """``folder/images/NN.png`` and ``folder/labels/NN.png`` like isbi2012-em."""
    import imageio.v3 as iio

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, labels = membranes(seed=i)
        iio.imwrite(folder / "images" / f"{i:02d}.png", image)
        iio.imwrite(folder / "labels" / f"{i:02d}.png", labels)
    return folder

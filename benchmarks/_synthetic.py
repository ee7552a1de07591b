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


def confluent_cells(shape=(256, 256), cells=10, seed=0, empty=0.25):
    """Large touching cells in a DIC-like image (relief at every edge, granular
    cytoplasm, a flat background) and their instance labels.

    The cells are the Voronoi regions of ``cells / (1 - empty)`` random points, a share
    ``empty`` of them left as background, so most cells touch a neighbour along a
    straight border with no gap (HeLa-like confluent cultures; the U-Net paper's
    DIC-HeLa).  The image is the diagonal derivative of a smoothed optical-path map
    (a dome per cell, granules, a nucleus), as differential interference contrast shows it.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    total = int(round(cells / (1 - empty)))
    points = rng.uniform(0, 1, (total, 2)) * np.asarray(shape)
    yy, xx = np.indices(shape)
    dist = (yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2
    regions = np.argmin(dist, axis=-1)
    kept = rng.permutation(total)[:cells]
    labels = np.zeros(shape, np.uint16)
    for new, old in enumerate(sorted(kept), start=1):
        labels[regions == old] = new
    labels = ndimage.grey_opening(labels, size=5)  # rounder corners against the background
    height = np.zeros(shape)
    for i in range(1, labels.max() + 1):
        inside = labels == i
        if not inside.any():
            continue
        depth = ndimage.distance_transform_edt(inside)
        height += np.sqrt(depth / max(depth.max(), 1.0))
        cy, cx = np.argwhere(depth == depth.max())[0]
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.3 * depth.max()) ** 2
        height += 0.4 * (nucleus & inside)
    granules = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5) * (labels > 0)
    height = ndimage.gaussian_filter(height + 0.25 * granules, 1.2)
    dic = ndimage.sobel(height, 0) + ndimage.sobel(height, 1)
    image = 128 + 40 * dic / (np.abs(dic).max() + 1e-9) * 3 + rng.normal(0, 4, shape)
    return image.clip(0, 255).astype(np.uint8), labels

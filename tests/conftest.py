"""Shared fixtures: small synthetic nuclei images whose answer is known."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

SMALL = dict(width=4, depth=2, patch=32, batch_size=2, device="cpu")
"""The smallest network and batch that train in a test: a few CPU steps take a second."""


def make_nuclei(shape=(96, 96), n=8, radius=(6, 10), seed=0, noise=0.08):
    """A fluorescence-like image of bright disks and its instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    image = np.zeros(shape, np.float32)
    placed = 0
    for _ in range(200):
        if placed == n:
            break
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, shape[0] - r), rng.uniform(r, shape[1] - r)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        if (labels[disk] > 0).any():
            continue
        placed += 1
        labels[disk] = placed
        image[disk] = rng.uniform(0.6, 1.0)
    image += rng.normal(0, noise, shape).astype(np.float32)
    return (image * 200 + 20).clip(0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def nuclei():
    """Six 96x96 images with instance labels."""
    pairs = [make_nuclei(seed=s) for s in range(6)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.fixture(scope="session")
def tiny_model(nuclei, tmp_path_factory):
    """A small instances model trained for a few CPU steps, saved and reloaded."""
    from napari_unet.training import train

    out = tmp_path_factory.mktemp("models") / "tiny"
    images, labels = nuclei
    model = train(
        images,
        labels,
        labels_kind="instances",
        steps=40,
        width=8,
        depth=2,
        patch=48,
        batch_size=4,
        device="cpu",
        out=out,
    )
    return model, out


def write_nuclei_folders(root, n):
    """``root/images`` and ``root/labels``: ``n`` synthetic nuclei TIFFs and their instance
    masks, for tests that run the command line."""
    import tifffile

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for seed in range(n):
        image, objects = make_nuclei(seed=seed)
        tifffile.imwrite(root / "images" / f"n{seed}.tif", image)
        tifffile.imwrite(root / "labels" / f"n{seed}.tif", objects)
    return root


@contextlib.contextmanager
def held_elsewhere(folder):
    """Another process holds ``folder``'s writer lock for the ``with`` block; yields it."""
    import subprocess
    import sys

    code = (
        "import sys, time\nfrom napari_unet.writer import hold\n"
        "with hold(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        assert other.stdout.readline().strip() == "held"
        yield other
    finally:
        other.kill()
        other.wait()


def default_sigint() -> None:
    """``preexec_fn`` for a child that must see Ctrl+C: a test run started in the background
    (``make test &``) inherits SIGINT ignored, and so would the child."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

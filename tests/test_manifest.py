"""The npe2 manifest validates, is registered by the installed package, and its sample data load."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_unet._sample_data as sd

MANIFEST = Path(sd.__file__).resolve().parents[1] / "napari.yaml"
EXPECTED_SAMPLES = {"dsb2018_nuclei", "synthetic_nuclei_3d"}


def _npe2_validate(target: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", target, "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifest_file_validates() -> None:
    _npe2_validate(str(MANIFEST))


def test_installed_plugin_validates() -> None:
    # By distribution name: checks the `napari.manifest` entry point in setup.cfg too.
    _npe2_validate("napari-unet")


def test_manifest_sample_data_commands_resolve() -> None:
    import npe2

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-unet"
    assert manifest.display_name == "napari U-Net"
    samples = manifest.contributions.sample_data or []
    assert {s.key for s in samples} == EXPECTED_SAMPLES
    commands = {c.id: c for c in manifest.contributions.commands or []}
    for sample in samples:
        module, _, name = commands[sample.command].python_name.partition(":")
        layer_data = getattr(importlib.import_module(module), name)()
        assert [kind for _, _, kind in layer_data] == ["image", "labels"]


def test_dsb2018_sample() -> None:
    (image, image_meta, image_kind), (labels, labels_meta, labels_kind) = sd.dsb2018_nuclei()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (3, 256, 256)
    assert image.dtype == np.uint8
    assert labels.dtype == np.uint16
    assert image_meta["name"] != labels_meta["name"]
    for img, lab in zip(image, labels, strict=True):
        ids = np.unique(lab)
        assert ids[0] == 0 and len(ids) - 1 >= 50  # many nuclei per image
        # The masks belong to these images: nuclei are brighter than the background.
        assert img[lab > 0].mean() > 2 * img[lab == 0].mean()


def test_synthetic_3d_sample() -> None:
    (image, _, image_kind), (labels, _, labels_kind) = sd.synthetic_nuclei_3d()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert image.shape == labels.shape == (32, 128, 128)
    assert image.dtype == np.uint16
    assert labels.dtype == np.uint16
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids[-1] + 1))  # 0 + consecutive ids
    assert ids[-1] >= 30
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
    # Fixed seed: the same stack every time.
    image2, labels2 = sd.make_synthetic_nuclei_3d()
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(labels, labels2)


def test_synthetic_3d_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        sd.make_synthetic_nuclei_3d(shape=(8, 64, 64))
    with pytest.raises(ValueError, match="n_nuclei"):
        sd.make_synthetic_nuclei_3d(n_nuclei=0)


@pytest.mark.gui
def test_open_sample_in_viewer(make_napari_viewer) -> None:
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders nothing
    layers = viewer.open_sample("napari-unet", "dsb2018_nuclei")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    assert layers[0].data.shape == (3, 256, 256)
    screenshot = viewer.screenshot(canvas_only=True, flash=False)
    assert screenshot.ndim == 3 and screenshot[..., :3].max() > 0  # something was drawn

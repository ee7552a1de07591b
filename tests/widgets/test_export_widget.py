"""The Predict and Batch widgets' Export button writes a bioimage.io package (in a child
process) with test data from an image layer the model takes; a package loads back."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet._widgets import PredictWidget, _session
from napari_unet._widgets._runner import ChildRunner

pytestmark = pytest.mark.gui


def test_export_button_writes_a_package_from_the_plane_in_view(
    make_napari_viewer, qtbot, notes, nuclei, tiny_model, tmp_path, monkeypatch
):
    from napari_unet._widgets import _export

    model, folder = tiny_model
    viewer = make_napari_viewer()
    stack = np.stack([nuclei[0][0], nuclei[0][1].astype(np.uint8) * 40])  # two planes
    viewer.add_image(stack, name="img")
    _session.session_for(viewer).set_model(model, folder)
    predict = PredictWidget(viewer)
    viewer.dims.set_current_step(0, 1)  # the second plane is in view
    chosen = [str(tmp_path / "pkg")]  # no suffix: .zip is added
    monkeypatch.setattr(
        _export.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (chosen[0], ""))
    )
    qtbot.mouseClick(predict.export_btn, Qt.LeftButton)
    assert isinstance(predict.runner, ChildRunner)
    qtbot.waitUntil(lambda: not predict.busy, timeout=120_000)
    pkg = tmp_path / "pkg.zip"
    assert predict.runner.error is None and pkg.is_file()
    assert "exported the model to" in predict.status.text()
    with zipfile.ZipFile(pkg) as z:
        z.extract("test_input.npy", tmp_path)
    test_input = np.load(tmp_path / "test_input.npy", allow_pickle=False)
    plane = stack[1][: test_input.shape[-2], : test_input.shape[-1]]
    np.testing.assert_array_equal(test_input[0, 0], plane)  # the plane in view
    before = pkg.read_bytes()
    notes.clear()
    qtbot.mouseClick(predict.export_btn, Qt.LeftButton)  # the same name again: refused
    assert any(k == "show_warning" and "already exists" in t for k, t in notes), notes
    assert pkg.read_bytes() == before


def test_a_package_loads_in_the_model_list_and_predicts(
    make_napari_viewer, qtbot, nuclei, tiny_model, tmp_path, monkeypatch
):
    import napari_unet as nu
    from napari_unet._widgets import _models
    from napari_unet.bioimageio import export_bioimageio

    model = tiny_model[0]
    image = nuclei[0][0]
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    predict = PredictWidget(viewer)
    monkeypatch.setattr(
        _models.QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(pkg), ""))
    )
    qtbot.mouseClick(predict.models.package_btn, Qt.LeftButton)
    assert predict.models.combo.currentText() == "package: pkg.zip"
    assert predict.model is not None and "loaded" in predict.status.text()
    assert predict.save_postprocess() is False  # read-only, like a built-in model
    assert "the package pkg.zip is read-only" in predict.status.text()
    predict.want_instances.setChecked(True)
    qtbot.mouseClick(predict.run_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not predict.busy, timeout=120_000)
    np.testing.assert_array_equal(
        viewer.layers["img instances"].data, nu.predict(model, image, instances=True)
    )


def test_batch_export_takes_a_layer_the_model_takes(
    make_napari_viewer, qtbot, notes, nuclei, tmp_path, monkeypatch
):
    """A two-channel model: a grey layer cannot give its test data (told, nothing written);
    the selected two-channel layer does, channels first."""
    import napari_unet as nu
    from napari_unet._widgets import BatchWidget, _export

    image, labels = nuclei[0][0], nuclei[1][0]
    two = np.stack([image, image[::-1]], -1)  # (y, x, c)
    folder = tmp_path / "two"
    nu.train([two], [labels], labels_kind="instances", steps=1, width=2, depth=1, patch=32,
             batch_size=1, device="cpu", out=folder, init="scratch")  # fmt: skip
    viewer = make_napari_viewer()
    viewer.add_image(image, name="grey")
    batch = BatchWidget(viewer)
    batch.models.choose(str(folder))
    target = tmp_path / "two.zip"
    monkeypatch.setattr(
        _export.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), ""))
    )
    notes.clear()
    qtbot.mouseClick(batch.export_btn, Qt.LeftButton)
    assert any(k == "show_warning" and "2D, 2 channel(s)" in t for k, t in notes), notes
    assert not batch.busy and not target.exists()
    layer = viewer.add_image(np.moveaxis(two, -1, 0), name="two channels")  # (c, y, x)
    viewer.layers.selection.active = layer
    qtbot.mouseClick(batch.export_btn, Qt.LeftButton)
    assert isinstance(batch.runner, ChildRunner)
    qtbot.waitUntil(lambda: not batch.busy, timeout=120_000)
    assert batch.runner.error is None and target.is_file(), batch.status.text()
    assert "exported the model to" in batch.status.text()
    with zipfile.ZipFile(target) as z:
        z.extract("test_input.npy", tmp_path)
    tested = np.load(tmp_path / "test_input.npy", allow_pickle=False)[0]
    assert tested.shape[0] == 2
    np.testing.assert_array_equal(tested, layer.data[:, : tested.shape[1], : tested.shape[2]])

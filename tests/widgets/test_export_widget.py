"""The Predict widget's Export button writes a bioimage.io package (in a child process)."""

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
    from napari_unet._widgets import _predict

    model, folder = tiny_model
    viewer = make_napari_viewer()
    stack = np.stack([nuclei[0][0], nuclei[0][1].astype(np.uint8) * 40])  # two planes
    viewer.add_image(stack, name="img")
    _session.session_for(viewer).set_model(model, folder)
    predict = PredictWidget(viewer)
    viewer.dims.set_current_step(0, 1)  # the second plane is in view
    chosen = [str(tmp_path / "pkg")]  # no suffix: .zip is added
    monkeypatch.setattr(
        _predict.QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (chosen[0], ""))
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

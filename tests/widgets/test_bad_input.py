"""Bad input in the widgets: a notification that names the problem, nothing lost, no crash."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets import BatchWidget, PredictWidget, TrainWidget, _session

from ..conftest import make_nuclei
from .conftest import small

pytestmark = pytest.mark.gui


def wait_done(qtbot, widget):
    assert widget.runner is not None  # the click started a run
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)


def wait_error(qtbot, widget, notes):
    wait_done(qtbot, widget)
    qtbot.waitUntil(lambda: any(k == "show_error" for k, _ in notes), timeout=30_000)


def test_nothing_painted_is_a_notification_and_no_model(make_napari_viewer, qtbot, notes, tmp_path):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    image, _ = make_nuclei()
    viewer.add_image(image, name="img")
    empty = viewer.add_labels(np.zeros(image.shape, np.uint8), name="labels")
    train = TrainWidget(viewer)
    train.folder.setText(str(tmp_path / "m"))
    small(train, 3)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_error(qtbot, train, notes)
    assert any(k == "show_error" and "no labeled pixel" in t for k, t in notes), notes
    assert "training failed" in train.status.text()
    assert not (tmp_path / "m" / "config.json").exists()
    assert (np.asarray(empty.data) == 0).all()  # the layer is as it was
    assert train.start_btn.isEnabled()


def test_labels_of_another_shape_are_named(make_napari_viewer, qtbot, notes, tmp_path):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    image, labels = make_nuclei()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels[:80], name="labels")
    train = TrainWidget(viewer)
    train.folder.setText(str(tmp_path / "m"))
    small(train, 3)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_error(qtbot, train, notes)
    errors = [t for k, t in notes if k == "show_error"]
    # the engine's shared check, naming the layers (the CLI names the files)
    message = "image layer 'img' has shape (96, 96) but labels layer 'labels' has shape (80, 96)"
    assert errors and message in errors[0]


def test_labels_resized_during_training_do_not_break_it(make_napari_viewer, qtbot, notes, tmp_path):
    """Training works on the data as it was at Train; a layer changed meanwhile is fine."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    pairs = [make_nuclei(seed=s) for s in range(2)]
    viewer.add_image(np.stack([p[0] for p in pairs]), name="img")
    layer = viewer.add_labels(np.stack([p[1] for p in pairs]), name="labels")
    train = TrainWidget(viewer)
    train.kind.setCurrentText("instances")
    train.folder.setText(str(tmp_path / "m"))
    small(train, 30)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    qtbot.waitUntil(
        lambda: len(train.plot.losses) >= 1 or not train.runner.is_running, timeout=60_000
    )
    layer.data = np.zeros((2, 120, 130), np.uint16)  # resized while training
    wait_done(qtbot, train)
    assert train.runner.error is None, notes
    assert (tmp_path / "m" / "config.json").exists()
    assert not [t for k, t in notes if k == "show_error"]


def test_predict_rgb_with_a_grey_model_is_a_notification(
    make_napari_viewer, qtbot, notes, tiny_model
):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), name="colour", rgb=False)
    _session.session_for(viewer).set_model(tiny_model[0], tiny_model[1])
    predict = PredictWidget(viewer)
    qtbot.mouseClick(predict.run_btn, Qt.LeftButton)
    wait_error(qtbot, predict, notes)
    errors = [t for k, t in notes if k == "show_error"]
    assert errors and "looks like RGB(A) but the model takes 1 channel" in errors[0]
    assert [ly.name for ly in viewer.layers] == ["colour"]  # nothing half-made was added


def test_batch_output_that_is_a_file(make_napari_viewer, qtbot, notes, tiny_model, tmp_path):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.add_image(make_nuclei()[0], name="a")
    _session.session_for(viewer).set_model(tiny_model[0], tiny_model[1])
    target = tmp_path / "out.txt"
    target.write_text("my notes")
    batch = BatchWidget(viewer)
    batch.out.setText(str(target))
    qtbot.mouseClick(batch.run_btn, Qt.LeftButton)
    wait_error(qtbot, batch, notes)
    errors = [t for k, t in notes if k == "show_error"]
    assert errors and f"output folder {target} is a file, not a folder" in errors[0]
    assert target.read_text() == "my notes"

"""Widget tests: really click, really wait for the workers (run under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets import PredictWidget, TrainWidget, _session
from napari_unet.store import load_model

from ..conftest import held_elsewhere, make_nuclei
from .conftest import small

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_data(make_napari_viewer):
    viewer = make_napari_viewer()
    pairs = [make_nuclei(seed=s) for s in range(3)]
    viewer.add_image(np.stack([p[0] for p in pairs]), name="nuclei", scale=(1, 0.5, 0.5))
    lab = viewer.add_labels(np.stack([p[1] for p in pairs]), name="truth", scale=(1, 0.5, 0.5))
    lab.metadata["napari_unet_kind"] = "instances"
    return viewer


def wait_idle(qtbot, widget, timeout=120_000):
    """Until the run started by the last click has ended and the widget has handled its end."""
    assert widget.runner is not None  # the click started a run
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_train_then_predict(viewer_with_data, qtbot):
    viewer = viewer_with_data
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    assert train.selected_pairs() == [("nuclei", "truth")]
    assert train.kind.currentText() == "instances"  # from the labels layer's metadata
    small(train, 15)
    qtbot.mouseClick(train.start_btn, __import__("qtpy.QtCore").QtCore.Qt.LeftButton)
    assert not train.start_btn.isEnabled() and train.stop_btn.isEnabled()
    wait_idle(qtbot, train)
    assert "finished after 15 steps" in train.status.text()
    assert train.status.toolTip().startswith("time: prepare")  # where the time went
    assert train.device_label.text().startswith("using cpu")
    assert len(train.plot.losses) >= 1 and train.plot.ious
    xs, ys = train.plot.loss_curve.getData()
    assert len(xs) == len(train.plot.losses) and xs[-1] == 15  # the curve shows every step
    folder = train.session.model_path
    assert load_model(folder).history["steps"] == 15
    assert "U-Net preview" in viewer.layers
    assert viewer.layers["U-Net preview"].data.shape == viewer.layers["nuclei"].data.shape

    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict)
    assert predict.model is train.session.model  # the model just trained
    predict.want_instances.setChecked(True)
    predict.want_probs.setChecked(True)
    predict.image.setCurrentText("nuclei")
    qtbot.mouseClick(predict.run_btn, __import__("qtpy.QtCore").QtCore.Qt.LeftButton)
    wait_idle(qtbot, predict)
    labels = viewer.layers["nuclei labels"]
    inst = viewer.layers["nuclei instances"]
    assert labels.data.shape == (3, 96, 96) and labels.data.dtype == np.uint8
    assert inst.data.shape == (3, 96, 96) and inst.data.dtype.kind == "u"
    np.testing.assert_allclose(labels.scale, (1, 0.5, 0.5))
    assert "nuclei p(interior)" in viewer.layers

    # only the slice in view
    viewer.dims.set_current_step(0, 2)
    predict.in_view.setChecked(True)
    predict.want_probs.setChecked(False)
    predict.want_instances.setChecked(False)
    qtbot.mouseClick(predict.run_btn, __import__("qtpy.QtCore").QtCore.Qt.LeftButton)
    wait_idle(qtbot, predict)
    one = viewer.layers["nuclei labels (slice 2)"]
    assert one.data.shape == (1, 96, 96) and one.translate[0] == 2


def test_pause_resume_stop_leaves_loadable_model(viewer_with_data, qtbot):
    from qtpy.QtCore import Qt

    viewer = viewer_with_data
    train = TrainWidget(viewer)
    small(train, 100_000)
    steps = []
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    train.runner.worker.yielded.connect(lambda e: steps.append(getattr(e, "step", None)))
    qtbot.waitUntil(lambda: any(s for s in steps if s and s >= 3), timeout=60_000)
    qtbot.mouseClick(train.pause_btn, Qt.LeftButton)
    assert train.pause_btn.text() == "Resume"
    qtbot.waitUntil(lambda: train.runner.is_paused, timeout=10_000)
    qtbot.wait(300)  # events the worker emitted just before pausing are still being delivered
    n = len(steps)
    qtbot.wait(500)
    assert len(steps) == n  # nothing happens while paused
    qtbot.mouseClick(train.pause_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(steps) > n, timeout=30_000)
    qtbot.mouseClick(train.stop_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    model = load_model(train.session.model_path)
    assert 3 <= model.history["steps"] < 100_000


def test_deleting_a_training_layer_stops_training(viewer_with_data, qtbot):
    from qtpy.QtCore import Qt

    viewer = viewer_with_data
    train = TrainWidget(viewer)
    small(train, 100_000)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 1, timeout=60_000)
    viewer.layers.remove("truth")
    wait_idle(qtbot, train)
    assert load_model(train.session.model_path).history["steps"] < 100_000


def test_correct_and_retrain(viewer_with_data, qtbot):
    from qtpy.QtCore import Qt

    viewer = viewer_with_data
    train = TrainWidget(viewer)
    predict = PredictWidget(viewer)
    small(train, 5)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    predict.want_labels.setChecked(False)
    predict.want_instances.setChecked(True)
    qtbot.mouseClick(predict.run_btn, Qt.LeftButton)
    wait_idle(qtbot, predict)
    viewer.layers.selection.active = viewer.layers["nuclei instances"]
    qtbot.mouseClick(predict.correct_btn, Qt.LeftButton)
    corrected = viewer.layers["nuclei instances corrected"]
    corrected.data[0] = viewer.layers["truth"].data[0]  # "fix" a slice with the truth
    train.pairs.cellWidget(0, 1).setCurrentText(corrected.name)
    assert train.resume.isChecked()  # continues the model, not a new one
    train.replace_worse.setChecked(True)  # 5 steps on new labels may validate worse
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    model = load_model(train.session.model_path)
    assert model.history["steps"] == 10 and len(model.history["sessions"]) == 2
    assert load_model(f"{train.session.model_path}.previous").history["steps"] == 5


def test_regression_guard_keeps_the_better_model_in_the_widget(
    viewer_with_data, qtbot, monkeypatch, in_thread
):
    from qtpy.QtCore import Qt

    import napari_unet.training as training

    train = TrainWidget(viewer_with_data)
    small(train, 3)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    folder = train.session.model_path
    # the previous model scores an unbeatable 2.0 on the new model's validation data
    monkeypatch.setattr(training.TrainingRun, "score_network", lambda self, network: 2.0)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    assert "kept the previous model" in train.status.text()
    assert train.session.model.history["steps"] == 3  # the session predicts with the kept one
    assert load_model(folder).history["steps"] == 3
    assert load_model(f"{folder}.rejected").history["steps"] == 6


def test_bad_model_folder_is_a_message(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    predict = PredictWidget(viewer)
    assert predict.load(str(tmp_path / "nothing")) is False
    assert "could not load the model" in predict.status.text()


def test_annotate_paint_train_on_a_few_slices(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    from napari_unet._widgets import AnnotateWidget

    viewer = make_napari_viewer()
    pairs = [make_nuclei(seed=s) for s in range(4)]
    viewer.add_image(np.stack([p[0] for p in pairs]), name="stack", scale=(2, 1, 1))
    annotate = AnnotateWidget(viewer)
    annotate.classes.item(1).setText("nucleus")
    qtbot.mouseClick(annotate.add_btn, Qt.LeftButton)
    assert annotate.class_names() == ["background", "nucleus", "class 3"]
    qtbot.mouseClick(annotate.remove_btn, Qt.LeftButton)
    qtbot.mouseClick(annotate.create_btn, Qt.LeftButton)
    layer = viewer.layers["stack labels"]
    assert layer.data.shape == (4, 96, 96) and tuple(layer.scale) == (2, 1, 1)
    assert layer.metadata["napari_unet_kind"] == "sparse"
    # strokes on slice 1 only: background rows and nuclei columns
    truth = pairs[1][1]
    strokes = np.zeros((96, 96), np.uint8)
    strokes[::9][truth[::9] == 0] = 1
    strokes[:, ::4][truth[:, ::4] > 0] = 2
    layer.data[1] = strokes
    train = TrainWidget(viewer)
    assert train.selected_pairs() == [("stack", "stack labels")]
    assert train.kind.currentText() == "sparse"
    small(train, 5)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    model = train.session.model
    assert model.config.labels.class_names == ("background", "nucleus")
    assert model.history["steps"] == 5


def test_batch_over_two_layers(make_napari_viewer, qtbot, tmp_path, nuclei, tiny_model):
    import tifffile
    from qtpy.QtCore import Qt

    from napari_unet._widgets import BatchWidget

    viewer = make_napari_viewer()
    images, _ = nuclei
    viewer.add_image(images[0], name="a")
    viewer.add_image(images[1][:80, :90], name="b")
    _session.session_for(viewer).set_model(tiny_model[0], tiny_model[1])
    batch = BatchWidget(viewer)
    batch.out.setText(str(tmp_path / "out"))
    batch.instances.setChecked(True)
    qtbot.mouseClick(batch.run_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: "wrote 2 file(s)" in batch.status.text(), timeout=60_000)
    qtbot.waitUntil(batch.run_btn.isEnabled, timeout=5_000)
    assert sorted(p.name for p in batch.written) == ["a.tif", "b.tif"]
    assert tifffile.imread(tmp_path / "out" / "b.tif").shape == (80, 90)


def test_batch_zarr_keeps_the_layer_scale(make_napari_viewer, qtbot, tmp_path, nuclei, tiny_model):
    import zarr
    from qtpy.QtCore import Qt

    from napari_unet._widgets import BatchWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.stack(nuclei[0][:2]), name="stack", scale=(2.0, 0.5, 0.5))
    _session.session_for(viewer).set_model(tiny_model[0], tiny_model[1])
    batch = BatchWidget(viewer)
    batch.out.setText(str(tmp_path / "out"))
    batch.fmt.setCurrentText("zarr")
    seen = []
    set_text = batch.status.setText
    batch.status.setText = lambda text: (seen.append(text), set_text(text))  # record each one
    qtbot.mouseClick(batch.run_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: "wrote 1 file(s)" in batch.status.text(), timeout=60_000)
    qtbot.waitUntil(batch.run_btn.isEnabled, timeout=5_000)
    assert "input 1: chunk 2 of 2" in seen  # a slice of the stack per chunk
    ome = zarr.open_group(str(tmp_path / "out" / "stack.zarr"), mode="r").attrs["ome"]
    scale = ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [2.0, 0.5, 0.5]


def test_qt_binding_is_the_one_asked_for(qapp):
    import os

    import qtpy

    assert qtpy.API_NAME.lower() == os.environ.get("QT_API", "pyqt5")
    assert type(qapp).__module__.lower().startswith(qtpy.API_NAME.lower())


def test_runner_throttles_steps_but_keeps_order(qtbot):
    from napari_unet import events as ev
    from napari_unet._widgets._runner import Runner

    def gen():
        for i in range(1, 201):
            yield ev.TrainStep(step=i, loss=1.0, lr=0.1, images_per_s=1.0, elapsed=0.0)
            if i == 100:
                yield ev.Validated(step=i, loss=1.0, iou=0.5, elapsed=0.0)
        return "result"

    seen, done = [], []
    runner = Runner(gen, on_event=seen.append, on_done=done.append)
    runner.start()
    qtbot.waitUntil(lambda: done == ["result"], timeout=10_000)
    steps = [e.step for e in seen if isinstance(e, ev.TrainStep)]
    assert len(steps) < 50  # at most ~10 per second reach the GUI
    assert steps == sorted(steps) and steps[-1] == 200  # the last step always arrives
    i = seen.index(next(e for e in seen if isinstance(e, ev.Validated)))
    assert seen[i - 1].step == 100  # the step before the validation is not lost


def test_channels_axes_and_3d_network(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    from napari_unet._sample_data import make_synthetic_nuclei_3d
    from napari_unet._widgets import AnnotateWidget

    viewer = make_napari_viewer()
    img, truth = make_nuclei(seed=3)
    two = np.stack([img, 255 - img])  # CYX
    viewer.add_image(two, name="two channels")
    annotate = AnnotateWidget(viewer)
    annotate.image.setCurrentText("two channels")
    assert annotate.axes.text() == "ZYX"  # the guess; the user says it is channels
    annotate.axes.setText("CXY")
    qtbot.mouseClick(annotate.create_btn, Qt.LeftButton)
    assert "two channels labels" not in viewer.layers  # refused: must end with YX
    annotate.axes.setText("CYX")
    qtbot.mouseClick(annotate.create_btn, Qt.LeftButton)
    layer = viewer.layers["two channels labels"]
    assert layer.data.shape == (96, 96)
    layer.data = np.where(truth > 0, 2, 1).astype(np.uint8)
    train = TrainWidget(viewer)
    small(train, 2)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train)
    assert train.session.model.config.model.in_channels == 2

    vol, vlab = make_synthetic_nuclei_3d(shape=(16, 64, 64), n_nuclei=10)
    viewer.add_image(vol, name="volume", scale=(0.3, 0.15, 0.15))  # z 2x coarser
    lab3 = viewer.add_labels(vlab, name="volume truth", scale=(0.3, 0.15, 0.15))
    lab3.metadata["napari_unet_kind"] = "instances"
    train3 = TrainWidget(viewer)
    train3.pairs.cellWidget(0, 0).setCurrentText("volume")
    train3.pairs.cellWidget(0, 1).setCurrentText("volume truth")
    train3.kind.setCurrentText("instances")
    train3.dims.setCurrentIndex(1)
    small(train3, 2)
    train3.patch_box.setValue(16)
    qtbot.mouseClick(train3.start_btn, Qt.LeftButton)
    wait_idle(qtbot, train3)
    assert train3.runner.error is None
    assert train3.session.model.config.model.spatial_dims == 3
    # the layer's scale is the voxel size: the model resizes volumes along z
    assert train3.session.model.config.normalization.z_scale == 2.0


def test_labels_are_autosaved_at_train_and_restored(viewer_with_data, qtbot, monkeypatch, tmp_path):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QInputDialog

    viewer = viewer_with_data
    train = TrainWidget(viewer)
    train.folder.setText(str(tmp_path / "m"))
    train.kind.setCurrentText("instances")
    small(train, 2)
    painted = viewer.layers["truth"]
    original = np.asarray(painted.data).copy()
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)  # Train start saves the labels
    wait_idle(qtbot, train)
    project = tmp_path / "m.annotations"
    assert (project / "truth.tif").is_file() and list((project / "by-hash").glob("*.tif"))
    # the user paints, the periodic autosave writes the new state
    painted.data[0, :10, :10] = 99
    painted.refresh()
    train.autosave.timeout.emit()
    assert train._saving is not None  # hashed and written in a worker thread, ...
    painted.data[0, 20:30, 20:30] = 77  # ... from a copy taken at the tick
    qtbot.waitUntil(lambda: train._saving is None, timeout=10_000)
    # ... then the layer is lost (deleted); restore the latest autosave from the widget
    viewer.layers.remove("truth")
    chosen = []

    def pick(parent, title, label, items, current, editable):
        chosen.append(items)
        return next(i for i in items if "(autosave)" in i), True

    monkeypatch.setattr(QInputDialog, "getItem", pick)
    qtbot.mouseClick(train.restore_btn, Qt.LeftButton)
    restored = [ly for ly in viewer.layers if ly.name.startswith("truth (restored")]
    assert len(restored) == 1 and len(chosen[0]) == 2  # latest state and the Train snapshot
    expected = original.copy()
    expected[0, :10, :10] = 99
    np.testing.assert_array_equal(restored[0].data, expected)
    assert restored[0].metadata["napari_unet_kind"] == "instances"


def test_predicted_layers_carry_their_labels_kind(make_napari_viewer, qtbot, nuclei, tiny_model):
    """The kind travels in layer metadata: prediction -> editable copy -> Train widget."""
    from qtpy.QtCore import Qt

    from napari_unet._widgets._slices import KIND_KEY

    viewer = make_napari_viewer()
    viewer.add_image(nuclei[0][0], name="img")
    _session.session_for(viewer).set_model(tiny_model[0], tiny_model[1])
    predict = PredictWidget(viewer)
    predict.want_instances.setChecked(True)
    qtbot.mouseClick(predict.run_btn, Qt.LeftButton)
    wait_idle(qtbot, predict)
    assert viewer.layers["img instances"].metadata[KIND_KEY] == "instances"
    # an instance model's class labels (background, interior, boundary): each value a class
    assert viewer.layers["img labels"].metadata[KIND_KEY] == "semantic"
    viewer.layers.selection.active = viewer.layers["img labels"]
    qtbot.mouseClick(predict.correct_btn, Qt.LeftButton)
    viewer.layers.selection.active = viewer.layers["img instances"]
    qtbot.mouseClick(predict.correct_btn, Qt.LeftButton)
    train = TrainWidget(viewer)
    train.pairs.cellWidget(0, 1).setCurrentText("img labels corrected")
    assert train.kind.currentText() == "semantic"
    train.pairs.cellWidget(0, 1).setCurrentText("img instances corrected")
    assert train.kind.currentText() == "instances"


def test_train_refuses_a_folder_another_process_writes(viewer_with_data, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    folder = tmp_path / "busy-model"
    with held_elsewhere(folder) as other:
        train = TrainWidget(viewer_with_data)
        small(train, 3)
        train.folder.setText(str(folder))
        qtbot.mouseClick(train.start_btn, Qt.LeftButton)
        assert train.runner is None  # nothing started
        text = train.status.text()
        assert f"{folder} is being written by another training (pid {other.pid}" in text
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)  # its writer gone: the folder is free
    wait_idle(qtbot, train)
    assert load_model(folder).history["steps"] == 3


def test_predict_says_a_folder_is_in_training_and_which_save_it_reads(
    make_napari_viewer, tiny_model, tmp_path
):
    import shutil

    folder = tmp_path / "training-now"
    shutil.copytree(tiny_model[1], folder)
    predict = PredictWidget(make_napari_viewer())
    with held_elsewhere(folder) as other:
        assert predict.load(str(folder))
        text = predict.status.text()
        assert f"{folder} is being trained (pid {other.pid}" in text
        assert f"its last complete save, step {tiny_model[0].history['steps']}" in text
    assert predict.load(str(folder)) and predict.status.text() == f"loaded {folder}"

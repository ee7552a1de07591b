"""Instance post-processing in the widgets (issue 11): the Predict widget's seed / foreground /
minimum size controls recompute instances from kept probabilities and save into the model
folder; Annotate's "a few objects" (sparse-instances) labels; training them from the Train
widget.  Really clicks and waits for the workers (run under Xvfb)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

import napari_unet as nu
from napari_unet._widgets import AnnotateWidget, PredictWidget, TrainWidget, _session
from napari_unet._widgets._annotate import BACKGROUND, FIRST_OBJECT
from napari_unet._widgets._runner import ChildRunner
from napari_unet._widgets._slices import CLASSES_KEY, KIND_KEY, SPARSE_INSTANCES
from napari_unet.config import PostprocessConfig
from napari_unet.store import load_model

from ..conftest import make_nuclei
from .conftest import small

pytestmark = pytest.mark.gui


@pytest.fixture
def instance_model(tiny_model, tmp_path):
    """The tiny instances model, copied into a folder of its own (the tests write into it)."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_model[1], folder)
    return load_model(folder), folder


def click(qtbot, button) -> None:
    from qtpy.QtCore import Qt

    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.LeftButton)


def wait_idle(qtbot, widget, timeout=120_000) -> None:
    assert widget.runner is not None  # something started a run
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def predict_widget(make_napari_viewer, image, model, folder):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    _session.session_for(viewer).set_model(model, folder)
    return viewer, PredictWidget(viewer)


def wait_recomputed(qtbot, predict, settings) -> None:
    """Until the debounced recompute with ``settings`` has run and the widget is idle."""
    qtbot.waitUntil(lambda: predict.kept.settings == settings and not predict.busy, timeout=30_000)


def test_settings_start_as_the_models_and_recompute_without_the_network(
    make_napari_viewer, qtbot, nuclei, instance_model, monkeypatch
):
    from napari_unet._widgets import _predict

    model, folder = instance_model
    image = nuclei[0][0]
    viewer, predict = predict_widget(make_napari_viewer, image, model, folder)
    box = predict.instances_box
    assert not box.isHidden()  # an instance model: the controls are there
    pp = model.config.postprocess
    own = replace(pp, min_size=pp.min_size_for(2))  # object size and waist cut kept
    assert box.settings() == own and not box.modified
    networks: list[int] = []  # processes the network ran in (the Predict button: a child)
    recomputes: list[PostprocessConfig] = []
    real_iter = _predict.instances_iter

    def spy(probs, settings, spec):
        recomputes.append(settings)
        return real_iter(probs, settings, spec)

    monkeypatch.setattr(_predict, "instances_iter", spy)

    predict.want_instances.setChecked(True)
    click(qtbot, predict.run_btn)
    wait_idle(qtbot, predict)
    networks.append(predict.runner.pid)
    layer = viewer.layers["img instances"]
    before = np.asarray(layer.data).copy()
    assert before.max() >= 2 and networks[0] is not None  # a few objects, from the network

    # three edits in a row: one recompute (debounced), with the last values
    sizes = np.bincount(before.ravel())[1:]
    new_min = int(np.median(sizes)) + 1  # drops the smaller half of the objects
    box.seed.setValue(0.5)
    box.seed.setValue(pp.seed_threshold)
    box.min_size.setValue(new_min)
    changed = replace(own, min_size=new_min)
    assert box.settings() == changed and box.modified
    assert "not saved" in box.note.text() and "not saved" in box.min_size.toolTip()
    wait_recomputed(qtbot, predict, changed)
    assert recomputes == [changed]
    assert not isinstance(predict.runner, ChildRunner)  # the network did not run again
    assert viewer.layers["img instances"] is layer  # the same layer, updated
    after = np.asarray(layer.data).copy()
    assert 1 <= after.max() < before.max()
    assert layer.metadata[KIND_KEY] == "instances"
    assert "unsaved values" in predict.status.text()
    expected = nu.predict(model.with_postprocess(min_size=new_min), image, instances=True)
    np.testing.assert_array_equal(after, expected)

    # a value changed but not saved is what this widget's next prediction uses
    click(qtbot, predict.run_btn)
    wait_idle(qtbot, predict)
    networks.append(predict.runner.pid)
    assert None not in networks and len(set(networks)) == 2  # the network ran again
    np.testing.assert_array_equal(viewer.layers["img instances"].data, expected)
    assert load_model(folder).config.postprocess == pp  # nothing written yet


def test_save_to_model_writes_the_folder_and_the_session_model(
    make_napari_viewer, qtbot, nuclei, instance_model, notes
):
    model, folder = instance_model
    viewer, predict = predict_widget(make_napari_viewer, nuclei[0][0], model, folder)
    box = predict.instances_box
    box.seed.setValue(0.6)
    box.fg.setValue(0.45)
    box.min_size.setValue(33)
    size = model.config.postprocess.object_size  # calibrated: kept by Save to model
    assert size is not None
    own = model.config.postprocess
    wanted = PostprocessConfig(0.6, 0.45, 33, object_size=size, split=own.split)
    click(qtbot, box.save_btn)
    saved = json.loads((folder / "config.json").read_text())["postprocess"]
    assert saved == dict(
        seed_threshold=0.6, fg_threshold=0.45, min_size=33, object_size=size, split=own.split
    )
    assert load_model(folder).config.postprocess == wanted
    session = _session.session_for(viewer)
    assert session.model.config.postprocess == wanted  # Batch and later predictions use them
    assert session.model.network is model.network and session.model_path == folder
    assert predict.model is session.model
    assert not box.modified and box.note.text() == "the model's own settings"
    assert ("show_info", f"napari-unet: instance settings saved to {folder}") in notes

    # a folder that no longer holds a model: an error naming it, nothing changes
    (folder / "weights.safetensors").unlink()
    box.min_size.setValue(50)
    click(qtbot, box.save_btn)
    errors = [t for k, t in notes if k == "show_error"]
    assert errors and str(folder) in errors[-1]
    assert session.model.config.postprocess == wanted
    assert box.modified


def test_a_model_without_a_folder_cannot_be_saved(
    make_napari_viewer, qtbot, nuclei, tiny_model, notes
):
    from napari_unet._widgets import _predict

    viewer, predict = predict_widget(make_napari_viewer, nuclei[0][0], tiny_model[0], None)
    box = predict.instances_box
    assert not box.save_btn.isEnabled()
    assert "no folder" in box.save_btn.toolTip()
    box.min_size.setValue(box.min_size.value() + 7)
    assert "no folder to save them to" in box.note.text()
    assert predict.save_postprocess() is False
    assert "no folder" in predict.status.text()
    assert any(k == "show_warning" and "no folder" in t for k, t in notes)
    # instances with the unsaved values; then an edit, and the widget closes before the
    # debounced recompute: nothing runs afterwards, the layer stays as it was
    predict.want_instances.setChecked(True)
    click(qtbot, predict.run_btn)
    wait_idle(qtbot, predict)
    shown = np.asarray(viewer.layers["img instances"].data).copy()
    runner = predict.runner
    box.min_size.setValue(box.min_size.value() + 50)
    predict.close()
    qtbot.wait(2 * _predict.RECOMPUTE_DELAY_MS)
    assert predict.runner is runner and not predict.busy
    np.testing.assert_array_equal(viewer.layers["img instances"].data, shown)


def test_a_semantic_model_has_no_instance_settings(make_napari_viewer, qtbot, nuclei):
    from napari_unet.training import train

    images, labels = nuclei
    semantic = [(lab > 0).astype(np.uint8) for lab in labels[:2]]
    model = train(
        images[:2],
        semantic,
        labels_kind="semantic",
        steps=1,
        width=4,
        depth=2,
        patch=32,
        batch_size=2,
        device="cpu",
    )
    viewer, predict = predict_widget(make_napari_viewer, images[0], model, None)
    assert predict.instances_box.isHidden() and not predict.want_instances.isEnabled()


def test_annotate_sparse_instances_layer_and_next_object(make_napari_viewer, qtbot):
    from napari.utils.key_bindings import KeyBinding

    viewer = make_napari_viewer()
    image, _ = make_nuclei()
    viewer.add_image(image, name="img")
    annotate = AnnotateWidget(viewer)
    assert annotate.next_btn.isHidden()  # sparse strokes by default
    annotate.kind.setCurrentIndex(annotate.kind.findData(SPARSE_INSTANCES))
    assert not annotate.next_btn.isHidden()
    assert "1 = background" in annotate.hint.text()
    click(qtbot, annotate.create_btn)
    layer = viewer.layers["img labels"]
    assert layer.metadata[KIND_KEY] == "sparse-instances"
    assert layer.metadata[CLASSES_KEY] == ["background"]  # label 1
    assert layer.data.shape == image.shape and layer.data.dtype == np.uint16
    assert layer.selected_label == FIRST_OBJECT == 2
    hint = annotate.hint.text()
    assert "painting object 2" in hint and "0 = unlabeled" in hint and "1 = background" in hint

    layer.data[5:10, 5:10] = 2
    layer.data[20:25, 5:10] = 3
    layer.data[40:45, 5:10] = 7
    layer.data[60:, :] = BACKGROUND
    click(qtbot, annotate.next_btn)
    assert layer.selected_label == 8
    assert "painting object 8" in annotate.hint.text()
    press_n = layer.keymap[KeyBinding.from_str("N")]  # the layer's key binding
    press_n(layer)
    assert layer.selected_label == 8  # nothing painted with 8 yet
    layer.data[70:75, 70:75] = 8
    press_n(layer)
    assert layer.selected_label == 9
    layer.selected_label = BACKGROUND
    assert "painting background" in annotate.hint.text()

    viewer.layers.selection.active = viewer.layers["img"]
    assert annotate.next_object() is None  # not a sparse-instances layer: a message


def test_train_sparse_instances_from_the_widget_then_predict_instances(
    make_napari_viewer, qtbot, notes
):
    viewer = make_napari_viewer()
    pairs = [make_nuclei(seed=s) for s in range(2)]
    viewer.add_image(np.stack([p[0] for p in pairs]), name="stack")
    annotate = AnnotateWidget(viewer)
    annotate.kind.setCurrentIndex(annotate.kind.findData(SPARSE_INSTANCES))
    click(qtbot, annotate.create_btn)
    layer = viewer.layers["stack labels"]
    for z, (_, truth) in enumerate(pairs):  # three outlined objects and background strokes
        plane = np.zeros(truth.shape, np.uint16)
        plane[::8][truth[::8] == 0] = BACKGROUND
        for obj in (1, 2, 3):
            plane[truth == obj] = FIRST_OBJECT - 1 + obj
        layer.data[z] = plane
    layer.refresh()
    assert layer.data.max() >= 4

    train = TrainWidget(viewer)
    assert train.selected_pairs() == [("stack", "stack labels")]
    assert train.kind.currentText() == "sparse-instances"  # from the layer's metadata
    small(train, 5)
    click(qtbot, train.start_btn)
    wait_idle(qtbot, train)
    assert train.runner.error is None
    status = train.status.text()
    assert "finished after 5 steps" in status and "instances: seed " in status
    # 3 held-out objects: too few to choose thresholds, the widget says so and their AP
    assert "too few to choose them" in status and "AP@0.5 " in status and " px" in status
    assert any(k == "show_info" and "instances: seed" in t for k, t in notes)
    model = train.session.model
    assert model.config.labels.kind == "sparse-instances"
    pp = model.config.postprocess
    assert f"minimum size {pp.min_size_for(2)} px" in status

    predict = PredictWidget(viewer)
    assert predict.want_instances.isEnabled() and not predict.instances_box.isHidden()
    assert predict.instances_box.settings().min_size == pp.min_size_for(2)
    predict.want_instances.setChecked(True)
    click(qtbot, predict.run_btn)
    wait_idle(qtbot, predict)
    inst = viewer.layers["stack instances"]
    assert inst.data.shape == (2, 96, 96) and inst.metadata[KIND_KEY] == "instances"
    assert predict.kept is not None and predict.kept.spec.labels.kind == "sparse-instances"


def test_painted_background_value_is_the_engines():
    from napari_unet.targets import PAINTED_BACKGROUND

    assert BACKGROUND == PAINTED_BACKGROUND


def test_predict_zooms_objects_unlike_the_models_and_recomputes_at_that_zoom(
    make_napari_viewer, qtbot, nuclei, instance_model
):
    """A model that learned objects twice as wide as the image's predicts it zoomed 2x
    (napari_unet.zoom), says so, and recomputes instances from those probabilities with
    the minimum size in the zoomed image's pixels."""
    from napari_unet.events import drain
    from napari_unet.inference import predict_zoomed_iter

    model, folder = instance_model
    pp = model.config.postprocess
    bigger = replace(model, config=replace(model.config, postprocess=replace(pp, object_size=1e9)))
    image = nuclei[0][0]
    _, used = drain(predict_zoomed_iter(bigger, image, device="cpu"))
    assert used > 1.25  # the tiny model finds enough of the 8 nuclei to choose a zoom
    viewer, predict = predict_widget(make_napari_viewer, image, bigger, folder)
    predict.want_instances.setChecked(True)
    click(qtbot, predict.run_btn)
    wait_idle(qtbot, predict)
    assert f"predicted at zoom {used:.2g}" in predict.status.text()
    np.testing.assert_array_equal(
        viewer.layers["img instances"].data, nu.predict(bigger, image, instances=True)
    )
    assert predict.kept.zoom == used
    new_min = pp.min_size_for(2) + 30
    predict.instances_box.min_size.setValue(new_min)
    changed = replace(bigger.config.postprocess, min_size=new_min)
    wait_recomputed(qtbot, predict, changed)
    resized = bigger.with_postprocess(min_size=new_min)
    expected = nu.predict(resized, image, instances=True, zoom=used)
    np.testing.assert_array_equal(viewer.layers["img instances"].data, expected)

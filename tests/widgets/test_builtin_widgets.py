"""Built-in models and "start from" in the widgets (issue 12): the Predict and Batch model
lists, Load folder…, the read-only built-in model, Train from builtin:nuclei.  Really
clicks and waits for the workers (run under Xvfb)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from qtpy.QtCore import Qt

from napari_unet._widgets import BatchWidget, PredictWidget, TrainWidget, _session
from napari_unet.builtin import builtin_path
from napari_unet.store import load_model, sha256_hex

from ..conftest import make_nuclei
from .conftest import small

pytestmark = pytest.mark.gui

SAMPLE = Path(__file__).resolve().parents[2] / "napari_unet" / "_sample_data"
NUCLEI = builtin_path("nuclei")


@pytest.fixture
def untouched():
    """The built-in model's files are the same after the test."""

    def digest() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in NUCLEI.iterdir()}

    before = digest()
    yield
    assert digest() == before


def click(qtbot, button) -> None:
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.LeftButton)


def wait_idle(qtbot, widget, timeout=120_000) -> None:
    assert widget.runner is not None  # the click started a run
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def pick(combo, ref) -> None:
    """Choose the entry holding ``ref`` in a combo box, as the user's selection does."""
    index = combo.findData(ref)
    assert index >= 0, ref
    combo.setCurrentIndex(index)


@pytest.mark.usefixtures("untouched")
def test_predict_with_the_builtin_model_and_its_read_only_settings(
    make_napari_viewer, qtbot, notes
):
    image = iio.imread(sorted((SAMPLE / "images").glob("*.png"))[0])
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    predict = PredictWidget(viewer)
    assert predict.model is None
    pick(predict.models.combo, "builtin:nuclei")
    assert predict.model is not None and predict.model.path == NUCLEI
    assert "builtin:nuclei" in predict.model_label.text()
    assert predict.want_instances.isEnabled()
    box = predict.instances_box
    assert not box.isHidden() and not box.save_btn.isEnabled()
    assert "read-only" in box.save_btn.toolTip()

    predict.want_instances.setChecked(True)
    click(qtbot, predict.run_btn)
    wait_idle(qtbot, predict)
    ids = np.asarray(viewer.layers["img instances"].data)
    assert ids.shape == image.shape and len(np.unique(ids)) > 10
    assert not box.save_btn.isEnabled()  # still, after the run

    # the values apply to this widget; saving them into the package is refused
    box.min_size.setValue(box.min_size.value() + 20)
    assert predict.save_postprocess() is False
    assert "builtin:nuclei is a built-in model, read-only" in predict.status.text()
    assert any(k == "show_warning" and "read-only" in t for k, t in notes)


def test_load_folder_adds_it_to_the_model_list(make_napari_viewer, qtbot, tiny_model, monkeypatch):
    from napari_unet._widgets import _models

    folder = tiny_model[1]
    monkeypatch.setattr(
        _models.QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(folder))
    )
    viewer = make_napari_viewer()
    predict = PredictWidget(viewer)
    click(qtbot, predict.models.load_btn)
    assert predict.model.path == folder and predict.models.ref() == str(folder)
    assert predict.models.combo.currentText() == f"folder: {folder.name}"
    assert predict.instances_box.save_btn.isEnabled()  # a folder of the user's own
    pick(predict.models.combo, "builtin:nuclei")
    assert predict.model.path == NUCLEI
    pick(predict.models.combo, str(folder))  # back to the folder: it stays in the list
    assert predict.model.path == folder


def test_batch_with_the_builtin_model(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    batch = BatchWidget(viewer)
    click(qtbot, batch.run_btn)  # no model yet: a warning, nothing runs
    assert batch.runner is None and any(k == "show_warning" for k, _ in notes)
    pick(batch.models.combo, "builtin:nuclei")
    assert batch.model().path == NUCLEI
    batch.source.setCurrentIndex(1)
    batch.folder.setText(str(SAMPLE / "images"))
    batch.out.setText(str(tmp_path / "out"))
    batch.instances.setChecked(True)
    click(qtbot, batch.run_btn)
    wait_idle(qtbot, batch)
    stems = sorted(p.stem for p in (SAMPLE / "images").glob("*.png"))
    assert sorted(p.stem for p in batch.written) == stems
    for path in batch.written:
        assert len(np.unique(tifffile.imread(path))) > 10


@pytest.fixture
def viewer_with_data(make_napari_viewer):
    viewer = make_napari_viewer()
    pairs = [make_nuclei(seed=s) for s in range(2)]
    viewer.add_image(np.stack([p[0] for p in pairs]), name="nuclei")
    lab = viewer.add_labels(np.stack([p[1] for p in pairs]), name="truth")
    lab.metadata["napari_unet_kind"] = "instances"
    return viewer


@pytest.mark.usefixtures("untouched")
def test_train_starting_from_the_builtin_model(viewer_with_data, qtbot, notes):
    train = TrainWidget(viewer_with_data)
    small(train, 3)
    pick(train.start_from, "builtin:nuclei")
    assert train.init() == "builtin:nuclei"
    assert train.width_box.value() == 0 and not train.width_box.isEnabled()  # the model's
    click(qtbot, train.start_btn)
    assert not train.start_from.isEnabled()
    wait_idle(qtbot, train)
    assert "finished after 3 steps" in train.status.text()
    assert ("show_info", "napari-unet: starting from builtin:nuclei") in notes
    folder = train.session.model_path
    model = load_model(folder)
    nuclei = load_model("builtin:nuclei").config.model
    assert model.config.model == nuclei  # same classes: everything copied
    record = json.loads((folder / "training.json").read_text())["sessions"][0]["init"]
    assert record["from"] == "builtin:nuclei"
    assert record["weights_sha256"] == sha256_hex((NUCLEI / "weights.safetensors").read_bytes())
    assert record["reinitialised"] == []
    # the next Train continues this model
    assert train.resume.isChecked() and train.init() is None and train.width_box.isEnabled()


@pytest.mark.usefixtures("untouched")
def test_train_refusals_start_from_with_continue_and_the_builtin_folder(
    viewer_with_data, qtbot, notes
):
    train = TrainWidget(viewer_with_data)
    small(train, 3)
    pick(train.start_from, "builtin:nuclei")
    train.resume.setChecked(True)
    click(qtbot, train.start_btn)
    assert train.runner is None and "untick one of them" in train.status.text()
    train.resume.setChecked(False)
    train.folder.setText(str(NUCLEI))
    click(qtbot, train.start_btn)
    assert train.runner is None
    assert "builtin:nuclei" in train.status.text() and "read-only" in train.status.text()
    assert any(k == "show_warning" and "choose another output folder" in t for k, t in notes)
    assert not list(NUCLEI.parent.glob("*.annotations"))  # no labels saved beside it


def test_train_start_from_a_model_folder(viewer_with_data, qtbot, tiny_model, monkeypatch):
    from napari_unet._widgets import _train

    folder = tiny_model[1]
    answer = [""]
    monkeypatch.setattr(
        _train.QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: answer[0])
    )
    train = TrainWidget(viewer_with_data)
    pick(train.start_from, _train.FOLDER)  # cancelled dialog: back to the default
    assert train.init() == "auto" and train.start_from.currentText() == "automatic"
    answer[0] = str(folder)
    pick(train.start_from, _train.FOLDER)
    assert train.init() == str(folder)
    assert train.start_from.currentText() == f"folder: {folder.name}"
    small(train, 2)
    train.width_box.setValue(0)
    train.folder.setText(str(Path(_session.DEFAULT_MODEL_ROOT) / "from-folder"))
    click(qtbot, train.start_btn)
    wait_idle(qtbot, train)
    model = load_model(train.session.model_path)
    assert model.config.model.width == load_model(folder).config.model.width
    assert model.history["sessions"][0]["init"]["from"] == str(folder)


def test_train_starts_from_builtin_nuclei_by_default(viewer_with_data, qtbot, notes):
    """2D instances, the CPU default network: "automatic" starts from builtin:nuclei and
    says so; "scratch" does not."""
    train = TrainWidget(viewer_with_data)
    assert train.start_from.currentText() == "automatic" and train.init() == "auto"
    small(train, 2)
    train.width_box.setValue(0)  # the device default: width 8 on the CPU, the built-in's
    train.kind.setCurrentText("instances")
    click(qtbot, train.start_btn)
    wait_idle(qtbot, train)
    assert any(k == "show_info" and "starting from builtin:nuclei" in t for k, t in notes), notes
    first = load_model(train.session.model_path)
    assert first.history["sessions"][0]["init"]["automatic"] is True
    train.resume.setChecked(False)
    train.set_start_from(None)  # scratch
    train.folder.setText(str(Path(_session.DEFAULT_MODEL_ROOT) / "scratch"))
    notes.clear()
    click(qtbot, train.start_btn)
    wait_idle(qtbot, train)
    assert not any("starting from" in t for _, t in notes)
    assert "init" not in load_model(train.session.model_path).history["sessions"][0]


@pytest.mark.usefixtures("untouched")
def test_use_the_start_model_when_it_validated_better(viewer_with_data, qtbot, notes):
    """A training from builtin:nuclei runs for real (3 steps: whether it beat the start
    model depends on the draw); its end is then reported as one whose start model validated
    better (what a ruined fine-tuning sends): the message is shown and one click makes the
    start model the viewer's current model."""
    from napari_unet import events as ev

    train = TrainWidget(viewer_with_data)
    small(train, 3)
    pick(train.start_from, "builtin:nuclei")
    click(qtbot, train.start_btn)
    wait_idle(qtbot, train)
    trained, folder = train.session.model, train.session.model_path
    message = "the model it started from, builtin:nuclei, scores a validation IoU of 0.800"
    train._on_event(ev.Finished(3, "steps", 1.0, str(folder), message, "builtin:nuclei"))
    train._on_done(trained)
    assert not train.use_start_btn.isHidden()
    assert train.use_start_btn.text() == "Use builtin:nuclei"
    assert message in train.status.text() and ("show_warning", f"napari-unet: {message}") in notes
    assert train.session.model is trained  # the new model stays current until the click
    click(qtbot, train.use_start_btn)
    assert train.session.model.path == NUCLEI and train.session.model is not trained
    assert train.use_start_btn.isHidden()
    assert f"predicting with builtin:nuclei; the trained model stays in {folder}" in (
        train.status.text()
    )
    assert load_model(folder).history["steps"] == 3  # nothing of the trained model is lost

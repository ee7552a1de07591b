"""The widgets' compute runs in a child process: killing it, pausing, stopping and
previewing through the process boundary, closing the viewer (run under Xvfb)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet._widgets import TrainWidget
from napari_unet._widgets._runner import ChildRunner
from napari_unet._widgets._slices import INSTANCES
from napari_unet.store import load_model

from ..conftest import make_nuclei
from .conftest import small

pytestmark = pytest.mark.gui


def gone(pid: int) -> bool:
    """The process ended and was reaped (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


def start_training(qtbot, viewer, folder: Path, steps: int = 100_000) -> TrainWidget:
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.kind.setCurrentText(INSTANCES)
    train.folder.setText(str(folder))
    small(train, steps)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    return train


def test_killed_training_leaves_napari_the_labels_and_the_saved_model(
    viewer, qtbot, notes, tmp_path
):
    folder = tmp_path / "m"
    truth = viewer.layers["truth"].data.copy()
    train = start_training(qtbot, viewer, folder, steps=3)
    qtbot.waitUntil(lambda: not train.busy, timeout=120_000)
    assert load_model(folder).history["steps"] == 3
    assert train.resume.isChecked()  # the next Train continues this model
    train.budget.setValue(100_000)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 1, timeout=60_000)
    runner = train.runner
    assert isinstance(runner, ChildRunner) and runner.pid not in (None, os.getpid())
    os.kill(runner.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not train.busy, timeout=20_000)
    errors = [t for k, t in notes if k == "show_error"]
    assert errors and "SIGKILL" in errors[-1] and "training" in errors[-1]
    assert "training failed" in train.status.text() and "SIGKILL" in train.status.text()
    assert "saved last" in train.status.text()
    assert train.start_btn.isEnabled() and not train.stop_btn.isEnabled()
    assert gone(runner.pid)
    np.testing.assert_array_equal(viewer.layers["truth"].data, truth)  # nothing lost
    assert load_model(folder).history["steps"] >= 3  # the last saved model loads
    # training starts again at once
    train.budget.setValue(2)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not train.busy, timeout=120_000)
    assert train.runner.error is None and "finished after" in train.status.text()


def test_pause_resume_stop_and_preview_through_the_child(viewer, qtbot, tmp_path):
    folder = tmp_path / "m"
    train = start_training(qtbot, viewer, folder)
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 2, timeout=60_000)
    preview = viewer.layers["U-Net preview"]
    qtbot.waitUntil(lambda: np.asarray(preview.data).any(), timeout=30_000)  # from the child
    qtbot.mouseClick(train.pause_btn, Qt.LeftButton)
    assert train.pause_btn.text() == "Resume" and train.runner.is_paused
    qtbot.wait(1500)  # steps on their way arrive
    paused_at = len(train.plot.losses)
    qtbot.wait(2000)
    assert len(train.plot.losses) == paused_at  # the child does not train
    qtbot.mouseClick(train.pause_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(train.plot.losses) > paused_at, timeout=30_000)
    qtbot.mouseClick(train.stop_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not train.busy, timeout=60_000)
    assert train.runner.error is None
    steps = load_model(folder).history["steps"]
    assert 2 <= steps < 100_000 and f"finished after {steps} steps" in train.status.text()
    assert train.session.model.history["steps"] == steps  # the model came back from the child
    assert gone(train.runner.pid)


def test_closing_the_viewer_stops_and_reaps_the_child(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image, labels = make_nuclei()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="truth")
    train = start_training(qtbot, viewer, tmp_path / "m")
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 1, timeout=60_000)
    pid = train.runner.pid
    viewer.close()
    qtbot.waitUntil(lambda: gone(pid), timeout=30_000)
    assert 1 <= load_model(tmp_path / "m").history["steps"] < 100_000  # stopped and saved

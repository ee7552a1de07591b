"""Closing a dock widget lets go of the viewer and stops its worker (run under Xvfb)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_unet import events as ev
from napari_unet._widgets import (
    AnnotateWidget,
    BatchWidget,
    PredictWidget,
    TrainWidget,
    _session,
)
from napari_unet._widgets._runner import Runner
from napari_unet._widgets._slices import INSTANCES, SEMANTIC, SPARSE
from napari_unet.config import LABELS_KINDS
from napari_unet.store import load_model

from .conftest import small

pytestmark = pytest.mark.gui

WIDGETS = [AnnotateWidget, TrainWidget, PredictWidget, BatchWidget]


def viewer_callbacks(viewer, widget) -> list[str]:
    """Names of the widget's methods connected to any layer-list or dims event of ``viewer``."""
    names = []
    for group in (viewer.layers.events, viewer.dims.events):
        for emitter in group.emitters.values():
            for cb in emitter.callbacks:
                if isinstance(cb, tuple) and cb[0]() is widget:
                    names.append(cb[1])
                elif getattr(cb, "__self__", None) is widget:
                    names.append(cb.__name__)
    return names


def poke(viewer) -> None:
    """Events every widget listens to: a layer added, a layer removed, the slice moved."""
    viewer.add_image(np.zeros((2, 8, 8), np.uint8), name="extra")
    viewer.dims.set_current_step(0, 1)
    viewer.layers.remove("extra")


@pytest.mark.parametrize("widget_class", WIDGETS, ids=lambda c: c.__name__)
def test_closed_widget_no_longer_hears_the_viewer(viewer, qtbot, widget_class):
    widget = widget_class(viewer)
    connected = viewer_callbacks(viewer, widget)
    if widget_class is not BatchWidget:  # Batch reads the viewer only when it runs
        assert connected
    widget.close()
    assert viewer_callbacks(viewer, widget) == []
    calls = []
    for name in set(connected):  # would be called (napari looks methods up by name) if connected
        setattr(widget, name, lambda *args, name=name: calls.append(name))
    poke(viewer)
    assert calls == []
    widget.deleteLater()
    qtbot.wait(10)
    poke(viewer)  # nothing raised by a deleted widget's handlers


def test_closed_predict_widget_no_longer_hears_the_session(viewer, tiny_model):
    predict = PredictWidget(viewer)
    predict.close()
    _session.session_for(viewer).set_model(tiny_model[0], tiny_model[1])
    assert predict.model is None


def test_napari_dock_close_button_counts_as_closing(viewer, qtbot):
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    assert viewer_callbacks(viewer, train)
    viewer.window.remove_dock_widget(train)  # what the dock's close button does
    assert viewer_callbacks(viewer, train) == []
    assert not train.autosave.isActive()
    train.deleteLater()
    qtbot.wait(10)


def test_closing_the_train_widget_stops_training(viewer, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    train = TrainWidget(viewer)
    train.kind.setCurrentText(INSTANCES)
    train.folder.setText(str(tmp_path / "m"))
    small(train, 100_000)
    qtbot.mouseClick(train.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: len(train.plot.losses) >= 1, timeout=60_000)
    runner = train.runner
    assert runner.progress_bar is not None and runner.progress_bar.total == 100_000
    train.close()
    assert runner.progress_bar is None  # the bar goes with the widget
    seen = len(train.plot.losses)
    qtbot.waitUntil(lambda: not train.busy, timeout=30_000)  # the worker ended
    assert not runner.is_running and runner.error is None
    assert len(train.plot.losses) == seen  # nothing more reached the closed widget
    # the cancelled training kept what it learned, saved in the worker thread
    assert 1 <= load_model(tmp_path / "m").history["steps"] < 100_000


def test_runner_owns_the_progress_bar_and_closes_the_generator_in_its_thread(qtbot):
    threads, seen = [], []

    def forever():
        try:
            i = 0
            while True:
                i += 1
                yield ev.TileDone(i=i, n=1000)
        finally:
            threads.append(threading.current_thread())

    runner = Runner(
        forever,
        on_event=seen.append,
        on_done=lambda _: None,
        progress=lambda e: (e.i, e.n),
        what="forever",
    )
    runner.start()
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=10_000)
    bar = runner.progress_bar
    assert bar is not None and bar.total == 1000 and bar.n >= 1
    runner.detach()
    n = len(seen)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert runner.progress_bar is None
    assert len(seen) == n  # nothing delivered after detach
    assert threads and threads[0] is not threading.main_thread()


def test_kind_names_come_from_the_config():
    assert (SPARSE, SEMANTIC, INSTANCES) == ("sparse", "semantic", "instances")
    assert {SPARSE, SEMANTIC, INSTANCES} <= set(LABELS_KINDS)

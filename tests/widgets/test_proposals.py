"""Label with the model's help: proposals from builtin:nuclei in the Annotate widget, accepted
with a click (napari's mouse callbacks), Shift+click, accept all in view, undo, the slice in
view of a stack, a refused labels layer, the child killed mid-proposal (run under Xvfb)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from napari.utils.interactions import mouse_press_callbacks
from qtpy.QtCore import Qt

from napari_unet._widgets import AnnotateWidget
from napari_unet._widgets._slices import SPARSE_INSTANCES

pytestmark = pytest.mark.gui

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from bench_proposals import Click  # noqa: E402  (what napari's canvas hands a callback)


def annotate(viewer, qtbot, kind: str = SPARSE_INSTANCES) -> AnnotateWidget:
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.setCurrentText("nuclei")
    widget.kind.setCurrentIndex(widget.kind.findData(kind))
    qtbot.mouseClick(widget.create_btn, Qt.LeftButton)
    widget.proposal_models.select("builtin:nuclei")
    return widget


def propose(widget, qtbot):
    qtbot.mouseClick(widget.propose_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    return widget.viewer.layers["nuclei labels proposals"]


def centre(proposals, proposal: int) -> tuple:
    """World position (stack index, y, x) of a pixel inside ``proposal``."""
    where = np.argwhere(np.asarray(proposals.data) == proposal)
    return tuple(float(c) for c in where[len(where) // 2] + (proposals.translate / proposals.scale))


def test_click_shift_click_overlap_accept_all_and_undo_on_the_slice_in_view(viewer, qtbot, notes):
    truth = viewer.layers["truth"].data
    viewer.dims.set_point(0, 1)  # the second image of the stack is in view
    widget = annotate(viewer, qtbot)
    labels = viewer.layers["nuclei labels"]
    proposals = propose(widget, qtbot)
    assert proposals.data.shape == (1, 96, 96) and tuple(proposals.translate) == (1, 0, 0)
    ids = [int(i) for i in np.unique(proposals.data) if i]
    assert len(ids) >= 5  # builtin:nuclei finds most of the 8 nuclei
    assert viewer.layers.selection.active is proposals and not widget.runner.error

    mouse_press_callbacks(proposals, Click(centre(proposals, ids[0])))
    first = labels.data[1] == 2
    assert first.sum() > 50 and not labels.data[0].any()  # the slice in view only
    hit = np.unique(truth[1][first])
    assert len(hit[hit > 0]) == 1  # one nucleus, the one clicked

    mouse_press_callbacks(proposals, Click(centre(proposals, ids[1]), ["Shift"]))
    assert ((labels.data[1] == 1) == (proposals.data[0] == ids[1])).all()  # background

    painted = np.argwhere(proposals.data[0] == ids[2])[:5]
    labels.data[1][tuple(painted.T)] = 9  # the user painted part of the third already
    mouse_press_callbacks(proposals, Click(centre(proposals, ids[2])))
    assert (labels.data[1][tuple(painted.T)] == 9).all()  # never overwritten
    assert "5 px already labeled left as they were" in widget.proposal_status.text()
    third = (labels.data[1] == 10).sum()
    assert third == (proposals.data[0] == ids[2]).sum() - 5  # next free id after 9

    before = labels.data.copy()
    accepted = widget.accept_all_in_view()
    assert len(accepted) == len(ids) - 3  # the rest; the three handled are left out
    assert len(np.unique(labels.data[1])) == len(np.unique(before[1])) + len(ids) - 3
    assert not labels.data[0].any()
    labels.undo()  # one undo step for "accept all"
    np.testing.assert_array_equal(labels.data, before)


def test_proposals_refuse_labels_that_hold_no_objects_and_survive_a_killed_child(
    viewer, qtbot, notes
):
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.proposal_models.select("builtin:nuclei")
    widget.kind.setCurrentIndex(widget.kind.findData("sparse"))
    qtbot.mouseClick(widget.create_btn, Qt.LeftButton)  # strokes of classes: no objects
    qtbot.mouseClick(widget.propose_btn, Qt.LeftButton)
    assert not widget.busy
    assert "'nuclei labels' holds sparse labels; proposals go into" in notes[-1][1]

    widget = annotate(viewer, qtbot)
    labels = viewer.layers["nuclei labels 2"]
    widget.proposal_target.setCurrentText(labels.name)
    labels.data[0, :5, :5] = 3
    before = labels.data.copy()
    qtbot.mouseClick(widget.propose_btn, Qt.LeftButton)
    runner = widget.runner
    qtbot.waitUntil(lambda: runner.pid is not None, timeout=30_000)
    os.kill(runner.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    errors = [t for k, t in notes if k == "show_error"]
    assert errors and "SIGKILL" in errors[-1] and "proposals" in errors[-1]
    assert "nuclei labels 2 proposals" not in viewer.layers
    np.testing.assert_array_equal(labels.data, before)
    assert widget.propose_btn.isEnabled()


def test_where_to_label_next_goes_to_the_most_uncertain_plane_with_no_label(viewer, qtbot, notes):
    viewer.dims.set_point(0, 0)
    widget = annotate(viewer, qtbot)
    labels = viewer.layers["nuclei labels"]
    labels.data[0, 40:44, 40:44] = 2  # plane 0 holds a label: every window of it is out
    qtbot.mouseClick(widget.next_region_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    uncertain = viewer.layers["nuclei labels uncertainty"]
    assert (
        uncertain.data.shape == (2, 96, 96)
        and 0 <= uncertain.data.min() <= uncertain.data.max() <= 1
    )
    assert widget.region == (
        slice(1, 2),
        slice(0, 96),
        slice(0, 96),
    )  # windows of 128 px: the plane
    assert viewer.dims.point[0] == 1 and "label next at plane 1" in widget.proposal_status.text()
    assert "label next" in viewer.layers and viewer.layers.selection.active is labels
    camera = getattr(viewer, "scene", viewer).camera
    assert tuple(camera.center[-2:]) == (47.5, 47.5)  # the window's centre

    runner = widget.runner
    labels.data[1, 0, 0] = 1
    qtbot.mouseClick(widget.next_region_btn, Qt.LeftButton)  # the same model: not computed again
    assert widget.runner is runner and widget.region is None
    assert "every region holds labels already" in widget.proposal_status.text()

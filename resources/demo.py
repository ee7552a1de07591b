"""Demo: napari with the napari-unet widgets docked and the DSB2018 sample nuclei loaded.

    python resources/demo.py             # a window; click Train, then Predict
    python resources/demo.py --headless  # the same flow, driven by code

``make demo`` picks one of the two depending on ``$DISPLAY``.  Headless, it
runs annotate -> train (about a minute) -> predict by clicking the real widgets
and saves screenshots of the real window (``docs/images/`` by default).
Not part of the package: the plugin needs none of it at run time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def prefer_qt6() -> str | None:
    """Run on PyQt6 when it is installed and no binding was chosen ($QT_API).

    napari 0.9 deprecates its PyQt5 backend and says so in a toast at start; the
    widgets work under both.  Must run before anything imports qtpy.  Returns the
    binding chosen here, or None (left to $QT_API / qtpy).
    """
    import importlib.util
    import os

    if "QT_API" in os.environ or importlib.util.find_spec("PyQt6") is None:
        return None
    os.environ["QT_API"] = "pyqt6"
    return "pyqt6"


prefer_qt6()

from napari_unet._widgets._slices import INSTANCES, set_labels_kind  # noqa: E402

PLUGIN = "napari-unet"
SAMPLE = "dsb2018_nuclei"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python resources/demo.py", description=__doc__)
    p.add_argument(
        "--headless",
        action="store_true",
        help="drive the widgets by code, save screenshots and exit",
    )
    p.add_argument(
        "--screenshots",
        type=Path,
        default=Path("docs/images"),
        help="folder for the headless screenshots (default: %(default)s)",
    )
    p.add_argument(
        "--time-budget",
        type=int,
        default=60,
        help="training time in seconds (default: %(default)s)",
    )
    return p.parse_args(argv)


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    from napari.qt import get_qapp

    app = get_qapp()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.02)
    return False


def build_viewer(time_budget: int):
    """A viewer with the sample data and the four widgets docked."""
    import napari

    viewer = napari.Viewer(title="napari-unet demo")
    viewer.window.resize(1700, 1000)
    image, truth = viewer.open_sample(PLUGIN, SAMPLE)
    set_labels_kind(truth, INSTANCES)
    truth.opacity = 0.4
    widgets = {}
    for name in ("Annotate", "Train", "Predict", "Batch"):
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name != "Annotate")
        widgets[name] = widget
    from qtpy.QtCore import Qt

    docks = [w.parent() for w in viewer.window.dock_widgets.values()]
    viewer.window._qt_window.resizeDocks(docks[:1], [480], Qt.Horizontal)
    train = widgets["Train"]
    train.kind.setCurrentText(INSTANCES)
    train.budget_kind.setCurrentText("seconds")
    train.budget.setValue(time_budget)
    return viewer, image, truth, widgets


def _show(viewer, name: str) -> None:
    for key, widget in viewer.window.dock_widgets.items():
        if key.startswith(name):
            dock = widget.parent()
            dock.show()
            dock.raise_()


def _close_toasts(viewer) -> None:
    """Close notification pop-ups so that screenshots show the widgets, not the toasts."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    _wait(lambda: False, 0.3)


def run_headless(args: argparse.Namespace) -> int:
    viewer, image, truth, widgets = build_viewer(args.time_budget)
    out = args.screenshots
    out.mkdir(parents=True, exist_ok=True)
    shots = []

    def shot(name: str) -> None:
        _wait(lambda: False, 0.5)
        _close_toasts(viewer)
        path = out / name
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        shots.append(path)

    # 1. annotate: a sparse labels layer with a few strokes per class (painted here from the
    # ground truth); this demo then trains on the sample's dense instance masks
    import numpy as np

    _show(viewer, "Annotate")
    widgets["Annotate"].image.setCurrentText(image.name)
    widgets["Annotate"].create_btn.click()
    strokes_layer = viewer.layers.selection.active
    truth_data = np.asarray(truth.data)
    strokes = np.zeros(truth_data.shape, np.uint8)
    strokes[:, ::16][truth_data[:, ::16] == 0] = 1
    strokes[:, :, ::6][truth_data[:, :, ::6] > 0] = 2
    strokes_layer.data = strokes
    truth.visible = False
    shot("01-annotate.png")
    strokes_layer.visible = False
    truth.visible = True
    train_widget = widgets["Train"]
    train_widget.pairs.cellWidget(0, 1).setCurrentText(truth.name)
    train_widget.kind.setCurrentText(INSTANCES)

    # 2. train in the background, with the live curve and preview
    train = widgets["Train"]
    _show(viewer, "Train")
    train.start_btn.click()
    _wait(lambda: len(train.plot.ious) >= 2, args.time_budget + 60)
    shot("02-training.png")
    if not _wait(lambda: not train.busy, args.time_budget + 120):
        raise SystemExit("training did not finish in time")
    if train.runner.error is not None:
        raise SystemExit(f"training failed: {train.runner.error}")
    predict = widgets["Predict"]
    _wait(lambda: predict.model is not None, 30)

    # 3. predict instances on the image stack
    _show(viewer, "Predict")
    if "U-Net preview" in viewer.layers:
        viewer.layers["U-Net preview"].visible = False
    truth.visible = False
    predict.want_labels.setChecked(False)
    predict.want_instances.setChecked(True)
    predict.image.setCurrentText(image.name)
    predict.run_btn.click()
    _wait(lambda: f"{image.name} instances" in viewer.layers and not predict.busy, 120)
    shot("03-prediction.png")
    shot("demo.png")

    # 4. label with the model's help: proposals from the model just trained, a few accepted
    # with a click, one rejected as background
    from napari_unet._widgets._slices import SPARSE_INSTANCES

    annotate = widgets["Annotate"]
    _show(viewer, "Annotate")
    viewer.layers[f"{image.name} instances"].visible = False
    annotate.kind.setCurrentIndex(annotate.kind.findData(SPARSE_INSTANCES))
    annotate.create_btn.click()
    annotate.propose_btn.click()
    _wait(lambda: not annotate.busy, 120)
    proposals = viewer.layers[f"{annotate.proposal_target.currentText()} proposals"]
    ids = [int(i) for i in np.unique(np.asarray(proposals.data)) if i]
    for proposal in ids[:6]:
        annotate.accept(proposal)
    if len(ids) > 6:
        annotate.accept(ids[6], background=True)
    shot("04-proposals.png")
    from napari.utils.notifications import notification_manager

    for record in notification_manager.records:
        print(f"notification: {record.message}")
    viewer.close()
    print("screenshots: " + ", ".join(str(p) for p in shots))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.time_budget <= 0:
        raise SystemExit(f"--time-budget must be > 0, got {args.time_budget}")
    if args.headless:
        return run_headless(args)
    import napari

    build_viewer(args.time_budget)
    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

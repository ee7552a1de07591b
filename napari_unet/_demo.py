"""Quick demo: train a U-Net on the DSB2018 sample nuclei and show its prediction in napari.

    python -m napari_unet._demo                 # a window; training runs in a worker thread
    python -m napari_unet._demo --headless --screenshot docs/images/demo.png

``make demo`` picks one of the two depending on ``$DISPLAY``. This is a stop-gap until the dock
widgets exist; it only uses the public API (``napari_unet.train`` / ``napari_unet.predict``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PLUGIN = "napari-unet"
SAMPLE = "dsb2018_nuclei"


def _api() -> Any:
    """Return the ``napari_unet`` module after checking that its training API exists."""
    import napari_unet as nu

    missing = [name for name in ("train", "predict") if not callable(getattr(nu, name, None))]
    if missing:
        raise RuntimeError(
            f"napari_unet.{' and napari_unet.'.join(missing)} not available yet in this checkout; "
            "run the demo with --no-train to only show the sample data"
        )
    return nu


def train_and_predict(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], time_budget: float
) -> np.ndarray:
    """Train on ``images``/``labels`` (dense instance masks) and predict instances on each image.

    Returns
    -------
    numpy.ndarray
        Instance ids, one slice per input image, stacked along the first axis.
    """
    nu = _api()
    model = nu.train(list(images), list(labels), labels_kind="instances", time_budget=time_budget)
    return np.stack([np.asarray(nu.predict(model, image, instances=True)) for image in images])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m napari_unet._demo", description=__doc__)
    parser.add_argument(
        "--headless",
        action="store_true",
        help="train in the foreground, save a screenshot and exit (for CI / no display)",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=Path("docs/images/demo.png"),
        help="where --headless saves the window screenshot (default: %(default)s)",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=60.0,
        help="training time in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--no-train", action="store_true", help="only open the viewer with the sample data"
    )
    return parser.parse_args(argv)


def _process_events(seconds: float = 0.5) -> None:
    from napari.qt import get_qapp

    app = get_qapp()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    args = _parse_args(argv)
    if args.time_budget <= 0:
        raise SystemExit(f"--time-budget must be > 0, got {args.time_budget}")
    if not args.no_train:
        try:
            _api()
        except RuntimeError as exc:
            raise SystemExit(f"napari-unet demo: {exc}") from None

    import napari
    from napari.qt.threading import thread_worker

    viewer = napari.Viewer(title="napari U-Net demo")
    viewer.window.resize(1400, 900)
    image_layer, truth_layer = viewer.open_sample(PLUGIN, SAMPLE)
    truth_layer.visible = False
    images, labels = list(image_layer.data), list(truth_layer.data)
    # napari >= 0.9: viewer.canvas.overlays.text; before: viewer.text_overlay.
    canvas = getattr(viewer, "canvas", None)
    overlay = canvas.overlays.text if canvas is not None else viewer.text_overlay
    overlay.visible = True
    overlay.font_size = 14

    def show_prediction(prediction: np.ndarray) -> None:
        viewer.add_labels(prediction, name="U-Net prediction", opacity=0.6)
        n = sum(len(np.unique(p[p > 0])) for p in prediction)
        overlay.text = f"U-Net prediction: {n} nuclei in {len(prediction)} images"

    if args.no_train:
        overlay.text = "sample data only (--no-train)"
    elif args.headless:
        overlay.text = f"training a U-Net ({args.time_budget:g} s)..."
        _process_events(0.2)
        show_prediction(train_and_predict(images, labels, args.time_budget))
    else:
        overlay.text = f"training a U-Net in the background ({args.time_budget:g} s)..."

        @thread_worker
        def work() -> np.ndarray:
            return train_and_predict(images, labels, args.time_budget)

        def failed(exc: Exception) -> None:
            overlay.text = f"training failed: {exc}"
            napari.utils.notifications.show_error(f"napari-unet demo: training failed: {exc}")

        worker = work()
        worker.returned.connect(show_prediction)
        worker.errored.connect(failed)
        worker.start()

    if args.headless:
        _process_events(0.5)
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(args.screenshot), canvas_only=False, flash=False)
        viewer.close()
        print(f"screenshot saved to {args.screenshot}")
        return 0

    napari.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

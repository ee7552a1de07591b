"""How long a click on a proposal holds napari's event loop, side by side with napari's own
bucket fill on the same layer.

Opens a napari window (the Annotate widget docked) with a synthetic nuclei image of
``--size``² pixels (``--planes`` of them as a stack), a ``sparse-instances`` labels
layer, and proposals = the image's true objects on the plane in view (no model runs: the
accept path alone is timed).  Then ``--clicks`` clicks on proposals through napari's mouse
callbacks (Shift on every other: background), each timed from the click until the event
loop is free again (the labels redrawn), and ``layer.fill`` (napari's paint bucket, the
reference) refilling as many other objects of a labels layer of the same size; and
"accept all in view".  Needs a display: run it under ``xvfb-run`` when $DISPLAY is unset.

    xvfb-run -a python benchmarks/bench_proposals.py --size 2048 --planes 10
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import header  # noqa: E402
from _synthetic import nuclei  # noqa: E402


@dataclass
class Click:
    """What napari's canvas hands a layer's mouse callbacks on a press (also used by
    tests/widgets/test_proposals.py)."""

    position: tuple
    modifiers: list = field(default_factory=list)
    type: str = "mouse_press"
    is_dragging: bool = False
    dims_displayed: list = field(default_factory=lambda: [1, 2])
    view_direction: None = None
    handled: bool = False


def timed(app, action) -> float:
    """Milliseconds from ``action()`` until the event loop has handled what it queued."""
    t0 = time.perf_counter()
    action()
    app.processEvents()
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--planes", type=int, default=10)
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--tiny", action="store_true", help="256², 2 planes, 3 clicks")
    args = p.parse_args()
    if args.tiny:
        args.size, args.planes, args.clicks = 256, 2, 3

    import napari
    from napari.utils.interactions import mouse_press_callbacks
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets import AnnotateWidget
    from napari_unet._widgets._slices import SPARSE_INSTANCES
    from napari_unet.jobs import Predicted

    print(header("cpu"))
    print(f"# {args.planes} plane(s) of {args.size}², {args.clicks} clicks")
    n = max(20, args.size**2 // 2500)
    image, truth = nuclei((args.size, args.size), n=n, seed=0)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(np.stack([image] * args.planes), name="nuclei")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.kind.setCurrentIndex(widget.kind.findData(SPARSE_INSTANCES))
    widget.create()
    labels = viewer.layers["nuclei labels"]
    index = (args.planes // 2,)
    viewer.dims.set_point(0, index[0])
    widget._show_proposals(labels, index, Predicted({"instances": truth.astype(np.int32)}))
    proposals = viewer.layers["nuclei labels proposals"]
    app.processEvents()

    ids = [int(i) for i in np.unique(truth) if i]
    rng = np.random.default_rng(0)
    chosen = rng.choice(ids, size=2 * args.clicks, replace=False)
    clicks, fills = [], []
    for k, proposal in enumerate(chosen[: args.clicks]):
        y, x = np.argwhere(truth == proposal)[0]
        event = Click((float(index[0]), float(y), float(x)), ["Shift"] if k % 2 else [])
        clicks.append(timed(app, lambda e=event: mouse_press_callbacks(proposals, e)))
    reference = viewer.add_labels(np.stack([truth] * args.planes), name="truth")
    top = int(truth.max())
    for k, proposal in enumerate(chosen[args.clicks :]):
        y, x = np.argwhere(truth == proposal)[0]  # the bucket refills one whole object
        fills.append(
            timed(app, lambda y=y, x=x, k=k: reference.fill((index[0], y, x), top + k + 1))
        )
    viewer.layers.selection.active = proposals
    accepted = []
    accept_all = timed(app, lambda: accepted.extend(widget.accept_all_in_view()))
    print("| action | median ms | max ms |")
    print("| --- | ---: | ---: |")
    print(f"| click on a proposal (napari-unet) | {np.median(clicks):.0f} | {max(clicks):.0f} |")
    print(f"| napari's bucket fill (reference) | {np.median(fills):.0f} | {max(fills):.0f} |")
    print(f"| accept all in view ({len(accepted)} proposals) | {accept_all:.0f} | |")
    print(
        f"summary: {args.planes}x{args.size}², click median {np.median(clicks):.0f} ms "
        f"(max {max(clicks):.0f}), bucket fill {np.median(fills):.0f} ms"
    )
    viewer.close()


if __name__ == "__main__":
    main()

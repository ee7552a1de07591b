"""The napari event loop while training runs: longest and 99th-percentile stall.

Opens a napari window with four 256² synthetic nuclei images and their labels,
docks the Train widget, and runs a 10 ms QTimer probe, side by side in one run:
with the viewer idle, then ``--runs`` times from the click on Train until the
training (the default network, ``--seconds`` of steps, live loss curve and
preview on) has ended: data preparation, steps, validation and the calibration of
the post-processing.  Training runs in the widget's child process, whose id is
printed; ``--reference`` adds one training the way it ran before (a thread of
napari's process).  A stall is the time between
two probe ticks (10 ms when nothing blocks the loop).  Needs a display: under
``make bench`` it runs inside Xvfb when $DISPLAY is unset.

    python benchmarks/bench_gui.py --device cpu --seconds 20 --runs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import nuclei  # noqa: E402


def probe(app, seconds: float, until=None) -> list[float]:
    """Gaps between 10 ms timer ticks for ``seconds`` or until ``until()`` is true."""
    from qtpy.QtCore import QTimer

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds and not (until and until()):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return gaps[1:]


def in_napari_process() -> None:
    """From now on the Train widget trains in a thread of napari's process (as before
    issue 13) instead of a child process."""
    from napari_unet._widgets import _runner, _train
    from napari_unet.jobs import JOBS
    from napari_unet.training import TrainControl

    class InThread(_runner.Runner):
        def __init__(self, job, params, **kwargs):
            self.control = TrainControl()
            super().__init__(lambda: JOBS[job][0](params, self.control), **kwargs)

    _train.ChildRunner = InThread


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--runs", type=int, default=3, help="trainings probed, one after the other")
    p.add_argument(
        "--reference",
        action="store_true",
        help="then one more training the way before issue 13: a thread of napari's process",
    )
    p.add_argument("--tiny", action="store_true", help="3 s of training: a quick check")
    args = p.parse_args()
    if args.tiny:
        args.seconds, args.runs = 3, 1
    if not os.environ.get("DISPLAY"):
        sys.exit("bench_gui.py needs a display: run it under xvfb-run (make bench does)")
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_unet._widgets import TrainWidget, _session

    _session.DEFAULT_MODEL_ROOT = Path(tempfile.mkdtemp()) / "models"
    viewer = napari.Viewer(show=True)
    pairs = [nuclei((256, 256), n=30, seed=s) for s in range(4)]
    viewer.add_image(np.stack([a for a, _ in pairs]), name="nuclei")
    viewer.add_labels(np.stack([b for _, b in pairs]), name="truth")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.kind.setCurrentText("instances")
    train.device.set_value(args.device)
    train.budget_kind.setCurrentText("seconds")
    train.budget.setValue(int(args.seconds) + 5)
    app = QApplication.instance()
    rows = [("idle viewer", probe(app, 3.0))]
    for run in range(args.runs + args.reference):
        if run == args.runs:  # the reference: the same training in a thread of this process
            in_napari_process()
        train.start_btn.click()  # probed from the click: data preparation included
        gaps = probe(app, args.seconds + 120, lambda: not train.busy)
        pid = getattr(train.runner, "pid", None)
        where = f"child process {pid}" if pid not in (None, os.getpid()) else "napari's process"
        rows.append((f"training on {args.device}, run {run + 1} ({where})", gaps))
        while train.busy:
            app.processEvents()
            time.sleep(0.01)
        train.resume.setChecked(False)
        train.folder.setText(str(Path(tempfile.mkdtemp()) / "model"))
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"# {time.strftime('%Y-%m-%d')}  {where}, {os.cpu_count()} cores, napari "
        f"{napari.__version__}, Qt binding {os.environ.get('QT_API', 'pyqt5')}"
    )
    print("| state | ticks | longest stall ms | p99 ms | median ms |")
    print("|---|---|---|---|---|")
    for name, gaps in rows:
        g = np.array(gaps) * 1000
        print(
            f"| {name} | {len(g)} | {g.max():.0f} | {np.percentile(g, 99):.0f} | "
            f"{np.median(g):.0f} |"
        )
    worst = [np.max(gaps) * 1000 for _, gaps in rows[1 : 1 + args.runs]]
    p99 = [np.percentile(gaps, 99) * 1000 for _, gaps in rows[1 : 1 + args.runs]]
    print(
        f"summary: training stalls the event loop at most "
        f"{' / '.join(f'{w:.0f}' for w in worst)} ms in {len(worst)} run(s) "
        f"(p99 {' / '.join(f'{q:.0f}' for q in p99)} ms)"
    )
    viewer.close()


if __name__ == "__main__":
    main()

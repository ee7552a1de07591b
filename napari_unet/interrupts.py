"""Ctrl+C and SIGTERM during a command-line training: stop after the step, save, say so.

The first SIGINT (Ctrl+C) or SIGTERM (what a cluster's scheduler sends before its SIGKILL at
a job's time limit) asks the training to stop after the current step
(:meth:`~napari_unet.training.TrainControl.stop`): the model so far, its optimizer state
and ``training.json`` are saved, the instance settings' search is skipped.  A second
signal aborts at once (:meth:`~napari_unet.training.TrainControl.abort`): nothing more is
written, and what was being written is dropped whole (every write is atomic).  Before the
first step there is nothing to keep: the first signal aborts.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

EXIT_CODES = {"interrupted": 130, "terminated": 143}  # 128 + the signal's number
SAME_WITHIN = 1.0
"""A second signal this soon after the first is the same request (a terminal's Ctrl+C and
a launcher passing it on both reach a worker of a data-parallel training), not an abort."""


class Aborted(KeyboardInterrupt):
    """A second signal, or one before training began: stop now, write nothing more."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupts:
    """``with Interrupts(control):`` turns SIGINT and SIGTERM into a graceful stop of the
    training that ``control`` steers, once :meth:`training_started` was called."""

    def __init__(self, control: Any, say: Any = None) -> None:
        self.control = control
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.reason: str | None = None  # "interrupted" / "terminated" once a signal came
        self.started = False
        self.when = 0.0  # time.monotonic() of the first signal
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def training_started(self) -> None:
        self.started = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        reason = "interrupted" if signum == signal.SIGINT else "terminated"
        if self.reason is not None and time.monotonic() - self.when < SAME_WITHIN:
            return  # the same request, passed on
        if self.reason is not None or not self.started:
            self.reason = self.reason or reason
            self.control.abort()
            raise Aborted(self.reason)
        self.reason, self.when = reason, time.monotonic()
        self.control.stop(reason)
        what = "Ctrl+C" if signum == signal.SIGINT else "SIGTERM"
        self.say(
            f"napari-unet: {what}: stopping after this step and saving the model "
            "(Ctrl+C again aborts without saving)"
        )

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.reason or "", 0)

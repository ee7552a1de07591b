"""Run a compute generator in a napari worker thread and hand its events to the GUI.

Frequent events (training steps, tiles) are throttled to at most ``max_rate``
per second (the last one wins); every other event is delivered.  Errors reach
the user as napari notifications.  Compute runs with one CPU thread fewer than
the machine has, so napari's own thread always has a core.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import GeneratorWorker
from napari.utils.notifications import show_error

from ..events import TileDone, TrainStep

log = logging.getLogger(__name__)

THROTTLED = (TrainStep, TileDone)


def compute_threads() -> int:
    """Threads for compute started from the GUI: all cores but one (at least 1)."""
    return max(1, (os.cpu_count() or 2) - 1)


def _limited(gen_factory: Callable[[], Generator]) -> Generator:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(compute_threads())
    try:
        return (yield from gen_factory())
    finally:
        torch.set_num_threads(previous)


class Runner:
    """One generator in one worker; ``on_event`` / ``on_done`` / ``on_error`` callbacks."""

    def __init__(
        self,
        gen_factory: Callable[[], Generator],
        on_event: Callable[[Any], None],
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        max_rate: float = 10.0,
        what: str = "napari-unet",
    ) -> None:
        self.worker = GeneratorWorker(_limited, gen_factory)
        self._on_event = on_event
        self._min_gap = 1.0 / max_rate
        self._last = 0.0
        self._pending: Any = None
        self._what = what
        self.error: BaseException | None = None
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(lambda value: (self._flush(), on_done(value)))

        def errored(exc: BaseException) -> None:
            self.error = exc
            log.debug("%s failed", what, exc_info=exc)
            show_error(f"{what}: {exc}")
            if on_error is not None:
                on_error(exc)

        self.worker.errored.connect(errored)
        if on_finished is not None:
            self.worker.finished.connect(on_finished)

    def _yielded(self, event: Any) -> None:
        if not isinstance(event, THROTTLED):
            self._flush()  # keep the order: a held-back step comes before what followed it
            self._on_event(event)
            return
        now = time.monotonic()
        if now - self._last < self._min_gap:
            self._pending = event
            return
        self._pending = None
        self._last = now
        self._on_event(event)

    def _flush(self) -> None:
        if self._pending is not None:
            event, self._pending = self._pending, None
            self._on_event(event)

    def start(self) -> None:
        self.worker.start()

    def pause(self) -> None:
        self.worker.pause()

    def resume(self) -> None:
        self.worker.resume()

    def quit(self) -> None:
        self.worker.quit()

    @property
    def is_running(self) -> bool:
        return self.worker.is_running

    @property
    def is_paused(self) -> bool:
        return self.worker.is_paused

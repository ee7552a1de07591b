"""Run a compute generator in a napari worker thread and hand its events to the GUI.

Frequent events (training steps, tiles) are throttled to at most ``max_rate``
per second (the last one wins); every other event is delivered.  Errors reach
the user as napari notifications.  Compute runs with one CPU thread fewer than
the machine has, so napari's own thread always has a core.

The runner owns the run's napari progress bar: a widget only says, per event,
what to show (``progress(event) -> (done, total)`` or None).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from napari.qt.threading import GeneratorWorker
from napari.utils import progress as ProgressBar
from napari.utils.notifications import show_error

from ..events import TileDone, TrainStep

if TYPE_CHECKING:  # pragma: no cover
    from ..child import ChildProcess

log = logging.getLogger(__name__)

THROTTLED = (TrainStep, TileDone)
BAR_GAP = 0.5  # seconds between two updates of the progress bar (but its first and last)

ProgressOf = Callable[[Any], tuple[int, int] | None]
"""What the progress bar shows after an event: (done, total), or None to leave it."""


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


class _Worker(GeneratorWorker):
    """A generator worker that closes its generator in the worker thread when it ends.

    ``quit()`` leaves superqt's loop at the next yield; closing the generator there
    runs its cleanup (a cancelled training keeps what it learned) in this thread,
    before ``finished``, instead of whenever the generator is garbage-collected.
    """

    def work(self) -> Any:
        try:
            return super().work()
        finally:
            self._gen.close()


def _ignore(*_: Any) -> None:
    return None


class Runner:
    """One generator in one worker; ``on_event`` / ``on_done`` / ``on_error`` callbacks.

    Parameters
    ----------
    gen_factory
        Called in the worker thread; returns the compute generator.
    on_event, on_done, on_error, on_finished
        GUI-thread callbacks: each (throttled) event, the generator's return value,
        an exception (also shown as a notification), the end in every case.
    max_rate
        At most this many throttled events per second reach ``on_event``.
    what
        Names the run in error notifications and on the progress bar.
    progress
        Maps an event to the progress bar's (done, total); without it, no bar.
    total
        The bar's total before the first event says (0: unknown yet).
    """

    def __init__(
        self,
        gen_factory: Callable[[], Generator],
        on_event: Callable[[Any], None],
        on_done: Callable[[Any], None],
        on_error: Callable[[BaseException], None] | None = None,
        on_finished: Callable[[], None] | None = None,
        max_rate: float = 10.0,
        what: str = "napari-unet",
        progress: ProgressOf | None = None,
        total: int = 0,
    ) -> None:
        self.worker = self._make_worker(gen_factory)
        self.error: BaseException | None = None
        self._on_event = on_event
        self._on_done = on_done
        self._on_error = on_error or _ignore
        self._on_finished = on_finished or _ignore
        self._progress_of = progress
        self._total = total
        self._bar: ProgressBar | None = None
        self._min_gap = 1.0 / max_rate
        self._last = 0.0
        self._bar_shown = 0.0
        self._pending: Any = None
        self._what = what
        self._busy = False
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)

    def _make_worker(self, gen_factory: Callable[[], Generator]) -> _Worker:
        return _Worker(_limited, gen_factory)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Open the progress bar (if any) and start the worker."""
        if self._progress_of is not None:
            self._bar = ProgressBar(total=self._total, desc=self._what)
        self._busy = True
        self.worker.start()

    def pause(self) -> None:
        self.worker.pause()

    def resume(self) -> None:
        self.worker.resume()

    def quit(self) -> None:
        """Ask the worker to stop at the next event (the generator is closed there)."""
        self.worker.quit()

    def detach(self) -> None:
        """Stop the run and deliver nothing more to the callbacks (their widget is closing).

        The progress bar closes now; errors are still notified.
        """
        self._on_event = self._on_done = self._on_error = _ignore
        self._on_finished = _ignore
        self._pending = None
        self.quit()
        self._close_bar()

    @property
    def is_running(self) -> bool:
        """The worker thread still runs (its last events may not be delivered yet)."""
        return self.worker.is_running

    @property
    def is_paused(self) -> bool:
        return self.worker.is_paused

    @property
    def progress_bar(self) -> ProgressBar | None:
        """The run's napari progress bar while it is open (read it, do not drive it)."""
        return self._bar

    @property
    def busy(self) -> bool:
        """From ``start()`` until the GUI thread has handled the end of the run."""
        return self._busy

    # ------------------------------------------------------------------ worker signals
    def _yielded(self, event: Any) -> None:
        if not isinstance(event, THROTTLED):
            self._flush()  # keep the order: a held-back step comes before what followed it
            self._deliver(event)
            return
        now = time.monotonic()
        if now - self._last < self._min_gap:
            self._pending = event
            return
        self._pending = None
        self._last = now
        self._deliver(event)

    def _flush(self) -> None:
        if self._pending is not None:
            event, self._pending = self._pending, None
            self._deliver(event)

    def _deliver(self, event: Any) -> None:
        self._on_event(event)
        # last: napari's progress bar processes pending Qt events, possibly our own end
        if self._bar is not None and self._progress_of is not None:
            shown = self._progress_of(event)
            if shown is not None:
                self._show_progress(*shown)

    def _show_progress(self, done: int, total: int) -> None:
        bar = self._bar
        if bar is None:
            return
        now = time.monotonic()
        if bar.total == total and done < total and now - self._bar_shown < BAR_GAP:
            return  # an update costs napari 5-20 ms of the event loop: at most 2 a second
        self._bar_shown = now
        if bar.total != total:  # a new total (e.g. the tiles of the next pass) restarts the count
            bar.total = total
            bar.n = 0
        if done > bar.n:
            bar.update(done - bar.n)

    def _returned(self, value: Any) -> None:
        self._flush()
        self._on_done(value)

    def _errored(self, exc: BaseException) -> None:
        self.error = exc
        log.debug("%s failed", self._what, exc_info=exc)
        show_error(f"{self._what}: {exc}")
        self._on_error(exc)

    def _finished(self) -> None:
        self._close_bar()
        self._busy = False
        self._on_finished()

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


class RemoteControl:
    """:class:`~napari_unet.training.TrainControl`'s interface for a training in a child
    process: Stop and preview requests travel to it as commands."""

    def __init__(self, child: ChildProcess) -> None:
        self.child = child
        self.stop_requested = False

    def stop(self) -> None:
        """End the training after its current step; the child saves the model folder."""
        self.stop_requested = True
        self.child.send("stop")

    def request_preview(self, image: Any, key: Any = None) -> None:
        self.child.request_preview(image, key)


class ChildRunner(Runner):
    """A :class:`Runner` whose compute runs in a child process (:mod:`napari_unet.child`).

    ``job`` and ``params`` name a function of :data:`napari_unet.jobs.JOBS` and its
    parameters; the worker thread only writes the inputs, starts the child and
    reads its events, so napari's interpreter is left alone.  Pause / Resume / quit
    are commands to the child; a child that dies (killed, crashed) ends the run with
    an error naming the signal or exit code, like any exception of the job.
    """

    def __init__(self, job: str, params: dict[str, Any], **kwargs: Any) -> None:
        from ..child import ChildProcess

        what = kwargs.get("what", "napari-unet")
        self.child = ChildProcess(job, params, what=what, threads=compute_threads())
        self.control = RemoteControl(self.child)
        self._paused = False
        super().__init__(self.child.events, **kwargs)

    def _make_worker(self, gen_factory: Callable[[], Generator]) -> _Worker:
        return _Worker(gen_factory)  # torch's threads are the child's

    @property
    def pid(self) -> int | None:
        """The child's process id once it runs."""
        return self.child.pid

    def pause(self) -> None:
        self._paused = self.child.send("pause") or self._paused

    def resume(self) -> None:
        self.child.send("resume")
        self._paused = False

    @property
    def is_paused(self) -> bool:
        return self._paused

    def quit(self) -> None:
        """Stop the child (training saves, other jobs are cancelled); killed if it hangs."""
        self.child.stop()

    def _returned(self, value: Any) -> None:
        if self.child.cancelled and value is None:
            self._flush()
            return  # cancelled: nothing to deliver, as a quit in-process
        super()._returned(value)

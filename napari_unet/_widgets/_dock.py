"""What every dock widget shares: the viewer, its session, a worker, and a clean close.

A widget builds its controls in ``_init_ui`` and wires them in ``_connect``; it
connects to the viewer and the session with :meth:`DockWidget._listen`, so that
closing the widget disconnects all of it and stops a running worker.  napari's
dock close button takes the widget out of its dock without closing it: leaving
the dock counts as closing.  Closing the viewer deletes its dock widgets without
closing them: a deleted widget lets go the same way (its ``destroyed`` signal), so
a training in a child process is stopped and the child reaped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent
from qtpy.QtGui import QCloseEvent
from qtpy.QtWidgets import QHBoxLayout, QWidget

from ._runner import Runner
from ._session import session_for


class DockWidget(QWidget):
    """Base of the napari-unet dock widgets."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.runner: Runner | None = None
        self._links: list[tuple[Any, Callable[..., Any]]] = []
        self._docked = False
        # not a bound method: the Qt side of the widget is gone when this runs
        self.destroyed.connect(lambda *_: DockWidget._release(self))

    @property
    def busy(self) -> bool:
        """A run (training, prediction, batch) started here has not ended yet."""
        return self.runner is not None and self.runner.busy

    def _listen(self, signal: Any, callback: Callable[..., Any]) -> None:
        """Connect ``callback`` to a viewer or session ``signal`` until the widget closes."""
        signal.connect(callback)
        self._links.append((signal, callback))

    def _release(self) -> None:
        """Disconnect from the viewer and the session; stop the worker (no more callbacks)."""
        while self._links:
            signal, callback = self._links.pop()
            signal.disconnect(callback)
        if self.runner is not None:
            self.runner.detach()

    def closeEvent(self, event: QCloseEvent) -> None:
        self._release()
        super().closeEvent(event)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:  # napari's close button: the widget was taken out of its dock
                self._docked = False
                self.close()
        return super().event(event)


def hbox(*widgets: QWidget) -> QHBoxLayout:
    """A row of widgets."""
    box = QHBoxLayout()
    for w in widgets:
        box.addWidget(w)
    return box

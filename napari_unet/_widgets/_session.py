"""What the widgets of one viewer share: the last trained model and the training pairs."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

DEFAULT_MODEL_ROOT = Path.home() / "napari-unet-models"


class _Signals(QObject):
    model_changed = Signal(object)  # the new Model


@dataclass
class Session:
    """Per-viewer state shared by the Train, Predict and Batch widgets."""

    model: Any = None  # napari_unet.store.Model
    model_path: Path | None = None
    signals: _Signals = field(default_factory=_Signals)

    def set_model(self, model: Any, path: Path | None) -> None:
        self.model = model
        self.model_path = path
        self.signals.model_changed.emit(model)


def session_for(viewer: Any) -> Session:
    """The session of ``viewer`` (created on first use, dropped with the viewer)."""
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = Session()
    return _SESSIONS[viewer]


def new_model_folder(name: str = "model") -> Path:
    """A folder under ~/napari-unet-models that does not exist yet."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "model"
    for i in range(1, 10_000):
        candidate = DEFAULT_MODEL_ROOT / (safe if i == 1 else f"{safe}-{i}")
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"no free model folder name under {DEFAULT_MODEL_ROOT}")

"""The instance post-processing controls of the Predict widget: seed threshold,
foreground threshold and minimum object size, initialised from the model, with a
"Save to model" button.  The Predict widget decides what a change does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
)

SEED_TIP = (
    "seed threshold: an object starts where the interior probability is above this; "
    "higher splits fewer touching objects apart"
)
FG_TIP = (
    "foreground threshold: objects grow over pixels whose background probability is "
    "below 1 - this; higher makes objects larger"
)
MIN_SIZE_TIP = "objects smaller than this many pixels (voxels in 3D) are dropped"
UNSAVED = (
    "changed, not saved: Predict here uses these values; Save to model keeps them for "
    "Batch, the CLI and later sessions"
)


def fraction_box(tip: str) -> QDoubleSpinBox:
    """A spin box for a threshold in [0, 1]."""
    box = QDoubleSpinBox()
    box.setRange(0.0, 1.0)
    box.setDecimals(3)
    box.setSingleStep(0.05)
    box.setToolTip(tip)
    return box


def shown(box: QDoubleSpinBox, exact: float | None) -> float:
    """The box's value; ``exact`` when the box shows it rounded."""
    value = round(box.value(), box.decimals())
    if exact is not None and round(exact, box.decimals()) == value:
        return exact
    return value


class InstanceSettings(QGroupBox):
    """Controls for a model's :class:`napari_unet.config.PostprocessConfig`.

    ``changed`` is emitted when the user edits a value (not when :meth:`show_model`
    fills them in); ``save_btn`` is for the owner to connect.
    """

    changed = Signal()

    def __init__(self) -> None:
        super().__init__("instances from the probabilities")
        self.seed = fraction_box(SEED_TIP)
        self.fg = fraction_box(FG_TIP)
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 10**9)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip(MIN_SIZE_TIP)
        self.save_btn = QPushButton("Save to model")
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self._model_settings: Any = None
        self._folder: Path | None = None
        form = QFormLayout(self)
        form.addRow("seed threshold", self.seed)
        form.addRow("foreground threshold", self.fg)
        form.addRow("minimum size", self.min_size)
        form.addRow(self.save_btn)
        form.addRow(self.note)
        for box in (self.seed, self.fg, self.min_size):
            box.valueChanged.connect(self._edited)

    def show_model(self, spec: Any, folder: Path | None) -> None:
        """Fill in the values of the model described by ``spec`` (saved in ``folder``)."""
        dims = spec.model.spatial_dims
        pp = spec.postprocess
        self._model_settings = replace(pp, min_size=pp.min_size_for(dims))
        self._folder = folder
        self.min_size.setSuffix(" px" if dims == 2 else " voxels")
        for box, value in (
            (self.seed, pp.seed_threshold),
            (self.fg, pp.fg_threshold),
            (self.min_size, pp.min_size_for(dims)),
        ):
            box.blockSignals(True)
            box.setValue(value)
            box.blockSignals(False)
        self.save_btn.setEnabled(folder is not None)
        self.save_btn.setToolTip(
            f"write these values into {folder / 'config.json'}"
            if folder is not None
            else "this model has no folder (it was never saved): nothing to save to"
        )
        self._update_note()

    def settings(self) -> Any:
        """The values shown, as a :class:`~napari_unet.config.PostprocessConfig`.

        A threshold that shows the model's value (to the box's decimals) is the
        model's exact value.
        """
        from ..config import PostprocessConfig

        own = self._model_settings
        return replace(
            own or PostprocessConfig(),
            seed_threshold=shown(self.seed, own.seed_threshold if own else None),
            fg_threshold=shown(self.fg, own.fg_threshold if own else None),
            min_size=self.min_size.value(),
        )

    @property
    def modified(self) -> bool:
        """The values shown differ from the model's own."""
        return self._model_settings is not None and self.settings() != self._model_settings

    def _edited(self, *_: Any) -> None:
        self._update_note()
        self.changed.emit()

    def _update_note(self) -> None:
        if not self.modified:
            text = "the model's own settings"
        elif self._folder is None:
            text = (
                "changed: Predict here uses these values; this model has no folder to save them to"
            )
        else:
            text = UNSAVED
        self.note.setText(text)
        tip = text if self.modified else ""
        for box, base in ((self.seed, SEED_TIP), (self.fg, FG_TIP), (self.min_size, MIN_SIZE_TIP)):
            box.setToolTip(f"{base}\n({tip})" if tip else base)

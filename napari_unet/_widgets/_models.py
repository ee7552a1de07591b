"""The model list of the Predict and Batch widgets: the current model, the built-in
models, folders loaded; and a "Load folder…" button next to it."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from ..builtin import BUILTIN_MODELS, PREFIX

CURRENT = ""
"""The reference of the list's first entry: the viewer's current model (trained or loaded)."""


class ModelChoice(QWidget):
    """A list of models to choose from and a "Load folder…" button.

    Each entry holds a reference: :data:`CURRENT` (the viewer's current model, when
    ``current`` is given), ``builtin:NAME`` or a model folder.  ``chosen`` is
    emitted with the reference when the user picks an entry or loads a folder.
    """

    chosen = Signal(str)

    def __init__(self, current: str | None = None) -> None:
        super().__init__()
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(12)
        if current is not None:
            self.combo.addItem(current, CURRENT)
        for name, description in BUILTIN_MODELS.items():
            self.combo.addItem(f"{PREFIX}{name}", PREFIX + name)
            self.combo.setItemData(self.combo.count() - 1, description, Qt.ToolTipRole)
        self.load_btn = QPushButton("Load folder…")
        self.load_btn.setToolTip("choose a model folder (config.json, weights.safetensors)")
        box = QHBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.combo, 1)
        box.addWidget(self.load_btn)
        self.combo.currentIndexChanged.connect(lambda _: self.chosen.emit(self.ref()))
        self.load_btn.clicked.connect(self.browse)

    def ref(self) -> str:
        """The reference of the chosen entry."""
        data = self.combo.currentData()
        return data if isinstance(data, str) else CURRENT

    def select(self, ref: str) -> None:
        """Show the entry of ``ref`` (a folder is added first); emits nothing."""
        index = self.combo.findData(ref)
        if index < 0:
            folder = Path(ref)
            self.combo.addItem(f"folder: {folder.name}", ref)
            index = self.combo.count() - 1
            self.combo.setItemData(index, ref, Qt.ToolTipRole)
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)

    def choose(self, ref: str) -> None:
        """Pick ``ref`` as the user would: show it and emit ``chosen``."""
        self.select(ref)
        self.chosen.emit(ref)

    def browse(self) -> None:
        """The "Load folder…" button: a folder dialog, then the folder is chosen."""
        folder = QFileDialog.getExistingDirectory(self, "model folder")
        if folder:
            self.choose(folder)

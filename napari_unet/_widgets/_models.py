"""The model list of the Predict and Batch widgets: the current model, the built-in
models, folders and bioimage.io packages loaded; "Load folder…" and "Load package…"
buttons next to it."""

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
        self.package_btn = QPushButton("Load package…")
        self.package_btn.setToolTip("choose a bioimage.io package (.zip) exported by napari-unet")
        box = QHBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.combo, 1)
        box.addWidget(self.load_btn)
        box.addWidget(self.package_btn)
        self.combo.currentIndexChanged.connect(lambda _: self.chosen.emit(self.ref()))
        self.load_btn.clicked.connect(self.browse)
        self.package_btn.clicked.connect(self.browse_package)

    def ref(self) -> str:
        """The reference of the chosen entry."""
        data = self.combo.currentData()
        return data if isinstance(data, str) else CURRENT

    def select(self, ref: str) -> None:
        """Show the entry of ``ref`` (a folder is added first); emits nothing."""
        index = self.combo.findData(ref)
        if index < 0:
            folder = Path(ref)
            kind = "package" if folder.suffix.lower() == ".zip" else "folder"
            self.combo.addItem(f"{kind}: {folder.name}", ref)
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

    def browse_package(self) -> None:
        """The "Load package…" button: a file dialog for a .zip, then it is chosen."""
        path, _ = QFileDialog.getOpenFileName(self, "bioimage.io package", "", "zip (*.zip)")
        if path:
            self.choose(path)

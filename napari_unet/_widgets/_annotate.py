"""Annotate dock widget: create a Labels layer for an image, with named classes.

Three ways to label from scratch: sparse strokes of named classes, a few outlined
objects with some painted background (``sparse-instances``: 0 = unlabeled, 1 =
background, 2, 3, ... = one id per object; "next object" or the N key picks a new
id), or dense instance masks.  Below, "label with the model's help": a model's objects
as proposals accepted with a click (:mod:`._proposals`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from ._dock import DockWidget, hbox
from ._proposals import Proposals
from ._slices import (
    AXES_KEY,
    INSTANCES,
    SPARSE,
    SPARSE_INSTANCES,
    labels_kind,
    refill_layer_choices,
    set_labels_kind,
    spatial_data,
)

KIND_TEXT = {
    SPARSE: "sparse strokes (0 = unlabeled; paint a few strokes of each class)",
    SPARSE_INSTANCES: "a few objects (outline a few objects, paint some background)",
    INSTANCES: "dense instances (each object its own id, 0 = background)",
}
"""The labels kinds one paints from scratch here, as the choices show them."""

BACKGROUND = 1  # sparse-instances: painted background (napari_unet.targets.PAINTED_BACKGROUND)
FIRST_OBJECT = BACKGROUND + 1
NEXT_OBJECT_KEY = "n"
SPARSE_INSTANCES_LEGEND = (
    f"0 = unlabeled (ignored), {BACKGROUND} = background, {FIRST_OBJECT}, "
    f"{FIRST_OBJECT + 1}, ... = one id per object"
)


def next_object_id(data: Any) -> int:
    """The next free object id of ``sparse-instances`` labels: largest id + 1, at least 2."""
    top = int(np.max(data)) if np.size(data) else 0
    return max(top + 1, FIRST_OBJECT)


def next_object(layer: Any) -> None:
    """Paint the next object of a ``sparse-instances`` Labels layer (its N key binding)."""
    layer.selected_label = next_object_id(layer.data)


def sparse_instances_status(label: int) -> str:
    """The status line while painting ``sparse-instances`` labels with ``label``."""
    if label == 0:
        now = "erasing (0 = unlabeled)"
    elif label == BACKGROUND:
        now = f"painting background ({BACKGROUND})"
    else:
        now = f"painting object {label}"
    return (
        f"{now}. {SPARSE_INSTANCES_LEGEND}. Outline a few objects, each with its own id "
        f"(N or 'next object' for a new one), and paint some background around them."
    )


class AnnotateWidget(Proposals, DockWidget):
    """Creates a Labels layer aligned with an image layer, with class names and labels kind."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self._init_ui()
        self._connect()
        self._refresh()
        self._guess_axes(self.image.currentText())
        self._kind_changed()

    def _init_ui(self) -> None:
        self.image = QComboBox()
        self.axes = QLineEdit()
        self.axes.setToolTip("one letter per axis of the image: T (time), Z, C (channel), Y, X")
        self.kind = QComboBox()
        for kind, text in KIND_TEXT.items():
            self.kind.addItem(text, kind)
        self.classes = QListWidget()
        for name in ("background", "cell"):
            self._add_item(name)
        self.add_btn = QPushButton("add class")
        self.remove_btn = QPushButton("remove class")
        self.create_btn = QPushButton("Create labels layer")
        self.next_btn = QPushButton("next object")
        self.next_btn.setToolTip(
            f"paint a new object: the next free id (key {NEXT_OBJECT_KEY.upper()} on the layer)"
        )
        self.hint = QLabel("")
        self.hint.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("axes", self.axes)
        form.addRow("labels", self.kind)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(QLabel("classes (label value = row number; double-click to rename)"))
        layout.addWidget(self.classes)
        layout.addLayout(hbox(self.add_btn, self.remove_btn))
        layout.addWidget(self.create_btn)
        layout.addWidget(self.next_btn)
        layout.addWidget(self.hint)
        layout.addWidget(self._proposals_box())
        layout.addStretch(1)

    def _connect(self) -> None:
        self.image.currentTextChanged.connect(self._guess_axes)
        self.add_btn.clicked.connect(lambda: self._add_item(f"class {self.classes.count() + 1}"))
        self.remove_btn.clicked.connect(self._remove_class)
        self.create_btn.clicked.connect(self.create)
        self.next_btn.clicked.connect(self.next_object)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self._listen(self.viewer.layers.events.inserted, self._refresh)
        self._listen(self.viewer.layers.events.removed, self._refresh)

    def _add_item(self, name: str) -> None:
        item = QListWidgetItem(name)
        item.setFlags(item.flags() | Qt.ItemIsEditable)
        self.classes.addItem(item)

    def _remove_class(self) -> None:
        if self.classes.count() <= 2:
            show_warning("napari-unet: a segmentation needs at least 2 classes")
            return
        row = self.classes.currentRow()
        self.classes.takeItem(row if row >= 0 else self.classes.count() - 1)

    def _kind_changed(self) -> None:
        kind = self.kind.currentData()
        for w in (self.classes, self.add_btn, self.remove_btn):
            w.setEnabled(kind == SPARSE)
        self.next_btn.setVisible(kind == SPARSE_INSTANCES)
        if kind == SPARSE_INSTANCES:
            self.hint.setText(f"a few objects: {SPARSE_INSTANCES_LEGEND}")
        else:
            self.hint.setText("")

    def next_object(self) -> int | None:
        """Select the next free object id on the selected sparse-instances layer; returns it."""
        layer = self.viewer.layers.selection.active
        if layer is None or labels_kind(layer) != SPARSE_INSTANCES:
            show_warning(
                "napari-unet: select a 'few objects' labels layer (create one here) "
                "to paint a new object"
            )
            return None
        next_object(layer)
        return int(layer.selected_label)

    def _label_selected(self, event: Any) -> None:
        layer = event.source
        if layer is self.viewer.layers.selection.active:
            self.hint.setText(sparse_instances_status(int(layer.selected_label)))

    def _refresh(self, *_: Any) -> None:
        refill_layer_choices(self.image, self.viewer, Image)
        self._refresh_targets()

    def _guess_axes(self, name: str) -> None:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            ndim = spatial_data(layer).ndim
            self.axes.setText({2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}.get(ndim, "YX"))

    def checked_axes(self, layer: Any) -> str:
        """The axes typed for ``layer``, validated (ValueError naming the problem)."""
        axes = self.axes.text().strip().upper()
        ndim = spatial_data(layer).ndim
        if len(axes) != ndim or len(set(axes)) != ndim or set(axes) - set("TZCYX"):
            raise ValueError(
                f"axes {axes!r} must name each of the {ndim} axes of {layer.name!r} once, "
                f"with the letters T, Z, C, Y, X"
            )
        if not axes.endswith("YX"):
            raise ValueError(f"axes {axes!r} must end with YX (the image plane)")
        return axes

    def class_names(self) -> list[str]:
        return [self.classes.item(i).text().strip() for i in range(self.classes.count())]

    def create(self) -> Any:
        """Create (and select) the Labels layer; returns it."""
        name = self.image.currentText()
        if name not in self.viewer.layers:
            show_warning("napari-unet: open an image first, then create its labels layer")
            return None
        names = self.class_names()
        if len(set(names)) != len(names) or not all(names):
            show_warning(f"napari-unet: class names must be distinct and non-empty, got {names}")
            return None
        image = self.viewer.layers[name]
        try:
            axes = self.checked_axes(image)
        except ValueError as exc:
            show_warning(f"napari-unet: {exc}")
            return None
        keep = [i for i, a in enumerate(axes) if a != "C"]
        shape = tuple(spatial_data(image).shape[i] for i in keep)
        scale = [image.scale[i] for i in keep]
        translate = [image.translate[i] for i in keep]
        kind = self.kind.currentData()
        labels_name = f"{name} labels"
        i = 2
        while labels_name in self.viewer.layers:
            labels_name = f"{name} labels {i}"
            i += 1
        layer = self.viewer.add_labels(
            np.zeros(shape, np.uint8 if kind == SPARSE else np.uint16),
            name=labels_name,
            scale=scale,
            translate=translate,
        )
        set_labels_kind(layer, kind, class_names_of(kind, names))
        layer.metadata[AXES_KEY] = axes
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.proposal_target.setCurrentText(labels_name)
        self._start_painting(layer, kind, names)
        show_info(f"napari-unet: created {labels_name!r}")
        return layer

    def _start_painting(self, layer: Any, kind: str, names: list[str]) -> None:
        """The first label to paint with, the key binding and the hint, per labels kind."""
        if kind == SPARSE_INSTANCES:
            layer.bind_key(NEXT_OBJECT_KEY, next_object, overwrite=True)
            self._listen(layer.events.selected_label, self._label_selected)
            layer.selected_label = FIRST_OBJECT
            self.hint.setText(sparse_instances_status(FIRST_OBJECT))
            return
        layer.selected_label = 1
        if kind == SPARSE:
            legend = ", ".join(f"{i} = {n}" for i, n in enumerate(names, 1))
            self.hint.setText(
                f"paint with label values {legend}; 0 stays unlabeled. A few strokes "
                f"per class on one or a few slices are enough to start."
            )
        else:
            self.hint.setText("paint each object with its own id (press M for a new one).")


def class_names_of(kind: str, names: list[str]) -> list[str] | None:
    """The class names recorded with new labels of ``kind`` (label value k = name k)."""
    if kind == SPARSE:
        return names
    if kind == SPARSE_INSTANCES:
        return ["background"]  # value 1; objects have ids, not classes
    return None

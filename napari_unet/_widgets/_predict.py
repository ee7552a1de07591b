"""Predict dock widget: a model + an image layer -> labels / instances / probabilities layers.

Also the first step of correcting: "editable copy" turns a prediction into a new
Labels layer that the Train widget can use as training labels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import events as ev
from ._runner import Runner
from ._session import session_for
from ._slices import in_view_index, refill_layer_choices

log = logging.getLogger(__name__)


def predict_layers_iter(
    model: Any, data: Any, instances: bool, labels: bool, probs: bool, device: str
):
    """Compute generator for the widget: yields tiles, returns {"labels", "instances", "probs"}."""
    from ..inference import predict_proba_iter
    from ..postprocess import class_labels, instances_from_probs

    p = yield from predict_proba_iter(model, data, device=device)
    out: dict[str, np.ndarray] = {}
    if labels:
        out["labels"] = class_labels(p, model.config.labels)
    if instances:
        out["instances"] = instances_from_probs(p, spatial_dims=model.config.model.spatial_dims)
    if probs:
        out["probs"] = p
    return out


class PredictWidget(QWidget):
    """Dock widget that applies a model to an image layer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.runner: Runner | None = None
        self.pbar: progress | None = None
        self.model: Any = None

        self.model_label = QLabel("no model yet: train one, or load a model folder")
        self.model_label.setWordWrap(True)
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("model folder")
        self.load_btn = QPushButton("Load")
        self.browse = QPushButton("…")
        self.load_btn.clicked.connect(lambda: self.load(self.model_path.text()))
        self.browse.clicked.connect(self._browse)
        self.image = QComboBox()
        self.want_labels = QCheckBox("class labels")
        self.want_labels.setChecked(True)
        self.want_instances = QCheckBox("instances")
        self.want_probs = QCheckBox("probabilities")
        self.in_view = QCheckBox("only the slice in view")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.run_btn = QPushButton("Predict")
        self.cancel_btn = QPushButton("Cancel")
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.correct_btn = QPushButton("Editable copy of the selected labels")
        self.correct_btn.clicked.connect(self.editable_copy)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        load = QHBoxLayout()
        load.addWidget(self.model_path)
        load.addWidget(self.browse)
        load.addWidget(self.load_btn)
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("device", self.device)
        outputs = QHBoxLayout()
        for box in (self.want_labels, self.want_instances, self.want_probs):
            outputs.addWidget(box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_btn)
        buttons.addWidget(self.cancel_btn)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addLayout(load)
        layout.addLayout(form)
        layout.addLayout(outputs)
        layout.addWidget(self.in_view)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addWidget(self.correct_btn)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh)
        self.viewer.layers.events.removed.connect(self._refresh)
        self.session.signals.model_changed.connect(self._session_model)
        self._refresh()
        if self.session.model is not None:
            self._session_model(self.session.model)
        self._set_running(False)

    # ------------------------------------------------------------------ model
    def _session_model(self, model: Any) -> None:
        self.set_model(model, self.session.model_path)

    def set_model(self, model: Any, path: Path | None) -> None:
        self.model = model
        c = model.config
        where = f" from {path}" if path else ""
        self.model_label.setText(
            f"model{where}: {c.model.spatial_dims}D, {c.labels.kind} labels, classes "
            f"{', '.join(c.labels.class_names)}"
        )
        self.want_instances.setEnabled(c.labels.kind == "instances")
        if c.labels.kind != "instances":
            self.want_instances.setChecked(False)

    def load(self, folder: str) -> bool:
        from ..store import load_model

        try:
            model = load_model(Path(folder).expanduser())
        except (ValueError, OSError) as exc:
            show_warning(f"napari-unet: {exc}")
            self.status.setText(f"could not load the model: {exc}")
            return False
        self.set_model(model, Path(folder))
        return True

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "model folder")
        if folder:
            self.model_path.setText(folder)
            self.load(folder)

    def _refresh(self, *_: Any) -> None:
        refill_layer_choices(self.image, self.viewer, Image)

    # ------------------------------------------------------------------ run
    def start(self) -> None:
        """Predict with the chosen options (the Predict button)."""
        if self.runner is not None and self.runner.is_running:
            return
        if self.model is None:
            show_warning("napari-unet: train a model or load a model folder first")
            return
        name = self.image.currentText()
        if name not in self.viewer.layers:
            show_warning("napari-unet: choose an image layer to predict")
            return
        layer = self.viewer.layers[name]
        index: tuple[int, ...] = ()
        data = layer.data
        if self.in_view.isChecked() and self.model.config.model.spatial_dims == 2:
            index = in_view_index(self.viewer, layer)
            data = np.asarray(data[index]) if index else data
        want = (
            self.want_instances.isChecked(),
            self.want_labels.isChecked(),
            self.want_probs.isChecked(),
        )
        if not any(want):
            show_warning("napari-unet: tick at least one output")
            return
        model, device = self.model, self.device.currentText()
        self.pbar = progress(total=0, desc=f"napari-unet: predicting {name}")
        self.runner = Runner(
            lambda: predict_layers_iter(model, data, *want, device=device),
            on_event=self._on_event,
            on_done=lambda out: self._add_layers(layer, index, out),
            on_finished=self._finished,
            what="napari-unet prediction",
        )
        self.runner.start()
        self._set_running(True)
        self.status.setText(f"predicting {name}…")

    def cancel(self) -> None:
        if self.runner is not None and self.runner.is_running:
            self.runner.quit()
            self.status.setText("cancelled")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.TileDone) and self.pbar is not None:
            self.status.setText(f"tile {event.i} of {event.n}")
            # last: napari's progress bar may process pending events (even our own "done")
            if self.pbar.total != event.n:
                self.pbar.total = event.n
                self.pbar.n = 0
            self.pbar.update(max(0, event.i - self.pbar.n))

    def _finished(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        self._set_running(False)

    def _add_layers(self, source: Any, index: tuple[int, ...], out: dict[str, np.ndarray]) -> None:
        ndim_src = source.ndim
        scale, translate = np.asarray(source.scale), np.asarray(source.translate)
        if index:  # a single plane: place it at its slice
            translate = translate.copy()
            for axis, i in enumerate(index):
                translate[axis] += i * scale[axis]
        kw = dict(scale=scale[:ndim_src], translate=translate[:ndim_src])
        suffix = f" (slice {', '.join(map(str, index))})" if index else ""

        def expand(a: np.ndarray) -> np.ndarray:
            return a.reshape((1,) * len(index) + a.shape) if index else a

        added = []
        if "labels" in out:
            added.append(
                self._put_labels(f"{source.name} labels{suffix}", expand(out["labels"]), kw)
            )
        if "instances" in out:
            added.append(
                self._put_labels(f"{source.name} instances{suffix}", expand(out["instances"]), kw)
            )
        if "probs" in out:
            names = [f"{source.name} p({c}){suffix}" for c in self.model.config.labels.class_names]
            for name in names:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            p = out["probs"]
            p = p.reshape((p.shape[0],) + (1,) * len(index) + p.shape[1:]) if index else p
            self.viewer.add_image(
                p,
                channel_axis=0,
                name=names,
                colormap="magma",
                blending="additive",
                visible=False,
                **kw,
            )
            added += names
        self.status.setText("added " + ", ".join(added))

    def _put_labels(self, name: str, data: np.ndarray, kw: dict) -> str:
        if (
            name in self.viewer.layers
            and isinstance(self.viewer.layers[name], Labels)
            and (self.viewer.layers[name].data.shape == data.shape)
        ):
            self.viewer.layers[name].data = data
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_labels(data, name=name, **kw)
        return name

    def editable_copy(self) -> Labels | None:
        """Copy the selected Labels layer into a new layer to correct and train on."""
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Labels):
            show_warning("napari-unet: select the prediction (a Labels layer) to copy")
            return None
        name = f"{layer.name} corrected"
        i = 2
        while name in self.viewer.layers:
            name = f"{layer.name} corrected {i}"
            i += 1
        new = self.viewer.add_labels(
            np.array(layer.data, copy=True), name=name, scale=layer.scale, translate=layer.translate
        )
        if self.model is not None:
            new.metadata["napari_unet_kind"] = (
                "semantic"
                if self.model.config.labels.kind == "semantic"
                else "instances"
                if "instances" in layer.name
                else "sparse"
            )
        layer.visible = False
        show_info(f"napari-unet: fix {name!r} with the brush, then train on it")
        return new

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)

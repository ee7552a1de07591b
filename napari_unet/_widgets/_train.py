"""Train dock widget: (image, labels) layer pairs -> a U-Net, in the background.

Start / Pause / Resume / Stop; a live plot of loss and validation IoU; a live
preview layer with the current model's prediction on the slice in view.
"Start from" trains a new model from scratch, from a built-in model or from a model
folder (``train_iter(init=...)``: the architecture is that model's).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
)

from .. import events as ev
from ..builtin import BUILTIN_MODELS, PREFIX
from ..config import CONFIG_FILE, LABELS_KINDS, RECIPES
from ..init import AUTO
from ..request import TrainRequest
from ..writer import refuse_busy
from ._devices import DeviceChoice
from ._dock import DockWidget, hbox
from ._plot import CurvePlot
from ._runner import ChildRunner
from ._session import new_model_folder
from ._slices import (
    AXES_KEY,
    CLASSES_KEY,
    SPARSE,
    labels_kind,
    layer_in_view_slice,
    refill_layer_choices,
    spatial_data,
    unet_metadata,
)

log = logging.getLogger(__name__)

PREVIEW_LAYER = "U-Net preview"
FOLDER = "folder…"  # the "a model folder…" entry of "start from"
AUTOSAVE_SECONDS = 60
"""How often the labels of the training pairs are saved when they changed."""


class TrainWidget(DockWidget):
    """Dock widget that trains a U-Net on layer pairs of the viewer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.control: Any = None
        self._saving: Any = None  # the background autosave's worker while it runs
        self._used_layers: set[str] = set()
        self._start_step = 0
        self._finished: Any = None
        self._calibrated = ""  # what the last Calibrated event said
        self._init_ui()
        self._connect()
        if self._layers(Image) and self._layers(Labels):
            self.add_pair()
        self._set_state("idle")

    # ------------------------------------------------------------------ building
    def _init_ui(self) -> None:
        self.pairs = QTableWidget(0, 2)
        self.pairs.setHorizontalHeaderLabels(["image", "labels"])
        self.pairs.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.pairs.setMaximumHeight(110)
        self.add_pair_btn = QPushButton("add pair")
        self.remove_pair_btn = QPushButton("remove pair")
        self.kind = QComboBox()
        self.kind.addItems(list(LABELS_KINDS))
        self.recipe = QComboBox()
        self.recipe.addItems(list(RECIPES))
        self.dims = QComboBox()
        self.dims.addItem("2D (stacks slice by slice)", 2)
        self.dims.addItem("3D (volumes)", 3)
        self.start_from = QComboBox()
        self.start_from.addItem("automatic", AUTO)
        self.start_from.setItemData(
            0,
            "built-in nuclei for 2D instance labels on one channel with the default CPU "
            "network (it measured better there), else scratch",
            Qt.ToolTipRole,
        )
        self.start_from.addItem("scratch", None)
        for name, description in BUILTIN_MODELS.items():
            self.start_from.addItem(f"built-in {name}", PREFIX + name)
            self.start_from.setItemData(self.start_from.count() - 1, description, Qt.ToolTipRole)
        self.start_from.addItem("a model folder…", FOLDER)
        self.start_from.setToolTip(
            "a new model from these weights (the last layer is new when the classes differ); "
            "its width and depth are used"
        )
        self.width_box = _spin(0, 512, 0, "auto")
        self.patch_box = _spin(0, 4096, 0, "auto")
        self.batch_box = _spin(0, 1024, 0, "auto")
        self.budget_kind = QComboBox()
        self.budget_kind.addItems(["seconds", "steps"])
        self.budget = _spin(1, 10_000_000, 120)
        self.budget_kind.setToolTip(
            "seconds: wall time from Train to the saved, calibrated model (preparing the "
            "data, validating and calibrating included; the status's tooltip says where "
            "it went); steps: optimisation steps"
        )
        self.device = DeviceChoice()
        self.device_label = QLabel("")
        self.folder = QLineEdit(str(new_model_folder()))
        self.browse = QPushButton("…")
        self.resume = QCheckBox("continue training the model in this folder")
        self.preview = QCheckBox("live preview on the slice in view")
        self.preview.setChecked(True)
        self.replace_worse = QCheckBox("keep the new model even if it validates worse")
        self.restore_btn = QPushButton("Restore labels…")
        self.restore_btn.setToolTip(
            "labels of this model folder's project, autosaved while painting and at every Train"
        )
        self.autosave = QTimer(self)
        self.autosave.setInterval(AUTOSAVE_SECONDS * 1000)
        self.start_btn = QPushButton("Train")
        self.pause_btn = QPushButton("Pause")
        self.stop_btn = QPushButton("Stop")
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.use_start_btn = QPushButton("Use the start model")
        self.use_start_btn.setToolTip(
            "the model this training started from validated better: predict with it"
        )
        self.use_start_btn.hide()
        self._start_model: str | None = None
        self.plot = CurvePlot()
        self._lay_out()

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("labels kind", self.kind)
        form.addRow("network", self.dims)
        form.addRow("recipe", self.recipe)
        form.addRow("start from", self.start_from)
        form.addRow("width", self.width_box)
        form.addRow("patch", self.patch_box)
        form.addRow("batch size", self.batch_box)
        form.addRow("train for", hbox(self.budget, self.budget_kind))
        form.addRow("device", self.device)
        form.addRow("", self.device_label)
        form.addRow("model folder", hbox(self.folder, self.browse))
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("training pairs (image, labels)"))
        layout.addWidget(self.pairs)
        layout.addLayout(hbox(self.add_pair_btn, self.remove_pair_btn))
        layout.addLayout(form)
        layout.addWidget(self.resume)
        layout.addWidget(self.replace_worse)
        layout.addWidget(self.preview)
        layout.addWidget(self.restore_btn)
        layout.addLayout(hbox(self.start_btn, self.pause_btn, self.stop_btn))
        layout.addWidget(self.status)
        layout.addWidget(self.use_start_btn)
        layout.addWidget(self.plot)

    def _connect(self) -> None:
        self.add_pair_btn.clicked.connect(lambda: self.add_pair())
        self.remove_pair_btn.clicked.connect(self._remove_pair)
        self.browse.clicked.connect(self._browse)
        self.start_from.currentIndexChanged.connect(self._start_from_changed)
        self.restore_btn.clicked.connect(self.restore_labels)
        self.start_btn.clicked.connect(self.start)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self.stop_btn.clicked.connect(self.stop)
        self.use_start_btn.clicked.connect(self.use_start_model)
        self.autosave.timeout.connect(self._autosave_tick)
        self.autosave.start()
        self._listen(self.viewer.layers.events.inserted, self._refresh_choices)
        self._listen(self.viewer.layers.events.removed, self._layer_removed)
        self._listen(self.viewer.dims.events.current_step, self._request_preview)

    def _release(self) -> None:
        """Closing: the labels are saved a last time, then the widget lets go of the viewer."""
        self.autosave.stop()
        self.autosave_labels("close")
        super()._release()

    # ------------------------------------------------------------------ layers
    def _layers(self, kind: type) -> list[str]:
        return [layer.name for layer in self.viewer.layers if type(layer) is kind]

    def add_pair(self, image: str | None = None, labels: str | None = None) -> None:
        """Add a row; ``image`` / ``labels`` preselect layers by name."""
        row = self.pairs.rowCount()
        self.pairs.insertRow(row)
        for col, (kind, name) in enumerate(((Image, image), (Labels, labels))):
            box = QComboBox()
            box.addItems(self._layers(kind))
            if name is not None:
                box.setCurrentText(name)
            elif col == 1 and row < box.count():
                box.setCurrentIndex(row)
            if col == 1:
                box.currentTextChanged.connect(self._sync_kind)
            self.pairs.setCellWidget(row, col, box)
        self._sync_kind()

    def _remove_pair(self) -> None:
        row = self.pairs.currentRow() if self.pairs.currentRow() >= 0 else self.pairs.rowCount() - 1
        if row >= 0:
            self.pairs.removeRow(row)

    def selected_pairs(self) -> list[tuple[str, str]]:
        out = []
        for row in range(self.pairs.rowCount()):
            img = self.pairs.cellWidget(row, 0).currentText()
            lab = self.pairs.cellWidget(row, 1).currentText()
            if img and lab:
                out.append((img, lab))
        return out

    def _refresh_choices(self, *_: Any) -> None:
        for row in range(self.pairs.rowCount()):
            for col, kind in ((0, Image), (1, Labels)):
                refill_layer_choices(self.pairs.cellWidget(row, col), self.viewer, kind)
        if self.pairs.rowCount() == 0 and self._layers(Image) and self._layers(Labels):
            self.add_pair()

    def _sync_kind(self, labels_name: str | None = None) -> None:
        """The labels kind of the chosen labels layer (first pair by default), from its metadata."""
        if labels_name is None:
            pairs = self.selected_pairs()
            labels_name = pairs[0][1] if pairs else None
        if labels_name and labels_name in self.viewer.layers:
            kind = labels_kind(self.viewer.layers[labels_name])
            if kind is not None:
                self.kind.setCurrentText(kind)

    def _layer_removed(self, event: Any) -> None:
        name = event.value.name
        self._refresh_choices()
        if self.runner is not None and self.runner.is_running and name in self._used_layers:
            show_warning(
                f"layer {name!r} was deleted while training used it: training stops "
                f"and the model so far is saved"
            )
            self.stop()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "model folder", self.folder.text())
        if folder:
            self.folder.setText(folder)

    def init(self) -> str | None:
        """What training starts from: ``"auto"``, ``builtin:NAME``, a folder, or None
        (scratch)."""
        data = self.start_from.currentData()
        return data if isinstance(data, str) and data != FOLDER else None

    def _start_from_changed(self, _: int = 0) -> None:
        """ "a model folder…" asks for the folder; a start model sets the width (auto)."""
        if self.start_from.currentData() == FOLDER:
            folder = QFileDialog.getExistingDirectory(self, "model to start from")
            if not folder:
                self.start_from.setCurrentIndex(0)
                return
            self.set_start_from(folder)
            return
        from_model = self.init() not in (None, AUTO)
        if from_model:
            self.width_box.setValue(0)  # the architecture is the start model's
        self.width_box.setEnabled(not from_model)

    def set_start_from(self, ref: str | None) -> None:
        """Choose what training starts from: None (scratch), ``builtin:NAME`` or a folder."""
        index = self.start_from.findData(ref)
        if index < 0:
            self.start_from.insertItem(
                self.start_from.count() - 1, f"folder: {Path(ref).name}", ref
            )
            index = self.start_from.count() - 2
            self.start_from.setItemData(index, ref, Qt.ToolTipRole)
        self.start_from.setCurrentIndex(index)
        self._start_from_changed()

    # ------------------------------------------------------------------ run
    def _gather(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        pairs = self.selected_pairs()
        if not pairs:
            raise ValueError("choose at least one (image, labels) pair of layers to train on")
        images, labels = [], []
        for img_name, lab_name in pairs:
            img = self.viewer.layers[img_name]
            lab = self.viewer.layers[lab_name]
            image = np.asarray(img.data)
            axes = lab.metadata.get(AXES_KEY, "")
            if "C" in axes and image.ndim == len(axes):
                image = np.moveaxis(image, axes.index("C"), 0)  # channel first, as in training
            images.append(image)
            labels.append(np.asarray(lab.data))
        self._used_layers = {n for pair in pairs for n in pair}
        return images, labels

    def request(self) -> TrainRequest:
        """The training the widget's settings ask for (not checked yet)."""
        from ..inputs import Names

        folder = Path(self.folder.text()).expanduser()
        resume = self.resume.isChecked()
        steps = self.budget.value() if self.budget_kind.currentText() == "steps" else None
        first_image, first_labels = (self.viewer.layers[n] for n in self.selected_pairs()[0])
        class_names = first_labels.metadata.get(CLASSES_KEY)
        kind = self.kind.currentText()
        dims = self.dims.currentData()
        # a 3D network takes the voxel size from the layer's scale (z, y, x)
        spacing = tuple(float(v) for v in first_image.scale[-3:]) if dims == 3 else None
        return TrainRequest.from_keywords(
            labels_kind=None if resume else kind,  # continuing: the model's own kind
            class_names=class_names if kind == SPARSE and not resume else None,
            recipe=self.recipe.currentText(),
            spatial_dims=dims,
            spacing=spacing,
            steps=steps,
            time_budget=self.budget.value() if steps is None else None,
            width=self.width_box.value() or None,
            patch=self.patch_box.value() or None,
            batch_size=self.batch_box.value() or None,
            device=self.device.value(),
            out=folder,
            resume=resume,
            init=self.init(),
            replace_worse=self.replace_worse.isChecked(),
            refuse_existing=True,
            where="widget",
            names=Names(
                [
                    (f"image layer {i!r}", f"labels layer {lab!r}")
                    for i, lab in self.selected_pairs()
                ],
                labels="the labels layers",
                model=f"the model in {folder}",
            ),
        )

    def _continued(self, request: TrainRequest) -> Any:
        """The session's model (a :class:`~napari_unet.store.Model`) when a new training
        continues it: same folder, not saved there; else None."""
        session = self.session
        if request.resume or request.starts_from_model or session.model is None:
            return None
        return session.model if session.model_path == request.out_path else None

    def start(self) -> None:
        """Start training with the widget's settings (the Train button)."""
        if self.busy:
            return
        try:
            images, labels = self._gather()
            request = self.request()
            model = self._continued(request)
            request.check(continues_model=model is not None)
            refuse_busy(request.out_path)  # another process trains into it
        except ValueError as exc:
            show_warning(f"napari-unet: {exc}")
            self.status.setText(str(exc))
            return
        if not self.autosave_labels("train start", snapshot=True):
            return
        if model is not None:
            request = replace(request, class_names=None)  # the model's classes
        self.plot.reset()
        self._calibrated = ""
        steps = request.config.steps
        total = steps or int(request.config.time_budget or 0)

        def progress_of(event: Any) -> tuple[int, int] | None:
            if not isinstance(event, ev.TrainStep):
                return None
            return (event.step - self._start_step if steps else int(event.elapsed)), total

        self.runner = runner = ChildRunner(
            "train",
            dict(images=images, labels=labels, request=request, model=model, began_at=time.time()),
            on_event=self._on_event,
            on_done=self._on_done,
            on_error=self._failed,
            on_finished=self._on_finished,
            what="napari-unet training",
            progress=progress_of,
            total=total,
        )
        self.control = runner.control  # Stop and previews travel to the child
        if self.preview.isChecked() and self.dims.currentData() == 2:
            # created now, not mid-training: adding a layer costs napari a few hundred ms
            self._preview_layer(self.viewer.layers[self.selected_pairs()[0][0]])
        self._request_preview()
        self.runner.start()
        self._set_state("running", "preparing the data…")

    def toggle_pause(self) -> None:
        if self.runner is None or not self.runner.is_running:
            return
        if self.runner.is_paused or self.pause_btn.text() == "Resume":
            self.runner.resume()
            self._set_state("running", "resumed")
        else:
            self.runner.pause()
            self._set_state("paused", "paused (the model so far is kept in memory)")

    def stop(self) -> None:
        """Stop after the current step; the model folder is saved."""
        if self.runner is None or not self.runner.is_running:
            return
        if self.control is not None:
            self.control.stop()
        if self.pause_btn.text() == "Resume":
            self.runner.resume()
        self.status.setText("stopping after this step…")
        self.stop_btn.setEnabled(False)

    def _request_preview(self, *_: Any) -> None:
        if self.control is None or not self.preview.isChecked() or self.dims.currentData() != 2:
            return  # the preview is a 2D slice: 3D networks are not previewed
        pairs = self.selected_pairs()
        if not pairs or pairs[0][0] not in self.viewer.layers:
            return
        layer = self.viewer.layers[pairs[0][0]]
        index, plane = layer_in_view_slice(self.viewer, layer)
        self.control.request_preview(plane, key=(layer.name, index))

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.TrainStarted):
            self._start_step = event.start_step
            self.device_label.setText(f"using {event.device}")
            start = f"starting from {event.init}; " if event.init else ""
            if event.start_note:
                start = f"{event.start_note}; "
                show_info(f"napari-unet: {event.start_note}")
            elif event.init:
                show_info(f"napari-unet: starting from {event.init}")
            validation = f"; validation on {event.validation}" if event.validation else ""
            self.status.setText(f"{start}training: {event.describe()}{validation}")
        elif isinstance(event, ev.TrainStep):
            self.plot.add_loss(event.step, event.loss)
            self.status.setText(event.describe())
        elif isinstance(event, ev.Validated):
            self.plot.add_iou(event.step, event.iou)
        elif isinstance(event, ev.Preview):
            self._show_preview(event)
        elif isinstance(event, ev.Calibrated):
            self._calibrated = event.describe()
            self.status.setText(self._calibrated)
            show_info(f"napari-unet: {self._calibrated}")
        elif isinstance(event, ev.Finished):
            self._finished = event
        elif isinstance(event, ev.Adjusted):
            self.status.setText(event.message)
            show_warning(f"napari-unet: {event.message}")

    def _preview_layer(self, source: Any) -> Labels:
        """The preview layer for ``source``, created (once) with its shape and placement."""
        shape = spatial_data(source).shape
        layer = self.viewer.layers[PREVIEW_LAYER] if PREVIEW_LAYER in self.viewer.layers else None
        if layer is None or layer.data.shape != shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            ndim = len(shape)
            layer = self.viewer.add_labels(
                np.zeros(shape, np.uint16),
                name=PREVIEW_LAYER,
                opacity=0.5,
                scale=source.scale[-ndim:],
                translate=source.translate[-ndim:],
            )
        return layer

    def _show_preview(self, event: ev.Preview) -> None:
        name, index = event.key
        if name not in self.viewer.layers:
            return
        layer = self._preview_layer(self.viewer.layers[name])
        layer.data[index] = event.labels
        layer.refresh()

    def _on_done(self, model: Any) -> None:
        from ..store import load_model

        folder = Path(self.folder.text()).expanduser()
        steps = model.history.get("steps", 0)
        message = self._finished.message if self._finished is not None else ""
        self._start_model = self._finished.start_model if self._finished is not None else None
        self.status.setToolTip(self._finished.describe_time() if self._finished else "")
        self._finished = None
        self.use_start_btn.setText(f"Use {self._start_model}")
        self.use_start_btn.setVisible(self._start_model is not None)
        if self._start_model is not None:  # trained, saved, and worse than where it started
            self.session.set_model(model, folder)
            self._set_state(
                "idle", f"finished after {steps} steps; model saved to {folder}; {message}"
            )
            show_warning(f"napari-unet: {message}")
            self.resume.setChecked(True)
            self.set_start_from(None)
            return
        if message:  # the regression guard kept the previous model: predict with that one
            self.session.set_model(load_model(folder), folder)
            self._set_state("idle", message)
            show_warning(f"napari-unet: {message}")
        else:
            self.session.set_model(model, folder)
            done = f"finished after {steps} steps; model saved to {folder}"
            self._set_state("idle", f"{done}; {self._calibrated}" if self._calibrated else done)
            show_info(f"napari-unet: model saved to {folder}")
        self.resume.setChecked(True)
        self.set_start_from(None)  # the next Train continues this model

    def use_start_model(self) -> None:
        """The "Use <start model>" button: the model training started from becomes the
        viewer's current model (the trained one stays in its folder)."""
        from ..store import load_model

        ref = self._start_model
        if ref is None:
            return
        try:
            model = load_model(ref)
        except (ValueError, OSError) as exc:
            show_warning(f"napari-unet: {ref} could not be loaded: {exc}")
            return
        self.session.set_model(model, model.path)
        self.use_start_btn.hide()
        folder = Path(self.folder.text()).expanduser()
        self._set_state("idle", f"predicting with {ref}; the trained model stays in {folder}")

    # ------------------------------------------------------------------ annotations

    def autosave_labels(
        self, reason: str, snapshot: bool = False, background: bool = False
    ) -> bool:
        """Save the labels of the training pairs beside the model folder (changed ones).

        Returns False (after telling the user) when they could not be saved.  With
        ``background`` (the periodic autosave) the layers are copied here and hashed
        and written in a worker thread, one save at a time; a failure is a warning.
        """
        from napari.qt.threading import create_worker

        from ..annotation_store import autosave_all

        folder = Path(self.folder.text()).expanduser()
        if background and self._saving is not None:
            return True  # the previous save still runs: the next tick saves what changed
        items = [
            (name, self.viewer.layers[name].data, unet_metadata(self.viewer.layers[name]))
            for _, name in self.selected_pairs()
            if name in self.viewer.layers
        ]

        def failed(exc: BaseException) -> None:
            show_warning(f"napari-unet: could not save the labels beside {folder}: {exc}")

        if background:
            items = [(name, np.array(data, copy=True), meta) for name, data, meta in items]
            worker = create_worker(autosave_all, folder, items, reason=reason, _start_thread=False)
            worker.errored.connect(failed)
            worker.finished.connect(lambda: setattr(self, "_saving", None))
            self._saving = worker
            worker.start()
            return True
        try:
            autosave_all(folder, items, reason=reason, snapshot=snapshot)
        except (OSError, ValueError) as exc:
            failed(exc)
            return False
        return True

    def restore_labels(self) -> None:
        """Pick an autosaved label image of this model folder; add it as a new layer."""
        from ..annotation_store import restore, saved

        folder = Path(self.folder.text()).expanduser()
        try:
            entries = saved(folder)
        except ValueError as exc:
            show_warning(f"napari-unet: {exc}")
            return
        if not entries:
            show_warning(f"napari-unet: nothing was saved for the model folder {folder}")
            return
        names = [
            f"{e.name} - {e.saved} - {'x'.join(map(str, e.shape))} ({e.reason}) [{e.file}]"
            for e in entries
        ]
        choice, ok = QInputDialog.getItem(self, "Restore labels", "saved labels", names, 0, False)
        if not ok:
            return
        entry = entries[names.index(choice)]
        try:
            data = restore(folder, entry)
        except ValueError as exc:
            show_warning(f"napari-unet: {exc}")
            return
        name = f"{entry.name} (restored {entry.saved})"
        self.viewer.add_labels(data, name=name, metadata=dict(entry.meta))
        self.status.setText(f"restored {entry.file} as the layer '{name}'")

    def _autosave_tick(self) -> None:
        self.autosave_labels("autosave", background=True)

    def _failed(self, exc: BaseException) -> None:
        """The training raised, or its process died: back to idle, saying what happened."""
        from ..child import ChildDied

        folder = Path(self.folder.text()).expanduser()
        text = f"training failed: {exc}"
        if isinstance(exc, ChildDied) and (folder / CONFIG_FILE).exists():
            text += f"; the model in {folder} is the one saved last"
        self._set_state("idle", text)

    def _on_finished(self) -> None:
        self.plot.flush()
        if self.runner is not None and self.runner.error is not None:
            self._failed(self.runner.error)
        elif self.start_btn.isEnabled() is False:
            self._set_state("idle")

    def _set_state(self, state: str, message: str | None = None) -> None:
        running = state in ("running", "paused")
        self.start_btn.setEnabled(not running)
        self.pause_btn.setEnabled(running)
        self.stop_btn.setEnabled(running)
        self.pause_btn.setText("Resume" if state == "paused" else "Pause")
        for w in (
            self.kind,
            self.recipe,
            self.start_from,
            self.width_box,
            self.patch_box,
            self.batch_box,
            self.budget,
            self.budget_kind,
            self.device,
            self.folder,
            self.resume,
        ):
            w.setEnabled(not running)
        if self.init() not in (None, AUTO):
            self.width_box.setEnabled(False)  # the start model's width
        if message is not None:
            self.status.setText(message)


def _spin(low: int, high: int, value: int, special: str | None = None) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box

"""Predict dock widget: a model + an image layer -> labels / instances / probabilities layers.

For an instance model, the seed threshold, foreground threshold and minimum size
start as the model's own; after a prediction with instances its probabilities are
kept, and changing a value recomputes the instances layer from them (in a worker,
without the network).  "Save to model" writes the values into the model folder.

The model list offers the viewer's current model (trained or loaded), the built-in
models (``builtin:nuclei``) and model folders ("Load folder…").  A built-in model is
read-only: its instance settings apply to this widget's predictions, not saved.

Also the first step of correcting: "editable copy" turns a prediction into a new
Labels layer that the Train widget can use as training labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
)

from .. import events as ev
from ..builtin import builtin_containing, is_builtin
from ..jobs import Predicted, instances_iter, predict_layers_iter
from ..writer import in_training
from ._devices import DeviceChoice
from ._dock import DockWidget, hbox
from ._export import PackageExport
from ._instances import InstanceSettings
from ._models import CURRENT, ModelChoice
from ._runner import ChildRunner, Runner
from ._slices import (
    INSTANCES,
    SEMANTIC,
    SPARSE,
    in_view_index,
    refill_layer_choices,
    set_labels_kind,
    unet_metadata,
)

log = logging.getLogger(__name__)

CACHE_LIMIT_BYTES = 2 * 1024**3
"""Probabilities larger than this are not kept: changed instance settings then apply
at the next Predict instead of recomputing the layer."""
RECOMPUTE_DELAY_MS = 300
"""Instances are recomputed this long after the last change of a setting."""


@dataclass
class KeptPrediction:
    """The probabilities behind an instances layer, to recompute it with other settings."""

    probs: np.ndarray
    network: Any  # the network that predicted them: the kept values hold for this model
    spec: Any
    layer_name: str
    index: tuple[int, ...]  # the plane predicted ("only the slice in view"), else ()
    placement: dict[str, Any]  # scale and translate of the layer
    settings: Any  # the PostprocessConfig the layer shows now
    zoom: float = 1.0  # the probabilities were predicted at this zoom


def makes_instances(spec: Any) -> bool:
    """The model described by ``spec`` can give instances (napari_unet.postprocess decides)."""
    from ..postprocess import require_instances

    try:
        require_instances(spec)
    except ValueError:
        return False
    return True


def output_kind(output: str, spec: Any) -> str:
    """The labels kind of a predicted Labels layer, to correct it and train on it.

    Instance ids are instances; class labels are in the model's label values, which
    are the model's own kind, except for an instance model's classes (background,
    interior, boundary: each value a class, i.e. semantic).
    """
    if output == "instances":
        return INSTANCES
    return SEMANTIC if makes_instances(spec) else spec.labels.kind


class PredictWidget(PackageExport, DockWidget):
    """Dock widget that applies a model to an image layer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.model: Any = None
        self.model_folder: Path | None = None
        self.model_name = ""  # how the model was chosen: builtin:NAME, a folder, "" (trained)
        self.kept: KeptPrediction | None = None
        self._init_ui()
        self._connect()
        self._refresh()
        if self.session.model is not None:
            self._session_model(self.session.model)
        self._set_running(False)

    # ------------------------------------------------------------------ building
    def _init_ui(self) -> None:
        self.model_label = QLabel(
            "no model yet: train one, choose a built-in model or load a model folder"
        )
        self.model_label.setWordWrap(True)
        self.models = ModelChoice(current="current model (trained or loaded)")
        self.image = QComboBox()
        self.want_labels = QCheckBox("class labels")
        self.want_labels.setChecked(True)
        self.want_instances = QCheckBox("instances")
        self.want_probs = QCheckBox("probabilities")
        self.in_view = QCheckBox("only the slice in view")
        self.device = DeviceChoice()
        self.run_btn = QPushButton("Predict")
        self.cancel_btn = QPushButton("Cancel")
        self.correct_btn = QPushButton("Editable copy of the selected labels")
        self.instances_box = InstanceSettings()
        self.instances_box.setVisible(False)
        self.recompute_timer = QTimer(self)
        self.recompute_timer.setSingleShot(True)
        self.recompute_timer.setInterval(RECOMPUTE_DELAY_MS)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("device", self.device)
        layout = QVBoxLayout(self)
        layout.addWidget(self.models)
        layout.addWidget(self.model_label)
        layout.addLayout(form)
        layout.addLayout(hbox(self.want_labels, self.want_instances, self.want_probs))
        layout.addWidget(self.in_view)
        layout.addWidget(self.instances_box)
        layout.addLayout(hbox(self.run_btn, self.cancel_btn))
        layout.addWidget(self.status)
        layout.addWidget(self.correct_btn)
        layout.addWidget(self._export_button("the plane in view of the chosen image"))
        layout.addStretch(1)

    def _connect(self) -> None:
        self.models.chosen.connect(self._chosen)
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.correct_btn.clicked.connect(self.editable_copy)
        self.instances_box.changed.connect(self.recompute_timer.start)  # restarts: debounced
        self.instances_box.save_btn.clicked.connect(self.save_postprocess)
        self.recompute_timer.timeout.connect(self.recompute_instances)
        self._listen(self.viewer.layers.events.inserted, self._refresh)
        self._listen(self.viewer.layers.events.removed, self._refresh)
        self._listen(self.session.signals.model_changed, self._session_model)

    # ------------------------------------------------------------------ model
    def _session_model(self, model: Any) -> None:
        self.models.select(CURRENT)
        self.set_model(model, self.session.model_path)

    def _chosen(self, ref: str) -> None:
        """An entry of the model list was picked (or a folder loaded)."""
        if ref != CURRENT:
            self.load(ref)
        elif self.session.model is not None:
            self.set_model(self.session.model, self.session.model_path)

    def set_model(self, model: Any, path: Path | None, name: str = "") -> None:
        """Predict with ``model`` (saved in the folder ``path``, None when it has none;
        ``name``: how the user chose it, e.g. ``builtin:nuclei``)."""
        self.model = model
        self.model_folder = Path(path) if path is not None else None
        self.model_name = name
        c = model.config
        where = f" {name}" if is_builtin(name) else f" from {path}" if path else ""
        self.model_label.setText(
            f"model{where}: {c.model.spatial_dims}D, {c.labels.kind} labels, classes "
            f"{', '.join(c.labels.class_names)}"
        )
        instances = makes_instances(c)
        self.want_instances.setEnabled(instances)
        if not instances:
            self.want_instances.setChecked(False)
        self.instances_box.setVisible(instances)
        if instances:
            self.instances_box.show_model(c, self.model_folder)
            if self._read_only():
                self.instances_box.save_btn.setEnabled(False)
                self.instances_box.save_btn.setToolTip(
                    f"{self._read_only()} is read-only: these values apply to this widget's "
                    "predictions; train from it (start from) to keep your own"
                )
        if self.kept is not None and self.kept.network is not model.network:
            self.kept = None  # probabilities of another network

    def load(self, ref: str) -> bool:
        """Load ``builtin:NAME`` or a model folder and predict with it."""
        from ..store import load_model

        where = ref if is_builtin(ref) else Path(ref).expanduser()
        try:
            model = load_model(where)
        except (ValueError, OSError) as exc:
            show_warning(f"napari-unet: {exc}")
            self.status.setText(f"could not load the model: {exc}")
            return False
        self.models.select(ref)
        self.set_model(model, model.path, name=str(ref))
        step = model.history.get("steps", "?")
        note = in_training(where, step) if not is_builtin(ref) else ""
        self.status.setText(note or f"loaded {ref}")  # a folder in training: which save
        return True

    def _read_only(self) -> str | None:
        """``builtin:NAME`` when the model's folder is a built-in model's, the package's
        name when it was loaded from a bioimage.io package, else None."""
        from ..packages import extracted_package

        if self.model_folder is None:
            return None
        if extracted_package(self.model_folder):
            return f"the package {Path(self.model_name).name or 'loaded'}"
        return builtin_containing(self.model_folder)

    def _refresh(self, *_: Any) -> None:
        refill_layer_choices(self.image, self.viewer, Image)

    # ------------------------------------------------------------------ run
    def start(self) -> None:
        """Predict with the chosen options (the Predict button)."""
        if self.busy:
            return
        if self.model is None:
            show_warning("napari-unet: train a model or load a model folder first")
            return
        name = self.image.currentText()
        if name not in self.viewer.layers:
            show_warning("napari-unet: choose an image layer to predict")
            return
        want = dict(
            labels=self.want_labels.isChecked(),
            instances=self.want_instances.isChecked(),
            probabilities=self.want_probs.isChecked(),
        )
        if not any(want.values()):
            show_warning("napari-unet: tick at least one output")
            return
        layer = self.viewer.layers[name]
        index: tuple[int, ...] = ()
        data = layer.data
        if self.in_view.isChecked() and self.model.config.model.spatial_dims == 2:
            index = in_view_index(self.viewer, layer)
            data = np.asarray(data[index]) if index else data
        model, device = self.model, self.device.value()
        settings = self.instances_box.settings() if want["instances"] else None
        callbacks = dict(
            on_event=self._on_event,
            on_done=lambda result: self._predicted(model, layer, index, result, settings),
            on_finished=self._finished,
            what=f"napari-unet prediction of {name!r}",
            progress=_tiles_done,
        )
        if model.path is not None:  # in a child process, which loads the model from its folder
            params = dict(model=model, data=data, **want, device=device, postprocess=settings)
            self.runner = ChildRunner("predict_layers", params, **callbacks)
        else:  # a model that has no folder (given from Python) runs here
            self.runner = Runner(
                lambda: predict_layers_iter(
                    model, data, **want, device=device, postprocess=settings
                ),
                **callbacks,
            )
        self.runner.start()
        self._set_running(True)
        self.status.setText(f"predicting {name}…")

    def _export_model(self) -> Any:
        if self.model is None:
            show_warning("napari-unet: choose a model to export")
        return self.model

    def _export_layer(self) -> Any:
        name = self.image.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def cancel(self) -> None:
        if self.runner is not None and self.runner.is_running:
            self.runner.quit()
            self.status.setText("cancelled")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.TileDone):
            self.status.setText(f"tile {event.i} of {event.n}")

    def _finished(self) -> None:
        self._set_running(False)
        kept = self.kept
        if kept is not None and kept.settings != self.instances_box.settings():
            self.recompute_timer.start()  # the values changed while this run ran

    def _predicted(
        self, model: Any, source: Any, index: tuple[int, ...], result: Predicted, settings: Any
    ) -> None:
        """Add the layers of a finished prediction; keep its probabilities for instances."""
        added = self._add_layers(source, index, result.outputs)
        scale = model.config.normalization.scale  # the model's own: not news
        if result.zoom != scale:
            self.status.setText(
                f"{self.status.text()} (objects {scale / result.zoom:.2g}x the model's size: "
                f"predicted at zoom {result.zoom:.2g})"
            )
        self.kept = None
        if result.probs is None or model.network is not self.model.network:
            return  # no instances, or the widget has another model since this run started
        name = added["instances"]
        if result.probs.nbytes > CACHE_LIMIT_BYTES:
            self.status.setText(
                f"{self.status.text()}; the probabilities ({result.probs.nbytes / 1e9:.1f} GB) "
                f"are too large to keep: changed instance settings apply at the next Predict"
            )
            return
        self.kept = KeptPrediction(
            probs=result.probs,
            network=model.network,
            spec=model.config,
            layer_name=name,
            index=index,
            placement=placement(source, index),
            settings=settings,
            zoom=result.zoom,
        )

    def _add_layers(
        self, source: Any, index: tuple[int, ...], out: dict[str, np.ndarray]
    ) -> dict[str, str]:
        """Add (or replace) the output layers; returns the layer name of each output."""
        kw = placement(source, index)
        suffix = f" (slice {', '.join(map(str, index))})" if index else ""
        added: dict[str, str] = {}
        for output in ("labels", "instances"):
            if output in out:
                name = f"{source.name} {output}{suffix}"
                layer = self._put_labels(name, expanded(out[output], index), kw)
                self._mark_kind(layer, output_kind(output, self.model.config))
                added[output] = name
        if "probabilities" in out:
            names = [f"{source.name} p({c}){suffix}" for c in self.model.config.labels.class_names]
            for name in names:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            p = out["probabilities"]
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
            added["probabilities"] = ", ".join(names)
        self.status.setText("added " + ", ".join(added.values()))
        return added

    # ------------------------------------------------------------------ instance settings
    def recompute_instances(self) -> None:
        """Recompute the kept prediction's instances layer with the values shown (in a worker)."""
        kept = self.kept
        if kept is None:
            return
        settings = self.instances_box.settings()
        if settings == kept.settings:
            return
        if self.busy:
            return  # _finished looks again when the run ends
        if kept.layer_name not in self.viewer.layers:
            self.kept = None
            self.status.setText("the instances layer was removed: Predict again to see instances")
            return
        self.runner = Runner(
            lambda: instances_iter(
                kept.probs,
                settings.at_zoom(
                    kept.zoom,
                    kept.spec.model.spatial_dims,
                    kept.spec.normalization.z_scale,  # 1 for 2D models
                ),
                kept.spec,
            ),
            on_event=lambda _: None,
            on_done=lambda ids: self._show_instances(kept, settings, ids),
            on_finished=self._finished,
            what="napari-unet instances",
        )
        self.runner.start()
        self._set_running(True)
        self.cancel_btn.setEnabled(False)  # one watershed pass: it cannot stop half-way
        self.status.setText("updating the instances (the network does not run again)…")

    def _show_instances(self, kept: KeptPrediction, settings: Any, ids: np.ndarray) -> None:
        if kept is not self.kept or kept.layer_name not in self.viewer.layers:
            return  # another prediction or model since, or the layer is gone
        layer = self._put_labels(kept.layer_name, expanded(ids, kept.index), kept.placement)
        self._mark_kind(layer, INSTANCES)
        kept.settings = settings
        n = int(ids.max()) if ids.size else 0
        how = "unsaved values" if self.instances_box.modified else "the model's values"
        self.status.setText(f"{kept.layer_name}: {n} objects with {how}")

    def save_postprocess(self) -> bool:
        """Write the values shown into the model folder (the Save to model button)."""
        from ..store import save_postprocess

        folder = self.model_folder
        if self.model is None or not makes_instances(self.model.config):
            show_warning("napari-unet: load an instance model first")
            return False
        if folder is None:
            text = "this model has no folder (it was never saved): nothing to save to"
            self.status.setText(text)
            show_warning(f"napari-unet: {text}")
            return False
        if self._read_only():
            text = (
                f"{self._read_only()} is "
                + ("a built-in model, " if is_builtin(self._read_only()) else "")
                + "read-only: the values apply to this widget's predictions only; to keep "
                "your own, train a model from it (Train: start from) into another folder"
            )
            self.status.setText(text)
            show_warning(f"napari-unet: {text}")
            return False
        # the panel shows thresholds and minimum size; the calibrated object size stays
        object_size = self.model.config.postprocess.object_size
        settings = replace(self.instances_box.settings(), object_size=object_size)
        try:
            save_postprocess(folder, settings)
        except (ValueError, OSError) as exc:
            text = f"could not save the instance settings to {folder}: {exc}"
            self.status.setText(text)
            show_error(f"napari-unet: {text}")
            return False
        model = self.model.with_postprocess(settings)
        session = self.session
        if session.model is not None and session.model.network is self.model.network:
            session.set_model(model, session.model_path)  # Train, Batch and this widget
        else:
            self.set_model(model, folder)
        self.status.setText(f"instance settings saved to {folder}")
        show_info(f"napari-unet: instance settings saved to {folder}")
        return True

    def _mark_kind(self, layer: Labels, kind: str) -> None:
        classes = self.model.config.labels.class_names if kind == SPARSE else None
        set_labels_kind(layer, kind, classes)

    def _put_labels(self, name: str, data: np.ndarray, kw: dict) -> Labels:
        if (
            name in self.viewer.layers
            and isinstance(self.viewer.layers[name], Labels)
            and (self.viewer.layers[name].data.shape == data.shape)
        ):
            layer = self.viewer.layers[name]
            layer.data = data
            return layer
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        return self.viewer.add_labels(data, name=name, **kw)

    def editable_copy(self) -> Labels | None:
        """Copy the selected Labels layer into a new layer to correct and train on.

        The copy keeps the layer's napari-unet metadata (labels kind, classes, axes).
        """
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
            np.array(layer.data, copy=True),
            name=name,
            scale=layer.scale,
            translate=layer.translate,
            metadata=unet_metadata(layer),
        )
        layer.visible = False
        show_info(f"napari-unet: fix {name!r} with the brush, then train on it")
        return new

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.export_btn.setEnabled(not running)
        can_save = self.model_folder is not None and not self._read_only()
        self.instances_box.save_btn.setEnabled(not running and can_save)

    def _release(self) -> None:
        self.recompute_timer.stop()
        self.kept = None
        super()._release()


def placement(source: Any, index: tuple[int, ...]) -> dict[str, Any]:
    """Scale and translate of an output of ``source`` (a single plane: at its slice)."""
    ndim_src = source.ndim
    scale, translate = np.asarray(source.scale), np.asarray(source.translate)
    if index:
        translate = translate.copy()
        for axis, i in enumerate(index):
            translate[axis] += i * scale[axis]
    return dict(scale=scale[:ndim_src], translate=translate[:ndim_src])


def expanded(a: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """A predicted plane with a length-1 axis per leading axis of its source."""
    return a.reshape((1,) * len(index) + a.shape) if index else a


def _tiles_done(event: Any) -> tuple[int, int] | None:
    """The progress bar of a prediction: tiles done of the tiles of this pass."""
    return (event.i, event.n) if isinstance(event, ev.TileDone) else None

"""Batch dock widget: every image layer, or a folder of files, through the model to a folder.

The model is the viewer's current one (trained, or chosen in the Predict widget's
session), a built-in model (``builtin:nuclei``) or a model folder ("Load folder…").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
)

from .. import events as ev
from ._devices import DeviceChoice
from ._dock import DockWidget, hbox
from ._export import PackageExport
from ._models import CURRENT, ModelChoice
from ._runner import ChildRunner, Runner
from ._session import DEFAULT_MODEL_ROOT


class BatchWidget(PackageExport, DockWidget):
    """Applies the current model to all image layers or to a folder of images."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.written: list[Path] = []
        self._items_done = 0
        self._loaded: tuple[str, Any] | None = None  # (reference, model) of the list's choice
        self._init_ui()
        self._connect()
        self._set_running(False)

    # ------------------------------------------------------------------ building
    def _init_ui(self) -> None:
        self.models = ModelChoice(current="current model (trained)")
        self.source = QComboBox()
        self.source.addItems(["all image layers", "a folder of images"])
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("input folder (TIFF, PNG, JPEG, zarr)")
        self.browse_in = QPushButton("…")
        self.out = QLineEdit(str(DEFAULT_MODEL_ROOT.parent / "napari-unet-predictions"))
        self.browse_out = QPushButton("…")
        self.instances = QCheckBox("instances")
        self.probabilities = QCheckBox("probabilities")
        self.fmt = QComboBox()
        self.fmt.addItems(["tif", "zarr"])
        self.device = DeviceChoice()
        self.run_btn = QPushButton("Run batch")
        self.cancel_btn = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("model", self.models)
        form.addRow("inputs", self.source)
        form.addRow("folder", hbox(self.folder, self.browse_in))
        form.addRow("output", hbox(self.out, self.browse_out))
        form.addRow("format", self.fmt)
        form.addRow("device", self.device)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(hbox(self.instances, self.probabilities))
        layout.addLayout(hbox(self.run_btn, self.cancel_btn))
        layout.addWidget(self.status)
        layout.addWidget(self._export_button("the selected image layer (or the first one)"))
        layout.addStretch(1)

    def _connect(self) -> None:
        """Only the widget's own controls: the model comes from the session at Run."""
        self.browse_in.clicked.connect(lambda: self._browse(self.folder))
        self.browse_out.clicked.connect(lambda: self._browse(self.out))
        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.models.chosen.connect(self._chosen)

    def _browse(self, target: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "folder", target.text())
        if folder:
            target.setText(folder)

    # ------------------------------------------------------------------ model
    def _chosen(self, ref: str) -> None:
        """An entry of the model list: a built-in model or a folder is loaded now."""
        if ref != CURRENT and self.model() is not None:
            self.status.setText(f"model: {ref}")

    def model(self) -> Any:
        """The model of the list's choice (loaded once), or None after telling the user."""
        from ..store import load_model

        ref = self.models.ref()
        if ref == CURRENT:
            if self.session.model is None:
                show_warning(
                    "napari-unet: train a model first, or choose a built-in model or a folder"
                )
            return self.session.model
        if self._loaded is None or self._loaded[0] != ref:
            try:
                self._loaded = (ref, load_model(ref))
            except (ValueError, OSError) as exc:
                self.status.setText(f"could not load the model: {exc}")
                show_warning(f"napari-unet: {exc}")
                return None
        return self._loaded[1]

    def _export_model(self) -> Any:
        return self.model()

    def _export_layer(self) -> Any:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            return active
        return next((ly for ly in self.viewer.layers if isinstance(ly, Image)), None)

    # ------------------------------------------------------------------ run
    def start(self) -> None:
        from ..jobs import JOBS

        if self.busy:
            return
        model = self.model()
        if model is None:
            return
        kwargs = dict(
            instances=self.instances.isChecked(),
            probabilities=self.probabilities.isChecked(),
            fmt=self.fmt.currentText(),
            device=self.device.value(),
        )
        out = Path(self.out.text()).expanduser()
        if self.source.currentIndex() == 0:
            layers = [ly for ly in self.viewer.layers if isinstance(ly, Image)]
            if not layers:
                show_warning("napari-unet: there is no image layer to predict")
                return
            job = "batch_items"
            params = dict(
                items=[(ly.name, ly.data, layer_pixel_sizes(ly, model.config)) for ly in layers],
                model=model,
                out=out,
                **kwargs,
            )
        else:
            folder = self.folder.text().strip()
            if not folder:
                show_warning("napari-unet: choose the input folder")
                return
            job = "batch_files"
            params = dict(inputs=folder, model=model, out=out, **kwargs)
        callbacks = dict(
            on_event=self._on_event,
            on_done=self._done,
            on_finished=lambda: self._set_running(False),
            what="napari-unet batch",
            progress=_items_done,
        )
        self.written = []
        self._items_done = 0
        if model.path is not None:  # in a child process, which loads the model from its folder
            self.runner = ChildRunner(job, params, **callbacks)
        else:  # a model that has no folder (given from Python) runs here
            self.runner = Runner(lambda: JOBS[job][0](params, None), **callbacks)
        self.runner.start()
        self._set_running(True)
        self.status.setText("running…")

    def cancel(self) -> None:
        if self.runner is not None and self.runner.is_running:
            self.runner.quit()
            self.status.setText("cancelled; finished outputs are kept")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.ChunkDone) and not self.written:
            self.status.setText(f"input {self._items_done + 1}: chunk {event.i} of {event.n}")
        if isinstance(event, ev.ItemDone) and not self.written:
            self._items_done = event.i
            what = {"failed": f"FAILED: {event.reason}", "skipped": "skipped, already done"}
            self.status.setText(
                f"{event.i} of {event.n}: {event.name} "
                + what.get(event.status, f"({event.seconds:.1f} s)")
            )

    def _done(self, written: list[Path]) -> None:
        self.written = [Path(p) for p in written]
        self.status.setText(f"wrote {len(written)} file(s) to {self.out.text()}")
        show_info(f"napari-unet: batch wrote {len(written)} file(s)")

    def _set_running(self, running: bool) -> None:
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        self.export_btn.setEnabled(not running)
        self.device.setEnabled(not running)


def _items_done(event: Any) -> tuple[int, int] | None:
    """The progress bar of a batch: inputs done of all inputs."""
    return (event.i, event.n) if isinstance(event, ev.ItemDone) else None


def layer_pixel_sizes(layer: Any, spec: Any) -> dict[str, tuple[float, str | None]]:
    """A layer's scale (and units, where napari knows them) by axis letter, for OME-Zarr."""
    from ..inference import guess_axes

    try:
        axes = guess_axes(tuple(layer.data.shape), spec)
    except ValueError:
        return {}
    spatial = [a for a in axes if a != "C"]
    scale = list(layer.scale)
    if len(scale) != len(spatial):
        return {}
    units = [str(u) for u in getattr(layer, "units", ())] or [""] * len(scale)
    return {
        a: (float(s), u if u and u != "pixel" else None)
        for a, s, u in zip(spatial, scale, units, strict=False)
    }

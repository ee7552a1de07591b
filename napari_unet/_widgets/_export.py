"""The "Export for bioimage.io…" button of the Predict and Batch widgets.

:class:`PackageExport` is mixed into a dock widget that has a model list: the
button asks for a new ``.zip`` file name (an existing file is never replaced),
takes the package's test image from an image layer the model takes, and writes
the package in a child process (``napari_unet.jobs`` "export"); the widget's
status line tells the outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QPushButton

from ..bioimageio import one_image, takes_sample_image
from ._runner import ChildRunner
from ._slices import layer_in_view_slice

TOOLTIP = (
    "write the chosen model as a bioimage.io package (.zip) for Fiji (deepImageJ), QuPath, "
    "ilastik or bioimageio.core; its test data come from {source}"
)


class PackageExport:
    """Mixin: ``export_btn`` and :meth:`export_package` for a dock widget.

    The widget provides ``viewer``, ``runner``, ``busy``, ``status``,
    ``_set_running(bool)``, :meth:`_export_model` (the chosen model, or None after
    telling the user) and :meth:`_export_layer` (the image layer for the test data).
    """

    def _export_button(self, source: str) -> QPushButton:
        self.export_btn = QPushButton("Export for bioimage.io…")
        self.export_btn.setToolTip(TOOLTIP.format(source=source))
        self.export_btn.clicked.connect(lambda: self.export_package())
        return self.export_btn

    def _export_model(self) -> Any:  # pragma: no cover - each widget defines it
        raise NotImplementedError

    def _export_layer(self) -> Any:  # pragma: no cover - each widget defines it
        raise NotImplementedError

    def export_package(self, path: str | None = None) -> None:
        """The button: the chosen model as a bioimage.io package (in a child process)."""
        if self.busy:
            return
        model = self._export_model()
        if model is None:
            return
        if model.path is None:
            show_warning(
                "napari-unet: save the model to a folder first: its files go into the package"
            )
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "bioimage.io package", "", "zip (*.zip)")
            if not path:
                return
        target = Path(path)
        if target.suffix.lower() != ".zip":
            target = target.with_name(target.name + ".zip")
        if target.exists():  # nothing the user made is overwritten
            show_warning(f"napari-unet: {target} already exists: choose a new file name")
            return
        image = test_image(self.viewer, self._export_layer(), model.config)
        if image is None and not takes_sample_image(model.config):
            m = model.config.model
            show_warning(
                f"napari-unet: open an image this model takes ({m.spatial_dims}D, "
                f"{m.in_channels} channel(s)) for the package's test data"
            )
            return
        self.runner = ChildRunner(
            "export",
            dict(model=model, path=target, image=image),
            on_event=lambda _: None,
            on_done=self._exported,
            on_finished=lambda: self._set_running(False),
            what="napari-unet export",
        )
        self.runner.start()
        self._set_running(True)
        self.status.setText(f"exporting to {target}…")

    def _exported(self, written: str) -> None:
        self.status.setText(f"exported the model to {written} (bioimage.io package)")
        show_info(f"napari-unet: exported {written}")


def test_image(viewer: Any, layer: Any, spec: Any) -> np.ndarray | None:
    """The package's test image from ``layer``: for a 2D grey model on a stack, the plane
    in view; else the middle of the layer's stack axes; None when the model cannot take
    the layer (or there is none: the sample image is used)."""
    if not isinstance(layer, Image):
        return None
    try:
        if takes_sample_image(spec) and layer.ndim > 2 and not layer.rgb:
            return one_image(layer_in_view_slice(viewer, layer)[1], spec)
        return one_image(layer.data, spec)
    except ValueError:
        return None

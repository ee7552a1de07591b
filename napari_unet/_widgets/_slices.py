"""Layer helpers: the spatial array of a layer, the 2D slice in view, layer choices and the
napari-unet metadata that travels with a Labels layer (labels kind, axes, class names)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import LABELS_KINDS

# names for the kinds the widgets treat apart
SPARSE, SEMANTIC, INSTANCES, SPARSE_INSTANCES = LABELS_KINDS[:4]

KIND_KEY = "napari_unet_kind"
"""Layer metadata key: the labels kind, one of :data:`napari_unet.config.LABELS_KINDS`."""
AXES_KEY = "napari_unet_axes"
"""Layer metadata key: one letter per axis of the image the labels belong to (e.g. "CYX")."""
CLASSES_KEY = "napari_unet_classes"
"""Layer metadata key: the class names of sparse labels (value k = class k)."""
METADATA_PREFIX = "napari_unet"
"""Every napari-unet layer metadata key starts with this."""


def spatial_data(layer: Any) -> Any:
    """The layer's array without an RGB(A) axis (shape of a matching Labels layer)."""
    data = layer.data
    if getattr(layer, "rgb", False):
        return data[..., 0]
    return data


def in_view_index(viewer: Any, layer: Any) -> tuple[int, ...]:
    """Index of the 2D plane in view along the layer's leading (non-YX) axes."""
    lead = layer.ndim - 2
    if lead <= 0:
        return ()
    coords = layer.world_to_data(viewer.dims.point)
    shape = spatial_data(layer).shape
    return tuple(
        int(np.clip(round(float(c)), 0, shape[i] - 1)) for i, c in enumerate(coords[:lead])
    )


def layer_in_view_slice(viewer: Any, layer: Any) -> tuple[tuple[int, ...], np.ndarray]:
    """(index, plane): the 2D plane in view (with its RGB axis, if any) as numpy."""
    index = in_view_index(viewer, layer)
    return index, np.asarray(layer.data[index] if index else layer.data)


def refill_layer_choices(combo: Any, viewer: Any, kind: type) -> None:
    """Refill a QComboBox with the names of ``kind`` layers, keeping the current choice."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems([ly.name for ly in viewer.layers if type(ly) is kind])
    if current:
        combo.setCurrentText(current)
    combo.blockSignals(False)


def labels_kind(layer: Any) -> str | None:
    """The labels kind recorded in ``layer``'s metadata (None when absent or unknown)."""
    kind = layer.metadata.get(KIND_KEY)
    return kind if kind in LABELS_KINDS else None


def set_labels_kind(layer: Any, kind: str, classes: Sequence[str] | None = None) -> None:
    """Record the labels kind (and the class names, for sparse labels) in ``layer``'s metadata."""
    if kind not in LABELS_KINDS:
        raise ValueError(f"labels kind must be one of {LABELS_KINDS}, got {kind!r}")
    layer.metadata[KIND_KEY] = kind
    if classes is not None:
        layer.metadata[CLASSES_KEY] = list(classes)


def unet_metadata(layer: Any) -> dict[str, Any]:
    """A copy of ``layer``'s napari-unet metadata (labels kind, axes, classes)."""
    return {k: v for k, v in layer.metadata.items() if k.startswith(METADATA_PREFIX)}

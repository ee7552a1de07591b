"""Layer data helpers: the spatial array of a layer and the 2D slice in view."""

from __future__ import annotations

from typing import Any

import numpy as np


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

"""Label with the model's help (the Annotate widget's lower part).

"Propose objects" runs a model (the current one, a built-in one or a folder) on the chosen
image, in a child process, and shows its instances as a proposals layer over the user's
labels layer.  A click on a proposal accepts it (the next free object id), Shift+click
paints it as background (``sparse-instances``), "accept all in view" takes every proposal
in the visible part of the canvas.  Pixels the user labeled are never overwritten (they
are counted); napari's undo takes an accept back.  What is written where comes from
:mod:`napari_unet.proposals`; this module only finds the layers and writes through
``Labels.data_setitem``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QComboBox, QGroupBox, QLabel, QPushButton, QVBoxLayout

from .. import events as ev
from ..builtin import is_builtin
from ..jobs import Predicted, predict_layers_iter, uncertainty_iter
from ..proposals import (
    REGION_SIZE,
    merged,
    next_free_id,
    next_region,
    placement,
    placements,
)
from ._dock import hbox
from ._models import CURRENT, ModelChoice
from ._predict import expanded, makes_instances
from ._predict import placement as layer_placement
from ._runner import ChildRunner, Runner
from ._slices import INSTANCES, SPARSE_INSTANCES, in_view_index, labels_kind, spatial_data

TARGET_KEY = "napari-unet proposals for"  # a proposals layer's metadata: its labels layer
INDEX_KEY = "napari-unet proposals at"  # ... and the leading indices of its plane
HINT = (
    "click a proposal to add it to the labels (the next free id); Shift+click paints it as "
    "background (few-objects labels); painted pixels are never overwritten; Ctrl+Z undoes"
)


REGION_LAYER = "label next"
MODEL_KEY = "napari-unet uncertainty of"  # an uncertainty layer's metadata: the model


def proposals_name(labels_name: str) -> str:
    return f"{labels_name} proposals"


def uncertainty_name(labels_name: str) -> str:
    return f"{labels_name} uncertainty"


class Proposals:
    """Mixin of the Annotate widget: proposals from a model, accepted with a click.

    The widget provides ``viewer``, ``session``, ``runner``, ``busy`` and ``image`` (the
    image layer's combo box).
    """

    def _proposals_box(self) -> QGroupBox:
        self.proposal_models = ModelChoice(current="current model (trained or loaded)")
        self.proposal_target = QComboBox()
        self.propose_btn = QPushButton("Propose objects")
        self.propose_btn.setToolTip(
            "run the model on the image (the slice in view of a stack) and show its objects "
            "as proposals over the labels"
        )
        self.accept_all_btn = QPushButton("Accept all in view")
        self.next_region_btn = QPushButton("Where to label next")
        self.next_region_btn.setToolTip(
            "the model's uncertainty on every plane of the image (a layer), and the view moves "
            f"to the most uncertain {REGION_SIZE}x{REGION_SIZE} window that holds no label yet"
        )
        self.proposal_status = QLabel("")
        self.proposal_status.setWordWrap(True)
        box = QGroupBox("Label with the model's help")
        layout = QVBoxLayout(box)
        layout.addWidget(self.proposal_models)
        layout.addLayout(hbox(QLabel("into"), self.proposal_target))
        layout.addLayout(hbox(self.propose_btn, self.accept_all_btn))
        layout.addWidget(self.next_region_btn)
        layout.addWidget(self.proposal_status)
        self.propose_btn.clicked.connect(lambda: self.propose())
        self.accept_all_btn.clicked.connect(lambda: self.accept_all_in_view())
        self.next_region_btn.clicked.connect(lambda: self.label_next())
        self.region: tuple[slice, ...] | None = None
        return box

    def _refresh_targets(self) -> None:
        current = self.proposal_target.currentText()
        self.proposal_target.clear()
        self.proposal_target.addItems(
            [
                ly.name
                for ly in self.viewer.layers
                if isinstance(ly, Labels) and TARGET_KEY not in ly.metadata
            ]
        )
        if current:
            self.proposal_target.setCurrentText(current)

    # ------------------------------------------------------------------ propose
    def _proposal_model(self) -> Any:
        """The chosen model, or None after telling the user why not."""
        from ..store import load_model

        ref = self.proposal_models.ref()
        if ref == CURRENT:
            if self.session.model is None:
                show_warning(
                    "napari-unet: no current model: train one, or choose builtin:nuclei or "
                    "a model folder to propose objects"
                )
            return self.session.model
        try:
            return load_model(ref if is_builtin(ref) else Path(ref).expanduser())
        except (ValueError, OSError) as exc:
            show_warning(f"napari-unet: {exc}")
            return None

    def _target(self) -> Labels | None:
        """The labels layer to accept into, or None after telling the user why not."""
        name = self.proposal_target.currentText()
        if name not in self.viewer.layers:
            show_warning("napari-unet: create a labels layer first (above), then propose objects")
            return None
        layer = self.viewer.layers[name]
        if labels_kind(layer) not in (INSTANCES, SPARSE_INSTANCES):
            show_warning(
                f"napari-unet: {name!r} holds {labels_kind(layer) or 'unmarked'} labels; "
                "proposals go into 'a few objects' or 'dense instances' labels (create one above)"
            )
            return None
        return layer

    def _inputs(self) -> tuple[Labels, Any, Any] | None:
        """(labels layer, model, image layer) checked, or None after telling the user why not."""
        if self.busy:
            return None
        target, model = self._target(), None
        if target is not None:
            model = self._proposal_model()
        if target is None or model is None:
            return None
        if not makes_instances(model.config):
            show_warning(
                f"napari-unet: the model gives {model.config.labels.kind} labels, not objects: "
                "choose a model trained on instances (e.g. builtin:nuclei)"
            )
            return None
        name = self.image.currentText()
        if name not in self.viewer.layers:
            show_warning("napari-unet: choose the image to propose objects on")
            return None
        image = self.viewer.layers[name]
        shape = np.shape(target.data)
        if spatial_data(image).shape[-len(shape) :] != shape:
            show_warning(
                f"napari-unet: the image {name!r} ({spatial_data(image).shape}) and the labels "
                f"{target.name!r} ({shape}) are not the same size"
            )
            return None
        return target, model, image

    def _run(self, job: str, model: Any, data: Any, params: dict, on_done: Any, what: str) -> None:
        """Run ``job`` of napari_unet.jobs on ``data``: in a child process when the model has
        a folder, else (a model given from Python) in a thread here."""
        callbacks = dict(
            on_event=lambda event: None,  # the progress bar shows the tiles
            on_done=on_done,
            on_error=lambda exc: self.proposal_status.setText(
                f"{what} failed: {exc} (the labels are untouched)"
            ),
            progress=lambda e: (e.i, e.n) if isinstance(e, ev.TileDone) else None,
            on_finished=lambda: self._proposing(False),
            what=f"napari-unet {what}",
        )
        if model.path is not None:
            self.runner = ChildRunner(job, dict(model=model, data=data, **params), **callbacks)
        else:
            compute = {"predict_layers": predict_layers_iter, "uncertainty": uncertainty_iter}[job]
            self.runner = Runner(lambda: compute(model, data, **params), **callbacks)
        self.proposal_status.setText(f"{what}…")
        self._proposing(True)
        self.runner.start()

    def propose(self) -> None:
        """The button: the chosen model's objects on the image, as a proposals layer."""
        inputs = self._inputs()
        if inputs is None:
            return
        target, model, image = inputs
        dims = model.config.model.spatial_dims
        # the plane (2D model) or volume (3D model) in view: the leading axes' indices
        index = in_view_index(self.viewer, target)[: max(target.ndim - dims, 0)]
        data = np.asarray(image.data[index] if index else image.data)
        params = dict(labels=False, instances=True, probabilities=False, device="auto")
        on_done = lambda result: self._show_proposals(target, index, result)  # noqa: E731
        self._run("predict_layers", model, data, params, on_done, f"proposals on {image.name!r}")

    def label_next(self) -> None:
        """The button: the model's uncertainty on every plane of the image (computed once per
        model and labels layer), then the view moves to its most uncertain unlabeled window."""
        inputs = self._inputs()
        if inputs is None:
            return
        target, model, image = inputs
        name = uncertainty_name(target.name)
        known = self.viewer.layers[name] if name in self.viewer.layers else None
        if known is not None and known.metadata.get(MODEL_KEY) == self._model_key(model):
            self._go_to_next(target, np.asarray(known.data))  # the same model: computed
            return
        data = np.asarray(image.data)
        on_done = lambda result: self._show_uncertainty(target, model, result)  # noqa: E731
        self._run("uncertainty", model, data, dict(device="auto"), on_done, "uncertainty")

    def _proposing(self, running: bool) -> None:
        self.propose_btn.setEnabled(not running)
        self.next_region_btn.setEnabled(not running)

    def _model_key(self, model: Any) -> str:
        """Which model an uncertainty layer came from (its folder and steps, or this object)."""
        steps = model.history.get("steps")
        return f"{model.path}@{steps}" if model.path is not None else f"id {id(model)}"

    def _show_uncertainty(self, target: Labels, model: Any, uncertain: np.ndarray) -> None:
        if target not in self.viewer.layers:
            return
        name = uncertainty_name(target.name)
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_image(
            uncertain,
            name=name,
            colormap="inferno",
            blending="additive",
            opacity=0.5,
            contrast_limits=(0.0, 1.0),
            scale=target.scale,
            translate=target.translate,
        )
        layer.metadata[MODEL_KEY] = self._model_key(model)
        self._go_to_next(target, uncertain)

    def _go_to_next(self, target: Labels, uncertain: np.ndarray) -> tuple[slice, ...] | None:
        """Centre the view on the most uncertain window with no label; mark it."""
        labels = np.asarray(target.data)
        size = (1,) * (labels.ndim - 2) + (REGION_SIZE, REGION_SIZE)
        region = next_region(uncertain, labels, size)
        self.region = region
        if region is None:
            self.proposal_status.setText(
                "every region holds labels already: train, then propose objects to check them"
            )
            return None
        lead = [r.start for r in region[:-2]]
        corner = np.array([r.start for r in region], float)
        far = np.array([r.stop for r in region], float)
        scale, translate = np.asarray(target.scale), np.asarray(target.translate)
        world = (corner + far - 1) / 2 * scale + translate
        for axis, i in enumerate(lead):
            self.viewer.dims.set_point(axis, i * scale[axis] + translate[axis])
        scene = getattr(self.viewer, "scene", self.viewer)  # napari >= 0.9: viewer.scene.camera
        scene.camera.center = tuple(world[-2:])
        box = np.array([corner[-2:], [corner[-2], far[-1]], far[-2:], [far[-2], corner[-1]]])
        box = box * scale[-2:] + translate[-2:]
        if REGION_LAYER in self.viewer.layers:
            self.viewer.layers[REGION_LAYER].data = [box]
        else:
            self.viewer.add_shapes(
                [box], shape_type="rectangle", name=REGION_LAYER, edge_color="yellow",
                face_color="transparent", edge_width=2,
            )  # fmt: skip
        self.viewer.layers.selection.active = target
        at = f"plane {', '.join(map(str, lead))}, " if lead else ""
        self.proposal_status.setText(
            f"label next at {at}y {region[-2].start}-{region[-2].stop}, "
            f"x {region[-1].start}-{region[-1].stop}: the most uncertain window with no label"
        )
        return region

    def _show_proposals(self, target: Labels, index: tuple[int, ...], result: Predicted) -> None:
        if target not in self.viewer.layers:
            self.proposal_status.setText(f"{target.name!r} was closed: proposals dropped")
            return
        objects = result.outputs["instances"]
        name = proposals_name(target.name)
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(
            expanded(objects, index),
            name=name,
            opacity=0.5,
            **layer_placement(target, index),
        )
        layer.contour = 2
        layer.editable = False
        layer.metadata[TARGET_KEY] = target.name
        layer.metadata[INDEX_KEY] = list(index)
        layer.mouse_drag_callbacks.append(self._proposal_clicked)
        self.viewer.layers.selection.active = layer
        n = len(np.unique(objects)) - (1 if (objects == 0).any() else 0)
        where = f" (slice {', '.join(map(str, index))})" if index else ""
        self.proposal_status.setText(f"{n} proposals{where}: {HINT}")

    # ------------------------------------------------------------------ accept
    def _proposals_layer(self) -> Labels | None:
        name = proposals_name(self.proposal_target.currentText())
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _proposal_clicked(self, layer: Labels, event: Any) -> None:
        if event.type != "mouse_press":
            return
        value = layer.get_value(
            event.position,
            view_direction=event.view_direction,
            dims_displayed=event.dims_displayed,
            world=True,
        )
        if value:
            self.accept(int(value), background="Shift" in event.modifiers, proposals=layer)

    def _pair(self, proposals: Labels | None) -> tuple | None:
        """(labels layer, the plane's leading indices, labels kind, the plane's labels, its
        proposals) for the proposals layer (default: the chosen labels layer's), or None."""
        proposals = proposals or self._proposals_layer()
        if proposals is None:
            show_warning("napari-unet: propose objects first")
            return None
        name = proposals.metadata[TARGET_KEY]
        if name not in self.viewer.layers:
            show_warning(f"napari-unet: the labels layer {name!r} of these proposals is gone")
            return None
        target, index = self.viewer.layers[name], tuple(proposals.metadata[INDEX_KEY])
        plane = np.asarray(target.data[index] if index else target.data)
        props = np.asarray(proposals.data).reshape(plane.shape)
        return target, index, labels_kind(target), plane, props

    def accept(self, proposal: int, background: bool = False, proposals: Labels | None = None):
        """Accept one proposal (Shift+click: as background); returns its Placement."""
        pair = self._pair(proposals)
        if pair is None:
            return None
        target, index, kind, plane, props = pair
        try:
            one = placement(
                plane,
                props,
                proposal,
                kind,
                background=background,
                at=index,
                value=None if background else next_free_id(target.data, kind),
            )
        except ValueError as exc:
            show_warning(f"napari-unet: {exc}")
            return None
        if one.placed:
            target.data_setitem(one.indices, one.value)
        what = "background" if background else f"object {one.value}"
        kept = f"; {one.skipped} px already labeled left as they were" if one.skipped else ""
        text = f"proposal {proposal} -> {what}, {one.placed} px{kept}"
        if not one.placed:
            text = f"proposal {proposal} is labeled already: nothing changed"
        self.proposal_status.setText(text)
        return one

    def accept_all_in_view(self) -> list:
        """Accept every proposal with a pixel in the visible part of the canvas."""
        pair = self._pair(None)
        if pair is None:
            return []
        target, index, kind, plane, props = pair
        layer = self._proposals_layer()
        corners = np.asarray(layer.corner_pixels)[:, -plane.ndim :]
        region = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*corners, strict=True))
        if not props[region].size:
            region = None  # the view lies outside the image: take every proposal
        first = next_free_id(target.data, kind)  # ids count over the whole stack
        accepted = placements(plane, props, kind, region, at=index, first=first)
        if accepted:  # one write: one undo step, one redraw
            indices, values = merged(accepted)
            target.data_setitem(indices, values.astype(target.data.dtype))
        skipped = sum(one.skipped for one in accepted)
        kept = f"; {skipped} px already labeled left as they were" if skipped else ""
        self.proposal_status.setText(f"accepted {len(accepted)} proposals{kept}")
        show_info(f"napari-unet: accepted {len(accepted)} proposals into {target.name!r}")
        return accepted

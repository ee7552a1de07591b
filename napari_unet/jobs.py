"""The jobs the widgets run in a child process (:mod:`napari_unet.child`), and the
compute generators only the widgets use.

:data:`JOBS` maps a job name to ``(factory, graceful)``: ``factory(params, control)``
returns the job's generator from the decoded parameters and the child's
:class:`~napari_unet.training.TrainControl`; ``graceful`` jobs stop through that
control (training ends after its step and saves its model folder), the others are
cancelled (their generator is closed: batch leaves no half-written output).
No Qt and no napari here.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Predicted:
    """What one prediction gives the widget: the outputs asked for (keys "labels",
    "instances", "probabilities") and, with instances, the probabilities they came from."""

    outputs: dict[str, np.ndarray]
    probs: np.ndarray | None = None
    zoom: float = 1.0  # the image was predicted zoomed by this (napari_unet.zoom)


def predict_layers_iter(
    model: Any,
    data: Any,
    *,
    labels: bool,
    instances: bool,
    probabilities: bool,
    device: str,
    postprocess: Any = None,
) -> Generator[Any, None, Predicted]:
    """Compute generator for the widget: yields tiles, returns the outputs asked for.

    The outputs are those of :func:`napari_unet.postprocess.outputs_from_probs`;
    ``postprocess`` replaces the model's instance settings for this prediction.  The
    image is zoomed when its objects are much larger or smaller than the model's
    (:func:`napari_unet.inference.predict_zoomed_iter`).
    """
    from .inference import at_zoom, predict_zoomed_iter
    from .postprocess import outputs_from_probs

    if postprocess is not None:
        model = model.with_postprocess(postprocess)
    probs, zoom = yield from predict_zoomed_iter(model, data, device=device)
    outputs = outputs_from_probs(
        probs,
        at_zoom(model.config, zoom),
        labels=labels,
        instances=instances,
        probabilities=probabilities,
    )
    return Predicted(outputs, probs if instances else None, zoom)


def instances_iter(probs: np.ndarray, settings: Any, spec: Any) -> Generator[Any, None, Any]:
    """Compute generator: instance ids from kept probabilities (the network does not run)."""
    from .postprocess import instances_with

    yield from ()
    return instances_with(probs, settings, spec)


def uncertainty_iter(model: Any, data: Any, *, device: str) -> Generator[Any, None, np.ndarray]:
    """Compute generator: the model's uncertainty on ``data`` (every plane), the normalised
    entropy of its class probabilities (:func:`napari_unet.proposals.uncertainty`)."""
    from .inference import predict_zoomed_iter
    from .proposals import uncertainty

    probs, _ = yield from predict_zoomed_iter(model, data, device=device)
    return uncertainty(probs)


def _train(params: dict[str, Any], control: Any) -> Generator[Any, None, Any]:
    """Training; ``began_at`` (seconds since the epoch: when the user asked for it, in
    the parent) is where its time budget starts."""
    import time

    from .training import train_request_iter

    images, labels = params.pop("images"), params.pop("labels")
    waited = max(0.0, time.time() - params.pop("began_at", time.time()))
    began = time.perf_counter() - waited
    return train_request_iter(
        images, labels, params.pop("request"), control=control, began=began, **params
    )


def _predict_layers(params: dict[str, Any], control: Any) -> Generator[Any, None, Any]:
    return predict_layers_iter(params.pop("model"), params.pop("data"), **params)


def _uncertainty(params: dict[str, Any], control: Any) -> Generator[Any, None, Any]:
    return uncertainty_iter(params.pop("model"), params.pop("data"), **params)


def _batch_items(params: dict[str, Any], control: Any) -> Generator[Any, None, Any]:
    from .batch import predict_items_iter

    items = [(name, lambda a=array: a, *rest) for name, array, *rest in params.pop("items")]
    return predict_items_iter(params.pop("model"), items, params.pop("out"), **params)


def _batch_files(params: dict[str, Any], control: Any) -> Generator[Any, None, Any]:
    from .batch import predict_files_iter

    return predict_files_iter(
        params.pop("model"), params.pop("inputs"), params.pop("out"), **params
    )


def _export(params: dict[str, Any], control: Any) -> Generator[Any, None, Any]:
    """A bioimage.io package of ``model`` (napari_unet.bioimageio); the image of the
    test tensors defaults to a sample nuclei image."""
    from .bioimageio import export_bioimageio, sample_image

    yield from ()
    image = params.pop("image")
    image = sample_image() if image is None else image
    return str(export_bioimageio(params.pop("model"), params.pop("path"), image, **params))


Factory = Callable[[dict[str, Any], Any], Generator[Any, None, Any]]
JOBS: dict[str, tuple[Factory, bool]] = {
    "train": (_train, True),
    "predict_layers": (_predict_layers, False),
    "uncertainty": (_uncertainty, False),
    "batch_items": (_batch_items, False),
    "batch_files": (_batch_files, False),
    "export": (_export, False),
}

"""Object-size awareness: zoom an image whose objects are much larger or smaller than
the ones the model learned on.

A U-Net learns objects of the sizes it was shown: nuclei twice as wide as any in its
training data come out split, crowded ones half as wide come out merged.  Cellpose
answers with a diameter (estimated by a second network, then the image is resized to
its training diameter of 30 px; Stringer et al. 2021, Nature Methods 18:100).  Here
the model keeps the median size of the objects it was calibrated on
(``config.postprocess.object_size``); :func:`choose_zoom` compares it with the
objects found in a first prediction at scale 1, and when they differ by more than
:data:`ZOOM_TOLERANCE` in width the image is predicted again, resized part of the way
to that size (:data:`ZOOM_POWER`), and the probabilities are resized back
(:func:`zoomed`).  Only 2D models (stacks slice by slice); 3D volumes are predicted as
they are.

Part of the way, because the whole way loses what small images need: on DSB2018
nuclei held out by image size (``benchmarks/bench_generalisation.py``, the ``large``
and ``dense`` groups), shrinking 360x360 images of big nuclei to the model's median
nucleus merged touching ones (mean AP@0.5 0.785 at scale 1, 0.726 zoomed all the way,
0.805 half the way in log scale), while the images whose nuclei were split at scale 1
gained at either zoom (docs/benchmarks.md, issue 11).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
from skimage.transform import resize

from .config import ModelSpec
from .postprocess import outputs_from_probs

ZOOM_TOLERANCE = 1.25
"""Objects up to this factor wider or narrower than the model's are predicted as they are
(the scale augmentation of training covers 0.8-1.25)."""
ZOOM_POWER = 0.5
"""The zoom is (model's object width / found width) ** ZOOM_POWER: 1 all the way, 0.5
half the way in log scale (chosen on the held-out size groups, see above)."""
ZOOM_RANGE = (0.25, 3.0)
"""The smallest and largest zoom :func:`choose_zoom` returns."""
MIN_OBJECTS = 5
"""Fewer objects found at scale 1 than this: no zoom (their size says little)."""
MAX_ZOOMED_PIXELS = 64_000_000
"""A zoomed slice has at most this many pixels (the zoom is lowered to fit)."""


def choose_zoom(probs: np.ndarray, spec: ModelSpec) -> float:
    """The zoom that brings the objects found in ``probs`` (at scale 1) to the model's size.

    1.0 unless the model is a 2D instance model that knows its object size and at
    least :data:`MIN_OBJECTS` objects were found whose median width differs from
    it by more than :data:`ZOOM_TOLERANCE`; then the width ratio
    ``sqrt(model size / found size)`` to the power :data:`ZOOM_POWER`, within
    :data:`ZOOM_RANGE`, lowered so that a zoomed slice stays under
    :data:`MAX_ZOOMED_PIXELS`.
    """
    size = spec.postprocess.object_size
    if not spec.labels.instances or not size or spec.model.spatial_dims != 2:
        return 1.0
    found = outputs_from_probs(probs, spec, labels=False, instances=True)["instances"]
    counts = np.bincount(found.ravel())[1:]
    counts = counts[counts > 0]
    if len(counts) < MIN_OBJECTS:
        return 1.0
    ratio = math.sqrt(size / float(np.median(counts)))
    if 1 / ZOOM_TOLERANCE <= ratio <= ZOOM_TOLERANCE:
        return 1.0
    zoom = ratio**ZOOM_POWER
    plane = int(np.prod(probs.shape[-2:]))
    largest = math.sqrt(MAX_ZOOMED_PIXELS / max(plane, 1))
    return float(min(max(zoom, ZOOM_RANGE[0]), ZOOM_RANGE[1], largest))


def zoomed(
    predict: Callable[[Any], Generator[Any, None, np.ndarray]], zoom: float, dims: int
) -> Callable[[Any], Generator[Any, None, np.ndarray]]:
    """``predict`` (a ``(C, *spatial) -> (K, *spatial)`` generator) run on the source
    resized by ``zoom`` (linear, anti-aliased when shrinking), with probabilities
    resized back to the source's shape (linear: they still sum to 1)."""

    def run(source: Any) -> Generator[Any, None, np.ndarray]:
        src = np.asarray(source.compute() if hasattr(source, "compute") else source)
        shape = src.shape[-dims:]
        new = tuple(max(1, round(s * zoom)) for s in shape)
        small = resize(
            src.astype(np.float32),
            (*src.shape[:-dims], *new),
            order=1,
            anti_aliasing=zoom < 1,
            preserve_range=True,
        ).astype(np.float32)
        probs = yield from predict(small)
        back = resize(probs, (probs.shape[0], *shape), order=1, preserve_range=True)
        return back.astype(np.float32)

    return run

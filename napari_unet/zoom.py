"""Object-size awareness: zoom an image whose objects are much larger or smaller than
the ones the model learned on.

A U-Net learns objects of the sizes it was shown: nuclei twice as wide as any in its
training data come out split, crowded ones half as wide come out merged.  Cellpose
answers with a diameter (estimated by a second network, then the image is resized to
its training diameter of 30 px; Stringer et al. 2021, Nature Methods 18:100).  Here
the model keeps the median size of the objects it was calibrated on
(``config.postprocess.object_size``); :func:`zoom_steps` compares it with the
objects found in a first prediction at scale 1, and when they differ by more than
:data:`ZOOM_TOLERANCE` in width the image is predicted again, resized part of the way
to that size (:data:`ZOOM_POWER`), and again from there while they still differ; the
probabilities are resized back (:func:`zoomed`).  The objects are measured as
foreground blobs, since a network cuts objects much wider than it learned into pieces
of the size it knows (docs/benchmarks.md, "The object-size zoom reads the foreground
blobs").  Only 2D models (stacks slice by slice); 3D volumes are predicted as
they are.

Training does the same at the other end (:func:`training_scale`): images whose labeled
objects are wider than :data:`OBJECT_WIDTH` are shrunk to bring them to it before the
targets are drawn, the factor is recorded in the model (``normalization.scale``) and
every prediction resizes by it first.  A patch then holds whole objects with their
neighbours, and each step sees more of them: on large touching cells (~140 px wide)
500 steps at half the size gave AP@0.5 0.68-0.78 where the full size gave 0.37-0.46
(docs/benchmarks.md, issue 26).

Part of the way, because the whole way loses what small images need: on DSB2018
nuclei held out by image size (``benchmarks/bench_generalisation.py``, the ``large``
and ``dense`` groups), shrinking 360x360 images of big nuclei to the model's median
nucleus merged touching ones (mean AP@0.5 0.785 at scale 1, 0.726 zoomed all the way,
0.805 half the way in log scale), while the images whose nuclei were split at scale 1
gained at either zoom (docs/benchmarks.md, issue 11).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from .config import MIN_SCALE, OBJECT_WIDTH, Z_SCALE_RANGE, ModelSpec
from .postprocess import outputs_from_probs

ZOOM_TOLERANCE = 1.25
"""Objects up to this factor wider or narrower than the model's are predicted as they are
(the scale augmentation of training covers 0.8-1.25)."""
ZOOM_POWER = 0.5
"""The zoom is (model's object width / found width) ** ZOOM_POWER: 1 all the way, 0.5
half the way in log scale (chosen on the held-out size groups, see above)."""
ZOOM_RANGE = (0.12, 3.0)
"""The smallest and largest zoom applied on top of the model's scale."""
ZOOM_PASSES = 4
"""At most this many predictions after the first while :func:`zoom_steps` searches."""
MIN_OBJECTS = 5
"""Fewer objects found at scale 1 than this: no zoom (their size says little)."""
MAX_ZOOMED_PIXELS = 64_000_000
"""A zoomed slice has at most this many pixels (the zoom is lowered to fit)."""


def objects_width(labels: Sequence[np.ndarray], kind: str, spatial_dims: int) -> float | None:
    """The median equivalent diameter (pixels) of the objects in ``labels``: every id of
    ``instances`` labels, the outlined objects (ids above 1) of ``sparse-instances``;
    None for other kinds, or when there are none."""
    if kind not in ("instances", "sparse-instances"):
        return None
    first = 2 if kind == "sparse-instances" else 1
    sizes = []
    for lab in labels:
        counts = np.bincount(np.asarray(lab).ravel().astype(np.int64, copy=False))[first:]
        sizes.append(counts[counts > 0])
    every = np.concatenate(sizes) if sizes else np.zeros(0)
    if not len(every):
        return None
    size = float(np.median(every))
    if spatial_dims == 3:
        return (6 * size / math.pi) ** (1 / 3)
    return math.sqrt(4 * size / math.pi)


def training_scale(labels: Sequence[np.ndarray], kind: str, spatial_dims: int) -> float:
    """The factor a training resizes its images by: :data:`OBJECT_WIDTH` over the labeled
    objects' median width when they are wider (two significant digits), else 1.  2D
    models only (3D volumes are trained as they are)."""
    width = objects_width(labels, kind, spatial_dims)
    if spatial_dims != 2 or width is None or width <= OBJECT_WIDTH:
        return 1.0
    return max(MIN_SCALE, float(f"{OBJECT_WIDTH / width:.2g}"))


def start_scale(
    labels: Sequence[np.ndarray], kind: str, spatial_dims: int, start: ModelSpec
) -> float | None:
    """The factor that brings the labeled objects to the size a start model knows (its
    ``object_size``, in its network's pixels), when they are more than
    :data:`ZOOM_TOLERANCE` times wider; None otherwise (2D instance models only).

    Fine-tuning then shows the network objects of the size its weights were trained on,
    and the start model's answer on the unlabeled pixels (the distillation target) is its
    answer at that size, not at a size it never saw.
    """
    size = start.postprocess.object_size
    width = objects_width(labels, kind, spatial_dims)
    if spatial_dims != 2 or not size or width is None or not start.labels.instances:
        return None
    known = math.sqrt(4 * size / math.pi)
    if width <= known * ZOOM_TOLERANCE:
        return None
    return max(MIN_SCALE, float(f"{known / width:.2g}"))


ISOTROPIC_WITHIN = 0.15
"""Voxels whose z size is within this share of their y/x size are taken as isotropic."""


def z_scale_for(spacing: Sequence[float] | None) -> float:
    """The factor a 3D training resizes its volumes by along z from their voxel size
    ``spacing`` (z, y, x, one unit): z over the mean of y and x, two significant digits,
    within :data:`~napari_unet.config.Z_SCALE_RANGE`; 1 without a spacing or when the
    voxels are near isotropic (:data:`ISOTROPIC_WITHIN`)."""
    if spacing is None:
        return 1.0
    z, y, x = (float(v) for v in spacing)
    ratio = z / ((y + x) / 2)
    if abs(ratio - 1) <= ISOTROPIC_WITHIN:
        return 1.0
    low, high = Z_SCALE_RANGE
    return float(f"{min(max(ratio, low), high):.2g}")


def found_width_ratio(probs: np.ndarray, spec: ModelSpec, at: float, blobs: bool) -> float | None:
    """The model's object width over the median width of the objects found in ``probs``
    (predicted at zoom ``at``; widths in the network's pixels): the instances of the
    model's post-processing (``blobs=False``), or the connected blobs of foreground
    (``blobs=True``: touching objects count as one, an object cut into pieces as one).
    None for a model that cannot tell (not a 2D instance model, or no object size) or
    when fewer than :data:`MIN_OBJECTS` were found."""
    size = spec.postprocess.object_size
    if not spec.labels.instances or not size or spec.model.spatial_dims != 2:
        return None
    settings = spec.postprocess.at_zoom(at, 2)
    if blobs:
        fg = probs[0] < 1.0 - settings.fg_threshold
        plane = np.zeros((3,) * fg.ndim, bool)  # a stack's slices are not connected
        plane[(1,) * (fg.ndim - 2)] = ndi.generate_binary_structure(2, 1)
        found, _ = ndi.label(fg, plane)
    else:
        found = outputs_from_probs(
            probs, replace(spec, postprocess=settings), labels=False, instances=True
        )["instances"]
    counts = np.bincount(found.ravel())[1:]
    counts = counts[counts >= (settings.min_size_for(2) if blobs else 1)]
    if len(counts) < MIN_OBJECTS:
        return None
    return math.sqrt(size / (float(np.median(counts)) * at * at))


def _within(ratio: float | None) -> bool:
    return ratio is None or 1 / ZOOM_TOLERANCE <= ratio <= ZOOM_TOLERANCE


def _towards(ratio: float, probs: np.ndarray, at: float, base: float) -> float:
    """``at`` moved :data:`ZOOM_POWER` of the way to ``at * ratio`` (log scale), within
    ``base`` times :data:`ZOOM_RANGE` and :data:`MAX_ZOOMED_PIXELS`."""
    low, high = (base * r for r in ZOOM_RANGE)
    zoom = min(max(at * ratio**ZOOM_POWER, low), high)
    plane = int(np.prod(probs.shape[-2:]))
    return float(min(zoom, math.sqrt(MAX_ZOOMED_PIXELS / max(plane, 1))))


def choose_zoom(probs: np.ndarray, spec: ModelSpec, at: float = 1.0) -> float:
    """The zoom that brings the objects found in ``probs`` (predicted at zoom ``at``, the
    model's scale by default) to the model's size.

    ``at`` unless the model is a 2D instance model that knows its object size and at
    least :data:`MIN_OBJECTS` objects were found whose median width differs from
    it by more than :data:`ZOOM_TOLERANCE`; then ``at`` times the width ratio
    ``sqrt(model size / found size)`` to the power :data:`ZOOM_POWER` (within ``at``
    times :data:`ZOOM_RANGE`), lowered so that a zoomed slice stays under
    :data:`MAX_ZOOMED_PIXELS`.  Sizes are the network's pixels: those of the image
    as given times ``at`` squared.  The objects are the model's instances: see
    :func:`zoom_steps` for the search that also reads the foreground blobs.
    """
    ratio = found_width_ratio(probs, spec, at, blobs=False)
    return at if _within(ratio) else _towards(ratio, probs, at, at)


def zoom_steps(
    predict_at: Callable[[float], Generator[Any, None, np.ndarray]],
    probs: np.ndarray,
    spec: ModelSpec,
    base: float,
) -> Generator[Any, None, tuple[np.ndarray, float]]:
    """The probabilities at the zoom that brings the objects to the model's size, and
    that zoom: ``probs`` were predicted at ``base`` (the model's scale), ``predict_at(z)``
    predicts again at ``z``.

    A network shown objects much wider than it learned cuts each into pieces of the
    size it knows, so the instances found say "the right size" (a model that learned
    147-px nuclei from 6 outlined ones, on nuclei of ~1,760 px: 2-3 pieces each, zoom
    0.75-1.0 chosen from them; AP@0.5 0.28 where zoom 0.3 gives 0.74).  The foreground
    blobs keep such an object whole, so the steps read them: each moves
    :data:`ZOOM_POWER` of the way (log scale) to the blobs' size, at most
    :data:`ZOOM_PASSES` times, until they are within :data:`ZOOM_TOLERANCE`.  Blobs are
    also touching objects seen as one: a step after which the instances found are
    narrower (or wider, zooming in) than the model's by more than the tolerance went past
    the objects and is undone, and the instances decide as before (:func:`choose_zoom`).
    """
    zoom = base
    for _ in range(ZOOM_PASSES):
        ratio = found_width_ratio(probs, spec, zoom, blobs=True)
        if _within(ratio):
            break
        step = _towards(ratio, probs, zoom, base)
        if step == zoom:
            break
        trial = yield from predict_at(step)
        after = found_width_ratio(trial, spec, step, blobs=False)
        if after is not None and (
            after > ZOOM_TOLERANCE if step < zoom else after < 1 / ZOOM_TOLERANCE
        ):
            break
        probs, zoom = trial, step
    if zoom == base:
        chosen = choose_zoom(probs, spec, at=base)
        if chosen != base:
            probs, zoom = (yield from predict_at(chosen)), chosen
    return probs, zoom


def zoomed(
    predict: Callable[[Any], Generator[Any, None, np.ndarray]],
    zoom: float | Sequence[float],
    dims: int,
) -> Callable[[Any], Generator[Any, None, np.ndarray]]:
    """``predict`` (a ``(C, *spatial) -> (K, *spatial)`` generator) run on the source
    resized by ``zoom`` (one factor, or one per spatial axis; linear, anti-aliased when
    shrinking), with probabilities resized back to the source's shape (linear: they
    still sum to 1)."""
    factors = (zoom,) * dims if np.isscalar(zoom) else tuple(zoom)

    def run(source: Any) -> Generator[Any, None, np.ndarray]:
        src = np.asarray(source.compute() if hasattr(source, "compute") else source)
        shape = src.shape[-dims:]
        new = tuple(max(1, round(s * f)) for s, f in zip(shape, factors, strict=True))
        small = resize(
            src.astype(np.float32),
            (*src.shape[:-dims], *new),
            order=1,
            anti_aliasing=min(factors) < 1,
            preserve_range=True,
        ).astype(np.float32)
        probs = yield from predict(small)
        back = resize(probs, (probs.shape[0], *shape), order=1, preserve_range=True)
        return back.astype(np.float32)

    return run

"""Labels -> training targets.

A target is an ``int64`` array of class indices ``0..K-1`` with the same shape as the
labels; :data:`IGNORE` (-1) marks pixels that are not labeled and must not count in
the loss.

* :func:`sparse_targets`: painted labels, 0 = unlabeled, 1..K = classes.
* :func:`semantic_targets`: dense class masks with arbitrary values (ISBI 2012:
  0 = membrane, 255 = cell), mapped to consecutive classes; :func:`classes_to_values`
  maps predictions back.
* :func:`instance_targets`: dense instance masks -> background / interior / boundary.
* :func:`sparse_instance_targets`: a few objects outlined (ids 2, 3, ...), some background
  painted (1), the rest unlabeled (0): the same three classes where labeled.
* :func:`border_weight_map`: the U-Net paper's pixel weights that emphasise the thin
  background gaps between touching objects.

Stacks: with ``labels.ndim == spatial_dims + 1`` the first axis is a stack (z or t) of
independent images for a 2D model, processed slice by slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE",
    "SMALL_OBJECT_SIZE",
    "border_weight_map",
    "classes_to_values",
    "instance_targets",
    "semantic_targets",
    "sparse_instance_targets",
    "sparse_targets",
]

IGNORE: int = -1
"""Target value of pixels that are not labeled; the loss ignores them."""

SMALL_OBJECT_SIZE: int = 8
"""Objects with at most this many pixels keep all pixels as interior (no boundary)."""

TOUCH_REACH: int = 2
"""Object pixels with a pixel of another object at most this far (chessboard distance)
are on a touching border: objects in contact or across a one-pixel gap."""

MIN_BAND: int = 3
"""A touching-border band narrower than this (px) is not drawn: the object keeps its
one-pixel edge.  On the ovule's z-slices (cells ~25 px wide) 2-px bands lost objects
(AP@0.5 0.58 in both runs vs 0.50-0.70 without); large cells gain from theirs
(docs/benchmarks.md, issue 26)."""

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2

# The border term is w0 * exp(-(d1 + d2)^2 / (2 sigma^2)); beyond d2 > _REACH * sigma it is
# below w0 * exp(-_REACH^2 / 2) (< 1e-6 * w0) and set to 0.
_REACH = 5.5


# --------------------------------------------------------------------------- validation


def _as_labels(name: str, labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} must not contain negative values, got minimum {arr.min()}")
    return arr


def _check_spatial_dims(spatial_dims: int, ndim: int, name: str) -> bool:
    """Validate ``spatial_dims`` against an array's ndim; return True for a stack."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if ndim not in (spatial_dims, spatial_dims + 1):
        raise ValueError(
            f"{name} must have {spatial_dims} or {spatial_dims + 1} dimensions for "
            f"spatial_dims={spatial_dims}, got {ndim}"
        )
    return ndim == spatial_dims + 1


# --------------------------------------------------------------------------- sparse / semantic


def sparse_targets(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Painted (sparse) labels -> targets: 0 -> IGNORE, k -> class k - 1.

    Parameters
    ----------
    labels : array_like
        Non-negative integer labels, 0 = unlabeled, 1..K = classes.  A boolean mask
        means "class 1 painted": True -> class 0, False -> IGNORE.
    num_classes : int, optional
        Number of classes K; when given, a label value above it is an error.

    Returns
    -------
    numpy.ndarray
        ``int64`` targets of the same shape, values in ``{IGNORE, 0, ..., K-1}``.

    Raises
    ------
    ValueError
        If the labels are not integer / boolean, contain negative values, or contain a
        value greater than ``num_classes``.
    """
    arr = _as_labels("labels", labels)
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if arr.dtype.kind == "b":
        return np.where(arr, 0, IGNORE).astype(np.int64)
    if num_classes is not None and arr.size:
        top = int(arr.max())
        if top > num_classes:
            raise ValueError(
                f"labels contain the value {top}, greater than num_classes={num_classes}"
            )
    return arr.astype(np.int64) - 1


def semantic_targets(
    labels: Any, value_map: Sequence[int] | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Dense class masks -> targets: every pixel labeled, values -> consecutive classes.

    Parameters
    ----------
    labels : array_like
        Integer (or boolean) class mask with arbitrary values, e.g. 0 / 255.
    value_map : sequence of int, optional
        ``value_map[i]`` is the original value of class ``i``.  By default the distinct
        values of ``labels``, sorted.  Pass the model's map to convert more labels
        consistently.

    Returns
    -------
    targets : numpy.ndarray
        ``int64`` class indices ``0..K-1``, same shape as ``labels``.
    value_map : tuple of int
        The original value of each class (use with `classes_to_values`).

    Raises
    ------
    ValueError
        If the labels are not integer / boolean, if ``value_map`` has repeated values,
        or if the labels contain values missing from ``value_map`` (they are named).

    Examples
    --------
    >>> targets, vmap = semantic_targets(np.array([[0, 255], [255, 0]], dtype=np.uint8))
    >>> targets.tolist(), vmap
    ([[0, 1], [1, 0]], (0, 255))
    """
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"labels must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    present = np.unique(arr)
    if value_map is None:
        vmap = tuple(int(v) for v in present)
    else:
        vmap = tuple(int(v) for v in value_map)
        if len(set(vmap)) != len(vmap):
            raise ValueError(f"value_map must not repeat values, got {vmap}")
        unexpected = sorted(set(int(v) for v in present) - set(vmap))
        if unexpected:
            shown = ", ".join(str(v) for v in unexpected[:10])
            more = f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""
            raise ValueError(f"labels contain values not in value_map {vmap}: {shown}{more}")
    if not vmap:  # empty labels array
        return np.zeros(arr.shape, dtype=np.int64), vmap
    values = np.asarray(vmap, dtype=np.int64)
    order = np.argsort(values)
    positions = np.searchsorted(values[order], arr.astype(np.int64))
    return order[positions].astype(np.int64), vmap


def _fitting_dtype(values: Sequence[int]) -> np.dtype:
    if not values:
        return np.dtype(np.uint8)
    lo, hi = min(values), max(values)
    candidates = (
        (np.uint8, np.uint16, np.uint32, np.uint64)
        if lo >= 0
        else (np.int8, np.int16, np.int32, np.int64)
    )
    for candidate in candidates:
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return np.dtype(candidate)
    raise ValueError(f"value_map values must fit in 64-bit integers, got {lo}..{hi}")


def classes_to_values(classes: Any, value_map: Sequence[int]) -> np.ndarray:
    """Write class indices back in the original label values.

    Parameters
    ----------
    classes : array_like
        Integer class indices ``0..K-1`` (e.g. a prediction).
    value_map : sequence of int
        ``value_map[i]`` is the original value of class ``i``, as returned by
        `semantic_targets`.

    Returns
    -------
    numpy.ndarray
        Same shape as ``classes``, in the smallest integer dtype holding every value of
        ``value_map`` (``uint8`` for ``(0, 255)``).

    Raises
    ------
    ValueError
        If ``classes`` is not an integer array or holds an index outside
        ``0..len(value_map)-1``.
    """
    arr = np.asarray(classes)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"classes must be an integer array, got dtype {arr.dtype}")
    vmap = [int(v) for v in value_map]
    if not vmap:
        raise ValueError(f"value_map must not be empty, got {tuple(value_map)}")
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= len(vmap):
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"classes must be in 0..{len(vmap) - 1} for a value_map of {len(vmap)} "
                f"values, got {bad}"
            )
    lut = np.asarray(vmap, dtype=_fitting_dtype(vmap))
    return lut[arr.astype(np.intp, copy=False)]


# --------------------------------------------------------------------------- instances


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..n (0 stays background), keeping the shape."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64, copy=False)
    if ids[0] != 0:
        inverse += 1
        return inverse, len(ids)
    return inverse, len(ids) - 1


def _touching(ids: np.ndarray) -> np.ndarray:
    """Object pixels within :data:`TOUCH_REACH` of a pixel of another object."""
    size = 2 * TOUCH_REACH + 1
    top = ndi.maximum_filter(ids, size=size, mode="constant", cval=0)
    above = int(ids.max()) + 1  # background never counts as "another object"
    lowest = np.where(ids > 0, ids, above)
    bottom = ndi.minimum_filter(lowest, size=size, mode="constant", cval=above)
    return (ids > 0) & ((top > ids) | (bottom < ids))


def _band_widths(area: np.ndarray, touch: float, dims: int) -> np.ndarray:
    """Per object id, its touching-border width in pixels: ``touch`` x its equivalent
    diameter (a disk's in 2D, a ball's in 3D), 0 where under :data:`MIN_BAND`."""
    diameter = 2 * np.sqrt(area / np.pi) if dims == 2 else np.cbrt(6 * area / np.pi)
    width = np.floor(touch * diameter)
    width[width < MIN_BAND] = 0
    width[0] = 0  # background
    return width


def _touch_band(ids: np.ndarray, n: int, area: np.ndarray, touch: float) -> np.ndarray:
    """Object pixels closer than ``touch`` x the object's equivalent diameter to where it
    touches another object (none for objects whose band is under :data:`MIN_BAND`)."""
    width = _band_widths(area, touch, ids.ndim)
    if n < 2 or not width.any():
        return np.zeros(ids.shape, bool)
    contact = _touching(ids)
    if not contact.any():
        return contact
    reach = ndi.distance_transform_edt(~contact)
    return (ids > 0) & (reach < width[ids])


def _instance_image(labels: np.ndarray, touch: float = 0.0) -> np.ndarray:
    """Background / interior / boundary classes of one 2D image or 3D volume."""
    foreground = labels > 0
    target = np.zeros(labels.shape, dtype=np.int64)
    if not foreground.any():
        return target
    boundary = find_boundaries(labels, mode="inner", connectivity=1)
    ids, n = _consecutive(labels)
    area = np.bincount(ids.ravel(), minlength=n + 1)
    if touch > 0:
        boundary |= _touch_band(ids, n, area, touch)
    target[foreground] = INTERIOR
    target[boundary] = BOUNDARY
    interior = np.bincount(ids[foreground & ~boundary], minlength=n + 1)
    small = (area <= SMALL_OBJECT_SIZE) | (interior == 0)
    small[0] = False
    if small.any():
        target[small[ids]] = INTERIOR
    return target


def instance_targets(labels: Any, spatial_dims: int = 2, touch: float = 0.0) -> np.ndarray:
    """Dense instance masks -> 3 classes: 0 background, 1 interior, 2 boundary.

    Parameters
    ----------
    labels : array_like
        Instance labels (each object its own id, 0 = background), non-negative
        integers.  Either one image of ``spatial_dims`` dimensions or a stack of them
        (``ndim == spatial_dims + 1``, stack axis first).
    spatial_dims : int
        2 or 3: the dimensionality of the model.  With 3, boundaries are 3D.
    touch : float
        Where objects touch (or face each other across a one-pixel gap), the
        boundary widens into each object by ``touch`` x its equivalent diameter (a
        band at least :data:`MIN_BAND` px wide, else only the one-pixel edge): a
        separation between large touching objects that a network can learn.  0: the
        one-pixel edge everywhere.

    Returns
    -------
    numpy.ndarray
        ``int64`` targets of the same shape.

    Raises
    ------
    ValueError
        If the labels are not a non-negative integer array, ``spatial_dims`` is not 2
        or 3, or the number of dimensions does not fit ``spatial_dims``.

    Notes
    -----
    The boundary is the object's own edge: object pixels with a face-connected
    neighbour of another value (``find_boundaries(mode="inner")``).  It also separates
    touching objects, so interiors become separable seeds.  An object of at most
    :data:`SMALL_OBJECT_SIZE` pixels, or one that would keep no interior pixel, is
    all interior so it still produces a seed.  The image border is not a boundary.

    In a stack, a slice without any object is *not labeled* and becomes
    :data:`IGNORE` (a stack may be annotated on a few slices only); a single image
    without objects is all background.
    """
    arr = _as_labels("labels", labels)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    stack = _check_spatial_dims(spatial_dims, arr.ndim, "labels")
    if not stack:
        return _instance_image(arr, touch)
    target = np.full(arr.shape, IGNORE, dtype=np.int64)
    for i, plane in enumerate(arr):
        if plane.any():
            target[i] = _instance_image(plane, touch)
    return target


PAINTED_BACKGROUND: int = 1
"""In ``sparse-instances`` labels: painted background; objects are 2, 3, ..."""


def sparse_instance_targets(labels: Any, spatial_dims: int = 2, touch: float = 0.0) -> np.ndarray:
    """A few outlined objects and painted background -> background / interior / boundary.

    Parameters
    ----------
    labels : array_like
        ``0`` = unlabeled (:data:`IGNORE` in the targets), ``1`` = painted background,
        ``2, 3, ...`` = one id per outlined object.  One image of ``spatial_dims``
        dimensions or a stack of them (stack axis first).
    spatial_dims : int
        2 or 3, the dimensionality of the model.
    touch : float
        Where outlined objects touch each other, the boundary widens as in
        :func:`instance_targets`; where an outlined object meets unlabeled pixels
        too (a neighbour may touch it there, unlabeled): with a few outlined cells
        that band is the only separation the network sees (on touching synthetic
        cells AP@0.5 0.54 with it, 0.43 with that band left out of the loss,
        0.006 without bands; docs/benchmarks.md).  Against painted background the
        edge stays one pixel.  0: the one-pixel edge everywhere.

    Returns
    -------
    numpy.ndarray
        ``int64`` targets of the same shape: IGNORE where unlabeled.

    Notes
    -----
    An object's boundary is its own edge against any other value, unlabeled pixels
    included: an outlined object is outlined whole in its plane.  In 3D, where objects
    are often drawn on a few slices only, a voxel is boundary along z only when the
    voxel above or below is labeled with another value: an unlabeled slice says
    nothing about where the object ends.
    """
    arr = _as_labels("labels", labels)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    stack = _check_spatial_dims(spatial_dims, arr.ndim, "labels")
    objects = np.where(arr > PAINTED_BACKGROUND, arr, 0)
    if spatial_dims == 2:
        planes = objects if stack else objects[None]
        target = np.stack([_instance_image(p, touch) for p in planes]).reshape(arr.shape)
    elif stack:
        target = np.stack(
            [_planar_instance_volume(o, a, touch) for o, a in zip(objects, arr, strict=True)]
        )
    else:
        target = _planar_instance_volume(objects, arr, touch)
    if touch > 0:
        planes = arr.reshape(-1, *arr.shape[-2:])
        flat = target.reshape(planes.shape)  # a view: updated in place
        for plane, out in zip(planes, flat, strict=True):
            unknown = _near_unlabeled(plane, touch)
            out[unknown & (out == INTERIOR)] = BOUNDARY
    target[arr == 0] = IGNORE
    return target


def _near_unlabeled(labels: np.ndarray, touch: float) -> np.ndarray:
    """Pixels of outlined objects (one 2D plane of ``sparse-instances`` labels) within
    their touching-border width of an unlabeled pixel."""
    objects = np.where(labels > PAINTED_BACKGROUND, labels, 0)
    unlabeled = labels == 0
    if not objects.any() or not unlabeled.any():
        return np.zeros(labels.shape, bool)
    ids, n = _consecutive(objects)
    width = _band_widths(np.bincount(ids.ravel(), minlength=n + 1), touch, 2)
    if not width.any():
        return np.zeros(labels.shape, bool)
    return (ids > 0) & (ndi.distance_transform_edt(~unlabeled) <= width[ids])


def _planar_instance_volume(
    objects: np.ndarray, labels: np.ndarray, touch: float = 0.0
) -> np.ndarray:
    """3D targets of objects drawn on some z slices: in-plane edges, and z edges only
    against labeled voxels of another value."""
    target = np.stack([_instance_image(plane, touch) for plane in objects])
    inside = objects > 0
    for shift in (1, -1):
        neighbour = np.roll(labels, shift, axis=0)
        if shift == 1:
            neighbour[0] = 0
        else:
            neighbour[-1] = 0
        edge = inside & (neighbour != 0) & (neighbour != labels)
        target[edge & (target == INTERIOR)] = BOUNDARY
    return target


# --------------------------------------------------------------------------- weight map


def _class_weights(foreground: np.ndarray) -> np.ndarray:
    """w_c: 0.5 / frequency of the pixel's class (foreground or background)."""
    weights = np.ones(foreground.shape, dtype=np.float64)
    frac = float(foreground.mean()) if foreground.size else 0.0
    if 0.0 < frac < 1.0:
        weights[foreground] = 0.5 / frac
        weights[~foreground] = 0.5 / (1.0 - frac)
    return weights


def _border_term(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels, 0 elsewhere."""
    term = np.zeros(labels.shape, dtype=np.float64)
    ids, n = _consecutive(labels)
    if n < 2 or w0 == 0:
        return term
    reach = int(np.ceil(_REACH * sigma))
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for k, box in enumerate(ndi.find_objects(ids), start=1):
        if box is None:
            continue
        window = tuple(
            slice(max(s.start - reach, 0), min(s.stop + reach, size))
            for s, size in zip(box, labels.shape, strict=True)
        )
        dist = ndi.distance_transform_edt(ids[window] != k)
        w1, w2 = d1[window], d2[window]  # views: updated in place
        np.minimum(w2, np.maximum(w1, dist), out=w2)
        np.minimum(w1, dist, out=w1)
    background = ids == 0
    total = d1[background] + d2[background]
    term[background] = w0 * np.exp(-(total**2) / (2.0 * sigma**2))
    return term


def _weight_image(labels: np.ndarray, w0: float, sigma: float, class_balance: bool) -> np.ndarray:
    foreground = labels > 0
    weights = _class_weights(foreground) if class_balance else np.ones(labels.shape)
    if foreground.any():
        weights += _border_term(labels, w0, sigma)
    return weights.astype(np.float32)


def border_weight_map(
    instances: Any,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_balance: bool = True,
    spatial_dims: int = 2,
) -> np.ndarray:
    """The U-Net paper's pixel weight map for the cross-entropy loss.

    ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))`` where ``d1`` and
    ``d2`` are the distances of a background pixel to the nearest and second-nearest
    object (Ronneberger et al. 2015, eq. 2).  The border term is large in the narrow
    background gaps between touching objects and 0 on objects.

    Parameters
    ----------
    instances : array_like
        Instance labels (0 = background), one image of ``spatial_dims`` dimensions or
        a stack of them (stack axis first, processed slice by slice).
    w0 : float
        Weight of the border term (paper: 10).
    sigma : float
        Width of the border term in pixels (paper: 5).
    class_balance : bool
        If True, ``w_c`` balances foreground and background: ``w_c = 0.5 / f`` on
        foreground and ``0.5 / (1 - f)`` on background, with ``f`` the foreground
        fraction of the image (or slice), so both classes carry half of the total
        weight and the mean of ``w_c`` over the image is exactly 1.  An image with
        only one class gets ``w_c = 1``.  If False, ``w_c = 1``.
    spatial_dims : int
        2 or 3.

    Returns
    -------
    numpy.ndarray
        ``float32`` weights, same shape as ``instances``.

    Raises
    ------
    ValueError
        For non-integer or negative labels, a non-positive ``sigma``, a negative
        ``w0``, or dimensions that do not fit ``spatial_dims``.

    Notes
    -----
    With fewer than 2 objects the border term is 0.  Distances are computed per
    object in a window around its bounding box reaching ``5.5 * sigma`` beyond it;
    where the second-nearest object is farther than that the border term is below
    ``1e-6 * w0`` and is set to 0.  ``w_c`` grows as ``1 / f``: a single tiny object
    in a large image gets very large weights.
    """
    arr = _as_labels("instances", instances)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not w0 >= 0:
        raise ValueError(f"w0 must be >= 0, got {w0}")
    stack = _check_spatial_dims(spatial_dims, arr.ndim, "instances")
    if not stack:
        return _weight_image(arr, float(w0), float(sigma), class_balance)
    if arr.shape[0] == 0:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.stack([_weight_image(plane, float(w0), float(sigma), class_balance) for plane in arr])

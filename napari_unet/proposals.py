"""Labeling with a model's help: its objects accepted into the user's labels, and where to
label next.

A *proposal* is one object of a model's instance labels.  Accepting it writes it into the
user's labels with the next free id (``instances``: 1, 2, ...; ``sparse-instances``: 2,
3, ..., 1 being painted background), or as painted background in ``sparse-instances``
(a false object the user rejects).  Nothing the user painted is ever overwritten: the
pixels of a proposal that are already labeled are left as they are and counted.  The
functions here only say *which* pixels get *which* value (a :class:`Placement`); the
caller writes them (the Annotate widget through napari's ``Labels.data_setitem``, so that
undo works).

*Where to label next*: :func:`uncertainty` is the normalised entropy of a model's class
probabilities (0 = sure, 1 = every class equally likely), and :func:`next_region` the
window of a given size with the highest mean uncertainty among those that hold no label yet.

No Qt, no napari, no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .targets import PAINTED_BACKGROUND

REGION_SIZE = 128
"""The side of the window :func:`next_region` looks for, in pixels (the Annotate widget's)."""

KINDS = ("instances", "sparse-instances")
"""The labels kinds that take proposals (one id per object)."""


@dataclass(frozen=True)
class Placement:
    """What accepting one proposal writes into the user's labels."""

    proposal: int
    """The proposal's id in the model's instance labels."""
    indices: tuple[np.ndarray, ...]
    """The pixels to write, one index array per axis of the whole labels array."""
    value: int
    """The label written there: a new object's id, or painted background."""
    skipped: int
    """The proposal's pixels that were labeled already and are left as they are."""

    @property
    def placed(self) -> int:
        return int(self.indices[0].size) if self.indices else 0


def first_object_id(kind: str) -> int:
    """The smallest object id of a labels kind (``sparse-instances`` keeps 1 for background)."""
    _check_kind(kind)
    return PAINTED_BACKGROUND + 1 if kind == "sparse-instances" else 1


def next_free_id(labels: np.ndarray, kind: str) -> int:
    """The id a new object gets: the largest id in ``labels`` + 1, at least the kind's first."""
    top = int(np.max(labels)) if np.size(labels) else 0
    return max(top + 1, first_object_id(kind))


def _aligned(labels: Any, proposals: Any, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` and ``proposals`` as arrays, checked: the same shape, a known kind."""
    labels, proposals = np.asarray(labels), np.asarray(proposals)
    _check_kind(kind)
    if labels.shape != proposals.shape:
        raise ValueError(
            f"proposals of shape {proposals.shape} do not match the labels' {labels.shape}"
        )
    return labels, proposals


def _in_stack(at: Sequence[int], pixels: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Indices of ``pixels`` of the slice at leading indices ``at`` in the whole array."""
    return tuple(np.full(pixels[0].size, int(i), dtype=np.intp) for i in at) + tuple(pixels)


def placement(
    labels: np.ndarray,
    proposals: np.ndarray,
    proposal: int,
    kind: str,
    *,
    background: bool = False,
    at: Sequence[int] = (),
    value: int | None = None,
) -> Placement:
    """The pixels and value that accept proposal ``proposal`` into ``labels``.

    ``labels`` and ``proposals`` are the same plane or volume (the slice in view of a
    stack: ``at`` gives the leading indices of that slice in the whole labels array, and
    they are prepended to the returned indices).  ``background=True`` rejects the proposal:
    its pixels become painted background (``sparse-instances`` only).  ``value`` overrides
    the new id.
    """
    labels, proposals = _aligned(labels, proposals, kind)
    if proposal <= 0:
        raise ValueError(f"proposal {proposal}: 0 is no object (ids start at 1)")
    if background and kind != "sparse-instances":
        raise ValueError(
            f"background: only sparse-instances labels paint background ({PAINTED_BACKGROUND}); "
            f"in {kind} labels 0 is background already"
        )
    mask = proposals == proposal
    if not mask.any():
        raise ValueError(f"proposal {proposal}: no such object in the proposals")
    free = mask & (labels == 0)
    if background:
        value = PAINTED_BACKGROUND
    elif value is None:
        value = next_free_id(labels, kind)
    return Placement(
        proposal=int(proposal),
        indices=_in_stack(at, np.nonzero(free)),
        value=int(value),
        skipped=int(mask.sum() - free.sum()),
    )


def proposals_in(proposals: np.ndarray, region: Sequence[slice] | None = None) -> list[int]:
    """The ids of the proposals with at least one pixel in ``region`` (all when None)."""
    view = np.asarray(proposals)[tuple(region)] if region is not None else np.asarray(proposals)
    return [int(i) for i in np.unique(view) if i > 0]


def placements(
    labels: np.ndarray,
    proposals: np.ndarray,
    kind: str,
    region: Sequence[slice] | None = None,
    *,
    at: Sequence[int] = (),
    first: int | None = None,
) -> list[Placement]:
    """Accept every proposal in ``region`` ("accept all in view"): one new id each from
    ``first`` (default: the next free id of ``labels``), in the order of their ids; a
    proposal whose pixels are all labeled already is left out.

    The same as :func:`placement` for each, in one pass over the image (a 2048² view holds
    hundreds of proposals: one mask per proposal would hold napari's thread for seconds).
    """
    labels, proposals = _aligned(labels, proposals, kind)
    next_id = next_free_id(labels, kind) if first is None else first
    ids = np.asarray(proposals_in(proposals, region), dtype=proposals.dtype)
    flat = proposals.ravel()
    where = np.flatnonzero(np.isin(flat, ids))  # every pixel of the chosen proposals
    order = np.argsort(flat[where], kind="stable")  # grouped by id, in pixel order
    where = where[order]
    owner = flat[where]
    free = labels.ravel()[where] == 0
    starts = np.searchsorted(owner, ids, side="left")
    ends = np.searchsorted(owner, ids, side="right")
    out = []
    for proposal, lo, hi in zip(ids.tolist(), starts.tolist(), ends.tolist(), strict=True):
        mine = where[lo:hi][free[lo:hi]]
        if not mine.size:
            continue
        pixels = _in_stack(at, np.unravel_index(mine, proposals.shape))
        out.append(Placement(int(proposal), pixels, next_id, int(hi - lo - mine.size)))
        next_id += 1
    return out


def merged(accepted: Sequence[Placement]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Several placements as one write: the indices of all their pixels and the value of
    each pixel (napari's ``data_setitem`` takes both: one undo step, one redraw)."""
    if not accepted:
        return (), np.zeros(0, dtype=np.int64)
    axes = len(accepted[0].indices)
    indices = tuple(np.concatenate([one.indices[a] for one in accepted]) for a in range(axes))
    values = np.repeat([one.value for one in accepted], [one.placed for one in accepted])
    return indices, values


def uncertainty(probs: np.ndarray) -> np.ndarray:
    """Normalised entropy of class probabilities ``(C, *spatial)``: 0 where one class has
    probability 1, 1 where all ``C`` classes are equally likely."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim < 2 or probs.shape[0] < 2:
        raise ValueError(
            f"probabilities of shape {probs.shape}: want (classes, ...) with 2 or more classes"
        )
    p = np.clip(probs, 1e-7, 1.0)
    entropy = -(p * np.log(p)).sum(axis=0)
    return np.clip(entropy / np.log(probs.shape[0]), 0.0, 1.0).astype(np.float32)


def next_region(
    uncertain: np.ndarray, labels: np.ndarray, size: int | Sequence[int]
) -> tuple[slice, ...] | None:
    """The window of ``size`` pixels (per axis) with the highest mean uncertainty among those
    that hold no label at all; None when every window holds one.

    Windows lie wholly inside the image (a window larger than the image is the image).
    """
    uncertain, labels = np.asarray(uncertain, dtype=np.float32), np.asarray(labels)
    if uncertain.shape != labels.shape:
        raise ValueError(
            f"uncertainty of shape {uncertain.shape} does not match the labels' {labels.shape}"
        )
    sizes = (size,) * uncertain.ndim if np.isscalar(size) else tuple(size)
    if len(sizes) != uncertain.ndim or min(sizes) < 1:
        raise ValueError(f"size {size}: want one positive size per axis of {uncertain.shape}")
    sizes = tuple(min(int(s), n) for s, n in zip(sizes, uncertain.shape, strict=True))
    # window means and "any label" with the window's first pixel at each position
    mean = ndi.uniform_filter(uncertain, sizes, mode="constant", origin=_first(sizes))
    labeled = ndi.maximum_filter(labels != 0, sizes, mode="constant", origin=_first(sizes))
    valid = tuple(slice(0, n - s + 1) for s, n in zip(sizes, uncertain.shape, strict=True))
    score = np.where(labeled[valid], -np.inf, mean[valid])
    if not np.isfinite(score).any():
        return None
    corner = np.unravel_index(int(np.argmax(score)), score.shape)
    return tuple(slice(int(c), int(c) + s) for c, s in zip(corner, sizes, strict=True))


def _first(sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The filter origin that puts a window's first pixel at the output position."""
    return tuple(-(s // 2) for s in sizes)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"labels kind {kind!r}: proposals go into {' or '.join(KINDS)} labels")

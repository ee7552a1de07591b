"""Which labeled pixels train and which validate: the train / validation split.

Whole images are held out when there are enough; on fewer, instance labels hold out
whole objects and blocks of (painted) background, a single densely labeled volume a
slab, sparse strokes spatial blocks (:func:`split_samples`).  What is held out never
enters the loss: it is what validation and the instance settings' calibration
(:mod:`napari_unet.calibrate`) are measured on (:func:`calibration_set`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage as ndi

from . import targets as tg
from .calibrate import Truth, object_sizes, truth_from_labels
from .config import INSTANCE_KINDS
from .targets import IGNORE

if TYPE_CHECKING:
    from .data import Prepared

MIN_IMAGES_FOR_HOLDOUT = 5


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Image-level train/validation split.

    With fewer than 5 labeled images nothing is held out (every stroke trains;
    validation then scores fixed crops of the training images).
    """
    if n < MIN_IMAGES_FOR_HOLDOUT or val_fraction <= 0:
        return list(range(n)), []
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return train, val


@dataclass
class Split:
    """Which labeled samples train and which validate, and with which targets.

    Image-level: whole samples are held out.  Block-level (sparse labels on too few
    images): spatial blocks of the labeled pixels are held out of every sample's
    training targets and make its validation targets.
    """

    train: list[int]
    val: list[int]
    train_targets: dict[int, np.ndarray]
    val_targets: dict[int, np.ndarray]
    description: str  # what validation scores are measured on, for the user


def split_samples(
    targets: Sequence[np.ndarray],
    kind: str,
    val_fraction: float,
    seed: int,
    block: int = 64,
    label_images: Sequence[np.ndarray] | None = None,
) -> Split:
    """Hold out validation data that training never sees.

    Whole images are held out when at least 5 are labeled, except for outlined objects
    (``sparse-instances`` with ``label_images``): an image holding a user's few
    corrections would teach nothing, so they always hold out objects.  With fewer:

    - instance labels (``instances``, ``sparse-instances``, with ``label_images``) hold
      out whole objects (:data:`HELD_OUT_OBJECTS` of them, at least one, when there are
      at least :data:`MIN_OBJECTS_FOR_HOLDOUT`) and blocks of about ``block`` pixels of
      the (painted) background: what calibrates the instance post-processing and counts
      its false positives;
    - ``sparse`` labels hold out spatial blocks holding about ``val_fraction`` of the
      labeled pixels (at least 10 %), never the last pixels of a class;
    - a single densely labeled volume (``instances``, ``semantic``) holds out a slab of
      whole z slices (:data:`HELD_OUT_SLAB`), for validation and calibration;
    - other ``semantic`` labels, and too few objects, hold out nothing: validation then
      scores the training labels, and says so.
    """
    labeled = [i for i, t in enumerate(targets) if (t != IGNORE).any()]
    train_pos, val_pos = split_indices(len(labeled), val_fraction, seed)
    whole = {i: targets[i] for i in labeled}
    outlined = kind == "sparse-instances" and label_images is not None
    if val_pos and not outlined:
        val = [labeled[i] for i in val_pos]
        return Split(
            [labeled[i] for i in train_pos], val, whole, whole, f"{len(val)} held-out image(s)"
        )
    same = f"the training labels ({len(labeled)} image(s): too few to hold any out)"
    slab = None
    if val_fraction > 0 and len(labeled) == 1 and kind in ("instances", "semantic"):
        slab = _held_out_slab(targets[labeled[0]], seed)
    if slab is not None:  # one densely labeled volume: a slab of it
        held, description = {labeled[0]: slab[0]}, slab[1]
    elif val_fraction <= 0 or kind == "semantic":
        return Split(labeled, labeled, whole, whole, same)
    elif kind in INSTANCE_KINDS:
        if label_images is None:
            return Split(labeled, labeled, whole, whole, same)
        held, description = _held_out_objects(
            {i: targets[i] for i in labeled},
            {i: np.asarray(label_images[i]) for i in labeled},
            kind,
            seed,
            block,
        )
        if not held:
            return Split(labeled, labeled, whole, whole, f"the training labels ({description})")
    else:
        held = _held_out_masks(
            {i: targets[i] for i in labeled}, max(val_fraction, 0.1), seed, block, kind
        )
        if not held:
            return Split(labeled, labeled, whole, whole, same)
    train_t, val_t = {}, {}
    for i in labeled:
        mask = held.get(i)
        train_t[i] = targets[i] if mask is None else np.where(mask, IGNORE, targets[i])
        if mask is not None:
            val_t[i] = np.where(mask, targets[i], IGNORE)
    if kind not in INSTANCE_KINDS and slab is None:
        n_val = sum(int((t != IGNORE).sum()) for t in val_t.values())
        n_all = sum(int((targets[i] != IGNORE).sum()) for i in labeled)
        share = 100 * n_val / n_all
        description = f"held-out blocks of the labels ({share:.0f} % of the labeled pixels)"
    return Split(
        [i for i in labeled if (train_t[i] != IGNORE).any()],
        sorted(val_t),
        train_t,
        val_t,
        description,
    )


HELD_OUT_SLAB = 0.2
"""The share of a single densely labeled volume's slices held out, as one slab."""


def _held_out_slab(target: np.ndarray, seed: int) -> tuple[np.ndarray, str] | None:
    """A slab of whole z slices (:data:`HELD_OUT_SLAB` of them, at the top or the bottom
    of the volume) holding labels, while labels remain outside it; None for a 2D sample
    or a volume too thin for both."""
    if target.ndim != 3 or target.shape[0] < 5:
        return None
    depth = target.shape[0]
    thick = max(1, int(depth * HELD_OUT_SLAB + 0.5))
    start = 0 if np.random.default_rng(seed).random() < 0.5 else depth - thick
    mask = np.zeros(target.shape, bool)
    mask[start : start + thick] = True
    labeled = target != tg.IGNORE
    if not (labeled & mask).any() or not (labeled & ~mask).any():
        return None
    return mask, f"a held-out slab of the volume (z {start}-{start + thick - 1} of {depth})"


MIN_OBJECTS_FOR_HOLDOUT = 4
"""Fewer labeled objects than this (on fewer than 5 images): none is held out."""
HELD_OUT_OBJECTS = 0.2
"""The share of the labeled objects held out (rounded, at least one)."""
HELD_OUT_BACKGROUND = 0.2
"""The share of the (painted) background pixels held out, in blocks."""


def instance_ids(labels: np.ndarray, kind: str) -> np.ndarray:
    """The object ids of an instance label image (``sparse-instances``: above the painted
    background value)."""
    ids = np.unique(labels)
    return ids[ids > (tg.PAINTED_BACKGROUND if kind == "sparse-instances" else 0)]


def _held_out_objects(
    targets: dict[int, np.ndarray],
    labels: dict[int, np.ndarray],
    kind: str,
    seed: int,
    block: int,
) -> tuple[dict[int, np.ndarray], str]:
    """Masks of held-out whole objects and background blocks per sample, and what they are.

    Without enough objects: no masks, and the description says why.
    """
    objects = [(i, int(v)) for i in sorted(labels) for v in instance_ids(labels[i], kind)]
    noun = "outlined objects" if kind == "sparse-instances" else "objects"
    if len(objects) < MIN_OBJECTS_FOR_HOLDOUT:
        return {}, (
            f"{len(objects)} {noun} on {len(labels)} image(s): too few to hold any out, "
            f"{MIN_OBJECTS_FOR_HOLDOUT} needed"
        )
    rng = np.random.default_rng(seed)
    k = max(1, int(len(objects) * HELD_OUT_OBJECTS + 0.5))
    chosen = [objects[j] for j in sorted(rng.choice(len(objects), k, replace=False).tolist())]
    masks: dict[int, np.ndarray] = {}
    for i, v in chosen:
        masks[i] = masks.get(i, np.zeros(labels[i].shape, bool)) | (labels[i] == v)
    painted = _background_value(kind)
    background = {i: (targets[i] == tg.BACKGROUND) & (labels[i] == painted) for i in targets}
    bg_masks = _background_blocks(background, HELD_OUT_BACKGROUND, rng, block)
    for i, m in bg_masks.items():
        masks[i] = masks.get(i, np.zeros(m.shape, bool)) | m
    n_bg = sum(int(m.sum()) for m in bg_masks.values())
    what = "painted background" if kind == "sparse-instances" else "background"
    held = noun if k > 1 else noun[:-1]
    description = f"{k} held-out {held} of {len(objects)}" + (
        f" + {n_bg:,} px of {what}" if n_bg else ""
    )
    return masks, description


def _background_value(kind: str) -> int:
    return tg.PAINTED_BACKGROUND if kind == "sparse-instances" else 0


def _background_blocks(
    background: dict[int, np.ndarray], fraction: float, rng: np.random.Generator, block: int
) -> dict[int, np.ndarray]:
    """Blocks of background pixels holding about ``fraction`` of them, never all."""
    blocks = []
    for i, bg in background.items():
        for idx in np.ndindex(*[-(-n // block) for n in bg.shape]):
            sl = tuple(slice(k * block, (k + 1) * block) for k in idx)
            count = int(bg[sl].sum())
            if count:
                blocks.append((i, sl, count))
    total = sum(c for _, _, c in blocks)
    masks: dict[int, np.ndarray] = {}
    if len(blocks) < 2:
        return masks
    held = 0
    for j in rng.permutation(len(blocks)).tolist():
        i, sl, count = blocks[j]
        if held + count >= total:
            continue  # keep some background to train on
        mask = masks.setdefault(i, np.zeros(background[i].shape, bool))
        mask[sl] |= background[i][sl]
        held += count
        if held >= fraction * total:
            break
    return masks


def _held_out_masks(
    targets: dict[int, np.ndarray], fraction: float, seed: int, block: int, kind: str
) -> dict[int, np.ndarray]:
    """Masks of the held-out pixels per sample (blocks, grown to whole objects)."""
    blocks = []  # (sample, slices, labeled pixels)
    for i, t in targets.items():
        for idx in np.ndindex(*[-(-n // block) for n in t.shape]):
            sl = tuple(slice(k * block, (k + 1) * block) for k in idx)
            count = int((t[sl] != IGNORE).sum())
            if count:
                blocks.append((i, sl, count))
    if len(blocks) < 2:
        return {}
    total = sum(c for _, _, c in blocks)
    remaining = _class_counts(targets.values())
    masks: dict[int, np.ndarray] = {}
    held = 0
    for k in np.random.default_rng(seed).permutation(len(blocks)):
        i, sl, _ = blocks[k]
        mask = np.zeros(targets[i].shape, bool)
        mask[sl] = True
        if kind == "sparse-instances":
            mask = _grow_to_objects(mask, targets[i])
        mask &= targets[i] != IGNORE
        if i in masks:
            mask &= ~masks[i]
        taken = _class_counts([targets[i][mask]])
        if any(remaining.get(c, 0) - n <= 0 for c, n in taken.items()):
            continue  # would leave training without a class
        for c, n in taken.items():
            remaining[c] -= n
        masks[i] = mask if i not in masks else masks[i] | mask
        held += int(mask.sum())
        if held >= fraction * total:
            break
    return masks


def _class_counts(arrays) -> dict[int, int]:
    counts: dict[int, int] = {}
    for a in arrays:
        values, n = np.unique(a[a != IGNORE], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist(), strict=True):
            counts[v] = counts.get(v, 0) + c
    return counts


def _grow_to_objects(mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The mask plus every object (interior + boundary component) it touches."""

    objects, _ = ndi.label((target == tg.INTERIOR) | (target == tg.BOUNDARY))
    touched = np.unique(objects[mask])
    touched = touched[touched > 0]
    return mask | np.isin(objects, touched)


CALIBRATION_PIXELS = 8_000_000  # at most this many pixels (voxels) are predicted to calibrate


@dataclass(frozen=True)
class CalibrationSet:
    """What chooses a model's instance post-processing: held-out images or objects."""

    images: list[np.ndarray]  # (C, *spatial), normalised; empty: nothing held out
    truths: list[Truth]
    sizes: np.ndarray  # of every labeled object (the size prior)
    measured_on: str  # for people: "2 held-out outlined objects of 6 + 31,000 px of ..."


def calibration_set(prepared: Prepared, split: Split, held_out: bool) -> CalibrationSet | None:
    """The held-out images (at most :data:`CALIBRATION_PIXELS`), or the images with held-out
    objects and background, restricted to those; none when nothing is held out."""
    if not prepared.labels.instances:
        return None
    kind = prepared.labels.kind
    sizes = object_sizes(
        [truth_from_labels(lab, kind) for lab in prepared.label_images], uncut=True
    )
    if not held_out:
        return CalibrationSet([], [], sizes, split.description)
    whole_images = split.val_targets is split.train_targets
    truths = {}
    for i in split.val:
        truth = truth_from_labels(prepared.label_images[i], kind)
        if not whole_images:  # only what was held out: objects and background
            held = split.val_targets[i] != tg.IGNORE
            labeled = held if truth.labeled is None else held & truth.labeled
            truth = Truth(objects=np.where(labeled, truth.objects, 0), labeled=labeled)
        if truth.objects.any() or not whole_images:
            truths[i] = truth
    chosen, pixels = [], 0
    for i in np.random.default_rng(0).permutation(sorted(truths)).tolist() if truths else []:
        size = prepared.label_images[i].size
        if chosen and pixels + size > CALIBRATION_PIXELS:
            continue
        chosen.append(i)
        pixels += size
    chosen.sort()
    images = [prepared.images[i] for i in chosen]
    where = f"{len(chosen)} held-out images" if whole_images else split.description
    return CalibrationSet(images, [truths[i] for i in chosen], sizes, where)

"""Which labeled pixels train and which validate: the train / validation split.

Whole images are held out when there are enough; on fewer, instance labels hold out
whole objects and blocks of (painted) background, a single densely labeled volume a
slab, sparse strokes spatial blocks (:func:`split_samples`).  What is held out never
enters the loss: it is what validation and the instance settings' calibration
(:mod:`napari_unet.calibrate`) are measured on (:func:`calibration_set`).

Images, objects and blocks are held out by a hash of what they are (the image's
content, the object's label, the block's place) against a fixed share, not by a random
draw over the current list: when labels are added and training continues from the
model (the correction loop), what was held out stays held out, and what the model
trained on is never held out later, which would let the calibration choose on
objects the network has learned.  Only the step from "too few to hold any out" to
holding out can hold out something trained on before.
"""

from __future__ import annotations

import hashlib
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


def sample_keys(images: Sequence[np.ndarray]) -> list[str]:
    """What identifies each sample across trainings: a hash of its shape and of about
    65,000 of its values (the images as prepared, at the model's scale)."""
    keys = []
    for image in images:
        a = np.ascontiguousarray(image)
        digest = hashlib.blake2b(repr((a.shape, a.dtype.str)).encode(), digest_size=12)
        digest.update(np.ascontiguousarray(a.ravel()[:: max(1, a.size // 65_536)]).tobytes())
        keys.append(digest.hexdigest())
    return keys


def unit(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``parts``, uniform over them: the stable
    draw that holds an image, an object or a block out."""
    digest = hashlib.blake2b(repr((seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _below(draws: Sequence[float], share: float) -> list[int]:
    """The positions whose draw is under ``share``; with none, the lowest draw's.  Adding
    draws never moves a position from above ``share`` (and not the lowest) to under it."""
    held = [j for j, u in enumerate(draws) if u < share]
    return held or ([int(np.argmin(draws))] if len(draws) else [])


def split_indices(
    n: int, val_fraction: float, seed: int, keys: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """Image-level train/validation split: an image validates when its draw
    (:func:`unit` of its key) is under ``val_fraction``; at least one validates, at
    least one trains.

    With fewer than 5 labeled images nothing is held out (every stroke trains;
    validation then scores fixed crops of the training images).
    """
    if n < MIN_IMAGES_FOR_HOLDOUT or val_fraction <= 0:
        return list(range(n)), []
    keys = [str(i) for i in range(n)] if keys is None else list(keys)
    draws = [unit(seed, "image", key) for key in keys]
    val = _below(draws, val_fraction)
    if len(val) == n:  # keep one to train on: the highest draw
        val.remove(int(np.argmax(draws)))
    train = [i for i in range(n) if i not in set(val)]
    return train, sorted(val)


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
    keys: Sequence[str] | None = None,
) -> Split:
    """Hold out validation data that training never sees.

    Whole images are held out when at least 5 are labeled, except for outlined objects
    (``sparse-instances`` with ``label_images``): an image holding a user's few
    corrections would teach nothing, so they always hold out objects.  With fewer:

    - instance labels (``instances``, ``sparse-instances``, with ``label_images``) hold
      out whole objects (about :data:`HELD_OUT_OBJECTS` of them, at least one, when there are
      at least :data:`MIN_OBJECTS_FOR_HOLDOUT`) and blocks of about ``block`` pixels of
      the (painted) background: what calibrates the instance post-processing and counts
      its false positives;
    - ``sparse`` labels hold out spatial blocks holding about ``val_fraction`` of the
      labeled pixels (at least 10 %), never the last pixels of a class;
    - a single densely labeled volume (``instances``, ``semantic``) holds out a slab of
      whole z slices (:data:`HELD_OUT_SLAB`), for validation and calibration;
    - other ``semantic`` labels, and too few objects, hold out nothing: validation then
      scores the training labels, and says so.

    ``keys`` identify the samples (:func:`sample_keys`; default: their positions): the
    same key, object and block are held out again in a later training.
    """
    keys = [str(i) for i in range(len(targets))] if keys is None else list(keys)
    labeled = [i for i, t in enumerate(targets) if (t != IGNORE).any()]
    train_pos, val_pos = split_indices(len(labeled), val_fraction, seed, [keys[i] for i in labeled])
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
            keys,
        )
        if not held:
            return Split(labeled, labeled, whole, whole, f"the training labels ({description})")
    else:
        held = _held_out_masks(
            {i: targets[i] for i in labeled}, max(val_fraction, 0.1), seed, block, kind, keys
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
"""The share of the labeled objects held out (by their draws; at least one)."""
HELD_OUT_BACKGROUND = 0.2
"""The share of the blocks of (painted) background held out (by their draws)."""


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
    keys: Sequence[str],
) -> tuple[dict[int, np.ndarray], str]:
    """Masks of held-out whole objects and background blocks per sample, and what they are.

    An object is held out when the draw of its sample's key and its label is under
    :data:`HELD_OUT_OBJECTS` (at least one is).  Without enough objects: no masks, and
    the description says why.
    """
    objects = [(i, int(v)) for i in sorted(labels) for v in instance_ids(labels[i], kind)]
    noun = "outlined objects" if kind == "sparse-instances" else "objects"
    if len(objects) < MIN_OBJECTS_FOR_HOLDOUT:
        return {}, (
            f"{len(objects)} {noun} on {len(labels)} image(s): too few to hold any out, "
            f"{MIN_OBJECTS_FOR_HOLDOUT} needed"
        )
    draws = [unit(seed, "object", keys[i], v) for i, v in objects]
    chosen = [objects[j] for j in _below(draws, HELD_OUT_OBJECTS)]
    masks: dict[int, np.ndarray] = {}
    for i, v in chosen:
        masks[i] = masks.get(i, np.zeros(labels[i].shape, bool)) | (labels[i] == v)
    painted = _background_value(kind)
    background = {i: (targets[i] == tg.BACKGROUND) & (labels[i] == painted) for i in targets}
    bg_masks = _background_blocks(background, seed, block, keys)
    for i, m in bg_masks.items():
        masks[i] = masks.get(i, np.zeros(m.shape, bool)) | m
    n_bg = sum(int(m.sum()) for m in bg_masks.values())
    what = "painted background" if kind == "sparse-instances" else "background"
    k = len(chosen)
    held = noun if k > 1 else noun[:-1]
    description = f"{k} held-out {held} of {len(objects)}" + (
        f" + {n_bg:,} px of {what}" if n_bg else ""
    )
    return masks, description


def _background_value(kind: str) -> int:
    return tg.PAINTED_BACKGROUND if kind == "sparse-instances" else 0


def _blocks(shape: tuple[int, ...], block: int):
    """The block grid's indices and slices over an array of ``shape``."""
    for idx in np.ndindex(*[-(-n // block) for n in shape]):
        yield idx, tuple(slice(k * block, (k + 1) * block) for k in idx)


def _background_blocks(
    background: dict[int, np.ndarray], seed: int, block: int, keys: Sequence[str]
) -> dict[int, np.ndarray]:
    """The background pixels of the blocks whose draw is under
    :data:`HELD_OUT_BACKGROUND`, never all of them (the highest draw then trains)."""
    blocks = []  # (draw, sample, slices)
    for i, bg in background.items():
        for idx, sl in _blocks(bg.shape, block):
            if bg[sl].any():
                blocks.append((unit(seed, "background", keys[i], idx), i, sl))
    masks: dict[int, np.ndarray] = {}
    if len(blocks) < 2:
        return masks
    held = [b for b in blocks if b[0] < HELD_OUT_BACKGROUND]
    if len(held) == len(blocks):
        held.remove(max(blocks, key=lambda b: b[0]))
    for _, i, sl in held:
        mask = masks.setdefault(i, np.zeros(background[i].shape, bool))
        mask[sl] |= background[i][sl]
    return masks


def _held_out_masks(
    targets: dict[int, np.ndarray],
    fraction: float,
    seed: int,
    block: int,
    kind: str,
    keys: Sequence[str],
) -> dict[int, np.ndarray]:
    """Masks of the held-out pixels per sample: blocks (grown to whole objects) in the
    order of their draws until they hold ``fraction`` of the labeled pixels, skipping a
    block that would leave training without a class.  The order is fixed, so more
    strokes move the cut only a little (blocks just past it can change sides)."""
    blocks = []  # (draw, sample, slices)
    for i, t in targets.items():
        for idx, sl in _blocks(t.shape, block):
            if (t[sl] != IGNORE).any():
                blocks.append((unit(seed, "block", keys[i], idx), i, sl))
    if len(blocks) < 2:
        return {}
    total = sum(int((t != IGNORE).sum()) for t in targets.values())
    remaining = _class_counts(targets.values())
    masks: dict[int, np.ndarray] = {}
    held = 0
    for _, i, sl in sorted(blocks, key=lambda b: b[0]):
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

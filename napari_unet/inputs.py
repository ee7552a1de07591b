"""Checks of training data, shared by the engine, the CLI and the widgets.

Every check names what it is given to name: the CLI passes file paths, the
widgets layer names, the Python API ``image 0`` / ``labels 0``.  numpy only (no
torch), so the CLI refuses bad files before it pays for importing torch.

:func:`check_training_data` runs them all; :func:`napari_unet.data.prepare`
calls it, so a training started anywhere gets the same checks and messages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import LABELS_KINDS

log = logging.getLogger(__name__)

MAX_CLASSES = 256
INSTANCES_HINT = (
    "instance masks? use the instances labels kind (--labels-kind instances; "
    "sparse-instances for a few outlined objects)"
)


@dataclass(frozen=True)
class Names:
    """How errors name the training data and the model it trains."""

    pairs: Sequence[tuple[str, str]]  # (image, labels) per pair
    labels: str = "the labels"  # all label images at once
    model: str = "the model"

    @classmethod
    def default(cls, n: int) -> Names:
        return cls([(f"image {i}", f"labels {i}") for i in range(n)])


@dataclass(frozen=True)
class Continued:
    """What a model being trained further fixes: its channels and classes."""

    in_channels: int
    class_names: Sequence[str]
    value_map: Sequence[int] | None = None


def channels_of(image_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> int | None:
    """Channels of an image with labels of ``labels_shape``: the same shape (1 channel) or
    one extra axis first or last; None when the shapes do not fit."""
    if image_shape == labels_shape:
        return 1
    if len(image_shape) == len(labels_shape) + 1:
        if image_shape[1:] == labels_shape:
            return image_shape[0]
        if image_shape[:-1] == labels_shape:
            return image_shape[-1]
    return None


def check_labels(labels: np.ndarray, spatial_dims: int, name: str) -> None:
    """Integers >= 0, with ``spatial_dims`` dimensions or one more (a stack)."""
    if labels.dtype.kind not in "biu":
        raise ValueError(f"{name}: labels must be integers, got {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError(f"{name}: label values must be >= 0, found {labels.min()}")
    if labels.ndim not in (spatial_dims, spatial_dims + 1):
        raise ValueError(
            f"{name}: label image of shape {labels.shape}; a {spatial_dims}D model trains on "
            f"{spatial_dims}D label images or stacks of them ({spatial_dims + 1} dimensions)"
        )


def check_image(image: np.ndarray, labels_shape: tuple[int, ...], names: tuple[str, str]) -> int:
    """A numeric image that fits its labels (an extra channel axis first or last is allowed);
    returns its channels.  NaN / Inf pixels are a warning, an image of nothing else an error."""
    image_name, labels_name = names
    channels = channels_of(tuple(image.shape), tuple(labels_shape))
    if channels is None:
        raise ValueError(
            f"{image_name} has shape {tuple(image.shape)} but {labels_name} has shape "
            f"{tuple(labels_shape)} (the image may have one extra channel axis, first or last)"
        )
    if image.dtype.kind not in "biuf":
        raise ValueError(f"{image_name}: images must be numeric, got {image.dtype}")
    if image.dtype.kind == "f":
        bad = int(image.size - np.count_nonzero(np.isfinite(image)))
        if bad == image.size:
            raise ValueError(f"{image_name}: no finite pixel value (all NaN or Inf)")
        if bad:
            log.warning("%s: %d NaN or Inf pixel(s), set to 0 after normalisation", image_name, bad)
    return channels


def check_channels(
    channels: Sequence[int], names: Names, continued: Continued | None = None
) -> None:
    """All images have the same channels, and those of the model being continued."""
    for i, c in enumerate(channels):
        image_name = names.pairs[i][0]
        if continued is not None and c != continued.in_channels:
            raise ValueError(
                f"{image_name} has {c} channel(s) but {names.model} takes {continued.in_channels}"
            )
        if c != channels[0]:
            raise ValueError(
                f"{image_name} has {c} channel(s) but {names.pairs[0][0]} has {channels[0]}; "
                "all training images need the same channels"
            )


def check_classes(
    labels: Sequence[np.ndarray],
    kind: str,
    names: Names,
    class_names: Sequence[str] | None = None,
    continued: Continued | None = None,
) -> None:
    """Refuse labels that cannot train anything: nothing painted, one class only, more
    classes than named (or than the model being continued has), values it does not know."""
    if kind not in LABELS_KINDS:
        raise ValueError(f"labels_kind must be one of {', '.join(LABELS_KINDS)}, got {kind!r}")
    values = [np.unique(lab) for lab in labels]
    everything = np.unique(np.concatenate(values)) if values else np.zeros(0, np.int64)
    nonzero = everything[everything != 0]
    if kind == "sparse":
        _check_sparse(values, nonzero, names, class_names, continued)
    elif kind == "semantic":
        _check_semantic(values, everything, names, continued)
    elif kind == "sparse-instances":
        _check_sparse_instances(everything, names, continued)
    elif continued is None and nonzero.size == 0:
        raise ValueError(
            f"{names.labels}: no object in any label image (all 0); instance masks need "
            "objects numbered 1, 2, ... on background 0"
        )


def _check_sparse(values, nonzero, names: Names, class_names, continued) -> None:
    if nonzero.size == 0:
        raise ValueError(
            f"{names.labels}: nothing is painted (no labeled pixel: every label image is 0, "
            "unlabeled, everywhere); paint at least two classes (1, 2, ...)"
        )
    if continued is not None:
        class_names = continued.class_names
    limit = len(class_names) if class_names else MAX_CLASSES
    for (_, labels_name), vals in zip(names.pairs, values, strict=True):
        top = int(vals.max())
        if top <= limit:
            continue
        if class_names:
            of = f" of {names.model}" if continued is not None else ""
            raise ValueError(
                f"{labels_name}: label value {top} is above the {limit} classes{of} "
                f"({', '.join(class_names)})"
            )
        raise ValueError(
            f"{labels_name}: label value {top} would make {top} classes (sparse labels paint "
            f"classes 1..K, K <= {MAX_CLASSES}); {INSTANCES_HINT}"
        )
    if continued is None and nonzero.size == 1:
        raise ValueError(
            f"{names.labels}: only one class is painted (value {int(nonzero[0])}); paint at "
            "least two, e.g. 1 = background and 2 = cell"
        )


def _check_sparse_instances(everything, names: Names, continued) -> None:
    objects = everything[everything >= 2]
    if objects.size == 0 and (continued is None or 1 not in everything):
        raise ValueError(
            f"{names.labels}: no object outlined; sparse-instances labels are 0 = unlabeled, "
            "1 = painted background, 2, 3, ... = one id per object"
        )
    if continued is None and 1 not in everything:
        raise ValueError(
            f"{names.labels}: no background painted; paint some background around the "
            "outlined objects with label 1 (0 stays unlabeled)"
        )


def _check_semantic(values, everything, names: Names, continued) -> None:
    if continued is not None and continued.value_map is not None:
        known = set(continued.value_map)
        for (_, labels_name), vals in zip(names.pairs, values, strict=True):
            extra = sorted(int(v) for v in set(vals.tolist()) - known)
            if extra:
                raise ValueError(
                    f"{labels_name}: label values {extra[:5]} are not among the classes of "
                    f"{names.model} (values {list(continued.value_map)})"
                )
    elif everything.size < 2:
        only = int(everything[0]) if everything.size else 0
        raise ValueError(
            f"{names.labels}: semantic labels need at least 2 distinct values; every label "
            f"image holds only {only}"
        )
    elif everything.size > MAX_CLASSES:
        raise ValueError(
            f"{names.labels}: {everything.size} distinct label values, more than "
            f"{MAX_CLASSES} classes; {INSTANCES_HINT}"
        )


def check_training_data(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    kind: str,
    spatial_dims: int = 2,
    names: Names | None = None,
    class_names: Sequence[str] | None = None,
    continued: Continued | None = None,
) -> list[int]:
    """Every check of a training set, in the order a user fixes things; the channels
    of each image.

    Parameters
    ----------
    images, labels
        The pairs, as numpy arrays.
    kind
        One of :data:`~napari_unet.config.LABELS_KINDS`.
    spatial_dims
        2 or 3, of the model to train.
    names
        How errors name the pairs, all the labels, and the model.
    class_names
        Classes named by the user (sparse labels): painted values above them are refused.
    continued
        The model being trained further, whose channels and classes the data must have.
    """
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} label images")
    if not images:
        raise ValueError("no training images were given")
    names = names or Names.default(len(images))
    if len(names.pairs) != len(images):
        raise ValueError(f"got {len(names.pairs)} names for {len(images)} training pairs")
    channels = []
    for image, lab, pair in zip(images, labels, names.pairs, strict=True):
        check_labels(lab, spatial_dims, pair[1])
        channels.append(check_image(image, lab.shape, pair))
    check_channels(channels, names, continued)
    check_classes(labels, kind, names, class_names, continued)
    return channels

"""Labels to targets for training, normalisation, random patch sampling (the train /
validation split: :mod:`napari_unet.holdout`).

Images live on the training device as padded tensors; a batch is cut with
plain slicing (no per-pixel Python, no per-sample scipy), so sampling keeps
up with a GPU.  Patch centres are biased towards labeled pixels: with
probability ``labeled_fraction`` a centre is drawn from the pixels of one
class picked uniformly among those present, so sparse strokes covering 1 %
of an image still fill most batches and rare classes are not starved.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.transform import resize

from . import targets as tg
from .config import INSTANCE_KINDS, LabelsConfig, NormConfig
from .inputs import Continued, Names, check_training_data
from .store import content_hash
from .targets import IGNORE
from .zoom import training_scale

log = logging.getLogger(__name__)

_MAX_PERCENTILE_SAMPLES = 2_000_000
_MAX_CENTRES_PER_CLASS = 20_000


def percentiles(image: np.ndarray, norm: NormConfig) -> tuple[float, float]:
    """Low and high percentiles of an image (on a subsample when it is large)."""
    flat = np.asarray(image).reshape(-1)
    if flat.size > _MAX_PERCENTILE_SAMPLES:
        step = flat.size // _MAX_PERCENTILE_SAMPLES + 1
        flat = flat[::step]
    flat = flat.astype(np.float32, copy=False)
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        raise ValueError("image has no finite pixel values (all NaN or Inf)")
    lo, hi = np.percentile(finite, [norm.low, norm.high])
    return float(lo), float(hi)


def normalize(image: np.ndarray, norm: NormConfig, channel_axis: int | None = None) -> np.ndarray:
    """Percentile-normalise to float32: p_low -> 0, p_high -> 1, per channel.

    NaN and Inf pixels become 0.  A constant image becomes all zeros.
    """
    image = np.asarray(image)
    if channel_axis is not None:
        chans = [
            normalize(np.take(image, c, axis=channel_axis), norm)
            for c in range(image.shape[channel_axis])
        ]
        return np.stack(chans, axis=channel_axis)
    lo, hi = percentiles(image, norm)
    scale = hi - lo
    if scale <= 0:
        scale = max(abs(hi), 1.0)
    out = (image.astype(np.float32) - np.float32(lo)) / np.float32(scale)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class _Item:
    image: torch.Tensor  # (C, *padded)
    target: torch.Tensor  # (*padded) int16 (int64 for > 32767 classes)
    weight: torch.Tensor | None
    shape: tuple[int, ...]  # unpadded spatial shape
    centres: list[np.ndarray]  # per class: flat indices into the unpadded image


class PatchSampler:
    """Random crops (with augmentation margin) from images of any sizes.

    Parameters
    ----------
    images
        Normalised float32 arrays, (C, *spatial) each.
    targets
        int64 arrays (*spatial), ``IGNORE`` where unlabeled.
    weights
        Optional per-pixel loss weights, same shapes as ``targets``.
    crop
        Edge of the crops returned (patch plus augmentation margin).
    num_classes
        Number of classes in the targets.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        weights: Sequence[np.ndarray] | None,
        crop: int,
        num_classes: int,
        device: torch.device,
        labeled_fraction: float = 0.67,
        seed: int = 0,
    ) -> None:
        if len(images) == 0:
            raise ValueError("no training images were given")
        self.crop = crop
        self.device = device
        self.num_classes = num_classes
        self.labeled_fraction = labeled_fraction
        self.rng = np.random.default_rng(seed)
        self.items: list[_Item] = []
        dims = images[0].ndim - 1
        self.spatial_dims = dims
        half = crop // 2 + 1
        # targets are stored small (int16) and widened per batch
        tdtype = np.int16 if num_classes < 2**15 else np.int64
        for i, (img, tgt) in enumerate(zip(images, targets, strict=True)):
            shape = tuple(tgt.shape)
            pads = [(half, half) for _ in shape]
            img_p = np.pad(img, [(0, 0), *pads], mode="symmetric")
            tgt_p = np.pad(tgt, pads, mode="constant", constant_values=IGNORE)
            w_t = None
            if weights is not None:
                w_p = np.pad(weights[i], pads, mode="constant", constant_values=0)
                w_t = torch.from_numpy(np.ascontiguousarray(w_p, dtype=np.float32)).to(device)
            centres = []
            flat = tgt.reshape(-1)
            for k in range(num_classes):
                idx = np.flatnonzero(flat == k)
                if idx.size > _MAX_CENTRES_PER_CLASS:
                    idx = self.rng.choice(idx, _MAX_CENTRES_PER_CLASS, replace=False)
                centres.append(idx.astype(np.int64))
            self.items.append(
                _Item(
                    image=torch.from_numpy(np.ascontiguousarray(img_p, dtype=np.float32)).to(
                        device
                    ),
                    target=torch.from_numpy(np.ascontiguousarray(tgt_p, dtype=tdtype)).to(device),
                    weight=w_t,
                    shape=shape,
                    centres=centres,
                )
            )
        self.labeled = [i for i, it in enumerate(self.items) if any(c.size for c in it.centres)]
        if not self.labeled:
            raise ValueError("the labels contain no labeled pixel (everything is 0 / unlabeled)")
        # sample images in proportion to their labeled area, at least a little each
        area = np.array([sum(c.size for c in self.items[i].centres) for i in self.labeled], float)
        self.p_image = np.sqrt(area) / np.sqrt(area).sum()

    def _centre(self, item: _Item) -> tuple[int, ...]:
        present = [c for c in item.centres if c.size]
        if present and self.rng.random() < self.labeled_fraction:
            cls = present[self.rng.integers(len(present))]
            return tuple(
                int(v) for v in np.unravel_index(cls[self.rng.integers(cls.size)], item.shape)
            )
        return tuple(int(self.rng.integers(s)) for s in item.shape)

    def sample(
        self, batch_size: int, part: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A batch of crops: image (N, C, *crop), target (N, *crop), weight or None.

        ``part``: only these crops of the batch are cut (one rank's share of a global
        batch); the random draws are those of the whole batch, the same on every rank.
        """
        imgs, tgts, wts = [], [], []
        wanted = range(batch_size)[part] if part is not None else range(batch_size)
        for i in range(batch_size):
            item = self.items[self.labeled[self.rng.choice(len(self.labeled), p=self.p_image)]]
            centre = self._centre(item)
            if i not in wanted:
                continue
            # padded offset is crop//2 + 1, the crop starts crop//2 before the centre
            sl = tuple(slice(c + 1, c + 1 + self.crop) for c in centre)
            imgs.append(item.image[(slice(None), *sl)])
            tgts.append(item.target[sl])
            if item.weight is not None:
                wts.append(item.weight[sl])
        image = torch.stack(imgs)
        target = torch.stack(tgts).to(torch.int64)
        weight = torch.stack(wts) if wts else None
        return image, target, weight

    def fixed_batches(
        self, n: int, batch_size: int, seed: int = 1234
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Deterministic crops for validation (the same every time)."""
        saved = self.rng
        self.rng = np.random.default_rng(seed)
        try:
            out = []
            remaining = n
            while remaining > 0:
                b = min(batch_size, remaining)
                out.append(self.sample(b))
                remaining -= b
            return out
        finally:
            self.rng = saved


# --------------------------------------------------------------------------- labels

INSTANCE_CLASSES = ("background", "interior", "boundary")


@dataclass
class Prepared:
    """Training images and targets, normalised and split into 2D/3D samples."""

    images: list[np.ndarray]  # (C, *spatial) float32
    targets: list[np.ndarray]  # (*spatial) int64, IGNORE where unlabeled
    weights: list[np.ndarray] | None
    labels: LabelsConfig
    in_channels: int
    provenance: list[dict[str, Any]]
    label_images: list[np.ndarray] = field(default_factory=list)  # per sample, at ``scale``
    scale: float = 1.0  # the images and labels were resized by it
    z_scale: float = 1.0  # volumes: resized by it along z (near-isotropic voxels)


def as_list(x: Any) -> list[Any]:
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not isinstance(x, list | tuple):
        return [x]
    return list(x)


def _channel_first(image: np.ndarray, labels_shape: tuple[int, ...]) -> np.ndarray:
    """The image as (C, *labels_shape); its shape was checked by :mod:`napari_unet.inputs`."""
    if image.shape == labels_shape:
        return image[None]
    return image if image.shape[1:] == labels_shape else np.moveaxis(image, -1, 0)


def labels_config(
    labels: Sequence[np.ndarray],
    kind: str,
    class_names: Sequence[str] | None = None,
    value_map: Sequence[int] | None = None,
) -> LabelsConfig:
    """The classes a training set defines (names, and the values of semantic labels)."""
    if kind in INSTANCE_KINDS:
        return LabelsConfig(kind=kind, class_names=tuple(class_names or INSTANCE_CLASSES))
    if kind == "semantic":
        if value_map is None:
            value_map = sorted(set().union(*(np.unique(lab).tolist() for lab in labels)))
        vmap = tuple(int(v) for v in value_map)
        names = tuple(class_names) if class_names else tuple(f"class {v}" for v in vmap)
        return LabelsConfig(kind=kind, class_names=names, value_map=vmap)
    if class_names:
        return LabelsConfig(kind=kind, class_names=tuple(class_names))
    n = max(max(int(lab.max()) if lab.size else 0 for lab in labels), 2)
    names = ("background", "cell") if n == 2 else tuple(f"class {k}" for k in range(1, n + 1))
    return LabelsConfig(kind=kind, class_names=names)


def resized_pair(
    image: np.ndarray, labels: np.ndarray, scale: float | tuple[float, ...], kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """A normalised ``(C, *spatial)`` image and its labels resized by ``scale`` in their
    last two axes (or by one factor per last axis, a tuple: ``(z_scale, 1, 1)`` for a
    volume): the image linearly (anti-aliased when shrinking, as prediction does), the
    labels by nearest neighbour.  Shrinking sparse labels keeps thin strokes: a pixel
    that comes out unlabeled takes the largest label within ``1 / scale`` pixels of it."""
    factors = (scale, scale) if np.isscalar(scale) else tuple(scale)
    if all(f == 1.0 for f in factors):
        return image, labels
    n = len(factors)
    new = tuple(max(1, round(s * f)) for s, f in zip(labels.shape[-n:], factors, strict=True))
    img = resize(
        image,
        (*image.shape[:-n], *new),
        order=1,
        anti_aliasing=min(factors) < 1,
        preserve_range=True,
    ).astype(np.float32)

    def nearest(array: np.ndarray) -> np.ndarray:
        out = resize(array, (*array.shape[:-n], *new), order=0, preserve_range=True)
        return out.astype(array.dtype)

    lab = nearest(labels)
    if kind in ("sparse", "sparse-instances") and min(factors) < 1:
        k = tuple(math.ceil(1 / f) if f < 1 else 1 for f in factors)
        grown = nearest(ndi.maximum_filter(labels, size=(1,) * (labels.ndim - n) + k))
        lab = np.where(lab == 0, grown, lab)
    return img, lab


def _targets(
    lab: np.ndarray, cfg: LabelsConfig, spatial_dims: int, touch: float = 0.0
) -> np.ndarray:
    if cfg.kind == "instances":
        tgt = tg.instance_targets(lab, spatial_dims=spatial_dims, touch=touch)
    elif cfg.kind == "sparse-instances":
        tgt = tg.sparse_instance_targets(lab, spatial_dims=spatial_dims, touch=touch)
    elif cfg.kind == "semantic":
        tgt, _ = tg.semantic_targets(lab, value_map=cfg.value_map)
    else:
        tgt = tg.sparse_targets(lab, num_classes=len(cfg.class_names))
    return tgt.astype(np.int16 if len(cfg.class_names) < 2**15 else np.int64)


def prepare(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    labels_kind: str,
    spatial_dims: int = 2,
    class_names: Sequence[str] | None = None,
    value_map: Sequence[int] | None = None,
    norm: NormConfig | None = None,
    border_weights: bool = False,
    names: Names | None = None,
    continued: Continued | None = None,
    touch: float = 0.0,
    scale: float | None = 1.0,
    z_scale: float = 1.0,
) -> Prepared:
    """Turn user images and label images into normalised arrays and class targets.

    ``touch``: the touching-border width of instance targets, a fraction of each
    object's diameter (:func:`napari_unet.targets.instance_targets`).  ``scale``:
    images and labels are resized by it (:func:`resized_pair`) before the targets are
    drawn; None: chosen from the labeled objects' width
    (:func:`napari_unet.zoom.training_scale`).  ``Prepared.scale`` says which.
    ``z_scale`` (3D networks): volumes are resized along z by it, and only z
    (near-isotropic voxels, :func:`napari_unet.zoom.z_scale_for`).

    The data is first checked by :func:`napari_unet.inputs.check_training_data`
    (errors name the pairs as ``names`` says); ``continued`` is the model being
    trained further, whose channels and classes the data must have.
    """
    norm = norm or NormConfig()
    imgs, labs = as_list(images), [np.asarray(lab) for lab in as_list(labels)]
    imgs = [np.asarray(img) for img in imgs]
    if border_weights and labels_kind != "instances":
        raise ValueError("border_weights needs instance labels (labels_kind='instances')")
    channels = check_training_data(
        imgs, labs, labels_kind, spatial_dims, names, class_names, continued
    )
    cfg = labels_config(labs, labels_kind, class_names, value_map)
    if scale is None:
        scale = training_scale(labs, labels_kind, spatial_dims)
    if spatial_dims == 2 and z_scale != 1.0:
        raise ValueError(f"z_scale {z_scale:g}: only volumes (a 3D network) are resized along z")
    factors = (z_scale, 1.0, 1.0) if spatial_dims == 3 else scale
    out = Prepared(
        images=[],
        targets=[],
        weights=[] if border_weights else None,
        labels=cfg,
        in_channels=channels[0],
        provenance=[],
    )

    def one(pair: tuple[np.ndarray, np.ndarray]) -> tuple:
        img, lab = pair
        img = _channel_first(img, lab.shape)
        hashes = {"image": content_hash(img), "labels": content_hash(lab), "shape": list(lab.shape)}
        nimg, lab = resized_pair(normalize(img, norm, channel_axis=0), lab, factors, labels_kind)
        w = tg.border_weight_map(lab, spatial_dims=spatial_dims) if border_weights else None
        tgt = _targets(lab, cfg, spatial_dims, touch)
        return hashes, nimg, tgt, w, lab

    # numpy, scipy and scikit-image release the GIL in most of this: one thread per core
    workers = min(len(imgs), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(one, zip(imgs, labs, strict=True)))
    out.scale, out.z_scale = scale, z_scale
    for hashes, nimg, tgt, w, lab in done:
        out.provenance.append(hashes)
        stack = lab.ndim == spatial_dims + 1  # a stack of 2D slices for a 2D model
        for z in range(lab.shape[0]) if stack else [None]:
            at = (slice(None), z) if stack else (slice(None),)
            out.images.append(nimg[at])
            out.targets.append(tgt[z] if stack else tgt)
            out.label_images.append(lab[z] if stack else lab)
            if w is not None:
                out.weights.append(w[z] if stack else w)
    return out

"""Labels to targets for training, normalisation, random patch sampling, the split.

Images live on the training device as padded tensors; a batch is cut with
plain slicing (no per-pixel Python, no per-sample scipy), so sampling keeps
up with a GPU.  Patch centres are biased towards labeled pixels: with
probability ``labeled_fraction`` a centre is drawn from the pixels of one
class picked uniformly among those present, so sparse strokes covering 1 %
of an image still fill most batches and rare classes are not starved.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import targets as tg
from .config import LabelsConfig, NormConfig
from .store import content_hash
from .targets import IGNORE

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

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A batch of crops: image (N, C, *crop), target (N, *crop), weight or None."""
        imgs, tgts, wts = [], [], []
        for _ in range(batch_size):
            item = self.items[self.labeled[self.rng.choice(len(self.labeled), p=self.p_image)]]
            centre = self._centre(item)
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


def _as_list(x: Any) -> list[Any]:
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not isinstance(x, list | tuple):
        return [x]
    return list(x)


def _channel_first(image: np.ndarray, labels_shape: tuple[int, ...], index: int) -> np.ndarray:
    """Return the image as (C, *labels_shape), finding its channel axis by shape."""
    if image.shape == labels_shape:
        return image[None]
    if image.ndim == len(labels_shape) + 1:
        if image.shape[1:] == labels_shape:
            return image
        if image.shape[:-1] == labels_shape:
            return np.moveaxis(image, -1, 0)
    raise ValueError(
        f"image {index} has shape {image.shape} but its labels have shape {labels_shape}: "
        f"they must match (an extra channel axis first or last is allowed)"
    )


def prepare(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    labels_kind: str,
    spatial_dims: int = 2,
    class_names: Sequence[str] | None = None,
    value_map: Sequence[int] | None = None,
    norm: NormConfig | None = None,
    border_weights: bool = False,
) -> Prepared:
    """Turn user images and label images into normalised arrays and class targets."""
    norm = norm or NormConfig()
    imgs, labs = _as_list(images), _as_list(labels)
    if len(imgs) != len(labs):
        raise ValueError(f"got {len(imgs)} images but {len(labs)} label images")
    if not imgs:
        raise ValueError("no training images were given")
    if labels_kind not in ("sparse", "semantic", "instances"):
        raise ValueError(f"labels_kind must be sparse, semantic or instances, got {labels_kind!r}")
    labs = [np.asarray(lab) for lab in labs]
    for i, lab in enumerate(labs):
        if lab.dtype.kind not in "biu":
            raise ValueError(f"labels {i} must be integers, got dtype {lab.dtype}")
        if lab.ndim not in (spatial_dims, spatial_dims + 1):
            raise ValueError(
                f"labels {i} have {lab.ndim} dimensions; a {spatial_dims}D model trains on "
                f"{spatial_dims}D labels or stacks of them"
            )
    # classes
    if labels_kind == "instances":
        names = tuple(class_names) if class_names else INSTANCE_CLASSES
        vmap = None
    elif labels_kind == "semantic":
        values = sorted(set().union(*(np.unique(lab).tolist() for lab in labs)))
        if value_map is None:
            value_map = values
        vmap = tuple(int(v) for v in value_map)
        missing = sorted(set(values) - set(vmap))
        if missing:
            raise ValueError(f"label values {missing[:10]} are not in the model's classes {vmap}")
        if len(vmap) < 2:
            raise ValueError(f"semantic labels need at least 2 distinct values, got {vmap}")
        names = tuple(class_names) if class_names else tuple(f"class {v}" for v in vmap)
    else:
        top = max(int(lab.max()) if lab.size else 0 for lab in labs)
        if class_names:
            names = tuple(class_names)
            if top > len(names):
                raise ValueError(
                    f"labels contain value {top} but only {len(names)} classes are named "
                    f"({', '.join(names)})"
                )
        else:
            n = max(top, 2)
            names = (
                ("background", "cell") if n == 2 else tuple(f"class {k}" for k in range(1, n + 1))
            )
        vmap = None
    labels_cfg = LabelsConfig(kind=labels_kind, class_names=names, value_map=vmap)

    out_imgs, out_tgts, out_w, prov = [], [], [], []
    in_channels = None
    for i, (img, lab) in enumerate(zip(imgs, labs, strict=True)):
        img = _channel_first(np.asarray(img), lab.shape, i)
        if in_channels is None:
            in_channels = img.shape[0]
        elif img.shape[0] != in_channels:
            raise ValueError(f"image {i} has {img.shape[0]} channels, image 0 has {in_channels}")
        if img.dtype.kind not in "biuf":
            raise ValueError(f"image {i} must be numeric, got dtype {img.dtype}")
        prov.append(
            {
                "image": content_hash(np.asarray(img)),
                "labels": content_hash(lab),
                "shape": list(lab.shape),
            }
        )
        nimg = normalize(img, norm, channel_axis=0)
        if labels_kind == "instances":
            tgt = tg.instance_targets(lab, spatial_dims=spatial_dims)
        elif labels_kind == "semantic":
            tgt, _ = tg.semantic_targets(lab, value_map=vmap)
        else:
            tgt = tg.sparse_targets(lab, num_classes=len(names))
        tgt = tgt.astype(np.int16 if len(names) < 2**15 else np.int64)
        w = None
        if border_weights:
            if labels_kind != "instances":
                raise ValueError("border_weights needs instance labels (labels_kind='instances')")
            w = tg.border_weight_map(lab, spatial_dims=spatial_dims)
        if lab.ndim == spatial_dims + 1:  # a stack of 2D slices for a 2D model
            for z in range(lab.shape[0]):
                out_imgs.append(nimg[:, z])
                out_tgts.append(tgt[z])
                if w is not None:
                    out_w.append(w[z])
        else:
            out_imgs.append(nimg)
            out_tgts.append(tgt)
            if w is not None:
                out_w.append(w)
    return Prepared(
        images=out_imgs,
        targets=out_tgts,
        weights=out_w if border_weights else None,
        labels=labels_cfg,
        in_channels=int(in_channels or 1),
        provenance=prov,
    )

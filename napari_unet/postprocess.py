"""Class probabilities -> semantic labels or instances.

Instances come from the 3-class (background, interior, boundary) output:
connected components of confident interior are the seeds, a watershed on
the interior probability grows them over the foreground (interior +
boundary), and foreground blobs that got no seed become objects of their own.
Optionally (``split``) a seed shaped like two or more touching blobs (a waist
narrower than its cores) is cut at its waist first: the classical watershed of
the distance map (h-maxima markers), so touching objects whose border the
network marked only faintly still come out one by one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from .config import LabelsConfig, ModelSpec, PostprocessConfig

OUTPUTS = ("labels", "instances", "probabilities")


def _smallest_uint(max_value: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def class_labels(probs: np.ndarray, labels: LabelsConfig) -> np.ndarray:
    """Arg-max classes written back in the user's label values.

    ``sparse``: class k -> painted value k + 1 (0 stays "unlabeled");
    ``semantic``: class k -> ``value_map[k]``; ``instances``: 0 background,
    1 interior, 2 boundary.
    """
    cls = np.argmax(probs, axis=0)
    if labels.kind == "sparse":
        return (cls + 1).astype(_smallest_uint(len(labels.class_names)))
    if labels.kind == "semantic" and labels.value_map is not None:
        vm = np.asarray(labels.value_map)
        if vm.min() >= 0:
            return vm.astype(_smallest_uint(int(vm.max())))[cls]
        return vm.astype(np.int64)[cls]
    return cls.astype(np.uint8)


def split_seeds(seeds: np.ndarray, depth: float) -> np.ndarray:
    """Cut each seed region at its waists.

    In every region, the maxima of its distance map (distance to the region's edge)
    that stand out by more than ``depth`` x the region's largest distance
    (``skimage.morphology.h_maxima``) are markers; with two or more, a watershed of
    the negated distance map divides the region between them.  Two touching disks of
    radius r with a waist of half-width w are cut when ``r - w > depth * r``.

    Returns the seeds with new ids (1..n), same shape; ``depth`` 0 returns them as they are.
    """
    if depth <= 0 or not seeds.any():
        return seeds
    out = np.zeros(seeds.shape, np.int32)
    count = 0
    for k, box in enumerate(ndi.find_objects(seeds), start=1):
        if box is None:
            continue
        box = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n))
            for s, n in zip(box, seeds.shape, strict=True)
        )
        region = seeds[box] == k
        dist = ndi.distance_transform_edt(region)
        height = float(dist.max())
        markers, n = ndi.label(h_maxima(dist, depth * height) & region) if height > 1 else (0, 1)
        if n < 2:
            count += 1
            out[box][region] = count
            continue
        parts = watershed(-dist, markers=markers, mask=region)
        out[box][region] = parts[region] + count
        count += n
    return out


def instances_from_probs(
    probs: np.ndarray,
    spatial_dims: int = 2,
    fg_threshold: float = 0.6,
    seed_threshold: float = 0.8,
    min_size: int | None = None,
    split: float = 0.0,
) -> np.ndarray:
    """Instance ids (0 = background) from (3, *spatial) probabilities.

    Foreground is where the background probability is below
    ``1 - fg_threshold``; seeds are connected components of interior
    probability above ``seed_threshold``, cut at their waists when ``split`` > 0
    (:func:`split_seeds`); objects smaller than ``min_size`` pixels (15 in 2D,
    50 in 3D) are dropped.  The defaults were chosen on the held-out DSB2018
    split (see docs/benchmarks.md).

    With a 2D model applied to a stack (``probs.ndim == 4`` and
    ``spatial_dims == 2``) each slice is segmented on its own and ids stay
    unique across the stack.
    """
    if probs.shape[0] != 3:
        raise ValueError(
            f"instances need a 3-class (background, interior, boundary) model, "
            f"got {probs.shape[0]} classes"
        )
    if probs.ndim - 1 > spatial_dims:
        out = np.zeros(probs.shape[1:], np.int32)
        offset = 0
        for idx in np.ndindex(*probs.shape[1:-spatial_dims]):
            lab = instances_from_probs(
                probs[(slice(None), *idx)],
                spatial_dims,
                fg_threshold,
                seed_threshold,
                min_size,
                split,
            )
            lab[lab > 0] += offset
            offset = max(offset, int(lab.max()))
            out[idx] = lab
        return out.astype(_smallest_uint(max(offset, 1)))
    if min_size is None:
        min_size = 15 if spatial_dims == 2 else 50
    p_int = probs[1]
    fg = probs[0] < 1.0 - fg_threshold
    seeds, n = ndi.label(p_int > seed_threshold)
    if n:
        sizes = np.bincount(seeds.ravel())
        small = sizes < max(2, min_size // 4)
        small[0] = False
        seeds[small[seeds]] = 0
        seeds = split_seeds(seeds, split)
    lab = watershed(-p_int, markers=seeds, mask=fg)
    # foreground blobs no seed reached become objects of their own
    rest, n_rest = ndi.label(fg & (lab == 0))
    if n_rest:
        lab = np.where(rest > 0, rest + lab.max(), lab)
    sizes = np.bincount(lab.ravel())
    small = sizes < min_size
    small[0] = False
    lab[small[lab]] = 0
    lab, _, _ = relabel_sequential(lab)
    return lab.astype(_smallest_uint(max(int(lab.max()), 1)))


def require_instances(spec: ModelSpec) -> None:
    """Raise a ``ValueError`` unless ``spec`` is a model trained on instance labels."""
    if not spec.labels.instances:
        raise ValueError(
            f"instances need a model trained on instance labels; this one was trained on "
            f"{spec.labels.kind} labels"
        )


def outputs_from_probs(
    probs: np.ndarray,
    spec: ModelSpec,
    *,
    labels: bool = True,
    instances: bool = False,
    probabilities: bool = False,
    postprocess: PostprocessConfig | None = None,
) -> dict[str, np.ndarray]:
    """The requested outputs of one prediction, from its class probabilities.

    Parameters
    ----------
    probs
        ``(num_classes, *spatial)`` probabilities of the model described by ``spec``.
    spec
        The model's configuration: labels kind, class values and spatial dims.
    labels, instances, probabilities
        Which outputs to return: class labels in the user's values, instance ids
        (instance models only), the probabilities themselves.
    postprocess
        Instance settings for this call (default: the model's own, ``spec.postprocess``).

    Returns
    -------
    dict
        Keys among :data:`OUTPUTS`, in that order, for the outputs requested.
    """
    if instances:
        require_instances(spec)
    out: dict[str, np.ndarray] = {}
    if labels:
        out["labels"] = class_labels(probs, spec.labels)
    if instances:
        out["instances"] = instances_with(probs, postprocess or spec.postprocess, spec)
    if probabilities:
        out["probabilities"] = probs
    return out


def instances_with(probs: np.ndarray, settings: PostprocessConfig, spec: ModelSpec) -> np.ndarray:
    """:func:`instances_from_probs` with ``settings`` for the model ``spec``."""
    dims = spec.model.spatial_dims
    return instances_from_probs(
        probs,
        spatial_dims=dims,
        fg_threshold=settings.fg_threshold,
        seed_threshold=settings.seed_threshold,
        min_size=settings.min_size_for(dims),
        split=settings.split,
    )

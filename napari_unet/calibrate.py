"""Instance post-processing chosen for each model on its own validation data.

The seed and foreground thresholds and the minimum object size that turn a
model's probabilities into instances depend on the objects: a fixed minimum of
15 px keeps the debris around 2,000 px cells, thresholds fitted to small nuclei
split large ones.  When a training ends, :func:`calibrate` searches them to
maximise AP@0.5 (TP / (TP + FP + FN), matched one-to-one at IoU 0.5) on the
validation data, as StarDist's ``optimize_thresholds`` does for its two
thresholds.  Validation data is what the loss never saw: held-out images, or
held-out objects and blocks of (painted) background when there are too few
images (:func:`napari_unet.holdout.split_samples`).  A predicted object lying
mostly on held-out background is a false positive.  Without held-out objects
nothing is searched: AP on the objects a model was trained on flatters every
setting (a 4,000 px cell model chose 199 px that way and kept the debris).

The minimum size starts from a prior that needs no prediction: a quarter of the size
of a small labeled object (half until 2026-12-06: a quarter scored 0.02 AP@0.5 higher on
crowded nuclei, and half of the smallest of 3 outlined nuclei dropped real ones,
``benchmarks/bench_calibrate.py``) (:data:`MIN_SIZE_PRIOR` times the
:data:`SMALL_PERCENTILE`-th percentile of the sizes of *all* labeled objects,
training ones included: sizes do not flatter a model; objects cut by the image's edge
left out: with ten outlined nuclei, one cut to 70 px made the prior 35 px for nuclei
of 1,800 px and its debris cost 0.10 AP@0.5, docs/benchmarks.md), and is searched as a
fraction of that size, never below a quarter: with few held-out objects, one of
them cut by the image's edge made "no minimum" win, and the model then kept every
fragment (8 objects per cell on large touching cells, docs/benchmarks.md).

The seeds' waist cut (:func:`napari_unet.postprocess.split_seeds`, for touching
objects the network did not separate) is searched too, off included.

The search is a coordinate descent over small grids (each setting in turn,
twice), starting from the model's current settings.  Settings are ranked by AP@0.5, and
on a tie by how well the held-out objects are outlined: the sum of each one's IoU with
the predicted object that overlaps it most (``metrics.match_instances``'
``mean_best_iou``), which even one object measures over hundreds of pixels; on a tie of
both the current value stays, so labels that cannot tell two settings apart change
nothing.  The probabilities are computed once; each setting costs one watershed per image.

With fewer than :data:`FEW_OBJECTS` held-out objects the seed threshold and the waist cut
are not searched: they stay those of the start (the model continued, the start model's,
or the defaults).  A few outlined objects cannot tell them apart: on 24 unseen images of
crowded nuclei, settings searched on 1-10 held-out objects by AP@0.5 alone scored no
better than the start's, and the waist cut chosen on 3 objects lost 0.02-0.03 AP@0.5 on
average, 0.15 in one simulated correction round (``benchmarks/bench_calibrate.py``,
docs/benchmarks.md).  What they can tell is how well they are outlined, and what the
foreground threshold sets is exactly that: a network trained on a few outlined objects
spreads its foreground beyond them by an amount that changes from model to model (a
fixed 0.9 helped first models and cost later ones up to 0.3 AP@0.5, docs/benchmarks.md).
So the foreground threshold alone (:data:`OVERLAP_SEARCH`) is searched on them (AP@0.5,
then their IoU), and the minimum size is the prior; not for a model fine-tuned from a start
model (``inherited``), whose threshold was chosen on the start model's own held-out images:
on crowded nuclei (the selection group), 6 outlined objects moved it from 0.7 to 0.3-0.4
and cost 0.04-0.10 AP@0.5 (``benchmarks/bench_ceiling.py --zoomed-fgs``); on large nuclei
(the report group) the moved threshold was the better one by 0.03-0.06 (docs/benchmarks.md:
a rule to revisit on a third group).  They also tell the debris: a model trained on a few
objects finds small false objects on unlabeled ground, and the held-out (painted)
background counts them.  So with room for :data:`BACKGROUND_OBJECTS` median objects on
held-out background, the settings in :data:`BACKGROUND_SEARCH` (the minimum size and the
foreground threshold: what removes debris) are searched instead, on the same ranking (the
held-out objects keep a setting from dropping real ones).  On crowded nuclei, whose
few-label models make no debris, the background changed nothing (240 draws); on brightfield
nuclei it gained 0.011 AP@0.5.  Ranking by the objects' IoU (and the foreground grid up to
0.9) gained 0.013-0.083 AP@0.5 over AP alone on crowded and on small nuclei, models trained
from scratch on 6 or 20 outlined objects (``bench_calibrate.py --rules background`` and
``--rules overlap``, docs/benchmarks.md)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .config import PostprocessConfig
from .metrics import match_instances
from .postprocess import instances_from_probs
from .targets import PAINTED_BACKGROUND

SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
FG_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MIN_SIZE_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of a small labeled object (never 0: debris)
SPLIT_DEPTHS = (0.0, 0.25, 0.5)  # cut seeds at waists this deep (0: never; postprocess.split)
MIN_SIZE_PRIOR = 0.25  # the start: a quarter of a small labeled object (bench_calibrate)
SMALL_PERCENTILE = 5  # "a small labeled object": this percentile of their sizes
ROUNDS = 2
FEW_OBJECTS = 20  # fewer held-out objects: nothing searched (bench_calibrate.py)
BACKGROUND_SEARCH = ("min_size", "fg_threshold")  # searched on held-out background instead
BACKGROUND_OBJECTS = 5  # held-out background for that: at least this many median objects
OVERLAP_SEARCH = ("fg_threshold",)  # too few objects, no background: chosen on their outlines
BALANCED_FG_THRESHOLD = 0.9  # a scratch model's start on balanced sparse-instances labels

Rank = tuple[float, int, float]
"""How settings (or a model) do on held-out objects: AP@0.5, minus the false objects, the
sum of the objects' best IoU (:func:`rank_of`; compared by :func:`better`)."""


@dataclass(frozen=True)
class Truth:
    """The objects to find in one image, and where the labels say anything.

    ``objects``: instance ids (0 = none).  ``labeled``: None when every pixel is
    labeled (dense instances); else a mask of the labeled pixels: predicted objects
    mostly outside it are neither right nor wrong (``sparse-instances``).
    """

    objects: np.ndarray
    labeled: np.ndarray | None = None


def truth_from_labels(labels: np.ndarray, kind: str) -> Truth:
    """The :class:`Truth` of an ``instances`` or ``sparse-instances`` label image."""
    if kind == "sparse-instances":
        objects = np.where(labels > PAINTED_BACKGROUND, labels, 0)
        return Truth(objects=objects, labeled=labels > 0)
    return Truth(objects=np.asarray(labels))


def object_sizes(truths: Sequence[Truth], uncut: bool = False) -> np.ndarray:
    """Pixel counts of the labeled objects (each object of each image once).

    ``uncut``: leave out the objects that touch the edge of their image (a part of an
    object, not its size), unless that leaves none.
    """
    every, inside = [], []
    for t in truths:
        ids, counts = np.unique(t.objects[t.objects > 0], return_counts=True)
        every.append(counts)
        if uncut:
            inside.append(counts[~np.isin(ids, _edge_ids(t.objects))])
    for sizes in (inside, every):
        sizes = [s for s in sizes if len(s)]
        if sizes:
            return np.concatenate(sizes)
    return np.zeros(0, np.int64)


def _edge_ids(objects: np.ndarray) -> np.ndarray:
    """The ids on any face of the array."""
    faces = [np.take(objects, i, axis=a).ravel() for a in range(objects.ndim) for i in (0, -1)]
    return np.unique(np.concatenate(faces))


def _restrict(pred: np.ndarray, labeled: np.ndarray | None) -> np.ndarray:
    """Predicted objects that lie mostly on labeled pixels (the others say nothing)."""
    if labeled is None or not pred.any():
        return pred
    n = int(pred.max()) + 1
    total = np.bincount(pred.ravel(), minlength=n)
    inside = np.bincount(pred[labeled].ravel(), minlength=n)
    keep = inside * 2 >= total
    keep[0] = False
    return np.where(keep[pred], pred, 0)


def score(
    probs: Sequence[np.ndarray], truths: Sequence[Truth], settings: PostprocessConfig, dims: int
) -> float:
    """AP@0.5 over all images together: sum TP / sum (TP + FP + FN)."""
    return _ap(tally(probs, truths, settings, dims))


def tally(
    probs: Sequence[np.ndarray], truths: Sequence[Truth], settings: PostprocessConfig, dims: int
) -> tuple[int, int, int, float]:
    """True positives, false positives and false negatives at IoU 0.5, all images, and the
    sum over the truth objects of their best IoU with a predicted object
    (``metrics.match_instances``' ``mean_best_iou`` times their number)."""
    tp = fp = fn = 0
    overlap = 0.0
    for p, truth in zip(probs, truths, strict=True):
        pred = instances_from_probs(
            p,
            spatial_dims=dims,
            fg_threshold=settings.fg_threshold,
            seed_threshold=settings.seed_threshold,
            min_size=settings.min_size_for(dims),
            split=settings.split,
        )
        m = match_instances(truth.objects, _restrict(pred, truth.labeled), 0.5)
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        overlap += m["mean_best_iou"] * m["n_true"]
    return int(tp), int(fp), int(fn), float(overlap)


def _ap(tp_fp_fn: tuple[int, ...]) -> float:
    total = sum(tp_fp_fn[:3])
    return tp_fp_fn[0] / total if total else 1.0


def background_pixels(truths: Sequence[Truth]) -> int:
    """Labeled pixels outside the objects: where every predicted object is a false one."""
    return int(
        sum(
            np.count_nonzero(
                (t.objects == 0) if t.labeled is None else t.labeled & (t.objects == 0)
            )
            for t in truths
        )
    )


def scratch_start(labels_kind: str, balance: float) -> PostprocessConfig:
    """The settings a model trained from scratch starts its calibration from.

    On ``sparse-instances`` labels with the balanced loss (the outlined objects half of it,
    whatever their share of the labeled pixels) the network's foreground spreads beyond
    the objects, and the default foreground threshold makes them too fat to match:
    such a model starts from :data:`BALANCED_FG_THRESHOLD` (docs/benchmarks.md, issue 20).
    """
    if labels_kind == "sparse-instances" and balance > 0:
        return PostprocessConfig(fg_threshold=BALANCED_FG_THRESHOLD)
    return PostprocessConfig()


def size_prior(sizes: np.ndarray) -> tuple[int, float] | None:
    """The minimum size a model starts from given its labeled objects' sizes, and the
    small-object size it is a fraction of (None without objects)."""
    if not len(sizes):
        return None
    small = float(np.percentile(sizes, SMALL_PERCENTILE))
    return int(round(MIN_SIZE_PRIOR * small)), small


def calibrate(
    probs: Sequence[np.ndarray],
    truths: Sequence[Truth],
    spatial_dims: int,
    start: PostprocessConfig | None = None,
    sizes: np.ndarray | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
    inherited: bool = False,
) -> tuple[PostprocessConfig, dict[str, Any]]:
    """The post-processing with the best AP@0.5 on ``truths``, and the search's record.

    Parameters
    ----------
    probs
        The model's ``(3, *spatial)`` probabilities, one array per image of ``truths``.
    truths
        The held-out objects of each image (:func:`truth_from_labels`); fewer than
        :data:`FEW_OBJECTS` objects: only :data:`OVERLAP_SEARCH` (or, with enough
        held-out background, :data:`BACKGROUND_SEARCH`) is searched, the other settings
        stay the start's and the minimum size is the prior; none: nothing is searched.
    spatial_dims
        2 or 3, of the model (a 2D model's probabilities are 2D here).
    start
        Where the search starts, and what a tie keeps (default: today's defaults); its
        minimum size is replaced by the prior when there are labeled objects.
    sizes
        The sizes of every labeled object, training ones included (default: those of
        ``truths``): the minimum-size prior and the object size prediction zooms to.
    deadline
        A value of ``clock`` after which no other setting is tried (the best so far is
        kept; the record says ``"stopped": "time"``); None: the whole search.
    inherited
        ``start`` holds a start model's settings, chosen on its own many held-out objects
        (a model fine-tuned from it): a few held-out objects' outlines do not move its
        foreground threshold (no :data:`OVERLAP_SEARCH`).

    Returns
    -------
    settings, record
        The chosen :class:`~napari_unet.config.PostprocessConfig` and a JSON-ready
        record: the AP of the start and of the choice (None when nothing was searched),
        their false positives and objects' mean best IoU, every setting tried with its
        AP, the object sizes and the number of images and objects scored.
    """
    start = start or PostprocessConfig()
    sizes = object_sizes(truths, uncut=True) if sizes is None else np.asarray(sizes)
    median = float(np.median(sizes)) if len(sizes) else 0.0
    prior = size_prior(sizes)
    if prior is not None:
        start = replace(start, min_size=prior[0])
    scored = object_sizes(truths)
    tried: dict[tuple, tuple[int, int, int, float]] = {}  # settings -> TP, FP, FN, IoU sum

    def key(settings: PostprocessConfig) -> tuple:
        return (
            settings.seed_threshold,
            settings.fg_threshold,
            settings.min_size_for(spatial_dims),
            settings.split,
        )

    def rank(settings: PostprocessConfig) -> Rank:
        if key(settings) not in tried:
            tried[key(settings)] = tally(probs, truths, settings, spatial_dims)
        return rank_of(tried[key(settings)])

    best, best_rank, stopped = start, None, None
    background = background_pixels(truths)
    search = _search_kind(len(scored), background, median, overlap=not inherited)
    grids = _grids(search, prior, start.min_size_for(spatial_dims))
    if len(scored):
        best_rank = rank(start)
    if search:
        candidates = (
            (name, value)
            for _ in range(ROUNDS)
            for name, values in grids.items()
            for value in values
        )
        for name, value in candidates:
            if deadline is not None and clock() > deadline:
                stopped = "time"
                break
            candidate = replace(best, **{name: value})
            if better(rank(candidate), best_rank):
                best, best_rank = candidate, rank(candidate)
    if best.min_size is None:  # store the size it was judged with
        best = replace(best, min_size=best.min_size_for(spatial_dims))
    if median > 0:  # what prediction zooms objects to (napari_unet.zoom)
        best = replace(best, object_size=median)
    record = _record(start, best, best_rank, tried, key, spatial_dims)
    record.update(
        median_object_size=median,
        min_size_prior=prior[0] if prior else None,
        small_object_size=prior[1] if prior else None,
        labeled_objects=int(len(sizes)),
        images=len(truths),
        objects=int(len(scored)),
        searched=search is not None,  # False: too few held-out objects, start kept
        search=search or "none",  # "all", "background", "overlap" (only those grids), "none"
        background_pixels=background,  # held-out labeled pixels outside the objects
    )
    if stopped:
        record["stopped"] = stopped
    return best, record


def rank_of(found: tuple[int, int, int, float]) -> Rank:
    """The :data:`Rank` of a :func:`tally`."""
    return _ap(found), -found[1], found[3]


def better(rank: Rank, best: Rank) -> bool:
    """A higher AP@0.5, or the same with the objects better outlined (sum of their IoU).

    The false objects (``rank[1]``) are not compared on their own: where nothing is
    matched AP@0.5 is 0 whatever they are, but preferring fewer of them there lost
    0.003-0.005 AP@0.5 on the selection groups (``bench_calibrate.py --rules fp``)."""
    if abs(rank[0] - best[0]) > 1e-9:
        return rank[0] > best[0]
    return rank[2] > best[2] + 1e-9


def _grids(
    search: str | None, prior: tuple[int, float] | None, min_size: int
) -> dict[str, Sequence[Any]]:
    """The values searched for each setting: every grid (``search="all"``), only those a
    few objects can tell (``"background"``, ``"overlap"``); the minimum sizes are
    fractions of the prior's small object (``min_size`` alone without one)."""
    min_sizes = sorted({int(round(f * prior[1])) for f in MIN_SIZE_FRACTIONS}) if prior else []
    grids = {
        "seed_threshold": SEED_THRESHOLDS,
        "fg_threshold": FG_THRESHOLDS,
        "min_size": min_sizes or [min_size],
        "split": SPLIT_DEPTHS,
    }
    only = {"background": BACKGROUND_SEARCH, "overlap": OVERLAP_SEARCH}.get(search or "")
    if only is None:
        return grids
    return {name: values for name, values in grids.items() if name in only}


def _search_kind(objects: int, background: int, median: float, overlap: bool = True) -> str | None:
    """What is searched with ``objects`` held-out objects and ``background`` pixels of
    held-out background (objects of ``median`` size): ``"all"``, ``"background"``
    (:data:`BACKGROUND_SEARCH`), ``"overlap"`` (:data:`OVERLAP_SEARCH`, unless not
    ``overlap``) or nothing (None)."""
    if objects >= max(FEW_OBJECTS, 1):
        return "all"
    if objects and BACKGROUND_SEARCH and background >= BACKGROUND_OBJECTS * median > 0:
        return "background"
    if objects and OVERLAP_SEARCH and overlap:
        return "overlap"
    return None


def _record(
    start: PostprocessConfig,
    best: PostprocessConfig,
    best_rank: Rank | None,
    tried: dict[tuple, tuple[int, int, int, float]],
    key: Callable[[PostprocessConfig], tuple],
    spatial_dims: int,
) -> dict[str, Any]:
    """The JSON-ready part of a search's record that the settings tried make: the start,
    the choice, their AP@0.5, false positives and objects' mean best IoU, and every
    setting with its AP."""
    best_ap = best_rank[0] if best_rank is not None else None

    def outlined(settings: PostprocessConfig) -> float:  # mean best IoU of the objects
        tp, _, fn, overlap = tried[key(settings)]
        return round(overlap / (tp + fn), 4) if tp + fn else 1.0

    return {
        "metric": "AP@0.5",
        "start": [start.seed_threshold, start.fg_threshold, start.min_size_for(spatial_dims)],
        "start_ap": round(_ap(tried[key(start)]), 4) if tried else None,
        "chosen": [best.seed_threshold, best.fg_threshold, best.min_size],
        "split": [start.split, best.split],
        "chosen_ap": round(best_ap, 4) if best_ap is not None else None,
        "false_positives": [tried[key(start)][1], tried[key(best)][1]] if tried else None,
        "overlap": [outlined(start), outlined(best)] if tried else None,  # mean best IoU
        "tried": [[*k, round(_ap(v), 4)] for k, v in tried.items()],  # seed, fg, min, split
    }

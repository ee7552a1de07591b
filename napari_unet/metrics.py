"""Segmentation metrics: semantic IoU / Dice and instance matching at IoU thresholds.

Everything here is pure numpy / scipy and works for 2D and 3D label images.

Instance matching follows the DSB2018 / StarDist definition: objects of the
ground truth and of the prediction are paired one-to-one, a pair counts as a
true positive when its IoU is at least the threshold, and the score is
``AP = TP / (TP + FP + FN)``.  The IoU of every overlapping pair comes from a
contingency table of the two label images (one pass over the pixels, no Python
loop over pixels or objects).

Conventions for empty inputs (documented once here, repeated in the functions):

* semantic ``iou`` / ``dice``: both masks empty -> 1.0 (perfect agreement);
* instance matching: no object in the truth and none in the prediction -> every
  score is 1.0 (nothing to find, nothing found); otherwise a ratio whose
  denominator is 0 is 0.0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)

__all__ = ["average_precision", "dice", "evaluate_pair", "iou", "match_instances", "seg_score"]

# Relabel through a lookup table (O(n)) instead of sorting when ids are at most this large.
_LUT_MAX_ID = 1 << 24
# Build a dense contingency table with bincount when it has at most this many cells.
_DENSE_MAX_CELLS = 1 << 22


# --------------------------------------------------------------------------- validation


def _check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise ValueError(
            f"pred and truth must have the same shape, got pred {pred.shape} "
            f"and truth {truth.shape}"
        )


def _as_real_array(name: str, array: Any) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a boolean or numeric array, got dtype {arr.dtype}")
    return arr


def _as_label_array(name: str, array: Any) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must be an integer label array, got dtype {arr.dtype}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label image, got {arr.ndim} dimensions")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError(f"{name} must not contain negative labels, got minimum {arr.min()}")
    return arr


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return value


# --------------------------------------------------------------------------- semantic


def _semantic_counts(
    pred: Any, truth: Any, classes: Sequence[int] | None
) -> list[tuple[int, int, int]]:
    """Return ``(intersection, |pred|, |truth|)`` for each class present in either mask."""
    pred_arr = _as_real_array("pred", pred)
    truth_arr = _as_real_array("truth", truth)
    _check_same_shape(pred_arr, truth_arr)
    if classes is None:
        pairs = [(pred_arr > 0, truth_arr > 0)]
    else:
        pairs = [(pred_arr == c, truth_arr == c) for c in classes]
    counts = []
    for p, t in pairs:
        n_pred = int(np.count_nonzero(p))
        n_truth = int(np.count_nonzero(t))
        if n_pred == 0 and n_truth == 0:
            continue
        counts.append((int(np.count_nonzero(p & t)), n_pred, n_truth))
    return counts


def iou(pred: Any, truth: Any, classes: Sequence[int] | None = None) -> float:
    """Intersection over union (Jaccard index) of semantic masks.

    Parameters
    ----------
    pred, truth : array_like
        Label or class images of the same shape (any numeric or boolean dtype).
    classes : sequence of int, optional
        ``None`` (default): binary foreground, ``> 0`` in both images.  Otherwise the
        class values to score; the result is the mean IoU over those classes, skipping
        classes absent from both images.

    Returns
    -------
    float
        IoU in [0, 1].  When both masks are empty (or no listed class occurs in either
        image) the result is 1.0: the two images agree perfectly.

    Raises
    ------
    ValueError
        If the shapes differ or an input is not numeric.
    """
    counts = _semantic_counts(pred, truth, classes)
    if not counts:
        return 1.0
    return float(np.mean([inter / (a + b - inter) for inter, a, b in counts]))


def dice(pred: Any, truth: Any, classes: Sequence[int] | None = None) -> float:
    """Dice coefficient (F1 score of pixels) of semantic masks.

    Parameters
    ----------
    pred, truth : array_like
        Label or class images of the same shape (any numeric or boolean dtype).
    classes : sequence of int, optional
        ``None`` (default): binary foreground, ``> 0`` in both images.  Otherwise the
        class values to score; the result is the mean Dice over those classes, skipping
        classes absent from both images.

    Returns
    -------
    float
        Dice in [0, 1]; 1.0 when both masks are empty (perfect agreement).

    Raises
    ------
    ValueError
        If the shapes differ or an input is not numeric.
    """
    counts = _semantic_counts(pred, truth, classes)
    if not counts:
        return 1.0
    return float(np.mean([2 * inter / (a + b) for inter, a, b in counts]))


# --------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class _Overlap:
    """Overlapping (truth object, predicted object) pairs and their IoU."""

    n_true: int
    n_pred: int
    true_index: np.ndarray  # index into the truth objects (0..n_true-1), one per pair
    pred_index: np.ndarray  # index into the predicted objects (0..n_pred-1), one per pair
    iou: np.ndarray  # float64 IoU of each pair, > 0
    true_cover: np.ndarray  # float64 share of the truth object inside the predicted one


def _relabel(labels: np.ndarray) -> tuple[int, np.ndarray]:
    """Map ids to consecutive 0..n (0 stays background); return ``(n, flat index)``."""
    flat = labels.ravel()
    if flat.size == 0:
        return 0, np.zeros(0, dtype=np.int64)
    max_id = int(flat.max())
    if max_id <= min(_LUT_MAX_ID, 4 * flat.size + 65536):
        flat = flat.astype(np.intp, copy=False)
        present = np.bincount(flat, minlength=max_id + 1) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return int(present.sum()) - 1, lut[flat].astype(np.int64, copy=False)
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.astype(np.int64, copy=False).ravel()
    if ids[0] != 0:  # make room for an (absent) background at index 0
        inverse += 1
        return len(ids), inverse
    return len(ids) - 1, inverse


def _overlap(truth: Any, pred: Any) -> _Overlap:
    """Contingency table of two label images, reduced to the overlapping object pairs."""
    truth_arr = _as_label_array("truth", truth)
    pred_arr = _as_label_array("pred", pred)
    if truth_arr.shape != pred_arr.shape:
        raise ValueError(
            f"truth and pred must have the same shape, got truth {truth_arr.shape} "
            f"and pred {pred_arr.shape}"
        )
    n_true, t_idx = _relabel(truth_arr)
    n_pred, p_idx = _relabel(pred_arr)
    cols = n_pred + 1
    codes = t_idx * cols + p_idx
    n_cells = (n_true + 1) * cols
    if n_cells <= _DENSE_MAX_CELLS:
        table = np.bincount(codes, minlength=n_cells)
        pair_codes = np.flatnonzero(table)
        pair_counts = table[pair_codes]
    else:
        pair_codes, pair_counts = np.unique(codes, return_counts=True)
    rows, cols_ = np.divmod(pair_codes, cols)
    true_area = np.bincount(rows, weights=pair_counts, minlength=n_true + 1)
    pred_area = np.bincount(cols_, weights=pair_counts, minlength=n_pred + 1)
    both = (rows > 0) & (cols_ > 0)
    rows, cols_, inter = rows[both], cols_[both], pair_counts[both].astype(np.float64)
    union = true_area[rows] + pred_area[cols_] - inter
    return _Overlap(
        n_true=n_true,
        n_pred=n_pred,
        true_index=rows - 1,
        pred_index=cols_ - 1,
        iou=inter / union,
        true_cover=inter / true_area[rows],
    )


def _match(overlap: _Overlap, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching; return the IoU of each matched pair and the pair indices.

    Candidate pairs are those with IoU >= threshold.  Above 0.5 every object has at
    most one candidate, so the candidates are the matching.  Otherwise (or when the
    candidates are not one-to-one, which is only possible at exactly 0.5) the matching
    maximises the number of matched pairs, ties broken by the larger total IoU
    (as in StarDist's ``matching``), with ``scipy.optimize.linear_sum_assignment``.
    """
    keep = overlap.iou >= threshold
    t, p, s = overlap.true_index[keep], overlap.pred_index[keep], overlap.iou[keep]
    if len(s) == 0:
        return s, np.zeros((0, 2), dtype=np.int64)
    unique = len(np.unique(t)) == len(t) and len(np.unique(p)) == len(p)
    if not unique:
        logger.debug("IoU threshold %s: solving the assignment for %d pairs", threshold, len(s))
        rows, t_local = np.unique(t, return_inverse=True)
        cols, p_local = np.unique(p, return_inverse=True)
        n = min(len(rows), len(cols))
        cost = np.zeros((len(rows), len(cols)))
        # Each match is worth 1; the IoU term sums to < 1/2, so it only breaks ties.
        cost[t_local, p_local] = -(1.0 + s / (2 * n))
        r, c = linear_sum_assignment(cost)
        chosen = cost[r, c] < 0
        r, c = r[chosen], c[chosen]
        score = np.zeros((len(rows), len(cols)))
        score[t_local, p_local] = s
        s = score[r, c]
        t, p = rows[r], cols[c]
    return s, np.stack([t, p], axis=1)


def _scores(overlap: _Overlap, threshold: float) -> dict[str, float | int]:
    matched, _ = _match(overlap, threshold)
    tp = len(matched)
    fp = overlap.n_pred - tp
    fn = overlap.n_true - tp
    both_empty = overlap.n_true == 0 and overlap.n_pred == 0

    def ratio(num: float, den: float) -> float:
        if den == 0:
            return 1.0 if both_empty else 0.0
        return float(num / den)

    return {
        "threshold": threshold,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n_true": overlap.n_true,
        "n_pred": overlap.n_pred,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "ap": ratio(tp, tp + fp + fn),
        "mean_matched_iou": ratio(float(matched.sum()), tp),
        "mean_best_iou": ratio(float(_best_iou(overlap).sum()), overlap.n_true),
    }


def _best_iou(overlap: _Overlap) -> np.ndarray:
    """Each truth object's IoU with the predicted object that overlaps it most (0: none)."""
    best = np.zeros(overlap.n_true)
    np.maximum.at(best, overlap.true_index, overlap.iou)
    return best


def match_instances(truth: Any, pred: Any, threshold: float = 0.5) -> dict[str, float | int]:
    """Match truth and predicted objects one-to-one and count hits and misses.

    Parameters
    ----------
    truth, pred : array_like
        Instance label images (2D or 3D, same shape, non-negative integers or bool);
        0 is background, every other value one object.  Ids need not be consecutive.
    threshold : float
        Minimum IoU, in (0, 1], for a matched pair to count as a true positive.

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``n_true``, ``n_pred``, ``threshold`` and the scores
        ``precision`` = TP / (TP + FP), ``recall`` = TP / (TP + FN),
        ``f1``, ``ap`` = TP / (TP + FP + FN) (the DSB2018 / StarDist "average
        precision"), ``mean_matched_iou`` (mean IoU of the true positives) and
        ``mean_best_iou`` (mean over the truth objects of the IoU with the predicted
        object that overlaps each most, matched or not, 0 where none does: how well
        they are outlined, whatever the threshold).
        With no object in either image every score is 1.0 (nothing to find, nothing
        found); otherwise a score whose denominator is 0 is 0.0.

    Raises
    ------
    ValueError
        If the shapes differ, an input is not an integer image, contains negative
        labels, or the threshold is outside (0, 1].

    Notes
    -----
    For ``threshold > 0.5`` a truth object can overlap at most one predicted object
    with IoU >= threshold, so thresholding the IoU gives the matching directly.  For
    lower thresholds the pairs are chosen with ``linear_sum_assignment`` to maximise
    the number of matches, ties broken by the larger total IoU; a greedy
    "best IoU first" matching can miss matches there.
    """
    threshold = _check_threshold(threshold)
    return _scores(_overlap(truth, pred), threshold)


def average_precision(
    truth: Any, pred: Any, thresholds: Sequence[float] = (0.5, 0.75)
) -> dict[float, float]:
    """AP = TP / (TP + FP + FN) at several IoU thresholds.

    Parameters
    ----------
    truth, pred : array_like
        Instance label images (2D or 3D, same shape); see `match_instances`.
    thresholds : sequence of float
        IoU thresholds in (0, 1].

    Returns
    -------
    dict of float to float
        ``{threshold: ap}``; 1.0 at every threshold when neither image has an object.

    Raises
    ------
    ValueError
        As `match_instances`.
    """
    checked = [_check_threshold(t) for t in thresholds]
    overlap = _overlap(truth, pred)
    return {t: float(_scores(overlap, t)["ap"]) for t in checked}


def _seg(overlap: _Overlap) -> float:
    covered = overlap.true_cover > 0.5  # at most one predicted object per truth object
    if overlap.n_true == 0:
        return 1.0
    return float(overlap.iou[covered].sum() / overlap.n_true)


def seg_score(truth: Any, pred: Any) -> float:
    """The Cell Tracking Challenge's SEG measure of an instance segmentation.

    For every truth object R, the predicted object S that covers more than half of it
    (``|R & S| > 0.5 |R|``, at most one can) contributes the Jaccard index
    ``|R & S| / |R | S|``, and 0 when there is none; SEG is the mean over the truth
    objects (Ulman et al. 2017, Nature Methods 14:1141).  False positives do not count:
    report it beside AP@0.5.  1.0 when the truth holds no object.

    Raises
    ------
    ValueError
        As `match_instances`.
    """
    return _seg(_overlap(truth, pred))


def evaluate_pair(truth: Any, pred: Any) -> dict[str, float | int]:
    """The per-image summary used by ``napari-unet evaluate``.

    Parameters
    ----------
    truth, pred : array_like
        Instance (or binary) label images of the same shape, 2D or 3D.

    Returns
    -------
    dict
        ``iou`` and ``dice`` of the binary foreground (``> 0``), ``ap50`` and ``ap75``
        (AP at IoU 0.5 and 0.75), ``seg`` (the Cell Tracking Challenge's measure, see
        `seg_score`), ``n_true`` and ``n_pred`` (number of objects).
        Empty-input conventions as in `iou` and `match_instances`.

    Raises
    ------
    ValueError
        As `match_instances`.
    """
    overlap = _overlap(truth, pred)
    truth_arr = np.asarray(truth)
    pred_arr = np.asarray(pred)
    return {
        "iou": iou(pred_arr, truth_arr),
        "dice": dice(pred_arr, truth_arr),
        "ap50": float(_scores(overlap, 0.5)["ap"]),
        "ap75": float(_scores(overlap, 0.75)["ap"]),
        "seg": _seg(overlap),
        "n_true": overlap.n_true,
        "n_pred": overlap.n_pred,
    }

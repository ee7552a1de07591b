"""Tests for napari_unet.metrics: known answers and a brute-force reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.metrics import (
    average_precision,
    dice,
    evaluate_pair,
    iou,
    match_instances,
    seg_score,
)


def squares(shape: tuple[int, ...], boxes: dict[int, tuple[slice, ...]]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32)
    for label, box in boxes.items():
        out[box] = label
    return out


# --------------------------------------------------------------------------- semantic


def test_iou_dice_binary_known_values() -> None:
    a = squares((20, 20), {1: np.s_[0:10, 0:10]})
    b = squares((20, 20), {7: np.s_[5:15, 0:10]})  # overlap 5x10 = 50, union 150
    assert iou(b, a) == pytest.approx(1 / 3)
    assert dice(b, a) == pytest.approx(2 * 50 / 200)
    assert iou(a, a) == 1.0
    assert dice(a, a) == 1.0


def test_iou_dice_both_empty_is_one() -> None:
    empty = np.zeros((8, 8), dtype=np.uint8)
    assert iou(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0
    assert iou(empty, empty, classes=[1, 2]) == 1.0


def test_iou_one_empty_is_zero() -> None:
    empty = np.zeros((8, 8), dtype=np.uint8)
    full = np.ones((8, 8), dtype=np.uint8)
    assert iou(empty, full) == 0.0
    assert dice(full, empty) == 0.0


def test_iou_multiclass_mean_skips_absent_classes() -> None:
    truth = np.array([[0, 0, 255, 255]])
    pred = np.array([[0, 255, 255, 255]])
    # class 0: inter 1, union 2 -> 0.5; class 255: inter 2, union 3 -> 2/3; class 9 absent
    assert iou(pred, truth, classes=[0, 255, 9]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert dice(pred, truth, classes=[0, 255]) == pytest.approx((2 / 3 + 0.8) / 2)


def test_iou_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"pred \(4, 5\) and truth \(4, 4\)"):
        iou(np.zeros((4, 5)), np.zeros((4, 4)))


def test_iou_rejects_non_numeric() -> None:
    with pytest.raises(ValueError, match="pred must be a boolean or numeric array, got dtype"):
        iou(np.array([["a"]]), np.zeros((1, 1)))


# --------------------------------------------------------------------------- instances


def test_identical_masks_ap_one() -> None:
    lab = squares((32, 32), {1: np.s_[0:5, 0:5], 2: np.s_[10:20, 10:20], 3: np.s_[25:30, 2:9]})
    res = match_instances(lab, lab)
    assert (res["tp"], res["fp"], res["fn"]) == (3, 0, 0)
    assert res["ap"] == res["precision"] == res["recall"] == res["mean_matched_iou"] == 1.0


def test_shifted_square_iou_one_third() -> None:
    truth = squares((20, 20), {1: np.s_[0:10, 0:10]})
    pred = squares((20, 20), {1: np.s_[5:15, 0:10]})  # IoU = 50 / 150
    low = match_instances(truth, pred, threshold=0.3)
    assert (low["tp"], low["fp"], low["fn"]) == (1, 0, 0)
    assert low["ap"] == 1.0
    assert low["mean_matched_iou"] == pytest.approx(1 / 3)
    high = match_instances(truth, pred, threshold=0.5)
    assert (high["tp"], high["fp"], high["fn"]) == (0, 1, 1)
    assert high["ap"] == 0.0
    assert high["mean_matched_iou"] == 0.0
    assert high["mean_best_iou"] == low["mean_best_iou"] == pytest.approx(1 / 3)  # unmatched too
    assert average_precision(truth, pred, thresholds=(0.3, 0.5)) == {0.3: 1.0, 0.5: 0.0}


def test_split_object_one_tp_one_fp() -> None:
    truth = squares((10, 10), {1: np.s_[0:10, 0:10]})
    pred = squares((10, 10), {1: np.s_[0:10, 0:7], 2: np.s_[0:10, 7:10]})
    res = match_instances(truth, pred)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 0)
    assert res["ap"] == pytest.approx(0.5)
    assert res["precision"] == pytest.approx(0.5)
    assert res["recall"] == 1.0
    assert res["mean_matched_iou"] == pytest.approx(0.7)
    assert res["mean_best_iou"] == pytest.approx(0.7)  # the larger piece, per truth object


def test_mean_best_iou_counts_a_missed_object_as_zero() -> None:
    truth = squares((20, 20), {1: np.s_[0:10, 0:10], 2: np.s_[12:20, 12:20]})
    pred = squares((20, 20), {5: np.s_[0:10, 0:8]})  # 80 / 100 of object 1, nothing on 2
    res = match_instances(truth, pred)
    assert res["mean_best_iou"] == pytest.approx((0.8 + 0.0) / 2)
    assert match_instances(truth, np.zeros_like(truth))["mean_best_iou"] == 0.0


def test_exact_half_split_is_still_one_to_one() -> None:
    # Both halves have IoU exactly 0.5 with the truth: only one may match.
    truth = squares((10, 10), {1: np.s_[0:10, 0:10]})
    pred = squares((10, 10), {1: np.s_[0:10, 0:5], 2: np.s_[0:10, 5:10]})
    res = match_instances(truth, pred, threshold=0.5)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 0)


def test_missed_object_is_fn() -> None:
    truth = squares((20, 20), {1: np.s_[0:5, 0:5], 2: np.s_[10:15, 10:15]})
    pred = squares((20, 20), {1: np.s_[0:5, 0:5]})
    res = match_instances(truth, pred)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 0, 1)
    assert res["ap"] == pytest.approx(0.5)
    assert res["recall"] == pytest.approx(0.5)
    assert res["precision"] == 1.0


def test_non_consecutive_ids() -> None:
    truth = squares((20, 20), {3: np.s_[0:5, 0:5], 1000: np.s_[10:15, 10:15]})
    pred = np.where(truth == 3, 2**40, np.where(truth == 1000, 17, 0)).astype(np.int64)
    res = match_instances(truth, pred)
    assert (res["tp"], res["fp"], res["fn"], res["n_true"], res["n_pred"]) == (2, 0, 0, 2, 2)


def test_3d() -> None:
    truth = np.zeros((6, 10, 10), dtype=np.uint16)
    truth[0:4, 0:4, 0:4] = 5
    truth[2:6, 5:10, 5:10] = 9
    pred = np.zeros_like(truth)
    pred[1:5, 0:4, 0:4] = 1  # IoU 48 / 80 = 0.6
    pred[2:6, 5:10, 5:10] = 2
    res = match_instances(truth, pred, threshold=0.5)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 0, 0)
    assert res["mean_matched_iou"] == pytest.approx((0.6 + 1.0) / 2)
    assert average_precision(truth, pred, thresholds=(0.7,)) == {0.7: pytest.approx(1 / 3)}


def test_both_empty_ap_one_and_one_empty() -> None:
    empty = np.zeros((8, 8), dtype=np.int32)
    res = match_instances(empty, empty)
    assert res["ap"] == res["precision"] == res["recall"] == 1.0
    one = squares((8, 8), {4: np.s_[0:3, 0:3]})
    res = match_instances(one, empty)
    assert (res["tp"], res["fp"], res["fn"], res["ap"]) == (0, 0, 1, 0.0)
    assert res["precision"] == 0.0
    res = match_instances(empty, one)
    assert (res["tp"], res["fp"], res["fn"], res["ap"]) == (0, 1, 0, 0.0)


def test_low_threshold_uses_optimal_assignment_not_greedy() -> None:
    # 1D strips (3 rows high): truth A = [0, 10), B = [10, 20); pred Y = [0, 4), X = [4, 14).
    # IoU(A, X) = 6/14 = 0.43 is the best pair, so greedy takes it and leaves B and Y
    # unmatched (1 TP).  Optimal: A-Y (0.4) and B-X (4/16 = 0.25) -> 2 TP.
    truth = squares((3, 20), {1: np.s_[:, 0:10], 2: np.s_[:, 10:20]})
    pred = squares((3, 20), {1: np.s_[:, 0:4], 2: np.s_[:, 4:14]})
    res = match_instances(truth, pred, threshold=0.2)
    assert (res["tp"], res["fp"], res["fn"]) == (2, 0, 0)
    assert res["mean_matched_iou"] == pytest.approx((0.4 + 0.25) / 2)
    # At 0.3 only A-X (0.43) and A-Y (0.4) qualify, both for A: one match, the larger IoU.
    res = match_instances(truth, pred, threshold=0.3)
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 1)
    assert res["mean_matched_iou"] == pytest.approx(6 / 14)


def test_low_threshold_maximises_matches_before_iou() -> None:
    # A-X (7/13 = 0.54) alone has a larger IoU sum than A-Y (0.3) + B-X (3/17 = 0.18),
    # but the two pairs are more matches; like StarDist, the count wins.
    truth = squares((2, 20), {1: np.s_[:, 0:10], 2: np.s_[:, 10:20]})
    pred = squares((2, 20), {1: np.s_[:, 0:3], 2: np.s_[:, 3:13]})
    res = match_instances(truth, pred, threshold=0.15)
    assert res["tp"] == 2


def test_evaluate_pair_keys_and_values() -> None:
    truth = squares((20, 20), {1: np.s_[0:10, 0:10], 2: np.s_[12:20, 12:20]})
    pred = squares((20, 20), {1: np.s_[0:10, 0:10], 5: np.s_[13:20, 12:20]})  # IoU 56/64
    res = evaluate_pair(truth, pred)
    assert set(res) == {"iou", "dice", "ap50", "ap75", "seg", "n_true", "n_pred"}
    assert res["seg"] == pytest.approx((1 + 56 / 64) / 2)
    assert res["iou"] == pytest.approx(156 / 164)
    assert res["dice"] == pytest.approx(2 * 156 / 320)
    assert res["ap50"] == 1.0
    assert res["ap75"] == 1.0
    assert (res["n_true"], res["n_pred"]) == (2, 2)


def test_instance_errors() -> None:
    a = np.zeros((4, 4), dtype=np.int32)
    with pytest.raises(ValueError, match=r"truth \(4, 4\) and pred \(4, 5\)"):
        match_instances(a, np.zeros((4, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="pred must be an integer label array, got dtype float64"):
        match_instances(a, np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 1.5"):
        match_instances(a, a, threshold=1.5)
    with pytest.raises(ValueError, match="truth must not contain negative labels, got minimum -2"):
        match_instances(a - 2, a)
    with pytest.raises(ValueError, match="truth must be a 2D or 3D label image, got 1 dimensions"):
        match_instances(np.zeros(4, dtype=int), np.zeros(4, dtype=int))


# --------------------------------------------------------------------------- brute force


def brute_force(truth: np.ndarray, pred: np.ndarray, threshold: float) -> tuple[int, float]:
    """(TP, sum of matched IoU) from per-object masks and exhaustive matching."""
    t_ids = [int(v) for v in np.unique(truth) if v != 0]
    p_ids = [int(v) for v in np.unique(pred) if v != 0]
    scores = np.zeros((len(t_ids), len(p_ids)))
    for i, t in enumerate(t_ids):
        for j, p in enumerate(p_ids):
            a, b = truth == t, pred == p
            scores[i, j] = np.sum(a & b) / np.sum(a | b)
    best = (0, 0.0)
    # Every injective map from a subset of truth objects to predicted objects.
    n = min(len(t_ids), len(p_ids))
    for k in range(n, 0, -1):
        for rows in itertools.combinations(range(len(t_ids)), k):
            for cols in itertools.permutations(range(len(p_ids)), k):
                s = scores[list(rows), list(cols)]
                if np.all(s >= threshold):
                    best = max(best, (k, float(s.sum())))
        if best[0] == k:
            break
    return best


def random_labels(rng: np.random.Generator, shape: tuple[int, ...], n: int) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    for _ in range(n):
        lo = [int(rng.integers(0, s - 1)) for s in shape]
        box = tuple(slice(a, a + int(rng.integers(1, 6))) for a in lo)
        out[box] = int(rng.integers(1, 1000))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (12, 12) if seed % 4 else (5, 6, 6)
    truth = random_labels(rng, shape, int(rng.integers(0, 5)))
    pred = random_labels(rng, shape, int(rng.integers(0, 5)))
    for threshold in (0.1, 0.3, 0.5, 0.7):
        res = match_instances(truth, pred, threshold)
        tp, total = brute_force(truth, pred, threshold)
        assert res["tp"] == tp
        assert res["fp"] == res["n_pred"] - tp
        assert res["fn"] == res["n_true"] - tp
        if tp:
            assert res["mean_matched_iou"] == pytest.approx(total / tp)
    assert iou(pred, truth) == pytest.approx(
        np.sum((pred > 0) & (truth > 0)) / max(np.sum((pred > 0) | (truth > 0)), 1)
        if (pred > 0).any() or (truth > 0).any()
        else 1.0
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), threshold=st.floats(0.05, 1.0))
def test_matching_is_symmetric(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    a = random_labels(rng, (10, 10), int(rng.integers(0, 6)))
    b = random_labels(rng, (10, 10), int(rng.integers(0, 6)))
    ab = match_instances(a, b, threshold)
    ba = match_instances(b, a, threshold)
    assert ab["tp"] == ba["tp"]
    assert (ab["fp"], ab["fn"]) == (ba["fn"], ba["fp"])
    assert ab["ap"] == pytest.approx(ba["ap"])


def test_seg_score_counts_covering_objects_only() -> None:
    truth = squares((20, 20), {1: np.s_[0:10, 0:10], 2: np.s_[10:20, 10:20]})
    # object 1 found as two halves (neither covers more than half): 0; object 2 whole
    # inside a larger prediction (IoU 100/150); a false positive does not count
    pred = squares(
        (20, 20),
        {3: np.s_[0:10, 0:5], 4: np.s_[0:10, 5:10], 7: np.s_[5:20, 10:20], 9: np.s_[15:20, 0:5]},
    )
    assert seg_score(truth, pred) == pytest.approx((0 + 100 / 150) / 2)
    assert seg_score(truth, truth) == 1.0
    assert seg_score(np.zeros((4, 4), int), np.ones((4, 4), int)) == 1.0
    assert seg_score(truth, np.zeros_like(truth)) == 0.0

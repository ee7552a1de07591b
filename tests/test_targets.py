"""Tests for napari_unet.targets on small hand-made arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.targets import (
    IGNORE,
    border_weight_map,
    classes_to_values,
    instance_targets,
    semantic_targets,
    sparse_instance_targets,
    sparse_targets,
)

# --------------------------------------------------------------------------- sparse


def test_sparse_zero_is_ignore_and_classes_shift() -> None:
    labels = np.array([[0, 1, 2], [3, 0, 1]], dtype=np.uint8)
    out = sparse_targets(labels, num_classes=3)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[IGNORE, 0, 1], [2, IGNORE, 0]])
    assert IGNORE == -1


def test_sparse_bool_means_class_one_painted() -> None:
    out = sparse_targets(np.array([True, False]))
    np.testing.assert_array_equal(out, [0, IGNORE])


def test_sparse_errors() -> None:
    with pytest.raises(ValueError, match="labels must be an integer array, got dtype float32"):
        sparse_targets(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="labels must not contain negative values, got minimum -1"):
        sparse_targets(np.array([[0, -1]]))
    with pytest.raises(ValueError, match="value 5, greater than num_classes=3"):
        sparse_targets(np.array([[0, 5, 2]]), num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        sparse_targets(np.array([[0, 1]]), num_classes=0)


# --------------------------------------------------------------------------- semantic


def test_semantic_isbi_values() -> None:
    labels = np.array([[0, 255], [255, 255]], dtype=np.uint8)
    targets, value_map = semantic_targets(labels)
    assert value_map == (0, 255)
    assert targets.dtype == np.int64
    np.testing.assert_array_equal(targets, [[0, 1], [1, 1]])


def test_semantic_round_trip_with_classes_to_values() -> None:
    labels = np.array([[7, 3, 300], [3, 3, 7]], dtype=np.uint16)
    targets, value_map = semantic_targets(labels)
    assert value_map == (3, 7, 300)
    np.testing.assert_array_equal(targets, [[1, 0, 2], [0, 0, 1]])
    back = classes_to_values(targets, value_map)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint16


def test_semantic_given_value_map_unsorted_and_subset() -> None:
    labels = np.array([[255, 0]], dtype=np.uint8)
    targets, value_map = semantic_targets(labels, value_map=[255, 128, 0])
    assert value_map == (255, 128, 0)
    np.testing.assert_array_equal(targets, [[0, 2]])


def test_semantic_unexpected_values_are_named() -> None:
    labels = np.array([[0, 255, 17, 3]], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"values not in value_map \(0, 255\): 3, 17"):
        semantic_targets(labels, value_map=(0, 255))
    with pytest.raises(ValueError, match="value_map must not repeat values"):
        semantic_targets(labels, value_map=(0, 0))
    with pytest.raises(ValueError, match="labels must be an integer array, got dtype float64"):
        semantic_targets(np.zeros(3))


def test_classes_to_values_dtype_and_errors() -> None:
    assert classes_to_values(np.array([0, 1]), (0, 255)).dtype == np.uint8
    assert classes_to_values(np.array([0, 1]), (-1, 5)).dtype == np.int8
    assert classes_to_values(np.array([1]), (0, 70000)).dtype == np.uint32
    with pytest.raises(ValueError, match=r"classes must be in 0\.\.1 .* got 2"):
        classes_to_values(np.array([0, 2]), (0, 255))
    with pytest.raises(ValueError, match=r"got -1"):
        classes_to_values(np.array([0, -1]), (0, 255))


# --------------------------------------------------------------------------- instances


def test_two_touching_squares_boundaries() -> None:
    labels = np.zeros((8, 12), dtype=np.uint16)
    labels[2:6, 2:6] = 1
    labels[2:6, 6:10] = 2
    expected = np.zeros((8, 12), dtype=np.int64)
    for cols in (np.s_[2:6], np.s_[6:10]):
        expected[2:6, cols] = 2
    expected[3:5, 3:5] = 1
    expected[3:5, 7:9] = 1
    np.testing.assert_array_equal(instance_targets(labels), expected)


def test_image_border_is_not_boundary() -> None:
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[0:4, 0:4] = 9
    out = instance_targets(labels)
    expected = np.zeros((6, 6), dtype=np.int64)
    expected[0:4, 0:4] = 2
    expected[0:3, 0:3] = 1
    np.testing.assert_array_equal(out, expected)


def test_small_and_thin_objects_stay_interior() -> None:
    labels = np.zeros((12, 20), dtype=np.int32)
    labels[1:3, 1:3] = 4  # 2x2: area 4
    labels[6:8, 2:12] = 5  # 2x10: area 20 but no interior pixel
    labels[1:4, 15:18] = 6  # 3x3: area 9, one interior pixel -> ring + center
    out = instance_targets(labels)
    assert np.all(out[1:3, 1:3] == 1)
    assert np.all(out[6:8, 2:12] == 1)
    assert out[2, 16] == 1
    ring = out[1:4, 15:18].copy()
    ring[1, 1] = 2
    assert np.all(ring == 2)
    assert np.all(out[labels == 0] == 0)


def test_single_image_without_objects_is_background() -> None:
    out = instance_targets(np.zeros((5, 5), dtype=np.uint8))
    assert np.all(out == 0)


def test_stack_empty_slice_is_ignore() -> None:
    stack = np.zeros((3, 8, 8), dtype=np.uint16)
    stack[0, 2:6, 2:6] = 1
    stack[2, 1:3, 1:3] = 3
    out = instance_targets(stack, spatial_dims=2)
    assert np.all(out[1] == IGNORE)
    assert out[0, 3, 3] == 1 and out[0, 2, 2] == 2 and out[0, 0, 0] == 0
    assert np.all(out[2][stack[2] > 0] == 1)
    assert np.all(out[2][stack[2] == 0] == 0)


def test_3d_boundaries_in_3d() -> None:
    volume = np.zeros((6, 6, 6), dtype=np.uint8)
    volume[1:5, 1:5, 1:5] = 1
    out = instance_targets(volume, spatial_dims=3)
    expected = np.zeros((6, 6, 6), dtype=np.int64)
    expected[1:5, 1:5, 1:5] = 2
    expected[2:4, 2:4, 2:4] = 1
    np.testing.assert_array_equal(out, expected)
    # The same array as a 2D stack: rings per slice, empty end slices ignored.
    stacked = instance_targets(volume, spatial_dims=2)
    assert np.all(stacked[0] == IGNORE) and np.all(stacked[5] == IGNORE)
    assert stacked[1, 2, 2] == 1  # interior in 2D, boundary in 3D
    assert out[1, 2, 2] == 2


def test_instance_errors() -> None:
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 4"):
        instance_targets(np.zeros((4, 4), dtype=int), spatial_dims=4)
    with pytest.raises(
        ValueError, match="labels must have 2 or 3 dimensions for spatial_dims=2, got 4"
    ):
        instance_targets(np.zeros((2, 2, 4, 4), dtype=int))
    with pytest.raises(ValueError, match="labels must be an integer array, got dtype float64"):
        instance_targets(np.zeros((4, 4)))


# --------------------------------------------------------------------------- weight map


def two_squares(gap: int = 2) -> np.ndarray:
    labels = np.zeros((40, 60), dtype=np.int32)
    left = 30 - gap // 2
    labels[15:25, left - 10 : left] = 1
    labels[15:25, left + gap : left + gap + 10] = 2
    return labels


def test_weight_map_between_close_objects() -> None:
    labels = two_squares(gap=2)  # gap columns 29 and 30
    w = border_weight_map(labels, w0=10.0, sigma=5.0)
    assert w.dtype == np.float32 and w.shape == labels.shape
    f = (labels > 0).mean()
    w_bg, w_fg = 0.5 / (1 - f), 0.5 / f
    # Gap pixel next to object 1: d1 = 1, d2 = 2.
    assert w[20, 29] == pytest.approx(w_bg + 10 * np.exp(-9 / 50), rel=1e-5)
    assert w[0, 0] == pytest.approx(w_bg, abs=1e-4)  # far away: only w_c
    assert w[20, 22] == pytest.approx(w_fg)  # objects get no border term
    assert w[20, 29] > 5 * w[0, 0]
    np.testing.assert_allclose(w, w[:, ::-1], rtol=1e-6)  # mirror-symmetric setup


def test_weight_map_single_object_is_class_weights_only() -> None:
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[5:10, 5:10] = 3
    w = border_weight_map(labels)
    assert np.allclose(w[labels > 0], 0.5 / 0.0625)
    assert np.allclose(w[labels == 0], 0.5 / 0.9375)
    assert w.mean() == pytest.approx(1.0)
    unbalanced = border_weight_map(labels, class_balance=False)
    assert np.all(unbalanced == 1.0)


def test_weight_map_matches_full_image_reference() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros((64, 64), dtype=np.int32)
    for k in range(1, 9):
        r, c = rng.integers(0, 58, size=2)
        labels[r : r + 6, c : c + 6] = k * 11
    w0, sigma = 10.0, 3.0
    ids = np.unique(labels)[1:]
    dists = np.sort(np.stack([ndi.distance_transform_edt(labels != k) for k in ids]), axis=0)
    f = (labels > 0).mean()
    expected = np.where(labels > 0, 0.5 / f, 0.5 / (1 - f))
    border = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    expected = expected + np.where(labels == 0, border, 0.0)
    np.testing.assert_allclose(border_weight_map(labels, w0, sigma), expected, atol=1e-5 * w0)


def test_weight_map_stack_slicewise() -> None:
    stack = np.stack([two_squares(), np.zeros((40, 60), dtype=np.int32)])
    w = border_weight_map(stack, spatial_dims=2)
    assert w.shape == stack.shape
    np.testing.assert_allclose(w[0], border_weight_map(stack[0]))
    assert np.all(w[1] == 1.0)


def test_weight_map_errors() -> None:
    labels = two_squares()
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        border_weight_map(labels, sigma=0)
    with pytest.raises(ValueError, match="w0 must be >= 0, got -1"):
        border_weight_map(labels, w0=-1)
    with pytest.raises(ValueError, match="instances must be an integer array, got dtype float64"):
        border_weight_map(labels.astype(float))


def test_sparse_instance_targets_known_answer():
    from napari_unet.targets import sparse_instance_targets

    lab = np.zeros((10, 12), np.uint8)
    lab[0:2, :] = 1  # painted background
    lab[4:9, 3:8] = 2  # an outlined object
    t = sparse_instance_targets(lab)
    assert (t[0:2] == 0).all()  # background where painted
    assert (t[2:4] == IGNORE).all() and (t[9] == IGNORE).all()  # unlabeled is ignored
    assert (t[5:8, 4:7] == 1).all()  # interior
    ring = np.zeros_like(lab, bool)
    ring[4:9, 3:8] = True
    ring[5:8, 4:7] = False
    assert (t[ring] == 2).all()  # its inner 1-px edge is boundary, against unlabeled too


def test_sparse_instances_in_3d_a_few_slices():
    from napari_unet.targets import sparse_instance_targets

    vol = np.zeros((4, 10, 10), np.uint8)
    vol[1, 2:8, 2:8] = 3  # one object drawn on slices 1 and 2
    vol[2, 2:8, 2:8] = 3
    vol[2, 0, :] = 1
    t = sparse_instance_targets(vol, spatial_dims=3)
    assert (t[0] == IGNORE).all() and (t[3] == IGNORE).all()  # unlabeled slices say nothing
    # no z boundary against the unlabeled slices 0 and 3: the middle stays interior
    assert (t[1, 3:7, 3:7] == 1).all() and (t[2, 3:7, 3:7] == 1).all()
    assert t[2, 0, 0] == 0
    # a stack of 2D slices: each slice on its own
    stack = sparse_instance_targets(vol, spatial_dims=2)
    assert (stack[1, 3:7, 3:7] == 1).all() and stack[1, 2, 2] == 2


# --------------------------------------------------------------------------- touching borders


def _touching_squares(size: int = 40, gap: int = 0) -> np.ndarray:
    labels = np.zeros((size + 20, 2 * size + 20 + gap), np.uint16)
    labels[10 : 10 + size, 10 : 10 + size] = 1
    labels[10 : 10 + size, 10 + size + gap : 10 + 2 * size + gap] = 2
    return labels


@pytest.mark.parametrize("gap", [0, 1])
def test_touching_border_widens_with_the_object(gap) -> None:
    labels = _touching_squares(40, gap)
    row = labels.shape[0] // 2
    thin = instance_targets(labels)
    wide = instance_targets(labels, touch=0.1)  # 45 px diameter: a 4 px band
    contact = 10 + 40  # first column of object 2 (without the gap)
    # a 4 px band beyond the pixels within 2 px of the other object, on both sides
    assert np.all(wide[row, contact - 4 : contact] == 2) and wide[row, contact - 8] == 1
    assert np.all(wide[row, contact + gap : contact + gap + 4] == 2)
    assert wide[row, contact + gap + 7] == 1
    assert np.all(thin[row, contact - 6 : contact - 1] == 1)
    # the band is only where the objects touch: the outer edges stay one pixel
    assert np.all(wide[row, 11:20] == 1) and wide[row, 10] == 2
    assert np.all(wide[12:20, 25] == 1) and wide[10, 25] == 2
    # small objects (band under 2 px) keep the one-pixel edge
    small = _touching_squares(8, gap)
    np.testing.assert_array_equal(instance_targets(small, touch=0.1), instance_targets(small))


def test_touching_border_in_sparse_instances_not_against_painted_background() -> None:
    labels = _touching_squares(40).astype(np.uint8)
    labels[labels > 0] += 1  # outlined objects 2 and 3
    labels[:10] = 1  # painted background, right up to the objects' top edge
    both = sparse_instance_targets(labels, touch=0.1)
    row, contact = labels.shape[0] // 2, 50
    assert np.all(both[row, contact - 5 : contact + 5] == 2)
    # object 3 left unlabeled: a neighbour may touch object 2 there, the band is drawn
    one = labels.copy()
    one[one == 3] = 0
    alone = sparse_instance_targets(one, touch=0.1)
    assert np.all(alone[row, contact - 4 : contact] == 2) and alone[row, 30] == 1
    assert np.all(alone[row, contact:] == IGNORE)
    # against painted background the edge is known: one pixel, interior right behind it
    assert alone[8, 30] == 0 and alone[10, 30] == 2 and alone[11, 30] == 1


def test_touching_border_in_3d() -> None:
    labels = np.zeros((30, 30, 60), np.uint16)
    labels[:, :, :30] = 1
    labels[:, :, 30:] = 2
    out = instance_targets(labels, spatial_dims=3, touch=0.1)  # 39 px diameter: 3 px
    assert np.all(out[15, 15, 27:33] == 2) and np.all(out[15, 15, 20:25] == 1)

"""Proposals accepted into the user's labels, and where to label next (napari_unet.proposals)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.proposals import (
    merged,
    next_free_id,
    next_region,
    placement,
    placements,
    proposals_in,
    uncertainty,
)


def _two_proposals() -> np.ndarray:
    proposals = np.zeros((20, 20), np.int32)
    proposals[2:6, 2:6] = 7  # 16 px
    proposals[10:15, 10:15] = 9  # 25 px
    return proposals


def _apply(labels: np.ndarray, *accepted) -> np.ndarray:
    out = labels.copy()
    for one in accepted:
        out[one.indices] = one.value
    return out


@pytest.mark.parametrize(("kind", "first"), [("instances", 1), ("sparse-instances", 2)])
def test_a_proposal_becomes_the_next_free_object(kind, first):
    labels = np.zeros((20, 20), np.int32)
    one = placement(labels, _two_proposals(), 7, kind)
    assert one.value == first and one.placed == 16 and one.skipped == 0
    labels = _apply(labels, one)
    assert (labels[2:6, 2:6] == first).all() and (labels > 0).sum() == 16
    assert placement(labels, _two_proposals(), 9, kind).value == first + 1


def test_painted_labels_are_never_overwritten_and_counted():
    labels = np.zeros((20, 20), np.int32)
    labels[2:4, 2:6] = 5  # the user's object covers half of proposal 7
    labels[12, 12] = 1  # and painted background inside proposal 9
    one = placement(labels, _two_proposals(), 7, "sparse-instances")
    assert one.value == 6 and one.placed == 8 and one.skipped == 8
    after = _apply(labels, one)
    assert (after[2:4, 2:6] == 5).all() and (after[4:6, 2:6] == 6).all()
    assert placement(labels, _two_proposals(), 9, "sparse-instances").skipped == 1


def test_a_rejected_proposal_is_painted_background_in_sparse_instances_only():
    labels = np.zeros((20, 20), np.int32)
    one = placement(labels, _two_proposals(), 9, "sparse-instances", background=True)
    assert one.value == 1 and one.placed == 25
    with pytest.raises(ValueError, match="only sparse-instances labels paint background"):
        placement(labels, _two_proposals(), 9, "instances", background=True)


def test_the_slice_of_a_stack_gets_its_leading_indices():
    stack = np.zeros((3, 20, 20), np.int32)
    stack[0, 0, 0] = 4  # ids count over the whole stack
    one = placement(
        stack[2], _two_proposals(), 7, "instances", at=(2,), value=next_free_id(stack, "instances")
    )
    assert one.value == 5
    after = _apply(stack, one)
    assert (after[2, 2:6, 2:6] == 5).all() and (after[:2] > 0).sum() == 1


def test_accept_all_in_view_takes_the_proposals_that_reach_into_it():
    labels = np.zeros((20, 20), np.int32)
    labels[10:15, 10:15] = 3  # proposal 9 is wholly labeled already: left out
    proposals = _two_proposals()
    proposals[17:19, 17:19] = 11
    assert proposals_in(proposals, (slice(0, 12), slice(0, 12))) == [7, 9]
    accepted = placements(labels, proposals, "instances", (slice(0, 12), slice(0, 12)))
    assert [(a.proposal, a.value) for a in accepted] == [(7, 4)]
    every = placements(labels, proposals, "instances")
    assert [(a.proposal, a.value) for a in every] == [(7, 4), (11, 5)]
    after = _apply(labels, *every)
    assert len(np.unique(after)) == 4  # 0, the user's 3 and two new objects, none merged


def test_accept_all_is_each_proposal_accepted_in_turn_and_writes_once():
    from skimage.measure import label

    rng = np.random.default_rng(3)
    proposals = label(rng.random((40, 50)) > 0.6).astype(np.int32)  # ~100 small proposals
    stack = np.zeros((3, 40, 50), np.int32)
    stack[1][rng.random((40, 50)) > 0.8] = 2  # painted already: partly overlapped
    stack[0, 0, 0] = 9  # ids count over the whole stack
    plane = stack[1]
    fast = placements(plane, proposals, "sparse-instances", at=(1,), first=10)
    value, slow = 10, []
    for proposal in proposals_in(proposals):
        one = placement(plane, proposals, proposal, "sparse-instances", at=(1,), value=value)
        if one.placed:
            slow.append(one)
            value += 1
    assert len(fast) == len(slow) > 20
    for a, b in zip(fast, slow, strict=True):
        assert (a.proposal, a.value, a.skipped) == (b.proposal, b.value, b.skipped)
        assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices, strict=True))
    indices, values = merged(fast)
    once = stack.copy()
    once[indices] = values
    assert np.array_equal(once, _apply(stack, *slow))
    nothing, no_values = merged([])
    assert nothing == () and no_values.size == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ((20, 21), 7, "instances"),
            r"proposals of shape \(20, 21\) do not match the labels' \(20, 20\)",
        ),
        (((20, 20), 0, "instances"), "proposal 0: 0 is no object"),
        (((20, 20), 8, "instances"), "proposal 8: no such object"),
        (
            ((20, 20), 7, "sparse"),
            "labels kind 'sparse': proposals go into instances or sparse-instances",
        ),
    ],
)
def test_bad_requests_are_named(args, message):
    shape, proposal, kind = args
    proposals = np.zeros(shape, np.int32)
    proposals[2:6, 2:6] = 7
    with pytest.raises(ValueError, match=message):
        placement(np.zeros((20, 20), np.int32), proposals, proposal, kind)


def test_uncertainty_is_the_normalised_entropy():
    sure = np.array([[1.0, 0.0], [0.0, 1.0]])[:, :, None]  # (2 classes, 2, 1)
    assert np.allclose(uncertainty(sure), 0.0, atol=1e-5)
    even = np.full((3, 4, 4), 1 / 3)
    assert np.allclose(uncertainty(even), 1.0, atol=1e-5)
    mixed = uncertainty(np.stack([np.full((2, 2), 0.9), np.full((2, 2), 0.1)]))
    assert 0.4 < mixed.mean() < 0.5  # H(0.9, 0.1) = 0.469 bits
    with pytest.raises(ValueError, match="want \\(classes, ...\\) with 2 or more classes"):
        uncertainty(np.ones((1, 4, 4)))


def test_next_region_is_the_most_uncertain_window_with_no_label():
    unsure = np.zeros((40, 40), np.float32)
    unsure[0:8, 0:8] = 1.0  # most uncertain, but labeled below
    unsure[30:38, 20:28] = 0.6
    unsure[10:18, 30:38] = 0.5  # above the 0.375 of a window beside the label at (4, 4)
    labels = np.zeros((40, 40), np.int32)
    labels[4, 4] = 2
    assert next_region(unsure, labels, 8) == (slice(30, 38), slice(20, 28))
    labels[33, 25] = 1  # painted background counts as labeled too
    assert next_region(unsure, labels, 8) == (slice(10, 18), slice(30, 38))
    assert next_region(unsure, np.ones_like(labels), 8) is None
    assert next_region(unsure, np.zeros_like(labels), (100, 8))[0] == slice(0, 40)
    with pytest.raises(ValueError, match="size 0: want one positive size per axis"):
        next_region(unsure, labels, 0)

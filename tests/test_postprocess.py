"""postprocess.outputs_from_probs: the one way from class probabilities to the outputs asked for."""

import numpy as np
import pytest

from napari_unet.config import LabelsConfig, ModelConfig, ModelSpec
from napari_unet.postprocess import OUTPUTS, outputs_from_probs, require_instances


def _spec(kind, names=("a", "b", "c"), value_map=None, dims=2):
    return ModelSpec(
        model=ModelConfig(spatial_dims=dims, num_classes=len(names)),
        labels=LabelsConfig(kind=kind, class_names=names, value_map=value_map),
    )


def _one_hot(classes, k=3, p=0.9):
    """(k, *shape) probabilities whose arg-max is ``classes``."""
    classes = np.asarray(classes)
    probs = np.full((k, *classes.shape), (1 - p) / (k - 1), np.float32)
    for c in range(k):
        probs[c][classes == c] = p
    return probs


CLASSES = [[0, 1, 2], [2, 2, 0]]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_spec("sparse"), [[1, 2, 3], [3, 3, 1]]),  # class k -> painted value k + 1
        (_spec("semantic", value_map=(0, 128, 255)), [[0, 128, 255], [255, 255, 0]]),
        (_spec("semantic", value_map=(-1, 5, 7)), [[-1, 5, 7], [7, 7, -1]]),
        (_spec("instances", ("background", "interior", "boundary")), CLASSES),
    ],
    ids=["sparse", "semantic", "semantic-negative", "instances"],
)
def test_labels_are_written_in_the_users_values(spec, expected):
    out = outputs_from_probs(_one_hot(CLASSES), spec)
    assert list(out) == ["labels"]
    np.testing.assert_array_equal(out["labels"], expected)
    assert out["labels"].dtype == (np.int64 if np.min(expected) < 0 else np.uint8)


def _two_blobs():
    """Probabilities of two separate 8 x 8 objects: interior ringed by boundary."""
    classes = np.zeros((30, 40), int)
    for y, x in ((4, 4), (16, 26)):
        classes[y : y + 8, x : x + 8] = 2
        classes[y + 1 : y + 7, x + 1 : x + 7] = 1
    return _one_hot(classes), classes


def test_instances_from_two_blobs():
    probs, classes = _two_blobs()
    spec = _spec("instances", ("background", "interior", "boundary"))
    out = outputs_from_probs(probs, spec, labels=False, instances=True)
    assert list(out) == ["instances"]
    inst = out["instances"]
    assert inst.shape == (30, 40) and inst.dtype == np.uint8
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    first, second = inst[4:12, 4:12], inst[16:24, 26:34]
    assert len(np.unique(first)) == 1 and len(np.unique(second)) == 1
    assert first[0, 0] != second[0, 0] and first[0, 0] > 0
    assert (inst > 0).sum() == (classes > 0).sum()  # each blob whole, nothing else


def test_instances_of_a_stack_keep_unique_ids():
    probs, _ = _two_blobs()
    stack = np.stack([probs, probs[:, ::-1]], axis=1)  # (3, 2, Y, X): 2D model, 2 slices
    spec = _spec("instances", ("background", "interior", "boundary"))
    inst = outputs_from_probs(stack, spec, labels=False, instances=True)["instances"]
    assert [sorted(np.unique(s[s > 0]).tolist()) for s in inst] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("kind", ["sparse", "semantic"])
def test_instances_refused_for_a_model_not_trained_on_instances(kind):
    spec = _spec(kind, value_map=(0, 1, 2) if kind == "semantic" else None)
    with pytest.raises(ValueError, match=f"trained on {kind} labels"):
        outputs_from_probs(_one_hot(CLASSES), spec, instances=True)
    with pytest.raises(ValueError, match="instances need a model trained on instance labels"):
        require_instances(spec)
    require_instances(_spec("instances", ("background", "interior", "boundary")))


def test_probabilities_pass_through_and_outputs_come_in_order():
    probs, _ = _two_blobs()
    spec = _spec("instances", ("background", "interior", "boundary"))
    out = outputs_from_probs(probs, spec, instances=True, probabilities=True)
    assert tuple(out) == OUTPUTS
    assert out["probabilities"] is probs
    only = outputs_from_probs(probs, spec, labels=False, probabilities=True)
    assert list(only) == ["probabilities"] and only["probabilities"] is probs
    assert outputs_from_probs(probs, spec, labels=False) == {}


def _touching_disks(radius=12, overlap=4, shape=(40, 80)):
    """Probabilities of two touching disks whose border the network marked faintly
    (interior 0.9 everywhere: every seed threshold merges them), and their truth."""
    yy, xx = np.indices(shape)
    cy, left = shape[0] // 2, 10 + radius
    right = left + 2 * radius - overlap
    truth = np.zeros(shape, np.uint16)
    truth[(yy - cy) ** 2 + (xx - left) ** 2 < radius**2] = 1
    second = ((yy - cy) ** 2 + (xx - right) ** 2 < radius**2) & (truth == 0)
    truth[second] = 2
    probs = np.zeros((3, *shape), np.float32)
    probs[0] = 1.0
    probs[:, truth > 0] = np.array([0.05, 0.9, 0.05])[:, None]
    return probs, truth


def test_split_seeds_cut_touching_disks_the_plain_seeds_merge():
    from napari_unet.metrics import match_instances
    from napari_unet.postprocess import instances_from_probs, split_seeds

    probs, truth = _touching_disks()
    merged = instances_from_probs(probs)
    assert merged.max() == 1  # today's post-processing: one object for two
    cut = instances_from_probs(probs, split=0.25)
    assert cut.max() == 2 and match_instances(truth, cut)["tp"] == 2
    # a single round object, and a 2:1 ellipse, are not cut
    yy, xx = np.indices((60, 60))
    disk = ((yy - 30) ** 2 + (xx - 30) ** 2 < 15**2).astype(np.int32)
    ellipse = (((yy - 30) / 10) ** 2 + ((xx - 30) / 22) ** 2 < 1).astype(np.int32)
    assert split_seeds(disk, 0.25).max() == 1 and split_seeds(ellipse, 0.25).max() == 1
    assert split_seeds(disk, 0.0) is disk

import numpy as np
import pytest
import torch

from napari_unet.config import NormConfig
from napari_unet.data import PatchSampler, normalize
from napari_unet.holdout import split_indices, split_samples
from napari_unet.targets import IGNORE


def test_normalize_percentiles():
    img = np.arange(1000, dtype=np.uint16).reshape(10, 100)
    out = normalize(img, NormConfig(low=1, high=99))
    assert out.dtype == np.float32
    assert abs(np.percentile(out, 1)) < 1e-3 and abs(np.percentile(out, 99) - 1) < 1e-3


def test_normalize_constant_nan_and_channels():
    assert normalize(np.full((8, 8), 7.0), NormConfig()).any() is not None
    img = np.ones((8, 8), np.float32)
    img[0, 0] = np.nan
    assert np.isfinite(normalize(img, NormConfig())).all()
    two = np.stack([np.arange(64).reshape(8, 8), 1000 * np.arange(64).reshape(8, 8)])
    out = normalize(two, NormConfig(), channel_axis=0)
    assert np.allclose(out[0], out[1], atol=1e-5)
    with pytest.raises(ValueError, match="no finite pixel"):
        normalize(np.full((4, 4), np.nan), NormConfig())


def test_split():
    train, val = split_indices(10, 0.2, seed=0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert split_indices(10, 0.2, seed=0) == (train, val)
    assert split_indices(1, 0.5, seed=0) == ([0], [])
    assert split_indices(4, 0.5, seed=0) == ([0, 1, 2, 3], [])  # too few to hold one out


def test_sampler_finds_sparse_strokes():
    rng = np.random.default_rng(0)
    images = [
        rng.random((1, 200, 300)).astype(np.float32),
        rng.random((1, 50, 40)).astype(np.float32),
    ]
    t1 = np.full((200, 300), IGNORE, np.int64)
    t1[100, 10:40] = 1  # a stroke covering 0.05 % of the image
    t1[20, 200:230] = 0
    t2 = np.full((50, 40), IGNORE, np.int64)
    t2[5:8, 5:8] = 0
    s = PatchSampler(
        images, [t1, t2], None, crop=32, num_classes=2, device=torch.device("cpu"), seed=0
    )
    img, tgt, w = s.sample(64)
    assert img.shape == (64, 1, 32, 32) and tgt.shape == (64, 32, 32) and w is None
    with_labels = ((tgt != IGNORE).flatten(1).any(1)).float().mean()
    assert with_labels > 0.5  # uniform crops would almost never hit the strokes
    # both classes are sampled
    assert (tgt == 0).any() and (tgt == 1).any()


def test_sampler_refuses_unlabeled():
    with pytest.raises(ValueError, match="no labeled pixel"):
        PatchSampler(
            [np.zeros((1, 20, 20), np.float32)],
            [np.full((20, 20), IGNORE)],
            None,
            crop=16,
            num_classes=2,
            device=torch.device("cpu"),
        )


def test_fixed_batches_repeat():
    images = [np.random.default_rng(1).random((1, 64, 64)).astype(np.float32)]
    t = np.zeros((64, 64), np.int64)
    t[10:30, 10:30] = 1
    s = PatchSampler(images, [t], None, crop=16, num_classes=2, device=torch.device("cpu"))
    a = s.fixed_batches(5, 2)
    b = s.fixed_batches(5, 2)
    assert [x[0].shape[0] for x in a] == [2, 2, 1]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))


def _strokes_image():
    t = np.full((128, 128), IGNORE, np.int64)
    t[10:14, :] = 0  # background strokes
    t[60:64, :] = 0
    t[:, 100:104] = 1  # a class-1 stroke
    return t


def test_sparse_labels_on_one_image_hold_out_blocks():
    t = _strokes_image()
    split = split_samples([t], "sparse", val_fraction=0.1, seed=0, block=32)
    assert split.train == [0] and split.val == [0]
    train, val = split.train_targets[0], split.val_targets[0]
    labeled = t != IGNORE
    held = val != IGNORE
    assert held.any() and not (held & (train != IGNORE)).any()  # disjoint
    assert np.array_equal(held | (train != IGNORE), labeled)  # nothing lost
    assert 0.1 <= held.sum() / labeled.sum() < 0.5
    assert set(np.unique(train[train != IGNORE])) == {0, 1}  # every class still trains
    assert "held-out blocks" in split.description


def test_sparse_instances_hold_out_whole_objects():
    from scipy import ndimage as ndi

    t = np.full((128, 128), IGNORE, np.int64)
    t[:8, :] = 0
    for k in range(6):  # six outlined objects, each interior with a boundary ring
        y, x = 20 + (k // 3) * 50, 10 + (k % 3) * 40
        t[y : y + 20, x : x + 20] = 2
        t[y + 1 : y + 19, x + 1 : x + 19] = 1
    split = split_samples([t], "sparse-instances", val_fraction=0.1, seed=1, block=32)
    val = split.val_targets[0]
    objects, n = ndi.label(t >= 1)
    for k in range(1, n + 1):
        inside = objects == k
        in_val = (val[inside] != IGNORE).mean()
        assert in_val in (0.0, 1.0)  # an object is held out whole or not at all
    assert (val >= 1).any() or (val == 0).any()


def test_dense_labels_and_many_images():
    dense = [np.zeros((32, 32), np.int64) for _ in range(2)]
    split = split_samples(dense, "instances", 0.1, 0)
    assert split.train == split.val == [0, 1] and "too few to hold any out" in split.description
    many = [_strokes_image() for _ in range(10)]
    split = split_samples(many, "sparse", 0.1, 0)
    assert len(split.val) == 1 and set(split.train).isdisjoint(split.val)
    assert split.description == "1 held-out image(s)"


def _outlined(n_objects, shape=(128, 128), painted=True):
    """sparse-instances labels: ``n_objects`` squares (ids 2..) and a painted band (1)."""
    labels = np.zeros(shape, np.uint16)
    if painted:
        labels[:12] = 1
    for k in range(n_objects):
        y, x = 20 + (k // 4) * 30, 5 + (k % 4) * 30
        labels[y : y + 20, x : x + 20] = k + 2
    return labels


def test_few_images_hold_out_whole_outlined_objects_and_painted_background():
    from napari_unet.targets import sparse_instance_targets

    labels = [_outlined(6), _outlined(4)]
    targets = [sparse_instance_targets(lab) for lab in labels]
    split = split_samples(targets, "sparse-instances", 0.1, 0, block=32, label_images=labels)
    assert split.description.startswith("2 held-out outlined objects of 10 + ")
    assert "px of painted background" in split.description
    held_objects = 0
    for i, lab in enumerate(labels):
        train = split.train_targets[i]
        val = split.val_targets.get(i, np.full(lab.shape, IGNORE))
        assert not ((val != IGNORE) & (train != IGNORE)).any()  # nothing in both
        for v in np.unique(lab[lab > 1]):
            inside = val[lab == v] != IGNORE
            assert inside.all() or not inside.any()  # whole objects or none
            held_objects += int(inside.all())
            assert inside.all() == (train[lab == v] == IGNORE).all()  # held = not trained
        held_bg = (val != IGNORE) & (lab == 1)
        assert ((val != IGNORE) & (lab == 0)).sum() == 0  # unlabeled stays unlabeled
        assert (train[lab == 1] != IGNORE).any()  # some painted background still trains
        if held_bg.any():
            assert (val[held_bg] == 0).all()
    assert held_objects == 2


def test_too_few_objects_hold_nothing_out_and_say_why():
    from napari_unet.targets import sparse_instance_targets

    labels = [_outlined(3)]
    targets = [sparse_instance_targets(lab) for lab in labels]
    split = split_samples(targets, "sparse-instances", 0.1, 0, label_images=labels)
    assert split.val_targets is split.train_targets
    assert split.description == (
        "the training labels (3 outlined objects on 1 image(s): too few to hold any out, 4 needed)"
    )


def test_dense_instances_on_few_images_hold_out_objects_and_background():
    from napari_unet.targets import instance_targets

    from .conftest import make_nuclei

    labels = [make_nuclei(seed=s)[1] for s in range(2)]  # 16 nuclei on 2 images
    targets = [instance_targets(lab) for lab in labels]
    split = split_samples(targets, "instances", 0.1, 0, block=32, label_images=labels)
    n_held = 0
    for i, lab in enumerate(labels):
        val = split.val_targets.get(i)
        if val is None:
            continue
        held = val != IGNORE
        for v in np.unique(lab[held & (lab > 0)]):
            assert held[lab == v].all()  # a held-out object is held out whole
            n_held += 1
        assert (split.train_targets[i][held] == IGNORE).all()
    assert 1 <= n_held < 16
    assert split.description.startswith(f"{n_held} held-out objects of 16 + ")


def test_outlined_objects_on_many_images_still_hold_out_objects_not_images():
    """Five images of a few corrections each: every image keeps training."""
    from napari_unet.targets import sparse_instance_targets

    labels = [_outlined(2) for _ in range(5)]
    targets = [sparse_instance_targets(lab) for lab in labels]
    split = split_samples(targets, "sparse-instances", 0.1, 0, block=32, label_images=labels)
    assert split.description.split(" held-out outlined object")[1].startswith(
        ("s of 10 + ", " of 10 + ")
    )
    assert split.train == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["instances", "semantic"])
def test_a_single_dense_volume_holds_out_a_slab(kind):
    """One densely labeled volume: validation is a slab of whole z slices the loss never sees."""
    from napari_unet._sample_data import make_synthetic_nuclei_3d
    from napari_unet.targets import instance_targets

    _, labels = make_synthetic_nuclei_3d()  # (32, 128, 128)
    target = instance_targets(labels, spatial_dims=3) if kind == "instances" else (labels > 0) * 1
    split = split_samples([target], kind, 0.1, 0, block=16, label_images=[labels])
    assert (
        split.train == split.val == [0] and "held-out slab of the volume (z " in split.description
    )
    held = split.val_targets[0] != IGNORE
    slices = np.flatnonzero(held.any(axis=(1, 2)))
    assert held[slices].all() and len(slices) == 6  # whole slices: 20 % of 32
    assert slices[0] == 0 or slices[-1] == 31  # at one end: the rest stays one block
    assert np.array_equal(np.diff(slices), np.ones(5))
    assert (split.train_targets[0][held] == IGNORE).all()
    assert (split.train_targets[0][~held] == target[~held]).all()
    thin = split_samples([target[:3]], kind, 0.1, 0, label_images=[labels[:3]])  # too thin
    assert "slab" not in thin.description
    flat = split_samples([target[0]], kind, 0.1, 0, label_images=[labels[0]])  # 2D: no slab
    assert "slab" not in flat.description


def _held_objects(split, labels):
    """(sample, label) of the objects a split holds out."""
    held = set()
    if split.val_targets is split.train_targets:  # nothing held out
        return held
    for i, val in split.val_targets.items():
        for v in np.unique(labels[i][(val != IGNORE) & (labels[i] > 1)]):
            held.add((i, int(v)))
    return held


def test_labels_added_later_never_hold_out_what_trained_before():
    """The correction loop: objects and images are added and training continues from the
    model; an object the model trained on must never become a held-out one (the
    calibration would choose on objects the network has learned), and what was held out
    stays held out."""
    from napari_unet.holdout import sample_keys
    from napari_unet.targets import sparse_instance_targets

    rng = np.random.default_rng(3)
    images = [rng.random((1, 128, 128), np.float32) for _ in range(8)]
    keys = sample_keys(images)
    assert len(set(keys)) == 8 and sample_keys(images[:1]) == keys[:1]  # stable, distinct
    rounds_held = 0
    for seed in range(12):
        labels, trained, was_held, fallback = [], set(), set(), set()
        for n in range(1, 9):  # one more image of 2-5 outlined objects each round
            labels.append(_outlined(int(rng.integers(2, 6))))
            targets = [sparse_instance_targets(lab) for lab in labels]
            split = split_samples(
                targets, "sparse-instances", 0.1, seed, block=32, label_images=labels,
                keys=keys[:n],
            )  # fmt: skip
            held = _held_objects(split, labels)
            everything = {
                (i, int(v)) for i, lab in enumerate(labels) for v in np.unique(lab[lab > 1])
            }
            if held:
                assert not held & trained, f"seed {seed}, round {n}: trained, now held out"
                assert was_held - held <= fallback, (
                    f"seed {seed}, round {n}: a held-out object left"
                )
                was_held, rounds_held = held, rounds_held + 1
                fallback = (
                    held if len(held) == 1 else set()
                )  # the lowest draw, none under the share
                trained |= everything - held  # (before: too few to hold any out, all trained)
    assert rounds_held > 12 * 5  # from the round with 4 objects on


def test_images_added_later_keep_the_held_out_images():
    from napari_unet.holdout import split_indices, unit

    for seed in range(20):
        before_train, before_val = split_indices(6, 0.2, seed, [f"k{j}" for j in range(6)])
        train, val = split_indices(12, 0.2, seed, [f"k{j}" for j in range(12)])
        assert val and train and set(before_train).isdisjoint(val)
        stays = [j for j in before_val if unit(seed, "image", f"k{j}") < 0.2]
        assert set(stays) <= set(val)  # not only the lowest draw: it stays


def test_the_held_out_objects_follow_the_image_not_its_place():
    from napari_unet.holdout import sample_keys
    from napari_unet.targets import sparse_instance_targets

    rng = np.random.default_rng(0)
    images = [rng.random((1, 96, 96), np.float32) for _ in range(3)]
    labels = [_outlined(k, shape=(96, 96)) for k in (3, 4, 5)]
    targets = [sparse_instance_targets(lab) for lab in labels]

    def held(order):
        split = split_samples(
            [targets[j] for j in order], "sparse-instances", 0.1, 0, block=32,
            label_images=[labels[j] for j in order], keys=sample_keys([images[j] for j in order]),
        )  # fmt: skip
        return {(order[i], v) for i, v in _held_objects(split, [labels[j] for j in order])}

    assert held([0, 1, 2]) == held([2, 0, 1]) != set()

"""'Label a few cells': sparse-instances labels train what dense-instance labels of the same
few objects cannot (every unlabeled cell would be taught as background)."""

import re

import numpy as np
from scipy import ndimage as ndi

import napari_unet as nu
from napari_unet import events as ev
from napari_unet.metrics import match_instances
from napari_unet.training import train

from .conftest import make_nuclei

SMALL = dict(width=8, depth=3, patch=64, batch_size=4, device="cpu", steps=80)


def few_cells(labels, k=2, seed=0):
    """k objects outlined (ids 2, 3, ...) and a grid of background strokes away from cells."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(np.unique(labels[labels > 0]), k, replace=False)
    out = np.zeros(labels.shape, np.uint16)
    grid = np.zeros(labels.shape, bool)
    grid[::24, :] = grid[:, ::24] = True
    out[ndi.binary_dilation(grid) & ~ndi.binary_dilation(labels > 0, iterations=3)] = 1
    for j, i in enumerate(chosen):
        out[labels == i] = j + 2
    return out


def test_two_cells_per_image_segment_unseen_images():
    pairs = [make_nuclei(seed=s, n=10) for s in range(3)]
    images = [p[0] for p in pairs]
    sparse = [few_cells(p[1], seed=i) for i, p in enumerate(pairs)]
    assert all(len(np.unique(s)) == 4 for s in sparse)  # 0, 1 and two objects
    test = [make_nuclei(seed=100 + s, n=10) for s in range(3)]

    def ap(model):
        return np.mean(
            [match_instances(t, nu.predict(model, i, instances=True, device="cpu"))["ap"]
             for i, t in test]
        )  # fmt: skip

    events = []
    few = train(images, sparse, labels_kind="sparse-instances", callback=events.append, **SMALL)
    started = events[0]
    # not the objects it trains on: one of the six outlined cells and some painted background
    assert re.match(r"[1-5] held-out outlined objects? of 6 \+ ", started.validation)
    assert any(isinstance(e, ev.Calibrated) for e in events)
    # the same objects as dense instance masks: the other cells become background
    dense_few = [np.where(s >= 2, s - 1, 0) for s in sparse]
    old_way = train(images, dense_few, labels_kind="instances", **SMALL)
    assert ap(few) > 0.6
    assert ap(few) > ap(old_way) + 0.15
    assert few.config.labels.kind == "sparse-instances" and few.config.labels.instances


def test_a_few_objects_on_a_few_slices_of_a_volume():
    """3D sparse-instances: objects outlined on two slices, background on a third; the
    model trains (validation on a held-out object and painted background), calibrates in
    3D on them and predicts instances."""
    from napari_unet._sample_data import make_synthetic_nuclei_3d

    vol, truth = make_synthetic_nuclei_3d()[:2]
    labels = np.zeros(truth.shape, np.uint16)
    for z in (truth.shape[0] // 3, 2 * truth.shape[0] // 3):
        ids = [i for i in np.unique(truth[z]) if i][:2]
        for j, i in enumerate(ids):
            labels[z][truth[z] == i] = 2 + j + 10 * (z > truth.shape[0] // 2)
    labels[truth.shape[0] // 2][truth[truth.shape[0] // 2] == 0] = 1
    events = []
    model = train(
        [vol], [labels], labels_kind="sparse-instances", spatial_dims=3, steps=4, width=2,
        depth=2, patch=16, batch_size=1, device="cpu", callback=events.append,
    )  # fmt: skip
    assert events[0].validation.startswith("1 held-out outlined object of 4 + ")
    calibrated = [e for e in events if isinstance(e, ev.Calibrated)]
    assert len(calibrated) == 1 and calibrated[0].measured_on == events[0].validation
    out = nu.predict(model, vol, instances=True, device="cpu")
    assert out.shape == vol.shape and out.dtype.kind == "u"

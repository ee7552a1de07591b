import numpy as np
import pytest
import torch

from napari_unet.config import NormConfig
from napari_unet.data import PatchSampler, normalize, split_indices
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

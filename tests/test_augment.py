import numpy as np
import pytest
import torch

from napari_unet.augment import AugmentConfig, augment_batch, crop_margin
from napari_unet.targets import IGNORE

NO_INTENSITY = dict(contrast=(1.0, 1.0), brightness=0.0, gamma=(1.0, 1.0), noise=0.0)


def _blocks(n, size, dims, classes=3):
    """Targets made of large constant blocks; the image equals the target."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, classes, (n,) + (4,) * dims, generator=g)
    target = coarse
    for axis in range(1, dims + 1):
        target = target.repeat_interleave(size // 4, dim=axis)
    image = target.float().unsqueeze(1)
    return image, target


@pytest.mark.parametrize("dims", [2, 3])
def test_shapes_and_no_invented_classes(dims):
    size, out = 48, (24,) * dims
    image, target = _blocks(3, size, dims)
    target[:, : size // 8] = IGNORE
    cfg = AugmentConfig(**NO_INTENSITY)
    img, tgt, w = augment_batch(
        image, target, torch.ones(target.shape), out, cfg, torch.Generator().manual_seed(1)
    )
    assert img.shape == (3, 1, *out)
    assert tgt.shape == (3, *out) and w.shape == (3, *out)
    assert tgt.dtype == torch.int64
    assert set(torch.unique(tgt).tolist()) <= {IGNORE, 0, 1, 2}


@pytest.mark.parametrize("dims", [2, 3])
def test_image_and_target_move_together(dims):
    image, target = _blocks(4, 64, dims)
    cfg = AugmentConfig(**NO_INTENSITY)
    img, tgt, _ = augment_batch(
        image, target, None, (32,) * dims, cfg, torch.Generator().manual_seed(2)
    )
    labeled = tgt != IGNORE
    agree = (img[:, 0].round().long() == tgt)[labeled].float().mean()
    # bilinear image vs nearest target disagree only along block edges
    assert agree > 0.9


def test_outside_pixels_become_ignore():
    # a crop too small for a strong zoom-out: its outside must be IGNORE, weight 0
    image, target = _blocks(2, 16, 2)
    cfg = AugmentConfig(scale=(3.0, 3.0), rotate=False, flip=False, elastic_sigma=0, **NO_INTENSITY)
    img, tgt, w = augment_batch(
        image, target, torch.ones(target.shape), (32, 32), cfg, torch.Generator().manual_seed(0)
    )
    assert (tgt == IGNORE).any() and (tgt != IGNORE).any()
    assert torch.all(w[tgt == IGNORE] < 1)


def test_identity_when_everything_is_off():
    image, target = _blocks(2, 32, 2)
    cfg = AugmentConfig(rotate=False, scale=(1.0, 1.0), flip=False, elastic_sigma=0, **NO_INTENSITY)
    img, tgt, _ = augment_batch(image, target, None, (16, 16), cfg, torch.Generator())
    assert torch.equal(tgt, target[:, 8:24, 8:24])
    assert torch.allclose(img[:, 0], image[:, 0, 8:24, 8:24])


def test_random_but_reproducible():
    image, target = _blocks(2, 64, 2)
    cfg = AugmentConfig()
    a = augment_batch(image, target, None, (32, 32), cfg, torch.Generator().manual_seed(5))
    b = augment_batch(image, target, None, (32, 32), cfg, torch.Generator().manual_seed(5))
    c = augment_batch(image, target, None, (32, 32), cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_margin_covers_rotation():
    cfg = AugmentConfig()
    m = crop_margin(128, cfg)
    # the rotated, zoomed-out patch corners must stay inside the crop
    assert 64 + m >= 64 * np.sqrt(2) * cfg.scale[1]

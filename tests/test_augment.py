import numpy as np
import pytest
import torch

from napari_unet.augment import (
    AugmentConfig,
    augment_batch,
    crop_margin,
    gaussian_blur,
    jitter_intensity,
)
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


def test_inversion_flips_dark_and_bright():
    image = torch.zeros(64, 1, 8, 8)
    image[:, :, 2:6, 2:6] = 1.0  # a bright object on a dark ground
    cfg = AugmentConfig(invert=0.5, **NO_INTENSITY)
    out = jitter_intensity(image, cfg, torch.Generator().manual_seed(0))
    inverted = out[:, 0, 0, 0] == 1.0
    assert 10 < int(inverted.sum()) < 54  # about half of the samples
    assert torch.equal(out[inverted], 1.0 - image[inverted])
    assert torch.equal(out[~inverted], image[~inverted])
    never = jitter_intensity(image, AugmentConfig(**NO_INTENSITY), torch.Generator())
    assert torch.equal(never, image)


@pytest.mark.parametrize("dims", [2, 3])
def test_blur_smooths_in_plane_and_keeps_the_mean(dims):
    g = torch.Generator().manual_seed(0)
    image = torch.rand((2, 1) + (16,) * dims, generator=g)
    out = gaussian_blur(image, torch.tensor([0.0, 2.0]))
    assert out.shape == image.shape
    assert torch.allclose(out[0], image[0])  # sigma 0: unchanged
    assert out[1].std() < 0.6 * image[1].std()  # sigma 2: smoothed
    assert abs(float(out[1].mean() - image[1].mean())) < 0.02
    if dims == 3:  # z is not blurred: a single bright plane stays a single plane
        plane = torch.zeros(1, 1, 5, 16, 16)
        plane[:, :, 2] = 1.0
        blurred = gaussian_blur(plane, torch.tensor([1.5]))
        assert torch.all(blurred[:, :, [0, 1, 3, 4]] == 0)


def test_the_training_recipe_sets_inversion_and_blur():
    from napari_unet.config import TrainConfig
    from napari_unet.trainer import augment_config

    cfg = augment_config(TrainConfig(augment_invert=0.3, augment_blur=1.5, augment_scale=(0.5, 2)))
    assert (cfg.invert, cfg.blur, cfg.scale) == (0.3, 1.5, (0.5, 2.0))
    assert augment_config(TrainConfig()).invert == 0.0

"""The training scale: images whose labeled objects are wide are shrunk to train, the
factor is recorded in the model (normalization.scale) and every prediction resizes by it
(napari_unet.zoom.training_scale, napari_unet.data.resized_pair)."""

import math
from dataclasses import replace

import numpy as np
import pytest
import tifffile

from napari_unet.batch import predict_files_iter
from napari_unet.bioimageio import Sizes, _readme
from napari_unet.config import (
    OBJECT_WIDTH,
    LabelsConfig,
    ModelConfig,
    ModelSpec,
    NormConfig,
    TrainConfig,
)
from napari_unet.data import resized_pair
from napari_unet.events import TrainStarted, drain
from napari_unet.inference import (
    at_zoom,
    predict_iter,
    predict_proba,
    predict_proba_iter,
    predict_zoomed_iter,
)
from napari_unet.training import train
from napari_unet.zoom import objects_width, training_scale

from .conftest import make_nuclei

RADIUS = (36, 44)  # disks about 80 px wide: shrunk to OBJECT_WIDTH


def disks(radius, r_max, shape):
    """Labels with one disk of each radius in ``radius`` along a row."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    x = 0
    for k, r in enumerate(radius, 1):
        x += r + 2
        labels[(yy - r_max - 2) ** 2 + (xx - x) ** 2 <= r * r] = k
        x += r
    return labels


def test_the_scale_brings_wide_objects_to_the_object_width():
    labels = disks([40, 40, 40], 40, (90, 260))
    width = objects_width([labels], "instances", 2)
    assert width == pytest.approx(80, rel=0.02)
    assert training_scale([labels], "instances", 2) == pytest.approx(OBJECT_WIDTH / width, 0.01)
    small = disks([8, 9, 10], 10, (30, 70))
    assert training_scale([small], "instances", 2) == 1.0  # narrower: as they are
    assert training_scale([labels], "instances", 3) == 1.0  # 3D: as they are
    assert training_scale([labels], "sparse", 2) == 1.0  # no objects in these kinds
    assert training_scale([labels], "semantic", 2) == 1.0
    assert training_scale([np.zeros((9, 9), np.uint8)], "instances", 2) == 1.0
    # sparse-instances: painted background (1) is no object, however large
    sparse = np.where(small > 0, small + 1, 0).astype(np.uint16)
    sparse[:, :3] = 1
    sparse_big = np.where(labels > 0, labels + 1, 1).astype(np.uint16)
    assert training_scale([sparse], "sparse-instances", 2) == 1.0
    assert training_scale([sparse_big], "sparse-instances", 2) < 1.0


def test_resized_pair_keeps_thin_strokes_and_the_ids():
    image = np.random.default_rng(0).random((1, 100, 120)).astype(np.float32)
    sparse = np.zeros((100, 120), np.uint8)
    sparse[10, 5:100] = 1  # one-pixel strokes, as a brush of width 1 paints them
    sparse[50:90, 60] = 2
    img, lab = resized_pair(image, sparse, 0.3, "sparse")
    assert img.shape == (1, 30, 36) and lab.shape == (30, 36) and lab.dtype == np.uint8
    assert (lab == 1).sum() >= 20 and (lab == 2).sum() >= 8  # both strokes, unbroken
    # dense instances: nearest neighbour, no new ids, no id mixing at the borders
    ids = disks([20, 25, 30], 30, (70, 170))
    _, small = resized_pair(np.zeros((1, 70, 170), np.float32), ids, 0.5, "instances")
    assert small.shape == (35, 85) and set(np.unique(small)) == {0, 1, 2, 3}
    for k, r in zip((1, 2, 3), (20, 25, 30), strict=True):
        assert (small == k).sum() == pytest.approx(math.pi * (r / 2) ** 2, rel=0.15)
    same_img, same_lab = resized_pair(image, sparse, 1.0, "sparse")
    assert same_img is image and same_lab is sparse


def test_scales_out_of_range_are_refused_with_their_name():
    with pytest.raises(ValueError, match=r"normalization.scale must be in \[0.05, 4.0\], got 0"):
        NormConfig(scale=0)
    with pytest.raises(ValueError, match=r"^scale must be in \[0.05, 4.0\], got 9"):
        TrainConfig(scale=9)
    with pytest.raises(ValueError, match="normalization.scale must be 1 for a 3D model, got 0.5"):
        ModelSpec(
            model=ModelConfig(spatial_dims=3),
            labels=LabelsConfig(),
            normalization=NormConfig(scale=0.5),
        )


@pytest.fixture(scope="module")
def wide_model():
    """A model of disks about 80 px wide: trained shrunk (a few steps; what it learns does
    not matter here, where it is applied does)."""
    pairs = [make_nuclei(shape=(192, 192), n=3, radius=RADIUS, seed=s) for s in range(3)]
    events = []
    model = train(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        labels_kind="instances",
        steps=4,
        width=4,
        depth=2,
        patch=48,
        batch_size=2,
        device="cpu",
        init="scratch",
        callback=events.append,
    )
    return model, [p[1] for p in pairs], events


def test_training_shrinks_wide_objects_and_says_so(wide_model):
    model, labels, events = wide_model
    scale = model.config.normalization.scale
    assert scale == training_scale(labels, "instances", 2) and 0.5 < scale < 0.75
    started = next(e for e in events if isinstance(e, TrainStarted))
    assert started.settings["scale"] == scale
    assert f"images resized to {scale:g}x" in started.describe()
    assert model.history["sessions"][-1]["scale"] == scale
    # the object size the zoom compares with is the network's: the shrunk objects' pixels
    size = model.config.postprocess.object_size
    assert size is not None and size == pytest.approx(math.pi * 40**2 * scale**2, rel=0.35)


def test_every_prediction_resizes_by_the_model_scale(wide_model, tmp_path):
    model, _, _ = wide_model
    scale = model.config.normalization.scale
    image, _ = make_nuclei(shape=(160, 176), n=3, radius=RADIUS, seed=9)
    probs = predict_proba(model, image, device="cpu")
    assert probs.shape == (3, 160, 176)
    assert np.array_equal(probs, predict_proba(model, image, device="cpu", zoom=scale))
    assert not np.allclose(probs, predict_proba(model, image, device="cpu", zoom=1.0))
    # a zoom given by the user is relative to the model's scale
    _, used = drain(predict_zoomed_iter(model, image, zoom=1.0, device="cpu"))
    assert used == pytest.approx(scale)
    _, used = drain(predict_zoomed_iter(model, image, zoom=2.0, device="cpu"))
    assert used == pytest.approx(2 * scale)
    # block by block (zarr outputs, images larger than memory): the same probabilities

    def sink(block, p):
        out[(slice(None), *block.core)] = p[(slice(None), *block.core_in_window)]

    big, _ = make_nuclei(shape=(400, 416), n=12, radius=RADIUS, seed=10)
    whole = predict_proba(model, big, device="cpu")
    out = np.zeros_like(whole)
    drain(predict_proba_iter(model, big, device="cpu", sink=sink, block=96))
    assert np.abs(out - whole).max() < 0.05
    assert (out.argmax(0) == whole.argmax(0)).mean() > 0.99
    # the batch's zarr outputs say at which zoom they were predicted
    tifffile.imwrite(tmp_path / "a.tif", image)
    drain(predict_files_iter(model, str(tmp_path / "a.tif"), tmp_path / "o", fmt="zarr"))
    header, row = ((tmp_path / "o" / "summary.csv").read_text().splitlines()[i] for i in (0, 1))
    assert float(row.split(",")[header.split(",").index("zoom")]) == pytest.approx(scale, 1e-2)


def test_a_continued_model_keeps_its_scale(wide_model):
    model, labels, _ = wide_model
    image, labs = make_nuclei(shape=(192, 192), n=3, radius=RADIUS, seed=5)
    scale = model.config.normalization.scale
    with pytest.raises(ValueError, match=f"trained on images resized by {scale:g}"):
        train([image], [labs], model=model, steps=1, config=TrainConfig(scale=1.0), device="cpu")
    # small objects now: still the model's scale, not a new one
    small, small_labels = make_nuclei(shape=(96, 96), seed=1)
    again = train([small], [small_labels], model=model, steps=1, device="cpu")
    assert again.config.normalization.scale == scale


def test_packages_say_to_resize_the_inputs(wide_model):
    model, _, _ = wide_model
    scale = model.config.normalization.scale
    readme = _readme(model, "wide", _sizes(model))
    assert f"resize each input by {scale:g} before the network" in readme
    plain = replace(model, config=replace(model.config, normalization=NormConfig()))
    assert "resize each input" not in _readme(plain, "plain", _sizes(plain))


def _sizes(model):
    return Sizes.of(model.config.model)


# --- anisotropic voxels: volumes resized along z (normalization.z_scale) ------------------


def test_the_z_scale_comes_from_the_voxel_size():
    from napari_unet.zoom import z_scale_for

    assert z_scale_for((0.28, 0.13, 0.13)) == 2.2  # a confocal stack: z 2.2x coarser
    assert z_scale_for(None) == z_scale_for((1, 1, 1)) == z_scale_for((0.11, 0.1, 0.1)) == 1.0
    assert z_scale_for((0.05, 0.1, 0.1)) == 0.5  # z finer than y and x
    assert z_scale_for((10, 0.1, 0.1)) == 4.0  # clipped to Z_SCALE_RANGE
    with pytest.raises(ValueError, match=r"spacing=\(1, 0, 1\): want the voxel size as three"):
        train([np.zeros((8, 16, 16))], [np.zeros((8, 16, 16), np.uint8)], spacing=(1, 0, 1))
    with pytest.raises(ValueError, match="normalization.z_scale must be 1 for a 2D model"):
        ModelSpec(model=ModelConfig(), labels=LabelsConfig(), normalization=NormConfig(z_scale=2))


def test_resized_pair_resizes_a_volume_along_z_only():
    volume = np.zeros((1, 6, 20, 20), np.float32)
    labels = np.zeros((6, 20, 20), np.uint16)
    labels[2:4, 5:10, 5:10] = 3
    img, lab = resized_pair(volume, labels, (2.0, 1.0, 1.0), "instances")
    assert img.shape == (1, 12, 20, 20) and lab.shape == (12, 20, 20)
    assert set(np.unique(lab)) == {0, 3} and (lab[4:8, 5:10, 5:10] == 3).all()


@pytest.fixture(scope="module")
def anisotropic_model():
    """A 3D model trained on volumes whose voxels are 2x coarser in z (a few steps)."""
    from napari_unet._sample_data import make_synthetic_nuclei_3d

    image, labels = make_synthetic_nuclei_3d()
    events = []
    model = train(
        [image[::2, :64, :64]], [labels[::2, :64, :64]], labels_kind="instances", steps=2,
        spatial_dims=3, width=4, depth=2, patch=16, batch_size=1, device="cpu",
        spacing=(2.0, 1.0, 1.0), callback=events.append,
    )  # fmt: skip
    return model, image[::2, 64:, 64:], events


def test_a_3d_training_resizes_along_z_and_prediction_does_the_same(anisotropic_model):
    model, volume, events = anisotropic_model
    assert model.config.normalization.z_scale == 2.0
    assert model.history["sessions"][-1]["z_scale"] == 2.0
    started = next(e for e in events if isinstance(e, TrainStarted))
    assert "volumes resized to 2x along z for near-isotropic voxels" in started.describe()
    probs = predict_proba(model, volume, device="cpu")
    assert probs.shape == (3, *volume.shape)  # the input's shape, not the resized one
    assert not np.allclose(probs, predict_proba(model, volume, device="cpu", z_scale=1.0))
    labels = drain(predict_iter(model, volume, instances=True, device="cpu"))
    assert labels.shape == volume.shape
    # the minimum size was chosen on the resized volumes: half the voxels on the input's grid
    size = model.config.postprocess.min_size_for(3)
    assert at_zoom(model.config, 1.0).postprocess.min_size == round(size / 2)
    # a continued model keeps its voxel size; another one is refused, naming it
    with pytest.raises(ValueError, match=r"spacing=\(1.0, 1.0, 1.0\): the volumes would be"):
        train([volume], [labels], model=model, steps=1, device="cpu", spacing=(1, 1, 1))
    readme = _readme(model, "anisotropic", _sizes(model))
    assert "resize each input volume along z by 2 before the network" in readme

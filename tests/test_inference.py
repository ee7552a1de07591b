import numpy as np
import pytest

import napari_unet as nu
from napari_unet.config import LabelsConfig, ModelConfig, ModelSpec
from napari_unet.inference import guess_axes
from napari_unet.postprocess import class_labels, instances_from_probs


def spec(dims=2, c=1):
    return ModelSpec(model=ModelConfig(spatial_dims=dims, in_channels=c))


@pytest.mark.parametrize(
    ("shape", "dims", "c", "axes"),
    [
        ((64, 64), 2, 1, "YX"),
        ((5, 64, 64), 2, 1, "ZYX"),
        ((3, 5, 64, 64), 2, 1, "TZYX"),
        ((2, 64, 64), 2, 2, "CYX"),
        ((64, 64, 3), 2, 3, "YXC"),
        ((16, 64, 64), 3, 1, "ZYX"),
        ((4, 16, 64, 64), 3, 1, "TZYX"),
    ],
)
def test_guess_axes(shape, dims, c, axes):
    assert guess_axes(shape, spec(dims, c)) == axes


def test_guess_axes_errors():
    with pytest.raises(ValueError, match="looks like RGB"):
        guess_axes((64, 64, 3), spec())
    with pytest.raises(ValueError, match="no axis of the image"):
        guess_axes((5, 64, 64), spec(2, 2))


def test_stack_is_predicted_slice_wise(tiny_model, nuclei):
    model, _ = tiny_model
    images, _ = nuclei
    stack = np.stack(images[:3])
    probs = nu.predict_proba(model, stack, device="cpu")
    assert probs.shape == (3, *stack.shape)
    one = nu.predict_proba(model, images[1], device="cpu")
    # normalisation uses the stack's range, so compare loosely
    assert np.abs(probs[:, 1] - one).mean() < 0.05
    inst = nu.predict(model, stack, instances=True, device="cpu")
    ids = [set(np.unique(s[s > 0])) for s in inst]
    assert not (ids[0] & ids[1])  # ids stay unique across slices


def test_axes_argument_moves_channels(tiny_model, nuclei):
    model, _ = tiny_model
    img = nuclei[0][0]
    a = nu.predict(model, img, device="cpu")
    b = nu.predict(model, img.T, axes="XY", device="cpu")
    np.testing.assert_array_equal(a, b.T)
    with pytest.raises(ValueError, match="must name each"):
        nu.predict(model, img, axes="YXC")
    with pytest.raises(ValueError, match="lack X"):
        nu.predict(model, img, axes="YZ")
    c = nu.predict(model, img[..., None], axes="YXC", device="cpu")
    np.testing.assert_array_equal(a, c)


def test_instances_need_instance_model():
    from napari_unet.model import UNet
    from napari_unet.store import Model

    s = ModelSpec(
        model=ModelConfig(num_classes=2), labels=LabelsConfig(kind="sparse", class_names=("a", "b"))
    )
    m = Model(network=UNet.from_config(s.model), config=s)
    with pytest.raises(ValueError, match="trained on sparse labels"):
        nu.predict(m, np.zeros((32, 32)), instances=True)


def test_instances_split_touching_disks():
    yy, xx = np.mgrid[:40, :60]
    a = (yy - 20) ** 2 + (xx - 20) ** 2 <= 81
    b = (yy - 20) ** 2 + (xx - 37) ** 2 <= 81
    probs = np.zeros((3, 40, 60), np.float32)
    probs[0] = 1
    for disk in (a, b):
        probs[:, disk] = np.array([0, 1, 0])[:, None]
    edge = (a | b) & ~(
        (((yy - 20) ** 2 + (xx - 20) ** 2) <= 49) | (((yy - 20) ** 2 + (xx - 37) ** 2) <= 49)
    )
    probs[:, edge] = np.array([0, 0, 1])[:, None]
    lab = instances_from_probs(probs)
    assert lab.max() == 2
    assert len(np.unique(lab[a & ~b])) == 1 and lab[20, 20] != lab[20, 37]
    # nothing bigger than min_size gets lost: a seedless blob becomes its own object
    probs2 = probs.copy()
    probs2[:, 30:36, 50:56] = np.array([0, 0, 1])[:, None, None]
    assert instances_from_probs(probs2).max() == 3


def test_class_labels_mapping():
    probs = np.zeros((2, 2, 2), np.float32)
    probs[1, 0, 0] = 1
    sparse = LabelsConfig(kind="sparse", class_names=("bg", "cell"))
    sem = LabelsConfig(kind="semantic", class_names=("m", "c"), value_map=(0, 255))
    np.testing.assert_array_equal(class_labels(probs, sparse), [[2, 1], [1, 1]])
    np.testing.assert_array_equal(class_labels(probs, sem), [[255, 0], [0, 0]])


def test_grey_stored_as_rgba_is_read_as_grey(tiny_model, nuclei):
    model, _ = tiny_model
    img = nuclei[0][0]
    rgba = np.stack([img, img, img, np.full_like(img, 255)], axis=-1)
    np.testing.assert_array_equal(
        nu.predict(model, rgba, device="cpu"), nu.predict(model, img, device="cpu")
    )
    colour = rgba.copy()
    colour[..., 1] = 0
    with pytest.raises(ValueError, match="looks like RGB"):
        nu.predict(model, colour, device="cpu")

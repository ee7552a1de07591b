"""The training-data checks shared by the engine, the CLI and the widgets (napari_unet.inputs)."""

import numpy as np
import pytest

from napari_unet.inputs import Continued, Names, channels_of, check_training_data
from napari_unet.training import train

LAYERS = Names(
    [("image layer 'cells'", "labels layer 'cells labels'")],
    labels="the labels layers",
    model="the model 'mine'",
)
IMG = np.zeros((32, 32), np.uint8)


def strokes(*values, dtype=np.uint8):
    lab = np.zeros((32, 32), dtype)
    for i, v in enumerate(values):
        lab[2 + 3 * i, :] = v
    return lab


@pytest.mark.parametrize(
    ("image", "labels", "kind", "message"),
    [
        (IMG, np.zeros((30, 32), np.uint8), "sparse",
         "image layer 'cells' has shape (32, 32) but labels layer 'cells labels' has shape"),
        (IMG, strokes(1, 2).astype(np.float32), "sparse",
         "labels layer 'cells labels': labels must be integers, got float32"),
        (IMG, strokes(1, 2).astype(np.int8) - 2, "sparse",
         "labels layer 'cells labels': label values must be >= 0, found -2"),
        (IMG, np.zeros((2, 2, 32, 32), np.uint8), "sparse",
         "label image of shape (2, 2, 32, 32); a 2D model trains on 2D label images"),
        (np.full((32, 32), np.nan, np.float32), strokes(1, 2), "sparse",
         "image layer 'cells': no finite pixel value (all NaN or Inf)"),
        (IMG, np.zeros((32, 32), np.uint8), "sparse", "the labels layers: nothing is painted"),
        (IMG, strokes(2), "sparse", "only one class is painted (value 2)"),
        (IMG, strokes(1, 400, dtype=np.uint16), "sparse", "value 400 would make 400 classes"),
        (IMG, np.full((32, 32), 5, np.uint8), "semantic", "every label image holds only 5"),
        (IMG, np.zeros((32, 32), np.uint8), "instances", "no object in any label image"),
        (IMG, strokes(1, 2), "blobs", "labels_kind must be one of sparse, semantic, instances"),
    ],
)  # fmt: skip
def test_each_check_names_what_it_was_given(image, labels, kind, message):
    with pytest.raises(ValueError) as err:
        check_training_data([image], [labels], kind, names=LAYERS)
    assert message in str(err.value)


def test_channels_and_the_model_being_continued():
    rgb = np.zeros((32, 32, 3), np.uint8)
    assert channels_of(rgb.shape, (32, 32)) == 3
    assert channels_of((2, 32, 32), (32, 32)) == 2
    assert channels_of((32, 31), (32, 32)) is None
    two = Names([("a.tif", "a_l.tif"), ("b.tif", "b_l.tif")], model="the model in m")
    with pytest.raises(ValueError, match=r"b.tif has 3 channel\(s\) but a.tif has 1"):
        check_training_data([IMG, rgb], [strokes(1, 2)] * 2, "sparse", names=two)
    grey = Continued(in_channels=1, class_names=("background", "cell"))
    with pytest.raises(ValueError, match=r"b.tif has 3 channel\(s\) but the model in m takes 1"):
        check_training_data([IMG, rgb], [strokes(1, 2)] * 2, "sparse", names=two, continued=grey)
    one = Names(two.pairs[:1], model="the model in m")
    with pytest.raises(ValueError, match=r"a_l.tif: label value 3 is above the 2 classes of the"):
        check_training_data([IMG], [strokes(1, 3)], "sparse", names=one, continued=grey)
    # one class painted is fine when correcting a model that knows both
    assert check_training_data([IMG], [strokes(2)], "sparse", continued=grey) == [1]
    semantic = Continued(1, ("a", "b"), value_map=(0, 255))
    with pytest.raises(ValueError, match=r"label values \[7\] are not among the classes of"):
        check_training_data([IMG], [strokes(255, 7)], "semantic", continued=semantic)


def test_train_names_the_pairs_as_told(nuclei):
    images, labels = nuclei
    bad = [lab[:90] for lab in labels[:2]]
    names = Names(
        [("image layer 'a'", "labels layer 'a'"), ("image layer 'b'", "labels layer 'b'")]
    )
    with pytest.raises(ValueError, match="image layer 'a' has shape .* but labels layer 'a'"):
        train(images[:2], bad, labels_kind="instances", steps=1, names=names, device="cpu")
    # without names: image 0 / labels 0, as the Python API says
    with pytest.raises(ValueError, match=r"image 0 has shape \(96, 96\) but labels 0 has shape"):
        train(images[:2], bad, labels_kind="instances", steps=1, device="cpu")


def test_sparse_instances_need_an_object_and_background():
    only_objects = strokes(2, 3)
    with pytest.raises(ValueError, match="no background painted"):
        check_training_data([IMG], [only_objects], "sparse-instances", names=LAYERS)
    only_background = strokes(1)
    with pytest.raises(ValueError, match="no object outlined"):
        check_training_data([IMG], [only_background], "sparse-instances", names=LAYERS)
    assert check_training_data([IMG], [strokes(1, 2, 3)], "sparse-instances") == [1]

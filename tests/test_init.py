"""Training that starts from another model: train(init=...) and train --init MODEL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch

import napari_unet as nu
from napari_unet.builtin import builtin_path
from napari_unet.cli import main
from napari_unet.config import LabelsConfig, ModelConfig
from napari_unet.events import TrainStarted, drain
from napari_unet.init import init_architecture, load_init, transfer_weights
from napari_unet.model import UNet
from napari_unet.store import load_model, sha256_hex
from napari_unet.training import train_iter

from .conftest import make_nuclei

SMALL = dict(steps=2, patch=32, batch_size=2, device="cpu")


def _sparse(labels: np.ndarray) -> np.ndarray:
    """2-class sparse labels from instances: 1 = background strokes, 2 = nuclei."""
    out = np.zeros(labels.shape, np.uint8)
    out[labels > 0] = 2
    out[:6] = np.where(labels[:6] == 0, 1, out[:6])
    out[-6:] = np.where(labels[-6:] == 0, 1, out[-6:])
    return out


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A saved 3-class instances model (width 8, depth 2) to start from."""
    images, labels = zip(*[make_nuclei(seed=s) for s in range(2)], strict=True)
    out = tmp_path_factory.mktemp("init") / "parent"
    nu.train(
        list(images), list(labels), labels_kind="instances", width=8, depth=2, out=out, **SMALL
    )
    return out


def _run(images, labels, **kwargs):
    events = []
    model = drain(train_iter(images, labels, **{**SMALL, **kwargs}), events.append)
    started = next(e for e in events if isinstance(e, TrainStarted))
    return model, started


def test_two_class_sparse_from_three_class_instances(parent, tmp_path):
    img, lab = make_nuclei(seed=5)
    out = tmp_path / "child"
    model, started = _run([img], [_sparse(lab)], labels_kind="sparse", init=str(parent), out=out)
    mcfg = model.config.model
    assert (mcfg.width, mcfg.depth, mcfg.num_classes) == (8, 2, 2)  # the parent's architecture
    assert model.config.labels.kind == "sparse"
    assert started.init.startswith(str(parent)) and "new last layer: 2 classes" in started.init
    # provenance: the parent as given and the sha256 of its weights file
    history = json.loads((out / "training.json").read_text())
    record = history["sessions"][0]["init"]
    assert record["from"] == str(parent)
    assert record["weights_sha256"] == sha256_hex((parent / "weights.safetensors").read_bytes())
    assert record["reinitialised"] == ["head.weight", "head.bias"] and record["copied"] > 10
    assert history["steps"] == 2 and started.start_step == 0  # a new model, not a resume
    assert load_model(out).config.model.num_classes == 2


def test_transfer_copies_what_fits_and_renews_the_head(parent):
    source = load_model(parent)
    labels = LabelsConfig(kind="sparse", class_names=("background", "cell"))
    torch.manual_seed(0)
    network = UNet.from_config(ModelConfig(num_classes=2, width=8, depth=2))
    fresh_head = network.head.weight.detach().clone()
    done = transfer_weights(network, source, labels, "parent")
    src, dst = source.network.state_dict(), network.state_dict()
    for key, value in dst.items():
        if key.startswith("head."):
            continue
        assert torch.equal(value, src[key]), key
    assert torch.equal(network.head.weight, fresh_head)  # the seeded new head
    assert done.reinitialised == ("head.weight", "head.bias") and not done.adapted
    # same classes: the head is copied too
    same = UNet.from_config(source.config.model)
    done = transfer_weights(same, source, source.config.labels, "parent")
    assert not done.reinitialised and torch.equal(same.head.weight, source.network.head.weight)


def test_other_input_channels_adapt_the_first_layer(parent):
    """Two equal channels give the adapted network the parent's output on one channel."""
    source = load_model(parent)
    network = UNet.from_config(ModelConfig(in_channels=2, num_classes=3, width=8, depth=2))
    done = transfer_weights(network, source, source.config.labels, "parent")
    assert done.adapted == ("down.0.0.weight",)
    assert "from 1 to 2 input channels" in " ".join(done.notes)
    network.eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        expected = source.network(x)
        got = network(torch.cat([x, x], dim=1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_training_a_two_channel_model_from_a_grey_one(parent):
    img, lab = make_nuclei(seed=6)
    two = np.stack([img, img[::-1]])  # channel first
    model, started = _run([two], [lab], labels_kind="instances", init=parent)
    assert model.config.model.in_channels == 2
    assert model.history["sessions"][0]["init"]["adapted"] == ["down.0.0.weight"]
    assert "input channels" in started.init


@pytest.mark.parametrize(
    ("given", "fragments"),
    [
        (dict(width=16), ["width 16", "width 8"]),
        (dict(depth=3), ["depth 3", "depth 2"]),
        (dict(padding="valid"), ["padding valid", "padding same"]),
        (dict(batch_norm=False), ["batch_norm False", "batch_norm True"]),
        (dict(spatial_dims=3), ["spatial_dims 3", "spatial_dims 2"]),
    ],
)
def test_other_architecture_given_explicitly_is_refused(parent, given, fragments):
    img, lab = make_nuclei(seed=7)
    with pytest.raises(ValueError) as info:
        _run([img], [lab], labels_kind="instances", init=parent, **given)
    message = str(info.value)
    assert str(parent) in message and all(f in message for f in fragments), message


def test_the_same_architecture_given_explicitly_is_fine():
    parent = ModelConfig(width=8, depth=2)
    given = dict(width=8, depth=2, padding="same", batch_norm=None, spatial_dims=None)
    arch = init_architecture(parent, given, "p")
    assert arch == dict(spatial_dims=2, width=8, depth=2, padding="same", batch_norm=True)


def test_init_with_resume_or_model_is_refused(parent, tmp_path):
    img, lab = make_nuclei(seed=8)
    with pytest.raises(ValueError, match="cannot be combined with resume=True"):
        _run([img], [lab], labels_kind="instances", init=parent, out=parent, resume=True)
    with pytest.raises(ValueError, match="cannot be combined with model="):
        _run([img], [lab], labels_kind="instances", init=parent, model=load_model(parent))


def test_unknown_builtin_init_lists_the_available_ones():
    img, lab = make_nuclei(seed=8)
    with pytest.raises(
        ValueError, match="unknown built-in model builtin:cells; available: builtin:nuclei"
    ):
        _run([img], [lab], labels_kind="instances", init="builtin:cells")


def test_load_init_records_the_builtin_as_given():
    start = load_init("builtin:nuclei")
    assert start.ref == "builtin:nuclei" and start.model.path == builtin_path("nuclei")
    weights = builtin_path("nuclei") / "weights.safetensors"
    assert start.weights_sha256 == sha256_hex(weights.read_bytes())
    assert start.provenance()["from"] == "builtin:nuclei"


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("init-cli")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i in range(2):
        img, lab = make_nuclei(shape=(64, 64), seed=20 + i)
        iio.imwrite(root / "images" / f"n{i}.png", img)
        tifffile.imwrite(root / "labels" / f"n{i}.tif", _sparse(lab))
    return root


def _train_args(folders: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--images", str(folders / "images"), "--labels", str(folders / "labels"),
        "--out", str(out), "--labels-kind", "sparse", "--steps", "2", "--patch", "32",
        "--batch-size", "2", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_cli_init_builtin_nuclei(folders, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(_train_args(folders, out, "--init", "builtin:nuclei"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    first = captured.out.splitlines()
    assert any(
        line.startswith("starting from builtin:nuclei (new last layer: 2 classes") for line in first
    )
    record = json.loads((out / "training.json").read_text())["sessions"][0]["init"]
    weights = builtin_path("nuclei") / "weights.safetensors"
    assert record["from"] == "builtin:nuclei"
    assert record["weights_sha256"] == sha256_hex(weights.read_bytes())
    nuclei = load_model("builtin:nuclei").config.model
    assert load_model(out).config.model == ModelConfig(**{**nuclei.__dict__, "num_classes": 2})


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--init", "builtin:cells"], ["builtin:cells", "available: builtin:nuclei"]),
        (["--init", "builtin:nuclei", "--width", "4"], ["width 4", "builtin:nuclei"]),
        (["--init", "NOWHERE"], ["NOWHERE", "does not exist"]),
    ],
)
def test_cli_init_refusals_exit_2_in_one_line(folders, tmp_path, capsys, extra, fragments):
    out = tmp_path / "m"
    code = main(_train_args(folders, out, *extra))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert all(f in err for f in fragments), err
    assert not out.exists()


def test_cli_init_with_resume_is_refused(folders, parent, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["-q", *_train_args(folders, out)]) == 0
    before = (out / "weights.safetensors").read_bytes()
    code = main(_train_args(folders, out, "--resume", "--init", str(parent)))
    err = capsys.readouterr().err
    assert code == 2 and "--init" in err and "--resume" in err and "give one of them" in err
    assert (out / "weights.safetensors").read_bytes() == before


# --------------------------------------------------------------------------- the default start


def test_the_default_start_is_builtin_nuclei_for_2d_instances_on_one_channel(tmp_path):
    img, lab = make_nuclei(seed=7)
    out = tmp_path / "m"
    model, started = _run([img], [lab], labels_kind="instances", out=out)  # init="auto"
    assert started.init.startswith("builtin:nuclei") and "init scratch" in started.init
    record = json.loads((out / "training.json").read_text())["sessions"][-1]["init"]
    assert record["from"] == "builtin:nuclei" and record["automatic"] is True
    nuclei = load_model("builtin:nuclei").config.model
    assert model.config.model == nuclei  # its network: width 8, depth 4, 3 classes
    few = np.where(lab > 0, lab.astype(np.uint16) + 1, 0)  # 0 unlabeled, 1 background, 2.. objects
    few[:6] = np.where(lab[:6] == 0, 1, few[:6])
    _, started = _run([img], [few], labels_kind="sparse-instances")
    assert started.init.startswith("builtin:nuclei")


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("asked for scratch", dict(init="scratch")),
        ("asked for scratch (None)", dict(init=None)),
        ("another width", dict(width=4)),
        ("another depth", dict(depth=3)),
        ("the paper recipe", dict(recipe="paper")),
        ("class labels", dict(labels_kind="sparse")),
        ("two channels", dict(channels=2)),
    ],
)
def test_the_default_start_is_scratch_elsewhere(why, kwargs, tmp_path):
    img, lab = make_nuclei(seed=7)
    kind = kwargs.pop("labels_kind", "instances")
    labels = _sparse(lab) if kind == "sparse" else lab
    if kwargs.pop("channels", 1) == 2:
        img = np.stack([img, img], axis=-1)
    out = tmp_path / "m"
    _, started = _run([img], [labels], labels_kind=kind, out=out, **kwargs)
    assert started.init == "", why
    assert "init" not in json.loads((out / "training.json").read_text())["sessions"][-1], why


def test_the_default_start_leaves_resume_and_model_alone(tmp_path):
    img, lab = make_nuclei(seed=7)
    out = tmp_path / "m"
    _run([img], [lab], labels_kind="instances", out=out, init="scratch")
    model, started = _run([img], [lab], labels_kind="instances", out=out, resume=True)
    assert started.init == "" and model.history["steps"] == 4  # continued, no error
    _, started = _run([img], [lab], labels_kind="instances", model=model)
    assert started.init == ""


def test_auto_init_wants_the_builtin_network():
    from napari_unet.init import auto_init
    from napari_unet.recipes import FAST, PAPER

    cpu = {"width": None, "depth": None, "padding": None, "batch_norm": None, "spatial_dims": None}
    width = load_model("builtin:nuclei").config.model.width
    # on the CPU a width not given is the built-in model's
    assert auto_init("instances", cpu, 8, FAST, follow_width=True) == "builtin:nuclei"
    assert auto_init("instances", cpu, width, FAST) == "builtin:nuclei"
    assert auto_init("instances", {**cpu, "width": width}, 8, FAST) == "builtin:nuclei"
    assert auto_init("instances", {**cpu, "width": 4}, 8, FAST, follow_width=True) is None
    assert auto_init("instances", cpu, 32, FAST) is None  # the GPU default network
    assert auto_init("instances", {**cpu, "spatial_dims": 3}, 8, FAST) is None
    assert auto_init("instances", {**cpu, "padding": "valid"}, 8, FAST) is None
    assert auto_init("semantic", cpu, 8, FAST) is None
    assert auto_init("instances", cpu, 8, PAPER) is None  # SGD batch 1 never starts from it


def test_cli_default_start_says_so_and_scratch_turns_it_off(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img, lab = make_nuclei(shape=(64, 64), seed=30)
    iio.imwrite(root / "images" / "n.png", img)
    tifffile.imwrite(root / "labels" / "n.tif", lab)
    args = [
        "train", "--images", str(root / "images"), "--labels", str(root / "labels"),
        "--labels-kind", "instances", "--steps", "2", "--patch", "32", "--batch-size", "2",
        "--device", "cpu",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "starting from builtin:nuclei" in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b"), "--init", "scratch"]) == 0
    assert "starting from" not in capsys.readouterr().out
    assert load_model(tmp_path / "b").config.model.width == 8  # the CPU default, new weights


# --------------------------------------------------------------------------- fit and guard


def _membranes(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Cells seen through a membrane stain: bright outlines, dark insides."""
    from skimage.segmentation import find_boundaries

    ring = find_boundaries(labels, mode="inner")
    noise = np.random.default_rng(seed).normal(0, 10, labels.shape)
    return (ring * 200 + 20 + noise).clip(0, 255).astype(np.uint8)


def test_the_automatic_start_is_taken_only_when_it_finds_the_labeled_objects(tmp_path):
    img, lab = make_nuclei(seed=7)
    few = np.where(lab > 0, lab.astype(np.uint16) + 1, 0)
    few[:6] = np.where(lab[:6] == 0, 1, few[:6])
    model, started = _run([img], [few], labels_kind="sparse-instances", out=tmp_path / "a")
    assert started.init.startswith("builtin:nuclei (finds 8 of your 8 outlined objects")
    assert started.start_note == ""
    record = json.loads((tmp_path / "a" / "training.json").read_text())["sessions"][-1]
    assert record["init"]["fit"] == {"found": 8, "objects": 8, "fits": True}
    # the same cells seen through their membranes: the nuclei model finds none of them
    model, started = _run([_membranes(lab)], [few], labels_kind="sparse-instances",
                          out=tmp_path / "b")  # fmt: skip
    assert started.init == ""
    assert started.start_note == (
        "builtin:nuclei finds 0 of your 8 outlined objects: starting from scratch"
    )
    record = json.loads((tmp_path / "b" / "training.json").read_text())["sessions"][-1]
    assert "init" not in record and record["init_declined"]["fit"]["fits"] is False
    assert "distill" not in record  # no start model, no teacher
    assert model.config.model.width == 8  # the CPU's own width, not the declined start's


def test_an_explicit_start_is_not_second_guessed(tmp_path):
    img, lab = make_nuclei(seed=7)
    _, started = _run([_membranes(lab)], [lab], labels_kind="instances", init="builtin:nuclei")
    assert started.init.startswith("builtin:nuclei") and started.start_note == ""


def test_cli_says_why_it_starts_from_scratch(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img, lab = make_nuclei(shape=(64, 64), seed=30)
    iio.imwrite(root / "images" / "n.png", _membranes(lab))
    tifffile.imwrite(root / "labels" / "n.tif", lab)
    args = [
        "train", "--images", str(root / "images"), "--labels", str(root / "labels"),
        "--labels-kind", "instances", "--steps", "2", "--patch", "32", "--batch-size", "2",
        "--device", "cpu", "--out", str(tmp_path / "m"),
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "builtin:nuclei finds 0 of your" in out and "starting from scratch" in out
    assert "starting from builtin" not in out


def test_the_start_model_is_reported_when_it_validates_better(tmp_path):
    """Fine-tuning that ruins the model (a huge learning rate): the start model validates
    better on the held-out objects, Finished says so and names it."""
    from napari_unet.config import TrainConfig
    from napari_unet.events import Finished

    pairs = [make_nuclei(seed=s) for s in range(2)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    events = []
    out = tmp_path / "m"
    drain(
        train_iter(images, labels, labels_kind="instances", steps=3, patch=32, batch_size=2,
                   device="cpu", out=out, config=TrainConfig(lr=5.0)),
        events.append,
    )  # fmt: skip
    finished = next(e for e in events if isinstance(e, Finished))
    assert finished.start_model == "builtin:nuclei"
    said = "the model it started from, builtin:nuclei, finds the held-out objects with an AP@0.5"
    assert said in finished.message and "predict with builtin:nuclei" in finished.message
    record = json.loads((out / "training.json").read_text())["sessions"][-1]
    comparison = record["start_comparison"]
    assert comparison["compared"] and comparison["start_iou"] > comparison["new_iou"]
    assert re.match(r"\d+ held-out objects of 16 \+ ", comparison["measured_on"])
    objects = comparison["objects"]  # ranked on the held-out objects too, as instances
    assert objects["start_better"] and objects["start_ap"] > objects["new_ap"]
    assert objects["start_iou_sum"] > objects["new_iou_sum"]
    assert load_model(out).history["steps"] == 3  # the new model is saved all the same


def test_a_start_model_that_did_worse_is_not_mentioned(parent, tmp_path):
    """A start model trained 2 steps and 60 steps of fine-tuning on its own kind of data."""
    from napari_unet.events import Finished

    pairs = [make_nuclei(seed=s) for s in range(3)]
    events = []
    drain(
        train_iter([p[0] for p in pairs], [p[1] for p in pairs], labels_kind="instances",
                   init=str(parent), steps=60, patch=48, batch_size=4, device="cpu",
                   out=tmp_path / "m"),
        events.append,
    )  # fmt: skip
    finished = next(e for e in events if isinstance(e, Finished))
    record = json.loads((tmp_path / "m" / "training.json").read_text())["sessions"][-1]
    comparison = record["start_comparison"]
    assert comparison["compared"] and comparison["new_iou"] >= comparison["start_iou"]
    objects = comparison["objects"]
    assert all(0 <= objects[k] <= 1 for k in ("new_ap", "start_ap"))
    assert objects["start_better"] == (objects["start_ap"] > objects["new_ap"]) or (
        objects["start_ap"] == objects["new_ap"]
    )
    assert finished.start_model is None and "started from" not in finished.message


def test_the_start_comparison_goes_by_the_held_out_objects_when_there_are_some():
    """Instance models: the verdict is the objects' ranking (AP@0.5, then their outlines),
    whatever the validation IoU says; without a ranking, the validation IoU's."""
    import torch

    from napari_unet.config import PostprocessConfig
    from napari_unet.start import Start

    new_net, start_net = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    ranks = {}

    def compare(new_iou: float, start_iou: float, with_ranks: bool) -> tuple[Start, dict]:
        start = Start(None, False, {})
        start.teacher, start.teacher_ref = start_net, "builtin:nuclei"
        start.teacher_postprocess = PostprocessConfig(fg_threshold=0.7)
        session: dict = {}
        rank = (lambda net, settings: ranks[net]) if with_ranks else None
        start.compare(lambda net: start_iou, new_iou, "2 held-out objects", session, rank,
                      (new_net, PostprocessConfig()))  # fmt: skip
        return start, session["start_comparison"]

    ranks.update({new_net: (0.5, -1, 0.9), start_net: (1.0, 0, 1.6)})
    start, record = compare(new_iou=0.6, start_iou=0.4, with_ranks=True)  # IoU: the new one
    assert start.better == "builtin:nuclei" and record["objects"]["start_better"]
    assert "AP@0.5 of 1.00 (the new model 0.50) on 2 held-out objects" in start.message
    ranks.update({new_net: (1.0, 0, 1.7), start_net: (1.0, 0, 1.6)})  # a tie, outlined better
    start, record = compare(new_iou=0.4, start_iou=0.6, with_ranks=True)  # IoU: the start
    assert start.better is None and start.message == "" and not record["objects"]["start_better"]
    start, record = compare(new_iou=0.4, start_iou=0.6, with_ranks=False)  # no objects ranked
    assert start.better == "builtin:nuclei" and "objects" not in record
    assert "scores a validation IoU of 0.600 on 2 held-out objects" in start.message

"""Issue 6's bad-input matrix, checked from outside like a user would.

Every case runs the real CLI (``python -m napari_unet.cli``) in a subprocess.  A case
that must fail exits 2 with at most three lines on stderr, no traceback, and a message
naming the value and the place; inputs that must work (uint16 / int32 / float64 / bool
images, NaN pixels, constant and tiny images) exit 0.  At the end every file the
"user" made (images, labels, the model folder) is byte-for-byte unchanged.

Cost: the subprocesses run two at a time with one torch thread each; failures found
before torch is needed (the training-data checks) take well under a second each.

"Not writable" is tested with an output path below a regular file: these tests run as
root in CI containers, where ``chmod`` cannot make a folder unwritable, while a path
below a file fails for every user.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from .conftest import make_nuclei

FAST = ["--steps", "2", "--width", "4", "--depth", "2", "--patch", "32", "--batch-size", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_cli(*args: object) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
        env=ENV,
    )
    r.seconds = time.perf_counter() - start
    return r


@dataclass
class World:
    data: Path  # everything the "user" made: images, labels, the model
    outs: Path  # where outputs go
    scratch: Path  # copies that a successful run may change
    trained: subprocess.CompletedProcess

    @property
    def model(self) -> Path:
        return self.data / "model"

    @property
    def marker(self) -> Path:
        """Created by the planted pickles if one is ever unpickled."""
        return self.data.parent / "UNPICKLED"


def _sparse(lab: np.ndarray) -> np.ndarray:
    """Instance labels -> painted strokes: 2 on nuclei, 1 on a background band."""
    out = np.zeros(lab.shape, np.uint8)
    out[lab > 0] = 2
    out[:6][lab[:6] == 0] = 1
    return out


def _pair(folder: Path, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    for sub, arr in (("i", image), ("l", labels)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / sub / f"{name}.tif", arr)


def _build(root: Path) -> World:
    data, outs, scratch = root / "data", root / "outs", root / "scratch"
    for p in (data, outs, scratch):
        p.mkdir()
    rng = np.random.default_rng(0)
    img, inst = make_nuclei(shape=(48, 48), n=4, radius=(5, 8), seed=1)
    lab = _sparse(inst)
    f = img.astype(np.float64) / 255

    # training data in every dtype that must work, with painted labels in several dtypes
    ok = data / "ok"
    _pair(ok, "a_u16", (f * 60000).astype(np.uint16), lab)
    _pair(ok, "b_i32", (f * 2e6 - 1e6).astype(np.int32), lab.astype(np.uint16))
    _pair(ok, "c_f64", f, lab.astype(np.int32))
    _pair(ok, "d_bool", f > 0.5, lab == 1)  # a boolean mask: class 1 only, in this file
    nan = f.astype(np.float32)
    nan[rng.random(nan.shape) < 0.05] = np.nan
    nan[0, :3] = np.inf
    _pair(ok, "e_nan", nan, lab)
    _pair(ok, "f_const", np.full(lab.shape, 7, np.uint8), lab)

    bad = data / "bad"
    _pair(bad / "zeros", "x", img, np.zeros_like(lab))
    _pair(bad / "oneclass", "x", img, np.where(lab == 2, 2, 0).astype(np.uint8))
    _pair(bad / "semantic_one", "x", img, np.full_like(lab, 5))
    _pair(bad / "too_many", "x", img, (inst.astype(np.uint16) * 100))
    _pair(bad / "above_model", "x", img, np.where(lab == 2, 3, lab).astype(np.uint8))
    _pair(bad / "all_nan", "x", np.full(lab.shape, np.nan, np.float32), lab)
    _pair(bad / "nan_labels", "x", img, np.where(lab == 1, np.nan, lab).astype(np.float32))
    _pair(bad / "rgb", "x", np.stack([img, img // 2, 255 - img], -1), lab)
    _pair(bad / "mixed_channels", "x", img, lab)
    _pair(bad / "mixed_channels", "y", np.stack([img, img]), lab)
    _pair(
        bad / "stack5d",
        "x",
        np.zeros((2, 2, 2, 48, 48), np.uint8),
        np.ones((2, 2, 2, 48, 48), np.uint8),
    )
    _pair(bad / "mismatch", "x", img, lab[:40])
    (bad / "fake" / "i").mkdir(parents=True)
    (bad / "fake" / "i" / "x.png").write_text("this is not a PNG")
    (bad / "truncated" / "i").mkdir(parents=True)
    whole = (ok / "i" / "a_u16.tif").read_bytes()
    (bad / "truncated" / "i" / "x.tif").write_bytes(whole[: len(whole) // 2])
    (bad / "empty.tif").write_bytes(b"")
    (data / "notes.txt").write_text("hello")
    (data / "a_file").write_text("not a folder")

    # inputs for prediction: the ones that must work, and the ones that must fail
    good = data / "predict_ok"
    good.mkdir()
    for name, arr in {
        "u16": (f * 60000).astype(np.uint16),
        "i32": (f * 2e6 - 1e6).astype(np.int32),
        "f64": f,
        "bool": f > 0.5,
        "nan": nan,
        "const": np.full((40, 30), 9, np.uint16),
        "tiny": rng.random((3, 3)).astype(np.float32),
        "dot": rng.random((1, 1)).astype(np.float32),
        "line": rng.random((1, 50)).astype(np.float32),
    }.items():
        tifffile.imwrite(good / f"{name}.tif", arr)
    iio.imwrite(good / "grey_as_rgb.png", np.stack([img] * 3, -1))
    pbad = data / "predict_bad"
    pbad.mkdir()
    tifffile.imwrite(pbad / "allnan.tif", np.full((40, 40), np.nan, np.float32))
    iio.imwrite(pbad / "colour.png", np.stack([img, img // 2, 255 - img], -1))
    tifffile.imwrite(pbad / "twochan.tif", np.stack([img, img]))
    tifffile.imwrite(pbad / "stack5d.tif", np.zeros((2, 3, 2, 40, 40), np.uint8))
    for name, arr in (("pred_float", f.astype(np.float32)), ("truth_small", inst[:40])):
        (data / name).mkdir()
        tifffile.imwrite(data / name / "x.tif", arr)
    (data / "pred").mkdir()
    tifffile.imwrite(data / "pred" / "x.tif", inst)
    (data / "truth").mkdir()
    tifffile.imwrite(data / "truth" / "x.tif", inst)

    trained = run_cli(
        "-q", "train", "--images", ok / "i", "--labels", ok / "l", "--out", data / "model",
        "--device", "cpu", *FAST,
    )  # fmt: skip
    return World(data, outs, scratch, trained)


DEVICES = ("cuda:7", "mps", "nonsense", "cpu:x")  # none of them is on a CI machine

# Each case: (arguments given the world, fragments the one-line message must contain).
Case = tuple[Callable[[World], list], tuple[str, ...]]


def _train(
    w: World, images: Path, labels: Path | None = None, *extra: object, out: Path | None = None
) -> list:
    out = out or w.outs / f"m-{images.parent.name}-{len(extra)}"
    labels = labels if labels is not None else images.parent / "l"
    return ["train", "--images", images, "--labels", labels, "--out", out, *FAST, *extra]


def _predict(
    w: World, inputs: Path, *extra: object, out: Path | None = None, device: str = "cpu"
) -> list:
    out = out or w.outs / f"p-{inputs.name}-{len(extra)}"
    return ["predict", w.model, inputs, "--out", out, "--device", device, *extra]


def _bad(w: World, name: str) -> Path:
    return w.data / "bad" / name / "i"


FAILING: dict[str, Case] = {
    # missing, unreadable and non-image files
    "train: missing images": (
        lambda w: _train(w, w.data / "nope", w.data / "ok" / "l"),
        ("--images", "nope", "does not exist"),
    ),
    "train: missing labels file": (
        lambda w: _train(w, w.data / "ok" / "i", w.data / "nope.tif"),
        ("--labels", "nope.tif", "does not exist"),
    ),
    "train: text file as images": (
        lambda w: _train(w, w.data / "notes.txt", w.data / "ok" / "l"),
        ("notes.txt", "is not a TIFF, PNG, JPEG or zarr image"),
    ),
    "train: text file named .png": (
        lambda w: _train(w, _bad(w, "fake"), w.data / "bad" / "oneclass" / "l"),
        ("x.png", "could not be read as an image"),
    ),
    "train: truncated TIFF": (
        lambda w: _train(w, _bad(w, "truncated"), w.data / "bad" / "oneclass" / "l"),
        ("x.tif", "could not be read as an image"),
    ),
    "predict: empty file": (
        lambda w: _predict(w, w.data / "bad" / "empty.tif"),
        ("empty", "could not be read as an image"),
    ),
    "predict: missing input": (
        lambda w: _predict(w, w.data / "nope.tif"),
        ("nope.tif", "does not exist"),
    ),
    "predict: text file as input": (
        lambda w: _predict(w, w.data / "notes.txt"),
        ("notes.txt", "is not a TIFF, PNG, JPEG or zarr image"),
    ),
    "predict: missing model": (
        lambda w: ["predict", w.data / "no-model", w.data / "predict_ok", "--out", w.outs / "nm"],
        ("no-model", "model folder does not exist"),
    ),
    "evaluate: missing predictions": (
        lambda w: ["evaluate", "--pred", w.data / "nope", "--truth", w.data / "truth"],
        ("--pred", "nope", "does not exist"),
    ),
    # image / labels mismatch
    "train: image/labels shape mismatch": (
        lambda w: _train(w, _bad(w, "mismatch")),
        ("x.tif has shape (48, 48)", "has shape (40, 48)"),
    ),
    "evaluate: pred/truth shape mismatch": (
        lambda w: ["evaluate", "--pred", w.data / "pred", "--truth", w.data / "truth_small"],
        ("has shape (48, 48)", "has shape (40, 48)"),
    ),
    "evaluate: float predictions": (
        lambda w: ["evaluate", "--pred", w.data / "pred_float", "--truth", w.data / "truth"],
        ("pred_float/x.tif", "label images must be integers, got float32"),
    ),
    # what was painted
    "train: no labels painted (all 0)": (
        lambda w: _train(w, _bad(w, "zeros")),
        ("--labels", "zeros", "nothing is painted"),
    ),
    "train: instances, no object": (
        lambda w: _train(w, _bad(w, "zeros"), None, "--labels-kind", "instances"),
        ("--labels", "zeros", "no object in any label image"),
    ),
    "train: only one class painted": (
        lambda w: _train(w, _bad(w, "oneclass")),
        ("oneclass", "only one class is painted (value 2)"),
    ),
    "train: semantic, one value": (
        lambda w: _train(w, _bad(w, "semantic_one"), None, "--labels-kind", "semantic"),
        ("semantic_one", "at least 2 distinct values", "only 5"),
    ),
    "train: instance ids as sparse classes": (
        lambda w: _train(w, _bad(w, "too_many")),
        ("x.tif", "label value 400 would make 400 classes", "--labels-kind instances"),
    ),
    "train --resume: more label values than the model's classes": (
        lambda w: [
            "train",
            "--images",
            _bad(w, "above_model"),
            "--labels",
            w.data / "bad" / "above_model" / "l",
            "--out",
            w.model,
            "--resume",
            *FAST,
        ],  # fmt: skip
        ("x.tif", "label value 3 is above the 2 classes of the model", "background, cell"),
    ),
    "train --resume: other labels kind": (
        lambda w: [
            "train",
            "--images",
            w.data / "ok" / "i",
            "--labels",
            w.data / "ok" / "l",
            "--out",
            w.model,
            "--resume",
            "--labels-kind",
            "instances",
            *FAST,
        ],  # fmt: skip
        ("--labels-kind instances", "trained on sparse labels"),
    ),
    "train: float labels with NaN": (
        lambda w: _train(w, _bad(w, "nan_labels")),
        ("x.tif", "label images must hold whole numbers"),
    ),
    # pixel values
    "train: all-NaN image": (
        lambda w: _train(w, _bad(w, "all_nan")),
        ("x.tif", "no finite pixel value (all NaN or Inf)"),
    ),
    "predict: all-NaN image": (
        lambda w: _predict(w, w.data / "predict_bad" / "allnan.tif"),
        ("allnan", "no finite pixel values"),
    ),
    # channels and axes
    "train --resume: RGB images, 1-channel model": (
        lambda w: [
            "train",
            "--images",
            _bad(w, "rgb"),
            "--labels",
            w.data / "bad" / "rgb" / "l",
            "--out",
            w.model,
            "--resume",
            *FAST,
        ],  # fmt: skip
        ("x.tif has 3 channel(s) but the model in", "takes 1"),
    ),
    "train: images with different channels": (
        lambda w: _train(w, _bad(w, "mixed_channels")),
        ("y.tif has 2 channel(s)", "x.tif has 1"),
    ),
    "predict: RGB image, 1-channel model": (
        lambda w: _predict(w, w.data / "predict_bad" / "colour.png"),
        ("colour", "(48, 48, 3) looks like RGB", "model takes 1 channel"),
    ),
    "predict: 2-channel image, 1-channel model": (
        lambda w: _predict(w, w.data / "predict_bad" / "twochan.tif", "--axes", "CYX"),
        ("twochan", "the image has 2 channels (axes CYX), the model takes 1"),
    ),
    "predict: 5D stack, unknown axes": (
        lambda w: _predict(w, w.data / "predict_bad" / "stack5d.tif"),
        ("stack5d", "cannot tell the axes of a 5D image (2, 3, 2, 40, 40)"),
    ),
    "predict: axes that do not fit": (
        lambda w: _predict(w, w.data / "predict_bad" / "twochan.tif", "--axes", "QYX"),
        ("--axes QYX", "from T, Z, C, Y, X"),
    ),
    "train: 5D stack": (
        lambda w: _train(w, _bad(w, "stack5d")),
        ("x.tif", "label image of shape (2, 2, 2, 48, 48)", "2D model"),
    ),
    # outputs
    "train: --out is a file": (
        lambda w: _train(w, w.data / "ok" / "i", out=w.data / "a_file"),
        ("--out", "a_file is a file, not a folder"),
    ),
    "train: --out below a file": (
        lambda w: _train(w, w.data / "ok" / "i", out=w.data / "a_file" / "model"),
        ("--out", "a_file is a file, not a folder"),
    ),
    "predict: --out is a file": (
        lambda w: _predict(w, w.data / "predict_ok", out=w.data / "a_file"),
        ("--out", "a_file is a file, not a folder"),
    ),
    "predict: --out below a file": (
        lambda w: _predict(w, w.data / "predict_ok", out=w.data / "a_file" / "x"),
        ("--out", "a_file is a file, not a folder"),
    ),
    "evaluate: --out below a file": (
        lambda w: [
            "evaluate",
            "--pred",
            w.data / "pred",
            "--truth",
            w.data / "truth",
            "--out",
            w.data / "a_file" / "scores.csv",
        ],  # fmt: skip
        ("--out", "a_file is not a folder"),
    ),
    "predict: --instances with a sparse model": (
        lambda w: _predict(w, w.data / "predict_ok", "--instances"),
        ("--instances needs a model trained on instance labels", "sparse"),
    ),
    # devices that are not there
    **{
        f"{cmd}: --device {dev}": (
            (lambda w, dev=dev: _train(w, w.data / "ok" / "i", None, "--device", dev))
            if cmd == "train"
            else (lambda w, dev=dev: _predict(w, w.data / "predict_ok", device=dev)),
            (f"--device {dev}",),
        )
        for cmd, devices in (("train", ("cuda:7", "nonsense")), ("predict", DEVICES))
        for dev in devices
    },
}

# --------------------------------------------------------------------------- pickles


class Payload:
    """Unpickling this creates ``marker``: proof that a planted pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _pickle_bytes(marker: Path, how: str) -> bytes:
    if how == "torch-zip":  # what torch.save writes: a zip archive holding data.pkl
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(Payload(marker), protocol=2))
            archive.writestr("archive/version", "3\n")
        return buffer.getvalue()
    return pickle.dumps(Payload(marker), protocol=int(how))


# every file name the loader reads or might be expected to read, and pickle files by name;
# (relative path, pickle protocol or torch-zip, whether the message says "pickle")
PLANTS = {
    "weights p2": ("weights.safetensors", "2", True),
    "weights p5": ("weights.safetensors", "5", True),
    "weights torch zip": ("weights.safetensors", "torch-zip", True),
    "weights p0 (text)": ("weights.safetensors", "0", False),  # refused as a bad header
    "model.safetensors": ("model.safetensors", "4", True),
    "config.json": ("config.json", "4", True),
    "training.json": ("training.json", "4", True),
    "checkpoint optimizer": ("checkpoint/optimizer.safetensors", "4", True),
    "checkpoint state": ("checkpoint/state.json", "4", True),
    "model.pt torch zip": ("model.pt", "torch-zip", True),
    "weights.pth p0": ("weights.pth", "0", True),  # a pickle by its name alone
    "model.pkl": ("model.pkl", "4", True),
    "checkpoint optimizer.pt": ("checkpoint/optimizer.pt", "2", True),
    "last.ckpt": ("last.ckpt", "torch-zip", True),
}


def _plant(w: World) -> None:
    for name, (relative, how, _) in PLANTS.items():
        folder = w.data / "pickled" / name.replace(" ", "_")
        shutil.copytree(w.model, folder)
        (folder / relative).parent.mkdir(exist_ok=True)
        (folder / relative).write_bytes(_pickle_bytes(w.marker, how))
    (w.data / "pickled" / "model.pt").write_bytes(_pickle_bytes(w.marker, "torch-zip"))


def _pickled(w: World, name: str) -> Path:
    return w.data / "pickled" / name.replace(" ", "_")


for _name in ("weights p2", "weights torch zip", "config.json", "checkpoint state", "last.ckpt"):
    FAILING[f"predict: pickle planted as {_name}"] = (
        lambda w, n=_name: [
            "predict",
            _pickled(w, n),
            w.data / "predict_ok",
            "--out",
            w.outs / f"pk-{n}",
        ],  # fmt: skip
        (PLANTS[_name][0], "never loads pickles"),
    )
FAILING["predict: pickle planted as weights p0 (text)"] = (
    lambda w: [
        "predict",
        _pickled(w, "weights p0 (text)"),
        w.data / "predict_ok",
        "--out",
        w.outs / "p0",
    ],  # fmt: skip
    ("weights.safetensors", "safetensors header claims"),
)
FAILING["predict: the model is a pickle file"] = (
    lambda w: ["predict", w.data / "pickled" / "model.pt", w.data / "predict_ok", "--out", w.outs],
    ("model.pt", "never loads pickles"),
)
FAILING["train --resume: pickle as checkpoint/optimizer.pt"] = (
    lambda w: _train(
        w, w.data / "ok" / "i", None, "--resume", out=_pickled(w, "checkpoint optimizer.pt")
    ),
    ("optimizer.pt", "never loads pickles"),
)


WORKING: dict[str, Callable[[World], list]] = {
    # uint16 / int32 / float64 / bool images, NaN/Inf pixels, constant, 3x3, 1x1 and 1x50
    # images, grey stored as RGB: all predicted
    "predict: every dtype and size": lambda w: _predict(w, w.data / "predict_ok"),
    # correcting a model: painting one class only is fine when the model knows the others
    "train --resume: one class painted": lambda w: [
        "train",
        "--images",
        _bad(w, "oneclass"),
        "--labels",
        w.data / "bad" / "oneclass" / "l",
        "--out",
        w.scratch / "model",
        "--resume",
        "--device",
        "cpu",
        *FAST,
    ],  # fmt: skip
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return _build(tmp_path_factory.mktemp("cli_errors"))


@pytest.fixture(scope="module")
def outcomes(world: World) -> tuple[dict[str, subprocess.CompletedProcess], dict, dict]:
    assert world.trained.returncode == 0, world.trained.stderr
    shutil.copytree(world.model, world.scratch / "model")
    _plant(world)
    before = _snapshot(world.data)
    jobs = {name: make(world) for name, (make, _) in FAILING.items()}
    jobs.update({name: make(world) for name, make in WORKING.items()})
    # the --resume cases all write into the one model folder: one at a time (a second
    # writer would be refused as busy, which is another test's subject)
    resumes = {name: args for name, args in jobs.items() if "--resume" in map(str, args)}
    others = {name: args for name, args in jobs.items() if name not in resumes}
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = pool.map(lambda args: run_cli(*args), others.values())
        done = dict(zip(others, parallel, strict=True))
    done.update({name: run_cli(*args) for name, args in resumes.items()})
    if os.environ.get("NAPARI_UNET_TIMINGS"):
        for name, r in sorted(done.items(), key=lambda kv: -kv[1].seconds):
            print(f"{r.seconds:6.2f} s  {name}")
    return done, before, _snapshot(world.data)


def test_training_accepts_every_dtype(world: World) -> None:
    """uint16, int32, float64 and bool images; uint8/uint16/int32/bool labels; NaN and Inf
    pixels; a constant image: one training run takes them all."""
    assert world.trained.returncode == 0, world.trained.stderr
    assert (world.model / "weights.safetensors").is_file()


@pytest.mark.parametrize("name", list(FAILING))
def test_bad_input_exits_2_with_a_short_message(name: str, outcomes) -> None:
    done, _, _ = outcomes
    r = done[name]
    assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 3, r.stderr
    message = lines[-1]
    assert message.startswith("napari-unet "), message
    for fragment in FAILING[name][1]:
        assert fragment in message, (fragment, message)


def test_good_inputs_work(world: World, outcomes) -> None:
    done, _, _ = outcomes
    for name in WORKING:
        assert done[name].returncode == 0, (name, done[name].stderr[-2000:])
    out = world.outs / "p-predict_ok-0"
    for src in sorted((world.data / "predict_ok").iterdir()):
        stem = src.name.rsplit(".", 1)[0]
        pred = tifffile.imread(out / f"{stem}.tif")
        shape = tifffile.imread(src).shape if src.suffix == ".tif" else (48, 48)
        assert pred.shape == shape, (src.name, pred.shape)
        assert set(np.unique(pred).tolist()) <= {0, 1, 2}, src.name


def test_nothing_the_user_made_was_modified(outcomes) -> None:
    _, before, after = outcomes
    assert after == before


def test_planted_pickles_never_execute(world: World, outcomes) -> None:
    """The API refuses every planted pickle too, and none ever ran (in any process)."""
    from napari_unet.checkpoint import load_checkpoint
    from napari_unet.store import load_model, read_config

    # the payload is live: unpickling it really creates its marker
    probe = world.outs / "probe-marker"
    pickle.loads(_pickle_bytes(probe, "2"))
    assert probe.exists()

    for name, (relative, _how, says_pickle) in PLANTS.items():
        folder = _pickled(world, name)
        loaders = [load_model]
        if says_pickle:  # the folder walk refuses it before config.json is read
            loaders.append(read_config)
        if relative.startswith("checkpoint/"):
            loaders.append(load_checkpoint)
        for load in loaders:
            with pytest.raises(ValueError) as info:
                load(folder)
            message = str(info.value)
            assert str(folder) in message and Path(relative).name in message, message
            if says_pickle:
                assert "never loads pickles" in message, message
    with pytest.raises(ValueError, match="never loads pickles"):
        load_model(world.data / "pickled" / "model.pt")
    assert not world.marker.exists()

"""Built-in models (builtin:NAME) and float16 weights: loading by name, unknown names,
read-only package data, the shipped model's size and dtypes, the CLI, a built wheel."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file, save_file

import napari_unet as nu
from napari_unet import builtin, safety, store
from napari_unet.annotation_store import autosave
from napari_unet.atomic import atomic_write_json
from napari_unet.builtin import BUILTIN_MODELS, ReadOnlyModelError, builtin_path, is_builtin
from napari_unet.checkpoint import save_checkpoint
from napari_unet.cli import main
from napari_unet.config import PostprocessConfig
from napari_unet.inference import predict_proba
from napari_unet.store import load_model, save_model, save_postprocess

from .conftest import make_nuclei

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "napari_unet" / "_sample_data"
NUCLEI = builtin_path("nuclei")


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the sha256 of its content."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def nuclei_model():
    return nu.load_model("builtin:nuclei")


# --------------------------------------------------------------------------- by name


def test_references():
    assert "nuclei" in BUILTIN_MODELS
    assert builtin_path("nuclei") == builtin_path("builtin:nuclei") == NUCLEI
    assert NUCLEI.parent == builtin.BUILTIN_ROOT and (NUCLEI / "config.json").is_file()
    assert is_builtin("builtin:nuclei") and is_builtin(Path("builtin:nuclei"))
    assert is_builtin("builtin:whatever")  # a reference, known or not
    assert not is_builtin("models/nuclei") and not is_builtin(None) and not is_builtin(3)
    assert builtin.builtin_containing(NUCLEI / "config.json") == "builtin:nuclei"
    assert builtin.builtin_containing(REPO / "napari_unet") is None


def test_load_by_name_everywhere_a_folder_is_accepted(nuclei_model):
    model = nuclei_model
    assert model.path == NUCLEI
    spec = model.config
    assert spec.labels.instances and spec.labels.class_names == (
        "background",
        "interior",
        "boundary",
    )
    assert spec.model.spatial_dims == 2 and spec.model.in_channels == 1
    assert all(p.dtype == torch.float32 for p in model.network.parameters())
    assert not model.network.training
    assert store.load_model("builtin:nuclei").config == spec
    assert safety.check_model_folder("builtin:nuclei") == spec
    assert safety.read_config("builtin:nuclei") == spec
    assert safety.read_model_folder("builtin:nuclei").folder == NUCLEI


def test_shipped_model_is_float16_small_and_says_how_it_was_made():
    header, _ = safety.read_header(NUCLEI / "weights.safetensors")
    params = {k for k, _ in nu.load_model("builtin:nuclei").network.named_parameters()}
    assert params and all(header[k]["dtype"] == "F16" for k in params)
    size = sum(p.stat().st_size for p in NUCLEI.iterdir() if p.is_file())
    assert size <= 10_000_000, size
    history = json.loads((NUCLEI / "training.json").read_text())
    built = history["built_with"]
    assert built["train_command"].startswith("napari-unet train ")
    assert "--labels-kind instances" in built["train_command"]
    assert built["command"].startswith("python resources/train_builtin.py ")
    assert built["weights_dtype"] == "float16"
    assert (REPO / "resources" / "train_builtin.py").is_file()
    assert not (NUCLEI / "checkpoint").exists()  # optimizer state is not shipped


@pytest.mark.parametrize(
    "load",
    [nu.load_model, store.load_model, safety.check_model_folder, builtin.builtin_path],
    ids=["nu.load_model", "store.load_model", "check_model_folder", "builtin_path"],
)
def test_unknown_name_lists_the_available_ones(load):
    with pytest.raises(ValueError) as info:
        load("builtin:cells")
    message = str(info.value)
    assert "builtin:cells" in message and "builtin:nuclei" in message and "\n" not in message


def test_cli_unknown_name_exits_2_listing_the_available_ones(tmp_path, capsys):
    code = main(["predict", "builtin:cells", str(SAMPLE / "images"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "builtin:cells" in err and "available: builtin:nuclei" in err
    assert not list(tmp_path.iterdir())


def test_cli_predict_builtin_nuclei_instances(tmp_path, capsys):
    image = sorted((SAMPLE / "images").glob("*.png"))[0]
    out = tmp_path / "pred"
    code = main(["-q", "predict", "builtin:nuclei", str(image), "--out", str(out), "--instances"])
    assert code == 0, capsys.readouterr().err
    ids = tifffile.imread(out / f"{image.stem}.tif")
    assert ids.shape == iio.imread(image).shape[:2]
    truth = iio.imread(SAMPLE / "labels" / image.name)
    n_true = len(np.unique(truth)) - 1
    n_found = len(np.unique(ids)) - 1
    assert n_found >= n_true // 3, (n_found, n_true)  # the nuclei are found, not noise
    fg = ids > 0
    iou = (fg & (truth > 0)).sum() / (fg | (truth > 0)).sum()
    assert iou > 0.5, iou


# --------------------------------------------------------------------------- read-only


@pytest.fixture
def untouched():
    """The built-in models' folder is the same after the test (no file added or changed)."""
    before = _tree_digest(builtin.BUILTIN_ROOT)
    yield
    assert _tree_digest(builtin.BUILTIN_ROOT) == before
    assert not list(builtin.BUILTIN_ROOT.glob("*.annotations"))


def _refused(call, *args, **kwargs) -> str:
    with pytest.raises(ReadOnlyModelError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "builtin:nuclei" in message and "choose another output folder" in message, message
    return message


@pytest.mark.usefixtures("untouched")
def test_nothing_writes_into_a_builtin_folder(nuclei_model, tmp_path):
    model = nuclei_model
    for where in ("builtin:nuclei", NUCLEI, str(NUCLEI)):
        _refused(save_model, model, where)
        _refused(save_model, model, where, weights_dtype="float16")
        _refused(save_postprocess, where, PostprocessConfig(seed_threshold=0.5))
    _refused(save_checkpoint, NUCLEI, {"state": {}, "param_groups": []}, {"step": 1})
    _refused(atomic_write_json, NUCLEI / "config.json", {"x": 1})
    _refused(autosave, NUCLEI, "labels", np.zeros((4, 4), np.uint8))
    link = tmp_path / "link"
    link.symlink_to(NUCLEI, target_is_directory=True)  # a link to it is the same folder
    message = _refused(save_model, model, link)
    assert str(link) in message


@pytest.mark.usefixtures("untouched")
def test_training_into_a_builtin_folder_is_refused_before_it_starts(nuclei):
    images, labels = nuclei
    for resume in (False, True):
        message = _refused(
            nu.train, images[:1], labels[:1], labels_kind="instances", steps=1, out=NUCLEI,
            resume=resume, device="cpu",
        )  # fmt: skip
        assert "cannot train into" in message


@pytest.mark.usefixtures("untouched")
@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("out", ["builtin:nuclei", str(NUCLEI)])
def test_cli_train_into_builtin_exits_2(tmp_path, capsys, out, resume):
    args = ["train", "--images", str(SAMPLE / "images"), "--labels", str(SAMPLE / "labels")]
    args += ["--out", out, "--labels-kind", "instances", "--steps", "1"]
    code = main(args + (["--resume"] if resume else []))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "builtin:nuclei" in err and "read-only" in err and "choose another output folder" in err


@pytest.mark.usefixtures("untouched")
def test_cli_predict_into_builtin_exits_2(capsys):
    image = sorted((SAMPLE / "images").glob("*.png"))[0]
    code = main(["predict", "builtin:nuclei", str(image), "--out", str(NUCLEI)])
    err = capsys.readouterr().err
    assert code == 2 and "read-only" in err


# --------------------------------------------------------------------------- float16


def _dtypes(folder: Path) -> dict[str, str]:
    header, _ = safety.read_header(folder / "weights.safetensors")
    return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


@pytest.mark.parametrize(
    ("dtype", "name", "atol"), [("float16", "F16", 5e-3), (torch.bfloat16, "BF16", 5e-2)]
)
def test_half_weights_round_trip(tiny_model, nuclei, tmp_path, dtype, name, atol):
    model = load_model(tiny_model[1])
    full = save_model(model, tmp_path / "fp32")
    half = nu.save_model(model, tmp_path / "half", weights_dtype=dtype)
    dtypes = _dtypes(half)
    params = {k for k, _ in model.network.named_parameters()}
    assert all(dtypes[k] == name for k in params)
    assert all(dtypes[k] == "F32" for k in dtypes if "running_" in k)
    assert all(dtypes[k] == "I64" for k in dtypes if k.endswith("num_batches_tracked"))
    size_full = (full / "weights.safetensors").stat().st_size
    size_half = (half / "weights.safetensors").stat().st_size
    assert size_half < 0.6 * size_full
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.network.parameters())
    image = nuclei[0][0]
    p_full = predict_proba(load_model(full), image, device="cpu")
    p_half = predict_proba(loaded, image, device="cpu")
    assert np.abs(p_full - p_half).max() < atol
    ids_full = nu.predict(load_model(full), image, instances=True, device="cpu")
    ids_half = nu.predict(loaded, image, instances=True, device="cpu")
    assert ((ids_full > 0) == (ids_half > 0)).mean() > 0.99


def test_half_counters_and_integer_weights_are_refused(tiny_model, tmp_path):
    folder = save_model(load_model(tiny_model[1]), tmp_path / "m", weights_dtype="float16")

    def edit(change) -> None:
        tensors = load_file(str(folder / "weights.safetensors"))
        change(tensors)
        save_file(tensors, str(folder / "weights.safetensors"))
        cfg = json.loads((folder / "config.json").read_text())
        cfg["weights_sha256"] = store.sha256_hex((folder / "weights.safetensors").read_bytes())
        (folder / "config.json").write_text(json.dumps(cfg))

    key = next(k for k in _dtypes(folder) if k.endswith("num_batches_tracked"))
    edit(lambda t: t.update({key: t[key].to(torch.float16)}))
    with pytest.raises(safety.ModelFormatError, match="expected an integer counter"):
        load_model(folder)
    edit(
        lambda t: t.update(
            {key: t[key].to(torch.int64), "head.weight": t["head.weight"].to(torch.int16)}
        )
    )
    with pytest.raises(safety.ModelFormatError, match="'head.weight' has dtype I16"):
        load_model(folder)


def test_weights_dtype_is_checked(tiny_model, tmp_path):
    model = load_model(tiny_model[1])
    with pytest.raises(
        ValueError, match="weights_dtype must be one of float32, float16, bfloat16, got 'int8'"
    ):
        save_model(model, tmp_path / "a", weights_dtype="int8")
    with torch.no_grad():
        model.network.head.weight[0, 0] = 1e6  # over float16's range
    with pytest.raises(ValueError, match="'head.weight' does not fit torch.float16"):
        save_model(model, tmp_path / "b", weights_dtype="float16")
    assert not (tmp_path / "b" / "weights.safetensors").exists()
    save_model(model, tmp_path / "c", weights_dtype="bfloat16")  # bfloat16's range is float32's


# --------------------------------------------------------------------------- the wheel


@pytest.mark.slow
def test_built_wheel_contains_the_builtin_models(tmp_path):
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(REPO)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("napari_unet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in BUILTIN_MODELS:
        for file in ("config.json", "training.json", "weights.safetensors"):
            assert f"napari_unet/_builtin/{name}/{file}" in names, sorted(names)
    assert not any("/_builtin/" in n and "checkpoint" in n for n in names)


def test_a_sample_image_and_a_made_up_one_have_the_shapes_predicted(nuclei_model):
    """The built-in model predicts any 2D size (tiling pads), grey uint8 or float."""
    image, _ = make_nuclei(shape=(70, 90), seed=3)
    ids = nu.predict(nuclei_model, image.astype(np.float32), instances=True, device="cpu")
    assert ids.shape == (70, 90) and ids.dtype.kind == "u"


def test_a_builtin_model_is_trained_from_scratch(tmp_path):
    """The CLI starts from builtin:nuclei by default (init auto): retraining a built-in model
    (or a stand-in that must not have seen a held-out group) has to say scratch."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_builtin", REPO / "resources" / "train_builtin.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(labels_kind="instances", width=8, steps=10, time_budget=None)
    cmd = module.train_command(args, ["--device", "cpu"], tmp_path / "m", tmp_path / "data")
    from napari_unet.cli import build_parser

    parsed = build_parser().parse_args(cmd[1:])
    assert parsed.init == "scratch" and parsed.steps == 10 and parsed.device == "cpu"

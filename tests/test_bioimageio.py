"""bioimage.io export (issue 14): packages pass `bioimageio test` with pytorch_state_dict,
torchscript and onnx weights, predict what napari-unet predicts (also blockwise, also for
the paper's unpadded `valid` network), carry napari-unet's files and load back."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import napari_unet as nu
from napari_unet.bioimageio import export_bioimageio

from .conftest import make_nuclei


@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    pairs = [make_nuclei(seed=s) for s in range(2)]
    out = tmp_path_factory.mktemp("bio") / "semantic"
    labels = [(lab > 0).astype(np.uint8) * 255 for _, lab in pairs]
    nu.train([p[0] for p in pairs], labels, labels_kind="semantic", steps=3, width=4, depth=2,
             patch=32, batch_size=2, device="cpu", out=out)  # fmt: skip
    return nu.load_model(out)


@pytest.fixture(scope="module")
def valid_model(tmp_path_factory):
    """An instances model with the paper's unpadded ('valid') network."""
    pairs = [make_nuclei(shape=(96, 96), seed=s) for s in range(2)]
    out = tmp_path_factory.mktemp("bio") / "valid"
    nu.train([p[0] for p in pairs], [p[1] for p in pairs], labels_kind="instances", steps=3,
             width=4, depth=2, padding="valid", patch=48, batch_size=2, device="cpu", out=out,
             init="scratch")  # fmt: skip
    return nu.load_model(out)


@pytest.mark.parametrize("which", ["semantic", "instances", "valid"])
def test_exported_package_passes_bioimageio_test(
    which, semantic_model, tiny_model, valid_model, tmp_path
):
    from bioimageio.core import test_model

    model = {"semantic": semantic_model, "instances": tiny_model[0], "valid": valid_model}[which]
    image = make_nuclei(shape=(96, 96), seed=9)[0]
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image, name=f"napari-unet {which} test")
    summary = test_model(str(pkg))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    with zipfile.ZipFile(pkg) as z:
        names = set(z.namelist())
        rdf = z.read("rdf.yaml").decode()
        readme = z.read("README.md").decode()
        config = json.loads(z.read("config.json"))
    assert {"weights.pt", "weights_torchscript.pt", "weights.onnx", "unet.py"} <= names
    assert {"config.json", "weights.safetensors", "cover.png"} <= names
    assert "github_user" not in rdf and "scale_range" in rdf and "halo" in rdf
    assert "# Validation" in readme and "image(s) with" in readme and "steps in all" in readme
    assert config["model"] == json.loads((model.path / "config.json").read_text())["model"]
    for c in model.config.labels.class_names:
        assert c in rdf  # channel names = class names


def test_a_package_runs_where_napari_unet_cannot_be_imported(valid_model, tmp_path):
    """What a consumer has: the package alone (its architecture file imports only torch)."""
    import subprocess
    import sys

    image = make_nuclei(shape=(96, 96), seed=9)[0]
    pkg = export_bioimageio(valid_model, tmp_path / "pkg.zip", image)
    code = (
        "import sys; sys.modules['napari_unet'] = None\n"  # any import of it fails
        "from bioimageio.core import test_model\n"
        f"summary = test_model({str(pkg)!r}, weight_format='pytorch_state_dict')\n"
        "print(summary.status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip().splitlines()[-1:] == ["passed"], done.stdout + done.stderr


@pytest.mark.parametrize("which", ["instances", "valid"])
def test_probabilities_in_the_package_match_napari_unet(which, tiny_model, valid_model, tmp_path):
    """Also for a 'valid' network, whose package mirrors the border as napari-unet does."""
    model = tiny_model[0] if which == "instances" else valid_model
    image = make_nuclei(shape=(96, 100), seed=9)[0]
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image)
    with zipfile.ZipFile(pkg) as z:
        z.extract("test_input.npy", tmp_path)
        z.extract("test_output.npy", tmp_path)
    packaged = np.load(tmp_path / "test_output.npy", allow_pickle=False)[0]
    tested = np.load(tmp_path / "test_input.npy", allow_pickle=False)[0, 0]
    assert packaged.shape[1:] == tested.shape  # same size out as in, also for 'valid'
    here = nu.predict_proba(model, tested, device="cpu")
    np.testing.assert_allclose(packaged, here, atol=1e-3)


def test_a_large_test_image_is_cropped_and_the_weights_are_checked(
    tiny_model, tmp_path, monkeypatch
):
    import napari_unet.bioimageio as bioimageio

    model = tiny_model[0]
    image = make_nuclei(shape=(300, 280), n=40, seed=3)[0]
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image)
    with zipfile.ZipFile(pkg) as z:
        z.extract("test_input.npy", tmp_path)
    tested = np.load(tmp_path / "test_input.npy", allow_pickle=False)
    assert tested.shape == (1, 1, 256, 256)  # centred crop, TEST_EDGE
    np.testing.assert_array_equal(tested[0, 0], image[22:278, 12:268])
    # exported weights that do not reproduce the network: refused, nothing written
    monkeypatch.setattr(bioimageio, "TORCHSCRIPT_TOLERANCE", -1.0)
    with pytest.raises(ValueError, match=r"TorchScript export differs .* shape \(1, 1, 256, 256\)"):
        export_bioimageio(model, tmp_path / "bad.zip", image)
    monkeypatch.undo()
    monkeypatch.setattr(bioimageio, "ONNX_TOLERANCE", -1.0)
    with pytest.raises(ValueError, match="ONNX export differs"):
        export_bioimageio(model, tmp_path / "bad.zip", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg.zip", "test_input.npy"]


def test_export_refuses_what_it_cannot_write(tiny_model, tmp_path):
    model = tiny_model[0]
    image = make_nuclei(shape=(96, 96), seed=9)[0]
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"mine")
    with pytest.raises(ValueError, match="already exists"):
        export_bioimageio(model, taken, image)
    assert taken.read_bytes() == b"mine"
    with pytest.raises(ValueError, match="name 'x'"):
        export_bioimageio(model, tmp_path / "a.zip", image, name="x")
    with pytest.raises(ValueError, match=r"must be \(y, x\)"):
        export_bioimageio(model, tmp_path / "b.zip", np.zeros((2, 96, 96)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.zip"]


def test_a_package_loads_back_from_its_attachments(tiny_model, tmp_path, capsys):
    import tifffile

    from napari_unet.cli import main

    model = tiny_model[0]
    image = make_nuclei(shape=(96, 96), seed=9)[0]
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image)
    back = nu.load_model(pkg)
    assert back.config.model == model.config.model
    np.testing.assert_array_equal(
        nu.predict(back, image, instances=True), nu.predict(model, image, instances=True)
    )
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image)
    assert main(["-q", "predict", str(pkg), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 "--instances"]) == 0  # fmt: skip
    assert (tmp_path / "o" / "a.tif").is_file()


def test_a_zip_not_made_by_napari_unet_is_named(tmp_path, capsys):
    import zipfile

    from napari_unet.cli import main

    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("rdf.yaml", "type: model\n")
        z.writestr("weights.pt", b"\x80\x04not really")
    with pytest.raises(ValueError, match="not a bioimage.io package exported by napari-unet"):
        nu.load_model(other)
    (tmp_path / "in").mkdir()
    code = main(["predict", str(other), str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "napari-unet" in err and err.count("\n") == 1, err


def test_cli_export_builtin_nuclei_and_its_refusals(tmp_path, capsys):
    from napari_unet.cli import main

    pkg = tmp_path / "nuclei.zip"
    assert main(["export", "builtin:nuclei", "--out", str(pkg), "--author", "A. Person"]) == 0
    assert "wrote" in capsys.readouterr().out
    with zipfile.ZipFile(pkg) as z:
        rdf = z.read("rdf.yaml").decode()
    assert "A. Person" in rdf and "CC-BY-4.0" in rdf
    for args, fragment in (
        (["builtin:nuclei", "--out", str(pkg)], "already exists"),
        (["builtin:nuclei", "--out", str(tmp_path / "x.tar")], "is a .zip"),
        ([str(tmp_path / "nothing"), "--out", str(tmp_path / "n.zip")], "does not exist"),
        (["builtin:nuclei", "--out", str(tmp_path / "no" / "n.zip")], "not a writable folder"),
    ):
        code = main(["export", *args])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and err.count("\n") == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nuclei.zip"]


def test_a_3d_two_channel_model_exports_and_passes(tmp_path):
    from bioimageio.core import test_model

    rng = np.random.default_rng(0)
    stack = np.stack([make_nuclei(shape=(32, 32), seed=s)[0] for s in range(20)])
    labels = np.stack([make_nuclei(shape=(32, 32), seed=s)[1] for s in range(20)])
    image = np.stack([stack, stack[::-1] + rng.integers(0, 9, stack.shape, dtype=np.uint8)], -1)
    out = tmp_path / "m3d"
    nu.train([image], [labels > 0], labels_kind="semantic", spatial_dims=3, steps=2, width=2,
             depth=1, patch=16, batch_size=1, device="cpu", out=out, init="scratch")  # fmt: skip
    model = nu.load_model(out)
    assert model.config.model.spatial_dims == 3 and model.config.model.in_channels == 2
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image, name="napari-unet 3d test")
    with zipfile.ZipFile(pkg) as z:
        z.extract("test_input.npy", tmp_path)
    tested = np.load(tmp_path / "test_input.npy", allow_pickle=False)
    np.testing.assert_array_equal(tested[0], np.moveaxis(image, -1, 0))  # channels first
    summary = test_model(str(pkg))
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    with pytest.raises(ValueError, match=r"\(c, z, y, x\)"):
        export_bioimageio(model, tmp_path / "other.zip", stack)


def test_cli_export_needs_an_image_the_model_takes(tmp_path, capsys):
    """The sample image is 2D grey: a two-channel model asks for --image, and a stack
    given to a 2D model gives its middle plane."""
    import tifffile

    from napari_unet.cli import main

    image, labels = make_nuclei(shape=(64, 64), seed=1)
    two = np.stack([image, image[::-1]], -1)
    out = tmp_path / "two"
    nu.train([two], [labels], labels_kind="instances", steps=1, width=2, depth=1, patch=32,
             batch_size=1, device="cpu", out=out, init="scratch")  # fmt: skip
    code = main(["export", str(out), "--out", str(tmp_path / "a.zip")])
    err = capsys.readouterr().err
    assert code == 2 and "--image: this model takes 2D images with 2 channel(s)" in err, err
    tifffile.imwrite(tmp_path / "grey.tif", image)
    code = main(["export", str(out), "--out", str(tmp_path / "a.zip"), "--image",
                 str(tmp_path / "grey.tif")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "grey.tif" in err and "2 entries" in err, err
    stack = np.stack([two * 0, two, two * 0])  # (z, y, x, c): the middle plane is `two`
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    assert main(["-q", "export", str(out), "--out", str(tmp_path / "a.zip"), "--image",
                 str(tmp_path / "stack.tif")]) == 0  # fmt: skip
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        z.extract("test_input.npy", tmp_path)
    tested = np.load(tmp_path / "test_input.npy", allow_pickle=False)[0]
    np.testing.assert_array_equal(tested, np.moveaxis(two, -1, 0))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".zip") == ["a.zip"]


@pytest.mark.parametrize(("which", "tolerance"), [("instances", 0.05), ("valid", 1e-4)])
def test_blockwise_prediction_of_the_package_matches_the_whole_image(
    which, tolerance, tiny_model, valid_model, tmp_path
):
    """The declared halo is enough context: bioimageio.core's smallest blocks give the
    whole-image probabilities (within 0.05; a 'valid' network's blocks, whose halo is its
    border, to float rounding)."""
    from bioimageio.core import predict
    from bioimageio.spec.model.v0_5 import TensorId

    model = tiny_model[0] if which == "instances" else valid_model
    image = make_nuclei(shape=(192, 192), n=30, seed=11)[0].astype(np.float32)
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", image)
    x = {TensorId("raw"): image[None, None]}
    out = TensorId("probabilities")
    whole = predict(model=str(pkg), inputs=x).members[out].data.values
    blocks = predict(model=str(pkg), inputs=x, blocksize_parameter=1).members[out].data.values
    assert whole.shape == blocks.shape == (1, 3, 192, 192)
    assert float(np.abs(whole - blocks).max()) < tolerance
    smallest = {"instances": 36, "valid": 44}[which]  # > 2 x halo (16 / 20 px), 4k (+ 4)
    with pytest.raises(ValueError, match=f"at least {smallest} pixels"):
        export_bioimageio(model, tmp_path / "small.zip", image[:34, :34])

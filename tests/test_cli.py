"""The CLI as a user runs it: real processes for the checks that matter from outside."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet.cli import main

from .conftest import make_nuclei

TRAIN = ["--width", "4", "--depth", "2", "--patch", "32", "--batch-size", "2", "--device", "cpu"]


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "napari_unet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for sub in ("images", "labels", "test", "truth"):
        (root / sub).mkdir()
    for i in range(4):
        img, lab = make_nuclei(shape=(64, 80), seed=10 + i)
        iio.imwrite(root / "images" / f"n{i}.png", img)
        tifffile.imwrite(root / "labels" / f"n{i}.tif", lab)
    img, lab = make_nuclei(shape=(70, 90), seed=50)
    iio.imwrite(root / "test" / "t0.png", img)
    tifffile.imwrite(root / "truth" / "t0.tif", lab)
    return root


@pytest.fixture(scope="module")
def cli_model(folders):
    out = folders / "model"
    code = main(
        [
            "-q",
            "train",
            "--images",
            str(folders / "images"),
            "--labels",
            str(folders / "labels"),
            "--out",
            str(out),
            "--labels-kind",
            "instances",
            "--steps",
            "20",
            *TRAIN,
        ]
    )
    assert code == 0
    return out


def test_train_writes_model_folder(cli_model):
    names = {p.name for p in cli_model.iterdir()}
    assert {"config.json", "weights.safetensors", "training.json", "checkpoint"} <= names
    cfg = json.loads((cli_model / "config.json").read_text())
    assert cfg["model"]["width"] == 4 and cfg["labels"]["kind"] == "instances"
    hist = json.loads((cli_model / "training.json").read_text())
    assert hist["steps"] == 20 and len(hist["sessions"][0]["data"]) == 4


def test_predict_and_evaluate(folders, cli_model, tmp_path):
    out = tmp_path / "pred"
    assert (
        main(
            [
                "-q",
                "predict",
                str(cli_model),
                str(folders / "test"),
                "--out",
                str(out),
                "--instances",
                "--probabilities",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    inst = tifffile.imread(out / "t0.tif")
    prob = tifffile.imread(out / "t0_prob.tif")
    assert inst.shape == (70, 90) and inst.dtype.kind == "u"
    assert prob.shape == (3, 70, 90) and prob.dtype == np.float32
    np.testing.assert_allclose(prob.sum(0), 1, atol=1e-4)
    assert main(["-q", "evaluate", "--pred", str(out), "--truth", str(folders / "truth")]) == 0
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["mean"]["n_true"] > 0 and 0 <= summary["mean"]["ap50"] <= 1
    assert (out / "evaluation.csv").read_text().splitlines()[-1].startswith("mean,")


def test_predict_zarr(folders, cli_model, tmp_path):
    import zarr

    out = tmp_path / "z"
    assert (
        main(
            [
                "-q",
                "predict",
                str(cli_model),
                str(folders / "test" / "t0.png"),
                "--out",
                str(out),
                "--format",
                "zarr",
                "--probabilities",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    z = zarr.open(str(out / "t0.zarr"), mode="r")["0"]
    assert z.shape == (70, 90) and set(np.unique(z[...])) <= {0, 1, 2}
    p = zarr.open(str(out / "t0_prob.zarr"), mode="r")["0"]
    assert p.shape == (3, 70, 90) and p.dtype == np.float16


def test_resume_and_refusal_to_overwrite(folders, cli_model, capsys):
    args = [
        "train",
        "--images",
        str(folders / "images"),
        "--labels",
        str(folders / "labels"),
        "--out",
        str(cli_model),
        "--labels-kind",
        "instances",
        "--steps",
        "3",
        *TRAIN,
    ]
    assert main(args) == 2
    assert "already holds a model" in capsys.readouterr().err
    before = (cli_model / "weights.safetensors").read_bytes()
    assert main(["-q", *args, "--resume"]) == 0
    assert json.loads((cli_model / "training.json").read_text())["steps"] == 23
    assert (cli_model / "weights.safetensors").read_bytes() != before


def _bad(folders, cli_model, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.png").write_text("not a png")
    (tmp_path / "afile").write_text("x")
    mism = tmp_path / "mism"
    (mism / "i").mkdir(parents=True)
    (mism / "l").mkdir()
    iio.imwrite(mism / "i" / "a.png", np.zeros((20, 20), np.uint8))
    iio.imwrite(mism / "l" / "a.png", np.zeros((21, 20), np.uint8))
    train = ["train", "--labels", str(folders / "labels"), "--out", str(tmp_path / "m")]
    return {
        "missing images": (
            ["train", "--images", str(tmp_path / "nope"), *train[1:]],
            "does not exist",
        ),
        "not an image": (
            ["train", "--images", str(tmp_path / "notes.txt"), *train[1:]],
            "is not a TIFF, PNG, JPEG or zarr image",
        ),
        "broken png": (
            ["predict", str(cli_model), str(tmp_path / "fake.png"), "--out", str(tmp_path / "o")],
            "could not be read as an image",
        ),
        "shape mismatch": (
            [
                "train",
                "--images",
                str(mism / "i"),
                "--labels",
                str(mism / "l"),
                "--out",
                str(tmp_path / "m2"),
            ],
            "has shape (20, 20)",
        ),
        "no model": (
            [
                "predict",
                str(tmp_path / "nomodel"),
                str(folders / "test"),
                "--out",
                str(tmp_path / "o"),
            ],
            "nomodel",
        ),
        "out is a file": (
            ["predict", str(cli_model), str(folders / "test"), "--out", str(tmp_path / "afile")],
            "is a file",
        ),
        "no cuda": (
            ["train", "--images", str(folders / "images"), *train[1:], "--device", "cuda"],
            "CUDA is not available",
        ),
        "bad kind": (
            ["train", "--images", "x", "--labels", "y", "--out", "z", "--labels-kind", "dots"],
            "invalid choice",
        ),
        "bad budget": (
            ["train", "--images", "x", "--labels", "y", "--out", "z", "--time-budget", "-3"],
            "must be > 0",
        ),
    }


def test_bad_input_matrix_exits_2_with_one_line(folders, cli_model, tmp_path):
    cases = {k: v for k, v in _bad(folders, cli_model, tmp_path).items() if v}
    for name, (args, expected) in cases.items():
        r = run_cli(*args)
        assert r.returncode == 2, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, (name, r.stderr)
        assert expected in lines[0], (name, lines[0])


def test_planted_pickle_is_refused_and_never_executed(cli_model, folders, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "bad-model"
    bad.mkdir()
    for f in ("config.json", "training.json"):
        (bad / f).write_bytes((cli_model / f).read_bytes())
    (bad / "weights.safetensors").write_bytes(pickle.dumps(Payload(), protocol=2))
    r = run_cli("predict", bad, folders / "test", "--out", tmp_path / "o", "--device", "cpu")
    assert r.returncode == 2 and "pickle" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    # a torch-style pickle beside genuine weights is refused too
    good = tmp_path / "good-model"
    good.mkdir()
    for f in ("config.json", "training.json", "weights.safetensors"):
        (good / f).write_bytes((cli_model / f).read_bytes())
    (good / "extra.pt").write_bytes(pickle.dumps(Payload()))
    r = run_cli("predict", good, folders / "test", "--out", tmp_path / "o2", "--device", "cpu")
    assert r.returncode == 2 and "pickle" in r.stderr
    assert not marker.exists()


def test_console_script_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "evaluate" in r.stdout
    assert Path(sys.executable).parent.joinpath("napari-unet").exists()


def test_sparse_instances_and_postprocessing_flags(tmp_path, capsys):
    from .test_few_labels import few_cells

    for sub in ("i", "l", "t"):
        (tmp_path / sub).mkdir()
    for s in range(3):
        img, lab = make_nuclei(seed=s, n=10)
        tifffile.imwrite(tmp_path / "i" / f"n{s}.tif", img)
        tifffile.imwrite(tmp_path / "l" / f"n{s}.tif", few_cells(lab, seed=s))
    tifffile.imwrite(tmp_path / "t" / "t.tif", make_nuclei(seed=50, n=10)[0])
    model = tmp_path / "m"
    code = main(
        ["train", "--images", str(tmp_path / "i"), "--labels", str(tmp_path / "l"),
         "--out", str(model), "--labels-kind", "sparse-instances", "--steps", "20", *TRAIN]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    measured_on = "1 held-out outlined object of 6 + "
    assert f"validation IoU is measured on {measured_on}" in out
    assert "instances: seed threshold" in out and f"held-out objects ({measured_on}" in out
    assert "too few to choose them" in out  # one held-out object: the thresholds kept, said so
    assert json.loads((model / "config.json").read_text())["labels"]["kind"] == "sparse-instances"
    flag_runs = (([], "own"), (["--min-size", "1000000"], "none"), (["--split", "0.5"], "cut"))
    for flags, pred in flag_runs:
        code = main(["-q", "predict", str(model), str(tmp_path / "t"), "--out",
                     str(tmp_path / pred), "--instances", "--device", "cpu", *flags])  # fmt: skip
        assert code == 0
    assert tifffile.imread(tmp_path / "none" / "t.tif").max() == 0  # nothing that big
    # cutting seeds at their waists never merges: at least as many objects
    own, cut = (tifffile.imread(tmp_path / d / "t.tif") for d in ("own", "cut"))
    assert len(np.unique(cut)) >= len(np.unique(own))
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(model), str(tmp_path / "t"), "--out", str(tmp_path / "x"),
              "--split", "2"])  # fmt: skip
    assert exc.value.code == 2 and "--split: must be in [0, 0.95], got 2" in capsys.readouterr().err
    # the flag is for one run: the model folder keeps its own settings
    assert json.loads((model / "config.json").read_text())["postprocess"]["min_size"] < 1000000


def test_train_lr_sets_the_peak_learning_rate(folders, tmp_path, capsys):
    """--lr scales the whole schedule (warm-up included); a bad value is named."""
    logs = {}
    for lr in ("5e-4", "5e-3"):
        out = tmp_path / f"m{lr}"
        args = ["-q", "train", "--images", folders / "images", "--labels", folders / "labels",
                "--out", out, "--labels-kind", "instances", "--steps", "3", "--init", "scratch",
                "--lr", lr, *TRAIN]  # fmt: skip
        assert main([str(a) for a in args]) == 0
        logs[lr] = json.loads((out / "training.json").read_text())["log"]
    low, high = ([row[2] for row in logs[k]] for k in ("5e-4", "5e-3"))
    assert max(low) <= 5e-4 and len(low) == len(high)
    np.testing.assert_allclose(np.array(high) / np.array(low), 10.0, rtol=1e-6)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--images", "x", "--labels", "y", "--out", str(tmp_path / "z"), "--lr", "0"])
    assert exc.value.code == 2 and "--lr: must be in [1e-8, 10], got 0" in capsys.readouterr().err


def test_train_distill_sets_the_weight_and_refuses_bad_values(folders, tmp_path, capsys):
    sessions = {}
    for weight in ("0", None):
        out = tmp_path / f"m{weight}"
        args = ["-q", "train", "--images", folders / "images", "--labels", folders / "labels",
                "--out", out, "--labels-kind", "instances", "--steps", "2", "--init",
                "builtin:nuclei", "--patch", "32", "--batch-size", "2", "--device", "cpu",
                *(["--distill", weight] if weight else [])]  # fmt: skip
        assert main([str(a) for a in args]) == 0
        sessions[weight] = json.loads((out / "training.json").read_text())["sessions"][-1]
        config = json.loads((out / "config.json").read_text())["train"]
        assert config["distill"] == (0.0 if weight else 5.0)
    assert "distill" not in sessions["0"]  # weight 0: the start model teaches nothing
    assert sessions[None]["distill"] == {"from": "builtin:nuclei", "weight": 5.0}
    for bad in ("-1", "x"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--images", "x", "--labels", "y", "--out", str(tmp_path / "z"),
                  "--distill", bad])  # fmt: skip
        assert exc.value.code == 2 and "--distill:" in capsys.readouterr().err


def test_train_balance_is_recorded_and_refuses_bad_values(folders, tmp_path, capsys):
    for share, want in (("0", 0.0), (None, 0.5)):
        out = tmp_path / f"m{share}"
        args = ["-q", "train", "--images", folders / "images", "--labels", folders / "labels",
                "--out", out, "--labels-kind", "instances", "--steps", "1", "--init", "scratch",
                *TRAIN, *(["--balance", share] if share else [])]  # fmt: skip
        assert main([str(a) for a in args]) == 0
        assert json.loads((out / "config.json").read_text())["train"]["balance"] == want
    for bad in ("0.99", "-0.1", "half"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--images", "x", "--labels", "y", "--out", str(tmp_path / "z"),
                  "--balance", bad])  # fmt: skip
        assert exc.value.code == 2 and "--balance:" in capsys.readouterr().err


def test_train_compile_flag_compiles_and_says_how_long(folders, tmp_path, capsys, monkeypatch):
    import torch

    from napari_unet import trainer

    monkeypatch.setattr(trainer, "COMPILE_BACKEND", "eager")  # no kernels generated: seconds
    torch._dynamo.reset()
    out = tmp_path / "m"
    args = ["train", "--images", folders / "images", "--labels", folders / "labels", "--out",
            out, "--labels-kind", "instances", "--steps", "2", "--init", "scratch", "--width",
            "4", "--depth", "2", "--patch", "32", "--batch-size", "2", "--device", "cpu",
            "--compile"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["compile"] is True
    phases = json.loads((out / "training.json").read_text())["sessions"][-1]["phases"]
    assert phases["compile"] > 0
    (time_line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("time:")]
    assert f"compile {phases['compile']:.1f} s" in time_line


def test_train_scale_flag_is_recorded_and_checked(folders, tmp_path, capsys):
    """--scale resizes the images to train, says so, and the model keeps it."""
    out = tmp_path / "scaled"
    args = ["train", "--images", folders / "images", "--labels", folders / "labels",
            "--out", out, "--labels-kind", "instances", "--steps", "2", "--init", "scratch",
            "--scale", "0.5", *TRAIN]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    assert "images resized to 0.5x (prediction does the same)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["normalization"]["scale"] == 0.5
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args[: -len(TRAIN) - 2]] + ["--scale", "0"])
    assert (
        exc.value.code == 2 and "--scale: must be in [0.05, 4.0], got 0" in capsys.readouterr().err
    )


def test_dims_3_trains_a_3d_network_and_predicts_volumes(tmp_path, capsys):
    """--dims 3 trains a 3D network on volumes, with the voxel size of an ImageJ TIFF
    (z 2.2x coarser: resized along z, recorded); predict says how it reads a stack and
    returns the input's shape."""
    from napari_unet._sample_data import make_synthetic_nuclei_3d

    image, labels = make_synthetic_nuclei_3d()
    for sub in ("images", "labels", "test"):
        (tmp_path / sub).mkdir()
    imagej = dict(
        imagej=True, resolution=(1 / 0.13, 1 / 0.13), metadata={"spacing": 0.286, "unit": "um"}
    )
    tifffile.imwrite(tmp_path / "images" / "v.tif", image[:16, :64, :64], **imagej)
    tifffile.imwrite(tmp_path / "labels" / "v.tif", labels[:16, :64, :64])
    tifffile.imwrite(tmp_path / "test" / "w.tif", image[16:, 64:, 64:], **imagej)
    out = tmp_path / "m3"
    args = ["train", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
            "--out", out, "--labels-kind", "instances", "--steps", "2", "--dims", "3",
            "--width", "4", "--depth", "2", "--patch", "16", "--batch-size", "1",
            "--device", "cpu"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    said = capsys.readouterr().out
    assert "voxel size z 0.286, y 0.13, x 0.13 micrometer (from v.tif's metadata)" in said
    assert "volumes resized to 2.2x along z for near-isotropic voxels" in said
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["spatial_dims"] == 3 and config["normalization"]["z_scale"] == 2.2
    assert main(["predict", str(out), str(tmp_path / "test"), "--out", str(tmp_path / "p")]) == 0
    assert "a 3D model: each stack is predicted as one volume" in capsys.readouterr().out
    assert tifffile.imread(next((tmp_path / "p").glob("w*.tif"))).shape == (16, 64, 64)
    args[args.index(out)] = tmp_path / "m3b"
    flat = [str(a) for a in args]
    flat[flat.index("--dims") + 1] = "2"  # a voxel size for a 2D network: refused
    assert main([*flat, "--voxel-size", "2", "1", "1"]) == 2
    assert "--voxel-size is for a 3D network (--dims 3)" in capsys.readouterr().err
    # a 2D start model cannot be a 3D network
    assert main([str(a) for a in args] + ["--init", "builtin:nuclei"]) == 2
    err = capsys.readouterr().err
    assert "spatial_dims 3 was given" in err and "(builtin:nuclei) has spatial_dims 2" in err
    assert not (tmp_path / "m3b").exists()

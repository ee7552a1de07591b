"""Batch prediction: mixed sizes, a failing file in the middle, resume, summary.csv."""

import csv

import imageio.v3 as iio
import numpy as np
import tifffile

from napari_unet.cli import main

from .conftest import make_nuclei


def _folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, shape in enumerate([(64, 80), (100, 50), (40, 40)]):
        img, _ = make_nuclei(shape=shape, n=3, radius=(4, 7), seed=i)
        iio.imwrite(src / f"img{i}.png", img)
    (src / "img1b.png").write_bytes(b"this is not a png")  # fails, in the middle
    return src


def _summary(out):
    with open(out / "summary.csv", newline="") as fh:
        return {row["input"]: row for row in csv.DictReader(fh)}


def test_batch_goes_on_after_a_bad_file_and_resumes(tiny_model, tmp_path, capsys):
    _, model_dir = tiny_model
    src = _folder(tmp_path)
    out = tmp_path / "out"
    args = [
        "predict",
        str(model_dir),
        str(src),
        "--out",
        str(out),
        "--instances",
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "1 of 4 input(s) failed" in captured.err and "img1b" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    for name, shape in [("img0", (64, 80)), ("img1", (100, 50)), ("img2", (40, 40))]:
        assert tifffile.imread(out / f"{name}.tif").shape == shape
    assert not (out / "img1b.tif").exists()
    rows = _summary(out)
    assert rows["img1b"]["status"] == "failed" and "could not be read" in rows["img1b"]["reason"]
    assert rows["img0"]["status"] == "done" and rows["img0"]["shape"] == "64x80"
    inst = tifffile.imread(out / "img0.tif")
    assert int(rows["img0"]["objects"]) == len(np.unique(inst[inst > 0]))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    # the same command again redoes nothing that finished, and says so
    before = (out / "img0.tif").stat().st_mtime_ns
    (src / "img1b.png").unlink()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("skipped") == 3
    assert (out / "img0.tif").stat().st_mtime_ns == before
    rows = _summary(out)
    assert rows["img0"]["objects"] and rows["img0"]["status"] == "done"


def test_partial_output_is_redone(tiny_model, tmp_path):
    _, model_dir = tiny_model
    src = _folder(tmp_path)
    (src / "img1b.png").unlink()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".img0.tif.abc.tmp").write_bytes(b"half a file")  # an interrupted write
    assert (
        main(["-q", "predict", str(model_dir), str(src), "--out", str(out), "--device", "cpu"]) == 0
    )
    assert tifffile.imread(out / "img0.tif").shape == (64, 80)
    assert set(_summary(out)) == {"img0", "img1", "img2"}
    assert "0=" in _summary(out)["img0"]["fractions"]

"""Batch prediction at scale: planes predicted in blocks, OME-Zarr outputs, interrupted runs."""

import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import tifffile
import zarr

from napari_unet.batch import ZarrSink, predict_items_iter, remove_leftovers
from napari_unet.events import ChunkDone, drain
from napari_unet.files import pixel_sizes, read_image
from napari_unet.inference import HALO, Block, plan_blocks, predict_proba
from napari_unet.metrics import match_instances
from napari_unet.postprocess import class_labels, instances_from_probs

from .conftest import make_nuclei


def _ome(path):
    return zarr.open_group(str(path), mode="r").attrs["ome"]


def test_plan_blocks_cover_the_plane_once_with_halo():
    plan = plan_blocks((300, 130), 100, 16)
    cover = np.zeros((300, 130), int)
    for window, core in plan:
        cover[core] += 1
        for w, c, n in zip(window, core, (300, 130), strict=True):
            assert w.start == max(0, c.start - 16) and w.stop == min(n, c.stop + 16)
            assert c.stop - c.start <= 100
    assert len(plan) == 3 * 2 and (cover == 1).all()
    assert plan_blocks((50, 60), 100, 16) == [((slice(0, 50), slice(0, 60)),) * 2]


def _probs_from_labels(labels):
    """(3, Y, X) probabilities that post-process back to ``labels``' objects."""
    from skimage.segmentation import find_boundaries

    boundary = find_boundaries(labels, mode="inner") & (labels > 0)
    interior = (labels > 0) & ~boundary
    probs = np.stack([labels == 0, interior, boundary]).astype(np.float32)
    return probs * 0.98 + 0.01


def test_blocked_instances_keep_each_object_once_and_whole(tiny_model, tmp_path):
    """Objects straddling block borders come out whole, once, as in one piece."""
    model, _ = tiny_model
    _, truth = make_nuclei(shape=(260, 250), n=40, radius=(6, 12), seed=3)
    probs = _probs_from_labels(truth)
    whole = instances_from_probs(probs)
    sink = ZarrSink(model, tmp_path / "o.zarr", None, truth.shape, "YX", instances=True)
    for window, core in plan_blocks(truth.shape, 64, HALO):
        sink(Block((), window, core), probs[(slice(None), *window)])
    [final] = sink.commit()
    got = zarr.open_group(str(final), mode="r")["0"][...]
    straddling = sum(
        len(np.unique(whole[:, e - 1 : e + 1][whole[:, e - 1 : e + 1] > 0])) for e in (64, 128, 192)
    )
    assert straddling > 3  # the test really crosses block borders
    scores = match_instances(whole, got, threshold=0.9)
    assert scores["tp"] == len(np.unique(whole)) - 1 and scores["fp"] == 0
    assert sink.stats.objects == len(np.unique(got)) - 1


def test_zarr_plane_in_blocks_matches_whole_prediction(tiny_model, tmp_path):
    model, _ = tiny_model
    img, _ = make_nuclei(shape=(330, 300), n=60, radius=(5, 9), seed=7)
    out = tmp_path / "out"
    events = []
    drain(
        predict_items_iter(
            model,
            [("plane", lambda: img)],
            out,
            probabilities=True,
            fmt="zarr",
            device="cpu",
            block=128,
        ),
        events.append,
    )
    chunks = [e for e in events if isinstance(e, ChunkDone)]
    assert [(c.i, c.n) for c in chunks] == [(i, 9) for i in range(1, 10)]
    expected = predict_proba(model, img, device="cpu")
    got = zarr.open_group(str(out / "plane_prob.zarr"), mode="r")["0"][...].astype(np.float32)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 0.05  # blocks see the same context (float16 output)
    labels = read_image(out / "plane.zarr")
    same = (labels == class_labels(expected, model.config.labels)).mean()
    assert same > 0.995


def test_zarr_output_is_ome_zarr_with_the_source_pixel_sizes(tiny_model, nuclei, tmp_path):
    model, _ = tiny_model
    stack = np.stack(nuclei[0][:3])
    src = tmp_path / "src.ome.tif"
    tifffile.imwrite(
        src,
        stack,
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.65,
            "PhysicalSizeY": 0.65,
            "PhysicalSizeZ": 2.0,
        },
    )
    assert pixel_sizes(src) == {
        "X": (0.65, "micrometer"),
        "Y": (0.65, "micrometer"),
        "Z": (2.0, "micrometer"),
    }
    out = tmp_path / "out"
    from napari_unet.batch import predict_files_iter

    drain(
        predict_files_iter(
            model, [str(src)], out, instances=True, probabilities=True, fmt="zarr", device="cpu"
        )
    )
    ome = _ome(out / "src.zarr")
    assert ome["version"] == "0.5" and "image-label" in ome
    [ms] = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert {a.get("unit") for a in ms["axes"]} == {"micrometer"}
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [2.0, 0.65, 0.65]}
    ]
    prob = _ome(out / "src_prob.zarr")["multiscales"][0]
    assert [a["name"] for a in prob["axes"]] == ["c", "z", "y", "x"]
    assert prob["axes"][0]["type"] == "channel"
    assert prob["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.65, 0.65]
    # an OME-Zarr output is itself a valid input with the same sizes
    assert pixel_sizes(out / "src.zarr") == pixel_sizes(src)
    meta = json.loads((out / "src.zarr" / "zarr.json").read_text())
    assert meta["node_type"] == "group"


def test_time_axis_comes_before_classes_in_ome_zarr(tiny_model, nuclei, tmp_path):
    model, _ = tiny_model
    movie = np.stack(nuclei[0][:2])
    out = tmp_path / "out"
    drain(
        predict_items_iter(
            model,
            [("movie", lambda: movie, {"T": (30.0, "second"), "X": (0.5, "micrometer")})],
            out,
            axes="TYX",
            probabilities=True,
            fmt="zarr",
            device="cpu",
        )
    )
    ms = _ome(out / "movie_prob.zarr")["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [30.0, 1.0, 1.0, 0.5]
    probs = zarr.open_group(str(out / "movie_prob.zarr"), mode="r")["0"]
    expected = predict_proba(model, movie, axes="TYX", device="cpu")
    np.testing.assert_allclose(probs[...], np.moveaxis(expected, 0, 1), atol=1e-3)


def test_imagej_and_plain_tiff_resolution(tmp_path):
    img = np.zeros((4, 16, 16), np.uint8)
    tifffile.imwrite(
        tmp_path / "ij.tif",
        img,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"spacing": 1.5, "unit": "um", "axes": "ZYX"},
    )
    assert pixel_sizes(tmp_path / "ij.tif") == {
        "X": (0.2, "micrometer"),
        "Y": (0.2, "micrometer"),
        "Z": (1.5, "micrometer"),
    }
    tifffile.imwrite(
        tmp_path / "cm.tif", img[0], resolution=(5000, 5000), resolutionunit="CENTIMETER"
    )
    sizes = pixel_sizes(tmp_path / "cm.tif")
    assert sizes["X"][1] == "micrometer" and abs(sizes["X"][0] - 2.0) < 1e-9
    tifffile.imwrite(tmp_path / "none.tif", img[0])
    assert pixel_sizes(tmp_path / "none.tif") == {}
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    assert pixel_sizes(tmp_path / "broken.tif") == {}


def test_leftovers_of_this_batch_only_are_removed(tmp_path):
    (tmp_path / ".a.zarr.x1.tmp").mkdir()
    (tmp_path / ".a_prob.zarr.x2.tmp").mkdir()
    (tmp_path / ".summary.csv.x3.tmp").write_text("")
    keep = [tmp_path / ".other.zarr.x4.tmp", tmp_path / "a.zarr", tmp_path / ".a.tif.x5.tmp"]
    keep[0].mkdir()
    keep[1].mkdir()
    keep[2].write_text("")
    removed = remove_leftovers(tmp_path, ["a"], ".zarr")
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(tiny_model, tmp_path):
    """Kill the CLI mid-batch (SIGKILL), run the same command again: finished inputs are
    skipped, the interrupted one is redone, no temporary output is left, and the outputs
    equal those of an uninterrupted run."""
    _, model_dir = tiny_model
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        img, _ = make_nuclei(shape=(700, 700), n=80, radius=(5, 9), seed=20 + i)
        tifffile.imwrite(src / f"img{i}.tif", img)

    def command(out):
        return [
            sys.executable,
            "-m",
            "napari_unet.cli",
            "predict",
            str(model_dir),
            str(src),
            "--out",
            str(out),
            "--instances",
            "--probabilities",
            "--format",
            "zarr",
            "--device",
            "cpu",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "img1.zarr").exists():
        time.sleep(0.05)
    assert (out / "img1.zarr").exists(), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in out.glob("img*.zarr"))
    assert len(finished) < 6  # it really was interrupted
    resumed = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for name in finished:
        if not name.endswith("_prob.zarr"):
            assert f"{name[:-5]}: skipped" in resumed.stdout
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    clean = tmp_path / "clean"
    subprocess.run(command(clean), env=env, check=True, capture_output=True, timeout=300)
    for i in range(6):
        for name in (f"img{i}.zarr", f"img{i}_prob.zarr"):
            a = zarr.open_group(str(out / name), mode="r")["0"][...]
            b = zarr.open_group(str(clean / name), mode="r")["0"][...]
            np.testing.assert_array_equal(a, b)
    with open(out / "summary.csv") as fh:
        assert sum(1 for line in fh if ",done," in line) == 6


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_cli_shows_a_progress_bar_on_a_terminal(tiny_model, nuclei, tmp_path, monkeypatch, capsys):
    from napari_unet.cli import main

    _, model_dir = tiny_model
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"s{i}.tif", np.stack(nuclei[0][:2]))
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    args = ["predict", str(model_dir), str(src), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main([*args, "--format", "zarr"]) == 0
    bar = terminal.getvalue()
    assert "predict: 100%" in bar and "2/2" in bar and "chunk " in bar  # redrawn <= 10/s
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "a 2D model: stacks are predicted slice by slice"
    assert [line.split(" ->")[0] for line in lines[1:]] == ["[1/2] s0", "[2/2] s1"]
    # not a terminal: the lines only
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert main([*args, "--format", "tif"]) == 0
    assert sys.stderr.getvalue() == ""


def test_large_tiff_is_read_region_by_region(tiny_model, nuclei, tmp_path, monkeypatch):
    import napari_unet.files as files

    model, _ = tiny_model
    stack = np.stack(nuclei[0][:3])
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, stack, tile=(32, 32))
    monkeypatch.setattr(files, "LAZY_TIFF_BYTES", 0)
    lazy = files.read_image(src, lazy=True)
    assert not isinstance(lazy, np.ndarray) and lazy.shape == stack.shape
    np.testing.assert_array_equal(lazy[1, 10:20, 5:50], stack[1, 10:20, 5:50])
    out = tmp_path / "out"
    from napari_unet.batch import predict_files_iter

    drain(predict_files_iter(model, [str(src)], out, fmt="zarr", device="cpu"))
    expected = class_labels(predict_proba(model, stack, device="cpu"), model.config.labels)
    np.testing.assert_array_equal(read_image(out / "big.zarr"), expected)

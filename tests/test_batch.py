"""Batch prediction: mixed sizes, a failing file in the middle, resume, summary.csv."""

import csv
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
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


def test_zarr_stack_streams_slice_by_slice_like_in_memory(tiny_model, nuclei, tmp_path):
    import zarr

    import napari_unet as nu
    from napari_unet.batch import predict_files_iter
    from napari_unet.events import drain

    model, model_dir = tiny_model
    stack = np.stack(nuclei[0][:4])
    src = tmp_path / "stack.zarr"
    z = zarr.open_array(
        str(src), mode="w", shape=stack.shape, chunks=(1, 32, 32), dtype=stack.dtype
    )
    z[...] = stack
    out = tmp_path / "out"
    written = drain(
        predict_files_iter(
            model, [str(src)], out, instances=True, probabilities=True, fmt="zarr", device="cpu"
        )
    )
    assert sorted(p.name for p in written) == ["stack.zarr", "stack_prob.zarr"]
    got = zarr.open(str(out / "stack.zarr"), mode="r")["0"][...]
    # zarr outputs are predicted at the model's scale (no object-size zoom): the same as
    # in memory at zoom 1
    expected = nu.predict(model, stack, instances=True, device="cpu", zoom=1.0)
    np.testing.assert_array_equal(got, expected)
    probs = zarr.open(str(out / "stack_prob.zarr"), mode="r")["0"]
    assert probs.shape == (3, *stack.shape) and probs.dtype == np.float16
    row = _summary(out)["stack"]
    assert int(row["objects"]) == len(np.unique(expected[expected > 0]))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cancelled_zarr_output_leaves_nothing(tiny_model, nuclei, tmp_path):
    from napari_unet.batch import predict_items_iter
    from napari_unet.events import TileDone

    model, _ = tiny_model
    stack = np.stack(nuclei[0][:4])
    out = tmp_path / "out"
    gen = predict_items_iter(model, [("s", lambda: stack)], out, fmt="zarr", device="cpu")
    for event in gen:
        if isinstance(event, TileDone):
            break
    gen.close()
    assert [p.name for p in out.iterdir()] == []


def _fail_on(names, flag):
    """A worker-side fault: the task of each input in ``names`` raises, the first of them
    only until ``flag`` exists (a transient fault, then a lasting one)."""
    import napari_unet.batch as batch

    original = batch.predict_file_as_worker_iter

    def faulty(model, path, out, **settings):
        name = Path(path).stem
        if name == names[0] and not flag.exists():
            flag.touch()
            raise RuntimeError("CUDA out of memory (simulated)")
        if name in names[1:]:
            raise RuntimeError("CUDA out of memory (simulated, every time)")
        return original(model, path, out, **settings)

    batch.predict_file_as_worker_iter = faulty


@pytest.mark.slow
def test_local_cluster_gives_the_same_outputs(tiny_model, tmp_path, monkeypatch):
    import distributed

    import napari_unet.store

    _, model_dir = tiny_model
    src = _folder(tmp_path)
    (src / "img1b.png").unlink()
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = ["--instances", "--device", "cpu"]
    assert main(["-q", "predict", str(model_dir), str(src), "--out", str(local), *common]) == 0

    def no_model_here(*args, **kwargs):
        raise AssertionError("the client loaded the model")

    monkeypatch.setattr(napari_unet.store, "load_model", no_model_here)  # this process only
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        args = [
            "-q",
            "predict",
            str(model_dir),
            str(src),
            "--out",
            str(remote),
            *common,
            "--scheduler",
            cluster.scheduler_address,
        ]
        assert main(args) == 0
        # the same command again redoes nothing
        before = {p.name: p.stat().st_mtime_ns for p in remote.glob("*.tif")}
        assert main(args) == 0
        assert before == {p.name: p.stat().st_mtime_ns for p in remote.glob("*.tif")}
    for name in ("img0", "img1", "img2"):
        np.testing.assert_array_equal(
            tifffile.imread(remote / f"{name}.tif"), tifffile.imread(local / f"{name}.tif")
        )
    assert set(_summary(remote)) == {"img0", "img1", "img2"}
    assert _summary(remote)["img1"]["objects"] == _summary(local)["img1"]["objects"]
    assert _summary(remote)["img1"]["worker"].startswith("tcp://")
    assert _summary(remote)["img1"]["attempts"] == "1"


@pytest.mark.slow
def test_cluster_retries_a_failing_input_once_and_goes_on(tiny_model, tmp_path):
    import distributed

    from napari_unet.batch import predict_files_distributed
    from napari_unet.events import drain

    _, model_dir = tiny_model
    src = _folder(tmp_path)
    (src / "img1b.png").unlink()
    out = tmp_path / "out"
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            client.run(_fail_on, ["img0", "img2"], tmp_path / "failed-once")
        gen = predict_files_distributed(
            model_dir, str(src), out, cluster.scheduler_address, device="cpu"
        )
        events = []
        drain(gen, events.append)
    rows = _summary(out)
    assert (rows["img0"]["status"], rows["img0"]["attempts"]) == ("done", "2")  # retried, done
    assert (rows["img1"]["status"], rows["img1"]["attempts"]) == ("done", "1")
    assert (rows["img2"]["status"], rows["img2"]["attempts"]) == ("failed", "2")
    assert "RuntimeError: CUDA out of memory (simulated, every time)" in rows["img2"]["reason"]
    assert sorted(p.name for p in out.glob("*.tif")) == ["img0.tif", "img1.tif"]
    assert [e.status for e in events if e.name == "img2"] == ["failed"]


def test_unreachable_scheduler_is_one_line(tiny_model, tmp_path, capsys):
    _, model_dir = tiny_model
    src = _folder(tmp_path)
    code = main(
        [
            "predict",
            str(model_dir),
            str(src),
            "--out",
            str(tmp_path / "o"),
            "--scheduler",
            "tcp://127.0.0.1:9",
            "--device",
            "cpu",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the dask scheduler" in err[0]


def test_every_item_event_carries_its_summary_row(tiny_model, nuclei, tmp_path):
    from napari_unet.batch import predict_items_iter
    from napari_unet.events import ItemDone

    model, _ = tiny_model
    items = [("a", lambda: nuclei[0][0]), ("bad", lambda: np.zeros((2, 3, 4, 5, 6)))]
    for fmt in ("tif", "zarr"):
        for run in range(2):  # second run: skipped items
            events = [
                e
                for e in predict_items_iter(model, items, tmp_path / fmt, fmt=fmt, device="cpu")
                if isinstance(e, ItemDone)
            ]
            assert [e.summary["input"] for e in events] == ["a", "bad"]
            assert events[1].status == "failed" and events[1].summary["status"] == "failed"
            assert events[0].status == ("done" if run == 0 else "skipped")


def test_tasks_ask_for_a_gpu_only_where_workers_declare_one():
    from napari_unet.batch import _workers_have_gpus

    class Client:
        def __init__(self, *resources):
            workers = {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}
            self.info = {"workers": workers}

        def scheduler_info(self):
            return self.info

    assert not _workers_have_gpus(Client({}, {}))
    assert not _workers_have_gpus(Client({"GPU": 0}))
    assert _workers_have_gpus(Client({}, {"GPU": 1}))

"""The child process the widgets compute in (napari_unet.child): its protocol, its jobs,
and what happens when it is stopped, paused, killed or loses its parent."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_unet import events as ev
from napari_unet.child import (
    ChildDied,
    ChildError,
    ChildProcess,
    decode,
    encode,
    exit_text,
)
from napari_unet.config import PostprocessConfig
from napari_unet.jobs import Predicted, predict_layers_iter
from napari_unet.request import TrainRequest
from napari_unet.store import load_model

from .conftest import make_nuclei


def train_params(out: Path, steps: int = 100_000, resume: bool = False) -> dict:
    """The training job's parameters, as the Train widget sends them."""
    image, labels = make_nuclei()
    request = TrainRequest.from_keywords(
        labels_kind="instances",
        steps=steps,
        width=4,
        patch=32,
        batch_size=2,
        device="cpu",
        out=out,
        resume=resume,
    )
    return dict(images=[image], labels=[labels], request=request)


class Consumer:
    """Reads a child's events in a thread (as napari's worker does): a queue of them."""

    def __init__(self, child: ChildProcess) -> None:
        self.child = child
        self.events: queue.Queue = queue.Queue()
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        gen = self.child.events()
        try:
            while True:
                self.events.put(next(gen))
        except StopIteration as stop:
            self.result = stop.value
        except Exception as exc:  # what the widget's runner gets
            self.error = exc

    def first(self, kind: type, timeout: float = 120) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=1)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise AssertionError(f"the child ended: {self.error!r}") from self.error
                continue
            if isinstance(event, kind):
                return event
        raise AssertionError(f"no {kind.__name__} event in {timeout} s")

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the child did not end"

    def drain(self) -> list:
        got = []
        while not self.events.empty():
            got.append(self.events.get())
        return got


def gone(pid: int) -> bool:
    """The process ended and was reaped (no zombie left)."""
    return not Path(f"/proc/{pid}").exists()


def test_values_cross_as_json_and_npy_files(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    event = ev.Preview(step=3, probabilities=image, labels=image > 5, key=("img", (0, 2)))
    value = {"event": event, "list": [1, 2.5, None, "x"], "settings": PostprocessConfig(0.5, 0.6)}
    data = encode(value, tmp_path)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy", ".npy"]
    back = decode(data, tmp_path)
    assert back["event"].key == ("img", (0, 2))  # tuples stay tuples (a numpy index)
    np.testing.assert_array_equal(back["event"].probabilities, image)
    assert back["event"].labels.dtype == bool
    assert back["list"] == [1, 2.5, None, "x"] and back["settings"] == PostprocessConfig(0.5, 0.6)
    assert list(tmp_path.iterdir()) == []  # read and removed
    with pytest.raises(TypeError, match="key 1"):
        encode({1: "a"}, tmp_path)
    with pytest.raises(TypeError, match="cannot send a object"):
        encode(object(), tmp_path)
    with pytest.raises(ValueError):  # no pickled object arrays
        encode(np.array([object()]), tmp_path)


def test_exit_text_names_the_signal_or_code():
    assert "SIGKILL (signal 9)" in exit_text(-9) and "memory" in exit_text(-9)
    assert "SIGSEGV (signal 11)" in exit_text(-11)
    assert exit_text(3) == "exited with code 3"


def test_prediction_in_the_child_is_the_same_as_here(tiny_model, nuclei):
    model, _ = tiny_model
    image = nuclei[0][0]
    want = dict(labels=True, instances=True, probabilities=True, device="cpu")
    settings = PostprocessConfig(0.7, 0.5, 5)
    child = ChildProcess(
        "predict_layers", dict(model=model, data=image, **want, postprocess=settings), "t", 1
    )
    result = ev.drain(child.events())
    here = ev.drain(predict_layers_iter(model, image, **want, postprocess=settings))
    assert isinstance(result, Predicted) and result.zoom == here.zoom
    assert result.outputs.keys() == here.outputs.keys()
    for key, array in here.outputs.items():
        np.testing.assert_allclose(result.outputs[key], array, atol=1e-6)
    assert child.proc.returncode == 0 and not child.folder.exists()


def test_an_exception_in_the_job_arrives_with_its_message(tiny_model):
    model, _ = tiny_model
    params = dict(model=model, data=np.zeros((2, 3, 4, 5, 6)), labels=True, instances=False)
    child = ChildProcess(
        "predict_layers", {**params, "probabilities": False, "device": "cpu"}, "t", 1
    )
    with pytest.raises(ChildError) as info:
        ev.drain(child.events())
    assert info.value.kind == "ValueError" and "Traceback" in info.value.details
    assert str(info.value)  # the job's own message
    assert child.proc.returncode == 1


def test_killed_child_is_named_and_the_saved_model_stays(tmp_path):
    out = tmp_path / "m"
    first = ChildProcess("train", train_params(out, steps=3), "t", 1)
    assert ev.drain(first.events()).history["steps"] == 3
    child = ChildProcess("train", train_params(out, resume=True), "napari-unet training", 1)
    reader = Consumer(child)
    reader.first(ev.TrainStep)
    os.kill(child.pid, signal.SIGKILL)
    reader.join()
    assert isinstance(reader.error, ChildDied) and reader.error.returncode == -9
    assert "napari-unet training" in str(reader.error) and "SIGKILL" in str(reader.error)
    assert gone(child.pid) and not child.folder.exists()
    assert load_model(out).history["steps"] >= 3  # what was saved last is loadable


def test_stop_pause_resume_and_preview_cross_the_boundary(tmp_path):
    out = tmp_path / "m"
    child = ChildProcess("train", train_params(out), "t", 1)
    image = make_nuclei(seed=4)[0]
    child.request_preview(image, key=("img", (0,)))  # before the child runs: sent at start
    reader = Consumer(child)
    preview = reader.first(ev.Preview)
    assert preview.key == ("img", (0,)) and preview.labels.shape == image.shape
    reader.first(ev.TrainStep)
    assert child.send("pause")
    time.sleep(1.0)
    reader.drain()  # what was on its way
    time.sleep(1.5)
    assert not [e for e in reader.drain() if isinstance(e, ev.TrainStep)]  # paused
    assert child.send("resume")
    step = reader.first(ev.TrainStep, timeout=30).step
    assert child.send("stop")  # training's Stop: ends after this step and saves
    reader.join()
    assert reader.error is None
    finished = [e for e in reader.drain() if isinstance(e, ev.Finished)]
    assert finished and finished[-1].reason == "cancelled"
    assert reader.result.history["steps"] >= step
    assert load_model(out).history["steps"] == reader.result.history["steps"]
    assert gone(child.pid)


def test_a_child_whose_parent_is_gone_stops_and_saves(tmp_path):
    out = tmp_path / "m"
    child = ChildProcess("train", train_params(out), "t", 1)
    reader = Consumer(child)
    reader.first(ev.TrainStep)
    child.proc.stdin.close()  # as when napari dies: the end of the commands
    reader.join()
    assert reader.error is None and child.proc.returncode == 0
    assert load_model(out).history["steps"] >= 1


def test_stop_cancels_a_prediction_and_kills_a_child_that_hangs(tiny_model, monkeypatch):
    import napari_unet.child as child_module

    model, _ = tiny_model
    big = np.zeros((40, 512, 512), np.float32)
    params = dict(model=model, data=big, labels=True, instances=False, probabilities=False)
    child = ChildProcess("predict_layers", {**params, "device": "cpu"}, "t", 1)
    reader = Consumer(child)
    reader.first(ev.TileDone)
    child.stop()
    reader.join()
    assert reader.error is None and reader.result is None and child.cancelled
    assert gone(child.pid)
    # a child that ignores the stop (here: stopped by SIGSTOP) is killed after the grace time
    monkeypatch.setattr(child_module, "STOP_GRACE", 0.5)
    hung = ChildProcess("predict_layers", {**params, "device": "cpu"}, "t", 1)
    reader = Consumer(hung)
    reader.first(ev.TileDone)
    os.kill(hung.pid, signal.SIGSTOP)
    hung.stop(grace=0.5)
    reader.join(timeout=30)
    assert isinstance(reader.error, ChildDied) and reader.error.returncode == -9
    assert gone(hung.pid)


def test_exchange_folder_is_in_memory_only_when_there_is_room(monkeypatch, tmp_path):
    import shutil
    import tempfile

    import napari_unet.child as child_module

    assert child_module.nbytes({"a": [np.zeros(10, np.uint8), (np.zeros(3, np.float32),)]}) == 22
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(child_module, "SHM", shm)
    usage = shutil.disk_usage(shm)
    free = [1 << 40]
    monkeypatch.setattr(child_module.shutil, "disk_usage", lambda _: usage._replace(free=free[0]))
    assert child_module.exchange_folder(1000).parent == shm
    free[0] = 64 << 20  # a container's 64 MB /dev/shm and a 100 MB image: on disk
    on_disk = child_module.exchange_folder(100 << 20)
    on_disk.rmdir()
    assert on_disk.parent == Path(tempfile.gettempdir())

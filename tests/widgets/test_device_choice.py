"""The Train, Predict and Batch widgets list this machine's devices; the choice reaches the run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_unet._widgets import BatchWidget, PredictWidget, TrainWidget, _batch, _session

pytestmark = pytest.mark.gui

TWO_CARDS = [
    ("auto (cuda:0)", "auto"),
    ("cpu", "cpu"),
    ("cuda:0: Fake GPU 0", "cuda:0"),
    ("cuda:1: Fake GPU 1", "cuda:1"),
]


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two cards (nothing here runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def items(combo) -> list[tuple[str, str]]:
    return [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]


def test_the_device_lists_show_each_card(viewer, two_gpus):
    train, predict, batch = TrainWidget(viewer), PredictWidget(viewer), BatchWidget(viewer)
    for widget in (train, predict, batch):
        assert items(widget.device) == TWO_CARDS
        assert widget.device.value() == "auto"
        assert widget.device.set_value("cuda:1") and widget.device.value() == "cuda:1"
        assert widget.device.currentText() == "cuda:1: Fake GPU 1"
        # a value that is not listed (an old "cuda", another machine's card): auto
        assert not widget.device.set_value("cuda") and widget.device.value() == "auto"
        assert not widget.device.set_value("cuda:5") and widget.device.value() == "auto"
    train.device.set_value("CUDA:1")
    assert train.request().device == "cuda:1"  # the item's value, not its text


def test_the_device_lists_here(viewer):
    """This machine's own list: auto (saying what it picks) and cpu first, each item's
    value as its data."""
    from napari_unet.devices import available_devices, resolve_device

    listed = items(BatchWidget(viewer).device)
    assert listed == [(text, value) for value, text in available_devices()]
    assert listed[0][0].startswith(f"auto ({resolve_device('auto').type}")
    assert listed[1] == ("cpu", "cpu")


@pytest.mark.parametrize("in_child", [True, False], ids=["child", "thread"])
def test_batch_runs_on_the_chosen_device(
    make_napari_viewer, qtbot, tmp_path, nuclei, tiny_model, monkeypatch, in_child
):
    """Run batch on "cpu": the job gets "cpu", not "auto" (in the child's parameters, or,
    for a model without a folder run in a thread here, down to the inference code)."""
    from qtpy.QtCore import Qt

    import napari_unet.inference

    asked: list[tuple[str, object]] = []
    child_runner = _batch.ChildRunner

    def recording_child(job, params, **kwargs):
        asked.append(("child", params["device"]))
        return child_runner(job, params, **kwargs)

    resolve = napari_unet.inference.resolve_device

    def recording_resolve(device, *args, **kwargs):
        asked.append(("inference", device))
        return resolve(device, *args, **kwargs)

    monkeypatch.setattr(_batch, "ChildRunner", recording_child)
    monkeypatch.setattr(napari_unet.inference, "resolve_device", recording_resolve)
    model, folder = tiny_model
    if not in_child:
        model, folder = dataclasses.replace(model, path=None), None
    viewer = make_napari_viewer()
    viewer.add_image(nuclei[0][0], name="a")
    _session.session_for(viewer).set_model(model, folder)
    batch = BatchWidget(viewer)
    batch.out.setText(str(tmp_path / "out"))
    assert batch.device.set_value("cpu")
    qtbot.mouseClick(batch.run_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: "wrote 1 file(s)" in batch.status.text(), timeout=60_000)
    qtbot.waitUntil(batch.run_btn.isEnabled, timeout=5_000)
    assert [p.name for p in batch.written] == ["a.tif"]
    assert asked and set(asked) == {("child" if in_child else "inference", "cpu")}

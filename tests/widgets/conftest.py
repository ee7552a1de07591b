"""Shared by the widget tests: models go to a temporary root; small training settings."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widgets import _session

from ..conftest import make_nuclei


@pytest.fixture(autouse=True)
def model_root(tmp_path, monkeypatch):
    """New model folders land under the test's temporary folder, never in ~/."""
    monkeypatch.setattr(_session, "DEFAULT_MODEL_ROOT", tmp_path / "models")


def small(widget, steps: int) -> None:
    """A tiny network and a step budget: widget tests train in seconds."""
    widget.width_box.setValue(4)
    widget.patch_box.setValue(32)
    widget.batch_box.setValue(2)
    widget.budget_kind.setCurrentText("steps")
    widget.budget.setValue(steps)


@pytest.fixture
def notes(monkeypatch):
    """Every napari notification the widgets raise, as (kind, text)."""
    from napari_unet._widgets import (
        _annotate,
        _batch,
        _export,
        _predict,
        _proposals,
        _runner,
        _train,
    )

    seen: list[tuple[str, str]] = []
    for module in (_annotate, _batch, _export, _predict, _proposals, _runner, _train):
        for kind in ("show_warning", "show_error", "show_info"):
            if hasattr(module, kind):
                monkeypatch.setattr(
                    module, kind, lambda text, kind=kind: seen.append((kind, str(text)))
                )
    return seen


@pytest.fixture
def in_thread(monkeypatch):
    """The Train widget trains in a thread of this process instead of a child, so that a
    test can patch the training code (the child would not see the patch)."""
    from napari_unet._widgets import _runner, _train
    from napari_unet.jobs import JOBS
    from napari_unet.training import TrainControl

    class InThread(_runner.Runner):
        def __init__(self, job, params, **kwargs):
            self.control = TrainControl()
            super().__init__(lambda: JOBS[job][0](params, self.control), **kwargs)

    monkeypatch.setattr(_train, "ChildRunner", InThread)


@pytest.fixture
def viewer(make_napari_viewer):
    """A viewer with a 2-image stack of nuclei ("nuclei") and its instance labels ("truth")."""
    viewer = make_napari_viewer()
    pairs = [make_nuclei(seed=s) for s in range(2)]
    viewer.add_image(np.stack([p[0] for p in pairs]), name="nuclei")
    viewer.add_labels(np.stack([p[1] for p in pairs]), name="truth")
    return viewer

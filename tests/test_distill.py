"""Fine-tuning keeps what the start model knew: the distillation term on unlabeled pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet.config import TrainConfig
from napari_unet.losses import distillation
from napari_unet.targets import IGNORE

from .conftest import make_nuclei


def test_distillation_is_zero_on_agreement_and_counts_unlabeled_pixels_only():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 8, 8)
    target = torch.full((2, 8, 8), IGNORE)
    target[:, :4] = 1  # the top half is labeled
    assert float(distillation(teacher.clone(), teacher, target)) == pytest.approx(0, abs=1e-6)
    student = teacher.clone()
    student[:, :, :4] += torch.randn(2, 3, 4, 8) * 5  # differs only where labeled
    assert float(distillation(student, teacher, target)) == pytest.approx(0, abs=1e-6)
    student[:, :, 4:] += torch.randn(2, 3, 4, 8) * 5  # and now where unlabeled
    assert float(distillation(student, teacher, target)) > 0.1


def _few_outlined(labels: np.ndarray, n: int = 4) -> np.ndarray:
    out = np.zeros(labels.shape, np.uint16)
    out[:6] = np.where(labels[:6] == 0, 1, 0)
    for new, old in enumerate(np.unique(labels[labels > 0])[:n], start=2):
        out[labels == old] = new
    return out


def test_distillation_keeps_the_start_models_answer_where_nothing_is_labeled(tiny_model):
    start, folder = tiny_model
    pairs = [make_nuclei(seed=40 + s, radius=(3, 5), n=20) for s in range(2)]  # smaller nuclei
    images = [p[0] for p in pairs]
    few = [_few_outlined(p[1]) for p in pairs]
    test = make_nuclei(seed=99)[0]
    before = nu.predict_proba(start, test, device="cpu")

    def drift(weight: float) -> tuple[float, dict]:
        model = nu.train(
            images, few, labels_kind="sparse-instances", init=str(folder), steps=40, patch=48,
            batch_size=4, device="cpu", config=TrainConfig(distill=weight, lr=1e-2),
        )  # fmt: skip
        after = nu.predict_proba(model, test, device="cpu")
        return float(np.abs(after - before).mean()), model.history["sessions"][-1]

    free, session_free = drift(0.0)
    kept, session_kept = drift(5.0)
    assert kept < 0.7 * free  # the distilled model stays nearer the start model
    assert "distill" not in session_free  # weight 0: no teacher at all
    assert session_kept["distill"] == {"from": str(folder), "weight": 5.0}
    json.dumps(session_kept)


def test_a_continued_training_keeps_the_answer_of_the_model_it_continues(tiny_model, tmp_path):
    start, folder = tiny_model
    start_fg = start.config.postprocess.fg_threshold
    pairs = [make_nuclei(seed=40 + s, radius=(3, 5), n=20) for s in range(2)]
    images = [p[0] for p in pairs]
    few = [_few_outlined(p[1]) for p in pairs]
    first = nu.train(images, few, labels_kind="sparse-instances", init=str(folder), steps=20,
                     patch=48, batch_size=4, device="cpu", config=TrainConfig(lr=1e-2))  # fmt: skip
    nu.save_model(first, tmp_path / "round-0")
    test = make_nuclei(seed=99)[0]
    before = nu.predict_proba(first, test, device="cpu")

    def drift(weight: float) -> tuple[float, dict]:
        model = nu.train(
            images, few, labels_kind="sparse-instances", model=nu.load_model(tmp_path / "round-0"),
            steps=40, patch=48, batch_size=4, device="cpu",
            config=TrainConfig(distill=weight, lr=1e-2),
        )  # fmt: skip
        after = nu.predict_proba(model, test, device="cpu")
        return float(np.abs(after - before).mean()), model.history["sessions"][-1]

    free, session_free = drift(0.0)
    kept, session_kept = drift(5.0)
    assert kept < 0.7 * free  # a correction round keeps what the user did not correct
    assert "distill" not in session_free
    assert session_kept["distill"] == {"from": "the model continued", "weight": 5.0}
    assert "start_comparison" not in session_kept  # the regression guard compares it
    assert first.history["sessions"][0]["distill"]["from"] == str(folder)  # round 0's start
    # a few held-out objects move no threshold of a start model's lineage (round 0 and the
    # round continued); from scratch they choose the foreground threshold
    for session in (first.history["sessions"][0], session_kept):
        assert session["postprocess_search"]["search"] == "none"
        assert session["postprocess_search"]["chosen"][1] == start_fg
    scratch = nu.train(
        images, few, labels_kind="sparse-instances", init=None, steps=20, patch=48,
        batch_size=4, device="cpu", config=TrainConfig(lr=1e-2),
    )  # fmt: skip
    assert scratch.history["sessions"][-1]["postprocess_search"]["search"] == "overlap"


def test_a_resume_keeps_the_start_model_after_an_interruption_the_model_after_an_end(
    tiny_model, tmp_path
):
    from napari_unet.events import TrainStep
    from napari_unet.training import TrainControl, train_iter

    _, folder = tiny_model
    img, lab = make_nuclei(seed=41)
    few = [_few_outlined(lab)]
    small = dict(labels_kind="sparse-instances", patch=32, batch_size=2, device="cpu")
    out = tmp_path / "m"
    control = TrainControl()
    for e in train_iter([img], few, init=str(folder), steps=1000, out=out, control=control,
                        **small):  # fmt: skip
        if isinstance(e, TrainStep):
            control.stop("interrupted")  # Ctrl+C: the session did not run to its end
    assert "stopped" in nu.load_model(out).history["sessions"][-1]
    resumed = nu.train([img], few, resume=True, out=out, steps=2, **small)
    assert resumed.history["sessions"][-1]["distill"]["from"] == str(folder)
    again = nu.train([img], few, resume=True, out=out, steps=2, **small)  # after an end
    assert again.history["sessions"][-1]["distill"]["from"] == "the model continued"

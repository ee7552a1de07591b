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


def test_a_continued_model_keeps_its_start_model_as_teacher(tiny_model):
    _, folder = tiny_model
    img, lab = make_nuclei(seed=41)
    few = [_few_outlined(lab)]
    first = nu.train([img], few, labels_kind="sparse-instances", init=str(folder), steps=2,
                     patch=32, batch_size=2, device="cpu")  # fmt: skip
    again = nu.train([img], few, labels_kind="sparse-instances", model=first, steps=2,
                     patch=32, batch_size=2, device="cpu")  # fmt: skip
    assert again.history["sessions"][-1]["distill"]["from"] == str(folder)

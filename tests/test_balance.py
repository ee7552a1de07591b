"""sparse-instances labels: painted background and outlined objects weighed by a share of the
loss each, not by their numbers of pixels (``TrainConfig.balance``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_unet as nu
from napari_unet.config import TrainConfig
from napari_unet.losses import masked_cross_entropy
from napari_unet.targets import IGNORE
from napari_unet.trainer import Trainer

from .conftest import SMALL, make_nuclei


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    target = torch.full((2, 16, 16), IGNORE)
    target[:, :2] = 0  # a thin stroke of background
    target[:, 4:14] = 1  # a large outlined object
    target[:, 14] = 2
    return logits, target


def test_balance_gives_background_its_share_whatever_its_pixels():
    logits, target = _batch()
    per_px = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    background = per_px[target == 0].mean()
    objects = per_px[(target == 1) | (target == 2)].mean()
    plain = per_px[target != IGNORE].mean()
    assert float(masked_cross_entropy(logits, target)) == pytest.approx(float(plain), rel=1e-5)
    for share in (0.5, 0.8):
        want = share * background + (1 - share) * objects
        got = masked_cross_entropy(logits, target, balance=share)
        assert float(got) == pytest.approx(float(want), rel=1e-5)
    # one side missing from the batch: every labeled pixel weighs the same again
    only_objects = torch.where(target == 0, IGNORE, target)
    assert float(masked_cross_entropy(logits, only_objects, balance=0.5)) == pytest.approx(
        float(per_px[(only_objects != IGNORE)].mean()), rel=1e-5
    )


def test_balance_applies_to_sparse_instances_only():
    """Dense labels' share of background is the image's, and sparse class labels have no
    background class: the trainer leaves both alone."""
    image, labels = make_nuclei(seed=3)
    sparse = np.where(labels > 0, labels + 1, 0).astype(np.uint16)
    sparse[:4] = 1
    cfg = TrainConfig()  # the default: equal halves
    seen = {}
    original = Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen[self.spec.labels.kind] = self.balance

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "__init__", spy)
        classes = np.where(labels > 0, 2, 0).astype(np.uint8)
        classes[:4] = 1  # a stroke of class 1 beside the painted class 2
        for labels_, kind in ((labels, "instances"), (sparse, "sparse-instances"),
                              (classes, "sparse")):  # fmt: skip
            nu.train([image], [labels_], labels_kind=kind, config=cfg, steps=1, init=None, **SMALL)
    assert seen == {"instances": 0.0, "sparse-instances": 0.5, "sparse": 0.0}


@pytest.mark.parametrize("bad", [-0.1, 0.96, "half", True])
def test_balance_out_of_range_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="balance"):
        TrainConfig(balance=bad)

"""The regression guard: a model folder keeps its previous model until a new one validates
at least as well (on the same validation data)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from .config import ModelSpec
from .store import CONFIG_FILE, load_model

log = logging.getLogger(__name__)


class RegressionGuard:
    """Keeps a model folder's previous model until the new one validates at least as well.

    ``snapshot()`` before training copies ``out`` to ``<out>.previous``; ``rescore``
    at the end scores that previous model on this training's validation data (the set
    the new model is scored on; the IoU it recorded when it was trained is the fallback
    when it cannot be, e.g. another architecture); ``judge(iou)`` after the final save
    puts the previous model back (and the new one in ``<out>.rejected``) when the new
    validation IoU is lower, unless ``replace_worse``.
    """

    def __init__(self, out: Path | None, replace_worse: bool) -> None:
        self.out, self.replace_worse = out, replace_worse
        self.previous_iou: float | None = None
        self.measured_on = "its own validation data"

    def snapshot(self) -> None:
        if self.out is not None and (self.out / CONFIG_FILE).is_file():
            self.previous_iou = _last_iou(self.out)
            _copy_folder(self.out, _sibling(self.out, "previous"))

    def rescore(self, validate: Callable[[torch.nn.Module], float], spec: ModelSpec) -> None:
        """Score the previous model with ``validate`` (the new model's validation)."""
        if not self.has_previous:
            return
        try:
            previous = load_model(_sibling(self.out, "previous"))
        except (ValueError, OSError) as exc:
            log.warning("the previous model could not be scored again: %s", exc)
            return
        if previous.config.model != spec.model:
            return  # another architecture: its validation crops differ; keep its record
        self.previous_iou = validate(previous.network)
        self.measured_on = "the new model's validation data"

    @property
    def has_previous(self) -> bool:
        return self.out is not None and (_sibling(self.out, "previous") / CONFIG_FILE).is_file()

    def judge(self, iou: float) -> tuple[Path | None, str]:
        """The folder that holds the new model and a message (empty when it was kept)."""
        worse = self.previous_iou is not None and iou < self.previous_iou
        if self.out is None or not worse or self.replace_worse:
            return self.out, ""
        rejected = _sibling(self.out, "rejected")
        _copy_folder(self.out, rejected)
        _copy_folder(_sibling(self.out, "previous"), self.out)
        message = (
            f"kept the previous model in {self.out}: its validation IoU "
            f"{self.previous_iou:.3f} (on {self.measured_on}) is better than the new model's "
            f"{iou:.3f}; the new model is in {rejected} (replace_worse / --replace-worse "
            "keeps it)"
        )
        log.warning(message)
        return rejected, message


def _sibling(folder: Path, what: str) -> Path:
    return folder.parent / f"{folder.name}.{what}"


def _last_iou(folder: Path) -> float | None:
    """The last validation IoU recorded in a model folder's training.json, if any."""
    try:
        history = load_model(folder).history
        return float(history["validation"][-1][2])
    except (ValueError, OSError, KeyError, IndexError, TypeError):
        return None


def _copy_folder(src: Path, dst: Path) -> None:
    """Replace ``dst`` by a copy of ``src``; readers see the old or the new copy."""
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        old = dst.parent / f".{dst.name}.{os.getpid()}.old"
        os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dst)

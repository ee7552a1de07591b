"""The model a training starts from, through the training.

A :class:`Start` is chosen before the data is read (:meth:`Start.choose`: the automatic
start, a model the user named, or none), kept only when it suits the data and, when
chosen automatically, finds the labeled objects (:meth:`Start.check_fit`), lends its
network to the distillation term (:meth:`Start.make_teacher`) and is scored against the
new model at the end (:meth:`Start.compare`); :meth:`Start.record` writes what came of
it into the session's record in training.json.  Loading a start model, copying its
weights and the fit check are :mod:`napari_unet.init`'s.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch

from .calibrate import Rank, better
from .config import ModelSpec, PostprocessConfig
from .data import Prepared
from .init import (
    AUTO,
    InitModel,
    auto_init,
    default_architecture,
    init_architecture,
    load_init,
    resolve_init,
    start_fit,
)
from .recipes import get_recipe
from .request import TrainRequest

log = logging.getLogger(__name__)

CONTINUED = "the model continued"  # the teacher of a correction round, in training.json


class Start:
    """What a training starts from, and what came of it (see the module's docstring)."""

    def __init__(self, init: InitModel | None, automatic: bool, architecture: dict) -> None:
        self.init = init  # None: from scratch (or continuing a model)
        self.automatic = automatic  # init="auto": dropped where it does not fit
        self.architecture = architecture  # the new network's (the start's, with one)
        self.note = ""  # why an automatic start was not taken
        self.declined: dict[str, Any] | None = None  # its record in training.json
        self.teacher: torch.nn.Module | None = None  # the start's network, for distillation
        self.teacher_ref = ""
        self.teacher_postprocess: PostprocessConfig | None = None  # its instance settings
        self.better: str | None = None  # the start model, when it validated better
        self.message = ""  # what the user is told then

    @classmethod
    def choose(
        cls, request: TrainRequest, labels_kind: str, device: torch.device, new: bool
    ) -> Start:
        """The start ``request.init`` names, and the architecture that goes with it.

        ``"auto"`` starts a ``new`` model from builtin:nuclei where it measured better
        (:func:`napari_unet.init.auto_init`; on the CPU with the built-in model's width
        when none is given), and a resumed or continued one from nothing.
        """
        given, init = request.architecture, request.init
        automatic = init == AUTO
        if automatic:
            recipe = get_recipe(request.config.recipe)
            width = recipe.defaults(device.type, given.get("spatial_dims") or 2).width
            follow = device.type == "cpu"  # there the built-in model's width
            init = auto_init(labels_kind, given, width, recipe, follow) if new else None
        init = resolve_init(init)
        if init is None:
            return cls(None, automatic, default_architecture(given))
        model = load_init(init)
        model.automatic = automatic
        return cls(model, automatic, init_architecture(model.model.config.model, given, model.ref))

    def check_fit(self, prepared: Prepared, request: TrainRequest, device: torch.device) -> None:
        """Phase "fit": an automatic start is kept only when it takes the data's channels
        and finds the labeled objects; dropped, the network is the device's own."""
        init = self.init
        if init is None:
            return
        if not init.fits_channels(prepared.in_channels):
            self.init = None  # an automatic start is for one channel: this data has more
        elif init.automatic and prepared.labels.instances:
            kind = prepared.labels.kind
            fit = start_fit(init.model, prepared.images, prepared.label_images, kind, device)
            if fit.objects:  # else nothing to judge it on
                init.fit = fit
                if not fit.fits:
                    self.note = fit.describe(init.ref)
                    self.declined = {**init.provenance(), "declined": True}
                    self.init = None
        if self.automatic and self.init is None:
            self.architecture = default_architecture(request.architecture)

    def make_teacher(
        self,
        distill: float,
        spec: ModelSpec,
        sessions: list[dict[str, Any]],
        device: torch.device,
        previous: torch.nn.Module | None = None,
    ) -> torch.nn.Module | None:
        """The network whose answer the new model keeps on unlabeled pixels, when
        distillation is on (``distill`` > 0): the model continued (``previous``, its network
        before this training: a correction round keeps what the user did not correct), else
        this session's start when its classes are this model's (``spec``), or the one a
        resumed model started from (by its record in ``sessions``, when its weights are
        unchanged)."""
        self.teacher = None
        if distill <= 0:
            return None
        if previous is not None:
            self.teacher_ref = CONTINUED
            self.teacher = copy.deepcopy(previous).to(device)
            return self.teacher
        init = self.init if self.init is not None else _recorded_init(sessions)
        if init is None:
            return None
        parent = init.model.config
        same_classes = parent.labels.class_names == spec.labels.class_names
        if parent.model != spec.model or not same_classes:
            return None  # another input or classes: its answer is not this model's
        self.teacher_ref = init.ref
        self.teacher = copy.deepcopy(init.model.network).to(device)
        self.teacher_postprocess = init.model.config.postprocess
        return self.teacher

    def record(self, session: dict[str, Any], distill: float) -> None:
        """The start in the session's record: ``init`` (or ``init_declined``), ``distill``."""
        if self.init is not None:
            session["init"] = self.init.provenance()
        elif self.declined is not None:
            session["init_declined"] = self.declined
        if self.teacher is not None:
            session["distill"] = {"from": self.teacher_ref, "weight": distill}

    @property
    def compared(self) -> bool:
        """Whether :meth:`compare` scores the teacher at the end."""
        return self.teacher is not None and self.teacher_ref != CONTINUED

    def compare(
        self,
        score: Callable[[torch.nn.Module], float],
        new_iou: float,
        measured_on: str | None,
        session: dict[str, Any],
        rank: Callable[[torch.nn.Module, PostprocessConfig], Rank | None] | None = None,
        new: tuple[torch.nn.Module, PostprocessConfig] | None = None,
    ) -> None:
        """Phase "compare": score the start model (the teacher) with ``score`` on the
        held-out labels the new model scored ``new_iou`` on (``measured_on``; None: nothing
        was held out); record both, and say so when the start did better.  A model
        continued is the regression guard's to compare (its folder's previous model).

        With ``rank`` (instance models with held-out objects) both are ranked on the
        held-out objects instead, each with its own instance settings (the new model's:
        ``new``): AP@0.5, then how well they are outlined
        (:func:`~napari_unet.calibrate.better`), what the user will see.  On 7 draws of 6
        outlined nuclei fine-tuned from a start model, that verdict matched the test images
        in 4, the validation IoU's in 3 (``bench_few_labels.py``, docs/benchmarks.md); both
        are recorded."""
        if not self.compared:
            return
        if measured_on is None:
            session["start_comparison"] = {"start": self.teacher_ref, "compared": False,
                                           "why": "nothing held out"}  # fmt: skip
            return
        start_iou = score(self.teacher)
        record = session["start_comparison"] = {
            "start": self.teacher_ref,
            "compared": True,
            "start_iou": round(start_iou, 5),
            "new_iou": round(new_iou, 5),
            "measured_on": measured_on,
        }
        ranks = None
        if rank is not None and new is not None and self.teacher_postprocess is not None:
            ranks = rank(*new), rank(self.teacher, self.teacher_postprocess)
        if ranks is not None and None not in ranks:
            (new_ap, new_fp, new_sum), (start_ap, start_fp, start_sum) = ranks
            start_better = better(ranks[1], ranks[0])
            record["objects"] = {
                "new_ap": round(new_ap, 5), "start_ap": round(start_ap, 5),
                "new_false": -new_fp, "start_false": -start_fp,
                "new_iou_sum": round(new_sum, 4), "start_iou_sum": round(start_sum, 4),
                "start_better": start_better,
            }  # fmt: skip
            said = (
                f"finds the held-out objects with an AP@0.5 of {start_ap:.2f} (the new model "
                f"{new_ap:.2f}) on {measured_on}"
            )
            if start_ap == new_ap:
                said += ", and outlines them better"
        else:
            start_better = start_iou > new_iou
            said = (
                f"scores a validation IoU of {start_iou:.3f} on {measured_on}, the new model "
                f"{new_iou:.3f}"
            )
        if start_better:
            self.better = self.teacher_ref
            self.message = (
                f"the model it started from, {self.teacher_ref}, {said}: predict with "
                f"{self.teacher_ref}, or label more and train again"
            )
            log.warning(self.message)


def _recorded_init(sessions: list[dict[str, Any]]) -> InitModel | None:
    """The start model of the latest session that had one, when it still loads with the
    weights it had then (a resumed model keeps the teacher it was started with)."""
    record = next((s["init"] for s in reversed(sessions) if s.get("init")), None)
    if record is None:
        return None
    try:
        init = load_init(record["from"])
    except (ValueError, OSError, KeyError, TypeError) as exc:
        log.warning("the start model of this model is not available for distillation: %s", exc)
        return None
    if init.weights_sha256 != record.get("weights_sha256"):
        log.warning("the start model %s has changed since: no distillation", record["from"])
        return None
    return init

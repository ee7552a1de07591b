"""Training: a generator of typed events that returns the trained model.

``train_iter`` yields :mod:`napari_unet.events` objects (started, every step,
validations, checkpoints, finished) and returns a :class:`~napari_unet.store.Model`;
``train`` drains it for scripts.  Closing the generator (``gen.close()``, what
a cancelled worker does) stops between steps; when an output folder is set,
the model folder and its resume state are written atomically before it ends.

Recipes
-------
``fast`` (default): AdamW, a warm-up then cosine learning-rate decay over the
step or time budget, batches of several patches, bf16/fp16 autocast and
channels_last on CUDA.  ``paper``: SGD with momentum 0.99, batch size 1,
cross-entropy, float32, constant learning rate (Ronneberger et al. 2015).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import targets as tg
from .augment import crop_margin
from .budget import WallBudget
from .calibrate import Rank, calibrate, object_sizes, rank_of, scratch_start, tally
from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
    ModelConfig,
    ModelSpec,
    NormConfig,
    PostprocessConfig,
    TileConfig,
    TrainConfig,
)
from .data import PatchSampler, Prepared, as_list, prepare
from .devices import describe_device, resolve_device
from .distributed import Group, Ranks, rank_device, ranks_from_env
from .events import (
    Calibrated,
    CheckpointSaved,
    Finished,
    Preview,
    TrainStarted,
    TrainStep,
    Validated,
    drain,
)
from .guard import RegressionGuard
from .holdout import calibration_set, sample_keys, split_samples
from .inference import for_many_images, predict_proba
from .init import AUTO
from .inputs import Continued, Names
from .model import UNet, border
from .postprocess import class_labels
from .recipes import get_recipe
from .request import TrainRequest
from .start import Start
from .store import Model, load_model, save_history, save_model
from .trainer import Trainer, augment_config
from .writer import hold
from .zoom import start_scale, z_scale_for

log = logging.getLogger(__name__)

USER_STOPS = ("cancelled", "interrupted", "terminated")
"""Why a user stopped a training: the widget's stop, Ctrl+C (SIGINT), SIGTERM."""
STOPS = (None, "steps", "time", *USER_STOPS)
"""Why a training stops (:meth:`TrainingRun.stop_reason`), by the code ranks agree on."""


@dataclass
class TrainControl:
    """What a caller in another thread may change while training runs.

    ``stop()`` ends training after the current step, with reason "cancelled",
    saving the model folder like a normal end (in the training thread);
    ``stop("interrupted")`` / ``stop("terminated")`` (Ctrl+C, SIGTERM in the CLI) save
    it too but skip the instance settings' search (the previous settings stay).
    ``abort()``: closing the training now saves nothing more (a second Ctrl+C).
    ``request_preview(image)`` asks for :class:`~napari_unet.events.Preview`
    events on ``image`` at most every ``preview_every`` seconds.
    """

    stop_requested: bool = False
    reason: str = "cancelled"
    aborted: bool = False
    preview_image: Any = None
    preview_key: Any = None
    preview_every: float = 3.0

    def stop(self, reason: str = "cancelled") -> None:
        if reason not in USER_STOPS:
            raise ValueError(f"reason {reason!r}: one of {', '.join(USER_STOPS)}")
        self.reason = reason
        self.stop_requested = True

    def abort(self) -> None:
        self.aborted = True

    def request_preview(self, image: Any, key: Any = None) -> None:
        self.preview_key = key
        self.preview_image = image


# --------------------------------------------------------------------------- the run


def report_every_for(device: torch.device) -> int:
    """Steps between two reads of the loss: reading it waits for an accelerator, not the CPU."""
    return 1 if device.type == "cpu" else 10


def _empty_history() -> dict[str, Any]:
    return {"steps": 0, "elapsed": 0.0, "log": [], "validation": [], "sessions": []}


class TrainingRun:
    """One training session as named phases (nnU-Net's ``run_training``, small).

    Built by :meth:`setup` (data, network, optimizer, resume state), then driven by
    :func:`train_iter`: :meth:`stop_reason`, :meth:`step`, :meth:`preview`,
    :meth:`validate_if_due`, :meth:`checkpoint_if_due` each turn of the loop, and
    :meth:`finish` at the end (final validation, save, regression guard).  The
    phases that report are generators of events.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device, out: Path | None) -> None:
        self.cfg, self.device, self.out = cfg, device, out
        self.history = _empty_history()
        self.checkpoint: tuple[dict, dict] | None = None
        self.step_count = 0  # steps done in this session
        self.start_step = 0
        self.pending: list[torch.Tensor] = []  # losses not read yet
        self.pending_since = 0.0
        self.last_preview = -math.inf
        self.guard = RegressionGuard(out, replace_worse=False)
        self.clock: Callable[[], float] = time.perf_counter
        self.control: TrainControl | None = None
        self.report_every = report_every_for(device)
        self.start = Start(None, False, {})  # the model this training starts from
        self.held_out = False  # validation on data the loss never saw
        self.continues = False  # a finished model trained again (a correction round)
        self.budget = WallBudget(cfg.time_budget, cfg.steps)  # where the wall time goes
        self.ranks = Ranks()  # one process, or one of a data-parallel training's
        self.group: Group | None = None
        self.schedule = 0.0  # the progress the learning rate follows (rank 0's)
        self.result_path: Path | None = None  # where the model ended (the regression guard)
        self.message = ""
        self.skipped_note = ""  # what a stop by the user skipped
        self.scale_note = ""  # why the images were resized
        self.calibration_probs: list[np.ndarray] | None = None  # the new model's, at the end

    # ----------------------------------------------------------------- setup phases

    @classmethod
    def setup(
        cls,
        images: Any,
        labels: Any,
        request: TrainRequest,
        *,
        model: Model | None,
        clock: Callable[[], float],
        control: TrainControl | None,
        began: float | None = None,
    ) -> TrainingRun:
        """Every setup phase for a checked ``request`` (:meth:`TrainRequest.check`);
        ``began``: the clock's value the time budget counts from (default: now)."""
        ranks = ranks_from_env()
        if ranks.parallel:  # one of several processes started by torchrun
            device = resolve_device(rank_device(request.device, ranks))
        else:
            device = resolve_device(request.device)
        run = cls(request.config, device, request.out_path)
        run.ranks = ranks
        run.clock, run.control = clock, control
        run.budget.clock = clock
        run.budget.began = clock() if began is None else began
        try:
            run.group = Group.join(ranks, device) if ranks.parallel else None
            run.prepare(images, labels, request, model)
        except BaseException:
            run.close()
            raise
        return run

    def prepare(self, images: Any, labels: Any, request: TrainRequest, model: Model | None) -> None:
        """The setup phases after the device and the process group."""
        self.report_every = request.report_every or report_every_for(self.device)
        labels_kind = request.labels_kind or "sparse"
        class_names = request.class_names
        new = not request.resume and model is None
        start = self.start = Start.choose(request, labels_kind, self.device, new)
        model = self.load_previous(request.resume, model)
        self.continues = model is not None and (not request.resume or _ended(self.history))
        if not self.ranks.main:  # rank 0 alone writes the model folder
            self.out = None
        continued = None
        if model is not None:
            spec = model.config
            start.architecture["spatial_dims"] = spec.model.spatial_dims
            labels_kind, class_names = spec.labels.kind, spec.labels.class_names
            continued = Continued(
                spec.model.in_channels, spec.labels.class_names, spec.labels.value_map
            )
        dims = start.architecture["spatial_dims"]
        scale = request.config.scale
        if model is not None:
            kept = model.config.normalization.scale
            if scale is not None and scale != kept:
                raise ValueError(
                    f"scale {scale:g}: the model continued was trained on images resized by "
                    f"{kept:g}, and a model keeps its scale (leave the scale out)"
                )
            scale = kept
        from_start = None
        if scale is None and model is None and start.init is not None:
            from_start = start_scale(as_list(labels), labels_kind, dims, start.init.model.config)
        z_scale = _z_scale(request, dims, model)

        def prepare_at(scale: float | None) -> Prepared:
            return prepare(
                images,
                labels,
                labels_kind,
                spatial_dims=dims,
                class_names=class_names,
                value_map=continued.value_map if continued is not None else None,
                norm=model.config.normalization if model is not None else None,
                border_weights=request.config.border_weights,
                names=request.names,
                continued=continued,
                touch=request.config.touch_border,
                scale=scale,
                z_scale=z_scale,
            )

        prepared = prepare_at(from_start or scale)
        start.check_fit(prepared, request, self.device)
        if from_start is not None and start.init is None:  # no start after all: its own scale
            prepared, from_start = prepare_at(scale), None
        if from_start is not None:
            assert start.init is not None
            self.scale_note = (
                f"images resized by {from_start:g}: the labeled objects at the size "
                f"{start.init.ref} was trained on"
            )
        self.build(prepared, model, start.architecture, request.tiling)
        self.make_trainer(prepared, request.precision)
        self.record_session(prepared)
        self.guard = RegressionGuard(self.out, request.replace_worse)
        self.guard.snapshot()

    def close(self, together: bool = False) -> None:
        """Leave the process group (when this training joined it): ``together`` at the
        end of the loop on every rank, else at once (an error here)."""
        if self.group is not None:
            if hasattr(self, "trainer"):  # the data-parallel wrapper goes before its group
                self.trainer.step_network = self.network
                self.trainer.group = None
            self.group.close(together)
            self.group = None

    def load_previous(self, resume: bool, model: Model | None) -> Model | None:
        """Phase "resume": the model folder to continue (``resume``) or the model given."""
        if resume:
            if self.out is None:
                raise ValueError("resume=True needs the model folder to resume from (out)")
            model = load_model(self.out, device=self.device)
            self.checkpoint = load_checkpoint(self.out)
        if model is not None:
            self.history = {**self.history, **copy.deepcopy(model.history)}
        self.start_step = int(self.history.get("steps", 0))
        return model

    def build(
        self, prepared: Prepared, model: Model | None, arch: dict[str, Any], tiling: Any
    ) -> None:
        """Phase "build": the settings for the device, the spec and the network."""
        d = get_recipe(self.cfg.recipe).defaults(self.device.type, arch["spatial_dims"])
        cfg = self.cfg = replace(
            self.cfg,
            patch=self.cfg.patch or d.patch,
            batch_size=self.cfg.batch_size or d.batch_size,
            lr=self.cfg.lr or d.lr,
        )
        if model is not None:
            self.spec = replace(model.config, train=cfg)
            self.network = model.network.to(self.device)
        else:
            mcfg = ModelConfig(
                in_channels=prepared.in_channels,
                num_classes=len(prepared.labels.class_names),
                **{**arch, "width": arch["width"] or d.width},
            )
            self.spec = ModelSpec(
                model=mcfg,
                labels=prepared.labels,
                normalization=NormConfig(scale=prepared.scale, z_scale=prepared.z_scale),
                tiling=tiling or TileConfig(),
                train=cfg,
                postprocess=scratch_start(prepared.labels.kind, cfg.balance),
            )
            torch.manual_seed(cfg.seed)
            self.network = UNet.from_config(mcfg)
            if self.start.init is not None:
                self.spec = self.start.init.start(self.network, self.spec)
            self.network.to(self.device)
        self.patch = _round_patch(cfg.patch, self.spec.model)
        world = self.ranks.world
        if cfg.batch_size % world:
            raise ValueError(
                f"batch size {cfg.batch_size} cannot be shared by {world} processes: it is the "
                f"global batch, give a multiple of {world} (--batch-size)"
            )

    def make_trainer(self, prepared: Prepared, precision: str) -> None:
        """Phase "data": split the labeled images, samplers, fixed validation crops, optimizer."""
        cfg, mcfg = self.cfg, self.spec.model
        crop = self.patch + 2 * border(mcfg) + 2 * crop_margin(self.patch, augment_config(cfg))
        if not any((t != tg.IGNORE).any() for t in prepared.targets):
            raise ValueError("the labels contain no labeled pixel (everything is 0 / unlabeled)")
        block = max(32, self.patch // 2) if mcfg.spatial_dims == 2 else max(16, self.patch // 2)
        split = self.split = split_samples(
            prepared.targets,
            prepared.labels.kind,
            cfg.val_fraction,
            cfg.seed,
            block,
            label_images=prepared.label_images,
            keys=sample_keys(prepared.images),  # the same held out again when continued
        )
        held_out = split.val != split.train or split.val_targets is not split.train_targets
        self.held_out = held_out
        self.n_train, self.n_val = len(split.train), len(split.val) if held_out else 0

        def sampler(idx: list[int], targets: dict[int, np.ndarray], seed: int) -> PatchSampler:
            return PatchSampler(
                [prepared.images[i] for i in idx],
                [targets[i] for i in idx],
                None if prepared.weights is None else [prepared.weights[i] for i in idx],
                crop=crop,
                num_classes=mcfg.num_classes,
                device=self.device,
                seed=seed,
            )

        train_sampler = sampler(split.train, split.train_targets, cfg.seed)
        val_sampler = train_sampler  # validation on the training labels: no second copy
        if held_out:
            val_sampler = sampler(split.val, split.val_targets, cfg.seed + 1)
        n_val_crops = 16 if self.device.type == "cpu" else 64
        val_batches = val_sampler.fixed_batches(n_val_crops, min(cfg.batch_size, 16))
        sessions = self.history.get("sessions", [])
        previous = self.network if self.continues else None  # before a step changed it
        teacher = self.start.make_teacher(cfg.distill, self.spec, sessions, self.device, previous)
        self.trainer = Trainer(
            self.network,
            self.spec,
            self.device,
            train_sampler,
            val_batches,
            self.patch,
            cfg.batch_size,
            cfg.lr,
            precision=precision,
            teacher=teacher,
            group=self.group,
        )
        if self.checkpoint is not None:
            self.trainer.restore(*self.checkpoint)
        self.calibration = calibration_set(prepared, split, held_out)

    def record_session(self, prepared: Prepared) -> None:
        self.history["sessions"].append(
            {
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "device": describe_device(self.device),
                "recipe": self.cfg.recipe,
                "start_step": self.start_step,
                "data": prepared.provenance,
                "labels_kind": prepared.labels.kind,
                "validation": self.split.description,
                "scale": prepared.scale,
                **({"z_scale": prepared.z_scale} if prepared.z_scale != 1.0 else {}),
                **({"scale_note": self.scale_note} if self.scale_note else {}),
                "processes": self.ranks.world,
                "global_batch": self.cfg.batch_size,
            }
        )
        self.start.record(self.history["sessions"][-1], self.cfg.distill)

    def started(self) -> TrainStarted:
        """Start the clocks; the event that opens the training."""
        cfg, mcfg = self.cfg, self.spec.model
        self.elapsed_before = float(self.history.get("elapsed", 0.0))
        self.t0 = self.last_val = self.last_ckpt = self.pending_since = self.budget.start()
        cal = self.calibration if self.spec.labels.instances else None  # what the finish does
        wall = self.budget
        wall.calibration_pixels = (
            sum(int(np.prod(image.shape[1:])) for image in cal.images) if cal and cal.truths else 0
        )
        if self.start.compared:  # the start model predicts them too (Start.compare)
            wall.calibration_pixels *= 2
        wall.validation_pixels = self.trainer.val_pixels
        compared = (self.start.compared, self.guard.previous_iou is not None)  # at the end
        wall.validations = 1 + sum(compared)
        budget = cfg.time_budget
        self.val_every = max(5.0, budget / 10) if budget else None
        self.val_every_steps = max(1, (cfg.steps or 0) // 10) if cfg.steps and not budget else None
        return TrainStarted(
            device=describe_device(self.device),
            n_train=self.n_train,
            n_val=self.n_val,
            validation=self.split.description,
            init=self.start.init.describe() if self.start.init is not None else "",
            start_note=" ".join(n for n in (self.start.note, self.scale_note) if n),
            start_step=self.start_step,
            max_steps=cfg.steps,
            time_budget=budget,
            settings={
                "recipe": cfg.recipe,
                "width": mcfg.width,
                "depth": mcfg.depth,
                "patch": self.patch,
                "batch_size": cfg.batch_size,
                "lr": cfg.lr,
                "scale": self.spec.normalization.scale,
                "z_scale": self.spec.normalization.z_scale,
                **({"processes": self.ranks.world} if self.ranks.parallel else {}),
            },
        )

    # ----------------------------------------------------------------- loop phases

    @property
    def global_step(self) -> int:
        return self.start_step + self.step_count

    def stop_reason(self) -> str | None:
        """ "steps" or "time" when the budget is spent, "cancelled" on request, else None.

        In a data-parallel training rank 0 decides, for every rank, with the progress the
        learning rate follows (:attr:`schedule`).
        """
        self.now = self.clock()
        reason = None
        self.schedule = self.budget.progress(self.step_count, self.now)
        if self.schedule >= 1.0 and self.step_count > 0:  # one step at least
            reason = "steps" if self.cfg.steps and self.step_count >= self.cfg.steps else "time"
        elif self.control is not None and self.control.stop_requested:
            reason = self.control.reason
        if self.group is None:
            return reason
        code, self.schedule = self.group.agree([STOPS.index(reason), self.schedule])
        return STOPS[int(code)]

    def step(self) -> Generator[Any, None, bool]:
        """Phase "step": one optimisation step; a TrainStep when the loss is read.

        Out of device memory, the step is retried smaller (an Adjusted event) and
        this returns False: the turn ends without previews, validation or checkpoint.
        """
        cfg = self.cfg
        recipe = get_recipe(cfg.recipe)
        self.lr = recipe.lr_at(cfg.lr, self.schedule, self.step_count)
        first_compiled = cfg.compile and self.step_count == 0
        try:
            with self.budget.timed("compile") if first_compiled else contextlib.nullcontext():
                result = self.trainer.train_step(self.lr)
        except torch.cuda.OutOfMemoryError:
            if self.group is not None:  # a smaller batch on one rank only would not add up
                raise MemoryError(
                    f"process {self.ranks.rank} of {self.ranks.world} ({self.device}) ran out "
                    f"of memory at step {self.global_step + 1} with {self.trainer.batch_size} "
                    f"crops of {self.patch} shared among the processes: lower --batch-size "
                    "or --patch"
                ) from None
            adjusted = self.trainer.shrink_after_oom(self.global_step)
            self.history["sessions"][-1].setdefault("adjustments", []).append(
                [adjusted.step, adjusted.setting, adjusted.old, adjusted.new]
            )
            log.warning(adjusted.message)
            yield adjusted
            return False
        self.step_count += 1
        self.pending.append(result["loss"])
        last = bool(cfg.steps) and self.step_count == cfg.steps
        if len(self.pending) >= self.report_every or last:
            yield self.report()
        return True

    def report(self) -> TrainStep:
        """Read the losses of the steps since the last report (one device sync)."""
        n = len(self.pending)
        loss = float(torch.stack(self.pending).float().mean()) if n > 1 else float(self.pending[0])
        self.pending.clear()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at step {self.global_step}; "
                f"the model was not saved (lower the learning rate or check the images)"
            )
        now = self.clock()
        ips = self.trainer.batch_size * n / max(now - self.pending_since, 1e-9)
        self.pending_since = now
        step, cfg = self.global_step, self.cfg
        if n > 1 or self.step_count % 10 == 1 or (cfg.steps and self.step_count == cfg.steps):
            self.history["log"].append([step, round(loss, 5), self.lr])
        self.now = now
        return TrainStep(step=step, loss=loss, lr=self.lr, images_per_s=ips, elapsed=now - self.t0)

    def preview(self) -> Generator[Preview, None, None]:
        """Phase "preview": the model's probabilities on the image the caller asked for."""
        control = self.control
        if control is None or control.preview_image is None:
            return
        if self.now - self.last_preview < control.preview_every:
            return
        key, image = control.preview_key, control.preview_image
        try:
            with self.budget.timed("preview"):
                probs = _preview(self.network, self.spec, image, self.device)
        except ValueError as exc:  # a preview never stops the training, nor skips its phases
            log.warning("no live preview: %s", exc)
            control.preview_image = None
            return
        self.last_preview = self.clock()
        yield Preview(
            step=self.global_step,
            probabilities=probs,
            labels=class_labels(probs, self.spec.labels),
            key=key,
        )

    def validate(self) -> Validated:
        """Phase "validate": score the fixed validation crops and record it in the history."""
        with self.budget.timed("validate") as timing:
            v = self.trainer.validate()
        self.last_val = self.clock()
        self.budget.val_seconds = timing.seconds
        self.last_iou = v["iou"]
        self.history["validation"].append(
            [self.global_step, round(v["loss"], 5), round(v["iou"], 5)]
        )
        return Validated(
            step=self.global_step, loss=v["loss"], iou=v["iou"], elapsed=self.last_val - self.t0
        )

    def score_network(self, network: torch.nn.Module) -> float:
        """Validation IoU of another network of the same architecture on this run's crops."""
        network.to(self.device)
        with self.budget.timed("validate"):
            return self.trainer.validate(network=network)["iou"]

    def validate_if_due(self) -> Generator[Validated, None, None]:
        due_time = self.val_every and self.now - self.last_val >= self.val_every
        due_steps = self.val_every_steps and self.step_count % self.val_every_steps == 0
        if due_time or due_steps:
            yield self.validate()

    def checkpoint_if_due(self) -> Generator[CheckpointSaved, None, None]:
        every = self.cfg.checkpoint_every
        if self.out is not None and every and self.now - self.last_ckpt >= every:
            self.save()
            self.last_ckpt = self.clock()
            yield CheckpointSaved(step=self.global_step, path=str(self.out))

    def finish(self, reason: str = "steps") -> Generator[Any, None, None]:
        """Phase "finish": final validation, calibration, save, the regression guard.

        Stopped by Ctrl+C or SIGTERM (``reason``), the instance settings' search is
        skipped: the settings the model had (or the defaults) stay, and it says so.
        """
        self.flush()
        yield self.validate()
        interrupted = reason in ("interrupted", "terminated")
        session = self.history["sessions"][-1]
        if interrupted:
            session["stopped"] = "stopped by the user" if reason == "interrupted" else "terminated"
            if self.spec.labels.instances and self.calibration is not None:
                session["postprocess_search"] = {"skipped": reason}
                self.skipped_note = (
                    "instance settings not chosen again (stopped early): the model keeps "
                    f"{'its previous ones' if self.start_step else 'the defaults'}"
                )
        else:
            yield from self.calibrate()
        self.result_path, self.message = None, ""
        self.guard.rescore(self.score_network, self.spec)
        measured_on = self.split.description if self.held_out else None
        session = self.history["sessions"][-1]
        new = (self.network, self.spec.postprocess)
        self.start.compare(
            self.score_network, self.last_iou, measured_on, session, self.rank_objects, new
        )
        if self.out is not None:
            self.save()
            yield CheckpointSaved(step=self.global_step, path=str(self.out))
            self.result_path, self.message = self.guard.judge(self.last_iou)
            if self.result_path is not None:  # training.json says where the time went
                self.record_phases()
                save_history(self.result_path, self.history)
        notes = (self.message, self.skipped_note, self.start.message if self.start.better else "")
        self.message = " ".join(m for m in notes if m)

    def calibrate(self) -> Generator[Calibrated, None, None]:
        """Phase "calibrate": the instance post-processing that fits the model's objects,
        chosen on the validation images (or the labeled objects); see :mod:`.calibrate`."""
        if not self.spec.labels.instances or self.calibration is None:
            return
        cal = self.calibration
        with self.budget.timed("calibrate"):
            probs = self.calibration_probs = self.predict_calibration(self.network)
            settings, record = calibrate(
                probs,
                cal.truths,
                self.spec.model.spatial_dims,
                self.spec.postprocess,
                cal.sizes,
                deadline=self.budget.search_deadline(),  # in time for the save
                clock=self.clock,
                inherited=any(s.get("init") for s in self.history["sessions"]),
            )
        measured_on = cal.measured_on
        self.spec = replace(self.spec, postprocess=settings)
        self.history["sessions"][-1]["postprocess_search"] = {**record, "measured_on": measured_on}
        yield Calibrated(
            step=self.global_step,
            seed_threshold=settings.seed_threshold,
            fg_threshold=settings.fg_threshold,
            min_size=int(settings.min_size or 0),
            ap=record["chosen_ap"],
            start_ap=record["start_ap"],
            measured_on=measured_on,
            spatial_dims=self.spec.model.spatial_dims,
            split=settings.split,
            searched=record["searched"],
            objects=record["objects"],
            background_pixels=record["background_pixels"],
            search=record["search"],
            overlap=tuple(record["overlap"]) if record["overlap"] else None,
        )

    def predict_calibration(self, network: torch.nn.Module) -> list[np.ndarray]:
        """The probabilities of ``network`` (this model's architecture and input) on the
        calibration images, already at the model's scale."""
        assert self.calibration is not None
        axes = "C" + "ZYX"[3 - self.spec.model.spatial_dims :]
        model = for_many_images(Model(network=network, config=self.spec))
        training = network.training
        try:
            return [
                predict_proba(model, image, axes=axes, device=self.device, zoom=1.0, z_scale=1.0)
                for image in self.calibration.images
            ]
        finally:
            network.train(training)

    def rank_objects(self, network: torch.nn.Module, settings: PostprocessConfig) -> Rank | None:
        """How ``network`` with the instance ``settings`` finds the held-out objects (and
        keeps off the held-out background) the calibration chose on (:func:`rank_of`);
        None when there is no held-out object or the calibration did not run."""
        cal = self.calibration
        if self.calibration_probs is None or cal is None or not object_sizes(cal.truths).size:
            return None
        with self.budget.timed("calibrate"):
            if network is self.network:  # the new model: its probabilities are computed
                probs = self.calibration_probs
            else:
                probs = self.predict_calibration(network)
            return rank_of(tally(probs, cal.truths, settings, self.spec.model.spatial_dims))

    def flush(self) -> None:
        """Read (and check) losses not reported yet; their TrainStep is not sent."""
        if self.pending:
            self.report()

    def record_phases(self) -> dict[str, float]:
        """Where the wall time went since the request (:meth:`WallBudget.close`), into
        the session's record; returns the phases, rounded."""
        phases, total = self.budget.close()
        self.history["sessions"][-1]["phases"] = {**phases, "total": round(total, 2)}
        return phases

    def finished(self, reason: str) -> Finished:
        self.history["steps"] = self.global_step
        self.history["elapsed"] = self.elapsed_before + (self.clock() - self.t0)
        self.network.eval()
        phases = self.record_phases()
        return Finished(
            step=self.global_step,
            reason=reason,
            elapsed=self.clock() - self.t0,
            path=str(self.result_path) if self.result_path else None,
            message=self.message,
            start_model=self.start.better,
            phases=phases,
        )

    # ----------------------------------------------------------------- saving

    def save(self) -> None:
        """The model folder and its resume state, each file written atomically."""
        assert self.out is not None
        with self.budget.timed("save") as timing:
            self.history["steps"] = self.global_step
            self.history["elapsed"] = self.elapsed_before + (self.clock() - self.t0)
            save_model(self.model(), self.out)
            state = {"step": self.global_step, "elapsed": self.history["elapsed"]}
            optimizer = self.trainer.optimizer.state_dict()
            save_checkpoint(self.out, optimizer, {**state, **self.trainer.resume_state()})
        self.budget.save_seconds = timing.seconds

    def on_cancel(self) -> None:
        """Closed between steps (a cancelled worker): keep what was learned, unless
        the caller aborted (a second Ctrl+C: nothing more is written)."""
        aborted = self.control is not None and self.control.aborted
        if self.out is not None and self.step_count > 0 and not aborted:
            self.save()

    def model(self) -> Model:
        return Model(network=self.network, config=self.spec, history=self.history, path=self.out)


def _ended(history: dict[str, Any]) -> bool:
    """Whether the last session of a model's ``history`` ran to its end (its budget spent
    or stopped in the widget), not interrupted, killed or cut off after a checkpoint."""
    sessions = history.get("sessions") or [{}]
    return "phases" in sessions[-1] and "stopped" not in sessions[-1]


def _z_scale(request: TrainRequest, spatial_dims: int, model: Model | None) -> float:
    """The factor a 3D training resizes its volumes by along z: from ``request.spacing``
    for a new model; a continued model keeps its own (another voxel size is refused)."""
    if spatial_dims != 3:
        return 1.0
    wanted = z_scale_for(request.spacing)
    if model is None:
        return wanted
    kept = model.config.normalization.z_scale
    if request.spacing is not None and wanted != kept:
        raise ValueError(
            f"{request.place('spacing', request.spacing)}: the volumes would be resized by "
            f"{wanted:g} along z, but the model continued was trained at {kept:g}, and a "
            "model keeps its voxel size (leave the voxel size out, or give the model's)"
        )
    return kept


def _round_patch(patch: int, mcfg: ModelConfig) -> int:
    """A ``same`` network needs patches divisible by 2**depth."""
    if mcfg.padding != "same":
        return patch
    multiple = 2**mcfg.depth
    return max(multiple, patch // multiple * multiple)


def train_iter(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    *,
    labels_kind: str | None = None,
    class_names: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    recipe: str | None = None,
    width: int | None = None,
    depth: int | None = None,
    padding: str | None = None,
    batch_norm: bool | None = None,
    spatial_dims: int | None = None,
    patch: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    out: str | Path | None = None,
    resume: bool = False,
    model: Model | None = None,
    tiling: TileConfig | None = None,
    clock: Callable[[], float] = time.perf_counter,
    control: TrainControl | None = None,
    replace_worse: bool = False,
    precision: str = "auto",
    report_every: int | None = None,
    names: Names | None = None,
    init: str | Path | None = AUTO,
    spacing: tuple[float, float, float] | None = None,
) -> Generator[Any, None, Model]:
    """Train a U-Net; yields progress events and returns the model.

    Parameters
    ----------
    images, labels
        One array or a list of arrays.  Images may carry a channel axis (first
        or last) that the labels lack; with a 2D model, 3D arrays are stacks of
        2D slices (slices without labels are ignored).
    labels_kind
        ``"sparse"`` (0 = unlabeled, 1..K = classes), ``"semantic"`` (every
        value a class), ``"instances"`` (object ids, 0 = background) or
        ``"sparse-instances"``; None: ``"sparse"`` for a new model, the kind of the
        model continued (another kind given with ``resume`` is refused).
    config
        A :class:`TrainConfig`; the keyword arguments ``steps``,
        ``time_budget``, ``recipe``, ``patch`` and ``batch_size`` override it.
        Without ``steps`` or ``time_budget`` training runs 300 s.
    width, depth, padding, batch_norm, spatial_dims
        The architecture; None picks the default (``width``: per device, ``depth`` 4,
        ``padding`` "same", ``batch_norm`` True, ``spatial_dims`` 2), or with ``init``
        the initial model's (another value given explicitly is refused).
    spacing
        The voxel size (z, y, x) of the volumes of a 3D network: where z is coarser or
        finer than y and x, volumes are resized along z to near-isotropic voxels to
        train, and prediction does the same (``normalization.z_scale``); ignored in 2D.
    out
        Model folder to write checkpoints and the final model to.
    resume
        Continue from the model folder ``out`` (weights and optimiser state).
    model
        Continue training this in-memory model (the human-in-the-loop case).
    init
        What a new model starts from: ``"auto"`` (the default: ``builtin:nuclei`` for 2D
        instance labels on one channel with its network, width 16 and depth 4, taken on
        the CPU unless ``width`` says otherwise, where it finds the labeled objects; from
        scratch otherwise), None or ``"scratch"``,
        or another model: ``"builtin:NAME"`` or a model folder.  Its
        weights are copied where they fit (the last layer is new when the classes
        differ, the first adapted to other input channels; see :mod:`napari_unet.init`);
        optimizer and normalisation start fresh; ``training.json`` records the parent
        and the sha256 of its weights.  Not with ``resume`` or ``model``.
    control
        A :class:`TrainControl` to stop training or ask for live previews from
        another thread.
    replace_worse
        The regression guard: when ``out`` already holds a model, it is first copied
        to ``<out>.previous``; if the new model ends with a lower validation IoU than
        the one it replaces, the previous model is put back in ``out`` and the new
        one is kept in ``<out>.rejected`` (``Finished.message`` says so).
        ``replace_worse=True`` keeps the new model in ``out`` anyway.
    precision
        ``"auto"`` (bf16/fp16 autocast on CUDA with the fast recipe, else float32),
        ``"fp32"``, ``"bf16"`` or ``"fp16"`` (see :meth:`~napari_unet.recipes.Recipe.autocast`).
    names
        How errors name the images, the labels and the model (file paths in the CLI,
        layer names in the widgets; ``image 0`` / ``labels 0`` by default).
    report_every
        Steps between two :class:`~napari_unet.events.TrainStep` events, each with the
        mean loss since the previous one.  Reading the loss waits for the device, so the
        default is every step on the CPU and every 10 steps on an accelerator.
    """
    request = TrainRequest.from_keywords(
        config,
        labels_kind=labels_kind,
        class_names=class_names,
        steps=steps,
        time_budget=time_budget,
        recipe=recipe,
        patch=patch,
        batch_size=batch_size,
        spatial_dims=spatial_dims,
        width=width,
        depth=depth,
        padding=padding,
        batch_norm=batch_norm,
        device=device,
        out=out,
        resume=resume,
        init=init,
        replace_worse=replace_worse,
        precision=precision,
        tiling=tiling,
        report_every=report_every,
        names=names,
        spacing=spacing,
    )
    return (
        yield from train_request_iter(
            images, labels, request, model=model, clock=clock, control=control
        )
    )


def train_request_iter(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    request: TrainRequest,
    *,
    model: Model | None = None,
    clock: Callable[[], float] = time.perf_counter,
    control: TrainControl | None = None,
    began: float | None = None,
) -> Generator[Any, None, Model]:
    """:func:`train_iter` for a :class:`~napari_unet.request.TrainRequest` (what the CLI,
    the Train widget and the child-process job build): checks it, then trains.

    A time budget is wall time from ``began`` (a value of ``clock``; default: now) to
    the saved, calibrated model: the steps end early enough for the final validation,
    the calibration and the save (measured as they go) to fit in it.
    """
    began = clock() if began is None else began
    out = request.out_path
    main = ranks_from_env().main  # in a data-parallel training, rank 0 writes and speaks
    request.check(continues_model=model is not None, writes=main)  # may not write: no lock
    with hold(out) if out is not None and main else contextlib.nullcontext("") as notice:

        def setup() -> TrainingRun:
            return TrainingRun.setup(
                images, labels, request, model=model, clock=clock, control=control, began=began
            )

        run = _train_locked(setup, request, model is not None, notice or "")
        if not main:
            return drain(run)  # the other ranks train without events
        return (yield from run)


def _train_locked(
    setup: Callable[[], TrainingRun], request: TrainRequest, continues: bool, notice: str
) -> Generator[Any, None, Model]:
    """:func:`train_request_iter` with the output folder's writer lock held."""
    request.check(continues_model=continues, writes=ranks_from_env().main)  # may have changed
    run = setup()
    run.start.note = " ".join(n for n in (notice, run.start.note) if n)
    try:
        yield run.started()
        while (reason := run.stop_reason()) is None:
            if not (yield from run.step()):
                continue
            if not run.ranks.main:  # rank 0 alone previews, validates and saves
                continue
            yield from run.preview()
            yield from run.validate_if_due()
            yield from run.checkpoint_if_due()
        run.close(together=True)  # rank 0's finish needs no other rank
        if run.ranks.main and not (reason in USER_STOPS and run.step_count == 0):
            yield from run.finish(reason)
    except GeneratorExit:
        run.on_cancel()
        raise
    finally:
        run.close()
    yield run.finished(reason)
    return run.model()


def _preview(network: UNet, spec: ModelSpec, image: Any, device: torch.device) -> np.ndarray:
    """Probabilities of the network in training on ``image`` (then back to training)."""
    try:
        return predict_proba(Model(network=network, config=spec), image, device=device)
    finally:
        network.train()


def train(*args: Any, callback: Callable[[Any], None] | None = None, **kwargs: Any) -> Model:
    """Blocking form of :func:`train_iter`; returns the trained model."""
    return drain(train_iter(*args, **kwargs), callback)

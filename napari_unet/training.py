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

import copy
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import targets as tg
from .augment import AugmentConfig, crop_margin
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, ModelSpec, NormConfig, TileConfig, TrainConfig
from .data import PatchSampler, prepare, split_indices
from .devices import describe_device, resolve_device
from .events import (
    CheckpointSaved,
    Finished,
    Preview,
    TrainStarted,
    TrainStep,
    Validated,
    drain,
)
from .model import UNet, border
from .postprocess import class_labels
from .store import CONFIG_FILE, Model, load_model, save_model
from .trainer import _check_optimizer_state, _lr_factor, _Trainer

log = logging.getLogger(__name__)

DEFAULT_TIME_BUDGET = 300.0


@dataclass(frozen=True)
class Defaults:
    """Model size and recipe settings picked for a device (measured, see docs)."""

    width: int
    patch: int
    batch_size: int
    lr: float


def defaults_for(device: torch.device, recipe: str, spatial_dims: int = 2) -> Defaults:
    """Defaults that train a good model in minutes on a laptop CPU, seconds on a GPU."""
    if recipe == "paper":
        return Defaults(width=64 if device.type == "cuda" else 16, patch=256, batch_size=1, lr=1e-3)
    if device.type == "cpu":
        if spatial_dims == 3:
            return Defaults(width=8, patch=48, batch_size=2, lr=3e-3)
        return Defaults(width=8, patch=128, batch_size=8, lr=3e-3)
    if spatial_dims == 3:
        return Defaults(width=16, patch=96, batch_size=4, lr=2e-3)
    return Defaults(width=32, patch=256, batch_size=16, lr=2e-3)


@dataclass
class TrainControl:
    """What a caller in another thread may change while training runs.

    ``stop()`` ends training after the current step, with reason "cancelled",
    saving the model folder like a normal end (in the training thread).
    ``request_preview(image)`` asks for :class:`~napari_unet.events.Preview`
    events on ``image`` at most every ``preview_every`` seconds.
    """

    stop_requested: bool = False
    preview_image: Any = None
    preview_key: Any = None
    preview_every: float = 3.0

    def stop(self) -> None:
        self.stop_requested = True

    def request_preview(self, image: Any, key: Any = None) -> None:
        self.preview_key = key
        self.preview_image = image


# --------------------------------------------------------------------------- loop


def _to_model(network: UNet, spec: ModelSpec, history: dict, path: Path | None) -> Model:
    return Model(network=network, config=spec, history=history, path=path)


def train_iter(
    images: Sequence[np.ndarray] | np.ndarray,
    labels: Sequence[np.ndarray] | np.ndarray,
    *,
    labels_kind: str = "sparse",
    class_names: Sequence[str] | None = None,
    config: TrainConfig | None = None,
    steps: int | None = None,
    time_budget: float | None = None,
    recipe: str | None = None,
    width: int | None = None,
    depth: int = 4,
    padding: str = "same",
    batch_norm: bool = True,
    spatial_dims: int = 2,
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
        value a class) or ``"instances"`` (object ids, 0 = background).
    config
        A :class:`TrainConfig`; the keyword arguments ``steps``,
        ``time_budget``, ``recipe``, ``patch`` and ``batch_size`` override it.
        Without ``steps`` or ``time_budget`` training runs 300 s.
    width, depth, padding, batch_norm, spatial_dims
        The architecture (``width=None`` picks the device default).
    out
        Model folder to write checkpoints and the final model to.
    resume
        Continue from the model folder ``out`` (weights and optimiser state).
    model
        Continue training this in-memory model (the human-in-the-loop case).
    control
        A :class:`TrainControl` to stop training or ask for live previews from
        another thread.
    replace_worse
        The regression guard: when ``out`` already holds a model, it is first copied
        to ``<out>.previous``; if the new model ends with a lower validation IoU than
        the one it replaces, the previous model is put back in ``out`` and the new
        one is kept in ``<out>.rejected`` (``Finished.message`` says so).
        ``replace_worse=True`` keeps the new model in ``out`` anyway.
    """
    cfg = config or TrainConfig()
    overrides = {
        k: v
        for k, v in dict(
            steps=steps, time_budget=time_budget, recipe=recipe, patch=patch, batch_size=batch_size
        ).items()
        if v is not None
    }
    cfg = replace(cfg, **overrides)
    if cfg.steps is None and cfg.time_budget is None:
        cfg = replace(cfg, time_budget=DEFAULT_TIME_BUDGET)
    dev = resolve_device(device)
    out_path = Path(out) if out is not None else None

    checkpoint = None
    history: dict[str, Any] = {
        "steps": 0,
        "elapsed": 0.0,
        "log": [],
        "validation": [],
        "sessions": [],
    }
    if resume:
        if out_path is None:
            raise ValueError("resume=True needs the model folder to resume from (out)")
        model = load_model(out_path, device=dev)
        checkpoint = load_checkpoint(out_path)
    if model is not None:
        history = {**history, **copy.deepcopy(model.history)}
        base_spec = model.config
        spatial_dims = base_spec.model.spatial_dims
        labels_kind = base_spec.labels.kind
        class_names = base_spec.labels.class_names
    prepared = prepare(
        images,
        labels,
        labels_kind,
        spatial_dims=spatial_dims,
        class_names=class_names,
        value_map=model.config.labels.value_map if model is not None else None,
        norm=model.config.normalization if model is not None else None,
        border_weights=cfg.border_weights,
    )
    d = defaults_for(dev, cfg.recipe, spatial_dims)
    cfg = replace(
        cfg,
        patch=cfg.patch or d.patch,
        batch_size=cfg.batch_size or d.batch_size,
        lr=cfg.lr or d.lr,
    )
    if model is not None:
        network = model.network.to(dev)
        mcfg = model.config.model
        if prepared.in_channels != mcfg.in_channels:
            raise ValueError(
                f"the images have {prepared.in_channels} channels, the model takes "
                f"{mcfg.in_channels}"
            )
        if prepared.labels.class_names != model.config.labels.class_names:
            raise ValueError(
                f"the labels have classes {list(prepared.labels.class_names)}, the model "
                f"{list(model.config.labels.class_names)}"
            )
        spec = replace(model.config, train=cfg)
    else:
        mcfg = ModelConfig(
            spatial_dims=spatial_dims,
            in_channels=prepared.in_channels,
            num_classes=len(prepared.labels.class_names),
            depth=depth,
            width=width or d.width,
            padding=padding,
            batch_norm=batch_norm,
        )
        spec = ModelSpec(
            model=mcfg,
            labels=prepared.labels,
            normalization=NormConfig(),
            tiling=tiling or TileConfig(),
            train=cfg,
        )
        torch.manual_seed(cfg.seed)
        network = UNet.from_config(mcfg).to(dev)
    assert cfg.patch is not None and cfg.batch_size is not None and cfg.lr is not None
    patch_size = cfg.patch
    if mcfg.padding == "same":
        step = 2**mcfg.depth
        patch_size = max(step, patch_size // step * step)

    aug = AugmentConfig()
    crop = patch_size + 2 * border(mcfg) + 2 * crop_margin(patch_size, aug)
    labeled = [i for i, t in enumerate(prepared.targets) if (t != tg.IGNORE).any()]
    if not labeled:
        raise ValueError("the labels contain no labeled pixel (everything is 0 / unlabeled)")
    train_pos, val_pos = split_indices(len(labeled), cfg.val_fraction, cfg.seed)
    train_idx = [labeled[i] for i in train_pos]
    val_idx = [labeled[i] for i in val_pos]

    def sampler(idx: Iterable[int], seed: int) -> PatchSampler:
        idx = list(idx)
        return PatchSampler(
            [prepared.images[i] for i in idx],
            [prepared.targets[i] for i in idx],
            None if prepared.weights is None else [prepared.weights[i] for i in idx],
            crop=crop,
            num_classes=mcfg.num_classes,
            device=dev,
            seed=seed,
        )

    train_sampler = sampler(train_idx, cfg.seed)
    val_sampler = sampler(val_idx, cfg.seed + 1) if val_idx else train_sampler
    n_val_crops = 16 if dev.type == "cpu" else 64
    val_batches = val_sampler.fixed_batches(n_val_crops, min(cfg.batch_size, 16))
    trainer = _Trainer(
        network, spec, dev, train_sampler, val_batches, patch_size, cfg.batch_size, cfg.lr
    )
    start_step = int(history.get("steps", 0))
    if checkpoint is not None:
        opt_state, state = checkpoint
        try:
            trainer.optimizer.load_state_dict(opt_state)
            _check_optimizer_state(trainer.optimizer)
        except (ValueError, KeyError) as exc:
            log.warning("optimizer state not restored (%s); continuing with a fresh optimizer", exc)
            trainer.optimizer.state.clear()
        if "scaler" in state and trainer.scaler.is_enabled():
            trainer.scaler.load_state_dict(state["scaler"])
    history["sessions"].append(
        {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": describe_device(dev),
            "recipe": cfg.recipe,
            "start_step": start_step,
            "data": prepared.provenance,
            "labels_kind": prepared.labels.kind,
        }
    )

    previous_iou = None
    if out_path is not None and (out_path / CONFIG_FILE).is_file():
        previous_iou = _last_iou(out_path)
        _copy_folder(out_path, _sibling(out_path, "previous"))

    yield TrainStarted(
        device=describe_device(dev),
        n_train=len(train_idx),
        n_val=len(val_idx),
        start_step=start_step,
        max_steps=cfg.steps,
        time_budget=cfg.time_budget,
        settings={
            "recipe": cfg.recipe,
            "width": mcfg.width,
            "depth": mcfg.depth,
            "patch": patch_size,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
        },
    )

    elapsed_before = float(history.get("elapsed", 0.0))
    t0 = clock()
    step = 0
    warmup = 50 if cfg.recipe == "fast" else 1
    val_every = max(5.0, (cfg.time_budget or 0) / 10) if cfg.time_budget else None
    val_every_steps = max(1, (cfg.steps or 0) // 10) if cfg.steps and not cfg.time_budget else None
    last_val = t0
    last_ckpt = t0
    last_preview = -math.inf
    reason = "cancelled"
    result_path = None
    message = ""

    def progress(now: float) -> float:
        p = 0.0
        if cfg.steps:
            p = max(p, step / cfg.steps)
        if cfg.time_budget:
            p = max(p, (now - t0) / cfg.time_budget)
        return p

    def save(now: float) -> Path:
        history["steps"] = start_step + step
        history["elapsed"] = elapsed_before + (now - t0)
        m = _to_model(trainer.network, spec, history, out_path)
        assert out_path is not None
        save_model(m, out_path)
        state = {"step": start_step + step, "elapsed": history["elapsed"]}
        if trainer.scaler.is_enabled():
            state["scaler"] = trainer.scaler.state_dict()
        save_checkpoint(out_path, trainer.optimizer.state_dict(), state)
        return out_path

    try:
        while True:
            now = clock()
            p = progress(now)
            if p >= 1.0:
                reason = "steps" if cfg.steps and step >= cfg.steps else "time"
                break
            if control is not None and control.stop_requested:
                reason = "cancelled"
                break
            lr = cfg.lr
            if cfg.recipe == "fast":
                lr = cfg.lr * _lr_factor(p, step, warmup)
            t_step = clock()
            try:
                out = trainer.train_step(lr)
            except torch.cuda.OutOfMemoryError:
                adjusted = trainer.shrink_after_oom(start_step + step)
                history["sessions"][-1].setdefault("adjustments", []).append(
                    [adjusted.step, adjusted.setting, adjusted.old, adjusted.new]
                )
                log.warning(adjusted.message)
                yield adjusted
                continue
            if not math.isfinite(out["loss"]):
                raise FloatingPointError(
                    f"training loss became {out['loss']} at step {start_step + step + 1}; "
                    f"the model was not saved (lower the learning rate or check the images)"
                )
            step += 1
            now = clock()
            ips = trainer.batch_size / max(now - t_step, 1e-9)
            if step % 10 == 1 or cfg.steps and step == cfg.steps:
                history["log"].append([start_step + step, round(out["loss"], 5), lr])
            yield TrainStep(
                step=start_step + step, loss=out["loss"], lr=lr, images_per_s=ips, elapsed=now - t0
            )
            if (
                control is not None
                and control.preview_image is not None
                and now - last_preview >= control.preview_every
            ):
                key, image = control.preview_key, control.preview_image
                try:
                    probs = _preview(trainer.network, spec, image, dev)
                except ValueError as exc:  # a preview never stops the training
                    log.warning("no live preview: %s", exc)
                    control.preview_image = None
                    continue
                last_preview = clock()
                yield Preview(
                    step=start_step + step,
                    probabilities=probs,
                    labels=class_labels(probs, spec.labels),
                    key=key,
                )
            due_val = (val_every and now - last_val >= val_every) or (
                val_every_steps and step % val_every_steps == 0
            )
            if due_val:
                v = trainer.validate()
                last_val = clock()
                history["validation"].append(
                    [start_step + step, round(v["loss"], 5), round(v["iou"], 5)]
                )
                yield Validated(
                    step=start_step + step, loss=v["loss"], iou=v["iou"], elapsed=last_val - t0
                )
            if (
                out_path is not None
                and cfg.checkpoint_every
                and now - last_ckpt >= cfg.checkpoint_every
            ):
                save(now)
                last_ckpt = clock()
                yield CheckpointSaved(step=start_step + step, path=str(out_path))
        v = trainer.validate()
        history["validation"].append([start_step + step, round(v["loss"], 5), round(v["iou"], 5)])
        yield Validated(step=start_step + step, loss=v["loss"], iou=v["iou"], elapsed=clock() - t0)
        if out_path is not None:
            result_path = save(clock())
            yield CheckpointSaved(step=start_step + step, path=str(out_path))
            worse = previous_iou is not None and v["iou"] < previous_iou
            if worse and not replace_worse:
                rejected = _sibling(out_path, "rejected")
                _copy_folder(out_path, rejected)
                _copy_folder(_sibling(out_path, "previous"), out_path)
                result_path = rejected
                message = (
                    f"kept the previous model in {out_path}: its validation IoU "
                    f"{previous_iou:.3f} is better than the new model's {v['iou']:.3f}; the "
                    f"new model is in {rejected} (replace_worse / --replace-worse keeps it)"
                )
                log.warning(message)
    except GeneratorExit:
        # cancelled between steps: keep what was learned, atomically
        if out_path is not None and step > 0:
            save(clock())
        raise
    history["steps"] = start_step + step
    history["elapsed"] = elapsed_before + (clock() - t0)
    trainer.network.eval()
    yield Finished(
        step=start_step + step,
        reason=reason,
        elapsed=clock() - t0,
        path=str(result_path) if result_path else None,
        message=message,
    )
    return _to_model(trainer.network, spec, history, out_path)


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


def _preview(network: UNet, spec: ModelSpec, image: Any, device: torch.device) -> np.ndarray:
    """Probabilities of the network in training on ``image`` (then back to training)."""
    from .inference import predict_proba

    try:
        return predict_proba(Model(network=network, config=spec), image, device=device)
    finally:
        network.train()


def run(gen: Generator[Any, None, Any], callback: Callable[[Any], None] | None = None) -> Any:
    """Drain an event generator (calling ``callback`` on each event); return its result."""
    return drain(gen, callback)


def train(*args: Any, callback: Callable[[Any], None] | None = None, **kwargs: Any) -> Model:
    """Blocking form of :func:`train_iter`; returns the trained model."""
    return run(train_iter(*args, **kwargs), callback)

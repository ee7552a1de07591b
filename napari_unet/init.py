"""Start a training from another model's weights: ``train --init MODEL`` / ``train(init=...)``.

``MODEL`` is ``builtin:NAME`` or a model folder.  The new network takes the
architecture of that model (``width``, ``depth``, ``padding``, ``batch_norm``,
``spatial_dims``); one of these given explicitly with another value is refused,
naming both values.  Its weights are copied where they fit:

- every tensor of the same name and shape is copied as it is (BatchNorm running
  statistics included);
- the last 1x1 convolution (``head``) is copied only when the classes are the
  same (same names in the same order); otherwise it keeps the fresh, seeded
  initialisation of a new network (e.g. a 2-class sparse task from the 3-class
  nuclei model);
- a different number of input channels adapts the first convolution: its kernel
  is averaged over the model's input channels and replicated to each new channel,
  scaled by ``old channels / new channels``, so an image whose channels are all
  equal gives the first layer the response the model had on one channel.

Everything else starts fresh, as in a new training: the optimizer, the
learning-rate schedule, the step count, and the normalisation (per image, from
the new data).  ``training.json`` records the parent in the session's ``"init"``
entry: the reference as given, its folder, the sha256 of its weights file and
what was copied, adapted and re-initialised.  Continuing the same model is
``resume`` and stays separate: both together are refused.

Architecture checks need no torch (the CLI runs them before importing it).

The default start (``init="auto"``, ``--init auto``) is ``builtin:nuclei`` where
starting from it measured better than from scratch (docs/benchmarks.md, issue 12:
"label a few cells" on a held-out group of nuclei images, 3 runs, AP@0.5 0.644 ±
0.040 against 0.595 ± 0.162, with the width-8 model of then): 2D ``instances`` or
``sparse-instances`` labels on one channel, with the network the built-in model has
(width 16, depth 4; on the CPU a width not given is the built-in model's).
Everything else starts from scratch, as does ``init=None`` / ``"scratch"``: a GPU
default network (width 32) or another width given, semantic and sparse class labels
(ISBI 2012 EM strokes: no better pixel error from the nuclei model), several
channels, 3D.

Before an automatic start is taken, the start model segments the user's labeled
images and its objects are matched with the labeled ones (:func:`start_fit`):
it is the start only when it finds at least :data:`FIT_RECALL` of them (IoU >=
0.5), else training starts from scratch and says why ("builtin:nuclei finds 1
of your 6 outlined objects: starting from scratch").  The start model's answer
on unlabeled pixels is kept by a distillation term while fine-tuning
(:mod:`napari_unet.trainer`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import LabelsConfig, ModelConfig, ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .recipes import Recipe
    from .store import Model

ARCHITECTURE = ("spatial_dims", "width", "depth", "padding", "batch_norm")
DEFAULTS: dict[str, Any] = {"spatial_dims": 2, "depth": 4, "padding": "same", "batch_norm": True}
"""The architecture of a new network where the caller gave none (width: per device)."""
FIRST_CONV = "down.0.0.weight"
AUTO = "auto"  # the default: builtin:nuclei where it measured better, else scratch
SCRATCH = "scratch"
AUTO_MODEL = "builtin:nuclei"
AUTO_KINDS = ("instances", "sparse-instances")
HEAD_PREFIX = "head."
FIT_RECALL = 0.5
"""An automatic start is taken when the start model finds this share of the labeled objects."""
FIT_PIXELS = 4_000_000
"""At most this many pixels of labeled images are segmented to check the fit."""


def default_architecture(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with :data:`DEFAULTS` where it holds None (``width`` stays None)."""
    return {
        key: given.get(key) if given.get(key) is not None else DEFAULTS.get(key)
        for key in ARCHITECTURE
    }


def auto_init(
    labels_kind: str,
    given: dict[str, Any],
    default_width: int,
    recipe: Recipe,
    follow_width: bool = False,
) -> str | None:
    """What ``init="auto"`` starts from: :data:`AUTO_MODEL` or None (scratch).

    Parameters
    ----------
    labels_kind
        The labels the training uses.
    given
        The architecture the caller asked for (``None``: not given), by
        :data:`ARCHITECTURE` key.
    default_width
        The width a new network gets on this device with this recipe.
    follow_width
        A width not given is the start model's (the CPU: the built-in model is the way
        to a good model in minutes there), instead of ``default_width`` (a GPU's width
        32 network trains from scratch, as measured).
    recipe
        The training recipe; only one that may start from the built-in model does.

    The number of input channels is only known once the data is read: a training
    that finds several drops the automatic start (:meth:`InitModel.fits_channels`).
    """
    from .safety import check_model_folder

    if labels_kind not in AUTO_KINDS or not recipe.auto_start:
        return None
    parent = check_model_folder(AUTO_MODEL).model
    wanted = {**default_architecture(given)}
    wanted["width"] = wanted["width"] or (parent.width if follow_width else default_width)
    if any(wanted[key] != getattr(parent, key) for key in ARCHITECTURE):
        return None
    return AUTO_MODEL


def resolve_init(init: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """``init`` with "scratch" as None (``"auto"`` is resolved by the training)."""
    return None if init is None or init == SCRATCH else init


def init_architecture(parent: ModelConfig, given: dict[str, Any], ref: str) -> dict[str, Any]:
    """The architecture of a network started from ``parent``: the parent's.

    Parameters
    ----------
    parent
        The architecture of the model to start from.
    given
        What the caller asked for (``None``: not given), by :data:`ARCHITECTURE` key.
    ref
        The model as the user named it, for messages.

    Returns
    -------
    dict
        The parent's value of every :data:`ARCHITECTURE` key.

    Raises
    ------
    ValueError
        When a value was given and differs from the parent's; names both values.
    """
    for key in ARCHITECTURE:
        value, have = given.get(key), getattr(parent, key)
        if value is not None and value != have:
            raise ValueError(
                f"{key} {value} was given but the model to start from ({ref}) has {key} "
                f"{have}; leave {key} unset to use the model's, or train from scratch"
            )
    return {key: getattr(parent, key) for key in ARCHITECTURE}


@dataclass(frozen=True)
class Transfer:
    """What :func:`transfer_weights` did, tensor by tensor."""

    copied: int
    adapted: tuple[str, ...] = ()
    reinitialised: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # for people: "new head: 2 classes (...) instead of 3 (...)"


def transfer_weights(
    network: torch.nn.Module, parent: Model, labels: LabelsConfig, ref: str
) -> Transfer:
    """Copy ``parent``'s weights into ``network`` where they fit (see the module notes).

    Parameters
    ----------
    network
        The new network, freshly initialised, with the parent's architecture apart
        from input channels and classes.
    parent
        The model to start from.
    labels
        The new model's classes: the head is copied only when they are the parent's.
    ref
        The parent as the user named it, for messages.

    Returns
    -------
    Transfer
        What was copied, adapted and re-initialised.

    Raises
    ------
    ValueError
        When a tensor other than the first convolution and the head does not fit
        (the architecture differs); names the tensor and both shapes.
    """
    import torch

    source = parent.network.state_dict()
    state = network.state_dict()
    same_classes = tuple(parent.config.labels.class_names) == tuple(labels.class_names)
    copied, adapted, fresh, notes = 0, [], [], []
    with torch.no_grad():
        for key, target in state.items():
            have = source.get(key)
            if key.startswith(HEAD_PREFIX) and not (same_classes and have is not None):
                fresh.append(key)
            elif have is not None and have.shape == target.shape:
                target.copy_(have.to(target.dtype))
                copied += 1
            elif key == FIRST_CONV and have is not None and _adaptable(have, target):
                c_old, c_new = have.shape[1], target.shape[1]
                mean = have.to(target.dtype).mean(dim=1, keepdim=True)
                target.copy_(mean.expand_as(target) * (c_old / c_new))
                adapted.append(key)
                notes.append(f"first layer adapted from {c_old} to {c_new} input channels")
            else:
                got = "missing" if have is None else f"shape {tuple(have.shape)}"
                raise ValueError(
                    f"cannot start from {ref}: its tensor {key!r} ({got}) does not fit the "
                    f"new network ({tuple(target.shape)})"
                )
    network.load_state_dict(state)
    if fresh:
        old, new = parent.config.labels.class_names, labels.class_names
        notes.append(
            f"new last layer: {len(new)} classes ({', '.join(new)}) instead of "
            f"{len(old)} ({', '.join(old)})"
        )
    return Transfer(copied, tuple(adapted), tuple(fresh), tuple(notes))


def _adaptable(have: torch.Tensor, target: torch.Tensor) -> bool:
    """Same kernel and output features, another number of input channels."""
    return (
        have.ndim == target.ndim
        and have.shape[0] == target.shape[0]
        and (have.shape[2:] == target.shape[2:])
    )


@dataclass
class InitModel:
    """The model a training starts from, loaded and checked (:func:`load_init`)."""

    ref: str  # as the user gave it: "builtin:nuclei" or a folder
    model: Model
    weights_sha256: str  # of the parent's weights.safetensors
    transfer: Transfer | None = field(default=None)
    automatic: bool = False  # chosen by init="auto", not asked for
    fit: StartFit | None = None  # how it segments the labeled objects (automatic starts)

    def fits_channels(self, channels: int) -> bool:
        """Whether an automatic start suits data with ``channels`` input channels (one)."""
        return not self.automatic or channels == self.model.config.model.in_channels

    def start(self, network: torch.nn.Module, spec: ModelSpec) -> ModelSpec:
        """Copy the weights into ``network`` (the new model of ``spec``); returns ``spec``
        with the parent's instance thresholds when both give instances (a start for the
        calibration at the end of training; the object size is left to the new data's)."""
        self.transfer = transfer_weights(network, self.model, spec.labels, self.ref)
        if spec.labels.instances and self.model.config.labels.instances:
            thresholds = dataclasses.replace(self.model.config.postprocess, object_size=None)
            spec = dataclasses.replace(spec, postprocess=thresholds)
        return spec

    def provenance(self) -> dict[str, Any]:
        """The session record's ``"init"`` entry."""
        record: dict[str, Any] = {
            "from": self.ref,
            "automatic": self.automatic,
            "path": str(self.model.path),
            "weights_sha256": self.weights_sha256,
            "parent_steps": int(self.model.history.get("steps", 0)),
        }
        if self.fit is not None:
            record["fit"] = self.fit.record()
        if self.transfer is not None:
            record.update(
                copied=self.transfer.copied,
                adapted=list(self.transfer.adapted),
                reinitialised=list(self.transfer.reinitialised),
            )
        return record

    def describe(self) -> str:
        """One line for people: "builtin:nuclei (new last layer: ...)"."""
        notes = list(self.transfer.notes) if self.transfer is not None else []
        if self.fit is not None:
            notes.append(self.fit.found_text())
        if self.automatic:
            notes.append("the default for 2D instances on one channel; init scratch to train new")
        return self.ref + (f" ({'; '.join(notes)})" if notes else "")


def load_init(ref: str | os.PathLike[str]) -> InitModel:
    """Load the model a training starts from (every check of a model folder).

    Parameters
    ----------
    ref
        ``builtin:NAME`` or a model folder.

    Raises
    ------
    ValueError
        For an unknown built-in name (the message lists the available ones) and
        any problem with the folder (the message names the file).
    """
    from .safety import WEIGHTS_FILE
    from .store import load_model, sha256_hex

    model = load_model(ref, device="cpu")
    assert model.path is not None
    digest = sha256_hex(Path(model.path, WEIGHTS_FILE).read_bytes())
    return InitModel(ref=os.fspath(ref), model=model, weights_sha256=digest)


@dataclass(frozen=True)
class StartFit:
    """How a start model segments the objects the user labeled (:func:`start_fit`)."""

    found: int  # labeled objects matched at IoU >= 0.5
    objects: int  # labeled objects looked at
    noun: str  # "outlined objects", "objects"

    @property
    def fits(self) -> bool:
        return self.objects > 0 and self.found >= FIT_RECALL * self.objects

    def found_text(self) -> str:
        """E.g. "finds 1 of your 6 outlined objects"."""
        return f"finds {self.found} of your {self.objects} {self.noun}"

    def describe(self, ref: str) -> str:
        """E.g. "builtin:nuclei finds 1 of your 6 outlined objects: starting from scratch"."""
        what = "starting from it" if self.fits else "starting from scratch"
        return f"{ref} {self.found_text()}: {what}"

    def record(self) -> dict[str, Any]:
        return {"found": self.found, "objects": self.objects, "fits": self.fits}


def start_fit(
    model: Model, images: list, label_images: list, kind: str, device: Any = "cpu"
) -> StartFit:
    """Segment the labeled images with ``model`` and count the labeled objects it finds.

    Parameters
    ----------
    model
        The candidate start model (instances).
    images
        Normalised ``(C, *spatial)`` images of the training set (2D samples).
    label_images
        Their labels as given (``instances`` or ``sparse-instances``).
    kind
        The labels kind.
    device
        Where to run the model (the training's device).

    Images without labeled objects are skipped; at most :data:`FIT_PIXELS` pixels
    are segmented (the images with most objects first).
    """
    from .calibrate import truth_from_labels
    from .inference import predict
    from .metrics import match_instances

    truths = [truth_from_labels(lab, kind) for lab in label_images]
    counts = [len(np.unique(t.objects)) - 1 for t in truths]
    found = seen = pixels = 0
    for i in sorted(range(len(truths)), key=lambda j: -counts[j]):
        if counts[i] <= 0 or (seen and pixels + truths[i].objects.size > FIT_PIXELS):
            continue
        pred = predict(model, images[i], instances=True, axes="CYX", device=device)
        found += match_instances(truths[i].objects, pred, 0.5)["tp"]
        seen += counts[i]
        pixels += truths[i].objects.size
    noun = "outlined objects" if kind == "sparse-instances" else "objects"
    return StartFit(found=int(found), objects=int(seen), noun=noun)

"""One training as the user asked for it: :class:`TrainRequest`, and its checks.

The CLI (``napari-unet train``), the Train widget, the Python API
(:func:`napari_unet.train` / :func:`~napari_unet.training.train_iter`) and the
child-process job all describe a training with one :class:`TrainRequest` and check it
with one :meth:`TrainRequest.check` before any work starts (no data is read, no
network is built).  Its messages name each value where the user gave it: a flag of the
CLI (``--init builtin:nuclei``), a field of the widget (``'start from builtin:nuclei'``)
or a keyword of the API (``init='builtin:nuclei'``), by :attr:`TrainRequest.where`.

No torch at import; :meth:`TrainRequest.check` imports it only to ask whether a
``cuda`` or ``mps`` device that was named is there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CONFIG_FILE, DEFAULT_TIME_BUDGET, TileConfig, TrainConfig
from .init import ARCHITECTURE, AUTO, SCRATCH
from .inputs import Names
from .writer import refuse_busy

if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelSpec

CONFIG_OVERRIDES = ("steps", "time_budget", "recipe", "patch", "batch_size")
"""TrainConfig fields that are also keywords of the API (they override ``config``)."""

PLACES: dict[str, dict[str, str]] = {
    "api": {
        "out": "out={}",
        "resume": "resume=True",
        "init": "init={!r}",
        "model": "model=",
        "device": "device={!r}",
        "labels_kind": "labels_kind={!r}",
        "spacing": "spacing={!r}",
        "one_of": "give one of them",
    },
    "cli": {
        "out": "--out {}",
        "resume": "--resume",
        "init": "--init {}",
        "model": "--model",
        "device": "--device {}",
        "labels_kind": "--labels-kind {}",
        "spacing": "--voxel-size {}",
        "one_of": "give one of them",
    },
    "widget": {
        "out": "the model folder {}",
        "resume": "'continue training'",
        "init": "'start from {}'",
        "model": "the model of this session",
        "device": "device {}",
        "labels_kind": "labels kind {}",
        "spacing": "the image layer's scale {}",
        "one_of": "untick one of them",
    },
}
"""How messages name a value, by :attr:`TrainRequest.where`."""


@dataclass(frozen=True)
class TrainRequest:
    """Everything one training needs besides the data.

    Attributes
    ----------
    labels_kind
        ``"sparse"``, ``"semantic"``, ``"instances"`` or ``"sparse-instances"``; None: the
        resumed model's kind, ``"sparse"`` for a new model.
    class_names
        Names of the sparse classes of a new model (None: numbered).
    config
        The training recipe's settings (:class:`~napari_unet.config.TrainConfig`);
        without a step or time budget, training runs ``DEFAULT_TIME_BUDGET`` seconds.
    spatial_dims, width, depth, padding, batch_norm
        The architecture of a new network; None: the default, or the start model's.
    spacing
        The voxel size of the volumes (z, y, x, one unit), for a 3D network: volumes are
        resized along z to near-isotropic voxels to train, and prediction does the same
        (:func:`napari_unet.zoom.z_scale_for`); None: as they are.  Ignored in 2D.
    device
        ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or ``"mps"``.
    out
        The model folder to write (None: the model stays in memory).
    resume
        Continue the model in ``out`` (weights, optimizer state, step count).
    init
        What a new model starts from: ``"auto"``, ``"scratch"`` / None, ``builtin:NAME``
        or a model folder (:mod:`napari_unet.init`).
    replace_worse
        Keep the new model in ``out`` even when it validates worse than the one it
        replaces (:mod:`napari_unet.guard`).
    refuse_existing
        Refuse an ``out`` that already holds a model unless ``resume`` (the CLI and the
        widget); the API replaces it behind the regression guard.
    precision, tiling, report_every
        See :func:`~napari_unet.training.train_iter`.
    names
        How the training's own errors name the images, labels and model.
    where
        ``"api"``, ``"cli"`` or ``"widget"``: how messages name the values (:data:`PLACES`).
    """

    labels_kind: str | None = None
    class_names: tuple[str, ...] | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    spatial_dims: int | None = None
    width: int | None = None
    depth: int | None = None
    padding: str | None = None
    batch_norm: bool | None = None
    spacing: tuple[float, float, float] | None = None
    device: Any = "auto"
    out: str | None = None
    resume: bool = False
    init: str | None = AUTO
    replace_worse: bool = False
    refuse_existing: bool = False
    precision: str = "auto"
    tiling: TileConfig | None = None
    report_every: int | None = None
    names: Names | None = None
    where: str = "api"

    def __post_init__(self) -> None:
        if self.where not in PLACES:
            raise ValueError(f"where must be one of {', '.join(PLACES)}, got {self.where!r}")
        if self.out is not None:
            object.__setattr__(self, "out", os.fspath(Path(self.out).expanduser()))
        if self.init is not None:
            object.__setattr__(self, "init", os.fspath(self.init))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
        spacing = check_spacing(self.spacing, self.place("spacing", self.spacing))
        object.__setattr__(self, "spacing", spacing)
        if self.config.steps is None and self.config.time_budget is None:
            object.__setattr__(
                self, "config", replace(self.config, time_budget=DEFAULT_TIME_BUDGET)
            )

    @classmethod
    def from_keywords(cls, config: TrainConfig | None = None, **keywords: Any) -> TrainRequest:
        """A request from the API's keywords: :data:`CONFIG_OVERRIDES` that are not None
        replace those of ``config``, the others are the request's fields."""
        overrides = {k: keywords.pop(k) for k in CONFIG_OVERRIDES if k in keywords}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(keywords) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown training argument(s): {', '.join(unknown)}")
        return cls(config=replace(config or TrainConfig(), **overrides), **keywords)

    # ------------------------------------------------------------------ views

    @property
    def out_path(self) -> Path | None:
        return None if self.out is None else Path(self.out)

    @property
    def architecture(self) -> dict[str, Any]:
        """The architecture asked for, by :data:`ARCHITECTURE` key (None: not given)."""
        return {key: getattr(self, key) for key in ARCHITECTURE}

    @property
    def starts_from_model(self) -> bool:
        """``init`` names a model to start from (not "auto", not scratch)."""
        return self.init not in (None, AUTO, SCRATCH)

    def place(self, key: str, value: Any = None) -> str:
        """How messages name the value ``key`` (e.g. ``--init builtin:nuclei``)."""
        return PLACES[self.where][key].format(value)

    # ------------------------------------------------------------------ checks

    def check(self, continues_model: bool = False, writes: bool = True) -> ModelSpec | None:
        """The checks before any work; raises a ValueError naming the value and the place.

        ``continues_model``: the training continues a model in memory (``model=``), which
        cannot start from another one.  ``writes``: this process writes ``out`` (False: a
        data-parallel rank other than 0); an ``out`` refused while another training writes
        it is then named as busy, with its writer (:class:`~napari_unet.writer.FolderBusy`),
        not as "already holds a model".  Returns the configuration of the model in ``out``
        that ``resume`` continues (None without ``resume``).
        """
        out = self.out_path
        if out is not None:
            check_output_folder(out, self.place("out", out), "train into")
        if self.starts_from_model and (self.resume or continues_model):
            other = self.place("resume") if self.resume else self.place("model")
            raise ValueError(
                f"{self.place('init', self.init)} starts a new model from another one; it "
                f"cannot be combined with {other}: {self.place('one_of')}"
            )
        try:
            spec = self._check_out(out, continues_model)
        except ValueError:
            if writes:
                refuse_busy(out)
            raise
        if self.starts_from_model:
            self._check_init()
        check_device(self.device, self.place("device", self.device))
        return spec

    def _check_out(self, out: Path | None, continues_model: bool) -> ModelSpec | None:
        """``out`` against ``resume``: the model to continue is there, or none is in the way."""
        holds_model = out is not None and (out / CONFIG_FILE).exists()
        if self.resume:
            if out is None:
                raise ValueError(
                    f"{self.place('resume')} needs the model folder to continue "
                    f"({self.place('out', 'FOLDER')})"
                )
            if not holds_model:
                raise ValueError(
                    f"{self.place('resume')}: {out} holds no model to resume "
                    f"({CONFIG_FILE} missing)"
                )
            from .safety import read_config

            spec = read_config(out)
            if self.labels_kind is not None and self.labels_kind != spec.labels.kind:
                raise ValueError(
                    f"{self.place('labels_kind', self.labels_kind)}: the model in {out} was "
                    f"trained on {spec.labels.kind} labels"
                )
            return spec
        if holds_model and self.refuse_existing:
            raise ValueError(
                f"{self.place('out', out)} already holds a model: continue it with "
                f"{self.place('resume')}, or choose another folder"
            )
        return None

    def _check_init(self) -> None:
        """The start model: its folder's checks (unknown built-in names listed), and the
        architecture asked for against its own."""
        from .init import init_architecture
        from .safety import check_model_folder

        where = self.place("init", self.init)
        try:
            spec = check_model_folder(self.init)
            init_architecture(spec.model, self.architecture, self.init)
        except ValueError as exc:
            text = str(exc)
            if text.startswith(str(self.init)):  # "MODEL: ..." -> "--init MODEL: ..."
                text = where + text[len(str(self.init)) :]
            elif where not in text:
                text = f"{where}: {text}"
            raise ValueError(text) from None


def check_output_folder(path: Path, where: str, what: str = "write into") -> None:
    """Refuse, before any work starts, an output folder that cannot be created or written.

    ``path`` may be an existing folder or not exist yet; its nearest existing ancestor
    must be a folder this process may write to.  (Run as root, ``os.access`` says yes
    to every folder: a path below a regular file is what fails for every user.)
    ``where`` names it in messages (``--out M``).  A built-in model's folder is refused
    with :class:`~napari_unet.builtin.ReadOnlyModelError` ("cannot ``what`` builtin:NAME").
    """
    from .builtin import refuse_write

    refuse_write(path, what)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{where} is a file, not a folder")
    ancestor = path
    while not ancestor.exists() and ancestor.parent != ancestor:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{where}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{where}: the folder {ancestor} is not writable")


def check_device(device: Any, where: str) -> None:
    """``device`` is spelled right and, for cuda or mps, present here.

    Spelling is checked without torch; torch is imported only to ask whether a cuda or
    mps device is there (no card is made current here: the run may be a child's).
    ``where`` names it in messages (``--device cuda:1``).
    """
    from .devices import parse_device, resolve_device

    if not isinstance(device, str):  # a torch.device: present if it was made
        return
    try:
        kind, _ = parse_device(device)
        if kind in ("cuda", "mps"):
            resolve_device(device, make_current=False)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def check_spacing(spacing: Sequence[float] | None, where: str = "spacing") -> tuple | None:
    """``spacing`` as three positive floats (z, y, x), or None; a ValueError names ``where``."""
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{where}: want the voxel size as three positive numbers, z y x")
    return values

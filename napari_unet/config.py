"""Frozen configuration dataclasses, saved as JSON inside a model folder.

Every dataclass validates its fields in ``__post_init__`` and raises a
``ValueError`` that names the field and the value received.  ``from_dict``
refuses unknown keys and wrong types, so a hand-edited or hostile
``config.json`` fails with a clear message instead of half-working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any

CONFIG_FILE = "config.json"  # inside a model folder (see store.py)
FORMAT_NAME = "napari-unet-model"
FORMAT_VERSION = 1

RECIPES = ("fast", "paper")
LABELS_KINDS = ("sparse", "semantic", "instances", "sparse-instances")
INSTANCE_KINDS = ("instances", "sparse-instances")  # trained as background/interior/boundary
PADDINGS = ("same", "valid")
MAX_CLASS_NAME = 200
MAX_LIST = 4096
MAX_SEED = 2**32 - 1
DEFAULT_TIME_BUDGET = 300.0  # seconds a training runs when given no step or time budget
MAX_STEPS = 10**9
INT64 = (-(2**63), 2**63 - 1)
MIN_SCALE, MAX_SCALE = 0.05, 4.0  # the factors a training may resize its images by
Z_SCALE_RANGE = (0.25, 4.0)
"""The factors a 3D training may resize its volumes by along z (voxel size ratios beyond
are clipped: a volume 4x finer in y and x than in z is still resized by 4 only)."""
OBJECT_WIDTH = 48.0
"""Training shrinks images whose labeled objects are wider than this (pixels, the median
equivalent diameter) to bring them to it; narrower objects are trained on as they are
(:func:`napari_unet.zoom.training_scale`)."""


def show_value(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, shortened so an error message stays one readable line.

    Parameters
    ----------
    value
        Anything; often a value read from a file that may be huge or hostile.
    limit
        At most this many characters are returned.

    Returns
    -------
    str
        ``repr(value)``, cut to ``limit - 3`` characters plus ``"..."`` when longer.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {show_value(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {show_value(value)}")
    if not (low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {show_value(value)}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {show_value(value)}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the U-Net (Ronneberger et al. 2015)."""

    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 3
    depth: int = 4
    width: int = 32
    padding: str = "same"
    batch_norm: bool = True

    def __post_init__(self) -> None:
        _check_int("spatial_dims", self.spatial_dims, 2, 3)
        _check_int("in_channels", self.in_channels, 1, 64)
        _check_int("num_classes", self.num_classes, 2, 256)
        _check_int("depth", self.depth, 1, 6)
        _check_int("width", self.width, 1, 512)
        _check_choice("padding", self.padding, PADDINGS)
        _check_bool("batch_norm", self.batch_norm)


@dataclass(frozen=True)
class NormConfig:
    """How an image is brought to what the network learned: per-image percentile
    normalisation, (x - p_low) / (p_high - p_low), and ``scale``, the factor the image
    was resized by for training (objects brought to about the same width,
    :func:`napari_unet.zoom.training_scale`), which prediction resizes by too
    (:func:`napari_unet.inference.predict_proba_iter`; 1: as the image is).

    ``z_scale`` (3D models): the factor a volume is resized by along z, and only z, to
    train and to predict (the voxel size in z over that in y and x: near-isotropic
    voxels, :func:`napari_unet.zoom.z_scale_for`; 1: as the volume is)."""

    low: float = 1.0
    high: float = 99.8
    scale: float = 1.0
    z_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_float("normalization.low", self.low, 0.0, 100.0)
        _check_float("normalization.high", self.high, 0.0, 100.0)
        _check_float("normalization.scale", self.scale, MIN_SCALE, MAX_SCALE)
        _check_float("normalization.z_scale", self.z_scale, *Z_SCALE_RANGE)
        if self.low >= self.high:
            raise ValueError(
                f"normalization.low must be < normalization.high, got {self.low} >= {self.high}"
            )


@dataclass(frozen=True)
class TileConfig:
    """Overlap-tile prediction settings (tile edge in pixels, overlap as a fraction)."""

    tile: int = 512
    overlap: float = 0.125
    batch_size: int = 8
    tile_z: int = 32

    def __post_init__(self) -> None:
        _check_int("tiling.tile", self.tile, 16, 8192)
        _check_float("tiling.overlap", self.overlap, 0.0, 0.5)
        _check_int("tiling.batch_size", self.batch_size, 1, 1024)
        _check_int("tiling.tile_z", self.tile_z, 4, 1024)


@dataclass(frozen=True)
class LabelsConfig:
    """How label images map to classes.

    ``value_map[i]`` is the label value that class ``i`` came from (``semantic``
    labels) so predictions can be written back in the original values.
    """

    kind: str = "instances"
    class_names: tuple[str, ...] = ("background", "interior", "boundary")
    value_map: tuple[int, ...] | None = None

    @property
    def instances(self) -> bool:
        """Whether the model predicts instances (``instances``, ``sparse-instances``)."""
        return self.kind in INSTANCE_KINDS

    def __post_init__(self) -> None:
        _check_choice("labels_kind", self.kind, LABELS_KINDS)
        if not isinstance(self.class_names, tuple) or not all(
            isinstance(n, str) for n in self.class_names
        ):
            raise ValueError(
                f"class_names must be a list of strings, got {show_value(self.class_names)}"
            )
        for name in self.class_names:
            if not name or len(name) > MAX_CLASS_NAME:
                raise ValueError(
                    f"class names must have 1 to {MAX_CLASS_NAME} characters, "
                    f"got {show_value(name)}"
                )
        if len(self.class_names) < 2:
            raise ValueError(f"at least 2 classes are needed, got {list(self.class_names)}")
        if self.value_map is not None:
            if len(self.value_map) != len(self.class_names):
                raise ValueError(
                    f"value_map has {len(self.value_map)} entries for "
                    f"{len(self.class_names)} classes"
                )
            if not isinstance(self.value_map, tuple):
                raise ValueError(
                    f"value_map must be a list of integers, got {show_value(self.value_map)}"
                )
            for v in self.value_map:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"value_map entries must be integers, got {show_value(v)}")
                if not INT64[0] <= v <= INT64[1]:
                    raise ValueError(f"value_map entries must fit in 64 bits, got {show_value(v)}")
            if len(set(self.value_map)) != len(self.value_map):
                raise ValueError(
                    f"value_map must not repeat values, got {show_value(self.value_map)}"
                )
        if self.kind in INSTANCE_KINDS and len(self.class_names) != 3:
            raise ValueError(
                f"instances labels train 3 classes (background, interior, boundary), "
                f"got {len(self.class_names)}"
            )


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe.  ``None`` fields are chosen from the recipe and device."""

    recipe: str = "fast"
    steps: int | None = None
    time_budget: float | None = None
    batch_size: int | None = None
    patch: int | None = None
    lr: float | None = None
    weight_decay: float = 1e-4
    border_weights: bool = False
    touch_border: float = 0.1  # touching-border band, a fraction of each object's diameter
    augment: bool = True
    augment_scale: tuple[float, float] = (0.8, 1.25)  # zoom range, sampled log-uniformly
    augment_invert: float = 0.0  # probability of inverting a patch's intensities
    augment_blur: float = 0.0  # px, largest sigma of a Gaussian blur (0: none)
    val_fraction: float = 0.1
    seed: int = 0
    checkpoint_every: float = 30.0
    distill: float = 5.0  # the start (or continued) model's answer on unlabeled pixels (0: off)
    balance: float = 0.5  # sparse-instances: painted background's share of the loss (0: by pixels)
    scale: float | None = None  # images resized by this to train (None: from the objects' width)
    compile: bool = False  # torch.compile the training step (pays on a GPU for long trainings)

    def __post_init__(self) -> None:
        _check_choice("recipe", self.recipe, RECIPES)
        if self.steps is not None:
            _check_int("steps", self.steps, 1, MAX_STEPS)
        if self.time_budget is not None:
            _check_float("time_budget", self.time_budget, 0.0, 1e7)
        if self.batch_size is not None:
            _check_int("batch_size", self.batch_size, 1, 4096)
        if self.patch is not None:
            _check_int("patch", self.patch, 16, 4096)
        if self.lr is not None:
            _check_float("lr", self.lr, 1e-8, 10.0)
        _check_bool("border_weights", self.border_weights)
        _check_bool("compile", self.compile)
        _check_float("touch_border", self.touch_border, 0.0, 0.25)
        _check_bool("augment", self.augment)
        if (
            not isinstance(self.augment_scale, tuple)
            or len(self.augment_scale) != 2
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in self.augment_scale
            )
        ):
            raise ValueError(
                "augment_scale must be two numbers [low, high], got "
                f"{show_value(self.augment_scale)}"
            )
        low, high = self.augment_scale
        if not (0.1 <= low <= 1.0 <= high <= 10.0):
            raise ValueError(
                f"augment_scale must satisfy 0.1 <= low <= 1 <= high <= 10, got [{low}, {high}]"
            )
        _check_float("augment_invert", self.augment_invert, 0.0, 1.0)
        _check_float("augment_blur", self.augment_blur, 0.0, 10.0)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_float("val_fraction", self.val_fraction, 0.0, 0.9)
        _check_int("seed", self.seed, 0, MAX_SEED)
        _check_float("checkpoint_every", self.checkpoint_every, 0.0, 1e7)
        _check_float("distill", self.distill, 0.0, 100.0)
        _check_float("balance", self.balance, 0.0, 0.95)
        if self.scale is not None:
            _check_float("scale", self.scale, MIN_SCALE, MAX_SCALE)


@dataclass(frozen=True)
class PostprocessConfig:
    """Probabilities -> instances (see :func:`napari_unet.postprocess.instances_from_probs`).

    Seeds are connected regions of interior probability above ``seed_threshold``;
    they grow by watershed over the foreground (background probability below
    ``1 - fg_threshold``); objects under ``min_size`` pixels are dropped (None: 15 in
    2D, 50 in 3D).  Training chooses them on the model's validation data
    (:mod:`napari_unet.calibrate`); model folders from before that keep these defaults.
    ``object_size`` is the median size (pixels, voxels) of the objects it was calibrated
    on: prediction zooms a 2D image whose objects are much larger or smaller to that size
    (:func:`napari_unet.zoom.zoom_steps`); None (older models): never.  ``split``
    > 0 cuts seeds shaped like touching blobs at their waists, the waist's depth a
    fraction of the seed's radius (:func:`napari_unet.postprocess.split_seeds`); 0: never.
    """

    seed_threshold: float = 0.8
    fg_threshold: float = 0.6
    min_size: int | None = None
    object_size: float | None = None
    split: float = 0.0

    def __post_init__(self) -> None:
        _check_float("postprocess.seed_threshold", self.seed_threshold, 0.0, 1.0)
        _check_float("postprocess.split", self.split, 0.0, 0.95)
        _check_float("postprocess.fg_threshold", self.fg_threshold, 0.0, 1.0)
        if self.min_size is not None:
            _check_int("postprocess.min_size", self.min_size, 0, 10**9)
        if self.object_size is not None:
            _check_float("postprocess.object_size", self.object_size, 0.0, 1e12)

    def at_zoom(self, zoom: float, spatial_dims: int, z_scale: float = 1.0) -> PostprocessConfig:
        """These settings for probabilities computed on the image zoomed by ``zoom`` (and a
        volume by ``z_scale`` along z) and resized back: the minimum size (pixels of the
        zoomed image) in original pixels."""
        if zoom == 1.0 and z_scale == 1.0:
            return self
        size = self.min_size_for(spatial_dims) / (zoom**spatial_dims * z_scale)
        return replace(self, min_size=int(round(size)))

    def min_size_for(self, spatial_dims: int) -> int:
        """The minimum object size in pixels (voxels) for a 2D or 3D model."""
        if self.min_size is not None:
            return self.min_size
        return 15 if spatial_dims == 2 else 50


@dataclass(frozen=True)
class ModelSpec:
    """Everything ``config.json`` holds: enough to rebuild and apply the model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    normalization: NormConfig = field(default_factory=NormConfig)
    tiling: TileConfig = field(default_factory=TileConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def __post_init__(self) -> None:
        if self.model.num_classes != len(self.labels.class_names):
            raise ValueError(
                f"model.num_classes ({self.model.num_classes}) differs from the number of "
                f"class names ({len(self.labels.class_names)})"
            )
        if self.model.spatial_dims == 3 and self.normalization.scale != 1.0:
            raise ValueError(
                f"normalization.scale must be 1 for a 3D model, got {self.normalization.scale}"
            )
        if self.model.spatial_dims == 2 and self.normalization.z_scale != 1.0:
            raise ValueError(
                f"normalization.z_scale must be 1 for a 2D model, got {self.normalization.z_scale}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        for f in dataclasses.fields(self):
            out[f.name] = _plain(dataclasses.asdict(getattr(self, f.name)))
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise ValueError(
                f"format must be {FORMAT_NAME!r}, got {show_value(data.get('format'))}"
            )
        version = data.get("version")
        if isinstance(version, bool) or version != FORMAT_VERSION:
            raise ValueError(
                f"unknown config version {show_value(version)} (this napari-unet reads version "
                f"{FORMAT_VERSION})"
            )
        known = {f.name: f for f in dataclasses.fields(cls)}
        extra = {str(k) for k in data} - set(known) - {"format", "version"}
        if extra:
            raise ValueError(
                f"unknown config sections: {show_value(', '.join(sorted(extra)), 200)}"
            )
        kwargs = {}
        types = {
            "model": ModelConfig,
            "labels": LabelsConfig,
            "normalization": NormConfig,
            "tiling": TileConfig,
            "train": TrainConfig,
            "postprocess": PostprocessConfig,
        }
        for name, sub in types.items():
            if name in data:
                kwargs[name] = dataclass_from_dict(sub, data[name], name)
        return cls(**kwargs)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dataclass_from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a JSON object, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = {str(k) for k in data} - set(fields)
    if unknown:
        raise ValueError(f"unknown keys in {where}: {show_value(', '.join(sorted(unknown)), 200)}")
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, list):
            if len(value) > MAX_LIST:
                raise ValueError(f"{where}.{key} is too long ({len(value)} entries)")
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass signature errors
        raise ValueError(f"{where}: {exc}") from None

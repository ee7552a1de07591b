"""The progress protocol: small typed events yielded by long-running generators.

Training (:func:`napari_unet.training.train_iter`) and prediction yield these;
scripts drain them with :func:`drain`, widgets turn them
into plots, progress bars and layers.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrainStarted:
    """Training is about to take its first step."""

    device: str  # e.g. "cuda: NVIDIA H100" or "cpu, 2 threads"
    n_train: int
    n_val: int
    start_step: int
    max_steps: int | None
    time_budget: float | None
    settings: dict[str, Any] = field(default_factory=dict)
    validation: str = ""  # what validation scores are measured on
    init: str = ""  # the model training starts from ("builtin:nuclei (...)"); "" from scratch
    start_note: str = ""  # why the automatic start was not taken ("builtin:nuclei finds ...")

    def describe(self) -> str:
        """The settings in one line for people (the CLI prints it, the Train widget shows it)."""
        s = self.settings
        scale = s.get("scale", 1.0)
        resized = f", images resized to {scale:g}x (prediction does the same)" if scale != 1 else ""
        z_scale = s.get("z_scale", 1.0)
        if z_scale != 1:
            resized += (
                f", volumes resized to {z_scale:g}x along z for near-isotropic voxels "
                "(prediction does the same)"
            )
        processes = s.get("processes", 1)
        batch = f"{s.get('batch_size')}"
        if processes > 1:
            batch += f" ({processes} processes x {s.get('batch_size', 0) // processes})"
        return (
            f"recipe {s.get('recipe')}, width {s.get('width')}, depth {s.get('depth')}, "
            f"patch {s.get('patch')}, batch {batch}, lr {s.get('lr', 0):g}{resized}; "
            f"{self.n_train} training / {self.n_val} validation images"
        )


@dataclass(frozen=True)
class TrainStep:
    """One optimisation step finished."""

    step: int
    loss: float
    lr: float
    images_per_s: float
    elapsed: float

    def describe(self) -> str:
        """One progress line (the CLI prints one every few seconds, the widget each step)."""
        return (
            f"step {self.step}  loss {self.loss:.4f}  {self.images_per_s:.1f} patches/s  "
            f"{self.elapsed:.0f} s"
        )


@dataclass(frozen=True)
class Validated:
    """The model was scored on the validation crops."""

    step: int
    loss: float
    iou: float  # mean intersection over union of the classes, on labeled pixels
    elapsed: float


@dataclass(frozen=True)
class Calibrated:
    """Instance post-processing chosen for the model at the end of a training."""

    step: int
    seed_threshold: float
    fg_threshold: float
    min_size: int
    ap: float | None  # AP@0.5 with these settings on held-out data (None: none held out)
    start_ap: float | None  # AP@0.5 with the settings it started from
    measured_on: str  # "12 held-out images", "2 held-out outlined objects of 6 + ..."
    spatial_dims: int = 2
    split: float = 0.0  # waist depth at which seeds are cut (0: never)
    searched: bool = True  # False: too few held-out objects to choose; the start was kept
    objects: int = 0  # held-out objects scored
    background_pixels: int = 0  # held-out (painted) background: every object there is false
    search: str = "all"  # "background": only the minimum size and foreground threshold;
    # "overlap": only the foreground threshold, on how well the held-out objects are outlined
    overlap: tuple[float, float] | None = None  # their mean best IoU: start, chosen

    def describe(self) -> str:
        """One line for people (the CLI prints it, the Train widget shows it)."""
        unit = "px" if self.spatial_dims == 2 else "voxels"
        settings = (
            f"instances: seed threshold {self.seed_threshold:g}, foreground threshold "
            f"{self.fg_threshold:g}, minimum size {self.min_size} {unit}"
        )
        if self.split:
            settings += f", touching seeds cut at waists of {self.split:g} x their radius"
        if self.ap is None or self.start_ap is None:
            return (
                f"{settings} (minimum size from the labeled objects' sizes; thresholds not "
                f"searched: validation is on {self.measured_on})"
            )
        if not self.searched:
            return (
                f"{settings} (thresholds kept, minimum size from the labeled objects' sizes: "
                f"{self.objects} held-out objects ({self.measured_on}) are too few to choose "
                f"them; AP@0.5 {self.ap:.3f} on them)"
            )
        outlined = ""
        if self.overlap and self.overlap[0] != self.overlap[1]:
            outlined = f", their mean IoU {self.overlap[0]:.2f} -> {self.overlap[1]:.2f}"
        if self.search == "overlap":
            return (
                f"{settings} (foreground threshold chosen on how well the held-out objects "
                f"({self.measured_on}) are outlined, AP@0.5 {self.start_ap:.3f} -> "
                f"{self.ap:.3f}{outlined}; seed threshold and waist cut kept, minimum size "
                f"from the labeled objects' sizes: {self.objects} held-out objects are too "
                "few to choose them)"
            )
        if self.search == "background":
            return (
                f"{settings} (minimum size and foreground threshold chosen on the false "
                f"objects on the held-out background ({self.measured_on}), AP@0.5 "
                f"{self.start_ap:.3f} -> {self.ap:.3f}{outlined}; seed threshold and waist "
                f"cut kept: {self.objects} held-out objects are too few to choose them)"
            )
        return (
            f"{settings}, chosen on {self.measured_on} "
            f"(AP@0.5 {self.start_ap:.3f} -> {self.ap:.3f})"
        )


@dataclass(frozen=True)
class CheckpointSaved:
    """The model folder (and resume state) were written."""

    step: int
    path: str


@dataclass(frozen=True)
class Finished:
    """Training ended; ``reason`` is "steps", "time" or "cancelled"; ``path`` is where the
    model was saved and ``message`` explains anything the user should know (e.g. the
    regression guard kept the previous model)."""

    step: int
    reason: str
    elapsed: float
    path: str | None
    message: str = ""
    start_model: str | None = None  # the model it started from, when that one did better
    phases: dict[str, float] = field(default_factory=dict)  # seconds by phase (prepare, ...)

    def describe_time(self) -> str:
        """Where the wall time went, in one line ("" when not measured)."""
        if not self.phases:
            return ""
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items() if v >= 0.05)
        return f"time: {parts} ({sum(self.phases.values()):.1f} s in all)"


@dataclass(frozen=True)
class Adjusted:
    """Training changed a setting to go on (e.g. halved the batch after running out of
    GPU memory); ``message`` says what and why, for the user."""

    step: int
    setting: str
    old: int
    new: int
    message: str


@dataclass(frozen=True)
class Preview:
    """The current model's class probabilities on the preview image."""

    step: int
    probabilities: Any  # numpy array (num_classes, *spatial)
    labels: Any  # class labels in the user's label values, (*spatial)
    key: Any = None  # whatever the caller attached to the preview request


@dataclass(frozen=True)
class TileDone:
    """Tile ``i`` of ``n`` of the current image was predicted."""

    i: int
    n: int


@dataclass(frozen=True)
class ChunkDone:
    """Chunk ``i`` of ``n`` of the current input was predicted (a block of a plane
    or volume when streaming, else a slice of a stack)."""

    i: int
    n: int


def drain(gen: Generator[Any, None, Any], callback: Callable[[Any], None] | None = None) -> Any:
    """Run an event generator to the end (calling ``callback`` on each event); return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


@dataclass(frozen=True)
class ItemDone:
    """Input ``i`` of ``n`` of a batch was predicted and written to ``output`` (or skipped,
    or failed with ``reason``)."""

    i: int
    n: int
    name: str
    output: str
    seconds: float
    objects: int | None = None
    status: str = "done"  # "done", "skipped" (an earlier run finished it) or "failed"
    reason: str = ""
    summary: dict[str, Any] | None = None  # the input's row of summary.csv

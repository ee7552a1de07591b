"""A training's wall time: where it goes, and when the steps must end.

``--time-budget`` (the Train widget's "train for") counts from the moment the training
was asked for to the saved, calibrated model: preparing the data, the steps, the final
validation, the calibration and the save all fit inside it (issue 22).  The steps end
early enough for the rest (:meth:`WallBudget.deadline`), from what the run measured so
far: how long a validation and a save took, and how many pixels the calibration will
predict.  Every phase is timed (:meth:`WallBudget.timed`); the training's share is what
the others leave (:meth:`WallBudget.close`).  Measured on this repository's CPU:
``docs/benchmarks.md``, "Wall-time budget".
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

PHASES = ("prepare", "compile", "train", "validate", "preview", "calibrate", "save")
"""Where a training's wall time goes (training.json, :attr:`Finished.phases`)."""
SEARCH_SHARE = 0.1
"""Of a time budget, what the instance settings' search may take at most (at least 1 s)."""
PREDICT_PER_VALIDATION = 2.0
"""Predicting a pixel for calibration (tiles, overlap, normalisation) costs about this
many times what validating one costs."""


@dataclass
class Timing:
    """The seconds a :meth:`WallBudget.timed` block took (set when it ends)."""

    seconds: float = 0.0


@dataclass
class WallBudget:
    """The time and step budget of one training session.

    ``time_budget`` (seconds) and ``steps`` may each be None; ``began`` is the clock's
    value the time budget counts from.  :meth:`start` opens the loop; the run tells the
    budget what it measured (:attr:`val_seconds`, :attr:`save_seconds`) and what the
    finish will do (:attr:`validations`, :attr:`calibration_pixels`,
    :attr:`validation_pixels`).
    """

    time_budget: float | None
    steps: int | None
    clock: Callable[[], float] = time.perf_counter
    began: float = 0.0
    t0: float = 0.0  # when the loop started
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    val_seconds: float = 0.0  # the last validation took this long
    save_seconds: float = 0.0  # and the last save
    validations: int = 1  # validations the finish runs (the start and previous models too)
    calibration_pixels: int = 0  # pixels the calibration predicts
    validation_pixels: int = 0  # pixels a validation scores

    def start(self) -> float:
        """The loop starts now: what came before was "prepare".  Returns the clock."""
        self.t0 = self.clock()
        self.phases["prepare"] = self.t0 - self.began
        return self.t0

    def progress(self, steps_done: int, now: float) -> float:
        """Fraction of the step or time budget used (the larger of the two)."""
        p = 0.0
        if self.steps:
            p = max(p, steps_done / self.steps)
        if self.time_budget:
            p = max(p, (now - self.t0) / max(self.deadline() - self.t0, 1e-6))
        return p

    def deadline(self) -> float:
        """When the steps must end for the model to be validated, calibrated and saved
        within the time budget, counted from :attr:`began` (preparing the data included)."""
        assert self.time_budget is not None
        return self.began + self.time_budget - self.reserve()

    def reserve(self) -> float:
        """Seconds the finish is expected to take, from what was measured so far: the
        final validations, the calibration's predictions and search, the save."""
        reserve = self.validations * self.val_seconds + self.save_seconds
        if self.calibration_pixels:
            per_pixel = self.val_seconds / max(self.validation_pixels, 1)
            reserve += PREDICT_PER_VALIDATION * per_pixel * self.calibration_pixels
            reserve += self.search_seconds()
        return reserve

    def search_seconds(self) -> float:
        """At most this long for the instance settings' search."""
        return max(1.0, SEARCH_SHARE * (self.time_budget or 0.0))

    def search_deadline(self) -> float | None:
        """When the instance settings' search must stop for the save to end in time (a
        quarter of its share at least); None without a time budget."""
        if not self.time_budget:
            return None
        end = self.began + self.time_budget - self.save_seconds
        return max(end, self.clock() + self.search_seconds() / 4)

    @contextlib.contextmanager
    def timed(self, phase: str) -> Generator[Timing, None, None]:
        """Adds the time of the ``with`` block to :attr:`phases` [``phase``]; the
        :class:`Timing` it gives holds the block's seconds once it ends."""
        timing, start = Timing(), self.clock()
        try:
            yield timing
        finally:
            timing.seconds = self.clock() - start
            self.phases[phase] += timing.seconds

    def close(self) -> tuple[dict[str, float], float]:
        """Where the wall time went since :attr:`began` (the training is the rest):
        the phases rounded to 10 ms, and the total."""
        total = self.clock() - self.began
        others = sum(v for k, v in self.phases.items() if k != "train")
        self.phases["train"] = max(0.0, total - others)
        return {k: round(v, 2) for k, v in self.phases.items()}, total

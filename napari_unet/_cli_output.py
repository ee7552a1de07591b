"""What the ``napari-unet`` command prints while it works: a training's settings,
progress and end (:class:`TrainReport`), prediction's progress bar (:class:`Progress`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .events import (
    Calibrated,
    ChunkDone,
    Finished,
    TrainStarted,
    TrainStep,
    Validated,
)


def say(args: argparse.Namespace, text: str) -> None:
    """Print ``text`` unless ``--quiet``."""
    if not args.quiet:
        print(text, flush=True)


class TrainReport:
    """What ``train`` prints: the settings, a line every 5 s, the end."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.finished: Finished | None = None
        self.last_print = 0.0
        self.last_val = ""

    def __call__(self, event: Any) -> None:
        match event:
            case TrainStarted():
                if event.start_note:
                    self.say(event.start_note)
                if event.init:
                    self.say(f"starting from {event.init}")
                self.say(f"device {event.device}; {event.describe()}")
                if event.validation:
                    self.say(f"validation IoU is measured on {event.validation}")
            case Validated():
                self.last_val = f", validation IoU {event.iou:.3f}"
            case Calibrated():
                self.say(event.describe())
            case TrainStep() if time.monotonic() - self.last_print >= 5:
                self.last_print = time.monotonic()
                self.say(f"{event.describe()}{self.last_val}")
            case Finished():
                self.finished = event
                self.say(
                    f"finished after {event.step} steps ({event.reason}){self.last_val}; "
                    f"model saved to {event.path or self.out}"
                )
                if event.message:
                    self.say(event.message)
                if event.phases:
                    self.say(event.describe_time())

    def say(self, text: str) -> None:
        say(self.args, text)


class Progress:
    """A progress bar on stderr (inputs done; chunk and tile of the current one) when it
    is a terminal, with the per-input lines printed above it; just the lines otherwise."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        from tqdm import tqdm

        self.args = args
        self.bar = tqdm(
            total=total,
            unit="input",
            desc="predict",
            file=sys.stderr,
            disable=True if args.quiet else None,  # None: only on a terminal
            dynamic_ncols=True,
        )
        self.chunk = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def detail(self, event: Any) -> None:
        if self.bar.disable:
            return
        if isinstance(event, ChunkDone):
            self.chunk = f"chunk {event.i}/{event.n}, " if event.n > 1 else ""
            tile = ""
        else:
            tile = f"tile {event.i}/{event.n}"
        self.bar.set_postfix_str(self.chunk + tile, refresh=False)
        self.bar.update(0)  # redraws at most every 0.1 s

    def input_done(self) -> None:
        self.chunk = ""
        self.bar.set_postfix_str("", refresh=False)
        self.bar.update(1)

    def say(self, text: str) -> None:
        if self.args.quiet:
            return
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text, file=sys.stdout)

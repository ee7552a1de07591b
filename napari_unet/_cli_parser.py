"""The ``napari-unet`` command line's flags: every sub-command, its help and the checks
argparse does on each value (a bad value is refused in one line naming it, exit 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from . import __version__
from .config import (
    LABELS_KINDS,
    MAX_SCALE,
    MIN_SCALE,
    OBJECT_WIDTH,
    PADDINGS,
    RECIPES,
)
from .devices import PRECISIONS


def _number(
    convert: Callable[[str], float], what: str, check: Callable[[float], bool], rule: str
) -> Callable[[str], float]:
    """An argparse type: ``convert(text)``, refused (naming the value) unless ``check``."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return parse


_positive_float = _number(float, "a number of seconds", lambda v: math.isfinite(v) and v > 0, "> 0")
_positive_int = _number(int, "a whole number", lambda v: v >= 1, ">= 1")
_non_negative_int = _number(int, "a whole number", lambda v: v >= 0, ">= 0")
_fraction = _number(float, "a probability", lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
_learning_rate = _number(float, "a learning rate", lambda v: 1e-8 <= v <= 10.0, "in [1e-8, 10]")
_distill_weight = _number(float, "a weight", lambda v: 0.0 <= v <= 100.0, "in [0, 100]")
_share = _number(float, "a share", lambda v: 0.0 <= v <= 0.95, "in [0, 0.95]")
_train_scale = _number(
    float, "a factor", lambda v: MIN_SCALE <= v <= MAX_SCALE, f"in [{MIN_SCALE}, {MAX_SCALE}]"
)
_zoom_factor = _number(float, "'auto' or a number", lambda v: math.isfinite(v) and v > 0, "> 0")


def _zoom(text: str) -> float | str:
    """--zoom: ``auto`` or a positive factor."""
    return "auto" if text.strip().lower() == "auto" else _zoom_factor(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="napari-unet", description="Train and apply U-Nets to microscopy images.")
    p.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_train(sub.add_parser("train", help="train a model from images and label images"))
    _add_predict(sub.add_parser("predict", help="apply a model to images"))
    e = sub.add_parser("evaluate", help="score predictions against ground truth")
    e.add_argument("--pred", required=True, help="folder of predicted instance/label images")
    e.add_argument("--truth", required=True, help="folder of ground-truth label images")
    e.add_argument("--out", help="CSV or JSON file (default: evaluation.csv and .json in --pred)")
    x = sub.add_parser("export", help="write a model as a bioimage.io package (.zip)")
    x.add_argument("model", help="model folder or builtin:NAME")
    x.add_argument("--out", required=True, help="the package to write (a new .zip file)")
    x.add_argument(
        "--image",
        help="an image the model takes, for the test tensors and the cover (a stack: its "
        "middle plane; default for 2D grey models: a sample nuclei image)",
    )
    x.add_argument("--name", help="the package's name (5-128 letters, digits, spaces, _+-())")
    x.add_argument(
        "--author", action="append", help="an author's name (repeat for several; no GitHub ids)"
    )
    x.add_argument("--license", default="CC-BY-4.0", help="an SPDX licence id (CC-BY-4.0)")
    return p


def _add_train(t: argparse.ArgumentParser) -> None:
    """``train``'s flags: the data, the budget and the device, then the rest."""
    t.add_argument("--images", required=True, nargs="+", help="folder, glob or files")
    t.add_argument("--labels", required=True, nargs="+", help="folder, glob or files")
    t.add_argument("--out", required=True, help="model folder to write")
    t.add_argument(
        "--labels-kind",
        choices=LABELS_KINDS,
        help="sparse (default; with --resume: the model's kind)",
    )
    t.add_argument(
        "--config",
        metavar="FILE.json",
        help="a recipe file of settings (see resources/recipes/); the flags override it",
    )
    t.add_argument("--recipe", choices=RECIPES, help="fast (default) or paper")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="wall time from launch to the saved, calibrated model: reading the images, "
        "training, validating and calibrating fit in it (default 300 s when --steps is not given)",
    )
    budget.add_argument("--steps", type=_positive_int, metavar="N")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    t.add_argument(
        "--devices",
        type=_positive_int,
        metavar="N",
        help="data-parallel training in N processes on this machine, one per GPU (or N CPU "
        "processes with --device cpu), started by torch's launcher; --batch-size is the "
        "global batch. Under torchrun leave it out: the processes are torchrun's",
    )
    _add_network_flags(t)
    _add_start_flags(t)


def _add_network_flags(t: argparse.ArgumentParser) -> None:
    """``train``'s flags for the network and its optimisation."""
    t.add_argument(
        "--width",
        type=_positive_int,
        help="features of the first level (default: 8 on the CPU, 32 on a GPU)",
    )
    t.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        dest="spatial_dims",
        help="2: a 2D network, stacks are trained and predicted slice by slice (default); "
        "3: a 3D network on volumes (ZYX), the Train widget's '3D' (default: the start "
        "model's with --init)",
    )
    t.add_argument(
        "--voxel-size",
        type=_positive_float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="with --dims 3: the voxel size, one unit (default: read from the images' "
        "ImageJ/OME-TIFF or OME-Zarr metadata); where z is coarser or finer than y and x, "
        "volumes are resized along z to near-isotropic voxels to train, and prediction "
        "does the same",
    )
    t.add_argument("--depth", type=_positive_int, help="resolution levels (default 4)")
    t.add_argument("--patch", type=_positive_int, help="training patch edge in pixels")
    t.add_argument(
        "--scale",
        type=_train_scale,
        metavar="FACTOR",
        help="resize the images by FACTOR to train; prediction resizes by it too (default: "
        f"objects wider than {OBJECT_WIDTH:g} px, by the median outlined one, are shrunk to "
        "that width; others kept as they are)",
    )
    t.add_argument("--batch-size", type=_positive_int)
    t.add_argument(
        "--lr",
        type=_learning_rate,
        help="peak learning rate (default per recipe and device: 3e-3 for the fast recipe on "
        "the CPU)",
    )
    t.add_argument(
        "--distill",
        type=_distill_weight,
        metavar="WEIGHT",
        help="when starting from a model with the same classes (--init, or the automatic "
        "start), or continuing one (--resume): weight of its answer on the pixels you did not "
        "label, so fine-tuning keeps what it knew (default 5; 0 turns it off)",
    )
    t.add_argument(
        "--balance",
        type=_share,
        metavar="SHARE",
        help="sparse-instances labels: the share of the loss the painted background takes, "
        "the outlined objects the rest, however many pixels each has "
        "(default 0.5: equal halves; 0: every labeled pixel weighs the same)",
    )
    t.add_argument("--padding", choices=PADDINGS, help="same (default) or valid")
    t.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (default: bf16/fp16 on CUDA with the fast recipe), fp32, bf16, fp16",
    )
    t.add_argument(
        "--border-weights",
        action="store_const",
        const=True,
        help="the paper's border weight map (instances labels only)",
    )
    t.add_argument(
        "--compile",
        action="store_const",
        const=True,
        help="compile the training step with torch.compile: faster steps on a GPU, after "
        "a compilation of tens of seconds (counted in the time budget, reported as the "
        "'compile' phase); for long trainings",
    )
    t.add_argument("--seed", type=int, help="random seed (default 0)")


def _add_start_flags(t: argparse.ArgumentParser) -> None:
    """``train``'s flags for what the model starts from and what it may replace."""
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue training the model in --out (weights and optimizer state)",
    )
    t.add_argument(
        "--init",
        metavar="MODEL",
        default="auto",
        help="what a new model starts from: auto (default: builtin:nuclei for 2D instance "
        "labels on one channel with its network, width 16 / depth 4, taken on the CPU "
        "unless --width says otherwise, where it finds the labeled objects; else scratch), "
        "scratch, or a model's weights: builtin:NAME or a "
        "model folder; its architecture is used, the last layer is new when the classes "
        "differ (not with --resume)",
    )
    t.add_argument(
        "--replace-worse",
        action="store_true",
        help="with --resume: keep the new model even if its validation IoU is lower (the "
        "previous one is always kept in <out>.previous)",
    )


def _add_predict(q: argparse.ArgumentParser) -> None:
    q.add_argument("model", help="model folder, or builtin:NAME (builtin:nuclei)")
    q.add_argument("inputs", nargs="+", help="files, folders or globs")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--instances", action="store_true", help="write instance ids")
    q.add_argument("--probabilities", action="store_true", help="also write <stem>_prob.tif")
    q.add_argument("--format", choices=["tif", "zarr"], default="tif")
    q.add_argument("--device", default="auto")
    q.add_argument("--axes", help="axes of the inputs, e.g. YX, ZYX, CYX (default: guessed)")
    q.add_argument("--tile", type=_positive_int, help="tile edge in pixels")
    q.add_argument("--batch-size", type=_positive_int, help="tiles per batch")
    q.add_argument(
        "--seed-threshold",
        type=_fraction,
        metavar="P",
        help="instances: interior probability of a seed (default: the model's, chosen when it "
        "was trained)",
    )
    q.add_argument(
        "--fg-threshold",
        type=_fraction,
        metavar="P",
        help="instances: foreground probability an object grows over (default: the model's)",
    )
    q.add_argument(
        "--min-size",
        type=_non_negative_int,
        metavar="PIXELS",
        help="instances: smallest object kept, in pixels (voxels) (default: the model's)",
    )
    q.add_argument(
        "--split",
        type=_number(float, "a number", lambda v: 0.0 <= v <= 0.95, "in [0, 0.95]"),
        metavar="DEPTH",
        help="instances: cut seeds shaped like touching blobs where their waist is narrower "
        "by DEPTH x their radius; 0: never (default: the model's, chosen when it was trained)",
    )
    q.add_argument(
        "--zoom",
        type=_zoom,
        default="auto",
        metavar="auto|FACTOR",
        help="resize 2D images by FACTOR times the model's own scale (the one it was trained "
        "at) before the network (outputs keep the input's size); auto (default): at the "
        "model's scale, and when an instance model finds objects much larger or smaller than "
        "those it was trained on, again zoomed to their size (tif outputs)",
    )
    cluster = q.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a dask.distributed cluster, e.g. tcp://127.0.0.1:8786: one task per "
        "input, the model loaded by the workers only (this machine needs no GPU)",
    )
    cluster.add_argument(
        "--scheduler-file",
        metavar="FILE.json",
        help="the same, with the file the scheduler wrote (dask scheduler --scheduler-file)",
    )

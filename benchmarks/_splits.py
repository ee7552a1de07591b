"""Shared helpers of ``bench_generalisation.py`` and ``bench_few_labels.py``.

Splits of DSB2018 nuclei (``random``: the sha1 split of ``bench_accuracy.py``;
``large``, ``dense``, ``hires``: whole image-size groups held out, standing for
experiments or magnifications the model never saw), linking a split into
``images/`` + ``labels/`` folders, the CLI steps (train, predict, evaluate) and the
few-labels label builder (``few_labels``: what a user paints for ``sparse-instances``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_accuracy import DATA, cli, held_out  # noqa: E402

DSB = DATA / "dsb2018-nuclei"

# Held-out image-size groups (height, width) of DSB2018; counts and median nucleus area
# on the 557 grey images.
GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    # big nuclei: 360x360 (90 images, median 1761 px), 512x640 (13, 1118 px), 1040x1388, 256x320
    "large": ((360, 360), (512, 640), (1040, 1388), (256, 320)),
    # crowded: 520x696 (90, 631 px), 603x1272 (6, 119 px), 260x347
    "dense": ((520, 696), (603, 1272), (260, 347)),
    # 1024x1024 (16, 234 px)
    "hires": ((1024, 1024),),
    # 256x256 (334): the bulk of DSB2018, small nuclei; a third group to decide a rule on
    # when `dense` cannot (every stand-in start model saw it: scratch models only)
    "small": ((256, 256),),
}
SPLITS = ("random", *GROUPS)

# The post-processing every instance model used before it chose its own (issue 11).
FIXED_POSTPROCESS = ("--seed-threshold", "0.8", "--fg-threshold", "0.6", "--min-size", "15")


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def split(
    src: Path, name: str, within: tuple[int, int] | None = None
) -> tuple[list[str], list[str]]:
    """The training and test stems of split ``name`` of the data set in ``src``.

    ``random``: test = ``bench_accuracy.held_out`` (sha1 of the stem, 10 %); a name of
    ``GROUPS``: test = every image of those sizes.  Training = everything else.
    ``within`` keeps only the images of that (height, width), on both sides.
    """
    stems = sorted(p.stem for p in (src / "images").iterdir())
    shapes = {s: image_shape(src / "images" / f"{s}.png") for s in stems}
    if within is not None:
        stems = [s for s in stems if shapes[s] == tuple(within)]
    if name == "random":
        is_test = {s: held_out(s) for s in stems}
    elif name in GROUPS:
        is_test = {s: shapes[s] in GROUPS[name] for s in stems}
    else:
        raise ValueError(f"unknown split {name!r}: one of {', '.join(SPLITS)}")
    train = [s for s in stems if not is_test[s]]
    test = [s for s in stems if is_test[s]]
    if not train or not test:
        raise ValueError(f"split {name!r} of {src}: {len(train)} train / {len(test)} test images")
    return train, test


def cap(stems: Sequence[str], n: int | None) -> list[str]:
    """At most ``n`` of ``stems``: the first in sha1 order (the same subset on every machine)."""
    if n is None:
        return list(stems)
    return sorted(stems, key=lambda s: hashlib.sha1(s.encode()).hexdigest())[:n]


def link(src: Path, stems: Iterable[str], dst: Path, labels: bool = True) -> Path:
    """``dst/images`` (and ``dst/labels``) of symbolic links to those stems of ``src``."""
    for sub in ("images", "labels") if labels else ("images",):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for s in stems:
            os.symlink(src / sub / f"{s}.png", dst / sub / f"{s}.png")
    return dst


def train(
    folder: Path,
    out: Path,
    kind: str,
    budget: float,
    device: str,
    seed: int,
    extra: Sequence[str] = (),
    steps: int | None = None,
) -> dict:
    """``napari-unet train`` on ``folder/images`` + ``folder/labels``; steps and post-processing.

    ``steps`` trains a number of steps instead of ``budget`` seconds (comparisons that
    must not depend on what else the machine is doing).

    The post-processing is the one the model chose for itself (config.json
    ``postprocess``), as (seed threshold, foreground threshold, minimum size).
    """
    seconds = cli(
        "-q",
        "train",
        "--images",
        str(folder / "images"),
        "--labels",
        str(folder / "labels"),
        "--out",
        str(out),
        "--labels-kind",
        kind,
        *(["--steps", str(steps)] if steps else ["--time-budget", f"{budget:g}"]),
        "--device",
        device,
        "--seed",
        str(seed),
        "--init",
        "scratch",  # builtin:nuclei saw every DSB2018 image; extra's --init overrides
        *extra,
    )
    history = json.loads((out / "training.json").read_text())
    post = json.loads((out / "config.json").read_text()).get("postprocess") or {}
    compared = history["sessions"][-1].get("start_comparison") or {}
    return {
        "train_s": seconds,
        "steps": history["steps"],
        "postprocess": [post.get("seed_threshold"), post.get("fg_threshold"), post.get("min_size")],
        # the product's own verdict on held-out labels (validation IoU), when it started
        # from a model: compare it with the test score against the start model's
        "held_out_iou": [compared.get("new_iou"), compared.get("start_iou")],
        # and ranked on the held-out objects, each with its own instance settings
        "held_out_objects": compared.get("objects"),
    }


def predict_and_score(
    model: Path, test: Path, out: Path, device: str, flags: Sequence[str] = ()
) -> dict:
    """``napari-unet predict --instances`` on ``test/images`` (plus ``flags``), then ``evaluate``.

    Returns the mean AP@0.5 over the images (``ap50``, what ``evaluate`` reports), the
    mean SEG measure (``seg``), the pooled AP@0.5 = sum TP / sum (TP + FP + FN) over all
    objects (``pooled_ap50``), the object counts and the prediction time.
    """
    t0 = time.perf_counter()
    images = str(test / "images")
    cli(
        "-q",
        "predict",
        str(model),
        images,
        "--out",
        str(out),
        "--instances",
        "--device",
        device,
        *flags,
    )
    predict_s = time.perf_counter() - t0
    report = out.with_suffix(".json")
    cli("-q", "evaluate", "--pred", str(out), "--truth", str(test / "labels"), "--out", str(report))
    rows = json.loads(report.read_text())["per_image"]
    return {"predict_s": predict_s, **pooled(rows)}


def pooled(rows: Sequence[dict]) -> dict:
    """Mean and pooled AP@0.5 and object counts from ``evaluate``'s per-image rows.

    Per image AP = TP / (TP + FP + FN) with n_true = TP + FN and n_pred = TP + FP,
    so TP = AP (n_true + n_pred) / (1 + AP) (0 when both are empty).
    """
    tp = sum(round(r["ap50"] * (r["n_true"] + r["n_pred"]) / (1 + r["ap50"])) for r in rows)
    n_true = sum(r["n_true"] for r in rows)
    n_pred = sum(r["n_pred"] for r in rows)
    union = n_true + n_pred - tp
    return {
        "ap50": float(np.mean([r["ap50"] for r in rows])),
        "seg": float(np.mean([r.get("seg", np.nan) for r in rows])),
        "pooled_ap50": tp / union if union else 1.0,
        "tp": tp,
        "n_true": n_true,
        "n_pred": n_pred,
        "count_ratio": n_pred / n_true if n_true else float(n_pred == 0),
    }


def few_labels(
    labels: np.ndarray,
    objects: int,
    strokes: int,
    rng: np.random.Generator,
    width: float = 5,
    margin: float = 3,
    length: int | None = None,
) -> np.ndarray:
    """``sparse-instances`` labels a user could paint, cut out of dense instance labels.

    Keeps ``objects`` objects chosen at random (ids 2, 3, ... in the order of their old
    ids) and paints ``strokes`` straight background strokes (value 1) ``width`` pixels
    wide and ``length`` long (default: a quarter of the longer image side), centred on
    random background pixels at least ``margin`` pixels from every object; each stroke
    stops where it would come closer to an object (only the piece through its centre
    is kept).  Everything else is 0 (unlabeled).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.uint16)
    ids = np.unique(labels[labels > 0])
    keep = np.sort(rng.choice(ids, size=min(objects, len(ids)), replace=False))
    for new, old in enumerate(keep, start=2):
        out[labels == old] = new
    if len(ids):
        allowed = ndimage.distance_transform_edt(labels == 0) >= margin
    else:
        allowed = np.ones(labels.shape, bool)
    out[paint_strokes(allowed, strokes, rng, width, length)] = 1
    return out


def paint_strokes(
    allowed: np.ndarray,
    strokes: int,
    rng: np.random.Generator,
    width: float = 5,
    length: int | None = None,
) -> np.ndarray:
    """Where ``strokes`` straight brush strokes land inside ``allowed`` (a boolean mask).

    Each stroke is ``width`` pixels wide and ``length`` long (default: a quarter of the
    longer side), centred on a random pixel of ``allowed`` at a random angle; only its
    piece through the centre that stays inside ``allowed`` is kept (what a careful user
    paints along a thin structure or inside a region).
    """
    from scipy import ndimage

    painted = np.zeros(allowed.shape, bool)
    centres = np.flatnonzero(allowed)
    length = length or max(allowed.shape) // 4
    yy, xx = np.indices(allowed.shape)
    for _ in range(strokes if centres.size else 0):
        cy, cx = np.unravel_index(rng.choice(centres), allowed.shape)
        angle = rng.uniform(0, np.pi)
        dy, dx = length * np.sin(angle), length * np.cos(angle)
        ay, ax = cy - dy / 2, cx - dx / 2
        t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / length**2, 0, 1)
        near = (yy - ay - t * dy) ** 2 + (xx - ax - t * dx) ** 2 <= (width / 2) ** 2
        pieces, _ = ndimage.label(near & allowed)
        painted |= pieces == pieces[cy, cx]
    return painted


def table_head(*columns: str) -> None:
    """Print a markdown table's header row and its rule."""
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std) of several runs, just the mean of one."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def header(device: str) -> str:
    """The first line of a report: date, machine, torch and device."""
    import torch

    where = (
        torch.cuda.get_device_name()
        if device.startswith("cuda") and torch.cuda.is_available()
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    return f"# {time.strftime('%Y-%m-%d')}  {where}, torch {torch.__version__}, device {device}"


def write_tiny(folder: Path) -> Path:
    """A synthetic stand-in for DSB2018 (for ``--tiny``), with its size groups.

    ``synthetic014`` .. ``025``: 256x256 except 020-023 (256x320, split ``large``) and
    024 (260x347, split ``dense``); ``synthetic025`` is in the random split's test set.
    """
    import imageio.v3 as iio
    from _synthetic import nuclei

    shapes = {20: (256, 320), 21: (256, 320), 22: (256, 320), 23: (256, 320), 24: (260, 347)}
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(14, 26):
        image, labels = nuclei(shapes.get(i, (256, 256)), n=40, seed=i)
        iio.imwrite(folder / "images" / f"synthetic{i:03d}.png", image)
        iio.imwrite(folder / "labels" / f"synthetic{i:03d}.png", labels)
    return folder

"""What a network can give, apart from its post-processing: for each model, mean AP@0.5
on a test group with the model's own instance settings (what ``predict --instances``
does) and with the best of a grid of settings chosen on the test images themselves.

The second figure is a ceiling to look into a model with, never a setting to ship: it
is chosen on the images it is scored on.  When a model's own settings are far below
its ceiling, its post-processing is what limits it; when models' ceilings are flat
(e.g. the rounds of ``bench_hitl.py --keep DIR``), the networks are.

    python benchmarks/bench_ceiling.py --split large benchmarks/standin-w16 /tmp/hitl/run-0/round-*

``--min-sizes 31,23,12`` adds each model's own settings with those minimum sizes (at the
model's scale, as its own); ``--edge`` its own settings with a candidate rule, objects that
touch the image's edge kept unless smaller than a quarter of the minimum size (an object
cut by the edge shows part of itself); ``--centre-half`` scores the centre half of each
test image instead (many objects cut by its edge).  docs/benchmarks.md, "Why run 1's round 0
falls".
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import DSB, GROUPS, cap, header, split, write_tiny  # noqa: E402
from bench_calibrate import read, test_ap  # noqa: E402

SEEDS = (0.5, 0.7, 0.9)
FOREGROUNDS = (0.3, 0.5, 0.7)
MIN_SIZES = (16, 64, 256)  # pixels of the image (the probabilities are resized back)


def edge_spared(probs, spatial_dims=2, fg_threshold=0.6, seed_threshold=0.8, min_size=None,
                split=0.0):  # fmt: skip
    """``instances_from_probs`` with objects touching the image's edge kept down to a
    quarter of ``min_size`` (the ``--edge`` rule; 2D)."""
    from napari_unet.postprocess import instances_from_probs

    size = 15 if min_size is None else min_size
    quarter = max(2, size // 4)
    lab = instances_from_probs(probs, spatial_dims, fg_threshold, seed_threshold, quarter, split)
    sizes = np.bincount(lab.ravel())
    small = sizes < size
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    small[edge] = sizes[edge] < quarter
    small[0] = False
    lab[small[lab]] = 0
    return lab


def own_with(
    model, probs, zooms, truths, min_size: int | None, edge: bool, fg: float | None = None
) -> float:
    """Mean AP@0.5 with the model's own settings, another minimum size or foreground
    threshold, and/or the edge rule."""
    from napari_unet.inference import at_zoom

    config = model.config
    if min_size is not None:
        config = replace(config, postprocess=replace(config.postprocess, min_size=min_size))
    if fg is not None:
        config = replace(config, postprocess=replace(config.postprocess, fg_threshold=fg))
    rule = mock.patch("napari_unet.calibrate.instances_from_probs", edge_spared)
    with rule if edge else contextlib.nullcontext():
        aps = [test_ap(at_zoom(config, z).postprocess, [p], [t], {})
               for p, z, t in zip(probs, zooms, truths, strict=True)]  # fmt: skip
    return float(np.mean(aps))


def centre_half(a: np.ndarray) -> np.ndarray:
    """The centre half (in each of y, x) of a 2D image or label image."""
    h, w = a.shape[-2:]
    return np.ascontiguousarray(a[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2])


def ceiling(
    model, images: list, truths: list, min_sizes=(), edge=False, fgs=(), zoomed_fgs=(), grid=True
):
    """(own settings' AP, the grid's best AP, its settings, {variant: AP}) on these images."""
    from napari_unet.inference import at_zoom, drain, predict_zoomed_iter

    probs, zooms = zip(
        *[drain(predict_zoomed_iter(model, i, zoom="auto", device="cpu")) for i in images],
        strict=True,
    )
    cache: dict = {}
    # the model's settings brought to each image's pixels, as predict does
    own_settings = [at_zoom(model.config, z).postprocess for z in zooms]
    own = float(
        np.mean(
            [test_ap(s, [p], [t], {}) for s, p, t in zip(own_settings, probs, truths, strict=True)]
        )
    )
    if not grid:
        return own, None, None, {}
    grid = {}
    pp = model.config.postprocess
    seeds = sorted({*SEEDS, pp.seed_threshold})  # the model's own thresholds too
    foregrounds = sorted({*FOREGROUNDS, pp.fg_threshold})
    for seed, fg, size in itertools.product(seeds, foregrounds, MIN_SIZES):
        settings = replace(pp, seed_threshold=seed, fg_threshold=fg, min_size=size, split=0.0)
        grid[seed, fg, size] = test_ap(settings, list(probs), truths, cache)
    best = max(grid, key=grid.get)
    variants = {f"min {m}": own_with(model, probs, zooms, truths, m, False) for m in min_sizes}
    for fg in fgs:
        variants[f"fg {fg:g}"] = own_with(model, probs, zooms, truths, None, False, fg)
    for fg in zoomed_fgs:  # the zoom search itself reads the foreground at that threshold
        variants[f"fg {fg:g} zoomed"] = ceiling(model.with_postprocess(fg_threshold=fg), images,
                                                truths, grid=False)[0]  # fmt: skip
    if edge:
        variants["edge"] = own_with(model, probs, zooms, truths, None, True)
    return own, grid[best], best, variants


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="model folders or builtin:NAME")
    p.add_argument("--split", choices=list(GROUPS), default="large", help="the test group")
    p.add_argument("--test-images", type=int, default=24)
    p.add_argument("--data", default=str(DSB))
    p.add_argument("--min-sizes", default="", help="comma-separated: own settings with these "
                   "minimum sizes too")  # fmt: skip
    p.add_argument("--fgs", default="", help="comma-separated: own settings with these "
                   "foreground thresholds too")  # fmt: skip
    p.add_argument("--zoomed-fgs", default="", help="comma-separated: own settings with "
                   "these foreground thresholds, the zoom search run again with them")  # fmt: skip
    p.add_argument("--edge", action="store_true", help="own settings with edge-cut objects "
                   "kept down to a quarter of the minimum size too")  # fmt: skip
    p.add_argument("--centre-half", action="store_true", help="score the centre half of each "
                   "test image (many objects cut by its edge)")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="synthetic images, a tiny model")
    args = p.parse_args()
    import napari_unet as nu

    with tempfile.TemporaryDirectory(prefix="nu-ceiling-") as tmp:
        if args.tiny:
            args.data, args.split, args.test_images = str(write_tiny(Path(tmp) / "d")), "large", 2
            images, truths = read(Path(args.data), ["synthetic014", "synthetic015"])
            model = Path(tmp) / "tiny"
            nu.train(images, truths, labels_kind="instances", steps=4, device="cpu", init=None,
                     width=8, out=model)  # fmt: skip
            args.models = [str(model)]
        if not args.models:
            sys.exit("give one or more model folders")
        _, group = split(Path(args.data), args.split)
        images, truths = read(Path(args.data), cap(group, args.test_images))
        if args.centre_half:
            images, truths = [centre_half(i) for i in images], [centre_half(t) for t in truths]
        min_sizes = [int(v) for v in args.min_sizes.split(",") if v]
        print(header("cpu"))
        print(f"# {len(images)} test images of {args.split}; grid: seed {SEEDS} x foreground "
              f"{FOREGROUNDS} (and each model's own) x minimum size {MIN_SIZES} px, no waist "
              "cut")  # fmt: skip
        fgs = [float(v) for v in args.fgs.split(",") if v]
        zoomed_fgs = [float(v) for v in args.zoomed_fgs.split(",") if v]
        names = [f"own, min {m}" for m in min_sizes] + [f"own, fg {f:g}" for f in fgs]
        names += [f"own, fg {f:g}, zoom searched with it" for f in zoomed_fgs]
        names += ["own, edge rule"] if args.edge else []
        print("| model | own settings | best of the grid (on the test images) | its settings | "
              + "".join(f"{n} | " for n in names))  # fmt: skip
        print("|---|---:|---:|---|" + "---:|" * len(names))
        rows = []
        for path in args.models:
            own, best, settings, variants = ceiling(
                nu.load_model(path), images, truths, min_sizes, args.edge, fgs, zoomed_fgs
            )
            rows.append((path, own, best))
            more = "".join(f"{v:.3f} | " for v in variants.values())
            print(f"| {path} | {own:.3f} | {best:.3f} | {settings} | {more}", flush=True)
    print(
        "summary: own / ceiling AP@0.5: "
        + "; ".join(f"{Path(m).name} {o:.3f} / {b:.3f}" for m, o, b in rows)
    )


if __name__ == "__main__":
    main()

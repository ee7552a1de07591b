"""What a network can give, apart from its post-processing: for each model, mean AP@0.5
on a test group with the model's own instance settings (what ``predict --instances``
does) and with the best of a grid of settings chosen on the test images themselves.

The second figure is a ceiling to look into a model with, never a setting to ship: it
is chosen on the images it is scored on.  When a model's own settings are far below
its ceiling, its post-processing is what limits it; when models' ceilings are flat
(e.g. the rounds of ``bench_hitl.py --keep DIR``), the networks are.

    python benchmarks/bench_ceiling.py --split large /tmp/standin /tmp/hitl/run-0/round-*
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import DSB, GROUPS, cap, header, split, write_tiny  # noqa: E402
from bench_calibrate import read, test_ap  # noqa: E402

SEEDS = (0.5, 0.7, 0.9)
FOREGROUNDS = (0.3, 0.5, 0.7)
MIN_SIZES = (16, 64, 256)  # pixels of the image (the probabilities are resized back)


def ceiling(model, images: list, truths: list) -> tuple[float, float, tuple]:
    """(own settings' AP, the grid's best AP, its settings) on these images."""
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
    grid = {}
    pp = model.config.postprocess
    seeds = sorted({*SEEDS, pp.seed_threshold})  # the model's own thresholds too
    foregrounds = sorted({*FOREGROUNDS, pp.fg_threshold})
    for seed, fg, size in itertools.product(seeds, foregrounds, MIN_SIZES):
        settings = replace(pp, seed_threshold=seed, fg_threshold=fg, min_size=size, split=0.0)
        grid[seed, fg, size] = test_ap(settings, list(probs), truths, cache)
    best = max(grid, key=grid.get)
    return own, grid[best], best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="model folders or builtin:NAME")
    p.add_argument("--split", choices=list(GROUPS), default="large", help="the test group")
    p.add_argument("--test-images", type=int, default=24)
    p.add_argument("--data", default=str(DSB))
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
        print(header("cpu"))
        print(f"# {len(images)} test images of {args.split}; grid: seed {SEEDS} x foreground "
              f"{FOREGROUNDS} (and each model's own) x minimum size {MIN_SIZES} px, no waist "
              "cut")  # fmt: skip
        print("| model | own settings | best of the grid (on the test images) | its settings |")
        print("|---|---:|---:|---|")
        rows = []
        for path in args.models:
            own, best, settings = ceiling(nu.load_model(path), images, truths)
            rows.append((path, own, best))
            print(f"| {path} | {own:.3f} | {best:.3f} | {settings} |", flush=True)
    print(
        "summary: own / ceiling AP@0.5: "
        + "; ".join(f"{Path(m).name} {o:.3f} / {b:.3f}" for m, o, b in rows)
    )


if __name__ == "__main__":
    main()

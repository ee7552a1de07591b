"""How much of what a user outlines does a start model find?  The automatic start's test.

For each kind of data, the few-labels draws a user could make (``_splits.few_labels``: 3
images x 2 outlined objects + 3 background strokes, draws 0..``--runs``-1) and the share of
the outlined objects the start model (``--init``) finds at IoU >= 0.5 with its own
post-processing (:func:`napari_unet.init.start_fit`, what ``init="auto"`` checks before
training).  The automatic start takes the model when that share is at least
``napari_unet.init.FIT_RECALL``:

- ``dense``, ``large``: DSB2018 nuclei size groups (the start model must not have seen them);
- ``isbi-cells``: ISBI 2012 EM, the cells (connected regions of the 255 label) of slices 0-24;
- ``ovule-cells``: the PlantSeg ovule volume, its z-slices as 2D images (membrane stain).

    python benchmarks/bench_start_fit.py --init /tmp/nuclei-no-dense-large --runs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import DSB, few_labels, header, split, write_tiny  # noqa: E402
from bench_accuracy import DATA  # noqa: E402


def dsb_group(src: Path, group: str) -> list[tuple[np.ndarray, np.ndarray]]:
    from napari_unet.files import read_image

    _, test = split(src, group)
    return [
        (read_image(src / "images" / f"{s}.png"), read_image(src / "labels" / f"{s}.png"))
        for s in test
    ]


def isbi_cells(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    from scipy import ndimage

    from napari_unet.files import read_image

    pairs = []
    for i in range(25):
        image = read_image(root / "images" / f"{i:02d}.png")
        cells, _ = ndimage.label(read_image(root / "labels" / f"{i:02d}.png") > 127)
        pairs.append((image, cells.astype(np.uint16)))
    return pairs


def ovule_cells(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    import tifffile

    image, labels = tifffile.imread(root / "image.tif"), tifffile.imread(root / "labels.tif")
    return [(image[z], labels[z]) for z in range(4, image.shape[0] - 4, 3)]


def found_share(model, pairs: list, run: int, images: int, objects: int) -> tuple[int, int]:
    """One draw: ``images`` images with at least ``objects`` objects, the fit on them."""
    from napari_unet.config import NormConfig
    from napari_unet.data import normalize
    from napari_unet.init import start_fit

    rng = np.random.default_rng(run)
    chosen = [pairs[i] for i in rng.permutation(len(pairs))
              if len(np.unique(pairs[i][1])) > objects][:images]  # fmt: skip
    few = [few_labels(lab, objects, 3, rng) for _, lab in chosen]
    norm = [normalize(img[None].astype(np.float32), NormConfig(), 0) for img, _ in chosen]
    fit = start_fit(model, norm, few, "sparse-instances")
    return fit.found, fit.objects


def main() -> None:
    import napari_unet as nu
    from napari_unet.init import FIT_RECALL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", default="builtin:nuclei", help="the start model to check")
    p.add_argument("--kinds", nargs="+", default=["dense", "large", "isbi-cells", "ovule-cells"])
    p.add_argument("--runs", type=int, default=3, help="draws (seed = run index)")
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="synthetic nuclei only")
    args = p.parse_args()
    model = nu.load_model(args.init)
    if args.tiny:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="nu-fit-")
        src = write_tiny(Path(tmp) / "data")
        sources = {"dense": lambda: dsb_group(src, "large")}
        args.kinds, args.runs = ["dense"], 1
    else:
        sources = {
            "dense": lambda: dsb_group(DSB, "dense"),
            "large": lambda: dsb_group(DSB, "large"),
            "isbi-cells": lambda: isbi_cells(DATA / "isbi2012-em"),
            "ovule-cells": lambda: ovule_cells(DATA / "ovule-cells-3d"),
        }
    print(header("cpu"))
    print(f"# start model {args.init}; {args.images} image(s) x {args.objects} outlined object(s)"
          f" per draw; the automatic start needs {FIT_RECALL:.0%} found")  # fmt: skip
    print("| data | run | found / outlined | automatic start |")
    print("|---" * 4 + "|")
    shares = {}
    for kind in args.kinds:
        pairs = sources[kind]()
        total = [0, 0]
        for run in range(args.runs):
            found, objects = found_share(model, pairs, run, args.images, args.objects)
            total = [total[0] + found, total[1] + objects]
            taken = "taken" if objects and found >= FIT_RECALL * objects else "scratch"
            print(f"| {kind} | {run} | {found} / {objects} | {taken} |", flush=True)
        shares[kind] = total[0] / max(total[1], 1)
    print("summary: share of outlined objects found: "
          + "; ".join(f"{k} {v:.2f}" for k, v in shares.items()))  # fmt: skip


if __name__ == "__main__":
    main()

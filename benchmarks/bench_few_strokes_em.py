"""Another kind of object with a few labels: ISBI 2012 EM cells from a few painted strokes.

What a user does in napari on an image unlike nuclei: paint a few strokes on membranes and
a few inside cells (``--labels-kind sparse``: 0 unlabeled, 1 membrane, 2 cell), train, and
look at the cell / membrane map.  From the dense labels of ../shared/data/isbi2012-em it
picks M training slices (``--images``, default 2) out of slices 00-24 and paints on each
``--membrane-strokes`` (default 8; 3 px wide, kept on membrane pixels) and
``--cell-strokes`` (default 4; 5 px wide, at least 2 px inside a cell), a quarter of the
slice long (``_splits.paint_strokes``).  Then it trains each of ``--ways`` on the same
labels with the same number of steps and seed:

- ``sparse``: from scratch;
- ``sparse-init``: starting from ``--init`` (default ``builtin:nuclei``; its 3-class head
  is re-initialised for the 2 classes here);
- ``semantic-dense`` (with ``--ways``): the same M slices fully labeled (the upper bound).

and predicts slices 25-29 (never trained on).  Scores: the pixel error of the cell /
membrane map (the ISBI 2012 "pixel error" = 1 - accuracy, as ``bench_accuracy.py``) and
the AP@0.5 of cells taken as connected components of the predicted cell class against the
truth's (``napari_unet.metrics.average_precision``).  Each run (``--runs``) draws other
slices and strokes (seed = run index) and trains with ``--seed`` = run index.  Prints a
table, mean ± std per way and one summary line; works in a temporary folder.

    python benchmarks/bench_few_strokes_em.py --steps 600 --runs 3 --device cpu
    python benchmarks/bench_few_strokes_em.py --tiny     # synthetic slices, seconds
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import DATA, header, link, mean_std, paint_strokes, train  # noqa: E402
from _synthetic import write_em  # noqa: E402
from bench_accuracy import cli  # noqa: E402

WAYS = {
    "sparse": ("sparse", "a few strokes, from scratch"),
    "sparse-init": ("sparse", "the same strokes, starting from --init"),
    "semantic-dense": ("semantic", "the same slices fully labeled"),
}
DEFAULT_WAYS = ("sparse", "sparse-init")
TEST = [f"{i:02d}" for i in range(25, 30)]
POOL = [f"{i:02d}" for i in range(25)]


def strokes_on(truth: np.ndarray, args: argparse.Namespace, rng: np.random.Generator):
    """``sparse`` labels painted on one slice: 1 on membrane strokes, 2 on cell strokes."""
    from scipy import ndimage

    cell = truth > 127
    out = np.zeros(truth.shape, np.uint8)
    out[paint_strokes(~cell, args.membrane_strokes, rng, width=3)] = 1
    inside = ndimage.distance_transform_edt(cell) >= 2
    out[paint_strokes(inside, args.cell_strokes, rng, width=5)] = 2
    return out


def scores(pred_dir: Path, truth_dir: Path, cell_value: int) -> dict:
    """Mean pixel error and mean AP@0.5 of cells (connected components) over the test slices;
    ``cell_value``: what the predictions write for "cell" (2 for the painted class 2 of
    ``sparse`` models, 255 for ``semantic`` ones, which write the label image's values)."""
    from skimage.measure import label

    from napari_unet.files import read_image
    from napari_unet.metrics import average_precision

    errors, aps = [], []
    for stem in TEST:
        truth = read_image(truth_dir / f"{stem}.png") > 127
        cell = read_image(pred_dir / f"{stem}.tif") == cell_value
        errors.append(float(np.mean(cell != truth)))
        truth_cells, cells = label(truth, connectivity=1), label(cell, connectivity=1)
        aps.append(average_precision(truth_cells, cells, thresholds=(0.5,))[0.5])
    return {"pixel_error": float(np.mean(errors)), "cell_ap50": float(np.mean(aps))}


def run_once(em: Path, run: int, work: Path, test: Path, args: argparse.Namespace) -> list[dict]:
    import imageio.v3 as iio

    from napari_unet.files import read_image

    rng = np.random.default_rng(run)
    stems = sorted(str(s) for s in rng.choice(POOL, size=args.images, replace=False))
    link(em, stems, work / "semantic-dense")
    link(em, stems, work / "sparse", labels=False)
    (work / "sparse" / "labels").mkdir()
    painted = 0
    for stem in stems:
        sparse = strokes_on(read_image(em / "labels" / f"{stem}.png"), args, rng)
        iio.imwrite(work / "sparse" / "labels" / f"{stem}.png", sparse)
        painted += np.count_nonzero(sparse) / sparse.size / len(stems)
    rows = []
    for way in args.ways:
        kind, _ = WAYS[way]
        data = work / ("semantic-dense" if way == "semantic-dense" else "sparse")
        model = work / f"model-{way}"
        init = ["--init", args.init] if way.endswith("-init") else []
        row = {"run": run, "way": way, "slices": stems}
        row["labeled"] = 1.0 if way == "semantic-dense" else painted
        row |= train(
            data, model, kind, 0, args.device, seed=run,
            extra=[*shlex.split(args.extra), *init], steps=args.steps,
        )  # fmt: skip
        pred = work / f"pred-{way}"
        cli("-q", "predict", str(model), str(test / "images"), "--out", str(pred),
            "--device", args.device)  # fmt: skip
        row |= scores(pred, test / "labels", 255 if kind == "semantic" else 2)
        print(
            f"| {run} | {way} | {' '.join(stems)} | {100 * row['labeled']:.2f} | {row['steps']} "
            f"| {row['pixel_error']:.4f} | {row['cell_ap50']:.3f} |",
            flush=True,
        )
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2, help="M: training slices")
    p.add_argument("--membrane-strokes", type=int, default=8)
    p.add_argument("--cell-strokes", type=int, default=4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(DEFAULT_WAYS))
    p.add_argument("--init", default="builtin:nuclei", help="the model sparse-init starts from")
    p.add_argument("--runs", type=int, default=1, help="draws (seed = run index)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--extra", default="", help="more train flags")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", help="work in this folder and keep it")
    p.add_argument("--data", default=str(DATA / "isbi2012-em"), help="images/ + labels/ NN.png")
    p.add_argument("--tiny", action="store_true", help="synthetic slices, 2 steps: a quick check")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="nu-em-") as tmp:
        work = Path(args.keep or tmp)
        if args.tiny:
            args.data = str(write_em(work / "data"))
            args.steps, args.runs, args.init = 2, 1, "builtin:nuclei"
            args.ways = ["sparse-init"]  # the path through --init; a few seconds
        em = Path(args.data)
        if not (em / "images").is_dir():
            sys.exit(f"needs the ISBI 2012 slices (images/, labels/) under {em}")
        test = link(em, TEST, work / "test")
        print(header(args.device))
        print(
            f"# {args.images} slice(s) x ({args.membrane_strokes} membrane + "
            f"{args.cell_strokes} cell strokes) from slices 00-24; test slices 25-29; "
            f"{args.steps} steps per model; init {args.init}; train flags: {args.extra or '-'}"
        )
        print("| run | way | slices | labeled % | steps | pixel error | cell AP@0.5 |")
        print("|---" * 7 + "|")
        rows = []
        for run in range(args.runs):
            rows += run_once(em, run, work / f"run-{run}", test, args)
    print()
    print("| way | labels | runs | pixel error | cell AP@0.5 |")
    print("|---" * 5 + "|")
    for way in args.ways:
        mine = [r for r in rows if r["way"] == way]
        err = mean_std([r["pixel_error"] for r in mine])
        ap = mean_std([r["cell_ap50"] for r in mine])
        print(f"| {way} | {WAYS[way][1]} | {len(mine)} | {err} | {ap} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(
        f"summary: ISBI 2012 slices 25-29, {args.images} slice(s) of strokes, {args.steps} "
        f"steps, {args.device}, {args.runs} run(s): "
        + "; ".join(
            f"{way} pixel error {np.mean([r['pixel_error'] for r in rows if r['way'] == way]):.4f}"
            f" cell AP@0.5 {np.mean([r['cell_ap50'] for r in rows if r['way'] == way]):.3f}"
            for way in args.ways
        )
    )


if __name__ == "__main__":
    main()

"""Touching objects: AP@0.5 and the Cell Tracking Challenge's SEG measure of models
trained on two fully labeled frames, with the old and new instance targets side by side.

Data sets (``--data``):

- ``synthetic``: large touching cells in DIC-like images (``_synthetic.confluent_cells``,
  512x512, ~10 cells of ~15,000 px, most touching a neighbour); train frames = seeds
  0, 1; test = seeds 100-106 (the same on every machine);
- ``ovule``: the PlantSeg ovule volume of ../shared/data (cells that fill the tissue,
  membrane stain), its z-slices as 2D frames: train = 2 slices of the half y < 64,
  test = every 3rd slice of the half y >= 64 (never seen: other cells);
- ``dense``: DSB2018's crowded-nuclei group (many nuclei in contact): train = 2 images
  of the group, test = 30 others of it (sha1 order);
- ``large``: DSB2018's group of large images (large nuclei among them), the same way;
- ``wide``: the DSB2018 images whose nuclei are wider than ``OBJECT_WIDTH`` (48 px, by
  the median one; 50 images, most of them 360x360), the same way: those a training
  shrinks (``napari_unet.zoom.training_scale``).

Every arm (``--arm NAME=RECIPE.json``; ``NAME=`` for the defaults) trains from scratch
(``--labels-kind instances`` or, with ``--kind sparse-instances``, 3 outlined objects per
frame plus background strokes) for ``--steps`` steps with seed = run index, predicts the
test frames (``predict --instances``, the model's own post-processing) and scores them
(``evaluate``), once as the model chose and once with the seeds never cut at their
waists (``--split 0``: the post-processing before issue 26).  A recipe file holds
``train --config`` settings, e.g. ``{"touch_border": 0.05}``.  Prints a row per run,
mean ± std per arm and a summary line.

    python benchmarks/bench_touching.py --data synthetic --steps 500 --runs 2 \\
        --arm old= --arm touch05=touch05.json --arm touch10=touch10.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import (  # noqa: E402
    DSB,
    few_labels,
    header,
    mean_std,
    predict_and_score,
    split,
    train,
)
from bench_accuracy import DATA  # noqa: E402

DATASETS = ("synthetic", "ovule", "dense", "large", "wide")


def parse_arm(text: str) -> tuple[str, str | None]:
    name, sep, recipe = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--arm wants NAME=RECIPE.json or NAME=, got {text!r}")
    if recipe and not Path(recipe).is_file():
        raise argparse.ArgumentTypeError(f"--arm {name}: no recipe file {recipe}")
    return name, recipe or None


def frames(data: str, tiny: bool) -> tuple[list, list]:
    """(train, test) lists of (image, instance labels)."""
    from _synthetic import confluent_cells

    from napari_unet.config import OBJECT_WIDTH
    from napari_unet.zoom import objects_width

    if data == "synthetic" or tiny:
        shape, cells = ((128, 128), 4) if tiny else ((512, 512), 10)
        test_seeds = range(100, 102) if tiny else range(100, 107)
        train_pairs = [confluent_cells(shape, cells, seed) for seed in (0, 1)]
        return train_pairs, [confluent_cells(shape, cells, seed) for seed in test_seeds]
    if data == "ovule":
        import tifffile

        root = DATA / "ovule-cells-3d"
        image, labels = tifffile.imread(root / "image.tif"), tifffile.imread(root / "labels.tif")
        half = image.shape[1] // 2
        train_pairs = [(image[z, :half], labels[z, :half]) for z in (10, 20)]
        test = [(image[z, half:], labels[z, half:]) for z in range(2, image.shape[0] - 2, 3)]
        return train_pairs, test
    from napari_unet.files import read_image

    if data == "wide":
        group = [p.stem for p in (DSB / "labels").glob("*.png")]
    else:
        _, group = split(DSB, data)
    group = sorted(group, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    pairs = []
    for s in group:
        labels = read_image(DSB / "labels" / f"{s}.png")
        if data == "wide" and objects_width([labels], "instances", 2) <= OBJECT_WIDTH:
            continue
        pairs.append((read_image(DSB / "images" / f"{s}.png"), labels))
        if len(pairs) == 32:
            break
    return pairs[:2], pairs[2:]


def rescaled(image: np.ndarray, labels: np.ndarray, scale: float) -> tuple:
    """The frame resized by ``scale`` (image: linear; labels: nearest)."""
    from skimage.transform import rescale

    small = rescale(image.astype(np.float32), scale, order=1, anti_aliasing=scale < 1)
    ids = rescale(labels, scale, order=0, preserve_range=True, anti_aliasing=False)
    return small.astype(np.float32), ids.astype(labels.dtype)


def write(pairs: list, folder: Path) -> Path:
    import tifffile

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, (image, labels) in enumerate(pairs):
        tifffile.imwrite(folder / "images" / f"frame{i:02d}.tif", np.asarray(image))
        tifffile.imwrite(folder / "labels" / f"frame{i:02d}.tif", np.asarray(labels, np.uint16))
    return folder


def started_from(model: Path) -> str:
    """The start model training.json records, or "scratch" (and why an automatic start
    was declined)."""
    session = json.loads((model / "training.json").read_text())["sessions"][-1]
    if "init" in session:
        return session["init"]["from"]
    declined = session.get("init_declined")
    if not declined:
        return "scratch"
    fit = declined.get("fit", {})
    found = f"found {fit.get('found')} of {fit.get('objects')}"
    return f"scratch ({declined['from']} declined: {found})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=DATASETS, default="synthetic")
    p.add_argument("--arm", type=parse_arm, action="append", metavar="NAME=RECIPE.json",
                   help="a recipe to compare, repeatable (default: default=)")  # fmt: skip
    p.add_argument("--kind", choices=("instances", "sparse-instances"), default="instances")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="S",
        help="train S seconds instead of --steps (as a user does: the CLI default)",
    )
    p.add_argument("--init", default="scratch",
                   help="train --init (default scratch; 'auto' is the CLI default)")  # fmt: skip
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0, help="runs use seeds from this one on")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize every frame by this before training and testing (do large "
                   "objects train better smaller?)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", type=Path, help="keep the models and predictions here")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--tiny", action="store_true", help="small synthetic frames, 3 steps, 1 run")
    args = p.parse_args()
    args.arm = args.arm or [("default", None)]
    with tempfile.TemporaryDirectory(prefix="bench-touching-") as tmp:
        run(args, args.keep or Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    steps = 3 if args.tiny else args.steps
    if args.tiny:
        args.runs = 1
    train_pairs, test_pairs = frames(args.data, args.tiny)
    if args.scale != 1.0:
        train_pairs = [rescaled(image, labels, args.scale) for image, labels in train_pairs]
        test_pairs = [rescaled(image, labels, args.scale) for image, labels in test_pairs]
    test_dir = write(test_pairs, work / "test")
    print(header(args.device))
    print(f"# {args.data}: {len(train_pairs)} training frames ({args.kind}), "
          f"{len(test_pairs)} test frames; "
          f"{f'{args.time_budget:g} s' if args.time_budget else f'{steps} steps'}, "
          f"--init {args.init}; {args.runs} run(s)")  # fmt: skip
    results: dict[str, list[dict]] = {}
    for name, recipe in args.arm:
        results[name] = []
        for r in range(args.first_seed, args.first_seed + args.runs):
            pairs = train_pairs
            if args.kind == "sparse-instances":
                rng = np.random.default_rng(r)
                pairs = [(img, few_labels(lab, 3, 3, rng)) for img, lab in train_pairs]
            train_dir = write(pairs, work / f"train-{name}-{r}")
            model = work / f"model-{name}-{r}"
            extra = ["--init", args.init, *(["--config", recipe] if recipe else [])]
            info = train(
                train_dir,
                model,
                args.kind,
                args.time_budget or 0,
                args.device,
                r,
                extra,
                steps=None if args.time_budget and not args.tiny else steps,
            )
            score = predict_and_score(model, test_dir, work / f"pred-{name}-{r}", args.device)
            plain = predict_and_score(
                model, test_dir, work / f"plain-{name}-{r}", args.device, ("--split", "0")
            )
            split = json.loads((model / "config.json").read_text())["postprocess"].get("split")
            results[name].append({**score, "no_cut": plain, "train_s": info["train_s"]})
            print(f"{name} run {r}: {info['steps']} steps, start {started_from(model)}; "
                  f"AP@0.5 {score['ap50']:.3f} SEG {score['seg']:.3f} "
                  f"predicted/true {score['count_ratio']:.2f} (post-processing "
                  f"{info['postprocess']}, split {split}); seeds never cut: AP@0.5 "
                  f"{plain['ap50']:.3f} SEG {plain['seg']:.3f}", flush=True)  # fmt: skip
    print()
    print("| arm | AP@0.5 | SEG | predicted / true | AP@0.5, seeds never cut | SEG, never cut |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        ratio = np.mean([r["count_ratio"] for r in rows])
        print(f"| {name} | {mean_std([r['ap50'] for r in rows])} | "
              f"{mean_std([r['seg'] for r in rows])} | {ratio:.2f} | "
              f"{mean_std([r['no_cut']['ap50'] for r in rows])} | "
              f"{mean_std([r['no_cut']['seg'] for r in rows])} |")  # fmt: skip
    means = {n: np.mean([r["ap50"] for r in rows]) for n, rows in results.items()}
    print(
        f"summary: {args.data}, mean AP@0.5 " + ", ".join(f"{n} {v:.3f}" for n, v in means.items())
    )
    if args.json:
        args.json.write_text(json.dumps({"data": args.data, "kind": args.kind, "steps": steps,
                                         "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

"""Label a few cells: AP@0.5 of DSB2018 nuclei models trained on a few outlined objects.

From the dense labels of ../shared/data/dsb2018-nuclei it picks M training images
(``--images``, default 3) from a pool that excludes the test images, keeps K objects
per image (``--objects``, default 2, chosen at random) and paints S background strokes
(``--strokes``, default 3; 5 px wide, a quarter of the image long, only on background at
least 3 px from every object; see ``_splits.few_labels``).  Then it trains each of ``--ways``
on the same images with the same budget and seed:

- ``sparse-instances``: those labels (0 unlabeled, 1 background strokes, 2.. objects);
- ``instances-partial``: ``--labels-kind instances`` with only the K objects, everything
  else 0, so every unlabeled nucleus is taught as background (the only way before);
- ``instances-dense``: the same M images fully labeled (the upper bound),
- ``sparse-instances-init`` (with ``--ways``): the sparse-instances labels, training
  started from ``--init`` (default ``builtin:nuclei``; repeated, once from each start
  model, on the same draw and seed: side by side),

predicts the test images with ``predict --instances`` (the post-processing each model
chose for itself) and scores the mean AP@0.5 (``napari-unet evaluate``), the pooled
AP@0.5 and the object count ratio predicted / true.  A start model is scored too, with no
training, and the product's verdict on it after each training from it (``Start.compare``: is
the start model better?) is checked against the test images.  Test split (``--test-split``):
``random`` (default): the 36 held-out 256x256 images of ``bench_accuracy.py``'s split,
pool = the other 298 256x256 images; ``large`` / ``dense``: a whole size group held out
(108 / 99 images), pool = every other image; with ``--label-group`` the user labels
images of that group instead (pool = the group less its ``--test-images`` test images, the
same as ``bench_hitl.py``'s: "my nuclei look different").  Each run (``--runs``) draws other images,
objects and strokes (seed = run index) and trains with ``--seed`` = run index.  Prints a
table, mean ± std per way and one summary line; works in a temporary folder.

    python benchmarks/bench_few_labels.py --time-budget 120 --runs 3 --device cpu
    python benchmarks/bench_few_labels.py --images 1 --objects 5 --test-split dense \\
        --time-budget 60 --runs 5 --device cuda --json few-labels.json
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
from _splits import (  # noqa: E402
    DSB,
    SPLITS,
    cap,
    few_labels,
    header,
    link,
    mean_std,
    predict_and_score,
    split,
    train,
    write_tiny,
)

# name -> (--labels-kind, what the labels hold)
WAYS = {
    "sparse-instances": ("sparse-instances", "K objects + background strokes, rest unlabeled"),
    "instances-partial": ("instances", "K objects, rest background"),
    "instances-dense": ("instances", "every object of the M images"),
    "sparse-instances-init": ("sparse-instances", "as sparse-instances, starting from --init"),
}
DEFAULT_WAYS = ("sparse-instances", "instances-partial", "instances-dense")


def pick_images(src: Path, pool: list[str], m: int, k: int, rng: np.random.Generator) -> list:
    """``m`` images of ``pool`` in random order with at least ``k`` objects: (stem, labels)."""
    from napari_unet.files import read_image

    chosen = []
    for stem in rng.permutation(pool):
        labels = read_image(src / "labels" / f"{stem}.png")
        if len(np.unique(labels[labels > 0])) >= k:
            chosen.append((str(stem), labels))
        if len(chosen) == m:
            return chosen
    raise ValueError(f"fewer than {m} images with {k} objects in the training pool")


def write_training_sets(
    src: Path, chosen: list, work: Path, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, dict]:
    """``work/<way>/images`` + ``labels`` for the three ways; what each one labels."""
    import imageio.v3 as iio

    stems = [stem for stem, _ in chosen]
    link(src, stems, work / "instances-dense")
    for way in ("sparse-instances", "instances-partial"):
        link(src, stems, work / way, labels=False)
        (work / way / "labels").mkdir()
    labeled = {way: {"objects": 0, "pixels": 0, "total": 0} for way in DEFAULT_WAYS}
    for stem, dense in chosen:
        sparse = few_labels(dense, args.objects, args.strokes, rng)
        partial = np.where(sparse >= 2, sparse - 1, 0).astype(np.uint16)
        iio.imwrite(work / "sparse-instances" / "labels" / f"{stem}.png", sparse)
        iio.imwrite(work / "instances-partial" / "labels" / f"{stem}.png", partial)
        for way, objects, pixels in (
            ("sparse-instances", int(sparse.max()) - 1, np.count_nonzero(sparse)),
            ("instances-partial", int(partial.max()), partial.size),
            ("instances-dense", len(np.unique(dense[dense > 0])), dense.size),
        ):
            labeled[way]["objects"] += objects
            labeled[way]["pixels"] += int(pixels)
            labeled[way]["total"] += dense.size
    return {
        way: {"objects": n["objects"], "labeled": n["pixels"] / n["total"]}
        for way, n in labeled.items()
    }


def run_once(src: Path, pool: list[str], test: Path, run: int, work: Path, args) -> list[dict]:
    """One draw of images, objects and strokes; the three trainings on it, scored on ``test``."""
    rng = np.random.default_rng(run)
    chosen = pick_images(src, pool, args.images, args.objects, rng)
    labeled = write_training_sets(src, chosen, work, args, rng)
    rows = []
    for way, init in ways_and_inits(args):
        kind, _ = WAYS[way]
        data = way.removesuffix("-init")
        name = way if init is None or len(args.init) == 1 else f"{way} {init_name(init)}"
        model = work / f"model-{name.replace(' ', '-')}"
        row = {"run": run, "way": name, "images": [stem for stem, _ in chosen], **labeled[data]}
        row["init"] = init
        row |= train(
            work / data,
            model,
            kind,
            args.time_budget,
            args.device,
            seed=run,
            extra=[*shlex.split(args.extra), *(["--init", init] if init else [])],
            steps=args.steps,
        )
        row |= predict_and_score(model, test, work / f"pred-{model.name}", args.device)
        print_row(row)
        rows.append(row)
    return rows


def ways_and_inits(args) -> list[tuple[str, str | None]]:
    """Each way with the start model it trains from: the *-init ways once per ``--init``
    (the same draw and seed for each: side by side), the others from the automatic start."""
    return [
        (way, init)
        for way in args.ways
        for init in (args.init if way.endswith("-init") else [None])
    ]


def init_name(init: str) -> str:
    """A start model as a table names it: a folder by its name, a built-in model as given."""
    return init if init.startswith("builtin:") else Path(init).name


def print_row(row: dict) -> None:
    seed, fg, size = row["postprocess"]
    print(
        f"| {row['run']} | {row['way']} | {row['objects']} | {100 * row['labeled']:.1f} "
        f"| {row['steps']} | {seed} / {fg} / {size} | {row['ap50']:.3f} "
        f"| {row['pooled_ap50']:.3f} | {row['count_ratio']:.2f} | {held_out(row)} |",
        flush=True,
    )


def held_out(row: dict) -> str:
    """What the product compared: validation IoU of the new model / the start model on the
    held-out labels (what the CLI warns on) and their AP@0.5 on the held-out objects, or
    "-" without a start model."""
    new, start = row["held_out_iou"]
    if start is None:
        return "-"
    objects = row.get("held_out_objects")
    ap = "" if not objects else f"; AP {objects['new_ap']:.2f} / {objects['start_ap']:.2f}"
    return f"IoU {new:.3f} / {start:.3f}{ap}"


def verdicts(rows: list[dict], starts: dict[str, float]) -> str:
    """How often each of the product's comparisons with the start model says what the test
    images say (the start model better or not), over the rows trained from a start model."""
    counts = {"validation IoU": [0, 0], "held-out objects": [0, 0]}
    for row in rows:
        init = row.get("init")
        if init not in starts or row["held_out_iou"][1] is None:
            continue
        truth = starts[init] > row["ap50"]  # the test images: the start model is better
        new, start = row["held_out_iou"]
        said = {"validation IoU": start > new}
        if row.get("held_out_objects"):
            said["held-out objects"] = row["held_out_objects"]["start_better"]
        for name, verdict in said.items():
            counts[name][0] += verdict == truth
            counts[name][1] += 1
    return "; ".join(f"{name} {right}/{n}" for name, (right, n) in counts.items() if n)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3, help="M: training images")
    p.add_argument("--objects", type=int, default=2, help="K: outlined objects per image")
    p.add_argument("--strokes", type=int, default=3, help="S: background strokes per image")
    p.add_argument("--test-split", choices=SPLITS, default="random")
    p.add_argument("--time-budget", type=float, default=120)
    p.add_argument(
        "--steps", type=int, help="train this many steps instead (comparisons on a busy machine)"
    )
    p.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(DEFAULT_WAYS))
    p.add_argument(
        "--init",
        action="append",
        help="the model the *-init ways start from (default builtin:nuclei); repeat it to "
        "compare start models side by side on the same draws",
    )
    p.add_argument("--runs", type=int, default=1, help="draws (seed = run index)")
    p.add_argument(
        "--first-run", type=int, default=0, help="seed of the first run (add runs to earlier ones)"
    )
    p.add_argument(
        "--label-group",
        action="store_true",
        help="draw the training images from the test group itself (a user labeling their "
        "own kind of images); the test images are --test-images of it, as in bench_hitl",
    )
    p.add_argument("--test-images", type=int, default=24, help="with --label-group")
    p.add_argument("--device", default="cpu")
    p.add_argument("--extra", default="", help='more train flags, e.g. --extra="--width 16"')
    p.add_argument("--data", default=str(DSB), help="folder with images/ and labels/")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", help="work in this folder and keep it")
    p.add_argument("--tiny", action="store_true", help="12 synthetic images, 1 s: a quick check")
    args = p.parse_args()
    args.init = args.init or ["builtin:nuclei"]
    with tempfile.TemporaryDirectory(prefix="nu-few-") as tmp:
        work = Path(args.keep or tmp)
        if args.tiny:
            args.data = str(write_tiny(work / "data"))
            args.images, args.time_budget, args.runs = 2, 1, 1
        budget = f"{args.steps} steps" if args.steps else f"{args.time_budget:g} s"
        src = Path(args.data)
        if not (src / "images").is_dir():
            sys.exit(f"needs images/ and labels/ under {src}")
        within = (256, 256) if args.test_split == "random" else None
        pool, test = split(src, args.test_split, within)
        if args.label_group:  # the user labels images of the kind they test on
            if args.test_split == "random":
                sys.exit("--label-group needs a group split (--test-split large, dense, hires)")
            group, test = test, cap(test, args.test_images)
            pool = [s for s in group if s not in test]
        link(src, test, work / "test")
        print(header(args.device))
        print(
            f"# {args.images} image(s) x {args.objects} object(s) + {args.strokes} stroke(s) "
            f"from {len(pool)}{' of the test group' if args.label_group else ''}; "
            f"test: split {args.test_split}, {len(test)} images; "
            f"{budget} per model, train flags: {args.extra or '-'}; init {', '.join(args.init)}"
        )
        print(
            "| run | way | objects | labeled % | steps | post-processing (seed / fg / min) "
            "| AP@0.5 | pooled AP@0.5 | pred/true | held-out, new / start |"
        )
        print("|---" * 10 + "|")
        starts = {}  # each start model's test AP@0.5 with no training
        for i, init in enumerate(
            dict.fromkeys(i for _, i in ways_and_inits(args) if i not in (None, "scratch"))
        ):
            start = init if init.startswith("builtin:") else str(Path(init).resolve())
            starts[init] = predict_and_score(start, work / "test", work / f"pred-start-{i}",
                                             args.device)["ap50"]  # fmt: skip
            print(f"| - | start model {init_name(init)}, no training | | | | | "
                  f"{starts[init]:.3f} | | | |", flush=True)  # fmt: skip
        rows = []
        for run in range(args.first_run, args.first_run + args.runs):
            rows += run_once(src, pool, work / "test", run, work / f"run-{run}", args)
    print()
    print("| way | labels | runs | AP@0.5 | pooled AP@0.5 |")
    print("|---" * 5 + "|")
    means = {}
    for way in dict.fromkeys(r["way"] for r in rows):
        what = WAYS[way.split()[0]][1]
        mine = [r for r in rows if r["way"] == way]
        means[way] = mean_std([r["ap50"] for r in mine])
        pooled = mean_std([r["pooled_ap50"] for r in mine])
        print(f"| {way} | {what} | {len(mine)} | {means[way]} | {pooled} |")
    if starts:
        print(f"the product's verdict on the start model, right on the test images: "
              f"{verdicts(rows, starts) or 'nothing compared'}")  # fmt: skip
    if args.json:
        saved = {"args": vars(args), "starts": starts, "rows": rows}
        Path(args.json).write_text(json.dumps(saved, indent=1))
    print(
        f"summary: mean AP@0.5 on {len(test)} test images (split {args.test_split}), "
        f"{args.images} image(s) x {args.objects} object(s) + {args.strokes} stroke(s), "
        f"{budget}, {args.device}, {args.runs} run(s): "
        + "; ".join(f"{way} {m.split()[0]}" for way, m in means.items())
    )


if __name__ == "__main__":
    main()

"""How many held-out objects does a search of the instance post-processing need?

A model chooses its seed and foreground thresholds, minimum size and waist cut on the
objects its training held out (``napari_unet.calibrate``).  With a few outlined objects
that is 1-3 objects: too few to tell settings apart, and a setting that wins on them may
lose on the next hundred (docs/benchmarks.md, issue 20).  This benchmark measures it
without training for each case: the probabilities of some models are computed once on a
group of images; each draw then plays a user who outlined ``5 k`` objects on a few images
of the group (plus 3 background strokes per image), ``k`` of them held out (the package
holds out a fifth, ``holdout.HELD_OUT_OBJECTS``); every rule below chooses settings on
those ``k`` objects and the strokes, and the choice is scored on the group's test images
(mean AP@0.5 over images, the same probabilities).

Rules: ``none`` (the model's own thresholds and waist cut, the minimum size from the
labeled objects' sizes), ``min size`` (only the minimum size searched), ``no split``
(thresholds and minimum size), ``full`` (everything, what the package did until
2026-12-06), and ``package`` (:func:`napari_unet.calibrate.calibrate` as it is now).
Each with the package's size prior (``calibrate.MIN_SIZE_PRIOR`` times the 5th percentile
of the labeled sizes: a half when the table in docs/benchmarks.md was measured, a quarter
since), and ``full`` also with the prior bounded below by a quarter of their median
(``full, bounded``).  ``--rules priors`` compares, without a search, the prior's fraction
(``none`` = the package's, ``none, prior 0.25``, ``none, prior 0.125``).  ``--rules
background``: what held-out background chooses under ``FEW_OBJECTS``; ``--rules overlap``:
the package before 2026-12-07 (``before overlap``: AP@0.5 alone, foreground grid to 0.7,
nothing searched on a few objects without background), the same with the new grid and
search but AP alone (``no iou``), and the package (ties broken by the objects' IoU);
``--rules sizes``: the minimum size searched up to two small labeled objects; ``--rules
fp``: on an AP tie, fewer false objects before the IoU (``fp first``).

``--zoom-each`` scores each choice as the package predicts with it: the object-size zoom
search reads the foreground at the model's threshold and minimum size, so the test images
are predicted again for every setting chosen (each image once at each zoom, rounded to two
significant digits: within 4 % of the package's), and the choice is made on the pool
images at the model's scale, as training calibrates.

Models: ``--init`` (a start model that never saw ``--split``) and ``--finetune`` models
trained from it like bench_hitl's round 0 (3 images x 2 outlined objects + 3 strokes,
``--steps`` steps), each with its own post-processing as the search's start.

    python benchmarks/bench_calibrate.py --init benchmarks/standin-w16 \\
        --split dense --finetune 2 --draws 8
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import (  # noqa: E402
    DSB,
    GROUPS,
    cap,
    few_labels,
    header,
    mean_std,
    paint_strokes,
    split,
    write_tiny,
)

HELD_OUT = (1, 2, 3, 5, 10, 20, 40)
PER_HELD_OUT = 5  # labeled objects per held-out one (the package holds out a fifth)
STROKES = 3


def read(src: Path, stems: list[str]) -> tuple[list, list]:
    from napari_unet.files import read_image

    return (
        [read_image(src / "images" / f"{s}.png") for s in stems],
        [read_image(src / "labels" / f"{s}.png") for s in stems],
    )


def probabilities(model, images: list, zoom: float | str = "auto") -> list:
    """Each image's probabilities at the zoom ``predict`` uses, resized back (so settings
    chosen on them are in the image's pixels); ``zoom=1``: at the model's scale, as the
    package calibrates."""
    from napari_unet.inference import drain, predict_zoomed_iter

    return [drain(predict_zoomed_iter(model, i, zoom=zoom, device="cpu"))[0] for i in images]


class Zoomed:
    """The test images' probabilities as the package predicts them with given settings:
    the object-size zoom search (``zoom.zoom_steps``) reads the foreground at the model's
    threshold and minimum size, so each setting runs it again; every (image, zoom) is
    predicted once."""

    def __init__(self, model, images: list):
        self.model, self.images = model, images
        self.at: dict = {}  # (image index, zoom) -> probabilities resized back
        self.by: dict = {}  # settings -> zooms chosen

    def __call__(self, settings) -> list:
        from napari_unet.inference import drain, predict_proba_iter
        from napari_unet.zoom import zoom_steps

        spec = self.model.with_postprocess(settings).config
        base = spec.normalization.scale

        def predict_at(i: int, zoom: float):
            zoom = float(f"{zoom:.2g}")  # within 4 %: each image predicted at fewer zooms
            if (i, zoom) not in self.at:
                image = self.images[i]
                self.at[i, zoom] = yield from predict_proba_iter(
                    self.model, image, zoom=zoom, device="cpu"
                )
            return self.at[i, zoom]

        probs = []
        for i in range(len(self.images)):
            first = drain(predict_at(i, base))
            p, zoom = drain(zoom_steps(lambda z, i=i: predict_at(i, z), first, spec, base))
            probs.append(p)
            self.by.setdefault(settings, []).append(zoom)
        return probs


def draw(truths: list, k: int, rng, strokes: int = STROKES) -> tuple[list[int], list, np.ndarray]:
    """A user's labels: ``PER_HELD_OUT * k`` objects on a few images, ``k`` held out with
    ``strokes`` background strokes per image.

    Returns the images used, their held-out truths (the ``k`` objects + background
    strokes, ``calibrate.Truth``) and the sizes of every labeled object.
    """
    from scipy import ndimage

    from napari_unet.calibrate import Truth, object_sizes

    wanted = PER_HELD_OUT * k
    order = rng.permutation(len(truths))
    used, objects = [], []  # (image, id) of the labeled objects
    for i in order:
        ids = np.unique(truths[i][truths[i] > 0])
        take = rng.permutation(ids)[: max(2, wanted - len(objects))]
        used.append(int(i))
        objects += [(int(i), int(o)) for o in take]
        if len(objects) >= wanted and len(used) >= 3:
            break
    held = {objects[j] for j in rng.permutation(len(objects))[:k]}
    held_truths, labeled_truths = [], []
    for i in used:
        t = truths[i]
        mine = [o for (j, o) in objects if j == i]
        kept = np.where(np.isin(t, [o for (j, o) in held if j == i]), t, 0)
        painted = paint_strokes(ndimage.distance_transform_edt(t == 0) >= 3, strokes, rng)
        held_truths.append(Truth(objects=kept, labeled=(kept > 0) | painted))
        labeled_truths.append(Truth(objects=np.where(np.isin(t, mine), t, 0)))
    return used, held_truths, object_sizes(labeled_truths, uncut=True)


def bounded_prior(sizes: np.ndarray) -> tuple[int, float] | None:
    """``calibrate.size_prior`` with "a small labeled object" at least a quarter of the
    median one (the ``bounded`` rules)."""
    import napari_unet.calibrate as cal

    if not len(sizes):
        return None
    small = max(float(np.percentile(sizes, cal.SMALL_PERCENTILE)), 0.25 * float(np.median(sizes)))
    return int(round(cal.MIN_SIZE_PRIOR * small)), small


@contextlib.contextmanager
def rule(name: str):
    """The package's calibration as rule ``name`` says ("full, bounded", "none, prior 0.25");
    yields whether nothing is searched."""
    import napari_unet.calibrate as cal

    search, *more = name.split(", ")
    patches: dict = {}
    if search != "package":
        patches["FEW_OBJECTS"] = 0  # a plain search: every setting, whatever the count
    if search in ("none", "min size"):
        patches["SEED_THRESHOLDS"] = patches["FG_THRESHOLDS"] = ()
    if search in ("none", "min size", "no split"):
        patches["SPLIT_DEPTHS"] = ()
    for option in more:
        if option == "bounded":
            patches["size_prior"] = bounded_prior
        elif option == "sizes to 2":  # the minimum size searched up to 2 small objects
            patches["MIN_SIZE_FRACTIONS"] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
        elif option == "fp first":  # on an AP tie fewer false objects, then the IoU
            patches["better"] = lambda rank, best: (
                rank[0] > best[0] if abs(rank[0] - best[0]) > 1e-9
                else rank[1] > best[1] if rank[1] != best[1]
                else rank[2] > best[2] + 1e-9
            )  # fmt: skip
        elif option in ("before overlap", "no iou"):  # AP alone; and the grid before too
            patches["better"] = lambda rank, best: rank[0] > best[0] + 1e-9
            if option == "before overlap":  # what the package did until 2026-12-07
                patches["FG_THRESHOLDS"] = (0.3, 0.4, 0.5, 0.6, 0.7)
                patches["OVERLAP_SEARCH"] = ()
        elif option.startswith(("no background", "background")):  # the few-objects search
            patches["BACKGROUND_SEARCH"] = {
                "no background": (),
                "background min size": ("min_size",),
                "background fg": ("fg_threshold",),
            }[option]
        else:  # "prior F": the prior is F times a small labeled object
            patches["MIN_SIZE_PRIOR"] = float(option.split()[1])
    with mock.patch.multiple(cal, **patches) if patches else contextlib.nullcontext():
        yield search == "none"


def choose(name: str, probs: list, held: list, start, sizes: np.ndarray):
    """The settings rule ``name`` chooses on ``held`` (probabilities ``probs``), and its
    calibration record."""
    from napari_unet.calibrate import calibrate

    with rule(name) as nothing:
        if nothing:  # no search: the start with the size prior
            return calibrate([], [], 2, start, sizes)
        return calibrate(probs, held, 2, start, sizes)


def test_ap(settings, probs, truths: list, cache: dict) -> float:
    """Mean AP@0.5 over the test images with ``settings`` (cached by settings); ``probs``:
    the images' probabilities, or a :class:`Zoomed` that predicts them as the package
    would with ``settings``."""
    from napari_unet.calibrate import Truth, score

    key = (settings.seed_threshold, settings.fg_threshold, settings.min_size, settings.split)
    if isinstance(probs, Zoomed):
        key = settings
    if key not in cache:
        probs = probs(settings) if isinstance(probs, Zoomed) else probs
        pairs = zip(probs, truths, strict=True)
        cache[key] = float(np.mean([score([p], [Truth(t)], settings, 2) for p, t in pairs]))
    return cache[key]


RULES = ("none", "min size", "no split", "full", "full, bounded", "package")
PRIORS = ("none, prior 0.25", "none, prior 0.125")  # --rules priors: the prior's fraction
BACKGROUND = (  # --rules background: with too few held-out objects, what the background picks
    "package, no background",
    "package, background min size",
    "package, background fg",
    "package",
)
OVERLAP = (  # --rules overlap: the foreground threshold chosen on how well objects are outlined
    "package, before overlap",
    "package, no iou",
    "package",
)
SIZES = ("package", "package, sizes to 2")  # --rules sizes: the minimum size's grid
FALSE = ("package", "package, fp first")  # --rules fp: fewer false objects before the IoU


def finetuned(init: str, images: list, truths: list, n: int, steps: int) -> list:
    """``n`` models trained from ``init`` as bench_hitl's round 0 (seed = index)."""
    import napari_unet as nu
    from napari_unet.config import TrainConfig

    models = []
    for seed in range(n):
        rng = np.random.default_rng(100 + seed)
        pick = rng.permutation(len(images))[:3]
        labels = [few_labels(truths[i], 2, STROKES, rng) for i in pick]
        models.append(
            nu.train([images[i] for i in pick], labels, labels_kind="sparse-instances",
                     init=init, steps=steps, device="cpu", config=TrainConfig(seed=seed))
        )  # fmt: skip
    return models


def scratch(images: list, truths: list, n: int, steps: int, objects: int) -> list:
    """``n`` models trained from scratch on ``objects`` outlined objects + 3 strokes on each
    of ``images`` (seed = index): weak networks that find debris."""
    import napari_unet as nu
    from napari_unet.config import TrainConfig

    models = []
    for seed in range(n):
        rng = np.random.default_rng(200 + seed)
        labels = [few_labels(t, objects, STROKES, rng) for t in truths]
        models.append(
            nu.train(images, labels, labels_kind="sparse-instances", init=None, steps=steps,
                     device="cpu", config=TrainConfig(seed=seed))
        )  # fmt: skip
    return models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--init", required=False, help="a start model that never saw --split")
    p.add_argument("--split", choices=list(GROUPS), default="dense")
    p.add_argument("--test-images", type=int, default=24)
    p.add_argument("--pool-images", type=int, default=40, help="images the users label")
    p.add_argument("--draws", type=int, default=8, help="draws per number of held-out objects")
    p.add_argument("--held-out", default=",".join(map(str, HELD_OUT)))
    p.add_argument("--finetune", type=int, default=2, help="models fine-tuned from --init")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--data", default=str(DSB))
    p.add_argument("--rules",
                   choices=["search", "priors", "background", "overlap", "sizes", "fp"],
                   default="search",
                   help="compare searches (the table above), without a search the size "
                   "prior's fraction of a small labeled object (0.5, 0.25, 0.125), what "
                   "held-out background chooses under FEW_OBJECTS, or the foreground "
                   "threshold chosen on the objects' IoU, the minimum size's grid "
                   "up to two small labeled objects, or fewer false objects before the "
                   "IoU on a tie")  # fmt: skip
    p.add_argument("--scratch", type=int, default=0,
                   help="models trained from scratch on --train-images other images of the "
                   "group (not drawn from), as well as (or, without --init, instead of) the "
                   "start model and its fine-tuned ones")  # fmt: skip
    p.add_argument("--train-images", type=int, default=5)
    p.add_argument("--train-objects", type=int, default=4, help="outlined per training image")
    p.add_argument("--held-strokes", type=int, default=STROKES,
                   help="background strokes per image held out with the objects")  # fmt: skip
    p.add_argument("--zoom-each", action="store_true",
                   help="predict the test images as the package would with each chosen "
                   "setting (the zoom search reads the foreground threshold), and calibrate "
                   "on the pool images at the model's scale, as training does")  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="synthetic images, a few steps")
    args = p.parse_args()
    import napari_unet as nu
    from napari_unet.calibrate import scratch_start

    with tempfile.TemporaryDirectory(prefix="nu-cal-") as tmp:
        if args.tiny:
            args.data = str(write_tiny(Path(tmp) / "data"))
            args.split, args.test_images, args.pool_images, args.draws = "large", 1, 3, 1
            args.held_out, args.finetune, args.steps, args.train_images = "1,2", 1, 2, 1
            start = Path(tmp) / "start"
            images, truths = read(Path(args.data), ["synthetic014", "synthetic015"])
            nu.train(images, truths, labels_kind="instances", steps=4, device="cpu", init=None,
                     width=8, out=start)  # fmt: skip
            args.init = str(start)
        if not args.init and not args.scratch:
            sys.exit("--init: a start model that never saw --split (or --scratch N)")
        src = Path(args.data)
        _, group = split(src, args.split)
        test_stems = cap(group, args.test_images)
        rest = [s for s in group if s not in test_stems]
        train_stems = cap(rest, args.train_images) if args.scratch else []
        pool_stems = cap([s for s in rest if s not in train_stems], args.pool_images)
        test, pool = read(src, test_stems), read(src, pool_stems)
        held_out = [int(v) for v in args.held_out.split(",")]
        models, fresh = [], 0  # the last `fresh` are from scratch
        if args.init:
            models += [nu.load_model(args.init)]
            models += finetuned(args.init, *pool, args.finetune, args.steps)
        if args.scratch:
            objects = args.train_objects
            models += scratch(*read(src, train_stems), args.scratch, args.steps, objects)
            fresh = args.scratch
        print(header("cpu"))
        print(
            f"# start {args.init} + {args.finetune if args.init else 0} fine-tuned, "
            f"{args.scratch} from scratch on {len(train_stems)} other images x "
            f"{args.train_objects} objects ({args.steps} steps); split {args.split}: "
            f"{len(test_stems)} test, {len(pool_stems)} pool images; {args.draws} draws per "
            f"k; {PER_HELD_OUT} labeled objects per held-out one, {args.held_strokes} "
            "held-out background strokes per image"
        )
        rules = {"search": RULES, "priors": ("none", *PRIORS), "background": BACKGROUND,
                 "overlap": OVERLAP, "sizes": SIZES, "fp": FALSE}  # fmt: skip
        rules = rules[args.rules]
        results = defaultdict(list)  # (k, rule) -> test APs over models and draws
        background = defaultdict(lambda: np.zeros(2, int))  # rule -> [searched, moved]
        for m, model in enumerate(models):
            test_probs = Zoomed(model, test[0]) if args.zoom_each else probabilities(model, test[0])
            pool_probs = probabilities(model, pool[0], zoom=1 if args.zoom_each else "auto")
            cache: dict = {}
            for k in held_out:
                for d in range(args.draws):
                    rng = np.random.default_rng(1000 * k + d)
                    used, held, sizes = draw(pool[1], k, rng, args.held_strokes)
                    start = replace(model.config.postprocess, min_size=None)
                    if m >= len(models) - fresh:  # the package's start, not its own choice
                        fg = scratch_start("sparse-instances", model.config.train.balance)
                        start = replace(start, fg_threshold=fg.fg_threshold)
                    probs = [pool_probs[i] for i in used]
                    for name in rules:
                        chosen, record = choose(name, probs, held, start, sizes)
                        results[k, name].append(test_ap(chosen, test_probs, test[1], cache))
                        if record.get("search") in ("background", "overlap"):
                            moved = record["chosen"] != record["start"]
                            background[name, record["search"]] += np.array([1, moved])
            best = max(cache.values())
            if isinstance(test_probs, Zoomed):
                zooms = sorted({round(z, 2) for zs in test_probs.by.values() for z in zs})
                print(f"# model {m}: {len(test_probs.by)} settings, zooms {zooms}")
            print(f"# model {m}: best AP@0.5 of the settings tried on the test images {best:.3f}")
        print("| held-out objects | " + " | ".join(rules) + " |")
        print("|---" * (len(rules) + 1) + "|")
        for k in held_out:
            cells = [mean_std(results[k, name]) for name in rules]
            print(f"| {k} | " + " | ".join(cells) + " |")
        for (name, kind), (ran, moved) in background.items():
            print(f"# {name}: {kind} search in {ran} draws, a setting moved in {moved}")
        means = {name: np.mean([np.mean(results[k, name]) for k in held_out]) for name in rules}
        print("summary: mean test AP@0.5 over k: " +
              ", ".join(f"{n} {v:.3f}" for n, v in means.items()))  # fmt: skip


if __name__ == "__main__":
    main()

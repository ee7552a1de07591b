"""Human in the loop, simulated: held-out AP@0.5 per round of corrections, against the
number of objects the user touched, side by side with dense labels of the same images.

Round 0: ``--images`` images (default 3) of the training pool, ``--objects`` objects outlined
on each (default 2) and ``--strokes`` background strokes (default 3), as
``sparse-instances`` (``_splits.few_labels``); a model trains ``--steps`` steps from
``--init`` (the start model; it must not have seen the test group; ``scratch``: none, and
round 0 outlines objects even with ``--proposals``).  Each later round
(``--rounds``, default 3) the simulated user takes the current model's prediction on one
more pool image and fixes its ``--fixes`` worst objects (default 5; :func:`correct`): a
missed or badly segmented object is outlined, the objects of a merge are outlined, a
false positive on background is painted as background; nothing else on that image is
labeled.  Training then continues from the current model (``train(model=...)``, the
Train widget's "continue") for ``--steps`` more steps on all the labels so far.

With ``--proposals`` (the Annotate widget's proposals, issue 23) the user instead accepts
every proposal of the current model that is right (IoU >= 0.7 with a true object) with one
click and fixes the ``--fixes`` worst of the rest, in round 0 (the start model's proposals
on the first images) and every round; "touched" then counts clicks and fixes.  With
``--accept-all`` too, the user takes every proposal with one action ("accept all in
view") and fixes each wrong one with a fill click (issue 23's count stays the one above;
this arm is reported beside it).

The images the user labels and the test images are both of one group of images the
start model never saw (``--test-split``): at most ``--test-images`` of it (the same ones
every round) are scored, the user labels others of the group.  Every model is scored
by mean AP@0.5 over the test images, with the post-processing the model chose for
itself and the object-size zoom (what ``predict`` does).  Also scored:
the start model as it is, and a model trained from it with **dense** labels of the same
images (every object) for the same total number of steps.  ``--runs`` draws (seed = run
index); prints a table per round, mean ± std over the runs, one summary line, and with
``--plot FILE.png`` a figure: AP@0.5 against objects touched.  ``--merge A.json B.json``
trains nothing: the same table, summary and figure for runs made apart (``--runs 1
--first-run N`` side by side, each with ``--json``).

    python benchmarks/bench_hitl.py --init benchmarks/standin-w16 --test-split large \\
        --steps 200 --runs 3 --plot docs/images/hitl.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import DSB, GROUPS, cap, few_labels, header, mean_std, split, write_tiny  # noqa: E402


def correct(
    truth: np.ndarray, pred: np.ndarray, fixes: int, good: float = 0.5
) -> tuple[np.ndarray, int]:
    """The ``sparse-instances`` labels a user paints to fix the worst objects of ``pred``.

    Errors, worst first (lowest IoU with the best partner, then largest): each truth
    object without a partner at IoU >= ``good`` (a miss, part of a merge, or badly cut) is
    outlined; each predicted object without one that lies mostly on true background (a
    false positive) is painted background.  Only the first ``fixes`` errors are painted;
    everything else stays 0 (unlabeled).  Returns the labels and the objects touched.
    """
    truth, pred = np.asarray(truth), np.asarray(pred)
    best_t, best_p = _best_ious(truth, pred)
    errors = []  # (iou, -size, kind, id)
    for t, size in zip(*np.unique(truth[truth > 0], return_counts=True), strict=True):
        if best_t.get(int(t), 0.0) < good:  # a miss, part of a merge, or badly cut
            errors.append((best_t.get(int(t), 0.0), -int(size), "outline", int(t)))
    for p, size in zip(*np.unique(pred[pred > 0], return_counts=True), strict=True):
        on_background = (truth[pred == p] == 0).mean() >= 0.5
        if best_p.get(int(p), 0.0) < good and on_background:  # a false positive
            errors.append((0.0, -int(size), "background", int(p)))
    errors.sort(key=lambda e: (e[0], e[1]))
    labels = np.zeros(truth.shape, np.uint16)
    next_id = 2
    for _, _, kind, value in errors[:fixes]:
        if kind == "outline":
            labels[truth == value] = next_id
            next_id += 1
        else:
            labels[(pred == value) & (truth == 0) & (labels == 0)] = 1
    return labels, min(fixes, len(errors))


def accept_and_correct(
    truth: np.ndarray,
    pred: np.ndarray,
    fixes: int,
    good: float = 0.7,
    strokes: int = 0,
    rng: np.random.Generator | None = None,
    accept_all: bool = False,
) -> tuple[np.ndarray, int, int]:
    """The ``sparse-instances`` labels a user makes from the model's proposals ``pred``.

    Every proposal that matches a true object at IoU >= ``good`` is accepted with one click
    (``napari_unet.proposals.placement``, as the Annotate widget does); of the rest, the
    ``fixes`` worst errors (a true object with no proposal at IoU >= ``good`` outlined, a
    false positive painted background; :func:`correct`) are fixed, never over what was
    accepted; then ``strokes`` background strokes (as in round 0 of the painting arm,
    ``_splits.paint_strokes``) on unlabeled true background, so that the labels hold
    background even when no fix painted any.  Returns the labels, the clicks, and the
    objects outlined or painted plus the strokes.

    ``accept_all``: the widget's "accept all in view" instead, one click for every
    proposal, then one fill click per wrong proposal (IoU < ``good``): painted background
    where it lies mostly on true background, erased otherwise; the ``fixes`` worst misses
    are then outlined on the free pixels.  Clicks: 1 + the wrong proposals.
    """
    from napari_unet.proposals import placement

    truth, pred = np.asarray(truth), np.asarray(pred).astype(np.int32)
    _, best_p = _best_ious(truth, pred)
    labels = np.zeros(truth.shape, np.uint16)
    right = sorted(k for k, iou in best_p.items() if iou >= good)
    wrong = sorted(int(k) for k in np.unique(pred[pred > 0]) if best_p.get(int(k), 0.0) < good)
    clicks = len(right)
    for p in right + (wrong if accept_all else []):
        one = placement(labels, pred, int(p), "sparse-instances")
        labels[one.indices] = one.value
    if accept_all:
        clicks = 1 + len(wrong)  # accept all, then a fill click on each wrong one
        for p in wrong:
            mine = (pred == p) & (labels > 1)
            on_background = (truth[pred == p] == 0).mean() >= 0.5
            labels[mine] = 1 if on_background else 0
        pred = np.where(np.isin(pred, wrong), 0, pred)  # what remains to fix: the misses
    fixed, n = correct(truth, pred, fixes, good=good)
    free = labels == 0
    top = max(int(labels.max()), 1)
    labels[free & (fixed > 1)] = fixed[free & (fixed > 1)] - 1 + top  # ids after the accepted
    labels[free & (fixed == 1)] = 1
    if strokes:
        from _splits import paint_strokes
        from scipy import ndimage

        allowed = (ndimage.distance_transform_edt(truth == 0) >= 3) & (labels == 0)
        labels[paint_strokes(allowed, strokes, rng or np.random.default_rng(0))] = 1
    return labels, clicks, n + strokes


def label_region(
    truth: np.ndarray,
    pred: np.ndarray | None,
    region: tuple[slice, ...],
    labels: np.ndarray,
    good: float = 0.7,
) -> tuple[np.ndarray, int]:
    """``labels`` after the user labels everything in ``region`` of one image.

    Each true object that reaches into the region is taken whole: accepted with one click
    when a proposal of ``pred`` matches it at IoU >= ``good`` (``pred`` None: no proposals),
    else outlined; the true background inside the region is painted background (one
    stroke).  Pixels labeled already are left as they are.  Returns the new labels and
    the actions (clicks + outlines + 1 stroke).
    """
    truth = np.asarray(truth)
    labels = np.array(labels, dtype=np.uint16)
    actions = 0
    top = max(int(labels.max()) + 1, 2)
    if pred is not None:
        pred = np.asarray(pred)
        area = dict(zip(*np.unique(pred, return_counts=True), strict=True))
    for t in np.unique(truth[region]):
        if t == 0:
            continue
        mask = truth == t
        if pred is not None:  # the proposal that matches it best, if it is right
            ids, inter = np.unique(pred[mask & (pred > 0)], return_counts=True)
            iou = [n / (area[i] + mask.sum() - n) for i, n in zip(ids, inter, strict=True)]
            if iou and max(iou) >= good:
                mask = pred == ids[int(np.argmax(iou))]  # accepted: the proposal's pixels
        free = mask & (labels == 0)
        if free.any():
            labels[free] = top
            top += 1
            actions += 1  # a click on a right proposal or an outline: one action each
    background = np.zeros(truth.shape, bool)
    background[region] = truth[region] == 0
    background &= labels == 0
    if background.any():
        labels[background] = 1
        actions += 1
    return labels, actions


def choose_region(
    how: str, model, images: list, labels: list, rng: np.random.Generator
) -> tuple[int, tuple[slice, ...]] | None:
    """Where the user labels next: ``"next"`` the Annotate widget's "where to label next"
    (the most uncertain label-free window of ``REGION_SIZE`` over all ``images``),
    ``"random"`` a label-free window of the same size on a random image."""
    import napari_unet as nu
    from napari_unet.proposals import REGION_SIZE, next_region, uncertainty

    if how == "random":
        for i in rng.permutation(len(images)):
            # a random field's window means: every label-free window equally likely to win
            noise = rng.random(np.shape(labels[i])).astype(np.float32)
            region = next_region(noise, labels[i], REGION_SIZE)
            if region is not None:
                return int(i), region
        return None
    best = None
    for i, (image, lab) in enumerate(zip(images, labels, strict=True)):
        uncertain = uncertainty(nu.predict_proba(model, image, device="cpu"))
        region = next_region(uncertain, lab, REGION_SIZE)
        if region is not None and (best is None or uncertain[region].mean() > best[0]):
            best = (float(uncertain[region].mean()), i, region)
    return None if best is None else best[1:]


def _best_ious(truth: np.ndarray, pred: np.ndarray) -> tuple[dict, dict]:
    """The best IoU of each truth object and of each predicted object with the other side."""
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    area_t = dict(zip(*np.unique(t, return_counts=True), strict=True))
    area_p = dict(zip(*np.unique(p, return_counts=True), strict=True))
    both = (t > 0) & (p > 0)
    pairs, inter = np.unique(np.stack([t[both], p[both]]), axis=1, return_counts=True)
    best_t: dict[int, float] = {}
    best_p: dict[int, float] = {}
    for (a, b), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        iou = n / (area_t[a] + area_p[b] - n)
        best_t[a] = max(best_t.get(a, 0.0), iou)
        best_p[b] = max(best_p.get(b, 0.0), iou)
    return best_t, best_p


def score(model, images: list, truths: list) -> float:
    """Mean AP@0.5 over the test images, as ``predict --instances`` segments them."""
    import napari_unet as nu
    from napari_unet.metrics import match_instances

    return float(
        np.mean(
            [
                match_instances(t, nu.predict(model, i, instances=True, device="cpu"), 0.5)["ap"]
                for i, t in zip(images, truths, strict=True)
            ]
        )
    )


def read(src: Path, stems: list[str]) -> tuple[list, list]:
    from napari_unet.files import read_image

    images = [read_image(src / "images" / f"{s}.png") for s in stems]
    truths = [read_image(src / "labels" / f"{s}.png") for s in stems]
    return images, truths


def run_once(src: Path, pool: list[str], test: tuple, run: int, args) -> list[dict]:
    """One draw: round 0, the correction rounds, and the dense-label model."""
    import napari_unet as nu
    from napari_unet.config import TrainConfig

    rng = np.random.default_rng(run)
    stems = [str(s) for s in rng.permutation(pool)[: args.images + args.rounds]]
    images, truths = read(src, stems)
    given = {"distill": args.distill, "balance": args.balance}
    cfg = TrainConfig(seed=run, **{k: v for k, v in given.items() if v is not None})
    steps = dict(steps=args.steps, device="cpu", config=cfg)
    again = steps  # the correction rounds: continued from the last model
    if args.continue_lr is not None:
        again = {**steps, "config": replace(cfg, lr=args.continue_lr)}
    start = None if args.init == "scratch" else nu.load_model(args.init)
    if args.proposals and start is not None:  # round 0: the start model's proposals
        made = [
            accept_and_correct(
                t,
                nu.predict(start, i, instances=True, device="cpu"),
                args.fixes,
                strokes=args.strokes,
                rng=rng,
                accept_all=args.accept_all,
            )  # fmt: skip
            for i, t in zip(images[: args.images], truths[: args.images], strict=True)
        ]
        labels = [lab for lab, _, _ in made]
        touched = sum(clicks + n for _, clicks, n in made)
        if not any(lab.max() > 1 for lab in labels):  # only debris fixed: outline one object
            touched += outline_largest(truths[0], labels[0])
    else:
        labels = [few_labels(t, args.objects, args.strokes, rng) for t in truths[: args.images]]
        touched = sum(int(lab.max()) - 1 for lab in labels)
    rows = []
    if start is not None:  # from scratch there is no model to score before round 0
        rows.append({"run": run, "round": "start", "touched": 0, "ap50": score(start, *test)})
        print_row(rows[-1])
    folder = Path(args.guard) / f"run-{run}" if args.guard else None
    if folder is not None and folder.exists():  # its guard would judge against that model
        sys.exit(f"--guard {args.guard}: {folder} exists (an earlier run's?): give a new folder")
    trained, model = train_round(
        folder, start, images[: args.images], labels, init=args.init, **steps
    )  # fmt: skip
    rows.append(round_row(run, 0, touched, trained, model, test))
    print_row(rows[-1])
    keep(trained, args, f"run-{run}/round-0")
    for r in range(1, args.rounds + 1):
        touched += next_labels(r, model, images, truths, labels, rng, args)
        have = [i for i, lab in enumerate(labels) if lab.any()]
        cont = trained if folder is None else nu.load_model(folder)  # what "continue" trains
        trained, model = train_round(
            folder, start, [images[i] for i in have], [labels[i] for i in have], model=cont,
            **again,
        )  # fmt: skip
        rows.append(round_row(run, r, touched, trained, model, test))
        print_row(rows[-1])
        keep(trained, args, f"run-{run}/round-{r}")
    if args.no_dense:
        return rows
    n = args.images + args.rounds
    dense = nu.train(
        images[:n], truths[:n], labels_kind="instances", init=args.init,
        **{**steps, "steps": args.steps * (args.rounds + 1)},
    )  # fmt: skip
    objects = sum(len(np.unique(t[t > 0])) for t in truths[:n])
    rows.append({"run": run, "round": "dense", "touched": objects, "ap50": score(dense, *test)})
    print_row(rows[-1])
    return rows


def train_round(folder: Path | None, start, images: list, labels: list, **kwargs) -> tuple:
    """One round's training on ``sparse-instances`` labels: the model trained, and the one
    the user then predicts with.  Without ``--guard`` (``folder`` None) they are the same.
    With it the round trains into ``folder`` as the Train widget does, and the user takes
    the product's word: the start model when training says it did better ("Use <start
    model>", ``Finished.start_model``), the folder's previous model when the regression
    guard kept it (``Finished.path`` is then ``<folder>.rejected``), else the new model.
    The next round continues the model the folder holds (the widget's next Train)."""
    import napari_unet as nu
    from napari_unet.events import Finished

    if folder is None:
        model = nu.train(images, labels, labels_kind="sparse-instances", **kwargs)
        return model, model
    ends: list[Finished] = []
    model = nu.train(
        images, labels, labels_kind="sparse-instances", out=folder,
        callback=lambda e: ends.append(e) if isinstance(e, Finished) else None, **kwargs,
    )  # fmt: skip
    end = ends[-1]
    if end.start_model is not None and start is not None:
        return model, start
    if end.path is not None and Path(end.path) != folder:  # the guard kept the previous
        return model, nu.load_model(folder)
    return model, model


def round_row(run: int, r: int, touched: int, trained, model, test: tuple) -> dict:
    """A round's row: AP@0.5 of the model the user predicts with and, when the product
    advised another one (``--guard``), of the model trained (``trained``)."""
    row = {"run": run, "round": r, "touched": touched, "ap50": score(model, *test)}
    if model is not trained:
        row["trained"] = score(trained, *test)
    return row


def outline_largest(truth: np.ndarray, labels: np.ndarray) -> int:
    """Outline (in place) the largest true object not labeled yet, as the next id; the
    actions (1, or 0 when there is none)."""
    free = [
        (int((truth == t).sum()), int(t))
        for t in np.unique(truth[truth > 0])
        if not labels[truth == t].any()
    ]
    if not free:
        return 0
    labels[truth == max(free)[1]] = max(int(labels.max()), 1) + 1
    return 1


def next_labels(r: int, model, images: list, truths: list, labels: list, rng, args) -> int:
    """Round ``r``'s labels, added to ``labels`` (one array per image); returns the actions.

    Without ``--regions``: the current model's prediction on image ``--images + r - 1``,
    its worst errors fixed (accepting the right proposals first with ``--proposals``).
    With it: one window chosen by :func:`choose_region` over all the run's images,
    labeled whole (:func:`label_region`).
    """
    import napari_unet as nu

    if args.regions:
        labels += [np.zeros(np.shape(t), np.uint16) for t in truths[len(labels) :]]
        chosen = choose_region(args.regions, model, images, labels, rng)
        if chosen is None:  # every window holds a label
            return 0
        i, region = chosen
        pred = None
        if args.proposals:
            pred = nu.predict(model, images[i], instances=True, device="cpu")
        labels[i], actions = label_region(truths[i], pred, region, labels[i])
        return actions
    k = args.images + r - 1
    pred = nu.predict(model, images[k], instances=True, device="cpu")
    if args.proposals:
        fixed, clicks, actions = accept_and_correct(
            truths[k], pred, args.fixes, strokes=args.round_strokes, rng=rng,
            accept_all=args.accept_all,
        )  # fmt: skip
        actions += clicks
    else:
        fixed, actions = correct(truths[k], pred, args.fixes)
    labels.append(fixed)
    return actions


def keep(model, args, name: str) -> None:
    """With ``--keep DIR``: the model of a round in ``DIR/run-R/round-K`` (to look into)."""
    if args.keep:
        from napari_unet.store import save_model

        save_model(model, Path(args.keep) / name)


def print_row(row: dict) -> None:
    advised = f" (trained: {row['trained']:.3f})" if "trained" in row else ""
    print(f"| {row['run']} | {row['round']} | {row['touched']} | {row['ap50']:.3f}{advised} |",
          flush=True)  # fmt: skip


def plot(rows: list[dict], path: Path, title: str) -> None:
    """AP@0.5 against objects touched: each run's rounds, the mean, start and dense."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    runs = sorted({r["run"] for r in rows})
    for run in runs:
        mine = [r for r in rows if r["run"] == run and isinstance(r["round"], int)]
        ax.plot([r["touched"] for r in mine], [r["ap50"] for r in mine], "o-", color="0.75",
                lw=1, label="one run" if run == runs[0] else None)  # fmt: skip
    rounds = sorted({r["round"] for r in rows if isinstance(r["round"], int)})
    mean_x = [np.mean([r["touched"] for r in rows if r["round"] == k]) for k in rounds]
    mean_y = [np.mean([r["ap50"] for r in rows if r["round"] == k]) for k in rounds]
    ax.plot(mean_x, mean_y, "o-", color="C0", lw=2, label="corrections, mean")
    starts = [r["ap50"] for r in rows if r["round"] == "start"]
    if starts:  # none from scratch
        start = np.mean(starts)
        ax.axhline(start, color="C3", ls="--", label=f"start model, no training ({start:.2f})")
    dense = [r for r in rows if r["round"] == "dense"]
    if dense:
        ax.plot([r["touched"] for r in dense], [r["ap50"] for r in dense], "s", color="C2",
                label="dense labels, same images")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("objects touched by the user (log)")
    ax.set_ylabel("held-out AP@0.5")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--init",
        default="builtin:nuclei",
        help="the start model (not trained on the test group: builtin:nuclei saw all of "
        "DSB2018), or scratch (round 0 then outlines objects even with --proposals)",
    )
    p.add_argument("--test-split", choices=list(GROUPS), default="large")
    p.add_argument("--test-images", type=int, default=24, help="at most this many test images")
    p.add_argument("--images", type=int, default=3, help="round 0: images")
    p.add_argument("--objects", type=int, default=2, help="round 0: outlined objects per image")
    p.add_argument("--strokes", type=int, default=3, help="round 0: background strokes per image")
    p.add_argument("--rounds", type=int, default=3, help="correction rounds after round 0")
    p.add_argument("--fixes", type=int, default=5, help="objects fixed per correction round")
    p.add_argument("--steps", type=int, default=200, help="training steps per round")
    p.add_argument(
        "--proposals",
        action="store_true",
        help="the user accepts the model's right proposals (IoU >= 0.7) with a click, then "
        "fixes --fixes errors per image; 'touched' counts clicks + fixes (round 0 too)",
    )
    p.add_argument(
        "--accept-all",
        action="store_true",
        help="with --proposals: the user takes every proposal at once (the Annotate widget's "
        "'accept all in view', one action) and fixes each wrong one with a fill click "
        "(painted background or erased), then outlines --fixes misses",
    )
    p.add_argument(
        "--regions",
        choices=["next", "random"],
        help="each round the user labels one whole REGION_SIZE window instead of fixing "
        "errors: the Annotate widget's 'where to label next' (next) or a random label-free "
        "one (random), over all the run's images",
    )
    p.add_argument(
        "--round-strokes",
        type=int,
        default=0,
        help="with --proposals: background strokes the user also paints on each correction "
        "round's image (counted as actions)",
    )
    p.add_argument(
        "--no-dense", action="store_true", help="skip the dense-label model (the same in every arm)"
    )
    p.add_argument(
        "--guard",
        metavar="DIR",
        help="train each run's rounds into DIR/run-R as the Train widget does, and score the "
        "model the product then says to predict with: the start model when it did better on "
        "the held-out labels, the previous model when the regression guard kept it (runs "
        "made apart: the same DIR)",
    )
    p.add_argument("--distill", type=float, help="distillation weight (default: the package's)")
    p.add_argument("--balance", type=float, help="painted background's share of the loss "
                   "(TrainConfig.balance; default: the package's)")  # fmt: skip
    p.add_argument("--continue-lr", type=float, help="learning rate of the correction rounds "
                   "(continued from the last model; default: the recipe's)")  # fmt: skip
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--first-run", type=int, default=0, help="seed of the first run (add runs to earlier ones)"
    )
    p.add_argument("--data", default=str(DSB), help="folder with images/ and labels/")
    p.add_argument("--plot", help="write the figure to this PNG")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--keep", help="save every round's model under this folder")
    p.add_argument("--tiny", action="store_true", help="synthetic images, a few steps")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="train nothing: the table, summary and --plot of runs made apart (their --json "
        "files, e.g. --runs 1 --first-run N side by side)",
    )
    args = p.parse_args()
    if args.merge:
        merge(args.merge, args)
        return
    if args.accept_all and (not args.proposals or args.regions):
        p.error("--accept-all needs --proposals, and works on correction rounds (not --regions)")
    with tempfile.TemporaryDirectory(prefix="nu-hitl-") as tmp:
        if args.tiny:
            args.data = str(write_tiny(Path(tmp) / "data"))
            args.images, args.rounds, args.steps, args.runs, args.test_images = 2, 1, 2, 1, 1
            args.plot = args.plot or str(Path(tmp) / "hitl.png")
        if args.tiny and args.init != "scratch":
            start = Path(tmp) / "start"
            images, truths = read(Path(args.data), [f"synthetic{i:03d}" for i in (14, 15)])
            import napari_unet as nu

            nu.train(images, truths, labels_kind="instances", steps=4, device="cpu", init=None,
                     width=8, out=start)  # fmt: skip
            args.init = str(start)
        src = Path(args.data)
        if not (src / "images").is_dir():
            sys.exit(f"needs images/ and labels/ under {src}")
        _, group = split(src, args.test_split)  # a group the start model never saw
        test_stems = cap(group, args.test_images)
        pool = [s for s in group if s not in test_stems]  # what the user labels: the rest
        if len(pool) < args.images + args.rounds:
            sys.exit(
                f"group {args.test_split} has {len(group)} images: too few for "
                f"{len(test_stems)} test images and {args.images + args.rounds} to label"
            )
        test = read(src, test_stems)
        print(header("cpu"))
        print(
            f"# start {args.init}; test: split {args.test_split}, {len(test[0])} images; round 0: "
            f"{args.images} image(s) x {args.objects} object(s) + {args.strokes} stroke(s); "
            f"{args.rounds} round(s) of {args.fixes} fixes; {args.steps} steps per round; "
            f"distill {args.distill if args.distill is not None else 'default'}, "
            f"balance {args.balance if args.balance is not None else 'default'}"
            + ("" if args.continue_lr is None else f"; rounds continue at lr {args.continue_lr}")
            + ("; with proposals (touched = clicks + fixes)" if args.proposals else "")
            + (", accepted all at once (a fill click per wrong one)" if args.accept_all else "")
            + (f", {args.round_strokes} stroke(s) a round" if args.round_strokes else "")
            + (f"; one {args.regions} region per round" if args.regions else "")
        )
        print("| run | round | objects touched | AP@0.5 |")
        print("|---" * 4 + "|")
        rows = []
        for run in range(args.first_run, args.first_run + args.runs):
            rows += run_once(src, pool, test, run, args)
        report(rows, args, len(test[0]))


# what may differ between the runs of one table (--merge): where they ran and were written
PER_RUN = ("runs", "first_run", "data", "plot", "json", "keep", "merge")
# the libraries a from-scratch training on a few objects is sensitive to (session 26: a
# fresh venv with other numpy/scipy/scikit-image moved round 0 by up to 0.05)
LIBRARIES = ("torch", "numpy", "scipy", "scikit-image")


def environment() -> dict[str, str]:
    """Python, the libraries' versions and the threads torch uses: saved with --json."""
    from importlib.metadata import version

    import torch

    found = {"python": platform.python_version(), "threads": str(torch.get_num_threads())}
    return {**found, **{name: version(name) for name in LIBRARIES}}


def merge(paths: list[str], args: argparse.Namespace) -> None:
    """The table, summary and figure of runs made apart (``--runs 1 --first-run N`` side by
    side), from their ``--json`` files: the same benchmark, each run once."""
    rows: list[dict] = []
    first: dict | None = None
    first_env: dict | None = None
    mixed = False
    for path in paths:
        try:
            saved = json.loads(Path(path).read_text())
            given, mine = saved["args"], saved["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sys.exit(f"--merge {path}: not a JSON file written by bench_hitl.py --json ({exc})")
        if first is None:
            first = {**given, "tested": saved.get("tested", given["test_images"])}
        differ = sorted(k for k in given if k not in PER_RUN and given[k] != first.get(k))
        if differ:
            k = differ[0]
            sys.exit(
                f"--merge {path}: {k} is {given[k]!r} there, {first.get(k)!r} in {paths[0]}: "
                "runs of different benchmarks (only the runs' seeds and files may differ)"
            )
        again = {r["run"] for r in mine} & {r["run"] for r in rows}
        if again:
            sys.exit(f"--merge {path}: run {min(again)} is in another file too")
        env = saved.get("environment", {})  # {}: written before environments were saved
        if first_env is None:
            first_env = env
        keys = sorted(set(env) | set(first_env))
        changed = [
            f"{k} {env.get(k)} there, {first_env.get(k)} in {paths[0]}"
            for k in keys
            if env.get(k) != first_env.get(k)
        ]
        if changed:  # a warning: compare arms only within one environment
            print(f"# warning: --merge {path}: another environment: {'; '.join(changed)}")
            mixed = True
        rows += mine
    assert first is not None
    runs = sorted({r["run"] for r in rows})
    merged = argparse.Namespace(**{**first, "runs": len(runs), "first_run": runs[0]})
    merged.plot, merged.json, merged.merge = args.plot, args.json, None
    print(header("cpu"))
    print(f"# merged from {len(paths)} file(s): runs {', '.join(map(str, runs))}")
    print("| run | round | objects touched | AP@0.5 |")
    print("|---" * 4 + "|")
    for row in sorted(rows, key=lambda r: r["run"]):
        print_row(row)
    report(rows, merged, int(first["tested"]), {"mixed": "yes"} if mixed else first_env)


def report(
    rows: list[dict], args: argparse.Namespace, tested: int, env: dict | None = None
) -> None:
    """The figure, the mean per round, the JSON rows (with ``env``, default: this
    process's :func:`environment`) and the summary line."""
    if args.plot:
        plot(rows, Path(args.plot), f"{args.test_split}: {tested} test images, "
             f"{args.runs} run(s), {args.steps} steps per round")  # fmt: skip
        print(f"figure: {args.plot}")
    print()
    guarded = bool(getattr(args, "guard", None))
    print("| round | objects touched (mean) | AP@0.5 (mean ± std) |"
          + (" the models trained |" if guarded else ""))  # fmt: skip
    print("|---" * (4 if guarded else 3) + "|")
    means = {}
    for k in ["start", *range(args.rounds + 1), *([] if args.no_dense else ["dense"])]:
        mine = [r for r in rows if r["round"] == k]
        if not mine:  # no start row from scratch
            continue
        means[k] = mean_std([r["ap50"] for r in mine])
        trained = f" {mean_std([r.get('trained', r['ap50']) for r in mine])} |" if guarded else ""
        print(f"| {k} | {np.mean([r['touched'] for r in mine]):.0f} | {means[k]} |{trained}")
    if args.json:
        env = environment() if env is None else env  # a merge keeps its runs' ({}: unknown)
        saved = {"args": vars(args), "tested": tested, "environment": env, "rows": rows}
        Path(args.json).write_text(json.dumps(saved, indent=1))
    print(
        f"summary: mean AP@0.5 on {tested} images of {args.test_split}, {args.runs} "
        "run(s): " + "; ".join(f"{k} {m.split()[0]}" for k, m in means.items())
    )


if __name__ == "__main__":
    main()

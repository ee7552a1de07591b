"""Which recipe makes a built-in model that generalises?  Candidates side by side on
DSB2018 image groups none of them saw.

Every candidate (``--candidate NAME=RECIPE.json``; ``NAME=`` for the CLI defaults) is
trained from scratch the way ``resources/train_builtin.py`` trains ``builtin:nuclei``
(``--labels-kind instances``, ``--width``, ``--steps``, seed = run index), on every
DSB2018 image outside the held-out groups (``--holdout``, default ``dense large hires``:
crowded nuclei, big nuclei, the 1024x1024 brightfield-like group; see ``_splits.GROUPS``),
then used with no further training on each held-out group (``predict --instances``,
zoom auto, the model's own post-processing) and scored with ``evaluate``.  Prints the
mean AP@0.5 per group and candidate, the pooled AP@0.5 and the object-count ratio; the
same images and seeds for every candidate.  A recipe file holds ``napari-unet train
--config`` settings, e.g. ``{"augment_invert": 0.3, "augment_blur": 1.5,
"augment_scale": [0.6, 1.6]}``; its ``steps`` and ``width``, when it has them, replace
``--steps`` and ``--width`` for that candidate (longer or wider against the default).

    python benchmarks/bench_builtin.py --steps 4000 --candidate default= \\
        --candidate strong=resources/recipes/builtin-augment.json --json builtin.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _splits import (  # noqa: E402
    DSB,
    GROUPS,
    header,
    image_shape,
    link,
    mean_std,
    predict_and_score,
    train,
    write_tiny,
)


def parse_candidate(text: str) -> tuple[str, str | None]:
    name, sep, recipe = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"--candidate wants NAME=RECIPE.json or NAME=, got {text!r}"
        )
    if recipe and not Path(recipe).is_file():
        raise argparse.ArgumentTypeError(f"--candidate {name}: no recipe file {recipe}")
    return name, recipe or None


def group_stems(src: Path, holdout: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The training stems (outside every held-out group) and each group's stems."""
    stems = sorted(p.stem for p in (src / "images").iterdir())
    shapes = {s: image_shape(src / "images" / f"{s}.png") for s in stems}
    groups = {g: [s for s in stems if shapes[s] in GROUPS[g]] for g in holdout}
    held = {s for members in groups.values() for s in members}
    return [s for s in stems if s not in held], groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--candidate",
        type=parse_candidate,
        action="append",
        metavar="NAME=RECIPE.json",
        help="a recipe to compare, repeatable (default: default=, the CLI's)",
    )
    p.add_argument("--holdout", nargs="+", default=["dense", "large", "hires"], choices=GROUPS)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--runs", type=int, default=1, help="trainings per candidate (seeds 0..)")
    p.add_argument(
        "--first-run", type=int, default=0, help="seed of the first run (add runs to earlier ones)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", type=Path, default=DSB)
    p.add_argument("--keep", type=Path, help="keep the models and predictions here")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="synthetic stand-in data and 3 steps: checks that the script runs",
    )
    args = p.parse_args()
    args.candidate = args.candidate or [("default", None)]
    with tempfile.TemporaryDirectory(prefix="bench-builtin-") as tmp:
        run(args, args.keep or Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    src = write_tiny(work / "tiny-data") if args.tiny else args.data
    steps = 3 if args.tiny else args.steps
    holdout = ["dense", "large"] if args.tiny else args.holdout
    train_stems, groups = group_stems(src, holdout)
    train_dir = link(src, train_stems, work / "train")
    test_dirs = {g: link(src, s, work / f"test-{g}") for g, s in groups.items()}
    print(header(args.device))
    print(
        f"# train: {len(train_stems)} images; held out: "
        + ", ".join(f"{g} {len(s)}" for g, s in groups.items())
        + f"; {steps} steps, width {args.width}, {args.runs} run(s)",
        flush=True,
    )

    results: dict[str, dict[str, list[dict]]] = {}
    for name, recipe in args.candidate:
        results[name] = {g: [] for g in groups}
        for run in range(args.first_run, args.first_run + args.runs):
            model = work / f"{name}-run{run}"
            own = json.loads(Path(recipe).read_text()) if recipe else {}
            width = own.get("width", args.width)
            n = 3 if args.tiny else own.get("steps", steps)
            extra = ["--width", str(width), *(["--config", recipe] if recipe else [])]
            info = train(train_dir, model, "instances", 0, args.device, run, extra, steps=n)
            for g, test in test_dirs.items():
                score = predict_and_score(model, test, work / f"pred-{name}-{run}-{g}", args.device)
                results[name][g].append(
                    {**score, "train_s": info["train_s"], "steps": n, "width": width}
                )
                print(
                    f"{name} run {run} {g}: AP@0.5 {score['ap50']:.3f} pooled "
                    f"{score['pooled_ap50']:.3f} predicted/true {score['count_ratio']:.2f} "
                    f"(width {width}, {n} steps, trained {info['train_s']:.0f} s)",
                    flush=True,
                )

    print()
    print("| candidate | " + " | ".join(groups) + " | mean |")
    print("| --- |" + " ---: |" * (len(groups) + 1))
    overall = {}
    for name, by_group in results.items():
        cells = [mean_std([r["ap50"] for r in rows]) for rows in by_group.values()]
        scores = [r["ap50"] for rows in by_group.values() for r in rows]
        overall[name] = sum(scores) / len(scores)
        print(f"| {name} | " + " | ".join(cells) + f" | {overall[name]:.3f} |")
    best = max(overall, key=overall.get)
    print(
        "summary: mean AP@0.5 over the held-out groups: "
        + ", ".join(f"{n} {v:.3f}" for n, v in overall.items())
        + f"; best {best}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"steps": steps, "width": args.width, "results": results}, indent=1)
        )


if __name__ == "__main__":
    main()

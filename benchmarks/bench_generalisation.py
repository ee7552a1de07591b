"""Generalisation: AP@0.5 of DSB2018 nuclei models on image groups they never saw.

Splits of ../shared/data/dsb2018-nuclei (557 grey images; see ``_splits.py``):

- ``random``: the sha1 split of ``bench_accuracy.py`` (test 60 images, train 497);
- ``large``: test = 360x360, 512x640, 1040x1388 and 256x320 images, big nuclei (108 / 449);
- ``dense``: test = 520x696, 603x1272 and 260x347 images, crowded nuclei (99 / 458);
- ``hires``: test = 1024x1024 images (16 / 541).

For every split and run (``--seed`` = run index) it trains with the CLI defaults
(``napari-unet train --labels-kind instances --time-budget T --device D`` plus
``--extra``) on everything not held out (at most ``--max-train`` images, the same
ones on every machine), then predicts the test images three times with the same
model: ``fixed``, the post-processing of every model before issue 11
(``--seed-threshold 0.8 --fg-threshold 0.6 --min-size 15 --zoom 1``); ``calibrated``,
the post-processing the model chose for itself when training ended (``--zoom 1``);
``zoom``, the CLI default: calibrated, and images whose objects are much larger or
smaller than the model's predicted again at the zoom that matches them (``--zoom auto``).
Reports the mean AP@0.5 over the test images (``napari-unet evaluate``), the pooled
AP@0.5 (all objects of all test images: TP / (TP + FP + FN)) and the object count
ratio predicted / true.  Prints a table per run, mean ± std per split and one summary
line; works in a temporary folder (``--keep DIR`` keeps it).

    python benchmarks/bench_generalisation.py --time-budget 300 --device cpu
    python benchmarks/bench_generalisation.py --splits random large dense hires --runs 3 \\
        --time-budget 120 --device cuda --extra="--config resources/recipes/fast-gpu.json" \\
        --json generalisation.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _splits import (  # noqa: E402
    DSB,
    FIXED_POSTPROCESS,
    SPLITS,
    cap,
    header,
    link,
    mean_std,
    predict_and_score,
    split,
    train,
    write_tiny,
)

MODES = {
    "fixed": (*FIXED_POSTPROCESS, "--zoom", "1"),
    "calibrated": ("--zoom", "1"),
    "zoom": ("--zoom", "auto"),
}


def run_split(src: Path, name: str, work: Path, args: argparse.Namespace) -> list[dict]:
    """Train ``args.runs`` models on split ``name``; score each with both post-processings."""
    train_stems, test_stems = split(src, name)
    train_stems = cap(train_stems, args.max_train)
    link(src, train_stems, work / "train")
    link(src, test_stems, work / "test")
    rows = []
    for run in range(args.runs):
        model = work / f"model-{run}"
        row = {"split": name, "run": run, "n_train": len(train_stems), "n_test": len(test_stems)}
        row |= train(
            work / "train",
            model,
            "instances",
            args.time_budget,
            args.device,
            seed=run,
            extra=shlex.split(args.extra),
            steps=args.steps,
        )
        for mode, flags in MODES.items():
            score = predict_and_score(
                model, work / "test", work / f"pred-{run}-{mode}", args.device, flags
            )
            row[mode] = score
        print_row(row)
        rows.append(row)
    return rows


COLUMNS = (
    ("ap50", "AP@0.5", ".3f"),
    ("pooled_ap50", "pooled", ".3f"),
    ("count_ratio", "pred/true", ".2f"),
)


def print_row(row: dict) -> None:
    seed, fg, size = row["postprocess"]
    cells = [f"{row[m][k]:{f}}" for k, _, f in COLUMNS for m in MODES]
    print(
        f"| {row['split']} | {row['run']} | {row['n_train']} | {row['n_test']} | {row['steps']} "
        f"| {seed} / {fg} / {size} | " + " | ".join(cells) + " |",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=["random", "large", "dense"])
    p.add_argument("--time-budget", type=float, default=300)
    p.add_argument(
        "--steps", type=int, help="train this many steps instead (comparisons on a busy machine)"
    )
    p.add_argument("--runs", type=int, default=1, help="models per split (seed = run index)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--extra", default="", help='more train flags, e.g. --extra="--width 16"')
    p.add_argument("--max-train", type=int, default=None, help="at most this many train images")
    p.add_argument("--data", default=str(DSB), help="folder with images/ and labels/")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", help="work in this folder and keep it")
    p.add_argument("--tiny", action="store_true", help="12 synthetic images, 1 s: a quick check")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="nu-gen-") as tmp:
        work = Path(args.keep or tmp)
        if args.tiny:
            args.data = str(write_tiny(work / "data"))
            args.splits, args.time_budget, args.runs = ["random", "large"], 1, 1
        budget = f"{args.steps} steps" if args.steps else f"{args.time_budget:g} s"
        src = Path(args.data)
        if not (src / "images").is_dir():
            sys.exit(f"needs images/ and labels/ under {src}")
        print(header(args.device))
        print(f"# {budget} per model, train flags: {args.extra or '-'}")
        names = [f"{title} {m}" for _, title, _ in COLUMNS for m in MODES]
        print(
            "| split | run | train | test | steps | post-processing (seed / fg / min) | "
            + " | ".join(names)
            + " |"
        )
        print("|---" * (6 + len(names)) + "|")
        rows = [r for name in args.splits for r in run_split(src, name, work / name, args)]
    print()
    names = [f"{title} {m}" for _, title, _ in COLUMNS[:2] for m in MODES]
    print("| split | runs | " + " | ".join(names) + " |")
    print("|---" * (2 + len(names)) + "|")
    summary = []
    for name in args.splits:
        mine = [r for r in rows if r["split"] == name]
        cols = [mean_std([r[m][k] for r in mine]) for k, _, _ in COLUMNS[:2] for m in MODES]
        print(f"| {name} | {len(mine)} | " + " | ".join(cols) + " |")
        summary.append(f"{name} " + " / ".join(c.split()[0] for c in cols[: len(MODES)]))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(
        f"summary: mean AP@0.5 {' / '.join(MODES)} ({budget}, {args.device}, {args.runs} "
        f"run(s), train flags: {args.extra or '-'}): " + "; ".join(summary)
    )


if __name__ == "__main__":
    main()

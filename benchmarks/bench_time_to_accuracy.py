"""Time to accuracy: AP@0.5 on held-out DSB2018 nuclei after fixed training times.

For every time budget, trains a model from scratch with each recipe (``fast``
against ``paper`` at equal time: both with their own defaults for the device)
through the Python API on the training split of ``bench_accuracy.py`` (sha1 of
the file stem; 90 %), predicts the held-out 10 % with ``instances=True`` and
scores the mean AP@0.5.  Each budget is its own run (the learning-rate schedule
follows the budget), so the row for 300 s is what a user asking for 300 s gets; "wall
s" is the ``train`` call from start to the returned, calibrated model (the budget is
wall time, issue 22).  Prints a table and one summary line.

    python benchmarks/bench_time_to_accuracy.py --budgets 120 300 600 --device cpu
    python benchmarks/bench_time_to_accuracy.py --budgets 30 60 120 --device cuda

References (issue 5): a plain PyTorch U-Net reached 0.58 after 300 s on this 2-core
CPU and 0.67 after 300 s on an H100; targets 0.65 (CPU, 300 s) and 0.70 (GPU, 60 s).
``--data`` points at another folder with ``images/`` and ``labels/`` (the test suite
runs it on a few synthetic images).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_accuracy import DATA, held_out  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[120, 300, 600])
    p.add_argument("--device", default="cpu")
    p.add_argument("--recipes", nargs="+", default=["fast", "paper"])
    p.add_argument("--data", default=str(DATA / "dsb2018-nuclei"))
    p.add_argument("--tiny", action="store_true", help="synthetic nuclei, 2 s: a quick check")
    args = p.parse_args()
    if args.tiny:
        import tempfile

        from _synthetic import write_dataset

        args.data = str(write_dataset(Path(tempfile.mkdtemp(prefix="nu-tta-")) / "nuclei"))
        args.budgets = [2]
    import torch

    import napari_unet as nu
    from napari_unet.files import grey_if_rgb, read_image
    from napari_unet.metrics import evaluate_pair

    src = Path(args.data)
    if not (src / "images").is_dir():
        sys.exit(f"needs images/ and labels/ under {src}")
    files = sorted((src / "images").iterdir())
    train = [f for f in files if not held_out(f.stem)]
    test = [f for f in files if held_out(f.stem)] or files[-1:]
    images = [grey_if_rgb(read_image(f)) for f in train]
    labels = [read_image(src / "labels" / f.name) for f in train]
    test_images = [grey_if_rgb(read_image(f)) for f in test]
    truths = [read_image(src / "labels" / f.name) for f in test]
    where = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{os.cpu_count()}-core CPU"
    )
    print(
        f"# {time.strftime('%Y-%m-%d')}  {where}, torch {torch.__version__}; "
        f"{len(train)} training / {len(test)} held-out images"
    )
    print("| budget s | recipe | width | steps | wall s (call to model) | AP@0.5 |")
    print("|---|---|---|---|---|---|")
    results: dict[tuple[float, str], float] = {}
    for budget in args.budgets:
        for recipe in args.recipes:
            t0 = time.perf_counter()
            m = nu.train(
                images,
                labels,
                labels_kind="instances",
                recipe=recipe,
                time_budget=budget,
                init=None,  # from scratch: builtin:nuclei saw the test images
                device=args.device,
            )
            wall = time.perf_counter() - t0
            aps = [
                evaluate_pair(truth, nu.predict(m, img, instances=True, device=args.device))["ap50"]
                for img, truth in zip(test_images, truths, strict=True)
            ]
            results[(budget, recipe)] = float(np.mean(aps))
            print(
                f"| {budget:g} | {recipe} | {m.config.model.width} | {m.history['steps']} | "
                f"{wall:.1f} | {results[(budget, recipe)]:.3f} |",
                flush=True,
            )
    print(
        "summary: AP@0.5 "
        + "; ".join(
            f"{b:g} s " + " vs ".join(f"{r} {results[(b, r)]:.3f}" for r in args.recipes)
            for b in args.budgets
        )
    )


if __name__ == "__main__":
    main()

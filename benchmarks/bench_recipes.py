"""Recipes at equal time: ``fast`` against ``paper`` on the held-out DSB2018 split.

Trains through the Python API with each recipe's defaults for the same time budget on the
same training images (the split of ``bench_accuracy.py``), predicts the held-out images with
``instances=True`` and prints AP@0.5 side by side.

    python benchmarks/bench_recipes.py --time-budget 60 --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_accuracy import DATA, held_out  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-budget", type=float, default=60)
    p.add_argument("--device", default="cpu")
    p.add_argument("--recipes", nargs="+", default=["fast", "paper"])
    args = p.parse_args()
    import napari_unet as nu
    from napari_unet.files import read_image
    from napari_unet.metrics import evaluate_pair

    src = DATA / "dsb2018-nuclei"
    files = sorted((src / "images").iterdir())
    train = [f for f in files if not held_out(f.stem)]
    test = [f for f in files if held_out(f.stem)]
    images = [read_image(f) for f in train]
    labels = [read_image(src / "labels" / f.name) for f in train]
    print(
        f"# {time.strftime('%Y-%m-%d')}  device {args.device}, budget {args.time_budget:g} s, "
        f"{len(train)} training / {len(test)} held-out images"
    )
    print(f"{'recipe':8} {'width':>5} {'steps':>6} {'AP@0.5':>7}")
    results = {}
    for recipe in args.recipes:
        m = nu.train(
            images,
            labels,
            labels_kind="instances",
            recipe=recipe,
            time_budget=args.time_budget,
            device=args.device,
        )
        aps = [
            evaluate_pair(
                read_image(src / "labels" / f.name),
                nu.predict(m, read_image(f), instances=True, device=args.device),
            )["ap50"]
            for f in test
        ]
        results[recipe] = float(np.mean(aps))
        print(
            f"{recipe:8} {m.config.model.width:>5} {m.history['steps']:>6} {results[recipe]:>7.3f}",
            flush=True,
        )
    print("SUMMARY " + " ".join(f"{k}_ap50={v:.3f}" for k, v in results.items()))


if __name__ == "__main__":
    main()

"""How far to zoom: AP@0.5 of one instance model at zoom = (its object width / found width)^p.

For every test image of ``--test`` (``images/`` + ``labels/``), the model predicts at
scale 1, :func:`napari_unet.zoom.choose_zoom` (with ``ZOOM_POWER = 1``) gives the zoom
that brings the objects found all the way to the model's object size, and the image is
predicted again at that zoom to each power ``p`` of ``--powers`` (0: scale 1).  Prints
the mean AP@0.5 per image-size group and over all images, per ``p``.  This chose
``ZOOM_POWER`` on the held-out size groups ``large`` and ``dense`` (docs/benchmarks.md,
issue 11): train the models with ``bench_generalisation.py --keep DIR``, then

    python benchmarks/bench_zoom.py DIR/large/model-0 DIR/large/test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _splits import header, write_tiny  # noqa: E402


def evaluate(model_dir: Path, test: Path, powers: list[float], device: str) -> dict:
    """{size group: {p: [AP@0.5 per image], "zoom": [full zoom per image]}}."""
    import napari_unet.zoom as zoom_module
    from napari_unet.files import read_image
    from napari_unet.inference import at_zoom, predict_proba
    from napari_unet.metrics import match_instances
    from napari_unet.postprocess import outputs_from_probs
    from napari_unet.store import load_model

    zoom_module.ZOOM_POWER = 1.0  # the whole way; the powers below take part of it
    model = load_model(model_dir)
    groups: dict = defaultdict(lambda: defaultdict(list))
    for path in sorted((test / "images").iterdir()):
        image = read_image(path)
        truth = read_image(next((test / "labels").glob(f"{path.stem}.*")))
        first = predict_proba(model, image, device=device)
        full = zoom_module.choose_zoom(first, model.config)
        group = groups["x".join(map(str, truth.shape))]
        group["zoom"].append(full)
        for p in powers:
            z = full**p
            probs = first if z == 1.0 else predict_proba(model, image, device=device, zoom=z)
            spec = at_zoom(model.config, z)
            found = outputs_from_probs(probs, spec, labels=False, instances=True)["instances"]
            group[p].append(match_instances(truth, found, 0.5)["ap"])
    return groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="an instance model folder")
    p.add_argument("test", nargs="?", help="folder with images/ and labels/")
    p.add_argument("--powers", type=float, nargs="+", default=[0, 0.5, 0.75, 1])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny synthetic model and test set")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="nu-zoom-") as tmp:
        if args.tiny:
            from napari_unet.cli import main as cli

            data = write_tiny(Path(tmp) / "data")
            args.model, args.test = str(Path(tmp) / "model"), str(data)
            flags = ["--labels-kind", "instances", "--steps", "5", "--width", "4", "--patch", "64"]
            cli(["-q", "train", "--images", f"{data}/images", "--labels", f"{data}/labels",
                 "--out", args.model, *flags])  # fmt: skip
        if not args.model or not args.test:
            p.error("give MODEL and TEST folders (or --tiny)")
        groups = evaluate(Path(args.model), Path(args.test), args.powers, args.device)
    print(header(args.device))
    print(f"# model {args.model}, test {args.test}")
    print(
        "| size group | images | median full zoom | "
        + " | ".join(f"p={q:g}" for q in args.powers)
        + " |"
    )
    print("|---" * (3 + len(args.powers)) + "|")
    every: dict = defaultdict(list)
    for name, g in sorted(groups.items()):
        cells = [f"{statistics.mean(g[q]):.3f}" for q in args.powers]
        zoom = statistics.median(g["zoom"])
        print(f"| {name} | {len(g['zoom'])} | {zoom:.2f} | " + " | ".join(cells) + " |")
        for q in args.powers:
            every[q] += g[q]
    means = {q: statistics.mean(every[q]) for q in args.powers}
    print(
        "summary: mean AP@0.5 by zoom power: "
        + ", ".join(f"p={q:g} {m:.3f}" for q, m in means.items())
    )


if __name__ == "__main__":
    main()

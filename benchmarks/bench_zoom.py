"""How far to zoom: AP@0.5 of one instance model, per test image, at the zooms that
``--zoom auto`` would choose now and before, side by side.

Ways (``--ways``; every one on the same images, in one run):

- ``1``: the model's scale, no object zoom;
- ``instances``: the zoom before 2026-12-06: one more pass at
  (model's object width / the instances' median width) ** ``ZOOM_POWER``, within
  0.25-3 (``napari_unet.zoom.choose_zoom``);
- ``search``: the product's ``zoom="auto"`` (``napari_unet.zoom.zoom_steps``: steps read
  from the foreground blobs, undone when the instances say they went past the objects);
- ``truth``: for reference, the zoom that brings the true objects' median width to the
  model's (all the way; no product can know it);
- ``p=P`` (``--powers``): the zoom the instances ask for all the way, to the power P
  (how ``ZOOM_POWER`` was chosen in issue 11).

``TEST`` is a folder with ``images/`` + ``labels/`` or the name of a DSB2018 size group
(``large``, ``dense``, ``hires``; ``--cap`` images of it, sha1 order).  ``--upscale F``
resizes every image (linear) and its labels (nearest) by F first: objects wider than the
model ever saw, as a new magnification gives them (selection data for the zoom:
docs/benchmarks.md).  Prints a row per image, the mean per way, the passes the search
took and its time against the one-pass zoom's.

    python benchmarks/bench_zoom.py MODEL dense --upscale 2.5 --cap 12
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import DSB, cap, header, split, write_tiny  # noqa: E402

WAYS = ("1", "instances", "search", "truth")


def test_images(test: str, n: int | None, upscale: float):
    """(name, image, truth) of every test image."""
    from skimage.transform import resize

    from napari_unet.files import read_image

    if Path(test).is_dir():
        paths = sorted((Path(test) / "images").iterdir())[:n]
        folder = Path(test)
    else:
        _, stems = split(DSB, test)
        paths = [DSB / "images" / f"{s}.png" for s in cap(stems, n)]
        folder = DSB
    for path in paths:
        image = read_image(path)
        truth = read_image(next((folder / "labels").glob(f"{path.stem}.*")))
        if image.ndim == 3:  # RGB(A) DSB images: grey, as the CLI reads them for a 1-channel model
            image = image[..., :3].mean(-1)
        if upscale != 1:
            shape = tuple(round(d * upscale) for d in truth.shape)
            image = resize(image.astype(np.float32), shape, order=1, preserve_range=True)
            truth = resize(truth, shape, order=0, preserve_range=True, anti_aliasing=False)
        yield path.stem, image, truth.astype(np.int32)


def evaluate(model_dir: Path, images, ways: list[str], device: str) -> list[dict]:
    """A row per image: AP@0.5 and zoom per way, the search's passes and times."""
    from napari_unet.store import load_model

    model = load_model(model_dir)
    rows = []
    for name, image, truth in images:
        rows.append({"image": name[:12], **score_image(model, image, truth, ways, device)})
        text = (f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items())
        print(" ".join(text), flush=True)
    return rows


def score_image(model, image: np.ndarray, truth: np.ndarray, ways: list[str], device: str) -> dict:
    """AP@0.5 and zoom per way on one image, the search's passes and time."""
    from unittest import mock

    import napari_unet.zoom as zoom_module
    from napari_unet.events import drain
    from napari_unet.inference import at_zoom, predict_proba, predict_zoomed_iter
    from napari_unet.metrics import match_instances
    from napari_unet.postprocess import outputs_from_probs

    spec = model.config
    base = spec.normalization.scale
    row: dict = {}
    t0 = time.perf_counter()
    cache = {round(base, 4): predict_proba(model, image, device=device, zoom=base)}
    row["one pass s"] = time.perf_counter() - t0
    first = cache[round(base, 4)]
    zooms: dict[str, float] = {"1": base}
    with mock.patch.object(zoom_module, "ZOOM_RANGE", (0.25, 3.0)):
        zooms["instances"] = zoom_module.choose_zoom(first, spec, at=base)
    counts = np.bincount(truth.ravel())[1:]
    median = float(np.median(counts[counts > 0]))
    zooms["truth"] = base * math.sqrt(spec.postprocess.object_size / (median * base**2))
    with mock.patch.object(zoom_module, "ZOOM_POWER", 1.0):
        full = zoom_module.choose_zoom(first, spec, at=base) / base
    for way in ways:
        if way.startswith("p="):
            zooms[way] = base * full ** float(way[2:])
    passes: list = []
    t0 = time.perf_counter()
    events = predict_zoomed_iter(model, image, zoom="auto", device=device)
    probs, zooms["search"] = drain(_counting(events, passes))
    row["search s"] = time.perf_counter() - t0
    row["passes"] = len(passes)
    cache.setdefault(round(zooms["search"], 4), probs)
    for way in ways:
        z = round(zooms[way], 4)
        if z not in cache:
            cache[z] = predict_proba(model, image, device=device, zoom=z)
        found = outputs_from_probs(cache[z], at_zoom(spec, z), labels=False, instances=True)
        row[way] = match_instances(truth, found["instances"], 0.5)["ap"]
        row[f"zoom {way}"] = z
    return row


def _counting(events, passes: list):
    """``events`` passed through, counting the predictions (each ends at its last tile)."""
    from napari_unet.events import TileDone

    while True:
        try:
            event = next(events)
        except StopIteration as stop:
            return stop.value
        if isinstance(event, TileDone) and event.i == event.n:
            passes.append(event)
        yield event


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", help="an instance model folder")
    p.add_argument("test", nargs="?", help="folder with images/ and labels/, or a DSB group")
    p.add_argument("--cap", type=int, help="at most this many test images")
    p.add_argument("--upscale", type=float, default=1.0, help="resize the test images first")
    p.add_argument("--powers", type=float, nargs="*", default=[], help="add p=P ways")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny synthetic model and test set")
    args = p.parse_args()
    ways = [*WAYS, *(f"p={q:g}" for q in args.powers)]
    with tempfile.TemporaryDirectory(prefix="nu-zoom-") as tmp:
        if args.tiny:
            from napari_unet.cli import main as cli

            data = write_tiny(Path(tmp) / "data")
            args.model, args.test = str(Path(tmp) / "model"), str(data)
            flags = ["--labels-kind", "instances", "--steps", "5", "--width", "4", "--patch", "64"]
            cli(["-q", "train", "--images", f"{data}/images", "--labels", f"{data}/labels",
                 "--out", args.model, *flags])  # fmt: skip
        if not args.model or not args.test:
            p.error("give MODEL and TEST (or --tiny)")
        print(header(args.device))
        print(f"# model {args.model}, test {args.test} x{args.upscale:g}")
        rows = evaluate(
            Path(args.model), test_images(args.test, args.cap, args.upscale), ways, args.device
        )
    print("| way | mean AP@0.5 | median zoom |\n|---|---:|---:|")
    for way in ways:
        ap = statistics.mean(r[way] for r in rows)
        print(f"| {way} | {ap:.3f} | {statistics.median(r[f'zoom {way}'] for r in rows):.2f} |")
    one = statistics.mean(r["one pass s"] for r in rows)
    search = statistics.mean(r["search s"] for r in rows)
    passes = statistics.mean(r["passes"] for r in rows)
    print(
        f"summary: {len(rows)} images, mean AP@0.5 "
        + ", ".join(f"{w} {statistics.mean(r[w] for r in rows):.3f}" for w in ways)
        + f"; search {passes:.1f} passes, {search:.2f} s per image vs {one:.2f} s for one pass"
    )


if __name__ == "__main__":
    main()

"""3D on volumes: a 2D network slice by slice against a 3D network, with the voxel size
ignored or used (issue 27).

Data sets (``--data``):

- ``ovule``: the PlantSeg ovule volume of ../shared/data (32 x 128 x 128 voxels of
  0.235 x 0.15 x 0.15 um, 50 cells that fill the tissue, membrane stain): train on the
  half y < 64, test on the half y >= 64 (other cells);
- ``nuclei``: napari-unet's synthetic 3D nuclei (``make_synthetic_nuclei_3d``, 64 x 128 x
  128) with every second z slice kept, so voxels are 2x coarser in z than in y and x
  (voxel size 2 x 1 x 1); train on seed 1, test on seeds 2 and 3.

Arms, each trained from scratch on instance labels for ``--steps`` steps or
``--time-budget`` seconds, seed = run index (``napari_unet.train``, what ``napari-unet
train`` runs):

- ``2d``: a 2D network on the volume's slices (``--dims 2``), predicted slice by slice;
- ``3d``: a 3D network (``--dims 3``) on the volume as it is (the voxel size ignored);
- ``3d-voxels``: a 3D network given the voxel size (``--voxel-size``): volumes resized
  along z to near-isotropic voxels to train and to predict.

Scores on the test volume(s), instances as ``predict --instances`` segments them: AP@0.5
and the Cell Tracking Challenge's SEG of the 3D objects (a 2D network's objects live in
one slice each: it has none, "-"), and the mean AP@0.5 over the z slices holding objects
(every arm's objects cut into slices: the comparison the 2D network can enter).  Prints
a row per run, mean ± std per arm and a summary line.

    python benchmarks/bench_3d.py --data ovule --data nuclei --time-budget 120 --runs 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _splits import header, mean_std, table_head  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ARMS = ("2d", "3d", "3d-voxels")


def volumes(data: str, tiny: bool) -> tuple[tuple, list[tuple], tuple[float, float, float]]:
    """(train (image, labels), test [(image, labels)], voxel size z y x)."""
    from napari_unet._sample_data import make_synthetic_nuclei_3d

    if data == "ovule" and not tiny:
        from napari_unet.files import pixel_sizes, read_image

        root = DATA / "ovule-cells-3d"
        image, labels = read_image(root / "image.tif"), read_image(root / "labels.tif")
        sizes = pixel_sizes(root / "image.tif")
        half = image.shape[1] // 2
        spacing = tuple(sizes[ax][0] for ax in "ZYX")
        return (image[:, :half], labels[:, :half]), [(image[:, half:], labels[:, half:])], spacing
    shape = (32, 48, 48) if tiny else (64, 128, 128)
    n = 8 if tiny else 60

    def coarse(seed: int) -> tuple:
        image, labels = make_synthetic_nuclei_3d(shape, n, seed)
        return image[::2], labels[::2]

    return coarse(1), [coarse(s) for s in ((2,) if tiny else (2, 3))], (2.0, 1.0, 1.0)


def per_slice_ap(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """AP@0.5 of every z slice that holds a true object."""
    from napari_unet.metrics import match_instances

    return [match_instances(t, p, 0.5)["ap"] for t, p in zip(truth, pred, strict=True) if t.any()]


def run_arm(arm: str, train: tuple, test: list, spacing: tuple, run: int, args) -> dict:
    import napari_unet as nu
    from napari_unet.config import TrainConfig
    from napari_unet.metrics import match_instances, seg_score

    budget = {"steps": args.steps} if args.steps else {"time_budget": args.time_budget}
    small = dict(width=4, depth=2, patch=16, batch_size=1) if args.tiny else {}
    t0 = time.perf_counter()
    model = nu.train(
        [train[0]], [train[1]], labels_kind="instances", init="scratch", device="cpu",
        spatial_dims=2 if arm == "2d" else 3, spacing=spacing if arm == "3d-voxels" else None,
        config=TrainConfig(seed=run), **budget, **small,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    ap3, seg, slices = [], [], []
    for image, truth in test:
        pred = nu.predict(model, image, instances=True, device="cpu")
        slices += per_slice_ap(truth, pred)
        if arm != "2d":
            ap3.append(match_instances(truth, pred, 0.5)["ap"])
            seg.append(seg_score(truth, pred))
    row = {
        "arm": arm,
        "run": run,
        "ap50": float(np.mean(ap3)) if ap3 else None,
        "seg": float(np.mean(seg)) if seg else None,
        "slice_ap50": float(np.mean(slices)),
        "z_scale": model.config.normalization.z_scale,
        "seconds": seconds,
    }
    print(
        f"| {args.current} | {arm} | {run} | {_fmt(row['ap50'])} | {_fmt(row['seg'])} | "
        f"{row['slice_ap50']:.3f} | {row['z_scale']:g} | {seconds:.0f} |",
        flush=True,
    )
    return row


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", choices=["ovule", "nuclei"])
    p.add_argument("--arm", action="append", choices=ARMS)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, default=120.0, help="seconds per training")
    budget.add_argument("--steps", type=int, help="steps per training (instead of a time budget)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--first-run", type=int, default=0, help="seed of the first run (add runs to earlier ones)"
    )
    p.add_argument("--tiny", action="store_true", help="small synthetic volumes, a few steps")
    args = p.parse_args()
    if args.tiny:
        args.data, args.steps, args.runs = ["nuclei"], 2, 1
    datasets, arms = args.data or ["ovule", "nuclei"], args.arm or list(ARMS)
    if "ovule" in datasets and not (DATA / "ovule-cells-3d").is_dir():
        sys.exit(f"--data ovule needs {DATA / 'ovule-cells-3d'}")
    print(header("cpu"))
    print(f"# {'steps ' + str(args.steps) if args.steps else f'{args.time_budget:g} s'} per "
          f"training, from scratch, instances, {args.runs} run(s)")  # fmt: skip
    table_head("data", "arm", "run", "AP@0.5 (3D)", "SEG (3D)", "AP@0.5 per slice", "z scale", "s")
    rows = {}
    for data in datasets:
        train, test, spacing = volumes(data, args.tiny)
        args.current = data
        for arm in arms:
            rows[data, arm] = [
                run_arm(arm, train, test, spacing, run, args)
                for run in range(args.first_run, args.first_run + args.runs)
            ]
    print()
    table_head("data", "arm", "AP@0.5 (3D)", "SEG (3D)", "AP@0.5 per slice")
    summary = []
    for (data, arm), mine in rows.items():
        ap = mean_std([r["ap50"] for r in mine]) if mine[0]["ap50"] is not None else "-"
        seg = mean_std([r["seg"] for r in mine]) if mine[0]["seg"] is not None else "-"
        per_slice = mean_std([r["slice_ap50"] for r in mine])
        print(f"| {data} | {arm} | {ap} | {seg} | {per_slice} |")
        summary.append(f"{data} {arm} {ap.split()[0]} / {per_slice.split()[0]}")
    print("summary: AP@0.5 3D / per slice: " + "; ".join(summary))


if __name__ == "__main__":
    main()

"""A zarr stack larger than the memory the prediction may use, predicted on the CPU.

Writes a synthetic float32 zarr stack of ``--gb`` GB on disk (uncompressed) (planes of 8192 x 8192:
every plane is larger than one prediction block), trains a small model (width 4,
depth 3) on synthetic nuclei for a few seconds, then runs the command a user would,
``napari-unet predict MODEL stack.zarr --out OUT --format zarr``, in a child process
and reports its wall time, MPx/s and peak resident memory (``ru_maxrss`` of the child,
all of it: Python, torch, zarr buffers).  The target is a peak under 2 GB.

    python benchmarks/bench_large_zarr.py --gb 4.25 --where /tmp/napari-unet-large

``--tiny`` is the size the test suite runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EDGE = 8192


def synthetic_plane(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Bright round blobs on a noisy background, float32 (cheap to make at 64 MPx)."""
    from scipy import ndimage

    coarse = (rng.random((shape[0] // 16, shape[1] // 16)) > 0.97).astype(np.float32)
    blobs = ndimage.zoom(ndimage.gaussian_filter(coarse, 0.8), 16, order=1)[: shape[0], : shape[1]]
    plane = np.zeros(shape, np.float32)
    plane[: blobs.shape[0], : blobs.shape[1]] = blobs * 2000
    plane += rng.normal(100, 20, shape).astype(np.float32)
    return plane


def make_stack(path: Path, gb: float, edge: int) -> tuple[int, ...]:
    import zarr

    planes = max(1, round(gb * 1e9 / (edge * edge * 4)))
    shape = (planes, edge, edge)
    if path.exists():
        z = zarr.open_array(str(path), mode="r")
        if tuple(z.shape) == shape and not z.compressors:  # made by this script
            return shape
        shutil.rmtree(path)
    # uncompressed: the size on disk is the size of the pixels (float noise compresses ~15 %)
    z = zarr.create_array(
        str(path),
        shape=shape,
        chunks=(1, 1024, 1024),
        dtype=np.float32,
        compressors=None,
        overwrite=True,
    )
    rng = np.random.default_rng(0)
    for i in range(planes):
        z[i] = synthetic_plane(rng, (edge, edge))
    return shape


def small_model(where: Path, steps: int = 60) -> Path:
    import napari_unet as nu

    out = where / "model"
    if (out / "config.json").exists():
        return out
    rng = np.random.default_rng(1)
    images, labels = [], []
    from skimage.measure import label

    for _ in range(4):
        img = synthetic_plane(rng, (256, 256))
        images.append(img)
        labels.append(label(img > 600).astype(np.uint16))
    nu.train(
        images,
        labels,
        labels_kind="instances",
        width=4,
        depth=3,
        patch=128,
        batch_size=4,
        steps=steps,
        device="cpu",
        out=out,
    )
    return out


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=4.25, help="size of the input stack on disk")
    p.add_argument("--edge", type=int, default=EDGE, help="plane edge in pixels")
    p.add_argument("--where", default="/tmp/napari-unet-large", help="working folder")
    p.add_argument("--keep", action="store_true", help="keep the input and outputs")
    p.add_argument("--tiny", action="store_true", help="a 8 MB stack: a quick check")
    args = p.parse_args()
    if args.tiny:
        args.gb, args.edge = 0.008, 1024
        args.where = tempfile.mkdtemp(prefix="nu-large-")
    import torch

    where = Path(args.where)
    where.mkdir(parents=True, exist_ok=True)
    src = where / "stack.zarr"
    t0 = time.perf_counter()
    shape = make_stack(src, args.gb, args.edge)
    made = time.perf_counter() - t0
    model = small_model(where, steps=5 if args.tiny else 60)
    out = where / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "napari_unet.cli",
        "predict",
        str(model),
        str(src),
        "--out",
        str(out),
        "--format",
        "zarr",
        "--device",
        "cpu",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict failed with exit code {os.waitstatus_to_exitcode(status)}")
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # Linux reports kilobytes
    mpx = float(np.prod(shape)) / 1e6
    in_gb = disk_bytes(src) / 1e9
    out_gb = disk_bytes(out) / 1e9
    print(
        f"# {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}; input written in {made:.0f} s"
    )
    print("| input on disk | shape | MPx | predict s | MPx/s | peak RSS | output on disk |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {in_gb:.2f} GB float32 | {'x'.join(map(str, shape))} | {mpx:.0f} | {seconds:.0f} "
        f"| {mpx / seconds:.2f} | {peak_gb:.2f} GB | {out_gb:.2f} GB |"
    )
    print(
        f"summary: {in_gb:.2f} GB zarr stack predicted at {mpx / seconds:.2f} MPx/s with a "
        f"peak RSS of {peak_gb:.2f} GB (target < 2 GB: {'met' if peak_gb < 2 else 'MISSED'})"
    )
    if not args.keep:
        shutil.rmtree(where)


if __name__ == "__main__":
    main()

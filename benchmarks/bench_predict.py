"""Tiled prediction against MONAI's ``sliding_window_inference``, side by side in one run.

Both sides get the same network (same weights, eval mode), the same image, tile,
overlap and tile batch, the same device and thread count, and return the same thing
(class labels, or probabilities, as numpy on the host).  napari-unet's time includes
everything ``napari_unet.predict`` does (intensity normalisation, reading tiles,
blending, the output); MONAI gets an already normalised tensor.  Each figure is the
median of ``--repeats`` runs after one warm-up run.

CPU set (default):
  1. the issue's line: ``napari_unet.predict`` of a 2048² image with a freshly trained
     default model (its own tiling defaults) against
     ``sliding_window_inference(x, (256, 256), 4, model.network, overlap=0.25)``; and
     napari-unet again with every tile read, mirrored and normalised on the host
     (``whole=False``, the path before ``tiling.DeviceImage``);
  2. the same settings on both sides (tile 256, overlap 0.25, batch 4);
  3. one 512² image with the default model, labels and instances (target <= 0.5 s);
  4. a 3D volume with a 3D network (tile 64³, overlap 0.25, batch 2).
GPU set (``--device cuda``): the seed network at widths 64 and 32 (depth 4, batch norm)
on a 4096² image, tile 512, overlap 0.125, batch 16, bf16 autocast on both sides (width
64 also with tiles cut on the host); and
a 3D volume.

    python benchmarks/bench_predict.py                 # CPU set
    python benchmarks/bench_predict.py --device cuda   # GPU set
    python benchmarks/bench_predict.py --tiny          # a quick check (the test suite)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_model(dims: int, width: int, depth: int, device: str, trained: bool):
    """A default-recipe model: trained a few steps (``trained``) or freshly initialised."""
    import napari_unet as nu
    from napari_unet.config import LabelsConfig, ModelConfig, ModelSpec
    from napari_unet.model import UNet
    from napari_unet.store import Model

    if trained:
        rng = np.random.default_rng(0)
        shape = (64,) * dims if dims == 3 else (256, 256)
        images = [rng.normal(100, 20, shape).astype(np.float32) for _ in range(2)]
        labels = []
        for img in images:
            lab = np.zeros(shape, np.uint16)
            centre = tuple(slice(n // 4, n // 2) for n in shape)
            lab[centre] = 1
            img[centre] += 200
            labels.append(lab)
        kwargs = {} if width == 0 else {"width": width, "depth": depth}
        return nu.train(
            images,
            labels,
            labels_kind="instances",
            steps=3,
            device=device,
            spatial_dims=dims,
            **kwargs,
        )
    config = ModelConfig(spatial_dims=dims, in_channels=1, num_classes=3, depth=depth, width=width)
    spec = ModelSpec(model=config, labels=LabelsConfig())
    net = UNet.from_config(config).to(device).eval()
    return Model(net, spec)


def monai_call(model, x: torch.Tensor, roi, batch: int, overlap: float, amp, labels: bool):
    from monai.inferers import sliding_window_inference

    def run():
        with torch.inference_mode():
            if amp is not None:
                with torch.autocast(x.device.type, dtype=amp):
                    logits = sliding_window_inference(x, roi, batch, model.network, overlap=overlap)
            else:
                logits = sliding_window_inference(x, roi, batch, model.network, overlap=overlap)
            out = logits[0].float().argmax(0) if labels else torch.softmax(logits[0].float(), 0)
            return out.cpu().numpy()

    return run


def normalised(model, image: np.ndarray, device: str) -> torch.Tensor:
    from napari_unet.data import percentiles

    lo, hi = percentiles(image, model.config.normalization)
    x = (image.astype(np.float32) - lo) / max(hi - lo, 1e-6)
    return torch.from_numpy(x)[None, None].to(device)


def with_tiling(model, tile: int, overlap: float, batch: int, tile_z: int | None = None):
    tiling = replace(
        model.config.tiling,
        tile=tile,
        overlap=overlap,
        batch_size=batch,
        tile_z=tile_z or model.config.tiling.tile_z,
    )
    return replace(model, config=replace(model.config, tiling=tiling))


@contextlib.contextmanager
def tiles_on_host():
    """napari-unet as before ``tiling.DeviceImage``: every tile read, mirrored and
    normalised on the host (no image goes to the device whole)."""
    from napari_unet import tiling

    saved = tiling.WHOLE_IMAGE_CPU_BYTES, tiling.WHOLE_IMAGE_GPU_SHARE
    tiling.WHOLE_IMAGE_CPU_BYTES, tiling.WHOLE_IMAGE_GPU_SHARE = 0, 0.0
    try:
        yield
    finally:
        tiling.WHOLE_IMAGE_CPU_BYTES, tiling.WHOLE_IMAGE_GPU_SHARE = saved


def on_host(call):
    def run():
        with tiles_on_host():
            return call()

    return run


def row(name: str, shape, ours: float, monai: float, settings: str) -> dict:
    mpx = float(np.prod(shape)) / 1e6
    return {
        "case": name,
        "shape": "x".join(map(str, shape)),
        "settings": settings,
        "ours_s": ours,
        "monai_s": monai,
        "ours_mpx": mpx / ours,
        "monai_mpx": mpx / monai,
        "ratio": monai / ours,
    }


def cpu_set(args, sync) -> list[dict]:
    import napari_unet as nu

    rows = []
    dev = "cpu"
    rng = np.random.default_rng(0)
    size = 512 if args.tiny else args.size
    image = rng.normal(100, 20, (size, size)).astype(np.float32)
    model = make_model(2, 0, 0, dev, trained=True)  # the default CPU recipe's network
    w, d = model.config.model.width, model.config.model.depth
    x = normalised(model, image, dev)
    ours = timed(lambda: nu.predict(model, image, device=dev), args.repeats, sync)
    theirs = timed(monai_call(model, x, (256, 256), 4, 0.25, None, True), args.repeats, sync)
    t = model.config.tiling
    rows.append(
        row(
            f"default model (width {w}, depth {d}), labels",
            image.shape,
            ours,
            theirs,
            f"ours: tile {t.tile}, overlap {t.overlap}, batch {t.batch_size}; "
            "MONAI: (256, 256), 4, overlap 0.25",
        )
    )
    host = timed(on_host(lambda: nu.predict(model, image, device=dev)), args.repeats, sync)
    rows.append(
        row("the same, tiles cut on the host", image.shape, host, theirs, "as above, whole=False")
    )
    same = with_tiling(model, 256, 0.25, 4)
    ours = timed(lambda: nu.predict(same, image, device=dev), args.repeats, sync)
    rows.append(
        row("same settings, labels", image.shape, ours, theirs, "tile 256, overlap 0.25, batch 4")
    )
    small = image[:512, :512]
    xs = normalised(model, small, dev)
    ours = timed(lambda: nu.predict(model, small, device=dev), args.repeats, sync)
    inst = timed(lambda: nu.predict(model, small, instances=True, device=dev), args.repeats, sync)
    theirs = timed(monai_call(model, xs, (256, 256), 4, 0.25, None, True), args.repeats, sync)
    rows.append(row("512² labels", small.shape, ours, theirs, "defaults / MONAI (256, 256), 4"))
    rows.append(row("512² instances (+ watershed)", small.shape, inst, theirs, "as above"))
    edge = 64 if args.tiny else args.volume
    vol = rng.normal(100, 20, (edge // 2, edge, edge)).astype(np.float32)
    m3 = with_tiling(make_model(3, 8, 3, dev, trained=False), 64, 0.25, 2, tile_z=64)
    xv = normalised(m3, vol, dev)
    ours = timed(lambda: nu.predict(m3, vol, device=dev), args.repeats, sync)
    theirs = timed(monai_call(m3, xv, (64, 64, 64), 2, 0.25, None, True), args.repeats, sync)
    rows.append(
        row("3D width 8, depth 3, labels", vol.shape, ours, theirs, "tile 64³, overlap 0.25, b 2")
    )
    return rows


def gpu_set(args, sync) -> list[dict]:
    rows = []
    dev = args.device
    rng = np.random.default_rng(0)
    size = 1024 if args.tiny else 4096
    image = rng.normal(100, 20, (size, size)).astype(np.float32)
    amp = torch.bfloat16
    from napari_unet.inference import predict_proba

    for width in (64, 32):
        model = with_tiling(make_model(2, width, 4, dev, trained=False), 512, 0.125, 16)
        x = normalised(model, image, dev)
        ours = timed(lambda m=model: predict_proba(m, image, device=dev), args.repeats, sync)
        theirs = timed(monai_call(model, x, (512, 512), 16, 0.125, amp, False), args.repeats, sync)
        rows.append(
            row(
                f"seed U-Net width {width}, probabilities",
                image.shape,
                ours,
                theirs,
                "tile 512, overlap 0.125, batch 16, bf16",
            )
        )
        if width == 64:
            call = on_host(lambda m=model: predict_proba(m, image, device=dev))
            host = timed(call, args.repeats, sync)
            rows.append(
                row("the same, tiles cut on the host", image.shape, host, theirs, "whole=False")
            )
    edge = 64 if args.tiny else 256
    vol = rng.normal(100, 20, (edge, edge, edge)).astype(np.float32)
    m3 = with_tiling(make_model(3, 16, 3, dev, trained=False), 128, 0.125, 4, tile_z=128)
    xv = normalised(m3, vol, dev)
    ours = timed(lambda: predict_proba(m3, vol, device=dev), args.repeats, sync)
    theirs = timed(monai_call(m3, xv, (128,) * 3, 4, 0.125, amp, False), args.repeats, sync)
    rows.append(
        row("3D width 16, depth 3", vol.shape, ours, theirs, "tile 128³, overlap 0.125, b 4")
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=2048, help="2D image edge (CPU set)")
    p.add_argument("--volume", type=int, default=128, help="3D volume edge (CPU set)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="small sizes, one repeat")
    args = p.parse_args()
    if args.tiny:
        args.repeats = 1
    torch.set_num_threads(os.cpu_count() or 1)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = gpu_set(args, sync) if cuda else cpu_set(args, sync)
    where = torch.cuda.get_device_name() if cuda else f"{os.cpu_count()}-core CPU"
    import monai

    print(
        f"# {time.strftime('%Y-%m-%d')}  {where} ({platform.machine()}), torch "
        f"{torch.__version__}, MONAI {monai.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "| case | image | settings | napari-unet s | MONAI s | ours MPx/s | MONAI MPx/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['shape']} | {r['settings']} | {r['ours_s']:.3f} | "
            f"{r['monai_s']:.3f} | {r['ours_mpx']:.2f} | {r['monai_mpx']:.2f} | "
            f"{r['ratio']:.2f}x |"
        )
    first = rows[0]
    print(
        f"summary: napari-unet {first['ours_mpx']:.2f} MPx/s vs MONAI {first['monai_mpx']:.2f} "
        f"MPx/s on {first['case']} ({first['ratio']:.2f}x); "
        + "; ".join(f"{r['case']}: {r['ratio']:.2f}x" for r in rows[1:])
    )


if __name__ == "__main__":
    main()

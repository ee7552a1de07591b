"""Accuracy with the CLI defaults on held-out real data (issue 2's acceptance check).

DSB2018 nuclei: train with ``napari-unet train --labels-kind instances
--time-budget T --device D`` on 90 % of ../shared/data/dsb2018-nuclei, predict
the held-out 10 % with ``--instances`` and score AP@0.5 with ``evaluate``.
ISBI 2012: train on slices 00-24 (semantic labels), predict 25-29, pixel error.

The held-out split is fixed by file name (sha1 of the stem), so every run and
every machine uses the same images.  Prints a table and one summary line.

    python benchmarks/bench_accuracy.py --time-budget 300 --device cpu
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
DATA = ROOT.parent / "shared" / "data"
REFERENCE = {"cpu": 0.58, "cuda": 0.67}  # plain PyTorch 3-class U-Net, issue 2 (300 s)


def held_out(stem: str) -> bool:
    return int(hashlib.sha1(stem.encode()).hexdigest(), 16) % 10 == 0


def link_split(src: Path, dst: Path, test: bool) -> int:
    n = 0
    for sub in ("images", "labels"):
        (dst / sub).mkdir(parents=True)
        for f in sorted((src / sub).iterdir()):
            if held_out(f.stem) == test:
                os.symlink(f, dst / sub / f.name)
                n += sub == "images"
    return n


def cli(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_unet.cli", *args], check=True)
    return time.perf_counter() - t0


def bench_dsb(tmp: Path, budget: float, device: str, extra: list[str], data: Path) -> dict:
    src = data / "dsb2018-nuclei"
    n_train = link_split(src, tmp / "train", test=False)
    n_test = link_split(src, tmp / "test", test=True)
    model = tmp / "dsb-model"
    t_train = cli(
        "train",
        "--images",
        str(tmp / "train/images"),
        "--labels",
        str(tmp / "train/labels"),
        "--out",
        str(model),
        "--labels-kind",
        "instances",
        "--time-budget",
        str(budget),
        "--device",
        device,
        "--init",
        "scratch",  # builtin:nuclei saw these test images (--extra="--init M" overrides)
        *extra,
    )
    t_pred = cli(
        "-q",
        "predict",
        str(model),
        str(tmp / "test/images"),
        "--out",
        str(tmp / "pred"),
        "--instances",
        "--device",
        device,
    )
    cli(
        "-q",
        "evaluate",
        "--pred",
        str(tmp / "pred"),
        "--truth",
        str(tmp / "test/labels"),
        "--out",
        str(tmp / "eval.json"),
    )
    result = json.loads((tmp / "eval.json").read_text())
    hist = json.loads((model / "training.json").read_text())
    return {
        "n_train": n_train,
        "n_test": n_test,
        "train_s": t_train,
        "predict_s": t_pred,
        "steps": hist["steps"],
        "phases": hist["sessions"][-1].get("phases"),  # where the train command's time went
        **result["mean"],
    }


def bench_reference(tmp: Path, budget: float, device: str) -> dict:
    """The issue's plain U-Net on the same split and budget, in this process."""
    sys.path.insert(0, str(Path(__file__).parent))
    from reference_unet import predict_reference, train_reference

    from napari_unet.files import read_image
    from napari_unet.metrics import evaluate_pair

    train = sorted((tmp / "train/images").iterdir())
    images = [read_image(p) for p in train]
    labels = [read_image(tmp / "train/labels" / p.name) for p in train]
    net, steps = train_reference(images, labels, budget, device)
    rows = []
    for p in sorted((tmp / "test/images").iterdir()):
        pred = predict_reference(net, read_image(p), device)
        rows.append(evaluate_pair(read_image(tmp / "test/labels" / p.name), pred))
    return {
        "steps": steps,
        **{k: float(np.mean([r[k] for r in rows])) for k in ("ap50", "ap75", "iou")},
    }


def bench_isbi(tmp: Path, budget: float, device: str, extra: list[str], data: Path) -> dict:
    src = data / "isbi2012-em"
    for split, keep in (("train", lambda i: i < 25), ("test", lambda i: i >= 25)):
        for sub in ("images", "labels"):
            (tmp / "isbi" / split / sub).mkdir(parents=True)
            for f in sorted((src / sub).iterdir()):
                if keep(int(f.stem)):
                    os.symlink(f, tmp / "isbi" / split / sub / f.name)
    model = tmp / "isbi-model"
    t_train = cli(
        "train",
        "--images",
        str(tmp / "isbi/train/images"),
        "--labels",
        str(tmp / "isbi/train/labels"),
        "--out",
        str(model),
        "--labels-kind",
        "semantic",
        "--time-budget",
        str(budget),
        "--device",
        device,
        *extra,
    )
    cli(
        "-q",
        "predict",
        str(model),
        str(tmp / "isbi/test/images"),
        "--out",
        str(tmp / "isbi/pred"),
        "--device",
        device,
    )
    from napari_unet.files import read_image

    errors = []
    for f in sorted((tmp / "isbi/test/labels").iterdir()):
        truth = read_image(f)
        pred = read_image(tmp / "isbi/pred" / f"{f.stem}.tif")
        errors.append(float(np.mean((pred > 127) != (truth > 127))))
    return {"train_s": t_train, "pixel_error": float(np.mean(errors))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--time-budget", type=float, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--isbi-budget", type=float, default=None)
    p.add_argument("--only", choices=["dsb", "isbi"], help="run one of the two data sets")
    p.add_argument("--keep", help="keep the work folder here")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also train the issue's plain U-Net on the same split and budget",
    )
    p.add_argument("--data", type=Path, default=DATA, help="holds dsb2018-nuclei/ and isbi2012-em/")
    p.add_argument("--tiny", action="store_true", help="synthetic nuclei, 3 s: a quick check")
    args, extra = p.parse_known_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="nu-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    data = args.data
    if args.tiny:
        from _synthetic import write_dataset

        data = tmp / "data"
        write_dataset(data / "dsb2018-nuclei")
        args.time_budget, args.only = 3, "dsb"
    if not data.exists():
        sys.exit(f"needs the shared data at {data}")
    import torch

    print(
        f"# {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, device {args.device}"
    )
    ref = REFERENCE.get(args.device.split(":")[0])
    summary = [f"budget={args.time_budget:g}s", f"device={args.device}"]
    if args.only != "isbi":
        dsb = bench_dsb(tmp, args.time_budget, args.device, extra, data)
        print(
            f"DSB2018 held-out ({dsb['n_test']} images, trained on {dsb['n_train']}): "
            f"AP@0.5 {dsb['ap50']:.3f}  AP@0.75 {dsb['ap75']:.3f}  IoU {dsb['iou']:.3f}  "
            f"steps {dsb['steps']}  train {dsb['train_s']:.0f} s  "
            f"predict {dsb['predict_s']:.0f} s  | reference plain U-Net {ref}"
        )
        if dsb["phases"]:
            print(
                "train phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in dsb["phases"].items())
            )
        summary += [
            f"dsb_ap50={dsb['ap50']:.3f}",
            f"train_launch_to_exit={dsb['train_s']:.1f}s",
            f"reference_quoted={ref}",
        ]
        if args.reference:
            r = bench_reference(tmp, args.time_budget, args.device)
            print(
                f"plain U-Net reference, same split and budget: AP@0.5 {r['ap50']:.3f}  "
                f"AP@0.75 {r['ap75']:.3f}  IoU {r['iou']:.3f}  steps {r['steps']}"
            )
            print(f"ratio napari-unet / reference AP@0.5: {dsb['ap50'] / r['ap50']:.2f}")
            summary.append(f"reference_measured={r['ap50']:.3f}")
    if args.only != "dsb":
        isbi = bench_isbi(tmp, args.isbi_budget or args.time_budget, args.device, extra, data)
        print(
            f"ISBI 2012 slices 25-29 (trained on 00-24): pixel error "
            f"{isbi['pixel_error']:.4f} (train {isbi['train_s']:.0f} s)"
        )
        summary.append(f"isbi_pixel_error={isbi['pixel_error']:.4f}")
    print("SUMMARY " + " ".join(summary))


if __name__ == "__main__":
    main()

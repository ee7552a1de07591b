"""(Re)create a built-in model: train it with the napari-unet CLI, store float16 weights.

The shipped ``builtin:nuclei`` comes from::

    python resources/train_builtin.py --data ../shared/data/dsb2018-nuclei \\
        --steps 8000 --width 16 -- --device cpu --seed 0

(all 557 images of DSB2018 nuclei, the CPU recipe's patches and schedule, 8000 steps:
about 30 min alone on a 2-core CPU; ``--exclude-shape 1024x1024`` leaves out the
brightfield group to report on it, as the first version did).  Width 16, not the CPU
default 8: on two DSB2018 groups it never saw, the width-16 model scored AP@0.5 0.855 /
0.738 against 0.836 / 0.602 (``benchmarks/bench_builtin.py``, docs/benchmarks.md); the
automatic start takes its width on the CPU, so fine-tuning from it runs at width 16.

Steps:

1. ``napari-unet train --images DATA/images --labels DATA/labels --labels-kind KIND
   --width W --out WORK/model --init scratch [--steps N | --time-budget S] [EXTRA...]`` (the flags
   after ``--`` are passed on as they are, e.g. ``--config FILE.json --device cuda``);
2. the trained model gets a ``"built_with"`` entry in its ``training.json`` (this
   command, the exact train command, the data folder, the commit) and is saved with
   float16 weights into ``WORK/fp16``, which must load and stay under ``--max-mb``;
3. its ``weights.safetensors``, ``training.json`` and ``config.json`` (last: it holds
   the weights' sha256) replace those in ``--out``, each atomically.

napari-unet itself refuses to write into its built-in folders (read-only package
data); this script is what (re)creates them, so it copies the files itself.
Not needed at run time.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FILES = ("weights.safetensors", "training.json", "config.json")  # config.json last


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder with images/ and labels/ (by stem)")
    p.add_argument(
        "--out",
        default=str(REPO / "napari_unet" / "_builtin" / "nuclei"),
        help="model folder to (re)write (default: napari_unet/_builtin/nuclei)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--time-budget", type=float, metavar="SECONDS")
    budget.add_argument("--steps", type=int, metavar="N")
    p.add_argument("--width", type=int, default=16, help="network width (default 16)")
    p.add_argument("--labels-kind", default="instances")
    p.add_argument(
        "--exclude-shape",
        action="append",
        default=[],
        metavar="HxW",
        help="leave out the images of this height x width (a held-out group to report on); "
        "repeatable",
    )
    p.add_argument("--work", help="folder for the training run (default: a temporary one)")
    p.add_argument(
        "--max-mb", type=float, default=10.0, help="largest model folder allowed (default 10)"
    )
    args = p.parse_args(argv)
    if args.time_budget is None and args.steps is None:
        p.error("give --time-budget SECONDS or --steps N")
    return args, extra


def training_data(args: argparse.Namespace, work: Path) -> Path:
    """``--data``, or a folder of links to its images and labels without ``--exclude-shape``."""
    data = Path(args.data)
    if not args.exclude_shape:
        return data
    from PIL import Image

    excluded = {tuple(int(n) for n in shape.lower().split("x")) for shape in args.exclude_shape}
    kept = work / "data"
    for sub in ("images", "labels"):
        (kept / sub).mkdir(parents=True, exist_ok=True)
    for image in sorted((data / "images").iterdir()):
        with Image.open(image) as im:
            if (im.height, im.width) in excluded:
                continue
        labels = next((data / "labels").glob(f"{image.stem}.*"))
        os.symlink(image.resolve(), kept / "images" / image.name)
        os.symlink(labels.resolve(), kept / "labels" / labels.name)
    return kept


def train_command(
    args: argparse.Namespace, extra: list[str], model_dir: Path, data: Path
) -> list[str]:
    cmd = [
        "napari-unet", "train",
        "--images", str(data / "images"),
        "--labels", str(data / "labels"),
        "--labels-kind", args.labels_kind,
        "--width", str(args.width),
        "--out", str(model_dir),
        "--init", "scratch",  # a built-in model starts from nothing, never from the old one
    ]  # fmt: skip
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    else:
        cmd += ["--time-budget", f"{args.time_budget:g}"]
    return cmd + extra


def git_commit() -> str | None:
    try:
        cmd = ["git", "-C", str(REPO), "rev-parse", "HEAD"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def install(staged: Path, out: Path) -> None:
    """Copy the model files into ``out``, each atomically, config.json last."""
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        tmp = out / f".{name}.tmp"
        shutil.copyfile(staged / name, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parse_args(argv)
    from napari_unet import __version__
    from napari_unet.cli import main as cli_main
    from napari_unet.store import load_model, save_model

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="train-builtin-"))
    model_dir = work / "model"
    if model_dir.exists():
        print(f"{model_dir} exists already; give another --work folder", file=sys.stderr)
        return 2
    data = training_data(args, work)
    cmd = train_command(args, extra, model_dir, data)
    print("running:", shlex.join(cmd), flush=True)
    code = cli_main(cmd[1:])
    if code != 0:
        print(f"training failed (exit code {code})", file=sys.stderr)
        return code

    model = load_model(model_dir)
    model.history["built_with"] = {
        "command": shlex.join(["python", "resources/train_builtin.py", *argv]),
        "train_command": shlex.join(cmd),
        "data": str(Path(args.data)),
        "excluded_shapes": args.exclude_shape,
        "images": len(list((data / "images").iterdir())),
        "weights_dtype": "float16",
        "napari_unet_version": __version__,
        "commit": git_commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    staged = save_model(model, work / "fp16", weights_dtype="float16")
    size = sum((staged / name).stat().st_size for name in FILES) / 1e6
    if size > args.max_mb:
        print(f"the model takes {size:.1f} MB, over --max-mb {args.max_mb:g}", file=sys.stderr)
        return 1
    load_model(staged)  # every check a user's load makes
    install(staged, Path(args.out))
    print(f"wrote {args.out} ({size:.1f} MB, float16 weights); training run kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

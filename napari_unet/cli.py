"""The ``napari-unet`` command: ``train``, ``predict``, ``evaluate``.

Exit codes: 0 success, 2 bad input (one line naming the file and the
problem, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ._cli_output import Progress, TrainReport, say
from ._cli_parser import build_parser
from .config import ModelSpec
from .events import ChunkDone, ItemDone, TileDone, TrainStarted

log = logging.getLogger("napari_unet")


class UsageError(ValueError):
    """Bad command-line input; reported in one line with exit code 2."""


def _read_pairs(
    args: argparse.Namespace, kind: str, spec: Any = None, spatial_dims: int | None = None
) -> tuple[list, list, Any]:
    """Read the training pairs and check them with the engine's checks (errors name the
    files); returns images, labels and the names used (for the training's own errors).

    ``spec`` is the :class:`~napari_unet.config.ModelSpec` of the model being resumed;
    ``spatial_dims`` the network asked for (``--dims``; None: 2, or the resumed model's).
    """
    from .files import find_inputs, grey_if_rgb, pair_by_stem, read_image
    from .inputs import Continued, Names, check_training_data

    pairs = pair_by_stem(find_inputs(args.images, "--images"), find_inputs(args.labels, "--labels"))
    names = Names(
        [(str(img), str(lab)) for img, lab in pairs],
        labels=f"--labels {' '.join(args.labels)}",
        model=f"the model in {args.out}",
    )

    def read(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = pair
        img, lab = read_image(img_path), _as_integer_labels(read_image(lab_path), lab_path)
        if lab.ndim == 2 and img.shape[:2] == lab.shape:
            img = grey_if_rgb(img, str(img_path))
        return img, lab

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # decoders drop the GIL
        read_pairs = list(pool.map(read, pairs))
    images, labels = [img for img, _ in read_pairs], [lab for _, lab in read_pairs]
    continued = None
    if spec is not None:
        labels_cfg = spec.labels
        continued = Continued(spec.model.in_channels, labels_cfg.class_names, labels_cfg.value_map)
    spatial = spec.model.spatial_dims if spec is not None else spatial_dims or 2
    check_training_data(images, labels, kind, spatial, names, continued=continued)
    return images, labels, names


def _as_integer_labels(lab: np.ndarray, path: Path) -> np.ndarray:
    """Label files saved as booleans or as floats holding whole numbers (Fiji does) are
    read as integers; other floats are refused."""
    if lab.dtype.kind == "b":
        return lab.astype(np.uint8)
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise UsageError(f"{path}: label images must hold whole numbers")
        return lab.astype(np.int64)
    return lab


# flags of ``train`` that a recipe file may set too (file key = flag's dest)
RECIPE_FLAGS = (
    "recipe", "steps", "time_budget", "width", "depth", "patch", "batch_size", "padding",
    "precision", "border_weights", "seed", "lr", "distill", "balance", "scale", "spatial_dims",
    "compile",
)  # fmt: skip


def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe file's settings with the flags given on the command line over them."""
    from .recipes import read_recipe, train_arguments

    settings = read_recipe(args.config) if args.config else {}
    if args.steps is not None or args.time_budget is not None:  # one budget, the flag's
        settings.pop("steps", None)
        settings.pop("time_budget", None)
    settings.update({k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None})
    settings.pop("labels_kind", None)  # decided with --labels-kind / the resumed model
    return train_arguments(settings, f"recipe {args.config}" if args.config else "train")


def _voxel_size(args: argparse.Namespace, paths: list[Path]) -> tuple[float, ...] | None:
    """``--voxel-size``, else the voxel size the images' metadata records (all the same
    shape, or refused); None when they record none.  Says which."""
    if args.voxel_size:
        return tuple(args.voxel_size)
    from .files import pixel_sizes

    found = {}
    for path in paths:
        sizes = pixel_sizes(path)
        if all(ax in sizes for ax in "ZYX"):
            found[path] = tuple(sizes[ax][0] for ax in "ZYX"), sizes["X"][1] or "units"
    if not found:
        if not args.resume:
            say(args, "no voxel size in the images' metadata: volumes are trained as they are")
        return None
    first, (spacing, unit) = next(iter(found.items()))
    for path, (other, _) in found.items():
        if not np.allclose(np.divide(other, other[2]), np.divide(spacing, spacing[2]), rtol=0.05):
            raise UsageError(
                f"{path} has voxels of {_zyx(other)} but {first} of {_zyx(spacing)}: "
                "resample them to one voxel shape, or give --voxel-size Z Y X"
            )
    say(args, f"voxel size {_zyx(spacing)} {unit} (from {first.name}'s metadata)")
    return spacing


def _zyx(spacing: tuple[float, ...]) -> str:
    return ", ".join(f"{ax} {v:g}" for ax, v in zip("zyx", spacing, strict=True))


def _labels_kind(args: argparse.Namespace) -> str | None:
    if args.labels_kind or not args.config:
        return args.labels_kind
    from .recipes import read_recipe

    return read_recipe(args.config).get("labels_kind")


def cmd_train(args: argparse.Namespace) -> int:
    from .request import TrainRequest

    request = TrainRequest.from_keywords(
        labels_kind=_labels_kind(args),
        device=args.device,
        out=args.out,
        resume=args.resume,
        init=args.init,
        replace_worse=args.replace_worse,
        refuse_existing=True,
        where="cli",
        **_train_settings(args),
    )
    from .distributed import check_launch, launch, ranks_from_env
    from .writer import hold

    kind = check_launch(args.devices, args.device) if args.devices is not None else None
    writes = ranks_from_env().main  # in a data-parallel training, rank 0 writes
    request.check(writes=writes)  # a folder it may not write gets no lock file beside it
    if kind is not None and args.devices > 1:  # the workers take the folder's lock
        return launch(_without_option(args.argv, "--devices"), args.devices, kind)
    with hold(request.out_path) if writes else contextlib.nullcontext(""):
        return _train_held(args, request)


def _train_held(args: argparse.Namespace, request: Any) -> int:
    """``train`` with the model folder's writer lock held: read, train, report."""
    from .distributed import ranks_from_env
    from .interrupts import Interrupts
    from .training import TrainControl, train_request_iter

    spec = request.check(writes=ranks_from_env().main)  # before any data is read
    kind = spec.labels.kind if spec is not None else request.labels_kind or "sparse"
    images, labels, names = _read_pairs(args, kind, spec, request.spatial_dims)
    say(args, f"training on {len(images)} image(s) with {kind} labels")
    dims = spec.model.spatial_dims if spec is not None else request.spatial_dims
    if args.voxel_size and dims == 2:
        raise UsageError("--voxel-size is for a 3D network (--dims 3); a 2D one reads slices")
    if dims == 3:  # the flag, else the images' metadata
        spacing = _voxel_size(args, [Path(img) for img, _ in names.pairs])
    else:  # the network's dimensionality comes from the start model: passed on as given
        spacing = tuple(args.voxel_size) if args.voxel_size else None
    request = replace(request, labels_kind=kind, names=names, spacing=spacing)
    control = TrainControl()
    gen = train_request_iter(
        images, labels, request, began=getattr(args, "began", None), control=control
    )
    report = TrainReport(args, request.out_path)
    quiet = lambda text: None  # noqa: E731 - the other ranks: rank 0 speaks
    with Interrupts(control, say=quiet if args.quiet else None) as interrupts:
        if not ranks_from_env().main:  # the other ranks follow rank 0's decision to stop
            interrupts.training_started()
        for event in _drive(gen):
            if isinstance(event, TrainStarted):
                interrupts.training_started()
            report(event)
    if interrupts.reason is None:
        return 0
    finished = report.finished
    if args.quiet:
        return interrupts.exit_code
    if finished is None or finished.path is None and not request.out_path.exists():
        print(f"napari-unet: {interrupts.reason} before the first step: nothing was saved",
              file=sys.stderr)  # fmt: skip
    else:
        print(
            f"napari-unet: {interrupts.reason} at step {finished.step}: the model so far "
            f"(weights, optimizer state, training.json) is in {finished.path or request.out_path}"
            f"; continue with: {_resume_command(args.argv)}",
            file=sys.stderr,
        )
    return interrupts.exit_code


def _resume_command(argv: Sequence[str]) -> str:
    """The command line that continues a stopped training: the same, with --resume (and
    without --init, which a resumed model does not take)."""
    import shlex

    out = ["napari-unet", *_without_option(argv, "--init")]
    if "--resume" not in out:
        out.append("--resume")
    return shlex.join(out)


def _without_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` less the option ``name`` and its value (``--name V`` or ``--name=V``)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == name:
            skip = True
        elif not token.startswith(f"{name}="):
            out.append(token)
    return out


def _drive(gen):
    """Iterate a generator, closing it (which saves) on Ctrl-C."""
    try:
        yield from gen
    except KeyboardInterrupt:
        gen.close()
        raise


def _check_predict_args(args: argparse.Namespace) -> ModelSpec:
    """What ``predict`` can refuse before importing torch: --out, --axes, the inputs,
    --device's spelling, the model folder's safety checks and config, --instances."""
    from .files import find_inputs
    from .request import check_device, check_output_folder
    from .safety import check_model_folder

    out = Path(args.out)
    check_output_folder(out, f"--out {out}", "write --out into")
    if args.axes is not None:
        axes = args.axes.upper()
        if not axes or set(axes) - set("TZCYX") or len(set(axes)) != len(axes):
            raise UsageError(
                f"--axes {args.axes}: name each axis of the inputs once, from T, Z, C, Y, X "
                "(e.g. YX, ZYX, CYX, TZYX)"
            )
    find_inputs(args.inputs, "input")
    check_device(args.device, f"--device {args.device}")
    if args.format == "zarr" and args.zoom not in ("auto", 1.0):
        raise UsageError(
            f"--zoom {args.zoom:g}: zarr outputs are predicted block by block at the model's "
            "scale "
            "(use --format tif to zoom)"
        )
    spec = check_model_folder(args.model)
    if args.instances and not spec.labels.instances:
        raise UsageError(
            f"--instances needs a model trained on instance labels; {args.model} was trained "
            f"on {spec.labels.kind} labels"
        )
    return spec


def cmd_predict(args: argparse.Namespace) -> int:
    spec = _check_predict_args(args)
    from .batch import predict_files_iter
    from .files import find_inputs

    postprocess = dict(
        seed_threshold=args.seed_threshold,
        fg_threshold=args.fg_threshold,
        min_size=args.min_size,
        split=args.split,
    )
    say(args, _dims_note(spec.model.spatial_dims))
    _say_if_training(args)
    options = dict(
        instances=args.instances,
        probabilities=args.probabilities,
        fmt=args.format,
        device=args.device,
        axes=args.axes,
        tile=args.tile,
        batch_size=args.batch_size,
        zoom=args.zoom,
    )
    if args.scheduler or args.scheduler_file:  # the workers load the model, not this process
        from .batch import predict_files_distributed

        gen = predict_files_distributed(
            args.model,
            args.inputs,
            args.out,
            args.scheduler,
            postprocess=postprocess,
            scheduler_file=args.scheduler_file,
            **options,
        )
    else:
        from .store import load_model

        model = load_model(args.model, device=args.device).with_postprocess(**postprocess)
        gen = predict_files_iter(model, args.inputs, args.out, **options)
    failed = []
    with Progress(args, len(find_inputs(args.inputs, "input"))) as progress:
        for event in gen:
            if isinstance(event, (TileDone, ChunkDone)):
                progress.detail(event)
                continue
            if not isinstance(event, ItemDone):
                continue
            if event.status == "failed":
                failed.append(event)
                progress.say(f"[{event.i}/{event.n}] {event.name}: FAILED: {event.reason}")
            elif event.status == "skipped":
                progress.say(f"[{event.i}/{event.n}] {event.name}: skipped, {event.reason}")
            else:
                extra = f", {event.objects} objects" if event.objects is not None else ""
                progress.say(
                    f"[{event.i}/{event.n}] {event.name} -> {Path(event.output).name} "
                    f"({event.seconds:.1f} s{extra})"
                )
            progress.input_done()
    if failed:
        first = failed[0]
        raise UsageError(
            f"{len(failed)} of {first.n} input(s) failed (see {Path(args.out) / 'summary.csv'}); "
            f"first: {first.name}: {first.reason}"
        )
    return 0


def _say_if_training(args: argparse.Namespace) -> None:
    """A model folder that a training is writing is read as its last complete save."""
    from .writer import in_training

    folder = Path(args.model)
    try:
        steps = json.loads((folder / "training.json").read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        steps = "?"
    note = in_training(folder, steps)
    if note:
        say(args, note)


def _dims_note(spatial_dims: int) -> str:
    """What ``predict`` says about the network's dimensionality."""
    if spatial_dims == 3:
        return "a 3D model: each stack is predicted as one volume (ZYX)"
    return "a 2D model: stacks are predicted slice by slice"


def cmd_export(args: argparse.Namespace) -> int:
    """``export MODEL --out PKG.zip``: a bioimage.io package (napari_unet.bioimageio)."""
    from .files import read_image
    from .safety import check_model_folder

    out = Path(args.out)
    if out.suffix.lower() != ".zip":
        raise UsageError(f"--out {out}: a bioimage.io package is a .zip file")
    if out.exists():
        raise UsageError(f"--out {out} already exists: choose a new file name")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise UsageError(f"--out {out}: {out.parent} is not a writable folder")
    check_model_folder(args.model)  # before torch: a bad folder is named at once
    from .bioimageio import export_bioimageio, one_image, sample_image, takes_sample_image
    from .store import load_model

    model = load_model(args.model)
    if args.image:
        try:
            image = one_image(read_image(args.image), model.config)
        except ValueError as exc:
            raise UsageError(f"--image {args.image}: {exc}") from None
    elif takes_sample_image(model.config):
        image = sample_image()
    else:
        m = model.config.model
        raise UsageError(
            f"--image: this model takes {m.spatial_dims}D images with {m.in_channels} "
            "channel(s) and the sample image is 2D grey: give one of your images"
        )
    authors = args.author or ["napari-unet user"]
    path = export_bioimageio(
        model, out, image, name=args.name, authors=authors, license=args.license
    )
    say(args, f"wrote {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .files import find_inputs, pair_by_stem, read_image
    from .metrics import evaluate_pair

    if args.out:
        target = Path(args.out)
        if target.is_dir():
            raise UsageError(f"--out {target} is a folder; give a .csv or .json file name")
        if not target.parent.is_dir():
            raise UsageError(f"--out {target}: {target.parent} is not a folder")
    pairs = pair_by_stem(find_inputs(args.pred, "--pred"), find_inputs(args.truth, "--truth"))
    rows: list[dict[str, Any]] = []
    for pred_path, truth_path in pairs:
        pred, truth = read_image(pred_path), read_image(truth_path)
        if pred.shape != truth.shape:
            raise UsageError(
                f"{pred_path} has shape {pred.shape} but {truth_path} has shape {truth.shape}"
            )
        for name, arr in ((pred_path, pred), (truth_path, truth)):
            if arr.dtype.kind not in "biu":
                raise UsageError(f"{name}: label images must be integers, got {arr.dtype}")
        row = {"image": pred_path.name, **evaluate_pair(truth, pred)}
        rows.append(row)
    keys = ["iou", "dice", "ap50", "ap75", "seg"]
    mean = {
        "image": "mean",
        **{k: float(np.mean([r[k] for r in rows])) for k in keys},
        "n_true": int(sum(r["n_true"] for r in rows)),
        "n_pred": int(sum(r["n_pred"] for r in rows)),
    }
    table = rows + [mean]
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf,
        fieldnames=["image", *keys, "n_true", "n_pred"],
        extrasaction="ignore",
        lineterminator="\n",
    )
    writer.writeheader()
    for r in table:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    text = buf.getvalue()
    summary = {"per_image": rows, "mean": mean}
    if args.out:
        target = Path(args.out)
        if target.suffix.lower() == ".json":
            target.write_text(json.dumps(summary, indent=1))
        else:
            target.write_text(text)
    else:
        Path(args.pred, "evaluation.csv").write_text(text)
        Path(args.pred, "evaluation.json").write_text(json.dumps(summary, indent=1))
    if not args.quiet:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    began = time.perf_counter()  # train --time-budget counts from here
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    rank = 0
    if args.command == "train":  # one of the processes of a data-parallel training?
        from .distributed import launched_at, ranks_from_env

        try:
            rank = ranks_from_env().rank
        except ValueError as exc:
            print(f"napari-unet train: error: {exc}", file=sys.stderr)
            return 2
        began = launched_at(began) or began
        args.quiet = args.quiet or rank > 0  # rank 0 speaks for all
    args.began = began
    logging.basicConfig(
        level=logging.ERROR if args.quiet else logging.WARNING, format="napari-unet: %(message)s"
    )
    commands = {
        "train": cmd_train,
        "predict": cmd_predict,
        "evaluate": cmd_evaluate,
        "export": cmd_export,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt as exc:
        from .interrupts import EXIT_CODES, Aborted

        if not isinstance(exc, Aborted):
            print("napari-unet: interrupted", file=sys.stderr)
            return 130
        print(f"napari-unet: {exc.reason}: aborted, nothing more was saved (the files written "
              "so far are whole: every write is atomic)", file=sys.stderr)  # fmt: skip
        return EXIT_CODES[exc.reason]
    except (ValueError, OSError, FloatingPointError, MemoryError) as exc:
        if rank > 0 and isinstance(exc, ValueError | OSError):
            return 2  # the same input on every process: rank 0 says it
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"napari-unet {args.command}: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug or a device failure: no traceback
        if os.environ.get("NAPARI_UNET_DEBUG"):
            raise
        message = " ".join(str(exc).split())[:300] or "no message"
        where = f" (process {rank})" if rank else ""
        print(
            f"napari-unet {args.command}{where}: unexpected error: {type(exc).__name__}: "
            f"{message}\n"
            f"napari-unet: please report it; NAPARI_UNET_DEBUG=1 shows the traceback",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

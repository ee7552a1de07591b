"""Batch prediction: many images (files or in-memory arrays) through one model to a folder.

Each input is predicted tile by tile and written atomically as
``<name>.tif`` / ``<name>.zarr`` (instance ids or class labels), with
``<name>_prob.*`` when probabilities are asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .events import ItemDone
from .files import find_inputs, read_image, stem, write_tif, write_zarr
from .inference import predict_proba_iter
from .postprocess import class_labels, instances_from_probs
from .store import Model

FORMATS = {"tif": (".tif", write_tif), "zarr": (".zarr", write_zarr)}


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def predict_items_iter(
    model: Model,
    items: Sequence[tuple[str, Callable[[], Any]]],
    out: str | Path,
    *,
    instances: bool = False,
    probabilities: bool = False,
    fmt: str = "tif",
    device: str = "auto",
    axes: str | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
) -> Generator[Any, None, list[Path]]:
    """Predict ``(name, read)`` items into ``out``; yields tiles and :class:`ItemDone`.

    ``read()`` returns the image (numpy, dask or zarr).  Errors name the item.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be tif or zarr, got {fmt!r}")
    if instances and model.config.labels.kind != "instances":
        raise ValueError(
            f"instances need a model trained on instance labels; this one was trained on "
            f"{model.config.labels.kind} labels"
        )
    names = [name for name, _ in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"several inputs share the name {dupes[0]!r}; their outputs would overwrite each other"
        )
    folder = _check_out(out)
    ext, write = FORMATS[fmt]
    written = []
    for i, (name, read) in enumerate(items, 1):
        t0 = time.perf_counter()
        try:
            probs = yield from predict_proba_iter(
                model, read(), axes=axes, device=device, tile=tile, batch_size=batch_size
            )
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if instances:
            result = instances_from_probs(probs, spatial_dims=model.config.model.spatial_dims)
        else:
            result = class_labels(probs, model.config.labels)
        target = write(folder / f"{name}{ext}", result)
        written.append(target)
        if probabilities:
            written.append(write(folder / f"{name}_prob{ext}", probs.astype(np.float32)))
        yield ItemDone(
            i=i,
            n=len(items),
            name=name,
            output=str(target),
            seconds=time.perf_counter() - t0,
            objects=int(result.max()) if instances else None,
        )
    return written


def predict_files_iter(
    model: Model, inputs: str | Sequence[str], out: str | Path, **kwargs: Any
) -> Generator[Any, None, list[Path]]:
    """Predict files, folders or globs (TIFF, PNG, JPEG, zarr) into ``out``."""
    paths = find_inputs(inputs, "input")
    items = [(stem(p), lambda p=p: read_image(p, lazy=True)) for p in paths]
    return (yield from predict_items_iter(model, items, out, **kwargs))

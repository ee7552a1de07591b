"""Batch prediction: many images (files or in-memory arrays) through one model to a folder.

Each input is predicted tile by tile and written atomically as
``<name>.tif`` / ``<name>.zarr`` (instance ids or class labels), with
``<name>_prob.*`` when probabilities are asked for; ``summary.csv`` records
each input (shape, time, class fractions or objects and mean area, failures).
Re-running skips finished outputs; a failing input does not stop the batch.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .events import ItemDone
from .files import find_inputs, grey_if_rgb, read_image, stem, write_tif
from .inference import guess_axes, predict_proba_iter
from .postprocess import class_labels, instances_from_probs
from .store import Model, atomic_write_bytes

log = logging.getLogger(__name__)

EXTENSIONS = {"tif": ".tif", "zarr": ".zarr"}


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


SUMMARY = "summary.csv"
SUMMARY_FIELDS = [
    "input",
    "status",
    "reason",
    "shape",
    "seconds",
    "output",
    "objects",
    "mean_area",
    "fractions",
]


class _Stats:
    """Class pixel counts (or objects and their area) accumulated slice by slice."""

    def __init__(self, instances: bool) -> None:
        self.instances = instances
        self.counts: dict[int, int] = {}
        self.objects = 0
        self.total = 0

    def add(self, result: np.ndarray, new_objects: int = 0) -> None:
        self.total += int(result.size)
        if self.instances:
            fg = int(np.count_nonzero(result))
            self.counts[1] = self.counts.get(1, 0) + fg
            self.objects += new_objects
            return
        values, counts = np.unique(result, return_counts=True)
        for v, c in zip(values.tolist(), counts.tolist(), strict=True):
            self.counts[v] = self.counts.get(v, 0) + c

    def row(self) -> dict[str, Any]:
        total = max(self.total, 1)
        if self.instances:
            fg = self.counts.get(1, 0)
            area = fg / self.objects if self.objects else 0.0
            return {
                "objects": self.objects,
                "mean_area": round(area, 2),
                "fractions": f"background={1 - fg / total:.4f};objects={fg / total:.4f}",
            }
        fractions = ";".join(f"{v}={c / total:.4f}" for v, c in sorted(self.counts.items()))
        return {"objects": "", "mean_area": "", "fractions": fractions}


def _stats(result: np.ndarray, instances: bool) -> dict[str, Any]:
    stats = _Stats(instances)
    stats.add(result, int(len(np.unique(result[result > 0]))) if instances else 0)
    return stats.row()


class _ZarrSink:
    """Streams predicted slices into zarr arrays under temporary names (``commit`` renames)."""

    def __init__(
        self,
        model: Model,
        target: Path,
        prob_target: Path | None,
        shape: tuple[int, ...],
        instances: bool,
    ) -> None:
        import zarr

        self.model, self.instances = model, instances
        self.target, self.prob_target = target, prob_target
        k = model.config.model.num_classes
        dtype = (
            np.uint32
            if instances
            else class_labels(np.zeros((k, 1, 1), np.float32), model.config.labels).dtype
        )
        self.tmp: list[Path] = []
        self.labels = zarr.open_array(
            str(self._tmp(target)), mode="w", shape=shape, dtype=dtype, chunks=_chunks(shape)
        )
        self.probs = None
        if prob_target is not None:
            self.probs = zarr.open_array(
                str(self._tmp(prob_target)),
                mode="w",
                shape=(k, *shape),
                dtype=np.float16,
                chunks=(1, *_chunks(shape)),
            )
        self.stats = _Stats(instances)
        self.offset = 0

    def _tmp(self, final: Path) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        self.tmp.append(path)
        return path

    def __call__(self, index: tuple[int, ...], probs: np.ndarray) -> None:
        spatial_dims = self.model.config.model.spatial_dims
        if self.instances:
            lab = instances_from_probs(probs, spatial_dims=spatial_dims).astype(np.uint32)
            n = int(lab.max())
            lab[lab > 0] += self.offset  # ids stay unique across the stack
            self.offset += n
            self.stats.add(lab, n)
        else:
            lab = class_labels(probs, self.model.config.labels)
            self.stats.add(lab)
        self.labels[index] = lab
        if self.probs is not None:
            self.probs[(slice(None), *index)] = probs.astype(np.float16)

    def commit(self) -> list[Path]:
        finals = [self.target] if self.probs is None else [self.prob_target, self.target]
        tmps = self.tmp[::-1] if self.probs is not None else self.tmp
        for tmp, final in zip(tmps, finals, strict=True):  # labels last: marks completion
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        return finals

    def abort(self) -> None:
        for tmp in self.tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(min(s, 256) if i >= len(shape) - 2 else 1 for i, s in enumerate(shape))


def _read_summary(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["input"]: row for row in csv.DictReader(fh) if "input" in row}


def _write_summary(path: Path, rows: dict[str, dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows.values():
        writer.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode())


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
    redo: bool = False,
    summary: bool = True,
) -> Generator[Any, None, list[Path]]:
    """Predict ``(name, read)`` items into ``out``; yields tiles and :class:`ItemDone`.

    ``read()`` returns the image (numpy, dask or zarr).  Outputs that an earlier
    run finished are skipped (unless ``redo``); outputs are only ever written under
    a temporary name and renamed when complete, so a partial one never looks
    finished.  An input that fails is reported (``ItemDone(status="failed")``) and
    the batch goes on.  ``summary.csv`` in ``out`` gets a row per input.  Returns
    the files written by this run.
    """
    if fmt not in EXTENSIONS:
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
    ext = EXTENSIONS[fmt]
    summary_path = folder / SUMMARY
    previous = _read_summary(summary_path)
    if not summary:  # a distributed worker: the client writes summary.csv
        previous = {}

    def write_rows(path: Path, rows: dict[str, dict[str, Any]]) -> None:
        if summary:
            _write_summary(path, rows)

    rows: dict[str, dict[str, Any]] = {}
    written = []
    for i, (name, read) in enumerate(items, 1):
        t0 = time.perf_counter()
        target = folder / f"{name}{ext}"
        prob_target = folder / f"{name}_prob{ext}"
        if not redo and target.exists() and (not probabilities or prob_target.exists()):
            rows[name] = {
                **previous.get(name, {}),
                "input": name,
                "status": "done",
                "output": target.name,
            }
            write_rows(summary_path, {**previous, **rows})
            yield ItemDone(
                i=i,
                n=len(items),
                name=name,
                output=str(target),
                seconds=0.0,
                status="skipped",
                reason="finished by an earlier run",
                summary=rows[name],
            )
            continue
        sink = None
        try:
            image = read()
            if fmt == "zarr":  # streamed slice by slice: stacks larger than memory work
                if isinstance(image, np.ndarray) and model.config.model.in_channels == 1:
                    image = grey_if_rgb(image, name)
                use = axes or guess_axes(tuple(image.shape), model.config)
                shape = tuple(
                    int(n) for a, n in zip(use.upper(), image.shape, strict=True) if a != "C"
                )
                sink = _ZarrSink(
                    model, target, prob_target if probabilities else None, shape, instances
                )
                yield from predict_proba_iter(
                    model,
                    image,
                    axes=axes,
                    device=device,
                    tile=tile,
                    batch_size=batch_size,
                    sink=sink,
                )
                written += sink.commit()
                stats = sink.stats.row()
            else:
                probs = yield from predict_proba_iter(
                    model, image, axes=axes, device=device, tile=tile, batch_size=batch_size
                )
                if instances:
                    spatial_dims = model.config.model.spatial_dims
                    result = instances_from_probs(probs, spatial_dims=spatial_dims)
                else:
                    result = class_labels(probs, model.config.labels)
                if probabilities:  # the labels output last: it marks the input as finished
                    written.append(write_tif(prob_target, probs.astype(np.float32)))
                written.append(write_tif(target, result))
                shape, stats = result.shape, _stats(result, instances)
        except GeneratorExit:  # cancelled: nothing half-written stays behind
            if sink is not None:
                sink.abort()
            raise
        except (ValueError, OSError, MemoryError) as exc:
            if sink is not None:
                sink.abort()
            reason = " ".join(str(exc).split()) or type(exc).__name__
            log.info("%s failed: %s", name, reason)
            rows[name] = {"input": name, "status": "failed", "reason": reason}
            write_rows(summary_path, {**previous, **rows})
            yield ItemDone(
                i=i,
                n=len(items),
                name=name,
                output="",
                seconds=time.perf_counter() - t0,
                status="failed",
                reason=reason,
                summary=rows[name],
            )
            continue
        seconds = time.perf_counter() - t0
        rows[name] = {
            "input": name,
            "status": "done",
            "reason": "",
            "shape": "x".join(map(str, shape)),
            "seconds": round(seconds, 3),
            "output": target.name,
            **stats,
        }
        write_rows(summary_path, {**previous, **rows})
        yield ItemDone(
            i=i,
            n=len(items),
            name=name,
            output=str(target),
            seconds=seconds,
            objects=int(rows[name]["objects"]) if instances else None,
            summary=rows[name],
        )
    return written


def predict_files_iter(
    model: Model, inputs: str | Sequence[str], out: str | Path, **kwargs: Any
) -> Generator[Any, None, list[Path]]:
    """Predict files, folders or globs (TIFF, PNG, JPEG, zarr) into ``out``."""
    paths = find_inputs(inputs, "input")
    items = [(stem(p), lambda p=p: read_image(p, lazy=True)) for p in paths]
    return (yield from predict_items_iter(model, items, out, **kwargs))


_MODELS: dict[tuple[str, str], Model] = {}


def _worker_predict(model_dir: str, path: str, out: str, kwargs: dict[str, Any]) -> ItemDone:
    """Runs on a dask worker: load the model once per worker process, predict one file."""
    from .store import load_model

    key = (model_dir, str(kwargs.get("device", "auto")))
    if key not in _MODELS:
        _MODELS[key] = load_model(model_dir, device=kwargs.get("device", "auto"))
    p = Path(path)
    gen = predict_items_iter(
        _MODELS[key], [(stem(p), lambda: read_image(p, lazy=True))], out, summary=False, **kwargs
    )
    done = None
    while True:
        try:
            event = next(gen)
        except StopIteration:
            break
        if isinstance(event, ItemDone):
            done = event
    assert done is not None
    return done


def predict_files_distributed(
    model_dir: str | Path,
    inputs: str | Sequence[str],
    out: str | Path,
    scheduler: str,
    **kwargs: Any,
) -> Generator[ItemDone, None, list[Path]]:
    """Predict files on an existing dask.distributed cluster (``scheduler`` address).

    One task per input; each worker loads the model once.  Inputs and ``out``
    must be paths the workers can reach.  Yields :class:`ItemDone` as inputs
    finish (in any order) and writes ``summary.csv`` here.
    """
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ValueError("--scheduler needs dask.distributed: pip install distributed") from None
    paths = find_inputs(inputs, "input")
    names = [stem(p) for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"several inputs share the name {dupes[0]!r}; their outputs would overwrite each other"
        )
    folder = _check_out(out).resolve()
    try:
        client = Client(scheduler, timeout=10)
    except OSError as exc:
        raise ValueError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
    rows = _read_summary(folder / SUMMARY)
    written: list[Path] = []
    try:
        futures = {
            client.submit(
                _worker_predict,
                str(Path(model_dir).resolve()),
                str(p.resolve()),
                str(folder),
                kwargs,
                pure=False,
            ): p
            for p in paths
        }
        for i, future in enumerate(as_completed(futures), 1):
            done = future.result()
            if done.status == "skipped":  # keep what the earlier run recorded
                rows[done.name] = {**(done.summary or {}), **rows.get(done.name, {})}
            elif done.summary is not None:
                rows[done.name] = done.summary
            _write_summary(folder / SUMMARY, rows)
            if done.status == "done":
                written.append(Path(done.output))
            yield replace(done, i=i, n=len(paths))
    finally:
        client.close()
    return written

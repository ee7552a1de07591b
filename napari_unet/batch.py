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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .atomic import atomic_write_bytes
from .builtin import is_builtin, refuse_write
from .devices import describe_device
from .events import ItemDone, drain
from .files import (
    find_inputs,
    grey_if_rgb,
    ome_zarr_array,
    pixel_sizes,
    read_image,
    stem,
    write_tif,
)
from .inference import (
    Block,
    at_zoom,
    check_zoom,
    for_many_images,
    guess_axes,
    predict_proba_iter,
    predict_zoomed_iter,
)
from .postprocess import outputs_from_probs, require_instances
from .store import Model

log = logging.getLogger(__name__)

EXTENSIONS = {"tif": ".tif", "zarr": ".zarr"}


def _check_out(out: str | Path) -> Path:
    refuse_write(out, "write predictions into")
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
    "zoom",
    "worker",
    "attempts",
]
RETRIES = 1
"""On a dask cluster, a task that raised (out of device memory, a worker lost: KilledWorker)
is submitted again this many times before its input is recorded as failed."""


class _Stats:
    """Class pixel counts (or objects and their area) accumulated slice by slice."""

    def __init__(self, instances: bool) -> None:
        self.instances = instances
        self.counts: dict[int, int] = {}
        self.objects = 0
        self.total = 0

    def add_counts(self, foreground: int, total: int, new_objects: int) -> None:
        """Instances: ``foreground`` object pixels out of ``total``, ``new_objects`` objects."""
        self.total += total
        self.counts[1] = self.counts.get(1, 0) + foreground
        self.objects += new_objects

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


class ZarrSink:
    """Streams predicted blocks into OME-Zarr images under temporary names.

    ``commit`` renames them into place (labels last: their presence marks the
    input as finished); ``abort`` removes them.  With instances, a block's
    objects are found on its whole window (block plus halo) and the block keeps
    those whose centre lies in its core, written where no earlier block wrote an
    object: objects that straddle two blocks are kept once, whole.
    """

    def __init__(
        self,
        model: Model,
        target: Path,
        prob_target: Path | None,
        shape: tuple[int, ...],
        axes: str,
        instances: bool,
        sizes: dict[str, tuple[float, str | None]] | None = None,
    ) -> None:
        self.model, self.instances = model, instances
        self.target, self.prob_target = target, prob_target
        k = model.config.model.num_classes
        dtype = (
            np.uint32
            if instances
            else outputs_from_probs(np.zeros((k, 1, 1), np.float32), model.config)["labels"].dtype
        )
        self.tmp: list[Path] = []
        self.labels = ome_zarr_array(
            self._tmp(target), shape, dtype, axes, sizes, labels=True, name=target.stem
        )
        self.probs = None
        # OME-Zarr orders axes time, channel, space: the class axis goes after T
        self.c_at = 1 if axes[:1] == "T" else 0
        if prob_target is not None:
            prob_axes = axes[: self.c_at] + "C" + axes[self.c_at :]
            prob_shape = (*shape[: self.c_at], k, *shape[self.c_at :])
            self.probs = ome_zarr_array(
                self._tmp(prob_target),
                prob_shape,
                np.float16,
                prob_axes,
                sizes,
                name=prob_target.stem,
            )
        self.stats = _Stats(instances)
        self.offset = 0

    def _tmp(self, final: Path) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        self.tmp.append(path)
        return path

    def __call__(self, block: Block, probs: np.ndarray) -> None:
        core = block.core_in_window
        if self.instances:
            self._instances(block, probs)
        else:
            lab = outputs_from_probs(probs[(slice(None), *core)], self.model.config)["labels"]
            self.stats.add(lab)
            self.labels[(*block.stack, *block.core)] = lab
        if self.probs is not None:
            p = probs[(slice(None), *core)].astype(np.float16)
            region = (*block.stack, *block.core)
            index = (*region[: self.c_at], slice(None), *region[self.c_at :])
            self.probs[index] = p  # stack indices are integers: p fits as it is

    def _instances(self, block: Block, probs: np.ndarray) -> None:
        outputs = outputs_from_probs(probs, self.model.config, labels=False, instances=True)
        lab = outputs["instances"]
        whole = block.window == block.core
        if whole:
            owned = lab > 0
            new = lab.astype(np.uint32)
            n = int(lab.max())
            region = (*block.stack, *block.core)
            current = None
        else:
            from scipy import ndimage

            ids = np.arange(1, int(lab.max()) + 1)
            centres = ndimage.center_of_mass(np.ones(lab.shape, np.uint8), lab, ids)
            core = block.core_in_window
            keep = [
                i
                for i, c in zip(ids.tolist(), centres, strict=True)
                if all(s.start <= x < s.stop for s, x in zip(core, c, strict=True))
            ]
            lut = np.zeros(int(lab.max()) + 1, np.uint32)
            lut[keep] = np.arange(1, len(keep) + 1, dtype=np.uint32)
            new = lut[lab]
            n = len(keep)
            region = (*block.stack, *block.window)
            current = np.asarray(self.labels[region])
            owned = (new > 0) & (current == 0)
        new[owned] += np.uint32(self.offset)  # ids stay unique across blocks and slices
        self.offset += n
        if current is None:
            self.labels[region] = new
        else:
            current[owned] = new[owned]
            self.labels[region] = current
        core_size = int(np.prod([s.stop - s.start for s in block.core]))
        self.stats.add_counts(int(np.count_nonzero(owned)), core_size, n)

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


def remove_leftovers(folder: Path, names: Sequence[str], ext: str) -> list[Path]:
    """Remove the temporary outputs an interrupted run left for ``names`` in ``folder``.

    Outputs are written as ``.<output name>.<random>.tmp`` and renamed when complete,
    so these are never finished work.  Only the names of this batch are touched.
    """
    prefixes = tuple(f".{n}{suffix}{ext}." for n in names for suffix in ("", "_prob")) + (
        f".{SUMMARY}.",
    )
    removed = []
    for entry in folder.iterdir():
        if entry.name.endswith(".tmp") and entry.name.startswith(prefixes):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("removed %d unfinished output(s) of an interrupted run", len(removed))
    return removed


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


def _check_unique(names: Sequence[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            f"several inputs share the name {dupes[0]!r}; their outputs would overwrite each other"
        )


class _Item(NamedTuple):
    """One input of a batch: its name, how to read it, its pixel sizes (or how to read them)."""

    name: str
    read: Callable[[], Any]
    sizes: Any = None


def _plan_items(items: Sequence[Sequence[Any]]) -> list[_Item]:
    """``(name, read[, sizes])`` tuples as items, after checking that the names are unique."""
    planned = [_Item(*it[:3]) for it in items]
    _check_unique([it.name for it in planned])
    return planned


@dataclass(frozen=True)
class _Options:
    """The settings every input of a batch is predicted with."""

    instances: bool = False
    probabilities: bool = False
    fmt: str = "tif"
    device: str = "auto"
    axes: str | None = None
    tile: int | None = None
    batch_size: int | None = None
    redo: bool = False
    block: int | None = None
    zoom: float | str = "auto"

    @classmethod
    def checked(cls, model: Model, **settings: Any) -> _Options:
        """The options, after checking the format and that the model can give instances."""
        options = cls(**settings)
        if options.fmt not in EXTENSIONS:
            raise ValueError(f"format must be tif or zarr, got {options.fmt!r}")
        if options.instances:
            require_instances(model.config)
        zoom = check_zoom(options.zoom)
        if options.fmt == "zarr" and zoom not in ("auto", 1.0):
            raise ValueError(
                f"zoom {options.zoom}: zarr outputs are predicted block by block at the "
                "model's scale "
                "(use tif outputs to zoom)"
            )
        return replace(options, zoom=zoom)

    @property
    def ext(self) -> str:
        return EXTENSIONS[self.fmt]

    @property
    def predict_kwargs(self) -> dict[str, Any]:
        """Keywords of :func:`~napari_unet.inference.predict_proba_iter`."""
        return dict(axes=self.axes, device=self.device, tile=self.tile, batch_size=self.batch_size)


class _Summary:
    """``summary.csv`` of a batch: the rows of earlier runs, updated input by input.

    ``path=None`` keeps the rows without reading or writing a file (the worker role,
    whose client writes the file).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.previous = _read_summary(path) if path is not None else {}
        self.rows: dict[str, dict[str, Any]] = {}

    def record(self, i: int, n: int, row: dict[str, Any], **event: Any) -> ItemDone:
        """Keep the input's row (and write summary.csv); the input's ItemDone event."""
        self.rows[row["input"]] = row
        if self.path is not None:
            _write_summary(self.path, {**self.previous, **self.rows})
        return ItemDone(i=i, n=n, name=row["input"], summary=row, **event)


def _predict_zarr(
    model: Model, item: _Item, target: Path, prob_target: Path, options: _Options
) -> Generator[Any, None, tuple[tuple[int, ...], dict[str, Any], list[Path]]]:
    """Stream one input into OME-Zarr outputs, slice by slice and block by block (stacks and
    planes larger than memory work); returns its shape, summary statistics and the outputs."""
    image = item.read()
    if isinstance(image, np.ndarray) and model.config.model.in_channels == 1:
        image = grey_if_rgb(image, item.name)
    use = (options.axes or guess_axes(tuple(image.shape), model.config)).upper()
    kept = "".join(a for a in use if a != "C")
    shape = tuple(int(n) for a, n in zip(use, image.shape, strict=True) if a != "C")
    scale = model.config.normalization.scale  # the blocks are resized by it
    sink = ZarrSink(
        replace(model, config=at_zoom(model.config, scale)),
        target,
        prob_target if options.probabilities else None,
        shape,
        kept,
        options.instances,
        item.sizes() if callable(item.sizes) else item.sizes,
    )
    try:
        yield from predict_proba_iter(
            model, image, sink=sink, block=options.block, **options.predict_kwargs
        )
        written = sink.commit()
    except (GeneratorExit, ValueError, OSError, MemoryError):
        sink.abort()  # cancelled or failed: nothing half-written stays behind
        raise
    return shape, {**sink.stats.row(), "zoom": f"{scale:.3g}"}, written


def _predict_tif(
    model: Model, item: _Item, target: Path, prob_target: Path, options: _Options
) -> Generator[Any, None, tuple[tuple[int, ...], dict[str, Any], list[Path]]]:
    """Predict one input in memory into TIFF outputs; returns its shape, summary statistics
    and the outputs."""
    probs, zoom = yield from predict_zoomed_iter(
        model, item.read(), zoom=options.zoom, **options.predict_kwargs
    )
    outputs = outputs_from_probs(
        probs,
        at_zoom(model.config, zoom),
        labels=not options.instances,
        instances=options.instances,
        probabilities=options.probabilities,
    )
    result = outputs["instances" if options.instances else "labels"]
    written = []
    if options.probabilities:  # the labels output last: it marks the input as finished
        written.append(write_tif(prob_target, outputs["probabilities"].astype(np.float32)))
    written.append(write_tif(target, result))
    return result.shape, {**_stats(result, options.instances), "zoom": f"{zoom:.3g}"}, written


def _predict_item(
    model: Model,
    item: _Item,
    folder: Path,
    options: _Options,
    previous: dict[str, dict[str, str]],
) -> Generator[Any, None, tuple[dict[str, Any], dict[str, Any], list[Path]]]:
    """Skip, predict or fail one input; returns its summary row, the fields of its
    :class:`ItemDone` and the files written."""
    t0 = time.perf_counter()
    target = folder / f"{item.name}{options.ext}"
    prob_target = folder / f"{item.name}_prob{options.ext}"
    if not options.redo and target.exists() and (not options.probabilities or prob_target.exists()):
        row = {
            **previous.get(item.name, {}),
            "input": item.name,
            "status": "done",
            "output": target.name,
        }
        reason = "finished by an earlier run"
        return row, dict(output=str(target), seconds=0.0, status="skipped", reason=reason), []
    predict = _predict_zarr if options.fmt == "zarr" else _predict_tif
    try:
        shape, stats, written = yield from predict(model, item, target, prob_target, options)
    except (ValueError, OSError, MemoryError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.info("%s failed: %s", item.name, reason)
        row = {"input": item.name, "status": "failed", "reason": reason}
        seconds = time.perf_counter() - t0
        return row, dict(output="", seconds=seconds, status="failed", reason=reason), []
    seconds = time.perf_counter() - t0
    row = {
        "input": item.name,
        "status": "done",
        "reason": "",
        "shape": "x".join(map(str, shape)),
        "seconds": round(seconds, 3),
        "output": target.name,
        **stats,
    }
    objects = int(row["objects"]) if options.instances else None
    return row, dict(output=str(target), seconds=seconds, objects=objects), written


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
    block: int | None = None,
    zoom: float | str = "auto",
) -> Generator[Any, None, list[Path]]:
    """Predict ``(name, read)`` items into ``out``; yields tiles and :class:`ItemDone`.

    ``read()`` returns the image (numpy, dask or zarr).  An item may carry a third
    element, the image's pixel sizes (``{"X": (0.2, "micrometer"), ...}``, or a
    callable returning them), which zarr outputs record as their OME-Zarr scale.
    ``block`` caps the edge of the blocks zarr outputs are predicted in (see
    :func:`~napari_unet.inference.predict_proba_iter`); ``zoom`` that of TIFF outputs
    (:func:`~napari_unet.inference.predict_zoomed_iter`; zarr outputs are predicted at
    scale 1, the summary's ``zoom`` column says which).  Outputs that an earlier
    run finished are skipped (unless ``redo``); outputs are only ever written under
    a temporary name and renamed when complete, so a partial one never looks
    finished.  An input that fails is reported (``ItemDone(status="failed")``) and
    the batch goes on.  ``summary.csv`` in ``out`` gets a row per input.  Returns
    the files written by this run.
    """
    options = _Options.checked(
        model,
        instances=instances,
        probabilities=probabilities,
        fmt=fmt,
        device=device,
        axes=axes,
        tile=tile,
        batch_size=batch_size,
        redo=redo,
        block=block,
        zoom=zoom,
    )
    planned = _plan_items(items)
    folder = _check_out(out)
    model = for_many_images(model)
    summary = _Summary(folder / SUMMARY)
    remove_leftovers(folder, [it.name for it in planned], options.ext)
    written: list[Path] = []
    for i, item in enumerate(planned, 1):
        row, event, files = yield from _predict_item(model, item, folder, options, summary.previous)
        written += files
        yield summary.record(i, len(planned), row, **event)
    return written


def predict_files_iter(
    model: Model, inputs: str | Sequence[str], out: str | Path, **kwargs: Any
) -> Generator[Any, None, list[Path]]:
    """Predict files, folders or globs (TIFF, PNG, JPEG, zarr) into ``out``."""
    paths = find_inputs(inputs, "input")
    items = [
        (stem(p), lambda p=p: read_image(p, lazy=True), lambda p=p: pixel_sizes(p)) for p in paths
    ]
    return (yield from predict_items_iter(model, items, out, **kwargs))


def predict_file_as_worker_iter(
    model: Model, path: str | Path, out: str | Path, **settings: Any
) -> Generator[Any, None, ItemDone]:
    """Predict one file as one task of :func:`predict_files_distributed`; yields tiles.

    The worker role: the client, not this task, removes the leftovers of interrupted
    runs and writes ``summary.csv``, so this neither reads nor writes it.  Returns
    the input's :class:`ItemDone` (``i = n = 1``), its summary row included, for
    the client to record.  ``settings`` are the keywords of :func:`predict_items_iter`.
    """
    options = _Options.checked(model, **settings)
    p = Path(path)
    item = _Item(stem(p), lambda: read_image(p, lazy=True), lambda: pixel_sizes(p))
    folder = _check_out(out)
    row, event, _ = yield from _predict_item(model, item, folder, options, {})
    return _Summary(None).record(1, 1, row, **event)


_MODELS: dict[tuple[str, str], Model] = {}


def _worker_predict(
    model_dir: str, path: str, out: str, kwargs: dict[str, Any], postprocess: dict[str, Any]
) -> ItemDone:
    """Runs on a dask worker: load the model once per worker process, predict one file."""
    from distributed import get_worker

    from .store import load_model

    key = (model_dir, str(kwargs.get("device", "auto")))
    if key not in _MODELS:  # "auto" / "cuda": the worker's own GPU, its first visible one
        _MODELS[key] = load_model(model_dir, device=kwargs.get("device", "auto"))
    model = _MODELS[key].with_postprocess(**postprocess)
    done = drain(predict_file_as_worker_iter(model, path, out, **kwargs))
    worker = f"{get_worker().address} ({describe_device(model.device)})"
    return replace(done, summary={**(done.summary or {}), "worker": worker})


def predict_files_distributed(
    model_dir: str | Path,
    inputs: str | Sequence[str],
    out: str | Path,
    scheduler: str | None = None,
    postprocess: dict[str, Any] | None = None,
    scheduler_file: str | Path | None = None,
    **kwargs: Any,
) -> Generator[ItemDone, None, list[Path]]:
    """Predict files on an existing dask.distributed cluster (``scheduler`` address, or
    the JSON ``scheduler_file`` its scheduler wrote).

    One task per input; each worker loads the model once (``postprocess``: instance
    settings in place of the model's, see :meth:`~napari_unet.store.Model.with_postprocess`);
    this process (the client) never loads it nor opens a device.  With ``device`` auto
    or cuda a worker predicts on its first visible GPU: one GPU per worker is the
    cluster's to set (dask-cuda's LocalCUDACluster, ``CUDA_VISIBLE_DEVICES`` per worker);
    when workers declare a ``GPU`` resource, every task asks for one.  A task that raises
    (out of memory, a lost worker) is submitted again :data:`RETRIES` time(s), then its
    input is recorded as failed while the others go on.  Inputs and ``out`` must be
    paths the workers can reach; ``model_dir`` may be ``builtin:NAME`` (each worker opens
    its own installation's copy).  Yields :class:`ItemDone` as inputs finish (in any
    order) and writes ``summary.csv`` here after each.
    """
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ValueError("--scheduler needs dask.distributed: pip install distributed") from None
    paths = find_inputs(inputs, "input")
    names = [stem(p) for p in paths]
    _check_unique(names)
    model_ref = str(model_dir) if is_builtin(model_dir) else str(Path(model_dir).resolve())
    folder = _check_out(out).resolve()
    remove_leftovers(folder, names, EXTENSIONS[kwargs.get("fmt", "tif")])
    where = f"--scheduler-file {scheduler_file}" if scheduler_file else f"at {scheduler}"
    if (scheduler is None) == (scheduler_file is None):
        raise ValueError("give the dask scheduler's address or its scheduler file (one of them)")
    if scheduler_file is not None and not Path(scheduler_file).is_file():
        raise ValueError(f"--scheduler-file {scheduler_file}: no such file")
    try:
        client = Client(scheduler, scheduler_file=scheduler_file, timeout=10)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot reach the dask scheduler {where}: {exc}") from None
    rows = _read_summary(folder / SUMMARY)
    written: list[Path] = []
    try:
        resources = {"GPU": 1} if _workers_have_gpus(client) else None

        def submit(p: Path) -> Any:
            task = (model_ref, str(p.resolve()), str(folder), kwargs, postprocess or {})
            return client.submit(_worker_predict, *task, pure=False, resources=resources)

        futures = {submit(p): p for p in paths}
        attempts = dict.fromkeys(paths, 1)
        pending = as_completed(list(futures))
        i = 0
        for future in pending:
            p = futures.pop(future)
            try:
                done = future.result()
            except Exception as exc:  # noqa: BLE001 - the task raised or its worker died
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
                if attempts[p] <= RETRIES:
                    log.warning("%s: %s; trying again", stem(p), reason)
                    attempts[p] += 1
                    retry = submit(p)
                    futures[retry] = p
                    pending.add(retry)
                    continue
                row = {"input": stem(p), "status": "failed", "reason": reason}
                done = ItemDone(0, 0, stem(p), "", 0.0, status="failed", reason=reason, summary=row)
            i += 1
            if done.status == "skipped":  # keep what the earlier run recorded
                rows[done.name] = {**(done.summary or {}), **rows.get(done.name, {})}
            elif done.summary is not None:
                rows[done.name] = {**done.summary, "attempts": attempts[p]}
            _write_summary(folder / SUMMARY, rows)
            if done.status == "done":
                written.append(Path(done.output))
            yield replace(done, i=i, n=len(paths))
    finally:
        client.close()
    return written


def _workers_have_gpus(client: Any) -> bool:
    """Whether a worker of the cluster declares a ``GPU`` resource (``--resources GPU=1``)."""
    workers = client.scheduler_info().get("workers", {})
    return any(w.get("resources", {}).get("GPU", 0) > 0 for w in workers.values())

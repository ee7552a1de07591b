"""Autosave of label images (annotations) in a project folder beside the model.

Annotations are hours of work, so the plugin writes every Labels layer it trains on
to ``<model folder>.annotations/``:

* ``<name>.tif`` - the latest state of the layer, rewritten (atomically) whenever
  it changed: periodically while painting and at every Train start;
* ``by-hash/<sha256>.tif`` - a snapshot named by the labels' content hash, written
  at every Train start; ``training.json`` of the model records the same hash for
  every label image that trained it, so the exact labels behind a model can be
  found again;
* ``index.json`` - what each file is (layer name, shape, dtype, hash, time, and the
  layer's metadata such as class names and axes).

Nothing here imports Qt or napari: the widgets call :func:`autosave` and
:func:`restore` and show the result.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_bytes
from .builtin import refuse_write
from .files import write_tif
from .store import content_hash
from .writer import hold

INDEX = "index.json"
SUFFIX = ".annotations"
AUTOSAVE_WAIT = 10.0
"""Seconds a labels autosave waits for another process saving into the same project."""
_MAX_INDEX_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Saved:
    """One saved label image (an entry of ``index.json``)."""

    name: str
    file: str
    sha256: str
    shape: tuple[int, ...]
    dtype: str
    saved: str
    reason: str
    meta: dict[str, Any]


def project_folder(model_folder: str | Path) -> Path:
    """``<model folder>.annotations`` beside the model folder."""
    model_folder = Path(model_folder)
    return model_folder.parent / f"{model_folder.name}{SUFFIX}"


def _safe(name: str) -> str:
    """A file name for a layer name: letters, digits, ``-_.``; never a path."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "labels"
    return safe[:100]


def _read_index(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / INDEX
    if not path.is_file():
        return {}
    if path.stat().st_size > _MAX_INDEX_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_INDEX_BYTES} bytes; not an index")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path} must map file names to entries")
    return data


def _write_index(folder: Path, index: dict[str, dict[str, Any]]) -> None:
    atomic_write_bytes(folder / INDEX, json.dumps(index, indent=1, default=str).encode())


def autosave(
    model_folder: str | Path,
    name: str,
    labels: Any,
    *,
    reason: str = "autosave",
    snapshot: bool = False,
    meta: dict[str, Any] | None = None,
) -> Saved:
    """Save ``labels`` (a label image) for the model at ``model_folder``.

    Writes ``<project>/<name>.tif`` atomically when its content changed since the
    last save (else nothing is written) and, with ``snapshot``, also
    ``<project>/by-hash/<sha256>.tif`` (once per content).  Returns the entry.
    """
    refuse_write(model_folder, "save labels beside")
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise ValueError(f"labels {name!r} must be an integer image, got dtype {array.dtype}")
    folder = project_folder(model_folder)
    folder.mkdir(parents=True, exist_ok=True)
    digest = content_hash(array)
    # two windows saving into one project take turns: no index entry is lost
    with hold(folder, what="labels autosave", wait=AUTOSAVE_WAIT):
        return _save(folder, name, array, digest, reason, snapshot, meta)


def _save(
    folder: Path,
    name: str,
    array: np.ndarray,
    digest: str,
    reason: str,
    snapshot: bool,
    meta: dict[str, Any] | None,
) -> Saved:
    """:func:`autosave` with the project's lock held: read the index, write, update it."""
    index = _read_index(folder)
    file = f"{_safe(name)}.tif"
    entry = Saved(
        name=name,
        file=file,
        sha256=digest,
        shape=tuple(int(s) for s in array.shape),
        dtype=str(array.dtype),
        saved=time.strftime("%Y-%m-%d %H:%M:%S"),
        reason=reason,
        meta=dict(meta or {}),
    )
    changed = False
    previous = index.get(file)
    if previous is None or previous.get("sha256") != digest or not (folder / file).is_file():
        write_tif(folder / file, array)
        index[file] = asdict(entry)
        changed = True
    if snapshot:
        by_hash = f"by-hash/{digest}.tif"
        if not (folder / by_hash).is_file():
            (folder / "by-hash").mkdir(exist_ok=True)
            write_tif(folder / by_hash, array)
        index[by_hash] = {**asdict(entry), "file": by_hash, "reason": reason}
        changed = True
    if changed:
        _write_index(folder, index)
    return entry


def autosave_all(
    model_folder: str | Path,
    items: Sequence[tuple[str, Any, dict[str, Any] | None]],
    *,
    reason: str = "autosave",
    snapshot: bool = False,
) -> list[Saved]:
    """:func:`autosave` for each ``(name, labels, meta)`` of ``items`` (the Train widget's
    label layers; it runs this in a worker thread for the periodic autosave)."""
    return [
        autosave(model_folder, name, labels, reason=reason, snapshot=snapshot, meta=meta)
        for name, labels, meta in items
    ]


def saved(model_folder: str | Path) -> list[Saved]:
    """Everything saved for the model at ``model_folder``, newest first."""
    folder = project_folder(model_folder)
    entries = []
    for file, e in _read_index(folder).items():
        try:
            entries.append(
                Saved(
                    name=str(e["name"]),
                    file=file,
                    sha256=str(e["sha256"]),
                    shape=tuple(int(s) for s in e["shape"]),
                    dtype=str(e["dtype"]),
                    saved=str(e["saved"]),
                    reason=str(e.get("reason", "")),
                    meta=dict(e.get("meta") or {}),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{folder / INDEX}: entry {file!r} is malformed ({exc})") from None
    return sorted(entries, key=lambda s: s.saved, reverse=True)


def restore(model_folder: str | Path, entry: Saved) -> np.ndarray:
    """The label image of ``entry``; checked against its recorded hash."""
    from .files import read_image

    folder = project_folder(model_folder).resolve()
    path = (folder / entry.file).resolve()
    if folder not in path.parents:
        raise ValueError(f"{entry.file!r} is outside the annotations folder {folder}")
    array = read_image(path)
    if content_hash(array) != entry.sha256:
        raise ValueError(
            f"{path} does not hold the labels recorded in {INDEX} (content hash differs)"
        )
    return array


def find_by_hash(model_folder: str | Path, sha256: str) -> Saved | None:
    """The snapshot whose content hash is ``sha256`` (e.g. from ``training.json``)."""
    for entry in saved(model_folder):
        if entry.sha256 == sha256 and entry.file.startswith("by-hash/"):
            return entry
    return None

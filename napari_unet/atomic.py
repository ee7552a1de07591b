"""Atomic writes: a reader sees the old file or the new one, never half of one.

The bytes go to a temporary file in the destination's folder, which is flushed, fsynced
and renamed over the destination with :func:`os.replace`; the folder entry is fsynced
too (POSIX).  Every file napari-unet writes for a user (model folders, checkpoints,
autosaved labels, batch summaries, the writer record of a folder in training) goes
through here.  Nothing is ever written into a built-in model's folder
(:func:`napari_unet.builtin.refuse_write`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .builtin import refuse_write


def _new_file_mode(path: Path) -> int:
    """Permission bits for a file written at ``path``: keep an existing file's, else 0o644."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o644


def _fsync_dir(folder: Path) -> None:
    """Flush a directory entry to disk where the OS allows it (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half.

    The bytes go to a temporary file in the same folder, which is flushed, fsynced and
    then renamed over ``path`` with :func:`os.replace`.  The temporary file is removed
    if anything fails.

    Parameters
    ----------
    path
        Destination file; its folder must exist.
    data
        The complete new content.
    """
    path = Path(path)
    refuse_write(path, "write")
    mode = _new_file_mode(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except OSError as exc:  # e.g. a full disk: the old file stays, the message names it
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically.

    Parameters
    ----------
    path
        Destination file; its folder must exist.
    obj
        Anything :func:`json.dumps` accepts (tuples become lists).  Non-finite floats
        are written as ``NaN``/``Infinity``, which Python's ``json`` reads back.
    """
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))

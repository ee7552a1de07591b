"""One writer per folder: a model folder is written by one training at a time.

A training (CLI, API, Train widget, child process) holds :func:`hold` on its output
folder from the checks before its first step to its final write.  The lock is
:class:`filelock.FileLock` (``flock`` on POSIX: the kernel frees it when the process
dies, however it dies) on ``.<name>.lock`` beside the folder; the holder's pid, host,
start time and command line are in ``.<name>.writer.json`` beside it, so that a second
writer is refused with one line naming them, and a lock left by a process that died is
taken over with a notice.  Writes inside the folder stay atomic (temporary file and
``os.replace``): a reader never needs the lock, it sees the last complete model.

The labels autosave takes the same kind of lock on the annotations folder for the time
of one save (:func:`hold` with ``wait``): two windows saving into one folder take turns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .atomic import atomic_write_json
from .builtin import refuse_write

log = logging.getLogger(__name__)


class FolderBusy(ValueError):
    """Another process is writing the folder (a bad request: exit 2 in the CLI)."""


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def info_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.writer.json"


_HELD: dict[Path, int] = {}  # folders this process holds, with how many holders
_GUARD = threading.Lock()


def writer(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who writes ``folder`` now: its writer record, when its lock is held (a record left
    by a process that died, or whose pid now names another process, is not a writer)."""
    folder = Path(os.path.abspath(folder))
    record = _read(info_path(folder))
    if record is None:
        return None
    with _GUARD:
        if folder in _HELD:
            return record  # this process holds it
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return None
    probe = FileLock(str(lock_path(folder)), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return record  # held: the kernel says so
    except OSError:
        return record  # cannot tell (a read-only place): trust the record
    probe.release()
    return None


def describe(record: dict[str, Any]) -> str:
    """ "pid 1234, started 10:42" (with the host when it is another machine's)."""
    started = str(record.get("started", "?"))
    try:
        when = datetime.fromisoformat(started)
        today = when.date() == datetime.now().date()
        started = when.strftime("%H:%M" if today else "%Y-%m-%d %H:%M")
    except ValueError:
        pass
    host = record.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {record.get('pid', '?')}{where}, started {started}"


def in_training(folder: str | os.PathLike[str], step: Any) -> str:
    """ "M is being trained (pid 1234, started 10:42): predicting with its last complete
    save, step 480" when another process writes the model folder ``folder``; else ""."""
    path = Path(folder)
    record = writer(path) if path.is_dir() else None
    if record is None or record.get("pid") == os.getpid():
        return ""
    return (
        f"{path} is being trained ({describe(record)}): predicting with its last complete "
        f"save, step {step}"
    )


def busy_message(folder: Path, what: str, record: dict[str, Any] | None) -> str:
    holder = f" ({describe(record)})" if record else ""
    return (
        f"{folder} is being written by another {what}{holder}; wait for it to end, or "
        "write to another folder"
    )


def refuse_busy(folder: str | os.PathLike[str] | None, what: str = "training") -> None:
    """Raise :class:`FolderBusy` when another live process writes ``folder`` (a check
    before any work, e.g. at the Train button; :func:`hold` is what excludes)."""
    if folder is None:
        return
    folder = Path(os.path.abspath(folder))
    record = writer(folder)
    if record is not None and record.get("pid") != os.getpid():
        raise FolderBusy(busy_message(folder, what, record))


@contextlib.contextmanager
def hold(
    folder: str | os.PathLike[str], what: str = "training", wait: float = 0.0
) -> Iterator[str]:
    """Hold the writer lock of ``folder`` for the ``with`` block; yields a notice (a lock
    left by a process that died was taken over) or "".

    Raises :class:`FolderBusy` naming the holder when another process holds it (after
    waiting ``wait`` seconds).  Reentrant within a process (the CLI holds it before it
    reads the data, the training again inside).
    """
    refuse_write(folder, "write into")  # package data: no lock file there either
    folder = Path(os.path.abspath(folder))
    with _GUARD:
        if folder in _HELD:
            _HELD[folder] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield ""
        finally:
            with _GUARD:
                _HELD[folder] -= 1
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(folder)), timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusy(busy_message(folder, what, _read(info_path(folder)))) from None
    try:
        notice = ""
        previous = _read(info_path(folder))
        if previous is not None and previous.get("pid") != os.getpid():
            notice = (
                f"{folder}: the {previous.get('what', 'writer')} that held it "
                f"({describe(previous)}) ended without releasing it; taken over"
            )
            log.warning(notice)
        try:  # the record only names the holder in messages: the lock is what excludes
            atomic_write_json(info_path(folder), _record(what))
        except OSError as exc:
            log.warning("%s: the writer record was not written (%s)", folder, exc)
        with _GUARD:
            _HELD[folder] = 1
        try:
            yield notice
        finally:
            with _GUARD:
                _HELD.pop(folder, None)
            with contextlib.suppress(OSError):
                info_path(folder).unlink()
    finally:
        lock.release()


def _record(what: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "what": what,
        "command": " ".join(sys.argv)[:500],
    }


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

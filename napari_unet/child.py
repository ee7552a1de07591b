"""Compute in a child process: what the widgets start runs away from napari.

Training, prediction and batch runs started from the widgets run in a child
Python process (``python -m napari_unet.child JOB``), so that torch competes
neither for napari's interpreter lock nor for its life: a crash, a CUDA error or
the out-of-memory killer ends the child, and napari, its layers and the labels
the user painted stay.  The CLI and the Python API run in-process (a script
needs no child).

The protocol needs no pickling: messages are JSON lines and arrays are ``.npy``
files (``allow_pickle=False``) in the job's exchange folder, in ``/dev/shm``
(memory) where there is one.  The child reads them memory-mapped, so an image
is copied once, into that folder.

- The job file ``JOB`` (``job.json`` in the exchange folder) names a function of
  :data:`napari_unet.jobs.JOBS` and its parameters.
- Child -> parent, one JSON line each on the child's standard output (what the
  job itself prints goes to standard error): ``{"event": ...}`` for every event
  of the job's generator (:mod:`napari_unet.events`), then ``{"done": value}``,
  ``{"cancelled": true}`` or ``{"error": {"type", "message", "traceback"}}``.
- Parent -> child, one JSON line each on the child's standard input:
  ``{"cmd": "stop"}`` (training ends after its step and saves, as its Stop button;
  other jobs are cancelled), ``"pause"``, ``"resume"`` and ``{"cmd": "preview",
  "image": {"__npy__": ...}, "key": ...}`` (training's preview image).  The end of
  the input (the parent is gone) is a stop.

Values cross as JSON with three additions: arrays (``{"__npy__": file}``), tuples
(``{"__tuple__": [...]}``) and the dataclasses of :data:`TYPES`
(``{"__dc__": name, "fields": {...}}``); a :class:`~napari_unet.store.Model`
crosses as its folder (``{"__model__": path}``) and is loaded on the other side.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import weakref
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import events as ev

JOB_FILE = "job.json"
STOP_GRACE = 10.0  # seconds a stopped child may take to save and end before it is killed
_counter = itertools.count()


class ChildError(Exception):
    """The job raised an exception in the child; its message is the job's.

    (Not a RuntimeError: superqt's generator worker takes those for an aborted thread.)
    """

    def __init__(self, message: str, kind: str = "", details: str = "") -> None:
        super().__init__(message)
        self.kind = kind  # the exception's class name in the child
        self.details = details  # the child's traceback


class ChildDied(Exception):
    """The child process ended without an answer (killed, crashed, out of memory)."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode


def _types() -> dict[str, type]:
    from .config import PostprocessConfig, TileConfig, TrainConfig
    from .inputs import Names
    from .jobs import Predicted
    from .request import TrainRequest

    classes = [obj for obj in vars(ev).values() if dataclasses.is_dataclass(obj)]
    more = [PostprocessConfig, Names, Predicted, TrainRequest, TrainConfig, TileConfig]
    return {cls.__name__: cls for cls in [*classes, *more]}


TYPES: dict[str, type] = {}
"""The dataclasses that may cross the process boundary, by name (filled on first use)."""


def _registered() -> dict[str, type]:
    if not TYPES:
        TYPES.update(_types())
    return TYPES


# --------------------------------------------------------------------------- values


def encode(value: Any, folder: Path) -> Any:
    """``value`` as JSON-able data; arrays are written to ``folder`` as ``.npy`` files."""
    from .store import Model

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, folder) for v in value]}
    if isinstance(value, list):
        return [encode(v, folder) for v in value]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise TypeError(f"cannot send a dict with the key {bad[0]!r} to another process")
        return {k: encode(v, folder) for k, v in value.items()}
    if isinstance(value, Model):
        if value.path is None:
            raise TypeError("cannot send a model that has no folder to another process")
        return {"__model__": str(value.path), "config": value.config.to_dict()}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _registered():
        fields = {f.name: encode(getattr(value, f.name), folder) for f in dataclasses.fields(value)}
        return {"__dc__": type(value).__name__, "fields": fields}
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        name = f"a{os.getpid()}-{next(_counter)}.npy"
        np.save(folder / name, np.asarray(value), allow_pickle=False)
        return {"__npy__": name}
    raise TypeError(f"cannot send a {type(value).__name__} to another process")


def decode(data: Any, folder: Path, mmap: bool = False, device: str = "cpu") -> Any:
    """The value :func:`encode` wrote; arrays are read from ``folder`` (memory-mapped, read
    only, with ``mmap``; else read into memory and the file removed)."""
    if isinstance(data, list):
        return [decode(v, folder, mmap, device) for v in data]
    if not isinstance(data, dict):
        return data
    if "__npy__" in data:
        path = folder / Path(data["__npy__"]).name  # a bare name in the exchange folder
        if mmap:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        array = np.load(path, allow_pickle=False)
        path.unlink()
        return array
    if "__tuple__" in data:
        return tuple(decode(v, folder, mmap, device) for v in data["__tuple__"])
    if "__model__" in data:
        return _load_model(data, device)
    if "__dc__" in data:
        cls = _registered().get(data["__dc__"])
        if cls is None:
            raise TypeError(f"unknown type {data['__dc__']!r} from another process")
        return cls(**{k: decode(v, folder, mmap, device) for k, v in data["fields"].items()})
    return {k: decode(v, folder, mmap, device) for k, v in data.items()}


def _load_model(data: dict[str, Any], device: str) -> Any:
    """The model of its folder, with the configuration it had in memory (e.g. instance
    settings not saved yet); the architecture must be the folder's."""
    from .config import ModelSpec
    from .store import load_model

    model = load_model(data["__model__"], device=device)
    config = ModelSpec.from_dict(data["config"]) if "config" in data else model.config
    if config.model != model.config.model:
        raise ValueError(
            f"the model in memory is not the one saved in {data['__model__']} (another "
            f"architecture): save it before predicting"
        )
    return dataclasses.replace(model, config=config)


# --------------------------------------------------------------------------- parent side


SHM = Path("/dev/shm")  # memory, where Linux has it
SHM_ROOM = 16  # SHM is used when it has this many times the inputs free (+ 256 MB)


def nbytes(value: Any) -> int:
    """Bytes of the arrays in ``value`` (nested lists, tuples, dicts)."""
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    size = getattr(value, "nbytes", 0)
    return int(size) if isinstance(size, (int, np.integer)) else 0


def exchange_folder(size: int = 0) -> Path:
    """A new private folder for one job's files: in ``/dev/shm`` (memory) when it has room
    for inputs of ``size`` bytes and the results (:data:`SHM_ROOM`), else the temporary
    folder on disk (a container's ``/dev/shm`` is often 64 MB)."""
    where = None
    if SHM.is_dir() and os.access(SHM, os.W_OK):
        if shutil.disk_usage(SHM).free >= SHM_ROOM * size + (256 << 20):
            where = SHM
    return Path(tempfile.mkdtemp(prefix="napari-unet-", dir=where))


def exit_text(returncode: int | None) -> str:
    """How a child ended, for people: "was killed by SIGKILL (signal 9)", "exited with code 3"."""
    if returncode is None:
        return "did not end"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        hint = (
            " (killed from outside, or by the system when memory ran out)"
            if (-returncode == signal.SIGKILL)
            else ""
        )
        return f"was killed by {name} (signal {-returncode}){hint}"
    return f"exited with code {returncode}"


_LIVE: weakref.WeakSet[ChildProcess] = weakref.WeakSet()


@atexit.register
def _reap_all() -> None:
    """No orphans: children still running when the interpreter ends are killed and reaped."""
    for child in list(_LIVE):
        child.kill()


class ChildProcess:
    """One job in one child process, seen from the parent.

    ``events()`` (a generator, for a worker thread) starts the child, yields its
    events and returns the job's result; it raises :class:`ChildError` for an
    exception in the job and :class:`ChildDied` when the child ends without an
    answer.  ``send(cmd)`` / ``stop()`` / ``kill()`` may be called from any thread.

    Parameters
    ----------
    job
        A name of :data:`napari_unet.jobs.JOBS`.
    params
        Its parameters (values :func:`encode` accepts; arrays are written to the
        exchange folder now).
    what
        Names the job in messages ("napari-unet training").
    threads
        Torch threads in the child.
    """

    def __init__(self, job: str, params: dict[str, Any], what: str, threads: int) -> None:
        self.what = what
        self.job, self.params, self.threads = job, params, threads
        self.folder: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self._preview: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Write the job and its arrays, start the child (``events()`` does this)."""
        self.folder = exchange_folder(nbytes(self.params))
        spec = {"job": self.job, "params": encode(self.params, self.folder)}
        (self.folder / JOB_FILE).write_text(json.dumps({**spec, "threads": self.threads}))
        self.params = {}  # the child reads the files: drop the references
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])  # napari_unet importable as here
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "napari_unet.child", str(self.folder / JOB_FILE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        _LIVE.add(self)
        if self._preview is not None:
            self.request_preview(*self._preview)

    def request_preview(self, image: Any, key: Any = None) -> None:
        """Ask the training for previews on ``image`` (kept until the child runs)."""
        self._preview = (image, key)
        if self.alive():
            self.send("preview", image=np.asarray(image), key=key)

    def send(self, cmd: str, **values: Any) -> bool:
        """Send a command line; False when the child is gone (nothing to tell)."""
        with self._lock:
            if not self.alive():
                return False
            assert self.proc is not None and self.proc.stdin is not None and self.folder
            line = json.dumps({"cmd": cmd, **encode(values, self.folder)}) + "\n"
            try:
                self.proc.stdin.write(line.encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                return False
            return True

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Ask the child to stop; kill it when it has not ended after ``grace`` seconds."""
        self.cancelled = True
        if not self.send("stop"):
            return
        proc = self.proc

        def reaper() -> None:
            assert proc is not None
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        threading.Thread(target=reaper, name="napari-unet reaper", daemon=True).start()

    def kill(self) -> None:
        """End the child now (SIGKILL) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def events(self) -> Generator[Any, None, Any]:
        """Start the child; its events; the job's result (see the class notes)."""
        if self.cancelled:
            return None
        answer: dict[str, Any] = {}
        try:
            self.start()
            assert self.proc is not None and self.proc.stdout is not None and self.folder
            for line in self.proc.stdout:
                message = json.loads(line)
                if "event" in message:
                    yield decode(message["event"], self.folder)
                else:
                    answer = message
                    break
            returncode = self.proc.wait()
            if "done" in answer:
                return decode(answer["done"], self.folder)
            if "cancelled" in answer:
                return None
            if "error" in answer:
                err = answer["error"]
                raise ChildError(err["message"], err.get("type", ""), err.get("traceback", ""))
            raise ChildDied(
                f"{self.what}: the compute process {exit_text(returncode)}; napari and "
                f"its layers are unaffected",
                returncode,
            )
        finally:
            self.close()

    def close(self) -> None:
        """Stop the child if it still runs (and wait for it), remove the exchange folder."""
        if self.alive():
            self.stop()
            assert self.proc is not None
            try:
                self.proc.wait(STOP_GRACE + 1)
            except subprocess.TimeoutExpired:
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout) if self.proc is not None else ():
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        _LIVE.discard(self)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- child side


class Commands:
    """The parent's commands, read by a thread of the child."""

    def __init__(self, folder: Path) -> None:
        from .training import TrainControl

        self.folder = folder
        self.control = TrainControl()
        self.stopped = threading.Event()
        self.running = threading.Event()
        self.running.set()

    def read(self, stream: IO[bytes]) -> None:
        for line in stream:
            message = json.loads(line)
            cmd = message.get("cmd")
            if cmd == "stop":
                break
            if cmd == "pause":
                self.running.clear()
            elif cmd == "resume":
                self.running.set()
            elif cmd == "preview":
                image = decode(message["image"], self.folder)
                self.control.request_preview(image, key=decode(message.get("key"), self.folder))
        self.stopped.set()  # a stop, or the end of the input: the parent is gone
        self.control.stop()
        self.running.set()


def _run(gen: Generator[Any, None, Any], commands: Commands, graceful: bool, send) -> Any:
    """Drive the job's generator, sending its events; pause and stop as told."""
    while True:
        commands.running.wait()
        if commands.stopped.is_set() and not graceful:
            gen.close()
            return _CANCELLED
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        send({"event": event})


_CANCELLED = object()


def main(argv: list[str] | None = None) -> int:
    """The child: run the job of ``argv[0]`` (``job.json``) and answer on standard output."""
    import faulthandler

    job_file = Path((argv if argv is not None else sys.argv[1:])[0])
    folder = job_file.parent
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the job prints goes to standard error, not into the protocol
    faulthandler.enable()
    write_lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        line = json.dumps({k: encode(v, folder) for k, v in message.items()})
        with write_lock:
            out.write(line + "\n")

    spec = json.loads(job_file.read_text())
    try:
        import torch

        from .jobs import JOBS

        torch.set_num_threads(int(spec.get("threads") or 1))
        factory, graceful = JOBS[spec["job"]]
        commands = Commands(folder)
        threading.Thread(
            target=commands.read, args=(sys.stdin.buffer,), name="commands", daemon=True
        ).start()
        params = decode(spec["params"], folder, mmap=True)
        result = _run(factory(params, commands.control), commands, graceful, send)
        if result is _CANCELLED:
            send({"cancelled": True})
        else:
            send({"done": result})
        return 0
    except Exception as exc:  # every failure reaches the parent as its message
        message = {"type": type(exc).__name__, "message": str(exc) or type(exc).__name__}
        send({"error": {**message, "traceback": traceback.format_exc()}})
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    finally:
        out.flush()


if __name__ == "__main__":
    from napari_unet.child import main as child_main  # the module, not this __main__ copy

    code = child_main()
    sys.stderr.flush()
    os._exit(code)  # at once: the thread reading the parent's commands may be blocked

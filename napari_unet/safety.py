"""Checks of a model folder that need no torch: run before anything in it is loaded.

A model folder (see :mod:`napari_unet.store`) often comes from another lab.  Nothing in
it is trusted: this module bounds and validates every file before :mod:`~napari_unet.store`
decodes it, and never imports torch, so the command line can refuse a bad model folder
before paying for the torch import.

What :func:`~napari_unet.store.load_model` checks, in order (each failure is a
:class:`ModelFormatError`, a ``ValueError`` whose message names the file and the
offending value; ``builtin:NAME`` stands for a built-in model's folder, see
:mod:`napari_unet.builtin`, and an unknown name is a ``ValueError`` listing the
available ones).  Steps 1-5 are :func:`read_model_folder`, the one check sequence
that :func:`check_model_folder` and ``load_model`` share (a new check goes there);
step 6 needs torch and is ``load_model``'s own:

1. the folder exists, is a folder and holds a ``config.json`` (before it is walked);
2. every entry under it (at most :data:`MAX_FOLDER_ENTRIES`): no symbolic link leading
   outside the folder, no FIFO, device or socket, no pickle data (by the first bytes:
   pickle protocol 2-5, zip archives as written by ``torch.save``) and no pickle file by
   its name (``*.pt``, ``*.pkl``, ...);
3. ``config.json``: at most 1 MiB of UTF-8 JSON, no repeated keys, at most
   :data:`MAX_CONFIG_DEPTH` levels deep, then the strict schema of
   :meth:`ModelSpec.from_dict` (known keys only, types and ranges);
4. the header of ``weights.safetensors``
   (:mod:`napari_unet.safetensors_header`): the 8-byte header length is read first and
   refused above ``MAX_HEADER_BYTES`` or beyond the end of the file; the JSON
   header is checked entry by entry (dtype, shape, offsets inside the data section and
   of the right size);
5. ``training.json``: at most 64 MiB,
   :data:`~napari_unet.strict_json.MAX_JSON_DEPTH` levels, a JSON object
   whose resume fields (``steps``, ``elapsed``, ``log``, ``validation``,
   ``sessions``) have the right types;
6. the weights against the network: the header's tensor names, shapes and dtypes must
   be those of the network that ``config.json`` describes (floating tensors may be
   stored as F16, BF16, F32 or F64 and are loaded as float32; counters must be
   integers), worked out on torch's ``meta`` device so a hostile config cannot make
   the loader allocate a huge network; the file's sha256 must be the one
   ``config.json`` records; only then are the tensors decoded, and they must be finite.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .builtin import resolve_model_ref
from .config import CONFIG_FILE, ModelSpec, show_value
from .packages import is_package, package_folder
from .safetensors_header import (
    read_header,
)
from .strict_json import ModelFormatError, read_json

WEIGHTS_FILE = "weights.safetensors"
HISTORY_FILE = "training.json"
CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"

WEIGHTS_HASH_KEY = "weights_sha256"
SAFETENSORS_FORMAT = "napari-unet"
CHECKPOINT_FORMAT = "napari-unet-checkpoint"
CHECKPOINT_VERSION = 1

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB
MAX_JSON_BYTES = 64 << 20  # training.json, checkpoint/state.json
MAX_CONFIG_DEPTH = 4  # config.json is {section: {key: [values]}}: 3 levels
# files that are pickles by their name alone (torch.save, pickle.dump, joblib.dump, Lightning)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
MAX_MODEL_NAME = 255
MAX_FOLDER_ENTRIES = 10_000  # a model folder holds a handful of files


# --------------------------------------------------------------------------- pickle guard


def _looks_like_pickle(head: bytes, size: int) -> bool:
    """True for pickle protocol 2-5 data or a zip archive (``torch.save`` output).

    A safetensors file whose u64 header length happens to start with ``0x80 0x02..05``
    is recognised by its plausible length and the ``{`` that opens its JSON header.
    """
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        if len(head) >= 9:
            (n,) = struct.unpack("<Q", head[:8])
            if 8 + n <= size and head[8:9] == b"{":
                return False
        return True
    return False


def _walk_entries(folder: Path) -> Iterator[Path]:
    """Every file and folder under ``folder``; symbolic links are listed, never followed."""
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            yield Path(root) / name


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symbolic link resolved (the ``root`` :func:`check_entry` needs).

    Parameters
    ----------
    path
        Any path; it need not exist.

    Returns
    -------
    Path
        The absolute path :func:`os.path.realpath` gives.
    """
    return Path(os.path.realpath(path))


def check_entry(root: Path, path: Path, regular: bool = False) -> None:
    """Refuse a symbolic link that leads outside ``root`` and anything but files and folders.

    Nothing is opened: only :func:`os.lstat` and :func:`os.stat` are called, so a FIFO
    can never block the caller.

    Parameters
    ----------
    root
        The model folder with every link resolved (:func:`real_path`).
    path
        An entry inside the model folder.  A missing ``path`` passes (the caller
        reports missing files).
    regular
        When true, ``path`` must be a regular file (or a link to one inside ``root``).

    Raises
    ------
    ModelFormatError
        For a link leading outside ``root``, a broken link, a FIFO, device or socket,
        or (with ``regular``) a folder; the message names ``path``.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be inspected ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        target = real_path(path)
        if target != root and not target.is_relative_to(root):
            raise ModelFormatError(
                f"{path}: symbolic link to {target}, outside the model folder {root}; "
                "refusing to follow it"
            )
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ModelFormatError(
                f"{path}: broken symbolic link to {target} ({exc.strerror})"
            ) from None
    mode = info.st_mode
    if regular and not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise ModelFormatError(f"{path}: is {what}; a file was expected")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ModelFormatError(
            f"{path}: is not a regular file (a FIFO, device or socket); refusing to read it"
        )


def _refuse_pickle_file(file: Path) -> None:
    """Raise ModelFormatError if ``file`` is pickle data by name or by content.

    Reads 9 bytes only; nothing is ever unpickled.
    """
    if file.name.lower().endswith(PICKLE_SUFFIXES):
        raise ModelFormatError(
            f"{file}: a pickle file by its name ({file.suffix}); napari-unet never loads "
            "pickles. Convert the weights to safetensors or remove the file."
        )
    if not file.is_file():
        return
    try:
        with open(file, "rb") as handle:
            head = handle.read(9)
        size = file.stat().st_size
    except OSError:
        return  # unreadable user files are not ours to judge
    if _looks_like_pickle(head, size):
        raise ModelFormatError(
            f"{file}: looks like pickle data (e.g. a torch.save file); napari-unet never "
            "loads pickles. Convert the weights to safetensors or remove the file."
        )


def refuse_pickles(folder: Path) -> None:
    """Check every entry under ``folder`` before anything in it is read.

    Only the first 9 bytes of each file are read; nothing is ever unpickled.

    Parameters
    ----------
    folder
        A model folder, or a folder inside one (``checkpoint/``).

    Raises
    ------
    ModelFormatError
        For more than :data:`MAX_FOLDER_ENTRIES` entries, symbolic links leading
        outside ``folder``, FIFOs, devices and sockets, and files that are pickle data
        by name or content; the message names the entry.
    """
    root = real_path(folder)
    for count, entry in enumerate(_walk_entries(folder), start=1):
        if count > MAX_FOLDER_ENTRIES:
            raise ModelFormatError(
                f"{folder}: more than {MAX_FOLDER_ENTRIES} files and folders; "
                "this is not a model folder"
            )
        check_entry(root, entry)
        _refuse_pickle_file(entry)


def check_model_name(name: str) -> str:
    """Check a model name meant to become one folder inside another; return it.

    Parameters
    ----------
    name
        A bare folder name such as ``"nuclei-v2"``.

    Returns
    -------
    str
        ``name`` unchanged.

    Raises
    ------
    ValueError
        If the name is empty, too long, ``.`` or ``..``, absolute, contains a path
        separator, a NUL or another control character: anything that would put the
        model somewhere else than directly inside the intended folder.
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"model name must not be empty, got {name!r}")
    if len(name) > MAX_MODEL_NAME:
        raise ValueError(f"model name is too long ({len(name)} characters, at most 255)")
    if name in (".", "..") or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"model name {name!r} would leave its folder")
    if "/" in name or "\\" in name:
        raise ValueError(
            f"model name {name!r} contains a path separator; a model name is one folder name"
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"model name {name!r} contains control characters")
    return name


def model_folder(parent: str | os.PathLike[str], name: str) -> Path:
    """The folder for model ``name`` inside ``parent``, refusing names that escape it.

    Parameters
    ----------
    parent
        The folder that holds models.
    name
        The model's name (see :func:`check_model_name`).

    Returns
    -------
    Path
        ``parent / name``.

    Raises
    ------
    ValueError
        For a name that is not one plain folder name, or when ``parent / name`` is a
        symbolic link leading outside ``parent``.
    """
    check_model_name(name)
    folder = Path(parent) / name
    if folder.is_symlink():
        target = real_path(folder)
        if not target.is_relative_to(real_path(Path(parent))):
            raise ValueError(f"{folder}: symbolic link to {target}, outside {parent}")
    return folder


# --------------------------------------------------------------------------- JSON reading


def _load_config(folder: Path) -> tuple[ModelSpec, str]:
    path = folder / CONFIG_FILE
    check_entry(real_path(folder), path, regular=True)
    data = read_json(path, MAX_CONFIG_BYTES, "config", MAX_CONFIG_DEPTH)
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    digest = data.pop(WEIGHTS_HASH_KEY, None)
    if (
        not isinstance(digest, str)
        or len(digest) != 64
        or any(c not in "0123456789abcdefABCDEF" for c in digest)
    ):
        raise ModelFormatError(
            f"{path}: {WEIGHTS_HASH_KEY!r} must be the 64-character sha256 of "
            f"{WEIGHTS_FILE}, got {show_value(digest)}"
        )
    try:
        spec = ModelSpec.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(f"{path}: {exc}") from None
    return spec, digest.lower()


def read_config(path: str | os.PathLike[str]) -> ModelSpec:
    """The :class:`ModelSpec` of a model folder, without loading its weights.

    The folder gets the same checks as in :func:`load_model` (links, pickles, the
    strict ``config.json`` schema); the weights are not read.

    Raises
    ------
    ModelFormatError
        For any problem with the folder or ``config.json``; the message names the file.
    """
    folder = _model_dir(path)
    return _load_config(folder)[0]


@dataclass(frozen=True)
class CheckedModelFolder:
    """What :func:`read_model_folder` read from a model folder, every part checked.

    Attributes
    ----------
    folder
        The model folder, as given.
    spec
        The configuration from ``config.json``.
    weights_sha256
        The sha256 of ``weights.safetensors`` that ``config.json`` records (lower case).
    weights_path
        ``folder / weights.safetensors``.
    weights_header
        The checked JSON header of the weights (see :func:`read_header`); not yet
        compared with the network ``spec`` describes.
    weights_start
        The bytes of the weights file read so far (length and header), for
        :func:`read_rest`.
    history
        The content of ``training.json`` (``{}`` when there is none).
    """

    folder: Path
    spec: ModelSpec
    weights_sha256: str
    weights_path: Path
    weights_header: dict[str, Any] = field(repr=False)
    weights_start: bytes = field(repr=False)
    history: dict[str, Any] = field(default_factory=dict, repr=False)


def read_model_folder(path: str | os.PathLike[str]) -> CheckedModelFolder:
    """Run every check of a model folder that needs no torch; return what was read.

    This is the one check sequence of a model folder: :func:`check_model_folder` and
    :func:`~napari_unet.store.load_model` both run it, and a new check belongs here.
    In order: the folder and the walk of its entries (links, special files, pickles),
    ``config.json``, the header of ``weights.safetensors`` (length and entries; not
    yet against the network) and ``training.json``.  Of the weights only the header
    is read.

    Parameters
    ----------
    path
        The model folder.

    Returns
    -------
    CheckedModelFolder
        The configuration, the recorded weights hash, the weights header and the
        training history.

    Raises
    ------
    ModelFormatError
        For any problem found; the message names the file and the value.
    """
    folder = _model_dir(path)
    spec, digest = _load_config(folder)
    root = real_path(folder)
    weights = folder / WEIGHTS_FILE
    check_entry(root, weights, regular=True)
    header, start = read_header(weights, "weights file")
    history_path = folder / HISTORY_FILE
    check_entry(root, history_path, regular=True)
    history: dict[str, Any] = {}
    if history_path.exists():
        history = _check_history(
            history_path, read_json(history_path, MAX_JSON_BYTES, "training history")
        )
    return CheckedModelFolder(
        folder=folder,
        spec=spec,
        weights_sha256=digest,
        weights_path=weights,
        weights_header=header,
        weights_start=start,
        history=history,
    )


def check_model_folder(path: str | os.PathLike[str]) -> ModelSpec:
    """Every check of :func:`~napari_unet.store.load_model` that needs no torch.

    Runs :func:`read_model_folder` (the folder walk, ``config.json``, the header of
    ``weights.safetensors`` and ``training.json``) and keeps the configuration.

    Parameters
    ----------
    path
        The model folder.

    Returns
    -------
    ModelSpec
        The model's configuration.

    Raises
    ------
    ModelFormatError
        For any problem found; the message names the file and the value.
    """
    return read_model_folder(path).spec


def _model_dir(path: str | os.PathLike[str]) -> Path:
    folder = resolve_model_ref(path)  # builtin:NAME -> the package's folder (unknown: listed)
    if is_package(folder):  # a bioimage.io package napari-unet exported: its attachments
        try:
            folder = package_folder(folder)
        except ValueError as exc:
            raise ModelFormatError(str(exc)) from None
    if folder.is_file():
        _refuse_pickle_file(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelFormatError(f"{folder}: model folder {what}")
    if not os.path.lexists(folder / CONFIG_FILE):  # before walking a folder given by mistake
        raise ModelFormatError(f"{folder / CONFIG_FILE}: config is missing (not a model folder?)")
    refuse_pickles(folder)
    return folder


_HISTORY_TYPES: dict[str, tuple[type, ...]] = {
    "steps": (int,),
    "elapsed": (int, float),
    "log": (list,),
    "validation": (list,),
    "sessions": (list,),
}


def _check_history(path: Path, history: Any) -> dict[str, Any]:
    """``training.json`` must be an object; the fields training resumes from are typed."""
    if not isinstance(history, dict):
        raise ModelFormatError(
            f"{path}: training history must be a JSON object, got {type(history).__name__}"
        )
    for key, types in _HISTORY_TYPES.items():
        if key not in history:
            continue
        value = history[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ModelFormatError(
                f"{path}: {key!r} must be {' or '.join(t.__name__ for t in types)}, "
                f"got {show_value(value)}"
            )
        if isinstance(value, int | float) and not (0 <= value < 1e15):
            raise ModelFormatError(f"{path}: {key!r} must be >= 0 and finite, got {value}")
    for i, session in enumerate(history.get("sessions", [])):
        if not isinstance(session, dict):
            raise ModelFormatError(
                f"{path}: sessions[{i}] must be a JSON object, got {show_value(session)}"
            )
    return history

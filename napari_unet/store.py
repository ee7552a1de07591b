"""The model folder: the one on-disk model format of napari-unet.

A model folder ``<name>/`` holds

``weights.safetensors``
    The network's ``state_dict`` (floating tensors as contiguous float32, BatchNorm's
    ``num_batches_tracked`` counters as int64), written with ``safetensors`` and the
    metadata ``{"format": "napari-unet"}``.
``training.json``
    The training history the trainer hands over (steps, losses, validation scores,
    the images and labels used with their :func:`content_hash`, ...).
``config.json``
    :meth:`ModelSpec.to_dict` plus one top-level key owned by this module,
    ``"weights_sha256"``: the sha256 of ``weights.safetensors``.  The key is removed
    before :meth:`ModelSpec.from_dict` sees the dictionary.  ``config.json`` is written
    last, so a save interrupted after the weights leaves a hash that no longer matches
    and :func:`load_model` reports it instead of loading a half-saved model.
``checkpoint/`` (optional, for resuming training)
    ``optimizer.safetensors`` holds every tensor of the optimizer ``state_dict`` (and of
    the caller's ``state``) under keys such as ``"state.3.exp_avg"``; ``state.json``
    holds everything else plus the sha256 of ``optimizer.safetensors``.

Every write is atomic (temporary file in the same folder, ``fsync``, ``os.replace``).
Loading never unpickles anything: no ``torch.load``, no ``pickle``; any file in the
folder that looks like pickle data or a torch zip archive is refused outright.

What :func:`load_model` checks, in order (each failure is a :class:`ModelFormatError`,
a ``ValueError`` whose message names the file and the offending value):

1. the folder exists and is a folder;
2. every entry under it: no symbolic link leading outside the folder, no FIFO, device
   or socket, no pickle data (by the first bytes: pickle protocol 2-5, zip archives as
   written by ``torch.save``) and no pickle file by its name (``*.pt``, ``*.pkl``, ...);
3. ``config.json``: at most 1 MiB of UTF-8 JSON, no repeated keys, at most
   :data:`MAX_CONFIG_DEPTH` levels deep, then the strict schema of
   :meth:`ModelSpec.from_dict` (known keys only, types and ranges);
4. ``weights.safetensors``: the 8-byte header length is read first and refused above
   :data:`MAX_HEADER_BYTES` or beyond the end of the file; the JSON header is checked
   entry by entry (dtype, shape, offsets inside the data section and of the right
   size); its tensor names, shapes and dtypes must be those of the network that
   ``config.json`` describes (worked out on torch's ``meta`` device, so a hostile
   config cannot make the loader allocate a huge network); the file's sha256 must be
   the one ``config.json`` records; only then are the tensors decoded, and they must
   be finite;
5. ``training.json``: at most 64 MiB, :data:`MAX_JSON_DEPTH` levels, a JSON object
   whose resume fields (``steps``, ``elapsed``, ``log``, ``validation``,
   ``sessions``) have the right types.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .config import ModelSpec
from .devices import resolve_device
from .model import UNet

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
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
MAX_HEADER_BYTES = 16 << 20  # safetensors JSON header (a depth-6 network needs ~20 KiB)
MAX_CONFIG_DEPTH = 4  # config.json is {section: {key: [values]}}: 3 levels
MAX_JSON_DEPTH = 32  # training.json, checkpoint/state.json
MAX_TENSOR_NAME = 512
MAX_TENSOR_DIMS = 8
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# bytes per element of every dtype safetensors writes
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# files that are pickles by their name alone (torch.save, pickle.dump, joblib.dump, Lightning)
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
MAX_MODEL_NAME = 255
_TENSOR_REF = "__tensor__"


class ModelFormatError(ValueError):
    """A model folder, or one of its files, cannot be loaded.

    The message always names the file and the problem.
    """


@dataclass
class Model:
    """A trained network together with its configuration and history.

    Attributes
    ----------
    network
        The :class:`~napari_unet.model.UNet`; in eval mode after :func:`load_model`.
    config
        The frozen :class:`~napari_unet.config.ModelSpec`.
    history
        The content of ``training.json`` (``{}`` when there is none).
    path
        The folder the model was loaded from or last saved to.
    """

    network: torch.nn.Module
    config: ModelSpec
    history: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters (CPU for a network without any)."""
        for tensor in self.network.parameters():
            return tensor.device
        for tensor in self.network.buffers():
            return tensor.device
        return torch.device("cpu")


# --------------------------------------------------------------------------- atomic writes


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
    mode = _new_file_mode(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
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


# --------------------------------------------------------------------------- hashing


def content_hash(array: np.ndarray) -> str:
    """Hex sha256 of an array's dtype, shape and bytes (C order), for provenance.

    Equal values with a different dtype or shape hash differently; a strided view
    hashes like its contiguous copy.

    Parameters
    ----------
    array
        A numeric or boolean array (anything :func:`numpy.asarray` turns into one).

    Returns
    -------
    str
        64 hexadecimal characters.
    """
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise ValueError(f"content_hash needs a numeric array, got dtype {arr.dtype}")
    digest = hashlib.sha256()
    header = json.dumps({"dtype": arr.dtype.str, "shape": list(arr.shape)}, sort_keys=True)
    digest.update(b"napari-unet-content-v1\0" + header.encode("ascii") + b"\0")
    if arr.ndim == 0 or arr.flags.c_contiguous:
        digest.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
    else:  # hash row by row so a huge strided view is never copied whole
        for row in arr:
            digest.update(np.ascontiguousarray(row).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _check_entry(root: Path, path: Path, regular: bool = False) -> None:
    """Refuse a symbolic link that leads outside ``root`` and anything but files and folders.

    ``root`` is the model folder with every link resolved.  A missing ``path`` passes
    (the caller reports missing files).  With ``regular``, ``path`` must be a file.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be inspected ({exc.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        target = _real(path)
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


def _refuse_pickles(folder: Path) -> None:
    """Check every entry under ``folder`` before anything in it is read.

    Refused (:class:`ModelFormatError`): symbolic links leading outside ``folder``,
    FIFOs, devices and sockets, and files that are pickle data by name or content.
    Only the first 9 bytes of each file are read; nothing is ever unpickled.
    """
    root = _real(folder)
    for entry in _walk_entries(folder):
        _check_entry(root, entry)
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
        target = _real(folder)
        if not target.is_relative_to(_real(Path(parent))):
            raise ValueError(f"{folder}: symbolic link to {target}, outside {parent}")
    return folder


# --------------------------------------------------------------------------- JSON reading


class _RepeatedKeyError(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKeyError(key)
        out[key] = value
    return out


def _json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0); stops counting above ``limit``."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children)
    return deepest


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, shortened for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printable(name: str) -> str:
    """A name as is when it is short and printable, else its shortened ``repr``."""
    return name if name.isprintable() and len(name) <= 80 else _show(name, 80)


def _read_json(path: Path, max_bytes: int, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a small JSON file strictly: size, UTF-8, no repeated keys, bounded nesting."""
    if not path.is_file():
        raise ModelFormatError(f"{path}: {what} is missing")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ModelFormatError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if len(raw) > max_bytes:
        size = max(path.stat().st_size, len(raw))
        raise ModelFormatError(
            f"{path}: {what} is too large ({size} bytes, at most {max_bytes} allowed)"
        )
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeated_keys)
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{path}: {what} is not UTF-8 text ({exc})") from None
    except _RepeatedKeyError as exc:
        raise ModelFormatError(f"{path}: {what} repeats the key {exc.key!r}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge integers
        raise ModelFormatError(f"{path}: {what} is not valid JSON ({exc})") from None
    depth = _json_depth(value, max_depth)
    if depth > max_depth:
        raise ModelFormatError(
            f"{path}: {what} is nested more than {max_depth} levels deep; refusing it"
        )
    return value


# --------------------------------------------------------------------------- safetensors


def _header_length(path: Path, head: bytes, size: int) -> int:
    """The JSON header length from a safetensors file's first 8 bytes, checked."""
    if len(head) < 8:
        raise ModelFormatError(
            f"{path}: not a safetensors file (only {len(head)} bytes; truncated?)"
        )
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise ModelFormatError(
            f"{path}: safetensors header claims {n} bytes, more than the "
            f"{MAX_HEADER_BYTES} allowed; refusing to parse it"
        )
    if 8 + n > size:
        raise ModelFormatError(
            f"{path}: safetensors header claims {n} bytes but the file has only {size} (truncated?)"
        )
    return n


def _check_header_entry(path: Path, key: str, info: Any, available: int) -> None:
    """One tensor entry of a safetensors header: dtype, shape and offsets consistent."""
    if len(key) > MAX_TENSOR_NAME:
        raise ModelFormatError(
            f"{path}: tensor name {_show(key)} is too long ({len(key)} characters)"
        )
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ModelFormatError(
            f"{path}: invalid safetensors header entry for {key!r} "
            f"(expected dtype, shape and data_offsets, got {_show(info)})"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ModelFormatError(f"{path}: tensor {key!r} has unknown dtype {_show(dtype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_TENSOR_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ModelFormatError(f"{path}: tensor {key!r} has an invalid shape {_show(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ModelFormatError(
            f"{path}: invalid safetensors header entry for {key!r} (data_offsets {_show(offsets)})"
        )
    if offsets[1] > available:
        raise ModelFormatError(
            f"{path}: tensor {key!r} ends at byte {offsets[1]} of the data section but "
            f"only {available} bytes are present (truncated file?)"
        )
    numel = 1
    for d in shape:
        numel *= d
    if offsets[1] - offsets[0] != numel * DTYPE_BYTES[dtype]:
        raise ModelFormatError(
            f"{path}: tensor {key!r} of shape {tuple(shape)} and dtype {dtype} needs "
            f"{numel * DTYPE_BYTES[dtype]} bytes but its data_offsets span "
            f"{offsets[1] - offsets[0]}"
        )


def _parse_header_json(path: Path, raw: bytes, available: int) -> dict[str, Any]:
    """Parse and check a safetensors JSON header (``available``: bytes after it)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeated_keys)
    except _RepeatedKeyError as exc:
        raise ModelFormatError(
            f"{path}: invalid safetensors header (repeats the key {exc.key!r})"
        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: invalid safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: invalid safetensors header (not a JSON object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFormatError(
            f"{path}: invalid safetensors __metadata__ (must map strings to strings, "
            f"got {_show(meta)})"
        )
    for key, info in header.items():
        if key != "__metadata__":
            _check_header_entry(path, key, info, available)
    return header


def _parse_header(path: Path, data: bytes) -> dict[str, Any]:
    """Check a safetensors buffer's header before handing it to safetensors."""
    n = _header_length(path, data[:8], len(data))
    return _parse_header_json(path, data[8 : 8 + n], len(data) - 8 - n)


def _read_header(path: Path, what: str = "file") -> tuple[dict[str, Any], bytes]:
    """Read only the 8-byte length and the JSON header of a safetensors file, checked.

    Returns the header and the raw bytes read so far (length and header).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: {what} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelFormatError(f"{path}: {what} is not a regular file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            n = _header_length(path, head, info.st_size)
            raw = handle.read(n)
    except OSError as exc:
        raise ModelFormatError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if len(raw) < n:
        raise ModelFormatError(f"{path}: safetensors header is truncated")
    return _parse_header_json(path, raw, info.st_size - 8 - n), head + raw


def _read_rest(path: Path, start: bytes) -> bytes:
    """The whole file, given its first bytes already read (they must not have changed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if not data.startswith(start):
        raise ModelFormatError(f"{path}: changed while it was being read")
    return data


def _decode(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return _st_load(data)
    except SafetensorError as exc:
        raise ModelFormatError(f"{path}: invalid safetensors file ({exc})") from None


def _read_safetensors(path: Path) -> tuple[bytes, dict[str, Any], dict[str, torch.Tensor]]:
    """Read, check and decode a safetensors file: (raw bytes, header, tensors)."""
    header, start = _read_header(path)
    data = _read_rest(path, start)
    header = _parse_header(path, data)
    return data, header, _decode(path, data)


def _few(names: set[str], limit: int = 5) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _expected_tensors(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name -> (shape, is floating) of the network ``spec`` describes, allocating nothing."""
    with torch.device("meta"):
        network = UNet.from_config(spec.model)
    return {key: (tuple(t.shape), t.is_floating_point()) for key, t in network.state_dict().items()}


def _check_header_fits(
    path: Path, header: dict[str, Any], expected: dict[str, tuple[tuple[int, ...], bool]]
) -> None:
    """Tensor names, shapes and dtypes of a weights header against the expected network."""
    present = {k for k in header if k != "__metadata__"}
    missing = set(expected) - present
    unexpected = present - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few({_printable(k) for k in unexpected})}")
        raise ModelFormatError(
            f"{path}: weights do not fit the network described by {CONFIG_FILE} "
            f"({'; '.join(parts)})"
        )
    for key, (shape, floating) in expected.items():
        got = tuple(header[key]["shape"])
        if got != shape:
            raise ModelFormatError(
                f"{path}: tensor {key!r} has shape {got} but the network "
                f"described by {CONFIG_FILE} expects {shape}"
            )
        dtype_name = header[key]["dtype"]
        if floating and dtype_name not in FLOAT_DTYPES:
            raise ModelFormatError(
                f"{path}: tensor {key!r} has dtype {dtype_name}; weights must be "
                f"floating point ({', '.join(FLOAT_DTYPES)})"
            )
        if not floating and (dtype_name in FLOAT_DTYPES or dtype_name == "BOOL"):
            raise ModelFormatError(
                f"{path}: tensor {key!r} has dtype {dtype_name}; expected an integer counter"
            )


def _check_weights(
    path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor], network: torch.nn.Module
) -> None:
    """Check decoded weights against ``network``: names, shapes, dtypes, finite values."""
    expected = {
        key: (tuple(t.shape), t.is_floating_point()) for key, t in network.state_dict().items()
    }
    _check_header_fits(path, header, expected)
    for key, (_shape, floating) in expected.items():
        got = tensors[key]
        if floating and not bool(torch.isfinite(got).all()):
            raise ModelFormatError(f"{path}: tensor {key!r} contains NaN or Inf values")
        if not floating and (got.is_floating_point() or got.is_complex()):
            raise ModelFormatError(
                f"{path}: tensor {key!r} has dtype {got.dtype}; expected an integer counter"
            )


# --------------------------------------------------------------------------- save / load


def _prepare_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"model path {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _weights_tensors(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in network.state_dict().items():
        t = tensor.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        out[key] = t.contiguous().clone()
    return out


def save_model(model: Model, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` as a model folder and return the folder.

    Writes ``weights.safetensors``, then ``training.json``, then ``config.json`` (which
    records the weights' sha256), each atomically.  The folder and its parents are
    created when missing; other files in the folder are left alone.  ``model.path`` is
    set to the folder.

    Parameters
    ----------
    model
        The model to save; its network may live on any device.
    path
        The model folder.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ValueError
        If ``path`` exists and is not a folder.
    TypeError
        If ``model.history`` cannot be written as JSON.
    """
    if not isinstance(model.config, ModelSpec):
        raise TypeError(f"model.config must be a ModelSpec, got {type(model.config).__name__}")
    history_text = json.dumps(model.history if model.history is not None else {})
    folder = _prepare_folder(path)
    weights = _st_save(_weights_tensors(model.network), metadata={"format": SAFETENSORS_FORMAT})
    atomic_write_bytes(folder / WEIGHTS_FILE, weights)
    atomic_write_json(folder / HISTORY_FILE, json.loads(history_text))
    config = model.config.to_dict()
    config[WEIGHTS_HASH_KEY] = _sha256(weights)
    atomic_write_json(folder / CONFIG_FILE, config)
    model.path = folder
    return folder


def _load_config(folder: Path) -> tuple[ModelSpec, str]:
    path = folder / CONFIG_FILE
    _check_entry(_real(folder), path, regular=True)
    data = _read_json(path, MAX_CONFIG_BYTES, "config", MAX_CONFIG_DEPTH)
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
            f"{WEIGHTS_FILE}, got {_show(digest)}"
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


def _model_dir(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if folder.is_file():
        _refuse_pickle_file(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelFormatError(f"{folder}: model folder {what}")
    _refuse_pickles(folder)
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
                f"got {_show(value)}"
            )
        if isinstance(value, int | float) and not (0 <= value < 1e15):
            raise ModelFormatError(f"{path}: {key!r} must be >= 0 and finite, got {value}")
    for i, session in enumerate(history.get("sessions", [])):
        if not isinstance(session, dict):
            raise ModelFormatError(
                f"{path}: sessions[{i}] must be a JSON object, got {_show(session)}"
            )
    return history


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Model:
    """Load a model folder without unpickling anything.

    The checks, in order, are listed in this module's docstring; the network is only
    built once ``weights.safetensors`` is known to fit the architecture in
    ``config.json``.

    Parameters
    ----------
    path
        The model folder written by :func:`save_model`.
    device
        Where to put the network: ``"cpu"``, ``"cuda"``, ``"mps"``, a
        :class:`torch.device`, or ``"auto"`` (cuda, then mps, then cpu).

    Returns
    -------
    Model
        With the network in eval mode on ``device``.

    Raises
    ------
    ModelFormatError
        For any problem with the folder or its files; the message names the file.
    ValueError
        When ``device`` is not available here.
    """
    folder = _model_dir(path)
    spec, digest = _load_config(folder)

    weights_path = folder / WEIGHTS_FILE
    _check_entry(_real(folder), weights_path, regular=True)
    header, start = _read_header(weights_path, "weights file")
    _check_header_fits(weights_path, header, _expected_tensors(spec))
    data = _read_rest(weights_path, start)
    if _sha256(data) != digest:
        raise ModelFormatError(
            f"{weights_path}: weights do not match config (interrupted save?); the sha256 "
            f"recorded in {CONFIG_FILE} differs"
        )
    header = _parse_header(weights_path, data)
    tensors = _decode(weights_path, data)

    network = UNet.from_config(spec.model)
    _check_weights(weights_path, header, tensors, network)
    network.load_state_dict(tensors, strict=True)
    network.to(resolve_device(device))
    network.eval()

    history_path = folder / HISTORY_FILE
    history: Any = {}
    _check_entry(_real(folder), history_path, regular=True)
    if history_path.exists():
        history = _check_history(
            history_path, _read_json(history_path, MAX_JSON_BYTES, "training history")
        )
    return Model(network=network, config=spec, history=history, path=folder)

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
4. the header of ``weights.safetensors``: the 8-byte header length is read first and
   refused above :data:`MAX_HEADER_BYTES` or beyond the end of the file; the JSON
   header is checked entry by entry (dtype, shape, offsets inside the data section and
   of the right size);
5. ``training.json``: at most 64 MiB, :data:`MAX_JSON_DEPTH` levels, a JSON object
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

import json
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
MAX_FOLDER_ENTRIES = 10_000  # a model folder holds a handful of files


class ModelFormatError(ValueError):
    """A model folder, or one of its files, cannot be loaded.

    The message always names the file and the problem.
    """


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


def _printable(name: str) -> str:
    """A name as is when it is short and printable, else its shortened ``repr``."""
    return name if name.isprintable() and len(name) <= 80 else show_value(name, 80)


def read_json(path: Path, max_bytes: int, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a small JSON file strictly: size, UTF-8, no repeated keys, bounded nesting.

    Parameters
    ----------
    path
        The file; at most ``max_bytes + 1`` bytes of it are read.
    max_bytes
        Larger files are refused (:data:`MAX_CONFIG_BYTES`, :data:`MAX_JSON_BYTES`).
    what
        What the file is, for messages: ``"config"``, ``"training history"``, ...
    max_depth
        Values nested deeper than this are refused.

    Returns
    -------
    Any
        The parsed JSON value; its type is for the caller to check.

    Raises
    ------
    ModelFormatError
        When the file is missing, unreadable, too large, not UTF-8, not valid JSON,
        repeats a key or is nested too deep; the message names ``path`` and ``what``.
    """
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
            f"{path}: tensor name {show_value(key)} is too long ({len(key)} characters)"
        )
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ModelFormatError(
            f"{path}: invalid safetensors header entry for {key!r} "
            f"(expected dtype, shape and data_offsets, got {show_value(info)})"
        )
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise ModelFormatError(f"{path}: tensor {key!r} has unknown dtype {show_value(dtype)}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_TENSOR_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ModelFormatError(f"{path}: tensor {key!r} has an invalid shape {show_value(shape)}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise ModelFormatError(
            f"{path}: invalid safetensors header entry for {key!r} "
            f"(data_offsets {show_value(offsets)})"
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
            f"got {show_value(meta)})"
        )
    for key, info in header.items():
        if key != "__metadata__":
            _check_header_entry(path, key, info, available)
    return header


def parse_header(path: Path, data: bytes) -> dict[str, Any]:
    """Check the header of a whole safetensors file before handing it to safetensors.

    Parameters
    ----------
    path
        The file ``data`` was read from (for messages).
    data
        The complete file.

    Returns
    -------
    dict
        The JSON header: tensor name -> ``{"dtype", "shape", "data_offsets"}``, plus
        ``"__metadata__"`` when present.

    Raises
    ------
    ModelFormatError
        For a bad length, invalid JSON, or an entry whose dtype, shape or offsets do
        not fit the data that follows; the message names ``path``.
    """
    n = _header_length(path, data[:8], len(data))
    return _parse_header_json(path, data[8 : 8 + n], len(data) - 8 - n)


def read_header(path: Path, what: str = "file") -> tuple[dict[str, Any], bytes]:
    """Read only the 8-byte length and the JSON header of a safetensors file, checked.

    The length is refused above :data:`MAX_HEADER_BYTES` or beyond the end of the
    file before the header is read; the tensor data is not read.

    Parameters
    ----------
    path
        The safetensors file.
    what
        What the file is, for messages (``"weights file"``).

    Returns
    -------
    header : dict
        As :func:`parse_header` returns it.
    start : bytes
        The bytes read so far (length and header), for :func:`read_rest`.

    Raises
    ------
    ModelFormatError
        As :func:`parse_header`, and when the file is missing, not a regular file or
        unreadable.
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


def read_rest(path: Path, start: bytes) -> bytes:
    """The whole file, given its first bytes already read (they must not have changed).

    Parameters
    ----------
    path
        The file :func:`read_header` read ``start`` from.
    start
        Its first bytes as :func:`read_header` returned them.

    Returns
    -------
    bytes
        The whole file, starting with ``start``.

    Raises
    ------
    ModelFormatError
        When the file cannot be read or no longer starts with ``start``.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    if not data.startswith(start):
        raise ModelFormatError(f"{path}: changed while it was being read")
    return data


def _few(names: set[str], limit: int = 5) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def check_header_fits(
    path: Path, header: dict[str, Any], expected: dict[str, tuple[tuple[int, ...], bool]]
) -> None:
    """Tensor names, shapes and dtypes of a weights header against the expected network.

    Parameters
    ----------
    path
        The weights file (for messages).
    header
        Its header, from :func:`read_header` or :func:`parse_header`.
    expected
        Tensor name -> (shape, is floating point) of the network ``config.json``
        describes.

    Raises
    ------
    ModelFormatError
        For missing or unexpected tensors, a wrong shape, integer weights or
        floating-point counters; the message names ``path`` and the tensor.
    """
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

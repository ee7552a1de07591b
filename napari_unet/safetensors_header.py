"""The header of a safetensors file, checked before safetensors decodes anything.

The 8-byte header length is refused above :data:`MAX_HEADER_BYTES` or beyond the end of
the file before the header is read; every tensor entry is checked (dtype, shape, offsets
inside the data section and of the right size), then the names, shapes and dtypes
against the network a ``config.json`` describes (:func:`check_header_fits`).  Nothing
here imports torch (see :mod:`napari_unet.safety`).
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

from .config import CONFIG_FILE, show_value
from .strict_json import ModelFormatError, RepeatedKeyError, no_repeated_keys, printable

MAX_HEADER_BYTES = 16 << 20  # safetensors JSON header (a depth-6 network needs ~20 KiB)
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
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_repeated_keys)
    except RepeatedKeyError as exc:
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
            parts.append(f"unexpected keys: {_few({printable(k) for k in unexpected})}")
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

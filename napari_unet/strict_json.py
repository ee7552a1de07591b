"""Strict reading of the small files of a model folder: the error every check raises
and a bounded JSON reader (size, UTF-8, no repeated keys, bounded nesting).

Nothing here imports torch (see :mod:`napari_unet.safety`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .config import show_value

MAX_JSON_DEPTH = 32  # training.json, checkpoint/state.json


class ModelFormatError(ValueError):
    """A model folder, or one of its files, cannot be loaded.

    The message always names the file and the problem.
    """


class RepeatedKeyError(Exception):
    """A JSON object names ``key`` twice (raised by :func:`no_repeated_keys`)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook`` that refuses a repeated key."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RepeatedKeyError(key)
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


def printable(name: str) -> str:
    """A name as is when it is short and printable, else its shortened ``repr``."""
    return name if name.isprintable() and len(name) <= 80 else show_value(name, 80)


def read_json(path: Path, max_bytes: int, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Read a small JSON file strictly: size, UTF-8, no repeated keys, bounded nesting.

    Parameters
    ----------
    path
        The file; at most ``max_bytes + 1`` bytes of it are read.
    max_bytes
        Larger files are refused (``safety.MAX_CONFIG_BYTES``, ``safety.MAX_JSON_BYTES``).
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
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=no_repeated_keys)
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{path}: {what} is not UTF-8 text ({exc})") from None
    except RepeatedKeyError as exc:
        raise ModelFormatError(f"{path}: {what} repeats the key {exc.key!r}") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge integers
        raise ModelFormatError(f"{path}: {what} is not valid JSON ({exc})") from None
    depth = _json_depth(value, max_depth)
    if depth > max_depth:
        raise ModelFormatError(
            f"{path}: {what} is nested more than {max_depth} levels deep; refusing it"
        )
    return value

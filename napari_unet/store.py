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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
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
MAX_HEADER_BYTES = 100 << 20  # safetensors JSON header
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
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


def _walk_files(folder: Path) -> Iterator[Path]:
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            yield Path(root) / name


def _refuse_pickle_file(file: Path) -> None:
    """Raise ModelFormatError if ``file`` looks like pickle data (reads 9 bytes only)."""
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
    """Raise ModelFormatError for any file under ``folder`` that looks like pickle data.

    Only the first 9 bytes of each file are read; nothing is ever unpickled.
    """
    for file in _walk_files(folder):
        _refuse_pickle_file(file)


# --------------------------------------------------------------------------- JSON reading


def _read_json(path: Path, max_bytes: int, what: str) -> Any:
    if not path.is_file():
        raise ModelFormatError(f"{path}: {what} is missing")
    size = path.stat().st_size
    if size > max_bytes:
        raise ModelFormatError(
            f"{path}: {what} is too large ({size} bytes, at most {max_bytes} allowed)"
        )
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise ModelFormatError(f"{path}: {what} is not UTF-8 text ({exc})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: {what} is not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- safetensors


def _parse_header(path: Path, data: bytes) -> dict[str, Any]:
    """Check a safetensors buffer's header before handing it to safetensors."""
    if len(data) < 8:
        raise ModelFormatError(
            f"{path}: not a safetensors file (only {len(data)} bytes; truncated?)"
        )
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES:
        raise ModelFormatError(
            f"{path}: safetensors header claims {n} bytes, more than the "
            f"{MAX_HEADER_BYTES} allowed; refusing to parse it"
        )
    if 8 + n > len(data):
        raise ModelFormatError(
            f"{path}: safetensors header claims {n} bytes but the file has only "
            f"{len(data)} (truncated?)"
        )
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFormatError(f"{path}: invalid safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: invalid safetensors header (not a JSON object)")
    available = len(data) - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise ModelFormatError(f"{path}: invalid safetensors header entry for {key!r}")
        if offsets[1] > available:
            raise ModelFormatError(
                f"{path}: tensor {key!r} ends at byte {offsets[1]} of the data section but "
                f"only {available} bytes are present (truncated file?)"
            )
    return header


def _read_safetensors(path: Path) -> tuple[bytes, dict[str, Any], dict[str, torch.Tensor]]:
    """Read, check and decode a safetensors file: (raw bytes, header, tensors)."""
    if not path.is_file():
        raise ModelFormatError(f"{path}: file is missing")
    data = path.read_bytes()
    header = _parse_header(path, data)
    try:
        tensors = _st_load(data)
    except SafetensorError as exc:
        raise ModelFormatError(f"{path}: invalid safetensors file ({exc})") from None
    return data, header, tensors


def _few(names: set[str], limit: int = 5) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _check_weights(
    path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor], network: torch.nn.Module
) -> None:
    expected = network.state_dict()
    missing = set(expected) - set(tensors)
    unexpected = set(tensors) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise ModelFormatError(
            f"{path}: weights do not fit the network described by {CONFIG_FILE} "
            f"({'; '.join(parts)})"
        )
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape):
            raise ModelFormatError(
                f"{path}: tensor {key!r} has shape {tuple(got.shape)} but the network "
                f"described by {CONFIG_FILE} expects {tuple(want.shape)}"
            )
        dtype_name = header[key].get("dtype") if isinstance(header.get(key), dict) else None
        if want.is_floating_point():
            if dtype_name not in FLOAT_DTYPES:
                raise ModelFormatError(
                    f"{path}: tensor {key!r} has dtype {dtype_name}; weights must be "
                    f"floating point ({', '.join(FLOAT_DTYPES)})"
                )
            if not bool(torch.isfinite(got).all()):
                raise ModelFormatError(f"{path}: tensor {key!r} contains NaN or Inf values")
        elif got.is_floating_point() or got.is_complex() or got.dtype == torch.bool:
            raise ModelFormatError(
                f"{path}: tensor {key!r} has dtype {dtype_name}; expected an integer counter"
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
    data = _read_json(path, MAX_CONFIG_BYTES, "config")
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    digest = data.pop(WEIGHTS_HASH_KEY, None)
    if not isinstance(digest, str) or len(digest) != 64:
        raise ModelFormatError(
            f"{path}: {WEIGHTS_HASH_KEY!r} must be the 64-character sha256 of "
            f"{WEIGHTS_FILE}, got {digest!r}"
        )
    try:
        spec = ModelSpec.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise ModelFormatError(f"{path}: {exc}") from None
    return spec, digest.lower()


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Model:
    """Load a model folder without unpickling anything.

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
    """
    folder = Path(path)
    if folder.is_file():
        _refuse_pickle_file(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ModelFormatError(f"{folder}: model folder {what}")
    _refuse_pickles(folder)
    spec, digest = _load_config(folder)

    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFormatError(f"{weights_path}: weights file is missing")
    data = weights_path.read_bytes()
    header = _parse_header(weights_path, data)
    if _sha256(data) != digest:
        raise ModelFormatError(
            f"{weights_path}: weights do not match config (interrupted save?); the sha256 "
            f"recorded in {CONFIG_FILE} differs"
        )
    try:
        tensors = _st_load(data)
    except SafetensorError as exc:
        raise ModelFormatError(f"{weights_path}: invalid safetensors file ({exc})") from None

    network = UNet.from_config(spec.model)
    _check_weights(weights_path, header, tensors, network)
    network.load_state_dict(tensors, strict=True)
    network.to(resolve_device(device))
    network.eval()

    history_path = folder / HISTORY_FILE
    history: Any = {}
    if history_path.exists():
        history = _read_json(history_path, MAX_JSON_BYTES, "training history")
        if not isinstance(history, dict):
            raise ModelFormatError(
                f"{history_path}: training history must be a JSON object, "
                f"got {type(history).__name__}"
            )
    return Model(network=network, config=spec, history=history, path=folder)

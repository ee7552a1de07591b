"""The model folder: the one on-disk model format of napari-unet.

A model folder ``<name>/`` holds

``weights.safetensors``
    The network's ``state_dict`` (floating tensors as contiguous float32, or the
    parameters as float16 / bfloat16 with ``save_model(..., weights_dtype=...)``;
    BatchNorm's ``num_batches_tracked`` counters as int64), written with
    ``safetensors`` and the metadata ``{"format": "napari-unet"}``.  Loading casts
    float16 / bfloat16 weights to float32.
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

Every write is atomic (temporary file in the same folder, ``fsync``, ``os.replace``),
and none goes into a built-in model's folder (read-only package data, see
:mod:`napari_unet.builtin`).
Loading never unpickles anything: no ``torch.load``, no ``pickle``; any file in the
folder that looks like pickle data or a torch zip archive is refused outright.

The checks made before anything is loaded are listed in :mod:`napari_unet.safety`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save

from .atomic import atomic_write_bytes, atomic_write_json
from .builtin import is_builtin, refuse_write
from .config import ModelSpec, PostprocessConfig
from .devices import resolve_device
from .model import UNet
from .safetensors_header import check_header_fits, parse_header, read_rest
from .safety import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    OPTIMIZER_FILE,
    SAFETENSORS_FORMAT,
    STATE_FILE,
    WEIGHTS_FILE,
    WEIGHTS_HASH_KEY,
    CheckedModelFolder,
    ModelFormatError,
    check_model_name,
    model_folder,
    read_config,
    read_header,
    read_model_folder,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "OPTIMIZER_FILE",
    "STATE_FILE",
    "WEIGHTS_FILE",
    "Model",
    "ModelFormatError",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_model_name",
    "content_hash",
    "load_model",
    "model_folder",
    "prepare_folder",
    "read_config",
    "read_safetensors",
    "save_model",
    "save_postprocess",
    "sha256_hex",
    "WEIGHTS_DTYPES",
]

logger = logging.getLogger(__name__)


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

    def with_postprocess(
        self, settings: PostprocessConfig | None = None, **changes: float | int | None
    ) -> Model:
        """This model (same network) with other instance post-processing, for one run
        (the model folder is unchanged): ``settings`` in place of its own, or its own
        with the fields named in ``changes`` that are not None (``seed_threshold=0.7``)."""
        settings = settings or self.config.postprocess
        given = {k: v for k, v in changes.items() if v is not None}
        if given:
            settings = dataclasses.replace(settings, **given)
        if settings == self.config.postprocess:
            return self
        return dataclasses.replace(
            self, config=dataclasses.replace(self.config, postprocess=settings)
        )


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


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``: the digest ``config.json`` and ``state.json`` record.

    Parameters
    ----------
    data
        A whole file's content.

    Returns
    -------
    str
        64 lower-case hexadecimal characters.
    """
    return hashlib.sha256(data).hexdigest()


def _decode(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        return _st_load(data)
    except SafetensorError as exc:
        raise ModelFormatError(f"{path}: invalid safetensors file ({exc})") from None


def read_safetensors(path: Path) -> tuple[bytes, dict[str, Any], dict[str, torch.Tensor]]:
    """Read, check and decode a safetensors file; never unpickles.

    The header is read and checked first (:func:`~napari_unet.safety.read_header`),
    then the whole file, whose header is checked again before safetensors decodes it.

    Parameters
    ----------
    path
        The safetensors file.

    Returns
    -------
    data : bytes
        The whole file (for :func:`sha256_hex`).
    header : dict
        Its checked JSON header.
    tensors : dict of str to torch.Tensor
        The decoded tensors, on the CPU.

    Raises
    ------
    ModelFormatError
        For a missing, unreadable or invalid file; the message names ``path``.
    """
    header, start = read_header(path)
    data = read_rest(path, start)
    header = parse_header(path, data)
    return data, header, _decode(path, data)


def _expected_tensors(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Name -> (shape, is floating) of the network ``spec`` describes, allocating nothing."""
    with torch.device("meta"):
        network = UNet.from_config(spec.model)
    return {key: (tuple(t.shape), t.is_floating_point()) for key, t in network.state_dict().items()}


def _check_weights(
    path: Path, header: dict[str, Any], tensors: dict[str, torch.Tensor], network: torch.nn.Module
) -> None:
    """Check decoded weights against ``network``: names, shapes, dtypes, finite values."""
    expected = {
        key: (tuple(t.shape), t.is_floating_point()) for key, t in network.state_dict().items()
    }
    check_header_fits(path, header, expected)
    for key, (_shape, floating) in expected.items():
        got = tensors[key]
        if floating and not bool(torch.isfinite(got).all()):
            raise ModelFormatError(f"{path}: tensor {key!r} contains NaN or Inf values")
        if not floating and (got.is_floating_point() or got.is_complex()):
            raise ModelFormatError(
                f"{path}: tensor {key!r} has dtype {got.dtype}; expected an integer counter"
            )


def _read_weights(
    checked: CheckedModelFolder,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Header and tensors of a checked folder's weights (torch-side checks first).

    The header must fit the network ``config.json`` describes (worked out on the
    ``meta`` device) and the file's sha256 must be the recorded one before anything
    is decoded.  The rest of the file is read once, after the header read earlier.
    """
    path = checked.weights_path
    check_header_fits(path, checked.weights_header, _expected_tensors(checked.spec))
    data = read_rest(path, checked.weights_start)
    if sha256_hex(data) != checked.weights_sha256:
        raise ModelFormatError(
            f"{path}: weights do not match config (interrupted save?); the sha256 "
            f"recorded in {CONFIG_FILE} differs"
        )
    return parse_header(path, data), _decode(path, data)


def _as_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors (float16, bfloat16, float64 weights) as float32; counters as they are."""
    return {
        key: t.to(torch.float32) if t.is_floating_point() and t.dtype != torch.float32 else t
        for key, t in tensors.items()
    }


# --------------------------------------------------------------------------- save / load


def prepare_folder(path: str | os.PathLike[str]) -> Path:
    """The model folder at ``path``, created with its parents when missing.

    Parameters
    ----------
    path
        Where a model folder is to be written.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`; it is a folder now.

    Raises
    ------
    ValueError
        If ``path`` exists and is not a folder.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"model path {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


WEIGHTS_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
"""The dtypes :func:`save_model` writes the parameters in (by name)."""


def weights_dtype_of(value: str | torch.dtype) -> torch.dtype:
    """A :data:`WEIGHTS_DTYPES` dtype from its name (``"float16"``, ``"fp16"``...) or itself."""
    if isinstance(value, torch.dtype):
        if value in WEIGHTS_DTYPES.values():
            return value
    elif isinstance(value, str):
        name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(
            value, value
        )
        if name in WEIGHTS_DTYPES:
            return WEIGHTS_DTYPES[name]
    raise ValueError(f"weights_dtype must be one of {', '.join(WEIGHTS_DTYPES)}, got {value!r}")


def _weights_tensors(
    network: torch.nn.Module, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The state dict on the CPU: parameters in ``dtype``, floating buffers (BatchNorm's
    running statistics) in float32, counters as they are."""
    parameters = {key for key, _ in network.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in network.state_dict().items():
        t = tensor.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(dtype if key in parameters else torch.float32)
            if key in parameters and dtype != torch.float32 and not bool(torch.isfinite(t).all()):
                big = float(tensor.detach().abs().max())
                raise ValueError(
                    f"tensor {key!r} does not fit {dtype} (values up to {big:g}); "
                    f"save it with weights_dtype='float32'"
                )
        out[key] = t.contiguous().clone()
    return out


def save_model(
    model: Model,
    path: str | os.PathLike[str],
    *,
    weights_dtype: str | torch.dtype = "float32",
) -> Path:
    """Save ``model`` as a model folder and return the folder.

    Writes ``weights.safetensors``, then ``training.json``, then ``config.json`` (which
    records the weights' sha256), each atomically.  The folder and its parents are
    created when missing; other files in the folder are left alone.  ``model.path`` is
    set to the folder.  A built-in model's folder is refused (read-only package data).

    Parameters
    ----------
    model
        The model to save; its network may live on any device.
    path
        The model folder.
    weights_dtype
        ``"float32"`` (default), ``"float16"`` or ``"bfloat16"`` (or the torch dtype):
        the parameters are stored in it (half the file size; :func:`load_model` casts
        them back to float32).  BatchNorm's running statistics stay float32.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ValueError
        If ``path`` exists and is not a folder, lies in a built-in model's folder, or
        a parameter does not fit ``weights_dtype``.
    TypeError
        If ``model.history`` cannot be written as JSON.
    """
    refuse_write(path, "save a model to")
    dtype = weights_dtype_of(weights_dtype)
    if not isinstance(model.config, ModelSpec):
        raise TypeError(f"model.config must be a ModelSpec, got {type(model.config).__name__}")
    history_text = json.dumps(model.history if model.history is not None else {})
    folder = prepare_folder(path)
    tensors = _weights_tensors(model.network, dtype)
    weights = _st_save(tensors, metadata={"format": SAFETENSORS_FORMAT})
    atomic_write_bytes(folder / WEIGHTS_FILE, weights)
    atomic_write_json(folder / HISTORY_FILE, json.loads(history_text))
    config = model.config.to_dict()
    config[WEIGHTS_HASH_KEY] = sha256_hex(weights)
    atomic_write_json(folder / CONFIG_FILE, config)
    model.path = folder
    return folder


def save_history(path: str | os.PathLike[str], history: dict[str, Any]) -> None:
    """Replace a saved model folder's ``training.json`` (atomically); the weights and
    ``config.json`` are left as they are (the history is not part of the weights' hash)."""
    refuse_write(path, "save a training history to")
    atomic_write_json(Path(path) / HISTORY_FILE, history)


def save_postprocess(path: str | os.PathLike[str], settings: PostprocessConfig) -> ModelSpec:
    """Write new instance post-processing into a model folder's ``config.json``.

    The folder is checked first (:func:`~napari_unet.safety.read_model_folder`); only the
    ``postprocess`` section changes, the rest of ``config.json`` (the weights' sha256
    included) is kept, and the file is replaced atomically.  ``training.json`` records
    the change.  Returns the new configuration.  A built-in model's folder is refused
    (read-only package data).
    """
    refuse_write(path, "save instance settings to")
    checked = read_model_folder(path)
    spec = dataclasses.replace(checked.spec, postprocess=settings)
    config = spec.to_dict()
    config[WEIGHTS_HASH_KEY] = checked.weights_sha256
    history = dict(checked.history)
    history.setdefault("postprocess_changes", []).append(
        {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": dataclasses.asdict(settings),
        }
    )
    atomic_write_json(checked.folder / HISTORY_FILE, history)
    atomic_write_json(checked.folder / CONFIG_FILE, config)
    return spec


READ_TRIES = 5
"""A folder that a training is writing may be read between two of its atomic writes (a new
``weights.safetensors`` with the old ``config.json``): read again, this many times at most."""


def _read_complete(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], dict]:
    """The checked folder and its weights, read again while a training replaces them."""
    from .writer import writer

    for attempt in range(READ_TRIES):
        try:
            checked = read_model_folder(path)
            return (checked, *_read_weights(checked))
        except ModelFormatError:
            folder = Path(path) if not is_builtin(path) else None
            if attempt == READ_TRIES - 1 or folder is None or writer(folder) is None:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Model:
    """Load a model folder without unpickling anything.

    First :func:`~napari_unet.safety.read_model_folder` (every check that needs no
    torch, the sequence :func:`~napari_unet.safety.check_model_folder` runs), then the
    weights against the network ``config.json`` describes, their sha256, decoding and
    finite values; :mod:`napari_unet.safety` lists the checks in order.  The network is
    only built once ``weights.safetensors`` is known to fit the architecture.

    Parameters
    ----------
    path
        The model folder written by :func:`save_model`, or ``"builtin:NAME"`` for a
        model shipped with napari-unet (:mod:`napari_unet.builtin`).
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
    checked, header, tensors = _read_complete(path)
    network = UNet.from_config(checked.spec.model)
    _check_weights(checked.weights_path, header, tensors, network)
    network.load_state_dict(_as_float32(tensors), strict=True)
    network.to(resolve_device(device))
    network.eval()
    return Model(network=network, config=checked.spec, history=checked.history, path=checked.folder)

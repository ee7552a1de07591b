"""Resume state of a training: optimizer tensors in safetensors, the rest in JSON.

``<model>/checkpoint/optimizer.safetensors`` holds every tensor of the optimizer
state (and of the caller's state) under keys like ``state.3.exp_avg``;
``<model>/checkpoint/state.json`` holds everything else, with references to
those tensors and the optimizer file's sha256.  Written atomically, state.json
last; never unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as _st_save

from .atomic import atomic_write_bytes
from .builtin import refuse_write
from .config import show_value
from .safety import (
    CHECKPOINT_DIR,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    MAX_JSON_BYTES,
    OPTIMIZER_FILE,
    SAFETENSORS_FORMAT,
    STATE_FILE,
    ModelFormatError,
    check_entry,
    read_json,
    real_path,
    refuse_pickles,
)
from .store import prepare_folder, read_safetensors, sha256_hex

logger = logging.getLogger(__name__)
_TENSOR_REF = "__tensor__"  # {"__tensor__": key} in state.json stands for a stored tensor


# --------------------------------------------------------------------------- checkpoints


def _flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-ready copy of ``value``; tensors move to ``tensors[key]`` and leave a reference."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {_TENSOR_REF: key}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint keys must be strings, got {k!r} in {key}")
            if k == _TENSOR_REF:
                raise TypeError(f"checkpoint key {_TENSOR_REF!r} is reserved (in {key})")
            out[k] = _flatten(v, f"{key}.{k}", tensors)
        return out
    if isinstance(value, list | tuple):
        return [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint (at {key})")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor], path: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_REF}:
            ref = value[_TENSOR_REF]
            if not isinstance(ref, str) or ref not in tensors:
                raise ModelFormatError(
                    f"{path}: refers to tensor {ref!r} which {OPTIMIZER_FILE} does not hold"
                )
            return tensors[ref]
        return {k: _unflatten(v, tensors, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, tensors, path) for v in value]
    return value


def _is_hyperparameter(value: Any) -> bool:
    """None, true/false, a finite number or a list of them (``betas``), or a scalar tensor."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int | float):
        return math.isfinite(value)
    if isinstance(value, list):
        return len(value) <= 16 and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and bool(torch.isfinite(value).all())
    return False


def _check_param_group(path: Path, index: int, group: Any) -> None:
    """An optimizer param group read back must hold plain hyperparameters only."""
    params = group.get("params") if isinstance(group, dict) else None
    if not isinstance(params, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in params
    ):
        raise ModelFormatError(
            f"{path}: param_groups[{index}] must be an object with a list of integer params"
        )
    for key, value in group.items():
        if key != "params" and not _is_hyperparameter(value):
            raise ModelFormatError(
                f"{path}: param_groups[{index}].{key} must be a finite number, true/false or "
                f"null, got {show_value(value)}"
            )


def save_checkpoint(
    path: str | os.PathLike[str], optimizer_state: dict[str, Any], state: dict[str, Any]
) -> None:
    """Save optimizer state and resume information to ``path/checkpoint/``.

    Tensors (from ``optimizer_state`` and from ``state``) go to
    ``optimizer.safetensors``, everything else to ``state.json``, which is written last
    and records the tensors file's sha256.

    Parameters
    ----------
    path
        The model folder (created when missing).
    optimizer_state
        ``optimizer.state_dict()`` of a torch optimizer: ``{"state": {int: {name: value}},
        "param_groups": [dict, ...]}``.
    state
        The caller's JSON-compatible resume information (step, elapsed seconds,
        scheduler and GradScaler state, ...); tensors are allowed anywhere in it.

    Raises
    ------
    ValueError
        If ``path`` exists and is not a folder, lies in a built-in model's folder, or
        ``path/checkpoint`` is a symbolic link leading outside it.
    TypeError
        If a value cannot be stored (not JSON-compatible and not a tensor).
    """
    refuse_write(path, "save a checkpoint to")
    tensors: dict[str, torch.Tensor] = {}
    opt_state = optimizer_state.get("state", {})
    entries = []
    for param_id, param_state in opt_state.items():
        if isinstance(param_id, bool) or not isinstance(param_id, int):
            raise TypeError(f"optimizer state keys must be integers, got {param_id!r}")
        entries.append([param_id, _flatten(param_state, f"state.{param_id}", tensors)])
    extra = set(optimizer_state) - {"state", "param_groups"}
    if extra:
        raise TypeError(f"unexpected optimizer state_dict keys: {', '.join(sorted(extra))}")
    record = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "optimizer": {
            "state": entries,
            "param_groups": _flatten(
                list(optimizer_state.get("param_groups", [])), "param_groups", tensors
            ),
        },
        "state": _flatten(dict(state), "user", tensors),
    }
    data = _st_save(tensors, metadata={"format": SAFETENSORS_FORMAT})
    record["optimizer_sha256"] = sha256_hex(data)
    text = json.dumps(record, indent=2)
    model_dir = prepare_folder(path)
    folder = model_dir / CHECKPOINT_DIR
    check_entry(real_path(model_dir), folder)  # never write through a link leading elsewhere
    folder.mkdir(exist_ok=True)
    atomic_write_bytes(folder / OPTIMIZER_FILE, data)
    atomic_write_bytes(folder / STATE_FILE, (text + "\n").encode("utf-8"))


def load_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Load the checkpoint written by :func:`save_checkpoint`, never unpickling.

    Parameters
    ----------
    path
        The model folder.

    Returns
    -------
    tuple of dict or None
        ``(optimizer_state_dict, state)``: the first is accepted by
        ``optimizer.load_state_dict`` (integer parameter ids; tensors, ``step``
        included, stay tensors); ``None`` when there is no complete checkpoint
        (no ``checkpoint/`` folder, or a first save interrupted before ``state.json``).

    Raises
    ------
    ModelFormatError
        For a damaged or foreign checkpoint, or a ``checkpoint`` link leading outside
        the model folder; the message names the file.
    """
    folder = Path(path) / CHECKPOINT_DIR
    check_entry(real_path(Path(path)), folder)
    if not folder.is_dir():
        return None
    refuse_pickles(folder)
    state_path = folder / STATE_FILE
    if not state_path.exists():
        logger.warning("%s has no %s; ignoring the incomplete checkpoint", folder, STATE_FILE)
        return None
    record = read_json(state_path, MAX_JSON_BYTES, "checkpoint state")
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise ModelFormatError(f"{state_path}: not a napari-unet checkpoint state file")
    if record.get("version") != CHECKPOINT_VERSION:
        raise ModelFormatError(
            f"{state_path}: unknown checkpoint version {record.get('version')!r} "
            f"(this napari-unet reads version {CHECKPOINT_VERSION})"
        )
    opt_path = folder / OPTIMIZER_FILE
    data, _header, tensors = read_safetensors(opt_path)
    if sha256_hex(data) != record.get("optimizer_sha256"):
        raise ModelFormatError(
            f"{opt_path}: optimizer state does not match {STATE_FILE} (interrupted save?)"
        )
    optimizer = record.get("optimizer")
    user_state = record.get("state")
    if (
        not isinstance(optimizer, dict)
        or not isinstance(optimizer.get("state"), list)
        or not isinstance(optimizer.get("param_groups"), list)
        or not isinstance(user_state, dict)
    ):
        raise ModelFormatError(f"{state_path}: malformed checkpoint state")
    opt_state: dict[int, Any] = {}
    for entry in optimizer["state"]:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or isinstance(entry[0], bool)
            or not isinstance(entry[0], int)
            or not isinstance(entry[1], dict)
        ):
            raise ModelFormatError(f"{state_path}: malformed optimizer state entry {entry!r}")
        opt_state[entry[0]] = _unflatten(entry[1], tensors, state_path)
    optimizer_state = {
        "state": opt_state,
        "param_groups": _unflatten(optimizer["param_groups"], tensors, state_path),
    }
    for i, group in enumerate(optimizer_state["param_groups"]):
        _check_param_group(state_path, i, group)
    return optimizer_state, _unflatten(user_state, tensors, state_path)

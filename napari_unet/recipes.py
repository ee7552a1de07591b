"""Training recipes as JSON files: ``napari-unet train --config FILE``.

A recipe file holds the keyword arguments of a training: the fields of
:class:`~napari_unet.config.TrainConfig`, the architecture and the precision,
for example ``{"recipe": "fast", "width": 8, "patch": 128, "batch_size": 8}``.
The repository's ``resources/recipes/`` has the ``fast`` and ``paper`` recipes
for the CPU and a GPU.  Unknown keys are an error naming the key and the file;
values are checked where they are used (``TrainConfig``, ``ModelConfig``).
No torch here: the CLI reads a recipe before it imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import LABELS_KINDS, TrainConfig, show_value

ARCHITECTURE_KEYS = ("width", "depth", "padding", "batch_norm", "spatial_dims")
OTHER_KEYS = ("precision", "labels_kind", "description")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
KEYS = TRAIN_KEYS + ARCHITECTURE_KEYS + OTHER_KEYS
MAX_BYTES = 1_000_000


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} is given twice")
    return dict(pairs)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The settings of a recipe file, checked for unknown keys.

    Raises a ValueError naming the file and the problem: not found, not JSON, not an
    object, a repeated or unknown key.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"recipe {path}: over {MAX_BYTES} bytes, not a recipe")
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_repeats)
    except OSError as exc:
        raise ValueError(f"recipe {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"recipe {path}: not a JSON recipe ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"recipe {path}: must be a JSON object of settings, got {show_value(data)}"
        )
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValueError(f"recipe {path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    kind = data.get("labels_kind")
    if kind is not None and kind not in LABELS_KINDS:
        raise ValueError(
            f"recipe {path}: labels_kind must be one of {', '.join(LABELS_KINDS)}, "
            f"got {show_value(kind)}"
        )
    return data


def train_arguments(settings: dict[str, Any], where: str = "recipe") -> dict[str, Any]:
    """Keyword arguments of :func:`~napari_unet.training.train_iter` from recipe settings:
    the TrainConfig fields become ``config=TrainConfig(...)`` (checked there)."""
    train = {
        k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k in TRAIN_KEYS
    }
    rest = {k: v for k, v in settings.items() if k not in TRAIN_KEYS and k != "description"}
    try:
        config = TrainConfig(**train)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    return {"config": config, **rest}

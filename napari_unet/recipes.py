"""Training recipes: how a training optimises (:class:`Recipe`: ``fast`` and ``paper``), and
recipe files, ``napari-unet train --config FILE``.

A :class:`Recipe` holds, in one place, what depends on the recipe: the defaults for a
device and dimensionality, the optimizer, the learning rate at each point of the
schedule, the autocast dtype and the loss.  Adding a recipe is adding an instance to
:data:`BY_NAME` (and its name to ``config.RECIPES``).

A recipe file holds the keyword arguments of a training: the fields of
:class:`~napari_unet.config.TrainConfig`, the architecture and the precision,
for example ``{"recipe": "fast", "width": 8, "patch": 128, "batch_size": 8}``.
The repository's ``resources/recipes/`` has the ``fast`` and ``paper`` recipes
for the CPU and a GPU.  Unknown keys are an error naming the key and the file;
values are checked where they are used (``TrainConfig``, ``ModelConfig``).
No torch at import: the CLI reads a recipe before it imports torch (the methods that
need it import it).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import LABELS_KINDS, RECIPES, TrainConfig, show_value
from .devices import PRECISIONS, autocast_dtype

if TYPE_CHECKING:
    import torch


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Model size and recipe settings picked for a device (measured, see docs/benchmarks.md)."""

    width: int
    patch: int
    batch_size: int
    lr: float


def lr_factor(progress: float, step: int, warmup_steps: int, final: float = 0.02) -> float:
    """Linear warm-up (over ``warmup_steps`` or the first 3 % of the budget, whichever
    ends first), then cosine decay to ``final`` times the base rate."""
    warm = min(1.0, max((step + 1) / max(1, warmup_steps), progress / 0.03))
    progress = min(max(progress, 0.0), 1.0)
    return warm * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a training optimises.

    ``optimizer``: ``"adamw"`` (with the config's weight decay) or ``"sgd"`` (momentum
    0.99, the U-Net paper's).  ``warmup_steps``: the learning rate warms up over these
    steps and then decays by a cosine to 2 % (:func:`lr_factor`); 0: a constant rate.
    ``mixed_precision``: precision ``"auto"`` trains in bf16 (fp16 where bf16 is missing)
    on CUDA.  ``auto_start``: ``init="auto"`` may start from ``builtin:nuclei`` (trained
    with this recipe).  The defaults per device kind (``cpu``: the CPU and Apple's MPS
    are "not cuda" here) and dimensionality.
    """

    name: str
    optimizer: str
    warmup_steps: int
    mixed_precision: bool
    auto_start: bool
    cpu: Defaults
    cpu_3d: Defaults
    gpu: Defaults
    gpu_3d: Defaults

    def defaults(self, device_type: str, spatial_dims: int = 2) -> Defaults:
        """Width, patch, batch and learning rate on a device (``torch.device.type``)."""
        if device_type == "cpu":
            return self.cpu_3d if spatial_dims == 3 else self.cpu
        return self.gpu_3d if spatial_dims == 3 else self.gpu

    def make_optimizer(self, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        import torch

        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=0.99)
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def lr_at(self, base: float, progress: float, step: int) -> float:
        """The learning rate at ``step`` (of this session), ``progress`` (0-1) into the budget."""
        if not self.warmup_steps:
            return base
        return base * lr_factor(progress, step, self.warmup_steps)

    def autocast(self, device: torch.device, precision: str = "auto") -> torch.dtype | None:
        """The autocast dtype of a training (None = float32).

        ``"auto"``: mixed precision on CUDA when the recipe uses it, float32 elsewhere.
        ``"bf16"`` / ``"fp16"`` force it on any device (the CPU runs both under
        ``torch.autocast``), ``"fp32"`` turns it off.
        """
        import torch

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "fp32":
            return None
        if precision == "bf16":
            return torch.bfloat16
        if precision == "fp16":
            return torch.float16
        return autocast_dtype(device) if self.mixed_precision else None

    def loss(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        distill: float = 0.0,
        count: Any = None,
        balance: float = 0.0,
    ) -> torch.Tensor:
        """Cross-entropy on the labeled pixels (times ``weight``, e.g. the border weight
        map; background and objects weighed by ``balance``, see
        :func:`~napari_unet.losses.masked_cross_entropy`), plus ``distill`` x the
        distillation toward ``teacher_logits`` (the start model's) on the unlabeled ones;
        ``count``: see :data:`napari_unet.losses.Count`."""
        from .losses import distillation, masked_cross_entropy

        counted = {} if count is None else {"count": count}
        loss = masked_cross_entropy(logits, target, weight, balance=balance, **counted)
        if teacher_logits is not None and distill > 0:
            loss = loss + distill * distillation(logits, teacher_logits, target, **counted)
        return loss


FAST = Recipe(
    name="fast",
    optimizer="adamw",
    warmup_steps=50,
    mixed_precision=True,
    auto_start=True,
    cpu=Defaults(width=8, patch=128, batch_size=8, lr=3e-3),
    cpu_3d=Defaults(width=8, patch=48, batch_size=2, lr=3e-3),
    gpu=Defaults(width=32, patch=256, batch_size=16, lr=2e-3),
    gpu_3d=Defaults(width=16, patch=96, batch_size=4, lr=2e-3),
)
"""AdamW, warm-up + cosine, mixed precision on CUDA, larger batches: the default."""

_PAPER_CPU = Defaults(width=16, patch=256, batch_size=1, lr=1e-3)
_PAPER_GPU = Defaults(width=64, patch=256, batch_size=1, lr=1e-3)
PAPER = Recipe(
    name="paper",
    optimizer="sgd",
    warmup_steps=0,
    mixed_precision=False,
    auto_start=False,
    cpu=_PAPER_CPU,
    cpu_3d=_PAPER_CPU,
    gpu=_PAPER_GPU,
    gpu_3d=_PAPER_GPU,
)
"""The U-Net paper's: SGD momentum 0.99, batch 1, a constant rate, float32."""

BY_NAME: dict[str, Recipe] = {r.name: r for r in (FAST, PAPER)}
assert tuple(BY_NAME) == RECIPES, "config.RECIPES must name every recipe"


def get_recipe(name: str) -> Recipe:
    """The :class:`Recipe` called ``name`` (``TrainConfig.recipe``)."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"recipe must be one of {', '.join(BY_NAME)}, got {name!r}") from None


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

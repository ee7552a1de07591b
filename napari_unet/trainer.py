"""One optimisation step and one validation: the metrics and :class:`Trainer`.

The recipe (:class:`napari_unet.recipes.Recipe`) gives the optimizer, the autocast dtype
and the loss; :mod:`napari_unet.training` runs the loop around them (budgets, events,
saving).
``Trainer.train_step`` returns the loss as a tensor on the device: reading it
(``float``) waits for the device, so the loop reads it only when it reports.
"""

from __future__ import annotations

import logging
import math

import torch

from . import targets as tg
from .augment import AugmentConfig, augment_batch, center_crop
from .config import ModelSpec, TrainConfig
from .data import PatchSampler
from .distributed import Group
from .events import Adjusted
from .losses import masked_cross_entropy
from .model import UNet, border
from .recipes import get_recipe

log = logging.getLogger(__name__)

COMPILE_BACKEND = "inductor"
"""torch.compile's backend for ``TrainConfig.compile`` (the tests use "eager": the same
graph capture without generating kernels, which takes minutes on a small CPU)."""


def confusion(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    pred = logits.argmax(1)
    mask = target != tg.IGNORE
    idx = target[mask] * k + pred[mask]
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def mean_iou(conf: torch.Tensor) -> float:
    """Mean IoU over the classes present in truth or prediction."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    if not present.any():
        return float("nan")
    return float((tp[present] / union[present]).mean())


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    """The augmentation of a training recipe."""
    return AugmentConfig(
        scale=tuple(float(v) for v in cfg.augment_scale),
        invert=float(cfg.augment_invert),
        blur=float(cfg.augment_blur),
    )


class Trainer:
    """The loop's state: network, optimiser, samplers; ``train_step`` / ``validate``."""

    def __init__(
        self,
        network: UNet,
        spec: ModelSpec,
        device: torch.device,
        train_sampler: PatchSampler,
        val_batches: list,
        patch: int,
        batch_size: int,
        lr: float,
        precision: str = "auto",
        teacher: torch.nn.Module | None = None,
        group: Group | None = None,
    ) -> None:
        self.network = network
        self.spec = spec
        self.device = device
        self.sampler = train_sampler
        self.val_batches = val_batches
        self.patch = patch
        self.batch_size = batch_size
        self.lr = lr
        cfg = spec.train
        self.recipe = get_recipe(cfg.recipe)
        self.amp_dtype = self.recipe.autocast(device, precision)
        self.channels_last = spec.model.spatial_dims == 2
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        self.optimizer = self.recipe.make_optimizer(network.parameters(), lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.augment = augment_config(cfg) if cfg.augment else None
        self.group = group
        rank = group.ranks.rank if group is not None else 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed + 1_000_003 * rank)  # augmentation: per rank
        self.out_shape = (patch,) * spec.model.spatial_dims
        self.border = border(spec.model)
        self.distill = cfg.distill if teacher is not None else 0.0
        # painted background (sparse-instances' 1): its share of the labels is the user's
        # effort, not the image's; sparse labels' classes have no background to weigh
        self.balance = cfg.balance if spec.labels.kind == "sparse-instances" else 0.0
        self.teacher = teacher if self.distill > 0 else None
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
            if self.channels_last:
                self.teacher.to(memory_format=torch.channels_last)
        # what the step runs: the network itself, or its data-parallel wrapper, compiled
        # with cfg.compile (its weights stay those of self.network, which is saved)
        self.step_network = group.wrap(network) if group is not None else network
        if cfg.compile:
            self.step_network = torch.compile(self.step_network, backend=COMPILE_BACKEND)

    def _forward(self, image: torch.Tensor, network: torch.nn.Module | None = None) -> torch.Tensor:
        network = self.network if network is None else network
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                return network(image)
        return network(image)

    def _crop_to_output(self, target, weight):
        b = self.border
        if b == 0:
            return target, weight
        sl = (slice(None),) + (slice(b, -b),) * self.spec.model.spatial_dims
        return target[sl], None if weight is None else weight[sl]

    def restore(self, optimizer_state: dict, state: dict) -> None:
        """Load the optimizer (and gradient scaler) state of a checkpoint.

        State that does not fit this network (another model's checkpoint) is dropped
        with a warning: training goes on with a fresh optimizer.
        """
        try:
            self.optimizer.load_state_dict(optimizer_state)
            check_optimizer_state(self.optimizer)
        except (ValueError, KeyError) as exc:
            log.warning("optimizer state not restored (%s); continuing with a fresh optimizer", exc)
            self.optimizer.state.clear()
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def resume_state(self) -> dict:
        """What a checkpoint keeps besides the optimizer: the gradient scaler's state."""
        return {"scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {}

    def train_step(self, lr: float) -> dict[str, torch.Tensor]:
        """One optimisation step; the loss comes back as a 0-d tensor on the device."""
        self.network.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        group = self.group
        part = group.share(self.batch_size) if group is not None else None
        image, target, weight = self.sampler.sample(self.batch_size, part)
        in_shape = tuple(s + 2 * self.border for s in self.out_shape)
        if self.augment is not None:
            image, target, weight = augment_batch(
                image, target, weight, in_shape, self.augment, self.generator
            )
        else:
            image, target, weight = center_crop(image, target, weight, in_shape)
        target, weight = self._crop_to_output(target, weight)
        logits = self._forward(image, self.step_network)
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self._forward(image, self.teacher)
        count = group.mean_count if group is not None else None
        loss = self.recipe.loss(
            logits, target, weight, teacher_logits, self.distill, count, self.balance
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        loss = loss.detach()
        return {"loss": group.mean(loss) if group is not None else loss}

    def shrink_after_oom(self, step: int) -> Adjusted:
        """Out of device memory in a step: halve the batch, or at batch 1 the patch.

        Raises MemoryError (with what was tried) when the smallest patch the network
        takes does not fit either.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        where = f"{self.device.type} out of memory at step {step + 1}"
        if self.batch_size > 1:
            old, self.batch_size = self.batch_size, self.batch_size // 2
            return Adjusted(
                step,
                "batch_size",
                old,
                self.batch_size,
                f"{where}: batch halved from {old} to {self.batch_size}, training goes on",
            )
        smallest = 2 ** (self.spec.model.depth + 1) if self.spec.model.padding == "same" else 0
        old = self.out_shape[0]
        new = old // 2
        if self.spec.model.padding == "same":
            new = new // 2**self.spec.model.depth * 2**self.spec.model.depth
        if new < max(smallest, 8):
            raise MemoryError(
                f"{where} even with batch 1 and patch {old}: use a smaller network "
                f"(width {self.spec.model.width}, depth {self.spec.model.depth}) or the CPU"
            )
        self.out_shape = (new,) * self.spec.model.spatial_dims
        self.patch = new
        return Adjusted(
            step,
            "patch",
            old,
            new,
            f"{where} at batch 1: patch halved from {old} to {new}, training goes on",
        )

    @property
    def val_pixels(self) -> int:
        """Pixels (voxels) the network reads in one validation."""
        in_shape = tuple(s + 2 * self.border for s in self.out_shape)
        return sum(int(batch[0].shape[0]) for batch in self.val_batches) * math.prod(in_shape)

    @torch.no_grad()
    def validate(self, network: torch.nn.Module | None = None) -> dict[str, float]:
        """Loss and mean IoU on the fixed validation crops, of the network in training or
        of ``network`` (same architecture: the previous model, for the regression guard)."""
        model = self.network if network is None else network
        model.eval()
        k = self.spec.model.num_classes
        conf = torch.zeros(k, k, dtype=torch.int64, device=self.device)
        total, count = 0.0, 0
        in_shape = tuple(s + 2 * self.border for s in self.out_shape)
        for image, target, weight in self.val_batches:
            image, target, weight = center_crop(image, target, weight, in_shape)
            target, weight = self._crop_to_output(target, weight)
            logits = self._forward(image, model).float()
            total += float(masked_cross_entropy(logits, target)) * image.shape[0]
            count += image.shape[0]
            conf += confusion(logits, target, k)
        return {"loss": total / max(count, 1), "iou": mean_iou(conf)}


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter state tensor of a loaded optimizer must fit its parameter
    (a checkpoint of another network would otherwise crash the first step)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.ndim > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state {key!r} has shape {tuple(value.shape)}, its parameter "
                        f"{tuple(param.shape)}"
                    )

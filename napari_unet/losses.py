"""The training losses: cross-entropy on labeled pixels, and the start model's answer on
the others (distillation).  :class:`napari_unet.recipes.Recipe.loss` combines them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .targets import IGNORE

Count = Callable[[torch.Tensor], torch.Tensor]
"""What a local count of pixels becomes as a loss's divisor: itself on one process, the
mean over the ranks in a data-parallel training (``distributed.Group.mean_count``)."""


def _local(count: torch.Tensor) -> torch.Tensor:
    return count


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    count: Count = _local,
    balance: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy over labeled pixels only (``IGNORE`` pixels cost nothing).

    ``balance`` > 0: the labeled background (class 0) takes that share of the loss and the
    labeled objects (every other class) the rest, whatever their numbers of pixels, when
    the batch holds both; 0: every labeled pixel weighs the same.
    """
    per_px = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="none")
    valid = (target != IGNORE).float()
    if weight is not None:
        valid = valid * weight
    if balance <= 0:
        return (per_px * valid).sum() / count(valid.sum()).clamp_min(1.0)
    background = valid * (target == 0).float()
    objects = valid - background
    loss_bg, loss_obj = (per_px * background).sum(), (per_px * objects).sum()
    n_bg, n_obj = count(background.sum()), count(objects.sum())  # one count each, no more
    plain = (loss_bg + loss_obj) / (n_bg + n_obj).clamp_min(1.0)
    mean_bg, mean_obj = loss_bg / n_bg.clamp_min(1.0), loss_obj / n_obj.clamp_min(1.0)
    balanced = balance * mean_bg + (1 - balance) * mean_obj
    # no host synchronisation: the choice stays on the device
    return torch.where((n_bg > 0) & (n_obj > 0), balanced, plain)


def distillation(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    count: Count = _local,
) -> torch.Tensor:
    """KL divergence from the teacher's class probabilities to the student's, averaged
    over the unlabeled pixels (``IGNORE``): where the user labeled nothing, the start
    model's answer is the best guess ("learning without forgetting", Li & Hoiem 2017)."""
    unlabeled = (target == IGNORE).float()
    log_p = F.log_softmax(logits.float(), dim=1)
    log_q = F.log_softmax(teacher_logits.float(), dim=1)
    per_px = (log_q.exp() * (log_q - log_p)).sum(dim=1)
    return (per_px * unlabeled).sum() / count(unlabeled.sum()).clamp_min(1.0)

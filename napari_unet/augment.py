"""Batched augmentation with torch ops, on whatever device training runs on.

One ``grid_sample`` per batch applies the seed's augmentations together:
random shift, rotation (in the YX plane), scaling, flips, and a random
elastic deformation (the U-Net paper: displacements drawn on a coarse grid
and interpolated smoothly; here 3x3 control points, 10 px standard deviation).
Images are sampled bilinearly; targets with nearest-neighbour sampling so no
class value is invented; pixels that come from outside the crop become
``IGNORE`` in the target and weight 0.  Then the intensities: optional inversion
(bright objects on a dark ground become dark on bright, as in brightfield or
phase contrast), Gaussian blur in the YX plane (out of focus, lower resolution),
gamma, contrast, brightness and noise, each drawn per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .targets import IGNORE


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation (0 or False turns one off)."""

    rotate: bool = True
    max_shift: float = 0.0  # fraction of the patch; crops are already randomly placed
    scale: tuple[float, float] = (0.8, 1.25)
    flip: bool = True
    elastic_sigma: float = 10.0  # px, standard deviation of control point displacements
    elastic_grid: int = 3
    contrast: tuple[float, float] = (0.7, 1.4)
    brightness: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    noise: float = 0.03
    invert: float = 0.0  # probability of inverting a sample's intensities (x -> 1 - x)
    blur: float = 0.0  # px, largest Gaussian sigma (drawn uniformly from [0, blur])


def crop_margin(patch: int, config: AugmentConfig) -> int:
    """Context (px per side) a crop needs so rotation/scaling stay inside it."""
    reach = patch / 2 * math.sqrt(2) * config.scale[1] + 3 * config.elastic_sigma
    reach += config.max_shift * patch
    return max(0, int(math.ceil(reach - patch / 2)))


def _rand(n: int, low: float, high: float, gen: torch.Generator, device: torch.device):
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def random_grid(
    n: int,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    config: AugmentConfig,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Sampling grid (N, *out, dims) in ``grid_sample``'s normalised coordinates.

    Output pixel offsets p (from the output centre) map to input offsets
    ``R @ S @ p + shift + elastic(p)``; ``R`` rotates in the last two axes.
    """
    dims = len(out_shape)
    gen = generator
    # matrices act on pixel offsets in (x, y[, z]) order, as grid_sample expects
    a = torch.zeros(n, dims, dims, device=device)
    angle = (
        _rand(n, 0, 2 * math.pi, gen, device) if config.rotate else torch.zeros(n, device=device)
    )
    c, s = torch.cos(angle), torch.sin(angle)
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = c, -s, s, c
    if dims == 3:
        a[:, 2, 2] = 1.0
    lo, hi = config.scale
    scale = torch.exp(_rand(n, math.log(lo), math.log(hi), gen, device))
    diag = scale[:, None].repeat(1, dims)
    if dims == 3:
        diag[:, 2] = 1.0  # no scaling along z (often anisotropic)
    if config.flip:
        signs = torch.randint(0, 2, (n, dims), generator=gen, device=device) * 2 - 1
        diag = diag * signs
    a = a * diag[:, None, :]
    half_in = torch.tensor(in_shape[::-1], device=device, dtype=torch.float32) / 2
    half_out = torch.tensor(out_shape[::-1], device=device, dtype=torch.float32) / 2
    shift = (torch.rand(n, dims, generator=gen, device=device) * 2 - 1) * config.max_shift
    shift = shift * half_out * 2
    theta = torch.zeros(n, dims, dims + 1, device=device)
    theta[:, :, :dims] = a * half_out[None, None, :] / half_in[None, :, None]
    theta[:, :, dims] = shift / half_in
    grid = F.affine_grid(theta, [n, 1, *out_shape], align_corners=False)
    if config.elastic_sigma > 0:
        g = config.elastic_grid
        coarse = torch.randn(n, dims, *([g] * dims), generator=gen, device=device)
        coarse = coarse * config.elastic_sigma
        mode = "bicubic" if dims == 2 else "trilinear"
        field = F.interpolate(coarse, size=out_shape, mode=mode, align_corners=True)
        # (N, dims, *out) in pixels -> (N, *out, dims) in input normalised units
        field = field.movedim(1, -1) / half_in
        grid = grid + field
    return grid


def augment_batch(
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    out_shape: tuple[int, ...],
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augment a batch of crops and cut them to ``out_shape``.

    Parameters
    ----------
    image
        (N, C, *in) float crops, larger than ``out_shape`` by the margin of
        :func:`crop_margin`.
    target
        (N, *in) int64 classes, ``IGNORE`` where unlabeled.
    weight
        Optional (N, *in) float per-pixel loss weights.
    out_shape
        Spatial shape of the patches returned.

    Returns
    -------
    image, target, weight
        (N, C, *out), (N, *out) and (N, *out) or None.
    """
    n = image.shape[0]
    in_shape = tuple(image.shape[2:])
    device = image.device
    grid = random_grid(n, in_shape, out_shape, config, generator, device)
    out_img = F.grid_sample(
        image.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )
    # nearest sampling of the shifted target: zeros padding turns outside pixels into IGNORE
    shifted = (target - IGNORE).to(torch.float32).unsqueeze(1)  # IGNORE -> 0
    out_t = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_t = out_t.squeeze(1).round().to(torch.int64) + IGNORE
    out_w = None
    if weight is not None:
        out_w = F.grid_sample(
            weight.float().unsqueeze(1),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).squeeze(1)
    out_img = jitter_intensity(out_img, config, generator)
    return out_img, out_t, out_w


def center_crop(
    image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, out_shape: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The non-augmented counterpart of :func:`augment_batch` (validation)."""
    sl = tuple(
        slice((have - want) // 2, (have - want) // 2 + want)
        for have, want in zip(image.shape[2:], out_shape, strict=True)
    )
    w = None if weight is None else weight[(slice(None), *sl)]
    return image[(slice(None), slice(None), *sl)], target[(slice(None), *sl)], w


def gaussian_blur(image: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample of (N, C, *spatial) in its last two axes (YX) with its own
    ``sigma`` (N,) in pixels (0: unchanged); borders are reflected."""
    n = image.shape[0]
    radius = int(math.ceil(3 * float(sigma.max()))) if n else 0
    if radius == 0:
        return image
    x = torch.arange(-radius, radius + 1, device=image.device, dtype=image.dtype)
    s = sigma.to(image.dtype).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (x[None, :] / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # sigma ~ 0: a delta
    height, width = image.shape[-2:]
    planes = image.reshape(1, -1, height, width)  # every (sample, channel, z) a group
    groups = planes.shape[1]
    kernel = kernel.repeat_interleave(groups // n, dim=0)
    mode = "reflect" if min(height, width) > radius else "replicate"
    out = F.pad(planes, (radius,) * 4, mode=mode)
    out = F.conv2d(out, kernel[:, None, :, None], groups=groups)  # along Y
    out = F.conv2d(out, kernel[:, None, None, :], groups=groups)  # along X
    return out.reshape(image.shape)


def jitter_intensity(
    image: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random inversion, blur, gamma, contrast, brightness and Gaussian noise per sample."""
    n = image.shape[0]
    device = image.device
    shape = (n,) + (1,) * (image.ndim - 1)
    out = image
    if config.invert:
        flip = torch.rand(n, generator=generator, device=device) < config.invert
        out = torch.where(flip.view(shape), 1.0 - out, out)
    if config.blur:
        out = gaussian_blur(out, _rand(n, 0, config.blur, generator, device))
    if config.gamma != (1.0, 1.0):
        lo, hi = config.gamma
        gamma = torch.exp(_rand(n, math.log(lo), math.log(hi), generator, device)).view(shape)
        # gamma on the [0, 1] normalised range, sign-preserving outside it
        out = torch.sign(out) * out.abs().clamp_min(1e-6) ** gamma
    if config.contrast != (1.0, 1.0):
        lo, hi = config.contrast
        out = out * torch.exp(_rand(n, math.log(lo), math.log(hi), generator, device)).view(shape)
    if config.brightness:
        b = config.brightness
        out = out + _rand(n, -b, b, generator, device).view(shape)
    if config.noise:
        sigma = _rand(n, 0, config.noise, generator, device).view(shape)
        noise = torch.randn(out.shape, generator=generator, device=device)
        out = out + sigma * noise
    return out

"""Overlap-tile prediction of arrays of any size (2D or 3D).

The image is cut into overlapping tiles read one at a time from the source
(numpy, dask or zarr: only the tile's window is read), predicted in batches
under ``torch.inference_mode`` (autocast on CUDA), weighted by a blending
window that fades towards the tile edges and accumulated on the device; the
sum is divided by the summed weights at the end.  ``valid`` networks get the
context they need around each tile, mirrored at the image borders (the
paper's overlap-tile strategy).  A CUDA out-of-memory error halves the tile
batch and retries.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Generator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .devices import autocast_dtype
from .events import TileDone
from .model import border, valid_input_size, valid_output_size

log = logging.getLogger(__name__)


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def tile_shape(
    shape: Sequence[int], tile: Sequence[int], config: ModelConfig, overlap: float = 0.125
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Network input and output tile shapes for an image of ``shape``.

    Tiles never exceed the image (rounded up to what the network accepts), so
    small images cost one small tile, not a full one.  With ``same`` padding the
    edge is balanced: the fewest tiles of at most ``tile`` that cover the axis
    with the overlap, each as small as that allows (a 2048-pixel axis takes five
    464-pixel tiles rather than five of 512, 17 % fewer pixels to compute).
    """
    ins, outs = [], []
    for size, t in zip(shape, tile, strict=True):
        if config.padding == "same":
            m = 2**config.depth
            edge = _round_up(min(t, size), m)
            ov = int(round(edge * overlap))
            if size > edge and edge > ov:
                n = math.ceil((size - ov) / (edge - ov))
                edge = min(edge, _round_up(math.ceil((size + (n - 1) * ov) / n), m))
            ins.append(edge)
            outs.append(edge)
        else:
            b = border(config)
            edge_in = valid_input_size(min(t, size) + 2 * b, config.depth)
            edge_out = valid_output_size(edge_in, config.depth)
            assert edge_out is not None
            ins.append(edge_in)
            outs.append(edge_out)
    return tuple(ins), tuple(outs)


def tile_starts(size: int, out: int, overlap: int) -> list[int]:
    """Start positions of output tiles of edge ``out`` covering ``[0, size)``."""
    if size <= out:
        return [0]
    step = max(1, out - overlap)
    n = math.ceil((size - out) / step) + 1
    starts = np.linspace(0, size - out, n).round().astype(int).tolist()
    return sorted(set(starts))


@lru_cache(maxsize=16)
def _blend_window_np(shape: tuple[int, ...], overlap: tuple[int, ...]) -> np.ndarray:
    w = np.ones(shape, np.float32)
    for axis, (n, ov) in enumerate(zip(shape, overlap, strict=True)):
        ramp = np.ones(n, np.float32)
        r = min(ov, n // 2)
        if r > 0:
            edge = (np.arange(r, dtype=np.float32) + 0.5) / r
            ramp[:r] = edge
            ramp[n - r :] = edge[::-1]
        shape1 = [1] * len(shape)
        shape1[axis] = n
        w = w * ramp.reshape(shape1)
    return np.maximum(w, 1e-3)


def blend_window(shape: tuple[int, ...], overlap: tuple[int, ...], device: torch.device):
    """Linear ramps over the overlap on every side, 1 inside (cached)."""
    return torch.from_numpy(_blend_window_np(shape, overlap)).to(device)


def read_window(
    source: Any, starts: Sequence[int], stops: Sequence[int], channel_first: bool = True
) -> np.ndarray:
    """Read ``source[:, starts:stops]`` with mirrored padding outside the image.

    ``source`` is (C, *spatial) and may be numpy, dask or zarr; only the
    in-bounds part of the window is read.
    """
    spatial = source.shape[1:]
    lo = [max(0, s) for s in starts]
    hi = [min(n, e) for n, e in zip(spatial, stops, strict=True)]
    sl = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    block = source[sl]
    if hasattr(block, "compute"):
        block = block.compute()
    block = np.asarray(block, dtype=np.float32)
    pads = [(0, 0)] + [(a - s, e - b) for s, e, a, b in zip(starts, stops, lo, hi, strict=True)]
    if any(p != (0, 0) for p in pads):
        block = np.pad(block, pads, mode="symmetric")
    return block


def predict_tiled_iter(
    network: torch.nn.Module,
    source: Any,
    config: ModelConfig,
    *,
    tile: Sequence[int],
    overlap: float = 0.125,
    batch_size: int = 8,
    device: torch.device,
    amp: bool = True,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Generator[TileDone, None, np.ndarray]:
    """Overlap-tile prediction; yields :class:`TileDone`, returns probabilities.

    Parameters
    ----------
    source
        (C, *spatial) array-like (numpy, dask, zarr), read tile by tile.
    tile
        Output tile edge per spatial axis (capped to the image).
    overlap
        Fraction of the tile shared with each neighbour.
    transform
        Applied to every tile read (e.g. intensity normalisation).

    Returns
    -------
    numpy.ndarray
        (num_classes, *spatial) float32 class probabilities.
    """
    spatial = tuple(int(s) for s in source.shape[1:])
    dims = len(spatial)
    if dims != config.spatial_dims:
        raise ValueError(f"a {config.spatial_dims}D model cannot predict a {dims}D image")
    in_t, out_t = tile_shape(spatial, tile, config, overlap)
    ov = tuple(int(round(o * overlap)) for o in out_t)
    ctx = tuple((i - o) // 2 for i, o in zip(in_t, out_t, strict=True))
    grid = list(
        itertools.product(
            *[tile_starts(s, o, v) for s, o, v in zip(spatial, out_t, ov, strict=True)]
        )
    )
    k = config.num_classes
    acc_shape = tuple(max(s, o) for s, o in zip(spatial, out_t, strict=True))
    acc = torch.zeros((k, *acc_shape), dtype=torch.float32, device=device)
    wsum = torch.zeros(acc_shape, dtype=torch.float32, device=device)
    window = blend_window(out_t, ov, device)
    amp_dtype = autocast_dtype(device) if amp else None
    channels_last = device.type == "cuda" and dims == 2
    pin = device.type == "cuda"

    def run_batch(batch: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(batch))
        if pin:
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if amp_dtype is not None:
                with torch.autocast(device.type, dtype=amp_dtype):
                    logits = network(x)
            else:
                logits = network(x)
            return torch.softmax(logits.float(), dim=1)

    network.eval()
    done = 0
    i = 0
    bs = max(1, batch_size)
    while i < len(grid):
        starts = grid[i : i + bs]
        batch = []
        for st in starts:
            a = [s - c for s, c in zip(st, ctx, strict=True)]
            e = [s - c + n for s, c, n in zip(st, ctx, in_t, strict=True)]
            block = read_window(source, a, e)
            if transform is not None:
                block = transform(block)
            batch.append(block)
        try:
            probs = run_batch(batch)
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs = max(1, bs // 2)
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory in tiled prediction; retrying with batch %d", bs)
            continue
        with torch.inference_mode():
            for p, st in zip(probs, starts, strict=True):
                sl = tuple(slice(s, s + o) for s, o in zip(st, out_t, strict=True))
                acc[(slice(None), *sl)] += p * window
                wsum[sl] += window
        i += len(starts)
        done += len(starts)
        yield TileDone(done, len(grid))
    with torch.inference_mode():
        crop = tuple(slice(0, s) for s in spatial)
        out = acc[(slice(None), *crop)] / wsum[crop].clamp_min(1e-6)
    return out.cpu().numpy()

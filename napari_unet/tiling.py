"""Overlap-tile prediction of arrays of any size (2D or 3D).

The image is cut into overlapping tiles (:class:`TileGrid`) read one at a
time from the source (numpy, dask or zarr: only the tile's window is read),
predicted in batches under ``torch.inference_mode`` (autocast on CUDA),
weighted by a blending window that fades towards the tile edges and
accumulated on the device (:class:`TileMerger`); the sum is divided by the
summed weights at the end.  ``valid`` networks get the
context they need around each tile, mirrored at the image borders (the
paper's overlap-tile strategy).  A CUDA out-of-memory error halves the tile
batch and retries.

An image in memory that fits on the device goes there once (:class:`DeviceImage`):
mirrored, normalised there (a transform with a ``tensor`` method, such as
:class:`Normaliser`), and its tiles are cut there, so no tile is read, padded,
normalised or copied on the host.  Lazy sources (dask, zarr) and images too large
stay tile by tile.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .devices import autocast_dtype
from .events import TileDone
from .model import border, valid_input_size, valid_output_size

log = logging.getLogger(__name__)

WHOLE_IMAGE_CPU_BYTES = 512 * 2**20
"""On the CPU, an image of at most this many bytes (as float32, mirrored) is prepared once."""
WHOLE_IMAGE_GPU_SHARE = 0.25
"""On a GPU, an image taking at most this share of the free memory goes there whole."""


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


def read_window(source: Any, starts: Sequence[int], stops: Sequence[int]) -> np.ndarray:
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


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image lie.

    ``starts`` are the output tiles' corners; each tile is predicted from an input
    window of ``in_tile`` that adds ``context`` pixels on each side (``valid``
    networks) and shares ``overlap`` pixels with its neighbours.
    """

    spatial: tuple[int, ...]
    in_tile: tuple[int, ...]
    out_tile: tuple[int, ...]
    overlap: tuple[int, ...]
    context: tuple[int, ...]
    starts: list[tuple[int, ...]]

    @classmethod
    def plan(
        cls, spatial: Sequence[int], tile: Sequence[int], config: ModelConfig, overlap: float
    ) -> TileGrid:
        """The grid for an image of ``spatial`` shape, tiles of at most ``tile``."""
        spatial = tuple(int(s) for s in spatial)
        if len(spatial) != config.spatial_dims:
            raise ValueError(
                f"a {config.spatial_dims}D model cannot predict a {len(spatial)}D image"
            )
        in_t, out_t = tile_shape(spatial, tile, config, overlap)
        ov = tuple(int(round(o * overlap)) for o in out_t)
        ctx = tuple((i - o) // 2 for i, o in zip(in_t, out_t, strict=True))
        per_axis = [tile_starts(s, o, v) for s, o, v in zip(spatial, out_t, ov, strict=True)]
        return cls(spatial, in_t, out_t, ov, ctx, list(itertools.product(*per_axis)))

    def read(self, source: Any, start: Sequence[int]) -> np.ndarray:
        """The network input of the tile at ``start`` (mirrored outside the image)."""
        lo = [s - c for s, c in zip(start, self.context, strict=True)]
        return read_window(source, lo, [a + n for a, n in zip(lo, self.in_tile, strict=True)])


@dataclass(frozen=True)
class Normaliser:
    """Per-channel ``(x - low) / scale`` with non-finite values set to 0, on numpy
    blocks (``__call__``) and on tensors already on a device (:meth:`tensor`); both
    compute in float32 and give the same values."""

    low: np.ndarray  # (C,) float32
    scale: np.ndarray  # (C,) float32, > 0

    def _shaped(self, v: np.ndarray, ndim: int) -> np.ndarray:
        return v.astype(np.float32).reshape((-1,) + (1,) * (ndim - 1))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        low, scale = self._shaped(self.low, block.ndim), self._shaped(self.scale, block.ndim)
        out = (np.asarray(block, np.float32) - low) / scale
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.from_numpy(self._shaped(self.low, x.ndim)).to(x.device)
        scale = torch.from_numpy(self._shaped(self.scale, x.ndim)).to(x.device)
        return torch.nan_to_num((x.float() - low) / scale, nan=0.0, posinf=0.0, neginf=0.0)


_TORCH_NATIVE = (np.uint8, np.int8, np.int16, np.int32, np.float32)


class DeviceImage:
    """A whole (C, *spatial) image on the device, mirrored by the tiles' reach and
    normalised there; :meth:`tiles` cuts a batch of network inputs from it (what
    :meth:`TileGrid.read` and the transform give, computed on the device)."""

    def __init__(self, source: np.ndarray, grid: TileGrid, transform: Any, device: torch.device):
        self.grid = grid
        self.low = grid.context  # the padding before each axis
        high = [
            max(0, max(st[a] for st in grid.starts) - c + n - size)
            for a, (size, c, n) in enumerate(
                zip(grid.spatial, grid.context, grid.in_tile, strict=True)
            )
        ]
        pads = [(0, 0)] + [(lo, hi) for lo, hi in zip(self.low, high, strict=True)]
        arr = np.asarray(source)
        if arr.dtype.type not in _TORCH_NATIVE:  # float64, uint16, bool...: as read_window
            arr = arr.astype(np.float32)
        if any(p != (0, 0) for p in pads):
            arr = np.pad(arr, pads, mode="symmetric")
        x = torch.from_numpy(np.ascontiguousarray(arr))
        if device.type == "cuda":
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
        self.image = transform.tensor(x) if transform is not None else x.float()

    @staticmethod
    def fits(source: Any, grid: TileGrid, transform: Any, device: torch.device) -> bool:
        """Whether ``source`` can go to ``device`` whole: a numpy array, a transform
        that runs on tensors (or none), and room for it (mirrored, float32)."""
        if not isinstance(source, np.ndarray) or not (
            transform is None or hasattr(transform, "tensor")
        ):
            return False
        padded = [
            s + 2 * c + n for s, c, n in zip(grid.spatial, grid.context, grid.in_tile, strict=True)
        ]
        nbytes = 4 * source.shape[0] * math.prod(padded)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return nbytes <= WHOLE_IMAGE_GPU_SHARE * free
        return device.type == "cpu" and nbytes <= WHOLE_IMAGE_CPU_BYTES

    def tiles(self, starts: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """The network inputs (B, C, *in_tile) of the tiles at ``starts``."""
        windows = [
            (slice(None),)
            + tuple(
                slice(s - c + p, s - c + p + n)
                for s, c, p, n in zip(
                    st, self.grid.context, self.low, self.grid.in_tile, strict=True
                )
            )
            for st in starts
        ]
        return torch.stack([self.image[w] for w in windows])


class TileMerger:
    """Blends tile probabilities into the image: ``add`` accumulates, ``finalize`` divides.

    Sums live on ``device``; each tile is weighted by :func:`blend_window`.
    """

    def __init__(self, num_classes: int, grid: TileGrid, device: torch.device) -> None:
        self.grid = grid
        shape = tuple(max(s, o) for s, o in zip(grid.spatial, grid.out_tile, strict=True))
        self.acc = torch.zeros((num_classes, *shape), dtype=torch.float32, device=device)
        self.wsum = torch.zeros(shape, dtype=torch.float32, device=device)
        self.window = blend_window(grid.out_tile, grid.overlap, device)

    def add(self, probs: torch.Tensor, start: Sequence[int]) -> None:
        """Accumulate one tile's (num_classes, *out_tile) probabilities at ``start``."""
        sl = tuple(slice(s, s + o) for s, o in zip(start, self.grid.out_tile, strict=True))
        with torch.inference_mode():
            self.acc[(slice(None), *sl)] += probs * self.window
            self.wsum[sl] += self.window

    def finalize(self) -> np.ndarray:
        """(num_classes, *spatial) float32 probabilities: the weighted mean of the tiles."""
        with torch.inference_mode():
            crop = tuple(slice(0, s) for s in self.grid.spatial)
            out = self.acc[(slice(None), *crop)] / self.wsum[crop].clamp_min(1e-6)
        return out.cpu().numpy()


def predict_batch(
    network: torch.nn.Module,
    batch: list[np.ndarray] | torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Softmax probabilities of a batch of tiles (numpy tiles, or a tensor already on
    ``device``), on ``device`` (autocast if ``amp_dtype``)."""
    if isinstance(batch, torch.Tensor):
        x = batch
    else:
        x = torch.from_numpy(np.stack(batch))
        if device.type == "cuda":
            x = x.pin_memory()
        x = x.to(device, non_blocking=True)
    if device.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if amp_dtype is not None:
            with torch.autocast(device.type, dtype=amp_dtype):
                logits = network(x)
        else:
            logits = network(x)
        return torch.softmax(logits.float(), dim=1)


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
    whole: bool | None = None,
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
        Applied to every tile read (e.g. intensity normalisation); one with a
        ``tensor`` method (:class:`Normaliser`) may run on the device instead.
    whole
        Put the image on the device once and cut the tiles there
        (:class:`DeviceImage`); None: when :meth:`DeviceImage.fits`.  False: read,
        pad and normalise each tile on the host.

    Returns
    -------
    numpy.ndarray
        (num_classes, *spatial) float32 class probabilities.
    """
    grid = TileGrid.plan(source.shape[1:], tile, config, overlap)
    merger = TileMerger(config.num_classes, grid, device)
    amp_dtype = autocast_dtype(device) if amp else None
    network.eval()
    if whole is None:
        whole = DeviceImage.fits(source, grid, transform, device)
    on_device = DeviceImage(source, grid, transform, device) if whole else None
    n = len(grid.starts)
    done = 0
    bs = max(1, batch_size)
    while done < n:
        starts = grid.starts[done : done + bs]
        if on_device is not None:
            batch: list[np.ndarray] | torch.Tensor = on_device.tiles(starts)
        else:
            batch = [grid.read(source, st) for st in starts]
            if transform is not None:
                batch = [transform(b) for b in batch]
        try:
            probs = predict_batch(network, batch, device, amp_dtype)
        except torch.cuda.OutOfMemoryError:
            if bs == 1:
                raise
            bs = max(1, bs // 2)
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory in tiled prediction; retrying with batch %d", bs)
            continue
        for p, st in zip(probs, starts, strict=True):
            merger.add(p, st)
        done += len(starts)
        yield TileDone(done, n)
    return merger.finalize()

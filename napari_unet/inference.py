"""Apply a model to an image: 2D images, stacks slice-wise, volumes in 3D.

Axes are given as a string of ``T``, ``Z``, ``C``, ``Y``, ``X`` (any order)
or guessed from the model: a 2D model sees a 3D array as a stack of slices,
and an image with the model's channel count first or last as channels.  The
output has the image's shape without its channel axis.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .config import ModelSpec
from .data import percentiles
from .devices import resolve_device
from .events import ChunkDone, TileDone, drain
from .files import grey_if_rgb
from .model import fused_for_inference
from .postprocess import outputs_from_probs, require_instances
from .store import Model
from .tiling import Normaliser, predict_tiled_iter
from .zoom import zoom_steps, zoomed

log = logging.getLogger(__name__)

_AXES = set("TZCYXS")
_MAX_RANGE_SAMPLES = 4_000_000
BLOCK_2D = 4096
"""Default block edge of streamed 2D prediction (pixels per spatial axis)."""
BLOCK_3D = 256
"""Default block edge of streamed 3D prediction."""
HALO = 64
"""Pixels of real image predicted around each block and then cropped: tiles at a
block's edge see the same context as in a whole-image prediction, and objects up
to this size that straddle two blocks are seen whole by the block that owns them."""


@dataclass(frozen=True)
class Block:
    """One block of a streamed prediction, in the output's coordinates.

    ``stack`` indexes the stack axes (T, Z of a 2D model); ``window`` is the region
    whose probabilities the sink receives (the block plus its halo, clipped to the
    image); ``core`` is the region the block owns, inside ``window``.
    """

    stack: tuple[int, ...]
    window: tuple[slice, ...]
    core: tuple[slice, ...]

    @property
    def core_in_window(self) -> tuple[slice, ...]:
        """``core`` relative to ``window`` (to crop the sink's probabilities)."""
        return tuple(
            slice(c.start - w.start, c.stop - w.start)
            for c, w in zip(self.core, self.window, strict=True)
        )


def plan_blocks(
    shape: Sequence[int], edge: int, halo: int
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """``(window, core)`` pairs covering ``shape`` with cores of at most ``edge``.

    A shape that fits in one block is one block without halo.
    """
    if edge < 1:
        raise ValueError(f"block edge must be at least 1 pixel, got {edge}")
    per_axis = []
    for n in shape:
        parts = max(1, -(-int(n) // edge))
        bounds = np.linspace(0, n, parts + 1).round().astype(int)
        per_axis.append(
            [
                (slice(max(0, a - halo), min(n, b + halo)), slice(a, b))
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            if parts > 1
            else [(slice(0, n), slice(0, n))]
        )
    return [
        (tuple(w for w, _ in combo), tuple(c for _, c in combo))
        for combo in itertools.product(*per_axis)
    ]


def guess_axes(shape: Sequence[int], spec: ModelSpec) -> str:
    """Axes string for an array of ``shape`` fed to a model with ``spec``."""
    ndim = len(shape)
    dims = spec.model.spatial_dims
    c = spec.model.in_channels
    spatial = "YX" if dims == 2 else "ZYX"
    if c == 1:
        if ndim == 3 and dims == 2 and shape[-1] in (3, 4) and shape[0] > 16:
            raise ValueError(
                f"the image of shape {tuple(shape)} looks like RGB(A) but the model takes "
                f"1 channel: convert it to grey, or pass axes='ZYX' if it is a stack"
            )
        if ndim < dims:
            raise ValueError(f"a {dims}D model cannot predict a {ndim}D image {tuple(shape)}")
        prefixes = ["", "Z", "TZ"] if dims == 2 else ["", "T"]
        lead = ndim - dims
        if lead >= len(prefixes):
            raise ValueError(
                f"cannot tell the axes of a {ndim}D image {tuple(shape)}; name each axis once "
                f"from T, Z, C, Y, X (axes= in Python, --axes on the command line), e.g. "
                f"'{('TZC' + spatial)[-ndim:] if dims == 2 else ('TC' + spatial)[-ndim:]}'"
            )
        return prefixes[lead] + spatial
    if ndim == dims + 1:
        if shape[0] == c:
            return "C" + spatial
        if shape[-1] == c:
            return spatial + "C"
    if ndim == dims + 2 and dims == 2:
        if shape[1] == c:
            return "ZC" + spatial
        if shape[-1] == c:
            return "Z" + spatial + "C"
    raise ValueError(
        f"the model takes {c} channels but no axis of the image {tuple(shape)} has {c} "
        f"entries in a place napari-unet can guess; pass axes, e.g. 'CYX'"
    )


def _check_axes(axes: str, ndim: int, spec: ModelSpec) -> str:
    axes = axes.upper()
    if len(axes) != ndim or set(axes) - _AXES or len(set(axes)) != len(axes):
        raise ValueError(
            f"axes {axes!r} must name each of the image's {ndim} axes once, from T, Z, C, Y, X"
        )
    if spec.model.in_channels > 1 and "C" not in axes:
        raise ValueError(
            f"the model takes {spec.model.in_channels} channels; axes {axes!r} has no C"
        )
    return axes


def _lazy(image: Any) -> Any:
    """numpy stays numpy; zarr and other array-likes become dask (lazy slicing)."""
    if isinstance(image, np.ndarray) or hasattr(image, "compute"):
        return image
    if hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__"):
        try:
            import dask.array as da
        except ImportError:  # pragma: no cover - dask is a dependency
            return np.asarray(image)
        return da.from_array(image, chunks=getattr(image, "chunks", "auto"))
    return np.asarray(image)


def _intensity_range(arr: Any, spec: ModelSpec) -> tuple[float, float]:
    """Percentiles over the whole (channel of the) array, on a strided subsample."""
    size = int(np.prod(arr.shape))
    step = 1
    while size / step**arr.ndim > _MAX_RANGE_SAMPLES:
        step += 1
    sub = arr[(slice(None, None, step),) * arr.ndim]
    if hasattr(sub, "compute"):
        sub = sub.compute()
    return percentiles(np.asarray(sub), spec.normalization)


@dataclass(frozen=True)
class Layout:
    """How an image's axes map to the model's order ``(stack..., C, spatial...)``.

    ``stack`` are the image's non-channel, non-spatial axes (T, and Z for a 2D
    model), in the image's order.
    """

    axes: str
    stack: tuple[str, ...]
    spatial: tuple[str, ...]

    @classmethod
    def of(cls, axes: str, dims: int) -> Layout:
        """The layout of checked ``axes`` for a ``dims``-D model."""
        spatial = ("Y", "X") if dims == 2 else ("Z", "Y", "X")
        missing = [a for a in spatial if a not in axes]
        if missing:
            raise ValueError(f"axes {axes!r} lack {''.join(missing)}, which a {dims}D model needs")
        return cls(axes, tuple(a for a in axes if a != "C" and a not in spatial), spatial)

    def to_model(self, arr: Any) -> Any:
        """``arr`` (numpy or dask) in the model's order, with a channel axis of 1 if it had none."""
        order = [self.axes.index(a) for a in self.stack]
        if "C" in self.axes:
            order.append(self.axes.index("C"))
        order += [self.axes.index(a) for a in self.spatial]
        arr = arr.transpose(order) if hasattr(arr, "transpose") else np.transpose(arr, order)
        if "C" not in self.axes:
            arr = arr[(slice(None),) * len(self.stack) + (None,)]
        return arr

    @property
    def streamable(self) -> bool:
        """Whether the image's non-channel axes already are in the model's order."""
        return [a for a in self.axes if a != "C"] == [*self.stack, *self.spatial]

    def to_image(self, probs: np.ndarray) -> np.ndarray:
        """``(classes, stack..., spatial...)`` probabilities in the image's order of axes."""
        now = [*self.stack, *self.spatial]
        return np.transpose(probs, [0] + [1 + now.index(a) for a in self.axes if a != "C"])


def in_model_order(image: Any, spec: ModelSpec, axes: str | None = None) -> tuple[Any, Layout]:
    """``image`` checked and in the model's order ``(stack..., C, spatial...)``, not
    loaded (numpy, or dask for a lazy array), and its :class:`Layout`.

    ``axes`` names the image's axes (e.g. ``"TZYX"``); None guesses them
    (:func:`guess_axes`).  Raises a ValueError naming what does not fit the model.
    """
    image = _numeric(image, axes, spec)
    shape = tuple(int(s) for s in image.shape)
    axes = _check_axes(axes, len(shape), spec) if axes else guess_axes(shape, spec)
    layout = Layout.of(axes, spec.model.spatial_dims)
    arr = layout.to_model(_lazy(image))
    _check_model_order(arr, layout, spec)
    return arr, layout


def _numeric(image: Any, axes: str | None, spec: ModelSpec) -> Any:
    """``image`` as an array-like with a numeric dtype; grey stored as RGB(A) made grey."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise ValueError(f"image must be numeric, got dtype {image.dtype}")
    if axes is None and spec.model.in_channels == 1 and isinstance(image, np.ndarray):
        image = grey_if_rgb(image)  # grey PNGs are often stored as RGB(A)
    return image


def _check_model_order(arr: Any, layout: Layout, spec: ModelSpec) -> None:
    n_chan = arr.shape[len(layout.stack)]
    if n_chan != spec.model.in_channels:
        raise ValueError(
            f"the image has {n_chan} channels (axes {layout.axes}), the model takes "
            f"{spec.model.in_channels}"
        )
    for a, s in zip(layout.spatial, arr.shape[-len(layout.spatial) :], strict=True):
        if s < 1:
            raise ValueError(f"the image's {a} axis is empty")


def _normaliser(arr: Any, n_stack: int, spec: ModelSpec) -> Normaliser:
    """Per-channel percentile normalisation with the whole array's range."""
    ranges = []
    for c in range(arr.shape[n_stack]):
        lo, hi = _intensity_range(arr[(slice(None),) * n_stack + (c,)], spec)
        ranges.append((lo, max(hi - lo, 1e-12) if hi > lo else max(abs(hi), 1.0)))
    return Normaliser(
        np.array([r[0] for r in ranges], np.float32), np.array([r[1] for r in ranges], np.float32)
    )


TilePredictor = Callable[[Any], Generator[TileDone, None, np.ndarray]]


def _tile_predictor(
    model: Model,
    transform: Callable[[np.ndarray], np.ndarray],
    device: str | torch.device,
    tile: int | None,
    batch_size: int | None,
    amp: bool,
) -> TilePredictor:
    """``(C, *spatial) source -> probabilities`` generator with the model's tiling settings."""
    spec = model.config
    dev = resolve_device(device)
    network = fused_for_inference(model.network).to(dev)
    t = tile or spec.tiling.tile
    edges = (min(t, spec.tiling.tile_z), t, t) if spec.model.spatial_dims == 3 else (t, t)

    def predict(source: Any) -> Generator[TileDone, None, np.ndarray]:
        return predict_tiled_iter(
            network,
            source,
            spec.model,
            tile=edges,
            overlap=spec.tiling.overlap,
            batch_size=batch_size or spec.tiling.batch_size,
            device=dev,
            amp=amp,
            transform=transform,
        )

    return predict


def _stream_blocks(
    predict: TilePredictor,
    arr: Any,
    n_stack: int,
    edge: int,
    sink: Callable[[Block, np.ndarray], None],
    halo: int = HALO,
) -> Generator[TileDone | ChunkDone, None, None]:
    """Predict ``arr`` (model order) block by block into ``sink``; keep nothing."""
    spatial = arr.shape[n_stack + 1 :]
    items = list(np.ndindex(*arr.shape[:n_stack])) if n_stack else [()]
    blocks = [
        Block(idx, window, core)
        for idx in items
        for window, core in plan_blocks(spatial, edge, halo)
    ]
    for n, b in enumerate(blocks, 1):
        src = arr[b.stack] if b.stack else arr
        src = src[(slice(None), *b.window)]
        if hasattr(src, "compute"):  # one read per block, not one per tile
            src = np.asarray(src.compute())
        probs = yield from predict(src)
        sink(b, probs)
        yield ChunkDone(n, len(blocks))


def _predict_stack(
    predict: TilePredictor, arr: Any, n_stack: int, num_classes: int
) -> Generator[TileDone | ChunkDone, None, np.ndarray]:
    """Probabilities ``(classes, stack..., spatial...)`` of ``arr`` (model order), by slice."""
    stack_shape = tuple(arr.shape[:n_stack])
    items = list(np.ndindex(*stack_shape)) if stack_shape else [()]
    out = np.zeros((num_classes, *stack_shape, *arr.shape[n_stack + 1 :]), np.float32)
    for n, idx in enumerate(items, 1):
        src = arr[idx] if idx else arr
        out[(slice(None), *idx)] = yield from predict(src)
        if len(items) > 1:
            yield ChunkDone(n, len(items))
    return out


def for_many_images(model: Model) -> Model:
    """``model`` with its network copied and fused for inference once
    (:func:`~napari_unet.model.fused_for_inference`): predicting many images with it
    skips the copy each prediction makes (25 ms per image for the CPU network)."""
    return replace(model, network=fused_for_inference(model.network))


def predict_proba_iter(
    model: Model,
    image: Any,
    *,
    axes: str | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    batch_size: int | None = None,
    amp: bool = True,
    sink: Callable[[Block, np.ndarray], None] | None = None,
    block: int | None = None,
    zoom: float | None = None,
    z_scale: float | None = None,
) -> Generator[TileDone | ChunkDone, None, np.ndarray | None]:
    """Class probabilities ``(num_classes, *image shape without C)``; yields tiles.

    With ``sink``, nothing is accumulated: each 2D slice (or 3D volume) of a stack
    is cut into blocks of at most ``block`` pixels per spatial axis (default
    4096 in 2D, 256 in 3D), each predicted with a halo of :data:`HALO` pixels of
    real image around it, and ``sink(block, probabilities)`` receives the
    probabilities of the block's window (see :class:`Block`) as soon as they
    exist; the generator then returns None.  Memory stays bounded by the block
    size, so planes and stacks larger than memory stream to disk.  Intensity
    normalisation still uses the whole array's percentiles.

    ``zoom`` (2D models): each slice (each block, with ``sink``) is resized by it before
    the network and its probabilities are resized back (:func:`napari_unet.zoom.zoomed`);
    None: by the scale the model was trained at (``normalization.scale``, 1 for most).
    ``z_scale`` (3D models): each volume is resized along z by it, and back; None: by
    the model's (``normalization.z_scale``: near-isotropic voxels; 1 for most).
    """
    spec = model.config
    dims = spec.model.spatial_dims
    arr, layout = in_model_order(image, spec, axes)
    if sink is not None and not layout.streamable:
        raise ValueError(
            f"streaming prediction needs the stack axes before {''.join(layout.spatial)}, "
            f"got axes {layout.axes}"
        )
    n_stack = len(layout.stack)
    transform = _normaliser(arr, n_stack, spec)
    predict = _tile_predictor(model, transform, device, tile, batch_size, amp)
    zoom = spec.normalization.scale if zoom is None else zoom
    z_scale = spec.normalization.z_scale if z_scale is None else z_scale
    if zoom != 1.0:
        if dims != 2 or not zoom > 0:
            raise ValueError(f"zoom {zoom:g}: only a 2D model's predictions can be zoomed")
        predict = zoomed(predict, zoom, dims)
    if z_scale != 1.0:
        if dims != 3 or not z_scale > 0:
            raise ValueError(f"z_scale {z_scale:g}: only a 3D model's volumes are resized along z")
        predict = zoomed(predict, (z_scale, 1.0, 1.0), dims)
    if sink is not None:
        edge = block or (BLOCK_2D if dims == 2 else BLOCK_3D)
        halo = math.ceil(HALO / min(zoom, z_scale, 1.0))  # HALO pixels of the network's input
        yield from _stream_blocks(predict, arr, n_stack, edge, sink, halo)
        return None
    out = yield from _predict_stack(predict, arr, n_stack, spec.model.num_classes)
    return layout.to_image(out)


def predict_iter(
    model: Model,
    image: Any,
    *,
    instances: bool = False,
    axes: str | None = None,
    device: str | torch.device = "auto",
    tile: int | None = None,
    batch_size: int | None = None,
    amp: bool = True,
    seed_threshold: float | None = None,
    fg_threshold: float | None = None,
    min_size: int | None = None,
    split: float | None = None,
    zoom: float | str = "auto",
) -> Generator[TileDone | ChunkDone, None, np.ndarray]:
    """Class labels (or instance ids with ``instances=True``); yields tiles.

    Instances use the model's post-processing (``model.config.postprocess``, chosen
    when it was trained); ``seed_threshold``, ``fg_threshold``, ``min_size`` and
    ``split`` replace its values for this call.  ``zoom``: see :func:`predict_zoomed_iter`.
    """
    if instances:
        require_instances(model.config)  # before, not after, the prediction
    model = model.with_postprocess(
        seed_threshold=seed_threshold, fg_threshold=fg_threshold, min_size=min_size, split=split
    )
    probs, used = yield from predict_zoomed_iter(
        model, image, zoom=zoom, axes=axes, device=device, tile=tile, batch_size=batch_size, amp=amp
    )
    outputs = outputs_from_probs(
        probs, at_zoom(model.config, used), labels=not instances, instances=instances
    )
    return outputs["instances" if instances else "labels"]


def check_zoom(zoom: float | str) -> float | str:
    """``"auto"`` or a positive number, else a ValueError naming the value."""
    if zoom == "auto":
        return zoom
    try:
        value = float(zoom)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"zoom must be 'auto' or a positive number, got {zoom!r}")
    return value


def predict_zoomed_iter(
    model: Model, image: Any, *, zoom: float | str = "auto", **kwargs: Any
) -> Generator[TileDone | ChunkDone, None, tuple[np.ndarray, float]]:
    """Probabilities (as :func:`predict_proba_iter`) and the zoom they were predicted at.

    The zoom is that of the image as given: the model's scale
    (``normalization.scale``: its training images were resized by it; 1 for most)
    times ``zoom``.  ``zoom="auto"``: predicted at the model's scale; when the model
    knows the size of its objects and the objects found are much larger or smaller,
    predicted again at the zoom that brings them to it (:func:`napari_unet.zoom.zoom_steps`:
    a few passes at most, on a smaller image when zooming out).  A number: predicted
    once at that zoom of the model's scale (1: at the model's scale).
    """
    zoom = check_zoom(zoom)
    base = model.config.normalization.scale
    if zoom != "auto":
        probs = yield from predict_proba_iter(model, image, zoom=base * zoom, **kwargs)
        return probs, base * zoom
    probs = yield from predict_proba_iter(model, image, zoom=base, **kwargs)

    def predict_at(zoom: float) -> Generator[TileDone | ChunkDone, None, np.ndarray]:
        log.info("objects off the model's size: predicting again at zoom %.2f", zoom)
        return (yield from predict_proba_iter(model, image, zoom=zoom, **kwargs))

    return (yield from zoom_steps(predict_at, probs, model.config, base))


def at_zoom(spec: ModelSpec, zoom: float) -> ModelSpec:
    """``spec`` with its post-processing for probabilities predicted at ``zoom`` (and, for
    a 3D model, at its ``normalization.z_scale``) and resized back to the input."""
    dims = spec.model.spatial_dims
    z_scale = spec.normalization.z_scale  # 1 for 2D models
    if zoom == 1.0 and z_scale == 1.0:
        return spec
    return replace(spec, postprocess=spec.postprocess.at_zoom(zoom, dims, z_scale))


def predict(model: Model, image: Any, *, instances: bool = False, **kwargs: Any) -> np.ndarray:
    """Segment ``image``: class labels, or instance ids with ``instances=True``.

    Returns a numpy array with the image's shape (without a channel axis).
    """
    return drain(predict_iter(model, image, instances=instances, **kwargs))


def predict_proba(model: Model, image: Any, **kwargs: Any) -> np.ndarray:
    """Class probabilities, (num_classes, *image shape without C), float32."""
    return drain(predict_proba_iter(model, image, **kwargs))

import numpy as np
import pytest
import torch
from torch import nn

from napari_unet.config import ModelConfig
from napari_unet.model import UNet, border, valid_input_size, valid_output_size
from napari_unet.tiling import (
    DeviceImage,
    Normaliser,
    TileGrid,
    blend_window,
    predict_tiled_iter,
    read_window,
    tile_starts,
)


def drain(gen):
    n = []
    while True:
        try:
            n.append(next(gen))
        except StopIteration as stop:
            return stop.value, n


class Pointwise(nn.Module):
    """Per-pixel logits: tiling must reproduce the whole-image result exactly."""

    def __init__(self, cin=1, k=3):
        super().__init__()
        self.conv = nn.Conv2d(cin, k, 1)

    def forward(self, x):
        return self.conv(x) * 3


def test_tile_starts_cover_with_overlap():
    for size, out, ov in [(100, 32, 8), (32, 32, 4), (10, 32, 4), (1000, 256, 32)]:
        starts = tile_starts(size, out, ov)
        covered = np.zeros(max(size, out), bool)
        for s in starts:
            covered[s : s + out] = True
        assert covered[:size].all()
        assert starts[-1] + out >= size and starts[0] == 0
        if len(starts) > 1:
            assert max(np.diff(starts)) <= out - ov


def test_blend_window_ramps():
    w = blend_window((16, 16), (4, 4), torch.device("cpu")).numpy()
    assert w[8, 8] == 1 and w[0, 0] < w[2, 2] < w[8, 8]
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_read_window_mirrors_outside():
    src = np.arange(5 * 6, dtype=np.float32).reshape(1, 5, 6)
    win = read_window(src, [-2, -1], [3, 4])
    assert win.shape == (1, 5, 5)
    np.testing.assert_array_equal(win[0, 2:, 1:], src[0, :3, :4])
    np.testing.assert_array_equal(win[0, 1, 1:], src[0, 0, :4])  # symmetric mirror


def test_pointwise_tiled_equals_whole():
    torch.manual_seed(0)
    net = Pointwise().eval()
    cfg = ModelConfig(depth=2, width=2, num_classes=3)
    img = np.random.default_rng(0).random((1, 70, 45)).astype(np.float32)
    probs, events = drain(
        predict_tiled_iter(
            net, img, cfg, tile=(32, 32), overlap=0.25, batch_size=3, device=torch.device("cpu")
        )
    )
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(img)[None]), 1)[0].numpy()
    assert probs.shape == (3, 70, 45)
    np.testing.assert_allclose(probs, whole, atol=1e-5)
    assert events[-1].i == events[-1].n > 1


def test_valid_overlap_tile_equals_one_pass_on_mirrored_image():
    torch.manual_seed(0)
    cfg = ModelConfig(depth=2, width=2, padding="valid", num_classes=2)
    net = UNet.from_config(cfg).eval()
    b = border(cfg)
    size_in = valid_input_size(90, 2)
    size_out = valid_output_size(size_in, 2)
    img = np.random.default_rng(1).random((1, size_out, size_out)).astype(np.float32)
    padded = np.pad(img, [(0, 0), (b, b), (b, b)], mode="symmetric")
    with torch.no_grad():
        whole = torch.softmax(net(torch.from_numpy(padded)[None]), 1)[0].numpy()
    probs, _ = drain(
        predict_tiled_iter(
            net, img, cfg, tile=(24, 24), overlap=0.25, batch_size=4, device=torch.device("cpu")
        )
    )
    assert probs.shape == (2, size_out, size_out)
    np.testing.assert_allclose(probs, whole, atol=1e-4)


def test_lazy_sources_match_numpy():
    import dask.array as da
    import zarr

    net = Pointwise().eval()
    cfg = ModelConfig(depth=2, width=2, num_classes=3)
    img = np.random.default_rng(2).random((1, 50, 60)).astype(np.float32)
    ref, _ = drain(predict_tiled_iter(net, img, cfg, tile=(32, 32), device=torch.device("cpu")))
    z = zarr.zeros(img.shape, chunks=(1, 16, 16), dtype="f4")
    z[...] = img
    for src in (da.from_array(img, chunks=(1, 20, 20)), z):
        out, _ = drain(predict_tiled_iter(net, src, cfg, tile=(32, 32), device=torch.device("cpu")))
        np.testing.assert_allclose(out, ref, atol=1e-6)


def test_3d_tiles():
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=3, depth=1, width=2, num_classes=2)
    net = UNet.from_config(cfg).eval()
    img = np.random.default_rng(3).random((1, 10, 40, 36)).astype(np.float32)
    probs, events = drain(
        predict_tiled_iter(net, img, cfg, tile=(8, 16, 16), device=torch.device("cpu"))
    )
    assert probs.shape == (2, 10, 40, 36)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    assert events[-1].n > 1


class OutOfMemoryAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.sizes = inner, limit, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_halves_the_tile_batch(caplog):
    torch.manual_seed(0)
    inner = Pointwise().eval()
    net = OutOfMemoryAbove(inner, limit=2)
    cfg = ModelConfig(depth=2, width=2, num_classes=3)
    img = np.random.default_rng(4).random((1, 96, 96)).astype(np.float32)
    probs, events = drain(
        predict_tiled_iter(
            net, img, cfg, tile=(32, 32), overlap=0.25, batch_size=8, device=torch.device("cpu")
        )
    )
    ref, _ = drain(
        predict_tiled_iter(
            inner, img, cfg, tile=(32, 32), overlap=0.25, batch_size=8, device=torch.device("cpu")
        )
    )
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    assert net.sizes[:3] == [8, 4, 2] and max(net.sizes[3:]) <= 2
    assert "out of memory" in caplog.text
    assert events[-1].i == events[-1].n


@pytest.mark.parametrize(
    "dims, padding, dtype",
    [(2, "same", np.uint8), (2, "valid", np.uint16), (3, "same", np.float64), (2, "same", bool)],
)
def test_device_image_gives_the_host_tiles_probabilities(dims, padding, dtype):
    """The whole image prepared once on the device (mirrored, normalised there, tiles cut
    there) gives what reading, padding and normalising each tile on the host gives."""
    torch.manual_seed(0)
    cfg = ModelConfig(spatial_dims=dims, depth=2, width=2, padding=padding, num_classes=3)
    net = UNet.from_config(cfg).eval()
    rng = np.random.default_rng(5)
    shape = (1, 12, 37, 29) if dims == 3 else (1, 83, 61)
    img = rng.random(shape) * (2 if dtype is bool else 3000 if dtype is np.uint16 else 200)
    img = img.astype(dtype)
    norm = Normaliser(np.array([7.0], np.float32), np.array([151.5], np.float32))
    tile = (8, 16, 16) if dims == 3 else (24, 24)
    kwargs = dict(tile=tile, overlap=0.25, batch_size=3, device=torch.device("cpu"))
    host, events = drain(predict_tiled_iter(net, img, cfg, transform=norm, whole=False, **kwargs))
    device, _ = drain(predict_tiled_iter(net, img, cfg, transform=norm, whole=True, **kwargs))
    assert host.shape == device.shape == (3, *shape[1:]) and events[-1].n > 3
    np.testing.assert_allclose(device, host, atol=1e-6)
    grid = TileGrid.plan(shape[1:], tile, cfg, 0.25)
    on_device = DeviceImage(img, grid, norm, torch.device("cpu")).tiles(grid.starts[-2:])
    on_host = [norm(grid.read(img, st)) for st in grid.starts[-2:]]
    np.testing.assert_array_equal(on_device.numpy(), np.stack(on_host))


def test_normaliser_same_on_numpy_and_tensors():
    norm = Normaliser(np.array([1.0, -2.0], np.float32), np.array([3.0, 0.5], np.float32))
    block = np.array([[[0.0, np.nan], [4.0, np.inf]], [[-2.0, 1.0], [-np.inf, 7.0]]])
    expected = np.array([[[-1 / 3, 0], [1, 0]], [[0, 6], [0, 18]]], np.float32)
    np.testing.assert_allclose(norm(block), expected, rtol=1e-6)
    np.testing.assert_array_equal(norm.tensor(torch.from_numpy(block)).numpy(), norm(block))


def test_only_arrays_in_memory_that_fit_go_to_the_device_whole(monkeypatch):
    import dask.array as da

    cfg = ModelConfig(depth=2, width=2, num_classes=3)
    img = np.zeros((1, 64, 64), np.float32)
    grid = TileGrid.plan(img.shape[1:], (32, 32), cfg, 0.25)
    cpu = torch.device("cpu")
    norm = Normaliser(np.zeros(1, np.float32), np.ones(1, np.float32))
    assert DeviceImage.fits(img, grid, norm, cpu) and DeviceImage.fits(img, grid, None, cpu)
    assert not DeviceImage.fits(da.from_array(img), grid, norm, cpu)  # lazy: tile by tile
    assert not DeviceImage.fits(img, grid, lambda b: b * 2, cpu)  # a transform only for numpy
    monkeypatch.setattr("napari_unet.tiling.WHOLE_IMAGE_CPU_BYTES", 4 * 64 * 64)
    assert not DeviceImage.fits(img, grid, norm, cpu)  # mirrored, it would not fit

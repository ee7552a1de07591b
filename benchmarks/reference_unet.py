"""The reference that issue 2 names: a plain PyTorch U-Net, 3-class target, watershed.

What "plain" means here (the usual first attempt, written independently of the
napari-unet training pipeline, sharing only the network class):

- targets: background / interior / boundary from ``skimage.segmentation.find_boundaries``
  (mode "inner");
- uniform random 256x256 crops (images padded to at least that), batch 4, no augmentation,
  no bias towards labeled pixels, no validation split;
- AdamW at a constant 1e-3, cross-entropy, float32;
- prediction on the whole image padded to a multiple of 16; instances by watershed of the
  interior probability from interior > 0.5 seeds, inside the non-background argmax.

Width 16 on the CPU and 32 on a GPU, as in the issue's description.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries, watershed

from napari_unet.model import UNet

CROP = 256


def three_class(labels: np.ndarray) -> np.ndarray:
    target = (labels > 0).astype(np.int64)
    target[find_boundaries(labels, mode="inner")] = 2
    return target


def _norm(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    if image.ndim == 3:
        image = image[..., :3].mean(-1)
    lo, hi = np.percentile(image, [1, 99.8])
    return ((image - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _pad_to(a: np.ndarray, size: int, mode: str) -> np.ndarray:
    py, px = max(0, size - a.shape[0]), max(0, size - a.shape[1])
    return np.pad(a, ((0, py), (0, px)), mode=mode) if py or px else a


def train_reference(images, labels, seconds: float, device: str = "cpu", seed: int = 0):
    """Train for ``seconds``; returns (network, steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    width = 32 if dev.type == "cuda" else 16
    data = [
        (_pad_to(_norm(im), CROP, "reflect"), _pad_to(three_class(lab), CROP, "constant"))
        for im, lab in zip(images, labels, strict=True)
    ]
    net = UNet(spatial_dims=2, in_channels=1, num_classes=3, depth=4, width=width).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    steps = 0
    while time.perf_counter() - t0 < seconds:
        xs, ys = [], []
        for _ in range(4):
            im, tg = data[rng.integers(len(data))]
            y0 = rng.integers(im.shape[0] - CROP + 1)
            x0 = rng.integers(im.shape[1] - CROP + 1)
            xs.append(im[y0 : y0 + CROP, x0 : x0 + CROP])
            ys.append(tg[y0 : y0 + CROP, x0 : x0 + CROP])
        x = torch.from_numpy(np.stack(xs)[:, None]).to(dev)
        y = torch.from_numpy(np.stack(ys)).to(dev)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return net.eval(), steps


@torch.no_grad()
def predict_reference(net: UNet, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    img = _norm(image)
    h, w = img.shape
    ph, pw = (-h) % 16, (-w) % 16
    x = np.pad(img, ((0, ph), (0, pw)), mode="reflect")
    probs = torch.softmax(net(torch.from_numpy(x)[None, None].to(device)), 1)[0, :, :h, :w]
    probs = probs.cpu().numpy()
    fg = probs.argmax(0) > 0
    seeds, _ = ndi.label(probs[1] > 0.5)
    return watershed(-probs[1], seeds, mask=fg)

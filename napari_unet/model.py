"""The seed U-Net (Ronneberger, Fischer & Brox 2015) for 2D and 3D.

Contracting path: per level two 3x3 convolutions, each followed by batch
normalisation (optional) and ReLU, then 2x2 max pooling.  Expansive path:
2x2 transposed convolution, concatenation with the (centre-cropped) skip
features, two 3x3 convolutions.  A final 1x1 convolution maps to the classes.
With ``depth=4`` and ``width=64`` this is the paper's 23-layer network.

``padding="same"`` keeps the output the size of the input (inputs must be
divisible by ``2**depth``); ``padding="valid"`` is the paper's unpadded
network whose output is smaller than the input by a constant border.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import ModelConfig


def _conv_block(dims: int, cin: int, cout: int, pad: int, batch_norm: bool) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(conv(c_in, cout, kernel_size=3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(norm(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """U-Net for 2D (N, C, Y, X) or 3D (N, C, Z, Y, X) inputs.

    Parameters
    ----------
    spatial_dims
        2 or 3.
    in_channels, num_classes
        Input channels and output classes (logits, one channel per class).
    depth
        Number of 2x pooling steps (the paper uses 4).
    width
        Feature channels of the first level; doubled at every level.
    padding
        ``"same"`` or ``"valid"``.
    batch_norm
        Add batch normalisation after every 3x3 convolution.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        width: int = 64,
        padding: str = "same",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        # ModelConfig validates every argument and names the bad one.
        self.config = ModelConfig(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            depth=depth,
            width=width,
            padding=padding,
            batch_norm=batch_norm,
        )
        dims = spatial_dims
        pad = 1 if padding == "same" else 0
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        chans = [width * 2**i for i in range(depth + 1)]

        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_conv_block(dims, cin, c, pad, batch_norm))
            cin = c
        self.pool = pool(kernel_size=2, stride=2)
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(up(chans[level + 1], chans[level], kernel_size=2, stride=2))
            self.up_blocks.append(
                _conv_block(dims, 2 * chans[level], chans[level], pad, batch_norm)
            )
        self.head = conv(chans[0], num_classes, kernel_size=1)

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNet:
        return cls(**{f: getattr(config, f) for f in config.__dataclass_fields__})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self.config.spatial_dims
        if x.ndim != dims + 2:
            raise ValueError(
                f"UNet(spatial_dims={dims}) expects a {dims + 2}D tensor (N, C, ...), "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet expects {self.config.in_channels} input channels, got {x.shape[1]}"
            )
        check_input_size(tuple(x.shape[2:]), self.config)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for upconv, block in zip(self.up, self.up_blocks, strict=True):
            x = upconv(x)
            skip = skips.pop()
            if skip.shape[2:] != x.shape[2:]:
                skip = _center_crop(skip, tuple(x.shape[2:]))
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


FUSED = "fused_for_inference"  # attribute set on the copies fused_for_inference makes


def fused_for_inference(network: UNet) -> UNet:
    """A copy of ``network`` in eval mode with each batch norm folded into its convolution.

    Same outputs (to float rounding) for less work: one convolution instead of a
    convolution and a normalisation pass per layer (about a fifth of CPU
    inference time for the small networks).  The original is left untouched, so a
    model that is still training can be predicted with.  A network this function
    returned is returned as it is: fuse once, predict many images
    (:func:`napari_unet.inference.for_many_images`).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if getattr(network, FUSED, False):
        return network.eval()
    fused = copy.deepcopy(network).eval()
    setattr(fused, FUSED, True)
    if not network.config.batch_norm:
        return fused
    for blocks in (fused.down, fused.up_blocks):
        for i, block in enumerate(blocks):
            layers = list(block)
            out: list[nn.Module] = []
            for layer in layers:
                if isinstance(layer, nn.BatchNorm2d | nn.BatchNorm3d):
                    out[-1] = fuse_conv_bn_eval(out[-1], layer)
                else:
                    out.append(layer)
            blocks[i] = nn.Sequential(*out)
    return fused


def valid_output_size(size: int, depth: int) -> int | None:
    """Output edge of a ``valid`` U-Net for input edge ``size``; None if invalid."""
    s = size
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s <= 0:
            return None
    return s


def valid_input_size(min_size: int, depth: int) -> int:
    """Smallest valid input edge >= ``min_size`` for a ``valid`` U-Net."""
    s = max(int(min_size), 1)
    while valid_output_size(s, depth) is None:
        s += 1
    return s


def border(config: ModelConfig) -> int:
    """Pixels lost on each side by a ``valid`` network (0 for ``same``)."""
    if config.padding == "same":
        return 0
    s = valid_input_size(1, config.depth)
    out = valid_output_size(s, config.depth)
    assert out is not None
    return (s - out) // 2


def check_input_size(shape: tuple[int, ...], config: ModelConfig) -> None:
    """Raise a ValueError naming the axis if ``shape`` cannot pass the network."""
    for axis, size in enumerate(shape):
        if config.padding == "same":
            step = 2**config.depth
            if size % step:
                raise ValueError(
                    f"input size {size} on spatial axis {axis} must be divisible by "
                    f"2**depth = {step} for a 'same' U-Net"
                )
        elif valid_output_size(size, config.depth) is None:
            raise ValueError(
                f"input size {size} on spatial axis {axis} is not valid for a 'valid' U-Net "
                f"of depth {config.depth}; the next valid size is "
                f"{valid_input_size(size, config.depth)}"
            )

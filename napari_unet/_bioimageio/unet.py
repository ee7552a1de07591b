"""napari-unet's U-Net as a standalone file for bioimage.io packages (torch only).

The same modules under the same names as :class:`napari_unet.model.UNet` (so its
``state_dict`` loads as it is), and a softmax over the classes at the end: the
package's output is class probabilities.  A ``valid`` network (the paper's,
unpadded) first mirrors its input by its border on each side, as napari-unet's
tiling does at image edges, so that its output has the size of its input.

It imports nothing of napari-unet, so that bioimage.io consumers
(bioimageio.core, deepImageJ's converters, BiaPy) can build it from the package
alone.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(dims: int, cin: int, cout: int, pad: int, batch_norm: bool) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(conv(c_in, cout, kernel_size=3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(norm(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def valid_border(depth: int) -> int:
    """Pixels a ``valid`` U-Net of ``depth`` loses on each side (92 at depth 4)."""
    return 6 * 2**depth - 4


def _mirrored(x: torch.Tensor, border: int) -> torch.Tensor:
    """``x`` with ``border`` pixels mirrored on each side of each spatial axis (numpy's
    ``symmetric`` padding: the edge pixel repeats)."""
    for dim in range(2, x.dim()):
        n = x.shape[dim]
        first = x.narrow(dim, 0, border).flip([dim])
        last = x.narrow(dim, n - border, border).flip([dim])
        x = torch.cat([first, x, last], dim)
    return x


class NapariUNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) returning softmax class probabilities."""

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
        dims = spatial_dims
        pad = 1 if padding == "same" else 0
        self.border = 0 if padding == "same" else valid_border(depth)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans:
            self.down.append(_block(dims, cin, c, pad, batch_norm))
            cin = c
        self.pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(kernel_size=2, stride=2)
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(up(chans[level + 1], chans[level], kernel_size=2, stride=2))
            self.up_blocks.append(_block(dims, 2 * chans[level], chans[level], pad, batch_norm))
        self.head = conv(chans[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.border:
            x = _mirrored(x, self.border)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = self.pool(x)
        for upconv, block in zip(self.up, self.up_blocks, strict=True):
            x = upconv(x)
            skip = skips.pop()
            if skip.shape[2:] != x.shape[2:]:  # "valid" padding: centre crop
                start = [(a - b) // 2 for a, b in zip(skip.shape[2:], x.shape[2:], strict=True)]
                if x.ndim == 4:
                    skip = skip[
                        :, :, start[0] : start[0] + x.shape[2], start[1] : start[1] + x.shape[3]
                    ]
                else:
                    skip = skip[
                        :,
                        :,
                        start[0] : start[0] + x.shape[2],
                        start[1] : start[1] + x.shape[3],
                        start[2] : start[2] + x.shape[4],
                    ]
            x = block(torch.cat([skip, x], dim=1))
        return torch.softmax(self.head(x), dim=1)

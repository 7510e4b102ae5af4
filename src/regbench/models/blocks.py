"""Layers shared by the registration networks (2D and 3D)."""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_nd(ndim: int):
    """Return ``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[ndim]


class ConvBlock(nn.Module):
    """Convolution (kernel 3, padding 1) followed by LeakyReLU(0.2): the VoxelMorph building block.

    The activation runs in place on the convolution's output, which nothing else holds (the convolution's
    backward needs its input, not its output): the same values and gradients as an out-of-place LeakyReLU
    (its backward tests the sign of the output, which equals the sign of the input for a positive slope),
    without allocating a second feature map per block.
    """

    def __init__(self, ndim: int, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv = conv_nd(ndim)(in_ch, out_ch, kernel_size=3, stride=stride, padding=1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def flow_head(ndim: int, in_ch: int) -> nn.Module:
    """3x3 convolution to ``ndim`` channels initialised near zero (N(0, 1e-5)), so training starts at identity."""
    conv = conv_nd(ndim)(in_ch, ndim, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, mean=0.0, std=1e-5)
    nn.init.zeros_(conv.bias)
    return conv

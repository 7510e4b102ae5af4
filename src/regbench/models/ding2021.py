"""MMRegNet (Ding, Li, Huang and Zhuang, "Unsupervised multi-modality registration network based on spatially
encoded gradient information", STACOM/MICCAI 2021, arXiv:2105.07392; ../shared/papers/002_*.txt).

Sec. 2, Eq. 1-3: a U-shaped network takes ``(I_m, I_f)`` and predicts, in one pass, a forward displacement
field ``U`` (pulls the moving image onto the fixed grid, ``(I_m o U)(x) = I_m(x + U(x))``) and a backward field
``V`` (pulls the fixed image onto the moving grid). The paper only says "U-shape convolution neural network
[5]" (Ding et al., MICCAI 2020). The layout here follows the authors' released TensorFlow code
(``proj/learn2reg/mmreg.py``, a LabelReg-style residual U-Net, Hu et al. MedIA 2018) as read for facts, not
copied:

* encoder: four levels, each a convolution (7^3 kernel at the first level, 3^3 after) followed by a residual
  block of two 3^3 convolutions, whose output is the skip, then 2x max pooling; widths ``c, 2c, 4c, 8c``;
* bottleneck: a 3^3 convolution to ``16c`` channels at 1/16 resolution;
* decoder: four levels, each a stride-2 transposed convolution, addition of the skip, and a residual block;
* the fields: at each of the five decoder resolutions a 3^3 convolution predicts a displacement "summand",
  linearly upsampled to full size; ``U`` is the sum of its five summands, ``V`` the sum of five others from
  separate heads on the same features (the code's ``ddf_summand`` x 2). Every summand is a displacement in
  full-resolution voxels: it is interpolated to full size like an image, values unchanged (the code's
  ``resize_volume``), not rescaled with the grid. Rescaling (x 2^k at level k, up to x16) amplified the coarse
  heads' effective step and made training diverge at Adam lr 1e-3 (fields of 1e2-1e5 voxels; docs/ding2021.md).

Open choices (ours): LeakyReLU(0.2) instead of the code's batch norm + ReLU (batch size 1; the paper is
silent), the heads initialised near zero (N(0, 1e-5), as VoxelMorph's flow head) so training starts at
identity, and ``c = 16`` by default (the code's ``num_channel_initial`` is a command-line
option whose value the paper does not give).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from ..metrics import inverse_residual  # noqa: F401  (re-exported: the U/V near-inverse check, Sec. 2)
from .blocks import conv_nd


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class _ConvAct(nn.Sequential):
    def __init__(self, ndim: int, cin: int, cout: int, kernel: int = 3):
        super().__init__(conv_nd(ndim)(cin, cout, kernel, padding=kernel // 2), _act())


class _Residual(nn.Module):
    """``x + conv(act(conv(x)))``, then LeakyReLU: two 3^3 convolutions with an identity shortcut."""

    def __init__(self, ndim: int, ch: int):
        super().__init__()
        conv = conv_nd(ndim)
        self.a, self.b, self.act = conv(ch, ch, 3, padding=1), conv(ch, ch, 3, padding=1), _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.b(self.act(self.a(x))))


def _head(ndim: int, cin: int) -> nn.Module:
    conv = conv_nd(ndim)(cin, ndim, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, mean=0.0, std=1e-5)
    nn.init.zeros_(conv.bias)
    return conv


class MMRegNet(nn.Module):
    """MMRegNet: ``(moving, fixed) -> U, V`` in one pass (Ding et al. 2021, Eq. 1-3).

    Args:
        ndim: 2 or 3.
        channels: width ``c`` of the first level (levels ``c, 2c, 4c, 8c``, bottleneck ``16c``).
        in_channels: image channels per input (moving and fixed each).
        ddf_levels: decoder levels with a field summand (0 = full resolution ... 4 = the bottleneck; the code
            uses all five).

    Forward ``moving``, ``fixed``: ``(B, in_channels, *spatial)``, same shape, spatial sizes divisible by 16.
    Returns a dict with ``ddf`` = ``U`` ``(B, ndim, *spatial)`` (voxels, fixed grid), ``warped`` = ``I_m o U``,
    ``ddf_inv`` = ``V`` (voxels, moving grid) and ``warped_inv`` = ``I_f o V``: the keys of
    :class:`regbench.models.wrappers.Bidirectional`, so the ``cycle`` (Eq. 9) and ``diffusion`` (Eq. 10, with
    ``inputs: {field: ddf_inv}`` for ``V``) terms read them.

    Raises:
        ValueError: ``ndim`` not 2 or 3, empty or out-of-range ``ddf_levels``; in ``forward``, inputs of different
            shapes or a spatial size not divisible by 16.
    """

    def __init__(self, ndim: int = 3, channels: int = 16, in_channels: int = 1,
                 ddf_levels: tuple[int, ...] = (0, 1, 2, 3, 4)):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        levels = tuple(sorted(set(int(v) for v in ddf_levels)))
        if not levels or levels[0] < 0 or levels[-1] > 4:
            raise ValueError(f"ddf_levels must be a non-empty subset of 0..4, got {ddf_levels}")
        self.ndim, self.levels = ndim, levels
        nc = [channels * 2 ** i for i in range(5)]
        self.down_conv = nn.ModuleList(
            _ConvAct(ndim, 2 * in_channels if i == 0 else nc[i - 1], nc[i], kernel=7 if i == 0 else 3)
            for i in range(4))
        self.down_res = nn.ModuleList(_Residual(ndim, nc[i]) for i in range(4))
        self.pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[ndim](2)
        self.deep = _ConvAct(ndim, nc[3], nc[4])
        tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
        # up[j] goes from level j+1 (nc[j+1] channels) to level j (nc[j]); j = 3, 2, 1, 0
        self.up = nn.ModuleList(tconv(nc[j + 1], nc[j], kernel_size=2, stride=2) for j in range(4))
        self.up_res = nn.ModuleList(_Residual(ndim, nc[j]) for j in range(4))
        self.heads_u = nn.ModuleDict({str(k): _head(ndim, nc[k]) for k in levels})
        self.heads_v = nn.ModuleDict({str(k): _head(ndim, nc[k]) for k in levels})

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a shape")
        size = tuple(fixed.shape[2:])
        if any(s % 16 for s in size):
            raise ValueError(f"spatial sizes {size} must be divisible by 16 for MMRegNet")
        h = torch.cat([moving, fixed], dim=1)
        skips = []
        for conv, res in zip(self.down_conv, self.down_res):
            s = res(conv(h))
            skips.append(s)
            h = self.pool(s)
        feats = {4: self.deep(h)}
        h = feats[4]
        for j in (3, 2, 1, 0):
            h = self.up_res[j](F.leaky_relu(self.up[j](h), 0.2) + skips[j])
            feats[j] = h
        u = sum(self._full(self.heads_u[str(k)](feats[k]), size) for k in self.levels)
        v = sum(self._full(self.heads_v[str(k)](feats[k]), size) for k in self.levels)
        return {"ddf": u, "warped": spatial.warp(moving, u), "ddf_inv": v, "warped_inv": spatial.warp(fixed, v)}

    @staticmethod
    def _full(summand: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        """A level's summand on the full grid, its values unchanged (already full-resolution voxels).

        The authors' code (``ddf_summand``: the head's output resized by ``resize_volume``, an image resize)
        interpolates each coarse summand like an image and adds it as is: every head predicts a displacement in
        full-resolution voxels (``U = sum_k up(h_k)``, the fields of Eq. 2-3). Rescaling the values with the grid
        (:func:`regbench.spatial.resize_field`, x2 ... x16 for levels 1-4) made the coarse heads 2-16 times more
        sensitive and diverged training at lr 1e-3 (docs/ding2021.md, "Divergence of the first demo run").
        """
        if tuple(summand.shape[2:]) == size:
            return summand
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[summand.dim() - 2]
        return F.interpolate(summand, size=size, mode=mode, align_corners=False)

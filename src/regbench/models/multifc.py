"""Multi-FC: Duan, Yuan, Gong, Fu, Yang, Chen and Zheng, "Adversarial learning for deformable registration of
brain MR image using a multi-scale fully convolutional network", Biomedical Signal Processing and Control 53
(2019) 101562 (a baseline of Zhu et al. 2021, Tables II-III, "Multi-FC").

What the sources at hand say (the paper's abstract and highlights; its body, figures and any code are not
available here): a fully convolutional network (the generator) regresses the dense 3D deformation field in one
shot from the image pair; it is "a novel multi-scale frame to capture the complementary multi-scale image
features"; a discriminator learned at the same time judges whether the registered pair is well aligned and
its loss further updates the FCN (adversarial training), unsupervised, trained on ADNI; 0.74 s per 3D pair
(Zhu et al. report 1.34 s on Mindboggle-101, Table III). Everything below that goes beyond this is a
reconstruction, marked *ours*.

Generator (:class:`MultiFCNet`, *ours* in every width and layer):

* the pair (moving, fixed; 2 channels) at ``scales`` resolutions: full, 1/2, 1/4 (average pooling);
* one fully convolutional branch per resolution (no weight sharing), each three 3x3(x3) convolutions with
  LeakyReLU(0.2) of ``branch`` widths (16, 32, 32), the second with stride 2: branch ``k`` sees the images at
  ``1/2^k`` and ends at ``1/2^(k+1)``, so the coarse branches see wide context and the fine one detail;
* fusion at 1/2 resolution: the branch outputs upsampled (linear) to 1/2 and concatenated, two convolutions
  (``fusion`` widths 64, 32), upsampled x2 to full resolution, concatenated with the first full-resolution
  features of branch 0, one convolution (16), and VoxelMorph's flow head (3x3(x3), N(0, 1e-5) initial weights:
  training starts at the identity). The field is a displacement in voxels (not integrated).

Discriminator (:class:`MultiFCCritic`, registered as critic ``multifc_critic``, *ours*): the pair (fixed,
warped) concatenated, four levels of two 3x3(x3) convolutions (stride 1, then stride 2) with LeakyReLU(0.2)
and widths (16, 32, 64, 64), global average pooling (any grid) and a linear layer to one logit (its sigmoid,
the probability that the pair is well registered, is folded into the BCE of the loss terms).

Loss (*ours* in form and weights, by config; see ``docs/baselines_zhu2021.md``): generator ``lncc`` (window 9)
+ ``diffusion`` (1.0) + ``adversarial`` (0.1, the non-saturating ``BCE(D(F, W), 1)``); critic ``critic_bce``
with the fixed image itself as the aligned ("real") pair (``alpha = 1``; ``alpha < 1`` gives Fan et al.'s
softer reference). One critic update per generator update (:mod:`regbench.engine`).

Parameter counts of this build (3D): generator 370,579, critic 436,737 (2D: 123,618 and 145,857); no
published counts are at hand.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import ConvBlock, conv_nd, flow_head


class MultiFCNet(nn.Module):
    """The multi-scale fully convolutional registration network (generator; see the module docstring).

    Args:
        ndim: 3 (the paper's); 2 works for tests.
        scales: number of input resolutions (full, 1/2, 1/4, ...; ours: 3).
        branch: widths of the three convolutions of each branch (ours: 16, 32, 32).
        fusion: widths of the two fusion convolutions at 1/2 resolution (ours: 64, 32).
        head: width of the full-resolution convolution before the flow head (ours: 16).
        in_channels: channels per input image.

    Forward ``moving``, ``fixed``: ``(B, C, *spatial)`` on one grid, spatial sizes divisible by ``2^scales``.
    Returns ``ddf`` ``(B, ndim, *spatial)`` in voxels and ``warped``.
    """

    def __init__(self, ndim: int = 3, scales: int = 3, branch: tuple[int, int, int] = (16, 32, 32),
                 fusion: tuple[int, int] = (64, 32), head: int = 16, in_channels: int = 1):
        super().__init__()
        if scales < 1 or len(branch) != 3 or len(fusion) != 2:
            raise ValueError(f"need scales >= 1, 3 branch widths and 2 fusion widths; got {scales}, {branch}, {fusion}")
        self.ndim, self.scales = ndim, int(scales)
        b0, b1, b2 = (int(w) for w in branch)
        self.first = nn.ModuleList(ConvBlock(ndim, 2 * in_channels, b0) for _ in range(self.scales))
        self.rest = nn.ModuleList(nn.Sequential(ConvBlock(ndim, b0, b1, stride=2), ConvBlock(ndim, b1, b2))
                                  for _ in range(self.scales))
        self.fuse = nn.Sequential(ConvBlock(ndim, self.scales * b2, fusion[0]), ConvBlock(ndim, fusion[0], fusion[1]))
        self.full = ConvBlock(ndim, fusion[1] + b0, head)
        self.flow = flow_head(ndim, head)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid")
        shape = tuple(fixed.shape[2:])
        if any(s % 2 ** self.scales for s in shape):
            raise ValueError(f"spatial sizes {shape} must be divisible by {2 ** self.scales} for Multi-FC")
        mode = "trilinear" if self.ndim == 3 else "bilinear"
        pool = F.avg_pool3d if self.ndim == 3 else F.avg_pool2d
        pair = torch.cat([moving, fixed], dim=1)
        half = tuple(s // 2 for s in shape)
        feats, fine = [], None
        for k in range(self.scales):
            x = pair if k == 0 else pool(pair, 2 ** k)
            y = self.first[k](x)
            if k == 0:
                fine = y
            y = self.rest[k](y)
            feats.append(y if k == 0 else F.interpolate(y, size=half, mode=mode, align_corners=False))
        y = self.fuse(torch.cat(feats, dim=1))
        y = F.interpolate(y, size=shape, mode=mode, align_corners=False)
        ddf = self.flow(self.full(torch.cat([y, fine], dim=1)))
        return {"ddf": ddf, "warped": spatial.warp(moving, ddf)}


class MultiFCCritic(nn.Module):
    """Multi-FC's discriminator (ours, see the module docstring): ``(B, in_channels, *spatial) -> (B, 1)`` logits.

    Args:
        ndim: 2 or 3.
        in_channels: channels of the concatenated pair (2 for single-channel images).
        features: widths of the levels (ours: 16, 32, 64, 64); each level is a stride-1 and a stride-2
            3x3(x3) convolution, both followed by LeakyReLU(0.2).
    """

    def __init__(self, ndim: int, in_channels: int = 2, features: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        conv, layers, cin = conv_nd(ndim), [], in_channels
        for w in features:
            layers += [conv(cin, w, 3, padding=1), nn.LeakyReLU(0.2),
                       conv(w, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pair).flatten(2).mean(-1))

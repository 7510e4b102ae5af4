"""FAIM: Kuang and Schmah, "FAIM - a ConvNet method for unsupervised 3D medical image registration", MLMI
2019, LNCS 11861, pp. 646-654 (a baseline of Zhu et al. 2021, Tables II-III).

Sources: the paper's abstract (a network "with a different architecture than the popular U-net" that predicts
the displacement field from the full pair, with fewer trainable parameters than VoxelMorph, and a penalty on
negative Jacobian determinants) and the authors' released Keras code (``dykuang/Medical-image-registration``:
``source/architecture.py: SDN_incept``, the network their ``source/train.py`` trains and whose weights they
publish; read, not copied). The paper's text is not at hand here, so its sections and equations are cited by
content. The released network: an inception-like first layer, strided convolutions instead of pooling,
transposed convolutions for upsampling and skip connections by addition instead of concatenation:

* input: the moving and fixed images concatenated (2 channels);
* inception block ``z1``: four parallel linear convolutions ``2 -> 8`` with kernels 11, 7, 5 and 2
  ("same" padding), concatenated (32 channels) and a per-channel PReLU;
* ``z2 = PReLU(conv3 stride 2, "valid")(z1)`` (32); ``z3 = PReLU(conv3 stride 2, "valid")(conv3(z2))`` (32);
* bottleneck: ``z3 + conv2(z3)`` (2x2(x2) kernel, "same", linear);
* up 1: ``PReLU(conv3(tconv3 stride 2, "valid"))`` (32) ``+ z2``; up 2: the same ``+ z1``;
* head: a linear 3x3(x3) convolution to ``ndim`` channels: the displacement in voxels.

Every convolution has 32 filters (8 per inception branch) and a bias; the activations are PReLUs with one
slope per channel, initialised to 0 (Keras's default) so the network starts as a ReLU network.

Parameter count of this build (3D): 233,683, equal to the count of the authors' released FAIM weights
(``weights/SDN3d_weights_incept0.h5`` and ``lpba_incept0.h5``: 233,683 numbers each). The paper's own count
is not in the sources at hand.

Loss, by config (:mod:`regbench.terms`): ``L = -CC(F, warped) + alpha ||grad u||^2 + beta P(J)``
with local squared CC, window 9 (``lncc``; the code returns ``1 - CC``, the same up to a constant), the
diffusion term ``mean (du/dx)^2`` in voxels (``diffusion``) and the negative-Jacobian penalty
``P = sum_p 0.5 (|J(p)| - J(p))`` by forward differences (``neg_jacobian`` with ``reduction: sum``). Released
settings (``train.py``): ``alpha = 1``, ``beta = 1e-3``, Adam lr 1e-4 with Keras ``decay = 1e-4``
(``lr / (1 + 1e-4 t)``), batch 2, 10 epochs over all ordered training pairs. The paper varies ``beta`` to trade
accuracy for fewer foldings. See ``docs/baselines_zhu2021.md``.

Choices the description leaves open, marked *ours*:

* *ours*: the head is initialised from N(0, ``flow_init_std`` = 1e-5) (regbench's flow heads; the code uses
  N(0, 1e-2), which ``flow_init_std: 0.01`` restores); other layers keep PyTorch's default initialisation
  (the code: Keras's Glorot-uniform kernels and zero biases).
* *ours*: after each "valid" transposed convolution the result is zero-padded (or cropped) at the far end of
  each axis to the size of the skip it is added to. On even sizes this is the code's fixed
  ``ZeroPadding3D(((0, 1), (0, 1), (0, 1)))`` of up 2 (and nothing for up 1); it also makes odd sizes work.
* "same" padding of even kernels (2) is asymmetric as in TensorFlow: nothing before, one voxel after.
* 2D: the same network with 2D layers (the paper is 3D only).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import conv_nd


class SameConv(nn.Module):
    """Convolution with TensorFlow's "same" padding (``k - 1`` voxels per axis, the extra one after), stride 1."""

    def __init__(self, ndim: int, cin: int, cout: int, kernel: int):
        super().__init__()
        self.ndim, before = ndim, (kernel - 1) // 2
        self.pad = (before, kernel - 1 - before) * ndim  # F.pad order: last axis first; symmetric per axis
        self.conv = conv_nd(ndim)(cin, cout, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


def _match(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Zero-pad or crop ``x`` at the far end of each spatial axis to ``size``."""
    pad = []
    for have, want in zip(reversed(x.shape[2:]), reversed(size)):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


class FAIM(nn.Module):
    """The FAIM network (see the module docstring): ``(moving, fixed) -> {ddf, warped}``.

    Args:
        ndim: 3 (the paper's); 2 works for tests.
        width: filters of every convolution (code: 32); each inception branch has ``width // 4``.
        inception_kernels: kernels of the inception branches (code: 11, 7, 5, 2).
        flow_init_std: standard deviation of the head's initial weights (ours: 1e-5; code: 1e-2).
        in_channels: channels per input image.

    Forward ``moving``, ``fixed``: ``(B, C, *spatial)`` on one grid, every spatial size >= 7. Returns ``ddf``
    ``(B, ndim, *spatial)`` in voxels and ``warped`` (the moving image warped by it).
    """

    def __init__(self, ndim: int = 3, width: int = 32, inception_kernels: tuple[int, ...] = (11, 7, 5, 2),
                 flow_init_std: float = 1e-5, in_channels: int = 1):
        super().__init__()
        if width % len(inception_kernels):
            raise ValueError(f"width {width} must be divisible by the {len(inception_kernels)} inception branches")
        conv, w = conv_nd(ndim), int(width)
        tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
        self.ndim = ndim
        self.inception = nn.ModuleList(SameConv(ndim, 2 * in_channels, w // len(inception_kernels), k)
                                       for k in inception_kernels)
        self.act1 = nn.PReLU(w, init=0.0)
        self.down1 = conv(w, w, 3, stride=2)
        self.act2 = nn.PReLU(w, init=0.0)
        self.conv2 = conv(w, w, 3, padding=1)
        self.down2 = conv(w, w, 3, stride=2)
        self.act3 = nn.PReLU(w, init=0.0)
        self.bottleneck = SameConv(ndim, w, w, 2)
        self.up1 = tconv(w, w, 3, stride=2)
        self.conv_up1 = conv(w, w, 3, padding=1)
        self.act4 = nn.PReLU(w, init=0.0)
        self.up2 = tconv(w, w, 3, stride=2)
        self.conv_up2 = conv(w, w, 3, padding=1)
        self.act5 = nn.PReLU(w, init=0.0)
        self.flow = conv(w, ndim, 3, padding=1)
        nn.init.normal_(self.flow.weight, mean=0.0, std=float(flow_init_std))
        nn.init.zeros_(self.flow.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid")
        if any(s < 7 for s in fixed.shape[2:]):
            raise ValueError(f"spatial sizes {tuple(fixed.shape[2:])} must be at least 7 for FAIM")
        x = torch.cat([moving, fixed], dim=1)
        z1 = self.act1(torch.cat([branch(x) for branch in self.inception], dim=1))
        z2 = self.act2(self.down1(z1))
        z3 = self.act3(self.down2(self.conv2(z2)))
        y = z3 + self.bottleneck(z3)
        y = _match(self.act4(self.conv_up1(self.up1(y))), z2.shape[2:]) + z2
        y = _match(self.act5(self.conv_up2(self.up2(y))), z1.shape[2:]) + z1
        ddf = self.flow(y)
        return {"ddf": ddf, "warped": spatial.warp(moving, ddf)}

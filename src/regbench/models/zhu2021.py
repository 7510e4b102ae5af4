"""Zhu et al., "Joint affine and deformable three-dimensional networks for brain MRI registration",
Medical Physics 48(3), 2021 (``shared/papers/003_*.txt``): one network whose affine subnetwork shares its
encoder with a deformable U-Net.

Architecture (Sec. 2.A-2.B, Figs. 2-3), with the choices the paper leaves open marked *ours*:

* **Shared encoder** (the "downsampling part", Fig. 3): four convolutional blocks with 16, 32, 32, 32 filters
  (3x3x3, stride 1, LeakyReLU, batch normalisation, in that order as listed in Sec. 2.A; *ours*: batch statistics at inference too, :class:`BatchStatNorm`) alternating with
  three downsampling blocks (3x3x3 convolution, stride 2; *ours*: same width as the block before, followed
  by LeakyReLU(0.2)). LeakyReLU slope 0.2 (*ours*, VoxelMorph's).
* **Affine subnetwork** (Sec. 2.A): the shared encoder on ``(F, M)``, global average pooling and one linear
  layer to 12 numbers. *Ours*: the pooling reads the last block's activation *before* its batch
  normalisation. Read literally (pool the block's output), with batch 1 in training the spatial mean of a
  batch-normalised map is its shift ``beta`` for every input, so the linear layer would see a constant
  and predict the same affine for every pair; in evaluation the running statistics make it input-dependent but
  never trained as such (our first LPBA40 run did this: affine DSC below no alignment). The 12 numbers are a
  3x3 matrix and a translation, applied to voxel coordinates about the grid centre
  (:func:`regbench.spatial.affine_to_ddf`). *Ours*: the linear layer is initialised to zero so training
  starts at the identity, and the translation is predicted as a fraction of the half grid size (so the same
  weights mean the same motion on any grid). ``A = M`` warped by the affine map.
* **Deformable subnetwork** (Sec. 2.B, Fig. 3): the same encoder (parameter sharing) on ``(F, A)``, a dilated
  block at the last encoder level (four 3x3x3 convolutions with dilation 1, 2, 4, 8, each ReLU + group
  normalisation; *ours*: applied in sequence, 8 groups), and a decoder of three upsampling steps with skip
  connections and intervening residual modules (*ours*: trilinear x2 upsampling, concatenation with the
  encoder features of that level, a residual module of two 3x3x3 convolutions with LeakyReLU and an identity
  (1x1x1 projection) shortcut; widths 32, 32, 16), then a 3x3x3 convolution to the field ``phi``
  initialised near zero (VoxelMorph's head). The channel counts of Fig. 3 are not in the text.
* Output: ``W = phi(A)``; the full displacement of ``M`` is the composition "affine, then ``phi``"
  (:func:`regbench.spatial.compose`), so ``warped = M(x + ddf(x))`` with one interpolation (the test-time
  convention of regbench).

Outputs: ``ddf`` (full field, voxels), ``warped`` (``M`` warped by ``ddf``), ``affine_warped`` (``A``),
``affine_ddf``, ``affine`` (``(B, 3, 4)`` matrix in voxel coordinates about the centre) and ``phi`` (the
deformable field on the affine-aligned grid, what the smoothness term of Eq. 4 regularises). With
``affine=False`` (the "w/o affine" ablation, Table II) the deformable subnetwork registers ``M`` directly and
``affine_warped`` is ``M``.

Loss (Eq. 1-5) by config (:mod:`regbench.terms`): ``ncc`` with ``squared: true`` on ``affine_warped``
(Eq. 1), ``lncc`` window 9 on ``warped`` (Eq. 2), ``dice`` on ``ddf`` (Eq. 3) and ``diffusion`` on ``phi``
(Eq. 4); see ``config/papers/zhu2021.yaml``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import conv_nd, flow_head

ENCODER = (16, 32, 32, 32)
DECODER = (32, 32, 16)


class BatchStatNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation that always normalises with the statistics of the batch at hand, in training and
    at inference (``nn.BatchNorm*`` layout and parameters, so checkpoints keep their keys; the running
    buffers are kept but neither updated nor read).

    Why (*ours*; Sec. 2.A names batch normalisation, Sec. 2.C gives no batch size): trained with batch 1, a
    batch-normalised layer is a per-volume (instance) normalisation, and the network learns to rely on it.
    Replacing those statistics by running averages at inference (PyTorch's eval mode) gives another function:
    on Mindboggle-101 our trained network's affine alignment fell from DSC 0.27 (batch statistics) to 0.12
    (running averages) on the same test pairs. With batch statistics the network at inference is the one
    that was trained.

    Input ``(B, C, *spatial)``; output the same shape.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 3:
            raise ValueError(f"expected (B, C, *spatial), got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def _norm(ndim: int, ch: int) -> nn.Module:
    return BatchStatNorm(ch)


class _ConvBNBlock(nn.Module):
    """3x3(x3) convolution (stride 1), LeakyReLU(0.2), batch normalisation (Sec. 2.A)."""

    def __init__(self, ndim: int, cin: int, cout: int):
        super().__init__()
        self.conv = conv_nd(ndim)(cin, cout, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.norm = _norm(ndim, cout)

    def forward(self, x: torch.Tensor, pre_norm: bool = False):
        """``(B, cout, *s)``; with ``pre_norm`` also the activation before the batch normalisation."""
        a = self.act(self.conv(x))
        return (self.norm(a), a) if pre_norm else self.norm(a)


class SharedEncoder(nn.Module):
    """Four conv blocks (16, 32, 32, 32) with three stride-2 downsampling convolutions between them.

    Input ``(B, 2C, *spatial)`` (spatial sizes divisible by 8); returns the four level outputs, full
    resolution first: ``[(B, 16, s), (B, 32, s/2), (B, 32, s/4), (B, 32, s/8)]``. With ``pre_norm=True``,
    ``(levels, a)`` where ``a`` ``(B, 32, s/8)`` is the last block's activation before its batch normalisation
    (what the affine head pools).
    """

    def __init__(self, ndim: int, in_channels: int = 2, widths: tuple[int, ...] = ENCODER):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.down = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            self.blocks.append(_ConvBNBlock(ndim, cin, w))
            if i < len(widths) - 1:
                self.down.append(nn.Sequential(conv_nd(ndim)(w, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2)))
            cin = w
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor, pre_norm: bool = False):
        feats, last = [], None
        for i, block in enumerate(self.blocks):
            if pre_norm and i == len(self.blocks) - 1:
                x, last = block(x, pre_norm=True)
            else:
                x = block(x)
            feats.append(x)
            if i < len(self.down):
                x = self.down[i](x)
        return (feats, last) if pre_norm else feats


class DilatedBlock(nn.Module):
    """Four 3x3(x3) convolutions with dilation 1, 2, 4, 8, each ReLU + group normalisation (Sec. 2.B)."""

    def __init__(self, ndim: int, ch: int, rates: tuple[int, ...] = (1, 2, 4, 8), groups: int = 8):
        super().__init__()
        self.layers = nn.Sequential(*[
            nn.Sequential(conv_nd(ndim)(ch, ch, 3, padding=r, dilation=r), nn.ReLU(), nn.GroupNorm(groups, ch))
            for r in rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _Residual(nn.Module):
    """Two 3x3(x3) convolutions with LeakyReLU and a 1x1(x1) projection shortcut."""

    def __init__(self, ndim: int, cin: int, cout: int):
        super().__init__()
        conv = conv_nd(ndim)
        self.body = nn.Sequential(conv(cin, cout, 3, padding=1), nn.LeakyReLU(0.2), conv(cout, cout, 3, padding=1))
        self.skip = conv(cin, cout, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class Zhu2021Net(nn.Module):
    """The joint affine and deformable network of Zhu et al. 2021 (see the module docstring).

    Args:
        ndim: 3 (the paper's); 2 works for tests.
        affine: include the affine subnetwork (``False``: the "w/o affine" ablation of Table II).
        dilation_rates: of the dilated block (paper: 1, 2, 4, 8).
        decoder: widths of the three decoder levels (ours: 32, 32, 16).
        in_channels: channels per input image.
        affine_only: return the affine part alone (``ddf`` = ``affine_ddf``, ``warped`` = ``affine_warped``)
            without running the deformable subnetwork: "Our affine alignment" of Table I and "Ours (affine
            only)" of Table III. It changes no weights, so a trained model can be loaded with it.

    Forward ``moving``, ``fixed``: ``(B, C, *spatial)``, spatial sizes divisible by 8, one grid. Returns a
    dict with ``ddf`` ``(B, ndim, *spatial)`` (voxels), ``warped``, ``affine_warped``, ``affine_ddf``,
    ``affine`` ``(B, ndim, ndim + 1)`` and ``phi`` (see the module docstring).

    Raises:
        ValueError: images on different grids or sizes not divisible by 8.
    """

    def __init__(self, ndim: int = 3, affine: bool = True, dilation_rates: tuple[int, ...] = (1, 2, 4, 8),
                 decoder: tuple[int, ...] = DECODER, in_channels: int = 1, affine_only: bool = False):
        super().__init__()
        if affine_only and not affine:
            raise ValueError("affine_only needs the affine subnetwork (affine=True)")
        self.ndim, self.use_affine, self.affine_only = ndim, bool(affine), bool(affine_only)
        self.encoder = SharedEncoder(ndim, 2 * in_channels)
        enc = self.encoder.widths
        n_affine = ndim * (ndim + 1)
        self.affine_head = nn.Linear(enc[-1], n_affine) if self.use_affine else None
        if self.affine_head is not None:
            nn.init.zeros_(self.affine_head.weight)
            nn.init.zeros_(self.affine_head.bias)
        self.dilated = DilatedBlock(ndim, enc[-1], tuple(dilation_rates))
        ups, cin = [], enc[-1]
        for level, w in zip((2, 1, 0), decoder):
            ups.append(_Residual(ndim, cin + enc[level], w))
            cin = w
        self.up = nn.ModuleList(ups)
        self.flow = flow_head(ndim, cin)

    def _affine(self, feats: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, ndim, ndim + 1)`` voxel-space matrix about the centre and its DDF from the deepest features
        (the last block's activation before its batch normalisation, see the module docstring)."""
        nd = self.ndim
        theta = self.affine_head(feats.flatten(2).mean(-1)).view(-1, nd, nd + 1)
        half = torch.tensor([(s - 1) / 2.0 for s in shape], dtype=theta.dtype, device=theta.device)
        eye = torch.eye(nd, dtype=theta.dtype, device=theta.device)
        matrix = torch.cat([eye + theta[:, :, :nd], theta[:, :, nd:] * half.view(1, nd, 1)], dim=2)
        return matrix, spatial.affine_to_ddf(matrix, shape)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid")
        shape = tuple(fixed.shape[2:])
        if any(s % 8 for s in shape):
            raise ValueError(f"spatial sizes {shape} must be divisible by 8 for the Zhu et al. network")
        out: dict = {}
        if self.use_affine:
            matrix, affine_ddf = self._affine(self.encoder(torch.cat([moving, fixed], 1), pre_norm=True)[1], shape)
            aligned = spatial.warp(moving, affine_ddf)
            out.update(affine=matrix, affine_ddf=affine_ddf)
            if self.affine_only:
                return {**out, "affine_warped": aligned, "ddf": affine_ddf, "warped": aligned}
        else:
            affine_ddf, aligned = None, moving
        feats = self.encoder(torch.cat([aligned, fixed], 1))
        y = self.dilated(feats[-1])
        for level, block in zip((2, 1, 0), self.up):
            y = F.interpolate(y, size=feats[level].shape[2:], mode="trilinear" if self.ndim == 3 else "bilinear",
                              align_corners=False)
            y = block(torch.cat([y, feats[level]], 1))
        phi = self.flow(y)
        ddf = phi if affine_ddf is None else spatial.compose(affine_ddf, phi)
        out.update(phi=phi, affine_warped=aligned, ddf=ddf, warped=spatial.warp(moving, ddf))
        return out

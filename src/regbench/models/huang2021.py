"""Huang et al., "A cross-scale multi-modal image registration method based on Siamese U-Net" (Frontiers in
Cardiovascular Medicine 8:785523, 2021; ``../shared/papers/000_ec6b3e4211b9fd0c.txt``): U-Net, Attention U-Net
and MultiRes U-Net registration networks, each optionally behind a constrained affine network (CAN), and
their Siamese versions, which register a moving image smaller than the fixed one without resampling either.

What the paper states (section "Registration Based on the Siamese U-Net", Fig. 4) and what is ours:

* **Encoder** (paper): "a 7 x 7 x 7 kernel used in the first convolution layer"; "each down-sampling
  convolution module has two concatenated 3 x 3 x 3 convolutions and a 2 x 2 x 2 max-pooling". The widths
  and depth are not in the text; they follow the authors' released TensorFlow code
  (``MingHan98/Cross-scale-Siamese-Unet``, ``labelreg/networks.py``, read for facts, not copied):
  ``widths = (16, 32, 64, 128, 256)``, three pooling levels whose two convolutions go ``c_in -> widths[l]
  -> widths[l + 1]`` (skips of 32, 64, 128 channels), a bottleneck of two convolutions ``128 -> 128 -> 256`` at
  1/8 resolution, a decoder of three levels (transposed convolution x2, concatenation with the skip, two
  3^3 convolutions to 128, 64, 32 channels) and a 1 x 1 x 1 convolution to the field ("a convolution
  operation is used for dimensionality reduction and feature fusion"). Each convolution is followed by batch
  normalisation and ReLU (the code's ``conv3_block``); *ours*: ``norm`` may be ``instance`` or ``none``.
* **Attention U-Net** (Oktay et al. 2018, the paper's ref. 28): the same encoder and bottleneck; before each
  decoder level an additive attention gate (gating signal: 1x1 convolution of the coarser decoder features;
  ``theta_x``: 2^3 stride-2 convolution of the skip; ReLU, 1x1 convolution to one channel, sigmoid, x2
  upsampling, multiplication with the skip, 1x1 convolution and normalisation), as in the authors' code.
* **MultiRes U-Net** (Ibtehaz and Rahman 2020, ref. 29): MultiRes blocks (three chained 3^3 convolutions
  with ``W/6 + 1, W/3, W/2`` channels, concatenated, plus a 1x1 shortcut; the first convolution of the first
  block is 7^3) with ``W = 16, 32, 64`` in the encoder, 128 at the bottleneck, 64, 32, 16 in the decoder
  (the authors' code); ResPaths on the skips. *Ours*: ResPath lengths 4, 3, 2 from the finest level
  (Ibtehaz and Rahman's 4, 3, 2, 1; the released code uses 4 everywhere). The released code also mixes three
  affine heads into its MultiRes U-Net field; the paper does not describe them and they are left out.
* **CAN** (constrained affine network, Wang et al., the paper's ref. 25; that paper is not at hand): an
  affine network in front of the deformable one, trained jointly end to end. *Ours*: four levels of
  conv-norm-ReLU (7^3 first, widths 8, 16, 32, 64, 2x max pooling), global average pooling and a linear
  layer (zero-initialised: identity at start) to a matrix and translation, *constrained* by ``tanh``
  bounds: each entry of ``A - I`` within ``+-max_linear`` and the translation within ``+-max_translation``
  of the half grid size. The deformable network then registers the affine-aligned image; the full field is
  the composition "affine, then deformable" (one interpolation of the moving image).
* **Siamese versions** (Fig. 4, "Cross-Size Registration"): "two down-sampling encoders and one up-sampling
  decoding structure frame and skip connection"; the fixed image and the moving image each go through an
  encoder of the same structure; "the sub-network uses the weight sharing structure of the Siamese network
  to make the fixed image network and the moving image network obtain the same network parameters"
  (``shared=True``, the paper's text; the authors' released ``SmeUnet`` keeps two separately named
  encoders, ``shared=False``). The **padding module** zero-pads the moving features to the fixed features'
  size between the encoders and the decoder (at the bottleneck and on every skip connection: "the skip
  connection still needs to obtain the same feature size as the up-sampling through the filling module");
  "If the image size is uniformly different on the edge, then the symmetrical method is used. If the image
  size differs on a single edge, use single edge padding": ``padding="symmetric"`` (``floor(d/2)`` before,
  the rest after, per axis and level) or ``"single_edge"`` (all ``d`` after the end of the axis). The fixed
  and padded moving features are concatenated (*ours*: the text says only that the padded features are
  made "consistent"; the released code concatenates). The decoder is the plain network's with twice the
  skip channels and restores the **fixed** image's size.
* **Inputs**: Sec. "Registration Based on the Siamese U-Net" says the anatomical labels are also given to
  the network as input. The trainer calls ``model(moving, fixed)`` without labels, and test pairs may have
  none, so here the labels enter only the loss (weak supervision as Hu et al. 2018; docs/huang2021.md).
* *Ours*: the field head is initialised near zero (N(0, 1e-5)) so training starts at the identity; the
  transposed convolutions are 3^3 with stride 2 (the code's ``deconv3_block``), followed by norm + ReLU.

Coordinates of a cross-size pair: the padding module places the moving image inside the fixed grid
(``moving_pad``: per axis ``(before, after)`` voxels at full resolution); the moving image padded that way
(``moving_padded``) is what ``ddf`` warps, so ``warped(x) = moving_padded(x + ddf(x))`` with ``ddf`` in voxels of
the fixed grid (the regbench convention). With ``symmetric`` padding the placement at coarse levels rounds
(``floor(d / 2^(l+1))`` voxels of level ``l``), so it is consistent across levels only when ``d`` is a multiple
of ``2^(levels+1) = 16``; ``single_edge`` is consistent for any ``d``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import conv_nd

WIDTHS = (16, 32, 64, 128, 256)        # U-Net / Attention U-Net, authors' code ``nc``
MULTIRES_WIDTHS = (16, 32, 64, 128)    # MultiRes U-Net, authors' code ``nc``
RESPATH_LENGTHS = (4, 3, 2)            # ours (Ibtehaz and Rahman 2020)
CAN_WIDTHS = (8, 16, 32, 64)           # ours
ARCHS = ("unet", "attention", "multires")
PADDINGS = ("symmetric", "single_edge")
LEVELS = 3                             # pooling levels (sizes must be divisible by 2^3 = 8)


def _norm(ndim: int, ch: int, norm: str) -> nn.Module:
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[ndim](ch)
    if norm == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[ndim](ch, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")


class ConvNormAct(nn.Sequential):
    """Convolution (``kernel``, same padding), normalisation, ReLU: ``(B, cin, *s) -> (B, cout, *s)``."""

    def __init__(self, ndim: int, cin: int, cout: int, kernel: int = 3, norm: str = "batch", act: bool = True):
        layers = [conv_nd(ndim)(cin, cout, kernel, padding=kernel // 2), _norm(ndim, cout, norm)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UpConv(nn.Sequential):
    """Transposed 3^3 convolution with stride 2 (exact x2 size), normalisation, ReLU: ``(B, c, *s) -> (B, c, *2s)``."""

    def __init__(self, ndim: int, ch: int, norm: str = "batch"):
        tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
        super().__init__(tconv(ch, ch, 3, stride=2, padding=1, output_padding=1), _norm(ndim, ch, norm),
                         nn.ReLU(inplace=True))


class MultiResBlock(nn.Module):
    """MultiRes block (Ibtehaz and Rahman 2020): three chained convolutions with ``W/6 + 1``, ``W/3``, ``W/2``
    channels (the code's ``int(0.167 W) + 1, int(0.333 W), int(0.5 W)``), concatenated and normalised, plus a
    1x1 shortcut to the same width, then normalisation and ReLU. ``(B, cin, *s) -> (B, out_channels, *s)``
    where ``out_channels`` is the sum of the three widths (``W`` for the widths used here)."""

    def __init__(self, ndim: int, cin: int, width: int, first_kernel: int = 3, norm: str = "batch"):
        super().__init__()
        c1, c2, c3 = int(width * 0.167) + 1, int(width * 0.333), int(width * 0.5)
        self.out_channels = c1 + c2 + c3
        self.c1 = ConvNormAct(ndim, cin, c1, first_kernel, norm)
        self.c2 = ConvNormAct(ndim, c1, c2, 3, norm)
        self.c3 = ConvNormAct(ndim, c2, c3, 3, norm)
        self.cat_norm = _norm(ndim, self.out_channels, norm)
        self.shortcut = ConvNormAct(ndim, cin, self.out_channels, 1, norm, act=False)
        self.out_norm = _norm(ndim, self.out_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c1(x)
        b = self.c2(a)
        c = self.c3(b)
        y = self.cat_norm(torch.cat([a, b, c], 1)) + self.shortcut(x)
        return F.relu(self.out_norm(y))


class ResPath(nn.Module):
    """ResPath (Ibtehaz and Rahman 2020): ``length`` residual units ``relu(norm(conv3(y)) + conv1x1(y))`` on a
    skip connection; shape preserved."""

    def __init__(self, ndim: int, ch: int, length: int, norm: str = "batch"):
        super().__init__()
        self.convs = nn.ModuleList(ConvNormAct(ndim, ch, ch, 3, norm, act=False) for _ in range(length))
        self.shortcuts = nn.ModuleList(ConvNormAct(ndim, ch, ch, 1, norm, act=False) for _ in range(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, sc in zip(self.convs, self.shortcuts):
            x = F.relu(conv(x) + sc(x))
        return x


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, as in the authors' ``AttnGatingBlock``).

    ``x`` ``(B, cx, *s)`` (the skip), ``g`` ``(B, cg, *s/2)`` (the gating signal from the coarser level);
    returns ``(B, cx, *s)``: ``norm(conv1x1(alpha * x))`` with ``alpha = up2(sigmoid(psi(relu(theta(x) +
    phi(g)))))`` (``theta``: 2^3 convolution, stride 2).
    """

    def __init__(self, ndim: int, cx: int, cg: int, inter: int, norm: str = "batch"):
        super().__init__()
        conv = conv_nd(ndim)
        self.theta = conv(cx, inter, 2, stride=2)
        self.phi = conv(cg, inter, 1)
        self.psi = conv(inter, 1, 1)
        self.out = nn.Sequential(conv(cx, cx, 1), _norm(ndim, cx, norm))
        self.mode = {2: "bilinear", 3: "trilinear"}[ndim]

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        t = self.theta(x)
        a = torch.sigmoid(self.psi(F.relu(t + self.phi(g))))
        a = F.interpolate(a, size=x.shape[2:], mode=self.mode, align_corners=False)
        return self.out(a * x)


def _flow_head(ndim: int, cin: int) -> nn.Module:
    """1x1(x1) convolution to ``ndim`` channels, initialised near zero (*ours*; identity at start)."""
    conv = conv_nd(ndim)(cin, ndim, 1)
    nn.init.normal_(conv.weight, mean=0.0, std=1e-5)
    nn.init.zeros_(conv.bias)
    return conv


# ---------------------------------------------------------------------------------------------- encoder


class Encoder(nn.Module):
    """The down-sampling path: three levels, each two convolutions (or a MultiRes block) then 2x max pooling.

    Input ``(B, cin, *s)`` with every size divisible by 8. Returns ``(skips, bottom)``: ``skips[l]`` at
    ``s / 2^l`` (``l = 0, 1, 2``; after the ResPath for ``multires``) and ``bottom`` at ``s / 8`` (the pooled
    last level, input of the bottleneck). ``skip_channels`` and ``bottom_channels`` give their widths.
    """

    def __init__(self, ndim: int, cin: int, arch: str, widths: Sequence[int], norm: str,
                 respath: Sequence[int] = RESPATH_LENGTHS):
        super().__init__()
        self.arch = arch
        self.levels = nn.ModuleList()
        self.paths = nn.ModuleList()
        skip_ch = []
        c = cin
        for lv in range(LEVELS):
            k = 7 if lv == 0 else 3   # "a 7 x 7 x 7 kernel used in the first convolution layer"
            if arch == "multires":
                block = MultiResBlock(ndim, c, widths[lv], first_kernel=k, norm=norm)
                c = block.out_channels
                self.levels.append(block)
                self.paths.append(ResPath(ndim, c, respath[lv], norm))
            else:
                self.levels.append(nn.Sequential(ConvNormAct(ndim, c, widths[lv], k, norm),
                                                 ConvNormAct(ndim, widths[lv], widths[lv + 1], 3, norm)))
                c = widths[lv + 1]
                self.paths.append(nn.Identity())
            skip_ch.append(c)
        self.skip_channels, self.bottom_channels = tuple(skip_ch), c
        self.pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[ndim](2)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for block, path in zip(self.levels, self.paths):
            x = block(x)
            skips.append(path(x))
            x = self.pool(x)
        return skips, x


class Decoder(nn.Module):
    """Bottleneck at 1/8 and three up-sampling levels back to full size, then the 1x1 field head.

    ``forward(bottom, skips)``: ``bottom`` ``(B, bottom_in, *s/8)``, ``skips[l]`` ``(B, skip_in[l], *s/2^l)``;
    returns the field ``(B, ndim, *s)`` in voxels.
    """

    def __init__(self, ndim: int, arch: str, bottom_in: int, skip_in: Sequence[int], widths: Sequence[int],
                 norm: str):
        super().__init__()
        self.arch = arch
        self.ups, self.blocks, self.gates, self.gating = (nn.ModuleList() for _ in range(4))
        if arch == "multires":
            self.bottleneck = MultiResBlock(ndim, bottom_in, widths[3], norm=norm)
            c = self.bottleneck.out_channels
            dec = (widths[2], widths[1], widths[0])
        else:
            self.bottleneck = nn.Sequential(ConvNormAct(ndim, bottom_in, widths[3], 3, norm),
                                            ConvNormAct(ndim, widths[3], widths[4], 3, norm))
            c = widths[4]
            dec = (widths[3], widths[2], widths[1])
        for lv, w in zip((2, 1, 0), dec):
            s = skip_in[lv]
            if arch == "attention":
                self.gating.append(ConvNormAct(ndim, c, c, 1, norm))
                self.gates.append(AttentionGate(ndim, s, c, c, norm))
            self.ups.append(UpConv(ndim, c, norm))
            if arch == "multires":
                block = MultiResBlock(ndim, s + c, w, norm=norm)
                self.blocks.append(block)
                c = block.out_channels
            else:
                self.blocks.append(nn.Sequential(ConvNormAct(ndim, s + c, w, 3, norm), ConvNormAct(ndim, w, w, 3, norm)))
                c = w
        self.head = _flow_head(ndim, c)

    def forward(self, bottom: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        y = self.bottleneck(bottom)
        for i, lv in enumerate((2, 1, 0)):
            skip = skips[lv]
            if self.arch == "attention":
                skip = self.gates[i](skip, self.gating[i](y))
            y = self.blocks[i](torch.cat([self.ups[i](y), skip], 1))
        return self.head(y)


def _widths(arch: str, widths: Sequence[int] | None) -> tuple[int, ...]:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; use one of {list(ARCHS)}")
    w = tuple(int(v) for v in (widths or (MULTIRES_WIDTHS if arch == "multires" else WIDTHS)))
    need = 4 if arch == "multires" else 5
    if len(w) != need:
        raise ValueError(f"{arch}: widths needs {need} entries, got {w}")
    return w


def _check_divisible(name: str, shape: Sequence[int]) -> None:
    bad = [s for s in shape if s % (2 ** LEVELS)]
    if bad:
        raise ValueError(f"{name} spatial sizes {tuple(shape)} must be divisible by {2 ** LEVELS} "
                         f"({LEVELS} pooling levels)")


# ---------------------------------------------------------------------------------------------- CAN


class ConstrainedAffineNet(nn.Module):
    """CAN (Wang et al., the paper's ref. 25; architecture *ours*, see the module docstring).

    ``forward(moving, fixed)`` on one grid ``(B, C, *s)`` (sizes divisible by 16) returns ``(matrix, ddf)``:
    ``matrix`` ``(B, ndim, ndim + 1)`` rows ``[A | t]`` on voxel coordinates about the grid centre
    (:func:`regbench.spatial.affine_to_ddf`), ``A = I + max_linear tanh(a)``, ``t = max_translation
    tanh(b) (s - 1) / 2`` voxels; ``ddf`` ``(B, ndim, *s)`` its displacement in voxels. Identity at start.
    """

    def __init__(self, ndim: int, in_channels: int = 2, widths: Sequence[int] = CAN_WIDTHS, norm: str = "batch",
                 max_linear: float = 0.2, max_translation: float = 0.2):
        super().__init__()
        if max_linear <= 0 or max_translation < 0:
            raise ValueError(f"max_linear must be > 0 and max_translation >= 0, got {max_linear}, {max_translation}")
        self.ndim, self.max_linear, self.max_translation = ndim, float(max_linear), float(max_translation)
        layers, c = [], in_channels
        for i, w in enumerate(widths):
            layers += [ConvNormAct(ndim, c, w, 7 if i == 0 else 3, norm), {2: nn.MaxPool2d, 3: nn.MaxPool3d}[ndim](2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, ndim * (ndim + 1))
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nd, shape = self.ndim, tuple(fixed.shape[2:])
        theta = self.fc(self.features(torch.cat([moving, fixed], 1)).flatten(2).mean(-1)).view(-1, nd, nd + 1)
        eye = torch.eye(nd, dtype=theta.dtype, device=theta.device)
        half = torch.tensor([(s - 1) / 2.0 for s in shape], dtype=theta.dtype, device=theta.device)
        a = eye + self.max_linear * torch.tanh(theta[:, :, :nd])
        t = self.max_translation * torch.tanh(theta[:, :, nd:]) * half.view(1, nd, 1)
        matrix = torch.cat([a, t], dim=2)
        return matrix, spatial.affine_to_ddf(matrix, shape)


# ---------------------------------------------------------------------------------------------- networks


class Huang2021Net(nn.Module):
    """U-Net / Attention U-Net / MultiRes U-Net registration network, optionally with CAN in front.

    Args:
        ndim: 3 (the paper's); 2 works for tests.
        arch: ``unet``, ``attention`` or ``multires``.
        can: put the constrained affine network in front ("+ CAN" rows of Table 2).
        widths: channel widths (defaults: the authors' code, see the module docstring).
        norm: ``batch`` (the authors' code), ``instance`` or ``none``.
        in_channels: image channels per input.
        can_max_linear, can_max_translation: CAN's bounds (*ours*).

    Forward ``moving``, ``fixed``: ``(B, in_channels, *spatial)``, one grid, sizes divisible by 8 (16 with
    CAN). Returns ``ddf`` ``(B, ndim, *spatial)`` (voxels, fixed grid) and ``warped`` = ``moving(x + ddf(x))``;
    with CAN also ``affine`` ``(B, ndim, ndim + 1)``, ``affine_ddf``, ``affine_warped`` and ``phi`` (the
    deformable field on the affine-aligned grid; ``ddf = compose(affine_ddf, phi)``).

    Raises:
        ValueError: unknown ``arch``/``norm``, bad widths; in ``forward``, different grids or sizes not
            divisible by 8 (16 with CAN).
    """

    def __init__(self, ndim: int = 3, arch: str = "unet", can: bool = False, widths: Sequence[int] | None = None,
                 norm: str = "batch", in_channels: int = 1, can_max_linear: float = 0.2,
                 can_max_translation: float = 0.2):
        super().__init__()
        w = _widths(arch, widths)
        self.ndim, self.arch = ndim, arch
        self.encoder = Encoder(ndim, 2 * in_channels, arch, w, norm)
        self.decoder = Decoder(ndim, arch, self.encoder.bottom_channels, self.encoder.skip_channels, w, norm)
        self.can = (ConstrainedAffineNet(ndim, 2 * in_channels, norm=norm, max_linear=can_max_linear,
                                         max_translation=can_max_translation) if can else None)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid "
                             "(the Siamese variant, huang2021_siamese, takes a smaller moving image)")
        shape = tuple(fixed.shape[2:])
        _check_divisible("fixed", shape)
        out: dict = {}
        aligned, affine_ddf = moving, None
        if self.can is not None:
            if any(s % 16 for s in shape):
                raise ValueError(f"spatial sizes {shape} must be divisible by 16 with CAN")
            matrix, affine_ddf = self.can(moving, fixed)
            aligned = spatial.warp(moving, affine_ddf)
            out.update(affine=matrix, affine_ddf=affine_ddf, affine_warped=aligned)
        skips, bottom = self.encoder(torch.cat([aligned, fixed], 1))
        phi = self.decoder(bottom, skips)
        ddf = phi if affine_ddf is None else spatial.compose(affine_ddf, phi)
        if affine_ddf is not None:
            out["phi"] = phi
        out.update(ddf=ddf, warped=spatial.warp(moving, ddf))
        return out


def pad_amounts(moving_shape: Sequence[int], fixed_shape: Sequence[int], mode: str) -> list[tuple[int, int]]:
    """Per axis ``(before, after)`` zero padding that brings ``moving_shape`` to ``fixed_shape`` (the padding
    module): ``symmetric``: ``floor(d/2)`` before and the rest after; ``single_edge``: all ``d`` after.

    Raises:
        ValueError: unknown ``mode``, different lengths, or a moving size larger than the fixed one (the
            module pads, it never crops).
    """
    if mode not in PADDINGS:
        raise ValueError(f"padding must be one of {list(PADDINGS)}, got {mode!r}")
    if len(moving_shape) != len(fixed_shape):
        raise ValueError(f"moving {tuple(moving_shape)} and fixed {tuple(fixed_shape)} differ in dimensionality")
    out = []
    for m, f in zip(moving_shape, fixed_shape):
        d = int(f) - int(m)
        if d < 0:
            raise ValueError(f"moving size {tuple(moving_shape)} exceeds fixed size {tuple(fixed_shape)} along an "
                             "axis; the padding module only pads (crop the moving image or swap the roles)")
        out.append((d // 2, d - d // 2) if mode == "symmetric" else (0, d))
    return out


def pad_to(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Zero-pad ``x`` ``(B, C, *s)`` to spatial ``size`` with :func:`pad_amounts`' placement."""
    amounts = pad_amounts(x.shape[2:], size, mode)
    if not any(a or b for a, b in amounts):
        return x
    flat = [v for a, b in reversed(amounts) for v in (a, b)]   # F.pad: last axis first
    return F.pad(x, flat)


class Huang2021Siamese(nn.Module):
    """Cross-scale Siamese U-Net / Attention U-Net / MultiRes U-Net (Fig. 4; see the module docstring).

    Args:
        ndim: 3 (the paper's); 2 works for tests.
        arch: ``unet``, ``attention`` or ``multires``.
        padding: ``symmetric`` or ``single_edge`` (the padding module).
        shared: one encoder applied to both images (the paper's weight sharing) or two encoders (the
            released code).
        widths, norm, in_channels: as :class:`Huang2021Net`.

    Forward ``moving`` ``(B, C, *s_m)``, ``fixed`` ``(B, C, *s_f)`` with ``s_m <= s_f`` per axis and every size
    divisible by 8. Returns ``ddf`` ``(B, ndim, *s_f)`` (voxels of the fixed grid), ``moving_padded`` (the
    moving image zero-padded onto the fixed grid by the full-resolution placement), ``warped`` =
    ``moving_padded(x + ddf(x))`` and ``moving_pad`` (per axis ``(before, after)`` voxels; loss terms use it to
    place moving label maps on the fixed grid).

    ``accepts_cross_size = True`` tells the register stage (:mod:`regbench.register`) and ``register-images`` that the
    model takes a moving image on another grid and returns its placement; they warp the moving image and its labels
    after padding them the same way (``moving_pad``), and record the placement (:mod:`regbench.placement`).

    Raises:
        ValueError: a moving size above the fixed one, sizes not divisible by 8, batch or channel mismatch.
    """

    #: the model registers cross-size pairs and returns ``moving_pad`` (read by the register stage)
    accepts_cross_size = True

    def __init__(self, ndim: int = 3, arch: str = "unet", padding: str = "symmetric", shared: bool = True,
                 widths: Sequence[int] | None = None, norm: str = "batch", in_channels: int = 1):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {list(PADDINGS)}, got {padding!r}")
        w = _widths(arch, widths)
        self.ndim, self.arch, self.padding, self.shared = ndim, arch, padding, bool(shared)
        self.encoder_fixed = Encoder(ndim, in_channels, arch, w, norm)
        self.encoder_moving = None if self.shared else Encoder(ndim, in_channels, arch, w, norm)
        enc = self.encoder_fixed
        self.decoder = Decoder(ndim, arch, 2 * enc.bottom_channels, [2 * c for c in enc.skip_channels], w, norm)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape[:2] != fixed.shape[:2]:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ in batch or channels")
        fs, ms = tuple(fixed.shape[2:]), tuple(moving.shape[2:])
        _check_divisible("fixed", fs)
        _check_divisible("moving", ms)
        pads = pad_amounts(ms, fs, self.padding)
        skips_f, bottom_f = self.encoder_fixed(fixed)
        skips_m, bottom_m = (self.encoder_moving or self.encoder_fixed)(moving)
        skips = [torch.cat([f, pad_to(m, f.shape[2:], self.padding)], 1) for f, m in zip(skips_f, skips_m)]
        bottom = torch.cat([bottom_f, pad_to(bottom_m, bottom_f.shape[2:], self.padding)], 1)
        ddf = self.decoder(bottom, skips)
        moving_padded = pad_to(moving, fs, self.padding)
        return {"ddf": ddf, "warped": spatial.warp(moving_padded, ddf), "moving_padded": moving_padded,
                "moving_pad": pads}

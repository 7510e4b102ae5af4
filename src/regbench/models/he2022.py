"""He, He and Cao, "Deformable image registration with attention-guided fusion of multi-scale deformation
fields", Applied Intelligence (published online 14 May 2022).

The method has three networks, all 2D (inter-subject chest X-ray registration, Sec. 4.1):

* :class:`AttentionSegUNet` (Sec. 3.2): a slimmed U-Net (about 1.9 M parameters instead of about 7.7 M)
  that segments the region of interest (the lungs). It is trained on its own beforehand with cross-entropy
  plus the contour loss (Eq. 2-3, :class:`regbench.losses.CEContourLoss`, lambda = 1.75, Sec. 4.2). Its hard
  mask multiplies each input image (``I^c = I * W^a``, Sec. 3.1) before registration.
* :class:`AnatomicalAutoEncoder` (Sec. 3.3): the denoising auto-encoder of one-hot label maps taken from
  AC-RegNet (Mansilla et al., Neural Networks 124, 2020), also trained beforehand (Eq. 4: cross-entropy plus
  contour loss, lambda = 2.0). During registration training only its encoder is used, to compare the codes
  of the warped moving and the fixed label maps (Eq. 13, :func:`regbench.losses.anatomical_code_loss`).
* :class:`He2022RegNet` (Sec. 3.4, Fig. 3-4): a U-Net-shaped registration network with one displacement
  head per scale (branch); coarser fields are upsampled, gated per axis by the deformation field spatial
  attention (DFSA) module and added to the next finer field (Eq. 5-6).

Registration training loss (Eq. 7-14, Sec. 4.2 weights): ``lambda_ncc = 1`` global NCC (Eq. 8,
``losses.GlobalNCC``), ``lambda_ssim = 1`` SSIM (Eq. 9-10, ``losses.SSIMLoss``), ``lambda_ce = 1``
cross-entropy of warped moving vs fixed one-hot labels (Eq. 12, ``losses.LabelCrossEntropy``),
``lambda_ae = 0.1`` code distance (Eq. 13) and ``lambda_df = 3.5`` total variation of the field
(``losses.Diffusion(penalty="l1")``). Training uses 64x64 images, testing 256x256 (Sec. 4.1).

Spatial convention: displacement fields are ``(B, 2, H, W)`` in pixels of the grid they live on, channel
``i`` along array axis ``i`` (see :mod:`regbench.spatial`); warping pulls back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import ConvBlock, flow_head


def _require_2d(ndim: int, what: str) -> None:
    if ndim != 2:
        raise ValueError(f"{what} is 2D only (He et al. 2022 register chest X-rays); got ndim={ndim}")


def _require_divisible(shape: Sequence[int], factor: int, what: str) -> None:
    if any(s % factor for s in shape):
        raise ValueError(f"spatial sizes {tuple(shape)} must be divisible by {factor} for {what}")


# ---------------------------------------------------------------------------------------------------------
# Attention segmentation network (Sec. 3.2)
# ---------------------------------------------------------------------------------------------------------


class _DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by optional BatchNorm and ReLU (one U-Net level)."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool):
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            layers.append(nn.Conv2d(c_in, out_ch, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class AttentionSegUNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) that predicts the attention (region-of-interest) mask, Sec. 3.2.

    The paper only says the U-Net was shrunk from about 7.7 M to about 1.9 M parameters. A 4-pooling U-Net
    with 32 filters in the first level has 7.76 M parameters; halving every width (first level 16, widths
    16-32-64-128-256) gives 1.94 M, so that is the default here. The remaining details are not given in
    the paper and are chosen as in the original U-Net: two 3x3 convolutions + ReLU per level (padding 1 so
    the output keeps the input size), 2x2 max pooling, 2x2 stride-2 transposed convolutions that halve the
    channels, skip concatenation, a 1x1 output convolution, no BatchNorm (``batch_norm=True`` adds it).

    Args:
        ndim: must be 2.
        in_channels: image channels (1 for X-rays).
        n_classes: output classes; 2 = background / region of interest (lungs).
        base_channels: filters of the first level; level ``l`` has ``base_channels * 2**l``.
        depth: number of poolings (4 in U-Net).
        batch_norm: BatchNorm after every 3x3 convolution (not in the original U-Net; paper silent).

    Input ``(B, in_channels, H, W)`` with ``H, W`` divisible by ``2**depth``; output logits
    ``(B, n_classes, H, W)`` (softmax over channel 1 gives class probabilities).
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, n_classes: int = 2, base_channels: int = 16,
                 depth: int = 4, batch_norm: bool = False):
        super().__init__()
        _require_2d(ndim, "AttentionSegUNet")
        if depth < 1 or base_channels < 1 or n_classes < 2:
            raise ValueError("need depth >= 1, base_channels >= 1 and n_classes >= 2")
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            _DoubleConv(in_channels if i == 0 else widths[i - 1], widths[i], batch_norm) for i in range(depth + 1)
        )
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.dec = nn.ModuleList(_DoubleConv(2 * widths[i], widths[i], batch_norm) for i in range(depth))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _require_divisible(x.shape[2:], 2**self.depth, "AttentionSegUNet")
        skips = []
        y = x
        for i, block in enumerate(self.down):
            y = block(y)
            if i < self.depth:
                skips.append(y)
                y = F.max_pool2d(y, 2)
        for i in reversed(range(self.depth)):
            y = self.dec[i](torch.cat([skips[i], self.up[i](y)], dim=1))
        return self.head(y)

    @torch.no_grad()
    def attention_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Hard attention mask ``W^a`` (Sec. 3.1): ``(B, 1, H, W)`` float, 1 where the arg-max class is not
        background (class 0). Computed without gradient (the segmenter is trained separately)."""
        return (self.forward(x).argmax(dim=1, keepdim=True) != 0).to(x.dtype)

    def clean(self, x: torch.Tensor) -> torch.Tensor:
        """Cleaned image ``I^c = I * W^a`` (Sec. 3.1): ``(B, C, H, W)``, zero outside the predicted region."""
        return x * self.attention_mask(x)


# ---------------------------------------------------------------------------------------------------------
# Anatomical (label) denoising auto-encoder (Sec. 3.3; AC-RegNet)
# ---------------------------------------------------------------------------------------------------------


class _ConvBNReLU(nn.Sequential):
    """3x3 convolution (given stride) -> optional BatchNorm -> ReLU, optionally after 2x nearest upsampling."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, upsample: bool = False, batch_norm: bool = True):
        layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
        layers.append(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class AnatomicalAutoEncoder(nn.Module):
    """Denoising auto-encoder of one-hot label maps used as the anatomical shape prior (Sec. 3.3, Eq. 4, 13).

    He et al. reuse the AC-RegNet auto-encoder (Mansilla et al. 2020) and only add the contour loss to its
    training. The layout follows AC-RegNet's released implementation: encoder = 3x3 convolutions with
    16 (stride 2), 16, 32 (stride 2), 32 and 1 (stride 2) filters, each with BatchNorm and ReLU, giving a
    one-channel map at 1/8 resolution that a linear layer maps to the code (no activation); decoder = linear
    layer back to the 1/8 map (ReLU), then three (2x nearest upsampling + 3x3 convolution) stages with 32,
    16, 16 filters, a 3x3 convolution after each of the first two (32, 16), and a final 3x3 convolution to
    ``n_classes`` logits. Denoising: during its training the input labels are corrupted (AC-RegNet swaps
    neighbouring pixel labels with probability 0.1, see :func:`swap_label_noise`); the paper does not restate
    the noise model.

    Args:
        ndim: must be 2.
        n_classes: channels of the one-hot input and of the output logits (background included).
        n_codes: code length (AC-RegNet: 32; He et al. silent).
        input_size: ``(H, W)`` the auto-encoder works on (training size 64x64, Sec. 4.1); the linear layers
            depend on it. Must be divisible by 8.
        batch_norm: BatchNorm after the hidden convolutions (as in AC-RegNet).

    ``encode``: ``(B, n_classes, H, W)`` one-hot (or soft, e.g. linearly warped) labels -> ``(B, n_codes)``.
    ``forward``: same input -> reconstruction logits ``(B, n_classes, H, W)``.
    """

    def __init__(self, ndim: int = 2, n_classes: int = 2, n_codes: int = 32, input_size: Sequence[int] = (64, 64),
                 batch_norm: bool = True):
        super().__init__()
        _require_2d(ndim, "AnatomicalAutoEncoder")
        self.input_size = tuple(int(s) for s in input_size)
        if len(self.input_size) != 2:
            raise ValueError(f"input_size must be (H, W), got {input_size}")
        _require_divisible(self.input_size, 8, "AnatomicalAutoEncoder")
        self.n_classes, self.n_codes = n_classes, n_codes
        self.code_grid = (self.input_size[0] // 8, self.input_size[1] // 8)
        n_grid = self.code_grid[0] * self.code_grid[1]
        bn = batch_norm
        self.encoder_cnn = nn.Sequential(
            _ConvBNReLU(n_classes, 16, stride=2, batch_norm=bn),
            _ConvBNReLU(16, 16, batch_norm=bn),
            _ConvBNReLU(16, 32, stride=2, batch_norm=bn),
            _ConvBNReLU(32, 32, batch_norm=bn),
            _ConvBNReLU(32, 1, stride=2, batch_norm=bn),
        )
        self.to_code = nn.Linear(n_grid, n_codes)
        self.from_code = nn.Sequential(nn.Linear(n_codes, n_grid), nn.ReLU(inplace=True))
        self.decoder_cnn = nn.Sequential(
            _ConvBNReLU(1, 32, upsample=True, batch_norm=bn),
            _ConvBNReLU(32, 32, batch_norm=bn),
            _ConvBNReLU(32, 16, upsample=True, batch_norm=bn),
            _ConvBNReLU(16, 16, batch_norm=bn),
            _ConvBNReLU(16, 16, upsample=True, batch_norm=bn),
            nn.Conv2d(16, n_classes, 3, padding=1),
        )

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.n_classes or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"expected one-hot labels (B, {self.n_classes}, {self.input_size[0]}, "
                             f"{self.input_size[1]}), got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_classes, H, W)`` -> code ``(B, n_codes)``."""
        self._check(x)
        return self.to_code(self.encoder_cnn(x).flatten(1))

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Code ``(B, n_codes)`` -> reconstruction logits ``(B, n_classes, H, W)``."""
        grid = self.from_code(h).view(h.shape[0], 1, *self.code_grid)
        return self.decoder_cnn(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def swap_label_noise(labels: torch.Tensor, prob: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt a label map for denoising auto-encoder training (AC-RegNet's noise model).

    Columns are paired (0-1, 2-3, ...); in each pair and row the two pixels exchange labels with probability
    ``prob``. ``labels``: ``(B, 1, H, W)`` (any dtype), ``W`` even; returns a corrupted copy.
    """
    if labels.shape[-1] % 2:
        raise ValueError(f"width must be even, got {labels.shape[-1]}")
    left, right = labels[..., 0::2], labels[..., 1::2]
    swap = torch.rand(left.shape, generator=generator, device="cpu").to(labels.device) < prob
    out = labels.clone()
    out[..., 0::2] = torch.where(swap, right, left)
    out[..., 1::2] = torch.where(swap, left, right)
    return out


# ---------------------------------------------------------------------------------------------------------
# Dense multi-scale registration network with DFSA fusion (Sec. 3.4, Fig. 3-4, Eq. 5-6)
# ---------------------------------------------------------------------------------------------------------


class _LevelBlock(nn.Module):
    """Two 3x3 convolutions with LeakyReLU(0.2) at one resolution.

    ``dense=True`` connects them DenseNet-style: the second convolution sees the block input and the first
    output, and a 1x1 convolution (+ LeakyReLU) fuses input and both outputs to ``out_ch`` channels.
    """

    def __init__(self, in_ch: int, out_ch: int, dense: bool):
        super().__init__()
        self.dense = dense
        self.c1 = ConvBlock(2, in_ch, out_ch)
        self.c2 = ConvBlock(2, in_ch + out_ch if dense else out_ch, out_ch)
        if dense:
            self.fuse = nn.Sequential(nn.Conv2d(in_ch + 2 * out_ch, out_ch, 1), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.c1(x)
        if not self.dense:
            return self.c2(y1)
        y2 = self.c2(torch.cat([x, y1], dim=1))
        return self.fuse(torch.cat([x, y1, y2], dim=1))


class DFSA(nn.Module):
    """Deformation field spatial attention (Sec. 3.4, Fig. 4, Eq. 5-6).

    Each axis (channel) of the field is processed on its own by a small convolution stack ending in a
    sigmoid, giving one weight map per axis with values in (0, 1); the coarse field is multiplied by its
    weight maps and added to the finer branch's field: ``DF_k^a = W_k * up(DF_{k+1}^a) + DF_k^c``, channel
    by channel. "Independently per axis" is a grouped convolution with ``groups = 2``.

    Not specified in the paper (Fig. 4 gives channel numbers we do not have), chosen here:

    * ``hidden``: hidden widths per axis, default two 3x3 convolutions of 16 filters with LeakyReLU(0.2),
      then a 3x3 convolution to one map per axis and a sigmoid.
    * ``source``: which field the weights are computed from. ``"coarse"`` (default): from the upsampled
      coarse field itself, the reading of Eq. 5 (``DFSA`` applied to ``DF_{k+1}^a``) and of the Fig. 4
      caption (the field that is weighted is the one processed); ``"fine"``: from ``DF_k^c``, the reading of
      the sentence in Sec. 3.4 that names ``DF_k^c``; ``"both"``: from both (per axis, 2 input maps).

    Forward: ``coarse_up`` (the coarser combined field already resampled to this grid, in pixels of this
    grid) and ``fine`` (this branch's field), both ``(B, 2, H, W)``; returns ``(fused, weights)``, both
    ``(B, 2, H, W)``.
    """

    SOURCES = ("coarse", "fine", "both")

    def __init__(self, hidden: Sequence[int] = (16, 16), source: str = "coarse", ndim: int = 2):
        super().__init__()
        if source not in self.SOURCES:
            raise ValueError(f"DFSA source must be one of {self.SOURCES}, got {source!r}")
        self.source, self.ndim = source, ndim
        c_in = 2 if source == "both" else 1
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Conv2d(ndim * c_in, ndim * h, 3, padding=1, groups=ndim), nn.LeakyReLU(0.2)]
            c_in = h
        layers += [nn.Conv2d(ndim * c_in, ndim, 3, padding=1, groups=ndim), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, coarse_up: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source == "coarse":
            inp = coarse_up
        elif self.source == "fine":
            inp = fine
        else:  # channel order (coarse_0, fine_0, coarse_1, fine_1): one group per axis
            inp = torch.stack([coarse_up, fine], dim=2).flatten(1, 2)
        weights = self.net(inp)
        return coarse_up * weights + fine, weights


class He2022RegNet(nn.Module):
    """Dense multi-scale registration network with attention-guided field fusion (Sec. 3.4, Fig. 3-4).

    A U-Net-shaped network with ``L = len(enc_channels)`` resolution levels (branches, top = full size,
    each level half the size of the one above). Branch ``k`` (1 = top) ends in a 3x3 displacement head
    giving ``DF_k^c`` in pixels of its own grid; starting from the deepest used branch, the combined field
    is upsampled to the next finer grid (:func:`regbench.spatial.resize_field`: bilinear, values x2), gated by
    :class:`DFSA` and added to that branch's field (Eq. 5). The final field is ``DF_1^a`` at full size.

    With ``n_scales = m`` only branches 1..m produce fields (Fig. 9 ablation, "scales from top to down");
    the U-Net body is the same for every ``m``. ``n_scales = 1`` is the top branch alone (no fusion).

    Choices where the paper is silent (all constructor arguments):

    * ``enc_channels``: widths of the levels, default (16, 32, 64, 128) as the AC-RegNet U-Net that He et
      al. extend (4 levels = the 4 scales; the deepest level, 1/8 size, is the bottleneck and branch 4; with
      64x64 training images it is 8x8, the size limit the paper gives for using 4 scales, Sec. 5). Decoder
      level ``k`` has the same width as encoder level ``k``.
    * ``pyramid_input``: "input images are successively down-sampled with a ratio of 0.5 for branches" is
      read as an image pyramid: the moving/fixed pair, 2x2-average-pooled to each level, is concatenated to
      the pooled features entering that level (``False``: a plain U-Net encoder).
    * ``dense``: "dense registration network" is read as dense (per-pixel) displacement prediction, so the
      level blocks are two plain 3x3 convolutions (``dense=True`` gives DenseNet-style blocks instead).
    * Activations LeakyReLU(0.2), 2x2 average pooling, 2x nearest upsampling of features, skip concatenation,
      displacement heads initialised near zero (N(0, 1e-5)) so training starts at the identity; no dropout
      or normalisation. Fusion weights come from :class:`DFSA` (``dfsa_hidden``, ``dfsa_source``).
    * Eq. 6 writes ``DF_{k+1}^c`` where Eq. 5 writes ``DF_{k+1}^a``; the recursive Eq. 5 form is used (with
      Eq. 6 taken literally, branches 3 and 4 would not reach the output, contradicting Fig. 9). Eq. 5-6 put
      weight 1 on the finer field and a weight in (0, 1) on the coarser one: the two do not sum to one.
    * ``work_size``: optional ``(H, W)`` the network runs at; inputs are resized to it and the field is
      resized back to the input grid (AC-RegNet registers 256x256 test images this way with a 64x64 model;
      He et al. train at 64 and test at 256, Sec. 4.1, without saying how). ``None``: run at input size.

    Args:
        ndim: must be 2.
        n_scales: number of fused displacement scales, 1..``len(enc_channels)`` (paper: 4).
        in_channels: channels per image (moving and fixed each).

    Forward: ``moving``, ``fixed`` ``(B, in_channels, H, W)`` (the attention-cleaned images in the paper)
    with ``H, W`` (or ``work_size``) divisible by ``2 ** (L - 1)`` (8 by default). Returns a dict:

    * ``ddf``: ``(B, 2, H, W)`` final displacement, pixels of the input grid;
    * ``warped``: ``(B, in_channels, H, W)`` moving image pulled back by ``ddf``;
    * ``fields``: ``[DF_1^c, ..., DF_m^c]``, ``DF_k^c`` ``(B, 2, h / 2**(k-1), w / 2**(k-1))`` in pixels of its
      own grid (``h, w`` the working size);
    * ``fused``: ``[DF_1^a, ..., DF_m^a]`` (``DF_m^a = DF_m^c``), same shapes and units;
    * ``weights``: ``[W_1, ..., W_{m-1}]``, DFSA weight maps in (0, 1) on the grid of branch ``k``.
    """

    def __init__(self, ndim: int = 2, n_scales: int = 4, enc_channels: Sequence[int] = (16, 32, 64, 128),
                 in_channels: int = 1, pyramid_input: bool = True, dense: bool = False,
                 dfsa_hidden: Sequence[int] = (16, 16), dfsa_source: str = "coarse",
                 work_size: Sequence[int] | int | None = None):
        super().__init__()
        _require_2d(ndim, "He2022RegNet")
        enc = [int(c) for c in enc_channels]
        levels = len(enc)
        if not 1 <= n_scales <= levels:
            raise ValueError(f"n_scales must be in 1..{levels} (one per level), got {n_scales}")
        self.n_scales, self.levels, self.pyramid_input = n_scales, levels, pyramid_input
        if isinstance(work_size, int):
            work_size = (work_size, work_size)
        self.work_size = None if work_size is None else tuple(int(s) for s in work_size)
        if self.work_size is not None:
            _require_divisible(self.work_size, 2 ** (levels - 1), "He2022RegNet work_size")
        pair = 2 * in_channels
        extra = pair if pyramid_input else 0
        self.enc = nn.ModuleList(
            _LevelBlock(pair if i == 0 else enc[i - 1] + extra, enc[i], dense) for i in range(levels)
        )
        # decoder block at level i (0-based, i < levels - 1): upsampled level-(i+1) features + skip -> enc[i]
        self.dec = nn.ModuleList(_LevelBlock(enc[i + 1] + enc[i], enc[i], dense) for i in range(levels - 1))
        self.heads = nn.ModuleList(flow_head(2, enc[i]) for i in range(n_scales))
        self.dfsa = nn.ModuleList(DFSA(dfsa_hidden, dfsa_source) for _ in range(n_scales - 1))

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder features per level, top (full size) first."""
        skips = []
        y, pyr = x, x
        for i, block in enumerate(self.enc):
            if i > 0:
                y = F.avg_pool2d(y, 2)
                if self.pyramid_input:
                    pyr = F.avg_pool2d(pyr, 2)
                    y = torch.cat([y, pyr], dim=1)
            y = block(y)
            skips.append(y)
        feats = [None] * self.levels
        feats[-1] = y
        for i in reversed(range(self.levels - 1)):
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = self.dec[i](torch.cat([y, skips[i]], dim=1))
            feats[i] = y
        return feats

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a shape")
        if moving.dim() != 4:
            raise ValueError(f"He2022RegNet takes 2D images (B, C, H, W), got {tuple(moving.shape)}")
        size = tuple(fixed.shape[2:])
        work = self.work_size or size
        _require_divisible(work, 2 ** (self.levels - 1), "He2022RegNet")
        x = torch.cat([moving, fixed], dim=1)
        if work != size:
            x = spatial.resize_image(x, work)
        feats = self._features(x)
        fields = [self.heads[k](feats[k]) for k in range(self.n_scales)]
        fused = [None] * self.n_scales
        fused[-1] = fields[-1]
        weights = [None] * (self.n_scales - 1)
        for k in reversed(range(self.n_scales - 1)):
            up = spatial.resize_field(fused[k + 1], fields[k].shape[2:])
            fused[k], weights[k] = self.dfsa[k](up, fields[k])
        ddf = spatial.resize_field(fused[0], size) if work != size else fused[0]
        return {"ddf": ddf, "warped": spatial.warp(moving, ddf), "fields": fields, "fused": fused,
                "weights": weights}

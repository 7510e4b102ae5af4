"""Two baseline registration networks of He et al. 2022 (Table 1): AC-RegNet and a recursive cascaded network.

* :class:`ACRegNet`: Mansilla, Milone and Ferrante, "Learning deformable registration of medical images with
  anatomical constraints", Neural Networks 124, 2020; layout from the authors' public repository
  ``lucasmansilla/ACRN_Chest_X-ray_IA`` (the original TensorFlow ``VectorCNN`` of ``models.py`` and the later
  PyTorch port ``networks._UNet`` / ``modules.py``).
* :class:`RCINet`: the recursive cascaded network of Zhao, Dong, Chang and Xu, "Recursive cascaded networks
  for unsupervised medical image registration", ICCV 2019 (reference [49] of He et al., used there with the
  AC-RegNet anatomical constraints), built from AC-RegNet U-Nets.

Both are 2D (chest X-rays, 64x64 training images) and called as ``model(moving, fixed) -> dict``; fields are
``(B, 2, H, W)`` in pixels, channel ``i`` along array axis ``i``, and warping pulls back
(:mod:`regbench.spatial`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import spatial
from .blocks import flow_head

SKIP_MODES = ("add", "concat")


def _require_2d(ndim: int, what: str) -> None:
    if ndim != 2:
        raise ValueError(f"{what} is 2D only (He et al. 2022 register chest X-rays); got ndim={ndim}")


def _work_size(work_size: Sequence[int] | int | None, factor: int, what: str) -> tuple[int, int] | None:
    if work_size is None:
        return None
    if isinstance(work_size, int):
        work_size = (work_size, work_size)
    size = tuple(int(s) for s in work_size)
    if len(size) != 2:
        raise ValueError(f"{what} work_size must be (H, W), got {work_size}")
    if any(s % factor for s in size):
        raise ValueError(f"{what} work_size {size} must be divisible by {factor}")
    return size


def _check_pair(moving: torch.Tensor, fixed: torch.Tensor, what: str) -> None:
    if moving.shape != fixed.shape:
        raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a shape")
    if moving.dim() != 4:
        raise ValueError(f"{what} takes 2D images (B, C, H, W), got {tuple(moving.shape)}")


class _Conv(nn.Sequential):
    """3x3 convolution (padding 1) with optional BatchNorm (then no convolution bias): the repository's ``Conv``."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool):
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        super().__init__(*layers)


class _ConvELUConv(nn.Sequential):
    """3x3 conv -> ELU -> 3x3 conv (no activation after the second convolution)."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool):
        super().__init__(_Conv(in_ch, out_ch, batch_norm), nn.ELU(), _Conv(out_ch, out_ch, batch_norm))


class _UpBlock(nn.Module):
    """Decoder level: 2x nearest upsampling + 3x3 conv of the coarser features, merge with the skip (sum or
    concatenation), ELU, conv-ELU-conv, ELU."""

    def __init__(self, in_ch: int, out_ch: int, batch_norm: bool, skip: str):
        super().__init__()
        self.skip = skip
        self.up = _Conv(in_ch, out_ch, batch_norm)
        self.conv = _ConvELUConv(out_ch if skip == "add" else 2 * out_ch, out_ch, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        y = self.up(F.interpolate(x, scale_factor=2, mode="nearest"))
        y = y + skip if self.skip == "add" else torch.cat([y, skip], dim=1)
        return F.elu(self.conv(F.elu(y)))


class ACRegUNet(nn.Module):
    """The AC-RegNet U-Net: concatenated ``(moving, fixed)`` -> displacement field in pixels of its grid.

    Input ``(B, in_channels, h, w)`` with ``h, w`` divisible by ``2 ** (len(enc_channels) - 1)``; output
    ``(B, 2, h, w)``. See :class:`ACRegNet` for the layout and the choices made.
    """

    def __init__(self, in_channels: int = 2, enc_channels: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.5,
                 batch_norm: bool = True, skip: str = "add"):
        super().__init__()
        enc = [int(c) for c in enc_channels]
        if len(enc) < 2 or min(enc) < 1:
            raise ValueError(f"enc_channels needs at least two positive widths, got {tuple(enc_channels)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if skip not in SKIP_MODES:
            raise ValueError(f"skip must be one of {SKIP_MODES}, got {skip!r}")
        self.levels, self.dropout = len(enc), float(dropout)
        self.enc = nn.ModuleList(
            _ConvELUConv(in_channels if i == 0 else enc[i - 1], enc[i], batch_norm) for i in range(self.levels)
        )
        # decoder level i (0-based, i < levels - 1) upsamples level-(i + 1) features to enc[i] channels
        self.dec = nn.ModuleList(_UpBlock(enc[i + 1], enc[i], batch_norm, skip) for i in range(self.levels - 1))
        self.head = flow_head(2, enc[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(f"spatial sizes {tuple(x.shape[2:])} must be divisible by {factor} for the "
                             "AC-RegNet U-Net")
        skips = []
        y = x
        for i, block in enumerate(self.enc):
            y = block(y)
            if i < self.levels - 1:
                skips.append(y)  # pre-activation features, as in the repository
                y = F.avg_pool2d(F.elu(y), 2)
        y = F.elu(y)
        for i in reversed(range(self.levels - 1)):
            y = F.dropout(y, p=self.dropout, training=self.training)
            y = self.dec[i](y, skips[i])
        return self.head(y)


class ACRegNet(nn.Module):
    """AC-RegNet registration network (Mansilla et al., Neural Networks 124, 2020; repository
    ``lucasmansilla/ACRN_Chest_X-ray_IA``).

    A U-Net regresses the displacement field from the channel-concatenated ``(moving, fixed)`` pair:

    * encoder levels of widths ``enc_channels`` (16, 32, 64, 128), each 3x3 conv -> ELU -> 3x3 conv; between
      levels ELU then 2x2 average pooling; ELU after the deepest level;
    * decoder levels 64, 32, 16: dropout (``dropout``, functional, active in training only) on the incoming
      features, 2x nearest-neighbour upsampling + 3x3 conv to the level width (the repository's ``UpConv``;
      not a transposed convolution), merge with the encoder skip of that level (its pre-activation output),
      ELU, 3x3 conv -> ELU -> 3x3 conv, ELU;
    * a 3x3 output convolution to 2 channels = the displacement in pixels, initialised near zero
      (N(0, 1e-5) weights, zero bias) so that training starts at the identity.

    Choices and deviations (constructor arguments where it matters):

    * ``batch_norm=True``: BatchNorm (no conv bias) after every hidden 3x3 convolution, as in the original
      TensorFlow ``VectorCNN`` (``ops.conv2d(..., bn=True)``) and the repository's ``Conv`` module. The later
      PyTorch port builds its level blocks with ``use_batchnorm=False``; ``batch_norm=False`` reproduces that.
    * Both repository versions also put BatchNorm on the output convolution; here the output convolution has
      a bias and no BatchNorm, since a normalised output cannot start at the identity.
    * ``skip="add"``: the repository *sums* the upsampled features and the skip (TensorFlow ``tf.add``,
      PyTorch ``x += y``); ``skip="concat"`` concatenates them instead (decoder convolutions then see twice
      the level width).
    * Hidden convolutions keep PyTorch's default initialisation (the TensorFlow code used a truncated normal
      with std 0.01).
    * ``work_size``: optional ``(H, W)`` the network runs at. Inputs are resized to it
      (:func:`regbench.spatial.resize_image`) and the field resized back with its values rescaled
      (:func:`regbench.spatial.resize_field`); the repository registers 256x256 test images this way with a
      model trained at 64x64. ``None``: run at the input size.

    Training loss (handled by the trainer; repository ``ACRegNet.cfg`` / ``train.py``): global NCC of warped
    moving vs fixed image + 5e-5 total variation of the field + 1.0 cross-entropy of the warped moving vs fixed
    label maps + 0.1 squared distance of their codes from the pre-trained label auto-encoder
    (:class:`regbench.models.he2022.AnatomicalAutoEncoder`); Adam, lr 1e-3, 64x64 images.

    Args:
        ndim: must be 2.
        enc_channels: encoder widths; the decoder uses them in reverse, without the deepest.
        dropout: dropout probability on the features entering each decoder level (0.5 in the repository).
        batch_norm: BatchNorm after every hidden convolution (see above).
        skip: ``"add"`` (repository) or ``"concat"``.
        in_channels: channels per image (moving and fixed each).
        work_size: see above.

    Forward: ``moving``, ``fixed`` ``(B, in_channels, H, W)``; ``H, W`` (or ``work_size``) divisible by
    ``2 ** (len(enc_channels) - 1)`` (8 by default). Returns a dict with ``ddf`` ``(B, 2, H, W)`` in pixels of
    the input grid and ``warped`` ``(B, in_channels, H, W)``, the moving image pulled back by ``ddf``.
    """

    def __init__(self, ndim: int = 2, *, enc_channels: Sequence[int] = (16, 32, 64, 128), dropout: float = 0.5,
                 batch_norm: bool = True, skip: str = "add", in_channels: int = 1,
                 work_size: Sequence[int] | int | None = None):
        super().__init__()
        _require_2d(ndim, "ACRegNet")
        self.unet = ACRegUNet(2 * in_channels, enc_channels, dropout, batch_norm, skip)
        self.work_size = _work_size(work_size, 2 ** (self.unet.levels - 1), "ACRegNet")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        _check_pair(moving, fixed, "ACRegNet")
        size = tuple(fixed.shape[2:])
        work = self.work_size or size
        x = torch.cat([moving, fixed], dim=1)
        if work != size:
            x = spatial.resize_image(x, work)
        ddf = self.unet(x)
        if work != size:
            ddf = spatial.resize_field(ddf, size)
        return {"ddf": ddf, "warped": spatial.warp(moving, ddf)}


class RCINet(nn.Module):
    """Recursive cascaded network (Zhao et al., ICCV 2019, Sec. 3) with AC-RegNet U-Nets as cascades.

    Cascade ``k`` (1..``n_cascades``) sees the current warped moving image and the fixed image and predicts a
    residual field ``psi_k`` on the fixed grid; the fields are composed so that the moving image is warped
    successively (Zhao et al.: ``I_m^(k) = phi_k(I_m^(k-1))``). With pull-back warping this is
    ``ddf_k(x) = psi_k(x) + ddf_{k-1}(x + psi_k(x))`` (``ddf_0 = 0``), i.e.
    ``spatial.compose(ddf_{k-1}, psi_k)``, and ``warped_k = warp(moving, ddf_k)``: every stage warps the
    *original* moving image with the composed field, so the image is interpolated once per stage, never
    re-interpolated.

    Choices:

    * ``n_cascades = 3`` (He et al. do not give the number; Zhao et al. train 1-10 cascades).
    * Separate weights per cascade, as in Zhao et al.'s training (their shared-weight cascading is a test-time
      option and not implemented here). The whole cascade is trained end-to-end; Zhao et al. measure image
      similarity on the final warped image only and regularise every ``psi_k``; He et al. add the AC-RegNet
      anatomical terms (label cross-entropy, auto-encoder code distance). Losses are the trainer's job.
    * Each cascade is an :class:`ACRegUNet` with the same widths as :class:`ACRegNet` (``enc_channels``,
      ``dropout``, ``batch_norm``, ``skip`` forwarded), output initialised near zero, so the cascade starts at
      the identity. Zhao et al. use VTN / VoxelMorph-style sub-networks (and an affine first cascade in 3D);
      neither is used here.
    * ``work_size`` as in :class:`ACRegNet`: the whole cascade runs on the working grid (moving image resized
      once); the composed fields are resized back to the input grid.

    Args:
        ndim: must be 2.
        n_cascades: number of cascades (>= 1).
        enc_channels, dropout, batch_norm, skip, in_channels, work_size: as in :class:`ACRegNet`.

    Forward: ``moving``, ``fixed`` ``(B, in_channels, H, W)``, ``H, W`` (or ``work_size``) divisible by
    ``2 ** (len(enc_channels) - 1)``. Returns a dict:

    * ``ddf``: ``(B, 2, H, W)`` final composed field, pixels of the input grid;
    * ``warped``: ``(B, in_channels, H, W)`` = ``warp(moving, ddf)``;
    * ``stages``: ``[ddf_1, ..., ddf_n]`` composed fields after each cascade, same shape and units
      (``stages[-1]`` is ``ddf``);
    * ``fields``: ``[psi_1, ..., psi_n]`` residual fields on the working grid, pixels of that grid.
    """

    def __init__(self, ndim: int = 2, *, n_cascades: int = 3, enc_channels: Sequence[int] = (16, 32, 64, 128),
                 dropout: float = 0.5, batch_norm: bool = True, skip: str = "add", in_channels: int = 1,
                 work_size: Sequence[int] | int | None = None):
        super().__init__()
        _require_2d(ndim, "RCINet")
        if n_cascades < 1:
            raise ValueError(f"n_cascades must be >= 1, got {n_cascades}")
        self.cascades = nn.ModuleList(
            ACRegUNet(2 * in_channels, enc_channels, dropout, batch_norm, skip) for _ in range(n_cascades)
        )
        self.levels = self.cascades[0].levels
        self.work_size = _work_size(work_size, 2 ** (self.levels - 1), "RCINet")

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        _check_pair(moving, fixed, "RCINet")
        size = tuple(fixed.shape[2:])
        work = self.work_size or size
        factor = 2 ** (self.levels - 1)
        if any(s % factor for s in work):
            raise ValueError(f"spatial sizes {work} must be divisible by {factor} for RCINet")
        resized = work != size
        mov_w = spatial.resize_image(moving, work) if resized else moving
        fix_w = spatial.resize_image(fixed, work) if resized else fixed
        current, ddf = mov_w, None
        fields, stages = [], []
        for cascade in self.cascades:
            psi = cascade(torch.cat([current, fix_w], dim=1))
            ddf = psi if ddf is None else spatial.compose(ddf, psi)
            current = spatial.warp(mov_w, ddf)
            fields.append(psi)
            stages.append(spatial.resize_field(ddf, size) if resized else ddf)
        out_ddf = stages[-1]
        warped = spatial.warp(moving, out_ddf) if resized else current
        return {"ddf": out_ddf, "warped": warped, "stages": stages, "fields": fields}

"""Cai et al., "Registration of 3D medical images based on unsupervised cooperative cascade of deep networks",
Biomedical Signal Processing and Control 83, 2023 (``shared/papers/001_*.txt``): DR-Net, the base networks
VoxelMorph and VTN/IVTN as the paper re-implements them (the Recursive Cascaded Networks code, Zhao et al.,
ICCV 2019), the VTN affine stem used for pre-alignment, recursive cascades (CR) and the paper's cooperative
multi-scale cascades (MCR, Eq. 4-6). Choices the paper leaves open are marked *ours* (all in docs/cai2023.md).

**DR-Net** (Sec. 2.2, Fig. 2), :class:`DRNet`. Five encoder levels at sizes ``s, s/2, s/4, s/8, s/16`` (128^3
input: smallest map 8^3 as in Sec. 2.2). Level ``k``: ``e_k = ConvRes(IncepBlock(x_k))``; ``x_0`` is the image
pair, ``x_k = cat(pool(e_{k-1}), p_k)`` with ``pool`` the parallel mean + max pooling (concatenated, Sec. 2.2.3)
and ``p_k`` the pyramidal input (PIM, Sec. 2.2.4: ``p_k`` = 3x3x3 stride-2 convolution of ``p_{k-1}``,
``p_0`` = the image pair, for the four scales ``s .. s/8``; *ours*: 8 channels, LeakyReLU). Decoder levels
``l1 .. l4`` (sizes ``s/8 .. s``): 4x4x4 stride-2 up-convolution, concatenation with the ResPath of ``e_k``
(Sec. 2.2.2: ``4 - k`` ConvRes blocks, more towards the top), SCAM (Sec. 2.2.5, Eq. 1-3), ConvRes.

* ConvRes (Sec. 2.2.1, Fig. 2d): ``a = act(conv3(x))``, ``b = act(conv3(a))``, ``act(conv1(cat(a, b)))``.
* IncepBlock (Sec. 2.2.3, Fig. 2a): three 3x3x3 convolutions in sequence (receptive fields 3, 5, 7) whose
  outputs are concatenated, plus a 1x1x1 convolution of the input as residual. *Ours*: widths 1/6, 1/3, 1/2 of
  the output (the MultiResUNet split the design follows), LeakyReLU(0.2) everywhere except inside SCAM.
* SCAM (Eq. 1-3): ``F_z = F * (sigmoid(MLP(GAP F)) + sigmoid(MLP(GMP F))) + F * sigmoid(f3(f3(f3([mean_c F,
  max_c F]))))``, MLP hidden size ``C/16``. The spatial branch's three 3x3x3 convolutions use stride 1 (*ours*:
  the text says stride 2, which would give a map 1/8 the size of ``F`` and contradicts the 7x7x7 receptive
  field it claims); hidden width 8.
* Ablation switches (Tables 1-2): ``incep=False`` replaces each IncepBlock by one 3x3x3 convolution and the
  parallel pooling by max pooling; ``pim=False`` drops the pyramidal inputs; ``scam=False`` the attention;
  ``respath=False`` uses plain skip connections.

**Base networks** of the cascades, each with ``flow(x)`` (full-resolution field, voxels) and
``multiscale(x)`` (fields at ``s/4, s/2, s``, each in voxels of its own grid; the decoder layers ``l2, l3, l4``
of Sec. 2.3-2.4): :class:`DRNet`, :class:`VMBase` (VoxelMorph VM-2 as in the RCN code: 16/32/32/32 encoder,
LeakyReLU, flow head N(0, 1e-5)) and :class:`VTN` (RCN's VTN, ``channels=16``: ten encoder convolutions to
512 channels at ``s/64``, a decoder of 4x4x4 up-convolutions with intermediate flow predictions, output x 20).
The extra heads of ``multiscale`` exist only when built with ``multiscale=True`` (MCR): that is why MCR
models have slightly more parameters than CR ones (Table 5: 168 vs 169 Mb).

**Affine stem** (:class:`VTNAffine`, RCN's ``VTNAffineStem``): the VTN encoder, then two convolutions whose
kernel covers the whole ``s/64`` map to the 9 entries of ``W = A - I`` and the translation (voxels, about the
grid centre). *Ours*: both zero-initialised (identity at start). ``image_size`` fixes that kernel (RCN: 128).

**Cascades** (:class:`Cai2023Cascade`, registered as ``cai2023``):

* ``mode="cr"`` (Recursive Cascaded Networks, Zhao et al. 2019, as in its ``framework.py``): stage ``n`` sees
  ``(warp(M, D_{n-1}), F)`` and predicts ``f_n``; ``D_n = compose(D_{n-1}, f_n) = f_n + D_{n-1}(x + f_n)``;
  the moving image is always warped once from the original by the aggregated field.
* ``mode="mcr"`` (Eq. 4-6): inside sub-network ``n`` the fields of layers ``l2, l3, l4`` accumulate,
  ``phi^a_{l_k} = phi_{l_k} + up(phi^a_{l_{k-1}})`` (Eq. 4; ``up`` a learned 4x4x4 stride-2 up-convolution
  per sub-network and scale, initialised to bilinear x2 upsampling of a voxel field, i.e. identity for the
  motion; *ours*: the accumulation operator ``A`` is addition); between sub-networks the cooperative field of
  every scale composes with the previous one on that scale's grid, ``phi^c_n = w(phi^c_{n-1}, phi^a_n) +
  phi^a_n`` (Eq. 5); the next sub-network and the output use ``w(M, phi^c_{l4})`` (Eq. 6).
* ``affine=True`` puts the affine stem first (the paper pre-aligns with RCN's affine network trained on the
  training set, Sec. 4, and counts it in every model's "Para." column; *ours*: trained jointly, as in RCN).

Outputs (all fields ``(B, ndim, *spatial)`` in voxels of the fixed grid): ``ddf`` (affine then deformable,
one field), ``warped``, ``flow`` (the deformable part alone, what Eq. 10 regularises), ``stages`` (one dict per
deformable sub-network: ``flow`` its own full-resolution field, ``ddf``/``warped`` the cumulative result after
it), with ``affine=True`` also ``affine`` ``(B, ndim, ndim+1)``, ``affine_ddf``, ``affine_warped``; with
``mode="mcr"`` ``scales``: the last sub-network's cooperative fields at ``l2, l3, l4`` upsampled (linear
interpolation) to the input grid, each ``{flow, ddf, warped}`` (the multi-scale loss, Eq. 13-15).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import conv_nd, flow_head
from .voxelmorph import DECODER as VM_DECODER
from .voxelmorph import ENCODER as VM_ENCODER
from .voxelmorph import VoxelMorphUNet, _upsample_cat

#: DR-Net encoder widths per level (*ours*: chosen so that DR-Net has about the parameter count the paper's
#: "Para." column implies, see docs/cai2023.md).
DRNET_WIDTHS = (24, 48, 96, 192, 288)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _conv(ndim: int, cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Module:
    return conv_nd(ndim)(cin, cout, k, stride=stride, padding=k // 2)


def _upconv(ndim: int, cin: int, cout: int, bias: bool = True) -> nn.Module:
    """4x4(x4) stride-2 transposed convolution: exact 2x upsampling of the grid."""
    cls = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
    return cls(cin, cout, 4, stride=2, padding=1, bias=bias)


def _pool(ndim: int, kind: str, x: torch.Tensor) -> torch.Tensor:
    fn = {("avg", 2): F.avg_pool2d, ("avg", 3): F.avg_pool3d, ("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d}
    return fn[(kind, ndim)](x, 2)


def _kaiming_(conv: nn.Module, slope: float = 0.2) -> None:
    """He-normal init for LeakyReLU(``slope``) over the inputs each output voxel sums (a transposed stride-2
    convolution: ``in_channels x kernel / 2^ndim`` taps), bias zero."""
    w = conv.weight
    taps = w[0, 0].numel()
    if isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        fan = w.shape[0] * taps / (conv.stride[0] ** (w.dim() - 2))
    else:
        fan = w.shape[1] * taps
    with torch.no_grad():
        w.normal_(0.0, (2.0 / (1.0 + slope ** 2)) ** 0.5 / fan ** 0.5)
        if conv.bias is not None:
            conv.bias.zero_()


class ConvRes(nn.Module):
    """Convolutional residual block (Sec. 2.2.1, Fig. 2d): ``(B, cin, *s) -> (B, cout, *s)``."""

    def __init__(self, ndim: int, cin: int, cout: int):
        super().__init__()
        self.c1, self.c2 = _conv(ndim, cin, cout), _conv(ndim, cout, cout)
        self.fuse = _conv(ndim, 2 * cout, cout, k=1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.c1(x))
        b = self.act(self.c2(a))
        return self.act(self.fuse(torch.cat([a, b], 1)))


class IncepBlock(nn.Module):
    """Sequential inception block (Sec. 2.2.3, Fig. 2a): ``(B, cin, *s) -> (B, cout, *s)``.

    Three 3x3(x3) convolutions in sequence, widths ``cout/6, cout/3, rest`` (approximating 3, 5 and 7 wide
    kernels), concatenated, plus a 1x1(x1) convolution of the input (residual, matching widths).
    """

    def __init__(self, ndim: int, cin: int, cout: int):
        super().__init__()
        w1, w2 = max(cout // 6, 1), max(cout // 3, 1)
        w3 = cout - w1 - w2
        if w3 < 1:
            raise ValueError(f"IncepBlock needs at least 3 output channels, got {cout}")
        self.c1, self.c2, self.c3 = _conv(ndim, cin, w1), _conv(ndim, w1, w2), _conv(ndim, w2, w3)
        self.res = _conv(ndim, cin, cout, k=1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.c1(x))
        b = self.act(self.c2(a))
        c = self.act(self.c3(b))
        return self.act(torch.cat([a, b, c], 1) + self.res(x))


class SCAM(nn.Module):
    """Spatial-channel attention (Sec. 2.2.5, Eq. 1-3): ``F_z = F * M_c(F) + F * M_s(F)``, shape-preserving.

    ``M_c = sigmoid(MLP(GAP F)) + sigmoid(MLP(GMP F))`` (shared MLP ``C -> C/r -> C``, ReLU, ``r = 16``);
    ``M_s = sigmoid(f3(relu(f3(relu(f3([mean_c F, max_c F]))))))`` (stride-1 3x3(x3) convolutions).
    """

    def __init__(self, ndim: int, ch: int, reduction: int = 16, hidden: int = 8):
        super().__init__()
        mid = max(ch // reduction, 1)
        self.mlp = nn.Sequential(_conv(ndim, ch, mid, k=1), nn.ReLU(), _conv(ndim, mid, ch, k=1))
        self.spatial = nn.Sequential(_conv(ndim, 2, hidden), nn.ReLU(), _conv(ndim, hidden, hidden), nn.ReLU(),
                                     _conv(ndim, hidden, 1))
        self.ndim = ndim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, 2 + self.ndim))
        gap, gmp = x.mean(dims, keepdim=True), x.amax(dims, keepdim=True)
        mc = torch.sigmoid(self.mlp(gap)) + torch.sigmoid(self.mlp(gmp))
        ms = torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
        return x * mc + x * ms


class ResPath(nn.Module):
    """``n`` ConvRes blocks in sequence on an encoder skip (Sec. 2.2.2); ``n = 0`` is a plain skip."""

    def __init__(self, ndim: int, ch: int, n: int):
        super().__init__()
        self.blocks = nn.Sequential(*[ConvRes(ndim, ch, ch) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def _check_pair(moving: torch.Tensor, fixed: torch.Tensor, multiple: int, who: str) -> None:
    if moving.shape != fixed.shape:
        raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid")
    bad = [s for s in fixed.shape[2:] if s % multiple]
    if bad:
        raise ValueError(f"spatial sizes {tuple(fixed.shape[2:])} must be divisible by {multiple} for {who}")


class _Base(nn.Module):
    """Common interface of the cascade's sub-networks (input: the concatenated pair ``(B, 2C, *s)``).

    ``flow(x)``: ``(B, ndim, *s)`` full-resolution field. ``multiscale(x)``: ``[(B, ndim, s/4), (B, ndim, s/2),
    (B, ndim, s)]`` fields of the decoder layers ``l2, l3, l4``, each in voxels of its grid (needs
    ``multiscale=True`` at construction). ``multiple``: the spatial sizes must be divisible by it.
    """

    multiple: int = 16

    def flow(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        """Single-network registration: ``{"ddf", "warped"}`` (see the module docstring)."""
        _check_pair(moving, fixed, self.multiple, type(self).__name__)
        ddf = self.flow(torch.cat([moving, fixed], 1))
        return {"ddf": ddf, "warped": spatial.warp(moving, ddf)}


class DRNet(_Base):
    """DR-Net (Sec. 2.2, Fig. 2; see the module docstring).

    Args:
        ndim: 3 (the paper's) or 2.
        in_channels: channels per image (the network sees ``2 * in_channels``).
        widths: encoder widths of the five levels (decoder level ``k`` uses ``widths[k]``).
        incep, pim, scam, respath: the module switches of Tables 1-2 (all on: the full DR-Net).
        pim_channels: width of the pyramidal inputs ``p_1 .. p_3``.
        multiscale: add field heads at ``l2`` and ``l3`` (for MCR cascades).
        init: ``"kaiming"`` (default, *ours*): every convolution but the field heads He-normal for
            LeakyReLU(0.2) (fan-in), biases zero; ``"torch"``: PyTorch's default. With PyTorch's default
            (variance ``1/(3 fan_in)``, a third of what keeps the signal's scale) the gradient reaching DR-Net's
            encoder at initialisation is ~1e-13 to 1e-18, below Adam's eps (1e-8), so the encoder barely
            moves: in the 200-step demo DR-Net(L) stayed at the identity (docs/cai2023.md). The paper does
            not state its initialisation; its framework's default (Glorot) keeps the scale of each layer.

    Input sizes must be divisible by 16. Raises ValueError for fewer than 5 widths or an unknown ``init``.
    """

    def __init__(self, ndim: int = 3, in_channels: int = 1, widths: tuple[int, ...] = DRNET_WIDTHS,
                 incep: bool = True, pim: bool = True, scam: bool = True, respath: bool = True,
                 pim_channels: int = 8, multiscale: bool = False, init: str = "kaiming"):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5:
            raise ValueError(f"DR-Net needs 5 encoder widths, got {widths}")
        if init not in ("kaiming", "torch"):
            raise ValueError(f"init must be 'kaiming' or 'torch', got {init!r}")
        self.ndim, self.incep, self.pim, self.scam = ndim, bool(incep), bool(pim), bool(scam)
        cin0 = 2 * in_channels
        self.pyramid = nn.ModuleList(
            nn.Sequential(_conv(ndim, cin0 if k == 1 else pim_channels, pim_channels, stride=2), _act())
            for k in range(1, 4)) if self.pim else None
        self.enc_first = nn.ModuleList()
        self.enc_res = nn.ModuleList()
        for k, w in enumerate(widths):
            cin = cin0 if k == 0 else widths[k - 1] * (2 if self.incep else 1)
            if self.pim and 1 <= k <= 3:
                cin += pim_channels
            self.enc_first.append(IncepBlock(ndim, cin, w) if self.incep else nn.Sequential(_conv(ndim, cin, w), _act()))
            self.enc_res.append(ConvRes(ndim, w, w))
        self.up = nn.ModuleList()
        self.paths = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = widths[4]
        for k in (3, 2, 1, 0):
            w = widths[k]
            self.up.append(nn.Sequential(_upconv(ndim, cin, w), _act()))
            self.paths.append(ResPath(ndim, w, 4 - k if respath else 0))
            self.attn.append(SCAM(ndim, 2 * w) if self.scam else nn.Identity())
            self.dec.append(ConvRes(ndim, 2 * w, w))
            cin = w
        if init == "kaiming":  # before the field heads, which keep their near-zero start
            for mod in self.modules():
                if isinstance(mod, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                    _kaiming_(mod)
        self.head = flow_head(ndim, widths[0])
        self.heads_ms = nn.ModuleList([flow_head(ndim, widths[2]), flow_head(ndim, widths[1])]) if multiscale else None

    def _down(self, e: torch.Tensor) -> torch.Tensor:
        if self.incep:  # parallel mean and max pooling, concatenated (Sec. 2.2.3)
            return torch.cat([_pool(self.ndim, "avg", e), _pool(self.ndim, "max", e)], 1)
        return _pool(self.ndim, "max", e)

    def decoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder outputs of ``l1 .. l4``: ``[(B, w3, s/8), (B, w2, s/4), (B, w1, s/2), (B, w0, s)]``."""
        skips, p, h = [], x, x
        for k in range(5):
            if k > 0:
                h = self._down(skips[-1])
                if self.pim and k <= 3:
                    p = self.pyramid[k - 1](p)
                    h = torch.cat([h, p], 1)
            skips.append(self.enc_res[k](self.enc_first[k](h)))
        y, feats = skips[4], []
        for i, k in enumerate((3, 2, 1, 0)):
            y = torch.cat([self.up[i](y), self.paths[i](skips[k])], 1)
            y = self.dec[i](self.attn[i](y))
            feats.append(y)
        return feats

    def flow(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder_features(x)[-1])

    def multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.heads_ms is None:
            raise RuntimeError("DRNet was built without multiscale heads (multiscale=True)")
        f = self.decoder_features(x)
        return [self.heads_ms[0](f[1]), self.heads_ms[1](f[2]), self.head(f[3])]


class VMBase(_Base):
    """VoxelMorph VM-2 (Balakrishnan et al. 2019; RCN's ``VoxelMorph`` with ``channels=16``) as a cascade
    sub-network; the same U-Net as :class:`regbench.models.voxelmorph.VoxelMorph` (no integration).

    ``multiscale``: heads on the decoder features at ``s/4`` (after the second skip concatenation, 64
    channels) and ``s/2`` (after ``decode1_1``, 32 channels), besides the full-resolution head.
    """

    def __init__(self, ndim: int = 3, in_channels: int = 1, multiscale: bool = False):
        super().__init__()
        self.unet = VoxelMorphUNet(ndim, 2 * in_channels, VM_ENCODER, VM_DECODER["vm2"])
        self.head = flow_head(ndim, self.unet.out_channels)
        dec = VM_DECODER["vm2"]
        self.heads_ms = (nn.ModuleList([flow_head(ndim, dec[1] + VM_ENCODER[1]), flow_head(ndim, dec[4])])
                         if multiscale else None)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        u = self.unet
        skips = [x]
        for layer in u.enc:
            skips.append(layer(skips[-1]))
        y = skips[-1]
        taps = []
        for i in range(3):
            y = _upsample_cat(u.dec[i](y), skips[-(i + 2)])
            if i == 1:
                taps.append(y)  # s/4
        y = u.dec[4](u.dec[3](y))
        taps.append(y)  # s/2
        y = u.dec[5](_upsample_cat(y, skips[0]))
        taps.append(u.extra(y) if u.extra is not None else y)
        return taps

    def flow(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unet(x))

    def multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.heads_ms is None:
            raise RuntimeError("VMBase was built without multiscale heads (multiscale=True)")
        t = self._features(x)
        return [self.heads_ms[0](t[0]), self.heads_ms[1](t[1]), self.head(t[2])]


class _VTNEncoder(nn.Module):
    """RCN's VTN encoder: conv1..conv6_1 (3x3x3, LeakyReLU(0.1)); returns ``[x, conv1, conv2, conv3_1,
    conv4_1, conv5_1, conv6_1]`` at sizes ``s, s/2 .. s/64`` with ``c, 2c, 4c, 8c, 16c, 32c`` channels."""

    def __init__(self, ndim: int, cin: int, c: int):
        super().__init__()
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731 - RCN's LeakyReLU slope
        self.widths = (cin, c, 2 * c, 4 * c, 8 * c, 16 * c, 32 * c)
        layers = []
        prev = cin
        for i, w in enumerate(self.widths[1:]):
            block = [_conv(ndim, prev, w, stride=2), act()]
            if i >= 2:  # conv3_1 .. conv6_1
                block += [_conv(ndim, w, w), act()]
            layers.append(nn.Sequential(*block))
            prev = w
        self.levels = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        for layer in self.levels:
            out.append(layer(out[-1]))
        return out


class VTN(_Base):
    """VTN deformable stem of the Recursive Cascaded Networks code (Zhao et al. 2019; "IVTN" in Cai et al.).

    Decoder (RCN ``VTN.build``): from ``conv6_1``, at each level ``pred = conv3(concat)`` (3 channels),
    ``concat_{k} = cat(enc_k, leaky(upconv(concat_{k+1})), upconv(pred_{k+1}))``, and the output is a
    4x4x4 up-convolution of ``concat1`` to full size, multiplied by 20 (RCN's flow scaling). *Ours*: that
    last layer is initialised N(0, 1e-5) so the stem starts at the identity (RCN: uniform scaling init).

    ``multiscale``: ``pred2`` (RCN's own, at ``s/4``), a new 3x3x3 head on ``concat1`` (``s/2``) and the
    output (``s``); each x 20 like the output. Input sizes divisible by 64.
    """

    multiple = 64

    def __init__(self, ndim: int = 3, in_channels: int = 1, channels: int = 16, multiscale: bool = False,
                 flow_multiplier: float = 20.0):
        super().__init__()
        self.encoder = _VTNEncoder(ndim, 2 * in_channels, channels)
        w = self.encoder.widths
        self.flow_multiplier = float(flow_multiplier)
        self.preds = nn.ModuleList()     # pred6 .. pred2 on concat at levels 6 .. 2
        self.up_pred = nn.ModuleList()   # upsamp(k)to(k-1)
        self.deconv = nn.ModuleList()    # deconv5 .. deconv1
        cin = w[6]
        for level in range(6, 1, -1):   # prediction at `level`, upsampling to level-1
            self.preds.append(_conv(ndim, cin, ndim))
            self.up_pred.append(_upconv(ndim, ndim, ndim, bias=False))
            self.deconv.append(nn.Sequential(_upconv(ndim, cin, w[level - 1], bias=False), nn.LeakyReLU(0.1)))
            cin = w[level - 1] * 2 + ndim
        self.out = _upconv(ndim, cin, ndim, bias=False)
        nn.init.normal_(self.out.weight, 0.0, 1e-5)
        self.head_half = _conv(ndim, cin, ndim) if multiscale else None
        if self.head_half is not None:
            nn.init.normal_(self.head_half.weight, 0.0, 1e-5)
            nn.init.zeros_(self.head_half.bias)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder(x)
        concat, pred2 = enc[6], None
        for i, level in enumerate(range(6, 1, -1)):
            pred = self.preds[i](concat)
            if level == 2:
                pred2 = pred
            concat = torch.cat([enc[level - 1], self.deconv[i](concat), self.up_pred[i](pred)], 1)
        return concat, pred2

    def flow(self, x: torch.Tensor) -> torch.Tensor:
        concat1, _ = self._decode(x)
        return self.out(concat1) * self.flow_multiplier

    def multiscale(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.head_half is None:
            raise RuntimeError("VTN was built without multiscale heads (multiscale=True)")
        concat1, pred2 = self._decode(x)
        m = self.flow_multiplier
        return [pred2 * m, self.head_half(concat1) * m, self.out(concat1) * m]


class VTNAffine(nn.Module):
    """RCN's affine stem (``VTNAffineStem``): VTN encoder (16 .. 512 channels), then convolutions with a kernel
    covering the ``image_size / 64`` map to ``W`` (``ndim x ndim``) and ``b`` (``ndim``), no bias.

    ``forward(x)`` on the concatenated pair ``(B, 2C, *image_size)`` returns the ``(B, ndim, ndim + 1)`` matrix
    ``[I + W | b]`` in voxel coordinates about the grid centre (:func:`regbench.spatial.affine_to_ddf`).
    Raises ValueError for an input of another size than ``image_size``.
    """

    def __init__(self, ndim: int = 3, in_channels: int = 1, image_size: tuple[int, ...] | int = 128):
        super().__init__()
        size = (int(image_size),) * ndim if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if len(size) != ndim or any(s % 64 for s in size):
            raise ValueError(f"affine stem image_size must be {ndim} sizes divisible by 64, got {image_size}")
        self.ndim, self.size = ndim, size
        self.encoder = _VTNEncoder(ndim, 2 * in_channels, 16)
        ks = tuple(s // 64 for s in size)
        conv = conv_nd(ndim)
        self.w = conv(self.encoder.widths[-1], ndim * ndim, ks, bias=False)
        self.b = conv(self.encoder.widths[-1], ndim, ks, bias=False)
        nn.init.zeros_(self.w.weight)
        nn.init.zeros_(self.b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(f"affine stem built for {self.size}, got input {tuple(x.shape[2:])}")
        f = self.encoder(x)[-1]
        nd = self.ndim
        w = self.w(f).flatten(1).view(-1, nd, nd)
        b = self.b(f).flatten(1).view(-1, nd, 1)
        eye = torch.eye(nd, dtype=w.dtype, device=w.device)
        return torch.cat([eye + w, b], 2)


def _bilinear_upconv_(conv: nn.Module, ndim: int, gain: float = 2.0) -> None:
    """Initialise a 4x4(x4) stride-2 up-convolution as per-channel linear x2 upsampling times ``gain``
    (x2: a voxel-unit field on the coarse grid becomes the same motion in fine-grid voxels)."""
    k1 = torch.tensor([0.25, 0.75, 0.75, 0.25])
    k = k1
    for _ in range(ndim - 1):
        k = k.unsqueeze(-1) * k1
    with torch.no_grad():
        conv.weight.zero_()
        for c in range(conv.weight.shape[0]):
            conv.weight[c, c] = k * gain


BASES = {"drnet": DRNet, "voxelmorph": VMBase, "vtn": VTN}


class Cai2023Cascade(nn.Module):
    """CR and MCR cascades of DR-Net, VoxelMorph or VTN with the optional affine stem (module docstring).

    Args:
        ndim: 3 (the paper's) or 2.
        base: ``drnet``, ``voxelmorph`` or ``vtn``.
        stages: number of deformable sub-networks (1: the base network alone).
        mode: ``cr`` (recursive, RCN) or ``mcr`` (cooperative multi-scale, Eq. 4-6).
        affine: put the VTN affine stem first (``image_size`` must then be given).
        image_size: input grid of the affine stem (RCN: 128).
        base_params: keyword arguments of the base network (e.g. DR-Net's ablation switches, ``widths``).
        affine_only: return the affine stem's result alone (``ddf`` = ``affine_ddf``); changes no weights.
        in_channels: channels per image.
        checkpoint: activation checkpointing of each deformable sub-network in training
            (``torch.utils.checkpoint``, non-reentrant): the same values and gradients, but a sub-network's
            activations are recomputed in the backward pass instead of held through it, so the training peak
            holds one sub-network's activations instead of all of them (engineering, not in the paper:
            bench/bench_cai2023.py gives the figures for a 3-stage cascade at 128^3). No effect in eval mode or
            under ``torch.no_grad()``; changes no weights.

    Forward ``moving``, ``fixed``: ``(B, C, *s)`` on one grid, ``s`` divisible by the base's multiple (16;
    VTN 64). Raises ValueError for an unknown base or mode, ``stages < 1``, or a bad input grid.
    """

    def __init__(self, ndim: int = 3, base: str = "drnet", stages: int = 1, mode: str = "cr", affine: bool = False,
                 image_size: Any = None, base_params: dict | None = None, affine_only: bool = False,
                 in_channels: int = 1, checkpoint: bool = False):
        super().__init__()
        self.checkpoint = bool(checkpoint)
        if base not in BASES:
            raise ValueError(f"unknown base network {base!r}; use one of {sorted(BASES)}")
        if mode not in ("cr", "mcr"):
            raise ValueError(f"mode must be 'cr' or 'mcr', got {mode!r}")
        if int(stages) < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        if affine_only and not affine:
            raise ValueError("affine_only needs the affine stem (affine=True)")
        if affine and image_size is None:
            raise ValueError("affine=True needs image_size (the grid the affine stem is built for)")
        self.ndim, self.mode, self.n = ndim, mode, int(stages)
        self.affine_only = bool(affine_only)
        ms = mode == "mcr"
        self.subnets = nn.ModuleList(BASES[base](ndim=ndim, in_channels=in_channels, multiscale=ms,
                                                 **dict(base_params or {})) for _ in range(self.n))
        self.multiple = max(16, self.subnets[0].multiple)
        self.affine = VTNAffine(ndim, in_channels, image_size) if affine else None
        if ms:  # Eq. 4: up-convolutions l2 -> l3 and l3 -> l4 per sub-network
            self.acc_up = nn.ModuleList(
                nn.ModuleList(_upconv(ndim, ndim, ndim, bias=False) for _ in range(2)) for _ in range(self.n))
            for pair in self.acc_up:
                for conv in pair:
                    _bilinear_upconv_(conv, ndim)
        else:
            self.acc_up = None

    def _subnet(self, net: nn.Module, x: torch.Tensor):
        """``net.flow(x)`` (CR) or ``net.multiscale(x)`` (MCR), checkpointed when asked and training."""
        fn = net.flow if self.mode == "cr" else net.multiscale
        if self.checkpoint and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def _accumulate(self, n: int, fields: list[torch.Tensor]) -> list[torch.Tensor]:
        """Eq. 4: ``phi^a_{l2} = phi_{l2}``, ``phi^a_{l_k} = phi_{l_k} + up(phi^a_{l_{k-1}})``."""
        acc = [fields[0]]
        for i in (1, 2):
            acc.append(fields[i] + self.acc_up[n][i - 1](acc[-1]))
        return acc

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        _check_pair(moving, fixed, self.multiple, f"this cascade (base {type(self.subnets[0]).__name__})")
        shape = tuple(fixed.shape[2:])
        out: dict = {}
        affine_ddf, start = None, moving
        if self.affine is not None:
            matrix = self.affine(torch.cat([moving, fixed], 1))
            affine_ddf = spatial.affine_to_ddf(matrix, shape)
            start = spatial.warp(moving, affine_ddf)
            out.update(affine=matrix, affine_ddf=affine_ddf, affine_warped=start)
            if self.affine_only:
                return {**out, "ddf": affine_ddf, "warped": start, "flow": torch.zeros_like(affine_ddf),
                        "stages": []}

        def total(d: torch.Tensor) -> torch.Tensor:
            return d if affine_ddf is None else spatial.compose(affine_ddf, d)

        stages, current, coop = [], start, None
        for n, net in enumerate(self.subnets):
            x = torch.cat([current, fixed], 1)
            if self.mode == "cr":
                own = self._subnet(net, x)
                coop = own if coop is None else spatial.compose(coop, own)
                full = coop
            else:
                acc = self._accumulate(n, self._subnet(net, x))
                own = acc[-1]
                coop = acc if coop is None else [spatial.compose(c, a) for c, a in zip(coop, acc)]  # Eq. 5
                full = coop[-1]
            ddf = total(full)
            current = spatial.warp(moving, ddf)  # Eq. 6: the original moving image, warped once
            stages.append({"flow": own, "ddf": ddf, "warped": current})
        out.update(stages=stages, flow=full, ddf=stages[-1]["ddf"], warped=stages[-1]["warped"])
        if self.mode == "mcr":
            scales = []
            for field in coop[:-1]:
                up = spatial.resize_field(field, shape)
                d = total(up)
                scales.append({"flow": up, "ddf": d, "warped": spatial.warp(moving, d)})
            scales.append({"flow": full, "ddf": out["ddf"], "warped": out["warped"]})  # l4: the output itself
            out["scales"] = scales
        return out

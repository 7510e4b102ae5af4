"""VoxelMorph (Balakrishnan et al., "VoxelMorph: a learning framework for deformable medical image
registration", IEEE TMI 38(8), 2019) and its diffeomorphic variant (Dalca et al., MICCAI 2018).

Architecture (TMI 2019, Sec. III-B and Fig. 3): the moving and fixed images are concatenated into a
2-channel input to a U-Net. The encoder has four stride-2 3x3(x3) convolutions with 16, 32, 32, 32 filters,
each followed by LeakyReLU(0.2). The decoder alternates convolutions, 2x upsampling and skip concatenation;
VM-1 uses decoder filters (32, 32, 32, 32, 8, 8) and VM-2 (32, 32, 32, 32, 32, 16, 16). A final 3x3
convolution outputs the ``ndim``-channel displacement field, initialised near zero.

With ``int_steps > 0`` the head is read as a stationary velocity field at ``1 / int_downsize`` resolution,
integrated by scaling and squaring (Dalca et al. 2018, Sec. 2.2; 7 steps) and upsampled to full size.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import spatial
from .blocks import ConvBlock, flow_head

ENCODER = (16, 32, 32, 32)
DECODER = {"vm1": (32, 32, 32, 32, 8, 8), "vm2": (32, 32, 32, 32, 32, 16, 16)}


class VoxelMorphUNet(nn.Module):
    """The VoxelMorph U-Net core.

    Args:
        ndim: 2 or 3.
        in_channels: channels of the concatenated input (2 for one moving + one fixed image).
        enc: encoder filters (four stride-2 levels).
        dec: decoder filters, 6 entries (VM-1) or 7 (VM-2).

    Input ``(B, in_channels, *spatial)`` with every spatial size divisible by 16; output
    ``(B, dec[-1], *spatial)`` features at full resolution.
    """

    def __init__(self, ndim: int, in_channels: int = 2, enc=ENCODER, dec=DECODER["vm2"]):
        super().__init__()
        if len(enc) != 4 or len(dec) not in (6, 7):
            raise ValueError(f"VoxelMorph needs 4 encoder and 6 or 7 decoder widths, got {enc} and {dec}")
        self.ndim = ndim
        chans = [in_channels, *enc]
        self.enc = nn.ModuleList(ConvBlock(ndim, chans[i], chans[i + 1], stride=2) for i in range(4))
        self.dec = nn.ModuleList(
            [
                ConvBlock(ndim, enc[-1], dec[0]),
                ConvBlock(ndim, dec[0] + enc[2], dec[1]),
                ConvBlock(ndim, dec[1] + enc[1], dec[2]),
                ConvBlock(ndim, dec[2] + enc[0], dec[3]),
                ConvBlock(ndim, dec[3], dec[4]),
                ConvBlock(ndim, dec[4] + in_channels, dec[5]),
            ]
        )
        self.extra = ConvBlock(ndim, dec[5], dec[6]) if len(dec) == 7 else None
        self.out_channels = dec[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for layer in self.enc:
            skips.append(layer(skips[-1]))
        y = skips[-1]
        for i in range(3):
            y = _upsample_cat(self.dec[i](y), skips[-(i + 2)])
        y = self.dec[4](self.dec[3](y))
        y = self.dec[5](_upsample_cat(y, skips[0]))
        return self.extra(y) if self.extra is not None else y


def _upsample_cat(y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``cat([nearest 2x upsampling of y, skip], dim=1)``: ``(B, Cy, *s)``, ``(B, Cs, *2s)`` -> ``(B, Cy+Cs, *2s)``.

    Without autograd (inference), for contiguous tensors and a ``skip`` of at least 65536 elements, the
    upsampled copy is written straight into the concatenated tensor: nearest 2x upsampling repeats every value
    twice along each axis, so this is the same tensor, element for element, with one full-resolution copy
    fewer. Otherwise ``F.interpolate`` + ``torch.cat`` (whose backward the trained networks were run with).
    """
    b, cy, *s = y.shape
    fused = (not (torch.is_grad_enabled() and (y.requires_grad or skip.requires_grad))
             and y.is_contiguous() and skip.is_contiguous() and skip.numel() >= 65536
             and [2 * n for n in s] == list(skip.shape[2:]))
    if not fused:
        return torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"), skip], dim=1)
    out = y.new_empty((b, cy + skip.shape[1], *skip.shape[2:]))
    pairs = [v for n in s for v in (n, 2)]  # view (B, Cy, s0, 2, s1, 2[, s2, 2]) of the upsampled part
    ones = [v for n in s for v in (n, 1)]
    out[:, :cy].view(b, cy, *pairs).copy_(y.reshape(b, cy, *ones).expand(b, cy, *pairs))
    out[:, cy:].copy_(skip)
    return out


class VoxelMorph(nn.Module):
    """VoxelMorph registration network: ``(moving, fixed) -> (warped, ddf)``.

    Args:
        ndim: 2 or 3.
        variant: ``"vm1"`` or ``"vm2"`` (decoder widths of TMI 2019, Sec. IV-C).
        int_steps: scaling-and-squaring steps; 0 gives the original (non-diffeomorphic) VoxelMorph.
        int_downsize: resolution factor of the velocity field when ``int_steps > 0`` (Dalca et al.: 2).
        in_channels: image channels per input (moving and fixed each); the U-Net sees ``2 * in_channels``.
        channels_last: opt-in speed option, off by default. Runs the U-Net and the flow head in the
            channels-last memory layout (``torch.channels_last`` / ``channels_last_3d``), for which oneDNN on
            CPU (and cuDNN) have faster convolution kernels, notably for the few-channel full-resolution
            layers; measured in ``bench/results/voxelmorph_speed.md``. The network, its parameters and
            state dict are the same, but the kernels accumulate in another order, so outputs differ from the
            default layout in the last bits (about 1e-6 relative): existing experiments keep the default.
            The returned ``ddf`` is contiguous either way.

    Forward inputs ``moving``, ``fixed``: ``(B, in_channels, *spatial)``, spatial sizes divisible by 16.
    Returns a dict with ``warped`` ``(B, C, *spatial)`` and ``ddf`` ``(B, ndim, *spatial)`` in voxels
    (plus ``velocity`` when integrating).

    Raises:
        ValueError: unknown ``variant``; in ``forward``, ``moving`` and ``fixed`` of different shapes or a
            spatial size not divisible by 16.
    """

    def __init__(self, ndim: int = 3, variant: str = "vm2", int_steps: int = 0, int_downsize: int = 2,
                 in_channels: int = 1, channels_last: bool = False):
        super().__init__()
        if variant not in DECODER:
            raise ValueError(f"unknown VoxelMorph variant {variant!r}; use one of {sorted(DECODER)}")
        self.ndim, self.int_steps, self.int_downsize = ndim, int_steps, int_downsize
        self.unet = VoxelMorphUNet(ndim, 2 * in_channels, ENCODER, DECODER[variant])
        self.flow = flow_head(ndim, self.unet.out_channels)
        self.memory_format = ({2: torch.channels_last, 3: torch.channels_last_3d}[ndim] if channels_last
                              else None)
        if self.memory_format is not None:
            self.to(memory_format=self.memory_format)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a shape")
        bad = [s for s in fixed.shape[2:] if s % 16]
        if bad:
            raise ValueError(f"spatial sizes {tuple(fixed.shape[2:])} must be divisible by 16 for VoxelMorph")
        x = torch.cat([moving, fixed], dim=1)
        if self.memory_format is None:
            head = self.flow(self.unet(x))
        else:
            head = self.flow(self.unet(x.contiguous(memory_format=self.memory_format))).contiguous()
        out = {}
        if self.int_steps > 0:
            size = fixed.shape[2:]
            small = [s // self.int_downsize for s in size]
            velocity = spatial.resize_field(head, small)
            out["velocity"] = velocity
            ddf = spatial.resize_field(spatial.integrate_velocity(velocity, self.int_steps), size)
        else:
            ddf = head
        out["ddf"] = ddf
        out["warped"] = spatial.warp(moving, ddf)
        return out

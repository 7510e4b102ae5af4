"""SYMNet: Mok and Chung, "Fast symmetric diffeomorphic image registration with convolutional neural
networks", CVPR 2020 (a baseline of Zhu et al. 2021, Tables II-III).

Sources: the authors' released code (``cwmok/Fast-Symmetric-Diffeomorphic-Image-Registration-with-
Convolutional-Neural-Networks``; read, not copied) and the paper's method as known from it; the paper's text is
not at hand here, so its sections and equations are cited by content, not by number.

One network predicts two stationary velocity fields from the pair: ``v_xy`` carries the moving image ``X``
and ``v_yx`` the fixed image ``Y`` to a mean space ``M`` half-way between them (Methods; in the authors'
code ``model(X, Y)`` is called with ``X`` the moving and ``Y`` the fixed image). Written in regbench's
pull-back convention (``warped(x) = moving(x + u(x))``, :mod:`regbench.spatial`), with ``exp`` the
scaling-and-squaring integration:

* half-way fields on the mean grid: ``phi_m = exp(t v_xy)``, ``phi_f = exp(t v_yx)``; half-way images
  ``moving_half = M(x + phi_m(x))``, ``fixed_half = F(x + phi_f(x))``;
* their inverses ``exp(-t v)`` (the inverse of a stationary-velocity diffeomorphism integrates ``-v``);
* the full forward field (fixed grid -> mean space -> moving image): ``ddf = compose(phi_m, exp(-t v_yx))``,
  i.e. ``ddf(x) = w(x) + phi_m(x + w(x))`` with ``w = exp(-t v_yx)``, and the backward field
  ``ddf_inv = compose(phi_f, exp(-t v_xy))`` (the paper's ``phi_XY(1) = phi_YX^-1(0.5) o phi_XY(0.5)``).
  ``compose(ddf, ddf_inv)`` and ``compose(ddf_inv, ddf)`` vanish up to the integration and interpolation
  error: the two full fields are inverse by construction.

Architecture (layer widths and kernels of the authors' released ``Models.py``): a U-Net on the concatenated
pair with ``C = start_channel`` (8: the released training script's comment "We use 8 in our paper"):

* encoder, every convolution 3x3(x3) + ReLU: ``2 -> C -> C``; then four levels each of a stride-2
  convolution and a stride-1 convolution: ``2C, 2C``; ``4C, 4C``; ``8C, 8C``; ``16C, 8C`` (bottleneck at 1/16);
* decoder: at each of four levels a 2x2(x2) stride-2 transposed convolution + ReLU (widths ``8C, 4C, 2C,
  2C``), concatenation with the encoder output of that level, then two 3x3(x3) convolutions + ReLU:
  ``(8C, 4C)``, ``(4C, 2C)``, ``(4C, 2C)``, ``(2C, 2C)``;
* two heads (one per velocity field): 5x5(x5) convolution without bias to ``ndim`` channels, softsign,
  times ``max_velocity`` (the code's ``range_flow = 100``, voxels): ``|v| < 100`` voxels per component.

Parameter count of this build (3D, ``C = 8``): 1,124,448, identical to the released ``SYMNet(2, 3, 8)`` (the
layer list above). The paper publishes no parameter count (none in the sources at hand).

Loss, by config (:mod:`regbench.terms`):
``L = L_mean + L_sim_full + lambda_1 L_Jdet + lambda_2 L_mag + lambda_3 L_reg`` with

* ``L_mean = -NCC(moving_half, fixed_half)`` (``lncc`` with ``inputs: {fixed: fixed_half, warped:
  moving_half}``) and the full-resolution similarities ``-NCC(F, warped) - NCC(M, warped_inv)`` (``lncc``
  and ``lncc`` with ``inputs: {fixed: moving, warped: warped_inv}``); local NCC window 5 in the first code
  release (7 from 2021);
* ``L_Jdet``: ``mean ReLU(-det J)`` of both full fields (``neg_jacobian`` on ``ddf`` and on ``ddf_inv``,
  forward differences as in the code), "local orientation consistency";
* ``L_mag``: the magnitude constraint (``magnitude_difference``; code: ``|sum|phi_m| - sum|phi_f|| / N`` of
  the half-way displacements; paper: the squared norms of the velocities);
* ``L_reg``: ``diffusion`` of each velocity field (``inputs: {field: velocity_moving}`` and
  ``velocity_fixed``; code: mean squared forward differences, i.e. ``diffusion`` in voxels).

Weights (first code release, May 2020, the version Zhu et al. could run): ``lambda_1 = 1000``, ``lambda_2 =
0.001``, ``lambda_3 = 5``; Adam, lr 1e-4, batch 1, 160,001 iterations. See ``docs/baselines_zhu2021.md``.

Choices the description leaves open, marked *ours* here and in the arguments:

* ``half_time`` (``t``): the paper integrates each velocity to the half-way time ``t = 0.5`` (``v / 2^T``
  squared ``T - 1`` times, ``T = 7``); the released code integrates to ``t = 1`` ("tends to produce a smoother
  result", its README). For the same transformation ``t = 1`` halves the velocities, so the smoothness term on
  them is a quarter as large and the softsign bound allows twice the displacement. Default: the paper's 0.5.
  ``int_steps = T`` fixes the initial scaling ``v / 2^T`` in both cases.
* *ours*: both heads are initialised from N(0, 1e-5) (regbench's flow heads), so training starts at the
  identity; the code keeps PyTorch's default initialisation, which starts from random nonzero velocities
  (softsign outputs times 100 voxels).
* *ours*: images and fields are sampled with border padding (regbench's convention; the code's
  ``grid_sample`` pads with zeros) and the full fields are composed in the order above (the first code
  release composed them the other way round, fixed in 2022; the two agree to first order).
* spatial sizes must be divisible by 16 (four stride-2 levels undone by exact 2x transposed convolutions).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import spatial
from .blocks import conv_nd


def _conv_relu(ndim: int, cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(conv_nd(ndim)(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


def _up(ndim: int, cin: int, cout: int) -> nn.Module:
    tconv = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]
    return nn.Sequential(tconv(cin, cout, 2, stride=2), nn.ReLU())


class SYMNet(nn.Module):
    """SYMNet (see the module docstring): ``(moving, fixed) -> {ddf, warped, ddf_inv, warped_inv, ...}``.

    Args:
        ndim: 3 (the paper's); 2 works for tests.
        start_channel: ``C``, the width of the first level (paper: 8).
        int_steps: ``T``, scaling and squaring scales each velocity by ``1 / 2^T`` (paper: 7).
        half_time: integration time of the half-way fields, 0.5 (paper) or 1.0 (the released code).
        max_velocity: bound of the softsign velocity heads in voxels (code: ``range_flow = 100``).
        in_channels: channels per input image.

    Forward ``moving``, ``fixed``: ``(B, C_in, *spatial)`` on one grid, spatial sizes divisible by 16.
    Returns a dict of ``(B, ndim, *spatial)`` fields in voxels and ``(B, C_in, *spatial)`` images:

    * ``ddf``: full forward field on the fixed grid (pulls the moving image onto the fixed one); ``warped``;
    * ``ddf_inv``: full backward field on the moving grid; ``warped_inv`` (the fixed image on the moving grid);
    * ``velocity_moving`` (``v_xy``), ``velocity_fixed`` (``v_yx``): the two stationary velocity fields;
    * ``ddf_moving_half``, ``ddf_fixed_half``: the half-way fields ``exp(t v)`` on the mean grid, and
      ``ddf_moving_half_inv``, ``ddf_fixed_half_inv``: ``exp(-t v)``;
    * ``moving_half``, ``fixed_half``: both images warped to the mean space.

    Raises:
        ValueError: images on different grids, sizes not divisible by 16, a ``half_time`` other than 0.5, 1.
    """

    def __init__(self, ndim: int = 3, start_channel: int = 8, int_steps: int = 7, half_time: float = 0.5,
                 max_velocity: float = 100.0, in_channels: int = 1):
        super().__init__()
        if float(half_time) not in (0.5, 1.0):
            raise ValueError(f"half_time must be 0.5 (paper) or 1.0 (released code), got {half_time}")
        if int_steps < 1:
            raise ValueError(f"int_steps must be >= 1, got {int_steps}")
        c = int(start_channel)
        self.ndim, self.int_steps, self.half_time = ndim, int(int_steps), float(half_time)
        self.max_velocity = float(max_velocity)
        self.enc = nn.ModuleList([
            nn.Sequential(_conv_relu(ndim, 2 * in_channels, c), _conv_relu(ndim, c, c)),
            nn.Sequential(_conv_relu(ndim, c, 2 * c, 2), _conv_relu(ndim, 2 * c, 2 * c)),
            nn.Sequential(_conv_relu(ndim, 2 * c, 4 * c, 2), _conv_relu(ndim, 4 * c, 4 * c)),
            nn.Sequential(_conv_relu(ndim, 4 * c, 8 * c, 2), _conv_relu(ndim, 8 * c, 8 * c)),
            nn.Sequential(_conv_relu(ndim, 8 * c, 16 * c, 2), _conv_relu(ndim, 16 * c, 8 * c)),
        ])
        # (transposed-conv width, skip width, two conv widths) per decoder level, deepest first
        levels = [(8 * c, 8 * c, (8 * c, 4 * c)), (4 * c, 4 * c, (4 * c, 2 * c)),
                  (2 * c, 2 * c, (4 * c, 2 * c)), (2 * c, c, (2 * c, 2 * c))]
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        cin = 8 * c
        for up_w, skip_w, (w1, w2) in levels:
            self.up.append(_up(ndim, cin, up_w))
            self.dec.append(nn.Sequential(_conv_relu(ndim, up_w + skip_w, w1), _conv_relu(ndim, w1, w2)))
            cin = w2
        self.heads = nn.ModuleList()
        for _ in range(2):  # v_xy (moving -> mean), v_yx (fixed -> mean)
            conv = conv_nd(ndim)(cin, ndim, 5, padding=2, bias=False)
            nn.init.normal_(conv.weight, mean=0.0, std=1e-5)  # ours: identity start
            self.heads.append(conv)

    def velocities(self, moving: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v_xy, v_yx)``: the two velocity fields ``(B, ndim, *spatial)`` in voxels."""
        skips = []
        y = torch.cat([moving, fixed], dim=1)
        for block in self.enc:
            y = block(y)
            skips.append(y)
        y = skips.pop()
        for up, dec in zip(self.up, self.dec):
            y = dec(torch.cat([up(y), skips.pop()], dim=1))
        return tuple(self.max_velocity * nn.functional.softsign(h(y)) for h in self.heads)

    def _exp(self, velocity: torch.Tensor) -> torch.Tensor:
        """``exp(t v)``: ``v / 2^T`` squared ``T + log2(t)`` times (``T - 1`` for the paper's ``t = 0.5``)."""
        squarings = self.int_steps + int(round(math.log2(self.half_time)))
        return spatial.integrate_velocity(velocity * self.half_time, squarings)

    def fields_from_velocities(self, v_moving: torch.Tensor, v_fixed: torch.Tensor, moving: torch.Tensor,
                               fixed: torch.Tensor) -> dict:
        """Every output of :meth:`forward` from given velocities (the network's, or any, e.g. in tests)."""
        half_m, half_f = self._exp(v_moving), self._exp(v_fixed)
        half_m_inv, half_f_inv = self._exp(-v_moving), self._exp(-v_fixed)
        ddf = spatial.compose(half_m, half_f_inv)  # fixed grid -> mean space -> moving image
        ddf_inv = spatial.compose(half_f, half_m_inv)  # moving grid -> mean space -> fixed image
        return {
            "ddf": ddf, "warped": spatial.warp(moving, ddf),
            "ddf_inv": ddf_inv, "warped_inv": spatial.warp(fixed, ddf_inv),
            "velocity_moving": v_moving, "velocity_fixed": v_fixed,
            "ddf_moving_half": half_m, "ddf_fixed_half": half_f,
            "ddf_moving_half_inv": half_m_inv, "ddf_fixed_half_inv": half_f_inv,
            "moving_half": spatial.warp(moving, half_m), "fixed_half": spatial.warp(fixed, half_f),
        }

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must share a grid")
        if any(s % 16 for s in fixed.shape[2:]):
            raise ValueError(f"spatial sizes {tuple(fixed.shape[2:])} must be divisible by 16 for SYMNet")
        v_moving, v_fixed = self.velocities(moving, fixed)
        return self.fields_from_velocities(v_moving, v_fixed, moving, fixed)

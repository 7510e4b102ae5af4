"""The one spatial convention of regbench: warping, composition, integration, resizing, Jacobians.

Convention (tested in ``tests/test_spatial.py``):

* A displacement field (DDF) ``u`` has shape ``(B, ndim, *spatial)``; channel ``i`` is the displacement
  along array axis ``i`` (axis order of ``spatial``), in voxels of the fixed grid.
* Warping pulls back: ``warped(x) = moving(x + u(x))``, ``u`` sampled on the fixed grid.
* Composition "``u`` first, then ``v``": warping by ``u`` and then warping the result by ``v`` equals warping
  once by ``v(x) + u(x + v(x))`` (:func:`compose`).
* A stationary velocity field ``v`` is integrated by scaling and squaring (Arsigny et al. 2006;
  Dalca et al., MICCAI 2018, Sec. 2.2): ``phi = exp(v)`` with ``u_0 = v / 2^N`` and ``u_{k+1} = u_k o u_k``.

Outside the grid, samples repeat the border value (``padding_mode="border"``) unless stated otherwise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _check_ddf(ddf: torch.Tensor) -> int:
    nd = ddf.dim() - 2
    if nd not in (2, 3) or ddf.shape[1] != nd:
        raise ValueError(f"DDF must have shape (B, ndim, *spatial) with ndim in (2, 3); got {tuple(ddf.shape)}")
    return nd


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Voxel coordinates of a grid: ``(ndim, *shape)``, channel ``i`` = index along axis ``i``."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


def _to_grid_sample_coords(pos: torch.Tensor) -> torch.Tensor:
    """Voxel positions ``(B, ndim, *spatial)`` -> ``grid_sample`` grid ``(B, *spatial, ndim)`` in [-1, 1].

    ``grid_sample`` wants the last axis ordered (x, y[, z]) = (W, H[, D]), i.e. reversed array axes, and
    with ``align_corners=True`` index 0 maps to -1 and index ``s - 1`` to +1.
    """
    nd = pos.shape[1]
    sizes = pos.shape[2:]
    chans = [2.0 * pos[:, i] / max(sizes[i] - 1, 1) - 1.0 for i in range(nd)]
    return torch.stack(chans[::-1], dim=-1)


def warp(
    image: torch.Tensor,
    ddf: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "border",
) -> torch.Tensor:
    """Pull-back warp: ``warped(x) = image(x + ddf(x))``.

    Args:
        image: ``(B, C, *spatial_m)`` moving image (or labels with ``mode="nearest"``). Its grid may
            differ from the field's only if both describe the same field of view; normally equal.
        ddf: ``(B, ndim, *spatial)`` displacement in voxels of the image grid.
        mode: ``"bilinear"`` (linear in 2D/3D) or ``"nearest"`` (labels).
        padding_mode: ``grid_sample`` padding: ``"border"``, ``"zeros"`` or ``"reflection"``.

    Returns:
        ``(B, C, *spatial)`` warped image, same dtype as a float image; label images are cast back.

    Raises:
        ValueError: ``ddf`` is not ``(B, ndim, *spatial)`` or does not match ``image``'s dimensionality.
    """
    nd = _check_ddf(ddf)
    if image.dim() != nd + 2:
        raise ValueError(f"image has {image.dim() - 2} spatial dims but DDF has {nd}")
    if image.shape[2:] != ddf.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} differs from DDF grid {tuple(ddf.shape[2:])}")
    grid = identity_grid(ddf.shape[2:], device=ddf.device, dtype=ddf.dtype).unsqueeze(0) + ddf
    coords = _to_grid_sample_coords(grid)
    src = image if image.is_floating_point() else image.to(ddf.dtype)
    if src.shape[0] != ddf.shape[0]:
        src = src.expand(ddf.shape[0], *src.shape[1:])
    out = F.grid_sample(src, coords, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out if image.is_floating_point() else out.round().to(image.dtype)


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Warp an integer label map ``(B, 1, *spatial)`` with nearest-neighbour sampling (never linear)."""
    return warp(labels, ddf, mode="nearest", padding_mode="border")


def compose(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Field of "warp by ``u``, then warp the result by ``v``": ``v(x) + u(x + v(x))``.

    Both ``(B, ndim, *spatial)`` in voxels on the same grid.
    """
    return v + warp(u, v, mode="bilinear", padding_mode="border")


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field ``(B, ndim, *spatial)`` (voxels).

    ``steps`` squarings (VoxelMorph-diff uses 7). ``steps=0`` returns the velocity as a displacement.
    """
    _check_ddf(velocity)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    u = velocity / (2.0**steps)
    for _ in range(steps):
        u = compose(u, u)
    return u


def resize_field(ddf: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resample a DDF onto a grid of ``size`` covering the same field of view, rescaling its values.

    Voxel centres follow the pixel-area model (``align_corners=False``): a grid of ``n`` voxels resized to
    ``m`` scales lengths by ``m / n``, so displacement channel ``i`` is multiplied by ``size[i] / old[i]``.
    This is the model of image resizing by area/centre sampling (e.g. 256 -> 64 px chest X-rays).
    """
    nd = _check_ddf(ddf)
    size = tuple(int(s) for s in size)
    if len(size) != nd:
        raise ValueError(f"size {size} has {len(size)} dims, DDF has {nd}")
    old = ddf.shape[2:]
    if tuple(old) == size:
        return ddf
    interp = {2: "bilinear", 3: "trilinear"}[nd] if mode == "bilinear" else mode
    out = F.interpolate(ddf, size=size, mode=interp, align_corners=False if interp != "nearest" else None)
    scale = torch.tensor([size[i] / old[i] for i in range(nd)], dtype=ddf.dtype, device=ddf.device)
    return out * scale.view(1, nd, *([1] * nd))


def resize_image(image: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resize an image ``(B, C, *spatial)`` with the same voxel model as :func:`resize_field`."""
    nd = image.dim() - 2
    interp = {2: "bilinear", 3: "trilinear"}[nd] if mode == "bilinear" else mode
    kw = {} if interp == "nearest" else {"align_corners": False}
    return F.interpolate(image, size=tuple(size), mode=interp, **kw)


def spatial_gradient(ddf: torch.Tensor) -> torch.Tensor:
    """Finite-difference Jacobian of the displacement, ``(B, ndim, ndim, *spatial)``: ``[b, i, j] = d u_i / d x_j``.

    Central differences in the interior, one-sided at the borders (``torch.gradient``, spacing 1 voxel).
    """
    nd = _check_ddf(ddf)
    rows = []
    for i in range(nd):
        grads = torch.gradient(ddf[:, i], dim=tuple(range(1, nd + 1)))
        rows.append(torch.stack(grads, dim=1))
    return torch.stack(rows, dim=1)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of ``I + grad u`` at each voxel: ``(B, *spatial)``.

    ``grad u`` by central differences (one-sided at borders), in voxel units, which is the Jacobian of the
    transform in any isotropic or anisotropic spacing because displacement and position share voxel units.
    Values ``<= 0`` mark folding.
    """
    nd = _check_ddf(ddf)
    g = spatial_gradient(ddf)
    eye = torch.eye(nd, dtype=ddf.dtype, device=ddf.device).view(1, nd, nd, *([1] * nd))
    j = g + eye
    j = j.permute(0, *range(3, 3 + nd), 1, 2)
    return torch.linalg.det(j)


def ddf_to_mm(ddf: np.ndarray | torch.Tensor, spacing: Sequence[float]):
    """Multiply channel ``i`` of a ``(..., ndim, *spatial)`` field by ``spacing[i]`` (voxels -> mm)."""
    nd = len(spacing)
    if isinstance(ddf, torch.Tensor):
        s = torch.tensor(spacing, dtype=ddf.dtype, device=ddf.device).view(nd, *([1] * nd))
    else:
        s = np.asarray(spacing, dtype=np.float64).reshape(nd, *([1] * nd))
    return ddf * s


def affine_to_ddf(matrix: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Displacement of a voxel-space affine map ``x -> A x + t``.

    Args:
        matrix: ``(B, ndim, ndim + 1)`` rows ``[A | t]`` acting on voxel coordinates about the grid centre
            (so the identity is ``[I | 0]`` and rotations turn about the centre).
        shape: spatial shape of the grid.

    Returns:
        ``(B, ndim, *shape)`` DDF in voxels.
    """
    nd = len(shape)
    grid = identity_grid(shape, device=matrix.device, dtype=matrix.dtype)
    centre = torch.tensor([(s - 1) / 2.0 for s in shape], dtype=matrix.dtype, device=matrix.device)
    x = (grid - centre.view(nd, *([1] * nd))).reshape(nd, -1)
    a, t = matrix[:, :, :nd], matrix[:, :, nd:]
    y = a @ x.unsqueeze(0) + t
    return (y - x.unsqueeze(0)).reshape(matrix.shape[0], nd, *shape)

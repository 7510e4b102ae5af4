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

from collections import OrderedDict
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
    """Voxel coordinates of a grid: ``(ndim, *shape)``, channel ``i`` = index along axis ``i``.

    A new tensor on every call (callers may modify it); :func:`warp` uses a cached copy instead.
    """
    axes = [torch.arange(s, device=device, dtype=dtype) for s in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


#: Most grids kept by :func:`_sampling_base` (least recently used dropped first).
SAMPLING_CACHE_SIZE = 8
_SAMPLING_CACHE: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def _sampling_base(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached constants that map voxel positions to ``grid_sample`` coordinates on a grid of ``shape``.

    Returns ``(base, half)``: ``base`` ``(1, *shape, ndim)`` holds the voxel coordinates with the last axis in
    ``grid_sample`` order (x, y[, z]) = reversed array axes; ``half`` ``(ndim,)`` holds ``max(s - 1, 1) / 2``
    in the same order, so that ``(base + u) / half - 1`` is the ``align_corners=True`` coordinate in [-1, 1].

    Keyed by shape, device and dtype (a grid is never reused for another of these), created outside
    inference mode and without autograd history, and never modified in place; at most
    :data:`SAMPLING_CACHE_SIZE` entries are kept. :func:`clear_sampling_cache` empties it.
    """
    key = (tuple(int(s) for s in shape), torch.device(device), dtype)
    hit = _SAMPLING_CACHE.get(key)
    if hit is not None:
        _SAMPLING_CACHE.move_to_end(key)
        return hit
    with torch.inference_mode(False), torch.no_grad():
        base = identity_grid(key[0], device=device, dtype=dtype).flip(0).movedim(0, -1).unsqueeze(0).contiguous()
        half = torch.tensor([max(s - 1, 1) / 2.0 for s in key[0][::-1]], device=device, dtype=dtype)
    _SAMPLING_CACHE[key] = (base, half)
    while len(_SAMPLING_CACHE) > SAMPLING_CACHE_SIZE:
        _SAMPLING_CACHE.popitem(last=False)
    return base, half


def clear_sampling_cache() -> None:
    """Drop the grids cached by :func:`warp` and the factors cached by :func:`resize_field` (e.g. to free
    GPU memory)."""
    _SAMPLING_CACHE.clear()
    _SCALE_CACHE.clear()


def _sampling_coords(ddf: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` coordinates ``(B, *spatial, ndim)`` in [-1, 1] of the positions ``x + ddf(x)``.

    ``grid_sample`` wants the last axis ordered (x, y[, z]) = (W, H[, D]), i.e. reversed array axes, and with
    ``align_corners=True`` index 0 maps to -1 and index ``s - 1`` to +1: ``c_i = 2 p_i / (s_i - 1) - 1``.

    Computed as ``(base + ddf_reversed) / ((s_i - 1) / 2) - 1`` with the cached constants of
    :func:`_sampling_base`: one addition, one division and one subtraction over the field, written straight
    into the layout ``grid_sample`` reads. The values and gradients are bit-identical to the per-channel
    ``2 * p_i / (s_i - 1) - 1`` followed by ``torch.stack`` (``2 p`` and ``(s - 1) / 2`` are exact, so both
    divisions round the same real quotient; in the backward ``g / ((s - 1) / 2)`` equals ``2 (g / (s - 1))``
    for the same reason); ``tests/test_spatial.py`` checks this against that formula.
    """
    base, half = _sampling_base(ddf.shape[2:], ddf.device, ddf.dtype)
    pos = base + ddf.flip(1).movedim(1, -1)
    return (pos / half).sub_(1.0)


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
    coords = _sampling_coords(ddf)
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
    scale = _channel_scale(tuple(size[i] / old[i] for i in range(nd)), ddf.device, ddf.dtype)
    return out * scale


_SCALE_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def _channel_scale(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Cached ``(1, ndim, 1, ...)`` tensor of per-channel factors (the same values ``torch.tensor`` gives).

    Building it once per (values, device, dtype) avoids a host-to-device copy, which synchronises a CUDA
    stream, on every call; at most 64 entries are kept.
    """
    key = (values, torch.device(device), dtype)
    hit = _SCALE_CACHE.get(key)
    if hit is None:
        with torch.inference_mode(False), torch.no_grad():
            hit = torch.tensor(values, dtype=dtype, device=device).view(1, len(values), *([1] * len(values)))
        _SCALE_CACHE[key] = hit
        while len(_SCALE_CACHE) > 64:
            _SCALE_CACHE.popitem(last=False)
    return hit


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

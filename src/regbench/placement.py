"""Cross-size pairs: where a moving image on a smaller grid lies on the fixed grid.

A *cross-size* pair has a moving image whose array shape differs from the fixed image's (Huang et al. 2021,
"Cross-Size Registration": the carotid TOF cropped from 112x64x64 to 96x56x64 while T1GD keeps its size). A
displacement field always lives on the fixed grid and pulls back (``warped(x) = moving(x + u(x))``), so before a
moving image of another shape can be warped it must be *placed* on the fixed grid: moving voxel ``j`` goes to
fixed-grid voxel ``j + p`` (``p``: the per-axis integer *placement offset*, in voxels), zeros elsewhere. The field
then points into that placed image: fixed voxel ``x`` takes its value from moving voxel ``x + u(x) - p``.

Two placements exist:

* **the network's own** (a Siamese model, :class:`regbench.models.huang2021.Huang2021Siamese`): its padding module
  returns ``moving_pad`` (per axis ``(before, after)``); ``p = before``. The network was trained with it, so
  registration uses it whatever the images' world coordinates say;
* **world coordinates** (classical methods; "Before"): ``p`` is read from the two images' affines
  (:func:`world_offset`): a crop keeps the voxel size and direction and moves the origin by a whole number of
  voxels, so ``A_f^-1 A_m`` is a pure integer translation by ``p``.

Either way the frame the field points into has the voxel-to-world matrix :func:`target_affine`
``A_m T(-p)``: fixed voxel ``x`` corresponds to the world point ``A_m T(-p) (x + u(x))``. The register stage writes
it per cross-size pair (``pairs.tsv`` column ``target_affine``), and the evaluate stage maps ground-truth fields and
landmarks into that frame (:mod:`regbench.evaluate`). When the network's placement equals the crop (``p`` = the
crop offset), ``A_m T(-p) = A_f`` and the field is judged exactly as on the uncropped pair.
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import torch.nn.functional as F

from .errors import ShapeMismatchError
from .io import Image

#: tolerance (voxels) of the integer-translation test of :func:`world_offset`
OFFSET_ATOL_VOX = 1e-3


def world_offset(fixed: Image, moving: Image, what: str = "fixed/moving") -> tuple[int, ...]:
    """The integer voxel offset ``p`` of ``moving``'s grid inside ``fixed``'s, from the affines (world mm).

    Moving voxel ``j`` lies at fixed voxel ``j + p``: ``A_f^-1 A_m`` must be the translation by ``p`` (same voxel
    size and direction, an origin moved by whole voxels, to :data:`OFFSET_ATOL_VOX`), and the moving grid must lie
    inside the fixed one (``0 <= p`` and ``p + s_m <= s_f`` per axis). For 2D images the first two axes count.

    Raises:
        ShapeMismatchError: the grids differ by more than an integer translation, or the moving grid reaches
            outside the fixed one; the message names both files and grids and suggests resampling.
    """
    nd = fixed.array.ndim
    if moving.array.ndim != nd:
        raise ShapeMismatchError(f"{what}: {fixed.path} is {nd}D, {moving.path} is {moving.array.ndim}D")
    rel = np.linalg.solve(np.asarray(fixed.affine, float), np.asarray(moving.affine, float))
    lin, t = rel[:nd, :nd], rel[:nd, 3]
    grids = (f"{fixed.path} {tuple(fixed.array.shape)} at {tuple(round(s, 4) for s in fixed.spacing)} mm, "
             f"{moving.path} {tuple(moving.array.shape)} at {tuple(round(s, 4) for s in moving.spacing)} mm")
    if not np.allclose(lin, np.eye(nd), atol=1e-4) or not np.allclose(t, np.round(t), atol=OFFSET_ATOL_VOX):
        raise ShapeMismatchError(
            f"{what}: the moving grid is not the fixed grid shifted by whole voxels ({grids}; moving voxel -> fixed "
            f"voxel is {np.round(rel[:nd], 4).tolist()}); resample the moving image onto the fixed grid")
    p = tuple(int(round(float(v))) for v in t)
    if any(a < 0 or a + s > f for a, s, f in zip(p, moving.array.shape, fixed.array.shape)):
        raise ShapeMismatchError(f"{what}: the moving grid at voxel offset {p} reaches outside the fixed grid "
                                 f"({grids}); only a moving image inside the fixed field of view can be placed")
    return p


def offset_from_pad(moving_pad: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The placement offset ``p`` of a model's ``moving_pad`` output (per axis ``(before, after)``): the befores."""
    return tuple(int(a) for a, _ in moving_pad)


def place(x, offset: Sequence[int], shape: Sequence[int]):
    """Zero-pad ``x`` onto a grid of ``shape`` with moving voxel ``j`` at ``j + offset``.

    ``x``: a tensor ``(B, C, *s)`` or a numpy array ``(*s)``; returns the same kind with spatial shape ``shape``
    (``x`` itself when nothing is padded). Raises ShapeMismatchError when ``x`` does not fit at ``offset``.
    """
    is_np = isinstance(x, np.ndarray)
    s = x.shape if is_np else x.shape[2:]
    offset, shape = [int(v) for v in offset], [int(v) for v in shape]
    if len(offset) != len(s) or len(shape) != len(s):
        raise ShapeMismatchError(f"placement offset {offset} / grid {shape} do not match the {len(s)}D array {tuple(s)}")
    after = [f - o - m for f, o, m in zip(shape, offset, s)]
    if any(o < 0 for o in offset) or any(a < 0 for a in after):
        raise ShapeMismatchError(f"an array of shape {tuple(s)} at voxel offset {tuple(offset)} does not fit in the "
                                 f"grid {tuple(shape)}")
    if not any(offset) and not any(after):
        return x
    if is_np:
        return np.pad(x, list(zip(offset, after)))
    return F.pad(x, [v for o, a in reversed(list(zip(offset, after))) for v in (o, a)])


def translation(offset: Sequence[float]) -> np.ndarray:
    """The 4x4 voxel translation ``T(offset)``: ``v -> v + offset`` (2D offsets leave the third axis)."""
    t = np.eye(4)
    t[: len(offset), 3] = [float(v) for v in offset]
    return t


def target_affine(moving_affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """Voxel-to-world matrix of the frame a cross-size field points into: ``A_m T(-p)`` (module docstring)."""
    return np.asarray(moving_affine, float) @ translation([-float(v) for v in offset])


def affine_text(a: np.ndarray) -> str:
    """A 4x4 matrix as the JSON text stored in a ``pairs.tsv`` cell (rows, 6 decimals)."""
    return json.dumps(np.round(np.asarray(a, float), 6).tolist())


def parse_affine(text: str) -> np.ndarray:
    """The inverse of :func:`affine_text`; raises ValueError for anything that is not a 4x4 matrix."""
    a = np.asarray(json.loads(text), dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {a.shape}")
    return a


def map_points(points: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates ``(N, nd)`` of ``src_affine``'s grid as voxel coordinates of ``dst_affine``'s (via world)."""
    p = np.asarray(points, dtype=np.float64)
    nd = p.shape[1]
    h = np.zeros((p.shape[0], 4))
    h[:, :nd], h[:, 3] = p, 1.0
    out = (np.linalg.solve(np.asarray(dst_affine, float), np.asarray(src_affine, float)) @ h.T).T
    return out[:, :nd]


def field_to_frame(ddf: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """A displacement ``(nd, *s)`` from fixed voxels ``x`` to voxels ``x + ddf(x)`` of ``src_affine``'s grid,
    re-expressed towards ``dst_affine``'s grid: ``D^-1 S (x + ddf(x)) - x`` (voxels; for a crop: a constant shift)."""
    u = np.asarray(ddf, dtype=np.float64)
    nd = u.shape[0]
    m = np.linalg.solve(np.asarray(dst_affine, float), np.asarray(src_affine, float))
    x = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in u.shape[1:]], indexing="ij"))
    y = np.einsum("ij,j...->i...", m[:nd, :nd], x + u) + m[:nd, 3].reshape(nd, *([1] * nd))
    return (y - x).astype(np.float32)


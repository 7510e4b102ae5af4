"""Evaluation metrics of a registration: overlap, surface distances, Jacobian regularity, TRE, similarity.

Conventions (those of :mod:`regbench.spatial`):

* A displacement field (DDF) here is a single field ``(ndim, *spatial)`` (a leading batch axis of size 1 is
  accepted and dropped); channel ``i`` is the displacement along array axis ``i`` in voxels of the fixed
  grid, and warping pulls back: ``warped(x) = moving(x + u(x))``.
* ``spacing`` is the voxel size per array axis, in the order of ``spatial``. Distances are returned in the
  unit of ``spacing``: millimetres for medical volumes, pixels when the spacing is 1 and no physical unit is
  known (e.g. chest X-rays resized without a pixel size).
* Masks are compared on one grid (fixed image grid): the fixed segmentation and the moving segmentation
  warped onto the fixed grid.

Undefined values are ``NaN``, never ``inf`` and never a made-up number:

* Dice of two empty masks is ``NaN`` (0/0). Dice of one empty and one non-empty mask is 0.
* Every surface distance (HD, HD95, ASSD) is ``NaN`` when either mask is empty.
* SDlogJ is ``NaN`` when no voxel has ``det J > 0``; correlation is ``NaN`` for a constant image.

Aggregation rule (for the report code): means over pairs/labels use ``np.nanmean``, so ``NaN`` values are
excluded, and the number of excluded values is counted and reported next to the mean.

Numbers are plain Python ``float`` so that rows serialise to JSON/CSV unchanged.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from regbench.spatial import compose, jacobian_determinant

__all__ = [
    "inverse_residual",
    "dice",
    "dice_per_label",
    "surface_distances",
    "hd",
    "hd95",
    "assd",
    "surface_metrics_per_label",
    "jacobian_stats",
    "tre",
    "landmark_tre",
    "cc_similarity",
    "count_parameters",
    "evaluate_pair",
]

NAN = float("nan")


# ----------------------------------------------------------------------------------------------- helpers
def _np(x) -> np.ndarray:
    """numpy view of an array-like or torch tensor (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _mask(x) -> np.ndarray:
    return _np(x).astype(bool, copy=False)


def _pair_masks(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _mask(a), _mask(b)
    if a.shape != b.shape:
        raise ValueError(f"masks must share a grid; got shapes {a.shape} and {b.shape}")
    return a, b


def _spacing(spacing: Sequence[float] | float | None, ndim: int) -> np.ndarray:
    """Validate ``spacing`` (scalar, ``None`` = 1, or one positive finite value per axis)."""
    if spacing is None:
        return np.ones(ndim)
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if s.size == 1 and ndim != 1:
        s = np.full(ndim, float(s[0]))
    if s.shape != (ndim,):
        raise ValueError(f"spacing {tuple(s)} has {s.size} values but the data has {ndim} spatial dims")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be positive and finite, got {tuple(s)}")
    return s


def _field(ddf) -> np.ndarray:
    """``(ndim, *spatial)`` float64 field; accepts a leading batch axis of size 1."""
    u = _np(ddf).astype(np.float64, copy=False)
    if u.ndim >= 2 and u.shape[0] == 1 and u.ndim == u.shape[1] + 2:
        u = u[0]
    if u.ndim < 3 or u.shape[0] != u.ndim - 1:
        raise ValueError(f"DDF must have shape (ndim, *spatial); got {u.shape}")
    return u


# ----------------------------------------------------------------------------------------------- overlap
def dice(a, b) -> float:
    """Dice similarity coefficient (DSC) of two boolean masks of the same shape.

    ``DSC = 2 |A ∩ B| / (|A| + |B|)`` counted in voxels (unitless, in [0, 1]).

    Args:
        a, b: masks of any equal shape (nonzero = inside); numpy arrays or torch tensors.

    Returns:
        The DSC as a float. ``NaN`` when both masks are empty (the label is absent from both images);
        such values are excluded from means with ``np.nanmean`` and counted. One empty mask gives 0.
    """
    a, b = _pair_masks(a, b)
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return NAN
    return float(2.0 * np.logical_and(a, b).sum() / denom)


def dice_per_label(fixed_seg, warped_seg, labels: Iterable[int]) -> dict[int, float]:
    """Dice of each label of two integer label maps of the same shape.

    Args:
        fixed_seg: ``(*spatial)`` integer labels of the fixed image.
        warped_seg: ``(*spatial)`` labels of the moving image warped onto the fixed grid (nearest neighbour).
        labels: the label values to score (background is normally left out by the caller).

    Returns:
        ``{label: dice(fixed_seg == label, warped_seg == label)}``; ``NaN`` where the label is absent from
        both maps (see :func:`dice`).
    """
    f, w = _np(fixed_seg), _np(warped_seg)
    if f.shape != w.shape:
        raise ValueError(f"label maps must share a grid; got shapes {f.shape} and {w.shape}")
    return {int(lab): dice(f == lab, w == lab) for lab in labels}


# ------------------------------------------------------------------------------------- surface distances
# Speed: every surface computation below works on the masks cropped to the bounding box of their union
# (``A | B``), never on the whole grid. The results equal those of the uncropped computation exactly:
#
# * Erosion: a voxel on a face of the union box has its outward neighbour outside the box, hence outside the
#   mask, so it is a surface voxel in the full grid; in the crop that neighbour lies beyond the crop and counts
#   as background (``border_value=0``), so it is a surface voxel there too. Inside the box the neighbourhoods
#   are the same. The array border (treated as background, so mask voxels on it are surface) behaves the same
#   in both. No margin and no padding is needed (a margin of 1 would give the same values, only bigger arrays).
# * Distances: every surface voxel of both masks lies inside the box, so the nearest surface voxel of ``B``
#   from a surface voxel of ``A`` is found inside the crop; ``distance_transform_edt`` is exact (no border
#   term), and voxel offsets, hence distances, are unchanged by the shift of origin.
# * Order: boolean indexing visits a sub-box in the same C order as the full grid, so the directed distance
#   arrays come out in the same order.
#
# tests/test_metrics.py checks cropped against uncropped values, masks touching the array border included.
def _bbox(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight bounding box of a boolean mask as a tuple of slices, or ``None`` when the mask is empty."""
    box = []
    for ax in range(mask.ndim):
        nz = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != ax)))
        if nz.size == 0:
            return None
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def _union_box(p: tuple[slice, ...] | None, q: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box holding both boxes (``None`` = empty)."""
    if p is None:
        return q
    if q is None:
        return p
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(p, q))


def _cropped_surface_distances(
    a: np.ndarray, b: np.ndarray, s: np.ndarray, structure: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances of two non-empty masks already cropped to (a box holding) their union."""
    sa = a ^ ndimage.binary_erosion(a, structure=structure, border_value=0)
    sb = b ^ ndimage.binary_erosion(b, structure=structure, border_value=0)
    d_ab = ndimage.distance_transform_edt(~sb, sampling=s)[sa]
    d_ba = ndimage.distance_transform_edt(~sa, sampling=s)[sb]
    return d_ab.astype(np.float64, copy=False), d_ba.astype(np.float64, copy=False)


def surface_distances(
    a, b, spacing: Sequence[float] | float | None = None, connectivity: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances between the surfaces of two masks.

    Surface extraction: ``S(M) = M XOR binary_erosion(M, structure)`` with
    ``structure = generate_binary_structure(ndim, connectivity)``. The default ``connectivity=1`` is the
    face-connected cross (6-connectivity in 3D, 4-connectivity in 2D): a voxel of ``M`` is on the surface
    when one of its face neighbours is outside ``M`` (or outside the array). This is the choice of MONAI
    (``get_mask_edges``) and medpy. ``connectivity=ndim`` gives full connectivity (26/8), a thicker surface.

    Distances: ``d_ab[k]`` is the Euclidean distance from the ``k``-th surface voxel centre of ``a`` (C order)
    to the nearest surface voxel centre of ``b``, computed with
    ``scipy.ndimage.distance_transform_edt(~S(b), sampling=spacing)``; ``d_ba`` likewise. Both are computed on
    the bounding box of ``a | b`` only, which gives the same values as the whole grid (the reasoning is in the
    comment that opens this section of the source; ``tests/test_metrics.py`` checks it).

    Args:
        a, b: masks of equal shape ``(*spatial)``, 2D or 3D.
        spacing: voxel size per axis (mm; ``None``/1 gives pixels).
        connectivity: connectivity of the erosion structuring element (1 .. ndim).

    Returns:
        ``(d_ab, d_ba)`` 1-D float64 arrays in the unit of ``spacing`` (lengths = numbers of surface voxels
        of ``a`` and ``b``). Both are empty when either mask is empty (distances to nothing are undefined).

    Raises:
        ValueError: the masks differ in shape, or ``spacing`` is not positive and finite with one value per
            axis (or one scalar).
    """
    a, b = _pair_masks(a, b)
    s = _spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        return np.zeros(0), np.zeros(0)
    box = _bbox(a | b)
    structure = ndimage.generate_binary_structure(a.ndim, connectivity)
    return _cropped_surface_distances(a[box], b[box], s, structure)


def _surface_summary(d_ab: np.ndarray, d_ba: np.ndarray) -> tuple[float, float, float]:
    """``(HD, HD95, ASSD)`` from directed surface distances; all ``NaN`` if either direction is empty."""
    if d_ab.size == 0 or d_ba.size == 0:
        return NAN, NAN, NAN
    h = float(max(d_ab.max(), d_ba.max()))
    h95 = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
    asd = float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))
    return h, h95, asd


_MAX_FIND_OBJECTS = 1 << 20  # largest label value found with one find_objects pass (one list slot per value)


def _label_boxes(seg: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of ``seg == lab`` for every label (``None`` where absent).

    Positive labels of an integer map (or of a float map whose values are all whole numbers) come from one
    ``scipy.ndimage.find_objects`` pass over the map; other labels (0, negative values, other dtypes) from a
    pass over ``seg == lab`` each.
    """
    boxes: dict[int, tuple[slice, ...] | None] = {}
    pos = [lab for lab in labels if lab >= 1]
    if pos and max(pos) <= _MAX_FIND_OBJECTS:
        lab_map = None
        if seg.dtype.kind in "iu":
            lab_map = seg
        elif seg.dtype.kind == "b":
            lab_map = seg.view(np.uint8)
        elif seg.dtype.kind == "f" and seg.size:
            lo, hi = seg.min(), seg.max()
            whole = np.isfinite(lo) and np.isfinite(hi) and -(2**31) <= lo and hi < 2**31
            if whole and np.array_equal(seg, np.rint(seg)):
                lab_map = seg.astype(np.int32)
        if lab_map is not None:
            objs = ndimage.find_objects(lab_map, max_label=max(pos))
            boxes = {lab: objs[lab - 1] for lab in pos}
    for lab in labels:
        if lab not in boxes:
            boxes[lab] = _bbox(seg == lab)
    return boxes


def surface_metrics_per_label(
    fixed_seg,
    warped_seg,
    labels: Iterable[int],
    spacing: Sequence[float] | float | None = None,
    connectivity: int = 1,
) -> dict[int, dict[str, float]]:
    """DSC, HD, HD95 and ASSD of every label of two label maps at once (the fast path of evaluation).

    For each label the values equal those of :func:`dice`, :func:`hd`, :func:`hd95` and :func:`assd` on the
    masks ``fixed_seg == label`` and ``warped_seg == label`` (same definitions, same floats). It is faster
    because the bounding boxes of all labels come from one ``scipy.ndimage.find_objects`` pass per map and
    each label's masks, erosions and distance transforms are computed on the bounding box of the union of its
    two masks only (exact, see the comment that opens this section of the source), with the structuring
    element built once. On two LPBA40 label maps (160x192x160, 56 labels) it takes about 1 s on one thread of
    a shared 2-core machine, against 52 s for the whole-grid computation and 16 s for MONAI 1.6.1
    (``bench/bench_metrics.py``, ``bench/results/metrics_speed.md``).

    Args:
        fixed_seg: ``(*spatial)`` label map of the fixed image (2D or 3D; numpy or torch; integer values,
            any dtype: a voxel belongs to ``label`` when it compares equal to it).
        warped_seg: ``(*spatial)`` label map of the moving image warped onto the fixed grid (nearest
            neighbour), same shape.
        labels: the label values to score (integers; background is normally left out by the caller).
        spacing: voxel size per array axis; distances come out in its unit (mm; ``None`` or 1 gives px).
        connectivity: connectivity of the erosion structuring element (1 = face-connected, the default; see
            :func:`surface_distances`).

    Returns:
        ``{label: {"dsc": ..., "hd": ..., "hd95": ..., "assd": ...}}`` of Python floats, in the order of
        ``labels``. ``dsc`` is unitless; ``hd``, ``hd95``, ``assd`` are in the unit of ``spacing``. NaN rules
        of the module: ``dsc`` is NaN when the label is absent from both maps and 0 when absent from one; the
        three distances are NaN when the label is absent from either map.

    Raises:
        ValueError: the maps differ in shape, or ``spacing`` is not positive and finite with one value per
            axis (or one scalar).
    """
    f, w = _np(fixed_seg), _np(warped_seg)
    if f.shape != w.shape:
        raise ValueError(f"label maps must share a grid; got shapes {f.shape} and {w.shape}")
    s = _spacing(spacing, f.ndim)
    labels = [int(lab) for lab in labels]
    structure = ndimage.generate_binary_structure(f.ndim, connectivity)
    fbox, wbox = _label_boxes(f, labels), _label_boxes(w, labels)
    out: dict[int, dict[str, float]] = {}
    for lab in labels:
        box = _union_box(fbox[lab], wbox[lab])
        if box is None:  # absent from both maps
            out[lab] = {"dsc": NAN, "hd": NAN, "hd95": NAN, "assd": NAN}
            continue
        a, b = f[box] == lab, w[box] == lab
        na, nb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
        dsc = float(2.0 * np.count_nonzero(a & b) / (na + nb))  # the arithmetic of dice()
        if na == 0 or nb == 0:
            h = h95 = asd = NAN
        else:
            h, h95, asd = _surface_summary(*_cropped_surface_distances(a, b, s, structure))
        out[lab] = {"dsc": dsc, "hd": h, "hd95": h95, "assd": asd}
    return out


def hd(a, b, spacing: Sequence[float] | float | None = None, connectivity: int = 1) -> float:
    """Hausdorff distance: ``max(max d_ab, max d_ba)`` over surface voxels (see :func:`surface_distances`).

    Unit of ``spacing`` (mm or px). ``NaN`` when either mask is empty.
    """
    return _surface_summary(*surface_distances(a, b, spacing, connectivity))[0]


def hd95(a, b, spacing: Sequence[float] | float | None = None, connectivity: int = 1) -> float:
    """95th-percentile Hausdorff distance: ``max(P95(d_ab), P95(d_ba))``.

    The maximum of the two *directed* 95th percentiles, each by ``np.percentile`` (linear interpolation),
    as in MONAI ``compute_hausdorff_distance(percentile=95)`` and the DeepMind ``surface-distance``
    ``compute_robust_hausdorff`` (which weights by surfel area, so it differs slightly on coarse grids).
    medpy's ``hd95`` instead takes one percentile of both directions pooled; that value can be smaller
    and is not what this benchmark reports. Unit of ``spacing``. ``NaN`` when either mask is empty.
    """
    return _surface_summary(*surface_distances(a, b, spacing, connectivity))[1]


def assd(a, b, spacing: Sequence[float] | float | None = None, connectivity: int = 1) -> float:
    """Average symmetric surface distance: ``(sum d_ab + sum d_ba) / (n_ab + n_ba)``.

    The mean over the pooled surface voxels of both masks (MONAI ``compute_average_surface_distance`` with
    ``symmetric=True``). medpy's ``assd`` is the mean of the two directed means, which differs when the two
    surfaces have different numbers of voxels. Unit of ``spacing``. ``NaN`` when either mask is empty.
    """
    return _surface_summary(*surface_distances(a, b, spacing, connectivity))[2]


# ------------------------------------------------------------------------------------------ regularity
def jacobian_stats(ddf, mask=None) -> dict[str, float]:
    """Regularity of a displacement field from the Jacobian determinant ``det J = det(I + grad u)``.

    ``det J`` comes from :func:`regbench.spatial.jacobian_determinant` (central differences, one-sided at
    the borders, voxel units; valid for any spacing since displacement and position share voxel units).

    Args:
        ddf: ``(ndim, *spatial)`` displacement in voxels (numpy or torch; ``(1, ndim, *spatial)`` accepted).
        mask: optional ``(*spatial)`` boolean mask; statistics are then over the voxels inside it only.

    Returns:
        dict of floats:

        * ``folding_count``: number of voxels with ``det J <= 0``.
        * ``folding_pct``: ``100 * folding_count / n_voxels`` (percent of the evaluated voxels).
        * ``sdlogj``: population standard deviation (ddof 0) of ``log det J`` over the voxels with
          ``det J > 0`` (folded voxels are excluded, not clipped); ``NaN`` if there are none. The Learn2Reg
          evaluation instead clips ``det J`` to ``[1e-9, 1e9]`` and takes the std over all voxels, which
          gives larger values for folding fields; compare with care.
        * ``det_min``, ``det_max``: extremes of ``det J``; ``n_voxels``: number of voxels evaluated.
    """
    u = _field(ddf)
    with torch.no_grad():
        det = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(u))[None])[0].numpy()
    if mask is not None:
        m = _mask(mask)
        if m.shape != det.shape:
            raise ValueError(f"mask shape {m.shape} differs from the DDF grid {det.shape}")
        det = det[m]
    else:
        det = det.ravel()
    n = det.size
    if n == 0:
        return {"folding_count": 0.0, "folding_pct": NAN, "sdlogj": NAN,
                "det_min": NAN, "det_max": NAN, "n_voxels": 0.0}
    fold = int(np.count_nonzero(det <= 0))
    pos = det[det > 0]
    return {
        "folding_count": float(fold),
        "folding_pct": float(100.0 * fold / n),
        "sdlogj": float(np.log(pos).std()) if pos.size else NAN,
        "det_min": float(det.min()),
        "det_max": float(det.max()),
        "n_voxels": float(n),
    }


# ------------------------------------------------------------------------------------------------- TRE
def tre(pred_ddf, true_ddf, spacing: Sequence[float] | float | None = None, mask=None) -> tuple[float, float]:
    """Dense target registration error against a known (synthetic) ground-truth field.

    ``e(x) = || (u_pred(x) - u_true(x)) * spacing ||_2`` at each fixed-grid voxel ``x`` (channel ``i`` scaled
    by ``spacing[i]``), i.e. the Euclidean distance between the predicted and true corresponding points.

    Args:
        pred_ddf, true_ddf: ``(ndim, *spatial)`` displacements in voxels on the fixed grid.
        spacing: voxel size per axis (mm; ``None`` = 1, px).
        mask: optional ``(*spatial)`` boolean mask of the voxels to evaluate (default: all).

    Returns:
        ``(mean, std)`` of ``e`` over the evaluated voxels (std with ddof 0), in the unit of ``spacing``;
        ``(NaN, NaN)`` for an empty mask.
    """
    p, t = _field(pred_ddf), _field(true_ddf)
    if p.shape != t.shape:
        raise ValueError(f"predicted DDF {p.shape} and true DDF {t.shape} differ in shape")
    nd = p.shape[0]
    s = _spacing(spacing, nd).reshape(nd, *([1] * nd))
    err = np.sqrt((((p - t) * s) ** 2).sum(axis=0))
    if mask is not None:
        m = _mask(mask)
        if m.shape != err.shape:
            raise ValueError(f"mask shape {m.shape} differs from the DDF grid {err.shape}")
        err = err[m]
    if err.size == 0:
        return NAN, NAN
    return float(err.mean()), float(err.std())


def landmark_tre(
    pred_ddf, fixed_points, moving_points, spacing: Sequence[float] | float | None = None
) -> np.ndarray:
    """Per-landmark target registration error.

    With pull-back warping a fixed-grid point ``p`` maps to ``p + u(p)`` in the moving image; ``u(p)`` is
    linearly interpolated from the field (``scipy.ndimage.map_coordinates``, ``order=1``,
    ``mode="nearest"``: outside the grid the border value repeats, as in :mod:`regbench.spatial`). The error
    of landmark ``k`` is ``|| (p_k + u(p_k) - q_k) * spacing ||_2``. Fixed and moving grids are assumed to
    share the voxel size ``spacing`` (true after the benchmark's resampling to a common grid).

    Args:
        pred_ddf: ``(ndim, *spatial)`` displacement in voxels on the fixed grid.
        fixed_points: ``(N, ndim)`` landmark positions in (possibly fractional) voxel coordinates of the
            fixed grid, axis order of ``spatial``.
        moving_points: ``(N, ndim)`` corresponding positions in voxel coordinates of the moving grid.
        spacing: voxel size per axis (mm; ``None`` = 1, px).

    Returns:
        ``(N,)`` float64 errors in the unit of ``spacing`` (take mean/std as needed). Passing a zero field
        gives the initial (unregistered) TRE.
    """
    u = _field(pred_ddf)
    nd = u.shape[0]
    fp = np.asarray(_np(fixed_points), dtype=np.float64)
    mp = np.asarray(_np(moving_points), dtype=np.float64)
    if fp.ndim != 2 or fp.shape[1] != nd or mp.shape != fp.shape:
        raise ValueError(f"landmarks must be (N, {nd}) each; got {fp.shape} and {mp.shape}")
    s = _spacing(spacing, nd)
    if fp.shape[0] == 0:
        return np.zeros(0)
    disp = np.stack([ndimage.map_coordinates(u[i], fp.T, order=1, mode="nearest") for i in range(nd)], axis=1)
    return np.sqrt((((fp + disp - mp) * s) ** 2).sum(axis=1))


# ------------------------------------------------------------------------------------------ similarity
def cc_similarity(a, b, mask=None) -> float:
    """Pearson correlation coefficient of the intensities of two images ("CC similarity", Cai et al. 2023).

    ``CC = sum((a - mean a)(b - mean b)) / sqrt(sum (a - mean a)^2 * sum (b - mean b)^2)`` over all voxels,
    or over ``mask`` voxels; global (not windowed/local NCC). Unitless, in [-1, 1]; ``NaN`` when either
    image is constant over the evaluated voxels (or none are evaluated).

    Args:
        a, b: images of equal shape (typically fixed and warped moving).
        mask: optional boolean mask of the same shape.
    """
    x, y = _np(a).astype(np.float64), _np(b).astype(np.float64)
    if x.shape != y.shape:
        raise ValueError(f"images must share a grid; got shapes {x.shape} and {y.shape}")
    if mask is not None:
        m = _mask(mask)
        if m.shape != x.shape:
            raise ValueError(f"mask shape {m.shape} differs from image shape {x.shape}")
        x, y = x[m], y[m]
    x, y = x.ravel(), y.ravel()
    if x.size == 0:
        return NAN
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    if not denom > 0:
        return NAN
    return float(np.clip((x * y).sum() / denom, -1.0, 1.0))


def inverse_residual(u: torch.Tensor, v: torch.Tensor) -> dict[str, float]:
    """How far a forward field ``U`` and a backward field ``V`` are from inverses (Ding et al. 2021, Sec. 2:
    "U and V should be inverse of each other"): the composition residuals, in voxels.

    ``compose(u, v)`` (warp by ``U`` then by ``V``: ``v(x) + u(x + v(x))``) and ``compose(v, u)`` are zero
    fields for exact inverses. Returns ``{"mean_vox": ..., "p95_vox": ..., "max_vox": ...}``: the mean, 95th
    percentile and maximum of the per-voxel Euclidean norm over both compositions, plus ``"mean_disp_vox"``, the
    mean norm of ``U`` itself (for scale: the residual of ``V = 0`` equals it).

    Args:
        u, v: ``(B, ndim, *spatial)`` fields in voxels on the same grid.

    Raises:
        ValueError: fields of different shapes.
    """
    if u.shape != v.shape:
        raise ValueError(f"fields {tuple(u.shape)} and {tuple(v.shape)} must share a shape")
    with torch.no_grad():
        r = torch.cat([compose(u, v).norm(dim=1).flatten(), compose(v, u).norm(dim=1).flatten()])
        return {"mean_vox": float(r.mean()), "p95_vox": float(torch.quantile(r.double(), 0.95)),
                "max_vox": float(r.max()), "mean_disp_vox": float(u.norm(dim=1).mean())}


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of a torch module, shared tensors counted once."""
    seen, n = set(), 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return int(n)


# ------------------------------------------------------------------------------------------------ pair
def evaluate_pair(
    fixed_img,
    warped_img,
    fixed_seg,
    warped_seg,
    ddf,
    spacing: Sequence[float] | float | None,
    labels: Iterable[int],
    true_ddf=None,
    tre_mask=None,
    unit: str = "mm",
) -> list[dict]:
    """All metrics of one registered pair, one row per label.

    Args:
        fixed_img, warped_img: ``(*spatial)`` fixed image and moving image warped onto the fixed grid.
        fixed_seg, warped_seg: ``(*spatial)`` integer label maps (warped with nearest neighbour); may both be
            ``None`` for data without segmentations.
        ddf: ``(ndim, *spatial)`` predicted displacement in voxels on the fixed grid.
        spacing: voxel size per axis in ``unit`` (ones when ``unit="px"``).
        labels: label values to score (one row each).
        true_ddf: optional ``(ndim, *spatial)`` ground-truth displacement (synthetic deformations).
        tre_mask: optional mask of the voxels where TRE is evaluated (default: all).
        unit: ``"mm"`` or ``"px"``; names the distance keys. ``"px"`` requires unit spacing.

    Returns:
        A list of dicts, one per label, with ``label`` (int) and float values:
        ``dsc``, ``hd95_<unit>``, ``hd_<unit>``, ``assd_<unit>`` (per label, definitions of :func:`dice`,
        :func:`hd95`, :func:`hd`, :func:`assd`; computed by :func:`surface_metrics_per_label`), and the
        pair-level values repeated in every row: ``folding_count``, ``folding_pct``, ``sdlogj``
        (:func:`jacobian_stats` over the whole grid), ``cc`` (:func:`cc_similarity` of fixed vs warped image),
        ``tre_mean_<unit>``, ``tre_std_<unit>`` (:func:`tre`; ``NaN`` without ``true_ddf``). With no
        segmentation or no labels a single row with ``label = -1`` and ``NaN`` overlap/surface values is
        returned so the pair-level values are kept.
    """
    if unit not in ("mm", "px"):
        raise ValueError(f"unit must be 'mm' or 'px', got {unit!r}")
    u = _field(ddf)
    nd = u.shape[0]
    s = _spacing(spacing, nd)
    if unit == "px" and not np.allclose(s, 1.0):
        raise ValueError(f"unit='px' needs spacing 1 on every axis, got {tuple(s)}; use unit='mm'")
    fi = _np(fixed_img)
    if fi.shape != u.shape[1:]:
        raise ValueError(f"fixed image grid {fi.shape} differs from DDF grid {u.shape[1:]}")

    js = jacobian_stats(u)
    if true_ddf is not None:
        tre_mean, tre_std = tre(u, true_ddf, s, mask=tre_mask)
    else:
        tre_mean, tre_std = NAN, NAN
    pair = {
        "folding_count": js["folding_count"],
        "folding_pct": js["folding_pct"],
        "sdlogj": js["sdlogj"],
        "cc": cc_similarity(fixed_img, warped_img),
        f"tre_mean_{unit}": float(tre_mean),
        f"tre_std_{unit}": float(tre_std),
    }

    labels = [int(lab) for lab in labels]
    rows: list[dict] = []
    if fixed_seg is None or warped_seg is None or not labels:
        rows.append({"label": -1, "dsc": NAN, f"hd95_{unit}": NAN, f"hd_{unit}": NAN, f"assd_{unit}": NAN, **pair})
        return rows
    f, w = _np(fixed_seg), _np(warped_seg)
    if f.shape != fi.shape or w.shape != fi.shape:
        raise ValueError(f"segmentations {f.shape}, {w.shape} differ from the image grid {fi.shape}")
    per_label = surface_metrics_per_label(f, w, labels, s)
    for lab in labels:
        m = per_label[lab]
        rows.append({"label": lab, "dsc": m["dsc"], f"hd95_{unit}": m["hd95"], f"hd_{unit}": m["hd"],
                     f"assd_{unit}": m["assd"], **pair})
    return rows

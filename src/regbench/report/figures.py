"""Figures: metric box plots and qualitative registration panels (PNG at 150 dpi + PDF, written atomically).

Rendering uses matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never
``pyplot``, so no global backend is switched, no GUI is needed and no figure is left open.

Display orientation (all image panels): a 2D slice with array axes ``(a, b)`` is drawn as ``slice.T`` with
``origin="lower"``, so array axis ``a`` runs left -> right and axis ``b`` bottom -> top. For RAS-ordered NIfTI
voxel arrays (``i`` -> Right, ``j`` -> Anterior, ``k`` -> Superior) this shows axial slices with anterior
up and the patient's right on the right of the image (neurological convention), coronal and sagittal slices
with superior up. Every panel of a figure uses the same convention, so contours, grids and maps overlay
exactly.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure

from ..errors import DataError
from ..utils import atomic_path, get_logger
from .tables import _display_index, _method_names, _ordered_methods, metric_info, resolve_metric

log = get_logger(__name__)

DPI = 150
FIXED_SEG_COLOR = "red"
WARPED_SEG_COLOR = "lime"
FOLD_COLOR = "#ffd400"
MAX_CONTOUR_LABELS = 64


def save_figure(fig: Figure, out_stem: str | Path) -> dict[str, Path]:
    """Save ``fig`` as ``<out_stem>.png`` (150 dpi) and ``<out_stem>.pdf``, each atomically.

    Returns:
        ``{"png": Path, "pdf": Path}``.
    """
    stem = Path(out_stem)
    out = {}
    for ext in ("png", "pdf"):
        path = stem.parent / f"{stem.name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=DPI, bbox_inches="tight")
        out[ext] = path
    log.info("wrote %s.{png,pdf}", stem)
    return out


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


# ----------------------------------------------------------------------------------------------------------
# Box plots
# ----------------------------------------------------------------------------------------------------------


def boxplots(
    df_pairs: pd.DataFrame,
    metrics: Sequence[str],
    out_stem: str | Path,
    method_order: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Box plot per metric (one subplot each), one box per method, per-pair values overlaid as jittered points.

    Args:
        df_pairs: per-pair table (:func:`regbench.report.tables.per_pair`) with ``method``, optional
            ``method_name`` and the metric columns (NaN values are left out of each box).
        metrics: metric columns, resolved like :func:`regbench.report.tables.resolve_metric` (``"hd95"`` ->
            ``hd95_mm`` or ``hd95_px``). The y label is the metric's display name with unit and direction
            arrow (``"HD95 (mm) ↓"``). Runtime axes switch to a log scale when values span more than a
            factor of 100.
        out_stem: output path without suffix; writes ``<out_stem>.png`` and ``<out_stem>.pdf``.
        method_order: box order by method id or display name (others appended).
        title: figure title.

    Returns:
        ``{"png": Path, "pdf": Path}``.

    Raises:
        DataError: ``df_pairs`` is empty or has no ``method`` column.
        KeyError: a metric column is missing.
    """
    import seaborn as sns

    if df_pairs is None or df_pairs.empty or "method" not in df_pairs.columns:
        raise DataError("boxplots: need a non-empty per-pair table with a 'method' column")
    if not metrics:
        raise ValueError("boxplots: no metrics given")
    df = df_pairs.copy()
    df["method"] = df["method"].astype(str)
    cols = [resolve_metric(df, m) for m in metrics]
    names = _method_names(df)
    methods = _ordered_methods(df, method_order)
    disp = dict(zip(methods, _display_index(methods, names)))
    df["_method"] = df["method"].map(disp)
    order = [disp[m] for m in methods]

    n = len(cols)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    w = max(3.2, 0.55 * len(order) + 1.6)
    fig = _new_figure(w * ncols, 3.6 * nrows + (0.4 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, col in zip(axes, cols):
        info = metric_info(col)
        sub = df[["_method", col]].copy()
        sub[col] = pd.to_numeric(sub[col], errors="coerce")
        sub = sub.dropna()
        if sub.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
        else:
            present = [m for m in order if m in set(sub["_method"])]
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
                sns.boxplot(
                    data=sub, x="_method", y=col, order=present, hue="_method", hue_order=present,
                    legend=False, ax=ax, showfliers=False, width=0.6, linewidth=1.0, palette="Set2",
                )
            sns.stripplot(
                data=sub, x="_method", y=col, order=present, ax=ax, color="0.15", size=2.5, alpha=0.6,
                jitter=0.22,
            )
            v = sub[col].to_numpy(float)
            if col.startswith("runtime") and v.min() > 0 and v.max() / v.min() > 100:
                ax.set_yscale("log")  # CPU vs GPU runtimes span orders of magnitude
            ax.tick_params(axis="x", labelrotation=35)
            for lab in ax.get_xticklabels():
                lab.set_horizontalalignment("right")
                lab.set_rotation_mode("anchor")
        ax.set_xlabel("")
        ax.set_ylabel(info.header)
        ax.set_title(info.label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ----------------------------------------------------------------------------------------------------------
# Qualitative panel
# ----------------------------------------------------------------------------------------------------------


def _squeeze_trailing(a: np.ndarray, nd: int | None = None) -> np.ndarray:
    """Drop trailing singleton axes (NIfTI ``(X, Y, 1)`` 2D images) down to ``nd`` (or 2) dims."""
    a = np.asarray(a)
    target = nd if nd is not None else 2
    while a.ndim > target and a.shape[-1] == 1:
        a = a[..., 0]
    return a


def _slice(a: np.ndarray | None, axis: int | None, idx: int | None) -> np.ndarray | None:
    if a is None:
        return None
    return a if axis is None else np.take(a, idx, axis=axis)


def _window(a: np.ndarray) -> tuple[float, float]:
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _show(ax, img2d: np.ndarray, **kw):
    return ax.imshow(img2d.T, origin="lower", interpolation="nearest", **kw)


def _gray(ax, img2d: np.ndarray) -> None:
    lo, hi = _window(img2d)
    _show(ax, img2d, cmap="gray", vmin=lo, vmax=hi)


def _contours(ax, seg2d: np.ndarray | None, color: str) -> None:
    """Outline each non-zero label of a 2D label slice (contour of ``seg == l`` at 0.5)."""
    if seg2d is None:
        return
    seg2d = np.rint(np.asarray(seg2d)).astype(np.int64)
    labels = [int(v) for v in np.unique(seg2d) if v != 0]
    masks = [seg2d == l for l in labels] if len(labels) <= MAX_CONTOUR_LABELS else [seg2d != 0]
    for m in masks:
        if m.any() and not m.all():
            ax.contour(m.T.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.7, origin="lower")


def _blank(ax, text: str = "n/a") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_facecolor("0.95")


def _jacobian(ddf: np.ndarray) -> np.ndarray:
    import torch

    from ..spatial import jacobian_determinant

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(ddf, dtype=np.float32))[None]
        return jacobian_determinant(t)[0].numpy()


def _grid_lines(ax, ua: np.ndarray, ub: np.ndarray, step: int) -> None:
    """Draw the grid ``x -> x + u(x)`` (fixed-grid points moved by the in-plane displacement)."""
    na, nb = ua.shape
    A, B = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    pa, pb = A + ua, B + ub
    kw = dict(color="white", linewidth=0.5, alpha=0.8)
    for j in range(0, nb, step):
        ax.plot(pa[:, j], pb[:, j], **kw)
    for i in range(0, na, step):
        ax.plot(pa[i, :], pb[i, :], **kw)
    ax.set_xlim(-0.5, na - 0.5)
    ax.set_ylim(-0.5, nb - 0.5)


def qualitative_panel(
    fixed: np.ndarray,
    moving: np.ndarray,
    fixed_seg: np.ndarray | None,
    moving_seg: np.ndarray | None,
    results: Mapping[str, Mapping[str, Any]],
    out_stem: str | Path,
    title: str | None = None,
    slice_axis: int | None = None,
    slice_index: int | None = None,
) -> dict[str, Path]:
    """Grid of qualitative results for one pair: a reference row, then one row per method.

    Arrays are in NIfTI voxel order ``(i, j[, k])`` on the fixed grid (moving resampled onto it, as the
    methods require). 3D inputs are shown at one slice: the middle one (or ``slice_index``) along
    ``slice_axis`` (default: the last array axis, i.e. axial for RAS-ordered NIfTI); 2D inputs (including
    ``(X, Y, 1)``) are shown as is. Display convention: each 2D slice with array axes ``(a, b)`` is drawn as
    ``slice.T`` with ``origin="lower"`` (axis ``a`` left -> right, ``b`` bottom -> top), the same for every
    panel, so anatomy is upright for RAS-ordered arrays.

    Layout (4 columns):

    * row 0 "fixed / moving": fixed image with fixed-seg contours (red); moving image with moving-seg
      contours (green); moving image with both (red fixed, green moving: the overlap before registration);
      ``|fixed - moving|``.
    * one row per method: warped image; warped image with fixed-seg (red) and warped-seg (green) contours;
      in-plane displacement magnitude ``sqrt(u_a² + u_b²)`` in voxels (colour bar) with the deformed grid
      ``x + u(x)`` drawn from the in-plane components; Jacobian determinant of ``I + ∇u`` computed by
      :func:`regbench.spatial.jacobian_determinant` on the full 2D/3D field then sliced, in a diverging
      colour map centred at 1 (blue < 1 contraction, red > 1 expansion, clipped to [0, max(2, max J)]),
      folding voxels (``det J <= 0``) filled in yellow, with the folding percentage of the whole field
      and of the slice in the panel title.

    Args:
        fixed, moving: intensity images, same shape ``(*spatial)``.
        fixed_seg, moving_seg: integer label maps of the same shape, or ``None`` (no contours).
        results: ``{method display name: {"warped": array, "warped_seg": array | None,
            "ddf": (ndim, *spatial) voxels | None}}``, rows in mapping order; a ``None`` entry gives an
            "n/a" panel.
        out_stem: output path without suffix; writes ``.png`` (150 dpi) and ``.pdf``.
        title: figure title.
        slice_axis: axis of 3D inputs to slice (``0``, ``1``, ``2``; negative allowed).
        slice_index: slice along ``slice_axis`` (default: middle, ``shape // 2``).

    Returns:
        ``{"png": Path, "pdf": Path}``.

    Raises:
        ValueError: inputs are not 2D/3D, shapes differ from ``fixed``, a DDF is not ``(ndim, *spatial)``,
            or the slice axis/index is out of range.
    """
    fixed = _squeeze_trailing(np.asarray(fixed, dtype=np.float32))
    nd = fixed.ndim
    if nd not in (2, 3):
        raise ValueError(f"qualitative_panel: fixed image must be 2D or 3D, got shape {fixed.shape}")
    shape = fixed.shape

    def _img(a, what: str, dtype=np.float32):
        if a is None:
            return None
        a = _squeeze_trailing(np.asarray(a, dtype=dtype), nd)
        if a.shape != shape:
            raise ValueError(f"qualitative_panel: {what} has shape {a.shape}, fixed has {shape}")
        return a

    moving = _img(moving, "moving")
    fseg = _img(fixed_seg, "fixed_seg")
    mseg = _img(moving_seg, "moving_seg")

    axis = idx = None
    if nd == 3:
        axis = 2 if slice_axis is None else int(slice_axis)
        if not -3 <= axis < 3:
            raise ValueError(f"qualitative_panel: slice_axis {slice_axis} out of range for a 3D image")
        axis %= 3
        idx = shape[axis] // 2 if slice_index is None else int(slice_index)
        if not 0 <= idx < shape[axis]:
            raise ValueError(f"qualitative_panel: slice_index {idx} out of range [0, {shape[axis]})")
    inplane = [c for c in range(nd) if c != axis]

    rows = list(results.items())
    nrows, ncols = 1 + len(rows), 4
    f2 = _slice(fixed, axis, idx)
    aspect = f2.shape[1] / max(f2.shape[0], 1)  # displayed height / width
    cw = 3.0
    fig = _new_figure(cw * ncols + 0.8, cw * min(max(aspect, 0.5), 2.0) * nrows + (0.5 if title else 0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])

    m2 = _slice(moving, axis, idx)
    fs2, ms2 = _slice(fseg, axis, idx), _slice(mseg, axis, idx)
    ax = axes[0]
    _gray(ax[0], f2)
    _contours(ax[0], fs2, FIXED_SEG_COLOR)
    ax[0].set_title("fixed (+ fixed seg)", fontsize=9)
    if m2 is None:
        for a in ax[1:3]:
            _blank(a)
    else:
        _gray(ax[1], m2)
        _contours(ax[1], ms2, WARPED_SEG_COLOR)
        ax[1].set_title("moving (+ moving seg)", fontsize=9)
        _gray(ax[2], m2)
        _contours(ax[2], fs2, FIXED_SEG_COLOR)
        _contours(ax[2], ms2, WARPED_SEG_COLOR)
        ax[2].set_title("before: fixed seg (red), moving seg (green)", fontsize=8)
    if m2 is None:
        _blank(ax[3])
    else:
        d = np.abs(f2.astype(np.float64) - m2.astype(np.float64))
        im = _show(ax[3], d, cmap="magma", vmin=0.0, vmax=_window(d)[1])
        fig.colorbar(im, ax=ax[3], fraction=0.046, pad=0.03)
        ax[3].set_title("|fixed − moving|", fontsize=9)
    ax[0].set_ylabel("fixed / moving", fontsize=10)

    step = max(1, min(f2.shape) // 16)
    for r, (name, res) in enumerate(rows, start=1):
        ax = axes[r]
        ax[0].set_ylabel(str(name), fontsize=10)
        warped = _img(res.get("warped"), f"{name}: warped")
        wseg = _img(res.get("warped_seg"), f"{name}: warped_seg")
        ddf = res.get("ddf")
        w2 = _slice(warped, axis, idx)
        if w2 is None:
            _blank(ax[0])
            _blank(ax[1])
        else:
            _gray(ax[0], w2)
            ax[0].set_title("warped", fontsize=9)
            _gray(ax[1], w2)
            _contours(ax[1], fs2, FIXED_SEG_COLOR)
            _contours(ax[1], _slice(wseg, axis, idx), WARPED_SEG_COLOR)
            ax[1].set_title("fixed seg (red), warped seg (green)", fontsize=8)
        if ddf is None:
            _blank(ax[2])
            _blank(ax[3])
            continue
        ddf = np.asarray(ddf, dtype=np.float32)
        if ddf.ndim > nd + 1:
            ddf = _squeeze_trailing(ddf, nd + 1)
        if ddf.shape != (nd, *shape):
            raise ValueError(f"qualitative_panel: {name}: DDF shape {ddf.shape}, expected {(nd, *shape)}")
        ua, ub = (_slice(ddf[c], axis, idx) for c in inplane)
        mag = np.sqrt(ua.astype(np.float64) ** 2 + ub.astype(np.float64) ** 2)
        im = _show(ax[2], mag, cmap="viridis", vmin=0.0, vmax=max(float(np.nanmax(mag)), 1e-6))
        _grid_lines(ax[2], ua, ub, step)
        cb = fig.colorbar(im, ax=ax[2], fraction=0.046, pad=0.03)
        cb.set_label("voxels", fontsize=8)
        ax[2].set_title("|u| in-plane + deformed grid", fontsize=9)

        jac = _jacobian(ddf)
        j2 = _slice(jac, axis, idx)
        vmax = max(2.0, float(np.nanmax(j2)))
        im = _show(ax[3], np.clip(j2, 0.0, vmax), cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=vmax))
        fold = j2 <= 0
        if fold.any():
            _show(ax[3], np.ma.masked_where(~fold, np.ones_like(j2)), cmap=ListedColormap([FOLD_COLOR]), vmin=0, vmax=1)
        fig.colorbar(im, ax=ax[3], fraction=0.046, pad=0.03)
        pct_all = 100.0 * float(np.mean(jac <= 0))
        pct_slice = 100.0 * float(np.mean(fold))
        ax[3].set_title(f"det J (≤0: {pct_all:.2f}% all, {pct_slice:.2f}% slice)", fontsize=8)

    if title:
        fig.suptitle(title)
    if nd == 3:
        fig.text(0.5, 0.0, f"slice {idx} along array axis {axis}; voxel axes (a, b) shown as .T, origin lower",
                 ha="center", va="bottom", fontsize=7, color="0.4")
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ----------------------------------------------------------------------------------------------------------
# From pipeline outputs
# ----------------------------------------------------------------------------------------------------------


def _read_pairs(reg_dir: Path) -> pd.DataFrame:
    path = Path(reg_dir) / "pairs.tsv"
    if not path.is_file():
        raise DataError(f"{path}: pairs.tsv not found (has the registration step run?)")
    df = pd.read_csv(path, sep="\t", dtype=str)
    if "pair_id" not in df.columns:
        raise DataError(f"{path}: no 'pair_id' column; has {list(df.columns)}")
    return df


def _resolve(p: Any, repo_root: Path, reg_dir: Path | None = None) -> Path | None:
    """Absolute, repo-root-relative or (fallback) reg-dir-relative path; ``None`` for an empty cell."""
    if p is None or (isinstance(p, float) and math.isnan(p)) or pd.isna(p) or str(p).strip() == "":
        return None
    q = Path(str(p).strip())
    if q.is_absolute():
        return q
    if (repo_root / q).exists() or reg_dir is None or not (reg_dir / q).exists():
        return repo_root / q
    return reg_dir / q


def image_to_display(a: np.ndarray | None, field: bool = False) -> np.ndarray | None:
    """Rotate a 2D array in picture order ``(row, column)`` into this module's display order.

    The panels draw axis 0 left -> right and axis 1 bottom -> top, so ``A[c, r'] = a[H - 1 - r', c]``
    (``arr.T[:, ::-1]``) shows the picture upright. For a DDF ``(2, H, W)`` (``field=True``) the components
    follow the axes: new axis 0 = old axis 1, new axis 1 = minus old axis 0. A proper rotation: Jacobian
    determinants are unchanged. ``None`` passes through.
    """
    if a is None:
        return None
    if not field:
        return np.ascontiguousarray(np.asarray(a).T[:, ::-1])
    a = np.asarray(a)
    return np.ascontiguousarray(np.stack([a[1].T[:, ::-1], -a[0].T[:, ::-1]]))


def qualitative_from_dirs(
    cases_tsv: str | Path,
    reg_dirs: Mapping[str, str | Path],
    pair_id: str | None,
    modality: str | Mapping[str, str],
    out_stem: str | Path,
    *,
    repo_root: str | Path | None = None,
    title: str | None = None,
    slice_axis: int | None = None,
    seg: str = "seg",
    orientation: str = "ras",
) -> dict[str, Path]:
    """Load one test pair and each method's outputs from pipeline folders, then call :func:`qualitative_panel`.

    Args:
        cases_tsv: prepared dataset table with columns ``case``, ``split``, ``seg`` (optional) and one column
            per modality; paths relative to the folder of ``cases_tsv`` (or absolute).
        reg_dirs: ``{method display name: registration output folder}`` (one dataset and fold), each with
            ``pairs.tsv`` (columns ``pair_id, fixed, moving, ddf, warped, warped_seg, ...``; paths absolute
            or relative to ``repo_root``, falling back to the folder itself). Rows follow mapping order.
        pair_id: the pair to show; ``None`` = the first row of the first folder's ``pairs.tsv``.
        modality: ``cases_tsv`` column of the fixed/moving images to show (e.g. ``"t1"``), or
            ``{"fixed": column, "moving": column}`` for a multi-modal dataset.
        out_stem: output path without suffix (``.png`` and ``.pdf`` are written).
        repo_root: base of relative paths in ``pairs.tsv`` (default: current directory, the Snakemake root).
        title: figure title (default ``"<pair_id>: moving <m> -> fixed <f>"``).
        slice_axis: see :func:`qualitative_panel`.
        seg: ``cases_tsv`` column of the label maps (``seg``, or e.g. ``seg_256``).
        orientation: ``"ras"`` (NIfTI voxel order, the module's display convention) or ``"image"`` for 2D
            arrays in picture order ``(row, column)``, e.g. the chest X-rays read from PNG: they are rotated
            (images, labels and fields alike, :func:`image_to_display`) so that rows run top -> bottom.

    ``fixed``/``moving`` in ``pairs.tsv`` are case ids of ``cases_tsv``; a value that is not a case id is
    read as an image path. A method whose ``pairs.tsv`` lacks the pair is skipped with a warning; empty
    ``warped``/``warped_seg``/``ddf`` cells give "n/a" panels.

    Returns:
        ``{"png": Path, "pdf": Path}``.

    Raises:
        DataError: ``cases_tsv`` or a ``pairs.tsv`` is missing or lacks a needed column, the pair is in no
            folder, no method has it, or an image file is missing/unreadable (from :mod:`regbench.io`).
    """
    from ..io import load_ddf, load_image

    cases_tsv = Path(cases_tsv)
    root = Path(repo_root) if repo_root is not None else Path.cwd()
    if not cases_tsv.is_file():
        raise DataError(f"{cases_tsv}: cases.tsv not found")
    if not reg_dirs:
        raise DataError("qualitative_from_dirs: no registration folders given")
    cases = pd.read_csv(cases_tsv, sep="\t", dtype=str)
    fcol, mcol = (modality["fixed"], modality["moving"]) if isinstance(modality, Mapping) else (modality, modality)
    for col in dict.fromkeys(("case", fcol, mcol)):
        if col not in cases.columns:
            raise DataError(f"{cases_tsv}: no column {col!r}; has {list(cases.columns)}")
    cases = cases.set_index("case")

    tables = {name: _read_pairs(Path(d)) for name, d in reg_dirs.items()}
    first_name = next(iter(tables))
    if pair_id is None:
        if tables[first_name].empty:
            raise DataError(f"{Path(reg_dirs[first_name]) / 'pairs.tsv'}: no pairs")
        pair_id = str(tables[first_name]["pair_id"].iloc[0])
    ref_row = None
    for t in tables.values():
        hit = t[t["pair_id"] == str(pair_id)]
        if len(hit):
            ref_row = hit.iloc[0]
            break
    if ref_row is None:
        raise DataError(f"pair {pair_id!r} is in none of the pairs.tsv files of {list(reg_dirs)}")
    for col in ("fixed", "moving"):
        if col not in ref_row.index:
            raise DataError(f"pairs.tsv lacks the {col!r} column")

    def case_image(cid: str, column: str) -> np.ndarray | None:
        if cid in cases.index:
            cell = cases.loc[cid, column] if column in cases.columns else None
            if isinstance(cell, pd.Series):
                cell = cell.iloc[0]
            path = _resolve(cell, cases_tsv.parent)
        elif column in (fcol, mcol):
            path = _resolve(cid, root)
        else:
            return None
        if path is None:
            return None
        arr = load_image(path).array
        return np.rint(arr).astype(np.int32) if column == seg else arr

    fid, mid = str(ref_row["fixed"]), str(ref_row["moving"])
    fixed, moving = case_image(fid, fcol), case_image(mid, mcol)
    fixed_seg, moving_seg = case_image(fid, seg), case_image(mid, seg)

    results: dict[str, dict[str, Any]] = {}
    for name, t in tables.items():
        d = Path(reg_dirs[name])
        hit = t[t["pair_id"] == str(pair_id)]
        if hit.empty:
            log.warning("qualitative_from_dirs: %s (%s) has no pair %r; skipped", name, d / "pairs.tsv", pair_id)
            continue
        row = hit.iloc[0]
        ddf_p = _resolve(row.get("ddf"), root, d)
        w_p = _resolve(row.get("warped"), root, d)
        ws_p = _resolve(row.get("warped_seg"), root, d)
        results[name] = {
            "ddf": load_ddf(ddf_p) if ddf_p else None,
            "warped": load_image(w_p).array if w_p else None,
            "warped_seg": np.rint(load_image(ws_p).array).astype(np.int32) if ws_p else None,
        }
    if not results:
        raise DataError(f"qualitative_from_dirs: no method has pair {pair_id!r}")
    if orientation == "image":
        fixed, moving, fixed_seg, moving_seg = (image_to_display(a) for a in (fixed, moving, fixed_seg, moving_seg))
        results = {k: {"ddf": image_to_display(v["ddf"], field=True), "warped": image_to_display(v["warped"]),
                       "warped_seg": image_to_display(v["warped_seg"])} for k, v in results.items()}
    elif orientation != "ras":
        raise ValueError(f"orientation must be 'ras' or 'image', got {orientation!r}")
    return qualitative_panel(
        fixed, moving, fixed_seg, moving_seg, results, out_stem,
        title=title or f"{pair_id}: moving {mid} → fixed {fid}", slice_axis=slice_axis,
    )


# ----------------------------------------------------------------------------------------------------------
# Difference maps (warped images and |fixed - warped| of several methods, e.g. Zhu et al. 2021 Figs. 9-10)
# ----------------------------------------------------------------------------------------------------------


def _slice_spec(shape: tuple[int, ...], slice_axis: int | None,
                slice_index: int | None) -> tuple[int | None, int | None]:
    """(axis, index) of the displayed slice of a 3D array (default: the middle of the last axis); (None, None) in 2D."""
    if len(shape) != 3:
        return None, None
    axis = 2 if slice_axis is None else int(slice_axis)
    if not -3 <= axis < 3:
        raise ValueError(f"slice_axis {slice_axis} out of range for a 3D image")
    axis %= 3
    idx = shape[axis] // 2 if slice_index is None else int(slice_index)
    if not 0 <= idx < shape[axis]:
        raise ValueError(f"slice_index {idx} out of range [0, {shape[axis]}) along axis {axis}")
    return axis, idx


def difference_panel(
    examples: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    footer: str | None = None,
    slice_axis: int | None = None,
    slice_index: int | None = None,
) -> Figure:
    """Registration results and their difference maps: two rows per example pair.

    Columns: fixed image, moving image, then the warped moving image of each method. Row 1 of an example
    shows the images (one grey window for all of them: the fixed slice's 1st-99th percentile); row 2 the
    difference maps ``|fixed − moving|`` (under the moving image) and ``|fixed − warped|`` (under each
    method), one colour scale per example (0 to the largest 99th percentile of its maps) with a colour bar.
    Images are drawn like :func:`qualitative_panel` (``slice.T``, ``origin="lower"``; 3D inputs at the
    middle slice of the last axis, or ``slice_axis`` / ``slice_index``).

    Args:
        examples: ``[{"label": row title, "fixed": array, "moving": array | None, "warped": {method display
            name: array | None}, "fixed_id", "moving_id" (optional, in the column titles)}, ...]``, arrays
            on the fixed grid; ``None`` gives an "n/a" panel. The columns are the methods of the first
            example, in mapping order.
        title: figure title; footer: a line printed at the bottom (the SCALED-DOWN note of a scaled-down run).

    Returns:
        The figure (save with :func:`save_figure`).

    Raises:
        ValueError: no examples, an image is not 2D/3D, a shape differs from the fixed image's, or the slice
            is out of range.
    """
    from .common import _footer

    if not examples:
        raise ValueError("difference_panel: no examples")
    methods = list(examples[0]["warped"])
    ncols, nrows = 2 + len(methods), 2 * len(examples)
    first = _squeeze_trailing(np.asarray(examples[0]["fixed"], dtype=np.float32))
    axis0, idx0 = _slice_spec(first.shape, slice_axis, slice_index) if first.ndim in (2, 3) else (None, None)
    f0 = _slice(first, axis0, idx0)
    aspect = min(max(f0.shape[1] / max(f0.shape[0], 1), 0.5), 2.0) if f0.ndim == 2 else 1.0
    cw = 2.4
    height = cw * aspect * nrows + (0.7 if title else 0.3) + (0.3 if footer else 0.0)
    fig = _new_figure(cw * ncols + 0.9, height)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    slice_note = ""
    for e, ex in enumerate(examples):
        fixed = _squeeze_trailing(np.asarray(ex["fixed"], dtype=np.float32))
        if fixed.ndim not in (2, 3):
            raise ValueError(f"difference_panel: {ex.get('label')}: fixed image must be 2D or 3D, got {fixed.shape}")
        axis, idx = _slice_spec(fixed.shape, slice_axis, slice_index)
        if axis is not None:
            slice_note = f"slice {idx} along array axis {axis}"

        def img(a, what: str):
            if a is None:
                return None
            a = _squeeze_trailing(np.asarray(a, dtype=np.float32), fixed.ndim)
            if a.shape != fixed.shape:
                raise ValueError(f"difference_panel: {ex.get('label')}: {what} has shape {a.shape}, "
                                 f"fixed has {fixed.shape}")
            return _slice(a, axis, idx).astype(np.float64)

        f2 = _slice(fixed, axis, idx).astype(np.float64)
        shown = [("fixed", f2), ("moving", img(ex.get("moving"), "moving"))]
        shown += [(name, img((ex.get("warped") or {}).get(name), f"{name}: warped")) for name in methods]
        lo, hi = _window(f2)
        diffs = [None] + [None if a is None else np.abs(f2 - a) for _, a in shown[1:]]
        tops = [_window(d)[1] for d in diffs if d is not None]
        vmax = max(max(tops) if tops else 0.0, 1e-6)
        top, bot = axes[2 * e], axes[2 * e + 1]
        im = None
        for c, (name, a) in enumerate(shown):
            if a is None:
                _blank(top[c])
            else:
                _show(top[c], a, cmap="gray", vmin=lo, vmax=hi)
            head = {0: f"fixed {ex.get('fixed_id') or ''}", 1: f"moving {ex.get('moving_id') or ''}"}.get(c, name)
            top[c].set_title(head.strip(), fontsize=9)
            if c == 0:
                bot[c].axis("off")
                bot[c].text(0.5, 0.5, "difference maps\n|fixed − image above|", ha="center", va="center",
                            transform=bot[c].transAxes, fontsize=8, color="0.3")
            elif diffs[c] is None:
                _blank(bot[c])
            else:
                im = _show(bot[c], diffs[c], cmap="magma", vmin=0.0, vmax=vmax)
        top[0].set_ylabel(str(ex.get("label", "")), fontsize=8)
        if im is not None:  # in an inset beside the last map, so that every panel keeps its size
            fig.colorbar(im, cax=bot[-1].inset_axes((1.04, 0.0, 0.05, 1.0)))
    note = slice_note and f"{slice_note}; voxel axes (a, b) shown as .T, origin lower"
    head = "\n".join(x for x in (title, note) if x)
    if head:
        fig.suptitle(head, fontsize=10)
    bottom = _footer(fig, footer, height)
    fig.tight_layout(rect=(0.0, bottom, 1.0, 1.0))
    return fig


def _case_path(cases: pd.DataFrame, cases_tsv: Path, root: Path, cid: str, column: str) -> Path | None:
    """Image path of case ``cid`` in ``column`` of ``cases.tsv`` (relative to its folder); a value that is not a
    case id is read as a path (relative to ``root``)."""
    if cid in cases.index:
        cell = cases.loc[cid, column] if column in cases.columns else None
        if isinstance(cell, pd.Series):
            cell = cell.iloc[0]
        return _resolve(cell, cases_tsv.parent)
    return _resolve(cid, root)


def difference_from_dirs(
    cases_tsv: str | Path,
    reg_dirs: Mapping[str, str | Path | None],
    pair_ids: Sequence[str] | None,
    modality: str | Mapping[str, str],
    *,
    repo_root: str | Path | None = None,
    title: str | None = None,
    footer: str | None = None,
    slice_axis: int | None = None,
    slice_index: int | None = None,
    orientation: str = "ras",
) -> Figure:
    """Load test pairs and each method's warped image from pipeline folders, then :func:`difference_panel`.

    Args:
        cases_tsv: prepared dataset table (``case`` and one column per modality, paths relative to its folder).
        reg_dirs: ``{method display name: registration output folder or None}`` (one dataset and fold), each
            with ``pairs.tsv`` (``pair_id, fixed, moving, warped, ...``; paths absolute or relative to
            ``repo_root``, falling back to the folder). ``None``, or a folder without the pair or its warped
            image, gives "n/a" panels (with a warning).
        pair_ids: the pairs to show, two rows each; ``None`` = the first row of the first folder's ``pairs.tsv``.
        modality: ``cases.tsv`` column of the images, or ``{"fixed": column, "moving": column}``.
        repo_root: base of relative paths in ``pairs.tsv`` (default: the current directory).
        title, footer, slice_axis, slice_index: see :func:`difference_panel`.
        orientation: ``"ras"`` or ``"image"`` (2D arrays in picture order, rotated by :func:`image_to_display`).

    Raises:
        DataError: ``cases.tsv`` or a ``pairs.tsv`` is missing or lacks a column, no folder is given, or a
            pair is in no folder.
    """
    from ..io import load_image

    cases_tsv = Path(cases_tsv)
    root = Path(repo_root) if repo_root is not None else Path.cwd()
    if orientation not in ("ras", "image"):
        raise ValueError(f"orientation must be 'ras' or 'image', got {orientation!r}")
    if not cases_tsv.is_file():
        raise DataError(f"{cases_tsv}: cases.tsv not found")
    fcol, mcol = (modality["fixed"], modality["moving"]) if isinstance(modality, Mapping) else (modality, modality)
    cases = pd.read_csv(cases_tsv, sep="\t", dtype=str)
    for col in ("case", fcol, mcol):
        if col not in cases.columns:
            raise DataError(f"{cases_tsv}: no column {col!r}; has {list(cases.columns)}")
    cases = cases.set_index("case")
    tabs = {name: _read_pairs(Path(d)) for name, d in reg_dirs.items() if d is not None}
    if not tabs:
        raise DataError("difference_from_dirs: no registration folders given")
    if pair_ids is None:
        first = next(iter(tabs))
        if tabs[first].empty:
            raise DataError(f"{Path(reg_dirs[first]) / 'pairs.tsv'}: no pairs")
        pair_ids = [str(tabs[first]["pair_id"].iloc[0])]
    show = image_to_display if orientation == "image" else (lambda a: a)

    def load(path: Path | None) -> np.ndarray | None:
        return None if path is None else show(load_image(path).array)

    examples = []
    for pid in pair_ids:
        hits = {name: t[t["pair_id"] == str(pid)] for name, t in tabs.items()}
        ref = next((h.iloc[0] for h in hits.values() if len(h)), None)
        if ref is None:
            raise DataError(f"pair {pid!r} is in none of the pairs.tsv files of {list(tabs)}")
        for col in ("fixed", "moving"):
            if col not in ref.index:
                raise DataError(f"pairs.tsv lacks the {col!r} column")
        fid, mid = str(ref["fixed"]), str(ref["moving"])
        warped: dict[str, np.ndarray | None] = {}
        for name, d in reg_dirs.items():
            hit = hits.get(name)
            if hit is None or hit.empty:
                log.warning("difference_from_dirs: %s has no pair %r (folder %s); n/a", name, pid, d)
                warped[name] = None
                continue
            w = _resolve(hit.iloc[0].get("warped"), root, Path(d))
            if w is None:
                log.warning("difference_from_dirs: %s: no warped image of pair %r; n/a", name, pid)
            warped[name] = load(w)
        fixed = load(_case_path(cases, cases_tsv, root, fid, fcol))
        if fixed is None:
            raise DataError(f"{cases_tsv}: no {fcol!r} image of the fixed case {fid!r} (pair {pid!r})")
        examples.append({
            "label": f"pair {pid}", "fixed_id": fid, "moving_id": mid,
            "fixed": fixed,
            "moving": load(_case_path(cases, cases_tsv, root, mid, mcol)),
            "warped": warped,
        })
    return difference_panel(examples, title=title, footer=footer, slice_axis=slice_axis, slice_index=slice_index)

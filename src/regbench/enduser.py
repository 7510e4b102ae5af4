"""Registration of a user's own image pair (``regbench register-images``), with outputs other tools read.

What it writes for ``--out P`` (all on the fixed image's grid, with the fixed image's NIfTI affine):

* ``P_warped.nii.gz``: the moving image warped onto the fixed image (linear);
* ``P_warped_labels.nii.gz``: the moving label map warped with nearest neighbour (when one is given);
* ``P_field_itk.nii.gz``: the displacement field in the **ITK convention**: a NIfTI vector image
  ``(X, Y, Z, 1, 3)`` (intent ``vector``) of physical displacements in **millimetres, LPS**, such that the
  transform ``T(p) = p + d(p)`` maps a fixed-image point ``p`` to the moving-image point it takes its value
  from. This is what ``antsApplyTransforms -t``, ANTsPy's ``apply_transforms(transformlist=[...])``, ITK-SNAP and
  SimpleITK's ``DisplacementFieldTransform`` read (ITK reads the NIfTI affine as LPS geometry and the vector
  values as they are; ANTs writes its own ``*Warp.nii.gz`` fields the same way);
* ``P_ddf.nii.gz``: the same field in regbench's own convention (voxels of the fixed grid, channel ``i`` along
  array axis ``i``; :func:`regbench.io.save_ddf`);
* ``P_metrics.tsv``: one row per label (when both label maps are given): DSC before and after, HD95, HD and
  ASSD in mm; and the field's folding (% of voxels with det J <= 0), SDlogJ and the runtime, also printed;
* ``P_summary.json``: the same numbers averaged, with the method, inputs and grids.

Conversion (:func:`ddf_to_itk`): a fixed voxel ``v`` (NIfTI index order, as nibabel loads arrays) takes its value
from moving voxel ``v + u(v)``; with the images' voxel-to-RAS matrices ``A_f`` and ``A_m`` the physical
displacement is ``d_RAS = A_m (v + u) - A_f v`` and ``d_LPS = diag(-1, -1, 1) d_RAS``. On one grid
(``A_m = A_f``) this is ``M u`` with ``M`` the affine's 3x3 part (spacing and direction), so anisotropic and
oblique grids are handled. ``tests/test_enduser.py`` checks that SimpleITK and ANTs, applying this file to the
moving image, give regbench's own warped image.

Learned methods (any ``model.pt`` of the pipeline): both images are reoriented to the closest canonical (RAS+)
voxel order, as every reader of the pipeline stores its arrays, scaled to [0, 1] where they are not
(``intensity="auto"``), and
resized to the grid the network was trained on (``grid`` recorded in ``model.pt``; for models trained before
that was recorded, the first case of the prepared dataset that the pipeline layout
``work/<exp>/models/<dataset>/...`` points to); the field is resized back (displacements rescaled,
:func:`regbench.spatial.resize_field`) and reoriented to the fixed image's own voxel order.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from . import spatial
from .errors import ConfigError, DataError, RegbenchError, ShapeMismatchError
from .io import Image, load_image, save_ddf, save_image
from .utils import atomic_path, get_logger

log = get_logger(__name__)

#: RAS -> LPS (ITK's physical frame): x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: Tolerance (mm) below which two grids' affines count as equal.
GRID_ATOL_MM = 1e-3


# ----------------------------------------------------------------------------------------------- ITK field
def _spatial_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {a.shape}")
    return a[:3, :3], a[:3, 3]


def ddf_to_itk(ddf: np.ndarray, fixed_affine: np.ndarray, moving_affine: np.ndarray | None = None) -> np.ndarray:
    """A regbench DDF as ITK physical displacements (mm, LPS).

    Args:
        ddf: ``(ndim, *spatial)`` displacement in voxels of the fixed grid, channel ``i`` along array axis ``i``
            (``ndim`` 2 or 3; a 2D grid is the ``k = 0`` plane of the affine).
        fixed_affine: ``(4, 4)`` voxel-to-RAS (mm) matrix of the fixed image (nibabel's ``img.affine``).
        moving_affine: the voxel-to-world matrix of the grid ``x + u(x)`` lies on, if it is not the fixed one:
            the moving image's (other origin or direction) or a cross-size pair's placed moving grid
            (:func:`regbench.placement.target_affine`); ``None`` = the fixed image's.

    Returns:
        ``(*spatial, ndim)`` float32: the displacement ``d(p)`` of ``T(p) = p + d(p)`` in LPS mm at each fixed
        voxel (for 2D, the L and P components).

    Raises:
        ValueError: ``ddf`` is not ``(ndim, *spatial)`` with ``ndim`` in (2, 3), or an affine is not 4x4.
    """
    u = np.asarray(ddf, dtype=np.float64)
    nd = u.shape[0]
    if nd not in (2, 3) or u.ndim != nd + 1:
        raise ValueError(f"DDF must be (ndim, *spatial) with ndim in (2, 3); got {u.shape}")
    mf, tf = _spatial_affine(fixed_affine)
    mm, tm = _spatial_affine(fixed_affine if moving_affine is None else moving_affine)
    v = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in u.shape[1:]], indexing="ij"))
    if nd == 2:  # the k = 0 plane
        u = np.concatenate([u, np.zeros_like(u[:1])])
        v = np.concatenate([v, np.zeros_like(v[:1])])
    d = np.einsum("ij,j...->i...", mm, v + u) - np.einsum("ij,j...->i...", mf, v) + (tm - tf).reshape(3, *[1] * nd)
    d = np.einsum("ij,j...->i...", RAS_TO_LPS, d)
    return np.moveaxis(d[:nd], 0, -1).astype(np.float32)


def itk_to_ddf(field: np.ndarray, fixed_affine: np.ndarray, moving_affine: np.ndarray | None = None) -> np.ndarray:
    """The inverse of :func:`ddf_to_itk` (3D): ITK displacements ``(*spatial, 3)`` in LPS mm -> regbench DDF
    ``(3, *spatial)`` in voxels of the fixed grid (``u = A_m^-1 (A_f v + d_RAS) - v``)."""
    d = np.moveaxis(np.asarray(field, dtype=np.float64), -1, 0)
    if d.shape[0] != 3 or d.ndim != 4:
        raise ValueError(f"expected an ITK field (*spatial, 3) of a 3D grid, got {np.shape(field)}")
    mf, tf = _spatial_affine(fixed_affine)
    mm, tm = _spatial_affine(fixed_affine if moving_affine is None else moving_affine)
    v = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in d.shape[1:]], indexing="ij"))
    p_m = np.einsum("ij,j...->i...", mf, v) + tf.reshape(3, 1, 1, 1) + np.einsum("ij,j...->i...", RAS_TO_LPS, d)
    return (np.einsum("ij,j...->i...", np.linalg.inv(mm), p_m - tm.reshape(3, 1, 1, 1)) - v).astype(np.float32)


def save_itk_field(path: str | Path, ddf: np.ndarray, fixed_affine: np.ndarray,
                   moving_affine: np.ndarray | None = None) -> Path:
    """Write :func:`ddf_to_itk` of ``ddf`` as a NIfTI displacement field ITK and ANTs read.

    The file is a 5D NIfTI ``(X, Y, Z, 1, ndim)`` (``(X, Y, 1, 1, 2)`` in 2D), float32, intent ``vector``,
    units mm, with the fixed image's affine (sform and qform), written atomically.
    """
    d = ddf_to_itk(ddf, fixed_affine, moving_affine)
    nd = d.shape[-1]
    vec = d[..., None, :] if nd == 3 else d[:, :, None, None, :]
    img = nib.Nifti1Image(vec, np.asarray(fixed_affine, dtype=np.float64))
    img.header.set_intent("vector", (), "displacement_lps_mm")
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


# ----------------------------------------------------------------------------------------------- inputs
def _same_grid(a: Image, b: Image) -> bool:
    return a.array.shape[:3] == b.array.shape[:3] and np.allclose(a.affine, b.affine, atol=GRID_ATOL_MM)


def _grid_text(img: Image) -> str:
    return f"shape {img.array.shape}, spacing {tuple(round(s, 4) for s in img.spacing)} mm, " \
           f"origin {tuple(round(float(x), 3) for x in img.affine[:3, 3])} mm (RAS)"


def load_labels(path: str | Path, image: Image, what: str) -> Image:
    """Read a label map and check it is an integer map on ``image``'s grid.

    Raises:
        DataError: missing/unreadable file, or non-integer values.
        ShapeMismatchError: the map's shape or affine differs from the image's (message names both files).
    """
    lab = load_image(path, dtype=np.float64)
    if lab.array.ndim != image.array.ndim:
        raise ShapeMismatchError(f"{what} {path}: {lab.array.ndim}D, but its image {image.path} is "
                                 f"{image.array.ndim}D")
    if not _same_grid(lab, image):
        raise ShapeMismatchError(f"{what} {path} is not on the grid of its image {image.path}: {_grid_text(lab)} "
                                 f"vs {_grid_text(image)}")
    if not np.array_equal(lab.array, np.round(lab.array)):
        raise DataError(f"{what} {path}: holds non-integer values; give a label map (integers per structure)")
    return Image(lab.array.astype(np.int32), lab.affine, lab.path)


def resample_to(image: Image, reference: Image, labels: bool = False) -> Image:
    """``image`` resampled onto ``reference``'s grid in physical space (identity transform; SimpleITK linear, or
    nearest neighbour for ``labels``; 0 outside)."""
    import SimpleITK as sitk

    def to_sitk(img: Image):
        nd = img.array.ndim
        s = sitk.GetImageFromArray(np.ascontiguousarray(img.array.T.astype(np.float32 if not labels else np.int32)))
        m, t = _spatial_affine(img.affine)
        lps_m, lps_t = RAS_TO_LPS @ m, RAS_TO_LPS @ t
        sp = np.linalg.norm(m[:, :nd], axis=0)
        s.SetSpacing(tuple(float(x) for x in sp))
        s.SetOrigin(tuple(float(x) for x in lps_t[:nd]))
        s.SetDirection(tuple(float(x) for x in (lps_m[:nd, :nd] / sp).ravel()))
        return s

    out = sitk.Resample(to_sitk(image), to_sitk(reference), sitk.Transform(),
                        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear, 0)
    arr = sitk.GetArrayFromImage(out).T
    return Image(arr.astype(np.int32 if labels else np.float32), reference.affine, image.path)


# ----------------------------------------------------------------------------------------------- learned models
@dataclass
class ModelGrid:
    """The grid a network was trained on: array shape, spacing (mm; ``None`` if unknown) and where it came from."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    source: str


def model_grid(model_path: str | Path) -> ModelGrid | None:
    """The training grid of a pipeline ``model.pt``: its ``grid`` entry (recorded by :func:`regbench.train.train`),
    else the first case of the prepared dataset of the pipeline layout
    ``work/<exp>/models/<dataset>/<method>/fold<k>/model.pt`` -> ``data/prep/<exp>/<dataset>/cases.tsv`` (its first
    image column of the model's dimensionality), else ``None`` (the network then runs on the fixed grid)."""
    model_path = Path(model_path)
    blob = torch.load(model_path, map_location="cpu", weights_only=False)
    grid = blob.get("grid") if isinstance(blob, dict) else None
    if grid:
        sp = grid.get("spacing")
        return ModelGrid(tuple(int(s) for s in grid["shape"]), tuple(float(s) for s in sp) if sp else None,
                         f"{model_path} (recorded at training)")
    parts = model_path.resolve().parts
    try:
        i = len(parts) - 1 - parts[::-1].index("models")
    except ValueError:
        return None
    if i < 2 or len(parts) < i + 4:
        return None
    root, exp, dataset = Path(*parts[: i - 2]), parts[i - 1], parts[i + 1]
    prep = root / "data" / "prep" / exp / dataset
    if not (prep / "cases.tsv").is_file():
        return None
    cases = pd.read_csv(prep / "cases.tsv", sep="\t")
    for col in cases.columns:
        if col in ("case", "split") or re.search(r"seg|label|mask", col):
            continue
        first = cases[col].dropna()
        if first.empty or not str(first.iloc[0]).endswith((".nii", ".nii.gz")):
            continue
        img = load_image(prep / str(first.iloc[0]))
        if img.array.ndim == int(blob.get("ndim", img.array.ndim)):
            return ModelGrid(img.array.shape, img.spacing, f"{prep / 'cases.tsv'} column {col!r} (first case)")
    return None


def _canonical(img: Image) -> tuple[np.ndarray, np.ndarray]:
    """(array in closest-canonical RAS+ voxel order, orientation ``ornt`` of :mod:`nibabel.orientations`)."""
    from nibabel.orientations import apply_orientation, io_orientation

    nd = img.array.ndim
    ornt = io_orientation(img.affine)[:nd]
    return apply_orientation(img.array, ornt), ornt


def _ddf_from_canonical(ddf_c: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """A DDF computed on the canonical grid of :func:`_canonical`, on the original grid (values and layout).

    Original axis ``a`` is canonical axis ``ornt[a, 0]`` with direction ``ornt[a, 1]``, so the original field
    channel ``a`` is ``ornt[a, 1] * ddf_c[ornt[a, 0]]``, rearranged with the inverse orientation."""
    from nibabel.orientations import apply_orientation, ornt_transform

    nd = ddf_c.shape[0]
    back = ornt_transform(np.array([[a, 1] for a in range(nd)], dtype=float), ornt)  # canonical -> original
    channels = [float(ornt[a, 1]) * ddf_c[int(ornt[a, 0])] for a in range(nd)]
    return np.stack([apply_orientation(c, back) for c in channels]).astype(np.float32)


def scale_intensity(a: np.ndarray) -> np.ndarray:
    """[0, 1] scaling as the pipeline's readers feed the networks: ``(x - min) / (p99.5 - min)``, clipped."""
    lo, hi = float(np.min(a)), float(np.percentile(a, 99.5))
    if not hi > lo:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def accepts_cross_size(model_path: str | Path) -> bool:
    """Whether a pipeline ``model.pt`` is a network that registers a moving image on another grid (a Siamese
    network of Huang et al. 2021: class attribute ``accepts_cross_size``). False for anything unreadable."""
    from .models import MODELS

    try:
        blob = torch.load(Path(model_path), map_location="cpu", weights_only=False)
        return bool(getattr(MODELS.get(blob["name"]), "accepts_cross_size", False))
    except Exception:  # not a model file: learned_ddf reports it properly
        return False


@dataclass
class Placement:
    """A cross-size network's placement of the moving image on the fixed grid (:func:`learned_ddf`).

    ``moving``, ``labels``: the moving image (and label map, if given) zero-padded onto the fixed grid in the fixed
    image's own voxel order, as the network placed them; ``target_affine``: voxel-to-world matrix of that placed grid
    (the frame the field points into, :mod:`regbench.placement`); ``offset``: the placement in the canonical (RAS+)
    voxel order the network saw."""

    moving: np.ndarray
    labels: np.ndarray | None
    target_affine: np.ndarray
    offset: tuple[int, ...]


def learned_ddf(model_path: str | Path, fixed: Image, moving: Image, device: str = "auto",
                inference_size: Sequence[int] | None = None, attention_path: str | Path | None = None,
                intensity: str = "auto", moving_labels: Image | None = None,
                cross_size: bool = False) -> tuple[np.ndarray, float, dict[str, Any]]:
    """A trained network's DDF ``(ndim, *fixed grid)`` in voxels of the fixed grid, its runtime (s) and notes.

    ``inference_size`` overrides the model's training grid (:func:`model_grid`). ``intensity``: ``minmax`` scales
    both images to [0, 1] (:func:`scale_intensity`), ``auto`` scales those with values outside [0, 1] (so the
    pipeline's prepared images reach the network as in its own register stage), ``none`` passes them as they are.

    ``cross_size`` (a moving image on another grid, for a network with ``accepts_cross_size``): the network runs on
    both images at their own sizes (no resizing to the training grid; a warning when the fixed grid is not it), its
    padding module places the moving image, and ``notes["placement"]`` holds a :class:`Placement`: the moving image
    and ``moving_labels`` padded onto the fixed grid the same way (in the fixed image's voxel order), ready to warp.

    Raises:
        ConfigError: the file is not a pipeline model, or ``intensity`` is unknown; ``inference_size`` with
            ``cross_size``.
        ShapeMismatchError: with ``cross_size``, images of different dimensionality.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, ornt_transform

    from .auxiliary import load_auxiliary
    from .placement import place, translation
    from .register import timed_forward
    from .train import load_trained
    from .utils import select_device

    if intensity not in ("auto", "minmax", "none"):
        raise ConfigError(f"--intensity {intensity!r}: use auto, minmax or none")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"{model_path}: model file not found")
    dev = select_device(device)
    try:
        model = load_trained(model_path, dev)
    except (KeyError, TypeError, RuntimeError, EOFError, OSError) as exc:
        raise ConfigError(f"{model_path}: not a model.pt written by `regbench train` "
                          f"({type(exc).__name__}: {exc})") from exc
    if cross_size and inference_size:
        raise ConfigError("--inference-size resizes both images to one grid; a cross-size pair has none (drop it)")
    grid = None if inference_size else model_grid(model_path)
    size = tuple(int(s) for s in inference_size) if inference_size else (grid.shape if grid else None)
    f_arr, ornt = _canonical(fixed)
    m_arr, m_ornt = _canonical(moving)
    if cross_size:
        if grid and tuple(grid.shape) != tuple(f_arr.shape):
            log.warning("%s: cross-size pair: the network runs on the fixed grid %s, not its training grid %s",
                        model_path, f_arr.shape, tuple(grid.shape))
        size = None
    if size is not None and len(size) != f_arr.ndim:
        raise ShapeMismatchError(f"{model_path}: the network works on {len(size)}D grids {size}, "
                                 f"{fixed.path} is {f_arr.ndim}D")
    scaled = []
    if intensity != "none":  # auto: only images outside [0, 1] (the pipeline's prepared images pass unchanged)
        for name, arr in (("fixed", f_arr), ("moving", m_arr)):
            if intensity == "minmax" or float(arr.min()) < 0.0 or float(arr.max()) > 1.0:
                scaled.append(name)
        f_arr = scale_intensity(f_arr) if "fixed" in scaled else f_arr
        m_arr = scale_intensity(m_arr) if "moving" in scaled else m_arr
    f = torch.from_numpy(np.ascontiguousarray(f_arr, dtype=np.float32))[None, None].to(dev)
    m = torch.from_numpy(np.ascontiguousarray(m_arr, dtype=np.float32))[None, None].to(dev)
    attention = load_auxiliary(attention_path, dev) if attention_path else None
    timed_forward(model, m, f, dev, size, attention)  # warm-up (kernel selection), not timed
    outputs: dict = {}
    ddf_t, runtime, _ = timed_forward(model, m, f, dev, size, attention, outputs=outputs)
    ddf = _ddf_from_canonical(ddf_t[0].float().cpu().numpy(), ornt)
    placement = None
    if cross_size:
        if "moving_pad" not in outputs:
            raise ConfigError(f"{model_path}: the network returned no placement (moving_pad) for a cross-size pair")
        off = tuple(int(a) for a, _ in outputs["moving_pad"])
        nd = f_arr.ndim
        back = ornt_transform(np.array([[a, 1] for a in range(nd)], dtype=float), ornt)  # canonical -> fixed's order
        placed = apply_orientation(place(m_arr, off, f_arr.shape), back).astype(np.float32)
        labs = None
        if moving_labels is not None:
            lab_c = apply_orientation(moving_labels.array, m_ornt)
            labs = apply_orientation(place(lab_c, off, f_arr.shape), back).astype(np.int32)
        # frame voxel v (fixed order) -> canonical fixed voxel -> canonical moving voxel (- off) -> world
        k_f = _pad44(inv_ornt_aff(ornt, fixed.array.shape))     # canonical fixed voxel -> fixed voxel
        k_m = _pad44(inv_ornt_aff(m_ornt, moving.array.shape))  # canonical moving voxel -> moving voxel
        target = np.asarray(moving.affine, float) @ k_m @ translation([-v for v in off]) @ np.linalg.inv(k_f)
        placement = Placement(np.ascontiguousarray(placed), None if labs is None else np.ascontiguousarray(labs),
                              target, off)
    notes = {"model": str(model_path), "device": str(dev), "network_grid": list(size) if size else None,
             "network_grid_source": ("--inference-size" if inference_size else grid.source if grid else
                                     "none recorded: the fixed grid"),
             "reoriented_to_ras": bool(not np.array_equal(ornt, [[a, 1] for a in range(len(ornt))])),
             "intensity_scaled_to_0_1": scaled}
    if placement is not None:
        notes.update(network_grid="the images' own grids (cross-size pair)", network_grid_source="cross-size pair",
                     placement=placement, moving_offset_vox=list(placement.offset))
    if grid and grid.spacing and size:
        fov = [s * n for s, n in zip(sorted_spacing(fixed, ornt), f_arr.shape)]
        eff = [x / n for x, n in zip(fov, size)]
        notes["network_spacing_mm"] = [round(x, 4) for x in eff]
        notes["training_spacing_mm"] = [round(x, 4) for x in grid.spacing]
        if any(abs(a / b - 1) > 0.25 for a, b in zip(eff, grid.spacing)):
            log.warning("%s: on the network's grid %s the image has spacing %s mm; the network was trained at %s mm",
                        model_path, size, notes["network_spacing_mm"], notes["training_spacing_mm"])
    return ddf, runtime, notes


def _pad44(a: np.ndarray) -> np.ndarray:
    """A 2D image's 3x3 orientation affine as 4x4 (third axis unchanged); 4x4 as it is."""
    a = np.asarray(a, float)
    if a.shape == (4, 4):
        return a
    out = np.eye(4)
    out[:2, :2], out[:2, 3] = a[:2, :2], a[:2, 2]
    return out


def sorted_spacing(img: Image, ornt: np.ndarray) -> list[float]:
    """The image's spacing in canonical axis order (the spacing of canonical axis ``ornt[a, 0]`` is axis ``a``'s)."""
    sp = list(img.spacing)
    out = [0.0] * len(sp)
    for a in range(len(sp)):
        out[int(ornt[a, 0])] = sp[a]
    return out


# ----------------------------------------------------------------------------------------------- metrics
def label_metrics(fixed_labels: np.ndarray, moving_labels: np.ndarray, warped_labels: np.ndarray,
                  spacing: Sequence[float], labels: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per label: ``label, dsc_before, dsc, hd95_mm, hd_mm, assd_mm`` (DeepMind/MONAI-style HD95: max of
    the two directed 95th percentiles; :func:`regbench.metrics.surface_metrics_per_label`). ``labels`` default:
    every non-zero value of either map."""
    from .metrics import surface_metrics_per_label

    if labels is None:
        labels = sorted((set(np.unique(fixed_labels)) | set(np.unique(moving_labels))) - {0})
    labels = [int(v) for v in labels]
    before = surface_metrics_per_label(fixed_labels, moving_labels, labels, spacing)
    after = surface_metrics_per_label(fixed_labels, warped_labels, labels, spacing)
    return pd.DataFrame([{"label": lab, "dsc_before": before[lab]["dsc"], "dsc": after[lab]["dsc"],
                          "hd95_mm": after[lab]["hd95"], "hd_mm": after[lab]["hd"], "assd_mm": after[lab]["assd"]}
                         for lab in labels])


# ----------------------------------------------------------------------------------------------- the command
def register_images(
    fixed_path: str | Path,
    moving_path: str | Path,
    method: str,
    out: str | Path,
    *,
    fixed_labels_path: str | Path | None = None,
    moving_labels_path: str | Path | None = None,
    labels: Sequence[int] | None = None,
    params: dict[str, Any] | None = None,
    model_path: str | Path | None = None,
    inference_size: Sequence[int] | None = None,
    attention_path: str | Path | None = None,
    intensity: str = "auto",
    device: str = "auto",
    seed: int = 0,
    resample_moving: bool = False,
) -> dict[str, Any]:
    """Register ``moving`` to ``fixed`` and write the outputs listed in the module docstring; return the summary.

    Args:
        method: a classical transform (:data:`regbench.classical.TRANSFORMS`: ``identity``, ``ants_affine``,
            ``ants_syn``, ``elastix``) or, with ``model_path``, any name for a trained network.
        out: output prefix (folders are created).
        fixed_labels_path, moving_labels_path: integer label maps on their images' grids; with both, label
            metrics are computed (labels in ``labels``, default all non-zero values).
        params: keyword arguments of the classical method (``ants.registration`` / elastix options).
        resample_moving: put a moving image (and its labels) that is not on the fixed grid onto it in physical
            space first (linear / nearest); without it such a pair is an error, except for a cross-size network
            (``model_path`` of a model with ``accepts_cross_size``, a Siamese network of Huang et al. 2021): it takes
            the moving image on its own grid and places it on the fixed grid itself (its ``moving_pad``); the
            moving image and labels are warped after padding them that way, and the ITK field maps fixed points to
            the moving world points of that placement (``summary["moving_offset_vox"]``, in RAS+ voxel order).

    Raises:
        DataError: a missing or unreadable input (the message names the file).
        ShapeMismatchError: moving not on the fixed grid (without ``resample_moving``), a label map not on its
            image's grid, or fixed and moving of different dimensionality.
        ConfigError: an unknown method without ``model_path``, or a label map given for one side only.
    """
    from . import classical
    from .metrics import jacobian_stats

    fixed, moving = load_image(fixed_path), load_image(moving_path)
    for img in (fixed, moving):
        if img.array.ndim not in (2, 3):
            raise DataError(f"{img.path}: expected a 2D or 3D image, got shape {img.array.shape}")
    if fixed.array.ndim != moving.array.ndim:
        raise ShapeMismatchError(f"{fixed.path} is {fixed.array.ndim}D but {moving.path} is {moving.array.ndim}D")
    if (fixed_labels_path is None) != (moving_labels_path is None):
        raise ConfigError("give both --fixed-labels and --moving-labels (or neither)")
    fixed_lab = load_labels(fixed_labels_path, fixed, "fixed label map") if fixed_labels_path else None
    moving_lab = load_labels(moving_labels_path, moving, "moving label map") if moving_labels_path else None
    resampled = cross = False
    if not _same_grid(fixed, moving):
        if model_path and not resample_moving and accepts_cross_size(model_path):
            cross = True   # the network places the moving image on the fixed grid itself
        elif not resample_moving:
            raise ShapeMismatchError(
                f"the moving image {moving.path} is not on the grid of the fixed image {fixed.path}: "
                f"{_grid_text(moving)} vs {_grid_text(fixed)}; resample it onto the fixed grid first, or pass "
                "--resample-moving to do that here (linear; its labels nearest neighbour), or register it with a "
                "cross-size network (a huang2021_siamese model.pt), which takes it on its own grid")
        else:
            moving = resample_to(moving, fixed)
            moving_lab = resample_to(moving_lab, fixed, labels=True) if moving_lab is not None else None
            resampled = True
    if method not in classical.TRANSFORMS and not model_path:
        raise ConfigError(f"--method {method!r} is not a classical transform {classical.TRANSFORMS}; for a trained "
                          "network give --model work/<exp>/models/<dataset>/<method>/fold<k>/model.pt")

    notes: dict[str, Any] = {}
    t0 = time.perf_counter()
    if model_path:
        ddf, runtime, notes = learned_ddf(model_path, fixed, moving, device, inference_size, attention_path,
                                          intensity, moving_labels=moving_lab, cross_size=cross)
    else:
        try:
            ddf, runtime = classical.register(fixed.array, moving.array, fixed.spacing, method, params or {},
                                              seed=seed)
        except RuntimeError as exc:
            raise RegbenchError(f"{method} failed on {fixed.path} <- {moving.path}: {exc}") from exc
    total = time.perf_counter() - t0

    ddf_t = torch.from_numpy(np.ascontiguousarray(ddf))[None]
    placement = notes.pop("placement", None)
    moving_arr, target = moving.array, None
    if placement is not None:   # cross-size: warp the moving image (and labels) as the network placed them
        moving_arr, target = placement.moving, placement.target_affine
    warped = spatial.warp(torch.from_numpy(moving_arr)[None, None], ddf_t)[0, 0].numpy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"warped": Path(f"{out}_warped.nii.gz"), "field_itk": Path(f"{out}_field_itk.nii.gz"),
             "ddf": Path(f"{out}_ddf.nii.gz"), "metrics": Path(f"{out}_metrics.tsv"),
             "summary": Path(f"{out}_summary.json")}
    save_image(paths["warped"], warped.astype(np.float32), fixed.affine)
    save_itk_field(paths["field_itk"], ddf, fixed.affine, target)
    save_ddf(paths["ddf"], ddf, fixed.affine)

    jac = jacobian_stats(ddf)
    summary: dict[str, Any] = {
        "method": method, "fixed": str(fixed.path), "moving": str(moving.path),
        "moving_resampled_to_fixed_grid": resampled, "cross_size": cross, "grid": _grid_text(fixed), "runtime_s": runtime,
        "wall_s": total, "folding_pct": jac["folding_pct"], "folding_count": jac["folding_count"],
        "sdlogj": jac["sdlogj"], "det_min": jac["det_min"], **notes,
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    rows = pd.DataFrame()
    if fixed_lab is not None:
        lab_arr = placement.labels if placement is not None else moving_lab.array
        warped_lab = spatial.warp_labels(torch.from_numpy(lab_arr.astype(np.int64))[None, None], ddf_t)[0, 0].numpy()
        paths["warped_labels"] = Path(f"{out}_warped_labels.nii.gz")
        save_image(paths["warped_labels"], warped_lab.astype(np.int32), fixed.affine)
        summary["outputs"]["warped_labels"] = str(paths["warped_labels"])
        rows = label_metrics(fixed_lab.array, lab_arr, warped_lab, fixed.spacing, labels)   # before: as placed
        for col in ("dsc_before", "dsc", "hd95_mm", "hd_mm", "assd_mm"):
            summary[f"mean_{col}"] = float(np.nanmean(rows[col])) if rows[col].notna().any() else math.nan
        summary["labels"] = [int(v) for v in rows["label"]]
    table = rows.assign(folding_pct=jac["folding_pct"], sdlogj=jac["sdlogj"], runtime_s=runtime, method=method) \
        if len(rows) else pd.DataFrame([{"label": None, "folding_pct": jac["folding_pct"], "sdlogj": jac["sdlogj"],
                                         "runtime_s": runtime, "method": method}])
    with atomic_path(paths["metrics"]) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(paths["summary"]) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def format_summary(summary: dict[str, Any], metrics_path: str | Path) -> str:
    """The text ``register-images`` prints: per-label metrics (if any), the means, folding and the outputs."""
    lines = [f"{summary['method']}: {summary['moving']} -> {summary['fixed']} in {summary['runtime_s']:.2f} s"]
    if "labels" in summary:
        table = pd.read_csv(metrics_path, sep="\t")
        lines.append(table[["label", "dsc_before", "dsc", "hd95_mm", "assd_mm"]].to_string(
            index=False, float_format=lambda x: f"{x:.3f}"))
        lines.append(f"mean DSC {summary['mean_dsc_before']:.3f} -> {summary['mean_dsc']:.3f}, HD95 "
                     f"{summary['mean_hd95_mm']:.2f} mm, ASSD {summary['mean_assd_mm']:.2f} mm")
    lines.append(f"folding {summary['folding_pct']:.3f}% of voxels (det J <= 0), SDlogJ {summary['sdlogj']:.3f}")
    lines += [f"  {k}: {v}" for k, v in summary["outputs"].items()]
    return "\n".join(lines)

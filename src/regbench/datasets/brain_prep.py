"""Volume operations of the brain MRI preprocessing (Zhu et al. 2021, Med. Phys., Secs. 2.C and 3.A).

Arrays are 3D in NIfTI voxel order ``(i, j, k)`` with a ``(4, 4)`` voxel-to-world affine in mm (RAS+ world,
as nibabel). The steps, in the order :mod:`regbench.datasets.brain` applies them:

1. :func:`load_volume` -- read NIfTI or an Analyze pair; :func:`check_image` (finite values) and
   :func:`label_to_int` (a label map stored as float must hold integers) name the file on failure;
   :func:`check_same_grid` refuses an image and a label map on different grids.
2. :func:`to_canonical` -- reorient to the closest RAS+ orientation (``nibabel.as_closest_canonical``), so
   that ASL (Mindboggle), LPS (the LGANet LPBA40 copy) and PSR (the NiChart IXI copy) end up alike.
3. :func:`nyul_landmarks` / :func:`standardise` -- "histogram and intensity normalization" (Zhu et al.,
   Sec. 3.A), read as Nyul-Udupa piecewise-linear histogram standardisation (Nyul & Udupa, MRM 1999; Nyul
   et al., IEEE TMI 2000) followed by scaling to [0, 1]; or min-max only (:func:`minmax`).
4. :func:`resize` -- resample to the network grid (192^3 in the paper, Sec. 2.C): images linear with a
   Gaussian anti-aliasing prefilter when shrinking, labels nearest neighbour; the field of view is kept, so
   the new spacing (mm) is the old extent divided by the new shape, and the affine records it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError, ShapeMismatchError
from .analyze import load_analyze

__all__ = [
    "DECILE_LANDMARKS",
    "check_image",
    "check_same_grid",
    "label_to_int",
    "load_volume",
    "minmax",
    "nyul_landmarks",
    "resize",
    "spacing_of",
    "standardise",
    "to_canonical",
]

#: Percentiles used as histogram landmarks: the ends map to 0 and 1, the deciles in between are matched.
DECILE_LANDMARKS: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis (column norms of the affine)."""
    return tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a 3D NIfTI (``.nii``, ``.nii.gz``) or Analyze/NIfTI pair (``.hdr`` + ``.img[.gz]``).

    Returns ``(array in its stored dtype with scaling applied, affine (4, 4) mm, info)``.

    Raises:
        DataError: missing or unreadable file, not 3D, zero voxel size (the message names the file).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".hdr", ".img", ".img.gz")):
        return load_analyze(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read as NIfTI ({type(e).__name__}: {e}); fetch the dataset again") from e
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {arr.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    sp = spacing_of(affine)
    if any((not np.isfinite(s)) or s <= 0 for s in sp):
        raise DataError(f"{path}: voxel spacing {sp} has a zero or non-finite entry; the header is broken")
    return arr, affine, {"image": str(path), "format": "nifti"}


def check_image(arr: np.ndarray, path: Path) -> np.ndarray:
    """Return ``arr`` as float32 after checking that every voxel is finite.

    Raises:
        DataError: NaN or infinite voxels (the message names the file and the count).
    """
    out = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        raise DataError(
            f"{path}: {int(bad.sum())} voxels are NaN or infinite; the image is corrupt, fetch it again (or "
            f"replace the file) before preprocessing"
        )
    return out


def label_to_int(arr: np.ndarray, path: Path) -> np.ndarray:
    """Return a label map as int32, checking first that a float-stored map holds integer values only.

    Mindboggle-101 ships its label maps as float32; casting a map with fractional values (a resampled or
    smoothed map) would silently invent labels, so such a map is refused.

    Raises:
        DataError: non-finite or non-integer values, negative labels (the message names the file, the count
            and an example value).
    """
    a = np.asarray(arr)
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            raise DataError(f"{path}: label map holds {int((~finite).sum())} NaN/infinite voxels; it is corrupt")
        frac = a != np.round(a)
        if frac.any():
            example = float(a[frac].flat[0])
            raise DataError(
                f"{path}: label map holds {int(frac.sum())} non-integer voxel values (e.g. {example!r}); a label "
                f"map must hold integer label ids. Use the original label file (not a linearly resampled copy)"
            )
    elif not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: label map has a non-numeric data type {a.dtype}")
    if a.size and a.min() < 0:
        raise DataError(f"{path}: label map holds negative values (min {a.min()}); label ids must be >= 0")
    return a.astype(np.int32)


def check_same_grid(img_shape, img_affine, lab_shape, lab_affine, img_path: Path, lab_path: Path,
                    atol_mm: float = 1e-3) -> None:
    """Refuse an image and its label map on different voxel grids (shape or affine differ).

    Raises:
        ShapeMismatchError: names both files, both shapes / affines and the fix.
    """
    if tuple(img_shape) != tuple(lab_shape):
        raise ShapeMismatchError(
            f"{lab_path}: label map shape {tuple(lab_shape)} differs from its image {img_path} "
            f"{tuple(img_shape)}; an image and its labels must share one voxel grid (use the label file of the "
            f"same release)"
        )
    if not np.allclose(img_affine, lab_affine, atol=atol_mm):
        raise ShapeMismatchError(
            f"{lab_path}: label map voxel-to-world matrix {np.round(lab_affine, 3).tolist()} differs from its "
            f"image {img_path} {np.round(img_affine, 3).tolist()} (beyond {atol_mm} mm); an image and its labels "
            f"must share one voxel grid"
        )


def to_canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Reorient to the closest RAS+ orientation; return ``(array, affine, original axis codes)``.

    Only axis permutations and flips (no resampling): ``nibabel.as_closest_canonical``.
    """
    codes = "".join(nib.aff2axcodes(affine))
    img = nib.as_closest_canonical(nib.Nifti1Image(arr, affine))
    return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64), codes


def nyul_landmarks(values: np.ndarray, percentiles=DECILE_LANDMARKS) -> np.ndarray:
    """Intensity landmarks of a brain: the ``percentiles`` of ``values`` (the brain-mask voxels)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 10:
        raise DataError(f"only {v.size} brain voxels; the brain mask is (almost) empty")
    return np.percentile(v, percentiles)


def _monotone(x: np.ndarray) -> np.ndarray:
    """Make landmarks strictly increasing (ties from flat histograms) so that interpolation is defined."""
    out = np.maximum.accumulate(np.asarray(x, dtype=np.float64))
    span = max(out[-1] - out[0], 1e-6)
    return out + np.arange(len(out)) * span * 1e-9


def standardise(arr: np.ndarray, mask: np.ndarray, landmarks: np.ndarray, standard: np.ndarray) -> np.ndarray:
    """Nyul-Udupa mapping of an image onto the standard scale, clipped to [0, 1]; 0 outside ``mask``.

    Each segment between consecutive landmarks of the image is mapped linearly onto the matching segment
    of ``standard`` (which runs from 0 at the first landmark to 1 at the last); values beyond the end
    landmarks follow the end segments and are then clipped to [0, 1].
    """
    lm = _monotone(landmarks)
    st = np.asarray(standard, dtype=np.float64)
    x = arr.astype(np.float64)
    y = np.interp(x, lm, st)
    lo = x < lm[0]
    hi = x > lm[-1]
    y[lo] = st[0] + (x[lo] - lm[0]) * (st[1] - st[0]) / (lm[1] - lm[0])
    y[hi] = st[-1] + (x[hi] - lm[-1]) * (st[-1] - st[-2]) / (lm[-1] - lm[-2])
    y = np.clip(y, 0.0, 1.0)
    y[~mask] = 0.0
    return y.astype(np.float32)


def minmax(arr: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """Min-max to [0, 1] within ``mask`` between the ``low``/``high`` percentiles of the mask voxels, clipped;
    0 outside the mask."""
    v = arr[mask].astype(np.float64)
    if v.size < 10:
        raise DataError(f"only {v.size} brain voxels; the brain mask is (almost) empty")
    lo, hi = np.percentile(v, [low, high])
    y = (arr.astype(np.float64) - lo) / max(hi - lo, 1e-12)
    y = np.clip(y, 0.0, 1.0)
    y[~mask] = 0.0
    return y.astype(np.float32)


def resize(arr: np.ndarray, affine: np.ndarray, shape, *, order: int, antialias: bool = True
           ) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``arr`` to ``shape`` over the same field of view; return ``(array, new affine)``.

    New voxel ``n`` along an axis sits at old continuous index ``(n + 0.5) * f - 0.5`` with ``f = old size /
    new size`` (voxel centres of both grids span the same extent), so the spacing becomes ``old spacing *
    f`` mm and the affine is ``old affine @ diag(f) + shift``. ``order=1`` (images): trilinear, after a
    Gaussian prefilter of sigma ``(f - 1) / 2`` voxels on each shrunk axis when ``antialias``; ``order=0``
    (labels): nearest neighbour, values kept exactly. Borders: nearest edge value.
    """
    from scipy import ndimage

    old = np.asarray(arr.shape[:3], dtype=np.float64)
    new = np.asarray(shape, dtype=np.float64)
    f = old / new
    work = arr
    if order == 1:
        work = arr.astype(np.float32)
        if antialias:
            sigma = np.maximum(0.0, (f - 1.0) / 2.0)
            if (sigma > 0).any():
                work = ndimage.gaussian_filter(work, sigma=sigma, mode="nearest")
    offset = 0.5 * f - 0.5
    with warnings.catch_warnings():  # a 1-D matrix is the documented diagonal (zoom + shift) fast path
        warnings.filterwarnings("ignore", message="The behavior of affine_transform with a 1-D array")
        out = ndimage.affine_transform(work, f, offset=offset, output_shape=tuple(int(s) for s in shape),
                                       order=order, mode="nearest", prefilter=False)
    step = np.eye(4)
    step[:3, :3] = np.diag(f)
    step[:3, 3] = offset
    return out, np.asarray(affine, dtype=np.float64) @ step

"""Image and field I/O with validation. Every reader names the file in its error messages.

Arrays keep NIfTI voxel order (``i, j, k``); spacing is in mm along those axes. Writes are atomic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import DataError, ShapeMismatchError
from .utils import atomic_path


@dataclass
class Image:
    """A voxel array with its NIfTI affine.

    Attributes:
        array: ``(*spatial)`` or ``(*spatial, C)`` array in NIfTI voxel order.
        affine: ``(4, 4)`` voxel-to-world (RAS mm) matrix.
        path: where it was read from (for messages), or ``None``.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis (column norms of the affine)."""
        nd = min(self.array.ndim, 3)
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(nd))


def _raw_zooms(path: Path, img) -> tuple[float, ...]:
    """Voxel sizes as stored in the file: nibabel silently replaces zero pixdims by 1 on load, which would
    hide a broken header, so the header is re-read unchecked; the affine's column norms are checked too."""
    zooms = [float(z) for z in img.header.get_zooms()]
    try:
        from nibabel.openers import ImageOpener

        with ImageOpener(str(path)) as f:
            raw = type(img.header).from_fileobj(f, check=False)
        n = len(zooms)
        zooms = [float(z) for z in raw["pixdim"][1 : 1 + n]]
    except Exception:  # pragma: no cover - non-NIfTI formats: keep nibabel's values
        pass
    nd = min(len(zooms), 3)
    norms = [float(np.linalg.norm(img.affine[:3, i])) for i in range(nd)]
    return tuple(min(abs(z), n) if np.isfinite(z) else z for z, n in zip(zooms[:nd], norms)) + tuple(zooms[nd:])


def load_image(path: str | Path, *, allow_nan: bool = False, dtype=np.float32) -> Image:
    """Read a NIfTI file and check it.

    Raises:
        DataError: the file is missing or unreadable, holds NaN/inf values (unless ``allow_nan``), or has
            a zero or non-finite voxel spacing.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
    zooms = _raw_zooms(path, img)[: min(arr.ndim, 3)]
    if any((not np.isfinite(z)) or z <= 0 for z in zooms):
        raise DataError(f"{path}: voxel spacing {tuple(float(z) for z in zooms)} has a zero or non-finite entry")
    if not allow_nan and np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} voxels are NaN or infinite")
    return Image(arr, np.asarray(img.affine, dtype=np.float64), path)


def save_image(path: str | Path, array: np.ndarray, affine: np.ndarray, dtype=None) -> Path:
    """Write ``array`` as NIfTI (``.nii`` or ``.nii.gz``) atomically and return the path."""
    path = Path(path)
    arr = np.asarray(array if dtype is None else array.astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def save_ddf(path: str | Path, ddf: np.ndarray, affine: np.ndarray) -> Path:
    """Save a displacement field ``(ndim, *spatial)`` in voxels as a NIfTI vector image ``(*spatial, 1, ndim)``.

    The NIfTI intent is set to ``vector``; values stay in voxels of the fixed grid (regbench convention),
    not in mm: use :func:`regbench.spatial.ddf_to_mm` for physical units.
    """
    ddf = np.asarray(ddf, dtype=np.float32)
    nd = ddf.shape[0]
    vec = np.moveaxis(ddf, 0, -1)[..., None, :] if nd == 3 else np.moveaxis(ddf, 0, -1)[:, :, None, None, :]
    img = nib.Nifti1Image(vec, np.asarray(affine, dtype=np.float64))
    img.header.set_intent("vector", (), "displacement_voxels")
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def load_ddf(path: str | Path) -> np.ndarray:
    """Read a field written by :func:`save_ddf`; returns ``(ndim, *spatial)`` in voxels.

    Raises:
        DataError: the file is not a vector image of the expected layout, or holds NaN/inf.
    """
    img = load_image(path)
    a = img.array
    if a.ndim != 5:
        raise DataError(f"{path}: expected a 5D NIfTI vector image (X, Y, Z, 1, ndim), got shape {a.shape}")
    nd = a.shape[-1]
    a = a[..., 0, :]
    if nd == 2:
        a = a[:, :, 0, :]
    return np.moveaxis(a, -1, 0).astype(np.float32)


def check_same_grid(fixed: Image, moving: Image, what: str = "fixed/moving") -> None:
    """Raise :class:`ShapeMismatchError` unless both images share shape and spacing (to 1e-4 mm)."""
    if fixed.array.shape != moving.array.shape:
        raise ShapeMismatchError(
            f"{what} shape mismatch: {fixed.path} has {fixed.array.shape}, {moving.path} has "
            f"{moving.array.shape}; this method needs both on one grid (resample in preprocessing)"
        )
    if not np.allclose(fixed.spacing, moving.spacing, atol=1e-4):
        raise ShapeMismatchError(
            f"{what} spacing mismatch: {fixed.path} has {fixed.spacing} mm, {moving.path} has {moving.spacing} mm"
        )

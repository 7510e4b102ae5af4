"""Liver CT readers for Cai et al. 2023 (``shared/papers/001_*.txt``, Sec. 3.1): the Recursive Cascaded Networks
(RCN) authors' preprocessed HDF5 files, the official LiTS NIfTI release, SLIVER07 MetaImage and the MSD
Task03_Liver tar. Each reader returns :class:`LiverCase` records (arrays in the file's own voxel order) and
stops with a :class:`regbench.errors.DataError` naming the file on bad input; none of them writes anything.

* RCN HDF5 (``msd_dataset.h5``, ``youyi_liver.h5``, ``lits_val.h5``, ``sliver_val.h5``; RCN
  ``data_util/liver.py``): every group holding a ``volume`` dataset is a case (nested groups such as
  ``hepaticvessel/12`` give the id ``hepaticvessel_12``, RCN's own naming); ``segmentation`` (same shape) and
  ``point`` (6 x 3 landmarks, voxel coordinates of the 128^3 grid; SLIVER07) are read when present, or required
  with ``require_segmentation`` / ``require_points``.
* LiTS (``volume-N.nii`` + ``segmentation-N.nii``, N = 0..130), SLIVER07 (``liver-orig0NN.mhd`` +
  ``liver-seg0NN.mhd``, with ``.raw`` data files) and MSD Task03 (``Task03_Liver/dataset.json`` listing
  ``imagesTr/liver_N.nii.gz`` / ``labelsTr/liver_N.nii.gz``): images and label maps of one grid.

:func:`landmarks` checks a landmark array (6 x 3). Resampling to the paper's 128^3 grid is
:func:`to_grid` (linear for images, nearest for labels); the full preprocessing stage is not wired into
``regbench preprocess`` yet (docs/cai2023.md).
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

N_LANDMARKS = 6


@dataclass
class LiverCase:
    """One scan: ``volume`` ``(X, Y, Z)`` float32, ``segmentation`` int16 of the same shape or ``None``,
    ``points`` ``(6, 3)`` float64 voxel coordinates or ``None``, ``spacing`` mm per axis or ``None``
    (HDF5 files carry none), ``source`` the file (and member) it came from."""

    case_id: str
    volume: np.ndarray
    segmentation: np.ndarray | None = None
    points: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)


def landmarks(points, where: str, n: int = N_LANDMARKS) -> np.ndarray:
    """``points`` as a float64 ``(n, 3)`` array; DataError naming ``where`` for any other shape or non-finite
    values (SLIVER07 in RCN's files: 6 landmarks per scan, Cai et al. Sec. 3.1)."""
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape != (n, 3):
        raise DataError(f"{where}: landmarks must be a {n}x3 array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{where}: landmarks contain non-finite values")
    return arr


def _check_pair(volume: np.ndarray, seg: np.ndarray | None, where: str) -> None:
    if volume.ndim != 3:
        raise DataError(f"{where}: volume must be 3D, got shape {volume.shape}")
    if seg is not None and seg.shape != volume.shape:
        raise DataError(f"{where}: segmentation shape {seg.shape} differs from volume shape {volume.shape}")


# ------------------------------------------------------------------------------------------------- HDF5
def read_rcn_h5(path: str | Path, require_segmentation: bool = False, require_points: bool = False) -> list[LiverCase]:
    """Read every case of an RCN HDF5 file (see the module docstring).

    Raises:
        DataError: the file is missing or not HDF5, holds no case group, a case lacks ``volume`` (or a required
            ``segmentation`` / ``point``), shapes differ, or landmarks are not 6x3; the message names the file
            and the group.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc
    cases: list[LiverCase] = []
    with handle as h5:
        groups: list[tuple[str, h5py.Group]] = []

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Group) and any(isinstance(obj.get(k), h5py.Dataset) for k in obj):
                groups.append((name, obj))

        h5.visititems(visit)
        if not groups:
            raise DataError(f"{path}: no case groups (expected groups holding `volume` and `segmentation`)")
        for name, grp in sorted(groups):
            where = f"{path}:{name}"
            if "volume" not in grp:
                raise DataError(f"{where}: group has no `volume` dataset (has {sorted(grp)})")
            volume = np.asarray(grp["volume"][...], dtype=np.float32)
            seg = np.asarray(grp["segmentation"][...]).astype(np.int16) if "segmentation" in grp else None
            if seg is None and require_segmentation:
                raise DataError(f"{where}: group has no `segmentation` dataset (has {sorted(grp)})")
            _check_pair(volume, seg, where)
            pts = landmarks(grp["point"][...], where) if "point" in grp else None
            if pts is None and require_points:
                raise DataError(f"{where}: group has no `point` dataset (6x3 landmarks)")
            cases.append(LiverCase(name.replace("/", "_"), volume, seg, pts, None, where))
    return cases


# ------------------------------------------------------------------------------------------------- LiTS
def read_lits(folder: str | Path) -> list[LiverCase]:
    """LiTS training release: ``volume-N.nii`` with ``segmentation-N.nii`` anywhere under ``folder``.

    Raises:
        DataError: no volumes, a volume without its segmentation, unreadable files or differing grids.
    """
    import nibabel as nib

    folder = Path(folder)
    vols = sorted(folder.rglob("volume-*.nii*"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    if not vols:
        raise DataError(f"{folder}: no LiTS volume-N.nii files found")
    cases = []
    for v in vols:
        n = re.findall(r"\d+", v.name)[0]
        segs = sorted(folder.rglob(f"segmentation-{n}.nii*"))
        if not segs:
            raise DataError(f"{v}: no matching segmentation-{n}.nii under {folder}")
        try:
            img, lab = nib.load(str(v)), nib.load(str(segs[0]))
            volume = np.asarray(img.dataobj, dtype=np.float32)
            seg = np.asarray(lab.dataobj).astype(np.int16)
        except Exception as exc:  # nibabel raises several types for corrupt files
            raise DataError(f"{v}: unreadable NIfTI pair ({exc})") from exc
        _check_pair(volume, seg, f"{segs[0]}")
        spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
        cases.append(LiverCase(f"lits{int(n):03d}", volume, seg, None, spacing, str(v)))
    return cases


# ------------------------------------------------------------------------------------------- MetaImage
_MET_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
              "MET_INT": "i4", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def read_mhd(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a MetaImage header ``.mhd`` and its raw data file: ``(array (X, Y, Z), spacing)``.

    Supports uncompressed single-file data (``ElementDataFile`` relative to the header), the element types
    of :data:`_MET_TYPES`, ``BinaryDataByteOrderMSB`` / ``ElementByteOrderMSB``. MetaImage stores x fastest,
    so the raw buffer is read in Fortran order to give ``array[x, y, z]``.

    Raises:
        DataError: missing header keys, compressed or unsupported data, a missing raw file or one whose size
            differs from ``DimSize x element size`` (the message names the file and both sizes).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found")
    header: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            header[k.strip()] = v.strip()
    for key in ("DimSize", "ElementType", "ElementDataFile"):
        if key not in header:
            raise DataError(f"{path}: MetaImage header has no {key}")
    if header.get("CompressedData", "False").lower() == "true":
        raise DataError(f"{path}: compressed MetaImage data is not supported")
    if header["ElementType"] not in _MET_TYPES:
        raise DataError(f"{path}: unsupported ElementType {header['ElementType']}")
    dims = tuple(int(v) for v in header["DimSize"].split())
    if len(dims) != 3:
        raise DataError(f"{path}: expected a 3D image, DimSize is {dims}")
    msb = any(header.get(k, "False").lower() == "true" for k in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB"))
    dtype = np.dtype(_MET_TYPES[header["ElementType"]]).newbyteorder(">" if msb else "<")
    raw = path.parent / header["ElementDataFile"]
    if not raw.is_file():
        raise DataError(f"{path}: its data file {raw} is missing")
    expected = int(np.prod(dims)) * dtype.itemsize
    size = raw.stat().st_size
    if size != expected:
        raise DataError(f"{raw}: {size} bytes, but {path} (DimSize {dims}, {header['ElementType']}) needs {expected}")
    arr = np.fromfile(raw, dtype=dtype).reshape(dims, order="F").astype(dtype.newbyteorder("="))
    spacing = tuple(float(v) for v in header.get("ElementSpacing", "1 1 1").split())
    return arr, spacing


def read_sliver07(folder: str | Path) -> list[LiverCase]:
    """SLIVER07 training set: ``liver-orig0NN.mhd`` with ``liver-seg0NN.mhd`` (and ``.raw``) under ``folder``.

    Raises:
        DataError: no scans, a scan without its label, or any :func:`read_mhd` error (naming the file).
    """
    folder = Path(folder)
    scans = sorted(folder.rglob("liver-orig0*.mhd"))
    if not scans:
        raise DataError(f"{folder}: no SLIVER07 liver-orig0NN.mhd files found")
    cases = []
    for s in scans:
        n = s.stem[len("liver-orig"):]
        labels = sorted(folder.rglob(f"liver-seg{n}.mhd"))
        if not labels:
            raise DataError(f"{s}: no matching liver-seg{n}.mhd under {folder}")
        volume, spacing = read_mhd(s)
        seg, _ = read_mhd(labels[0])
        _check_pair(volume, seg, str(labels[0]))
        cases.append(LiverCase(f"sliver{n}", volume.astype(np.float32), (seg > 0).astype(np.int16), None,
                               spacing, str(s)))
    return cases


# ---------------------------------------------------------------------------------------------- MSD tar
def read_msd_tar(path: str | Path, limit: int | None = None) -> list[LiverCase]:
    """MSD Task03_Liver tar: the training entries of ``Task03_Liver/dataset.json`` (``{"image", "label"}``
    relative paths), read from the tar without extracting it. ``limit``: read only the first cases.

    Raises:
        DataError: not a tar, no dataset.json, a listed member missing or unreadable, or differing grids.
    """
    import nibabel as nib

    path = Path(path)
    try:
        tar = tarfile.open(path)
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from exc
    with tar:
        names = {m.name.lstrip("./"): m for m in tar.getmembers()}
        js = [n for n in names if n.endswith("dataset.json")]
        if not js:
            raise DataError(f"{path}: no dataset.json (expected Task03_Liver/dataset.json)")
        root = js[0][: -len("dataset.json")]
        try:
            spec = json.load(tar.extractfile(names[js[0]]))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:{js[0]}: invalid JSON ({exc})") from exc

        def load(rel: str):
            name = root + rel.lstrip("./")
            if name not in names:
                raise DataError(f"{path}: dataset.json lists {rel} but the archive has no {name}")
            data = tar.extractfile(names[name]).read()
            try:
                img = nib.Nifti1Image.from_bytes(gzip.decompress(data) if name.endswith(".gz") else data)
            except Exception as exc:
                raise DataError(f"{path}:{name}: unreadable NIfTI ({exc})") from exc
            return img

        cases = []
        for entry in spec.get("training", [])[:limit]:
            img, lab = load(entry["image"]), load(entry["label"])
            volume = np.asarray(img.dataobj, dtype=np.float32)
            seg = np.asarray(lab.dataobj).astype(np.int16)
            _check_pair(volume, seg, f"{path}:{entry['label']}")
            cid = Path(entry["image"]).name.split(".")[0]
            cases.append(LiverCase(cid, volume, seg, None, tuple(float(z) for z in img.header.get_zooms()[:3]),
                                   f"{path}:{entry['image']}"))
        if not cases:
            raise DataError(f"{path}: dataset.json lists no training cases")
    return cases


# ---------------------------------------------------------------------------------------------- resampling
def to_grid(case: LiverCase, shape=(128, 128, 128), hu_window: tuple[float, float] | None = (-200.0, 400.0)) -> LiverCase:
    """Resample a case to ``shape`` covering the same field of view (linear images, nearest labels; landmarks
    scaled by the same factors) and map intensities to [0, 1] over ``hu_window`` (``None``: min-max).
    *Ours*: the HU window; RCN's files are already 128^3 and in [0, 255] (divide by 255 instead)."""
    from scipy import ndimage

    factors = [t / s for t, s in zip(shape, case.volume.shape)]
    vol = ndimage.zoom(case.volume.astype(np.float32), factors, order=1)
    if hu_window is None:
        lo, hi = float(vol.min()), float(vol.max())
    else:
        lo, hi = hu_window
    vol = np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    seg = None if case.segmentation is None else ndimage.zoom(case.segmentation, factors, order=0).astype(np.int16)
    pts = None
    if case.points is not None:  # voxel centres, pixel-area model: x' = (x + 0.5) f - 0.5
        pts = (case.points + 0.5) * np.asarray(factors) - 0.5
    spacing = None if case.spacing is None else tuple(s / f for s, f in zip(case.spacing, factors))
    return LiverCase(case.case_id, vol, seg, pts, spacing, case.source, dict(case.meta))

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

Each reader has a ``scan_*`` twin returning :class:`CaseRef` records (id, source, lazy ``load()``) after
checking the layout and the stored shapes without reading the voxels; ``read_*`` loads them all. The MSD folder
that ``regbench fetch msd_liver`` extracts is read by :func:`scan_msd_folder`. :func:`landmarks` checks a
landmark array (6 x 3); :func:`to_grid` resamples a case to the network grid (128^3 in the paper; linear images,
nearest labels, landmarks by the same voxel convention); :func:`write_landmarks` / :func:`read_landmarks` are
the per-case landmark TSV of the prepared data. The ``liver`` preprocess stage is
:func:`regbench.datasets.liver_prep.build_liver`.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
@dataclass
class CaseRef:
    """A case found by a ``scan_*`` function: its id, where it comes from and a ``load()`` that reads it
    (a :class:`LiverCase`). Scanning checks the layout and the stored shapes without reading the voxels, so
    that a bad raw folder fails before anything is written and only one case is in memory at a time."""

    case_id: str
    source: str
    load: Callable[[], "LiverCase"]
    has_segmentation: bool = True
    has_points: bool = False


def _open_h5(path: Path):
    import h5py

    if not path.is_file():
        raise DataError(f"{path}: not found")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _load_h5_group(path: Path, name: str) -> LiverCase:
    where = f"{path}:{name}"
    with _open_h5(path) as h5:
        grp = h5[name]
        volume = np.asarray(grp["volume"][...], dtype=np.float32)
        seg = np.asarray(grp["segmentation"][...]).astype(np.int16) if "segmentation" in grp else None
        _check_pair(volume, seg, where)
        pts = landmarks(grp["point"][...], where) if "point" in grp else None
    return LiverCase(name.replace("/", "_"), volume, seg, pts, None, where)


def scan_rcn_h5(path: str | Path, require_segmentation: bool = False, require_points: bool = False) -> list[CaseRef]:
    """The cases of an RCN HDF5 file (see the module docstring), checked but not read: :func:`read_rcn_h5`
    without loading the voxels (``point`` landmarks are read and checked here; they are small).

    Raises:
        DataError: as :func:`read_rcn_h5`.
    """
    import h5py

    path = Path(path)
    refs: list[CaseRef] = []
    with _open_h5(path) as h5:
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
            vshape = tuple(grp["volume"].shape)
            if len(vshape) != 3:
                raise DataError(f"{where}: volume must be 3D, got shape {vshape}")
            has_seg = "segmentation" in grp
            if not has_seg and require_segmentation:
                raise DataError(f"{where}: group has no `segmentation` dataset (has {sorted(grp)})")
            if has_seg and tuple(grp["segmentation"].shape) != vshape:
                raise DataError(f"{where}: segmentation shape {tuple(grp['segmentation'].shape)} differs from "
                                f"volume shape {vshape}")
            has_pts = "point" in grp
            if has_pts:
                landmarks(grp["point"][...], where)
            elif require_points:
                raise DataError(f"{where}: group has no `point` dataset (6x3 landmarks)")
            refs.append(CaseRef(name.replace("/", "_"), where,
                                lambda p=path, n=name: _load_h5_group(p, n), has_seg, has_pts))
    return refs


def read_rcn_h5(path: str | Path, require_segmentation: bool = False, require_points: bool = False) -> list[LiverCase]:
    """Read every case of an RCN HDF5 file (see the module docstring).

    Raises:
        DataError: the file is missing or not HDF5, holds no case group, a case lacks ``volume`` (or a required
            ``segmentation`` / ``point``), shapes differ, or landmarks are not 6x3; the message names the file
            and the group.
    """
    return [r.load() for r in scan_rcn_h5(path, require_segmentation, require_points)]


# ------------------------------------------------------------------------------------------------- LiTS
def _load_nifti_pair(image: Path, label: Path, case_id: str) -> LiverCase:
    import nibabel as nib

    try:
        img, lab = nib.load(str(image)), nib.load(str(label))
        volume = np.asarray(img.dataobj, dtype=np.float32)
        seg = np.asarray(lab.dataobj).astype(np.int16)
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise DataError(f"{image}: unreadable NIfTI pair ({exc})") from exc
    _check_pair(volume, seg, f"{label}")
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    return LiverCase(case_id, volume, seg, None, spacing, str(image), {"affine": np.asarray(img.affine, dtype=np.float64)})


def scan_lits(folder: str | Path) -> list[CaseRef]:
    """The LiTS cases under ``folder`` (``volume-N.nii`` with ``segmentation-N.nii``), paired and checked
    for a matching segmentation, not read.

    Raises:
        DataError: no volumes, a volume without its segmentation, a case number found twice.
    """
    folder = Path(folder)
    vols = sorted(folder.rglob("volume-*.nii*"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    if not vols:
        raise DataError(f"{folder}: no LiTS volume-N.nii files found")
    refs, seen = [], {}
    for v in vols:
        n = re.findall(r"\d+", v.name)[0]
        if int(n) in seen:
            raise DataError(f"{v}: LiTS volume {int(n)} found twice (also {seen[int(n)]}); keep one copy")
        seen[int(n)] = v
        segs = sorted(folder.rglob(f"segmentation-{n}.nii*"))
        if not segs:
            raise DataError(f"{v}: no matching segmentation-{n}.nii under {folder}")
        cid = f"lits{int(n):03d}"
        refs.append(CaseRef(cid, str(v), lambda v=v, s=segs[0], c=cid: _load_nifti_pair(v, s, c)))
    return refs


def read_lits(folder: str | Path) -> list[LiverCase]:
    """LiTS training release: ``volume-N.nii`` with ``segmentation-N.nii`` anywhere under ``folder``.

    Raises:
        DataError: no volumes, a volume without its segmentation, unreadable files or differing grids.
    """
    return [r.load() for r in scan_lits(folder)]


# ------------------------------------------------------------------------------------------- MetaImage
_MET_TYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_USHORT": "u2", "MET_SHORT": "i2", "MET_UINT": "u4",
              "MET_INT": "i4", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def _mhd_header(path: Path) -> tuple[tuple[int, ...], np.dtype, Path, tuple[float, ...]]:
    """Parse and check a MetaImage header: ``(DimSize, dtype, raw data file, spacing)``; the raw file must
    exist with exactly ``prod(DimSize) x element size`` bytes (see :func:`read_mhd`)."""
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
    spacing = tuple(float(v) for v in header.get("ElementSpacing", "1 1 1").split())
    return dims, dtype, raw, spacing


def read_mhd(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a MetaImage header ``.mhd`` and its raw data file: ``(array (X, Y, Z), spacing)``.

    Supports uncompressed single-file data (``ElementDataFile`` relative to the header), the element types
    of :data:`_MET_TYPES`, ``BinaryDataByteOrderMSB`` / ``ElementByteOrderMSB``. MetaImage stores x fastest,
    so the raw buffer is read in Fortran order to give ``array[x, y, z]``.

    Raises:
        DataError: missing header keys, compressed or unsupported data, a missing raw file or one whose size
            differs from ``DimSize x element size`` (the message names the file and both sizes).
    """
    dims, dtype, raw, spacing = _mhd_header(Path(path))
    arr = np.fromfile(raw, dtype=dtype).reshape(dims, order="F").astype(dtype.newbyteorder("="))
    return arr, spacing


def _load_sliver(scan: Path, label: Path, case_id: str) -> LiverCase:
    volume, spacing = read_mhd(scan)
    seg, _ = read_mhd(label)
    _check_pair(volume, seg, str(label))
    return LiverCase(case_id, volume.astype(np.float32), (seg > 0).astype(np.int16), None, spacing, str(scan))


def scan_sliver07(folder: str | Path) -> list[CaseRef]:
    """The SLIVER07 cases under ``folder`` (``liver-orig0NN.mhd`` with ``liver-seg0NN.mhd``), headers and raw
    file sizes checked, voxels not read.

    Raises:
        DataError: no scans, a scan without its label, a bad header or raw file, differing DimSize.
    """
    folder = Path(folder)
    scans = sorted(folder.rglob("liver-orig0*.mhd"))
    if not scans:
        raise DataError(f"{folder}: no SLIVER07 liver-orig0NN.mhd files found")
    refs = []
    for s in scans:
        n = s.stem[len("liver-orig"):]
        labels = sorted(folder.rglob(f"liver-seg{n}.mhd"))
        if not labels:
            raise DataError(f"{s}: no matching liver-seg{n}.mhd under {folder}")
        dims, *_ = _mhd_header(s)
        ldims, *_ = _mhd_header(labels[0])
        if ldims != dims:
            raise DataError(f"{labels[0]}: segmentation shape {ldims} differs from volume shape {dims}")
        cid = f"sliver{n}"
        refs.append(CaseRef(cid, str(s), lambda s=s, lab=labels[0], c=cid: _load_sliver(s, lab, c)))
    return refs


def read_sliver07(folder: str | Path) -> list[LiverCase]:
    """SLIVER07 training set: ``liver-orig0NN.mhd`` with ``liver-seg0NN.mhd`` (and ``.raw``) under ``folder``.

    Raises:
        DataError: no scans, a scan without its label, or any :func:`read_mhd` error (naming the file).
    """
    return [r.load() for r in scan_sliver07(folder)]


# ---------------------------------------------------------------------------------------------- MSD tar
def _msd_entries(spec: dict, where: str) -> list[dict]:
    entries = spec.get("training", [])
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{where}: dataset.json lists no training cases")
    for e in entries:
        if not isinstance(e, dict) or "image" not in e or "label" not in e:
            raise DataError(f"{where}: dataset.json training entry {e!r} lacks image/label")
    return entries


def _nifti_from_bytes(data: bytes, name: str, where: str):
    import nibabel as nib

    try:
        return nib.Nifti1Image.from_bytes(gzip.decompress(data) if name.endswith(".gz") else data)
    except Exception as exc:
        raise DataError(f"{where}: unreadable NIfTI ({exc})") from exc


def _case_from_nifti(img, lab, case_id: str, source: str, label_where: str) -> LiverCase:
    volume = np.asarray(img.dataobj, dtype=np.float32)
    seg = np.asarray(lab.dataobj).astype(np.int16)
    _check_pair(volume, seg, label_where)
    return LiverCase(case_id, volume, seg, None, tuple(float(z) for z in img.header.get_zooms()[:3]), source,
                     {"affine": np.asarray(img.affine, dtype=np.float64)})


def _open_tar(path: Path):
    try:
        return tarfile.open(path)
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from exc


def _tar_index(tar) -> dict:
    return {m.name.lstrip("./"): m for m in tar.getmembers()}


def _load_msd_tar_case(path: Path, root: str, entry: dict) -> LiverCase:
    with _open_tar(path) as tar:
        names = _tar_index(tar)

        def load(rel: str):
            name = root + rel.lstrip("./")
            return _nifti_from_bytes(tar.extractfile(names[name]).read(), name, f"{path}:{name}")

        img, lab = load(entry["image"]), load(entry["label"])
    cid = Path(entry["image"]).name.split(".")[0]
    return _case_from_nifti(img, lab, cid, f"{path}:{entry['image']}", f"{path}:{entry['label']}")


def scan_msd_tar(path: str | Path, limit: int | None = None) -> list[CaseRef]:
    """The training entries of an MSD Task03_Liver tar's ``dataset.json``, each member checked to exist;
    nothing extracted. ``limit``: only the first cases.

    Raises:
        DataError: not a tar, no dataset.json (or invalid JSON), a listed member missing.
    """
    path = Path(path)
    with _open_tar(path) as tar:
        names = _tar_index(tar)
        js = [n for n in names if n.endswith("dataset.json") and not Path(n).name.startswith("._")]
        if not js:
            raise DataError(f"{path}: no dataset.json (expected Task03_Liver/dataset.json)")
        root = js[0][: -len("dataset.json")]
        try:
            spec = json.load(tar.extractfile(names[js[0]]))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}:{js[0]}: invalid JSON ({exc})") from exc
    refs = []
    for entry in _msd_entries(spec, f"{path}:{js[0]}")[:limit]:
        for rel in (entry["image"], entry["label"]):
            if root + rel.lstrip("./") not in names:
                raise DataError(f"{path}: dataset.json lists {rel} but the archive has no {root + rel.lstrip('./')}")
        refs.append(CaseRef(Path(entry["image"]).name.split(".")[0], f"{path}:{entry['image']}",
                            lambda e=entry: _load_msd_tar_case(path, root, e)))
    return refs


def scan_msd_folder(folder: str | Path, limit: int | None = None) -> list[CaseRef]:
    """The training entries of an extracted MSD Task03_Liver folder (``dataset.json`` anywhere under
    ``folder``; what ``regbench fetch msd_liver`` leaves), each file checked to exist.

    Raises:
        DataError: no or several dataset.json, invalid JSON, a listed file missing.
    """
    folder = Path(folder)
    js = sorted(p for p in folder.rglob("dataset.json") if not p.name.startswith("._"))
    if not js:
        raise DataError(f"{folder}: no MSD dataset.json found (expected Task03_Liver/dataset.json)")
    if len(js) > 1:
        raise DataError(f"{folder}: several dataset.json files ({[str(j) for j in js]}); keep one Task03_Liver")
    try:
        spec = json.loads(js[0].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{js[0]}: invalid JSON ({exc})") from exc
    root = js[0].parent
    refs = []
    for entry in _msd_entries(spec, str(js[0]))[:limit]:
        img, lab = root / entry["image"], root / entry["label"]
        for f, rel in ((img, entry["image"]), (lab, entry["label"])):
            if not f.is_file():
                raise DataError(f"{js[0]}: lists {rel} but {f} is missing")
        cid = Path(entry["image"]).name.split(".")[0]
        refs.append(CaseRef(cid, str(img), lambda i=img, lb=lab, c=cid: _load_nifti_pair(i, lb, c)))
    return refs


def read_msd_tar(path: str | Path, limit: int | None = None) -> list[LiverCase]:
    """MSD Task03_Liver tar: the training entries of ``Task03_Liver/dataset.json`` (``{"image", "label"}``
    relative paths), read from the tar without extracting it. ``limit``: read only the first cases.

    Raises:
        DataError: not a tar, no dataset.json, a listed member missing or unreadable, or differing grids.
    """
    return [r.load() for r in scan_msd_tar(path, limit)]


# ---------------------------------------------------------------------------------------------- resampling
def to_grid(case: LiverCase, shape=(128, 128, 128), hu_window: tuple[float, float] | None = (-200.0, 400.0),
            antialias: bool = False) -> LiverCase:
    """Resample a case to ``shape`` covering the same field of view (linear images, nearest labels; landmarks
    scaled by the same factors) and map intensities to [0, 1] over ``hu_window`` (``None``: min-max).

    Image, labels and landmarks share one voxel convention (:func:`regbench.datasets.brain_prep.resize`, the
    pixel-area model): new voxel ``n`` sits at old index ``(n + 0.5) * f - 0.5`` with ``f = old / new`` size,
    so a landmark at old index ``x`` moves to ``(x + 0.5) / f - 0.5``; the spacing becomes ``old * f``.
    ``antialias``: Gaussian prefilter of the image on shrunk axes. ``meta["affine"]`` (NIfTI readers), when
    present, is rescaled the same way. *Ours*: the HU window (the paper gives none); RCN's files are
    already 128^3 and in [0, 255] (window ``(0, 255)``).
    """
    from .brain_prep import resize

    aff_in = case.meta.get("affine")
    aff_in = np.diag([*(case.spacing or (1.0, 1.0, 1.0)), 1.0]) if aff_in is None else np.asarray(aff_in)
    vol, aff = resize(case.volume.astype(np.float32), aff_in, shape, order=1, antialias=antialias)
    if hu_window is None:
        lo, hi = float(vol.min()), float(vol.max())
    else:
        lo, hi = hu_window
    vol = np.clip((vol - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    seg = None
    if case.segmentation is not None:
        seg = resize(case.segmentation.astype(np.int16), aff_in, shape, order=0)[0].astype(np.int16)
    inv = [t / s for t, s in zip(shape, case.volume.shape)]  # 1 / f
    pts = None
    if case.points is not None:
        pts = (case.points + 0.5) * np.asarray(inv) - 0.5
    spacing = None if case.spacing is None else tuple(s / f for s, f in zip(case.spacing, inv))
    meta = dict(case.meta)
    if "affine" in case.meta:
        meta["affine"] = aff
    return LiverCase(case.case_id, vol, seg, pts, spacing, case.source, meta)


# ----------------------------------------------------------------------------------------- landmark files
LANDMARK_COLUMNS = ("landmark", "x", "y", "z")


def write_landmarks(path: str | Path, points: np.ndarray) -> Path:
    """Write ``(N, 3)`` voxel coordinates (array axis order of the image they belong to) as a TSV with the
    columns :data:`LANDMARK_COLUMNS` (``landmark`` = 1..N), atomically."""
    from ..utils import atomic_path

    pts = np.asarray(points, dtype=np.float64)
    lines = ["\t".join(LANDMARK_COLUMNS)]
    lines += [f"{k + 1}\t" + "\t".join(f"{v:.6f}" for v in row) for k, row in enumerate(pts)]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return Path(path)


def read_landmarks(path: str | Path) -> np.ndarray:
    """Read a landmark TSV written by :func:`write_landmarks`: ``(N, 3)`` float64 voxel coordinates.

    Raises:
        DataError: missing file, other columns, non-finite or non-numeric values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: landmark file not found")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    if not rows or tuple(rows[0]) != LANDMARK_COLUMNS:
        raise DataError(f"{path}: expected the tab-separated header {' '.join(LANDMARK_COLUMNS)}")
    try:
        pts = np.array([[float(v) for v in r[1:]] for r in rows[1:]], dtype=np.float64).reshape(-1, 3)
    except ValueError as exc:
        raise DataError(f"{path}: landmark values are not numbers ({exc})") from exc
    if not np.isfinite(pts).all():
        raise DataError(f"{path}: landmarks contain non-finite values")
    return pts

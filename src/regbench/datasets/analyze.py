"""Analyze 7.5 / NIfTI-pair reading as LONI ships LPBA40: a plain ``.hdr`` beside a gzipped ``.img.gz``.

nibabel reads ``x.hdr + x.img`` and ``x.hdr.gz + x.img.gz`` pairs but not the mixed ``x.hdr + x.img.gz`` of
the LONI LPBA40 release (``S01.delineation.skullstripped.{hdr,img.gz}``); :func:`load_analyze` reads all
three, decompressing the image stream on the fly (nothing is written to disk).

Orientation. Analyze 7.5 has no affine: a header holds voxel sizes and a one-byte ``orient`` code. A NIfTI
pair (``ni1`` magic) is read with its qform/sform. For plain Analyze the voxel-to-world matrix is built
from ``pixdim`` and ``orient`` with the axis letters ITK's ``AnalyzeImageIO`` uses for codes 0-5 (0
transverse unflipped = array axes pointing to L, A, S, nibabel's own Analyze default; 1 coronal = L, S, A;
2 sagittal = A, S, L; 3 transverse flipped = L, P, S; 4 coronal flipped = L, I, A; 5 sagittal flipped =
A, S, R), centred on the volume (world origin at the centre voxel) because Analyze stores no position.
Both files must exist: a missing header or image raises :class:`~regbench.errors.DataError` naming both.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

__all__ = ["ORIENT_AXCODES", "analyze_pair", "load_analyze"]

#: Analyze 7.5 ``orient`` code -> nibabel axis codes (direction each array axis points to), after ITK.
ORIENT_AXCODES: dict[int, tuple[str, str, str]] = {
    0: ("L", "A", "S"),
    1: ("L", "S", "A"),
    2: ("A", "S", "L"),
    3: ("L", "P", "S"),
    4: ("L", "I", "A"),
    5: ("A", "S", "R"),
}

_IMG_SUFFIXES = (".img.gz", ".img")


def analyze_pair(path: str | Path) -> tuple[Path, Path]:
    """Return ``(header, image)`` paths of an Analyze pair named by either file (or its stem).

    ``path`` may be ``x.hdr``, ``x.img``, ``x.img.gz`` or ``x``; the image is ``x.img.gz`` or ``x.img``
    (the gzipped one first, as LONI ships it).

    Raises:
        DataError: the header or the image is missing (the message names the file present, the one
            missing and the fix).
    """
    p = Path(path)
    name = p.name
    for suf in (".hdr", *_IMG_SUFFIXES):
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    stem = p.with_name(name)
    hdr = stem.with_name(name + ".hdr")
    imgs = [stem.with_name(name + s) for s in _IMG_SUFFIXES]
    img = next((i for i in imgs if i.is_file()), None)
    if not hdr.is_file() and img is not None:
        raise DataError(
            f"{img}: Analyze image without its header {hdr.name} (the .hdr holds the grid size, data type and "
            f"voxel size); extract {hdr.name} from the LONI LPBA40 zip next to it"
        )
    if img is None:
        if hdr.is_file():
            raise DataError(
                f"{hdr}: Analyze header without its image ({imgs[0].name} or {imgs[1].name}); extract the "
                f"image from the LONI LPBA40 zip next to it"
            )
        raise DataError(f"{hdr}: Analyze pair not found (neither {hdr.name} nor {imgs[0].name} exists)")
    return hdr, img


def _is_nifti_pair(hdr_bytes: bytes) -> bool:
    return len(hdr_bytes) >= 348 and hdr_bytes[344:348] in (b"ni1\x00", b"n+1\x00")


def _orient_code(header) -> int:
    raw = header["orient"]
    raw = raw.item() if hasattr(raw, "item") else raw
    if isinstance(raw, (bytes, np.bytes_)):
        return raw[0] if len(raw) else 0
    return int(raw)


def _analyze_affine(header, shape: tuple[int, ...], where: Path) -> np.ndarray:
    code = _orient_code(header)
    if code not in ORIENT_AXCODES:
        raise DataError(f"{where}: Analyze orient code {code} is not one of 0-5 (the Analyze 7.5 values)")
    zooms = [float(z) for z in header.get_zooms()[:3]]
    if any((not np.isfinite(z)) or z <= 0 for z in zooms):
        raise DataError(f"{where}: voxel size {zooms} in the header has a zero or non-finite entry")
    ornt = nib.orientations.axcodes2ornt(ORIENT_AXCODES[code])
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for i, (axis, flip) in enumerate(ornt):
        aff[int(axis), i] = flip * zooms[i]
    centre = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    aff[:3, 3] = -aff[:3, :3] @ centre
    return aff


def load_analyze(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read an Analyze 7.5 or NIfTI-1 pair (``.hdr`` + ``.img`` or ``.img.gz``).

    Args:
        path: the ``.hdr``, the ``.img``/``.img.gz`` or their common stem.

    Returns:
        ``(array, affine, info)``: the voxel array in file order with its stored dtype (scaling applied
        for NIfTI pairs), the ``(4, 4)`` voxel-to-world matrix in mm (RAS+ world) and
        ``{"header": ..., "image": ..., "format": "analyze"|"nifti_pair", "orient": code or None}``.

    Raises:
        DataError: header or image missing, truncated image data, unreadable header, bad voxel size.
    """
    hdr_path, img_path = analyze_pair(path)
    hdr_bytes = hdr_path.read_bytes()
    is_pair = _is_nifti_pair(hdr_bytes)
    klass = nib.Nifti1Pair if is_pair else nib.AnalyzeImage
    try:
        raw = img_path.read_bytes()
        if img_path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{img_path}: cannot read the image data ({type(e).__name__}: {e}); re-extract it") from e
    try:
        fmap = {
            "header": nib.FileHolder(filename=str(hdr_path), fileobj=io.BytesIO(hdr_bytes)),
            "image": nib.FileHolder(filename=str(img_path), fileobj=io.BytesIO(raw)),
        }
        img = klass.from_file_map(fmap)
        arr = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for broken headers / short data
        raise DataError(
            f"{hdr_path} + {img_path.name}: cannot read as an Analyze/NIfTI pair ({type(e).__name__}: {e})"
        ) from e
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{hdr_path}: expected a 3D volume, got shape {arr.shape}")
    if is_pair:
        affine = np.asarray(img.affine, dtype=np.float64)
        orient = None
    else:
        affine = _analyze_affine(img.header, arr.shape, hdr_path)
        orient = _orient_code(img.header)
    info = {"header": str(hdr_path), "image": str(img_path), "format": "nifti_pair" if is_pair else "analyze",
            "orient": orient}
    return arr, affine, info

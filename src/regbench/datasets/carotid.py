"""Bring-your-own carotid MR reader for Huang et al. 2021 (``regbench preprocess`` kind ``carotid``;
docs/huang2021.md, registry entry ``carotid`` in ``config/datasets.yaml``).

The paper's carotid set (11 patients, 20 arteries: T1GD and TOF with lumen segmentations and landmarks) is
private. This reader prepares such data when a user has it, laid out as follows under ``data/raw/<dataset>/``
(``regbench fetch carotid --local-path <folder>`` links a folder laid out this way; patient folders may sit at
any depth):

.. code-block:: text

    <patient>/<side>/t1gd.nii.gz          T1GD (contrast-enhanced T1, CUBE) image: the FIXED image
    <patient>/<side>/tof.nii.gz           TOF image: the MOVING image
    <patient>/<side>/lumen_t1gd.nii.gz    lumen of the T1GD image, on the T1GD grid: 0 background, 1 lumen
    <patient>/<side>/lumen_tof.nii.gz     lumen of the TOF image, on the TOF grid: 0 / 1
    <patient>/<side>/landmarks_t1gd.csv   landmarks of the T1GD image
    <patient>/<side>/landmarks_tof.csv    the same landmarks in the TOF image

* ``<side>`` is ``left`` or ``right`` (one artery each); a patient with one side only is fine. ``<patient>``
  is any folder name of letters, digits, ``.``, ``_``, ``-``. ``.nii`` is read as well as ``.nii.gz``.
* Images and lumen maps are 3D NIfTI in scanner (world) coordinates: the T1GD and TOF of one artery may have
  different grids, voxel sizes and orientations (the paper's T1GD is 0.27 x 0.27 x 0.6 mm RSA, its TOF 0.55 x
  0.55 x 1 mm RAI); each lumen map must share its image's grid (shape and affine).
* Landmark files: CSV with the header ``name,x,y,z`` (further columns are ignored), one row per point, ``x, y,
  z`` in **world millimetres in RAS+** (the NIfTI / nibabel convention: +x towards the patient's right, +y
  anterior, +z superior; a voxel ``[i, j, k]`` of the image is at ``affine @ [i, j, k, 1]``). LPS points (ITK /
  DICOM physical coordinates, e.g. 3D Slicer markups since 4.11) are read with ``params.landmark_space: LPS``
  (``x`` and ``y`` negated). Names: ``bifurcation``
  (one per artery; needed in the T1GD file when ``params.centre`` is ``bifurcation``) and ``plaque_1``,
  ``plaque_2``, ... (the paper: one bifurcation point and several plaque points per artery); the T1GD and TOF
  files must hold the same names (order free: TOF rows are matched by name).

Grid (*ours*; the paper crops every image "according to the position of the carotid artery" to 112 x 64 x 64
after resampling to 0.6 mm, without saying how the box is placed): both images of an artery are resampled onto
**one** axis-aligned RAS+ world grid of ``params.shape`` voxels of ``params.spacing_mm`` (default 0.6 mm, the
paper's) whose voxel ``shape // 2`` lies on the **T1GD bifurcation landmark** (``centre: bifurcation``,
default; the carotid images are roughly centred on the bifurcation) or on the T1GD field-of-view centre
(``centre: image``). The TOF is *not* centred on its own bifurcation (that would be a landmark-based
pre-alignment using the evaluation landmarks): its remaining misalignment is the scanner-world one, which the
registration has to recover. Resampling maps each output voxel through the source's voxel-to-world affine
(reorientation and resampling in one step): images trilinear after a Gaussian anti-aliasing prefilter of sigma
``(f - 1) / 2`` source voxels on axes sampled ``f > 1`` times more coarsely (``antialias``), lumen maps nearest
neighbour; outside the source field of view images are 0, lumen background. Intensities: min-max between the
``intensity_percentiles`` (default 0.5, 99.5) of the whole source volume, clipped to [0, 1], before resampling.
The paper's N4 bias-field correction is not applied (run it on your images first if you want it).

Cross-size protocol (``params.moving_crop``, e.g. the paper's 96 x 56 x 64 at 112 x 64 x 64): the prepared TOF and
its lumen are **centre-cropped** to ``moving_crop`` (offset ``(shape - moving_crop) // 2`` per axis, which is the
``before`` amount of the Siamese networks' symmetric padding, so padding the crop back places every voxel where it
was); the crop's affine is the full grid's translated by the offset (a voxel keeps its world position), and the
TOF landmarks are given in the cropped grid (``full - offset``; a point the crop cuts off keeps its coordinates
outside the crop's index range, with a warning). ``shape`` and ``moving_crop`` are in the prepared grid's array
order (RAS+: x, y, z); the paper does not say which anatomical axis its 112 is.

Protocol (Huang et al. 2021, "Experimental Settings"): T1GD fixed, TOF moving, one pair per artery;
``params.n_folds``-fold cross-validation (paper: 4) **grouped by patient**, so the left and right arteries of a
patient are always in the same fold ("we must ensure that both sides were in the same training or test sets").
Patients are ordered by a seeded permutation, then (stable) by their number of arteries, largest first, and each is
dealt to the fold with the fewest arteries so far (ties: fewest patients, then the lowest fold): the folds' artery
counts differ as little as the patients allow. Fold ``k`` tests the arteries of its patients and trains on all
the others, so every patient is tested exactly once.

Output (``data/prep/<experiment>/<dataset>/``, built in a hidden staging folder renamed into place when
complete; an error leaves nothing behind and a previous build untouched):

* ``images/<case>.nii.gz`` float32 in [0, 1]; ``labels/<case>_lumen.nii.gz`` int16 0/1;
  ``landmarks/<case>.tsv``: the landmark TSV of :func:`regbench.datasets.liver.write_landmarks` (columns
  ``landmark, x, y, z``: ``landmark`` = 1..N in the T1GD file's order, the same order on both sides; ``x, y, z``
  voxel coordinates of that case's prepared grid, array axis order), which ``evaluate._landmark_tre`` turns into
  ``tre_landmark_mm`` (Lm.Dist); the names are in ``dataset.json``;
* ``cases.tsv``: ``case, split, test_fold, patient, side, role, t1gd, tof[, tof_crop], seg[, seg_crop],
  landmarks[, crop_offset], source_image, source_lumen, source_landmarks``; a fixed case
  ``<patient>_<side>_t1gd`` fills ``t1gd``, a moving case ``<patient>_<side>_tof`` fills ``tof`` (so the
  experiment's ``modality: {fixed: t1gd, moving: tof}`` reads each side from its own column), ``seg`` is each
  case's lumen; ``split`` is ``cv`` (a case trains in some folds and is tested in one: ``test_fold``). With
  ``moving_crop`` the moving case fills ``tof_crop`` and ``seg_crop`` instead (cropped grid, landmarks in
  cropped coordinates, ``crop_offset`` = ``"i j k"``) and the fixed case's ``seg_crop`` names its own
  (uncropped: the fixed image is never cropped) lumen file, so ``modality: {fixed: t1gd, moving: tof_crop}`` with
  ``seg: seg_crop`` reads both sides;
* ``pairs.tsv``: ``pair_id, fold, split, fixed, moving`` (``pair_id`` = ``<patient>_<side>``; folds 0..n-1);
* ``dataset.json``: parameters, grids, folds, per-case facts (native grid and orientation, intensity
  percentiles, lumen voxels, landmark names, landmarks outside the prepared grid).

Errors (:class:`~regbench.errors.DataError`, naming the file): no artery folder found; a folder named other than
``left`` / ``right`` holding the files; an unsafe patient name; the same patient and side twice; a missing image,
lumen or landmark file; a non-finite or constant image; a lumen map with values other than 0 / 1 or with no lumen,
or not on its image's grid (:class:`~regbench.errors.ShapeMismatchError`); a landmark file with a wrong header,
non-numeric, duplicate or empty names, no rows, a point outside its image, names differing between T1GD and TOF,
no ``bifurcation`` for ``centre: bifurcation``. :class:`~regbench.errors.ConfigError` for bad params (names the
key) and fewer patients than folds.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..io import save_image
from ..utils import atomic_path, get_logger, staging_dir

log = get_logger(__name__)

__all__ = ["DEFAULTS", "FILES", "PAPER_CROP", "PAPER_SHAPE", "SIDES", "CarotidArtery", "assign_folds",
           "build_carotid", "discover", "read_landmark_csv", "resample_to_grid", "resolve_params"]

PAPER_SHAPE = [112, 64, 64]
PAPER_CROP = [96, 56, 64]
PAPER_SPACING_MM = 0.6
SIDES = ("left", "right")
#: key -> file stem in a side folder (images and lumen maps: ``.nii.gz`` or ``.nii``)
FILES = {"t1gd": "t1gd", "tof": "tof", "lumen_t1gd": "lumen_t1gd", "lumen_tof": "lumen_tof",
         "landmarks_t1gd": "landmarks_t1gd.csv", "landmarks_tof": "landmarks_tof.csv"}
_PATIENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

DEFAULTS: dict[str, Any] = {
    "shape": PAPER_SHAPE,           # prepared grid, voxels (array order, RAS+)
    "spacing_mm": PAPER_SPACING_MM,  # one number or three; the paper resamples to 0.6 mm
    "centre": "bifurcation",        # or "image": the T1GD field-of-view centre
    "moving_crop": None,            # null (same-size protocol) or e.g. [96, 56, 64] (cross-size)
    "n_folds": 4,
    "intensity_percentiles": [0.5, 99.5],
    "antialias": True,
    "landmark_space": "RAS",        # or "LPS"
}


@dataclass
class CarotidArtery:
    """One artery's six files (see the module docstring)."""

    patient: str
    side: str
    folder: Path
    t1gd: Path
    tof: Path
    lumen_t1gd: Path
    lumen_tof: Path
    landmarks_t1gd: Path
    landmarks_tof: Path

    @property
    def pair_id(self) -> str:
        return f"{self.patient}_{self.side}"


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def resolve_params(params: dict | None) -> dict:
    """Defaults merged with ``params``.

    Raises:
        ConfigError: unknown keys or bad values (the message names the key).
    """
    params = dict(params or {})
    params.pop("reader", None)
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"carotid params: unknown key(s) {unknown}; known: {sorted(DEFAULTS)}")
    p = {**DEFAULTS, **params}

    def triple(key, value, minimum):
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value)):
            raise ConfigError(f"carotid params.{key} must be three integers >= {minimum}, got {value!r}")
        return [int(v) for v in value]

    p["shape"] = triple("shape", p["shape"], 8)
    if p["moving_crop"] is not None:
        p["moving_crop"] = triple("moving_crop", p["moving_crop"], 8)
        if any(c > s for c, s in zip(p["moving_crop"], p["shape"])):
            raise ConfigError(f"carotid params.moving_crop {p['moving_crop']} exceeds params.shape {p['shape']} "
                              "on some axis; the moving image is cropped from the prepared grid")
    sp = p["spacing_mm"]
    sp = [sp] * 3 if isinstance(sp, (int, float)) and not isinstance(sp, bool) else sp
    if not (isinstance(sp, (list, tuple)) and len(sp) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0 for v in sp)):
        raise ConfigError(f"carotid params.spacing_mm must be a positive number or three, got {p['spacing_mm']!r}")
    p["spacing_mm"] = [float(v) for v in sp]
    if p["centre"] not in ("bifurcation", "image"):
        raise ConfigError(f"carotid params.centre must be 'bifurcation' or 'image', got {p['centre']!r}")
    if p["landmark_space"] not in ("RAS", "LPS"):
        raise ConfigError(f"carotid params.landmark_space must be 'RAS' or 'LPS', got {p['landmark_space']!r}")
    if not (isinstance(p["n_folds"], int) and not isinstance(p["n_folds"], bool) and p["n_folds"] >= 2):
        raise ConfigError(f"carotid params.n_folds must be an integer >= 2, got {p['n_folds']!r}")
    pc = p["intensity_percentiles"]
    if not (isinstance(pc, (list, tuple)) and len(pc) == 2 and 0 <= float(pc[0]) < float(pc[1]) <= 100):
        raise ConfigError(f"carotid params.intensity_percentiles must be [low, high] with 0 <= low < high <= 100, "
                          f"got {pc!r}")
    p["intensity_percentiles"] = [float(v) for v in pc]
    if not isinstance(p["antialias"], bool):
        raise ConfigError(f"carotid params.antialias must be true or false, got {p['antialias']!r}")
    return p


# --------------------------------------------------------------------------------------------- discovery
def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        f = folder / f"{stem}{ext}"
        if f.is_file():
            return f
    return None


def _read_side(folder: Path, patient: str, side: str) -> CarotidArtery:
    files = {}
    for key, stem in FILES.items():
        if stem.endswith(".csv"):
            f = folder / stem
            found = f if f.is_file() else None
            expected = f
        else:
            found = _find_image(folder, stem)
            expected = folder / f"{stem}.nii.gz"
        if found is None:
            listed = ", ".join(s if s.endswith(".csv") else s + ".nii.gz" for s in FILES.values())
            raise DataError(f"{expected}: missing {key} file of patient {patient!r}, {side} side; every artery "
                            f"folder holds {listed}")
        files[key] = found
    return CarotidArtery(patient, side, folder, **files)


def discover(raw_dir: str | Path) -> list[CarotidArtery]:
    """Every artery folder ``<patient>/<left|right>/`` under ``raw_dir`` (any depth; symlinked folders
    followed, hidden ones skipped), sorted by patient (natural order) and side.

    Raises:
        DataError: none found; a folder holding carotid files is not named ``left`` / ``right``; a patient
            name with other characters than letters, digits, ``._-``; a (patient, side) found twice; a missing
            file (:func:`_read_side`). Each message names the file or folder.
    """
    import os

    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw folder not found; run `regbench fetch carotid --local-path <your folder>`")
    known = {s + ext for s in FILES.values() if not s.endswith(".csv") for ext in (".nii.gz", ".nii")}
    known |= {s for s in FILES.values() if s.endswith(".csv")}
    found: dict[tuple[str, str], Path] = {}
    for dirpath, dirnames, filenames in os.walk(raw_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        if d.name in SIDES and d != raw_dir:
            patient = d.parent.name
            if d.parent == raw_dir or not _PATIENT.match(patient):
                raise DataError(f"{d}: artery folder {d.name!r} must sit in a patient folder named with letters, "
                                f"digits, '.', '_', '-' (<patient>/{d.name}/t1gd.nii.gz ...), got {patient!r}")
            if (patient, d.name) in found:
                raise DataError(f"{d}: patient {patient!r}, {d.name} side, found twice (also {found[patient, d.name]});"
                                " keep one copy")
            found[patient, d.name] = d
        elif known & set(filenames):
            hit = sorted(known & set(filenames))[0]
            raise DataError(f"{d / hit}: carotid files must sit in <patient>/left/ or <patient>/right/ folders "
                            f"(found in {d.name!r}); see the carotid layout in config/datasets.yaml")
    if not found:
        raise DataError(f"{raw_dir}: no carotid artery folders found (expected <patient>/left/ and/or "
                        "<patient>/right/ holding t1gd.nii.gz, tof.nii.gz, lumen_t1gd.nii.gz, lumen_tof.nii.gz, "
                        "landmarks_t1gd.csv, landmarks_tof.csv)")
    keys = sorted(found, key=lambda k: (_natural(k[0]), SIDES.index(k[1])))
    return [_read_side(found[k], *k) for k in keys]


# --------------------------------------------------------------------------------------------- landmarks
def read_landmark_csv(path: str | Path, space: str = "RAS") -> tuple[list[str], np.ndarray]:
    """``(names, (N, 3) RAS+ world mm)`` of a landmark CSV (header ``name,x,y,z``; LPS negates x and y).

    Raises:
        DataError: unreadable, wrong header, no rows, empty / duplicate names, non-numeric or non-finite values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the landmark file ({exc})") from exc
    rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    if any(k not in header for k in ("name", "x", "y", "z")):
        raise DataError(f"{path}: expected a CSV header with the columns name,x,y,z; got {header}")
    col = {k: header.index(k) for k in ("name", "x", "y", "z")}
    names, pts = [], []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < len(header):
            raise DataError(f"{path}: line {n} has {len(r)} fields, the header {len(header)}")
        name = r[col["name"]].strip()
        if not name:
            raise DataError(f"{path}: line {n} has an empty landmark name")
        try:
            xyz = [float(r[col[k]]) for k in ("x", "y", "z")]
        except ValueError as exc:
            raise DataError(f"{path}: line {n} ({name!r}): coordinates are not numbers ({exc})") from exc
        if not np.isfinite(xyz).all():
            raise DataError(f"{path}: line {n} ({name!r}): non-finite coordinates {xyz}")
        names.append(name)
        pts.append(xyz)
    if not names:
        raise DataError(f"{path}: no landmarks (a header only); every artery needs at least its bifurcation")
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise DataError(f"{path}: landmark name(s) {dup} occur more than once; names must be unique per file")
    p = np.asarray(pts, dtype=np.float64)
    if space == "LPS":
        p[:, :2] *= -1.0
    return names, p


def _world_to_voxel(affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(affine) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]


def _check_inside(names: list[str], pts: np.ndarray, affine: np.ndarray, shape, lm_path: Path, img_path: Path,
                  space: str) -> None:
    vox = _world_to_voxel(affine, pts)
    outside = ((vox < -0.5) | (vox > np.asarray(shape) - 0.5)).any(axis=1)
    if outside.any():
        k = int(np.nonzero(outside)[0][0])
        other = "LPS" if space == "RAS" else "RAS"
        raise DataError(
            f"{lm_path}: landmark {names[k]!r} at {np.round(pts[k], 3).tolist()} mm ({space}) lies outside its image "
            f"{img_path} (voxel {np.round(vox[k], 2).tolist()}, image shape {list(shape)}; "
            f"{int(outside.sum())} of {len(names)} point(s) outside). Check the coordinates are world mm in "
            f"{space} (params.landmark_space: {other} if the file is in {other}) of this image")


# --------------------------------------------------------------------------------------------- resampling
def grid_affine(centre_world, spacing, shape) -> np.ndarray:
    """RAS+ axis-aligned affine of ``shape`` voxels of ``spacing`` mm whose voxel ``shape // 2`` is at
    ``centre_world``."""
    a = np.diag([*[float(s) for s in spacing], 1.0])
    a[:3, 3] = np.asarray(centre_world, dtype=np.float64) - np.asarray(spacing) * (np.asarray(shape) // 2)
    return a


def resample_to_grid(arr: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape, *, order: int,
                     antialias: bool = True) -> np.ndarray:
    """``arr`` (voxel-to-world ``src_affine``) sampled on the grid ``(dst_affine, shape)``: output voxel ``t`` reads
    the source at ``inv(src_affine) @ dst_affine @ t``; ``order=1`` trilinear (after a Gaussian prefilter of sigma
    ``(f - 1) / 2`` source voxels along each source axis sampled ``f > 1`` times more coarsely, ``antialias``),
    ``order=0`` nearest; 0 outside the source. float32 for ``order=1``, the input dtype for ``order=0``."""
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    src = arr.astype(np.float32) if order == 1 else arr
    if order == 1 and antialias:
        src_sp = np.linalg.norm(src_affine[:3, :3], axis=0)
        inv_dst = np.linalg.inv(np.asarray(dst_affine, dtype=np.float64)[:3, :3])
        sigma = np.zeros(3)
        for i in range(3):
            period = 1.0 / float(np.linalg.norm(inv_dst @ (src_affine[:3, i] / src_sp[i])))  # mm along source axis i
            sigma[i] = max(0.0, (period / src_sp[i] - 1.0) / 2.0)
        sigma[sigma < 1e-3] = 0.0  # same or finer sampling: no prefilter
        if (sigma > 0).any():
            src = ndimage.gaussian_filter(src, sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=order,
                                   mode="constant", cval=0.0, prefilter=False)
    return out.astype(np.float32 if order == 1 else arr.dtype, copy=False)


# --------------------------------------------------------------------------------------------- folds
def assign_folds(arteries_per_patient: dict[str, int], n_folds: int, seed: int) -> dict[str, int]:
    """``{patient: fold}`` grouped by patient and balanced by artery count (module docstring, "Protocol")."""
    ids = sorted(arteries_per_patient, key=_natural)
    perm = [ids[int(i)] for i in np.random.default_rng([int(seed), 12]).permutation(len(ids))]
    perm.sort(key=lambda pid: -arteries_per_patient[pid])  # stable: seeded order within equal counts
    load = [[0, 0] for _ in range(int(n_folds))]            # arteries, patients per fold
    out = {}
    for pid in perm:
        k = min(range(int(n_folds)), key=lambda f: (load[f][0], load[f][1], f))
        out[pid] = k
        load[k][0] += arteries_per_patient[pid]
        load[k][1] += 1
    return out


# --------------------------------------------------------------------------------------------- one artery
def _load_pair(img_path: Path, lab_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from . import brain_prep as bp

    img, aff, _ = bp.load_volume(img_path)
    img = bp.check_image(img, img_path)
    lab, laff, _ = bp.load_volume(lab_path)
    bp.check_same_grid(img.shape, aff, lab.shape, laff, img_path, lab_path)
    lab = bp.label_to_int(lab, lab_path)
    bad = sorted(set(int(v) for v in np.unique(lab)) - {0, 1})
    if bad:
        raise DataError(f"{lab_path}: lumen label value(s) {bad[:8]} found; a lumen map holds 0 (background) and "
                        f"1 (lumen) only")
    if not (lab == 1).any():
        raise DataError(f"{lab_path}: the lumen map holds no lumen voxel (label 1)")
    return img, aff, lab.astype(np.int16)


def _normalise(img: np.ndarray, lo: float, hi: float, path: Path) -> tuple[np.ndarray, list[float]]:
    a, b = (float(v) for v in np.percentile(img, [lo, hi]))
    if not b > a:
        raise DataError(f"{path}: the image is constant between its {lo} and {hi} percentiles ({a}); not an MR scan")
    return np.clip((img.astype(np.float64) - a) / (b - a), 0.0, 1.0).astype(np.float32), [round(a, 4), round(b, 4)]


def _prepare_artery(c: CarotidArtery, p: dict) -> dict:
    """Load, check and resample one artery; return arrays, affines, landmark voxels and facts."""
    import nibabel as nib

    space = p["landmark_space"]
    t1, a_t1, l_t1 = _load_pair(c.t1gd, c.lumen_t1gd)
    tof, a_tof, l_tof = _load_pair(c.tof, c.lumen_tof)
    n_f, w_f = read_landmark_csv(c.landmarks_t1gd, space)
    n_m, w_m = read_landmark_csv(c.landmarks_tof, space)
    _check_inside(n_f, w_f, a_t1, t1.shape, c.landmarks_t1gd, c.t1gd, space)
    _check_inside(n_m, w_m, a_tof, tof.shape, c.landmarks_tof, c.tof, space)
    if set(n_f) != set(n_m):
        only_f, only_m = sorted(set(n_f) - set(n_m)), sorted(set(n_m) - set(n_f))
        raise DataError(f"{c.landmarks_tof}: landmark names differ from {c.landmarks_t1gd}: only in T1GD {only_f}, "
                        f"only in TOF {only_m}; both files must name the same points")
    w_m = w_m[[n_m.index(n) for n in n_f]]
    if p["centre"] == "bifurcation":
        if "bifurcation" not in n_f:
            raise DataError(f"{c.landmarks_t1gd}: no 'bifurcation' landmark, needed to centre the grid "
                            f"(params.centre: bifurcation); names found {n_f}; or set params.centre: image")
        centre = w_f[n_f.index("bifurcation")]
    else:
        centre = (a_t1 @ np.r_[(np.asarray(t1.shape) - 1) / 2.0, 1.0])[:3]
    shape, spacing = p["shape"], p["spacing_mm"]
    grid = grid_affine(centre, spacing, shape)
    lo, hi = p["intensity_percentiles"]
    t1n, pct_f = _normalise(t1, lo, hi, c.t1gd)
    tofn, pct_m = _normalise(tof, lo, hi, c.tof)
    out = {
        "t1gd": np.clip(resample_to_grid(t1n, a_t1, grid, shape, order=1, antialias=p["antialias"]), 0.0, 1.0),
        "tof": np.clip(resample_to_grid(tofn, a_tof, grid, shape, order=1, antialias=p["antialias"]), 0.0, 1.0),
        "seg_t1gd": resample_to_grid(l_t1, a_t1, grid, shape, order=0),
        "seg_tof": resample_to_grid(l_tof, a_tof, grid, shape, order=0),
        "grid": grid, "names": n_f,
        "lm_t1gd": _world_to_voxel(grid, w_f), "lm_tof": _world_to_voxel(grid, w_m),
    }
    sp = lambda a: [round(float(v), 5) for v in np.linalg.norm(a[:3, :3], axis=0)]  # noqa: E731
    out["facts"] = {
        "centre_world_ras_mm": np.round(centre, 4).tolist(),
        "t1gd": {"native_shape": list(t1.shape), "native_spacing_mm": sp(a_t1),
                 "orientation": "".join(nib.aff2axcodes(a_t1)), "intensity_percentile_values": pct_f},
        "tof": {"native_shape": list(tof.shape), "native_spacing_mm": sp(a_tof),
                "orientation": "".join(nib.aff2axcodes(a_tof)), "intensity_percentile_values": pct_m},
        "landmark_names": n_f,
        "initial_landmark_distance_mm": round(float(np.linalg.norm(w_f - w_m, axis=1).mean()), 4),
    }
    return out


def _outside(pts: np.ndarray, shape) -> list[int]:
    return (np.nonzero(((pts < -0.5) | (pts > np.asarray(shape) - 0.5)).any(axis=1))[0] + 1).tolist()


# --------------------------------------------------------------------------------------------- build
def build_carotid(raw_dir: str | Path, out_dir: str | Path, params: dict | None, seed: int,
                  dataset: str = "carotid") -> pd.DataFrame:
    """Prepare a carotid T1GD / TOF set for Huang et al.'s protocol (module docstring); return ``cases.tsv``.

    Args:
        raw_dir: ``data/raw/<dataset>`` in the layout of the module docstring.
        out_dir: ``data/prep/<experiment>/<dataset>``.
        params: ``shape`` ([112, 64, 64]), ``spacing_mm`` (0.6), ``centre`` (``bifurcation`` | ``image``),
            ``moving_crop`` (null | e.g. [96, 56, 64]), ``n_folds`` (4), ``intensity_percentiles`` ([0.5, 99.5]),
            ``antialias`` (true), ``landmark_space`` (``RAS`` | ``LPS``).
        seed: seeds the fold assignment.
        dataset: registry / experiment name (messages, ``dataset.json``).

    Raises:
        ConfigError: bad params; fewer patients than folds.
        DataError: see the module docstring. Nothing is left half-written (staging folder).
    """
    from .brain import _commit_dir
    from .liver import write_landmarks

    t0 = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = resolve_params(params)
    arteries = discover(raw_dir)
    per_patient: dict[str, int] = {}
    for a in arteries:
        per_patient[a.patient] = per_patient.get(a.patient, 0) + 1
    n_folds = p["n_folds"]
    if len(per_patient) < n_folds:
        raise ConfigError(f"{dataset}: {len(per_patient)} patient(s) in {raw_dir} for {n_folds} folds; every fold "
                          "needs a test patient (lower params.n_folds or add patients)")
    folds = assign_folds(per_patient, n_folds, seed)
    shape, crop = p["shape"], p["moving_crop"]
    if shape != PAPER_SHAPE:
        log.warning("%s: prepared grid %s differs from the paper's 112x64x64: a scaled run", dataset, shape)
    offset = None if crop is None else [(s - c) // 2 for s, c in zip(shape, crop)]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(out_dir.parent, out_dir.name)
    try:
        for sub in ("images", "labels", "landmarks"):
            (stage / sub).mkdir()
        rows, per_case = [], {}
        for c in arteries:
            r = _prepare_artery(c, p)
            grid = r["grid"]
            base = {"split": "cv", "test_fold": folds[c.patient], "patient": c.patient, "side": c.side}
            fid, mid = f"{c.pair_id}_t1gd", f"{c.pair_id}_tof"
            # fixed: T1GD on the full grid
            row_f = {"case": fid, **base, "role": "fixed", "t1gd": f"images/{fid}.nii.gz",
                     "seg": f"labels/{fid}_lumen.nii.gz", "landmarks": f"landmarks/{fid}.tsv",
                     "source_image": str(c.t1gd), "source_lumen": str(c.lumen_t1gd),
                     "source_landmarks": str(c.landmarks_t1gd)}
            save_image(stage / row_f["t1gd"], r["t1gd"], grid, dtype=np.float32)
            save_image(stage / row_f["seg"], r["seg_t1gd"], grid, dtype=np.int16)
            write_landmarks(stage / row_f["landmarks"], r["lm_t1gd"])
            # moving: TOF on the full grid, or its centre crop
            row_m = {"case": mid, **base, "role": "moving", "landmarks": f"landmarks/{mid}.tsv",
                     "source_image": str(c.tof), "source_lumen": str(c.lumen_tof),
                     "source_landmarks": str(c.landmarks_tof)}
            tof, seg_m, lm_m, grid_m, mshape = r["tof"], r["seg_tof"], r["lm_tof"], grid, shape
            if crop is not None:
                sl = tuple(slice(o, o + n) for o, n in zip(offset, crop))
                tof, seg_m, lm_m = tof[sl], seg_m[sl], lm_m - np.asarray(offset, dtype=np.float64)
                grid_m = grid.copy()
                grid_m[:3, 3] = grid[:3, 3] + grid[:3, :3] @ np.asarray(offset, dtype=np.float64)
                mshape = crop
                row_f["seg_crop"] = row_f["seg"]
                row_m.update({"tof_crop": f"images/{mid}_crop.nii.gz", "seg_crop": f"labels/{mid}_lumen_crop.nii.gz",
                              "crop_offset": " ".join(str(o) for o in offset)})
                img_key, seg_key = "tof_crop", "seg_crop"
            else:
                row_m.update({"tof": f"images/{mid}.nii.gz", "seg": f"labels/{mid}_lumen.nii.gz"})
                img_key, seg_key = "tof", "seg"
            save_image(stage / row_m[img_key], tof, grid_m, dtype=np.float32)
            save_image(stage / row_m[seg_key], seg_m, grid_m, dtype=np.int16)
            write_landmarks(stage / row_m["landmarks"], lm_m)
            facts = dict(r["facts"])
            out_f, out_m = _outside(r["lm_t1gd"], shape), _outside(lm_m, mshape)
            for which, bad, names in (("T1GD", out_f, c.landmarks_t1gd), ("TOF", out_m, c.landmarks_tof)):
                if bad:
                    log.warning("%s: landmark(s) %s (%s) lie outside the prepared %s grid %s", names,
                                [r["names"][k - 1] for k in bad], bad, which, shape if which == "T1GD" else mshape)
            facts.update({
                "test_fold": folds[c.patient], "grid_affine": np.round(grid, 6).tolist(),
                "moving_affine": np.round(grid_m, 6).tolist(), "moving_shape": list(mshape),
                "crop_offset": offset,
                "lumen_voxels": {"t1gd": int(r["seg_t1gd"].sum()), "tof": int(seg_m.sum())},
                "landmarks_outside_grid": {"t1gd": [r["names"][k - 1] for k in out_f],
                                           "tof": [r["names"][k - 1] for k in out_m]},
            })
            for which, seg in (("T1GD", r["seg_t1gd"]), ("TOF", seg_m)):
                if not seg.any():
                    log.warning("%s %s: no lumen voxel inside the prepared grid", c.pair_id, which)
            per_case[c.pair_id] = facts
            rows += [row_f, row_m]
        cols = ["case", "split", "test_fold", "patient", "side", "role", "t1gd"]
        cols += ["tof_crop"] if crop is not None else ["tof"]
        cols += ["seg"] + (["seg_crop"] if crop is not None else []) + ["landmarks"]
        cols += (["crop_offset"] if crop is not None else []) + ["source_image", "source_lumen", "source_landmarks"]
        df = pd.DataFrame(rows).reindex(columns=cols)
        pair_rows = []
        for k in range(n_folds):
            for split, keep in (("train", lambda f: f != k), ("test", lambda f: f == k)):
                pair_rows += [{"pair_id": a.pair_id, "fold": k, "split": split, "fixed": f"{a.pair_id}_t1gd",
                               "moving": f"{a.pair_id}_tof"} for a in arteries if keep(folds[a.patient])]
        pairs = pd.DataFrame(pair_rows, columns=["pair_id", "fold", "split", "fixed", "moving"])
        for name, table in (("cases.tsv", df), ("pairs.tsv", pairs)):
            with atomic_path(stage / name) as tmp:
                table.to_csv(tmp, sep="\t", index=False)
        fold_facts = {str(k): {"test_patients": sorted((q for q, f in folds.items() if f == k), key=_natural),
                               "n_test_pairs": int(((pairs.fold == k) & (pairs.split == "test")).sum()),
                               "n_train_pairs": int(((pairs.fold == k) & (pairs.split == "train")).sum())}
                      for k in range(n_folds)}
        meta = {
            "dataset": dataset, "reader": "carotid", "raw_dir": str(raw_dir), "seed": int(seed), "params": p,
            "paper_shape": PAPER_SHAPE, "paper_moving_crop": PAPER_CROP, "paper_spacing_mm": PAPER_SPACING_MM,
            "n_patients": len(per_patient), "n_arteries": len(arteries),
            "n_left": sum(a.side == "left" for a in arteries), "n_right": sum(a.side == "right" for a in arteries),
            "folds": fold_facts, "patient_fold": folds,
            "protocol": ("Huang et al. 2021: T1GD fixed, TOF moving, one pair per artery; both resampled onto one RAS+ "
                         f"grid of {shape} voxels of {p['spacing_mm']} mm centred (voxel shape // 2) on the "
                         + ("T1GD bifurcation landmark" if p["centre"] == "bifurcation" else "T1GD image centre")
                         + (f"; TOF centre-cropped to {crop} (offset {offset}): cross-size pairs" if crop else
                            "; same-size pairs")
                         + f"; {n_folds}-fold cross-validation grouped by patient; Lm.Dist from the landmarks"),
            "columns": {"landmarks": "TSV landmark, x, y, z: voxel coordinates of the case's prepared grid (array "
                                     "axis order); landmark k is landmark_names[k-1] of dataset.json per_case",
                        "crop_offset": "voxel offset of the moving crop in the full prepared grid (i j k)",
                        "seg_crop": "moving: the cropped lumen; fixed: its own lumen (the fixed image is not cropped)"},
            "choices": {"grid": "ours: the paper does not say how its 112x64x64 box is placed",
                        "tof_not_recentred": "the TOF is resampled on the T1GD-centred grid, not on its own landmark",
                        "n4": "not applied (the paper applies N4 bias correction first)",
                        "folds": "patients dealt to the fold with the fewest arteries (seeded order, larger first)"},
            "per_case": per_case, "wall_s": round(time.perf_counter() - t0, 2),
        }
        with atomic_path(stage / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        _commit_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("%s: %d arteries of %d patients, %d folds -> %s in %.1f s", dataset, len(arteries), len(per_patient),
             n_folds, out_dir, time.perf_counter() - t0)
    return df

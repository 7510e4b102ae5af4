"""MM-WHS 2017 and CHAOS 2019 readers for Ding et al. 2021 (``regbench preprocess`` kinds ``mmwhs`` and ``chaos``).

Source: W. Ding, L. Li, L. Huang, X. Zhuang, "Unsupervised multi-modality registration network based on spatially
encoded gradient information", STACOM 2021 (arXiv:2105.07392), Sec. 3 "Experimental Setups": MM-WHS, "20 MR and 20
CT images for left ventricle registration", MR registered to CT; CHAOS, "20 T1 MR, 20 T2 MR and 20 CT images for liver
registration" (T1 -> CT and T2 -> CT reported separately, Table 2); Dice and ASD between the labels of the moved and
fixed images; "all experimental results were reported by 4-fold cross-validation". The paper says nothing else about
the data; what follows is marked *ours* or *authors' code* (github.com/NanYoMy/mmregnet, read for facts, nothing
copied: ``proj/learn2reg/prepare_mmwhs.py`` resamples to 1 mm, crops each image to the bounding box of the evaluated
label plus 10 voxels, rotates to a common direction and resizes to 96^3; the CHAOS runs use T1-DUAL in-phase).

Raw layouts (under ``data/raw/<dataset>/``, at any depth; symlinked folders followed):

* **MM-WHS 2017** training set: ``{ct,mr}_train_10NN_{image,label}.nii.gz`` (NN = 01..20; CT and MR ids both run
  1001-1020 but are different patients). Label values: 0, 205 LV myocardium, 420 left atrium, 500 LV blood cavity,
  550 right atrium, 600 right ventricle, 820 ascending aorta, 850 pulmonary artery (:data:`MMWHS_LABELS`, the
  registry entry ``mmwhs2017``). 421 is reported in some label files of the release (not checked here: the data
  are not on this machine); ``params.label_aliases`` (default ``{421: 420}``) reads it as the left atrium, ``{}``
  makes it an error.
* **CHAOS 2019** (``CHAOS_Train_Sets.zip``, CHAOS data description, Kavur et al. 2021): ``Train_Sets/CT/<id>/
  {DICOM_anon/*.dcm, Ground/*.png}``; ``Train_Sets/MR/<id>/T1DUAL/{DICOM_anon/{InPhase,OutPhase}/*.dcm,
  Ground/*.png}`` and ``T2SPIR/{DICOM_anon/*.dcm, Ground/*.png}``. CT ground truth: liver = any non-zero grey
  (255 in the release); MR ground truth grey levels 55-70 liver, 110-135 right kidney, 175-200 left kidney, 240-255
  spleen, 0 background (registry ids 1-4, :data:`CHAOS_GREY_LEVELS`).

**DICOM series** (:func:`scan_dicom_series`). Every ``*.dcm`` of a folder is one series. Slice order, spacing and
orientation come from the headers only (ImagePositionPatient 0020|0032, ImageOrientationPatient 0020|0037,
PixelSpacing 0028|0030; read with SimpleITK ``ImageFileReader.ReadImageInformation``), never from file names:
slices are sorted by their position along the slice normal (row x column cosine). The series grouping is
cross-checked with ``ImageSeriesReader.GetGDCMSeriesIDs`` / ``GetGDCMSeriesFileNames``; the pixels are read by
``ImageSeriesReader`` from the header-ordered file list (GDCM's own order is not relied on: with two files at one
position it silently falls back to file-name order, and ITK only warns about a missing slice; both were seen with
SimpleITK 2.5). :class:`~regbench.errors.DataError`, naming the folder: a duplicated slice (two files at one
position), a missing slice or non-uniform spacing (a gap off the median by more than ``params.slice_tolerance``,
relative), mixed orientations / sizes / pixel spacings, several series in one folder, slices that do not stack
along the normal (gantry tilt or shear beyond ``max(0.05 mm, 0.1 pixel)``), a file SimpleITK cannot read.

**Ground-truth PNGs** (:func:`read_ground_truth`). CHAOS gives one PNG per DICOM slice; the PNG names carry the
slice index. CHAOS's guidance: the PNGs sorted by name correspond to the DICOM slices sorted by InstanceNumber
(0020|0013). So the PNGs are sorted by name (natural order: digit runs compared as numbers) and PNG ``k`` is placed on
the slice with the ``k``-th smallest InstanceNumber, wherever that slice lies physically (``params.png_order:
position`` instead pairs PNG ``k`` with the ``k``-th slice along the normal). Each PNG array ``[row, column]`` is the
DICOM slice's pixel array (no flip). DataError, naming the folder or file: PNG count != slice count, a PNG whose size
is not the DICOM rows x columns, a grey level outside the known set, InstanceNumbers missing or repeated (with
``png_order: instance``), an unreadable PNG.

**Preprocessing** (both datasets, :func:`build_mmwhs` / :func:`build_chaos`; *ours* unless stated):

1. Labels: the registry label values in ``params.labels`` become 1, 2, ... in that order, every other structure is
   dropped (MM-WHS default ``[500, 205]``: LV blood cavity -> 1, myocardium -> 2, the structures Table 1 scores;
   CHAOS default ``[1]``: liver -> 1, the structure Table 2 scores).
2. Region of interest (``params.roi``): the bounding box, in world mm, of the kept labels (``labels``, default; the
   authors' code crops to the evaluated label's box), of every heart structure (``heart``, MM-WHS) or of the whole
   image (``image``), plus ``params.roi_margin_mm`` (default 10 mm, the authors' 10 voxels at 1 mm). The crop uses
   each image's own ground truth, fixed and moving alike, as the authors' code does: an oracle localisation.
3. Common grid: every image (CT and MR) is resampled onto ``params.shape`` voxels (default 96^3, the authors' code)
   of ``params.spacing_mm`` (mm; default ``null``: one isotropic spacing for the whole dataset, the smallest, rounded
   up to 0.01 mm, at which every case's ROI with its margin fits), axis-aligned in RAS+ world and centred on the
   case's ROI centre. So all cases share one shape and spacing (what registration and the metrics in mm need); the
   written affine keeps each case's true world position. The centring is a translation-only pre-alignment (the
   authors' code centres too); **no affine pre-alignment is done here**: the classical baselines run ANTs affine +
   SyN and the learned methods are trained on the centred pairs. Resampling maps each output voxel through the
   source's voxel-to-world affine (oblique and flipped source grids included), i.e. reorientation to RAS+ and
   resampling in one step; images trilinear after a Gaussian anti-aliasing prefilter of sigma ``(f - 1) / 2``
   source voxels on axes shrunk by ``f`` (``params.antialias``), labels nearest neighbour; outside the source field
   of view images are 0 (after normalisation) and labels background.
4. Intensities to [0, 1] per modality: CT clipped to the HU window ``params.ct_window`` (MM-WHS ``[-200, 400]``,
   CHAOS ``[-100, 300]``) and scaled; MR min-max between the ``params.mr_percentiles`` (default 0.5 and 99.5) of the
   whole source volume, clipped.

**Protocol** (:func:`assign_folds`, :func:`cv_pairs`): inter-subject, cross-modality pairs, fixed = a CT case,
moving = an MR case. CT subjects and MR subjects are each split into ``params.n_folds`` (4) folds by a seeded
permutation (round robin, sizes differ by at most one). Fold ``k``'s test pairs are every (CT of fold ``k``, MR of
fold ``k``) pair, its training pairs every (CT not in ``k``, MR not in ``k``) pair; so test subjects of different
folds are disjoint and every subject is tested in exactly one fold. ``params.max_test_pairs`` caps the test pairs
per fold (chosen along cyclic diagonals, so that every test subject still occurs when the cap is at least the larger
of the two fold sizes); ``params.max_train_pairs`` caps the training pairs per fold (seeded subset);
``params.max_subjects`` keeps the first N subjects per modality (by id) for scaled-down runs.

Output (``data/prep/<experiment>/<dataset>/``, built in a hidden staging folder renamed into place when complete; an
error leaves nothing behind and a previous build untouched):

* ``images/<case>.nii.gz`` float32 in [0, 1]; ``labels/<case>_seg.nii.gz`` int16 (1..len(labels));
* ``cases.tsv``: ``case, split, test_fold, set, subject, ct, mr, seg, source_image, source_label``. CT cases
  (``ct_<id>``) fill ``ct``, MR cases (``mr_<id>``) fill ``mr`` (the other cell is empty), so the experiment's
  ``modality: {fixed: ct, moving: mr}`` reads each side from its own column; ``split`` is ``cv`` (a case is
  training data in some folds and test data in one: ``test_fold``);
* ``pairs.tsv``: ``pair_id, fold, split, fixed, moving`` (folds 0..n_folds-1, ``train`` / ``test``);
* ``dataset.json``: parameters, grid, folds, the choices above, per-case native grid, orientation, ROI, intensity
  scaling, label counts and DICOM checks.

Errors: :class:`~regbench.errors.ConfigError` for bad params (names the key) or too few subjects for the folds;
:class:`~regbench.errors.DataError` (naming the file or folder) for the layout and content errors above, a missing
label file / Ground folder / DICOM folder, MM-WHS label values outside the known set, an image and its label map on
different grids (:class:`~regbench.errors.ShapeMismatchError`), non-finite or constant images, a case without any of
the kept labels when the ROI needs them.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..io import save_image
from ..utils import atomic_path, get_logger, keeps_locale, staging_dir
from . import brain_prep as bp
from .brain import _commit_dir, _natural, _walk, _write_tsv
from .fetch import read_fetch_record

__all__ = [
    "CHAOS_GREY_LEVELS", "CHAOS_LABELS", "CHAOS_SEQUENCES", "DEFAULTS", "MMWHS_LABELS", "PAPER_SHAPE",
    "DicomSeries", "assign_folds", "build_chaos", "build_mmwhs", "cv_pairs", "discover_chaos", "discover_mmwhs",
    "read_ground_truth", "read_series_image", "resample_to_grid", "resolve_params", "scan_dicom_series",
]

log = get_logger(__name__)

PAPER_SHAPE = [96, 96, 96]
PAPER_REFERENCE = ("Ding et al., Unsupervised multi-modality registration network based on spatially encoded "
                   "gradient information, STACOM 2021 (arXiv:2105.07392), Sec. 3 'Experimental Setups'")

#: MM-WHS 2017 label values (the registry entry ``mmwhs2017``; tested to agree with config/datasets.yaml).
MMWHS_LABELS: dict[int, str] = {
    0: "background", 205: "left ventricle myocardium", 420: "left atrium blood cavity",
    500: "left ventricle blood cavity", 550: "right atrium blood cavity", 600: "right ventricle blood cavity",
    820: "ascending aorta", 850: "pulmonary artery",
}
#: CHAOS label ids after the grey-level mapping (the registry entry ``chaos``).
CHAOS_LABELS: dict[int, str] = {0: "background", 1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
#: CHAOS MR ground-truth PNG grey levels (inclusive ranges) -> label id (CHAOS data description).
CHAOS_GREY_LEVELS: tuple[tuple[int, int, int], ...] = ((55, 70, 1), (110, 135, 2), (175, 200, 3), (240, 255, 4))
#: ``params.moving`` -> (sequence folder under MR/<id>/, DICOM folder under it, set name)
CHAOS_SEQUENCES: dict[str, tuple[str, str, str]] = {
    "t1dual_inphase": ("T1DUAL", "DICOM_anon/InPhase", "MR T1-DUAL in-phase"),
    "t1dual_outphase": ("T1DUAL", "DICOM_anon/OutPhase", "MR T1-DUAL out-phase"),
    "t2spir": ("T2SPIR", "DICOM_anon", "MR T2-SPIR"),
}
_MMWHS_FILE = re.compile(r"^(ct|mr)_train_(1\d{3})_(image|label)\.nii(\.gz)?$")

# ------------------------------------------------------------------------------------------------ params
_NUMBER_PAIR = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_COMMON_SCHEMA: dict[str, Any] = {
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 8, "maximum": 512}, "minItems": 3,
              "maxItems": 3, "description": "output grid in voxels (authors' code: 96^3)"},
    "spacing_mm": {"description": "output voxel size in mm: null = one isotropic size fitting every ROI, or a "
                                  "number, or three numbers",
                   "oneOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0},
                             {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                              "minItems": 3, "maxItems": 3}]},
    "roi_margin_mm": {"type": "number", "minimum": 0, "description": "margin around the ROI box, mm"},
    "ct_window": {**_NUMBER_PAIR, "description": "CT HU window mapped to [0, 1]"},
    "mr_percentiles": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 100}, "minItems": 2,
                       "maxItems": 2, "description": "MR percentiles mapped to 0 and 1"},
    "antialias": {"type": "boolean", "description": "Gaussian prefilter before shrinking images"},
    "n_folds": {"type": "integer", "minimum": 2, "description": "cross-validation folds (paper: 4)"},
    "max_subjects": {"type": ["integer", "null"], "minimum": 2, "description": "first N subjects per modality"},
    "max_train_pairs": {"type": ["integer", "null"], "minimum": 1, "description": "training pairs per fold"},
    "max_test_pairs": {"type": ["integer", "null"], "minimum": 1, "description": "test pairs per fold"},
    "labels": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "uniqueItems": True,
               "description": "registry label values kept, written as 1, 2, ... in this order"},
}
#: JSON schema of ``params`` per kind.
PARAMS_SCHEMA: dict[str, dict[str, Any]] = {
    "mmwhs": {"type": "object", "additionalProperties": False, "properties": {
        **_COMMON_SCHEMA,
        "roi": {"enum": ["labels", "heart", "image"]},
        "label_aliases": {"type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
                          "additionalProperties": {"type": "integer", "minimum": 0},
                          "description": "raw label value -> known MM-WHS value it stands for"},
    }},
    "chaos": {"type": "object", "additionalProperties": False, "properties": {
        **_COMMON_SCHEMA,
        "roi": {"enum": ["labels", "image"]},
        "moving": {"enum": list(CHAOS_SEQUENCES), "description": "the MR sequence registered to CT"},
        "slice_tolerance": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                            "description": "allowed relative deviation of a slice gap from the median"},
        "png_order": {"enum": ["instance", "position"],
                      "description": "PNG k (by name) goes on the slice with the k-th InstanceNumber or position"},
    }},
}
_COMMON_DEFAULTS: dict[str, Any] = {
    "shape": list(PAPER_SHAPE), "spacing_mm": None, "roi": "labels", "roi_margin_mm": 10.0,
    "mr_percentiles": [0.5, 99.5], "antialias": True, "n_folds": 4, "max_subjects": None,
    "max_train_pairs": None, "max_test_pairs": None,
}
#: Defaults per kind (*ours* except the 96^3 grid and the 10 mm margin, from the authors' code, and the 4 folds).
DEFAULTS: dict[str, dict[str, Any]] = {
    "mmwhs": {**_COMMON_DEFAULTS, "labels": [500, 205], "label_aliases": {"421": 420}, "ct_window": [-200.0, 400.0]},
    "chaos": {**_COMMON_DEFAULTS, "labels": [1], "ct_window": [-100.0, 300.0], "moving": "t1dual_inphase",
              "slice_tolerance": 0.1, "png_order": "instance"},
}


def resolve_params(kind: str, params: dict | None) -> dict:
    """:data:`DEFAULTS` of ``kind`` overridden by ``params``, validated against :data:`PARAMS_SCHEMA`;
    ``label_aliases`` as ``{int: int}``, ``spacing_mm`` as three floats or ``None``.

    Raises:
        ConfigError: unknown kind or key, bad value, labels outside the dataset's set (names the key).
    """
    import jsonschema
    from jsonschema.exceptions import best_match

    if kind not in DEFAULTS:
        raise ConfigError(f"preprocess: unknown kind {kind!r}; this module reads {sorted(DEFAULTS)}")
    params = json.loads(json.dumps(dict(params or {})))  # YAML int keys -> strings, as the --spec carries them
    errors = list(jsonschema.Draft202012Validator(PARAMS_SCHEMA[kind]).iter_errors(params))
    if errors:
        e = best_match(errors)
        where = ".".join(str(x) for x in e.absolute_path) or "<params>"
        raise ConfigError(f"preprocess {kind} params: {where}: {e.message}")
    p = copy.deepcopy(DEFAULTS[kind])
    p.update(copy.deepcopy(params))
    known = MMWHS_LABELS if kind == "mmwhs" else CHAOS_LABELS
    bad = [v for v in p["labels"] if v not in known or v == 0]
    if bad:
        raise ConfigError(f"preprocess {kind} params: labels: {bad} not in the dataset's labels "
                          f"{sorted(k for k in known if k)}")
    if kind == "mmwhs":
        aliases = {int(k): int(v) for k, v in p["label_aliases"].items()}
        for k, v in aliases.items():
            if k in MMWHS_LABELS or v not in MMWHS_LABELS:
                raise ConfigError(f"preprocess mmwhs params: label_aliases: {k} -> {v}: the key must be a value "
                                  f"outside and the target one inside the MM-WHS labels {sorted(MMWHS_LABELS)}")
        p["label_aliases"] = aliases
    lo, hi = p["ct_window"]
    if not lo < hi:
        raise ConfigError(f"preprocess {kind} params: ct_window: need low < high, got {[lo, hi]}")
    lo, hi = p["mr_percentiles"]
    if not lo < hi:
        raise ConfigError(f"preprocess {kind} params: mr_percentiles: need low < high, got {[lo, hi]}")
    sp = p["spacing_mm"]
    if sp is not None:
        p["spacing_mm"] = [float(sp)] * 3 if isinstance(sp, (int, float)) else [float(v) for v in sp]
    p["shape"] = [int(s) for s in p["shape"]]
    return p


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class RawCase:
    """One image with its ground truth, as found in the raw folder.

    ``image`` / ``label`` are files (MM-WHS) or folders (CHAOS: the DICOM folder and the Ground folder);
    ``modality`` is ``ct`` or ``mr`` (the cases.tsv column), ``set_name`` what the image is ("CT", "MR T2-SPIR").
    """

    case: str
    modality: str
    subject: str
    set_name: str
    image: Path
    label: Path
    series: "DicomSeries | None" = None
    geometry: tuple[tuple[int, ...], np.ndarray] | None = None
    roi: tuple[np.ndarray, np.ndarray] | None = None
    info: dict = field(default_factory=dict)


def _hidden(path: Path, root: Path) -> bool:
    """A path under a hidden or macOS resource folder (``.x``, ``__MACOSX``; staging folders, archive junk)."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = path.parts
    return any(s.startswith(".") or s == "__MACOSX" for s in parts)


def discover_mmwhs(raw_dir: str | Path) -> list[RawCase]:
    """Every MM-WHS training image with its label map under ``raw_dir`` (any depth), CT then MR, by id.

    Raises:
        DataError: the raw folder is missing or holds no MM-WHS file, a file occurs twice, an image without its
            label map (the message names the expected label file) or a label map without its image, CT or MR
            cases missing altogether.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw folder not found; run `regbench fetch mmwhs2017` first")
    files, _ = _walk(raw_dir)
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for f in files:
        m = _MMWHS_FILE.match(f.name)
        if not m or _hidden(f, raw_dir):
            continue
        slot = found.setdefault((m[1], m[2]), {})
        if m[3] in slot:
            raise DataError(f"{f}: {m[1]}_train_{m[2]}_{m[3]} occurs twice (also {slot[m[3]]}); keep one copy")
        slot[m[3]] = f
    if not found:
        raise DataError(f"{raw_dir}: no MM-WHS files ({{ct,mr}}_train_10NN_{{image,label}}.nii.gz) found; place the "
                        "extracted MM-WHS 2017 CT and MR training sets there (config/datasets.yaml, mmwhs2017)")
    cases = []
    for (mod, sid), d in sorted(found.items()):
        if "label" not in d:
            img = d["image"]
            raise DataError(f"{img.parent / img.name.replace('_image', '_label')}: missing label map of {img.name} "
                            f"(every MM-WHS training image needs its {mod}_train_{sid}_label.nii.gz)")
        if "image" not in d:
            lab = d["label"]
            raise DataError(f"{lab.parent / lab.name.replace('_label', '_image')}: missing image of label map "
                            f"{lab.name}")
        cases.append(RawCase(f"{mod}_{sid}", mod, sid, mod.upper(), d["image"], d["label"]))
    absent = sorted({"ct", "mr"} - {c.modality for c in cases})
    if absent:
        raise DataError(f"{raw_dir}: no {' or '.join(a.upper() for a in absent)} training files "
                        f"({absent[0]}_train_10NN_image.nii.gz) found; MR -> CT registration needs both sets")
    return cases


def discover_chaos(raw_dir: str | Path, moving: str) -> list[RawCase]:
    """The CHAOS CT cases and the MR cases of sequence ``moving`` (:data:`CHAOS_SEQUENCES`) under the one
    ``Train_Sets`` folder found in ``raw_dir`` (any depth), by subject id.

    Raises:
        DataError: no or several ``Train_Sets`` folders, no ``CT`` / ``MR`` folder or no subject in one, a subject
            without its DICOM or Ground folder (the message names the expected folder).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw folder not found; run `regbench fetch chaos` first")
    _, dirs = _walk(raw_dir)
    roots = sorted(d for d in [raw_dir, *dirs] if d.name == "Train_Sets" and not _hidden(d, raw_dir))
    if not roots:
        raise DataError(f"{raw_dir}: no Train_Sets folder found (the content of CHAOS_Train_Sets.zip: Train_Sets/CT, "
                        "Train_Sets/MR); run `regbench fetch chaos` first")
    if len(roots) > 1:
        raise DataError(f"{raw_dir}: several Train_Sets folders {[str(r) for r in roots]}; keep one copy")
    root = roots[0]
    seq_dir, dicom_sub, set_name = CHAOS_SEQUENCES[moving]
    cases: list[RawCase] = []
    for mod in ("CT", "MR"):
        top = root / mod
        if not top.is_dir():
            raise DataError(f"{top}: missing CHAOS {mod} folder (Train_Sets/{mod}/<id>/...)")
        subjects = sorted((d for d in top.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
        other = sorted(d.name for d in top.iterdir() if d.is_dir() and not d.name.isdigit())
        if other:
            log.warning("%s: ignoring non-subject folder(s) %s", top, other)
        if not subjects:
            raise DataError(f"{top}: no subject folders (<id>/, digits) found")
        for d in subjects:
            if mod == "CT":
                image, label, sname = d / "DICOM_anon", d / "Ground", "CT"
            else:
                image, label, sname = d / seq_dir / dicom_sub, d / seq_dir / "Ground", set_name
            for path, what in ((image, "DICOM"), (label, "Ground (PNG ground truth)")):
                if not path.is_dir():
                    raise DataError(f"{path}: missing {what} folder of CHAOS {mod} subject {d.name}")
            cases.append(RawCase(f"{mod.lower()}_{d.name}", mod.lower(), d.name, sname, image, label))
    return cases


# ------------------------------------------------------------------------------------------------ DICOM
@dataclass
class DicomSeries:
    """A DICOM series as read from its headers.

    ``files`` are in slice order (ascending position along the slice normal); ``instance[k]`` is the
    InstanceNumber of ``files[k]`` (``None`` where absent). ``affine`` maps voxel ``(i, j, k)`` = (column, row,
    slice index in ``files``) to RAS+ world mm; the volume shape is ``(cols, rows, len(files))``.
    """

    folder: Path
    files: list[Path]
    instance: list[int | None]
    rows: int
    cols: int
    affine: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.cols, self.rows, len(self.files))

    def png_slots(self, order: str) -> list[int]:
        """Slice index (into ``files``) of the ``k``-th ground-truth PNG by name: the slice with the ``k``-th
        smallest InstanceNumber (``order = "instance"``) or the ``k``-th slice by position (``"position"``).

        Raises:
            DataError: ``instance`` with InstanceNumbers missing or repeated (names the folder).
        """
        if order == "position":
            return list(range(len(self.files)))
        inst = self.instance
        missing = [f.name for f, i in zip(self.files, inst) if i is None]
        if missing:
            raise DataError(f"{self.folder}: InstanceNumber (0020|0013) missing in {missing[:3]}; the Ground PNGs "
                            "cannot be matched by instance (params.png_order: position pairs them by slice position)")
        if len(set(inst)) != len(inst):
            dup = sorted({i for i in inst if inst.count(i) > 1})
            raise DataError(f"{self.folder}: InstanceNumber(s) {dup[:5]} occur in several files; the Ground PNGs "
                            "cannot be matched by instance (params.png_order: position pairs them by slice position)")
        return [int(k) for k in np.argsort(np.asarray(inst), kind="stable")]


def _tag(reader, key: str, path: Path, what: str, n: int | None = None) -> str | list[float] | None:
    """A header value (stripped), or ``n`` backslash-separated floats; ``None`` when absent and ``n`` is None.

    Raises:
        DataError: a required (``n`` given) tag is absent or malformed.
    """
    value = reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else None
    if n is None:
        return value
    try:
        out = [float(v) for v in (value or "").split("\\")]
    except ValueError:
        out = []
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise DataError(f"{path}: DICOM tag {what} ({key}) is {'absent' if value is None else repr(value)}; "
                        f"expected {n} numbers")
    return out


@keeps_locale
def scan_dicom_series(folder: str | Path, tolerance: float = 0.1) -> DicomSeries:
    """Read the headers of every ``*.dcm`` in ``folder``, check them as one series and order its slices
    (module docstring, "DICOM series"). No pixel data are read.

    Args:
        folder: a folder holding one DICOM series, one file per slice.
        tolerance: a slice gap may differ from the median gap by this fraction.

    Raises:
        DataError: naming the folder (and the files involved): fewer than two files, an unreadable file, a
            missing or malformed position / orientation / pixel-spacing tag, mixed orientation / size / pixel
            spacing, several series, a file set that GDCM groups differently, a duplicated slice, a missing slice
            or non-uniform spacing, slices not stacked along the normal.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".dcm"), key=lambda f: f.name)
    if len(files) < 2:
        raise DataError(f"{folder}: {len(files)} DICOM file(s) (*.dcm); a 3D series needs at least 2 slices")
    heads = []
    for f in files:
        r = sitk.ImageFileReader()
        r.SetFileName(str(f))
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise DataError(f"{f}: SimpleITK cannot read it as DICOM ({str(exc).strip().splitlines()[-1]})") from exc
        size = r.GetSize()
        if len(size) > 2 and size[2] != 1:
            raise DataError(f"{f}: a multi-frame file ({size[2]} frames); CHAOS stores one slice per file")
        inst = _tag(r, "0020|0013", f, "InstanceNumber")
        try:
            inst_n = int(float(inst)) if inst else None
        except ValueError:
            inst_n = None
        heads.append({"file": f, "ipp": np.array(_tag(r, "0020|0032", f, "ImagePositionPatient", 3)),
                      "iop": np.array(_tag(r, "0020|0037", f, "ImageOrientationPatient", 6)),
                      "ps": np.array(_tag(r, "0028|0030", f, "PixelSpacing", 2)), "inst": inst_n,
                      "uid": _tag(r, "0020|000e", f, "SeriesInstanceUID") or "", "cols": int(size[0]),
                      "rows": int(size[1])})
    first = heads[0]
    for h in heads[1:]:
        for key, what, tol in (("iop", "ImageOrientationPatient", 1e-4), ("ps", "PixelSpacing", 1e-4)):
            if not np.allclose(h[key], first[key], atol=tol):
                raise DataError(f"{folder}: {h['file'].name} has {what} {h[key].tolist()} but {first['file'].name} "
                                f"has {first[key].tolist()}; the folder mixes series")
        if (h["rows"], h["cols"]) != (first["rows"], first["cols"]):
            raise DataError(f"{folder}: {h['file'].name} is {h['cols']}x{h['rows']} pixels but {first['file'].name} "
                            f"is {first['cols']}x{first['rows']}; the folder mixes series")
    uids = {h["uid"] for h in heads}
    if 1 < len(uids) < len(heads):
        raise DataError(f"{folder}: holds {len(uids)} series (SeriesInstanceUID 0020|000e); expected one series "
                        "per folder")
    gdcm_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    gdcm_names: list[str] | None = None
    if len(gdcm_ids) == 1:
        gdcm_names = [Path(p).name for p in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), gdcm_ids[0])]
        if sorted(gdcm_names) != [f.name for f in files]:
            raise DataError(f"{folder}: GDCM groups {len(gdcm_names)} of the {len(files)} DICOM files into series "
                            f"{gdcm_ids[0]}; the others are not part of it (unreadable or another series)")
    row, col = first["iop"][:3], first["iop"][3:]
    if abs(float(row @ col)) > 1e-3 or abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3:
        raise DataError(f"{folder}: ImageOrientationPatient {first['iop'].tolist()} is not two orthonormal cosines")
    normal = np.cross(row, col)
    pos = np.array([float(h["ipp"] @ normal) for h in heads])
    order = np.argsort(pos, kind="stable")
    heads = [heads[i] for i in order]
    pos = pos[order]
    gaps = np.diff(pos)
    positive = gaps[gaps > 1e-3]
    median = float(np.median(positive)) if positive.size else 0.0
    for k, g in enumerate(gaps):
        if g <= max(1e-3, 0.01 * median):
            a, b = heads[k]["file"].name, heads[k + 1]["file"].name
            raise DataError(f"{folder}: duplicated slice: {a} and {b} are both at {pos[k]:.3f} mm along the slice "
                            "normal (ImagePositionPatient); remove the duplicate file")
    bad = np.nonzero(np.abs(gaps - median) > tolerance * median)[0]
    if bad.size:
        k = int(bad[0])
        a, b = heads[k]["file"].name, heads[k + 1]["file"].name
        why = "a missing slice?" if gaps[k] > median else "an extra slice?"
        raise DataError(f"{folder}: non-uniform slice spacing: {gaps[k]:.3f} mm between {a} and {b} (slices {k + 1} "
                        f"and {k + 2} of {len(heads)} by position) while the median gap is {median:.3f} mm "
                        f"(tolerance {tolerance:.0%}): {why}")
    ipp0, ippn = heads[0]["ipp"], heads[-1]["ipp"]
    step = (ippn - ipp0) / (len(heads) - 1)
    line = ipp0 + np.arange(len(heads))[:, None] * step
    dev = float(np.abs(np.stack([h["ipp"] for h in heads]) - line).max())
    inplane = float(np.abs(step - (step @ normal) * normal).max())
    limit = max(0.05, 0.1 * float(first["ps"].min()))
    if dev > limit or inplane > limit:
        raise DataError(f"{folder}: the slices do not stack along the normal (off by up to "
                        f"{max(dev, inplane):.3f} mm: gantry tilt or shear); only orthogonal stacks are read")
    ps = first["ps"]  # PixelSpacing = (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * ps[1], col * ps[0], step, ipp0
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    ordered = [h["file"] for h in heads]
    agrees = None if gdcm_names is None else gdcm_names == [f.name for f in ordered]
    if agrees is False:
        log.warning("%s: GetGDCMSeriesFileNames orders the files differently from their ImagePositionPatient; the "
                    "header order is used", folder)
    info = {"n_slices": len(heads), "slice_spacing_mm": round(float(step @ normal), 5),
            "pixel_spacing_mm": [round(float(v), 5) for v in ps], "rows": first["rows"], "cols": first["cols"],
            "series_uids": len(uids), "gdcm_order_agrees": agrees,
            "instance_vs_position": _monotony([h["inst"] for h in heads])}
    return DicomSeries(folder, ordered, [h["inst"] for h in heads], first["rows"], first["cols"], ras, info)


def _monotony(inst: list[int | None]) -> str:
    if any(i is None for i in inst):
        return "incomplete"
    d = np.diff(np.asarray(inst))
    return "ascending" if (d > 0).all() else "descending" if (d < 0).all() else "unordered"


def _sitk_affine_ras(img) -> np.ndarray:
    """RAS+ voxel-to-world affine of a SimpleITK image (index order x, y, z = array axes after transposing)."""
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    a = np.eye(4)
    a[:3, :3] = d * np.asarray(img.GetSpacing())[None, :]
    a[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a


def read_series_image(series: DicomSeries) -> np.ndarray:
    """The series' pixels as float32 ``(cols, rows, slices)`` (rescale slope / intercept applied: HU for CT), read
    by ``sitk.ImageSeriesReader`` from the header-ordered file list.

    Raises:
        DataError: SimpleITK fails, or its geometry (orientation, origin, size) differs from the header geometry.
    """
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames([str(f) for f in series.files])
    r.SetOutputPixelType(sitk.sitkFloat32)
    try:
        img = r.Execute()
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[-1]
        raise DataError(f"{series.folder}: SimpleITK cannot read the series ({why})") from exc
    arr = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0), dtype=np.float32)
    itk = _sitk_affine_ras(img)
    ours = series.affine
    unit = lambda a: a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0)  # noqa: E731
    if arr.shape != series.shape or not np.allclose(unit(itk), unit(ours), atol=1e-4) \
            or not np.allclose(itk[:3, 3], ours[:3, 3], atol=0.05):
        raise DataError(f"{series.folder}: SimpleITK reads the series as {arr.shape} with affine "
                        f"{np.round(itk, 3).tolist()}, the headers give {series.shape} with "
                        f"{np.round(ours, 3).tolist()}")
    return arr


def _read_png(path: Path, rows: int, cols: int, folder: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the ground-truth PNG ({exc})") from exc
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 3:
        if a.shape[2] in (3, 4) and (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
            a = a[..., 0]
        elif a.shape[2] == 2:
            a = a[..., 0]
        else:
            raise DataError(f"{path}: a colour PNG ({a.shape[2]} channels that differ); CHAOS ground truth is grey")
    if a.shape != (rows, cols):
        raise DataError(f"{path}: ground-truth PNG is {a.shape[1]}x{a.shape[0]} (width x height) but the DICOM "
                        f"slices of {folder} are {cols}x{rows}")
    return a


def grey_to_label(grey: np.ndarray, modality: str, where: Path) -> np.ndarray:
    """CHAOS ground-truth grey levels -> label ids (:data:`CHAOS_LABELS`): CT non-zero -> 1 (liver); MR by
    :data:`CHAOS_GREY_LEVELS`.

    Raises:
        DataError: an MR grey level outside the known ranges (names ``where`` and the values).
    """
    if modality == "ct":
        return (grey > 0).astype(np.int16)
    out = np.zeros(grey.shape, dtype=np.int16)
    for lo, hi, lab in CHAOS_GREY_LEVELS:
        out[(grey >= lo) & (grey <= hi)] = lab
    unknown = (grey != 0) & (out == 0)
    if unknown.any():
        vals = sorted(int(v) for v in np.unique(grey[unknown]))
        raise DataError(f"{where}: grey level(s) {vals[:8]} are not CHAOS MR ground-truth levels (0 background, "
                        "55-70 liver, 110-135 right kidney, 175-200 left kidney, 240-255 spleen)")
    return out


def read_ground_truth(folder: str | Path, series: DicomSeries, modality: str, png_order: str = "instance"
                      ) -> tuple[np.ndarray, dict]:
    """Stack a CHAOS Ground folder onto ``series``' grid: int16 ``(cols, rows, slices)`` of label ids.

    The PNGs are sorted by name (natural order) and PNG ``k`` goes on slice ``series.png_slots(png_order)[k]``
    (module docstring, "Ground-truth PNGs").

    Raises:
        DataError: PNG count != slice count (names the folder), a PNG of the wrong size or with an unknown grey
            level (names the PNG), InstanceNumbers unusable for matching (names the DICOM folder).
    """
    folder = Path(folder)
    pngs = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() == ".png"),
                  key=lambda f: _natural(f.name))
    if len(pngs) != len(series.files):
        raise DataError(f"{folder}: {len(pngs)} ground-truth PNG(s) but the DICOM series {series.folder} has "
                        f"{len(series.files)} slices; CHAOS has one PNG per slice")
    slots = series.png_slots(png_order)
    vol = np.zeros(series.shape, dtype=np.int16)
    greys: set[int] = set()
    for k, f in enumerate(pngs):
        g = _read_png(f, series.rows, series.cols, series.folder)
        greys.update(int(v) for v in np.unique(g))
        vol[:, :, slots[k]] = grey_to_label(g, modality, f).T
    return vol, {"n_png": len(pngs), "grey_levels": sorted(greys), "png_order": png_order,
                 "first_png_on_slice": int(slots[0]), "first_png": pngs[0].name}


# ------------------------------------------------------------------------------------------------ grid
def resample_to_grid(arr: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape, *, order: int,
                     cval: float = 0.0, antialias: bool = True) -> np.ndarray:
    """Resample ``arr`` (voxel-to-world ``src_affine``, mm) onto the grid ``(dst_affine, shape)``.

    Each output voxel ``t`` samples the source at voxel ``inv(src_affine) @ dst_affine @ t`` (any rotation, flip or
    permutation between the grids). ``order=1`` (images): trilinear, after a Gaussian prefilter of sigma
    ``(f - 1) / 2`` source voxels along each source axis sampled ``f > 1`` times more coarsely (``antialias``);
    ``order=0`` (labels): nearest neighbour, values kept. Outside the source: ``cval``. Only the source region the
    grid touches is filtered (speed). Returns float32 (``order=1``) or the input dtype (``order=0``).
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    m = np.linalg.inv(np.asarray(src_affine, dtype=np.float64)) @ np.asarray(dst_affine, dtype=np.float64)
    lin, off = m[:3, :3], m[:3, 3]
    corners = np.array([[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5)
                        for c in (-0.5, shape[2] - 0.5)])
    pts = corners @ lin.T + off
    sigma = np.zeros(3)
    if order == 1 and antialias:
        src_sp = np.linalg.norm(src_affine[:3, :3], axis=0)
        inv_dst = np.linalg.inv(np.asarray(dst_affine, dtype=np.float64)[:3, :3])
        for i in range(3):
            u = src_affine[:3, i] / src_sp[i]
            footprint = 1.0 / float(np.linalg.norm(inv_dst @ u))  # output sampling period along source axis i, mm
            sigma[i] = max(0.0, (footprint / src_sp[i] - 1.0) / 2.0)
    pad = np.ceil(4 * sigma).astype(int) + 2
    lo = np.maximum(np.floor(pts.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(pts.max(0)).astype(int) + pad + 1, np.asarray(arr.shape[:3]))
    dtype = np.float32 if order == 1 else arr.dtype
    if (hi <= lo).any():
        return np.full(shape, cval, dtype=dtype)
    sub = arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if order == 1:
        sub = sub.astype(np.float32)
        if (sigma > 0).any():
            sub = ndimage.gaussian_filter(sub, sigma=sigma, mode="nearest")
    out = ndimage.affine_transform(sub, lin, offset=off - lo, output_shape=shape, order=order, mode="constant",
                                   cval=cval, prefilter=False)
    return out.astype(dtype, copy=False)


def grid_affine(centre, spacing, shape) -> np.ndarray:
    """RAS+ axis-aligned affine of ``shape`` voxels of ``spacing`` mm whose centre is at world ``centre``."""
    a = np.diag([*[float(s) for s in spacing], 1.0])
    a[:3, 3] = np.asarray(centre, dtype=np.float64) - np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0
    return a


def world_box(mask: np.ndarray | None, affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """World-mm bounding box ``(low, high)`` of the voxels of ``mask`` (their full extent, +-0.5 voxel), or of the
    whole grid ``shape`` when ``mask`` is None."""
    if mask is None:
        lo_i, hi_i = np.zeros(3), np.asarray(shape, dtype=np.float64) - 1
    else:
        idx = np.nonzero(mask)
        lo_i = np.array([i.min() for i in idx], dtype=np.float64)
        hi_i = np.array([i.max() for i in idx], dtype=np.float64)
    corners = np.array([[a, b, c, 1.0] for a in (lo_i[0] - 0.5, hi_i[0] + 0.5) for b in (lo_i[1] - 0.5, hi_i[1] + 0.5)
                        for c in (lo_i[2] - 0.5, hi_i[2] + 0.5)])
    w = corners @ np.asarray(affine, dtype=np.float64).T
    return w[:, :3].min(0), w[:, :3].max(0)


def normalise(arr: np.ndarray, modality: str, p: dict, where: Path) -> tuple[np.ndarray, dict]:
    """CT: clip to ``p["ct_window"]`` (HU) and scale to [0, 1]; MR: min-max between ``p["mr_percentiles"]`` of the
    whole volume, clipped to [0, 1]. Returns float32 and the values used.

    Raises:
        DataError: non-finite voxels, or an MR volume whose percentiles coincide (constant image).
    """
    arr = bp.check_image(arr, where)
    if modality == "ct":
        lo, hi = (float(v) for v in p["ct_window"])
    else:
        lo, hi = (float(v) for v in np.percentile(arr, p["mr_percentiles"]))
        if not hi > lo:
            raise DataError(f"{where}: MR percentiles {p['mr_percentiles']} are both {lo}; the image is constant")
    out = np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return out, {"low": round(lo, 4), "high": round(hi, 4), "by": "HU window" if modality == "ct" else "percentiles"}


def remap(seg: np.ndarray, labels: list[int]) -> np.ndarray:
    """int16 map with ``labels[i]`` -> ``i + 1``, everything else 0."""
    out = np.zeros(seg.shape, dtype=np.int16)
    for i, v in enumerate(labels):
        out[seg == v] = i + 1
    return out


# ------------------------------------------------------------------------------------------------ protocol
def assign_folds(subjects: list[str], n_folds: int, seed: int, stream: int) -> dict[str, int]:
    """``{subject: fold}``: the subjects (natural order) permuted by ``numpy.random.default_rng([seed, stream])``
    and dealt round robin into ``n_folds`` folds (sizes differ by at most one). ``stream`` separates CT (0) from
    MR (1), so the two splits are independent."""
    ids = sorted(subjects, key=_natural)
    perm = np.random.default_rng([int(seed), int(stream)]).permutation(len(ids))
    return {ids[int(i)]: r % int(n_folds) for r, i in enumerate(perm)}


def _covering(fixed: list[str], moving: list[str]) -> list[tuple[str, str]]:
    """All ``fixed x moving`` pairs, ordered by cyclic diagonals of the larger side, so that the first
    ``max(len(fixed), len(moving))`` pairs contain every subject of both lists."""
    nf, nm = len(fixed), len(moving)
    if nf >= nm:
        return [(fixed[i], moving[(i + d) % nm]) for d in range(nm) for i in range(nf)]
    return [(fixed[(j + d) % nf], moving[j]) for d in range(nf) for j in range(nm)]


def cv_pairs(fixed_folds: dict[str, int], moving_folds: dict[str, int], n_folds: int, seed: int,
             max_train: int | None = None, max_test: int | None = None) -> tuple[pd.DataFrame, dict]:
    """``pairs.tsv`` of the cross-validation (module docstring, "Protocol") and per-fold facts.

    Args:
        fixed_folds, moving_folds: ``{case: fold}`` of the fixed (CT) and moving (MR) cases.
        n_folds: number of folds.
        seed: seeds the order of capped test pairs and the subset of capped training pairs.
        max_train, max_test: caps per fold (``None``: all).
    """
    rows, facts = [], {}
    for k in range(int(n_folds)):
        rng = np.random.default_rng([int(seed), 2, k])
        f_test = sorted((c for c, f in fixed_folds.items() if f == k), key=_natural)
        m_test = sorted((c for c, f in moving_folds.items() if f == k), key=_natural)
        f_train = sorted((c for c, f in fixed_folds.items() if f != k), key=_natural)
        m_train = sorted((c for c, f in moving_folds.items() if f != k), key=_natural)
        train = [(f, m) for f in f_train for m in m_train]
        if max_train is not None and len(train) > max_train:
            train = [train[i] for i in np.sort(rng.choice(len(train), size=int(max_train), replace=False))]
        if max_test is not None:
            test = _covering([f_test[i] for i in rng.permutation(len(f_test))],
                             [m_test[i] for i in rng.permutation(len(m_test))])[: int(max_test)]
            test.sort(key=lambda fm: (_natural(fm[0]), _natural(fm[1])))
        else:
            test = [(f, m) for f in f_test for m in m_test]
        rows += [(k, "train", f, m) for f, m in train] + [(k, "test", f, m) for f, m in test]
        tested = {s for fm in test for s in fm}
        facts[str(k)] = {"test_fixed": f_test, "test_moving": m_test, "n_train_pairs": len(train),
                         "n_test_pairs": len(test),
                         "untested": sorted(set(f_test + m_test) - tested, key=_natural)}
        if facts[str(k)]["untested"]:
            log.warning("fold %d: max_test_pairs = %s leaves test subject(s) %s without a test pair", k, max_test,
                        facts[str(k)]["untested"])
    df = pd.DataFrame({"pair_id": [f"{f}__{m}" for _, _, f, m in rows], "fold": [r[0] for r in rows],
                       "split": [r[1] for r in rows], "fixed": [r[2] for r in rows], "moving": [r[3] for r in rows]},
                      columns=["pair_id", "fold", "split", "fixed", "moving"])
    return df, facts


# ------------------------------------------------------------------------------------------------ build
@dataclass
class _Reader:
    """How one dataset's cases are read: ``labels(case) -> (label map remapped to 1.., affine, info)`` and
    ``image(case) -> (array, affine)``, both ``(i, j, k)`` arrays with RAS+ affines in mm."""

    kind: str
    labels: Callable[[RawCase], tuple[np.ndarray, np.ndarray, dict]]
    image: Callable[[RawCase], tuple[np.ndarray, np.ndarray]]
    label_names: dict[int, str]


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _build(reader: _Reader, cases: list[RawCase], raw_dir: Path, out_dir: Path, p: dict, seed: int, dataset: str,
           extra_meta: dict) -> pd.DataFrame:
    """The shared two-pass build (module docstring): check every case's ground truth and place its ROI (pass 1;
    nothing is written), choose the grid, then resample and write each case into a staging folder (pass 2)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    n_found = {m: sum(c.modality == m for c in cases) for m in ("ct", "mr")}
    if p["max_subjects"] is not None:
        keep = []
        for m in ("ct", "mr"):
            mine = sorted((c for c in cases if c.modality == m), key=lambda c: _natural(c.subject))
            keep += mine[: p["max_subjects"]]
        cases = keep
    by_mod = {m: [c.case for c in cases if c.modality == m] for m in ("ct", "mr")}
    n_folds = int(p["n_folds"])
    for m, ids in by_mod.items():
        if len(ids) < n_folds:
            raise ConfigError(f"{dataset}: {len(ids)} {m.upper()} subject(s) for {n_folds} folds; every fold needs a "
                              f"test subject of each modality (lower params.n_folds or add data to {raw_dir})")
    folds = {**assign_folds(by_mod["ct"], n_folds, seed, 0), **assign_folds(by_mod["mr"], n_folds, seed, 1)}
    pairs, fold_facts = cv_pairs({c: folds[c] for c in by_mod["ct"]}, {c: folds[c] for c in by_mod["mr"]}, n_folds,
                                 seed, p["max_train_pairs"], p["max_test_pairs"])
    shape = p["shape"]
    margin = float(p["roi_margin_mm"])

    # pass 1: ground truth of every case (values, grid, ROI); nothing written yet
    for c in tqdm(cases, desc=f"{dataset}: check", unit="case", leave=False):
        lab, aff, info = reader.labels(c)
        c.geometry = (tuple(lab.shape), aff)
        counts = {str(i + 1): int((lab == i + 1).sum()) for i in range(len(p["labels"]))}
        if p["roi"] == "image":
            c.roi = world_box(None, aff, lab.shape)
        else:
            mask = lab > 0 if p["roi"] == "labels" else info.pop("_heart")
            if not mask.any():
                what = f"the labels {p['labels']}" if p["roi"] == "labels" else "any heart structure"
                raise DataError(f"{c.label}: holds none of {what}, which place the region of interest "
                                f"(params.roi: {p['roi']}); use roi: image, or check the file")
            c.roi = world_box(mask, aff, lab.shape)
        info.pop("_heart", None)
        c.info.update(info)
        c.info.update({"native_shape": list(lab.shape),
                       "native_spacing_mm": [round(s, 5) for s in bp.spacing_of(aff)],
                       "orientation_in": "".join(nib.aff2axcodes(aff)),
                       "label_voxels_native": counts})
    ext = np.array([c.roi[1] - c.roi[0] + 2 * margin for c in cases])
    if p["spacing_mm"] is None:
        s = math.ceil(float(np.max(ext / np.asarray(shape, dtype=np.float64))) * 100 - 1e-6) / 100
        spacing, auto = [s, s, s], True
    else:
        spacing, auto = list(p["spacing_mm"]), False
    widest = cases[int(np.argmax((ext / np.asarray(shape, dtype=np.float64)).max(1)))].case
    if auto:
        log.info("%s: spacing %.2f mm set by the region of interest of %s (%s mm with the margin)", dataset, spacing[0],
                 widest, np.round(ext.max(0), 1).tolist())
    fov = np.asarray(shape) * np.asarray(spacing)
    clipped = [c.case for c, e in zip(cases, ext) if (e > fov + 1e-6).any()]
    if clipped:
        log.warning("%s: the region of interest (+ %g mm) of %d case(s) exceeds the grid (%s mm): %s", dataset,
                    margin, len(clipped), np.round(fov, 1).tolist(), clipped[:5])
    if shape != PAPER_SHAPE:
        log.warning("%s: output grid %s differs from the authors' 96^3: a scaled run", dataset,
                    "x".join(map(str, shape)))
    log.info("%s: %d CT + %d MR cases, %d folds, %d train / %d test pairs, grid %s at %s mm", dataset,
             len(by_mod["ct"]), len(by_mod["mr"]), n_folds, int((pairs.split == "train").sum()),
             int((pairs.split == "test").sum()), "x".join(map(str, shape)), spacing)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(out_dir.parent, out_dir.name)
    try:
        rows, per_case = [], {}
        for c in tqdm(cases, desc=f"{dataset}: cases", unit="case", leave=False):
            img, aff_i = reader.image(c)
            lab, aff_l, _ = reader.labels(c)
            if tuple(img.shape) != c.geometry[0] or not np.allclose(aff_i, c.geometry[1], atol=1e-3):
                raise DataError(f"{c.image}: image grid {img.shape} differs from its ground truth {c.label} "
                                f"{c.geometry[0]}")
            norm, scaling = normalise(img, c.modality, p, c.image)
            del img
            centre = (c.roi[0] + c.roi[1]) / 2.0
            dst = grid_affine(centre, spacing, shape)
            out_img = np.clip(resample_to_grid(norm, aff_i, dst, shape, order=1, antialias=bool(p["antialias"])),
                              0.0, 1.0).astype(np.float32)
            out_lab = resample_to_grid(lab, aff_l, dst, shape, order=0).astype(np.int16)
            row = {"case": c.case, "split": "cv", "test_fold": folds[c.case], "set": c.set_name,
                   "subject": c.subject, "ct": "", "mr": "", "seg": f"labels/{c.case}_seg.nii.gz",
                   "source_image": _rel(c.image, raw_dir), "source_label": _rel(c.label, raw_dir)}
            row[c.modality] = f"images/{c.case}.nii.gz"
            save_image(stage / row[c.modality], out_img, dst, dtype=np.float32)
            save_image(stage / row["seg"], out_lab, dst, dtype=np.int16)
            counts = {str(i + 1): int((out_lab == i + 1).sum()) for i in range(len(p["labels"]))}
            lost = [k for k, v in counts.items() if v == 0 and c.info["label_voxels_native"][k] > 0]
            if lost:
                log.warning("%s: label(s) %s vanish on the %s mm grid", c.case, lost, spacing)
            per_case[c.case] = {**c.info, "modality": c.modality, "set": c.set_name, "subject": c.subject,
                                "test_fold": folds[c.case], "intensity": scaling,
                                "roi_mm": {"low": np.round(c.roi[0], 2).tolist(),
                                           "high": np.round(c.roi[1], 2).tolist()},
                                "grid_origin_mm": np.round(dst[:3, 3], 3).tolist(), "label_voxels": counts,
                                "roi_clipped": c.case in clipped}
            rows.append(row)
        df = pd.DataFrame(rows, columns=["case", "split", "test_fold", "set", "subject", "ct", "mr", "seg",
                                         "source_image", "source_label"])
        _write_tsv(stage / "cases.tsv", df)
        _write_tsv(stage / "pairs.tsv", pairs)
        meta = _metadata(reader, dataset, raw_dir, p, seed, pairs, fold_facts, per_case, shape, spacing, auto,
                         clipped, n_found, extra_meta, t0)
        meta["grid"]["spacing_set_by"] = widest if auto else None
        with atomic_path(stage / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        _commit_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("%s: %d cases -> %s in %.1f s", dataset, len(df), out_dir, time.perf_counter() - t0)
    return df


def _metadata(reader, dataset, raw_dir, p, seed, pairs, fold_facts, per_case, shape, spacing, auto, clipped,
              n_found, extra, t0) -> dict:
    import scipy
    import SimpleITK

    fetched = read_fetch_record(raw_dir) or {}
    names = {str(i + 1): f"{reader.label_names[v]} ({v})" for i, v in enumerate(p["labels"])}
    params = {k: ({str(a): b for a, b in v.items()} if k == "label_aliases" else v) for k, v in p.items()}
    return {
        "name": dataset,
        "reader": reader.kind,
        "reference": PAPER_REFERENCE,
        "fetch_record": {k: fetched.get(k) for k in ("origin", "hash_status", "local_path", "fetched_at")}
        if fetched else None,
        "protocol": {
            "pairs": "inter-subject, cross-modality: fixed = CT case, moving = MR case",
            **extra.get("protocol", {}),
            "cross_validation": f"{p['n_folds']}-fold by subject (CT and MR subjects each split, seeded); fold k "
                                "tests CT(k) x MR(k) and trains on CT(not k) x MR(not k)",
            "n_folds": int(p["n_folds"]), "folds": fold_facts, "seed": int(seed),
            "n_pairs": {s: int((pairs["split"] == s).sum()) for s in ("train", "test")},
            "pre_alignment": "none here beyond centring each image on its ROI; the ANTs baselines run their own "
                             "affine stage",
        },
        "labels": {"written": names, "evaluated_in_paper": extra.get("evaluated")},
        "grid": {"shape": shape, "spacing_mm": spacing, "spacing_auto": auto, "paper_shape": PAPER_SHAPE,
                 "scaled_down": shape != PAPER_SHAPE, "roi": p["roi"], "roi_margin_mm": p["roi_margin_mm"],
                 "roi_clipped": clipped, "orientation": "RAS+ axis-aligned, centred on each case's ROI"},
        "preprocessing": [
            "labels " + ", ".join(f"{v} -> {i + 1}" for i, v in enumerate(p["labels"])) + ", others dropped",
            f"ROI: bounding box of {p['roi']} + {p['roi_margin_mm']} mm",
            "resample through the source affine onto the common grid (images trilinear"
            + (" + Gaussian anti-aliasing" if p["antialias"] else "") + ", labels nearest; outside the FOV 0)",
            f"CT: clip to HU {p['ct_window']} -> [0, 1]; MR: percentiles {p['mr_percentiles']} -> [0, 1], clipped",
        ],
        "stated_by_paper": "datasets and subject counts, MR -> CT (MM-WHS), T1 -> CT and T2 -> CT (CHAOS), evaluated "
                           "structures, Dice and ASD, 4-fold cross-validation",
        "from_authors_code": "96^3 grid, crop around the evaluated label with a 10-voxel (1 mm) margin, T1-DUAL "
                             "in-phase for CHAOS T1",
        "ours": "ROI union of the kept labels, one isotropic spacing for all cases, intensity windows and "
                "percentiles, fold assignment, every CT(k) x MR(k) pair as fold k's test set",
        "scale": {"cases": len(per_case), "cases_found": n_found, "shape": "x".join(map(str, shape))}
        if shape != PAPER_SHAPE or p["max_subjects"] is not None or p["max_test_pairs"] is not None
        or p["max_train_pairs"] is not None else {},
        "params": params,
        "cases": per_case,
        "software": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "nibabel": nib.__version__, "SimpleITK": SimpleITK.Version_VersionString()},
        "build_seconds": round(time.perf_counter() - t0, 1),
    }


# ------------------------------------------------------------------------------------------------ MM-WHS
def _mmwhs_reader(p: dict) -> _Reader:
    aliases: dict[int, int] = p["label_aliases"]

    def labels(c: RawCase) -> tuple[np.ndarray, np.ndarray, dict]:
        arr, aff, _ = bp.load_volume(c.label)
        seg = bp.label_to_int(arr, c.label)
        try:
            hdr = nib.load(str(c.image))
            ishape = tuple(hdr.shape[:3]) if len(hdr.shape) == 3 or hdr.shape[3:] == (1,) else tuple(hdr.shape)
            iaff = np.asarray(hdr.affine, dtype=np.float64)
        except Exception as exc:  # nibabel raises many types for corrupt headers
            raise DataError(f"{c.image}: cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc
        bp.check_same_grid(ishape, iaff, seg.shape, aff, c.image, c.label)
        values = sorted(int(v) for v in np.unique(seg))
        bad = [v for v in values if v not in MMWHS_LABELS and v not in aliases]
        if bad:
            raise DataError(f"{c.label}: label value(s) {bad[:8]} outside the MM-WHS labels {sorted(MMWHS_LABELS)}"
                            + (f" (and aliases {aliases})" if aliases else "")
                            + "; not an MM-WHS label map, or add the value to params.label_aliases")
        aliased = {}
        for src, dst in aliases.items():
            hit = seg == src
            if hit.any():
                aliased[str(src)] = int(hit.sum())
                seg[hit] = dst
        info = {"label_values": values, "aliased_voxels": aliased, "_heart": seg > 0}
        return remap(seg, p["labels"]), aff, info

    def image(c: RawCase) -> tuple[np.ndarray, np.ndarray]:
        arr, aff, _ = bp.load_volume(c.image)
        return bp.check_image(arr, c.image), aff

    return _Reader("mmwhs", labels, image, MMWHS_LABELS)


@keeps_locale
def build_mmwhs(raw_dir: str | Path, out_dir: str | Path, params: dict | None, seed: int, dataset: str = "mmwhs2017"
                ) -> pd.DataFrame:
    """Prepare MM-WHS 2017 for MR -> CT registration (``regbench preprocess`` kind ``mmwhs``; module docstring).

    Args:
        raw_dir: ``data/raw/mmwhs2017``.
        out_dir: ``data/prep/<experiment>/<dataset>``.
        params: ``labels`` ([500, 205]), ``label_aliases`` ({421: 420}), ``shape`` ([96, 96, 96] voxels),
            ``spacing_mm`` (null = auto, mm), ``roi`` (labels | heart | image), ``roi_margin_mm`` (10),
            ``ct_window`` ([-200, 400] HU), ``mr_percentiles`` ([0.5, 99.5]), ``antialias`` (true), ``n_folds`` (4),
            ``max_subjects``, ``max_train_pairs``, ``max_test_pairs`` (null).
        seed: seeds the folds and capped pair choices.
        dataset: registry name (messages, ``dataset.json``).

    Returns:
        The cases table as written.

    Raises:
        ConfigError: bad params, fewer subjects per modality than folds.
        DataError: see the module docstring (names the file).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = resolve_params("mmwhs", params)
    cases = discover_mmwhs(raw_dir)
    extra = {"protocol": {"fixed": "CT", "moving": "MR"},
             "evaluated": "left ventricle blood cavity (500) and myocardium (205), Table 1"}
    return _build(_mmwhs_reader(p), cases, raw_dir, out_dir, p, seed, dataset, extra)


# ------------------------------------------------------------------------------------------------ CHAOS
def _chaos_reader(p: dict) -> _Reader:
    def series(c: RawCase) -> DicomSeries:
        if c.series is None:
            c.series = scan_dicom_series(c.image, float(p["slice_tolerance"]))
        return c.series

    def labels(c: RawCase) -> tuple[np.ndarray, np.ndarray, dict]:
        s = series(c)
        vol, info = read_ground_truth(c.label, s, c.modality, p["png_order"])
        info = {**info, "dicom": s.info, "_heart": None}
        return remap(vol, p["labels"]), s.affine, info

    def image(c: RawCase) -> tuple[np.ndarray, np.ndarray]:
        s = series(c)
        return read_series_image(s), s.affine

    return _Reader("chaos", labels, image, CHAOS_LABELS)


@keeps_locale
def build_chaos(raw_dir: str | Path, out_dir: str | Path, params: dict | None, seed: int, dataset: str = "chaos"
                ) -> pd.DataFrame:
    """Prepare CHAOS 2019 for MR -> CT liver registration (``regbench preprocess`` kind ``chaos``; module docstring).

    Args:
        raw_dir: ``data/raw/chaos`` (the extracted ``CHAOS_Train_Sets.zip``).
        out_dir: ``data/prep/<experiment>/<dataset>``.
        params: ``moving`` (t1dual_inphase | t1dual_outphase | t2spir), ``labels`` ([1] = liver; ids 1-4 of
            :data:`CHAOS_LABELS`), ``shape`` ([96, 96, 96] voxels), ``spacing_mm`` (null = auto, mm), ``roi``
            (labels | image), ``roi_margin_mm`` (10), ``ct_window`` ([-100, 300] HU), ``mr_percentiles``
            ([0.5, 99.5]), ``antialias`` (true), ``slice_tolerance`` (0.1), ``png_order`` (instance | position),
            ``n_folds`` (4), ``max_subjects``, ``max_train_pairs``, ``max_test_pairs`` (null).
        seed: seeds the folds and capped pair choices.
        dataset: registry name (messages, ``dataset.json``).

    Returns:
        The cases table as written.

    Raises:
        ConfigError: bad params, fewer subjects per modality than folds.
        DataError: see the module docstring (names the file or folder).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = resolve_params("chaos", params)
    cases = discover_chaos(raw_dir, p["moving"])
    if p["labels"] != [1]:
        log.warning("%s: labels %s: the CT ground truth holds the liver only", dataset, p["labels"])
    extra = {"protocol": {"fixed": "CT", "moving": CHAOS_SEQUENCES[p["moving"]][2],
                          "png_stacking": "PNGs by name -> DICOM slices by "
                          + ("InstanceNumber" if p["png_order"] == "instance" else "position along the normal")},
             "evaluated": "liver, Table 2 (T1 -> CT and T2 -> CT)"}
    return _build(_chaos_reader(p), cases, raw_dir, out_dir, p, seed, dataset, extra)

"""Brain MRI readers and preprocessing for Zhu et al. 2021 (Med. Phys.): Mindboggle-101, LPBA40 and IXI.

Each dataset is read from its **official** distribution or from a **local archive** (a public repository's
copy of a subset, documented in ``docs/brain_mri.md`` and verified at fetch time by a committed per-file
manifest in ``config/manifests/``):

================  ===============================================================  =========================
dataset           official layout (under ``data/raw/<dataset>/``)                  local archive
================  ===============================================================  =========================
``mindboggle101`` ``<Set>_volumes/<Set>-<n>/t1weighted_brain.nii.gz`` and           ``Linguistics-<commit>/
                  ``labels.DKT31.manual[+aseg].nii.gz`` (per-set archives from      oasis_20/Atlases/atlas_<N>/``
                  OSF / mindboggle.info)                                            (OASIS-TRT-20 only)
``lpba40``        ``LPBA40/delineation_space/S##/S##.delineation.{skullstripped,    ``LGANet-Registration-
                  structure.label}.{hdr,img.gz}`` (Analyze, LONI zip)               <commit>/data/LPBA40/``
``ixi``           flat ``IXI###-<site>-####-T1.nii.gz`` (``IXI-T1.tar``), no labels ``NiChart_Project-<commit>/
                                                                                    sample_datasets/
                                                                                    demo_dataset_IXI/``
================  ===============================================================  =========================

:func:`build_brain` (``regbench preprocess`` kind ``brain``) finds the cases (:func:`discover`), checks them
against the committed case list (official: the release's subject names; local: the manifest), then for each
case: checks the image (finite) and the label map (integers, same grid as the image), normalises
intensities (Nyul histogram standardisation to [0, 1] within the brain by default; Zhu et al. Sec. 3.A
"histogram and intensity normalization"), reorients to RAS+, resamples to ``params.shape`` (default 192^3, Sec. 2.C;
images linear, labels nearest; the affine records the resized spacing in mm) and writes the grouped label
map (``config/labels/*.yaml``) beside the fine one. The protocol (split, pairs) is written once to
``pairs.tsv``. Everything is built in a hidden staging folder that replaces ``out_dir`` only when complete.

Parameters: :data:`PARAMS_SCHEMA` (JSON schema, validated by :func:`resolve_params`), defaults per dataset in
:data:`DEFAULTS`; ``docs/brain_mri.md`` documents each option.

Command line (maintenance)::

    python -m regbench.datasets.brain manifest <extracted archive top folder> config/manifests/<name>.tsv
    python -m regbench.datasets.brain ixi-volumes <extracted IXI30 top folder>   # DLMUSE ROI volumes (TSV)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from ..errors import ConfigError, DataError
from ..io import save_image
from ..utils import atomic_path, get_logger, sha256_file, staging_dir
from . import brain_prep as bp
from .analyze import analyze_pair
from .fetch import read_fetch_record
from .registry import read_manifest_tsv

__all__ = [
    "DEFAULTS",
    "LOCAL_ARCHIVES",
    "MINDBOGGLE_SETS",
    "PARAMS_SCHEMA",
    "RawCase",
    "build_brain",
    "discover",
    "load_label_groups",
    "make_pairs",
    "make_split",
    "resolve_params",
    "write_manifest",
]

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO_ROOT / "config"
PAPER_SHAPE = [192, 192, 192]
PAPER_REFERENCE = "Zhu et al., Med. Phys. 48(3):1182-1196, 2021 (Secs. 2.C, 3.A, 3.D, 3.E)"

# ------------------------------------------------------------------------------------- committed case lists

#: Mindboggle-101 subject sets (folder prefix) -> number of subjects, and the archive each ships in
#: (Klein & Tourville 2012; the Extra-18 archive holds five small sets).
MINDBOGGLE_SETS: dict[str, dict[str, Any]] = {
    "OASIS-TRT-20": {"n": 20, "archive": "OASIS-TRT-20_volumes.tar.gz"},
    "NKI-RS-22": {"n": 22, "archive": "NKI-RS-22_volumes.tar.gz"},
    "NKI-TRT-20": {"n": 20, "archive": "NKI-TRT-20_volumes.tar.gz"},
    "MMRR-21": {"n": 21, "archive": "MMRR-21_volumes.tar.gz"},
    "HLN-12": {"n": 12, "archive": "Extra-18_volumes.tar.gz"},
    "Colin27": {"n": 1, "archive": "Extra-18_volumes.tar.gz"},
    "Twins-2": {"n": 2, "archive": "Extra-18_volumes.tar.gz"},
    "MMRR-3T7T-2": {"n": 2, "archive": "Extra-18_volumes.tar.gz"},
    "Afterthought": {"n": 1, "archive": "Extra-18_volumes.tar.gz"},
}
#: Set names accepted in ``split.train_sets``/``test_sets`` that stand for several sets.
MINDBOGGLE_SET_ALIASES = {"Extra-18": ["HLN-12", "Colin27", "Twins-2", "MMRR-3T7T-2", "Afterthought"]}
_MB_SUBJECT = re.compile(r"^(?P<set>" + "|".join(re.escape(s) for s in MINDBOGGLE_SETS) + r")-(?P<n>\d+)$")
_MB_LABEL_FILES = {"DKT31.manual": "labels.DKT31.manual.nii.gz", "DKT31.manual+aseg": "labels.DKT31.manual+aseg.nii.gz"}
_MB_MARKERS = ("t1weighted_brain.nii.gz", "t1weighted.nii.gz", *_MB_LABEL_FILES.values())

#: LPBA40 subjects S01..S40 (Shattuck et al. 2008).
LPBA40_SUBJECTS = [f"S{i:02d}" for i in range(1, 41)]
_LPBA_FILE = re.compile(
    r"^(?P<id>S\d{2})\.delineation\.(?P<kind>skullstripped|structure\.label)\.(?P<ext>hdr|img|img\.gz|nii\.gz|nii)$"
)

_IXI_OFFICIAL = re.compile(r"^(?P<id>IXI\d{3}-(?P<site>Guys|HH|IOP)-\d{4})-T1\.nii(\.gz)?$")
_IXI_LOCAL_T1 = re.compile(r"^(?P<id>IXI\d{3}-(?P<site>Guys|HH|IOP)-\d{4})_T1\.nii\.gz$")
_IXI_LOCAL_SEG = re.compile(r"^(?P<id>IXI\d{3}-(?P<site>Guys|HH|IOP)-\d{4})_T1_DLMUSE\.nii\.gz$")
_IXI_ANY_SEG = re.compile(r"^(?P<id>IXI\d{3}-(?P<site>Guys|HH|IOP)-\d{4})[-_]T1_DLMUSE\.nii\.gz$")

#: The three local archives at hand: a public repository's files at one commit under ``<repo>-<commit>/``.
LOCAL_ARCHIVES: dict[str, dict[str, Any]] = {
    "mindboggle101": {
        "layout": "linguistics_oasis20",
        "repository": "https://github.com/btcarter/Linguistics",
        "commit": "8a07c26300d2561d635bba3fef5c75f311b1c661",
        "top": "Linguistics-8a07c26300d2561d635bba3fef5c75f311b1c661",
        "archive": "Linguistics-8a07c26300d2561d635bba3fef5c75f311b1c661-oasis_20.tar",
        "data_dir": "oasis_20/Atlases",
        "manifest": "mindboggle101_oasis20.tsv",
        "differences": [
            "only the 20 OASIS-TRT-20 subjects, in folders atlas_<N> (N = 1..20; the repository's names, the "
            "numbering was not checked against the official OASIS-TRT-20-<N>)",
            "labels.DKT31.manual+aseg.nii.gz is absent; atlas_<N>_labels.nii.gz holds the same 62 cortical "
            "labels voxel for voxel plus 37 non-cortical FreeSurfer labels (read as the +aseg variant)",
            "label maps stored as float32 (checked to hold integers before casting)",
            "the full-head t1weighted.nii.gz and the MNI152 variants are absent",
        ],
    },
    "lpba40": {
        "layout": "lganet",
        "repository": "https://github.com/huangzyong/LGANet-Registration",
        "commit": "cf193e3a8c05fe2bfc4ec53098fe99d4ba886627",
        "top": "LGANet-Registration-cf193e3a8c05fe2bfc4ec53098fe99d4ba886627",
        "archive": "LGANet-Registration-cf193e3a8c05fe2bfc4ec53098fe99d4ba886627-LPBA40.tar",
        "data_dir": "data/LPBA40",
        "manifest": "lpba40_lganet.tsv",
        "differences": [
            "preprocessed by LGANet: 160x192x160 at 1 mm in LPS orientation (not the LONI delineation-space grid)",
            "NIfTI instead of the Analyze .hdr/.img.gz pairs; images float64 scaled to [0, 1], labels uint8",
            "S01 is stored as fixed.nii.gz; S02-S10 under test/, S11-S40 under train/ (LGANet's own split, "
            "not Zhu et al.'s random 30/10 split; kept as the archive_split column only)",
        ],
    },
    "ixi": {
        "layout": "nichart_ixi30",
        "repository": "https://github.com/CBICA/NiChart_Project",
        "commit": "96c05acd72d035cf9196c27a94cb299d09cdf803",
        "top": "NiChart_Project-96c05acd72d035cf9196c27a94cb299d09cdf803",
        "archive": "NiChart_Project-96c05acd72d035cf9196c27a94cb299d09cdf803-IXI30.tar",
        "data_dir": "sample_datasets/demo_dataset_IXI",
        "manifest": "ixi30_nichart.tsv",
        "differences": [
            "30 of the about 581 IXI T1 subjects (all from the HH site), downsampled by NiChart to 120x120x90 at "
            "2 mm, PSR orientation, intensities quantised to about 215 levels, full head (not skull-stripped)",
            "file names IXI<id>-HH-<n>_T1.nii.gz (underscore) instead of IXI-T1.tar's IXI<id>-HH-<n>-T1.nii.gz",
            "with DLMUSE automatic labels (148 MUSE ROIs, dlmuse_seg/*_T1_DLMUSE.nii.gz); IXI itself ships no "
            "labels and Zhu et al.'s 95-ROI manual labelling is not public",
        ],
    },
}

# --------------------------------------------------------------------------------------------- parameters

_STR_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True}
#: JSON schema of ``datasets.<name>.params`` for ``preprocess: brain`` (see docs/brain_mri.md).
PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "reader": {"enum": ["mindboggle101", "lpba40", "ixi"],
                   "description": "which reader (default: the dataset name)"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 8, "maximum": 512},
                  "minItems": 3, "maxItems": 3, "description": "output grid in voxels (paper: 192^3)"},
        "antialias": {"type": "boolean", "description": "Gaussian prefilter before shrinking images"},
        "intensity": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "method": {"enum": ["nyul", "minmax"]},
                "percentiles": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 100},
                                "minItems": 2, "maxItems": 2},
            },
        },
        "brain_mask": {"enum": ["nonzero", "labels"]},
        "skull_strip": {"type": "boolean", "description": "set the image to 0 outside the brain mask"},
        "labels": {"enum": list(_MB_LABEL_FILES), "description": "Mindboggle label file variant"},
        "label_groups": {"type": ["string", "null"], "minLength": 1,
                         "description": "label grouping YAML (config/labels/...), null for none"},
        "split": {
            "type": "object",
            "required": ["by"],
            "oneOf": [
                {"properties": {"by": {"const": "random"},
                                "n_test": {"type": "integer", "minimum": 1},
                                "n_train": {"type": ["integer", "null"], "minimum": 1}},
                 "required": ["by", "n_test"], "additionalProperties": False},
                {"properties": {"by": {"const": "set"}, "train_sets": _STR_LIST, "test_sets": _STR_LIST},
                 "required": ["by", "train_sets", "test_sets"], "additionalProperties": False},
                {"properties": {"by": {"const": "list"}, "train": {"type": "array", "items": {"type": "string"}},
                                "test": _STR_LIST},
                 "required": ["by", "train", "test"], "additionalProperties": False},
                {"properties": {"by": {"const": "all_test"}}, "additionalProperties": False},
            ],
        },
        "train_pairs": {"enum": ["all", "none"]},
        "test_pairs": {"oneOf": [{"enum": ["all", "atlas"]}, {"type": "string", "pattern": "^random[1-9][0-9]*$"}]},
        "atlas": {"type": ["string", "null"], "minLength": 1},
        "subjects": {"oneOf": [{"type": "null"}, _STR_LIST]},
        "max_subjects": {"type": ["integer", "null"], "minimum": 2},
        "allow_unlabelled": {"type": "boolean"},
    },
}

_COMMON: dict[str, Any] = {
    "shape": list(PAPER_SHAPE),
    "antialias": True,
    "intensity": {"method": "nyul", "percentiles": [1.0, 99.0]},
    "brain_mask": "nonzero",
    "skull_strip": False,
    "train_pairs": "all",
    "test_pairs": "all",
    "atlas": None,
    "subjects": None,
    "max_subjects": None,
    "allow_unlabelled": False,
}
#: Defaults per reader: Zhu et al.'s protocol where the paper states it (Sec. 3.A), else documented choices.
DEFAULTS: dict[str, dict[str, Any]] = {
    "mindboggle101": {
        **_COMMON,
        "labels": "DKT31.manual",
        "label_groups": "config/labels/mindboggle_regions.yaml",
        # Zhu et al. Sec. 3.A after Kuang & Schmah (FAIM, 2019): train NKI-RS-22 + NKI-TRT-20 (42), test OASIS-TRT-20
        "split": {"by": "set", "train_sets": ["NKI-RS-22", "NKI-TRT-20"], "test_sets": ["OASIS-TRT-20"]},
    },
    "lpba40": {
        **_COMMON,
        "label_groups": "config/labels/lpba40_rois.yaml",
        # Sec. 3.A: "30 images were randomly selected for training and the remaining 10 ... testing"
        "split": {"by": "random", "n_test": 10, "n_train": None},
    },
    "ixi": {
        **_COMMON,
        "label_groups": "config/labels/ixi_rois.yaml",
        "brain_mask": "labels",
        "skull_strip": True,
        # Sec. 3.A/3.E: all 30 images for testing (the network is the one trained on Mindboggle-101)
        "split": {"by": "all_test"},
    },
}


def resolve_params(reader: str, params: dict | None) -> dict:
    """The reader's :data:`DEFAULTS` overridden by ``params`` (``intensity`` merged key by key, ``split``
    replaced as a whole), validated against :data:`PARAMS_SCHEMA`.

    Raises:
        ConfigError: unknown reader, unknown key or bad value (the message names the key path).
    """
    import jsonschema
    from jsonschema.exceptions import best_match

    if reader not in DEFAULTS:
        raise ConfigError(f"preprocess brain: unknown reader {reader!r}; expected one of {sorted(DEFAULTS)}")
    params = dict(params or {})
    errors = list(jsonschema.Draft202012Validator(PARAMS_SCHEMA).iter_errors(json.loads(json.dumps(params))))
    if errors:
        e = best_match(errors)
        where = ".".join(str(x) for x in e.absolute_path) or "<params>"
        raise ConfigError(f"preprocess brain ({reader}) params: {where}: {e.message}")
    p = copy.deepcopy(DEFAULTS[reader])
    for key, value in params.items():
        if key == "intensity":
            p["intensity"] = {**p["intensity"], **value}
        else:
            p[key] = copy.deepcopy(value)
    p["reader"] = reader
    lo, hi = p["intensity"]["percentiles"]
    if not lo < hi:
        raise ConfigError(f"preprocess brain ({reader}) params: intensity.percentiles: need low < high, got {[lo, hi]}")
    if "labels" in params and reader != "mindboggle101":
        raise ConfigError(f"preprocess brain ({reader}) params: labels: only the Mindboggle reader has label variants")
    if p["split"]["by"] == "set" and reader != "mindboggle101":
        raise ConfigError(f"preprocess brain ({reader}) params: split.by: 'set' is for Mindboggle-101 only")
    if p["test_pairs"] == "atlas" and not p["atlas"]:
        raise ConfigError(f"preprocess brain ({reader}) params: test_pairs 'atlas' needs atlas: <case id>")
    return p


# -------------------------------------------------------------------------------------------- discovery


@dataclass
class RawCase:
    """One subject as found in the raw folder.

    Attributes:
        case: case id (``OASIS-TRT-20-3``, ``atlas_3``, ``S07``, ``IXI132-HH-1415``).
        image: T1 image file (NIfTI, or the ``.hdr`` of an Analyze pair).
        label: label map file, or ``None`` (IXI official release).
        set: subset (Mindboggle set, ``LPBA40``, IXI site).
        extra: further columns for ``cases.tsv`` (e.g. ``archive_split`` of the LGANet copy).
    """

    case: str
    image: Path
    label: Path | None
    set: str
    extra: dict = field(default_factory=dict)


@dataclass
class Layout:
    """What :func:`discover` found: the layout name (``official`` or a local archive's), the cases (sorted)
    and facts for ``dataset.json``."""

    name: str
    cases: list[RawCase]
    info: dict = field(default_factory=dict)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """All files and folders under ``root`` (following symlinked folders, as ``fetch`` links them)."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        d = Path(dirpath)
        dirs += [d / n for n in dirnames]
        files += [d / n for n in sorted(filenames)]
    return files, dirs


def _find_local_root(raw_dir: Path, data_dir: str) -> Path | None:
    """The folder holding ``data_dir`` (``raw/<top>/data_dir`` as fetch extracts, or ``raw/data_dir``)."""
    depth = len(Path(data_dir).parts)
    hits = sorted(p.parents[depth - 1] for p in raw_dir.glob(f"*/{data_dir}") if p.is_dir())
    if not hits and (raw_dir / data_dir).is_dir():
        hits = [raw_dir]
    if len(hits) > 1:
        raise DataError(f"{raw_dir}: several copies of {data_dir} found ({[str(h) for h in hits]}); keep one")
    return hits[0] if hits else None


def _manifest_rows(reader: str) -> dict[str, str]:
    tsv = CONFIG_DIR / "manifests" / LOCAL_ARCHIVES[reader]["manifest"]
    if not tsv.is_file():
        raise ConfigError(f"{tsv}: the committed manifest of the {reader} local archive is missing from the checkout")
    return read_manifest_tsv(tsv)


def _check_against_manifest(reader: str, root: Path, data_dir: str, pattern: re.Pattern) -> None:
    """Compare the data files present under ``root/data_dir`` (names matching ``pattern``) with the manifest.

    Raises:
        DataError: a manifest file is missing (a subject was removed) or a data file is not in the manifest
            (an extra subject); the message names the file, the manifest and the fix.
    """
    rows = _manifest_rows(reader)
    tsv = CONFIG_DIR / "manifests" / LOCAL_ARCHIVES[reader]["manifest"]
    expected = {r for r in rows if r.startswith(data_dir + "/") and pattern.match(Path(r).name)}
    present = set()
    for f in _walk(root / data_dir)[0]:
        if pattern.match(f.name):
            present.add(f.relative_to(root).as_posix())
    missing = sorted(expected - present)
    extra = sorted(present - expected)
    if missing:
        raise DataError(
            f"{root / missing[0]}: listed in the committed case manifest {tsv} but missing"
            + (f" ({len(missing)} files missing in all)" if len(missing) > 1 else "")
            + f"; the {reader} raw folder is incomplete: delete it and fetch it again from "
            f"{LOCAL_ARCHIVES[reader]['archive']} (regbench fetch {reader} --local-path ...)"
        )
    if extra:
        raise DataError(
            f"{root / extra[0]}: not in the committed case manifest {tsv}"
            + (f" ({len(extra)} unexpected files in all)" if len(extra) > 1 else "")
            + f"; an extra subject was added to the {reader} local archive: remove it (or add it to the manifest "
            f"on purpose and say so in docs/brain_mri.md)"
        )


def _discover_mindboggle(raw_dir: Path, p: dict) -> Layout:
    spec = LOCAL_ARCHIVES["mindboggle101"]
    local_root = _find_local_root(raw_dir, spec["data_dir"])
    files, dirs = _walk(raw_dir)
    official_dirs = sorted({f.parent for f in files
                            if f.name in _MB_MARKERS and not f.parent.name.startswith("atlas_")})
    if local_root is not None and official_dirs:
        raise DataError(
            f"{raw_dir}: holds both the official Mindboggle-101 layout ({official_dirs[0]}) and the local "
            f"{spec['archive']} copy ({local_root}); keep one of them"
        )
    variant = p["labels"]
    if local_root is not None:
        atl = re.compile(r"^(t1weighted_brain|labels\.DKT31\.manual|atlas_\d+_labels)\.nii\.gz$")
        _check_against_manifest("mindboggle101", local_root, spec["data_dir"], atl)
        base = local_root / spec["data_dir"]
        cases = []
        for d in sorted((x for x in base.iterdir() if x.is_dir()), key=lambda x: _natural(x.name)):
            m = re.fullmatch(r"atlas_(\d+)", d.name)
            if not m:
                raise DataError(f"{d}: unexpected folder in {base} (expected atlas_<N>, N = 1..20); remove it")
            lab = d / ("labels.DKT31.manual.nii.gz" if variant == "DKT31.manual" else f"{d.name}_labels.nii.gz")
            cases.append(RawCase(d.name, d / "t1weighted_brain.nii.gz", lab, "OASIS-TRT-20",
                                 {"source_subject": f"oasis_20/Atlases/{d.name}"}))
        return Layout(spec["layout"], cases, {"local_archive": _local_info("mindboggle101")})
    if not official_dirs:
        raise DataError(
            f"{raw_dir}: no Mindboggle-101 subject folder found (expected <Set>_volumes/<Set>-<n>/"
            f"t1weighted_brain.nii.gz from the official per-set archives, or the local "
            f"{spec['archive']}); run `regbench fetch mindboggle101` first"
        )
    found: dict[str, dict[int, Path]] = {}
    for d in official_dirs:
        m = _MB_SUBJECT.match(d.name)
        if not m:
            raise DataError(
                f"{d}: unexpected subject folder (Mindboggle-101 subjects are named <Set>-<n>, sets "
                f"{', '.join(MINDBOGGLE_SETS)}); remove it"
            )
        s, n = m.group("set"), int(m.group("n"))
        if not 1 <= n <= MINDBOGGLE_SETS[s]["n"]:
            raise DataError(
                f"{d}: extra subject: set {s} has subjects {s}-1..{s}-{MINDBOGGLE_SETS[s]['n']} in the official "
                f"release; remove the folder"
            )
        if n in found.setdefault(s, {}):
            raise DataError(f"{d}: subject {d.name} found twice (also {found[s][n]}); keep one copy")
        found[s][n] = d
    cases = []
    for s in sorted(found):
        missing = [f"{s}-{i}" for i in range(1, MINDBOGGLE_SETS[s]["n"] + 1) if i not in found[s]]
        if missing:
            parent = next(iter(found[s].values())).parent
            raise DataError(
                f"{parent / missing[0]}: subject missing from set {s} ({len(missing)} of "
                f"{MINDBOGGLE_SETS[s]['n']} missing: {missing[:5]}); re-extract {MINDBOGGLE_SETS[s]['archive']} "
                f"into the raw folder"
            )
        for n in sorted(found[s]):
            d = found[s][n]
            cases.append(RawCase(d.name, d / "t1weighted_brain.nii.gz", d / _MB_LABEL_FILES[variant], s,
                                 {"source_subject": d.name}))
    for c in cases:
        for f in (c.image, c.label):
            if not f.is_file():
                raise DataError(
                    f"{f}: missing from subject folder {f.parent.name}; re-extract "
                    f"{MINDBOGGLE_SETS[c.set]['archive']}"
                )
    return Layout("official", cases, {"sets": {s: len(v) for s, v in found.items()}})


def _discover_lpba40(raw_dir: Path, p: dict) -> Layout:
    spec = LOCAL_ARCHIVES["lpba40"]
    local_root = _find_local_root(raw_dir, spec["data_dir"])
    files, _ = _walk(raw_dir)
    analyze = [f for f in files
               if _LPBA_FILE.match(f.name) and _LPBA_FILE.match(f.name).group("ext") in ("hdr", "img", "img.gz")]
    if local_root is not None and analyze:
        raise DataError(
            f"{raw_dir}: holds both the LONI Analyze files ({analyze[0]}) and the local {spec['archive']} copy "
            f"({local_root}); keep one of them"
        )
    if local_root is not None:
        pat = re.compile(r"^(S\d{2}\.delineation\.(skullstripped|structure\.label)\.nii\.gz|fixed\.nii\.gz)$")
        _check_against_manifest("lpba40", local_root, spec["data_dir"], pat)
        base = local_root / spec["data_dir"]
        cases = []
        for sid in LPBA40_SUBJECTS:
            if sid == "S01":
                img, where = base / "fixed.nii.gz", "fixed"
            else:
                where = "test" if int(sid[1:]) <= 10 else "train"
                img = base / where / f"{sid}.delineation.skullstripped.nii.gz"
            lab = base / "label" / f"{sid}.delineation.structure.label.nii.gz"
            cases.append(RawCase(sid, img, lab, "LPBA40", {"archive_split": where}))
        return Layout(spec["layout"], cases, {"local_archive": _local_info("lpba40")})
    if not analyze:
        raise DataError(
            f"{raw_dir}: no LPBA40 subject found (expected LPBA40/delineation_space/S##/S##.delineation."
            f"{{skullstripped,structure.label}}.{{hdr,img.gz}} from LONI's zip, or the local {spec['archive']}); "
            f"run `regbench fetch lpba40` first"
        )
    by_id: dict[str, dict[str, list[Path]]] = {}
    for f in analyze:
        m = _LPBA_FILE.match(f.name)
        by_id.setdefault(m.group("id"), {}).setdefault(m.group("kind"), []).append(f)
    extra = sorted(set(by_id) - set(LPBA40_SUBJECTS))
    if extra:
        f = next(iter(by_id[extra[0]].values()))[0]
        raise DataError(f"{f}: extra subject {extra[0]} (LPBA40 has S01..S40); remove it")
    missing = [s for s in LPBA40_SUBJECTS if s not in by_id]
    if missing:
        some = next(iter(next(iter(by_id.values())).values()))[0]
        raise DataError(
            f"{some.parent.parent / missing[0]}: subject missing ({len(missing)} of 40 missing: {missing[:5]}); "
            f"re-extract LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip (both zip levels)"
        )
    cases = []
    for sid in LPBA40_SUBJECTS:
        kinds = by_id[sid]
        paths = {}
        for kind in ("skullstripped", "structure.label"):
            got = kinds.get(kind)
            if not got:
                other = next(iter(kinds.values()))[0]
                raise DataError(
                    f"{other.parent / f'{sid}.delineation.{kind}.hdr'}: missing for subject {sid}; re-extract it "
                    f"from the LONI zip"
                )
            dirs = sorted({g.parent for g in got})
            if len(dirs) > 1:
                raise DataError(f"{got[0]}: subject {sid} found in several folders {[str(d) for d in dirs]}; keep one")
            hdr, _img = analyze_pair(got[0])
            paths[kind] = hdr
        cases.append(RawCase(sid, paths["skullstripped"], paths["structure.label"], "LPBA40"))
    return Layout("official", cases, {})


def _discover_ixi(raw_dir: Path, p: dict) -> Layout:
    spec = LOCAL_ARCHIVES["ixi"]
    local_root = _find_local_root(raw_dir, spec["data_dir"])
    files, _ = _walk(raw_dir)
    official = [f for f in files if _IXI_OFFICIAL.match(f.name)]
    if local_root is not None and official:
        raise DataError(
            f"{raw_dir}: holds both IXI-T1.tar files ({official[0]}) and the local {spec['archive']} copy "
            f"({local_root}); keep one of them"
        )
    if local_root is not None:
        pat = re.compile(r"^IXI\d{3}-(Guys|HH|IOP)-\d{4}_T1(_DLMUSE)?\.nii\.gz$")
        _check_against_manifest("ixi", local_root, spec["data_dir"], pat)
        base = local_root / spec["data_dir"]
        cases = []
        for f in sorted((base / "t1").iterdir()):
            m = _IXI_LOCAL_T1.match(f.name)
            if not m:
                continue
            seg = base / "dlmuse_seg" / f"{m.group('id')}_T1_DLMUSE.nii.gz"
            if not seg.is_file():
                raise DataError(f"{seg}: DLMUSE label map missing for {f}; fetch the ixi dataset again")
            cases.append(RawCase(m.group("id"), f, seg, m.group("site"), {"label_source": "DLMUSE (automatic)"}))
        return Layout(spec["layout"], cases, {"local_archive": _local_info("ixi")})
    if not official:
        raise DataError(
            f"{raw_dir}: no IXI T1 image found (expected IXI###-<site>-####-T1.nii.gz from IXI-T1.tar, or the "
            f"local {spec['archive']}); run `regbench fetch ixi` first"
        )
    segs = {}
    for f in files:
        m = _IXI_ANY_SEG.match(f.name)
        if m:
            segs[m.group("id")] = f
    cases = []
    seen = {}
    for f in sorted(official, key=lambda x: x.name):
        m = _IXI_OFFICIAL.match(f.name)
        cid = m.group("id")
        if cid in seen:
            raise DataError(f"{f}: subject {cid} found twice (also {seen[cid]}); keep one copy")
        seen[cid] = f
        cases.append(RawCase(cid, f, segs.get(cid), m.group("site"),
                             {"label_source": "DLMUSE (user-provided)" if cid in segs else ""}))
    n_lab = sum(c.label is not None for c in cases)
    if n_lab and n_lab != len(cases):
        nolab = next(c for c in cases if c.label is None)
        raise DataError(
            f"{nolab.image}: no label map <id>_T1_DLMUSE.nii.gz for this subject while {n_lab} others have one; "
            f"provide labels for every subject (or remove them all)"
        )
    if not n_lab and not p["allow_unlabelled"]:
        raise DataError(
            f"{raw_dir}: the official IXI release ships no label maps, so DSC/HD/ASSD cannot be evaluated. Put a "
            f"label map per subject beside the images as <id>_T1_DLMUSE.nii.gz (e.g. DLMUSE output, as in the "
            f"local {spec['archive']}), or set params.allow_unlabelled: true for an image-only dataset"
        )
    return Layout("official", cases, {"labels": "user-provided DLMUSE" if n_lab else "none"})


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _local_info(reader: str) -> dict:
    a = LOCAL_ARCHIVES[reader]
    return {k: a[k] for k in ("repository", "commit", "archive", "differences")} | {
        "manifest": f"config/manifests/{a['manifest']}"}


def discover(reader: str, raw_dir: str | Path, params: dict | None = None) -> Layout:
    """Find the cases of ``reader``'s dataset under ``raw_dir`` (official layout or local archive).

    Checks the subjects against the committed case list (official: the release's subject names and set
    sizes; local: ``config/manifests/<archive>.tsv``) and that each subject has its image and label files.

    Raises:
        DataError: nothing found, both layouts present, a subject missing or extra, a file missing (an
            Analyze ``.img`` without its ``.hdr`` included); every message names the file and the fix.
        ConfigError: bad params.
    """
    resolved = params is not None and reader in DEFAULTS and set(DEFAULTS[reader]) | {"reader"} <= set(params)
    p = params if resolved else resolve_params(reader, params)
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw folder not found; run `regbench fetch {reader}` first")
    fn = {"mindboggle101": _discover_mindboggle, "lpba40": _discover_lpba40, "ixi": _discover_ixi}[reader]
    layout = fn(raw_dir, p)
    layout.cases.sort(key=lambda c: _natural(c.case))
    return layout


# ----------------------------------------------------------------------------------------- label groups


def _resolve_config_path(path: str) -> Path:
    p = Path(path)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]):
        if cand.is_file():
            return cand
    raise ConfigError(f"label grouping file {path!r} not found (looked in {Path.cwd()} and {REPO_ROOT})")


def load_label_groups(path: str | Path) -> dict:
    """Read a label grouping file (``config/labels/*.yaml``; format in ``config/labels/README.md``).

    Returns ``{"path", "column", "labels": {id: name}, "groups": {gid: {"name", "members": [ids]}},
    "excluded": {id: reason}, "lut": {raw id: group id}, ...}`` with integer keys.

    Raises:
        ConfigError: unreadable YAML, missing keys, a member or excluded id absent from ``labels``, an id in two
            groups or both grouped and excluded, group id 0.
    """
    from .registry import load_yaml

    p = _resolve_config_path(str(path))
    doc = load_yaml(p)
    where = str(p)
    if not isinstance(doc, dict) or not {"column", "labels", "groups"} <= set(doc):
        raise ConfigError(f"{where}: a label grouping needs the keys column, labels, groups")
    col = doc["column"]
    if not isinstance(col, str) or not re.fullmatch(r"seg_[a-z0-9_]+", col):
        raise ConfigError(f"{where}: column: must be seg_<name> (a cases.tsv label column), got {col!r}")
    labels = {int(k): str(v) for k, v in (doc["labels"] or {}).items()}
    groups, lut = {}, {}
    for gid, g in (doc["groups"] or {}).items():
        gid = int(gid)
        if gid <= 0:
            raise ConfigError(f"{where}: groups.{gid}: group ids must be >= 1 (0 is background)")
        if not isinstance(g, dict) or "name" not in g or not g.get("members"):
            raise ConfigError(f"{where}: groups.{gid}: needs name and a non-empty members list")
        for m in g["members"]:
            m = int(m)
            if m not in labels:
                raise ConfigError(f"{where}: groups.{gid}.members: label {m} is not listed under labels")
            if m in lut:
                raise ConfigError(f"{where}: label {m} is in groups {lut[m]} and {gid}")
            lut[m] = gid
        groups[gid] = {"name": str(g["name"]), "members": [int(m) for m in g["members"]]}
    excluded = {int(k): str(v) for k, v in (doc.get("excluded") or {}).items()}
    for k in excluded:
        if k not in labels:
            raise ConfigError(f"{where}: excluded: label {k} is not listed under labels")
        if k in lut:
            raise ConfigError(f"{where}: label {k} is both excluded and in group {lut[k]}")
    out = {k: v for k, v in doc.items() if k not in ("labels", "groups", "excluded")}
    out.update({"path": where, "column": col, "labels": labels, "groups": groups, "excluded": excluded, "lut": lut})
    return out


def remap_labels(seg: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """Map raw label ids to group ids (ids not in ``lut`` -> 0); int16 output."""
    out = np.zeros(seg.shape, dtype=np.int16)
    if not lut:
        return out
    top = max(int(seg.max()), max(lut)) + 1
    table = np.zeros(top, dtype=np.int16)
    for k, v in lut.items():
        table[k] = v
    return table[seg]


# --------------------------------------------------------------------------------------------- protocol


def _expand_sets(names: list[str]) -> list[str]:
    out = []
    for n in names:
        out += MINDBOGGLE_SET_ALIASES.get(n, [n])
    return out


def make_split(cases: list[RawCase], p: dict, seed: int) -> dict[str, str]:
    """``{case: "train"|"test"}`` per ``p["split"]`` (see docs/brain_mri.md); cases left out of both sets of a
    set/list split are not returned (not used).

    ``random``: ``numpy.random.default_rng(seed).permutation`` of the sorted case ids; the first ``n_test``
    are the test set, the next ``n_train`` (default: all the rest) the training set.

    Raises:
        ConfigError: n_test too large, unknown case ids or sets, overlapping train/test, empty test set.
        DataError: a named set is not in the raw folder (the message lists the sets at hand and the options).
    """
    s = p["split"]
    ids = [c.case for c in cases]
    by = s["by"]
    if by == "all_test":
        return {c: "test" for c in ids}
    if by == "random":
        n_test = int(s["n_test"])
        n_train = s.get("n_train")
        if n_test >= len(ids):
            raise ConfigError(f"split: n_test = {n_test} but only {len(ids)} subjects are available; lower n_test")
        rng = np.random.default_rng(int(seed))
        perm = [ids[i] for i in rng.permutation(len(ids))]
        test = perm[:n_test]
        rest = perm[n_test:]
        if n_train is not None:
            if n_train > len(rest):
                raise ConfigError(f"split: n_train = {n_train} but only {len(rest)} subjects remain after the test set")
            rest = rest[: int(n_train)]
        out = {c: "test" for c in test} | {c: "train" for c in rest}
        return {c: out[c] for c in ids if c in out}
    if by == "set":
        sets_at_hand = sorted({c.set for c in cases})
        train_sets, test_sets = _expand_sets(s["train_sets"]), _expand_sets(s["test_sets"])
        for name in train_sets + test_sets:
            if name not in MINDBOGGLE_SETS:
                raise ConfigError(
                    f"split: unknown Mindboggle-101 set {name!r}; sets: {list(MINDBOGGLE_SETS)} (+ Extra-18)")
        both = set(train_sets) & set(test_sets)
        if both:
            raise ConfigError(f"split: sets {sorted(both)} are in both train_sets and test_sets")
        absent = [n for n in train_sets + test_sets if n not in sets_at_hand]
        if absent:
            raise DataError(
                f"split by set needs Mindboggle-101 sets {absent}, but the raw folder holds only {sets_at_hand}. "
                f"Fetch the official per-set archives "
                f"({', '.join(sorted({MINDBOGGLE_SETS[a]['archive'] for a in absent}))}) "
                f"for the paper's protocol, or split the subjects at hand: split: {{by: random, n_test: 10}}"
            )
        return {c.case: ("train" if c.set in train_sets else "test") for c in cases
                if c.set in train_sets or c.set in test_sets}
    # by == "list"
    train, test = list(s["train"]), list(s["test"])
    unknown = sorted(set(train + test) - set(ids))
    if unknown:
        raise ConfigError(f"split: unknown case ids {unknown[:5]}; the cases are {ids[:5]}...")
    both = set(train) & set(test)
    if both:
        raise ConfigError(f"split: cases {sorted(both)[:5]} are in both train and test")
    out = {c: "train" for c in train} | {c: "test" for c in test}
    return {c: out[c] for c in ids if c in out}


def make_pairs(split: dict[str, str], p: dict, seed: int) -> pd.DataFrame:
    """The ``pairs.tsv`` table (fold 0): ``pair_id, fold, split, fixed, moving``.

    Train: all ordered pairs of distinct training cases (``train_pairs: all``) or none. Test: all ordered pairs
    of distinct test cases (``all``; Zhu et al.: LPBA40 10 images -> 90 pairs, Sec. 3.D), ``random<N>`` of
    them drawn with ``numpy.random.default_rng(seed)``, or ``atlas``: the atlas case (``p["atlas"]``, a test
    case) registered to every other test case (moving = atlas, fixed = subject).

    Raises:
        ConfigError: atlas not a test case, more random pairs than exist, no test pair.
    """
    rows = []
    train = [c for c, s in split.items() if s == "train"]
    test = [c for c, s in split.items() if s == "test"]

    def ordered(ids):
        return [(f, m) for f in ids for m in ids if f != m]

    if p["train_pairs"] == "all":
        rows += [("train", f, m) for f, m in ordered(train)]
    tp = p["test_pairs"]
    if tp == "all":
        rows += [("test", f, m) for f, m in ordered(test)]
    elif tp == "atlas":
        atlas = p["atlas"]
        if atlas not in test:
            raise ConfigError(f"test_pairs atlas: atlas {atlas!r} is not a test case ({test[:5]}...)")
        rows += [("test", f, atlas) for f in test if f != atlas]
    else:
        n = int(tp[len("random"):])
        allp = ordered(test)
        if n > len(allp):
            raise ConfigError(f"test_pairs {tp}: only {len(allp)} ordered test pairs exist")
        idx = np.sort(np.random.default_rng(int(seed)).choice(len(allp), size=n, replace=False))
        rows += [("test", *allp[i]) for i in idx]
    if not any(r[0] == "test" for r in rows):
        raise ConfigError("the protocol gives no test pair (need at least 2 test cases)")
    return pd.DataFrame(
        [{"pair_id": f"{f}__{m}", "fold": 0, "split": s, "fixed": f, "moving": m} for s, f, m in rows],
        columns=["pair_id", "fold", "split", "fixed", "moving"],
    )


# ------------------------------------------------------------------------------------------------ build


def _load_case(c: RawCase, p: dict, with_label: bool = True) -> dict:
    """Load and check one case on its native grid; return arrays, affine and facts."""
    import nibabel as nib

    arr, aff, iinfo = bp.load_volume(c.image)
    img = bp.check_image(arr, Path(iinfo["image"]))  # the data file (.img.gz of an Analyze pair)
    out = {"image": img, "affine": aff, "source_dtype": str(arr.dtype), "native_shape": list(img.shape),
           "native_spacing_mm": [round(s, 5) for s in bp.spacing_of(aff)],
           "native_orientation": "".join(nib.aff2axcodes(aff)), "format": iinfo["format"]}
    if iinfo.get("orient") is not None:
        out["analyze_orient"] = iinfo["orient"]
    if c.label is not None and with_label:
        larr, laff, linfo = bp.load_volume(c.label)
        bp.check_same_grid(img.shape, aff, larr.shape, laff, c.image, c.label)
        out["seg"] = bp.label_to_int(larr, Path(linfo["image"]))
        out["label_dtype"] = str(larr.dtype)
    return out


def _mask(loaded: dict, p: dict, c: RawCase) -> np.ndarray:
    if p["brain_mask"] == "labels":
        if "seg" not in loaded:
            raise DataError(f"{c.image}: brain_mask 'labels' needs a label map, and this subject has none; "
                            f"use brain_mask: nonzero")
        m = loaded["seg"] > 0
    else:
        m = loaded["image"] > 0
    if m.sum() < 100:
        raise DataError(f"{c.image}: the brain mask ({p['brain_mask']}) holds only {int(m.sum())} voxels; is this "
                        f"a brain image?")
    return m


def _check_label_values(seg: np.ndarray, groups: dict | None, c: RawCase, check: str) -> list[int]:
    """Label values of a map (without 0); values missing from the grouping's ``labels`` raise (``check`` =
    ``error``), are logged (``warn``) or pass (``none``, e.g. the FreeSurfer ids of Mindboggle's +aseg maps)."""
    vals = [int(v) for v in np.unique(seg) if v != 0]
    if groups is None or check == "none":
        return vals
    unknown = sorted(set(vals) - set(groups["labels"]))
    if unknown:
        msg = (f"{c.label}: label value(s) {unknown[:8]} are not in {groups['path']} (labels); the file is not "
               f"the expected label map")
        if check == "error":
            raise DataError(msg)
        log.warning("%s (kept in seg, mapped to 0 in %s)", msg, groups["column"])
    return vals


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the raw folder (as the release names it), else absolute."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _write_tsv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def _commit_dir(stage: Path, out_dir: Path) -> None:
    """Move the complete staging folder onto ``out_dir`` (replacing a previous build)."""
    old = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{int(time.time() * 1000)}.old"
        os.rename(out_dir, old)
    try:
        os.rename(stage, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_brain(raw_dir: str | Path, out_dir: str | Path, params: dict | None, seed: int, dataset: str) -> pd.DataFrame:
    """Prepare Mindboggle-101, LPBA40 or IXI for registration (``regbench preprocess``, kind ``brain``).

    Writes into ``out_dir`` (built in a hidden sibling folder and renamed into place when complete, so an
    error leaves nothing half-written and a previous build untouched):

    - ``images/<case>.nii.gz``: float32 T1 in [0, 1] (0 outside the brain), RAS+, ``params.shape`` voxels,
      affine = native affine reoriented and rescaled (spacing in mm = native extent / shape);
    - ``labels/<case>_seg.nii.gz``: int16 fine labels (as stored in the release), nearest-neighbour resampled;
    - ``labels/<case>_<column>.nii.gz``: int16 grouped labels (``column`` from the grouping file, e.g.
      ``seg_regions`` for the five Mindboggle regions, ``seg_rois`` for the 54 LPBA40 / the kept IXI ROIs);
    - ``cases.tsv`` (``case, split, set, t1, seg, <column>, source_image, source_label`` [+ ``archive_split``]),
      ``pairs.tsv`` (fold 0; see :func:`make_pairs`) and ``dataset.json`` (layout, local-archive differences,
      parameters, per-case native grid, label tables, protocol, grid scale vs the paper's 192^3).

    Args:
        raw_dir: ``data/raw/<dataset>`` (fetched).
        out_dir: ``data/prep/<experiment>/<dataset>``.
        params: see :data:`PARAMS_SCHEMA` / docs/brain_mri.md; ``reader`` defaults to ``dataset``.
        seed: seeds the random split and random test pairs (``numpy.random.default_rng``).
        dataset: registry name (``mindboggle101``, ``lpba40`` or ``ixi``).

    Returns:
        The cases table as written.

    Raises:
        ConfigError: bad params or label grouping file.
        DataError: missing/extra subjects, missing files (Analyze ``.img`` without ``.hdr``), NaN images,
            non-integer label maps, unexpected label values; ShapeMismatchError (a DataError): image and label
            map on different grids. Messages name the file and the fix.
    """
    t0 = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    params = dict(params or {})
    reader = params.get("reader") or dataset
    p = resolve_params(reader, params)
    layout = discover(reader, raw_dir, p)
    cases = layout.cases
    n_found = len(cases)
    if p["subjects"] is not None:
        known = {c.case for c in cases}
        unknown = [s for s in p["subjects"] if s not in known]
        if unknown:
            raise ConfigError(f"params.subjects: unknown case ids {unknown[:5]}; the cases are {sorted(known)[:6]}...")
        keep = set(p["subjects"])
        cases = [c for c in cases if c.case in keep]
    if p["max_subjects"] is not None:
        cases = cases[: int(p["max_subjects"])]
    split = make_split(cases, p, seed)
    cases = [c for c in cases if c.case in split]
    pairs = make_pairs(split, p, seed)
    unlabelled = any(c.label is None for c in cases)
    groups = None if (p["label_groups"] is None or unlabelled) else load_label_groups(p["label_groups"])
    check = {"lpba40": "error", "ixi": "warn"}.get(reader) or ("error" if p["labels"] == "DKT31.manual" else "none")
    shape = [int(s) for s in p["shape"]]
    if shape != PAPER_SHAPE:
        log.warning("%s: output grid %s differs from the paper's 192^3 (Zhu et al. Sec. 2.C): a scaled-down run",
                    dataset, "x".join(map(str, shape)))
    log.info("%s: %s layout, %d of %d subjects (%d train, %d test), %d train / %d test pairs, grid %s",
             dataset, layout.name, len(cases), n_found, sum(v == "train" for v in split.values()),
             sum(v == "test" for v in split.values()), int((pairs.split == "train").sum()),
             int((pairs.split == "test").sum()), "x".join(map(str, shape)))

    from tqdm.auto import tqdm

    # pass 1: intensity landmarks (Nyul) on the native grid; the standard scale comes from training cases only
    method = p["intensity"]["method"]
    lo_pct, hi_pct = p["intensity"]["percentiles"]
    pct = [lo_pct] + [x for x in bp.DECILE_LANDMARKS[1:-1] if lo_pct < x < hi_pct] + [hi_pct]
    landmarks: dict[str, np.ndarray] = {}
    standard = None
    if method == "nyul":
        for c in tqdm(cases, desc=f"{dataset}: landmarks", unit="case", leave=False):
            loaded = _load_case(c, p, with_label=p["brain_mask"] == "labels")
            m = _mask(loaded, p, c)
            landmarks[c.case] = bp.nyul_landmarks(loaded["image"][m], pct)
        ref = [c.case for c in cases if split[c.case] == "train"] or [c.case for c in cases]
        scaled = [(landmarks[k] - landmarks[k][0]) / max(landmarks[k][-1] - landmarks[k][0], 1e-12) for k in ref]
        standard = np.mean(scaled, axis=0)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(out_dir.parent, out_dir.name)
    try:
        rows, per_case, label_counts = [], {}, {}
        for c in tqdm(cases, desc=f"{dataset}: cases", unit="case", leave=False):
            loaded = _load_case(c, p)
            m = _mask(loaded, p, c)
            img = loaded["image"]
            if p["skull_strip"]:
                img = np.where(m, img, 0.0).astype(np.float32)
            if method == "nyul":
                img = bp.standardise(img, m, landmarks[c.case], standard)
            else:
                img = bp.minmax(img, m, lo_pct, hi_pct)
            img, aff_c, codes = bp.to_canonical(img, loaded["affine"])
            img_r, aff_r = bp.resize(img, aff_c, shape, order=1, antialias=p["antialias"])
            img_r = np.clip(img_r, 0.0, 1.0).astype(np.float32)
            row = {"case": c.case, "split": split[c.case], "set": c.set, "t1": f"images/{c.case}.nii.gz"}
            save_image(stage / row["t1"], img_r, aff_r, dtype=np.float32)
            info = {k: loaded[k] for k in ("source_dtype", "native_shape", "native_spacing_mm", "native_orientation",
                                           "format") if k in loaded}
            if "analyze_orient" in loaded:
                info["analyze_orient"] = loaded["analyze_orient"]
            if method == "nyul":
                info["landmarks"] = [round(float(x), 4) for x in landmarks[c.case]]
            if "seg" in loaded:
                vals = _check_label_values(loaded["seg"], groups, c, check)
                for v in vals:
                    label_counts[v] = label_counts.get(v, 0) + 1
                seg_c, _, _ = bp.to_canonical(loaded["seg"], loaded["affine"])
                seg_r, _ = bp.resize(seg_c, aff_c, shape, order=0)
                seg_r = seg_r.astype(np.int16)
                row["seg"] = f"labels/{c.case}_seg.nii.gz"
                save_image(stage / row["seg"], seg_r, aff_r, dtype=np.int16)
                if groups is not None:
                    col = groups["column"]
                    row[col] = f"labels/{c.case}_{col}.nii.gz"
                    save_image(stage / row[col], remap_labels(seg_r, groups["lut"]), aff_r, dtype=np.int16)
                lost = sorted(set(vals) - set(int(v) for v in np.unique(seg_r)))
                if lost:
                    info["labels_lost_by_resizing"] = lost
                    log.warning("%s: labels %s vanish at grid %s (too small)", c.case, lost, shape)
            row["source_image"] = _rel(c.image, raw_dir)
            row["source_label"] = _rel(c.label, raw_dir) if c.label is not None else ""
            row.update(c.extra)
            info["orientation_in"] = codes
            info["spacing_mm"] = [round(s, 5) for s in bp.spacing_of(aff_r)]
            per_case[c.case] = info
            rows.append(row)
        cols = ["case", "split", "set", "t1"]
        if not unlabelled:
            cols.append("seg")
            if groups is not None:
                cols.append(groups["column"])
        extra_cols = [k for k in rows[0] if k not in cols]
        df = pd.DataFrame(rows)[cols + extra_cols]
        _write_tsv(stage / "cases.tsv", df)
        _write_tsv(stage / "pairs.tsv", pairs)
        meta = _metadata(dataset, reader, raw_dir, layout, p, seed, split, pairs, groups, per_case, label_counts,
                         shape, n_found, standard, pct, t0)
        with atomic_path(stage / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        _commit_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("%s: %d cases -> %s in %.1f s", dataset, len(df), out_dir, time.perf_counter() - t0)
    return df


def _metadata(dataset, reader, raw_dir, layout, p, seed, split, pairs, groups, per_case, label_counts, shape,
              n_found, standard, pct, t0) -> dict:
    import nibabel
    import scipy

    fetched = read_fetch_record(raw_dir) or {}
    spacings = [v["spacing_mm"] for v in per_case.values()]
    meta: dict[str, Any] = {
        "name": dataset,
        "reader": reader,
        "layout": layout.name,
        "layout_info": layout.info,
        "fetch_record": {k: fetched.get(k) for k in ("origin", "hash_status", "local_path", "fetched_at")}
        if fetched else None,
        "reference": PAPER_REFERENCE,
        "preprocessing": {
            "order": ["check image finite, labels integer and on the image grid", "brain mask",
                      "skull strip" if p["skull_strip"] else "no skull strip",
                      f"intensity: {p['intensity']['method']}", "reorient to RAS+ (nibabel as_closest_canonical)",
                      "resize (images linear + anti-aliasing, labels nearest)"],
            "brain_mask": {"nonzero": "image > 0 (skull-stripped release)", "labels": "label map > 0"}[p["brain_mask"]],
            "intensity": (
                f"Nyul-Udupa histogram standardisation: brain-voxel percentiles {pct} of each image mapped "
                f"piecewise-linearly onto a standard scale (mean of the training cases' landmarks scaled to [0, 1]); "
                f"clipped to [0, 1]; 0 outside the brain mask"
                if p["intensity"]["method"] == "nyul" else
                f"min-max within the brain mask between the {pct[0]} and {pct[-1]} percentiles, clipped to [0, 1]; "
                f"0 outside the mask"),
            "standard_scale": [round(float(x), 5) for x in standard] if standard is not None else None,
            "orientation": "RAS+",
            "resize": "field of view kept: spacing_mm = native extent / shape; voxel centres at (n + 0.5) * f - 0.5",
        },
        "grid": {"shape": shape, "paper_shape": PAPER_SHAPE, "scaled_down": shape != PAPER_SHAPE,
                 "spacing_mm_range": [list(np.min(spacings, axis=0).round(4)),
                                      list(np.max(spacings, axis=0).round(4))]},
        "scale": {"shape": "x".join(map(str, shape)), "subjects": len(per_case), "subjects_found": n_found}
        if shape != PAPER_SHAPE or len(per_case) != n_found else {},
        "protocol": {
            "split": p["split"],
            "n_train": sum(v == "train" for v in split.values()),
            "n_test": sum(v == "test" for v in split.values()),
            "train_pairs": p["train_pairs"],
            "test_pairs": p["test_pairs"] if p["test_pairs"] != "atlas" else f"atlas {p['atlas']} -> every test case",
            "n_pairs": {s: int((pairs["split"] == s).sum()) for s in ("train", "test")},
            "seed": int(seed),
            "folds": [0],
        },
        "columns": {"t1": "float32 T1 in [0, 1], 0 outside the brain", "seg": "int16 labels as in the release"},
        "label_groups": None,
        "label_presence": {str(k): v for k, v in sorted(label_counts.items())},
        "params": p,
        "cases": per_case,
        "software": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "nibabel": nibabel.__version__},
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    if groups is not None:
        meta["columns"][groups["column"]] = f"int16 group ids of {Path(groups['path']).name}"
        meta["label_groups"] = {
            "file": groups["path"], "column": groups["column"],
            "groups": {str(k): v for k, v in groups["groups"].items()},
            "excluded": {str(k): v for k, v in groups["excluded"].items()},
            **{k: groups[k] for k in ("source", "rule", "description") if k in groups},
        }
    return meta


# ---------------------------------------------------------------------------------------- maintenance


def write_manifest(top_dir: str | Path, out_tsv: str | Path) -> int:
    """Write ``path<TAB>sha256`` for every file under an extracted archive's top folder (paths relative to it,
    POSIX, sorted), atomically; return the number of rows. Same format as ``acrn_chest_xray.tsv``."""
    top = Path(top_dir)
    files = sorted(p for p in top.rglob("*") if p.is_file())
    if not files:
        raise DataError(f"{top}: no files to list")
    with atomic_path(out_tsv) as tmp:
        with open(tmp, "w", newline="\n") as f:
            f.write("path\tsha256\n")
            for p in files:
                f.write(f"{p.relative_to(top).as_posix()}\t{sha256_file(p)}\n")
    return len(files)


def ixi_roi_volumes(top_dir: str | Path) -> pd.DataFrame:
    """Per DLMUSE ROI: median, min and max volume (mm^3) over the subjects of the NiChart IXI30 folder."""
    import nibabel as nib

    seg_dir = Path(top_dir) / LOCAL_ARCHIVES["ixi"]["data_dir"] / "dlmuse_seg"
    vols: dict[int, list[float]] = {}
    files = sorted(seg_dir.glob("*_T1_DLMUSE.nii.gz"))
    for f in files:
        img = nib.load(str(f))
        a = np.asarray(img.dataobj).astype(np.int64)
        vox = float(abs(np.linalg.det(img.affine[:3, :3])))
        v, n = np.unique(a, return_counts=True)
        for vv, nn in zip(v, n):
            if vv:
                vols.setdefault(int(vv), []).append(nn * vox)
    rows = [{"roi": k, "median_mm3": float(np.median(v + [0.0] * (len(files) - len(v)))), "min_mm3": float(min(v)),
             "max_mm3": float(max(v)), "n_subjects": len(v)} for k, v in sorted(vols.items())]
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regbench.datasets.brain", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest", help="write the per-file sha256 manifest of an extracted local archive")
    m.add_argument("top_dir")
    m.add_argument("out_tsv")
    v = sub.add_parser("ixi-volumes", help="print DLMUSE ROI volumes of the NiChart IXI30 folder (TSV)")
    v.add_argument("top_dir")
    a = ap.parse_args(argv)
    if a.cmd == "manifest":
        print(write_manifest(a.top_dir, a.out_tsv))
    else:
        print(ixi_roi_volumes(a.top_dir).to_csv(sep="\t", index=False), end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

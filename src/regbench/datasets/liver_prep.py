"""The ``liver`` preprocess stage (Cai et al. 2023, ``shared/papers/001_*.txt`` Sec. 3.1): liver CT from the
readers of :mod:`regbench.datasets.liver` into the prepared-dataset layout every later stage reads.

:func:`build_liver` (``regbench preprocess`` kind ``liver``) follows the output contract of
:func:`regbench.datasets.brain.build_brain`: it scans the raw folder first (layout, pairing of images and label
maps, stored shapes; nothing is read or written before the whole raw folder checks out), then per case (one in
memory at a time): checks the image (finite), merges the label map into the liver as label 1, optionally
reorients NIfTI data to RAS+ and crops to the liver, resamples to ``params.shape`` (paper: 128^3, Sec. 2.2;
images linear, labels nearest, landmarks by the same voxel convention, :func:`regbench.datasets.liver.to_grid`)
and maps intensities to [0, 1] over a window. Everything is written into a hidden staging folder that replaces
``out_dir`` only when complete (an error leaves nothing half-written and a previous build untouched):

- ``images/<case>.nii.gz`` float32 in [0, 1] (cases.tsv column ``ct``, the experiment's ``modality``);
- ``labels/<case>_seg.nii.gz`` int16, 1 = liver (column ``seg``; empty for an unlabelled training case);
- ``landmarks/<case>.tsv`` (column ``landmarks``, only when the source carries landmarks: RCN's
  ``sliver_val.h5`` ``point``, 6 x 3): voxel coordinates of the prepared grid, array axis order, see
  :func:`regbench.datasets.liver.write_landmarks`; evaluation turns them into ``tre_landmark_mm``;
- ``cases.tsv`` (``case, split, set, ct, seg[, landmarks], source, source_id``), ``pairs.tsv`` (fold 0,
  ``pair_id, fold, split, fixed, moving``) and ``dataset.json`` (parameters, per-case native grid, protocol).

What the paper states and what is ours (docs/cai2023.md): the paper gives the datasets, the 1025 / 151 split and
the 128^3 network grid, but no intensity window, crop or resampling rule. RCN's HDF5 files are already cropped,
128^3 and in [0, 255] (window ``[0, 255]``, i.e. divided by 255); for the official releases the HU window
``[-200, 400]`` and no crop are ours. HDF5 files carry no voxel size: spacing 1 (distances in voxels of their
grid) is recorded in ``dataset.json``.
"""

from __future__ import annotations

import copy
import json
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..io import save_image
from ..utils import atomic_path, get_logger, staging_dir
from . import liver as lv
from .brain import _commit_dir, _write_tsv
from .fetch import read_fetch_record

__all__ = ["DEFAULTS", "PAPER_SHAPE", "PARAMS_SCHEMA", "build_liver", "make_pairs", "make_split", "resolve_params",
           "scan"]

log = get_logger(__name__)

PAPER_SHAPE = [128, 128, 128]
PAPER_REFERENCE = "Cai et al., BSPC 83:104594, 2023 (Secs. 2.2, 3.1, 3.3)"
READERS = ("rcn_h5", "lits", "sliver07", "msd")
#: The reader a registry dataset uses when ``params.reader`` is not given.
DATASET_READERS = {"bfh": "rcn_h5", "lits": "lits", "sliver07": "sliver07", "msd_liver": "msd"}

_INT_LIST = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True}
#: JSON schema of ``datasets.<name>.params`` for ``preprocess: liver`` (docs/cai2023.md, "Data").
PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "reader": {"enum": list(READERS), "description": "which reader (default: from the dataset name)"},
        "files": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "uniqueItems": True,
                  "description": "rcn_h5: HDF5 files in the raw folder, in this order (default: every *.h5)"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 8, "maximum": 512},
                  "minItems": 3, "maxItems": 3, "description": "output grid in voxels (paper: 128^3)"},
        "antialias": {"type": "boolean", "description": "Gaussian prefilter before shrinking images"},
        "intensity": {
            "type": "object", "additionalProperties": False,
            "properties": {"method": {"enum": ["window", "minmax"]},
                           "window": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}},
        },
        "reorient": {"type": "boolean", "description": "NIfTI sources: reorient to RAS+ before resampling"},
        "spacing": {"enum": ["unit", "source"],
                    "description": "voxel size written to the prepared images: unit = 1 mm nominal (one grid for "
                                   "every pair, as registration needs), source = the resampled true spacing"},
        "crop": {"enum": ["none", "liver"], "description": "crop to the liver's bounding box before resampling"},
        "crop_margin": {"type": "integer", "minimum": 0, "description": "voxels kept around the liver (crop: liver)"},
        "merge_labels": {
            "type": ["object", "null"], "propertyNames": {"pattern": "^[1-9][0-9]*$"},
            "additionalProperties": _INT_LIST,
            "description": "output label -> source values (null: every non-zero value is liver, 1)"},
        "split": {"oneOf": [
            {"enum": ["all_train", "all_test"]},
            {"type": "object", "additionalProperties": False, "required": ["by", "n_test"],
             "properties": {"by": {"const": "random"}, "n_test": {"type": "integer", "minimum": 2},
                            "n_train": {"type": ["integer", "null"], "minimum": 2}}},
        ]},
        "train_pairs": {"enum": ["all", "none"]},
        "test_pairs": {"oneOf": [{"const": "all"}, {"type": "string", "pattern": "^random[1-9][0-9]*$"}]},
        "require_segmentation": {"type": ["boolean", "null"],
                                 "description": "every case needs a liver label map (null: unless all_train)"},
        "require_landmarks": {"type": "boolean", "description": "every case needs 6x3 landmarks"},
        "cases": {"type": ["array", "null"], "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
        "max_cases": {"type": ["integer", "null"], "minimum": 2},
    },
}

_COMMON: dict[str, Any] = {
    "shape": list(PAPER_SHAPE),
    "antialias": True,
    "intensity": {"method": "window", "window": [-200.0, 400.0]},
    "reorient": True,
    "spacing": "unit",
    "crop": "none",
    "crop_margin": 4,
    "merge_labels": None,
    "split": "all_test",
    "train_pairs": "all",
    "test_pairs": "all",
    "require_segmentation": None,
    "require_landmarks": False,
    "cases": None,
    "max_cases": None,
}
#: Defaults per reader. RCN's files are in [0, 255]; the HU window of the official releases is ours.
DEFAULTS: dict[str, dict[str, Any]] = {
    "rcn_h5": {**_COMMON, "files": None, "intensity": {"method": "window", "window": [0.0, 255.0]},
               "split": "all_train"},
    "lits": {**_COMMON, "merge_labels": {"1": [1, 2]}},  # liver + tumour = liver
    "sliver07": dict(_COMMON),
    "msd": {**_COMMON, "merge_labels": {"1": [1, 2]}, "split": "all_train"},
}


def resolve_params(reader: str, params: dict | None) -> dict:
    """The reader's :data:`DEFAULTS` overridden by ``params`` (``intensity`` merged key by key), validated
    against :data:`PARAMS_SCHEMA`; ``merge_labels`` as ``{int: [int]}``.

    Raises:
        ConfigError: unknown reader, unknown key or bad value (the message names the key path).
    """
    import jsonschema
    from jsonschema.exceptions import best_match

    if reader not in DEFAULTS:
        raise ConfigError(f"preprocess liver: unknown reader {reader!r}; expected one of {list(READERS)}")
    params = json.loads(json.dumps(dict(params or {})))  # YAML int keys -> JSON strings, as the --spec carries
    errors = list(jsonschema.Draft202012Validator(PARAMS_SCHEMA).iter_errors(params))
    if errors:
        e = best_match(errors)
        where = ".".join(str(x) for x in e.absolute_path) or "<params>"
        raise ConfigError(f"preprocess liver ({reader}) params: {where}: {e.message}")
    p = copy.deepcopy(DEFAULTS[reader])
    for key, value in params.items():
        p[key] = {**p["intensity"], **value} if key == "intensity" else copy.deepcopy(value)
    p["reader"] = reader
    if p.get("files") is not None and reader != "rcn_h5":
        raise ConfigError(f"preprocess liver ({reader}) params: files: only the rcn_h5 reader takes a file list")
    if p["intensity"]["method"] == "window":
        lo, hi = p["intensity"]["window"]
        if not lo < hi:
            raise ConfigError(f"preprocess liver ({reader}) params: intensity.window: need low < high, got {[lo, hi]}")
    if p["merge_labels"] is not None:
        merged = {int(k): [int(v) for v in vs] for k, vs in p["merge_labels"].items()}
        seen: dict[int, int] = {}
        for k, vs in merged.items():
            for v in vs:
                if v in seen:
                    raise ConfigError(f"preprocess liver ({reader}) params: merge_labels: source value {v} is in "
                                      f"labels {seen[v]} and {k}")
                seen[v] = k
        p["merge_labels"] = merged
    if p["require_segmentation"] is None:
        p["require_segmentation"] = p["split"] != "all_train"
    return p


# ------------------------------------------------------------------------------------------------ scan
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def scan(reader: str, raw_dir: str | Path, p: dict) -> list[tuple[str, str, lv.CaseRef]]:
    """``(case id, set, CaseRef)`` per case of ``reader`` under ``raw_dir``, in reader order; ids made
    file-name safe (characters other than letters, digits, ``_.-`` become ``_``).

    Raises:
        DataError: the raw folder or a listed file is missing, any layout error of the ``scan_*`` readers, two
            cases with one id.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw folder not found; run `regbench fetch <dataset>` first")
    out: list[tuple[str, str, lv.CaseRef]] = []
    if reader == "rcn_h5":
        files = [raw_dir / f for f in p["files"]] if p.get("files") else sorted(raw_dir.glob("*.h5"))
        if not files:
            raise DataError(f"{raw_dir}: no RCN HDF5 file (*.h5) found; put youyi_liver.h5 / msd_dataset.h5 there "
                            f"(config/datasets.yaml, bfh)")
        for f in files:
            if not f.is_file():
                raise DataError(f"{f}: listed in params.files but not found in the raw folder")
            for ref in lv.scan_rcn_h5(f, p["require_segmentation"], p["require_landmarks"]):
                out.append((ref.case_id, f.stem, ref))
    elif reader == "lits":
        out = [(r.case_id, "LiTS", r) for r in lv.scan_lits(raw_dir)]
    elif reader == "sliver07":
        out = [(r.case_id, "SLIVER07", r) for r in lv.scan_sliver07(raw_dir)]
    else:  # msd: the extracted folder (what fetch leaves) or the tar itself
        tars = sorted(raw_dir.glob("*.tar"))
        if any(raw_dir.rglob("dataset.json")):
            refs = lv.scan_msd_folder(raw_dir)
        elif tars:
            refs = lv.scan_msd_tar(tars[0])
        else:
            raise DataError(f"{raw_dir}: no MSD Task03_Liver dataset.json or .tar found; run `regbench fetch "
                            f"msd_liver` first")
        out = [(r.case_id, "MSD Task03", r) for r in refs]
    if reader in ("lits", "sliver07", "msd") and p["require_landmarks"]:
        raise DataError(f"{raw_dir}: the {reader} release carries no landmarks (require_landmarks: true); "
                        f"SLIVER07 landmarks come with RCN's sliver_val.h5 (reader: rcn_h5)")
    seen: dict[str, str] = {}
    safe = []
    for cid, s, ref in out:
        sid = _SAFE.sub("_", cid)
        if sid in seen:
            raise DataError(f"{ref.source}: case id {sid!r} also used by {seen[sid]}; two cases with one id")
        seen[sid] = ref.source
        safe.append((sid, s, ref))
    return safe


# --------------------------------------------------------------------------------------------- protocol
def make_split(ids: list[str], p: dict, seed: int) -> dict[str, str]:
    """``{case: "train"|"test"}``: ``all_train``, ``all_test`` or ``{by: random, n_test[, n_train]}`` (the
    first ``n_test`` of ``numpy.random.default_rng(seed).permutation`` of ``ids`` are the test set, as
    :func:`regbench.datasets.brain.make_split`)."""
    s = p["split"]
    if s == "all_train":
        return {c: "train" for c in ids}
    if s == "all_test":
        return {c: "test" for c in ids}
    n_test = int(s["n_test"])
    if n_test >= len(ids):
        raise ConfigError(f"split: n_test = {n_test} but only {len(ids)} cases are available; lower n_test")
    perm = [ids[i] for i in np.random.default_rng(int(seed)).permutation(len(ids))]
    rest = perm[n_test:]
    if s.get("n_train") is not None:
        if s["n_train"] > len(rest):
            raise ConfigError(f"split: n_train = {s['n_train']} but only {len(rest)} cases remain after the test set")
        rest = rest[: int(s["n_train"])]
    out = {c: "test" for c in perm[:n_test]} | {c: "train" for c in rest}
    return {c: out[c] for c in ids if c in out}


def make_pairs(split: dict[str, str], p: dict, seed: int) -> pd.DataFrame:
    """``pairs.tsv`` (fold 0): all ordered pairs of distinct training cases (``train_pairs: all``) and of
    distinct test cases (``test_pairs: all``; RCN's evaluation pairs every scan with every other, 20 x 19 on
    SLIVER07), or ``random<N>`` of the test pairs (``numpy.random.default_rng(seed)``). A training-only
    dataset (``all_train``) has no test pair.

    Raises:
        ConfigError: a set with cases but fewer than 2, more random pairs than exist.
    """
    train = [c for c, s in split.items() if s == "train"]
    test = [c for c, s in split.items() if s == "test"]
    for name, ids in (("training", train), ("test", test)):
        if len(ids) == 1:
            raise ConfigError(f"the {name} set has a single case ({ids[0]}); registration pairs need at least 2")
    rows: list[tuple[str, str, str]] = []
    if p["train_pairs"] == "all":
        rows += [("train", f, m) for f in train for m in train if f != m]
    allp = [(f, m) for f in test for m in test if f != m]
    tp = p["test_pairs"]
    if tp == "all":
        rows += [("test", f, m) for f, m in allp]
    else:
        n = int(tp[len("random"):])
        if n > len(allp):
            raise ConfigError(f"test_pairs {tp}: only {len(allp)} ordered test pairs exist")
        idx = np.sort(np.random.default_rng(int(seed)).choice(len(allp), size=n, replace=False))
        rows += [("test", *allp[i]) for i in idx]
    if not rows:
        raise ConfigError("the protocol gives no registration pair (train_pairs: none and no test cases)")
    return pd.DataFrame({"pair_id": [f"{f}__{m}" for _, f, m in rows], "fold": 0, "split": [r[0] for r in rows],
                         "fixed": [r[1] for r in rows], "moving": [r[2] for r in rows]},
                        columns=["pair_id", "fold", "split", "fixed", "moving"])


# ------------------------------------------------------------------------------------------------ cases
def merge_labels(seg: np.ndarray, mapping: dict[int, list[int]] | None, where: str) -> np.ndarray:
    """int16 label map with ``mapping`` applied (output label -> source values; ``None``: non-zero -> 1).

    Raises:
        DataError: a non-zero source value that ``mapping`` does not list (names ``where`` and the values).
    """
    if mapping is None:
        return (seg > 0).astype(np.int16)
    vals = [int(v) for v in np.unique(seg) if v != 0]
    known = {v for vs in mapping.values() for v in vs}
    unknown = sorted(set(vals) - known)
    if unknown:
        raise DataError(f"{where}: label value(s) {unknown[:8]} are not in params.merge_labels {mapping}; the file is "
                        f"not the expected liver label map (or add the values to merge_labels)")
    out = np.zeros(seg.shape, dtype=np.int16)
    for k, vs in mapping.items():
        out[np.isin(seg, vs)] = k
    return out


def _reorient(c: lv.LiverCase) -> tuple[lv.LiverCase, str]:
    """RAS+ (``nibabel.as_closest_canonical``: axis permutations and flips only) of a case with an affine;
    landmarks follow the same permutation and flips."""
    import nibabel as nib

    from .brain_prep import spacing_of, to_canonical

    aff = c.meta["affine"]
    codes = "".join(nib.aff2axcodes(aff))
    vol, aff_c, _ = to_canonical(c.volume, aff)
    seg = None if c.segmentation is None else to_canonical(c.segmentation, aff)[0].astype(np.int16)
    pts = None
    if c.points is not None:
        ornt = nib.orientations.io_orientation(aff)
        pts = np.zeros_like(c.points)
        for i, (axis, flip) in enumerate(ornt):
            x = c.points[:, i]
            pts[:, int(axis)] = x if flip > 0 else (c.volume.shape[i] - 1) - x
    meta = {**c.meta, "affine": aff_c}
    return lv.LiverCase(c.case_id, np.asarray(vol, dtype=np.float32), seg, pts, spacing_of(aff_c), c.source,
                        meta), codes


def _crop(c: lv.LiverCase, margin: int) -> tuple[lv.LiverCase, list[list[int]]]:
    """Crop to the liver's (label > 0) bounding box plus ``margin`` voxels; landmarks and affine shifted."""
    if c.segmentation is None or not (c.segmentation > 0).any():
        raise DataError(f"{c.source}: crop: liver needs a non-empty liver label map")
    idx = np.nonzero(c.segmentation > 0)
    lo = [max(0, int(i.min()) - margin) for i in idx]
    hi = [min(n, int(i.max()) + 1 + margin) for i, n in zip(idx, c.volume.shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    pts = None if c.points is None else c.points - np.asarray(lo, dtype=np.float64)
    meta = dict(c.meta)
    if "affine" in meta:
        shift = np.eye(4)
        shift[:3, 3] = lo
        meta["affine"] = np.asarray(meta["affine"]) @ shift
    return (lv.LiverCase(c.case_id, c.volume[sl], c.segmentation[sl], pts, c.spacing, c.source, meta),
            [[a, b] for a, b in zip(lo, hi)])


def _prepare(c: lv.LiverCase, p: dict) -> tuple[lv.LiverCase, dict]:
    """One case from its reader to the prepared grid; returns the case and facts for ``dataset.json``."""
    from .brain_prep import check_image

    info: dict[str, Any] = {"source": c.source, "native_shape": list(c.volume.shape),
                            "native_spacing_mm": None if c.spacing is None else [round(float(s), 5) for s in c.spacing]}
    vol = check_image(c.volume, Path(c.source.split(":")[0]) if ":" in c.source else Path(c.source))
    seg = c.segmentation
    if seg is None and p["require_segmentation"]:
        raise DataError(f"{c.source}: no liver segmentation, but this dataset needs one for every case "
                        f"(test sets are scored by liver Dice); set require_segmentation: false for training data")
    if seg is not None:
        seg = merge_labels(seg, p["merge_labels"], c.source)
        if p["require_segmentation"] and not (seg > 0).any():
            raise DataError(f"{c.source}: the liver segmentation holds no liver voxel")
    if c.points is None and p["require_landmarks"]:
        raise DataError(f"{c.source}: no landmarks (`point`, 6x3), but require_landmarks is set")
    c = lv.LiverCase(c.case_id, vol, seg, c.points, c.spacing, c.source, dict(c.meta))
    if p["reorient"] and "affine" in c.meta:
        c, info["orientation_in"] = _reorient(c)
    if p["crop"] == "liver":
        c, info["crop_box"] = _crop(c, int(p["crop_margin"]))
    inten = p["intensity"]
    window = tuple(inten["window"]) if inten["method"] == "window" else None
    out = lv.to_grid(c, tuple(int(s) for s in p["shape"]), hu_window=window, antialias=bool(p["antialias"]))
    if out.points is not None:
        outside = ~((out.points >= -0.5) & (out.points <= np.asarray(out.volume.shape) - 0.5)).all(axis=1)
        if outside.any():
            log.warning("%s: landmarks %s lie outside the prepared grid", c.source, (np.nonzero(outside)[0] + 1).tolist())
    if out.segmentation is not None:
        info["liver_voxels"] = int((out.segmentation > 0).sum())
    return out, info


# ------------------------------------------------------------------------------------------------ build
def build_liver(raw_dir: str | Path, out_dir: str | Path, params: dict | None, seed: int, dataset: str) -> pd.DataFrame:
    """Prepare a liver CT dataset for registration (``regbench preprocess``, kind ``liver``; module docstring).

    Args:
        raw_dir: ``data/raw/<dataset>`` (fetched).
        out_dir: ``data/prep/<experiment>/<dataset>``.
        params: see :data:`PARAMS_SCHEMA` / docs/cai2023.md; ``reader`` defaults by dataset name
            (:data:`DATASET_READERS`).
        seed: seeds a random split and random test pairs (``numpy.random.default_rng``).
        dataset: registry name (``bfh``, ``lits``, ``sliver07``, ``msd_liver``).

    Returns:
        The cases table as written.

    Raises:
        ConfigError: bad params, unknown case ids in ``params.cases``, a protocol without pairs.
        DataError: missing raw files, layout errors, shapes that differ, NaN images, unexpected label values,
            a missing required segmentation or landmarks. Messages name the file.
    """
    t0 = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    params = dict(params or {})
    reader = params.get("reader") or DATASET_READERS.get(dataset)
    if reader is None:
        raise ConfigError(f"preprocess liver: dataset {dataset!r} has no default reader; set params.reader to one "
                          f"of {list(READERS)}")
    p = resolve_params(reader, params)
    found = scan(reader, raw_dir, p)
    n_found = len(found)
    if p["cases"] is not None:
        known = {cid for cid, _, _ in found}
        unknown = [c for c in p["cases"] if c not in known]
        if unknown:
            raise ConfigError(f"params.cases: unknown case ids {unknown[:5]}; the cases are {sorted(known)[:6]}...")
        keep = set(p["cases"])
        found = [f for f in found if f[0] in keep]
    if p["max_cases"] is not None:
        found = found[: int(p["max_cases"])]
    split = make_split([cid for cid, _, _ in found], p, seed)
    found = [f for f in found if f[0] in split]
    pairs = make_pairs(split, p, seed)
    shape = [int(s) for s in p["shape"]]
    if shape != PAPER_SHAPE:
        log.warning("%s: output grid %s differs from the paper's 128^3 (Cai et al. Sec. 2.2): a scaled-down run",
                    dataset, "x".join(map(str, shape)))
    log.info("%s: reader %s, %d of %d cases (%d train, %d test), %d train / %d test pairs, grid %s", dataset, reader,
             len(found), n_found, sum(v == "train" for v in split.values()), sum(v == "test" for v in split.values()),
             int((pairs.split == "train").sum()), int((pairs.split == "test").sum()), "x".join(map(str, shape)))

    from tqdm.auto import tqdm

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(out_dir.parent, out_dir.name)
    try:
        rows, per_case = [], {}
        for cid, set_name, ref in tqdm(found, desc=f"{dataset}: cases", unit="case", leave=False):
            case, info = _prepare(ref.load(), p)
            spacing = case.spacing or (1.0, 1.0, 1.0)
            if p["spacing"] == "unit":  # every case on one nominal 1 mm grid (register checks fixed = moving)
                affine = np.eye(4)
            else:
                affine = case.meta.get("affine")
                affine = np.diag([*spacing, 1.0]) if affine is None else affine
            row = {"case": cid, "split": split[cid], "set": set_name, "ct": f"images/{cid}.nii.gz",
                   "seg": "", "landmarks": ""}
            save_image(stage / row["ct"], case.volume, affine, dtype=np.float32)
            if case.segmentation is not None:
                row["seg"] = f"labels/{cid}_seg.nii.gz"
                save_image(stage / row["seg"], case.segmentation, affine, dtype=np.int16)
            if case.points is not None:
                row["landmarks"] = f"landmarks/{cid}.tsv"
                lv.write_landmarks(stage / row["landmarks"], case.points)
                info["landmarks_voxel"] = np.round(case.points, 3).tolist()
            row["source"] = _rel(ref.source, raw_dir)
            row["source_id"] = ref.case_id
            info["spacing_mm"] = [round(float(s), 5) for s in spacing]
            info["spacing_known"] = case.spacing is not None
            per_case[cid] = info
            rows.append(row)
        df = pd.DataFrame(rows)
        cols = ["case", "split", "set", "ct"]
        cols += [c for c in ("seg", "landmarks") if (df[c] != "").any()]
        df = df[cols + ["source", "source_id"]]
        _write_tsv(stage / "cases.tsv", df)
        _write_tsv(stage / "pairs.tsv", pairs)
        meta = _metadata(dataset, reader, raw_dir, p, seed, split, pairs, per_case, shape, n_found, t0)
        with atomic_path(stage / "dataset.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        _commit_dir(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("%s: %d cases -> %s in %.1f s", dataset, len(df), out_dir, time.perf_counter() - t0)
    return df


def _rel(source: str, root: Path) -> str:
    """``source`` (a file, or ``file:member`` of an HDF5 file / tar) relative to the raw folder where it lies
    inside it, else as given."""
    path, sep, member = source, "", ""
    if not Path(source).exists() and ":" in source:
        path, sep, member = source.rpartition(":")
    try:
        return Path(path).relative_to(root).as_posix() + sep + member
    except ValueError:
        return source


def _metadata(dataset, reader, raw_dir, p, seed, split, pairs, per_case, shape, n_found, t0) -> dict:
    import nibabel
    import scipy

    fetched = read_fetch_record(raw_dir) or {}
    inten = p["intensity"]
    known = [v["spacing_known"] for v in per_case.values()]
    return {
        "name": dataset,
        "reader": reader,
        "reference": PAPER_REFERENCE,
        "fetch_record": {k: fetched.get(k) for k in ("origin", "hash_status", "local_path", "fetched_at")}
        if fetched else None,
        "preprocessing": {
            "order": ["check image finite", "labels: " + ("non-zero -> 1 (liver)" if p["merge_labels"] is None
                                                          else f"merged {p['merge_labels']}"),
                      "reorient NIfTI to RAS+" if p["reorient"] else "no reorientation",
                      "crop to the liver bounding box" if p["crop"] == "liver" else "no crop",
                      "resize (images linear" + (" + anti-aliasing" if p["antialias"] else "") + ", labels nearest, "
                      "landmarks (x + 0.5) * new / old - 0.5)",
                      f"intensity: clip to {inten['window']} and scale to [0, 1]" if inten["method"] == "window"
                      else "intensity: min-max to [0, 1] per case"],
            "stated_by_paper": "datasets, split (1025 training scans MSD + BFH, 151 test LiTS + SLIVER07), 128^3 grid",
            "ours": "intensity window, crop, resampling rule (the paper gives none)",
            "spacing": ("images written with a nominal 1 mm voxel (spacing: unit): every case shares one grid, as "
                        "registration needs, so mm distances (HD, ASSD, landmark TRE) are voxels of the prepared "
                        "grid; each case's true resampled spacing is cases.<id>.spacing_mm"
                        if p["spacing"] == "unit" else "images written with the resampled true spacing")
            + ("" if all(known) else "; HDF5 sources carry no voxel size (spacing_mm 1 per voxel assumed)"),
        },
        "grid": {"shape": shape, "paper_shape": PAPER_SHAPE, "scaled_down": shape != PAPER_SHAPE},
        "scale": {"shape": "x".join(map(str, shape)), "cases": len(per_case), "cases_found": n_found}
        if shape != PAPER_SHAPE or len(per_case) != n_found else {},
        "protocol": {
            "split": p["split"],
            "n_train": sum(v == "train" for v in split.values()),
            "n_test": sum(v == "test" for v in split.values()),
            "train_pairs": p["train_pairs"], "test_pairs": p["test_pairs"],
            "n_pairs": {s: int((pairs["split"] == s).sum()) for s in ("train", "test")},
            "seed": int(seed), "folds": [0],
        },
        "columns": {"ct": "float32 CT in [0, 1]", "seg": "int16, 1 = liver",
                    "landmarks": "TSV landmark, x, y, z: voxel coordinates of the prepared grid (array axis order)"},
        "params": {k: (({str(a): b for a, b in v.items()} if isinstance(v, dict) and k == "merge_labels" else v))
                   for k, v in p.items()},
        "cases": per_case,
        "software": {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
                     "nibabel": nibabel.__version__},
        "build_seconds": round(time.perf_counter() - t0, 1),
    }

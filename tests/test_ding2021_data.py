"""MM-WHS 2017 and CHAOS 2019 readers (``regbench preprocess`` kinds ``mmwhs`` / ``chaos``; Ding et al. 2021).

The fixtures are written in the releases' own formats and layouts: MM-WHS ``{ct,mr}_train_10NN_{image,label}.nii.gz``
with anisotropic, flipped and permuted affines; CHAOS ``Train_Sets/...`` DICOM series written slice by slice with
SimpleITK (position, orientation, instance number, pixel spacing, series UID tags) under shuffled file names, so
that name order is not slice order, and uint8 PNG ground-truth stacks named per slice index.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from regbench.data import PreparedDataset
from regbench.datasets import ding_prep as dp
from regbench.datasets.registry import load_registry
from regbench.errors import ConfigError, DataError
from regbench.io import check_same_grid

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ MM-WHS fixture
MMWHS_N = 24
CT_AFFINE = np.array([[-0.9, 0, 0, 12.0], [0, -0.9, 0, 8.0], [0, 0, 1.6, -20.0], [0, 0, 0, 1]])
MR_AFFINE = np.array([[0, -1.1, 0, 14.0], [0, 0, 1.1, -12.0], [1.8, 0, 0, -22.0], [0, 0, 0, 1]])  # permuted axes
INTENSITY = {"ct": {0: -80, 500: 350, 205: 120, 600: 330, 820: 360},
             "mr": {0: 40, 500: 500, 205: 150, 600: 480, 820: 520}}


def heart_centre(mod: str, sid: int) -> np.ndarray:
    rng = np.random.default_rng([sid, 0 if mod == "ct" else 1])
    return np.array([1.0, -1.0, -1.0]) + rng.uniform(-1.5, 1.5, 3)


def heart(mod: str, sid: int, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label map and image of a toy heart in world mm: LV cavity (500) sphere r 3.5, myocardium (205) shell to
    5.5, right ventricle (600) and ascending aorta (820) beside it."""
    ijk = np.stack(np.meshgrid(*[np.arange(MMWHS_N)] * 3, indexing="ij"), -1).reshape(-1, 3)
    w = ijk @ affine[:3, :3].T + affine[:3, 3]
    c = heart_centre(mod, sid)
    d = lambda q: np.linalg.norm(w - q, axis=1)  # noqa: E731
    lab = np.zeros(len(w), np.int16)
    lab[d(c + [0, 0, 7.5]) < 2.0] = 820
    lab[d(c + [7.0, 0, 0]) < 2.5] = 600
    lab[d(c) < 5.5] = 205
    lab[d(c) < 3.5] = 500
    lab = lab.reshape((MMWHS_N,) * 3)
    img = np.vectorize(INTENSITY[mod].get)(lab).astype(np.float32)
    img += np.random.default_rng(sid).normal(0, 10, img.shape).astype(np.float32)
    return lab, img


def write_mmwhs(root: Path, n_ct: int = 5, n_mr: int = 6) -> Path:
    for mod, n, aff in (("ct", n_ct, CT_AFFINE), ("mr", n_mr, MR_AFFINE)):
        folder = root / f"{mod}_train"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, n + 1):
            sid = 1000 + k
            lab, img = heart(mod, sid, aff)
            nib.save(nib.Nifti1Image(img, aff), folder / f"{mod}_train_{sid}_image.nii.gz")
            nib.save(nib.Nifti1Image(lab.astype(np.float32 if k == 2 else np.int16), aff),  # one float-stored map
                     folder / f"{mod}_train_{sid}_label.nii.gz")
    return root



@pytest.fixture(autouse=True)
def _restore_locale():
    """GDCM's DICOM writer (the fixtures) leaves the C locale at "C": put it back after every test so that the
    rest of the suite keeps UTF-8 as the default text encoding (regbench.utils.keeps_locale guards the readers)."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)


@pytest.fixture(scope="module")
def mmwhs_raw(tmp_path_factory) -> Path:
    return write_mmwhs(tmp_path_factory.mktemp("mmwhs") / "raw")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


MM_PARAMS = {"shape": [16, 16, 16], "roi_margin_mm": 2.0}

# ------------------------------------------------------------------------------------------------ CHAOS fixture
CT_IDS, MR_IDS = (1, 2, 5, 6), (1, 3, 5, 8)
#: per series kind: rows, cols, slices, PixelSpacing (row, col), slice step mm, orientation
GEOM = {
    "ct": dict(rows=20, cols=24, n=8, ps=(1.5, 1.25), dz=2.5, iop=(1, 0, 0, 0, 1, 0)),
    "t1": dict(rows=18, cols=16, n=6, ps=(1.8, 1.8), dz=4.0, iop=(1, 0, 0, 0, 1, 0)),
    "t2": dict(rows=16, cols=20, n=7, ps=(1.5, 1.5), dz=5.0, iop=(-1, 0, 0, 0, 1, 0)),  # normal -z
}
CT_LIVER_SLICE = 5      # physical slice (along the normal) holding the CT liver label
CT_RECT = (slice(6, 14), slice(8, 18))
#: MR T1 ground truth: instance rank -> (grey level, rows, cols)
T1_ORGANS = {1: (63, slice(4, 12), slice(3, 10)), 2: (126, slice(12, 16), slice(2, 6)),
             3: (189, slice(12, 16), slice(10, 14)), 4: (252, slice(2, 6), slice(11, 15))}
T2_LIVER = (2, slice(4, 12), slice(3, 10))   # rank (= slice along the normal), rows, cols


def _ipp0(kind: str, sid: int) -> np.ndarray:
    return {"ct": np.array([-15.0, -12.0, -10.0 + sid]), "t1": np.array([-14.0, -16.0, -6.0 + sid]),
            "t2": np.array([12.0, -11.0, 20.0 + sid])}[kind]


def _normal(iop) -> np.ndarray:
    return np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))


def slice_world(kind: str, sid: int, k: float, rows, cols) -> np.ndarray:
    """RAS world mm of the centre of pixel block (rows, cols) on slice k (along the normal)."""
    g = GEOM[kind]
    r = (rows.start + rows.stop - 1) / 2
    c = (cols.start + cols.stop - 1) / 2
    lps = (_ipp0(kind, sid) + k * g["dz"] * _normal(g["iop"]) + c * g["ps"][1] * np.asarray(g["iop"][:3], float)
           + r * g["ps"][0] * np.asarray(g["iop"][3:], float))
    return lps * np.array([-1, -1, 1])


def write_series(folder: Path, kind: str, sid: int, slices: list[np.ndarray], instances: list[int], names: list[str],
                 modality: str, uid: str, series_uids: list[str] | None = None, shift=(0.0, 0.0, 0.0)) -> None:
    """One DICOM file per slice (``slices`` in physical order along the normal), tags as a scanner writes them;
    ``series_uids`` per file (default ``uid`` for all), ``shift`` added to slice k's position k times (a tilt)."""
    import SimpleITK as sitk

    g = GEOM[kind]
    folder.mkdir(parents=True, exist_ok=True)
    for k, arr in enumerate(slices):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((g["ps"][1], g["ps"][0]))
        ipp = _ipp0(kind, sid) + k * g["dz"] * _normal(g["iop"]) + k * np.asarray(shift)
        tags = {"0008|0060": modality, "0008|0016": "1.2.840.10008.5.1.4.1.1.4" if modality == "MR"
                else "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{k + 100}", "0020|000d": f"{uid}.1",
                "0020|000e": series_uids[k] if series_uids else uid, "0020|0013": str(instances[k]),
                "0020|0032": "\\".join(f"{v:g}" for v in ipp),
                "0020|0037": "\\".join(str(v) for v in g["iop"]), "0028|0030": f"{g['ps'][0]}\\{g['ps'][1]}",
                "0018|0050": str(g["dz"])}
        for t, v in tags.items():
            img.SetMetaData(t, v)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(folder / names[k]))
        w.Execute(img)


def write_pngs(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        Image.fromarray(a.astype(np.uint8), mode="L").save(folder / name)


def write_chaos(top: Path) -> Path:
    """CHAOS_Train_Sets/Train_Sets/{CT,MR}/<id>/... under ``top``; returns ``top``."""
    root = top / "CHAOS_Train_Sets" / "Train_Sets"
    for sid in CT_IDS:
        g, rng = GEOM["ct"], np.random.default_rng(sid)
        n = g["n"]
        slices = []
        for k in range(n):
            a = np.full((g["rows"], g["cols"]), -100 + 20 * k, np.int16)
            a[CT_RECT] = 150 + 10 * k                    # the liver's HU encodes the physical slice
            slices.append(a)
        inst = [n - k for k in range(n)]                 # InstanceNumber descending along z
        names = [f"i{p:04d},0000b.dcm" for p in rng.permutation(n)]
        write_series(root / "CT" / str(sid) / "DICOM_anon", "ct", sid, slices, inst, names, "CT", f"1.2.3.{sid}.1")
        pngs = {}
        for k in range(n):
            a = np.zeros((g["rows"], g["cols"]), np.uint8)
            if k == CT_LIVER_SLICE:
                a[CT_RECT] = 255
            pngs[f"liver_GT_{inst[k] - 1:03d}.png"] = a   # PNG index = instance rank
        write_pngs(root / "CT" / str(sid) / "Ground", pngs)
    for sid in MR_IDS:
        base = root / "MR" / str(sid)
        rng = np.random.default_rng(100 + sid)
        g = GEOM["t1"]
        for phase, (liver, bg), first in (("InPhase", (800, 100), 2), ("OutPhase", (50, 300), 1)):
            slices = []
            for k in range(g["n"]):
                a = np.full((g["rows"], g["cols"]), bg, np.uint16)
                a[T1_ORGANS[1][1:]] = liver
                slices.append(a)
            inst = [first + 2 * k for k in range(g["n"])]
            names = [f"IMG-0004-{int(p):05d}.dcm" for p in rng.choice(900, g["n"], replace=False) + 50]
            write_series(base / "T1DUAL" / "DICOM_anon" / phase, "t1", sid, slices, inst, names, "MR",
                         f"1.2.4.{sid}.{first}")
        pngs = {}
        for r in range(g["n"]):
            a = np.zeros((g["rows"], g["cols"]), np.uint8)
            if r in T1_ORGANS:
                grey, rows, cols = T1_ORGANS[r]
                a[rows, cols] = grey
                if r == 1:                               # the ends of the liver range are liver too
                    a[rows.start, cols.start], a[rows.start, cols.start + 1] = 55, 70
            pngs[f"IMG-0004-{2 * (r + 1):05d}.png"] = a
        write_pngs(base / "T1DUAL" / "Ground", pngs)
        g = GEOM["t2"]
        slices = []
        for k in range(g["n"]):
            a = np.full((g["rows"], g["cols"]), 200, np.uint16)
            a[T2_LIVER[1:]] = 700
            slices.append(a)
        names = [f"IMG-0002-{int(p):05d}.dcm" for p in rng.choice(900, g["n"], replace=False) + 50]
        write_series(base / "T2SPIR" / "DICOM_anon", "t2", sid, slices, list(range(1, g["n"] + 1)), names, "MR",
                     f"1.2.5.{sid}")
        pngs = {}
        for r in range(g["n"]):
            a = np.zeros((g["rows"], g["cols"]), np.uint8)
            if r == T2_LIVER[0]:
                a[T2_LIVER[1:]] = 63
            pngs[f"IMG-0002-{r + 1:05d}.png"] = a
        write_pngs(base / "T2SPIR" / "Ground", pngs)
    return top


@pytest.fixture(scope="module")
def chaos_raw(tmp_path_factory) -> Path:
    from regbench.utils import keeps_locale  # GDCM's DICOM writer leaves the C locale at "C" (see keeps_locale)

    return keeps_locale(write_chaos)(tmp_path_factory.mktemp("chaos") / "raw")


def _train_sets(raw: Path) -> Path:
    return raw / "CHAOS_Train_Sets" / "Train_Sets"


CH_PARAMS = {"shape": [16, 16, 16], "roi_margin_mm": 2.0}


def _no_output(out: Path) -> None:
    """Nothing of a failed build is left: no output folder, no staging folder beside it."""
    assert not out.exists()
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def _world_centroid(seg: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    idx = np.argwhere(seg == value).mean(0)
    return affine[:3, :3] @ idx + affine[:3, 3]


# ------------------------------------------------------------------------------------------------ MM-WHS tests
@pytest.fixture(scope="module")
def mmwhs_built(mmwhs_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mmwhs_prep") / "mmwhs2017"
    dp.build_mmwhs(mmwhs_raw, out, MM_PARAMS, seed=3, dataset="mmwhs2017")
    return out


def test_mmwhs_contract_and_folds(mmwhs_built):
    cases = pd.read_csv(mmwhs_built / "cases.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(cases.columns) == ["case", "split", "test_fold", "set", "subject", "ct", "mr", "seg", "source_image",
                                   "source_label"]
    ct = cases[cases.case.str.startswith("ct_")]
    mr = cases[cases.case.str.startswith("mr_")]
    assert len(ct) == 5 and len(mr) == 6
    assert (ct.mr == "").all() and (ct.ct != "").all() and (mr.ct == "").all() and (mr.mr != "").all()
    assert set(cases.split) == {"cv"}
    assert cases.source_label.str.endswith("_label.nii.gz").all()
    pairs = pd.read_csv(mmwhs_built / "pairs.tsv", sep="\t", dtype={"fold": int})
    assert list(pairs.columns) == ["pair_id", "fold", "split", "fixed", "moving"]
    assert sorted(pairs.fold.unique()) == [0, 1, 2, 3]
    assert pairs.fixed.str.startswith("ct_").all() and pairs.moving.str.startswith("mr_").all()
    tested: dict[str, set[int]] = {}
    for k in range(4):
        test = pairs[(pairs.fold == k) & (pairs.split == "test")]
        train = pairs[(pairs.fold == k) & (pairs.split == "train")]
        test_subj = set(test.fixed) | set(test.moving)
        assert test_subj and not test_subj & (set(train.fixed) | set(train.moving))
        # every CT(k) x MR(k) pair is tested, every CT(not k) x MR(not k) pair trains
        assert len(test) == test.fixed.nunique() * test.moving.nunique()
        assert len(train) == (5 - test.fixed.nunique()) * (6 - test.moving.nunique())
        for s in test_subj:
            tested.setdefault(s, set()).add(k)
    assert sorted(tested) == sorted(cases.case) and all(len(v) == 1 for v in tested.values())
    fold_of = dict(zip(cases.case, cases.test_fold.astype(int)))
    assert all(fold_of[s] == next(iter(v)) for s, v in tested.items())
    meta = json.loads((mmwhs_built / "dataset.json").read_text())
    assert meta["reader"] == "mmwhs" and meta["protocol"]["n_folds"] == 4
    assert meta["labels"]["written"] == {"1": "left ventricle blood cavity (500)",
                                         "2": "left ventricle myocardium (205)"}


def test_mmwhs_modality_columns_load_through_the_pipeline_reader(mmwhs_built):
    ds = PreparedDataset.open(mmwhs_built)
    pair = ds.pairs_for(1, "test").iloc[0]
    fixed, moving = ds.load(pair.fixed, "ct"), ds.load(pair.moving, "mr")
    check_same_grid(fixed, moving)                     # what register / train require of a pair
    assert fixed.array.shape == (16, 16, 16) and fixed.array.dtype == np.float32
    with pytest.raises(DataError, match="has no 'mr' file"):
        ds.path(pair.fixed, "mr")                       # the other modality's cell is empty


def test_mmwhs_labels_remapped_and_placed_in_world(mmwhs_built):
    ds = PreparedDataset.open(mmwhs_built)
    meta = json.loads((mmwhs_built / "dataset.json").read_text())
    spacing = meta["grid"]["spacing_mm"]
    assert meta["grid"]["spacing_auto"] and spacing[0] == spacing[1] == spacing[2]
    for case in ds.cases.case:
        mod, sid = case.split("_")
        img = ds.load(case, mod)
        seg = ds.load(case, "seg")
        assert img.array.shape == seg.array.shape == (16, 16, 16)
        assert 0.0 <= img.array.min() and img.array.max() <= 1.0 and img.array.max() > 0.5
        assert np.allclose(img.spacing, spacing)
        assert set(np.unique(seg.array)) == {0, 1, 2}    # 500 -> 1, 205 -> 2, RV / aorta dropped
        aff = nib.load(str(ds.path(case, "seg"))).affine
        assert np.allclose(np.diag(aff)[:3], spacing) and np.allclose(aff[:3, :3], np.diag(spacing))  # RAS+
        # the LV cavity lands where it is in the world, through flipped (CT) and permuted (MR) source axes
        c = heart_centre(mod, int(sid))
        assert np.abs(_world_centroid(seg.array, aff, 1) - c).max() < 0.6 * spacing[0] + 0.3
        # blood pool brighter than myocardium in both modalities here
        assert img.array[seg.array == 1].mean() > img.array[seg.array == 2].mean()


def test_mmwhs_deterministic_with_seed(mmwhs_raw, mmwhs_built, tmp_path):
    again = tmp_path / "again"
    dp.build_mmwhs(mmwhs_raw, again, MM_PARAMS, seed=3, dataset="mmwhs2017")
    assert (again / "pairs.tsv").read_text() == (mmwhs_built / "pairs.tsv").read_text()
    assert (again / "cases.tsv").read_text() == (mmwhs_built / "cases.tsv").read_text()
    for f in ("images/mr_1004.nii.gz", "labels/ct_1002_seg.nii.gz"):
        assert np.array_equal(np.asanyarray(nib.load(str(again / f)).dataobj),
                              np.asanyarray(nib.load(str(mmwhs_built / f)).dataobj))
    other = tmp_path / "other"
    dp.build_mmwhs(mmwhs_raw, other, {**MM_PARAMS, "shape": [8, 8, 8]}, seed=4, dataset="mmwhs2017")
    assert (other / "pairs.tsv").read_text() != (mmwhs_built / "pairs.tsv").read_text()


def test_mmwhs_421_is_left_atrium_unless_aliases_are_cleared(mmwhs_raw, tmp_path):
    raw = _copy(mmwhs_raw, tmp_path / "raw")
    f = raw / "mr_train" / "mr_train_1003_label.nii.gz"
    img = nib.load(str(f))
    lab = np.asanyarray(img.dataobj).copy()
    lab[lab == 600] = 421
    nib.save(nib.Nifti1Image(lab, img.affine), f)
    out = tmp_path / "prep" / "mmwhs2017"
    dp.build_mmwhs(raw, out, {**MM_PARAMS, "labels": [500, 420], "max_subjects": 4}, seed=0)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["cases"]["mr_1003"]["aliased_voxels"]["421"] > 0
    assert meta["cases"]["mr_1003"]["label_voxels_native"]["2"] > 0      # 421 -> 420 -> 2
    with pytest.raises(DataError, match=r"mr_train_1003_label\.nii\.gz: label value\(s\) \[421\] outside"):
        dp.build_mmwhs(raw, tmp_path / "prep2" / "mmwhs2017", {**MM_PARAMS, "label_aliases": {}}, seed=0)
    _no_output(tmp_path / "prep2" / "mmwhs2017")


def test_mmwhs_unknown_label_value_names_the_file(mmwhs_raw, tmp_path):
    raw = _copy(mmwhs_raw, tmp_path / "raw")
    f = raw / "ct_train" / "ct_train_1004_label.nii.gz"
    img = nib.load(str(f))
    lab = np.asanyarray(img.dataobj).copy()
    lab[0, 0, 0] = 333
    nib.save(nib.Nifti1Image(lab, img.affine), f)
    out = tmp_path / "prep" / "mmwhs2017"
    with pytest.raises(DataError, match=r"ct_train_1004_label\.nii\.gz: label value\(s\) \[333\] outside the MM-WHS"):
        dp.build_mmwhs(raw, out, MM_PARAMS, seed=0)
    _no_output(out)


def test_mmwhs_missing_label_file_names_it(mmwhs_raw, tmp_path):
    raw = _copy(mmwhs_raw, tmp_path / "raw")
    (raw / "mr_train" / "mr_train_1005_label.nii.gz").unlink()
    out = tmp_path / "prep" / "mmwhs2017"
    with pytest.raises(DataError, match=r"mr_train/mr_train_1005_label\.nii\.gz: missing label map of "
                                        r"mr_train_1005_image\.nii\.gz"):
        dp.build_mmwhs(raw, out, MM_PARAMS, seed=0)
    _no_output(out)


def test_mmwhs_failure_while_writing_keeps_the_previous_build(mmwhs_raw, tmp_path):
    raw = _copy(mmwhs_raw, tmp_path / "raw")
    out = tmp_path / "prep" / "mmwhs2017"
    dp.build_mmwhs(raw, out, {**MM_PARAMS, "shape": [8, 8, 8]}, seed=0)
    before = (out / "cases.tsv").read_text()
    f = raw / "mr_train" / "mr_train_1006_image.nii.gz"    # the last case: fails after others were written
    img = nib.load(str(f))
    a = np.asanyarray(img.dataobj).copy()
    a[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(a, img.affine), f)
    with pytest.raises(DataError, match=r"mr_train_1006_image\.nii\.gz: 1 voxels are NaN"):
        dp.build_mmwhs(raw, out, MM_PARAMS, seed=0)
    assert (out / "cases.tsv").read_text() == before
    assert [p.name for p in out.parent.iterdir()] == ["mmwhs2017"]


def test_mmwhs_roi_choices_set_the_grid(mmwhs_raw, tmp_path):
    spacing = {}
    for roi in ("labels", "heart", "image"):
        out = tmp_path / roi
        dp.build_mmwhs(mmwhs_raw, out, {**MM_PARAMS, "shape": [8, 8, 8], "roi": roi, "max_subjects": 4}, seed=0)
        grid = json.loads((out / "dataset.json").read_text())["grid"]
        spacing[roi] = grid["spacing_mm"][0]
        assert grid["spacing_auto"] and grid["roi_clipped"] == [] and grid["spacing_set_by"]
    # LV + myocardium (11 mm + 2 x 2 mm) < whole heart < the MR field of view (1.8 mm x 24 + 4 mm)
    assert spacing["labels"] < spacing["heart"] < spacing["image"]
    assert spacing["image"] == pytest.approx((1.8 * 24 + 4) / 8, abs=0.011)
    out = tmp_path / "fixed"
    dp.build_mmwhs(mmwhs_raw, out, {**MM_PARAMS, "shape": [8, 8, 8], "spacing_mm": 1.0, "max_subjects": 4}, seed=0)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["grid"]["spacing_mm"] == [1.0, 1.0, 1.0] and not meta["grid"]["spacing_auto"]
    assert len(meta["grid"]["roi_clipped"]) == 8             # 15 mm boxes on an 8 mm grid: cut, and recorded


def test_mmwhs_params_and_fold_count_checked(mmwhs_raw, tmp_path):
    with pytest.raises(ConfigError, match="unknown_key"):
        dp.resolve_params("mmwhs", {"unknown_key": 1})
    with pytest.raises(ConfigError, match=r"labels: \[421\] not in the dataset's labels"):
        dp.resolve_params("mmwhs", {"labels": [500, 421]})
    with pytest.raises(ConfigError, match="ct_window: need low < high"):
        dp.resolve_params("mmwhs", {"ct_window": [400, -200]})
    assert dp.resolve_params("mmwhs", {"spacing_mm": 1.5})["spacing_mm"] == [1.5, 1.5, 1.5]
    with pytest.raises(ConfigError, match="3 CT subject"):
        dp.build_mmwhs(mmwhs_raw, tmp_path / "x", {**MM_PARAMS, "max_subjects": 3}, seed=0)


def test_cv_pairs_caps_cover_every_test_subject():
    fixed = {f"ct_{i}": i % 4 for i in range(10)}       # folds of 3, 3, 2, 2
    moving = {f"mr_{i}": i % 4 for i in range(9)}       # folds of 3, 2, 2, 2
    full, facts = dp.cv_pairs(fixed, moving, 4, seed=0)
    assert (full[full.split == "test"].groupby("fold").size() == [9, 6, 4, 4]).all()
    capped, facts = dp.cv_pairs(fixed, moving, 4, seed=0, max_train=5, max_test=3)
    for k in range(4):
        t = capped[(capped.fold == k) & (capped.split == "test")]
        assert len(t) == 3 and not facts[str(k)]["untested"]
        assert set(t.fixed) == {c for c, f in fixed.items() if f == k}
        assert set(t.moving) == {c for c, f in moving.items() if f == k}
        assert len(capped[(capped.fold == k) & (capped.split == "train")]) == 5
    folds = dp.assign_folds([f"s{i}" for i in range(7)], 4, seed=1, stream=0)
    assert sorted(np.bincount(list(folds.values()))) == [1, 2, 2, 2]
    assert folds == dp.assign_folds([f"s{i}" for i in reversed(range(7))], 4, seed=1, stream=0)


def test_registry_entries_match_the_readers(mmwhs_raw, chaos_raw):
    reg = load_registry(REPO / "config" / "datasets.yaml")
    assert reg["mmwhs2017"]["labels"] == dp.MMWHS_LABELS
    assert reg["chaos"]["labels"] == dp.CHAOS_LABELS
    for name, raw in (("mmwhs2017", mmwhs_raw), ("chaos", chaos_raw)):
        layout = reg[name]["source"]["layout"]
        for pattern in [layout] if isinstance(layout, str) else layout:   # what fetch checks after ingesting
            assert glob.glob(os.path.join(glob.escape(str(raw)), pattern), recursive=True), (name, pattern)


@pytest.mark.parametrize("kind", ["mmwhs", "chaos"])
def test_cli_preprocess_dispatches(kind, mmwhs_raw, chaos_raw, tmp_path, capsys):
    from regbench.cli import main

    raw = mmwhs_raw if kind == "mmwhs" else chaos_raw
    out = tmp_path / "prep" / kind
    spec = {"dataset": kind, "preprocess": kind, "seed": 0,
            "params": {**MM_PARAMS, "shape": [8, 8, 8], "max_subjects": 4, "n_folds": 2}}
    assert main(["preprocess", "--raw", str(raw), "--out", str(out), "--spec", json.dumps(spec)]) == 0
    assert sorted(pd.read_csv(out / "pairs.tsv", sep="\t").fold.unique()) == [0, 1]
    spec["params"]["n_folds"] = 5                      # a RegbenchError: message, exit status 2
    assert main(["preprocess", "--raw", str(raw), "--out", str(out), "--spec", json.dumps(spec)]) == 2
    assert "for 5 folds" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CHAOS tests
@pytest.fixture(scope="module")
def chaos_t1(chaos_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chaos_prep") / "chaos_t1"
    dp.build_chaos(chaos_raw, out, {**CH_PARAMS, "labels": [1, 2, 3, 4]}, seed=0, dataset="chaos_t1")
    return out


def test_chaos_dicom_order_from_headers_not_names(chaos_raw):
    folder = _train_sets(chaos_raw) / "CT" / "2" / "DICOM_anon"
    names_sorted = sorted(p.name for p in folder.iterdir())
    s = dp.scan_dicom_series(folder)
    assert [f.name for f in s.files] != names_sorted                  # shuffled names
    assert s.instance == [8 - k for k in range(8)]                   # physical order recovered
    assert s.info["instance_vs_position"] == "descending" and s.info["gdcm_order_agrees"] in (True, False)
    assert np.allclose(s.affine[:3, 3], _ipp0("ct", 2) * [-1, -1, 1])
    assert np.allclose(np.linalg.norm(s.affine[:3, :3], axis=0), [1.25, 1.5, 2.5])
    img = dp.read_series_image(s)
    assert img.shape == (24, 20, 8)
    assert np.allclose(img[0, 0, :], [-100 + 20 * k for k in range(8)])   # HU, slices in position order


def test_dicom_series_uids_and_stacking_checked(tmp_path):
    slices = [np.full((20, 24), 10 * k, np.int16) for k in range(5)]
    names = [f"s{k}.dcm" for k in (3, 1, 4, 0, 2)]
    per_file = tmp_path / "per_file"                  # anonymisation that gives every file its own series UID
    write_series(per_file, "ct", 1, slices, [1, 2, 3, 4, 5], names, "CT", "1.2.9.1",
                 series_uids=[f"1.2.9.1.{k}" for k in range(5)])
    s = dp.scan_dicom_series(per_file)
    assert s.info["series_uids"] == 5 and s.instance == [1, 2, 3, 4, 5]
    assert np.allclose(dp.read_series_image(s)[0, 0], [0, 10, 20, 30, 40])
    mixed = tmp_path / "mixed"
    write_series(mixed, "ct", 1, slices, [1, 2, 3, 4, 5], names, "CT", "1.2.9.2",
                 series_uids=["1.2.9.2.a"] * 3 + ["1.2.9.2.b"] * 2)
    with pytest.raises(DataError, match=rf"{re.escape(str(mixed))}: holds 2 series"):
        dp.scan_dicom_series(mixed)
    tilted = tmp_path / "tilted"                      # gantry tilt: positions drift in-plane
    write_series(tilted, "ct", 1, slices, [1, 2, 3, 4, 5], names, "CT", "1.2.9.3", shift=(0.0, 0.7, 0.0))
    with pytest.raises(DataError, match=rf"{re.escape(str(tilted))}: the slices do not stack along the normal"):
        dp.scan_dicom_series(tilted)
    inst = tmp_path / "inst"
    write_series(inst, "ct", 1, slices, [1, 2, 2, 4, 5], names, "CT", "1.2.9.4")
    with pytest.raises(DataError, match=r"InstanceNumber\(s\) \[2\] occur in several files"):
        dp.scan_dicom_series(inst).png_slots("instance")
    assert dp.scan_dicom_series(inst).png_slots("position") == [0, 1, 2, 3, 4]


def test_chaos_contract_and_grey_levels(chaos_t1):
    ds = PreparedDataset.open(chaos_t1)
    cases = ds.cases
    assert set(cases.case) == {f"ct_{i}" for i in CT_IDS} | {f"mr_{i}" for i in MR_IDS}
    assert set(cases.loc[cases.case.str.startswith("mr_"), "set"]) == {"MR T1-DUAL in-phase"}
    assert cases.loc[cases.case.str.startswith("mr_"), "source_image"].str.endswith("T1DUAL/DICOM_anon/InPhase").all()
    pairs = ds.pairs
    for k in range(4):
        test = pairs[(pairs.fold == k) & (pairs.split == "test")]
        assert len(test) == 1                                         # 4 subjects per modality, 4 folds
        assert len(pairs[(pairs.fold == k) & (pairs.split == "train")]) == 9
    assert set(pairs[pairs.split == "test"].fixed) == {f"ct_{i}" for i in CT_IDS}
    assert set(pairs[pairs.split == "test"].moving) == {f"mr_{i}" for i in MR_IDS}
    meta = json.loads((chaos_t1 / "dataset.json").read_text())
    for sid in MR_IDS:
        seg = ds.load(f"mr_{sid}", "seg").array
        assert set(np.unique(seg)) == {0, 1, 2, 3, 4}                 # liver, kidneys, spleen
        assert meta["cases"][f"mr_{sid}"]["grey_levels"] == [0, 55, 63, 70, 126, 189, 252]
        img = ds.load(f"mr_{sid}", "mr").array
        assert img.shape == (16, 16, 16) and 0 <= img.min() and img.max() <= 1
        assert img[seg == 1].mean() > img[seg == 0].mean() + 0.3      # in-phase: bright liver
    for sid in CT_IDS:
        seg = ds.load(f"ct_{sid}", "seg").array
        assert set(np.unique(seg)) == {0, 1}
    check_same_grid(ds.load("ct_1", "ct"), ds.load("mr_8", "mr"))


def test_chaos_ground_truth_lands_on_its_slice(chaos_t1):
    ds = PreparedDataset.open(chaos_t1)
    for sid in CT_IDS:
        seg = ds.load(f"ct_{sid}", "seg")
        aff = nib.load(str(ds.path(f"ct_{sid}", "seg"))).affine
        want = slice_world("ct", sid, CT_LIVER_SLICE, *CT_RECT)
        got = _world_centroid(seg.array, aff, 1)
        assert np.abs(got - want).max() < 0.6 * aff[0, 0] + 0.2, (got, want)
        # the CT image under the label is the liver of that slice (150 + 10 k HU, window [-100, 300])
        img = ds.load(f"ct_{sid}", "ct").array
        assert abs(img[seg.array == 1].mean() - (150 + 10 * CT_LIVER_SLICE + 100) / 400) < 0.02
    for sid in MR_IDS:                                 # PNG rank r -> slice with the r-th InstanceNumber (= slice r)
        seg = ds.load(f"mr_{sid}", "seg")
        aff = nib.load(str(ds.path(f"mr_{sid}", "seg"))).affine
        for rank, (_, rows, cols) in T1_ORGANS.items():
            got = _world_centroid(seg.array, aff, rank)          # label id == rank here
            want = slice_world("t1", sid, rank, rows, cols)
            assert np.abs(got - want).max() < 0.6 * aff[0, 0] + 0.2, (sid, rank, got, want)


def test_chaos_t2_and_outphase_from_one_raw_folder(chaos_raw, tmp_path):
    out = tmp_path / "chaos_t2"
    dp.build_chaos(chaos_raw, out, {**CH_PARAMS, "moving": "t2spir", "spacing_mm": 1.5}, seed=0, dataset="chaos_t2")
    ds = PreparedDataset.open(out)
    mr = ds.cases[ds.cases.case.str.startswith("mr_")]
    assert mr.source_image.str.endswith("T2SPIR/DICOM_anon").all() and set(mr.set) == {"MR T2-SPIR"}
    for sid in MR_IDS:
        seg = ds.load(f"mr_{sid}", "seg")
        aff = nib.load(str(ds.path(f"mr_{sid}", "seg"))).affine
        assert np.allclose(np.diag(aff)[:3], 1.5)
        # orientation (-1,0,0, 0,1,0): slices run towards -z; the liver PNG is the 3rd by name = 3rd along the normal
        want = slice_world("t2", sid, T2_LIVER[0], *T2_LIVER[1:])
        assert np.abs(_world_centroid(seg.array, aff, 1) - want).max() < 1.0
    out2 = tmp_path / "chaos_t1_out"
    dp.build_chaos(chaos_raw, out2, {**CH_PARAMS, "moving": "t1dual_outphase", "max_subjects": 4}, seed=0)
    ds2 = PreparedDataset.open(out2)
    img, seg = ds2.load("mr_3", "mr").array, ds2.load("mr_3", "seg").array
    assert img[seg == 1].mean() < img[seg == 0].mean() - 0.3           # out-phase: dark liver


def test_chaos_png_order_position_differs(chaos_raw, tmp_path):
    out = tmp_path / "pos"
    dp.build_chaos(chaos_raw, out, {**CH_PARAMS, "png_order": "position", "spacing_mm": 1.25}, seed=0)
    ds = PreparedDataset.open(out)
    seg = ds.load("ct_5", "seg")
    aff = nib.load(str(ds.path("ct_5", "seg"))).affine
    # by position, liver_GT_002.png goes on the 3rd slice from the bottom, not the 6th (instance 3)
    want = slice_world("ct", 5, 2, *CT_RECT)
    assert np.abs(_world_centroid(seg.array, aff, 1) - want).max() < 1.0


def _broken(chaos_raw: Path, tmp_path: Path) -> tuple[Path, Path]:
    raw = _copy(chaos_raw, tmp_path / "raw")
    return raw, _train_sets(raw)


def _expect(raw: Path, tmp_path: Path, pattern: str, params: dict | None = None) -> None:
    out = tmp_path / "prep" / "chaos"
    with pytest.raises(DataError, match=pattern):
        dp.build_chaos(raw, out, {**CH_PARAMS, **(params or {})}, seed=0)
    _no_output(out)


def _by_position(folder: Path) -> list[Path]:
    return dp.scan_dicom_series(folder).files


def test_chaos_missing_slice_names_the_folder(chaos_raw, tmp_path):
    raw, ts = _broken(chaos_raw, tmp_path)
    folder = ts / "CT" / "5" / "DICOM_anon"
    _by_position(folder)[3].unlink()
    next((ts / "CT" / "5" / "Ground").iterdir()).unlink()               # keep the PNG count equal
    _expect(raw, tmp_path,
            rf"{re.escape(str(folder))}: non-uniform slice spacing: 5\.000 mm .* median gap is 2\.500 mm "
            r".*missing slice")


def test_chaos_duplicated_slice_names_the_folder(chaos_raw, tmp_path):
    raw, ts = _broken(chaos_raw, tmp_path)
    folder = ts / "MR" / "3" / "T1DUAL" / "DICOM_anon" / "InPhase"
    shutil.copy(_by_position(folder)[2], folder / "IMG-0004-00999.dcm")
    _expect(raw, tmp_path, rf"{re.escape(str(folder))}: duplicated slice: .* both at", {"max_subjects": 4})


def test_chaos_png_count_mismatch_names_the_ground_folder(chaos_raw, tmp_path):
    raw, ts = _broken(chaos_raw, tmp_path)
    ground = ts / "MR" / "5" / "T2SPIR" / "Ground"
    sorted(ground.iterdir())[-1].unlink()
    _expect(raw, tmp_path,
            rf"{re.escape(str(ground))}: 6 ground-truth PNG\(s\) but the DICOM series .* has 7 slices",
            {"moving": "t2spir"})


def test_chaos_png_of_the_wrong_size_names_the_png(chaos_raw, tmp_path):
    raw, ts = _broken(chaos_raw, tmp_path)
    png = ts / "CT" / "6" / "Ground" / "liver_GT_004.png"
    write_pngs(png.parent, {png.name: np.zeros((21, 24), np.uint8)})
    _expect(raw, tmp_path,
            rf"{re.escape(str(png))}: ground-truth PNG is 24x21 \(width x height\) but the DICOM slices .* are 24x20")


def test_chaos_unknown_grey_level_names_the_png(chaos_raw, tmp_path):
    raw, ts = _broken(chaos_raw, tmp_path)
    png = ts / "MR" / "8" / "T1DUAL" / "Ground" / "IMG-0004-00006.png"
    a = np.zeros((18, 16), np.uint8)
    a[5:8, 5:8] = 90
    write_pngs(png.parent, {png.name: a})
    _expect(raw, tmp_path, rf"{re.escape(str(png))}: grey level\(s\) \[90\] are not CHAOS MR ground-truth levels")


def test_chaos_missing_ground_folder_and_params(chaos_raw, tmp_path):
    raw, ts = _broken(chaos_raw, tmp_path)
    shutil.rmtree(ts / "MR" / "1" / "T2SPIR" / "Ground")
    _expect(raw, tmp_path, r"T2SPIR/Ground: missing Ground \(PNG ground truth\) folder of CHAOS MR subject 1",
            {"moving": "t2spir"})
    with pytest.raises(ConfigError, match="moving"):
        dp.resolve_params("chaos", {"moving": "t1"})
    with pytest.raises(ConfigError, match=r"labels: \[5\]"):
        dp.resolve_params("chaos", {"labels": [5]})

"""The ``liver`` preprocess stage (Cai et al. 2023): fixtures in the real formats (the writers of
tests/test_cai2023_liver.py), :func:`build_liver` outputs (grid, labels, landmarks after resizing, pairs), the
all-or-nothing write on bad input, the CLI dispatch and the landmark TRE column of the evaluation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from regbench.datasets.liver import read_landmarks
from regbench.datasets.liver_prep import build_liver, resolve_params
from regbench.errors import ConfigError, DataError

h5py = pytest.importorskip("h5py")

from test_cai2023_liver import _msd_tar, _write_h5, _write_mhd  # noqa: E402  (fixture writers, real layouts)

PTS = np.array([[4.5, 4.5, 4.5], [2.0, 3, 4], [5, 6, 7], [8, 9, 10], [1, 1, 1], [12, 13, 14]])


def _rcn_case(shift=(0.0, 0.0, 0.0), seed=0):
    """16^3 in [0, 255]: a bright 2^3 cube centred on landmark 1 (voxels 4-5), a liver block, 6x3 points."""
    rng = np.random.default_rng(seed)
    v = np.zeros((16, 16, 16), np.float32)
    v[4:6, 4:6, 4:6] = 255.0
    v[10:14, 2:4, 2:4] = rng.uniform(20, 40, (4, 2, 2))
    s = np.zeros((16, 16, 16), np.uint8)
    s[8:14, 6:12, 6:12] = 1
    return {"volume": v, "segmentation": s, "point": (PTS + np.asarray(shift)).astype(np.float32)}


def _no_leftovers(parent):
    return not parent.exists() or not [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_rcn_h5_landmarks_follow_the_resized_image(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write_h5(raw / "sliver_val.h5", {f"sliver{i}": _rcn_case(seed=i) for i in range(3)})
    out = tmp_path / "prep" / "sliver07"
    df = build_liver(raw, out, {"reader": "rcn_h5", "files": ["sliver_val.h5"], "split": "all_test",
                                "shape": [24, 24, 24]}, seed=0, dataset="sliver07")
    assert list(df.columns) == ["case", "split", "set", "ct", "seg", "landmarks", "source", "source_id"]
    cases = pd.read_csv(out / "cases.tsv", sep="\t")
    assert cases["case"].tolist() == ["sliver0", "sliver1", "sliver2"] and set(cases["split"]) == {"test"}
    assert cases.at[0, "source"] == "sliver_val.h5:sliver0" and cases.at[0, "set"] == "sliver_val"
    img = nib.load(str(out / cases.at[0, "ct"]))
    vol = np.asarray(img.dataobj)
    assert vol.shape == (24, 24, 24) and vol.dtype == np.float32 and 0 <= vol.min() and vol.max() <= 1
    assert np.allclose(img.header.get_zooms()[:3], 1.0)  # spacing: unit (HDF5 has none anyway)
    seg = np.asarray(nib.load(str(out / cases.at[0, "seg"])).dataobj)
    assert seg.dtype == np.int16 and set(np.unique(seg)) == {0, 1}
    pts = read_landmarks(out / cases.at[0, "landmarks"])
    f = 24 / 16
    assert np.allclose(pts, (PTS + 0.5) * f - 0.5, atol=1e-5)
    assert np.allclose(pts[0], [7.0, 7.0, 7.0])
    # the image moved with the landmark: the cube's intensity centroid is landmark 1 on the new grid
    box = vol[3:12, 3:12, 3:12]
    centroid = [float((box.sum(axis=tuple(a for a in range(3) if a != ax)) * np.arange(3, 12)).sum() / box.sum())
                for ax in range(3)]
    assert np.allclose(centroid, pts[0], atol=0.05)
    pairs = pd.read_csv(out / "pairs.tsv", sep="\t")
    assert list(pairs.columns) == ["pair_id", "fold", "split", "fixed", "moving"]
    assert len(pairs) == 6 and set(pairs["split"]) == {"test"} and set(pairs["fold"]) == {0}
    assert "sliver0__sliver1" in set(pairs["pair_id"])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["grid"]["scaled_down"] and meta["protocol"]["n_pairs"] == {"train": 0, "test": 6}
    assert _no_leftovers(out.parent)


def test_bfh_training_set_without_segmentation_or_test_pairs(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    c = _rcn_case()
    _write_h5(raw / "youyi_liver.h5", {"00139427_225": c, "13472546_180(1)": c})
    _write_h5(raw / "msd_dataset.h5", {"hepaticvessel/1": {"volume": c["volume"]}})
    out = tmp_path / "bfh"
    df = build_liver(raw, out, {"files": ["youyi_liver.h5", "msd_dataset.h5"], "shape": [8, 8, 8]}, 0, "bfh")
    assert df["case"].tolist() == ["00139427_225", "13472546_180_1_", "hepaticvessel_1"]  # file-name safe ids
    assert df["source_id"].tolist()[1] == "13472546_180(1)" and set(df["split"]) == {"train"}
    cases = pd.read_csv(out / "cases.tsv", sep="\t", keep_default_na=False)
    assert cases.at[2, "seg"] == "" and cases.at[0, "seg"].endswith("_seg.nii.gz")
    pairs = pd.read_csv(out / "pairs.tsv", sep="\t")
    assert len(pairs) == 6 and set(pairs["split"]) == {"train"}
    # the same unlabelled file as a test set must fail (liver Dice needs every segmentation)
    with pytest.raises(DataError, match=r"msd_dataset.h5:hepaticvessel/1: group has no `segmentation`"):
        build_liver(raw, tmp_path / "t", {"files": ["msd_dataset.h5"], "split": "all_test"}, 0, "bfh")
    assert not (tmp_path / "t").exists()


def test_lits_labels_merged_reoriented_and_windowed(tmp_path):
    d = tmp_path / "raw" / "Training_Batch1"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    segs = {}
    for n in (0, 3):
        v = rng.uniform(-1000, 1000, (8, 9, 10)).astype(np.float32)
        v[0, 0, 0], v[1, 0, 0] = -200.0, 100.0
        s = np.zeros((8, 9, 10), np.uint8)
        s[2:6, 2:7, 3:8] = 1
        s[3:4, 3:5, 4:6] = 2  # tumour inside the liver
        segs[n] = s
        aff = np.diag([-0.7, 0.7, 2.5, 1.0])  # x flipped: LAS
        nib.save(nib.Nifti1Image(v, aff), str(d / f"volume-{n}.nii"))
        nib.save(nib.Nifti1Image(s, aff), str(d / f"segmentation-{n}.nii"))
    out = tmp_path / "lits"
    build_liver(tmp_path / "raw", out, {"split": "all_test", "shape": [8, 9, 10],
                                        "merge_labels": {1: [1, 2]}}, 0, "lits")
    cases = pd.read_csv(out / "cases.tsv", sep="\t")
    assert cases["case"].tolist() == ["lits000", "lits003"] and "landmarks" not in cases.columns
    seg = np.asarray(nib.load(str(out / cases.at[1, "seg"])).dataobj)
    assert np.array_equal(seg, (segs[3] > 0)[::-1].astype(np.int16))  # RAS+: x flipped back; tumour -> liver
    vol = np.asarray(nib.load(str(out / cases.at[0, "ct"])).dataobj)
    assert vol[-1, 0, 0] == pytest.approx(0.0) and vol[-2, 0, 0] == pytest.approx(0.5)  # [-200, 400] -> [0, 1]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["cases"]["lits000"]["orientation_in"] == "LAS"
    assert meta["cases"]["lits000"]["spacing_mm"] == [0.7, 0.7, 2.5]
    # an unexpected label value is refused (the second case fails after the first was written: no half build)
    bad = segs[3].copy()
    bad[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(bad, np.diag([-0.7, 0.7, 2.5, 1.0])), str(d / "segmentation-3.nii"))
    before = (out / "cases.tsv").read_bytes()
    with pytest.raises(DataError, match=r"segmentation-3.nii.*label value\(s\) \[3\]|volume-3.nii: label value"):
        build_liver(tmp_path / "raw", out, {"shape": [8, 9, 10]}, 0, "lits")
    assert (out / "cases.tsv").read_bytes() == before and _no_leftovers(out.parent)


def test_missing_segmentation_leaves_nothing(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    v = np.zeros((8, 8, 8), np.float32)
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(d / "volume-0.nii"))
    nib.save(nib.Nifti1Image(v.astype(np.uint8), np.eye(4)), str(d / "segmentation-0.nii"))
    nib.save(nib.Nifti1Image(v, np.eye(4)), str(d / "volume-1.nii"))
    out = tmp_path / "prep" / "lits"
    with pytest.raises(DataError, match="volume-1.nii: no matching segmentation-1"):
        build_liver(d, out, {"shape": [8, 8, 8]}, 0, "lits")
    assert not out.exists() and _no_leftovers(out.parent)
    # an empty liver label map in a test set is refused too
    nib.save(nib.Nifti1Image(v.astype(np.uint8), np.eye(4)), str(d / "segmentation-1.nii"))
    with pytest.raises(DataError, match="holds no liver voxel"):
        build_liver(d, out, {"shape": [8, 8, 8]}, 0, "lits")
    assert not out.exists() and _no_leftovers(out.parent)


def test_sliver07_official_and_msd_tar(tmp_path):
    rng = np.random.default_rng(1)
    for n in ("001", "002"):
        v = rng.integers(-1000, 1000, (10, 10, 8)).astype(np.int16)
        s = np.zeros((10, 10, 8), np.uint8)
        s[2:7, 2:7, 2:6] = 255  # SLIVER07 stores the liver as 255 in some files: any non-zero is liver
        _write_mhd(tmp_path / "sl" / "scan", f"liver-orig{n}", v)
        _write_mhd(tmp_path / "sl" / "label", f"liver-seg{n}", s, etype="MET_UCHAR", dtype="u1")
    df = build_liver(tmp_path / "sl", tmp_path / "sliver07", {"shape": [8, 8, 8]}, 0, "sliver07")
    assert df["case"].tolist() == ["sliver001", "sliver002"] and df.at[0, "source"] == "scan/liver-orig001.mhd"
    seg = np.asarray(nib.load(str(tmp_path / "sliver07" / df.at[0, "seg"])).dataobj)
    assert set(np.unique(seg)) == {0, 1}
    (tmp_path / "msd").mkdir()
    _msd_tar(tmp_path / "msd" / "Task03_Liver.tar", n=4)
    df = build_liver(tmp_path / "msd", tmp_path / "msd_liver", {"shape": [8, 8, 8], "split": {"by": "random",
                                                                 "n_test": 2}}, 0, "msd_liver")
    assert sorted(df["split"]) == ["test", "test", "train", "train"]
    pairs = pd.read_csv(tmp_path / "msd_liver" / "pairs.tsv", sep="\t")
    assert (pairs["split"] == "test").sum() == 2 and (pairs["split"] == "train").sum() == 2


def test_params_are_checked():
    with pytest.raises(ConfigError, match="shape"):
        resolve_params("lits", {"shape": [8, 8]})
    with pytest.raises(ConfigError, match="files: only the rcn_h5"):
        resolve_params("lits", {"files": ["a.h5"]})
    with pytest.raises(ConfigError, match="source value 2 is in labels 1 and 3"):
        resolve_params("lits", {"merge_labels": {1: [1, 2], 3: [2]}})
    p = resolve_params("rcn_h5", {"split": "all_train"})
    assert p["intensity"]["window"] == [0.0, 255.0] and p["require_segmentation"] is False


def test_cli_dispatches_liver(tmp_path):
    from regbench.cli import main

    raw = tmp_path / "raw"
    raw.mkdir()
    _write_h5(raw / "sliver_val.h5", {f"s{i}": _rcn_case(seed=i) for i in range(2)})
    spec = {"dataset": "sliver07", "preprocess": "liver", "seed": 0,
            "params": {"reader": "rcn_h5", "split": "all_test", "shape": [8, 8, 8]}}
    assert main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "o"), "--spec", json.dumps(spec)]) == 0
    assert (tmp_path / "o" / "cases.tsv").is_file()


def test_evaluation_reports_landmark_tre(tmp_path):
    """Moving landmarks = fixed + 1 voxel along x: the field u = +1 along x maps every fixed landmark onto its
    moving landmark (pull-back, p + u(p)), TRE 0; the zero field leaves the initial 1 mm."""
    from regbench.evaluate import evaluate_method
    from regbench.io import save_ddf

    raw = tmp_path / "raw"
    raw.mkdir()
    _write_h5(raw / "sliver_val.h5", {"a": _rcn_case(), "b": _rcn_case(shift=(1.0, 0, 0))})
    prep = tmp_path / "prep"
    build_liver(raw, prep, {"reader": "rcn_h5", "split": "all_test", "shape": [16, 16, 16]}, 0, "sliver07")
    reg = tmp_path / "reg"
    reg.mkdir()
    rows = []
    for fixed, moving, shift in (("a", "b", 1.0), ("b", "a", 0.0)):
        ddf = np.zeros((3, 16, 16, 16), np.float32)
        ddf[0] = shift
        pid = f"{fixed}__{moving}"
        save_ddf(reg / f"{pid}_ddf.nii.gz", ddf, np.eye(4))
        rows.append({"pair_id": pid, "fixed": fixed, "moving": moving, "ddf": f"{pid}_ddf.nii.gz",
                     "warped": f"../prep/images/{moving}.nii.gz", "warped_seg": f"../prep/labels/{moving}_seg.nii.gz",
                     "runtime_s": 0.1, "device": "cpu"})
    pd.DataFrame(rows).to_csv(reg / "pairs.tsv", sep="\t", index=False)
    out = evaluate_method(prep, reg, tmp_path / "m.tsv", "sliver07", "m", "M", 0, {1: "liver"}, "ct")
    m = pd.read_csv(out, sep="\t").set_index("pair_id")
    assert m.at["a__b", "tre_landmark_mm"] == pytest.approx(0.0, abs=1e-6)
    assert m.at["b__a", "tre_landmark_mm"] == pytest.approx(1.0, abs=1e-6)
    assert m.at["b__a", "tre_landmark_std_mm"] == pytest.approx(0.0, abs=1e-6)

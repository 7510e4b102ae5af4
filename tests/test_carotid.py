"""The bring-your-own carotid reader (regbench.datasets.carotid, preprocess kind ``carotid``; Huang et al. 2021)
on small nibabel fixtures written in the documented layout ``<patient>/<side>/{t1gd, tof, lumen_t1gd, lumen_tof}
.nii.gz + landmarks_{t1gd,tof}.csv``: anisotropic, permuted and flipped affines (T1GD "RSA", TOF "RAI" as in the
paper), landmarks in world mm, a bright voxel at every landmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.errors import ConfigError, DataError, ShapeMismatchError

REPO = Path(__file__).resolve().parents[1]
B = np.array([3.0, -20.0, 40.0])            # T1GD bifurcation, world RAS mm
#: landmark offsets from the bifurcation (world mm); the TOF adds its own jitter per point
OFFSETS = {"bifurcation": (0.0, 0.0, 0.0), "plaque_1": (-2.5, -4.0, 1.5), "plaque_2": (3.0, 5.0, -2.0)}
TOF_JITTER = {"bifurcation": (0.0, 0.0, 0.0), "plaque_1": (0.5, 1.0, 0.0), "plaque_2": (0.0, 0.0, -0.5)}
# Geometry "exact": every voxel centre of both images lies on the prepared lattice (spacing 0.5, 1.0, 0.5 mm):
# T1GD axes (x, z, y) = RSA at 0.5, 0.5, 1.0 mm; TOF axes (x, y, -z) = RAI at 0.5, 1.0, 0.5 mm, shifted by one voxel.
# Geometry "generic": 0.45 x 0.45 x 0.9 mm RSA and 0.55 x 0.55 x 1.1 mm RAI resampled to 0.6 mm.
GEOMS = {
    "exact": {"t1": ([[0.5, 0, 0], [0, 0, 1.0], [0, 0.5, 0]], (30, 22, 18), (15, 11, 9)),
              "tof": ([[0.5, 0, 0], [0, 1.0, 0], [0, 0, -0.5]], (32, 20, 24), (17, 10, 12)),
              "shift": (0.5, 0.0, -0.5), "spacing_mm": [0.5, 1.0, 0.5]},
    "generic": {"t1": ([[0.45, 0, 0], [0, 0, 0.9], [0, 0.45, 0]], (36, 30, 20), (18, 15, 10)),
                "tof": ([[0.55, 0, 0], [0, 0.55, 0], [0, 0, -1.1]], (30, 22, 24), (15, 10, 12)),
                "shift": (0.7, -0.4, 0.3), "spacing_mm": 0.6},
}
SHAPE = [28, 16, 16]        # the paper's 112 x 64 x 64 / 4
CROP = [24, 14, 16]         # the paper's 96 x 56 x 64 / 4


def _affine(m, centre_idx, centre_world):
    a = np.eye(4)
    a[:3, :3] = np.asarray(m, dtype=np.float64)           # rows: world x, y, z per array axis
    a[:3, 3] = np.asarray(centre_world) - a[:3, :3] @ np.asarray(centre_idx, dtype=np.float64)
    return a


def _image(affine, shape, world: dict) -> tuple[np.ndarray, dict]:
    """Zeros with 1000 at the voxel nearest each world point; returns the array and the points snapped to those
    voxel centres (world mm)."""
    arr = np.zeros(shape, np.float32)
    snapped = {}
    inv = np.linalg.inv(affine)
    for name, w in world.items():
        idx = np.rint((inv @ np.r_[w, 1.0])[:3]).astype(int)
        arr[tuple(idx)] = 1000.0
        snapped[name] = (affine @ np.r_[idx, 1.0])[:3]
    return arr, snapped


def _csv(path: Path, pts: dict, lps: bool = False, rename: dict | None = None, extra: str = "") -> None:
    lines = ["name,x,y,z"]
    for n, w in pts.items():
        x, y, z = (-w[0], -w[1], w[2]) if lps else w
        lines.append(f"{(rename or {}).get(n, n)},{x:.6f},{y:.6f},{z:.6f}")
    path.write_text("\n".join(lines) + "\n" + extra)


def write_artery(root: Path, patient: str, side: str, geom: str = "exact", lps: bool = False) -> dict:
    """One artery folder in the documented layout; returns the world landmarks (snapped) of both images."""
    import nibabel as nib

    g = GEOMS[geom]
    d = root / patient / side
    d.mkdir(parents=True)
    m1, s1, c1 = g["t1"]
    mt, st, ct = g["tof"]
    a1 = _affine(m1, c1, B)
    at = _affine(mt, ct, B + np.asarray(g["shift"]))
    w1 = {n: B + np.asarray(o) for n, o in OFFSETS.items()}
    wt = {n: B + np.asarray(g["shift"]) + np.asarray(o) + np.asarray(TOF_JITTER[n]) for n, o in OFFSETS.items()}
    t1, w1 = _image(a1, s1, w1)
    tof, wt = _image(at, st, wt)
    nib.save(nib.Nifti1Image(t1, a1), str(d / "t1gd.nii.gz"))
    nib.save(nib.Nifti1Image(tof, at), str(d / "tof.nii.gz"))
    for name, a, shape, c in (("lumen_t1gd", a1, s1, c1), ("lumen_tof", at, st, ct)):
        lab = np.zeros(shape, np.uint8)
        lab[tuple(slice(max(i - 2, 0), i + 3) for i in c)] = 1
        nib.save(nib.Nifti1Image(lab, a), str(d / f"{name}.nii.gz"))
    _csv(d / "landmarks_t1gd.csv", w1, lps)
    _csv(d / "landmarks_tof.csv", dict(reversed(list(wt.items()))), lps)   # other order: matched by name
    return {"t1gd": w1, "tof": wt, "a_t1": a1, "a_tof": at}


PATIENTS = {"P1": ("left", "right"), "P2": ("left", "right"), "P3": ("right",), "P4": ("left", "right"),
            "P5": ("left",)}


def make_raw(root: Path, patients=PATIENTS, geom="exact", lps=False) -> dict:
    return {(p, s): write_artery(root, p, s, geom, lps) for p, sides in patients.items() for s in sides}


def build(raw, out, **params):
    from regbench.datasets.carotid import build_carotid

    base = {"shape": SHAPE, "spacing_mm": GEOMS["exact"]["spacing_mm"], "intensity_percentiles": [0, 100],
            "n_folds": 4}
    return build_carotid(raw, out, {**base, **params}, 0, "carotid")


def _load(path: Path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def _landmarks(out: Path, case: str) -> np.ndarray:
    from regbench.datasets.liver import read_landmarks

    return read_landmarks(out / "landmarks" / f"{case}.tsv")


def _nothing_left(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------------------------- contract
def test_contract_folds_grouped_by_patient_and_landmark_tre_reads_it(tmp_path):
    from regbench.data import PreparedDataset
    from regbench.evaluate import _landmark_tre

    raw, out = tmp_path / "raw", tmp_path / "prep" / "carotid"
    world = make_raw(raw)
    df = build(raw, out)
    ds = PreparedDataset.open(out)
    assert list(ds.cases.columns) == ["case", "split", "test_fold", "patient", "side", "role", "t1gd", "tof", "seg",
                                      "landmarks", "source_image", "source_lumen", "source_landmarks"]
    assert len(df) == 16 and set(df["split"]) == {"cv"}
    fixed, moving = df[df.role == "fixed"], df[df.role == "moving"]
    assert fixed["tof"].isna().all() and moving["t1gd"].isna().all()
    assert set(fixed["case"]) == {f"{p}_{s}_t1gd" for p, s in world}
    pairs = ds.pairs
    assert list(pairs.columns) == ["pair_id", "fold", "split", "fixed", "moving"]
    assert sorted(pairs["fold"].unique()) == [0, 1, 2, 3]
    tested = []
    for k in range(4):
        test, train = ds.pairs_for(k, "test"), ds.pairs_for(k, "train")
        assert len(test) + len(train) == 8                       # every artery, once per fold
        pat_test = {pid.rsplit("_", 1)[0] for pid in test["pair_id"]}
        pat_train = {pid.rsplit("_", 1)[0] for pid in train["pair_id"]}
        assert not pat_test & pat_train                          # a patient's sides never split across train/test
        tested += list(test["pair_id"])
        assert (test["fixed"] == test["pair_id"] + "_t1gd").all() and (test["moving"] == test["pair_id"] + "_tof").all()
    assert sorted(tested) == sorted(f"{p}_{s}" for p, s in world)   # every artery (and patient) tested exactly once
    folds_of = df.groupby("patient")["test_fold"].nunique()
    assert (folds_of == 1).all()
    sizes = sorted(pairs[pairs.split == "test"].groupby("fold").size().tolist())
    assert sizes == [2, 2, 2, 2]                                 # 3 bilateral + 2 single: balanced by arteries
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_patients"] == 5 and meta["n_arteries"] == 8 and meta["n_left"] == 4 and meta["n_right"] == 4
    assert meta["per_case"]["P1_left"]["landmark_names"] == ["bifurcation", "plaque_1", "plaque_2"]
    for _, r in df.iterrows():
        col = "t1gd" if r.role == "fixed" else "tof"
        img = ds.load(r.case, col)
        seg = ds.load(r.case, "seg").array
        assert img.array.shape == tuple(SHAPE) and seg.shape == tuple(SHAPE)
        assert 0.0 <= img.array.min() and img.array.max() <= 1.0
        assert set(np.unique(seg)) <= {0, 1} and seg.sum() > 0
        assert _landmarks(out, r.case).shape == (3, 3)
    # the evaluator's landmark TRE with a zero field is the world distance of the T1GD and TOF landmarks
    pair = ds.pairs_for(0, "test").iloc[0]
    w = world[tuple(pair["pair_id"].split("_"))]
    expected = np.mean([np.linalg.norm(w["t1gd"][n] - w["tof"][n]) for n in OFFSETS])
    tre = _landmark_tre(ds, pair, np.zeros((3, *SHAPE), np.float32), {"fixed": "t1gd", "moving": "tof"}, "mm")
    assert tre["tre_landmark_mm"] == pytest.approx(expected, abs=1e-5) and expected > 0.4


def test_folds_are_seeded_and_keep_bilateral_patients_together():
    from regbench.datasets.carotid import assign_folds

    counts = {f"P{i}": (1 if i in (3, 7) else 2) for i in range(1, 12)}     # the paper: 11 patients, 20 arteries
    a = assign_folds(counts, 4, 0)
    assert a == assign_folds(counts, 4, 0) and a != assign_folds(counts, 4, 1)
    per_fold = [sum(counts[p] for p in a if a[p] == k) for k in range(4)]
    assert sum(per_fold) == 20 and max(per_fold) - min(per_fold) <= 2 and set(a.values()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------------------------- landmarks
def test_landmarks_land_on_their_bright_voxels_exact_lattice(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_raw(raw, {"P1": ("left",), "P2": ("right",)})
    build(raw, out, n_folds=2)
    for case, role in (("P1_left_t1gd", "t1gd"), ("P1_left_tof", "tof"), ("P2_right_tof", "tof")):
        img, _ = _load(out / "images" / f"{case}.nii.gz")
        pts = _landmarks(out, case)
        assert np.allclose(pts, np.rint(pts), atol=1e-6)
        for p in np.rint(pts).astype(int):
            assert img[tuple(p)] == pytest.approx(1.0, abs=1e-5)
        assert np.isclose(img, 1.0, atol=1e-5).sum() == 3       # exactly the three landmark voxels are bright
    # the grid is centred on the T1GD bifurcation: voxel shape // 2; TOF shifted by +1 x and -1 z voxel
    assert np.allclose(_landmarks(out, "P1_left_t1gd")[0], np.asarray(SHAPE) // 2)
    assert np.allclose(_landmarks(out, "P1_left_tof")[0], np.asarray(SHAPE) // 2 + [1, 0, -1])  # in T1GD's order


def test_landmarks_land_on_their_bright_voxels_resampled_and_lps(tmp_path):
    """Anisotropic grids resampled to 0.6 mm: the brightest prepared voxel near each landmark is its nearest
    voxel; LPS landmark files with landmark_space LPS give the same build."""
    raw = tmp_path / "raw"
    make_raw(raw, {"P1": ("left",), "P2": ("left",)}, geom="generic")
    raw_lps = tmp_path / "raw_lps"
    make_raw(raw_lps, {"P1": ("left",), "P2": ("left",)}, geom="generic", lps=True)
    out, out_lps = tmp_path / "out", tmp_path / "out_lps"
    grid = {"shape": [28, 24, 24], "spacing_mm": 0.6, "centre": "image", "n_folds": 2}
    build(raw, out, **grid)
    build(raw_lps, out_lps, **grid, landmark_space="LPS")
    for case in ("P1_left_t1gd", "P1_left_tof"):
        img, aff = _load(out / "images" / f"{case}.nii.gz")
        assert np.allclose(np.linalg.norm(aff[:3, :3], axis=0), 0.6)
        pts = _landmarks(out, case)
        assert np.allclose(pts, _landmarks(out_lps, case))
        for p in pts:
            c = np.rint(p).astype(int)
            lo = np.maximum(c - 2, 0)
            win = img[lo[0]:c[0] + 3, lo[1]:c[1] + 3, lo[2]:c[2] + 3]
            peak = lo + np.array(np.unravel_index(np.argmax(win), win.shape))
            assert np.abs(peak - p).max() <= 0.5 + 1e-6 and win.max() > 0.2


# --------------------------------------------------------------------------------------------- cross-size
def test_cross_size_crop_shapes_affine_offset_and_landmarks(tmp_path):
    from regbench.data import PreparedDataset

    raw = tmp_path / "raw"
    make_raw(raw, {"P1": ("left", "right"), "P2": ("left",)})
    full, xs = tmp_path / "full", tmp_path / "xsize"
    build(raw, full, n_folds=2)
    build(raw, xs, n_folds=2, moving_crop=CROP)
    ds = PreparedDataset.open(xs)
    cases = ds.cases
    assert "tof" not in cases.columns and {"tof_crop", "seg_crop", "crop_offset"} <= set(cases.columns)
    offset = np.array([2, 1, 0])                                   # (shape - crop) // 2
    for pid in ("P1_left", "P1_right", "P2_left"):
        m = f"{pid}_tof"
        assert cases.at[m, "crop_offset"] == "2 1 0"
        assert cases.at[f"{pid}_t1gd", "seg_crop"] == cases.at[f"{pid}_t1gd", "seg"]   # fixed: never cropped
        img_c, aff_c = _load(xs / cases.at[m, "tof_crop"])
        seg_c, saff_c = _load(xs / cases.at[m, "seg_crop"])
        img_f, aff_f = _load(full / "images" / f"{m}.nii.gz")
        seg_f, _ = _load(full / "labels" / f"{m}_lumen.nii.gz")
        assert img_c.shape == tuple(CROP) and seg_c.shape == tuple(CROP) and np.allclose(aff_c, saff_c)
        sl = tuple(slice(o, o + n) for o, n in zip(offset, CROP))
        assert np.array_equal(img_c, img_f[sl]) and np.array_equal(seg_c, seg_f[sl])
        for j in ([0, 0, 0], [23, 13, 15], [5, 7, 2]):           # a voxel keeps its world position
            assert np.allclose(aff_c @ np.r_[j, 1], aff_f @ np.r_[np.add(j, offset), 1])
        lm_c, lm_f = _landmarks(xs, m), _landmarks(full, m)
        assert np.allclose(lm_c, lm_f - offset)
        for p in np.rint(lm_c).astype(int):                      # still on the bright voxels of the crop
            assert img_c[tuple(p)] == pytest.approx(1.0, abs=1e-5)
        fixed, _ = _load(xs / cases.at[f"{pid}_t1gd", "t1gd"])
        assert fixed.shape == tuple(SHAPE)
        assert np.allclose(_landmarks(xs, f"{pid}_t1gd"), _landmarks(full, f"{pid}_t1gd"))
    assert ds.pairs.equals(PreparedDataset.open(full).pairs)
    assert ds.load("P1_left_tof", "seg_crop").array.shape == tuple(CROP)
    assert ds.load("P1_left_t1gd", "seg_crop").array.shape == tuple(SHAPE)
    meta = json.loads((xs / "dataset.json").read_text())
    assert meta["per_case"]["P1_left"]["crop_offset"] == [2, 1, 0]
    assert meta["per_case"]["P1_left"]["moving_shape"] == CROP


# --------------------------------------------------------------------------------------------- bad input
def _move_landmark_out(d):
    text = (d / "landmarks_tof.csv").read_text().replace("plaque_1,", "plaque_1,10")   # x 1.5 -> 101.5 mm
    (d / "landmarks_tof.csv").write_text(text)


def _lumen_label_2(d):
    import nibabel as nib

    img = nib.load(str(d / "lumen_tof.nii.gz"))
    a = np.asanyarray(img.dataobj).copy()
    a[0, 0, 0] = 2
    nib.save(nib.Nifti1Image(a, img.affine), str(d / "lumen_tof.nii.gz"))


def _lumen_other_grid(d):
    import nibabel as nib

    img = nib.load(str(d / "lumen_t1gd.nii.gz"))
    aff = img.affine.copy()
    aff[:3, 3] += [1.0, 0.0, 0.0]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), aff), str(d / "lumen_t1gd.nii.gz"))


def _rename_tof_landmark(d):
    text = (d / "landmarks_tof.csv").read_text().replace("plaque_2", "plaque_3")
    (d / "landmarks_tof.csv").write_text(text)


@pytest.mark.parametrize("problem, error, file, words", [
    (_move_landmark_out, DataError, "landmarks_tof.csv", "lies outside its image"),
    (lambda d: (d / "tof.nii.gz").unlink(), DataError, "tof.nii.gz", "missing tof file"),
    (_lumen_label_2, DataError, "lumen_tof.nii.gz", "lumen label value(s) [2]"),
    (_lumen_other_grid, ShapeMismatchError, "lumen_t1gd.nii.gz", "differs from its image"),
    (_rename_tof_landmark, DataError, "landmarks_tof.csv", "only in T1GD ['plaque_2'], only in TOF ['plaque_3']"),
    (lambda d: (d / "landmarks_t1gd.csv").write_text("name,x,y\nbifurcation,1,2\n"), DataError,
     "landmarks_t1gd.csv", "name,x,y,z"),
    (lambda d: [(d / f).write_text((d / f).read_text().replace("bifurcation", "bif"))
                for f in ("landmarks_t1gd.csv", "landmarks_tof.csv")], DataError, "landmarks_t1gd.csv",
     "no 'bifurcation' landmark"),
    (lambda d: d.rename(d.parent / "middle"), DataError, "middle", "<patient>/left/ or <patient>/right/"),
])
def test_bad_input_names_the_file_and_leaves_nothing(tmp_path, problem, error, file, words):
    raw, parent = tmp_path / "raw", tmp_path / "prep"
    make_raw(raw, {"P1": ("left",), "P2": ("left", "right")})
    problem(raw / "P2" / "right")
    parent.mkdir()
    with pytest.raises(error) as ei:
        build(raw, parent / "carotid", n_folds=2)
    msg = str(ei.value)
    assert str(raw / "P2") in msg and file in msg and words in msg, msg
    _nothing_left(parent, parent / "carotid")


def test_failed_rebuild_keeps_the_previous_build(tmp_path):
    raw, parent = tmp_path / "raw", tmp_path / "prep"
    make_raw(raw, {"P1": ("left",), "P2": ("left",)})
    out = parent / "carotid"
    build(raw, out, n_folds=2)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _rename_tof_landmark(raw / "P2" / "left")
    with pytest.raises(DataError, match="landmark names differ"):
        build(raw, out, n_folds=2)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in parent.iterdir()] == ["carotid"]


def test_one_sided_patient_is_fine_and_a_duplicate_artery_is_not(tmp_path):
    import shutil

    from regbench.datasets.carotid import discover

    raw = tmp_path / "raw"
    make_raw(raw, {"A1": ("right",), "A2": ("left",)})
    assert [(a.patient, a.side) for a in discover(raw)] == [("A1", "right"), ("A2", "left")]
    (raw / "site2").mkdir()
    shutil.copytree(raw / "A1", raw / "site2" / "A1")
    with pytest.raises(DataError, match="found twice"):
        discover(raw)


def test_percentile_normalisation_and_constant_image(tmp_path):
    from regbench.datasets.carotid import _normalise

    img = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out, (lo, hi) = _normalise(img, 0.5, 99.5, tmp_path / "t1gd.nii.gz")
    assert (lo, hi) == pytest.approx((4.995, 994.005))
    assert out.min() == 0.0 and out.max() == 1.0 and out[5, 0, 0] == pytest.approx((500 - lo) / (hi - lo))
    with pytest.raises(DataError, match="t1gd.nii.gz: the image is constant"):
        _normalise(np.zeros((4, 4, 4), np.float32), 0.5, 99.5, tmp_path / "t1gd.nii.gz")


def test_params_errors(tmp_path):
    from regbench.datasets.carotid import resolve_params

    with pytest.raises(ConfigError, match="unknown key"):
        resolve_params({"shape": SHAPE, "crop": CROP})
    with pytest.raises(ConfigError, match="moving_crop"):
        resolve_params({"shape": SHAPE, "moving_crop": [32, 14, 16]})
    with pytest.raises(ConfigError, match="centre"):
        resolve_params({"centre": "lumen"})
    assert resolve_params(None)["shape"] == [112, 64, 64] and resolve_params(None)["spacing_mm"] == [0.6] * 3
    raw = tmp_path / "raw"
    make_raw(raw, {"P1": ("left", "right"), "P2": ("left",)})
    with pytest.raises(ConfigError, match="2 patient"):
        build(raw, tmp_path / "out", n_folds=4)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- registry, CLI
def test_registry_fetch_of_a_byo_folder_then_cli_preprocess(tmp_path, capsys):
    from regbench.cli import main
    from regbench.datasets import fetch_dataset, load_registry

    registry = load_registry(REPO / "config" / "datasets.yaml", REPO / "workflow" / "schemas" / "datasets.schema.yaml")
    assert registry["carotid"]["source"]["kind"] == "byo"
    mine = tmp_path / "my_carotid"
    make_raw(mine, {"P1": ("left",), "P2": ("right",)})
    raw = fetch_dataset("carotid", registry, tmp_path / "raw", local_path=mine)
    assert (raw / "FETCHED.json").is_file()
    spec = {"dataset": "carotid", "preprocess": "carotid", "seed": 0,
            "params": {"shape": SHAPE, "spacing_mm": [0.5, 1.0, 0.5], "n_folds": 2, "moving_crop": CROP,
                       "intensity_percentiles": [0, 100]}}
    out = tmp_path / "prep" / "carotid_xsize"
    assert main(["preprocess", "--raw", str(raw), "--out", str(out), "--spec", json.dumps(spec)]) == 0
    cases = pd.read_csv(out / "cases.tsv", sep="\t")
    assert len(cases) == 4 and cases["tof_crop"].notna().sum() == 2
    spec["params"]["moving_crop"] = [30, 14, 16]
    assert main(["preprocess", "--raw", str(raw), "--out", str(tmp_path / "bad"), "--spec", json.dumps(spec)]) == 2
    assert "moving_crop" in capsys.readouterr().err

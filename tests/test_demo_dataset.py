"""Tests of the embedded demo dataset (regbench.datasets.demo), built from nilearn's MNI152 2009a files.

Small and fast: 6 mm grid (32^3), 4 subjects (2 train, 2 test).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from regbench.datasets.demo import SOURCE_FILES, build_demo, true_pair_ddf
from regbench.io import load_ddf, load_image
from regbench.spatial import compose, warp, warp_labels

# Larger-than-default affine ranges so that, on the coarse 6 mm test grid, subjects differ clearly from each
# other (identity Dice well below what the exact pair field reaches).
PARAMS = {"spacing_mm": 6.0, "n_subjects": 4, "n_test": 2, "rotation_deg": 4.0, "scale": 0.04, "translation_mm": 3.0}
SEED = 123


def _nilearn_data_dir() -> Path:
    nilearn = pytest.importorskip("nilearn")
    d = Path(nilearn.__file__).parent / "datasets" / "data"
    missing = [f for f in SOURCE_FILES.values() if not (d / f).exists()]
    if missing:
        pytest.skip(f"nilearn at {d} lacks {missing}")
    return d


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    src = _nilearn_data_dir()
    raw = tmp_path_factory.mktemp("demo_raw")
    for f in SOURCE_FILES.values():
        os.symlink(src / f, raw / f)
    return raw


@pytest.fixture(scope="module")
def built(raw_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    df = build_demo(raw_dir, out, dict(PARAMS), SEED)
    return out, df


def _arr(path: Path) -> np.ndarray:
    return load_image(path).array


def _seg(path: Path) -> np.ndarray:
    return np.rint(_arr(path)).astype(np.int64)


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return 2.0 * float(((a == k) & (b == k)).sum()) / max(float((a == k).sum() + (b == k).sum()), 1.0)


def _all_arrays(out: Path) -> dict[str, np.ndarray]:
    files = sorted(p for p in out.rglob("*.nii.gz"))
    return {str(p.relative_to(out)): np.asarray(load_image(p).array) for p in files}


def test_files_and_shapes(built):
    import nibabel as nib

    out, df = built
    assert list(df.columns) == ["case", "split", "t1", "t2", "seg", "ddf", "spacing_mm"]
    assert len(df) == 4
    assert df["split"].tolist() == ["train", "train", "test", "test"]
    assert (df["spacing_mm"] == "6.0x6.0x6.0").all()
    on_disk = pd.read_csv(out / "cases.tsv", sep="\t")
    pd.testing.assert_frame_equal(on_disk, df)

    meta = json.loads((out / "dataset.json").read_text())
    shape = tuple(meta["shape"])
    assert len(shape) == 3 and all(s % 16 == 0 for s in shape)
    assert meta["spacing_mm"] == [6.0, 6.0, 6.0]
    assert meta["labels"] == {"0": "background", "1": "CSF", "2": "GM", "3": "WM"}
    assert meta["seed"] == SEED and meta["params"]["spacing_mm"] == 6.0
    assert set(meta["source"]["files"]) == {"t1", "gm", "wm"}
    assert all(len(v["sha256"]) == 64 for v in meta["source"]["files"].values())
    assert "SYNTHESISED" in meta["provenance"] and "REAL" in meta["provenance"]

    for name in ("t1", "t2", "seg"):
        img = load_image(out / "template" / f"{name}.nii.gz")
        assert img.array.shape == shape
        assert np.allclose(img.spacing, (6.0, 6.0, 6.0))
    for _, row in df.iterrows():
        for col in ("t1", "t2"):
            a = _arr(out / row[col])
            assert a.shape == shape and a.dtype == np.float32
            assert a.min() >= 0.0 and a.max() <= 1.0 and a.max() > 0.5
        assert nib.load(str(out / row["seg"])).get_data_dtype() == np.uint8
        assert _arr(out / row["seg"]).shape == shape
        assert load_ddf(out / row["ddf"]).shape == (3, *shape)


def test_labels_and_fractions(built):
    out, df = built
    for path in [out / "template" / "seg.nii.gz"] + [out / p for p in df["seg"]]:
        seg = _seg(path)
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 3}, path
        brain = (seg > 0).sum()
        assert (seg == 2).sum() > 0.1 * brain and (seg == 3).sum() > 0.1 * brain
        assert 0.005 * brain < (seg == 1).sum() < 0.5 * brain
        assert 0.05 < brain / seg.size < 0.7


def test_t2_contrast_is_inverted(built):
    out, _ = built
    seg = _seg(out / "template" / "seg.nii.gz")
    t1, t2 = _arr(out / "template" / "t1.nii.gz"), _arr(out / "template" / "t2.nii.gz")
    m1 = [t1[seg == k].mean() for k in (1, 2, 3)]
    m2 = [t2[seg == k].mean() for k in (1, 2, 3)]
    assert m1[0] < m1[1] < m1[2]  # T1: CSF dark, WM bright
    assert m2[0] > m2[1] > m2[2]  # T2-like: CSF bright, WM dark
    assert t1[seg == 0].mean() < 0.05 and t2[seg == 0].mean() < 0.05


def test_pairs(built):
    out, df = built
    pairs = pd.read_csv(out / "pairs.tsv", sep="\t")
    assert list(pairs.columns) == ["pair_id", "fold", "split", "fixed", "moving"]
    n_train, n_test = int((df["split"] == "train").sum()), int((df["split"] == "test").sum())
    assert (pairs["split"] == "train").sum() == n_train * (n_train - 1)
    assert (pairs["split"] == "test").sum() == n_test * (n_test - 1)
    assert (pairs["fold"] == 0).all() and pairs["pair_id"].is_unique
    assert (pairs["fixed"] != pairs["moving"]).all()
    split_of = dict(zip(df["case"], df["split"]))
    for _, r in pairs.iterrows():
        assert split_of[r["fixed"]] == split_of[r["moving"]] == r["split"]


def test_same_seed_identical_different_seed_differs(built, raw_dir, tmp_path):
    out, df = built
    ref = _all_arrays(out)
    again = tmp_path / "again"
    df2 = build_demo(raw_dir, again, dict(PARAMS), SEED)
    pd.testing.assert_frame_equal(df, df2)
    rep = _all_arrays(again)
    assert ref.keys() == rep.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], rep[k], err_msg=k)
    assert (out / "pairs.tsv").read_text() == (again / "pairs.tsv").read_text()

    other = tmp_path / "other"
    build_demo(raw_dir, other, dict(PARAMS), SEED + 1)
    oth = _all_arrays(other)
    np.testing.assert_array_equal(ref["template/t1.nii.gz"], oth["template/t1.nii.gz"])  # template is not random
    for k in ("fields/demo000_ddf.nii.gz", "images/demo000_t1.nii.gz", "images/demo001_t2.nii.gz"):
        assert not np.array_equal(ref[k], oth[k]), k


def test_stored_ddf_maps_template_to_subject(built):
    out, df = built
    tpl_seg = torch.from_numpy(_seg(out / "template" / "seg.nii.gz"))[None, None]
    tpl_t1 = torch.from_numpy(_arr(out / "template" / "t1.nii.gz"))[None, None]
    for _, row in df.iterrows():
        u = torch.from_numpy(load_ddf(out / row["ddf"]))[None]
        seg = _seg(out / row["seg"])
        warped = warp_labels(tpl_seg, u)[0, 0].numpy()
        np.testing.assert_array_equal(warped, seg)  # nearest warp of the template reproduces it exactly
        assert _dice(warped, seg, 2) >= 0.95
        # the intensity-augmented subject still matches the warped template closely, the template does not
        t1 = _arr(out / row["t1"])
        w1 = warp(tpl_t1, u)[0, 0].numpy()
        assert np.corrcoef(w1.ravel(), t1.ravel())[0, 1] > 0.97
        assert np.corrcoef(w1.ravel(), t1.ravel())[0, 1] > np.corrcoef(tpl_t1.numpy().ravel(), t1.ravel())[0, 1]
        # deformation is non-trivial and plausible: a few mm in the brain, below 25 mm anywhere
        mag_mm = np.sqrt((u[0].numpy() ** 2).sum(0)) * 6.0
        assert 2.0 < mag_mm[seg > 0].max() < 25.0


def test_true_pair_ddf_zero_for_identical_fields(built):
    out, df = built
    u = load_ddf(out / df["ddf"][0])
    g, res = true_pair_ddf(u, u, return_residual=True)
    assert g.shape == u.shape and g.dtype == np.float32
    assert np.abs(g).max() < 1e-5 and res < 1e-5
    assert isinstance(true_pair_ddf(u, u), np.ndarray)


def test_true_pair_ddf_maps_fixed_to_moving(built):
    out, df = built
    tpl_seg = torch.from_numpy(_seg(out / "template" / "seg.nii.gz"))[None, None]
    tpl_t1 = torch.from_numpy(_arr(out / "template" / "t1.nii.gz").astype(np.float64))[None, None]
    pairs = pd.read_csv(out / "pairs.tsv", sep="\t")
    case = df.set_index("case")
    for _, p in pairs.iterrows():
        uf = load_ddf(out / case.loc[p["fixed"], "ddf"])
        um = load_ddf(out / case.loc[p["moving"], "ddf"])
        g, res = true_pair_ddf(uf, um, return_residual=True)
        assert res < 1e-3
        gt = torch.from_numpy(g)[None].double()
        umt, uft = torch.from_numpy(um)[None].double(), torch.from_numpy(uf)[None].double()
        # composition "moving field after g" equals the fixed field: x + g + u_m(x + g) = x + u_f(x)
        assert float((compose(umt, gt) - uft).abs().max()) < 1e-3
        # clean (un-augmented) images: moving warped by g reproduces fixed
        fixed_img = warp(tpl_t1, uft)
        moving_img = warp(tpl_t1, umt)
        err_g = float((warp(moving_img, gt) - fixed_img).abs().mean())
        err_id = float((moving_img - fixed_img).abs().mean())
        assert err_g < 0.5 * err_id
        # labels: template seg warped through the composed field reproduces the fixed seg (nearly exact) ...
        fseg = _seg(out / case.loc[p["fixed"], "seg"])
        mseg = _seg(out / case.loc[p["moving"], "seg"])
        via = warp_labels(tpl_seg, compose(umt, gt).float())[0, 0].numpy()
        assert (via == fseg).mean() > 0.999
        # ... and the stored moving seg warped by g beats identity. Re-sampling a nearest-neighbour label map
        # twice on a 6 mm grid costs thin GM/CSF structures, so Dice cannot approach 1 here (see docs).
        warped = warp_labels(torch.from_numpy(mseg)[None, None], gt.float())[0, 0].numpy()
        d_g = np.mean([_dice(warped, fseg, k) for k in (1, 2, 3)])
        d_id = np.mean([_dice(mseg, fseg, k) for k in (1, 2, 3)])
        assert d_g > d_id + 0.03 and d_g > 0.65
        assert np.mean([_dice(warped, fseg, k) for k in (2, 3)]) > 0.75


def test_missing_source_file_raises(tmp_path):
    from regbench.errors import DataError

    with pytest.raises(DataError, match="mni_icbm152_t1"):
        build_demo(tmp_path / "nothing", tmp_path / "out", dict(PARAMS), 0)


def test_bad_params_raise(raw_dir, tmp_path):
    from regbench.errors import ConfigError

    with pytest.raises(ConfigError, match="n_test"):
        build_demo(raw_dir, tmp_path / "out", {"n_subjects": 3, "n_test": 2}, 0)

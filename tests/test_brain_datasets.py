"""Tests of the brain MRI readers (regbench.datasets.brain, brain_prep, analyze): Mindboggle-101, LPBA40, IXI.

Official layouts are tested on small fixtures that the tests write in exactly the release's layout and format
(Mindboggle per-set ``<Set>_volumes.tar.gz`` with float32 label maps; LONI's zip holding a zip of Analyze
``.hdr`` + gzipped ``.img.gz`` pairs; IXI's flat ``IXI###-<site>-####-T1.nii.gz``). The local archives in
``../shared/data`` (see its README) are tested when present and skipped otherwise.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from regbench import cli
from regbench.data import PreparedDataset
from regbench.datasets import fetch_dataset, load_registry, read_fetch_record
from regbench.datasets import brain, brain_prep as bp
from regbench.datasets.analyze import load_analyze
from regbench.errors import ChecksumError, ConfigError, DataError, ManualDownloadRequired, ShapeMismatchError

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REGISTRY = REPO / "config" / "datasets.yaml"
ARCHIVES = {name: SHARED_DATA / spec["archive"] for name, spec in brain.LOCAL_ARCHIVES.items()}
SMALL = {"shape": [8, 8, 8]}


def needs(name: str):
    return pytest.mark.skipif(not ARCHIVES[name].exists(),
                              reason=f"{ARCHIVES[name]} not present (no ../shared/data beside the repository)")


# ------------------------------------------------------------------------------------------- fixtures


def _phantom(shape, ids, seed):
    """An ellipsoid 'brain' split into len(ids) slabs along axis 0; returns (int16 image, label map)."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt(sum((g[i] / (0.8 + 0.05 * rng.random())) ** 2 for i in range(3)))
    inside = r < 1.0
    slab = np.clip(((g[0] / 0.8 + 1) / 2 * len(ids)).astype(int), 0, len(ids) - 1)
    lab = np.where(inside, np.asarray(ids)[slab], 0)
    img = np.where(inside, 300 + 40 * slab + rng.normal(0, 10, shape), 0).astype(np.int16)
    return img, lab


MB_IDS = [1028, 1029, 1011, 1030, 1023, 1035, 2028, 2029, 2011, 2030, 2023]
ASL = np.array([[0, 0, -1.0, 8], [1.0, 0, 0, -6], [0, 1.0, 0, -7], [0, 0, 0, 1]])
MB_SHAPE = (12, 13, 10)


def write_mindboggle_set(root: Path, set_name: str, n: int | None = None, seed: int = 0) -> Path:
    """``root/<Set>_volumes/<Set>-<i>/`` with t1weighted_brain, labels.DKT31.manual(+aseg) (float32), ASL grid."""
    n = n or brain.MINDBOGGLE_SETS[set_name]["n"]
    folder = root / f"{set_name}_volumes"
    for i in range(1, n + 1):
        d = folder / f"{set_name}-{i}"
        d.mkdir(parents=True, exist_ok=True)
        img, lab = _phantom(MB_SHAPE, MB_IDS, seed * 1000 + i)
        nib.save(nib.Nifti1Image(img, ASL), d / "t1weighted_brain.nii.gz")
        nib.save(nib.Nifti1Image(lab.astype(np.float32), ASL), d / "labels.DKT31.manual.nii.gz")
        aseg = np.where((lab == 0) & (img == 0), 0, lab).astype(np.float32)
        aseg[:4][img[:4] > 0] = 17  # a FreeSurfer subcortical id, only in the +aseg file
        nib.save(nib.Nifti1Image(aseg, ASL), d / "labels.DKT31.manual+aseg.nii.gz")
    return folder


def tar_folder(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


LPBA_IDS = [21, 22, 41, 42, 61, 62, 81, 82, 121, 122, 165, 166, 181, 182]
LPBA_SHAPE = (14, 9, 12)


def write_analyze(stem: Path, arr: np.ndarray, zooms=(0.86, 1.5, 0.86), gz: bool = True, pair: bool = False,
                  orient: int = 0) -> None:
    """``stem.hdr`` + ``stem.img.gz`` (LONI style) via nibabel's AnalyzeImage (or Nifti1Pair)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    if pair:
        img = nib.Nifti1Pair(arr, np.diag([-zooms[0], zooms[1], zooms[2], 1.0]))
    else:
        img = nib.AnalyzeImage(arr, None)
        img.header.set_zooms(zooms)
        img.header["orient"] = bytes([orient]) if orient else b""
    nib.save(img, str(stem) + ".img")
    if gz:
        raw = Path(str(stem) + ".img")
        with open(raw, "rb") as f, gzip.open(str(raw) + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
        raw.unlink()


def write_lpba40(root: Path, subjects=None) -> Path:
    """``root/LPBA40/delineation_space/S##/S##.delineation.{skullstripped,structure.label}.{hdr,img.gz}``."""
    base = root / "LPBA40" / "delineation_space"
    for sid in subjects or brain.LPBA40_SUBJECTS:
        img, lab = _phantom(LPBA_SHAPE, LPBA_IDS, int(sid[1:]))
        write_analyze(base / sid / f"{sid}.delineation.skullstripped", img)
        write_analyze(base / sid / f"{sid}.delineation.structure.label", lab.astype(np.uint8))
    return base


def lpba40_loni_zip(tmp: Path, out: Path) -> Path:
    """The LONI download: a zip holding a zip holding LPBA40/delineation_space/..."""
    src = tmp / "lpba_src"
    write_lpba40(src)
    inner = tmp / "LPBA40subjects.delineation_space.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
    with zipfile.ZipFile(out, "w") as zf:
        zf.write(inner, inner.name)
    return out


PSR = np.array([[0, 0, 2.0, -10], [-2.0, 0, 0, 12], [0, 2.0, 0, -11], [0, 0, 0, 1]])
IXI_IDS = ["IXI002-Guys-0828", "IXI012-HH-1211", "IXI013-HH-1212", "IXI014-HH-1236", "IXI015-HH-1258"]


def write_ixi_official(raw: Path, with_labels: bool = True, ids=IXI_IDS) -> Path:
    raw.mkdir(parents=True, exist_ok=True)
    for i, cid in enumerate(ids):
        img, lab = _phantom((12, 12, 9), [100, 101, 47, 48, 35], i)
        img = img + 20 * (img == 0)  # full head: background is not 0
        nib.save(nib.Nifti1Image(img.astype(np.int16), PSR), raw / f"{cid}-T1.nii.gz")
        if with_labels:
            nib.save(nib.Nifti1Image(lab.astype(np.uint8), PSR), raw / f"{cid}_T1_DLMUSE.nii.gz")
    return raw


@pytest.fixture(scope="module")
def registry() -> dict:
    return load_registry(REGISTRY)


@pytest.fixture(scope="module")
def mb_official(tmp_path_factory, registry) -> Path:
    """Mindboggle-101 fetched from the three per-set archives Zhu et al.'s protocol needs."""
    tmp = tmp_path_factory.mktemp("mb")
    raw_root = tmp / "raw"
    target = raw_root / "mindboggle101"
    target.mkdir(parents=True)
    for k, s in enumerate(["OASIS-TRT-20", "NKI-RS-22", "NKI-TRT-20"]):
        folder = write_mindboggle_set(tmp / "src", s, seed=k)
        tar_folder(folder, target / f"{s}_volumes.tar.gz")
    return fetch_dataset("mindboggle101", registry, raw_root)


@pytest.fixture(scope="module")
def lpba_official(tmp_path_factory, registry) -> Path:
    tmp = tmp_path_factory.mktemp("lpba")
    raw_root = tmp / "raw"
    (raw_root / "lpba40").mkdir(parents=True)
    lpba40_loni_zip(tmp, raw_root / "lpba40" / "LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip")
    return fetch_dataset("lpba40", registry, raw_root)


def copy_tree_links(src: Path, dst: Path, skip=()) -> Path:
    """A copy of ``src`` made of symlinks to its files (cheap), leaving out relative paths in ``skip``."""
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_file() and rel.as_posix() not in skip and f.name != "FETCHED.json":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f.resolve(), dst / rel)
    return dst


# ------------------------------------------------------------------------------------ registry, config


def test_registry_declares_official_sources_and_local_manifests(registry):
    mb, lp, ix = registry["mindboggle101"], registry["lpba40"], registry["ixi"]
    assert mb["source"]["kind"] == "manual" and "OASIS-TRT-20_volumes.tar.gz" in mb["source"]["files"]
    assert lp["source"]["kind"] == "manual" and lp["source"]["nested_archives"] is True
    assert ix["source"]["kind"] == "url" and ix["source"]["hash"] == "md5:34901a0593b41dd19c1a1f746eac2d58"
    for name, entry, n in [("mindboggle101", mb, 61), ("lpba40", lp, 81), ("ixi", ix, 63)]:
        src = entry["source"]
        top = brain.LOCAL_ARCHIVES[name]["top"]
        assert src["manifest_when"] == "present"
        assert len(src["manifest"]) == n and all(k.startswith(top + "/") for k in src["manifest"])
        assert [h["file"] for h in src["local_hashes"]] == [brain.LOCAL_ARCHIVES[name]["archive"]]
    assert len([k for k in lp["labels"] if k]) == 56


def test_label_group_files():
    mb = brain.load_label_groups("config/labels/mindboggle_regions.yaml")
    assert mb["column"] == "seg_regions"
    assert [g["name"] for g in mb["groups"].values()] == ["frontal", "parietal", "occipital", "temporal", "cingulate"]
    assert set(mb["lut"]) | set(mb["excluded"]) == set(mb["labels"]) and len(mb["labels"]) == 62 + 4
    assert mb["lut"][1032] == 1 and mb["lut"][2033] == 4  # stray pole voxels of the real maps
    assert set(mb["excluded"]) == {1035, 2035}
    assert mb["lut"][1028] == mb["lut"][2028] == 1 and mb["lut"][1023] == 5 and mb["lut"][1016] == 4
    lp = brain.load_label_groups("config/labels/lpba40_rois.yaml")
    assert len(lp["groups"]) == 54 and set(lp["excluded"]) == {181, 182}
    assert all(lp["lut"][k] == k for k in lp["lut"])
    ix = brain.load_label_groups("config/labels/ixi_rois.yaml")
    assert len(ix["labels"]) == 148 and len(ix["groups"]) == 134 and len(ix["excluded"]) == 14
    assert ix["min_median_volume_mm3"] == 1000 and 69 in ix["excluded"]


def test_load_label_groups_rejects_bad_files(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text("column: seg_x\nlabels: {1: a, 2: b}\ngroups: {1: {name: g, members: [1, 3]}}\n")
    with pytest.raises(ConfigError, match="label 3 is not listed"):
        brain.load_label_groups(bad)
    bad.write_text("column: seg_x\nlabels: {1: a}\ngroups: {1: {name: g, members: [1]}, 2: {name: h, members: [1]}}\n")
    with pytest.raises(ConfigError, match="in groups 1 and 2"):
        brain.load_label_groups(bad)
    with pytest.raises(ConfigError, match="not found"):
        brain.load_label_groups(tmp_path / "missing.yaml")


def test_params_defaults_and_schema_errors():
    assert brain.resolve_params("lpba40", {})["shape"] == [192, 192, 192]
    assert brain.resolve_params("lpba40", {})["split"] == {"by": "random", "n_test": 10, "n_train": None}
    mb = brain.resolve_params("mindboggle101", {})["split"]
    assert mb == {"by": "set", "train_sets": ["NKI-RS-22", "NKI-TRT-20"], "test_sets": ["OASIS-TRT-20"]}
    assert brain.resolve_params("ixi", {})["split"] == {"by": "all_test"}
    p = brain.resolve_params("lpba40", {"intensity": {"method": "minmax"}})
    assert p["intensity"] == {"method": "minmax", "percentiles": [1.0, 99.0]}
    with pytest.raises(ConfigError, match="shap"):
        brain.resolve_params("lpba40", {"shap": [8, 8, 8]})
    with pytest.raises(ConfigError, match="shape"):
        brain.resolve_params("lpba40", {"shape": [8, 8]})
    with pytest.raises(ConfigError, match="split"):
        brain.resolve_params("lpba40", {"split": {"by": "random"}})
    with pytest.raises(ConfigError, match="'set' is for Mindboggle"):
        brain.resolve_params("lpba40", {"split": {"by": "set", "train_sets": ["a"], "test_sets": ["b"]}})
    with pytest.raises(ConfigError, match="atlas"):
        brain.resolve_params("ixi", {"test_pairs": "atlas"})
    with pytest.raises(ConfigError, match="unknown reader"):
        brain.resolve_params("brats2020", {})


# ------------------------------------------------------------------------------------ volume operations


def test_resize_keeps_field_of_view_and_records_spacing():
    rng = np.random.default_rng(0)
    arr = rng.random((20, 30, 10)).astype(np.float32)
    aff = np.array([[0, 0, -1.0, 80], [1.0, 0, 0, -128], [0, 1.0, 0, -128], [0, 0, 0, 1]])
    out, new = bp.resize(arr, aff, (10, 12, 16), order=1)
    assert out.shape == (10, 12, 16)
    np.testing.assert_allclose(bp.spacing_of(new), [20 / 10, 30 / 12, 10 / 16])  # extent / new shape (1 mm voxels)
    # the grid's physical extent (corner to corner, voxel edges) is unchanged
    def corners(a, shape):
        lo = a @ np.array([-0.5, -0.5, -0.5, 1.0])
        hi = a @ np.array([shape[0] - 0.5, shape[1] - 0.5, shape[2] - 0.5, 1.0])
        return lo[:3], hi[:3]
    for c_old, c_new in zip(corners(aff, arr.shape), corners(new, out.shape)):
        np.testing.assert_allclose(c_old, c_new, atol=1e-9)
    lab = rng.choice([0, 3, 1028, 2035], size=(20, 30, 10)).astype(np.int32)
    lab_out, _ = bp.resize(lab, aff, (7, 9, 23), order=0)
    assert set(np.unique(lab_out)) <= {0, 3, 1028, 2035}
    same, same_aff = bp.resize(arr, aff, arr.shape, order=1)
    np.testing.assert_allclose(same, arr, atol=1e-6)
    np.testing.assert_allclose(same_aff, aff)


@pytest.mark.parametrize("aff", [
    np.array([[0, 0, -1.0, 80], [1.0, 0, 0, -128], [0, 1.0, 0, -128], [0, 0, 0, 1]]),  # ASL (Mindboggle)
    np.diag([-1.0, -1.0, 1.0, 1.0]),                                                  # LPS (LGANet LPBA40)
    PSR,                                                                               # PSR (NiChart IXI)
])
def test_to_canonical_gives_ras_and_keeps_world_positions(aff):
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    out, new, codes = bp.to_canonical(arr, aff)
    assert nib.aff2axcodes(new) == ("R", "A", "S") and codes == "".join(nib.aff2axcodes(aff))
    world_in = {tuple(np.round(aff @ [*ijk, 1], 6)[:3]): arr[ijk] for ijk in np.ndindex(arr.shape)}
    for ijk in np.ndindex(out.shape):
        assert world_in[tuple(np.round(new @ [*ijk, 1], 6)[:3])] == out[ijk]


def test_nyul_standardise_maps_landmarks_onto_the_standard_scale():
    rng = np.random.default_rng(1)
    img = rng.gamma(3.0, 100.0, size=(30, 30, 30)).astype(np.float32)
    img[:5] = 0
    mask = img > 0
    pct = list(bp.DECILE_LANDMARKS)
    lm = bp.nyul_landmarks(img[mask], pct)
    std = np.linspace(0, 1, len(pct)) ** 1.2
    out = bp.standardise(img, mask, lm, std)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1 and (out[~mask] == 0).all()
    np.testing.assert_allclose(np.percentile(out[mask], pct[1:-1]), std[1:-1], atol=0.02)
    mm = bp.minmax(img, mask, 1, 99)
    assert mm.min() == 0 and mm.max() == 1 and (mm[~mask] == 0).all()


def test_label_checks_name_the_file(tmp_path):
    f = tmp_path / "labels.DKT31.manual.nii.gz"
    assert bp.label_to_int(np.array([0.0, 1028.0, 2035.0], dtype=np.float32), f).dtype == np.int32
    with pytest.raises(DataError, match=r"labels\.DKT31\.manual\.nii\.gz: label map holds 1 non-integer"):
        bp.label_to_int(np.array([0.0, 1028.5], dtype=np.float32), f)
    with pytest.raises(DataError, match="NaN"):
        bp.label_to_int(np.array([0.0, np.nan], dtype=np.float32), f)
    with pytest.raises(DataError, match="t1.nii.gz: 1 voxels are NaN"):
        bp.check_image(np.array([1.0, np.inf]), tmp_path / "t1.nii.gz")


def test_load_analyze_pairs(tmp_path):
    arr = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5)
    write_analyze(tmp_path / "a", arr, zooms=(0.86, 1.5, 0.86))
    out, aff, info = load_analyze(tmp_path / "a.hdr")
    np.testing.assert_array_equal(out, arr)
    assert info["format"] == "analyze" and info["orient"] == 0 and nib.aff2axcodes(aff) == ("L", "A", "S")
    np.testing.assert_allclose(bp.spacing_of(aff), [0.86, 1.5, 0.86], rtol=1e-6)
    np.testing.assert_allclose(aff @ [1.5, 1.0, 2.0, 1.0], [0, 0, 0, 1], atol=1e-9)  # centred
    write_analyze(tmp_path / "c", arr, orient=1)
    assert nib.aff2axcodes(load_analyze(tmp_path / "c.img.gz")[1]) == ("L", "S", "A")  # coronal (ITK mapping)
    write_analyze(tmp_path / "p", arr.astype(np.float32), pair=True)
    out, aff, info = load_analyze(tmp_path / "p")
    assert info["format"] == "nifti_pair" and nib.aff2axcodes(aff) == ("L", "A", "S")
    np.testing.assert_array_equal(out, arr)
    write_analyze(tmp_path / "u", arr, gz=False)  # plain .img works too
    np.testing.assert_array_equal(load_analyze(tmp_path / "u.img")[0], arr)


# ------------------------------------------------------------------------------------ Mindboggle-101


def test_mindboggle_official_fetch_and_paper_protocol(mb_official, tmp_path):
    rec = read_fetch_record(mb_official)
    assert rec["origin"] == "placed_archives" and any("not applicable" in v for v in rec["verified"])
    out = tmp_path / "prep"
    df = brain.build_brain(mb_official, out, SMALL, 0, "mindboggle101")
    assert len(df) == 62 and (df.split == "train").sum() == 42
    assert set(df[df.split == "test"].set) == {"OASIS-TRT-20"}
    assert set(df[df.split == "train"].set) == {"NKI-RS-22", "NKI-TRT-20"}
    ds = PreparedDataset.open(out)
    assert len(ds.pairs_for(0, "train")) == 42 * 41 and len(ds.pairs_for(0, "test")) == 20 * 19
    img = nib.load(out / df.t1[0])
    assert img.shape == (8, 8, 8) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
    # native ASL 12x13x10 at 1 mm -> RAS (10, 12, 13) mm extent -> spacing extent / 8
    np.testing.assert_allclose(img.header.get_zooms(), [10 / 8, 12 / 8, 13 / 8], rtol=1e-5)
    a = np.asanyarray(img.dataobj)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    seg = np.asanyarray(nib.load(out / df.seg[0]).dataobj)
    reg = np.asanyarray(nib.load(out / df.seg_regions[0]).dataobj)
    assert set(np.unique(seg)) <= {0, *MB_IDS}
    assert set(np.unique(reg)) <= {0, 1, 2, 3, 4, 5}
    assert (reg[seg == 1035] == 0).all() and (reg[seg == 1028] == 1).all() and (reg[seg == 2023] == 5).all()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["layout"] == "official" and meta["grid"]["scaled_down"] and meta["protocol"]["n_pairs"]["test"] == 380
    assert meta["cases"]["OASIS-TRT-20-1"]["native_orientation"] == "ASL"
    # label variant with the FreeSurfer subcortical labels
    out2 = tmp_path / "prep_aseg"
    df2 = brain.build_brain(mb_official, out2, {**SMALL, "labels": "DKT31.manual+aseg",
                                                "subjects": ["OASIS-TRT-20-1", "OASIS-TRT-20-2", "NKI-RS-22-1",
                                                             "NKI-TRT-20-1"]}, 0, "mindboggle101")
    assert 17 in np.unique(np.asanyarray(nib.load(out2 / df2.seg[0]).dataobj))


def test_mindboggle_random_split_of_the_subjects_at_hand(mb_official, tmp_path):
    params = {**SMALL, "split": {"by": "random", "n_test": 10}, "subjects": [f"OASIS-TRT-20-{i}" for i in range(1, 21)]}
    df = brain.build_brain(mb_official, tmp_path / "a", params, 7, "mindboggle101")
    again = brain.build_brain(mb_official, tmp_path / "b", params, 7, "mindboggle101")
    other = brain.build_brain(mb_official, tmp_path / "c", params, 8, "mindboggle101")
    assert (df.split == "test").sum() == 10 and (df.split == "train").sum() == 10
    assert df.split.tolist() == again.split.tolist() and df.split.tolist() != other.split.tolist()
    pairs = pd.read_csv(tmp_path / "a" / "pairs.tsv", sep="\t")
    test = set(df[df.split == "test"].case)
    assert set(pairs[pairs.split == "test"].fixed) <= test
    assert set(pairs[pairs.split == "train"].moving).isdisjoint(test)


def test_mindboggle_set_split_needs_the_named_sets(tmp_path):
    raw = tmp_path / "raw"
    write_mindboggle_set(raw, "OASIS-TRT-20")
    with pytest.raises(DataError, match=r"needs Mindboggle-101 sets \['NKI-RS-22', 'NKI-TRT-20'\].*by: random"):
        brain.build_brain(raw, tmp_path / "out", SMALL, 0, "mindboggle101")
    assert not (tmp_path / "out").exists()


def test_mindboggle_missing_or_extra_subject(tmp_path):
    raw = tmp_path / "raw"
    folder = write_mindboggle_set(raw, "OASIS-TRT-20")
    shutil.rmtree(folder / "OASIS-TRT-20-7")
    with pytest.raises(DataError, match=r"OASIS-TRT-20-7: subject missing from set OASIS-TRT-20.*OASIS-TRT-20_volumes"):
        brain.discover("mindboggle101", raw)
    write_mindboggle_set(raw, "OASIS-TRT-20")
    shutil.copytree(folder / "OASIS-TRT-20-1", folder / "OASIS-TRT-20-21")
    with pytest.raises(DataError, match=r"OASIS-TRT-20-21: extra subject.*remove"):
        brain.discover("mindboggle101", raw)
    shutil.rmtree(folder / "OASIS-TRT-20-21")
    shutil.copytree(folder / "OASIS-TRT-20-1", folder / "my_subject")
    with pytest.raises(DataError, match="my_subject: unexpected subject folder"):
        brain.discover("mindboggle101", raw)
    shutil.rmtree(folder / "my_subject")
    (folder / "OASIS-TRT-20-3" / "labels.DKT31.manual.nii.gz").unlink()
    with pytest.raises(DataError, match=r"OASIS-TRT-20-3/labels\.DKT31\.manual\.nii\.gz: missing"):
        brain.discover("mindboggle101", raw)


def test_mindboggle_non_integer_labels_and_grid_mismatch(tmp_path):
    raw = tmp_path / "raw"
    folder = write_mindboggle_set(raw, "OASIS-TRT-20")
    params = {**SMALL, "split": {"by": "random", "n_test": 2}}
    lab = folder / "OASIS-TRT-20-4" / "labels.DKT31.manual.nii.gz"
    a = np.asanyarray(nib.load(lab).dataobj).copy()
    a[a == 1030] = 1030.4
    nib.save(nib.Nifti1Image(a, ASL), lab)
    bad_labels = r"OASIS-TRT-20-4/labels\.DKT31\.manual\.nii\.gz: label map holds .* non-integer"
    with pytest.raises(DataError, match=bad_labels):
        brain.build_brain(raw, tmp_path / "out", params, 0, "mindboggle101")
    shifted = ASL.copy()
    shifted[:3, 3] += 2.0
    nib.save(nib.Nifti1Image(np.round(a).astype(np.float32), shifted), lab)
    moved = r"OASIS-TRT-20-4/labels\.DKT31\.manual\.nii\.gz: label map voxel-to-world"
    with pytest.raises(ShapeMismatchError, match=moved):
        brain.build_brain(raw, tmp_path / "out", params, 0, "mindboggle101")
    nib.save(nib.Nifti1Image(np.round(a)[:, :, :-1].astype(np.float32), ASL), lab)
    with pytest.raises(ShapeMismatchError, match="label map shape"):
        brain.build_brain(raw, tmp_path / "out", params, 0, "mindboggle101")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


# ------------------------------------------------------------------------------------------ LPBA40


def test_lpba40_official_fetch_and_paper_protocol(lpba_official, tmp_path):
    rec = read_fetch_record(lpba_official)
    assert rec["origin"] == "placed_archives" and any("extracted" in v for v in rec["verified"])
    out = tmp_path / "prep"
    df = brain.build_brain(lpba_official, out, SMALL, 3, "lpba40")
    assert len(df) == 40 and (df.split == "test").sum() == 10 and (df.split == "train").sum() == 30
    ds = PreparedDataset.open(out)
    assert len(ds.pairs_for(0, "test")) == 90 and len(ds.pairs_for(0, "train")) == 30 * 29
    again = brain.build_brain(lpba_official, tmp_path / "again", SMALL, 3, "lpba40")
    assert df.split.tolist() == again.split.tolist()
    meta = json.loads((out / "dataset.json").read_text())
    c = meta["cases"]["S01"]
    assert c["format"] == "analyze" and c["native_orientation"] == "LAS" and c["native_shape"] == list(LPBA_SHAPE)
    seg = ds.load("S01", "seg").array
    rois = ds.load("S01", "seg_rois").array
    assert {181, 182} & set(np.unique(seg)) and not {181, 182} & set(np.unique(rois))
    assert (rois[(seg > 0) & (seg < 181)] == seg[(seg > 0) & (seg < 181)]).all()
    np.testing.assert_allclose(ds.load("S01", "t1").spacing, [14 * 0.86 / 8, 9 * 1.5 / 8, 12 * 0.86 / 8], rtol=1e-4)


def test_lpba40_missing_or_extra_subject(tmp_path):
    raw = tmp_path / "raw"
    base = write_lpba40(raw, [s for s in brain.LPBA40_SUBJECTS if s != "S40"])
    with pytest.raises(DataError, match=r"S40: subject missing \(1 of 40"):
        brain.discover("lpba40", raw)
    write_lpba40(raw, ["S40", "S41"])
    with pytest.raises(DataError, match=r"S41\.delineation\..*extra subject S41"):
        brain.discover("lpba40", raw)
    shutil.rmtree(base / "S41")
    (base / "S12" / "S12.delineation.structure.label.hdr").unlink()
    no_hdr = r"S12\.delineation\.structure\.label\.img\.gz: Analyze image without its header S12\.delineation"
    with pytest.raises(DataError, match=no_hdr):
        brain.discover("lpba40", raw)


def test_lpba40_unexpected_label_value(tmp_path):
    raw = tmp_path / "raw"
    base = write_lpba40(raw)
    _, lab = _phantom(LPBA_SHAPE, LPBA_IDS, 2)
    lab[lab == 81] = 7
    write_analyze(base / "S02" / "S02.delineation.structure.label", lab.astype(np.uint8))
    params = {**SMALL, "subjects": ["S01", "S02", "S03"], "split": {"by": "random", "n_test": 2}}
    with pytest.raises(DataError, match=r"S02\.delineation\.structure\.label\.hdr: label value\(s\) \[7\] are not in"):
        brain.build_brain(raw, tmp_path / "out", params, 0, "lpba40")


def test_lpba40_nan_image_leaves_previous_build_untouched(tmp_path):
    raw = tmp_path / "raw"
    base = write_lpba40(raw)
    out = tmp_path / "prep"
    params = {**SMALL, "subjects": ["S01", "S02", "S03", "S04"], "split": {"by": "random", "n_test": 2}}
    brain.build_brain(raw, out, params, 0, "lpba40")
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    img, _ = _phantom(LPBA_SHAPE, LPBA_IDS, 4)
    bad = img.astype(np.float32)
    bad[3, 3, 3] = np.nan
    write_analyze(base / "S04" / "S04.delineation.skullstripped", bad)
    with pytest.raises(DataError, match=r"S04\.delineation\.skullstripped\.img\.gz: 1 voxels are NaN or infinite"):
        brain.build_brain(raw, out, params, 0, "lpba40")
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prep.")]


# ------------------------------------------------------------------------------------------------ IXI


def test_ixi_official_layout_labels_and_pairs(tmp_path):
    raw = write_ixi_official(tmp_path / "raw")
    out = tmp_path / "prep"
    native_ras = [9, 12, 12]  # PSR 12x12x9 -> RAS 9x12x12: no resampling, so masks compare exactly
    df = brain.build_brain(raw, out, {"shape": native_ras, "label_groups": None}, 0, "ixi")
    assert df.case.tolist() == sorted(IXI_IDS) and set(df.split) == {"test"}
    assert df.set.tolist()[0] == "Guys"
    pairs = pd.read_csv(out / "pairs.tsv", sep="\t")
    assert len(pairs) == 5 * 4 and set(pairs.split) == {"test"}
    img = np.asanyarray(nib.load(out / df.t1[0]).dataobj)
    seg = np.asanyarray(nib.load(out / df.seg[0]).dataobj)
    assert (img[seg == 0] == 0).all()  # skull-stripped by the label mask
    brain.build_brain(raw, out, {**SMALL, "label_groups": None, "test_pairs": "atlas",
                                 "atlas": "IXI012-HH-1211"}, 0, "ixi")
    pairs = pd.read_csv(out / "pairs.tsv", sep="\t")
    assert len(pairs) == 4 and set(pairs.moving) == {"IXI012-HH-1211"} and "IXI012-HH-1211" not in set(pairs.fixed)
    bare = write_ixi_official(tmp_path / "bare", with_labels=False)
    with pytest.raises(DataError, match="ships no label maps"):
        brain.build_brain(bare, tmp_path / "p2", SMALL, 0, "ixi")
    df = brain.build_brain(bare, tmp_path / "p2", {**SMALL, "allow_unlabelled": True, "brain_mask": "nonzero",
                                                    "skull_strip": False}, 0, "ixi")
    assert "seg" not in df.columns


def test_ixi_official_fetch_needs_the_pinned_hash(tmp_path, registry):
    src = write_ixi_official(tmp_path / "src")
    tar = tmp_path / "IXI-T1.tar"
    with tarfile.open(tar, "w") as tf:
        for f in sorted(src.iterdir()):
            tf.add(f, arcname=f.name)
    with pytest.raises(ChecksumError, match="md5:34901a0593b41dd19c1a1f746eac2d58"):
        fetch_dataset("ixi", registry, tmp_path / "raw", local_path=tar)


# ----------------------------------------------------------------------------- fetch: scoped manifests


def test_manual_source_manifest_applies_to_its_local_archive_only(tmp_path, registry):
    def tar(path, files):
        with tarfile.open(path, "w") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return path

    import hashlib

    good = b"image bytes"
    entry = {
        "description": "x", "modalities": ["MR"], "ndim": 3, "labels": {}, "licence": "x", "citation": "x",
        "local_path": None,
        "source": {"kind": "manual", "page": "https://example.org", "files": ["official.tar"], "instructions": "x",
                   "layout": "**/*.img", "manifest_when": "present",
                   "manifest": {"Repo-abc/data/a.img": hashlib.sha256(good).hexdigest()}},
    }
    reg = {"toy": entry}
    local = tar(tmp_path / "Repo-abc.tar", {"Repo-abc/data/a.img": good})
    rec = read_fetch_record(fetch_dataset("toy", reg, tmp_path / "r1", local_path=local))
    assert rec["hash_status"] == "verified-manifest" and "manifest: 1 files match their sha256" in rec["verified"]
    official = tar(tmp_path / "official.tar", {"LPBA40/x.img": b"other"})
    rec = read_fetch_record(fetch_dataset("toy", reg, tmp_path / "r2", local_path=official))
    assert rec["hash_status"] == "not-applicable" and any("not applicable" in v for v in rec["verified"])
    bad = tar(tmp_path / "bad.tar", {"Repo-abc/data/a.img": b"tampered"})
    with pytest.raises(ChecksumError, match="a.img: sha256 mismatch"):
        fetch_dataset("toy", reg, tmp_path / "r3", local_path=bad)
    assert not (tmp_path / "r3" / "toy").exists()
    with pytest.raises(ManualDownloadRequired, match="osf.io/nhtur"):
        fetch_dataset("mindboggle101", registry, tmp_path / "r4")
    with pytest.raises(ManualDownloadRequired, match=r"LPBA40_Subjects_Delineation_Space_MRI_and_label_files\.zip"):
        fetch_dataset("lpba40", registry, tmp_path / "r4")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_preprocess_brain(lpba_official, tmp_path, capsys):
    spec = {"dataset": "lpba40", "preprocess": "brain", "seed": 0,
            "params": {**SMALL, "max_subjects": 5, "split": {"by": "random", "n_test": 2}}}
    assert cli.main(["preprocess", "--raw", str(lpba_official), "--out", str(tmp_path / "p"),
                     "--spec", json.dumps(spec)]) == 0
    assert len(pd.read_csv(tmp_path / "p" / "cases.tsv", sep="\t")) == 5
    spec["params"]["shape"] = [8, 8]
    assert cli.main(["preprocess", "--raw", str(lpba_official), "--out", str(tmp_path / "q"),
                     "--spec", json.dumps(spec)]) == 2
    assert "params: shape" in capsys.readouterr().err


# --------------------------------------------------------------------------------- real local archives


@pytest.fixture(scope="module")
def real_raw(tmp_path_factory, registry) -> Path:
    return tmp_path_factory.mktemp("real_raw")


@needs("lpba40")
def test_real_lpba40_fetch_and_preprocess_small_grid(real_raw, registry, tmp_path):
    raw = fetch_dataset("lpba40", registry, real_raw, local_path=ARCHIVES["lpba40"])
    rec = read_fetch_record(raw)
    assert rec["hash_status"] == "verified-local-hash" and "manifest: 81 files match their sha256" in rec["verified"]
    subjects = ["S01", "S02", "S11", "S12", "S30", "S40"]
    df = brain.build_brain(raw, tmp_path / "prep", {"shape": [32, 32, 32], "subjects": subjects,
                                                    "split": {"by": "random", "n_test": 2}}, 0, "lpba40")
    assert df.case.tolist() == subjects and (df.split == "test").sum() == 2
    assert dict(zip(df.case, df.archive_split))["S01"] == "fixed"
    ds = PreparedDataset.open(tmp_path / "prep")
    t1 = ds.load("S11", "t1")
    assert t1.array.shape == (32, 32, 32) and nib.aff2axcodes(t1.affine) == ("R", "A", "S")
    np.testing.assert_allclose(t1.spacing, [160 / 32, 192 / 32, 160 / 32])  # 1 mm LPS 160x192x160 -> RAS
    assert 0 <= t1.array.min() and t1.array.max() <= 1 and (t1.array > 0).mean() > 0.1
    seg, rois = ds.load("S11", "seg").array, ds.load("S11", "seg_rois").array
    assert {21, 166, 181, 182} <= set(np.unique(seg)) and 181 not in np.unique(rois)
    assert len(ds.pairs_for(0, "test")) == 2 and len(ds.pairs_for(0, "train")) == 12
    meta = json.loads((tmp_path / "prep" / "dataset.json").read_text())
    assert meta["layout"] == "lganet" and meta["cases"]["S11"]["native_orientation"] == "LPS"
    assert meta["scale"] == {"shape": "32x32x32", "subjects": 6, "subjects_found": 40}


@needs("lpba40")
def test_real_lpba40_missing_or_extra_file_vs_manifest(real_raw, registry, tmp_path):
    raw = fetch_dataset("lpba40", registry, real_raw, local_path=ARCHIVES["lpba40"])
    top = brain.LOCAL_ARCHIVES["lpba40"]["top"]
    gone = f"{top}/data/LPBA40/train/S17.delineation.skullstripped.nii.gz"
    farm = copy_tree_links(raw, tmp_path / "missing", skip={gone})
    with pytest.raises(DataError, match=r"S17\.delineation\.skullstripped\.nii\.gz: listed in the committed case "
                                        r"manifest .*lpba40_lganet\.tsv but missing"):
        brain.discover("lpba40", farm)
    farm = copy_tree_links(raw, tmp_path / "extra")
    os.symlink((raw / gone).resolve(), farm / top / "data/LPBA40/train/S41.delineation.skullstripped.nii.gz")
    with pytest.raises(DataError, match=r"S41\.delineation\.skullstripped\.nii\.gz: not in the committed case"):
        brain.discover("lpba40", farm)


@needs("mindboggle101")
def test_real_mindboggle_oasis20(real_raw, registry, tmp_path):
    raw = fetch_dataset("mindboggle101", registry, real_raw, local_path=ARCHIVES["mindboggle101"])
    rec = read_fetch_record(raw)
    assert rec["hash_status"] == "verified-local-hash" and "manifest: 61 files match their sha256" in rec["verified"]
    layout = brain.discover("mindboggle101", raw)
    assert layout.name == "linguistics_oasis20"
    assert [c.case for c in layout.cases][:3] == ["atlas_1", "atlas_2", "atlas_3"]
    assert len(layout.cases) == 20 and {c.set for c in layout.cases} == {"OASIS-TRT-20"}
    with pytest.raises(DataError, match="holds only \\['OASIS-TRT-20'\\]"):
        brain.build_brain(raw, tmp_path / "x", {"shape": [24, 24, 24]}, 0, "mindboggle101")
    params = {"shape": [24, 24, 24], "split": {"by": "random", "n_test": 2},
              "subjects": ["atlas_1", "atlas_2", "atlas_3", "atlas_4"]}
    df = brain.build_brain(raw, tmp_path / "prep", params, 0, "mindboggle101")
    ds = PreparedDataset.open(tmp_path / "prep")
    reg = ds.load("atlas_1", "seg_regions").array
    assert set(np.unique(reg)) == {0, 1, 2, 3, 4, 5}
    meta = json.loads((tmp_path / "prep" / "dataset.json").read_text())
    assert meta["cases"]["atlas_1"]["native_orientation"] == "ASL"
    assert len(df) == 4


@needs("ixi")
def test_real_ixi30(real_raw, registry, tmp_path):
    raw = fetch_dataset("ixi", registry, real_raw, local_path=ARCHIVES["ixi"])
    rec = read_fetch_record(raw)
    assert rec["hash_status"] == "verified-local-hash" and "manifest: 63 files match their sha256" in rec["verified"]
    layout = brain.discover("ixi", raw)
    assert len(layout.cases) == 30 and {c.set for c in layout.cases} == {"HH"}
    params = {"shape": [24, 24, 24], "max_subjects": 4}
    df = brain.build_brain(raw, tmp_path / "prep", params, 0, "ixi")
    assert set(df.split) == {"test"} and len(pd.read_csv(tmp_path / "prep" / "pairs.tsv", sep="\t")) == 12
    ds = PreparedDataset.open(tmp_path / "prep")
    t1, seg = ds.load(df.case[0], "t1"), ds.load(df.case[0], "seg")
    assert nib.aff2axcodes(t1.affine) == ("R", "A", "S") and t1.array[0, 0, 0] == 0
    assert (t1.array > 0.05).sum() <= 1.3 * (seg.array > 0).sum()  # skull-stripped (blur at the edge only)
    rois = set(np.unique(ds.load(df.case[0], "seg_rois").array))
    assert 69 not in rois and 47 in rois

"""Tests of regbench.datasets.chestxray (JSRT / Montgomery / Shenzhen from the ACRN_Chest_X-ray_IA archive).

The tests that need real data use the shared archive ``../shared/data/ACRN_...-data.tar.gz`` beside the
repository and are skipped when it is absent (a user's clone has no ``../shared``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

from regbench.data import PreparedDataset
from regbench.datasets import fetch_dataset, load_registry, read_fetch_record
from regbench.datasets.chestxray import (
    ACRN_COMMIT,
    ACRN_TOP,
    MANIFEST_TSV,
    _pairs,
    build_chestxray,
    read_manifest,
    registry_manifest,
    write_manifest,
)
from regbench.errors import ChecksumError, ConfigError, DataError
from regbench.io import load_image

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "config" / "datasets.yaml"
ARCHIVE_NAME = f"ACRN_Chest_X-ray_IA-{ACRN_COMMIT}-data.tar.gz"
ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / ARCHIVE_NAME
SEED = 0

needs_archive = pytest.mark.skipif(not ARCHIVE.exists(), reason=f"{ARCHIVE} not present (no ../shared beside the repo)")


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def registry() -> dict:
    return load_registry(REGISTRY)


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("raw")


@pytest.fixture(scope="module")
def jsrt_raw(registry, raw_root) -> Path:
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} not present")
    return fetch_dataset("jsrt", registry, raw_root, local_path=ARCHIVE)


@pytest.fixture(scope="module")
def jsrt_prep(jsrt_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "jsrt"
    build_chestxray(jsrt_raw, out, {"test_pairs": "all"}, SEED, "jsrt")
    return out


@pytest.fixture(scope="module")
def shenzhen_prep(registry, raw_root, tmp_path_factory) -> Path:
    if not ARCHIVE.exists():
        pytest.skip(f"{ARCHIVE} not present")
    raw = fetch_dataset("shenzhen", registry, raw_root, local_path=ARCHIVE)
    out = tmp_path_factory.mktemp("prep") / "shenzhen"
    build_chestxray(raw, out, {"test_pairs": "all"}, SEED, "shenzhen")
    return out


def _copy_jsrt_source(jsrt_raw: Path, dest: Path) -> Path:
    """A writable copy of the extracted ``ACRN_.../data/JSRT`` tree under ``dest``; returns the top folder."""
    top = dest / ACRN_TOP
    shutil.copytree(jsrt_raw / ACRN_TOP, top)
    return top


# ------------------------------------------------------------------------------------------------- manifest


def test_write_and_read_manifest(tmp_path):
    data = tmp_path / "x" / "data"
    (data / "A" / "split").mkdir(parents=True)
    (data / "A" / "split" / "l.txt").write_bytes(b"one\n")
    (data / "A" / "b.png").write_bytes(b"png")
    out = tmp_path / "m.tsv"
    assert write_manifest(tmp_path, out) == 2  # finds */data
    png_sha, txt_sha = hashlib.sha256(b"png").hexdigest(), hashlib.sha256(b"one\n").hexdigest()
    assert out.read_text().splitlines() == ["path\tsha256", f"A/b.png\t{png_sha}", f"A/split/l.txt\t{txt_sha}"]
    assert read_manifest(out)["A/b.png"] == hashlib.sha256(b"png").hexdigest()
    out.write_text("path\tsha256\nA/b.png\tnot-a-hash\n")
    with pytest.raises(DataError, match=r"m.tsv: line 2"):
        read_manifest(out)


def test_registry_manifests_match_the_committed_tsv(registry):
    rows = read_manifest(MANIFEST_TSV)
    assert len(rows) == 3764
    for name, folder, n in (("jsrt", "JSRT", 996), ("montgomery", "Montgomery", 560), ("shenzhen", "Shenzhen", 2208)):
        manifest = registry[name]["source"]["manifest"]
        assert manifest == registry_manifest(name)
        assert len(manifest) == n
        assert all(k.startswith(f"{ACRN_TOP}/data/{folder}/") for k in manifest)


@needs_archive
def test_committed_tsv_lists_every_file_of_the_archive():
    """Streams the shared archive: the manifest holds exactly its data/ files with their sha256."""
    seen = {}
    with tarfile.open(ARCHIVE, "r:gz") as tf:
        for m in tf:
            if m.isreg():
                rel = m.name.split("/data/", 1)[1]
                seen[rel] = hashlib.sha256(tf.extractfile(m).read()).hexdigest()
    assert seen == read_manifest(MANIFEST_TSV)


@needs_archive
def test_fetch_verifies_the_manifest(jsrt_raw):
    rec = read_fetch_record(jsrt_raw)
    assert "manifest: 996 files match their sha256" in rec["verified"]


@needs_archive
def test_tampered_file_fails_the_fetch_naming_it(jsrt_raw, registry, tmp_path):
    top = _copy_jsrt_source(jsrt_raw, tmp_path / "src")
    victim = top / "data" / "JSRT" / "LR_64" / "labels" / "JPCNN017.png"
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(ChecksumError, match=r"data/JSRT/LR_64/labels/JPCNN017\.png: sha256 mismatch"):
        fetch_dataset("jsrt", registry, tmp_path / "raw", local_path=top)
    assert not (tmp_path / "raw" / "jsrt").exists()
    # the untouched copy is accepted and recorded as verified by the manifest
    victim.write_bytes(victim.read_bytes()[:-1])
    out = fetch_dataset("jsrt", registry, tmp_path / "raw", local_path=top)
    assert read_fetch_record(out)["hash_status"] == "verified-manifest"


# ---------------------------------------------------------------------------------------------------- JSRT


@needs_archive
def test_jsrt_cases_and_files(jsrt_prep):
    cases = pd.read_csv(jsrt_prep / "cases.tsv", sep="\t")
    assert list(cases.columns) == ["case", "split", "image_64", "seg_64", "image_256", "seg_256"]
    assert cases["split"].value_counts().to_dict() == {"train": 197, "test": 50}
    assert cases["case"].is_unique
    ds = PreparedDataset.open(jsrt_prep)
    case = cases["case"].iloc[0]
    for res in (64, 256):
        img = load_image(ds.path(case, f"image_{res}"))
        assert img.array.shape == (res, res) and img.array.dtype == np.float32
        assert 0.0 <= img.array.min() and img.array.max() <= 1.0
        assert np.allclose(img.affine, np.eye(4))
        assert ds.load(case, f"seg_{res}").array.shape == (res, res)
    seg_values = set()
    for c in cases["case"]:
        seg_values |= set(np.unique(np.asarray(load_image(ds.path(c, "seg_256")).array)).tolist())
    assert seg_values == {0, 1}


@needs_archive
def test_jsrt_image_is_uint8_over_255_in_png_order(jsrt_raw, jsrt_prep):
    png = jsrt_raw / ACRN_TOP / "data" / "JSRT" / "LR_256" / "images" / "JPCLN068.png"
    raw = np.asarray(PILImage.open(png))
    out = load_image(jsrt_prep / "images" / "JPCLN068_256.nii.gz").array
    np.testing.assert_allclose(out, raw.astype(np.float32) / 255.0, atol=1e-7)


@needs_archive
def test_jsrt_heart_is_removed_and_lungs_merged(jsrt_raw, jsrt_prep):
    raw = np.asarray(PILImage.open(jsrt_raw / ACRN_TOP / "data" / "JSRT" / "LR_256" / "labels" / "JPCLN068.png"))
    assert {1, 2, 3} <= set(np.unique(raw).tolist())
    out = load_image(jsrt_prep / "labels" / "JPCLN068_256_seg.nii.gz").array
    assert np.all(out[raw == 3] == 0)  # heart -> background
    assert np.all(out[(raw == 1) | (raw == 2)] == 1)  # both lungs -> 1
    assert np.all(out[raw == 0] == 0)
    meta = json.loads((jsrt_prep / "dataset.json").read_text())
    assert meta["label_mapping"]["raw_to_output"] == {"0": 0, "1": 1, "2": 1, "3": 0}
    assert meta["fixes"]["label_entries_resolved_with_mask_suffix"] == 0


@needs_archive
def test_jsrt_pairs_all(jsrt_prep):
    pairs = pd.read_csv(jsrt_prep / "pairs.tsv", sep="\t")
    assert list(pairs.columns) == ["pair_id", "fold", "split", "fixed", "moving"]
    assert set(pairs["fold"]) == {0}
    counts = pairs["split"].value_counts().to_dict()
    assert counts == {"train": 197 * 196, "test": 2450}
    assert (pairs["fixed"] != pairs["moving"]).all() and pairs["pair_id"].is_unique
    cases = pd.read_csv(jsrt_prep / "cases.tsv", sep="\t").set_index("case")["split"]
    for split in ("train", "test"):
        sel = pairs[pairs["split"] == split]
        assert set(cases[sel["fixed"]]) == {split} and set(cases[sel["moving"]]) == {split}
    meta = json.loads((jsrt_prep / "dataset.json").read_text())
    assert meta["n_pairs"] == {"train": 38612, "test": 2450}
    assert meta["n_train"] == 197 and meta["n_test"] == 50


@needs_archive
def test_random_test_pairs_are_distinct_and_seeded(jsrt_raw, tmp_path):
    def build(name, seed):
        out = tmp_path / name
        build_chestxray(jsrt_raw, out, {"test_pairs": "random200", "max_cases": 20}, seed, "jsrt")
        p = pd.read_csv(out / "pairs.tsv", sep="\t")
        return p[p["split"] == "test"], pd.read_csv(out / "cases.tsv", sep="\t")

    a, cases = build("a", 7)
    b, _ = build("b", 7)
    c, _ = build("c", 8)
    assert len(a) == 200 and a["pair_id"].is_unique and (a["fixed"] != a["moving"]).all()
    test_ids = set(cases.loc[cases["split"] == "test", "case"])
    assert set(a["fixed"]) <= test_ids and set(a["moving"]) <= test_ids
    assert a["pair_id"].tolist() == b["pair_id"].tolist()  # same seed, same pairs
    assert a["pair_id"].tolist() != c["pair_id"].tolist()
    assert cases["split"].value_counts().to_dict() == {"train": 20, "test": 20}  # max_cases


@pytest.mark.parametrize("n, expected", [(50, 2450), (28, 756), (110, 11990)])
def test_all_ordered_pairs_counts(n, expected):
    assert len(_pairs([f"c{i}" for i in range(n)], "test", None, None)) == expected


@needs_archive
@pytest.mark.parametrize("params, match", [
    ({"test_pairs": "random0"}, "test_pairs must be 'all' or 'random<N>'"),
    ({"test_pairs": "some"}, "test_pairs must be 'all' or 'random<N>'"),
    ({"test_pairs": "random1000", "max_cases": 5}, "only 20 ordered pairs"),
    ({"max_cases": 1}, "max_cases must be null or an integer >= 2"),
])
def test_bad_params_are_config_errors(jsrt_raw, tmp_path, params, match):
    with pytest.raises(ConfigError, match=match):
        build_chestxray(jsrt_raw, tmp_path / "out", params, SEED, "jsrt")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_unknown_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'lits'"):
        build_chestxray(tmp_path, tmp_path / "out", {}, SEED, "lits")


# ------------------------------------------------------------------------------------------------ Shenzhen


@needs_archive
def test_shenzhen_counts_mask_fix_and_labels(shenzhen_prep):
    cases = pd.read_csv(shenzhen_prep / "cases.tsv", sep="\t")
    assert cases["split"].value_counts().to_dict() == {"train": 440, "test": 110}
    pairs = pd.read_csv(shenzhen_prep / "pairs.tsv", sep="\t")
    assert pairs["split"].value_counts().to_dict() == {"train": 440 * 439, "test": 11990}
    meta = json.loads((shenzhen_prep / "dataset.json").read_text())
    assert meta["fixes"]["label_entries_resolved_with_mask_suffix"] == 1100  # every label entry, 4 lists
    assert meta["label_mapping"]["raw_to_output"] == {"0": 0, "255": 1}
    assert set(meta["label_mapping"]["raw_value_pixel_counts"]) == {"0", "255"}
    for case in cases["case"].iloc[::50]:
        for res in (64, 256):
            seg = load_image(shenzhen_prep / f"labels/{case}_{res}_seg.nii.gz").array
            assert seg.shape == (res, res) and set(np.unique(seg).tolist()) == {0, 1}
            assert load_image(shenzhen_prep / f"images/{case}_{res}.nii.gz").array.shape == (res, res)


# -------------------------------------------------------------------------------------------------- errors


@needs_archive
def test_missing_split_list_names_the_file(jsrt_raw, tmp_path):
    top = _copy_jsrt_source(jsrt_raw, tmp_path / "raw")
    (top / "data" / "JSRT" / "split" / "test_labels_256.txt").unlink()
    with pytest.raises(DataError, match=r"split/test_labels_256\.txt: split list missing"):
        build_chestxray(tmp_path / "raw", tmp_path / "out", {}, SEED, "jsrt")
    assert not (tmp_path / "out" / "cases.tsv").exists()


@needs_archive
def test_unresolvable_entry_names_list_and_entry(jsrt_raw, tmp_path):
    top = _copy_jsrt_source(jsrt_raw, tmp_path / "raw")
    lst = top / "data" / "JSRT" / "split" / "train_labels_64.txt"
    lines = lst.read_text().splitlines()
    lines[2] = "./data/JSRT/LR_64/labels/NOPE999.png"
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train_labels_64\.txt: line 3: entry './data/JSRT/LR_64/labels/NOPE999\.png' "
                                        r"resolves to no file \(tried .*NOPE999\.png or .*NOPE999_mask\.png\)"):
        build_chestxray(tmp_path / "raw", tmp_path / "out", {}, SEED, "jsrt")


@needs_archive
def test_unexpected_label_value_names_the_file(jsrt_raw, tmp_path):
    top = _copy_jsrt_source(jsrt_raw, tmp_path / "raw")
    first = (top / "data" / "JSRT" / "split" / "train_labels_64.txt").read_text().split()[0]
    png = top / first.removeprefix("./")
    arr = np.asarray(PILImage.open(png)).copy()
    arr[0, 0] = 7
    PILImage.fromarray(arr).save(png)
    with pytest.raises(DataError, match=rf"{png.name}: unexpected label value\(s\) \[7\]"):
        build_chestxray(tmp_path / "raw", tmp_path / "out", {"max_cases": 2}, SEED, "jsrt")


def test_missing_data_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"no \*/data/Montgomery folder found"):
        build_chestxray(tmp_path, tmp_path / "out", {}, SEED, "montgomery")


"""Tests of the dataset registry (config/datasets.yaml + schema) and of regbench.datasets.fetch."""

from __future__ import annotations

import copy
import functools
import hashlib
import http.server
import io
import json
import os
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from regbench.datasets import FETCHED_NAME, fetch_dataset, load_registry, read_fetch_record, validate_config
from regbench.errors import ChecksumError, ConfigError, DataError, ManualDownloadRequired
from regbench.utils import sha256_file

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "config" / "datasets.yaml"
SCHEMA = REPO / "workflow" / "schemas" / "datasets.schema.yaml"
ACRN_COMMIT = "d33d1cab924315de53aebe801eb9814a1ef79cfa"
ACRN_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / f"ACRN_Chest_X-ray_IA-{ACRN_COMMIT}-data.tar.gz"
ACRN_DATA_SHA256 = "cef9160819686e4f46f4194806ecf81ca5359a1b6dff8d7ed9416028c8f2c406"

MISSION_DATASETS = {
    "brats2020", "lits", "sliver07", "msd_liver", "bfh", "mmwhs2017", "chaos", "mindboggle101", "lpba40",
    "ixi", "jsrt", "montgomery", "shenzhen", "carotid", "demo",
}
DEMO_SHA256 = {
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
}


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def registry() -> dict:
    return load_registry(REGISTRY, SCHEMA)


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def url_entry(hash_: str | None, layout="pkg/data/*.txt", **extra) -> dict:
    src = {
        "kind": "url",
        "url": "https://example.invalid/toy.tar.gz",
        "hash": hash_,
        "archive": "tar",
        "page": "https://example.invalid/toy",
        "layout": layout,
        **extra,
    }
    if hash_ is None:
        src["hash_note"] = "test: no hash known"
    return {"toy": {"description": "toy", "modalities": ["CT"], "ndim": 3, "labels": {}, "licence": "x",
                    "citation": "x", "source": src, "local_path": None}}


TOY_FILES = {"pkg/data/a.txt": b"alpha\n", "pkg/data/b.txt": b"beta\n"}


def leftovers(raw_root: Path) -> list[str]:
    """Staging or temp entries left in raw_root by a failed fetch."""
    return [p.name for p in raw_root.iterdir() if p.name.endswith(".partial") or ".tmp" in p.name] \
        if raw_root.exists() else []


# ------------------------------------------------------------------------------------------- registry


def test_registry_validates_and_declares_every_mission_dataset(registry):
    assert MISSION_DATASETS <= set(registry)
    for name, entry in registry.items():
        for key in ("description", "modalities", "ndim", "labels", "licence", "citation", "source"):
            assert key in entry, (name, key)
        assert entry["source"]["kind"] in {"url", "manual", "package", "byo"}
        assert all(isinstance(k, int) for k in entry["labels"]), name
        assert "local_path" in entry
    kinds = {n: registry[n]["source"]["kind"] for n in MISSION_DATASETS}
    assert kinds["msd_liver"] == kinds["chaos"] == kinds["ixi"] == "url"
    assert kinds["carotid"] == "byo" and kinds["demo"] == "package"
    assert {kinds[n] for n in ("brats2020", "lits", "sliver07", "bfh", "mmwhs2017", "lpba40")} == {"manual"}
    assert registry["msd_liver"]["source"]["hash"] == "md5:a90ec6c4aa7f6a3d087205e23d4e6397"
    assert registry["brats2020"]["labels"] == {0: "background", 1: "necrotic and non-enhancing tumour core",
                                               2: "peritumoral edema", 4: "enhancing tumour"}
    assert len([k for k in registry["lpba40"]["labels"] if k]) == 56
    assert len([k for k in registry["mindboggle101"]["labels"] if k]) == 62


def test_chest_xray_sets_share_the_acrn_source(registry):
    srcs = [registry[n]["source"] for n in ("jsrt", "montgomery", "shenzhen")]
    assert len({s["url"] for s in srcs}) == 1 and ACRN_COMMIT in srcs[0]["url"]
    for s, folder in zip(srcs, ("JSRT", "Montgomery", "Shenzhen")):
        assert s["hash"] is None and s["hash_note"]
        # expanded from config/manifests/acrn_chest_xray.tsv (manifest_file): only this set's files, keyed by
        # their path inside the extracted archive
        assert len(s["manifest"]) > 500
        assert all(k.startswith(f"ACRN_Chest_X-ray_IA-{ACRN_COMMIT}/data/{folder}/") for k in s["manifest"])
        assert [h["hash"] for h in s["local_hashes"]] == [f"sha256:{ACRN_DATA_SHA256}"]
        assert s["members"] == [f"*/data/{folder}/*"]
    # YAML anchors must not alias: editing one entry leaves the others alone
    srcs[0]["local_hashes"].append({"hash": "sha256:" + "0" * 64, "file": "x"})
    assert len(srcs[1]["local_hashes"]) == 1


def test_demo_pins_the_nilearn_files(registry):
    files = registry["demo"]["source"]["files"]
    assert registry["demo"]["source"]["package"] == "nilearn"
    assert {Path(f["path"]).name: f["sha256"] for f in files} == DEMO_SHA256
    assert all(f["path"].startswith("datasets/data/") for f in files)


def test_every_unhashed_url_source_says_why(registry):
    for name, entry in registry.items():
        src = entry["source"]
        if src["kind"] == "url" and src["hash"] is None:
            assert src.get("hash_note"), name


def _mutated_registry(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(REGISTRY.read_text())
    mutate(data["datasets"])
    out = tmp_path / "config" / "datasets.yaml"
    out.parent.mkdir()
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["lits"]["source"].pop("page"), "datasets.lits.source: 'page' is a required property"),
        (lambda d: d["chaos"]["source"].update(kind="ftp"), "datasets.chaos.source.kind: 'ftp' is not one of"),
        (lambda d: d["ixi"]["source"].update(mirror="x"), "datasets.ixi.source: Additional properties are not allowed"),
        (lambda d: d["msd_liver"]["source"].update(hash="md5:123"), "datasets.msd_liver.source.hash: 'md5:123' does not match"),
        (lambda d: d["jsrt"]["source"].pop("hash_note"), "datasets.jsrt.source: 'hash_note' is a required property"),
        (lambda d: d["demo"]["source"]["files"][1].pop("sha256"), "datasets.demo.source.files[1]: 'sha256' is a required property"),
        (lambda d: d["bfh"].pop("licence"), "datasets.bfh: 'licence' is a required property"),
        (lambda d: d["brats2020"]["labels"].update({"x": "y"}), "datasets.brats2020.labels: 'x' does not match"),
        (lambda d: d["carotid"]["source"].update(layout="../*.nii.gz"), "datasets.carotid.source.layout"),
    ],
)
def test_schema_failure_names_file_dataset_and_key(tmp_path, mutate, expected):
    path = _mutated_registry(tmp_path, mutate)
    with pytest.raises(ConfigError) as ei:
        load_registry(path, SCHEMA)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ")
    assert expected in msg


def test_schema_found_relative_to_the_registry(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not inside the repository: the schema is found from the registry's folder
    assert "lits" in load_registry(REGISTRY)


def test_load_registry_reports_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: file not found"):
        load_registry(tmp_path / "nope.yaml", SCHEMA)
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        load_registry(bad, SCHEMA)


def test_validate_config_is_generic(tmp_path):
    schema = tmp_path / "s.schema.yaml"
    schema.write_text(yaml.safe_dump({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "additionalProperties": False,
        "properties": {"train": {"type": "object", "properties": {"lr": {"type": "number", "exclusiveMinimum": 0}},
                                 "required": ["lr"]}},
    }))
    validate_config({"train": {"lr": 0.1}}, schema, "config/x.yaml")
    with pytest.raises(ConfigError, match=r"^config/x.yaml: train.lr: -1 is less than or equal to"):
        validate_config({"train": {"lr": -1}}, schema, "config/x.yaml")
    with pytest.raises(ConfigError, match=r"config/x.yaml: <root>: Additional properties"):
        validate_config({"extra": 1}, schema, "config/x.yaml")


# ----------------------------------------------------------------------------------------- url kind


@pytest.mark.parametrize("alg", ["sha256", "md5"])
def test_local_archive_with_pinned_hash_is_verified_and_extracted(tmp_path, alg):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    digest = hashlib.new(alg, archive.read_bytes()).hexdigest()
    reg = url_entry(f"{alg}:{digest}")
    out = fetch_dataset("toy", reg, tmp_path / "raw", local_path=str(archive))
    assert out == (tmp_path / "raw" / "toy").absolute()
    assert (out / "pkg/data/a.txt").read_bytes() == b"alpha\n"
    rec = read_fetch_record(out)
    assert rec["dataset"] == "toy" and rec["source_kind"] == "url" and rec["origin"] == "local_archive"
    assert rec["hash_pinned"] is True and rec["hash_status"] == "verified-pinned"
    assert rec["files"][0]["sha256"] == sha256_file(archive)
    assert rec["n_files"] == 2 and rec["fetched_at"]
    assert archive.exists()  # the user's archive is left alone
    assert leftovers(tmp_path / "raw") == []


def test_wrong_hash_raises_checksum_error_naming_file_and_hashes(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ChecksumError) as ei:
        fetch_dataset("toy", url_entry(wrong), tmp_path / "raw", local_path=str(archive))
    msg = str(ei.value)
    assert str(archive) in msg and wrong in msg and sha256_file(archive) in msg
    assert not (tmp_path / "raw" / "toy").exists()
    assert archive.exists()
    assert leftovers(tmp_path / "raw") == []


def test_unpinned_hash_is_recorded_as_unverified(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    out = fetch_dataset("toy", url_entry(None), tmp_path / "raw", local_path=str(archive))
    rec = read_fetch_record(out)
    assert rec["hash_pinned"] is False and rec["hash_status"] == "unverified"


def test_local_hashes_accept_an_alternative_archive_but_pinned_mismatch_is_not_waved(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    alt = [{"hash": f"sha256:{sha256_file(archive)}", "file": "toy.tar.gz"}]
    out = fetch_dataset("toy", url_entry(None, local_hashes=alt), tmp_path / "raw", local_path=str(archive))
    assert read_fetch_record(out)["hash_status"] == "verified-local-hash"
    other = make_tar(tmp_path / "other.tar.gz", {"pkg/data/c.txt": b"c"})
    with pytest.raises(ChecksumError, match="other.tar.gz"):
        fetch_dataset("toy", url_entry("md5:" + "1" * 32, local_hashes=alt), tmp_path / "raw2", local_path=other)


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_truncated_archive_raises_data_error_and_leaves_nothing(tmp_path, fmt):
    payload = {f"pkg/data/{i}.txt": os.urandom(20000) for i in range(8)}
    path = tmp_path / f"toy.{fmt}"
    (make_tar if fmt == "tar.gz" else make_zip)(path, payload)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    reg = url_entry(None)
    reg["toy"]["source"]["archive"] = "tar" if fmt == "tar.gz" else "zip"
    with pytest.raises(DataError) as ei:
        fetch_dataset("toy", reg, tmp_path / "raw", local_path=path)
    assert not isinstance(ei.value, ChecksumError)
    assert str(path) in str(ei.value)
    assert not (tmp_path / "raw" / "toy").exists()
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/regbench-evil.txt", "pkg/../../evil.txt"])
def test_member_escaping_the_target_is_refused(tmp_path, member):
    archive = make_tar(tmp_path / "evil.tar.gz", {"pkg/data/a.txt": b"a", member: b"pwned"})
    with pytest.raises(DataError, match="outside the extraction folder"):
        fetch_dataset("toy", url_entry(None), tmp_path / "raw", local_path=archive)
    assert not (tmp_path / "raw" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "raw" / "toy").exists()
    assert leftovers(tmp_path / "raw") == []


def test_symlink_member_pointing_outside_is_refused(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("pkg/data/a.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"a"))
        link = tarfile.TarInfo("pkg/data/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="points outside"):
        fetch_dataset("toy", url_entry(None), tmp_path / "raw", local_path=archive)
    assert not (tmp_path / "raw" / "toy").exists()


def test_members_and_exclude_select_what_is_extracted(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", {
        "top/data/A/x.txt": b"x", "top/data/A/._x.txt": b"junk", "top/data/B/y.txt": b"y",
    })
    reg = url_entry(None, layout="*/data/A/*.txt", members=["*/data/A/*"], exclude=["*/._*"])
    out = fetch_dataset("toy", reg, tmp_path / "raw", local_path=archive)
    assert (out / "top/data/A/x.txt").exists()
    assert not (out / "top/data/B").exists() and not (out / "top/data/A/._x.txt").exists()


def test_layout_mismatch_is_a_data_error(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    with pytest.raises(DataError, match=r"no file matches the expected layout \['nothing/\*.nii'\]"):
        fetch_dataset("toy", url_entry(None, layout="nothing/*.nii"), tmp_path / "raw", local_path=archive)
    assert not (tmp_path / "raw" / "toy").exists()


def test_manifest_is_checked(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    good = {"pkg/data/a.txt": hashlib.sha256(b"alpha\n").hexdigest()}
    out = fetch_dataset("toy", url_entry(None, manifest=good), tmp_path / "raw", local_path=archive)
    assert any("manifest" in v for v in read_fetch_record(out)["verified"])
    bad = {"pkg/data/a.txt": "f" * 64}
    with pytest.raises(ChecksumError, match="pkg/data/a.txt"):
        fetch_dataset("toy", url_entry(None, manifest=bad), tmp_path / "raw2", local_path=archive)


def test_idempotent_refetch_is_a_no_op(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    reg = url_entry(f"sha256:{sha256_file(archive)}")
    out = fetch_dataset("toy", reg, tmp_path / "raw", local_path=archive)
    before = (out / FETCHED_NAME).read_text()
    mtime = (out / "pkg/data/a.txt").stat().st_mtime_ns
    archive.unlink()  # a second call must not need the source again
    assert fetch_dataset("toy", reg, tmp_path / "raw", local_path=archive) == out
    assert fetch_dataset("toy", reg, tmp_path / "raw") == out
    assert (out / FETCHED_NAME).read_text() == before
    assert (out / "pkg/data/a.txt").stat().st_mtime_ns == mtime


def test_altered_fetched_folder_is_reported(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", TOY_FILES)
    out = fetch_dataset("toy", url_entry(None), tmp_path / "raw", local_path=archive)
    for f in (out / "pkg/data").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="altered"):
        fetch_dataset("toy", url_entry(None), tmp_path / "raw", local_path=archive)


def test_missing_local_path_and_unknown_dataset(tmp_path, registry):
    with pytest.raises(DataError, match="does not exist"):
        fetch_dataset("toy", url_entry(None), tmp_path / "raw", local_path=tmp_path / "absent.tar.gz")
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        fetch_dataset("nope", registry, tmp_path / "raw")


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path/www over HTTP on localhost; yield (folder, base url)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_with_pooch_checks_the_pinned_hash(tmp_path, http_root):
    www, base = http_root
    archive = make_tar(www / "toy.tar.gz", TOY_FILES)
    reg = url_entry(f"sha256:{sha256_file(archive)}")
    reg["toy"]["source"]["url"] = f"{base}/toy.tar.gz"
    out = fetch_dataset("toy", reg, tmp_path / "raw")
    rec = read_fetch_record(out)
    assert rec["origin"] == "download" and rec["hash_status"] == "verified-pinned"
    assert (out / "pkg/data/b.txt").read_bytes() == b"beta\n"
    assert (tmp_path / "raw" / ".downloads" / "toy.tar.gz").exists()

    bad = url_entry("sha256:" + "a" * 64)
    bad["toy"]["source"]["url"] = f"{base}/toy.tar.gz"
    with pytest.raises(ChecksumError) as ei:
        fetch_dataset("toy", bad, tmp_path / "raw2")
    assert "toy.tar.gz" in str(ei.value) and "a" * 64 in str(ei.value) and sha256_file(archive) in str(ei.value)
    assert not (tmp_path / "raw2" / "toy").exists()


def test_failed_download_says_how_to_use_local_path(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = url_entry(None)
    reg["toy"]["source"]["url"] = f"http://127.0.0.1:{port}/toy.tar.gz"
    with pytest.raises(DataError, match="datasets.toy.local_path"):
        fetch_dataset("toy", reg, tmp_path / "raw")
    assert not (tmp_path / "raw" / "toy").exists()


# ----------------------------------------------------------------------------------- manual / byo kinds


def test_missing_manual_dataset_says_where_to_get_it_and_where_to_put_it(tmp_path, registry):
    raw = tmp_path / "raw"
    with pytest.raises(ManualDownloadRequired) as ei:
        fetch_dataset("lits", registry, raw)
    msg = str(ei.value)
    assert "https://competitions.codalab.org/competitions/17094" in msg
    assert str((raw / "lits").absolute()) in msg
    assert "Training_Batch1.zip" in msg and "Training_Batch2.zip" in msg
    assert "datasets.lits.local_path" in msg
    assert not (raw / "lits").exists()
    with pytest.raises(ManualDownloadRequired, match="private"):
        fetch_dataset("carotid", registry, raw)


def test_manual_dataset_folder_with_wrong_content_is_explained(tmp_path, registry):
    raw = tmp_path / "raw"
    (raw / "sliver07").mkdir(parents=True)
    (raw / "sliver07" / "readme.txt").write_text("x")
    with pytest.raises(ManualDownloadRequired, match="nothing in it matches"):
        fetch_dataset("sliver07", registry, raw)
    assert (raw / "sliver07" / "readme.txt").exists()


def _sliver_folder(root: Path) -> Path:
    (root / "scan").mkdir(parents=True)
    (root / "label").mkdir()
    (root / "scan" / "liver-orig001.mhd").write_text("ObjectType = Image\n")
    (root / "label" / "liver-seg001.mhd").write_text("ObjectType = Image\n")
    return root


@pytest.mark.parametrize("copy_", [False, True])
def test_manual_dataset_ingests_a_local_folder(tmp_path, registry, copy_):
    user = _sliver_folder(tmp_path / "downloads" / "sliver")
    out = fetch_dataset("sliver07", registry, tmp_path / "raw", local_path=str(user), copy=copy_)
    f = out / "scan" / "liver-orig001.mhd"
    assert f.read_text() == "ObjectType = Image\n"
    assert (out / "scan").is_symlink() is (not copy_)
    rec = read_fetch_record(out)
    assert rec["origin"] == "local_folder" and rec["local_path"] == str(user)
    assert {x["path"]: x["sha256"] for x in rec["files"]} == {
        "label/liver-seg001.mhd": sha256_file(user / "label/liver-seg001.mhd"),
        "scan/liver-orig001.mhd": sha256_file(user / "scan/liver-orig001.mhd"),
    }
    assert not (user / FETCHED_NAME).exists()  # the user's folder is not written to
    assert fetch_dataset("sliver07", registry, tmp_path / "raw") == out  # idempotent


def test_manual_dataset_registry_local_path_is_used(tmp_path, registry):
    user = _sliver_folder(tmp_path / "sliver")
    registry["sliver07"]["local_path"] = str(user)
    out = fetch_dataset("sliver07", registry, tmp_path / "raw")
    assert (out / "label" / "liver-seg001.mhd").exists()


def test_manual_dataset_already_in_place_is_adopted(tmp_path, registry):
    raw = tmp_path / "raw"
    _sliver_folder(raw / "sliver07")
    out = fetch_dataset("sliver07", registry, raw)
    rec = read_fetch_record(out)
    assert rec["origin"] == "in_place" and len(rec["files"]) == 2


def test_manual_archives_placed_in_target_are_extracted_and_kept(tmp_path, registry):
    raw = tmp_path / "raw"
    (raw / "lits").mkdir(parents=True)
    z1 = make_zip(raw / "lits" / "Training_Batch1.zip",
                  {"Training Batch 1/volume-0.nii": b"v0", "Training Batch 1/segmentation-0.nii": b"s0"})
    make_zip(raw / "lits" / "Training_Batch2.zip", {"Training Batch 2/volume-28.nii": b"v28"})
    out = fetch_dataset("lits", registry, raw)
    assert (out / "Training Batch 1" / "segmentation-0.nii").read_bytes() == b"s0"
    assert (out / "Training Batch 2" / "volume-28.nii").read_bytes() == b"v28"
    assert z1.exists()
    rec = read_fetch_record(out)
    assert rec["origin"] == "placed_archives"
    assert {Path(f["path"]).name for f in rec["files"]} == {"Training_Batch1.zip", "Training_Batch2.zip"}
    assert leftovers(raw) == []


def test_corrupt_placed_archive_fails_without_touching_user_files(tmp_path, registry):
    raw = tmp_path / "raw"
    (raw / "lits").mkdir(parents=True)
    z = make_zip(raw / "lits" / "Training_Batch1.zip", {"volume-0.nii": os.urandom(50000)})
    z.write_bytes(z.read_bytes()[:20000])
    content = z.read_bytes()
    with pytest.raises(DataError, match="Training_Batch1.zip"):
        fetch_dataset("lits", registry, raw)
    assert sorted(p.name for p in (raw / "lits").iterdir()) == ["Training_Batch1.zip"]
    assert z.read_bytes() == content
    assert leftovers(raw) == []


def test_manual_local_archive_with_wrong_content_is_rejected(tmp_path, registry):
    z = make_zip(tmp_path / "Training_Batch1.zip", {"notes.txt": b"not a liver"})
    with pytest.raises(DataError, match="expected layout"):
        fetch_dataset("lits", registry, tmp_path / "raw", local_path=z)
    assert not (tmp_path / "raw" / "lits").exists()


def test_nested_archives_are_extracted(tmp_path, registry):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("LPBA40/delineation_space/S01/S01.delineation.structure.label.hdr", b"hdr")
        zf.writestr("LPBA40/delineation_space/S01/S01.delineation.structure.label.img.gz", b"img")
    outer = make_zip(tmp_path / "LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip",
                     {"LPBA40_inner.zip": inner.getvalue()})
    out = fetch_dataset("lpba40", registry, tmp_path / "raw", local_path=outer)
    assert (out / "LPBA40/delineation_space/S01/S01.delineation.structure.label.hdr").read_bytes() == b"hdr"
    assert not (out / "LPBA40_inner.zip").exists()


def test_manual_single_file_local_path(tmp_path, registry):
    h5 = tmp_path / "dl" / "youyi_liver.h5"
    h5.parent.mkdir()
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    out = fetch_dataset("bfh", registry, tmp_path / "raw", local_path=h5)
    assert (out / "youyi_liver.h5").read_bytes() == h5.read_bytes()
    assert read_fetch_record(out)["files"][0]["sha256"] == sha256_file(h5)


# ------------------------------------------------------------------------------------------ package kind


def test_demo_package_fetch_copies_and_verifies(tmp_path, registry):
    out = fetch_dataset("demo", registry, tmp_path / "raw")
    for fname, digest in DEMO_SHA256.items():
        assert not (out / fname).is_symlink()
        assert sha256_file(out / fname) == digest
    rec = read_fetch_record(out)
    assert rec["source_kind"] == "package" and rec["package"] == "nilearn"
    assert rec["hash_status"] == "verified-sha256"
    assert {f["path"]: f["sha256"] for f in rec["files"]} == DEMO_SHA256
    before = (out / FETCHED_NAME).read_text()
    assert fetch_dataset("demo", registry, tmp_path / "raw") == out
    assert (out / FETCHED_NAME).read_text() == before


def test_demo_wrong_expected_hash_is_caught(tmp_path, registry, monkeypatch):
    reg = copy.deepcopy(registry)
    monkeypatch.setitem(reg["demo"]["source"]["files"][1], "sha256", "b" * 64)
    with pytest.raises(ChecksumError) as ei:
        fetch_dataset("demo", reg, tmp_path / "raw")
    msg = str(ei.value)
    assert "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz" in msg and "b" * 64 in msg
    assert DEMO_SHA256["mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"] in msg
    assert not (tmp_path / "raw" / "demo").exists()
    assert leftovers(tmp_path / "raw") == []


def test_demo_tampered_local_copy_is_caught(tmp_path, registry):
    good = fetch_dataset("demo", registry, tmp_path / "raw")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for fname in DEMO_SHA256:
        (mirror / fname).write_bytes((good / fname).read_bytes())
    t1 = mirror / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    data = bytearray(t1.read_bytes())
    data[-1] ^= 0xFF
    t1.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="mni_icbm152_t1_tal_nlin_sym_09a_converted"):
        fetch_dataset("demo", registry, tmp_path / "raw2", local_path=mirror)
    assert not (tmp_path / "raw2" / "demo").exists()


def test_missing_package_says_pip_install(tmp_path, registry):
    reg = copy.deepcopy(registry)
    reg["demo"]["source"]["package"] = "regbench_no_such_package_xyz"
    with pytest.raises(DataError, match="pip install regbench_no_such_package_xyz"):
        fetch_dataset("demo", reg, tmp_path / "raw")


# --------------------------------------------------------------------------------- shared ACRN archive


@pytest.mark.skipif(not ACRN_DATA.exists(), reason=f"{ACRN_DATA} not present (no ../shared beside the repo)")
@pytest.mark.parametrize("pin", [False, True])
def test_jsrt_from_the_shared_acrn_archive(tmp_path, registry, pin):
    reg = copy.deepcopy(registry)
    if pin:  # as if the registry pinned this archive's own hash
        reg["jsrt"]["source"]["hash"] = f"sha256:{ACRN_DATA_SHA256}"
    out = fetch_dataset("jsrt", reg, tmp_path / "raw", local_path=ACRN_DATA)
    assert len(list(out.glob("*/data/JSRT/LR_64/images/*.png"))) == 247
    assert len(list(out.glob("*/data/JSRT/LR_256/labels/*.png"))) == 247
    assert not list(out.glob("*/data/Montgomery"))  # only the JSRT members are extracted
    rec = read_fetch_record(out)
    assert rec["hash_status"] == ("verified-pinned" if pin else "verified-local-hash")
    assert rec["files"][0]["sha256"] == ACRN_DATA_SHA256
    assert json.loads((out / FETCHED_NAME).read_text())["local_path"] == str(ACRN_DATA)


def test_url_source_ingests_an_extracted_folder(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", {"top/data/A/x.txt": b"x"})
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "unpacked", filter="data")
    reg = url_entry(None, layout="*/data/A/*.txt")
    # pointing at the archive's top folder itself: it is placed as one entry so that the layout matches
    out = fetch_dataset("toy", reg, tmp_path / "raw", local_path=tmp_path / "unpacked" / "top")
    assert (out / "top/data/A/x.txt").read_bytes() == b"x"
    rec = read_fetch_record(out)
    assert rec["origin"] == "local_folder" and rec["hash_status"] == "unverified"
    assert rec["files"] == [{"path": "top/data/A/x.txt", "where": "dataset", "size": 1,
                             "sha256": hashlib.sha256(b"x").hexdigest()}]
    with pytest.raises(DataError, match="does not match the expected layout"):
        fetch_dataset("toy", url_entry(None, layout="*/nothing/*"), tmp_path / "raw2", local_path=tmp_path / "unpacked")

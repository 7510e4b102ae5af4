"""Fetch a registry dataset into ``<raw_root>/<name>/``: download or ingest, verify, extract atomically.

Entry point: :func:`fetch_dataset`. What happens depends on the entry's ``source.kind`` (see
``config/datasets.yaml``):

``url``
    With a ``local_path`` (argument or registry), ingest it: an archive is hash-checked (against the pinned
    ``hash`` or one of ``local_hashes``) and extracted; a folder is linked (or copied). Otherwise download with
    :func:`pooch.retrieve` into ``<raw_root>/.downloads/`` (pooch checks the pinned hash; the file is kept
    there as a cache) and extract. A source with ``hash: null`` is recorded as unverified.
``manual`` / ``byo``
    Ingest data the user placed in ``<raw_root>/<name>/`` (already extracted and matching ``layout``, or as
    the listed archives) or pointed ``local_path`` at (archive, file or folder); otherwise raise
    :class:`~regbench.errors.ManualDownloadRequired` saying where to get what and where to put it.
``package``
    Copy the listed files out of an installed Python package (or a ``local_path`` folder holding them) and
    check each copy's sha256.

Guarantees: extraction and copying happen in a hidden staging folder beside the target
(``<raw_root>/.<name>.*.partial``) that becomes ``<raw_root>/<name>`` by one rename, or whose entries are
renamed into an existing ``<raw_root>/<name>`` the user populated; a failure removes the staging folder and
nothing else (files the user placed, archives given as ``local_path`` and linked folders are never modified
or deleted). Archive members with absolute paths, ``..`` components or links leaving the target are refused.
Per-file manifests (``source.manifest``, built from ``manifest_file``) are checked on every ingest; with
``manifest_when: present`` only when the staged content holds the manifest's top-level folder(s), for a
manifest that describes one local archive of a dataset whose official release has another layout (the
brain MRI sets). A ``manual`` source may list ``local_hashes`` too: a matching archive is recorded as
``verified-local-hash`` (no match is not an error, the official archives carry no pinned hash).

On success the folder holds ``FETCHED.json`` (written atomically, last); a later call that finds a valid
``FETCHED.json`` returns at once. Delete the folder (or its ``FETCHED.json``) to fetch again.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fnmatch
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import urlparse

from ..errors import ChecksumError, ConfigError, DataError, ManualDownloadRequired
from ..utils import atomic_path, get_logger, sha256_file, staging_dir

__all__ = ["FETCHED_NAME", "DOWNLOADS_DIR", "fetch_dataset", "read_fetch_record", "layout_patterns"]

log = get_logger(__name__)

#: Name of the provenance record written into every fetched dataset folder.
FETCHED_NAME = "FETCHED.json"
#: Folder under ``raw_root`` where downloads are cached (safe to delete once datasets are fetched).
DOWNLOADS_DIR = ".downloads"
RECORD_VERSION = 1

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz")
_ZIP_SUFFIXES = (".zip",)
_HAS_TAR_FILTER = hasattr(tarfile, "data_filter")


@dataclass
class _Job:
    name: str
    entry: dict
    source: dict
    raw_root: Path
    target: Path
    local_path: str | None
    copy: bool
    keep_download: bool

    @property
    def kind(self) -> str:
        return self.source["kind"]


# ----------------------------------------------------------------------------------------------- public API


def fetch_dataset(
    name: str,
    registry: dict,
    raw_root: str | os.PathLike,
    local_path: str | os.PathLike | None = None,
    *,
    copy: bool = False,
    keep_download: bool = True,
) -> Path:
    """Make dataset ``name`` available under ``raw_root/name`` and return that folder.

    Args:
        name: a dataset declared in ``registry``.
        registry: ``{name: entry}`` as returned by :func:`regbench.datasets.load_registry` (a whole registry
            document with a top-level ``datasets`` key is accepted too).
        raw_root: root of the raw data tree (created if needed); the dataset lands in ``raw_root/name``.
        local_path: a pre-downloaded archive, file or folder to ingest; overrides the entry's ``local_path``.
        copy: copy a ``local_path`` folder's content instead of symlinking its top-level entries.
        keep_download: keep downloaded archives in ``raw_root/.downloads`` after extraction (default).

    Returns:
        ``raw_root/name`` (absolute), holding the data and ``FETCHED.json``.

    Raises:
        ConfigError: ``name`` is not in the registry or its source kind is unknown.
        ManualDownloadRequired: a ``manual``/``byo`` dataset is neither in place nor given by ``local_path``;
            the message names the page, the files to download, the absolute target folder and the
            ``local_path`` key.
        ChecksumError: a file's hash differs from the pinned one (message names file, expected and actual).
        DataError: a download failed, an archive is truncated/corrupt or unsafe, ``local_path`` does not
            exist, the data does not match the expected ``layout``, a required package is not installed
            (``pip install <package>``), or an existing fetched folder was altered.
    """
    datasets = _datasets(registry)
    if name not in datasets:
        raise ConfigError(f"unknown dataset {name!r}; the registry declares: {', '.join(sorted(datasets))}")
    entry = datasets[name]
    source = entry.get("source") or {}
    raw_root = Path(raw_root).expanduser().absolute()
    job = _Job(
        name=name,
        entry=entry,
        source=source,
        raw_root=raw_root,
        target=raw_root / name,
        local_path=str(local_path) if local_path is not None else entry.get("local_path"),
        copy=copy,
        keep_download=keep_download,
    )
    if source.get("kind") not in ("url", "manual", "byo", "package"):
        raise ConfigError(f"datasets.{name}.source.kind: unknown source kind {source.get('kind')!r}")
    if _already_fetched(job):
        log.info("%s: already fetched in %s (delete %s to fetch again)", name, job.target, FETCHED_NAME)
        return job.target
    raw_root.mkdir(parents=True, exist_ok=True)
    log.info("%s: fetching (%s source) into %s", name, job.kind, job.target)
    if job.kind == "url":
        _fetch_url(job)
    elif job.kind in ("manual", "byo"):
        _fetch_manual(job)
    else:
        _fetch_package(job)
    log.info("%s: ready in %s", name, job.target)
    return job.target


def read_fetch_record(folder: str | os.PathLike) -> dict | None:
    """Return the parsed ``FETCHED.json`` of a dataset folder, or ``None`` if absent or unreadable."""
    path = Path(folder) / FETCHED_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def layout_patterns(source: dict) -> list[str]:
    """Return a source's ``layout`` as a list of globs (empty when it has none)."""
    layout = source.get("layout")
    if layout is None:
        return []
    return [layout] if isinstance(layout, str) else list(layout)


# ------------------------------------------------------------------------------------------------- helpers


def _datasets(registry: dict) -> dict:
    """Accept ``{name: entry}`` or a whole registry document ``{"datasets": {name: entry}}``."""
    inner = registry.get("datasets")
    if isinstance(inner, dict) and inner and all(isinstance(v, dict) and "source" in v for v in inner.values()):
        return inner
    return registry


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _glob_files(root: Path, pattern: str) -> list[str]:
    """Files under ``root`` matching ``pattern`` (``**`` recursive; follows symlinked folders)."""
    hits = glob.glob(os.path.join(glob.escape(str(root)), pattern), recursive=True)
    return [h for h in hits if os.path.isfile(h)]


def _layout_counts(root: Path, source: dict) -> dict[str, int]:
    return {pat: len(_glob_files(root, pat)) for pat in layout_patterns(source)}


def _archive_kind(path: Path) -> str | None:
    low = path.name.lower()
    if low.endswith(_ZIP_SUFFIXES):
        return "zip"
    if low.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def _hexdigest(path: Path, alg: str) -> str:
    if alg == "sha256":
        return sha256_file(path)
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _iter_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` (following symlinks), sorted, excluding the record and its temp files."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn == FETCHED_NAME or fn.startswith(".FETCHED."):
                continue
            p = Path(dirpath) / fn
            if p.is_file():
                yield p


def _hash_tree(root: Path, rel_to: Path) -> list[dict]:
    """``[{path, size, sha256}]`` for every file under ``root``, paths relative to ``rel_to``."""
    files = list(_iter_files(root))
    out = []
    try:
        from tqdm.auto import tqdm

        it = tqdm(files, desc=f"sha256 {rel_to.name}", unit="file", disable=len(files) < 200, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        it = files
    for p in it:
        out.append(
            {"path": p.relative_to(root).as_posix(), "where": "dataset", "size": p.stat().st_size,
             "sha256": sha256_file(p)}
        )
    return out


def _file_entry(path: Path, sha256: str | None = None, where: str = "source") -> dict:
    return {
        "path": str(path),
        "where": where,
        "size": path.stat().st_size,
        "sha256": sha256 if sha256 is not None else sha256_file(path),
    }


def _resolve_local(job: _Job) -> Path:
    p = Path(os.path.expanduser(str(job.local_path)))
    if not p.is_absolute():
        p = Path.cwd() / p
    if not p.exists():
        raise DataError(
            f"dataset {job.name!r}: local_path {p} does not exist (given as the local_path argument or "
            f"datasets.{job.name}.local_path in the registry); fix the path or set it to null"
        )
    return p


def _write_record(folder: Path, record: dict) -> None:
    with atomic_path(folder / FETCHED_NAME) as tmp:
        tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")


def _base_record(job: _Job, origin: str) -> dict:
    src = job.source
    rec: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "dataset": job.name,
        "source_kind": job.kind,
        "origin": origin,
        "page": src.get("page"),
        "local_path": None,
    }
    if job.kind == "url":
        rec["url"] = src["url"]
        rec["hash_pinned"] = src.get("hash") is not None
        rec["pinned_hash"] = src.get("hash")
    if job.kind == "package":
        rec["package"] = src["package"]
        rec["package_version"] = _version(src["package"])
    rec["hash_status"] = None
    rec["files"] = []
    rec["verified"] = []
    return rec


def _finish_record(rec: dict, folder: Path) -> dict:
    rec["n_files"] = sum(1 for _ in _iter_files(folder))
    rec["fetched_at"] = _now()
    rec["regbench_version"] = _version("regbench")
    return rec


def _already_fetched(job: _Job) -> bool:
    """True when ``job.target`` holds a valid record for this dataset whose layout and files still exist.

    Raises:
        DataError: the record belongs to another dataset/kind, or the folder was altered since.
    """
    rec = read_fetch_record(job.target)
    if rec is None:
        return False
    if rec.get("dataset") != job.name or rec.get("source_kind") != job.kind:
        raise DataError(
            f"{job.target / FETCHED_NAME}: records dataset {rec.get('dataset')!r} from a "
            f"{rec.get('source_kind')!r} source, but the registry declares {job.name!r} as {job.kind!r}; "
            f"delete {job.target} and fetch again"
        )
    missing = [pat for pat, n in _layout_counts(job.target, job.source).items() if n == 0]
    missing += [
        f["path"] for f in rec.get("files", [])
        if f.get("where") == "dataset" and not (job.target / f["path"]).exists()
    ]
    if missing:
        raise DataError(
            f"{job.target}: {FETCHED_NAME} says the dataset was fetched but {missing[:5]} no longer match/exist "
            f"(the folder was altered); delete {job.target} and fetch again"
        )
    return True


@contextlib.contextmanager
def _staging(job: _Job) -> Iterator[Path]:
    """A fresh hidden folder beside the target; removed on exit unless it was committed (renamed)."""
    stage = staging_dir(job.raw_root, job.name)
    try:
        yield stage
    finally:
        if stage.exists():
            # rmtree unlinks symlinks without following them: linked user folders are never touched.
            shutil.rmtree(stage, ignore_errors=True)


def _commit(job: _Job, stage: Path, record: dict) -> None:
    """Move the staged content into place and write ``FETCHED.json`` (last).

    If the target does not exist the staging folder is renamed onto it (atomic). If it exists (the user
    placed archives there) each staged top-level entry is renamed into it, after checking that none clashes
    with something already there.

    Raises:
        DataError: a staged entry's name already exists in the target.
    """
    target = job.target
    record = _finish_record(record, stage)
    if not os.path.lexists(target):
        _write_record(stage, record)
        os.rename(stage, target)
        return
    entries = sorted(stage.iterdir())
    clashes = [e.name for e in entries if os.path.lexists(target / e.name)]
    if clashes:
        raise DataError(
            f"{target}: cannot place the fetched data because {clashes[:5]} already exist there and do not "
            f"match the expected layout {layout_patterns(job.source)}; move them away (or delete {target}) and "
            f"fetch again"
        )
    for e in entries:
        os.rename(e, target / e.name)
    _write_record(target, record)


def _applicable_manifest(job: _Job, stage: Path) -> dict[str, str]:
    """The source's per-file manifest, or ``{}`` when ``manifest_when: present`` and none of the manifest's
    top-level folders exists in ``stage`` (the manifest describes one particular local archive, such as a
    repository's copy of a subset, while the official release has another layout)."""
    manifest = job.source.get("manifest") or {}
    if manifest and job.source.get("manifest_when") == "present":
        tops = {PurePosixPath(k).parts[0] for k in manifest}
        if not any(os.path.lexists(stage / t) for t in tops):
            return {}
    return manifest


def _verify_staged(job: _Job, stage: Path, what: str) -> list[str]:
    """Check layout globs and the per-file manifest on staged content; return descriptions of the checks.

    Raises:
        DataError: a layout glob matches nothing, or a manifest file is missing.
        ChecksumError: a manifest file's sha256 differs.
    """
    done = []
    counts = _layout_counts(stage, job.source)
    missing = [pat for pat, n in counts.items() if n == 0]
    if missing:
        raise DataError(
            f"dataset {job.name!r}: after ingesting {what}, no file matches the expected layout {missing} "
            f"(relative to {job.target}); it does not look like the right data. Expected: "
            f"{job.source.get('instructions') or job.source.get('page') or layout_patterns(job.source)}"
        )
    for pat, n in counts.items():
        done.append(f"layout {pat!r} matched {n} files")
    manifest = _applicable_manifest(job, stage)
    if job.source.get("manifest") and not manifest:
        done.append(
            "manifest: not applicable (its top-level folder is absent: not the local archive the manifest "
            "describes, e.g. the official release; see manifest_when)"
        )
    for rel, expected in manifest.items():
        f = stage / rel
        if not f.is_file():
            raise DataError(f"{job.target / rel}: listed in datasets.{job.name}.source.manifest but missing")
        actual = sha256_file(f)
        if actual != expected:
            raise ChecksumError(
                f"{job.target / rel}: sha256 mismatch: expected {expected}, actual {actual} "
                f"(datasets.{job.name}.source.manifest)"
            )
    if manifest:
        done.append(f"manifest: {len(manifest)} files match their sha256")
    return done


# ---------------------------------------------------------------------------------------------- extraction


def _check_member(archive: Path, name: str) -> None:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in PurePosixPath(norm).parts:
        raise DataError(
            f"{archive}: member {name!r} would be written outside the extraction folder; refusing to extract "
            f"this archive"
        )


def _check_link(archive: Path, member: tarfile.TarInfo) -> None:
    link = member.linkname.replace("\\", "/")
    base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath(".")
    resolved = os.path.normpath(str(base / link))
    if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
        raise DataError(
            f"{archive}: link member {member.name!r} -> {member.linkname!r} points outside the extraction "
            f"folder; refusing to extract this archive"
        )


def _extract(
    archive: Path, dest: Path, kind: str, members: list[str] | None = None, exclude: list[str] | None = None
) -> int:
    """Extract ``archive`` (``tar`` any compression, ``zip``, or ``none`` = copy) into ``dest``.

    Only members matching one of ``members`` (fnmatch; all when None) and none of ``exclude`` are extracted.
    Returns the number of regular files written.

    Raises:
        DataError: the archive is truncated or corrupt, holds an unsafe member, or ``members`` matched
            nothing.
    """

    def wanted(n: str) -> bool:
        if members and not any(fnmatch.fnmatchcase(n, p) for p in members):
            return False
        return not (exclude and any(fnmatch.fnmatchcase(n, p) for p in exclude))

    n_files = 0
    log.info("extracting %s", archive)
    if kind == "none":
        shutil.copy2(archive, dest / archive.name)
        return 1
    try:
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                for m in tf:
                    if not wanted(m.name):
                        continue
                    _check_member(archive, m.name)
                    if m.issym() or m.islnk():
                        _check_link(archive, m)
                    elif not (m.isreg() or m.isdir()):
                        log.warning("%s: skipping special member %s", archive, m.name)
                        continue
                    if _HAS_TAR_FILTER:
                        tf.extract(m, dest, filter="data")
                    else:  # pragma: no cover - Python < 3.11.4
                        tf.extract(m, dest, set_attrs=False)
                    n_files += m.isreg()
        elif kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if not wanted(info.filename):
                        continue
                    _check_member(archive, info.filename)
                    zf.extract(info, dest)
                    n_files += not info.is_dir()
        else:
            raise ConfigError(f"{archive}: unknown archive type {kind!r} (expected tar, zip or none)")
    except (DataError, ConfigError):
        raise
    except tarfile.FilterError as e:
        raise DataError(f"{archive}: unsafe member refused ({e}); refusing to extract this archive") from e
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(
            f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e}); delete it and download it again"
        ) from e
    except OSError as e:
        raise DataError(f"{archive}: cannot extract into {dest} ({type(e).__name__}: {e})") from e
    if members and n_files == 0:
        raise DataError(f"{archive}: no file in the archive matches {members}; is it the right archive?")
    return n_files


def _extract_nested(stage: Path) -> int:
    """Extract archives found inside extracted content (one level) next to themselves, then drop them."""
    n = 0
    inner = [p for p in sorted(stage.rglob("*")) if p.is_file() and not p.is_symlink() and _archive_kind(p)]
    for a in inner:
        n += _extract(a, a.parent, _archive_kind(a))
        a.unlink()
    return n


# ------------------------------------------------------------------------------------------------ url kind


def _check_archive_hash(job: _Job, path: Path) -> dict:
    """Compare a local archive with the pinned hash, then with ``local_hashes``.

    Returns ``{"status": "verified-pinned"|"verified-local-hash"|"unverified", "sha256": hex, ...}``.

    Raises:
        ChecksumError: a hash is pinned and neither it nor any ``local_hashes`` entry matches.
    """
    src = job.source
    sha = sha256_file(path)
    digests = {"sha256": sha}

    def actual(h: str) -> str:
        alg = h.split(":", 1)[0]
        if alg not in digests:
            digests[alg] = _hexdigest(path, alg)
        return f"{alg}:{digests[alg]}"

    pinned = src.get("hash")
    if pinned and actual(pinned) == pinned:
        return {"status": "verified-pinned", "sha256": sha, "matched": pinned}
    for alt in src.get("local_hashes") or []:
        if actual(alt["hash"]) == alt["hash"]:
            return {"status": "verified-local-hash", "sha256": sha, "matched": alt["hash"], "matched_file": alt["file"]}
    if pinned:
        alts = [a["hash"] for a in src.get("local_hashes") or []]
        raise ChecksumError(
            f"{path}: hash mismatch for dataset {job.name!r}: expected {pinned}"
            + (f" (or one of {alts})" if alts else "")
            + f", actual {actual(pinned)} (sha256:{sha}). The file is incomplete, corrupt or another version; "
            f"delete it and download it again from {src.get('page') or src.get('url')}"
        )
    log.warning("%s: no hash is known for %s; recording it as unverified (sha256:%s)", job.name, path, sha)
    return {"status": "unverified", "sha256": sha}


def _download(job: _Job) -> tuple[Path, dict]:
    """Download the url source with pooch into ``raw_root/.downloads``; return the path and hash info.

    Raises:
        ChecksumError: the download does not match the pinned hash (pooch deletes it).
        DataError: the download failed (the message says how to use ``local_path`` instead).
    """
    import pooch

    src = job.source
    url = src["url"]
    fname = src.get("fname") or PurePosixPath(urlparse(url).path).name or f"{job.name}.download"
    ddir = job.raw_root / DOWNLOADS_DIR
    log.info("%s: downloading %s to %s", job.name, url, ddir / fname)
    try:
        path = Path(pooch.retrieve(url, known_hash=src.get("hash"), fname=fname, path=ddir, progressbar=True))
    except ValueError as e:
        if "hash" in str(e).lower():
            raise ChecksumError(f"{ddir / fname} (downloaded from {url}): {e}") from e
        raise DataError(f"dataset {job.name!r}: download of {url} failed: {e}") from e
    except Exception as e:  # requests/network errors and the like
        raise DataError(
            f"dataset {job.name!r}: download of {url} failed ({type(e).__name__}: {e}). Download it yourself "
            f"(see {src.get('page')}) and set datasets.{job.name}.local_path in the registry to the file"
        ) from e
    if src.get("hash"):
        info = {"status": "verified-pinned", "sha256": sha256_file(path), "matched": src["hash"]}
    else:
        info = _check_archive_hash(job, path)
    return path, info


def _ingest_archive(job: _Job, archive: Path, kind: str, hinfo: dict, origin: str, downloaded: bool) -> None:
    src = job.source
    with _staging(job) as stage:
        n = _extract(archive, stage, kind, src.get("members"), src.get("exclude"))
        if src.get("nested_archives"):
            n += _extract_nested(stage)
        rec = _base_record(job, origin)
        rec["local_path"] = None if downloaded else str(archive)
        rec["hash_status"] = hinfo["status"]
        rec["files"] = [_file_entry(archive, hinfo["sha256"])]
        if hinfo["status"] == "verified-pinned":
            rec["verified"].append(f"{archive.name}: {hinfo['matched']} matches the pinned hash")
        elif hinfo["status"] == "verified-local-hash":
            rec["verified"].append(
                f"{archive.name}: {hinfo['matched']} matches local_hashes entry {hinfo['matched_file']}"
            )
        rec["verified"].append(f"extracted {n} files safely")
        rec["verified"] += _verify_staged(job, stage, str(archive))
        _commit(job, stage, rec)
    if downloaded and not job.keep_download:
        archive.unlink(missing_ok=True)


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
    else:
        os.symlink(src.absolute(), dst, target_is_directory=src.is_dir())


def _ingest_folder(job: _Job, folder: Path, origin: str) -> bool:
    """Link (or copy) a folder's entries into place if they match the layout; return False if they don't.

    The folder's top-level entries are placed in the dataset folder; if the layout does not match that way,
    the folder itself is placed as one entry (for layouts such as ``*/data/JSRT/...``).
    """
    layout = layout_patterns(job.source)
    inside = str(folder) + os.sep

    def matches_as_entry(pat: str) -> bool:
        return any(h.startswith(inside) for h in _glob_files(folder.parent, pat))

    for mode in ["contents", "as_entry"] if layout else ["contents"]:
        if mode == "contents" and any(not _glob_files(folder, p) for p in layout):
            continue
        if mode == "as_entry" and not all(matches_as_entry(p) for p in layout):
            continue
        with _staging(job) as stage:
            if mode == "contents":
                for e in sorted(folder.iterdir()):
                    if e.name == FETCHED_NAME:
                        continue
                    _link_or_copy(e, stage / e.name, job.copy)
            else:
                _link_or_copy(folder, stage / folder.name, job.copy)
            verified = _verify_staged(job, stage, str(folder))
            rec = _base_record(job, origin)
            rec["local_path"] = str(folder)
            rec["placement"] = ("copied" if job.copy else "symlinked") + (
                " folder contents" if mode == "contents" else " folder"
            )
            applied = bool(_applicable_manifest(job, stage))
            rec["hash_status"] = "verified-manifest" if applied else (
                "unverified" if job.kind == "url" else "not-applicable"
            )
            rec["files"] = _hash_tree(stage, job.target)
            rec["verified"] = verified
            _commit(job, stage, rec)
            return True
    return False


def _adopt_in_place(job: _Job, counts: dict[str, int]) -> None:
    """Record data the user already extracted into the target folder (nothing is moved)."""
    rec = _base_record(job, "in_place")
    rec["hash_status"] = "unverified" if job.kind == "url" else "not-applicable"
    rec["files"] = _hash_tree(job.target, job.target)
    rec["verified"] = [f"layout {p!r} matched {n} files" for p, n in counts.items()]
    _write_record(job.target, _finish_record(rec, job.target))


def _fetch_url(job: _Job) -> None:
    src = job.source
    if job.local_path:
        p = _resolve_local(job)
        if p.is_dir():
            if not _ingest_folder(job, p, "local_folder"):
                raise DataError(
                    f"dataset {job.name!r}: local_path folder {p} does not match the expected layout "
                    f"{layout_patterns(src)}; point it at the folder that holds that layout or at the archive"
                )
            return
        hinfo = _check_archive_hash(job, p)
        kind = "none" if src["archive"] == "none" else (_archive_kind(p) or src["archive"])
        _ingest_archive(job, p, kind, hinfo, "local_archive", downloaded=False)
        return
    counts = _layout_counts(job.target, src)
    if job.target.is_dir() and counts and all(counts.values()):
        log.info("%s: data already extracted in %s; recording it (unverified)", job.name, job.target)
        _adopt_in_place(job, counts)
        return
    path, hinfo = _download(job)
    _ingest_archive(job, path, src["archive"], hinfo, "download", downloaded=True)


# ------------------------------------------------------------------------------------------ manual / byo


def _placed_archives(job: _Job, folder: Path) -> list[Path]:
    """Archives in ``folder`` named in ``files``/``optional_files``; else any archive found there."""
    names = list(job.source.get("files") or []) + list(job.source.get("optional_files") or [])
    named = [folder / n for n in names if (folder / n).is_file() and _archive_kind(folder / n)]
    if named:
        return named
    return [p for p in sorted(folder.iterdir()) if p.is_file() and _archive_kind(p)]


def _ingest_archives(job: _Job, archives: list[Path], origin: str) -> None:
    with _staging(job) as stage:
        n = 0
        files = []
        for a in archives:
            files.append(_file_entry(a))
            n += _extract(a, stage, _archive_kind(a) or "tar")
        if job.source.get("nested_archives"):
            n += _extract_nested(stage)
        rec = _base_record(job, origin)
        rec["local_path"] = str(job.local_path) if job.local_path else None
        rec["hash_status"] = "not-applicable"
        rec["files"] = files
        rec["verified"] = [f"extracted {n} files safely"]
        known = {alt["hash"]: alt["file"] for alt in job.source.get("local_hashes") or []}
        for a, entry in zip(archives, files):
            match = known.get(f"sha256:{entry['sha256']}")
            if match:
                rec["hash_status"] = "verified-local-hash"
                rec["verified"].append(f"{a.name}: sha256:{entry['sha256']} matches local_hashes entry {match}")
        rec["verified"] += _verify_staged(job, stage, ", ".join(str(a) for a in archives))
        if rec["hash_status"] == "not-applicable" and _applicable_manifest(job, stage):
            rec["hash_status"] = "verified-manifest"
        _commit(job, stage, rec)


def _manual_message(job: _Job, note: str = "") -> str:
    src = job.source
    files = list(src.get("files") or [])
    optional = list(src.get("optional_files") or [])
    if job.kind == "byo":
        head = f"Dataset {job.name!r} is private (bring your own data) and is not yet in {job.target}."
    else:
        head = f"Dataset {job.name!r} must be downloaded by hand; it is not yet in {job.target}."
    lines = [head]
    if note:
        lines.append(note)
    steps = []
    if src.get("page"):
        steps.append(f"Get it from: {src['page']}")
    if files:
        steps.append("Download: " + ", ".join(files) + (f" (optional: {', '.join(optional)})" if optional else ""))
    steps.append(
        f"Put the downloaded files, or their extracted contents, in:\n       {job.target}\n"
        f"     or set `local_path` for it (datasets.{job.name}.local_path in config/datasets.yaml) to the "
        f"downloaded archive or folder; then run the fetch again."
    )
    lines += [f"  {i}. {s}" for i, s in enumerate(steps, 1)]
    lines.append(f"  Expected once in place (globs relative to that folder): {layout_patterns(src)}")
    lines.append(f"  Details: {src.get('instructions', '').strip()}")
    return "\n".join(lines)


def _fetch_manual(job: _Job) -> None:
    src = job.source
    target = job.target
    if job.local_path:
        p = _resolve_local(job)
        if p.absolute() == target or (p.exists() and target.exists() and p.samefile(target)):
            job.local_path = None  # pointing at the target itself means "use what is in place"
        elif p.is_file():
            if _archive_kind(p):
                _ingest_archives(job, [p], "local_archive")
            else:
                with _staging(job) as stage:
                    _link_or_copy(p, stage / p.name, job.copy)
                    rec = _base_record(job, "local_file")
                    rec["local_path"] = str(p)
                    rec["hash_status"] = "not-applicable"
                    rec["verified"] = _verify_staged(job, stage, str(p))
                    rec["files"] = _hash_tree(stage, target)
                    _commit(job, stage, rec)
            return
        else:
            if _ingest_folder(job, p, "local_folder"):
                return
            archives = _placed_archives(job, p)
            if archives:
                _ingest_archives(job, archives, "local_archives")
                return
            raise DataError(
                f"dataset {job.name!r}: local_path folder {p} neither matches the expected layout "
                f"{layout_patterns(src)} nor holds any of the archives {src.get('files')}; see {src.get('page')}"
            )
    note = ""
    if target.is_dir():
        counts = _layout_counts(target, src)
        if all(counts.values()):
            log.info("%s: found the data in place in %s", job.name, target)
            _adopt_in_place(job, counts)
            return
        archives = _placed_archives(job, target)
        if archives:
            _ingest_archives(job, archives, "placed_archives")
            return
        note = f"{target} exists, but nothing in it matches the expected layout and it holds no archive."
    raise ManualDownloadRequired(_manual_message(job, note))


# ---------------------------------------------------------------------------------------------- package


def _package_dir(job: _Job) -> Path:
    pkg = job.source["package"]
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(
            f"dataset {job.name!r} needs the Python package {pkg!r}, which is not installed: pip install {pkg}"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise DataError(f"dataset {job.name!r}: cannot locate the files of package {pkg!r}; pip install {pkg}")


def _fetch_package(job: _Job) -> None:
    src = job.source
    pkg = src["package"]
    if job.local_path:
        base = _resolve_local(job)
        where = f"local_path {base}"
    else:
        base = _package_dir(job)
        where = f"installed package {pkg} {_version(pkg) or ''}".strip()
    with _staging(job) as stage:
        rec = _base_record(job, "local_folder" if job.local_path else "package")
        rec["local_path"] = str(base) if job.local_path else None
        for f in src["files"]:
            rel = PurePosixPath(f["path"])
            cand = [base / rel, base / rel.name]
            found = next((c for c in cand if c.is_file()), None)
            if found is None:
                raise DataError(
                    f"{cand[0]}: file missing from {where} (needed by dataset {job.name!r}); "
                    f"reinstall it: pip install --force-reinstall {pkg}"
                )
            dst = stage / rel.name
            shutil.copy2(found, dst)
            actual = sha256_file(dst)
            if actual != f["sha256"]:
                raise ChecksumError(
                    f"{found}: sha256 mismatch: expected {f['sha256']}, actual {actual} (datasets.{job.name}."
                    f"source.files; from {where}). Install the package version the registry was written for, "
                    f"or check the file and update the hash"
                )
            rec["files"].append({"path": rel.name, "where": "dataset", "origin": str(found),
                                 "size": dst.stat().st_size, "sha256": actual})
            rec["verified"].append(f"{rel.name}: sha256 matches")
        rec["hash_status"] = "verified-sha256"
        rec["verified"] += _verify_staged(job, stage, where)
        _commit(job, stage, rec)

"""Chest X-ray sets JSRT, Montgomery and Shenzhen as preprocessed by AC-RegNet (``ACRN_Chest_X-ray_IA``).

Source: the ``data/`` folder of the public repository ``lucasmansilla/ACRN_Chest_X-ray_IA`` at commit
:data:`ACRN_COMMIT` (the last commit holding the images). Both GitHub's archive of that commit and the
data-only archive extract as ``ACRN_Chest_X-ray_IA-<commit>/data/<JSRT|Montgomery|Shenzhen>/`` with
``LR_{64,256}/{images,labels}/*.png`` and ``split/{train,test}_{images,labels}_{64,256}.txt``.
See ``docs/chestxray.md`` for citations, licences and every preprocessing decision.

Entry points:

- :func:`build_chestxray` -- the preprocessing reader: PNGs + split lists -> 2D NIfTI files, ``cases.tsv``,
  ``pairs.tsv`` and ``dataset.json`` (the layout read by :mod:`regbench.data`).
- :func:`write_manifest` -- regenerate ``config/manifests/acrn_chest_xray.tsv`` (path relative to ``data/``,
  sha256) from an extracted copy of the archive.
- :func:`registry_manifest` -- the per-dataset ``source.manifest`` mapping (paths relative to
  ``<raw_root>/<name>/``) derived from that TSV: what ``load_registry`` builds from ``manifest_file``.

Command line (regeneration)::

    python -m regbench.datasets.chestxray manifest <extracted data/ folder> config/manifests/acrn_chest_xray.tsv
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..io import save_image
from ..utils import atomic_path, atomic_write_text, get_logger, sha256_file
from .fetch import read_fetch_record
from .registry import read_manifest_tsv

__all__ = [
    "ACRN_COMMIT",
    "ACRN_TOP",
    "DATASETS",
    "DEFAULT_PARAMS",
    "MANIFEST_TSV",
    "build_chestxray",
    "locate_data_dir",
    "read_manifest",
    "registry_manifest",
    "write_manifest",
]

log = get_logger(__name__)

#: Commit of ``lucasmansilla/ACRN_Chest_X-ray_IA`` whose ``data/`` folder is used.
ACRN_COMMIT = "d33d1cab924315de53aebe801eb9814a1ef79cfa"
#: Top-level folder name of both the GitHub archive and the data-only archive of that commit.
ACRN_TOP = f"ACRN_Chest_X-ray_IA-{ACRN_COMMIT}"
ACRN_REPOSITORY = "https://github.com/lucasmansilla/ACRN_Chest_X-ray_IA"
#: The committed manifest (source checkout): one row per file of the archive's ``data/`` folder.
MANIFEST_TSV = Path(__file__).resolve().parents[3] / "config" / "manifests" / "acrn_chest_xray.tsv"

#: Registry name -> folder under ``data/``, raw label value -> output label (1 = lung, 0 = everything else),
#: and the He et al. 2022 split sizes (train, test) the split lists are expected to give.
DATASETS: dict[str, dict[str, Any]] = {
    "jsrt": {
        "folder": "JSRT",
        "label_map": {0: 0, 1: 1, 2: 1, 3: 0},
        "raw_labels": {0: "background", 1: "lung (one side)", 2: "lung (other side)", 3: "heart"},
        "expected": (197, 50),
    },
    "montgomery": {
        "folder": "Montgomery",
        "label_map": {0: 0, 255: 1},
        "raw_labels": {0: "background", 255: "lung"},
        "expected": (110, 28),
    },
    "shenzhen": {
        "folder": "Shenzhen",
        "label_map": {0: 0, 255: 1},
        "raw_labels": {0: "background", 255: "lung"},
        "expected": (440, 110),
    },
}
LABELS = {0: "background", 1: "lung"}
RESOLUTIONS = (64, 256)
SPLITS = ("train", "test")
MASK_SUFFIX = "_mask"

DEFAULT_PARAMS: dict[str, Any] = {
    # "all": every ordered pair of distinct test cases (He et al. 2022); "random<N>", e.g. "random200": N
    # distinct ordered pairs drawn with numpy.random.default_rng(seed) (the AC-RegNet protocol).
    "test_pairs": "all",
    # Test/debug knob: keep only the first N cases (in split-list order) of each split. null = all cases.
    "max_cases": None,
}

CASE_COLUMNS = ["case", "split", "image_64", "seg_64", "image_256", "seg_256"]
PAIR_COLUMNS = ["pair_id", "fold", "split", "fixed", "moving"]

REFERENCES = {
    "jsrt": [
        "Shiraishi J, Katsuragawa S, Ikezoe J, et al. Development of a digital image database for chest "
        "radiographs with and without a lung nodule. AJR Am J Roentgenol 174(1):71-74, 2000.",
        "van Ginneken B, Stegmann MB, Loog M. Segmentation of anatomical structures in chest radiographs using "
        "supervised methods: a comparative study on a public database (SCR). Medical Image Analysis "
        "10(1):19-40, 2006.",
    ],
    "montgomery": [
        "Jaeger S, Candemir S, Antani S, Wang YX, Lu PX, Thoma G. Two public chest X-ray datasets for "
        "computer-aided screening of pulmonary diseases. Quant Imaging Med Surg 4(6):475-477, 2014.",
    ],
    "shenzhen": [
        "Jaeger S, Candemir S, Antani S, Wang YX, Lu PX, Thoma G. Two public chest X-ray datasets for "
        "computer-aided screening of pulmonary diseases. Quant Imaging Med Surg 4(6):475-477, 2014.",
    ],
}
ACRN_REFERENCE = (
    "Mansilla L, Milone DH, Ferrante E. Learning deformable registration of medical images with anatomical "
    "constraints. Neural Networks 124:269-279, 2020."
)
PROTOCOL_REFERENCE = (
    "He et al. 2022 (section 4.1): split JSRT 197/50, MONT 110/28, SHEN 440/110; heart removed from JSRT; "
    "train on 64x64, test on 256x256; all ordered test pairs (AC-RegNet used 200 random test pairs)."
)


# ------------------------------------------------------------------------------------------------- manifest


def locate_data_dir(root: str | Path, folder: str | None = None) -> Path:
    """Find the archive's ``data/`` folder (or ``data/<folder>`` when ``folder`` is given) under ``root``.

    Accepts ``root`` being a fetched dataset folder or an extraction folder (``root/*/data/...``, as both
    archives extract), the repository folder (``root/data/...``) or the ``data/`` folder itself. Symlinked
    folders (``fetch_dataset`` links a ``local_path`` folder) are followed.

    Raises:
        DataError: nothing matches, or several folders match (the message lists them).
    """
    root = Path(root)
    tail = Path("data") / folder if folder else Path("data")
    candidates = sorted(p for p in root.glob(f"*/{tail.as_posix()}") if p.is_dir())
    if not candidates and (root / tail).is_dir():
        candidates = [root / tail]
    if not candidates and root.name == "data" and (root / (folder or "")).is_dir():
        candidates = [root / folder] if folder else [root]
    if not candidates:
        raise DataError(
            f"{root}: no {'*/' + tail.as_posix()} folder found; expected the ACRN_Chest_X-ray_IA archive "
            f"extracted there ({ACRN_TOP}/{tail.as_posix()}/...), e.g. by `regbench fetch`"
        )
    if len(candidates) > 1:
        raise DataError(f"{root}: several {tail.as_posix()} folders found, keep one: {[str(c) for c in candidates]}")
    return candidates[0]


def write_manifest(src_dir: str | Path, out_tsv: str | Path) -> int:
    """Write a manifest of every file under the archive's ``data/`` folder; return the number of rows.

    Args:
        src_dir: the extracted ``data/`` folder, or a folder holding it (see :func:`locate_data_dir`).
        out_tsv: the TSV to write (atomically): a header ``path<TAB>sha256`` then one row per regular file,
            sorted by path; ``path`` is relative to ``data/`` in POSIX form, e.g.
            ``JSRT/LR_64/images/JPCLN001.png``.

    The committed copy is ``config/manifests/acrn_chest_xray.tsv``; :func:`registry_manifest` turns it into
    the ``source.manifest`` mappings that ``config/datasets.yaml`` gives ``fetch_dataset`` to verify.
    """
    data_dir = locate_data_dir(src_dir)
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    if not files:
        raise DataError(f"{data_dir}: no files to list")
    rows = [(p.relative_to(data_dir).as_posix(), sha256_file(p)) for p in files]
    with atomic_path(out_tsv) as tmp:
        with open(tmp, "w", newline="\n") as f:
            f.write("path\tsha256\n")
            for rel, sha in rows:
                f.write(f"{rel}\t{sha}\n")
    log.info("manifest: %d files of %s -> %s", len(rows), data_dir, out_tsv)
    return len(rows)


def read_manifest(tsv: str | Path = MANIFEST_TSV) -> dict[str, str]:
    """Read a manifest written by :func:`write_manifest`: ``{path relative to data/: sha256}``.

    Raises:
        DataError: the file is missing or malformed (the message names it and the line).
    """
    return read_manifest_tsv(tsv)


def registry_manifest(dataset: str, tsv: str | Path = MANIFEST_TSV, top: str = ACRN_TOP) -> dict[str, str]:
    """The ``datasets.<dataset>.source.manifest`` mapping derived from the manifest TSV.

    Keys are relative to ``<raw_root>/<dataset>/`` as ``fetch_dataset`` stages the archive
    (``<top>/data/<Folder>/...``); only the dataset's own files are listed, since its ``members`` filter
    extracts only those.
    """
    folder = _spec(dataset)["folder"]
    return {f"{top}/data/{rel}": sha for rel, sha in read_manifest(tsv).items() if rel.startswith(f"{folder}/")}


# -------------------------------------------------------------------------------------------- split lists


def _spec(dataset: str) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise ConfigError(f"chest X-ray reader: unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[dataset]


def resolve_params(params: dict | None) -> dict:
    """Defaults overridden by ``params``; unknown keys are kept (and recorded). Bad values raise ConfigError."""
    p = dict(DEFAULT_PARAMS)
    p.update(params or {})
    _test_pair_protocol(p["test_pairs"])
    mc = p["max_cases"]
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 2):
        raise ConfigError(f"chest X-ray params: max_cases must be null or an integer >= 2, got {mc!r}")
    return p


def _test_pair_protocol(value: Any) -> int | None:
    """``None`` for ``all``, N for ``random<N>``."""
    if value == "all":
        return None
    m = re.fullmatch(r"random(\d+)", str(value))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(
            f"chest X-ray params: test_pairs must be 'all' or 'random<N>' with N >= 1 (e.g. 'random200'), "
            f"got {value!r}"
        )
    return int(m.group(1))


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(
            f"{path}: split list missing (expected split/{{train,test}}_{{images,labels}}_{{64,256}}.txt beside "
            f"LR_64/ and LR_256/; is the archive complete?)"
        )
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _resolve_entry(data_dir: Path, list_file: Path, lineno: int, entry: str, kind: str) -> tuple[Path, bool]:
    """Map a split-list entry (``./data/<Folder>/LR_64/labels/X.png``) to a file; return (path, fixed).

    ``fixed`` is True when the entry only resolves with ``_mask`` added before the suffix (the Shenzhen
    label lists name ``X.png`` for files called ``X_mask.png``).
    """
    marker = f"data/{data_dir.name}/"
    norm = entry.replace("\\", "/")
    pos = norm.find(marker)
    if pos < 0:
        raise DataError(f"{list_file}: line {lineno}: entry {entry!r} does not point into {marker}")
    rel = norm[pos + len(marker):]
    path = data_dir / rel
    if ".." in Path(rel).parts:
        raise DataError(f"{list_file}: line {lineno}: entry {entry!r} leaves {data_dir}")
    if path.is_file():
        return path, False
    alt = path.with_name(f"{path.stem}{MASK_SUFFIX}{path.suffix}")
    if kind == "labels" and alt.is_file():
        return alt, True
    tried = f"{path}" + (f" or {alt}" if kind == "labels" else "")
    raise DataError(f"{list_file}: line {lineno}: entry {entry!r} resolves to no file (tried {tried})")


def _read_split(data_dir: Path) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """Read and cross-check the eight split lists.

    Returns ``({split: [{"case", "image_64", "label_64", "image_256", "label_256"} (absolute paths)]},
    info)`` where ``info`` records the list files' sha256 and the entries fixed by adding ``_mask``.

    Raises:
        DataError: a list is missing, an entry resolves to no file, images and labels lists disagree, the 64
            and 256 lists name different cases, a case is listed twice or in both splits.
    """
    split_dir = data_dir / "split"
    out: dict[str, list[dict]] = {}
    info: dict[str, Any] = {"lists": {}, "mask_suffix_fixed": 0, "mask_suffix_fixed_examples": []}
    for split in SPLITS:
        per_res: dict[int, tuple[Path, list[tuple[str, Path, Path]]]] = {}
        for res in RESOLUTIONS:
            lists = {kind: split_dir / f"{split}_{kind}_{res}.txt" for kind in ("images", "labels")}
            entries = {kind: _read_list(f) for kind, f in lists.items()}
            for f in lists.values():
                info["lists"][f.name] = sha256_file(f)
            if len(entries["images"]) != len(entries["labels"]):
                raise DataError(
                    f"{lists['images']} lists {len(entries['images'])} images but {lists['labels']} lists "
                    f"{len(entries['labels'])} labels"
                )
            items = []
            for i, (ie, le) in enumerate(zip(entries["images"], entries["labels"]), start=1):
                ipath, _ = _resolve_entry(data_dir, lists["images"], i, ie, "images")
                lpath, fixed = _resolve_entry(data_dir, lists["labels"], i, le, "labels")
                lcase = lpath.stem[: -len(MASK_SUFFIX)] if lpath.stem.endswith(MASK_SUFFIX) else lpath.stem
                if lcase != ipath.stem:
                    raise DataError(
                        f"{lists['labels']}: line {i}: label {le!r} does not belong to image {ie!r} "
                        f"(line {i} of {lists['images']})"
                    )
                if fixed:
                    info["mask_suffix_fixed"] += 1
                    if len(info["mask_suffix_fixed_examples"]) < 3:
                        info["mask_suffix_fixed_examples"].append(
                            f"{lists['labels'].name}:{i}: {le} -> {lpath.relative_to(data_dir).as_posix()}"
                        )
                items.append((ipath.stem, ipath, lpath))
            dup = sorted(c for c, n in Counter(c for c, _, _ in items).items() if n > 1)
            if dup:
                raise DataError(f"{lists['images']}: cases listed more than once: {dup[:5]}")
            per_res[res] = (lists["images"], items)
        (ref_file, ref), (other_file, other) = (per_res[r] for r in RESOLUTIONS)
        ref_cases, other_cases = [c for c, _, _ in ref], [c for c, _, _ in other]
        if ref_cases != other_cases:
            diff = next((j for j, (a, b) in enumerate(zip(ref_cases, other_cases)) if a != b),
                        min(len(ref_cases), len(other_cases)))
            raise DataError(
                f"{other_file} and {ref_file} do not list the same cases in the same order "
                f"(first difference at line {diff + 1})"
            )
        out[split] = [
            {"case": case, **{f"{kind}_{res}": per_res[res][1][j][1 + k]
                              for res in RESOLUTIONS for k, kind in enumerate(("image", "label"))}}
            for j, case in enumerate(ref_cases)
        ]
    both = {r["case"] for r in out["train"]} & {r["case"] for r in out["test"]}
    if both:
        raise DataError(f"{split_dir}: cases in both the train and the test lists: {sorted(both)[:5]}")
    return out, info


# ---------------------------------------------------------------------------------------------- conversion


def _read_png(path: Path, size: int) -> np.ndarray:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the PNG ({type(e).__name__}: {e})") from e
    if mode != "L" or arr.dtype != np.uint8 or arr.ndim != 2:
        raise DataError(
            f"{path}: expected a single-channel 8-bit PNG, got mode {mode!r}, array {arr.shape} {arr.dtype}"
        )
    if arr.shape != (size, size):
        raise DataError(f"{path}: expected {size}x{size} px, got {arr.shape[0]}x{arr.shape[1]}")
    return arr


def _map_labels(path: Path, raw: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for src, dst in label_map.items():
        lut[src] = dst
    out = lut[raw]
    if (out == 255).any():
        bad = sorted(set(np.unique(raw).tolist()) - set(label_map))
        raise DataError(f"{path}: unexpected label value(s) {bad}; expected only {sorted(label_map)}")
    return out


def _check_pair_count(n_random: int | None, n_cases: int, split: str) -> None:
    if n_random is not None and n_random > n_cases * (n_cases - 1):
        raise ConfigError(
            f"chest X-ray params: test_pairs asks for {n_random} random pairs but the {split} split has only "
            f"{n_cases * (n_cases - 1)} ordered pairs of distinct cases"
        )


def _pairs(ids: list[str], split: str, n_random: int | None, rng: np.random.Generator | None) -> list[dict]:
    """Ordered pairs ``(fixed, moving)`` of distinct cases: all, or ``n_random`` distinct ones drawn with ``rng``."""
    ordered = [(f, m) for f in ids for m in ids if f != m]
    if n_random is not None:
        _check_pair_count(n_random, len(ids), split)
        idx = np.sort(rng.choice(len(ordered), size=n_random, replace=False))
        ordered = [ordered[i] for i in idx]
    return [{"pair_id": f"{f}__{m}", "fold": 0, "split": split, "fixed": f, "moving": m} for f, m in ordered]


def _write_tsv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def build_chestxray(raw_dir: Path, out_dir: Path, params: dict, seed: int, dataset: str) -> pd.DataFrame:
    """Prepare ``dataset`` (``jsrt``, ``montgomery`` or ``shenzhen``) from the fetched ACRN archive.

    Reads ``*/data/<Folder>/`` under ``raw_dir`` and its split lists, and writes into ``out_dir`` (each file
    atomically): per case ``images/<case>_{64,256}.nii.gz`` (float32 in [0, 1] = uint8 / 255) and
    ``labels/<case>_{64,256}_seg.nii.gz`` (uint8, 1 = lung, 0 = everything else; JSRT's heart, 3, becomes
    0), as 2D NIfTI with an identity affine (1 unit = 1 px; array axes (row, col) = the PNG's (H, W));
    then ``cases.tsv`` (``case, split, image_64, seg_64, image_256, seg_256``, paths relative to
    ``out_dir``), ``pairs.tsv`` (fold 0; train: all ordered pairs of distinct train cases; test: per
    ``params["test_pairs"]``) and ``dataset.json``.

    Args:
        raw_dir: the fetched dataset folder (``<raw_root>/<dataset>``).
        out_dir: the prepared dataset folder.
        params: ``test_pairs`` (``"all"`` or ``"random<N>"``), ``max_cases`` (test/debug knob: keep the
            first N cases of each split); see :data:`DEFAULT_PARAMS`.
        seed: seeds ``numpy.random.default_rng`` for ``random<N>`` test pairs (same seed, same pairs).
        dataset: the registry name.

    Returns:
        The cases table as written to ``cases.tsv``.

    Raises:
        ConfigError: unknown dataset or bad params.
        DataError: the data folder or a split list is missing, a list entry resolves to no file (the message
            names the list file, line and entry), lists disagree, an image has the wrong size or mode, or a
            label map holds an unexpected value (the message names the file).
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    spec = _spec(dataset)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = resolve_params(params)
    n_random = _test_pair_protocol(p["test_pairs"])
    data_dir = locate_data_dir(raw_dir, spec["folder"])
    split_rows, split_info = _read_split(data_dir)
    if split_info["mask_suffix_fixed"]:
        log.info(
            "%s: %d label list entries resolved only with '%s' added (e.g. %s)", dataset,
            split_info["mask_suffix_fixed"], MASK_SUFFIX, split_info["mask_suffix_fixed_examples"][0],
        )
    full_counts = {s: len(r) for s, r in split_rows.items()}
    if (full_counts["train"], full_counts["test"]) != spec["expected"]:
        log.warning("%s: split lists give %s train/test cases; He et al. 2022 use %s", dataset,
                    full_counts, spec["expected"])
    if p["max_cases"] is not None:
        split_rows = {s: r[: p["max_cases"]] for s, r in split_rows.items()}
        log.warning("%s: max_cases=%d keeps %s of %s cases (test/debug only)", dataset, p["max_cases"],
                    {s: len(r) for s, r in split_rows.items()}, full_counts)

    _check_pair_count(n_random, len(split_rows["test"]), "test")  # fail before writing anything

    affine = np.eye(4)
    rows = []
    raw_label_counts: dict[int, int] = {}
    todo = [(s, r) for s in SPLITS for r in split_rows[s]]
    for split, r in tqdm(todo, desc=f"{dataset}: cases", unit="case", leave=False):
        case = r["case"]
        row = {"case": case, "split": split}
        for res in RESOLUTIONS:
            img = _read_png(r[f"image_{res}"], res)
            raw = _read_png(r[f"label_{res}"], res)
            for v, n in zip(*np.unique(raw, return_counts=True)):
                raw_label_counts[int(v)] = raw_label_counts.get(int(v), 0) + int(n)
            seg = _map_labels(r[f"label_{res}"], raw, spec["label_map"])
            row[f"image_{res}"] = f"images/{case}_{res}.nii.gz"
            row[f"seg_{res}"] = f"labels/{case}_{res}_seg.nii.gz"
            save_image(out_dir / row[f"image_{res}"], img.astype(np.float32) / np.float32(255.0), affine,
                       dtype=np.float32)
            save_image(out_dir / row[f"seg_{res}"], seg, affine, dtype=np.uint8)
        rows.append(row)
    df = pd.DataFrame(rows, columns=CASE_COLUMNS)
    _write_tsv(out_dir / "cases.tsv", df)

    rng = np.random.default_rng(int(seed))
    pair_rows = []
    for split in SPLITS:
        ids = df.loc[df["split"] == split, "case"].tolist()
        pair_rows += _pairs(ids, split, n_random if split == "test" else None, rng)
    pairs = pd.DataFrame(pair_rows, columns=PAIR_COLUMNS)
    _write_tsv(out_dir / "pairs.tsv", pairs)

    n_train, n_test = int((df["split"] == "train").sum()), int((df["split"] == "test").sum())
    fetched = read_fetch_record(raw_dir) or {}
    meta = {
        "name": dataset,
        "description": (
            f"{spec['folder']} chest radiographs as preprocessed by AC-RegNet (ACRN_Chest_X-ray_IA), "
            f"lungs as one label, at 64x64 and 256x256 px"
        ),
        "source": {
            "repository": ACRN_REPOSITORY,
            "commit": ACRN_COMMIT,
            "data_dir": str(data_dir),
            "fetch_record": {k: fetched.get(k) for k in ("origin", "hash_status", "local_path", "fetched_at")}
            if fetched else None,
            "split_lists_sha256": split_info["lists"],
            "references": REFERENCES[dataset] + [ACRN_REFERENCE],
        },
        "protocol": {
            "reference": PROTOCOL_REFERENCE,
            "split": "the repository's split lists (train/test), one fold (0)",
            "train_resolution_px": 64,
            "test_resolution_px": 256,
            "train_pairs": "all ordered pairs of distinct train cases",
            "test_pairs": p["test_pairs"] if n_random is None else
            f"{p['test_pairs']}: {n_random} distinct ordered pairs of distinct test cases drawn with "
            f"numpy.random.default_rng({int(seed)}) (AC-RegNet protocol)",
        },
        "labels": {str(k): v for k, v in LABELS.items()},
        "label_mapping": {
            "raw_labels": {str(k): v for k, v in spec["raw_labels"].items()},
            "raw_to_output": {str(k): v for k, v in spec["label_map"].items()},
            "raw_value_pixel_counts": {str(k): v for k, v in sorted(raw_label_counts.items())},
        },
        "fixes": {
            "label_entries_resolved_with_mask_suffix": split_info["mask_suffix_fixed"],
            "examples": split_info["mask_suffix_fixed_examples"],
            "note": (
                "split-list label entries X.png that exist only as X_mask.png were mapped to X_mask.png "
                "(Shenzhen at this commit); no case was dropped"
            ) if split_info["mask_suffix_fixed"] else "none needed",
        },
        "units": "px (no physical pixel spacing is known after AC-RegNet's resampling; NIfTI affine = identity)",
        "spacing_px": [1.0, 1.0],
        "affine": affine.tolist(),
        "columns": {
            "image_64": "float32 in [0, 1] (uint8 / 255), 64x64, for training",
            "seg_64": "uint8 label map {0, 1}, 64x64",
            "image_256": "float32 in [0, 1] (uint8 / 255), 256x256, for testing",
            "seg_256": "uint8 label map {0, 1}, 256x256",
        },
        "n_cases": n_train + n_test,
        "n_train": n_train,
        "n_test": n_test,
        "n_cases_in_split_lists": full_counts,
        "n_pairs": {s: int((pairs["split"] == s).sum()) for s in SPLITS},
        "params": p,
        "seed": int(seed),
        "software": {"python": platform.python_version(), "numpy": np.__version__,
                     "pillow": __import__("PIL").__version__, "nibabel": __import__("nibabel").__version__},
        "build_seconds": round(time.perf_counter() - t_start, 2),
    }
    atomic_write_text(out_dir / "dataset.json", json.dumps(meta, indent=2) + "\n")
    log.info(
        "%s: %d cases (%d train, %d test), %d train / %d test pairs, in %.1f s -> %s", dataset, n_train + n_test,
        n_train, n_test, meta["n_pairs"]["train"], meta["n_pairs"]["test"], time.perf_counter() - t_start, out_dir,
    )
    return df


# ----------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``manifest SRC OUT_TSV``: write the manifest TSV of an extracted archive's ``data/`` folder."""
    ap = argparse.ArgumentParser(prog="python -m regbench.datasets.chestxray", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifest", help="write the manifest TSV of an extracted archive's data/ folder")
    m.add_argument("src")
    m.add_argument("out_tsv")
    a = ap.parse_args(argv)
    print(write_manifest(a.src, a.out_tsv))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

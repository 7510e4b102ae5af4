"""Evaluate the registrations of one (dataset, method, fold): one metrics row per test pair x label.

Reads the prepared dataset and the folder written by :mod:`regbench.register`; writes a TSV with the
columns documented in :mod:`regbench.metrics` and ``docs/metrics.md``; the per-label DSC, HD95, HD and ASSD of
a pair come from one :func:`regbench.metrics.surface_metrics_per_label` call (inside
:func:`regbench.metrics.evaluate_pair`), which crops each label to its bounding box. Where the dataset carries a
ground-truth template-to-case field per case (column ``ddf`` in ``cases.tsv``, the synthetic demo), the pair's
true DDF is derived with :func:`regbench.datasets.demo.true_pair_ddf` and TRE is measured over the fixed
image's foreground (label > 0) voxels. Where it carries landmarks per case (column ``landmarks``, a TSV of voxel
coordinates on the prepared grid, SLIVER07 in RCN's files; :func:`regbench.datasets.liver.write_landmarks`), each
pair gets ``tre_landmark_<unit>`` / ``tre_landmark_std_<unit>``: mean / std over the landmarks of
:func:`regbench.metrics.landmark_tre` (fixed landmarks mapped through the DDF onto the moving grid, compared with
the moving landmarks, scaled by the moving image's voxel size); ``NaN`` for a pair where either case has none.
The pair-level columns of the registration table in :data:`PASSED_THROUGH` are carried over per pair:
``ssim_clean`` (methods with attention, He et al. 2022 Fig. 8) and ``uv_residual_vox`` (networks with a
backward field, Ding et al. 2021). ``folding_count_native`` is the ``det J <= 0``
count on the grid the method predicted its field on: the registration table's value for a network run at a
smaller ``inference_size`` (e.g. 64 px for a 256 px test, He et al. 2022), else ``folding_count`` itself.

Cross-size pairs (the registration table has a ``target_affine`` for the pair, :mod:`regbench.placement`): the
field points into the frame where the moving image was placed on the fixed grid (the network's own placement, or
the world one of a classical method), whose voxel-to-world matrix is ``target_affine``. DSC, HD95, ASSD compare the
fixed label map with the warped moving one, both on the fixed grid, as always. TRE needs the ground truth in that
frame: the true fixed-to-moving displacement ``g`` (voxels of the grid of the moving case's ``ddf`` file, the
uncropped demo grid) becomes ``T^-1 A_g (x + g(x)) - x`` (:func:`regbench.placement.field_to_frame`; for a crop at
offset ``o`` placed at ``p`` this is ``g + p - o``, so a placement equal to the crop is judged exactly as on the
uncropped pair). Moving landmarks are, as for every pair, voxel coordinates of the moving case's own image (the
cropped grid for a cropped moving image, e.g. the carotid reader's TOF landmarks), so in the frame they are
``q + p`` with ``p`` the pair's placement (``moving_offset_vox``), and the voxel size is the frame's. The dense
ground truth is mapped from the files' affines (world coordinates), not from assumed crop offsets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import metrics
from .data import PreparedDataset
from .placement import field_to_frame, parse_affine
from .errors import DataError
from .io import load_ddf, load_image
from .utils import atomic_path, get_logger

log = get_logger(__name__)

#: Pair-level columns of the registration table (:mod:`regbench.register`) copied into every metrics row of
#: the pair when present.
PASSED_THROUGH = ("ssim_clean", "uv_residual_vox")


def _native_folding(reg_row: pd.Series, folding_count: float) -> float:
    """``det J <= 0`` count on the grid the method predicted its field on: the registration table's
    ``folding_count_native`` (a network run at a smaller ``inference_size``) when present, else the count on
    the evaluation grid (the field was predicted there)."""
    v = reg_row.get("folding_count_native")
    return float(v) if v is not None and pd.notna(v) else float(folding_count)


def _affine(path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).affine, dtype=np.float64)


def _target(reg_row: pd.Series, table) -> tuple[np.ndarray, np.ndarray] | None:
    """``(target_affine, placement offset)`` of a cross-size pair (:mod:`regbench.placement`), or ``None``."""
    cell = reg_row.get("target_affine")
    if not isinstance(cell, str) or not cell:
        return None
    off = reg_row.get("moving_offset_vox")
    try:
        target = parse_affine(cell)
        offset = np.array([float(v) for v in str(off).split()], dtype=np.float64)
        if not isinstance(off, str) or offset.size not in (2, 3):
            raise ValueError(f"moving_offset_vox {off!r} is not 2 or 3 numbers")
    except ValueError as exc:
        raise DataError(f"{table}: pair {reg_row['pair_id']}: target_affine {cell!r} / moving_offset_vox {off!r}: "
                        f"not a 4x4 matrix and a voxel offset ({exc})") from exc
    return target, offset


def _landmark_tre(ds: PreparedDataset, pair: pd.Series, ddf: np.ndarray, modality: str, unit: str,
                  target: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """``{tre_landmark_<unit>, tre_landmark_std_<unit>}`` of one pair (``NaN`` without landmarks on both sides).

    The DDF lives on the fixed grid and pulls back (``warped(x) = moving(x + u(x))``), so a fixed landmark ``p``
    corresponds to ``p + u(p)`` in the moving grid; :func:`regbench.metrics.landmark_tre` measures its distance
    to the moving landmark in the moving image's voxel size (``unit: px``: voxels).

    ``target`` (a cross-size pair's ``(target_affine, placement offset p)``): the field points into the frame of the
    moving image placed at ``p`` on the fixed grid; the moving landmarks (voxel coordinates of the moving image
    itself) are ``q + p`` there, and the voxel size is the frame's (``target_affine``'s column norms)."""
    from .datasets.liver import read_landmarks

    nan = float("nan")
    out = {f"tre_landmark_{unit}": nan, f"tre_landmark_std_{unit}": nan}
    cells = [ds.cases.at[pair[k], "landmarks"] for k in ("fixed", "moving")]
    if not all(isinstance(c, str) and c for c in cells):
        return out
    fp = read_landmarks(ds.path(pair["fixed"], "landmarks"))
    mp = read_landmarks(ds.path(pair["moving"], "landmarks"))
    if fp.shape != mp.shape:
        raise DataError(f"{ds.root / 'cases.tsv'}: pair {pair['pair_id']}: {len(fp)} fixed vs {len(mp)} moving "
                        f"landmarks; they must correspond one to one")
    spacing = None
    if target is not None:
        frame, offset = target
        if offset.size != mp.shape[1]:
            raise DataError(f"pair {pair['pair_id']}: moving_offset_vox has {offset.size} entries, the landmarks "
                            f"{mp.shape[1]} coordinates")
        mp = mp + offset
        if unit == "mm":
            spacing = tuple(float(np.linalg.norm(frame[:3, i])) for i in range(mp.shape[1]))
    elif unit == "mm":
        import nibabel as nib

        column = modality if isinstance(modality, str) else modality["moving"]
        # the moving case's image in that column; a case that fills only its own role's column (the carotid reader's
        # moving cases have no fixed-modality image) is on the fixed grid here (same-size pairs share one grid)
        case = pair["moving"] if isinstance(ds.cases.at[pair["moving"], column], str) else pair["fixed"]
        spacing = tuple(float(z) for z in nib.load(str(ds.path(case, column))).header.get_zooms()[:3])
    err = metrics.landmark_tre(ddf, fp, mp, spacing=spacing)
    out[f"tre_landmark_{unit}"] = float(err.mean())
    out[f"tre_landmark_std_{unit}"] = float(err.std())
    return out


def evaluate_method(
    prep_dir: str | Path,
    reg_dir: str | Path,
    out_tsv: str | Path,
    dataset: str,
    method_id: str,
    method_name: str,
    fold: int,
    labels: dict[int, str],
    modality: str,
    unit: str = "mm",
    seg: str = "seg",
) -> Path:
    """Compute metrics for every pair in ``reg_dir/pairs.tsv`` and write ``out_tsv`` atomically.

    Args:
        labels: foreground label value -> name; DSC/HD95/HD/ASSD are computed per label.
        unit: ``mm`` (use the images' spacing) or ``px`` (spacing 1, for resized images without spacing).
        seg: ``cases.tsv`` column of the label maps on the registration grid.

    Raises:
        DataError: the registration table or a file it names is missing or unreadable.
    """
    from .datasets.demo import true_pair_ddf

    reg_dir = Path(reg_dir)
    table = reg_dir / "pairs.tsv"
    if not table.exists():
        raise DataError(f"{table}: not found (run the register stage first)")
    reg = pd.read_csv(table, sep="\t", dtype={"pair_id": str, "fixed": str, "moving": str})
    ds = PreparedDataset.open(prep_dir)
    has_truth = ds.has("ddf")
    has_landmarks = "landmarks" in ds.cases.columns
    label_values = sorted(int(k) for k in labels)
    rows = []
    for _, r in tqdm(reg.iterrows(), total=len(reg), desc=f"evaluate {method_name} fold{fold}", unit="pair",
                     mininterval=2.0):
        fixed = ds.load(r["fixed"], modality)
        fseg = ds.load(r["fixed"], seg).array
        warped = load_image(reg_dir / r["warped"]).array
        wseg = np.rint(load_image(reg_dir / r["warped_seg"]).array).astype(np.int16)
        ddf = load_ddf(reg_dir / r["ddf"])
        spacing = fixed.spacing if unit == "mm" else tuple(1.0 for _ in fixed.spacing)
        true_ddf = None
        target = _target(r, table)
        if has_truth:
            u_f = load_ddf(ds.path(r["fixed"], "ddf"))
            u_m = load_ddf(ds.path(r["moving"], "ddf"))
            true_ddf = true_pair_ddf(u_f, u_m)
            if target is not None:  # cross-size: the ground truth in the frame the field points into
                true_ddf = field_to_frame(true_ddf, _affine(ds.path(r["moving"], "ddf")), target[0])
        per_label = metrics.evaluate_pair(
            fixed.array, warped, fseg, wseg, ddf, spacing, label_values,
            true_ddf=true_ddf, tre_mask=fseg > 0, unit=unit,
        )
        lm = _landmark_tre(ds, r, ddf, modality, unit, target) if has_landmarks else {}
        for row in per_label:
            row.update(lm)
            # report columns: tre_<unit> (mean over the mask) and tre_std_<unit>
            row[f"tre_{unit}"] = row.pop(f"tre_mean_{unit}")
            rows.append({
                "dataset": dataset, "method": method_id, "method_name": method_name, "fold": fold,
                "pair_id": r["pair_id"], "fixed": r["fixed"], "moving": r["moving"],
                "label_name": labels.get(int(row["label"]), labels.get(str(int(row["label"])), "")),
                **row, "runtime_s": float(r["runtime_s"]), "device": r["device"],
                **{c: float(r[c]) for c in PASSED_THROUGH if c in reg.columns},
                "folding_count_native": _native_folding(r, row["folding_count"]),
            })
    df = pd.DataFrame(rows)
    first = ["dataset", "method", "method_name", "fold", "pair_id", "fixed", "moving", "label", "label_name"]
    df = df[first + [c for c in df.columns if c not in first]]
    out_tsv = Path(out_tsv)
    with atomic_path(out_tsv) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    log.info("%s fold %d: mean DSC %.3f over %d pairs", method_name, fold,
             df.groupby("pair_id")["dsc"].mean().mean(), df["pair_id"].nunique())
    return out_tsv

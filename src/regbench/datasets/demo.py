"""Embedded demo dataset: synthetic subjects made from the real MNI152 2009a symmetric template.

What is real and what is synthesised (see ``docs/demo_dataset.md``):

* **Real**: the anatomy of the ICBM 2009a nonlinear symmetric template (Fonov et al. 2009, 2011) as shipped by
  nilearn (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``): its
  skull-stripped T1 and its grey/white-matter probability maps.
* **Synthesised**: everything else. CSF is "inside the brain mask (T1 > 0) but neither GM nor WM"; the T2-like
  image is a piecewise-linear tissue-intensity remap of the T1; each subject is the template warped by a random
  smooth deformation (elastic field composed with a small affine) and then given random gamma, bias field and
  noise.

Ground truth (regbench convention, :mod:`regbench.spatial`): the stored field ``u_case`` of shape
``(3, *spatial)`` in voxels satisfies ``subject(x) = template(x + u_case(x))`` (before intensity augmentation),
i.e. ``spatial.warp(template, u_case)`` is the subject. For a pair (fixed f, moving m), :func:`true_pair_ddf`
gives ``g`` on the fixed grid with ``fixed(x) = moving(x + g(x))``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage as ndi

from ..errors import ConfigError, DataError
from ..io import load_image, save_ddf, save_image
from ..spatial import affine_to_ddf, jacobian_determinant, warp, warp_labels
from ..utils import atomic_path, atomic_write_text, get_logger, sha256_file

log = get_logger(__name__)

SOURCE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}

DEFAULT_PARAMS: dict[str, Any] = {
    "spacing_mm": 3.0,
    "shape_multiple": 16,
    "margin_mm": 6.0,
    "n_subjects": 10,
    "n_test": 4,
    "elastic_sigma_mm": 12.0,
    "max_displacement_mm": 7.0,
    "rotation_deg": 2.0,
    "scale": 0.02,
    "translation_mm": 1.5,
    "gamma": [0.85, 1.15],
    "bias": 0.1,
    "bias_grid": 4,
    "noise_std": 0.01,
    "t1_clip_percentile": 99.5,
    "t2_targets": {"csf": 1.0, "gm": 0.55, "wm": 0.3},
}

PROVENANCE = (
    "REAL: brain anatomy of the ICBM 2009a nonlinear symmetric MNI152 template (Fonov et al., NeuroImage 2011; "
    "Fonov et al., NeuroImage 2009 (OHBM abstract)), i.e. its skull-stripped T1-weighted average and its grey- "
    "and white-matter probability maps, copied from the nilearn package; resampled here with Gaussian "
    "anti-aliasing and linear interpolation. SYNTHESISED: (1) the CSF class = inside the template brain mask "
    "(T1 > 0) but neither GM nor WM; (2) the 'T2-like' image, a piecewise-linear remap of T1 intensities "
    "(CSF bright, GM medium, WM dark), not an acquired T2; (3) all subjects, which are the template warped by "
    "random smooth deformations (Gaussian-smoothed i.i.d. noise field composed with a small random affine), so "
    "their anatomical variability is artificial and far smaller than between real people; (4) per-subject "
    "intensity changes (gamma, multiplicative bias field, Gaussian noise). The ground-truth displacement of "
    "each subject is exact by construction."
)

ICBM_NOTICE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, "
    "McGill University. Permission to use, copy, modify, and distribute this software and its documentation "
    "for any purpose and without fee is hereby granted, provided that the above copyright notice appear in all "
    "copies. The authors and McGill University make no representations about the suitability of this software "
    "for any purpose. It is provided 'as is' without express or implied warranty. The authors are not "
    "responsible for any data loss, equipment damage, property loss, or injury to subjects or patients "
    "resulting from the use or misuse of this software package."
)


# --------------------------------------------------------------------------------------------------------------
# parameters


def resolve_params(params: dict | None) -> dict:
    """Defaults overridden by ``params``; unknown keys are kept (and recorded), bad values raise ConfigError."""
    p = json.loads(json.dumps(DEFAULT_PARAMS))
    for k, v in (params or {}).items():
        if k == "t2_targets" and isinstance(v, dict):
            p[k].update(v)
        else:
            p[k] = v
    n, nt = int(p["n_subjects"]), int(p["n_test"])
    if nt < 2 or n - nt < 2:
        raise ConfigError(
            f"demo params: n_subjects={n}, n_test={nt}: need at least 2 train and 2 test cases to form pairs"
        )
    if float(p["spacing_mm"]) <= 0:
        raise ConfigError(f"demo params: spacing_mm must be > 0, got {p['spacing_mm']}")
    if int(p["shape_multiple"]) < 1:
        raise ConfigError(f"demo params: shape_multiple must be >= 1, got {p['shape_multiple']}")
    g = p["gamma"]
    if not (isinstance(g, (list, tuple)) and len(g) == 2 and 0 < float(g[0]) <= float(g[1])):
        raise ConfigError(f"demo params: gamma must be [low, high] with 0 < low <= high, got {g!r}")
    _check_crop_params(p)
    if "n_folds" in p and int(p["n_folds"]) != 1:
        log.warning("demo dataset has a single fold (0); ignoring n_folds=%s", p["n_folds"])
    return p


def _check_crop_params(p: dict) -> None:
    """``moving_crop`` (``[s0, s1, s2]`` voxels, or absent / ``None``) and ``moving_crop_offset`` (``[o0, o1, o2]``
    voxels >= 0, or absent / ``None`` = centred): their forms; the grid check is :func:`crop_box`'s."""
    crop, off = p.get("moving_crop"), p.get("moving_crop_offset")
    if crop is None:
        if off is not None:
            raise ConfigError("demo params: moving_crop_offset is given without moving_crop")
        return
    if not (isinstance(crop, (list, tuple)) and len(crop) == 3 and all(isinstance(v, int) and v > 0 for v in crop)):
        raise ConfigError(f"demo params: moving_crop must be three positive voxel counts [s0, s1, s2], got {crop!r}")
    if off is not None and not (isinstance(off, (list, tuple)) and len(off) == 3
                                and all(isinstance(v, int) and v >= 0 for v in off)):
        raise ConfigError(f"demo params: moving_crop_offset must be three voxel offsets >= 0, got {off!r}")


def crop_box(p: dict, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(offset, size)`` in voxels of the ``moving_crop`` box on the demo grid ``shape`` (``None`` without a crop).

    The offset is ``moving_crop_offset`` or, by default, centred: ``floor((S - s) / 2)`` per axis (the symmetric
    padding of the Siamese networks puts the moving image back at the same place when ``S - s`` is even).

    Raises:
        ConfigError: the box is larger than the grid or reaches outside it (the message names the grid).
    """
    crop = p.get("moving_crop")
    if crop is None:
        return None
    size = tuple(int(v) for v in crop)
    off = p.get("moving_crop_offset")
    offset = tuple(int(v) for v in off) if off is not None else tuple((g - c) // 2 for g, c in zip(shape, size))
    if any(c > g for c, g in zip(size, shape)) or any(o + c > g for o, c, g in zip(offset, size, shape)):
        raise ConfigError(f"demo params: moving_crop {list(size)} at offset {list(offset)} does not fit in the demo "
                          f"grid {list(shape)} (at spacing_mm {p['spacing_mm']})")
    return offset, size


# --------------------------------------------------------------------------------------------------------------
# template preparation


def _grid(mask: np.ndarray, affine_in: np.ndarray, p: dict) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Output grid around the brain bounding box: (shape, 3x3 input-voxel step matrix, input-voxel offset).

    Output voxel ``j`` sits at input voxel ``M @ j + offset``; the grid keeps the input orientation.
    """
    s = float(p["spacing_mm"])
    mult = int(p["shape_multiple"])
    sp_in = np.linalg.norm(affine_in[:3, :3], axis=0)
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    extent_mm = (hi - lo + 1) * sp_in
    centre_in = (lo + hi) / 2.0
    shape = []
    for e in extent_mm:
        need = int(np.ceil(e / s))  # the brain itself
        n0 = int(np.ceil((e + 2 * float(p["margin_mm"])) / s))  # brain + margin
        n = max(mult, mult * int(round(n0 / mult)))
        while n < need:  # never crop brain
            n += mult
        shape.append(n)
    step = s / sp_in
    m = np.diag(step)
    offset = centre_in - step * (np.asarray(shape) - 1) / 2.0
    return tuple(shape), m, offset


def _resample(vol: np.ndarray, m: np.ndarray, offset: np.ndarray, shape, sigma_in: np.ndarray) -> np.ndarray:
    """Gaussian anti-aliasing (``sigma_in`` in input voxels) then linear resampling onto the output grid."""
    sm = ndi.gaussian_filter(vol.astype(np.float32), sigma=sigma_in, mode="constant", cval=0.0, truncate=3.0)
    return ndi.affine_transform(sm, m, offset=offset, output_shape=shape, order=1, mode="constant", cval=0.0)


def _prepare_template(raw_dir: Path, p: dict) -> dict:
    paths = {k: Path(raw_dir) / f for k, f in SOURCE_FILES.items()}
    for k, path in paths.items():
        if not path.exists():
            raise DataError(
                f"{path}: demo source file missing; the fetch step copies it from nilearn/datasets/data/ "
                f"({SOURCE_FILES[k]})"
            )
    imgs = {k: load_image(path) for k, path in paths.items()}
    t1 = imgs["t1"].array
    aff = imgs["t1"].affine
    for k in ("gm", "wm"):
        if imgs[k].array.shape != t1.shape or not np.allclose(imgs[k].affine, aff, atol=1e-4):
            raise DataError(f"{paths[k]}: grid {imgs[k].array.shape} differs from {paths['t1']} {t1.shape}")
    if t1.ndim != 3:
        raise DataError(f"{paths['t1']}: expected a 3D image, got shape {t1.shape}")
    # The nilearn T1 is already skull-stripped: background is exactly 0 (78% of voxels) and the nonzero
    # voxels form one connected component without holes, so T1 > 0 is the brain mask.
    mask = t1 > 0
    if mask.mean() < 0.05 or mask.mean() > 0.6:
        raise DataError(f"{paths['t1']}: T1 > 0 covers {mask.mean():.1%} of voxels; expected a skull-stripped T1")

    def prob(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32)
        return a / 255.0 if a.max() > 1.5 else a  # nilearn ships uint8 maps scaled to 0..255

    gm, wm = prob(imgs["gm"].array), prob(imgs["wm"].array)
    tissue = np.clip(gm + wm, 0.0, 1.0)
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    mf = mask.astype(np.float32)
    probs_1mm = [mf * (1.0 - tissue), mf * gm * scale, mf * wm * scale]  # csf, gm, wm; bg = 1 - their sum

    shape, m, offset = _grid(mask, aff, p)
    sp_in = np.linalg.norm(aff[:3, :3], axis=0)
    s = float(p["spacing_mm"])
    sigma_in = np.sqrt(np.maximum(s**2 - sp_in**2, 0.0)) / (2.0 * np.sqrt(2.0 * np.log(2.0))) / sp_in
    out_aff = aff @ np.block([[m, offset[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])

    t1r = _resample(t1, m, offset, shape, sigma_in)
    # Outside the source field of view everything is background (resampling pads tissue maps with 0).
    tis = np.clip(np.stack([_resample(q, m, offset, shape, sigma_in) for q in probs_1mm]), 0.0, 1.0)
    tis /= np.maximum(tis.sum(0, keepdims=True), 1.0)
    probs = np.concatenate([1.0 - tis.sum(0, keepdims=True), tis])
    seg = np.argmax(probs, axis=0).astype(np.uint8)
    brain_frac = 1.0 - probs[0]  # partial-volume fraction of brain in each output voxel

    # T1 -> [0, 1], clipped at the 99.5th percentile inside the head (brain mask on the output grid).
    head = seg > 0
    hi = float(np.percentile(t1r[head], float(p["t1_clip_percentile"])))
    t1n = np.clip(t1r / hi, 0.0, 1.0).astype(np.float32)
    t1n[brain_frac < 1e-3] = 0.0

    # Synthetic T2-like contrast: piecewise-linear remap through per-tissue mean T1 intensities, applied to
    # the partial-volume-corrected T1 and scaled back by the brain fraction (so background stays 0).
    pure = t1n / np.maximum(brain_frac, 1e-3)
    pure_vox = brain_frac > 0.99
    means = {name: float(t1n[(seg == lab) & pure_vox].mean()) for lab, name in ((1, "csf"), (2, "gm"), (3, "wm"))}
    if not means["csf"] < means["gm"] < means["wm"]:
        raise DataError(f"{paths['t1']}: tissue mean T1 intensities not ordered CSF < GM < WM: {means}")
    tg = p["t2_targets"]
    xp = [means["csf"], means["gm"], means["wm"]]
    fp = [float(tg["csf"]), float(tg["gm"]), float(tg["wm"])]
    t2n = np.clip(np.interp(pure, xp, fp) * brain_frac, 0.0, 1.0).astype(np.float32)
    t2n[brain_frac < 1e-3] = 0.0

    log.info(
        "demo template: %s voxels at %.3g mm (from %s at %s mm); tissue means T1 %s",
        "x".join(map(str, shape)), s, "x".join(map(str, t1.shape)), "x".join(f"{v:g}" for v in sp_in),
        {k: round(v, 3) for k, v in means.items()},
    )
    return {
        "t1": t1n, "t2": t2n, "seg": seg, "brain_frac": brain_frac.astype(np.float32), "affine": out_aff,
        "shape": shape, "t1_means": means, "sources": paths, "source_shape": tuple(t1.shape),
        "t1_clip_value_raw": hi,
    }


# --------------------------------------------------------------------------------------------------------------
# random deformations and intensity changes


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    a, b, c = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_deformation(rng: np.random.Generator, shape, spacing_mm: float, p: dict) -> tuple[np.ndarray, dict]:
    """Random smooth DDF ``(3, *shape)`` in voxels: elastic field ``u_e`` then affine ``x -> A (x - c) + c + t``.

    The combined map is ``x -> x + u(x)`` with ``u(x) = u_a(x) + A u_e(x)`` (= ``u_e(x) + u_a(x + u_e(x))``, exact
    since ``u_a`` is affine), where ``u_a`` is the affine's displacement about the grid centre.
    """
    shape = tuple(int(s) for s in shape)
    sigma_vox = float(p["elastic_sigma_mm"]) / spacing_mm
    noise = rng.standard_normal((3, *shape))
    ue = np.stack([ndi.gaussian_filter(noise[i], sigma_vox, mode="reflect") for i in range(3)])
    mag = np.sqrt((ue**2).sum(0)).max()
    ue *= (float(p["max_displacement_mm"]) / spacing_mm) / max(mag, 1e-12)

    ang = np.deg2rad(rng.uniform(-1.0, 1.0, 3) * float(p["rotation_deg"]))
    sc = 1.0 + rng.uniform(-1.0, 1.0, 3) * float(p["scale"])
    tr = rng.uniform(-1.0, 1.0, 3) * float(p["translation_mm"]) / spacing_mm
    a = _rotation(ang) @ np.diag(sc)
    mat = torch.from_numpy(np.concatenate([a, tr[:, None]], axis=1)[None])
    ua = affine_to_ddf(mat, shape)[0].numpy()
    u = ua + np.einsum("ij,j...->i...", a, ue)
    info = {
        "rotation_deg": np.rad2deg(ang).round(4).tolist(),
        "scale": sc.round(5).tolist(),
        "translation_mm": (tr * spacing_mm).round(4).tolist(),
    }
    return u.astype(np.float32), info


def _bias_field(rng: np.random.Generator, shape, amplitude: float, grid: int) -> np.ndarray:
    coarse = rng.standard_normal((grid,) * len(shape))
    f = ndi.zoom(coarse, [s / grid for s in shape], order=3, mode="nearest", grid_mode=True)
    f = f[tuple(slice(0, s) for s in shape)]
    f /= max(np.abs(f).max(), 1e-12)
    return (1.0 + amplitude * f).astype(np.float32)


def _augment(rng: np.random.Generator, img: np.ndarray, p: dict) -> tuple[np.ndarray, dict]:
    """Gamma, multiplicative bias field and Gaussian noise inside the head; background stays 0; clip [0, 1]."""
    g = float(rng.uniform(float(p["gamma"][0]), float(p["gamma"][1])))
    bias = _bias_field(rng, img.shape, float(p["bias"]), int(p["bias_grid"]))
    noise = rng.standard_normal(img.shape).astype(np.float32) * float(p["noise_std"])
    fg = img > 0
    out = np.clip(img, 0.0, 1.0) ** g * bias + noise
    out = np.where(fg, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)
    return out, {"gamma": round(g, 5)}


# --------------------------------------------------------------------------------------------------------------
# ground truth between subjects


def true_pair_ddf(
    u_fixed: np.ndarray,
    u_moving: np.ndarray,
    n_iter: int = 30,
    return_residual: bool = False,
    tol: float = 1e-6,
) -> np.ndarray | tuple[np.ndarray, float]:
    """Ground-truth displacement ``g`` ``(ndim, *spatial)`` (voxels, fixed grid) from fixed to moving.

    With ``fixed(x) = template(x + u_f(x))`` and ``moving(y) = template(y + u_m(y))``, the moving voxel
    corresponding to fixed voxel ``x`` is ``x + g(x)`` where ``x + g + u_m(x + g) = x + u_f(x)``. Solved by
    the fixed-point iteration ``g <- u_f(x) - u_m(x + g)`` (``u_m`` linearly interpolated, border clamp),
    which converges while ``u_m`` is a contraction (``|grad u_m| < 1``, true for the smooth demo fields).
    Then ``spatial.warp(moving, g) ~ fixed``.

    Args:
        u_fixed, u_moving: ``(ndim, *spatial)`` template-to-subject fields on one grid, in voxels.
        n_iter: maximum number of fixed-point iterations.
        return_residual: also return the maximum residual ``|g + u_m(x + g) - u_f(x)|`` (voxels).
        tol: stop early once an update changes ``g`` by less than ``tol`` voxels anywhere (the update size
            equals the residual of the previous iterate).

    Returns:
        ``g`` as float32, or ``(g, max_residual)`` when ``return_residual``.
    """
    uf = torch.as_tensor(np.asarray(u_fixed), dtype=torch.float64).unsqueeze(0)
    um = torch.as_tensor(np.asarray(u_moving), dtype=torch.float64).unsqueeze(0)
    if uf.shape != um.shape:
        raise ValueError(f"u_fixed {tuple(uf.shape[1:])} and u_moving {tuple(um.shape[1:])} differ in shape")
    g = uf.clone()
    it = 0
    for it in range(1, int(n_iter) + 1):
        g_new = uf - warp(um, g, mode="bilinear", padding_mode="border")
        step = float((g_new - g).abs().max())
        g = g_new
        if step < tol:
            break
    res = g + warp(um, g, mode="bilinear", padding_mode="border") - uf
    max_res = float(res.pow(2).sum(1).sqrt().max())
    if max_res > 1e-2:
        log.warning("true_pair_ddf: not converged, max residual %.3g voxels after %d iterations", max_res, it)
    else:
        log.debug("true_pair_ddf: max residual %.3g voxels after %d iterations", max_res, it)
    out = g[0].numpy().astype(np.float32)
    return (out, max_res) if return_residual else out


# --------------------------------------------------------------------------------------------------------------
# main entry point


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _write_tsv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def build_demo(raw_dir: Path, out_dir: Path, params: dict, seed: int) -> pd.DataFrame:
    """Build the demo dataset from the MNI152 2009a files in ``raw_dir`` into ``out_dir``; return the cases.

    Writes (each file atomically) ``template/{t1,t2,seg}.nii.gz``, ``images/<case>_{t1,t2}.nii.gz``,
    ``labels/<case>_seg.nii.gz`` (uint8: 0 background, 1 CSF, 2 GM, 3 WM), ``fields/<case>_ddf.nii.gz``
    (``u_case`` in voxels, ``subject(x) = template(x + u_case(x))`` before intensity augmentation),
    ``cases.tsv``, ``pairs.tsv`` and ``dataset.json``. All randomness comes from
    ``numpy.random.default_rng(seed)``: the same seed and params give identical arrays.

    With ``params.moving_crop: [s0, s1, s2]`` (voxels; optional ``moving_crop_offset``, default centred, see
    :func:`crop_box`) every case also gets ``images/<case>_{t1,t2}_crop.nii.gz`` and ``labels/<case>_seg_crop.nii.gz``
    (columns ``t1_crop``, ``t2_crop``, ``seg_crop``): the same arrays cut to that box, **a crop, not a resample**, with
    the affine translated by the box offset (``A T(offset)``) so that world coordinates stay right. A cross-size
    experiment registers e.g. ``modality: {fixed: t1, moving: t2_crop}`` with ``moving_seg: seg_crop`` (Huang et al.
    2021's carotid protocol cuts TOF from 112x64x64 to 96x56x64). The crop draws no random numbers, so the subjects
    are those of the same seed without it; ``fields/`` stays on the full grid (evaluation reads the offset from the
    affines, :mod:`regbench.placement`).
    """
    t_start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    p = resolve_params(params)
    rng = np.random.default_rng(int(seed))
    s = float(p["spacing_mm"])

    tpl = _prepare_template(raw_dir, p)
    aff, shape = tpl["affine"], tpl["shape"]
    box = crop_box(p, tuple(shape))
    if box is not None:
        crop_aff = aff @ np.block([[np.eye(3), np.asarray(box[0], float)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]])
        cut = tuple(slice(o, o + c) for o, c in zip(*box))
    save_image(out_dir / "template" / "t1.nii.gz", tpl["t1"], aff, dtype=np.float32)
    save_image(out_dir / "template" / "t2.nii.gz", tpl["t2"], aff, dtype=np.float32)
    save_image(out_dir / "template" / "seg.nii.gz", tpl["seg"], aff, dtype=np.uint8)

    n, nt = int(p["n_subjects"]), int(p["n_test"])
    width = max(3, len(str(n - 1)))
    cases = [f"demo{i:0{width}d}" for i in range(n)]
    tpl_img = torch.from_numpy(np.stack([tpl["t1"], tpl["t2"]]))[None]
    tpl_seg = torch.from_numpy(tpl["seg"].astype(np.int64))[None, None]

    rows, case_info = [], {}
    for i, case in enumerate(cases):
        u, info = random_deformation(rng, shape, s, p)
        ut = torch.from_numpy(u)[None]
        with torch.no_grad():
            imgs = warp(tpl_img, ut, mode="bilinear", padding_mode="border")[0].numpy()
            seg = warp_labels(tpl_seg, ut)[0, 0].numpy().astype(np.uint8)
            jac = float(jacobian_determinant(ut.double()).min())
        t1, aug1 = _augment(rng, imgs[0], p)
        t2, aug2 = _augment(rng, imgs[1], p)
        if jac <= 0:
            log.warning("demo case %s: deformation folds (min Jacobian determinant %.3f)", case, jac)
        rel = {
            "t1": f"images/{case}_t1.nii.gz",
            "t2": f"images/{case}_t2.nii.gz",
            "seg": f"labels/{case}_seg.nii.gz",
            "ddf": f"fields/{case}_ddf.nii.gz",
        }
        save_image(out_dir / rel["t1"], t1, aff, dtype=np.float32)
        save_image(out_dir / rel["t2"], t2, aff, dtype=np.float32)
        save_image(out_dir / rel["seg"], seg, aff, dtype=np.uint8)
        save_ddf(out_dir / rel["ddf"], u, aff)
        if box is not None:
            for key, arr, folder, dt in (("t1", t1, "images", np.float32), ("t2", t2, "images", np.float32),
                                         ("seg", seg, "labels", np.uint8)):
                rel[f"{key}_crop"] = f"{folder}/{case}_{key}_crop.nii.gz"
                save_image(out_dir / rel[f"{key}_crop"], np.ascontiguousarray(arr[cut]), crop_aff, dtype=dt)
        split = "train" if i < n - nt else "test"
        rows.append({"case": case, "split": split, **rel, "spacing_mm": "x".join([f"{s:.1f}"] * 3)})
        case_info[case] = {
            **info,
            "max_displacement_mm": round(float(np.sqrt((u**2).sum(0)).max() * s), 4),
            "max_displacement_in_brain_mm": round(float(np.sqrt((u**2).sum(0))[seg > 0].max() * s), 4),
            "min_jacobian_det": round(jac, 5),
            "gamma_t1": aug1["gamma"],
            "gamma_t2": aug2["gamma"],
        }

    columns = ["case", "split", "t1", "t2", "seg", "ddf", "spacing_mm"]
    if box is not None:
        columns += ["t1_crop", "t2_crop", "seg_crop"]
    df = pd.DataFrame(rows, columns=columns)
    _write_tsv(out_dir / "cases.tsv", df)

    pair_rows = []
    for split in ("train", "test"):
        ids = df.loc[df["split"] == split, "case"].tolist()
        for f in ids:
            for m in ids:
                if f != m:
                    pair_rows.append({"pair_id": f"{f}__{m}", "fold": 0, "split": split, "fixed": f, "moving": m})
    pairs = pd.DataFrame(pair_rows, columns=["pair_id", "fold", "split", "fixed", "moving"])
    _write_tsv(out_dir / "pairs.tsv", pairs)

    seg = tpl["seg"]
    brain = int((seg > 0).sum())
    meta = {
        "name": "demo",
        "description": "Synthetic subjects made by randomly deforming the real MNI152 2009a symmetric template",
        "provenance": PROVENANCE,
        "source": {
            "template": "ICBM 2009a nonlinear symmetric (MNI152), as shipped in nilearn/datasets/data/",
            "files": {k: {"name": SOURCE_FILES[k], "sha256": sha256_file(path)} for k, path in tpl["sources"].items()},
            "shape": list(tpl["source_shape"]),
            "references": [
                "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL, BDCG. Unbiased average "
                "age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327, 2011.",
                "Fonov VS, Evans AC, McKinstry RC, Almli CR, Collins DL. Unbiased nonlinear average "
                "age-appropriate brain templates from birth to adulthood. NeuroImage 47(S1):S102, 2009.",
            ],
            "licence": ICBM_NOTICE,
        },
        "shape": list(shape),
        **({"moving_crop": {"offset": list(box[0]), "shape": list(box[1]), "columns": ["t1_crop", "t2_crop", "seg_crop"],
                            "affine": np.asarray(crop_aff).round(6).tolist()}} if box is not None else {}),
        "spacing_mm": [s, s, s],
        "affine": np.asarray(aff).round(6).tolist(),
        "labels": {str(k): v for k, v in LABELS.items()},
        "label_fractions_of_brain_in_template": {
            LABELS[k]: round(float((seg == k).sum()) / brain, 4) for k in (1, 2, 3)
        },
        "t1_tissue_means": {k: round(v, 5) for k, v in tpl["t1_means"].items()},
        "ddf_convention": (
            "fields/<case>_ddf.nii.gz holds u_case (3, X, Y, Z) in voxels of this grid (channel i along array "
            "axis i; NIfTI vector layout X,Y,Z,1,3 via regbench.io.save_ddf) with subject(x) = template(x + "
            "u_case(x)) before intensity augmentation; pair ground truth: regbench.datasets.demo.true_pair_ddf"
        ),
        "n_cases": n,
        "n_train": n - nt,
        "n_test": nt,
        "n_pairs": {"train": int((pairs["split"] == "train").sum()), "test": int((pairs["split"] == "test").sum())},
        "params": p,
        "seed": int(seed),
        "cases": case_info,
        "software": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": __import__("scipy").__version__,
            "torch": torch.__version__,
        },
    }
    atomic_write_text(out_dir / "dataset.json", json.dumps(meta, indent=2, default=_json_default) + "\n")
    log.info(
        "demo dataset: %d cases (%d train, %d test), grid %s at %.3g mm, %d pairs, in %.1f s -> %s",
        n, n - nt, nt, "x".join(map(str, shape)), s, len(pairs), time.perf_counter() - t_start, out_dir,
    )
    return df

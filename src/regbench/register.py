"""Register the test pairs of one (dataset, method, fold) and save fields, warped images and runtimes.

Output folder layout (read by :mod:`regbench.evaluate` and the report):

* ``<pair_id>_ddf.nii.gz``: DDF in voxels of the fixed grid (:func:`regbench.io.save_ddf`),
* ``<pair_id>_warped.nii.gz``: moving image warped linearly,
* ``<pair_id>_warped_seg.nii.gz``: moving labels warped with nearest neighbour,
* ``pairs.tsv``: ``pair_id, fixed, moving, ddf, warped, warped_seg, runtime_s, device`` (paths relative to
  the folder), plus ``ssim_clean`` for a method with ``attention`` and ``folding_count_native`` (number of
  pixels/voxels with ``det J <= 0`` of the field on the network's own grid, before it is resized to the test
  grid) for a learned method with an ``inference_size`` other than the test grid, and ``uv_residual_vox`` for a
  network that also predicts a backward field ``ddf_inv`` (the mean composition residual of the two fields in
  voxels of the predicted grid, :func:`regbench.metrics.inverse_residual`; Ding et al. 2021, Sec. 2). ``runtime_s`` is the wall time of the
  registration itself per pair: one forward pass for a learned model (after a warm-up pass, CUDA
  synchronised; with ``attention`` the two segmenter passes are included), the ``ants.registration`` call
  for ANTs.

**Cross-size pairs** (the moving image on another, smaller grid, e.g. a crop: Huang et al. 2021): the moving
image and its labels (column ``moving_seg``) are placed on the fixed grid before the warp, at the network's own
placement (the model output ``moving_pad`` of a model with ``accepts_cross_size``, a Siamese network) or, for a
classical method, at the world-coordinate placement read from the affines (ANTs registers in world coordinates;
:func:`regbench.placement.world_offset`). A learned model that takes no such pairs (a plain U-Net) is refused
with a :class:`~regbench.errors.RegbenchError` naming the pair and both grids. Such pairs get two more
``pairs.tsv`` columns: ``moving_offset_vox`` (the placement ``p``, voxels per axis, space-separated) and
``target_affine`` (JSON 4x4, :func:`regbench.placement.target_affine`: fixed voxel ``x`` corresponds to the
world point ``target_affine @ (x + u(x))``), which the evaluate stage reads. Everything is saved on the fixed grid.

A learned method with ``attention`` (He et al. 2022, Sec. 3.1) registers the attention-cleaned images
``I * W^a`` (:func:`regbench.auxiliary.attention_mask`); the field is then applied to the original moving
image and labels. ``ssim_clean`` is the SSIM between the cleaned fixed image and the cleaned moving image
warped by the field (He et al. 2022, Fig. 8: "calculated over the cleaned input images").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import classical, spatial
from .placement import affine_text, offset_from_pad, place, target_affine, world_offset
from .auxiliary import attention_mask, load_auxiliary
from .data import PreparedDataset, subsample_pairs
from .errors import ConfigError, RegbenchError, ShapeMismatchError
from .io import check_same_grid, save_ddf, save_image
from .losses import SSIMLoss
from .metrics import inverse_residual, jacobian_stats
from .train import load_trained, pair_columns
from .utils import atomic_path, get_logger, select_device

log = get_logger(__name__)

_SSIM = SSIMLoss()  # He et al. 2022 Eq. 9-10 (Gaussian 11-tap window), used for the ssim_clean column


def timed_forward(model: torch.nn.Module, moving: torch.Tensor, fixed: torch.Tensor, dev: torch.device,
                   inference_size=None, attention: torch.nn.Module | None = None, return_native: bool = False,
                   outputs: dict | None = None):
    """One timed forward pass; returns ``(ddf on the input grid, seconds, (moving, fixed))``, the last being
    the images the network registered. With ``return_native`` a fourth item is added: the field on the grid
    the network predicted it on, ``(1, ndim, *inference_size)`` in voxels of that grid (the same tensor as
    the first item when no resizing happened).

    With an ``attention`` segmenter both images are first multiplied by their attention masks (timed too), and
    the returned images are these attention-cleaned ones; otherwise they are the inputs.

    With ``inference_size`` the images are resized to that grid, the model predicts there, and the field is
    resized back with its displacements rescaled (:func:`regbench.spatial.resize_field`); the resizing is
    part of the timed registration. Without it the (fully convolutional) model runs at the input size.

    ``outputs``, when given, is filled with the model's whole output dict (e.g. ``ddf_inv`` of a bidirectional
    network), as predicted (on ``inference_size`` when that is used).
    """
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        if attention is not None:
            moving = moving * attention_mask(attention, moving)
            fixed = fixed * attention_mask(attention, fixed)
        if inference_size is not None and tuple(inference_size) != tuple(fixed.shape[2:]):
            small = [spatial.resize_image(x, inference_size) for x in (moving, fixed)]
            out = model(*small)
            native = out["ddf"]
            ddf = spatial.resize_field(native, fixed.shape[2:])
        else:
            out = model(moving, fixed)
            ddf = native = out["ddf"]
        if outputs is not None:
            outputs.update(out)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    return (ddf, seconds, (moving, fixed), native) if return_native else (ddf, seconds, (moving, fixed))


def _check_cross_size_model(model: torch.nn.Module, method: dict[str, Any], pair_id: str, fixed, moving,
                            inference_size) -> None:
    """Refuse a cross-size pair for a model that cannot take one, or with ``inference_size``, naming both grids."""
    what = (f"method {method.get('name')!r}: pair {pair_id}: the moving image {moving.path} has shape "
            f"{tuple(moving.array.shape)}, the fixed image {fixed.path} {tuple(fixed.array.shape)}")
    if not getattr(model, "accepts_cross_size", False):
        raise RegbenchError(
            f"{what}; the model {type(model).__name__} registers only pairs on one grid (it places no moving image of "
            "another size: no moving_pad output). Use a cross-size network (huang2021_siamese), or resample or pad "
            "the moving image onto the fixed grid in preprocessing")
    if inference_size is not None:
        raise RegbenchError(f"{what}; inference_size {list(inference_size)} resizes both images to one grid, which a "
                            "cross-size pair does not have: drop inference_size")


def register_pairs(
    prep_dir: str | Path,
    out_dir: str | Path,
    method: dict[str, Any],
    fold: int,
    seed: int,
    modality: str | dict[str, str],
    device: str = "auto",
    model_path: str | Path | None = None,
    max_pairs: int | None = None,
    seg: str = "seg",
    attention_path: str | Path | None = None,
    method_max_pairs: int | None = None,
    moving_seg: str | None = None,
) -> Path:
    """Register every test pair of ``fold`` (or a seeded subset of ``max_pairs``); return ``pairs.tsv``.

    Args:
        method: the method's config block: ``kind: learned`` (needs ``model_path``; optional
            ``inference_size``: predict on that grid and upsample the field, e.g. ``[64, 64]`` for a network
            trained at 64 px and tested at 256 px; absent: run the network at the test size) or
            ``kind: classical`` with ``transform`` (see :data:`regbench.classical.TRANSFORMS`) and ``params``.
        modality: ``cases.tsv`` image column, or ``{"fixed": column, "moving": column}`` for multi-modal
            registration (:func:`regbench.train.pair_columns`); the warped image is the moving modality.
        max_pairs: scale knob; ``None`` registers all test pairs (the protocol).
        seg: ``cases.tsv`` column of the label maps warped along with the images.
        moving_seg: the moving side's label column when it is not ``seg`` (a cross-size moving image's labels on
            its own grid, e.g. ``seg_crop``).
        attention_path: the attention segmenter's ``model.pt`` for a method with ``attention``.
        method_max_pairs: this method's own cap (``scale.method_max_test_pairs``): a seeded subset of the
            ``max_pairs`` selection, so its pairs are among those every other method registers.

    Raises:
        ConfigError: a learned method without ``model_path`` (or with ``attention`` but no
            ``attention_path``) or an unknown kind.
        ShapeMismatchError: a same-shape pair on different spacings; a cross-size pair a classical method cannot
            place (not an integer translation inside the fixed grid, or elastix); a moving label map off its
            image's grid.
        RegbenchError: a cross-size pair given to a learned model that takes none (a plain U-Net), or with
            ``inference_size``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = PreparedDataset.open(prep_dir)
    pairs = subsample_pairs(ds.pairs_for(fold, "test"), max_pairs, seed)
    pairs = subsample_pairs(pairs, method_max_pairs, seed)
    columns = pair_columns(modality)
    kind = method.get("kind")
    if kind == "learned":
        if model_path is None:
            raise ConfigError(f"method {method.get('name')!r} is learned but no trained model was given")
        dev = select_device(device)
        # a method with model_from reuses another method's weights; its model_params override settings such as
        # affine_only (architecture-neutral)
        model = load_trained(model_path, dev, method.get("model_params") if method.get("model_from") else None)
        inference_size = method.get("inference_size")
        attention = None
        if method.get("attention"):
            if attention_path is None:
                raise ConfigError(f"method {method.get('name')!r} uses attention {method['attention']!r} but no "
                                  "trained segmenter was given")
            attention = load_auxiliary(attention_path, dev)
    elif kind == "classical":
        dev = torch.device("cpu")
        model = None
    else:
        raise ConfigError(f"method {method.get('name')!r}: kind must be 'learned' or 'classical', got {kind!r}")

    rows = []
    warmed = False
    mseg_column = moving_seg or seg
    for _, pair in tqdm(pairs.iterrows(), total=len(pairs), desc=f"register {method.get('name')} fold{fold}",
                        unit="pair", mininterval=2.0):
        fixed, moving = ds.load(pair["fixed"], columns["fixed"]), ds.load(pair["moving"], columns["moving"])
        pid = pair["pair_id"]
        cross = fixed.array.shape != moving.array.shape
        if not cross:
            check_same_grid(fixed, moving)
        offset = None  # cross-size: voxel offset of the moving grid on the fixed grid (placement)
        extra: dict[str, Any] = {}
        if model is not None:
            if cross:
                _check_cross_size_model(model, method, pid, fixed, moving, inference_size)
            f = torch.from_numpy(fixed.array)[None, None].to(dev)
            m = torch.from_numpy(moving.array)[None, None].to(dev)
            if not warmed:  # first call pays for kernel selection / allocation; not a per-pair cost
                timed_forward(model, m, f, dev, inference_size, attention)
                warmed = True
            outputs: dict = {}
            ddf_t, runtime, (m_in, f_in), native = timed_forward(model, m, f, dev, inference_size, attention,
                                                                 return_native=True, outputs=outputs)
            ddf = ddf_t[0].float().cpu().numpy()
            if "ddf_inv" in outputs:  # a forward/backward pair (Ding et al. 2021, Sec. 2): how near inverses
                extra["uv_residual_vox"] = inverse_residual(outputs["ddf"], outputs["ddf_inv"])["mean_vox"]
            if cross:
                if "moving_pad" not in outputs:
                    raise RegbenchError(f"method {method.get('name')!r}: pair {pid}: the model returned no placement "
                                        f"(moving_pad) for its cross-size pair (fixed {fixed.array.shape}, moving "
                                        f"{moving.array.shape})")
                offset = offset_from_pad(outputs["moving_pad"])
            if native.shape[2:] != ddf_t.shape[2:]:  # JAC on the grid the network predicted on
                extra["folding_count_native"] = jacobian_stats(native[0].float().cpu())["folding_count"]
            if attention is not None:  # m_in, f_in are the attention-cleaned images
                m_in = place(m_in, offset, f_in.shape[2:]) if offset is not None else m_in
                with torch.no_grad():
                    extra["ssim_clean"] = 1.0 - float(_SSIM(f_in, spatial.warp(m_in, ddf_t)))
        else:
            if cross:  # ANTs registers in world coordinates: the moving image goes where its affine puts it
                offset = world_offset(fixed, moving, what=f"{method.get('name')}: pair {pid}")
            try:
                ddf, runtime = classical.register(
                    fixed.array, moving.array, fixed.spacing, method["transform"], method.get("params"),
                    seed=seed, deterministic=bool(method.get("deterministic", False)), moving_offset=offset,
                )
            except RuntimeError as exc:  # antsRegistration's own failures (bad level lists, NaN metric, ...)
                raise RegbenchError(
                    f"{method.get('name')}: registration of pair {pair['pair_id']} failed ({exc}); "
                    f"check methods.<id>.params {method.get('params')}"
                ) from exc
        ddf_t = torch.from_numpy(ddf)[None]
        mov = torch.from_numpy(moving.array)[None, None]
        mseg_img = ds.load(pair["moving"], mseg_column)
        if mseg_img.array.shape != moving.array.shape:
            raise ShapeMismatchError(f"pair {pid}: the moving label map {mseg_img.path} {mseg_img.array.shape} is not on "
                                     f"its image's grid {moving.path} {moving.array.shape} (datasets.<d>.moving_seg)")
        mseg = torch.from_numpy(mseg_img.array.astype(np.int64))[None, None]
        if offset is not None:  # cross-size: the moving image and labels placed on the fixed grid, then warped
            mov, mseg = place(mov, offset, fixed.array.shape), place(mseg, offset, fixed.array.shape)
            extra["moving_offset_vox"] = " ".join(str(v) for v in offset)
            extra["target_affine"] = affine_text(target_affine(moving.affine, offset))
        warped = spatial.warp(mov, ddf_t)[0, 0].numpy()
        warped_seg = spatial.warp_labels(mseg, ddf_t)[0, 0].numpy()
        names = {k: f"{pid}_{k}.nii.gz" for k in ("ddf", "warped", "warped_seg")}
        save_ddf(out_dir / names["ddf"], ddf, fixed.affine)
        save_image(out_dir / names["warped"], warped.astype(np.float32), fixed.affine)
        save_image(out_dir / names["warped_seg"], warped_seg.astype(np.int16), fixed.affine)
        rows.append({"pair_id": pid, "fixed": pair["fixed"], "moving": pair["moving"], **names,
                     "runtime_s": runtime, "device": str(dev), **extra})
    table = out_dir / "pairs.tsv"
    with atomic_path(table) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)
    log.info("registered %d pairs with %s (fold %d): mean %.3f s/pair on %s", len(rows), method.get("name"),
             fold, float(np.mean([r["runtime_s"] for r in rows])), dev)
    return table

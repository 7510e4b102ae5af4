"""Classical (optimisation-based) baselines: identity ("Before"), ANTs affine and SyN via antspyx, and
elastix affine + B-spline via itk-elastix (:mod:`regbench.elastix`).

Every method maps ``(fixed, moving, spacing, params)`` to a DDF ``(ndim, *spatial)`` in voxels of the fixed
grid (the regbench convention: ``warped(x) = moving(x + u(x))``), so classical and learned methods share
warping, evaluation and the Jacobian analysis.

ANTs facts this module relies on (antspyx 0.6.x, see docs/methods.md):

* ``type_of_transform="SyN"`` runs an affine stage then SyN with ``syn_metric`` ("mattes" = MI, "CC") and
  ``syn_sampling`` as the metric parameter (bins for MI, radius for CC; the CC radius must be set or it is
  32). The "SyNCC" preset ignores ``reg_iterations``, so it is not used.
* The forward transforms are composed into one displacement field with ``apply_transforms(compose=...)``;
  images are handed to ANTs with origin 0, identity direction and the true spacing, so the physical field
  component ``i`` divided by ``spacing[i]`` is the displacement along array axis ``i`` in voxels.
* Seeding: the seed reaches antsRegistration as ``--random-seed`` through ``ants.config`` (see
  :func:`_seed_ants`); MI with random sampling is otherwise the usual source of run-to-run differences.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, ShapeMismatchError

#: Transforms a config may name (``methods.<id>.transform``); ``elastix`` is :mod:`regbench.elastix`.
TRANSFORMS = ("identity", "ants_affine", "ants_syn", "elastix")


def _to_ants(array: np.ndarray, spacing: Sequence[float], offset: Sequence[int] | None = None):
    """An ANTs image with identity direction, the true spacing and origin ``offset * spacing`` (0 by default; the
    voxel offset of a cross-size moving grid inside the fixed grid)."""
    import ants

    nd = array.ndim
    off = [0.0] * nd if offset is None else [float(o) for o in offset]
    return ants.from_numpy(
        np.ascontiguousarray(array, dtype=np.float32),
        origin=tuple(o * float(s) for o, s in zip(off, spacing)),
        spacing=tuple(float(s) for s in spacing),
        direction=np.eye(nd),
    )


def _seed_ants(seed: int, deterministic: bool) -> None:
    """Seed ANTs' random sampling (``--random-seed``), optionally in its single-threaded repro mode.

    antspyx 0.6.x passes ``ants.config._random_seed`` to antsRegistration as ``--random-seed``; a
    ``random_seed=`` keyword of ``ants.registration`` is ignored. ``set_ants_deterministic`` also forces
    ITK to one thread (bit-reproducible, about 2x slower on 2 cores), so it is used only on request.
    """
    import ants.config as ants_config

    if deterministic:
        ants_config.set_ants_deterministic(True, seed)
    else:
        ants_config._random_seed = int(seed)


def composite_ddf(fixed_ants, moving_ants, transforms: list[str], spacing: Sequence[float]) -> np.ndarray:
    """Compose an ANTs forward transform list into a DDF ``(ndim, *spatial)`` in voxels of the fixed grid."""
    import ants

    with tempfile.TemporaryDirectory(prefix="regbench_ants_") as tmp:
        path = ants.apply_transforms(
            fixed_ants, moving_ants, transformlist=transforms, compose=os.path.join(tmp, "c")
        )
        if path is None or not os.path.exists(path):
            raise RuntimeError("antsApplyTransforms did not write the composite displacement field")
        field = ants.image_read(path).numpy()
    nd = fixed_ants.dimension
    field = np.moveaxis(field, -1, 0).astype(np.float32)
    return field / np.asarray(spacing, dtype=np.float32).reshape(nd, *([1] * nd))


def register(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing: Sequence[float],
    transform: str,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    deterministic: bool = False,
    moving_offset: Sequence[int] | None = None,
) -> tuple[np.ndarray, float]:
    """Register ``moving`` to ``fixed`` with a classical method.

    Args:
        fixed, moving: ``(*spatial)`` float arrays on the same grid (2D or 3D), or, with ``moving_offset``, a
            moving array on a smaller grid of the same spacing and direction (a cross-size pair).
        spacing: voxel size in mm per array axis (1.0 where unknown, e.g. resized X-rays).
        transform: one of :data:`TRANSFORMS`.
        params: keyword arguments for ``ants.registration`` (e.g. ``syn_metric``, ``syn_sampling``,
            ``reg_iterations``, ``aff_metric``), or for ``elastix`` the options of
            :func:`regbench.elastix.register_elastix` (``preset``, ``stages``, ``parameter_files``, ``overrides``);
            recorded in the config.
        seed: seed for ANTs' random sampling.
        deterministic: single-threaded bit-reproducible mode (``ants.config.set_ants_deterministic``).
        moving_offset: voxel offset of the moving grid inside the fixed grid (moving voxel ``j`` at fixed voxel
            ``j + offset``; :func:`regbench.placement.world_offset`). ANTs works in world coordinates, so the moving
            image is handed over with origin ``offset * spacing`` (the fixed one at 0) and the composed field is
            sampled on the fixed grid as always: fixed voxel ``x`` maps to fixed-frame voxel ``x + u(x)``, i.e.
            moving voxel ``x + u(x) - offset``. The identity gives a zero field (the moving image at its world place).

    Returns:
        ``(ddf, runtime_s)``: DDF ``(ndim, *spatial)`` in voxels of the fixed grid, and wall time of the
        registration call (the field composition is excluded).

    Raises:
        ShapeMismatchError: fixed and moving shapes differ without ``moving_offset``, or with elastix.
        ConfigError: unknown ``transform``.
    """
    if fixed.shape != moving.shape and moving_offset is None:
        raise ShapeMismatchError(f"fixed {fixed.shape} and moving {moving.shape} must share a grid (a cross-size "
                                 "pair needs the moving grid's voxel offset in the fixed grid, moving_offset)")
    if moving_offset is not None and len(moving_offset) != fixed.ndim:
        raise ShapeMismatchError(f"moving_offset {tuple(moving_offset)} does not match the {fixed.ndim}D images")
    nd = fixed.ndim
    params = dict(params or {})
    if transform == "identity":
        return np.zeros((nd, *fixed.shape), dtype=np.float32), 0.0
    if transform not in TRANSFORMS:
        raise ConfigError(f"unknown classical transform {transform!r}; known: {TRANSFORMS}")
    if transform == "elastix":
        from .elastix import register_elastix

        if fixed.shape != moving.shape:
            raise ShapeMismatchError(f"elastix: cross-size pairs (fixed {fixed.shape}, moving {moving.shape}) are not "
                                     "supported here; resample the moving image onto the fixed grid")
        return register_elastix(fixed, moving, spacing, params, seed=seed)
    import ants

    _seed_ants(seed, deterministic)
    f, m = _to_ants(fixed, spacing), _to_ants(moving, spacing, moving_offset)
    type_of_transform = {"ants_affine": "Affine", "ants_syn": "SyN"}[transform]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regbench_ants_") as tmp:
        out = ants.registration(
            fixed=f, moving=m, type_of_transform=type_of_transform, outprefix=os.path.join(tmp, "r"), **params
        )
        runtime = time.perf_counter() - t0
        ddf = composite_ddf(f, m, out["fwdtransforms"], spacing)
    return ddf, runtime

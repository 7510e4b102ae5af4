"""Elastix baseline (affine + B-spline, as "SimpleElastix" in He et al. 2022) via itk-elastix, returning a DDF.

Like :mod:`regbench.classical`, :func:`register_elastix` maps ``(fixed, moving, spacing, params, seed)`` to a
DDF ``(ndim, *spatial)`` in voxels of the fixed grid, channel ``i`` = displacement along numpy array axis
``i``, with the pull-back convention ``warped(x) = moving(x + u(x))``.

Conversion (tested in ``tests/test_elastix.py`` with known shifts, 2D and 3D with anisotropic spacing):

* Images are handed to elastix with origin 0, identity direction and the true spacing. ``itk.image_from_array``
  reverses the axes (numpy ``(z, y, x)`` -> ITK index ``(x, y, z)``), so the ITK spacing is ``spacing[::-1]``.
* An elastix transform ``T`` maps fixed-image points to moving-image points and elastix resamples
  ``result(x) = moving(T(x))``: the same pull-back as regbench. transformix's deformation field is
  ``T(x) - x`` in physical units with components in ITK order ``(x, y[, z])``, i.e. reversed numpy axes, so
  ``ddf[i] = field[..., ndim - 1 - i] / spacing[i]``.

Default parameters (``params=None``), chosen by image dimension:

* 2D (chest X-rays): ``preset="acregnet"``, the elastix parameter files shipped with AC-RegNet
  (Mansilla et al., "Learning deformable registration of medical images with anatomical constraints",
  Neural Networks 2020), repository ``lucasmansilla/ACRN_Chest_X-ray_IA``, files
  ``acregnet/config/JSRT/elastix/paramsAffine.txt`` then ``acregnet/config/JSRT/elastix/paramsDeformable.txt``
  (see :data:`ACREGNET_MAPS` for the settings and what was left out).
* 3D: ``preset="elastix"``, elastix's own default ``"affine"`` then ``"bspline"`` parameter maps
  (``itk.ParameterObject.GetDefaultParameterMap``: Mattes MI, ASGD with automatic parameter estimation,
  4 resolutions x 256 iterations, B-spline grid 10 mm + bending energy). The AC-RegNet files are written for
  2D (their pyramid schedules have 2 numbers per level) and put a B-spline control point on every voxel,
  which is too costly in 3D; ``preset="acregnet"`` still works in 3D (schedules expanded per dimension).

Cost (wall time of the elastix call on a shared 2-core CPU, synthetic smooth pairs: a 2-voxel translation plus
a sinusoidal warp of 5 px / 3 voxels amplitude): the AC-RegNet preset puts a B-spline control point on every
pixel and runs 1000 iterations per level, about 70 s per 256x256 pair
(about 2 s of it the affine stage); the ``"elastix"`` preset takes about 3.5 s per 256x256 pair and about 28 s
per 64^3 pair. Iterations can be lowered with ``overrides`` (and the change is then in the config).

``RandomSeed`` is set from ``seed`` in every map (the installed elastix re-seeds each run, so a run repeats
exactly for a fixed seed and thread count; checked in the tests). ``WriteResultImage`` is forced to ``"false"`` (only the transform is
used). Elastix and transformix log nothing to the console and write only into a temporary folder that is
removed afterwards (their log files are kept there so that a failure reports elastix's ERROR lines).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import ConfigError, DataError, ShapeMismatchError

#: Presets a config may name (``params.preset``).
PRESETS = ("acregnet", "elastix")

#: Stages of the ``"elastix"`` preset (names of ``itk.ParameterObject.GetDefaultParameterMap``).
ELASTIX_STAGES = ("translation", "rigid", "affine", "bspline")

#: Default stage list for both presets.
DEFAULT_STAGES = ("affine", "bspline")

#: Keys of ``params``.
PARAM_KEYS = ("preset", "stages", "parameter_files", "overrides")

_ACREGNET_COMMON: dict[str, list[str]] = {
    "FixedInternalImagePixelType": ["float"],
    "MovingInternalImagePixelType": ["float"],
    "UseDirectionCosines": ["true"],
    "Registration": ["MultiMetricMultiResolutionRegistration"],
    "Interpolator": ["BSplineInterpolator"],
    "ResampleInterpolator": ["FinalBSplineInterpolator"],
    "Resampler": ["DefaultResampler"],
    "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
    "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
    "Optimizer": ["AdaptiveStochasticGradientDescent"],
    "HowToCombineTransforms": ["Compose"],
    "NumberOfHistogramBins": ["32"],
    "ErodeMask": ["false"],
    "MaximumNumberOfIterations": ["1000"],
    "MaximumStepLength": ["0.29"],
    "NumberOfSpatialSamples": ["2048"],
    "NewSamplesEveryIteration": ["true"],
    "ImageSampler": ["Random"],
    "FinalBSplineInterpolationOrder": ["3"],
    "DefaultPixelValue": ["0"],
    "MaximumNumberOfSamplingAttempts": ["1000"],
    "RequiredRatioOfValidSamples": ["0.01"],
}

#: AC-RegNet's elastix settings (repository ``lucasmansilla/ACRN_Chest_X-ray_IA``, commit 8bc1ca3f,
#: ``acregnet/config/JSRT/elastix/paramsAffine.txt`` and ``paramsDeformable.txt``), one dict per stage.
#: ``ImagePyramidSchedule`` is stored as one factor per level (the files give 2D lists: affine ``1 1`` x 4
#: levels, deformable ``8 8 4 4 2 2``) and repeated per dimension by :func:`_acregnet_map`;
#: ``FinalGridSpacingInVoxels`` is ``1 1`` in the file (a control point every voxel), stored as ``1``.
#: Left out: output-only entries (``WriteResultImage``, ``ResultImagePixelType``, ``ResultImageFormat``) and
#: entries that do nothing for these maps (affine: ``FinalGridSpacingInVoxels``, ``Metric1Weight``,
#: ``AutomaticTransformInitializationMethod`` without ``AutomaticTransformInitialization``). Neither file
#: sets ``AutomaticParameterEstimation`` (elastix's default, ``true``, applies: ASGD step sizes are estimated
#: from ``MaximumStepLength`` 0.29 mm) nor ``AutomaticScalesEstimation`` (default ``false``); kept as shipped.
ACREGNET_MAPS: dict[str, dict[str, list[str]]] = {
    "affine": {
        **_ACREGNET_COMMON,
        "Transform": ["AffineTransform"],
        "Metric": ["AdvancedNormalizedCorrelation"],
        "Metric0Weight": ["1.0"],
        "NumberOfResolutions": ["4"],
        "ImagePyramidSchedule": ["1", "1", "1", "1"],
        "BSplineInterpolationOrder": ["1"],
    },
    "bspline": {
        **_ACREGNET_COMMON,
        "Transform": ["BSplineTransform"],
        "Metric": ["AdvancedNormalizedCorrelation", "TransformBendingEnergyPenalty"],
        "Metric0Weight": ["1.0"],
        "Metric1Weight": ["2.0"],
        "FinalGridSpacingInVoxels": ["1"],
        "NumberOfResolutions": ["3"],
        "ImagePyramidSchedule": ["8", "4", "2"],
        "BSplineInterpolationOrder": ["3"],
    },
}


def _as_str_list(value: Any) -> list[str]:
    """A parameter value (str, number, bool or a list of them) as elastix's list of strings."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, bool):
            out.append("true" if v else "false")
        else:
            out.append(str(v))
    return out


def _acregnet_map(stage: str, ndim: int) -> dict[str, list[str]]:
    if stage not in ACREGNET_MAPS:
        raise ConfigError(f"elastix preset 'acregnet' has no stage {stage!r}; known: {tuple(ACREGNET_MAPS)}")
    m = {k: list(v) for k, v in ACREGNET_MAPS[stage].items()}
    m["ImagePyramidSchedule"] = [f for f in m["ImagePyramidSchedule"] for _ in range(ndim)]
    return m


def _elastix_map(stage: str) -> dict[str, list[str]]:
    import itk

    if stage not in ELASTIX_STAGES:
        raise ConfigError(f"elastix preset 'elastix' has no stage {stage!r}; known: {ELASTIX_STAGES}")
    pm = itk.ParameterObject.New().GetDefaultParameterMap(stage)
    return {k: list(v) for k, v in dict(pm).items()}


def parameter_maps(ndim: int, params: Mapping[str, Any] | None = None, seed: int = 0) -> list[dict[str, list[str]]]:
    """The elastix parameter maps :func:`register_elastix` runs, in order, as ``{name: [str, ...]}`` dicts.

    Args:
        ndim: image dimension (2 or 3).
        params: see :func:`register_elastix`.
        seed: written as ``RandomSeed`` into every map.

    Raises:
        ConfigError: unknown key, preset or stage; a parameter file that does not exist; bad ``overrides``.
    """
    import itk

    params = dict(params or {})
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"unknown elastix params {unknown}; known: {PARAM_KEYS}")
    files = params.get("parameter_files")
    if files:
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        for path in files:
            if not os.path.isfile(path):
                raise ConfigError(f"elastix parameter file not found: {os.fspath(path)}")
        if "preset" in params or "stages" in params:
            raise ConfigError("elastix params: give either parameter_files or preset/stages, not both")
        maps = []
        for path in files:
            po = itk.ParameterObject.New()
            po.ReadParameterFile(os.fspath(path))
            for j in range(po.GetNumberOfParameterMaps()):
                pm = po.GetParameterMap(j)
                maps.append({k: list(v) for k, v in dict(pm).items()})
    else:
        preset = params.get("preset") or ("acregnet" if ndim == 2 else "elastix")
        if preset not in PRESETS:
            raise ConfigError(f"unknown elastix preset {preset!r}; known: {PRESETS}")
        stages = params.get("stages") or list(DEFAULT_STAGES)
        if isinstance(stages, str):
            stages = [stages]
        maps = [_acregnet_map(s, ndim) if preset == "acregnet" else _elastix_map(s) for s in stages]
    overrides = params.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"elastix params.overrides must be a mapping parameter -> value(s), got {overrides!r}")
    for m in maps:
        for key, value in overrides.items():
            if value is None:
                m.pop(key, None)  # None removes a parameter (elastix then uses its built-in default)
            else:
                m[key] = _as_str_list(value)
        m["RandomSeed"] = [str(int(seed))]
        m["WriteResultImage"] = ["false"]
    return maps


def _to_itk(array: np.ndarray, spacing: Sequence[float]):
    """numpy ``(*spatial)`` -> ITK float image, origin 0, identity direction, spacing reversed to ITK order."""
    import itk

    image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing([float(s) for s in reversed(tuple(spacing))])
    image.SetOrigin([0.0] * array.ndim)
    return image


def _log_errors(path: str) -> str:
    """The ``ERROR`` lines of an elastix/transformix log (or its tail), for the exception message."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return "(no log written)"
    errors = list(dict.fromkeys(line.strip() for line in text.splitlines() if "ERROR" in line))
    return " | ".join(errors[:5]) if errors else text[-1000:].strip()


def field_to_ddf(field: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """transformix deformation field -> regbench DDF.

    Args:
        field: ``(*spatial, ndim)`` physical displacement (mm), components in ITK order ``(x, y[, z])`` =
            reversed numpy axes, as ``itk.array_from_image`` returns it.
        spacing: voxel size per numpy axis.

    Returns:
        ``(ndim, *spatial)`` float32 DDF in voxels, channel ``i`` along numpy axis ``i``.
    """
    nd = field.ndim - 1
    if field.shape[-1] != nd or len(spacing) != nd:
        raise ValueError(f"field {field.shape} and spacing {tuple(spacing)} do not describe a {nd}D DDF")
    return np.stack([field[..., nd - 1 - i] / float(spacing[i]) for i in range(nd)]).astype(np.float32)


def register_elastix(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing: Sequence[float],
    params: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Register ``moving`` to ``fixed`` with elastix (default: affine then B-spline).

    Args:
        fixed, moving: ``(*spatial)`` arrays on the same grid, 2D or 3D (cast to float32).
        spacing: voxel size in mm per numpy array axis (1.0 where unknown, e.g. resized X-rays).
        params: optional, recorded in the config:

            * ``preset``: ``"acregnet"`` (default in 2D; AC-RegNet's chest X-ray files, :data:`ACREGNET_MAPS`)
              or ``"elastix"`` (default in 3D; ``itk.ParameterObject.GetDefaultParameterMap``).
            * ``stages``: stage names of the preset, run in order (default ``["affine", "bspline"]``;
              ``"elastix"`` also knows ``"translation"`` and ``"rigid"``).
            * ``parameter_files``: list of elastix parameter text files, run in order instead of a preset.
            * ``overrides``: ``{parameter: value or list}`` set in every map, e.g.
              ``{"MaximumNumberOfIterations": ["250"], "FinalGridSpacingInPhysicalUnits": ["16"]}``;
              ``None`` removes a parameter.

        seed: elastix ``RandomSeed`` (the random image sampler), so runs repeat.

    Returns:
        ``(ddf, runtime_s)``: DDF ``(ndim, *spatial)`` float32 in voxels of the fixed grid
        (``warped(x) = moving(x + ddf(x))``), and wall time of the elastix call (field conversion excluded).

    Raises:
        ShapeMismatchError: fixed and moving shapes differ.
        DataError: not 2D/3D, or ``spacing`` does not have one positive value per axis.
        ConfigError: unknown params key/preset/stage, or a parameter file that does not exist (named).
        RuntimeError: elastix itself fails (e.g. a parameter file written for another dimension).
    """
    fixed, moving = np.asarray(fixed), np.asarray(moving)
    if fixed.shape != moving.shape:
        raise ShapeMismatchError(f"fixed {fixed.shape} and moving {moving.shape} must share a grid")
    nd = fixed.ndim
    if nd not in (2, 3):
        raise DataError(f"elastix registration needs 2D or 3D images, got shape {fixed.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != nd or min(spacing) <= 0:
        raise DataError(f"spacing {spacing} must have {nd} positive values (one per array axis)")
    maps = parameter_maps(nd, params, seed)
    import itk

    po = itk.ParameterObject.New()
    for m in maps:
        po.AddParameterMap(m)
    f_img, m_img = _to_itk(fixed, spacing), _to_itk(moving, spacing)
    with tempfile.TemporaryDirectory(prefix="regbench_elastix_") as tmp:
        log = {"log_to_console": False, "log_to_file": True, "output_directory": tmp}
        t0 = time.perf_counter()
        try:
            _, transform = itk.elastix_registration_method(
                f_img, m_img, parameter_object=po, log_file_name="elastix.log", **log
            )
        except RuntimeError as exc:
            raise RuntimeError(f"elastix failed: {_log_errors(os.path.join(tmp, 'elastix.log'))}") from exc
        runtime = time.perf_counter() - t0
        try:
            field = itk.transformix_deformation_field(m_img, transform, log_file_name="transformix.log", **log)
        except RuntimeError as exc:
            raise RuntimeError(f"transformix failed: {_log_errors(os.path.join(tmp, 'transformix.log'))}") from exc
        field = np.asarray(itk.array_from_image(field))
    if field.shape != (*fixed.shape, nd):
        raise RuntimeError(f"transformix returned a field of shape {field.shape}, expected {(*fixed.shape, nd)}")
    return field_to_ddf(field, spacing), runtime

"""On-the-fly augmentation of training pairs (``methods.<id>.train.augment``; off when absent).

Config (schema ``$defs.augment`` of ``workflow/schemas/experiment.schema.yaml``)::

    augment:
      prob: 1.0              # probability that a sample (one pair of the batch) is augmented at all
      flip_axes: [0]         # array axes that may be flipped
      flip_prob: 0.5         # probability of a flip along each of them
      affine: {rotation_deg: 10, scale: 0.1, translation_vox: 4, sides: [moving]}

Per sample of a batch, with probability ``prob``:

1. **Flips**: along each axis of ``flip_axes`` with probability ``flip_prob``, the *same* flip of the fixed and
   the moving image and of both label maps (a flipped pair is a pair of mirrored subjects; Huang et al. 2021,
   "Data Augmentation": "the left and right flip method to increase the number of training data"). Each array is
   flipped about its own grid centre, so for a cross-size pair whose moving crop is off-centre by ``a`` voxels the
   flipped pair's crop sits at ``d - a`` (``d``: the size difference): another valid pair, not a wrong one (the
   training loss reads only the images and labels).
2. **Affine**: an independent random affine of each side in ``affine.sides`` (default ``[moving]``, the usual
   choice: the network learns to undo a random pose of the moving image; ``[fixed, moving]`` is what the authors'
   released training script does, a separate ``random_transform_generator`` draw for each image): rotations
   uniform in ``+-rotation_deg`` about each coordinate plane, per-axis scales uniform in ``1 +- scale``, per-axis
   translations uniform in ``+-translation_vox`` voxels, all in voxel coordinates about the image's own grid centre
   (:func:`regbench.spatial.affine_to_ddf`); images are resampled linearly, label maps with nearest neighbour
   (label values are kept), border padding as every warp of the engine.

Randomness: one generator per training step, ``numpy.random.default_rng([seed, fold, step, STREAM])`` (the
trainer builds it), so a resumed run draws what an uninterrupted one draws, and the pair sampling stream of the
trainer is untouched. Every sample draws the same number of values whatever the outcomes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from . import spatial
from .errors import ConfigError

#: last entry of the per-step seed sequence (``"aug"`` in ASCII): keeps this stream apart from others
STREAM = 0x617567
SIDES = ("fixed", "moving")


@dataclass
class Draw:
    """One batch's random choices: ``flips[b]`` the flipped axes of sample ``b``; ``matrices[side][b]`` its
    ``(ndim, ndim + 1)`` affine rows ``[A | t]`` (voxels, about the grid centre) or ``None`` (no affine)."""

    flips: list[tuple[int, ...]]
    matrices: dict[str, list[np.ndarray | None]]


def _rotation(angles: np.ndarray, nd: int) -> np.ndarray:
    if nd == 2:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Augmentation:
    """The ``train.augment`` block of one method (module docstring) for ``ndim``-D images.

    Raises:
        ConfigError: unknown keys, a flip axis beyond ``ndim``, probabilities outside [0, 1], negative ranges,
            ``scale >= 1`` or unknown sides.
    """

    def __init__(self, cfg: Mapping[str, Any], ndim: int):
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"prob", "flip_axes", "flip_prob", "affine"})
        if unknown:
            raise ConfigError(f"train.augment: unknown keys {unknown}")
        self.ndim = int(ndim)
        self.prob = float(cfg.get("prob", 1.0))
        self.flip_axes = tuple(int(a) for a in cfg.get("flip_axes", ()))
        self.flip_prob = float(cfg.get("flip_prob", 0.5))
        aff = dict(cfg.get("affine") or {})
        bad = sorted(set(aff) - {"rotation_deg", "scale", "translation_vox", "sides"})
        if bad:
            raise ConfigError(f"train.augment.affine: unknown keys {bad}")
        self.affine = bool(aff)
        self.rotation = math.radians(float(aff.get("rotation_deg", 0.0)))
        self.scale = float(aff.get("scale", 0.0))
        self.translation = float(aff.get("translation_vox", 0.0))
        self.sides = tuple(aff.get("sides", ("moving",)))
        if not 0.0 <= self.prob <= 1.0 or not 0.0 <= self.flip_prob <= 1.0:
            raise ConfigError(f"train.augment: prob and flip_prob must be in [0, 1], got {self.prob}, {self.flip_prob}")
        if any(a < 0 or a >= self.ndim for a in self.flip_axes) or len(set(self.flip_axes)) != len(self.flip_axes):
            raise ConfigError(f"train.augment.flip_axes {list(self.flip_axes)}: distinct axes of the {self.ndim}D images")
        if self.rotation < 0 or self.translation < 0 or not 0.0 <= self.scale < 1.0:
            raise ConfigError("train.augment.affine: rotation_deg, translation_vox >= 0 and 0 <= scale < 1 required")
        if not self.sides or any(s not in SIDES for s in self.sides):
            raise ConfigError(f"train.augment.affine.sides {list(self.sides)}: a non-empty subset of {list(SIDES)}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, ndim: int) -> "Augmentation | None":
        """``None`` for an absent or empty block (no augmentation: the trainer is unchanged)."""
        return cls(cfg, ndim) if cfg else None

    def draw(self, rng: np.random.Generator, batch: int) -> Draw:
        """The random choices for ``batch`` samples (a fixed number of draws per sample)."""
        nd = self.ndim
        n_angles = 1 if nd == 2 else 3
        flips: list[tuple[int, ...]] = []
        mats: dict[str, list[np.ndarray | None]] = {s: [] for s in SIDES}
        for _ in range(batch):
            on = rng.random() < self.prob
            coins = rng.random(len(self.flip_axes))
            flips.append(tuple(a for a, c in zip(self.flip_axes, coins) if on and c < self.flip_prob))
            for side in SIDES:
                ang = rng.uniform(-1.0, 1.0, n_angles) * self.rotation
                sc = 1.0 + rng.uniform(-1.0, 1.0, nd) * self.scale
                tr = rng.uniform(-1.0, 1.0, nd) * self.translation
                if on and self.affine and side in self.sides:
                    a = _rotation(ang, nd) @ np.diag(sc)
                    mats[side].append(np.concatenate([a, tr[:, None]], axis=1))
                else:
                    mats[side].append(None)
        return Draw(flips, mats)

    def apply(self, x: torch.Tensor, draw: Draw, side: str, labels: bool = False) -> torch.Tensor:
        """``x`` ``(B, C, *s)`` (images, or integer label maps with ``labels``) augmented as ``draw`` says for
        ``side`` (``fixed`` or ``moving``): flips first, then that side's affine; a new tensor."""
        out = []
        for b in range(x.shape[0]):
            xb = x[b:b + 1]
            if draw.flips[b]:
                xb = xb.flip([2 + a for a in draw.flips[b]])
            m = draw.matrices[side][b]
            if m is not None:
                mat = torch.as_tensor(m, dtype=torch.float32, device=x.device)[None]
                ddf = spatial.affine_to_ddf(mat, tuple(xb.shape[2:]))
                xb = spatial.warp_labels(xb, ddf) if labels else spatial.warp(xb, ddf.to(xb.dtype))
            out.append(xb)
        return torch.cat(out)

"""Image similarity, segmentation overlap and regularisation losses (all return a scalar to minimise).

Shapes: images ``(B, C, *spatial)``, DDFs ``(B, ndim, *spatial)`` in voxels. 2D and 3D are supported.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window``-wide box around each voxel (zero padding), computed separably: one 1D
    convolution per axis (``nd * window`` taps instead of ``window ** nd``; identical result)."""
    nd = x.dim() - 2
    conv = {2: F.conv2d, 3: F.conv3d}[nd]
    b, c = x.shape[:2]
    # Channels are folded into the batch so each channel is summed separately.
    out = x.reshape(b * c, 1, *x.shape[2:])
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = window
        padding = [0] * nd
        padding[axis] = window // 2
        kernel = torch.ones((1, 1, *shape), dtype=x.dtype, device=x.device)
        out = conv(out, kernel, padding=tuple(padding))
    return out.reshape(b, c, *out.shape[2:])


class LocalNCC(nn.Module):
    """Negative local (windowed) squared normalised cross-correlation.

    VoxelMorph (Balakrishnan et al., IEEE TMI 2019, Sec. III-C, Eq. 5) with a window of 9 voxels per side:
    ``CC(p) = (sum (f - f_mean)(m - m_mean))^2 / (sum (f - f_mean)^2 * sum (m - m_mean)^2)`` averaged over
    voxels ``p``; the loss is ``-mean CC`` (range [-1, 0]). Zhu et al. 2021 (Sec. 2.C) use the same local NCC
    with a 9^3 window.

    Args:
        window: odd window size in voxels (same along every axis).
        eps: added to the denominator.
    """

    def __init__(self, window: int = 9, eps: float = 1e-5):
        super().__init__()
        if window % 2 != 1 or window < 1:
            raise ValueError(f"window must be a positive odd integer, got {window}")
        self.window, self.eps = window, eps

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        w = self.window
        n = float(w ** (fixed.dim() - 2))
        f_sum, m_sum = _box_sum(fixed, w), _box_sum(warped, w)
        ff, mm, fm = _box_sum(fixed * fixed, w), _box_sum(warped * warped, w), _box_sum(fixed * warped, w)
        cross = fm - f_sum * m_sum / n
        f_var = ff - f_sum * f_sum / n
        m_var = mm - m_sum * m_sum / n
        cc = cross * cross / (f_var * m_var + self.eps)
        return -cc.mean()


class GlobalNCC(nn.Module):
    """Negative global normalised cross-correlation (Pearson) per sample, averaged over the batch.

    Zhu et al. 2021, Sec. 2.C (global NCC term on the affine output).
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        f = fixed.flatten(1) - fixed.flatten(1).mean(1, keepdim=True)
        m = warped.flatten(1) - warped.flatten(1).mean(1, keepdim=True)
        cc = (f * m).sum(1) / torch.sqrt((f * f).sum(1) * (m * m).sum(1) + self.eps)
        return -cc.mean()


class MSE(nn.Module):
    """Mean squared intensity difference."""

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(warped, fixed)


class SoftDice(nn.Module):
    """``1 - mean soft Dice`` over channels of one-hot (or probabilistic) label maps ``(B, K, *spatial)``.

    VoxelMorph with auxiliary segmentations (Balakrishnan et al. 2019, Sec. III-D, Eq. 7), with the warped
    moving one-hot labels warped linearly so the loss is differentiable.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, fixed_onehot: torch.Tensor, warped_onehot: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, fixed_onehot.dim()))
        inter = (fixed_onehot * warped_onehot).sum(dims)
        denom = fixed_onehot.sum(dims) + warped_onehot.sum(dims)
        return 1.0 - ((2 * inter + self.eps) / (denom + self.eps)).mean()


class Diffusion(nn.Module):
    """Diffusion regulariser ``mean ||grad u||^2`` by forward differences (Balakrishnan et al. 2019, Eq. 4).

    With ``penalty="l1"`` it is the anisotropic total variation ``mean |grad u|`` (He et al. 2022, TV term).
    """

    def __init__(self, penalty: str = "l2"):
        super().__init__()
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        self.penalty = penalty

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        nd = ddf.dim() - 2
        total = ddf.new_zeros(())
        for ax in range(2, 2 + nd):
            d = torch.diff(ddf, dim=ax)
            total = total + (d.abs().mean() if self.penalty == "l1" else (d * d).mean())
        return total / nd


def one_hot(labels: torch.Tensor, label_values) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer labels -> ``(B, K, *spatial)`` float one-hot for ``label_values`` (K)."""
    return torch.cat([(labels == v).to(torch.float32) for v in label_values], dim=1)


SIMILARITY = {"lncc": LocalNCC, "ncc": GlobalNCC, "mse": MSE}


def make_similarity(name: str, **kwargs) -> nn.Module:
    """Build a similarity loss by config name (``lncc``, ``ncc``, ``mse``).

    Raises:
        KeyError: unknown name (message lists the known ones).
    """
    if name not in SIMILARITY:
        raise KeyError(f"unknown similarity loss {name!r}; known: {sorted(SIMILARITY)}")
    return SIMILARITY[name](**kwargs)

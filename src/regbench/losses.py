"""Image similarity, segmentation overlap and regularisation losses (all return a scalar to minimise).

Shapes: images ``(B, C, *spatial)``, DDFs ``(B, ndim, *spatial)`` in voxels. 2D and 3D are supported.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _separable_conv(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of ``x`` ``(B, C, *spatial)`` with the 1D kernel ``taps`` along every spatial
    axis in turn (zero padding, odd kernel length, same output size)."""
    nd = x.dim() - 2
    conv = {2: F.conv2d, 3: F.conv3d}[nd]
    b, c = x.shape[:2]
    # Channels are folded into the batch so each channel is filtered separately.
    out = x.reshape(b * c, 1, *x.shape[2:])
    n = taps.numel()
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = n
        padding = [0] * nd
        padding[axis] = n // 2
        out = conv(out, taps.to(x.dtype).view(1, 1, *shape), padding=tuple(padding))
    return out.reshape(b, c, *out.shape[2:])


def _box_sum_adjoint_axis(g: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """Adjoint of a zero-padded ``window``-wide box sum along tensor dimension ``dim``, by shifted additions.

    ``out[i] = g[i + r] + g[i + r - 1] + ... + g[i - r]`` (``r = window // 2``, out-of-range terms absent),
    added left to right starting from zero: the order in which PyTorch's CPU convolution backward
    accumulates the taps of a 1D kernel of ones (``col2im``/``col2vol`` of the slow path, and oneDNN's
    backward-data), so the result is bit-identical to that gradient.
    """
    n, r = g.shape[dim], window // 2
    out = torch.zeros_like(g, memory_format=torch.contiguous_format)
    for s in range(r, -r - 1, -1):  # out[i] += g[i + s]
        lo, hi = max(0, -s), min(n, n - s)
        if hi > lo:
            out.narrow(dim, lo, hi - lo).add_(g.narrow(dim, lo + s, hi - lo))
    return out


class _BoxSumFunction(torch.autograd.Function):
    """:func:`_box_sum` with its gradient computed by shifted additions instead of convolution backward.

    The forward runs the same convolutions as the plain path (same values). The backward applies
    :func:`_box_sum_adjoint_axis` along the axes in reverse order, which reproduces the convolutions'
    gradient bit for bit (used only where :func:`_box_sum` has checked the convolution backend) at a
    fraction of its cost: a 1-channel convolution backward is slow on CPU (about 3x its forward).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, window: int) -> torch.Tensor:
        ctx.window = window
        return _separable_conv(x, torch.ones(window, dtype=x.dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # The ~10 memory-bound additions per axis run on one intra-op thread: the same values (elementwise
        # ops do not depend on the thread count) at the same speed on an idle machine, and no thread barrier
        # per addition, which on a busy machine (other processes on the cores) costs a scheduler wait each.
        threads = torch.get_num_threads()
        if threads > 1:
            torch.set_num_threads(1)
        try:
            for dim in range(grad.dim() - 1, 1, -1):
                grad = _box_sum_adjoint_axis(grad, ctx.window, dim)
        finally:
            if threads > 1:
                torch.set_num_threads(threads)
        return grad, None


#: Convolution backends whose gradient :func:`_box_sum_adjoint_axis` reproduces exactly (checked on CPU).
_EXACT_ADJOINT_BACKENDS = ("Slow2d", "Slow3d", "Mkldnn")
#: Smallest input (elements) for which :func:`_box_sum` uses :class:`_BoxSumFunction`: measured on 2 cores,
#: a 128x128 image costs the same either way, 256x256 is 10x and 96x128x96 8x faster by shifted additions.
_ADJOINT_MIN_NUMEL = 32768


def _adjoint_is_exact(x: torch.Tensor, window: int) -> bool:
    """Whether the convolutions of ``_box_sum(x, window)`` run on a CPU backend named in
    :data:`_EXACT_ADJOINT_BACKENDS` (float32/float64 on CPU; anything else keeps the autograd path)."""
    select = getattr(torch._C, "_select_conv_backend", None)
    if select is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    nd = x.dim() - 2
    flat = x.detach().reshape(x.shape[0] * x.shape[1], 1, *x.shape[2:])
    for axis in range(nd):
        shape, padding = [1] * nd, [0] * nd
        shape[axis], padding[axis] = window, window // 2
        w = torch.ones(1, 1, *shape, dtype=x.dtype)
        try:
            backend = select(flat, w, None, [1] * nd, padding, [1] * nd, False, [0] * nd, 1, None)
        except (RuntimeError, TypeError):  # pragma: no cover - private API changed
            return False
        if str(backend).rsplit(".", 1)[-1] not in _EXACT_ADJOINT_BACKENDS:
            return False
    return True


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a ``window``-wide box around each voxel (zero padding), computed separably: one 1D
    convolution per axis (``nd * window`` taps instead of ``window ** nd``; identical result).

    ``x`` ``(B, C, *spatial)``; returns the same shape. When ``x`` needs a gradient on CPU and has at least
    :data:`_ADJOINT_MIN_NUMEL` elements, the gradient is computed by shifted additions
    (:class:`_BoxSumFunction`), bit-identical to the convolutions' own (below that size the two cost the same).
    """
    if (x.requires_grad and torch.is_grad_enabled() and x.numel() >= _ADJOINT_MIN_NUMEL
            and _adjoint_is_exact(x, window)):
        return _BoxSumFunction.apply(x, window)
    return _separable_conv(x, torch.ones(window, dtype=x.dtype, device=x.device))


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

    ``squared=True`` gives the negative squared coefficient, the form of Zhu et al. 2021, Sec. 2.A, Eq. 1
    (global cross-correlation of the fixed and the affine-aligned image); the default is the plain
    coefficient (He et al. 2022's NCC term).

    Forward ``fixed``, ``warped``: ``(B, C, *spatial)``; returns a scalar in [-1, 1].
    """

    def __init__(self, eps: float = 1e-5, squared: bool = False):
        super().__init__()
        self.eps, self.squared = eps, bool(squared)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        f = fixed.flatten(1) - fixed.flatten(1).mean(1, keepdim=True)
        m = warped.flatten(1) - warped.flatten(1).mean(1, keepdim=True)
        cc = (f * m).sum(1) / torch.sqrt((f * f).sum(1) * (m * m).sum(1) + self.eps)
        return -(cc * cc).mean() if self.squared else -cc.mean()


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

    ``field_unit`` is the unit the displacement is measured in before differencing: ``"px"`` (voxels, the
    regbench convention) or ``"normalized"`` (grid_sample coordinates in [-1, 1], i.e. component ``i``
    scaled by ``2 / (n_i - 1)``). AC-RegNet's code, which He et al. 2022 extend, predicts and regularises
    fields in normalised coordinates (its warper maps ``[-1, 1]`` to ``[0, n - 1]``), so their weights
    (AC-RegNet ``tv_reg = 5e-5``, He et al. ``lambda_df = 3.5``) apply to the normalised field: at 64 px
    that is 2/63 of the pixel-unit value.
    """

    def __init__(self, penalty: str = "l2", field_unit: str = "px"):
        super().__init__()
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        if field_unit not in ("px", "normalized"):
            raise ValueError(f"field_unit must be 'px' or 'normalized', got {field_unit!r}")
        self.penalty, self.field_unit = penalty, field_unit

    def forward(self, ddf: torch.Tensor) -> torch.Tensor:
        nd = ddf.dim() - 2
        if self.field_unit == "normalized":
            scale = torch.tensor([2.0 / max(n - 1, 1) for n in ddf.shape[2:]], dtype=ddf.dtype, device=ddf.device)
            ddf = ddf * scale.view(1, nd, *([1] * nd))
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
    """Build a similarity loss by config name (``lncc``, ``ncc``, ``mse``, ``ssim``).

    Raises:
        KeyError: unknown name (message lists the known ones).
    """
    if name not in SIMILARITY:
        raise KeyError(f"unknown similarity loss {name!r}; known: {sorted(SIMILARITY)}")
    return SIMILARITY[name](**kwargs)


# --- He et al. 2022 (Applied Intelligence): contour, SSIM, label cross-entropy and code-distance terms ---

LAPLACIAN_2D = {
    4: ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
    8: ((1.0, 1.0, 1.0), (1.0, -8.0, 1.0), (1.0, 1.0, 1.0)),
}


def laplacian(x: torch.Tensor, neighbours: int = 4, padding: str = "replicate") -> torch.Tensor:
    """Discrete Laplacian of each channel of a 2D map ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    ``neighbours``: 4 (``[[0,1,0],[1,-4,1],[0,1,0]]``) or 8 (``[[1,1,1],[1,-8,1],[1,1,1]]``) stencil.
    ``padding``: ``F.pad`` mode for the one-pixel border (``"replicate"`` adds no edge at the image border,
    ``"constant"`` pads with zeros).
    """
    if x.dim() != 4:
        raise ValueError(f"laplacian takes 2D maps (B, C, H, W), got {tuple(x.shape)}")
    if neighbours not in LAPLACIAN_2D:
        raise ValueError(f"neighbours must be 4 or 8, got {neighbours}")
    b, c = x.shape[:2]
    kernel = torch.tensor(LAPLACIAN_2D[neighbours], dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    flat = F.pad(x.reshape(b * c, 1, *x.shape[2:]), (1, 1, 1, 1), mode=padding)
    return F.conv2d(flat, kernel).reshape(b, c, *x.shape[2:])


class ContourLoss(nn.Module):
    """Contour loss of He et al. 2022, Sec. 3.2, Eq. 2: L2 distance between the Laplacian edge maps of two
    label maps, ``ct(I_1, I_2) = || lap(I_1) - lap(I_2) ||_2``.

    The paper defines it on binary masks; for training the prediction is the soft class probability map
    (softmax of the logits with ``from_logits=True``) and the target its one-hot map, both
    ``(B, K, H, W)`` with the same ``K``. The Laplacian is taken per class channel.

    Not fixed by the paper (Laplacian edge operator, ref. [38]), chosen here:

    * ``neighbours``: 4-neighbour stencil (default) or 8-neighbour.
    * ``reduction``: ``"norm"`` (default, Eq. 2 literally) = Euclidean norm of the difference over all
      channels and pixels of a sample, averaged over the batch; ``"mse"`` = mean squared difference (scale
      independent of image size; the norm grows with the contour length).
    * ``include_background``: keep channel 0 (for two classes it duplicates channel 1 with opposite sign).
    * ``padding``: border handling of the Laplacian (replicate: no edge at the image border).

    Zero for identical maps, positive otherwise; 2D only.
    """

    def __init__(self, neighbours: int = 4, reduction: str = "norm", from_logits: bool = False,
                 include_background: bool = True, padding: str = "replicate"):
        super().__init__()
        if reduction not in ("norm", "mse"):
            raise ValueError(f"reduction must be 'norm' or 'mse', got {reduction!r}")
        if neighbours not in LAPLACIAN_2D:
            raise ValueError(f"neighbours must be 4 or 8, got {neighbours}")
        self.neighbours, self.reduction, self.from_logits = neighbours, reduction, from_logits
        self.include_background, self.padding = include_background, padding

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must share a shape")
        if self.from_logits:
            pred = pred.softmax(dim=1)
        target = target.to(pred.dtype)
        if not self.include_background:
            pred, target = pred[:, 1:], target[:, 1:]
        diff = laplacian(pred, self.neighbours, self.padding) - laplacian(target, self.neighbours, self.padding)
        if self.reduction == "mse":
            return (diff * diff).mean()
        return torch.linalg.vector_norm(diff.flatten(1), dim=1).mean()


class CEContourLoss(nn.Module):
    """Cross-entropy plus weighted contour loss on logits, He et al. 2022 Eq. 3 (attention segmenter,
    ``weight = 1.75``) and Eq. 4 (label auto-encoder, ``weight = 2.0``), Sec. 4.2.

    Forward ``logits`` ``(B, K, H, W)`` and ``target`` class indices ``0..K-1`` as ``(B, 1, H, W)`` or
    ``(B, H, W)`` integers; returns ``CE(logits, target) + weight * ContourLoss(softmax(logits),
    onehot(target))``. ``contour_kwargs`` go to :class:`ContourLoss`.
    """

    def __init__(self, weight: float = 1.75, **contour_kwargs):
        super().__init__()
        self.weight = float(weight)
        self.contour = ContourLoss(from_logits=True, **contour_kwargs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == logits.dim():
            target = target[:, 0]
        target = target.long()
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        return F.cross_entropy(logits, target) + self.weight * self.contour(logits, onehot)


def _gaussian_filter(x: torch.Tensor, window: int, sigma: float) -> torch.Tensor:
    """Normalised Gaussian smoothing of each channel (``window`` taps per axis, zero padding, separable)."""
    taps = torch.arange(window, dtype=x.dtype, device=x.device) - (window // 2)
    g = torch.exp(-(taps * taps) / (2.0 * sigma * sigma))
    return _separable_conv(x, g / g.sum())


class SSIMLoss(nn.Module):
    """``1 - SSIM`` (Wang et al. 2004), the structural similarity term of He et al. 2022, Sec. 3.5, Eq. 9-10.

    Local means, variances and covariance are taken in a sliding window centred on every pixel (zero
    padding at the border); the per-pixel index
    ``((2 m_a m_b + C1)(2 s_ab + C2)) / ((m_a^2 + m_b^2 + C1)(s_a^2 + s_b^2 + C2))`` is averaged with equal
    weights over pixels, channels and batch (Eq. 10 with ``W = 1``). Defaults are those of the PyTorch
    implementation the paper names (aserdega/ssim-pytorch): Gaussian window of 11 taps, sigma 1.5,
    ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with dynamic range ``L = 1`` (intensities in [0, 1]).
    In Eq. 14 the term enters as ``-lambda_ssim * SSIM``; ``1 - SSIM`` differs by a constant.

    Args:
        window: odd window size in pixels (per axis).
        sigma: Gaussian standard deviation in pixels (ignored for ``kernel="uniform"``).
        kernel: ``"gaussian"`` (paper's implementation) or ``"uniform"`` (box window).
        data_range: intensity range ``L``.

    Forward ``fixed``, ``warped``: ``(B, C, *spatial)`` (2D or 3D); returns a scalar in [0, 2], 0 for
    identical images.
    """

    def __init__(self, window: int = 11, sigma: float = 1.5, kernel: str = "gaussian", data_range: float = 1.0,
                 k1: float = 0.01, k2: float = 0.03):
        super().__init__()
        if window % 2 != 1 or window < 1:
            raise ValueError(f"window must be a positive odd integer, got {window}")
        if kernel not in ("gaussian", "uniform"):
            raise ValueError(f"kernel must be 'gaussian' or 'uniform', got {kernel!r}")
        self.window, self.sigma, self.kernel = window, float(sigma), kernel
        self.c1, self.c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2

    def _smooth(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "gaussian":
            return _gaussian_filter(x, self.window, self.sigma)
        return _box_sum(x, self.window) / float(self.window ** (x.dim() - 2))

    def ssim_map(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-pixel SSIM index, same shape as the inputs."""
        if a.shape != b.shape:
            raise ValueError(f"images {tuple(a.shape)} and {tuple(b.shape)} must share a shape")
        mu_a, mu_b = self._smooth(a), self._smooth(b)
        var_a = self._smooth(a * a) - mu_a * mu_a
        var_b = self._smooth(b * b) - mu_b * mu_b
        cov = self._smooth(a * b) - mu_a * mu_b
        num = (2 * mu_a * mu_b + self.c1) * (2 * cov + self.c2)
        den = (mu_a * mu_a + mu_b * mu_b + self.c1) * (var_a + var_b + self.c2)
        return num / den

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.ssim_map(fixed, warped).mean()


class LabelCrossEntropy(nn.Module):
    """Categorical cross-entropy between fixed and warped moving one-hot label maps, He et al. 2022 Eq. 12
    (as in AC-RegNet): ``-mean_x sum_k f_k(x) log w_k(x)``.

    ``fixed_onehot``, ``warped_onehot``: ``(B, K, *spatial)``; the warped map comes from linearly warping
    the moving one-hot labels (values in [0, 1]), so it is read as class probabilities and clamped at
    ``eps`` before the log. ``as_logits=True`` instead feeds the warped map to a softmax cross-entropy as
    logits, which is what AC-RegNet's released code does (its loss never reaches zero).
    """

    def __init__(self, eps: float = 1e-6, as_logits: bool = False):
        super().__init__()
        self.eps, self.as_logits = eps, as_logits

    def forward(self, fixed_onehot: torch.Tensor, warped_onehot: torch.Tensor) -> torch.Tensor:
        if fixed_onehot.shape != warped_onehot.shape:
            raise ValueError(f"label maps {tuple(fixed_onehot.shape)} and {tuple(warped_onehot.shape)} differ")
        target = fixed_onehot.to(warped_onehot.dtype)
        if self.as_logits:
            return F.cross_entropy(warped_onehot, target)
        return -(target * warped_onehot.clamp_min(self.eps).log()).sum(dim=1).mean()


def anatomical_code_loss(ae: nn.Module, warped_onehot: torch.Tensor, fixed_onehot: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between auto-encoder codes of the warped moving and the fixed label maps,
    He et al. 2022 Eq. 13 (AC-RegNet's anatomical term), averaged over the batch.

    ``ae``: a pre-trained module with ``encode((B, K, H, W)) -> (B, n_codes)`` (e.g.
    ``regbench.models.he2022.AnatomicalAutoEncoder``). It should be frozen and in eval mode (BatchNorm
    running statistics) while the registration network trains; this function changes neither. The fixed
    code is computed without gradient; the gradient reaches the field through ``warped_onehot``.
    ``warped_onehot``, ``fixed_onehot``: ``(B, K, H, W)`` one-hot (warped: linearly warped, soft).
    """
    with torch.no_grad():
        code_fixed = ae.encode(fixed_onehot.to(warped_onehot.dtype))
    code_warped = ae.encode(warped_onehot)
    return ((code_warped - code_fixed) ** 2).sum(dim=1).mean()


# SSIM compares fixed and warped images like the other similarity terms (He et al. 2022, Eq. 14).
SIMILARITY["ssim"] = SSIMLoss


# --- modality-independent similarity (multi-modal registration: ding2021, huang2021, the multi-modal demo) ---


class MutualInformation(nn.Module):
    """Negative global mutual information from a joint histogram with cubic B-spline Parzen windows.

    Mattes et al. (IEEE TMI 22(1), 2003, Sec. II-B) estimate MI from a joint histogram in which every voxel
    spreads its unit weight over neighbouring bins with a cubic B-spline kernel, which makes MI differentiable
    in the intensities (ANTs' ``MattesMutualInformation`` and SyN-MI use this estimator). Here both images use
    the cubic kernel (Mattes et al. take a zero-order kernel for the fixed image): an intensity ``i`` in
    [0, 1] sits at bin coordinate ``p = i (bins - 1)`` and gives weights ``beta3(p - k)`` to the four bins
    ``k`` around it (weights sum to 1). Per sample, ``p_ab`` is the joint histogram divided by the number of
    voxels, ``p_a``, ``p_b`` its marginals, and ``MI = sum p_ab log(p_ab / (p_a p_b))``. The loss is
    ``-mean_b MI`` (0 for independent images; an image against itself gives its entropy, at most
    ``log(bins + 3)``).

    Intensities are clamped to [0, 1] (the regbench preprocessing range). Cost: 16 scatter-adds of the voxel
    count per sample (no ``O(voxels x bins)`` tensor).

    Args:
        bins: intensity bins over [0, 1] (the histogram has ``bins + 3`` entries per axis, for the kernel
            support at the ends).
        eps: added inside the logarithm.

    Forward ``fixed``, ``warped``: ``(B, 1, *spatial)`` (2D or 3D) of one shape; returns a scalar.

    Raises:
        ValueError: ``bins < 2``, or images of different shapes or with more than one channel.
    """

    def __init__(self, bins: int = 32, eps: float = 1e-7):
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins, self.eps = int(bins), float(eps)

    def _kernel(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """First bin index ``(B, N)`` (offset by 1, so >= 0) and the four cubic B-spline weights ``(B, N)``."""
        pos = x.flatten(1).clamp(0.0, 1.0) * (self.bins - 1)
        base = pos.detach().floor().clamp_max(self.bins - 1)
        t = pos - base
        t2, t3 = t * t, t * t * t
        one = 1.0 - t
        weights = [one * one * one / 6.0, (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
                   (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0, t3 / 6.0]
        return base.long(), weights  # bins base-1 .. base+2, i.e. indices base .. base+3 after the +1 offset

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        if fixed.shape != warped.shape or fixed.shape[1] != 1:
            raise ValueError(f"MI takes two single-channel images of one shape, got {tuple(fixed.shape)} and "
                             f"{tuple(warped.shape)}")
        m = self.bins + 3
        ia, wa = self._kernel(fixed)
        ib, wb = self._kernel(warped)
        n = ia.shape[1]
        hist = warped.new_zeros(warped.shape[0], m * m)
        for a in range(4):
            row = (ia + a) * m
            for b in range(4):
                hist = hist.scatter_add(1, row + ib + b, wa[a] * wb[b])
        p_ab = hist.view(-1, m, m) / n
        p_a, p_b = p_ab.sum(2, keepdim=True), p_ab.sum(1, keepdim=True)
        mi = (p_ab * torch.log((p_ab + self.eps) / (p_a * p_b + self.eps))).sum((1, 2))
        return -mi.mean()


class NormalizedGradientField(nn.Module):
    """Normalised gradient field distance (Haber and Modersitzki, MICCAI 2006, Eq. 5-6).

    ``n(I) = grad I / sqrt(|grad I|^2 + eps^2)``; the loss is ``mean_x 1 - (n(F) . n(M))^2``: 0 where the
    edges of the two images are parallel or anti-parallel (so contrast inversions between modalities do not
    matter), 1 where they are orthogonal or where one image is flat. Gradients by central differences
    (``torch.gradient``, unit spacing: voxels). ``eps`` is the edge-noise level in intensity units per voxel
    (images in [0, 1]): gradients much smaller than ``eps`` count as flat.

    Forward ``fixed``, ``warped``: ``(B, C, *spatial)`` (2D or 3D); returns a scalar in [0, 1].
    """

    def __init__(self, eps: float = 0.01):
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def _normalised_gradient(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim()))
        g = torch.stack(torch.gradient(x, dim=dims), dim=0)                 # (ndim, B, C, *spatial)
        return g / torch.sqrt((g * g).sum(0, keepdim=True) + self.eps ** 2)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        if fixed.shape != warped.shape:
            raise ValueError(f"images {tuple(fixed.shape)} and {tuple(warped.shape)} must share a shape")
        dot = (self._normalised_gradient(fixed) * self._normalised_gradient(warped)).sum(0)
        return (1.0 - dot * dot).mean()


class SpatiallyEncodedGradient(nn.Module):
    """Spatially encoded gradient information (SEGI) distance of MMRegNet (Ding et al., "Unsupervised
    multi-modality registration network based on spatially encoded gradient information", MICCAI STACOM
    2021 / arXiv:2105.07392, Sec. 2, Eq. 4-8).

    For each scale ``sigma_k`` (voxels) the image's gradient field is accumulated by a normalised Gaussian,
    ``SG^k(x) = sum_p N(p | x, sigma_k^2) g(p)`` (Eq. 5), and the loss is the mean over scales (Eq. 7) of
    ``-mean_x cos(SG^k_warped(x), SG^k_fixed(x))`` (Eq. 8). ``g`` is:

    * ``order="normalize"`` (Eq. 4-5, the paper): the normalised gradient ``grad I / sqrt(|grad I|^2 + eps^2)``
      (``eps`` the edge level, intensity units per voxel; Eq. 4 has ``eps = 0``, which is undefined on flat
      regions), then smoothed;
    * ``order="smooth"`` (the authors' released TensorFlow code, ``learn2reg/loss.py``): the raw gradient is
      smoothed; the cosine then normalises.

    ``cosine="abs"`` takes ``|cos|`` (the released code), so edges of inverted contrast (CSF dark in T1, bright
    in T2) count as aligned; ``cosine="signed"`` is Eq. 8 as printed, which is minimal at alignment only when the
    modalities' edges point the same way. The cosine is ``(a . b) / sqrt((|a|^2 + tau)(|b|^2 + tau))`` with
    ``tau = 1e-5`` (the code's constant; it keeps flat regions finite and differentiable). Gradients by central
    differences (``torch.gradient``, voxel units, as :class:`NormalizedGradientField`); Gaussian kernels of
    ``2 ceil(truncate sigma) + 1`` taps, zero padding; ``sigma = 0`` is no accumulation, so ``sigmas: [0]``
    with ``order="normalize"`` is the plain normalised gradient information of Eq. 4 compared by the same
    cosine: the NGI criterion the paper motivates SEGI against (its ablation). Value in ``[-1, 1]`` (``[-1, 0]`` with ``abs``);
    ``-1`` for identical images with structure everywhere.

    Forward ``fixed``, ``warped``: ``(B, C, *spatial)`` (2D or 3D; each channel its own gradient field);
    returns a scalar.

    Raises:
        ValueError: non-positive ``eps``, a negative sigma, empty ``sigmas``, unknown ``order``/``cosine``; in ``forward``,
            images of different shapes.
    """

    TAU = 1e-5

    def __init__(self, sigmas=(1.0, 1.5, 3.0), eps: float = 0.01, order: str = "normalize",
                 cosine: str = "abs", truncate: float = 3.0):
        super().__init__()
        sigmas = tuple(float(s) for s in (sigmas if isinstance(sigmas, (list, tuple)) else [sigmas]))
        if not sigmas or min(sigmas) < 0:
            raise ValueError(f"sigmas must be a non-empty list of numbers >= 0, got {sigmas}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if order not in ("normalize", "smooth"):
            raise ValueError(f"order must be 'normalize' (Eq. 4-5) or 'smooth' (released code), got {order!r}")
        if cosine not in ("abs", "signed"):
            raise ValueError(f"cosine must be 'abs' or 'signed', got {cosine!r}")
        if truncate <= 0:
            raise ValueError(f"truncate must be > 0, got {truncate}")
        self.sigmas, self.eps, self.order, self.cosine = sigmas, float(eps), order, cosine
        self.truncate = float(truncate)

    def encode(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """SEGI of ``x`` ``(B, C, *spatial)`` at one scale: ``(B, ndim * C, *spatial)`` (Eq. 5; components
        ordered axis-major)."""
        dims = tuple(range(2, x.dim()))
        g = torch.cat(torch.gradient(x, dim=dims), dim=1)                    # (B, ndim*C, *spatial)
        if self.order == "normalize":
            nd, c = len(dims), x.shape[1]
            mag2 = sum(g[:, i * c:(i + 1) * c] ** 2 for i in range(nd))
            g = g / torch.sqrt(mag2 + self.eps ** 2).repeat(1, nd, *([1] * nd))
        if sigma == 0:
            return g
        window = 2 * math.ceil(self.truncate * sigma) + 1
        return _gaussian_filter(g, window, sigma)

    def cosine_map(self, fixed: torch.Tensor, warped: torch.Tensor, sigma: float) -> torch.Tensor:
        """Per-voxel cosine of the two SEGIs at one scale, ``(B, C, *spatial)`` (``|cos|`` with ``abs``)."""
        nd, c = fixed.dim() - 2, fixed.shape[1]
        a, b = self.encode(fixed, sigma), self.encode(warped, sigma)
        split = lambda t: t.reshape(t.shape[0], nd, c, *t.shape[2:])  # noqa: E731
        a, b = split(a), split(b)
        cos = (a * b).sum(1) / torch.sqrt(((a * a).sum(1) + self.TAU) * ((b * b).sum(1) + self.TAU))
        return cos.abs() if self.cosine == "abs" else cos

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        if fixed.shape != warped.shape:
            raise ValueError(f"images {tuple(fixed.shape)} and {tuple(warped.shape)} must share a shape")
        return -sum(self.cosine_map(fixed, warped, s).mean() for s in self.sigmas) / len(self.sigmas)


SIMILARITY["mi"] = MutualInformation
SIMILARITY["ngf"] = NormalizedGradientField
SIMILARITY["segi"] = SpatiallyEncodedGradient

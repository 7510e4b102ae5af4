"""Loss terms as config-bound modules: what a training step optimises, term by term.

A method's ``train.losses`` is a list of items ``{name, weight, label?, inputs?, component?, ...params}``.
Each ``name`` is a :class:`Term` class in :data:`TERMS`; the trainer builds them with :func:`build_terms`
and sums ``weight x term(ctx)`` over a :class:`TermContext`, which exposes one step's tensors by key:

* the batch: ``fixed``, ``moving`` (images ``(B, C, *spatial)``; the two may come from different modalities
  and grids), ``fixed_seg``, ``moving_seg`` (integer label maps ``(B, 1, *spatial)``, loaded on first use);
* every output of the model, by its key: ``ddf``, ``warped`` and whatever else the model returns
  (``ddf_inv``/``warped_inv`` of a bidirectional model, ``affine_warped``, ``velocity``, ...); nested lists
  and dicts are reached by dotted paths (``stages.0.warped``);
* frozen or jointly trained components by role (``ctx.components["autoencoder"]``, ``["critic"]``).

A term declares the roles it reads and their default keys (``reads``); ``inputs: {role: key}`` rebinds them,
so one class serves e.g. a similarity on the affine output (``inputs: {warped: affine_warped}``, Zhu et al.
2021, Eq. 1) and on the backward field of a bidirectional model (``inputs: {fixed: moving, warped:
warped_inv}``). ``label`` names the term's training-log column (default: ``name``; required when a name is
used twice). Adding a term is adding a class here with :func:`register_term`; the trainer is not touched.

Registered names: similarity ``lncc``, ``ncc``, ``mse``, ``ssim``, ``mi``, ``ngf``, ``segi``; regularisers
``diffusion``, ``tv``; label terms ``dice``, ``ce``, ``ae``; ``inverse_consistency``, ``cycle``; adversarial
``adversarial`` (generator side) and ``critic_bce`` (the critic's own loss, see :mod:`regbench.train`);
Huang et al. 2021's ``gdsc``, ``dt`` and ``bending`` (end of the file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses as L
from . import spatial
from .errors import ConfigError

#: config name -> Term class
TERMS: dict[str, type["Term"]] = {}


def register_term(name: str) -> Callable[[type["Term"]], type["Term"]]:
    """Class decorator: make a :class:`Term` subclass available as ``train.losses[].name: <name>``."""

    def deco(cls: type[Term]) -> type[Term]:
        if name in TERMS:
            raise ValueError(f"loss term {name!r} is registered twice")
        cls.key = name
        TERMS[name] = cls
        return cls

    return deco


class TermContext:
    """One training step's tensors, read by loss terms through keys (see the module docstring).

    Args:
        batch: ``{"fixed": (B, C, *spatial_f), "moving": (B, C, *spatial_m)}`` images.
        outputs: the model's output dict (``ddf`` ``(B, ndim, *spatial_f)`` in voxels, ``warped``, ...).
        load_seg: ``side -> (B, 1, *spatial) int64`` label maps of the batch (``"fixed"`` or ``"moving"``),
            called at most once per side and step.
        components: frozen pre-trained networks and jointly trained critics, by role.

    Derived maps (one-hot labels, labels warped by a field) are computed once per step and reused by every
    term that asks for the same thing.
    """

    def __init__(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, Any],
                 load_seg: Callable[[str], torch.Tensor] | None = None,
                 components: Mapping[str, nn.Module] | None = None):
        self.batch, self.outputs = dict(batch), outputs
        self.components = dict(components or {})
        self._load_seg = load_seg
        self._cache: dict[tuple, torch.Tensor] = {}

    def __getitem__(self, key: str) -> Any:
        if key in ("fixed_seg", "moving_seg"):
            return self.seg(key[: -len("_seg")])
        head, _, rest = key.partition(".")
        if head in self.outputs:
            value = self.outputs[head]
        elif head in self.batch:
            value = self.batch[head]
        else:
            raise ConfigError(f"loss term input {key!r}: no such tensor; the model returns "
                              f"{sorted(self.outputs)}, the batch has {sorted(self.batch)} and fixed_seg, moving_seg")
        for part in rest.split(".") if rest else ():
            try:
                value = value[int(part)] if isinstance(value, (list, tuple)) else value[part]
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"loss term input {key!r}: cannot index {part!r} ({exc})") from exc
        return value

    def seg(self, side: str) -> torch.Tensor:
        """Label maps ``(B, 1, *spatial)`` int64 of ``side`` (``fixed`` or ``moving``), loaded once."""
        key = ("seg", side)
        if key not in self._cache:
            if self._load_seg is None:
                raise ConfigError(f"a loss term needs {side} label maps but the run has none")
            self._cache[key] = self._load_seg(side)
        return self._cache[key]

    def onehot(self, seg_key: str, values: tuple[int, ...]) -> torch.Tensor:
        """``(B, K, *spatial)`` float one-hot of the label map ``seg_key`` over ``values``."""
        key = ("onehot", seg_key, values)
        if key not in self._cache:
            self._cache[key] = L.one_hot(self[seg_key], list(values))
        return self._cache[key]

    def warped_onehot(self, seg_key: str, field_key: str, values: tuple[int, ...]) -> torch.Tensor:
        """One-hot of ``seg_key`` over ``values`` warped linearly by the field ``field_key`` (differentiable
        in the field; VoxelMorph TMI 2019, Sec. III-D)."""
        key = ("warped_onehot", seg_key, field_key, values)
        if key not in self._cache:
            self._cache[key] = spatial.warp(self.onehot(seg_key, values), self[field_key])
        return self._cache[key]


class Term(nn.Module):
    """A loss term bound to context keys. Subclasses set ``reads`` and implement :meth:`compute`.

    Args:
        weight: multiplies the term in the total loss (>= 0).
        label: training-log column (default: the registered name).
        inputs: ``{role: context key}`` overriding ``reads``.
        labels: foreground label values of the dataset (label terms use them).
        params: the term's own settings (passed to :meth:`setup`); ``component`` (the role of the network
            the term reads) for terms with a ``component_default``.

    Raises:
        ConfigError: an unknown role in ``inputs`` or a bad parameter.
    """

    key: ClassVar[str] = ""
    reads: ClassVar[dict[str, str]] = {}
    #: role of the component the term reads by default (``None``: it reads none); config ``component`` overrides
    component_default: ClassVar[str | None] = None

    def __init__(self, weight: float = 1.0, label: str | None = None, inputs: Mapping[str, str] | None = None,
                 labels: tuple[int, ...] = (), **params: Any):
        super().__init__()
        unknown = sorted(set(inputs or {}) - set(self.reads))
        if unknown:
            raise ConfigError(f"loss term {self.key!r}: unknown inputs {unknown}; it reads {sorted(self.reads)}")
        self.weight, self.label = float(weight), label or self.key
        self.bind = {**self.reads, **dict(inputs or {})}
        self.labels = tuple(int(v) for v in labels)
        if self.component_default is not None:
            self.component = str(params.pop("component", self.component_default))
        try:
            self.setup(**params)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"loss term {self.key!r}: {exc}") from exc

    def setup(self, **params: Any) -> None:
        """Take the term's own settings; the base takes none (a term with settings overrides this)."""
        if params:
            raise TypeError(f"unexpected parameters {sorted(params)}")

    def get(self, ctx: TermContext, role: str) -> Any:
        return ctx[self.bind[role]]

    def forward(self, ctx: TermContext) -> torch.Tensor:
        return self.compute(ctx)

    def compute(self, ctx: TermContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _Similarity(Term):
    """Image similarity between ``fixed`` and ``warped`` (defaults: the batch's fixed image and the model's
    warped moving image). ``module`` is the :mod:`regbench.losses` class."""

    reads = {"fixed": "fixed", "warped": "warped"}
    module: ClassVar[type[nn.Module]]

    def setup(self, **params: Any) -> None:
        self.fn = type(self).module(**params)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        return self.fn(self.get(ctx, "fixed"), self.get(ctx, "warped"))


for _name, _cls, _doc in (
    ("lncc", L.LocalNCC, "local squared NCC, VoxelMorph TMI 2019 Eq. 5 (param ``window``)"),
    ("ncc", L.GlobalNCC, "global NCC (Zhu et al. 2021, Eq. 1)"),
    ("mse", L.MSE, "mean squared difference"),
    ("ssim", L.SSIMLoss, "1 - SSIM (He et al. 2022, Eq. 9-10)"),
    ("mi", L.MutualInformation, "Parzen-window mutual information (params ``bins``, ``sigma_ratio``)"),
    ("ngf", L.NormalizedGradientField, "normalised gradient fields (param ``eps``)"),
    ("segi", L.SpatiallyEncodedGradient, "spatially encoded gradient information cosine, MMRegNet (Ding et al. "
     "2021, Eq. 4-8; params ``sigmas``, ``eps``, ``order``, ``cosine``)"),
):
    register_term(_name)(type(f"{_cls.__name__}Term", (_Similarity,), {"module": _cls, "__doc__": f"Negative {_doc}."}))


@register_term("diffusion")
class DiffusionTerm(Term):
    """Smoothness of ``field`` (default ``ddf``): :class:`regbench.losses.Diffusion` (params ``penalty`` l2 |
    l1, ``field_unit`` px | normalized; VoxelMorph TMI 2019, Eq. 4)."""

    reads = {"field": "ddf"}

    def setup(self, penalty: str = "l2", field_unit: str = "px") -> None:
        self.fn = L.Diffusion(penalty=penalty, field_unit=field_unit)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        return self.fn(self.get(ctx, "field"))


@register_term("tv")
class TotalVariationTerm(DiffusionTerm):
    """Anisotropic total variation of ``field``: ``diffusion`` with the l1 penalty (He et al. 2022, TV term)."""

    def setup(self, field_unit: str = "px") -> None:
        self.fn = L.Diffusion(penalty="l1", field_unit=field_unit)


class _LabelTerm(Term):
    """A term on the fixed label map and the moving label map warped by ``field`` (one-hot, linear warp).

    ``background``: include label 0 as a class (cross-entropy and auto-encoder terms do, Dice does not).

    Cross-size pairs: a moving label map on a smaller grid than ``field`` (the moving image of a cross-size pair
    of a Siamese network) is zero-padded onto the field's grid with the model output ``moving_pad`` (role
    ``moving_pad``, per axis ``(before, after)`` voxels; :func:`_pad_moving`) before the warp, the placement the
    network gave its moving image. Same-grid pairs use the shared cached warp of :class:`TermContext` (and never
    read ``moving_pad``).
    """

    reads = {"field": "ddf", "fixed_seg": "fixed_seg", "moving_seg": "moving_seg", "moving_pad": "moving_pad"}
    background: ClassVar[bool] = False

    def maps(self, ctx: TermContext) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.labels:
            raise ConfigError(f"loss term {self.label!r} needs the dataset's labels")
        values = ((0,) if self.background else ()) + self.labels
        field = self.get(ctx, "field")
        fixed = ctx.onehot(self.bind["fixed_seg"], values)
        moving = ctx.onehot(self.bind["moving_seg"], values)
        if moving.shape[2:] == field.shape[2:]:
            return fixed, ctx.warped_onehot(self.bind["moving_seg"], self.bind["field"], values)
        try:
            pads = self.get(ctx, "moving_pad")
        except ConfigError as exc:
            raise ConfigError(f"loss term {self.label!r}: the moving label map {tuple(moving.shape[2:])} is not on the "
                              f"field's grid {tuple(field.shape[2:])} and the model gives no placement "
                              f"(moving_pad): {exc}") from exc
        moving = _pad_moving(moving, tuple(field.shape[2:]), pads, self.label)
        return fixed, spatial.warp(moving, field)


@register_term("dice")
class DiceTerm(_LabelTerm):
    """``1 - soft Dice`` over the foreground labels (VoxelMorph TMI 2019, Eq. 7; Zhu et al. 2021, Eq. 3)."""

    def setup(self) -> None:
        self.fn = L.SoftDice()

    def compute(self, ctx: TermContext) -> torch.Tensor:
        return self.fn(*self.maps(ctx))


@register_term("ce")
class CrossEntropyTerm(_LabelTerm):
    """Label cross-entropy, background included (He et al. 2022, Eq. 12; params ``eps``, ``as_logits``)."""

    background = True

    def setup(self, **params: Any) -> None:
        self.fn = L.LabelCrossEntropy(**params)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        return self.fn(*self.maps(ctx))


@register_term("ae")
class AutoEncoderCodeTerm(_LabelTerm):
    """Distance between a frozen label auto-encoder's codes of the warped and fixed one-hot maps (AC-RegNet;
    He et al. 2022, Eq. 13). ``component``: the role of the auto-encoder (default ``autoencoder``)."""

    background = True
    component_default = "autoencoder"

    def compute(self, ctx: TermContext) -> torch.Tensor:
        if self.component not in ctx.components:
            raise ConfigError(f"loss term {self.label!r} needs a trained component {self.component!r} "
                              "(set methods.<id>.autoencoder or components)")
        fixed_onehot, warped_onehot = self.maps(ctx)
        return L.anatomical_code_loss(ctx.components[self.component], warped_onehot, fixed_onehot)


@register_term("inverse_consistency")
class InverseConsistencyTerm(Term):
    """Inverse consistency of a forward field ``forward`` (``ddf``, fixed grid) and a backward field
    ``backward`` (``ddf_inv``, moving grid): ``mean |compose(forward, backward)|^2`` and the reverse
    composition, averaged (Christensen and Johnson, IEEE TMI 2001). Both compositions are zero when the
    fields are exact inverses; units voxels^2. Needs both grids equal."""

    reads = {"forward": "ddf", "backward": "ddf_inv"}

    def compute(self, ctx: TermContext) -> torch.Tensor:
        u, v = self.get(ctx, "forward"), self.get(ctx, "backward")
        a, b = spatial.compose(u, v), spatial.compose(v, u)
        return 0.5 * ((a * a).sum(1).mean() + (b * b).sum(1).mean())


@register_term("cycle")
class CycleConsistencyTerm(Term):
    """Image cycle consistency: ``image`` (default ``moving``) warped by ``forward`` (``ddf``) and back by
    ``backward`` (``ddf_inv``) should return to itself: ``mean |image - warp(warp(image, forward), backward)|``
    (``penalty`` l1, default) or squared (l2). Forward and backward fields as in MMRegNet (Ding et al.)."""

    reads = {"image": "moving", "forward": "ddf", "backward": "ddf_inv"}

    def setup(self, penalty: str = "l1") -> None:
        if penalty not in ("l1", "l2"):
            raise ValueError(f"penalty must be 'l1' or 'l2', got {penalty!r}")
        self.penalty = penalty

    def compute(self, ctx: TermContext) -> torch.Tensor:
        image = self.get(ctx, "image")
        back = spatial.warp(spatial.warp(image, self.get(ctx, "forward")), self.get(ctx, "backward"))
        d = image - back
        return d.abs().mean() if self.penalty == "l1" else (d * d).mean()


def _critic_logits(critic: nn.Module, fixed: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    return critic(torch.cat([fixed, other], dim=1))


@register_term("adversarial")
class AdversarialTerm(Term):
    """Generator side of adversarial registration: the critic (component ``component``, default ``critic``)
    should take the pair ``(fixed, warped)`` for an aligned one: non-saturating GAN loss
    ``BCE(D(fixed, warped), 1)`` (Goodfellow et al. 2014; adversarial registration: Fan et al., MedIA 2019;
    Duan et al.'s Multi-FC, BSPC 2019)."""

    reads = {"fixed": "fixed", "warped": "warped"}
    component_default = "critic"

    def compute(self, ctx: TermContext) -> torch.Tensor:
        logits = _critic_logits(ctx.components[self.component], self.get(ctx, "fixed"), self.get(ctx, "warped"))
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


@register_term("critic_bce")
class CriticTerm(Term):
    """The critic's own loss: ``BCE(D(fixed, real), 1) + BCE(D(fixed, warped.detach()), 0)``, halved.

    The aligned ("real") pair is ``(fixed, alpha * fixed + (1 - alpha) * warped.detach())``: ``alpha = 1``
    (default) uses the fixed image itself; ``alpha < 1`` the softer reference of Fan et al. (MedIA 2019,
    Sec. 2.3.1), which keeps the critic from winning by intensity statistics alone. The fake pair's image is
    detached: this loss trains the critic only. ``component``: the critic's role (default ``critic``).
    """

    reads = {"fixed": "fixed", "warped": "warped"}
    component_default = "critic"

    def setup(self, alpha: float = 1.0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        critic = ctx.components[self.component]
        fixed, fake = self.get(ctx, "fixed").detach(), self.get(ctx, "warped").detach()
        real = self.alpha * fixed + (1.0 - self.alpha) * fake
        lr, lf = _critic_logits(critic, fixed, real), _critic_logits(critic, fixed, fake)
        return 0.5 * (F.binary_cross_entropy_with_logits(lr, torch.ones_like(lr))
                      + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))


def build_terms(spec: list[Mapping[str, Any]], labels: tuple[int, ...] = (), where: str = "train.losses") -> list[Term]:
    """Build the configured loss terms in order.

    Args:
        spec: items ``{name, weight?, label?, inputs?, **params}``.
        labels: the dataset's foreground label values (for label terms).
        where: config path used in error messages.

    Raises:
        ConfigError: empty list, unknown name (lists the known ones), bad parameters, duplicate log labels.
    """
    if not spec:
        raise ConfigError(f"{where}: at least one loss term is required")
    terms: list[Term] = []
    for i, item in enumerate(spec):
        item = dict(item)
        name = item.pop("name", None)
        if name not in TERMS:
            raise ConfigError(f"{where}[{i}].name: unknown loss term {name!r}; known: {sorted(TERMS)}")
        try:
            terms.append(TERMS[name](labels=labels, **item))
        except ConfigError as exc:
            raise ConfigError(f"{where}[{i}]: {exc}") from exc
    seen: set[str] = set()
    for t in terms:
        if t.label in seen:
            raise ConfigError(f"{where}: two terms log as {t.label!r}; give one of them a distinct `label`")
        seen.add(t.label)
    return terms


def weighted_sum(terms: list[Term], ctx: TermContext, zero: torch.Tensor,
                 grad_norm_params: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """``(sum_t weight_t x t(ctx), {label: value})`` in term order, starting from ``zero`` (a scalar).

    With ``grad_norm_params`` (a diagnostic) each term's weighted gradient norm over those parameters is
    logged as ``grad_norm_<label>`` (one extra backward pass per term; the total is unchanged).
    """
    total, row = zero, {}
    for term in terms:
        value = term(ctx)
        row[term.label] = float(value.detach())
        if grad_norm_params is not None:
            grads = torch.autograd.grad(term.weight * value, grad_norm_params, retain_graph=True, allow_unused=True)
            row[f"grad_norm_{term.label}"] = float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))
        total = total + term.weight * value
    return total, row


# ----------------------------------------------------------------------------------------------------------
# Folding and symmetry terms of the Zhu et al. 2021 baselines (SYMNet, FAIM; see docs/baselines_zhu2021.md).


def forward_jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` by forward differences, ``(B, *(s - 1))``: the scheme of SYMNet's and FAIM's released
    code (one voxel fewer along each axis; :func:`regbench.spatial.jacobian_determinant` uses central
    differences instead). Written out by cofactors (no ``torch.linalg.det``), so the gradient is defined at
    singular matrices too. ``ddf``: ``(B, ndim, *spatial)`` in voxels, ``ndim`` 2 or 3."""
    nd = ddf.dim() - 2
    if nd not in (2, 3) or ddf.shape[1] != nd:
        raise ValueError(f"field must be (B, ndim, *spatial) with ndim 2 or 3, got {tuple(ddf.shape)}")
    crop = (slice(None), slice(None)) + (slice(0, -1),) * nd
    base = ddf[crop]
    # j[i][k] = d(x_i + u_i) / d x_k
    cols = []
    for k in range(nd):
        shifted = ddf[(slice(None), slice(None)) + tuple(slice(1, None) if a == k else slice(0, -1) for a in range(nd))]
        cols.append(shifted - base)
    j = [[cols[k][:, i] + (1.0 if i == k else 0.0) for k in range(nd)] for i in range(nd)]
    if nd == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
            - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
            + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))


@register_term("neg_jacobian")
class NegativeJacobianTerm(Term):
    """Penalty on folding: ``ReLU(-det(I + grad u))`` of ``field`` (default ``ddf``), i.e. ``0.5 (|J| - J)``.

    * SYMNet (Mok and Chung, CVPR 2020, Methods, "local orientation consistency"): ``1/N sum_p
      sigma(-|J_phi(p)|)``, ``sigma`` = ReLU, on both full fields (``reduction: mean``; a second item with
      ``inputs: {field: ddf_inv}`` for the backward field).
    * FAIM (Kuang and Schmah, MLMI 2019, Methods, the negative-Jacobian penalty): the same quantity summed over
      voxels (``reduction: sum``: the released code's ``reduce_sum`` over the whole batch, so its weight
      depends on the grid and the batch size).

    Params: ``reduction`` mean | sum; ``difference`` forward (both papers' code, default) | central
    (:func:`regbench.spatial.jacobian_determinant`, the determinant the evaluation reports). Zero for any
    field without folding (identity included); units: determinants of voxel-unit fields.
    """

    reads = {"field": "ddf"}

    def setup(self, reduction: str = "mean", difference: str = "forward") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if difference not in ("forward", "central"):
            raise ValueError(f"difference must be 'forward' or 'central', got {difference!r}")
        self.reduction, self.difference = reduction, difference

    def compute(self, ctx: TermContext) -> torch.Tensor:
        u = self.get(ctx, "field")
        det = forward_jacobian_determinant(u) if self.difference == "forward" else spatial.jacobian_determinant(u)
        neg = F.relu(-det)
        return neg.sum() if self.reduction == "sum" else neg.mean()


@register_term("magnitude_difference")
class MagnitudeDifferenceTerm(Term):
    """SYMNet's magnitude constraint (Mok and Chung, CVPR 2020, Methods): the two half-way transformations
    should be equally long, so that the mean space lies half-way between the images:
    ``| sum |a|^p - sum |b|^p | / N`` with ``N`` the number of elements of ``a``.

    ``a``, ``b`` default to the half-way displacements of :class:`regbench.models.symnet.SYMNet`
    (``ddf_moving_half``, ``ddf_fixed_half``), as in the authors' released code (``magnitude_loss`` of the
    half-way fields, ``p = 1``); the paper writes the constraint on the velocity fields with squared L2 norms
    (``inputs: {a: velocity_moving, b: velocity_fixed}``, ``power: 2``). Not an existing term: no other term
    compares the sizes of two fields. Units: voxels (``p = 1``) or voxels^2.
    """

    reads = {"a": "ddf_moving_half", "b": "ddf_fixed_half"}

    def setup(self, power: int = 1) -> None:
        if power not in (1, 2):
            raise ValueError(f"power must be 1 or 2, got {power!r}")
        self.power = int(power)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        a, b = self.get(ctx, "a"), self.get(ctx, "b")
        if self.power == 1:
            ma, mb = a.abs().sum(), b.abs().sum()
        else:
            ma, mb = (a * a).sum(), (b * b).sum()
        return (ma - mb).abs() / a.numel()


# ----------------------------------------------------------------------------------------------------------
# Cai et al. 2023 (DR-Net, cooperative multi-scale cascades; docs/cai2023.md): edge loss and RCN's affine terms.


def sobel_magnitude(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude ``S(I) = sqrt((F_x * I)^2 + (F_y * I)^2 [+ (F_z * I)^2])`` (Cai et al. 2023,
    Eq. 11; 3D kernels of Yu et al., Ea-GANs, Fig. 6: central difference ``[-1, 0, 1]`` along one axis times
    the ``[1, 2, 1]`` smoothing along the others). ``image``: ``(B, C, *spatial)`` with 2 or 3 spatial axes;
    returns the same shape (replicate padding). ``sqrt`` is taken of the sum plus 1e-12 (finite gradient)."""
    nd = image.dim() - 2
    if nd not in (2, 3):
        raise ValueError(f"image must be (B, C, *spatial) with 2 or 3 spatial axes, got {tuple(image.shape)}")
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=image.dtype, device=image.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=image.dtype, device=image.device)
    b, c = image.shape[:2]
    x = image.reshape(b * c, 1, *image.shape[2:])
    x = F.pad(x, (1, 1) * nd, mode="replicate")
    conv = F.conv2d if nd == 2 else F.conv3d
    total = torch.zeros((), dtype=image.dtype, device=image.device)
    for axis in range(nd):
        k = None
        for a in range(nd):
            v = diff if a == axis else smooth
            k = v if k is None else k.unsqueeze(-1) * v
        g = conv(x, k.view(1, 1, *k.shape))
        total = total + g * g
    return torch.sqrt(total + 1e-12).reshape(image.shape)


@register_term("sobel_edge")
class SobelEdgeTerm(Term):
    """Edge loss of Cai et al. 2023 (Eq. 11-12) between ``fixed`` and ``warped``: Sobel magnitudes
    (:func:`sobel_magnitude`) compared by ``form``:

    * ``mse`` (default, *ours*): ``mean((S(I_f) - S(I_w))^2)``;
    * ``norm``: Eq. 12 as printed, ``||S(I_f) - S(I_w)||_2 / |Omega|`` per sample (batch mean); at 128^3
      this is about 1e-3 of the ``mse`` form's gradient scale, so lambda_2 = 1 (Table 3) would leave it inert.

    Zero when the two images are equal. Units: intensity^2 (``mse``) or intensity / voxel (``norm``).
    """

    reads = {"fixed": "fixed", "warped": "warped"}

    def setup(self, form: str = "mse") -> None:
        if form not in ("mse", "norm"):
            raise ValueError(f"form must be 'mse' or 'norm', got {form!r}")
        self.form = form

    def compute(self, ctx: TermContext) -> torch.Tensor:
        d = sobel_magnitude(self.get(ctx, "fixed")) - sobel_magnitude(self.get(ctx, "warped"))
        if self.form == "mse":
            return (d * d).mean()
        flat = d.flatten(1)
        return (flat.norm(dim=1) / flat.shape[1]).mean()


@register_term("affine_reg")
class AffineRegularityTerm(Term):
    """Regularity of a predicted affine matrix ``affine`` ``(B, ndim, ndim + 1)`` (rows ``[A | t]``), the terms
    of the VTN affine stem (Zhao et al., VTN, IEEE JBHI 2019; Recursive Cascaded Networks code):

    * ``part: det``: ``0.5 (det A - 1)^2`` (volume preservation);
    * ``part: ortho``: ``sum_i (l_i + (1 + eps)^2 / l_i) - 2 ndim (1 + eps)`` over the eigenvalues ``l_i`` of
      ``C = A^T A + eps I`` (computed as ``tr C + (1 + eps)^2 tr C^-1``), zero for a rotation.

    Batch mean (RCN sums over the batch; at batch 1 the same). Unitless. RCN weights both by 0.1.
    """

    reads = {"affine": "affine"}

    def setup(self, part: str = "ortho", eps: float = 1e-5) -> None:
        if part not in ("det", "ortho"):
            raise ValueError(f"part must be 'det' or 'ortho', got {part!r}")
        self.part, self.eps = part, float(eps)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        m = self.get(ctx, "affine")
        nd = m.shape[1]
        a = m[:, :, :nd]
        if self.part == "det":
            return (0.5 * (torch.linalg.det(a) - 1.0) ** 2).mean()
        eye = torch.eye(nd, dtype=a.dtype, device=a.device)
        c = a.transpose(1, 2) @ a + self.eps * eye
        tr = torch.diagonal(c, dim1=1, dim2=2).sum(-1)
        tr_inv = torch.diagonal(torch.linalg.inv(c), dim1=1, dim2=2).sum(-1)
        e = 1.0 + self.eps
        return (tr + e * e * tr_inv - 2.0 * nd * e).mean()


# ----------------------------------------------------------------------------------------------------------
# Huang et al. 2021 (cross-scale Siamese U-Nets; docs/huang2021.md): GDSC, label centre distance (dt), bending
# energy. The label terms (these and dice, ce, ae: :class:`_LabelTerm`) take cross-size pairs: a moving label map
# smaller than the field's grid is zero-padded onto it by the model's padding module placement (output
# ``moving_pad``, Huang2021Siamese).


def gaussian_kernel1d(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor | None:
    """Huang et al. 2021, Eq. 4: ``k(x) = exp(-x^2 / (2 sigma^2))`` on the integers ``x`` in ``[-3 sigma, 3 sigma]``
    (``floor(3 sigma)`` either side, as the authors' code), divided by its sum; ``None`` for ``sigma = 0`` ("when
    sigma is 0, no blur kernel is generated"). Raises ValueError for ``sigma < 0``."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return None
    tail = int(3 * sigma)
    x = torch.arange(-tail, tail + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * x * x / (sigma * sigma))
    return k / k.sum()


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable isotropic Gaussian smoothing of ``(B, C, *spatial)`` maps (2 or 3 spatial axes) with
    :func:`gaussian_kernel1d`, zero padding, same shape (the code's ``SAME`` convolutions); identity at 0."""
    k = gaussian_kernel1d(sigma, x.dtype, x.device)
    if k is None:
        return x
    return L._separable_conv(x, k)


def _pad_moving(t: torch.Tensor, grid: tuple[int, ...], pads: Any, label: str) -> torch.Tensor:
    """Zero-pad ``t`` ``(B, K, *s_m)`` onto ``grid`` with per-axis ``(before, after)`` amounts ``pads``."""
    pads = [(int(a), int(b)) for a, b in pads]
    got = tuple(s + a + b for s, (a, b) in zip(t.shape[2:], pads))
    if got != tuple(grid):
        raise ConfigError(f"loss term {label!r}: moving map {tuple(t.shape[2:])} padded by {pads} gives {got}, "
                          f"not the field's grid {tuple(grid)}")
    return F.pad(t, [v for a, b in reversed(pads) for v in (a, b)])


#: Huang et al.'s label terms were written for cross-size pairs before every label term took them; the name stays.
_CrossSizeLabelTerm = _LabelTerm


@register_term("gdsc")
class GaussianDiceTerm(_CrossSizeLabelTerm):
    """Multi-scale Dice on Gaussian-smoothed labels, GDSC (Huang et al. 2021, Eq. 3-5):
    ``L = 1 - (1/Z) sum_z 2 sum(p_z g_z) / (sum p_z + sum g_z)``, ``p_z``/``g_z`` the warped moving / fixed
    one-hot label maps smoothed by the Gaussian of Eq. 4 with standard deviation ``sigma_z`` (voxels; 0 = no
    smoothing, so ``sigmas: [0]`` is the plain soft Dice of Eq. 2).

    Params: ``sigmas`` (default ``[0, 1, 2, 4, 8]``, the paper's set; Table 4 also uses ``[0, 1]``,
    ``[0, 1, 2]``, ``[0, 1, 2, 4]``), ``eps`` (added to the denominator, default 1e-6, the code's ``eps_vol``),
    ``denominator``: ``linear`` (default: Eq. 5 and the authors' ``dice_simple``, ``sum p + sum g``) or
    ``squared`` (``sum p^2 + sum g^2``, Milletari et al. 2016; *ours*, an option). Dice per sample and
    foreground label, averaged over labels, scales and the batch (the authors' code has one label; *ours* for
    several). Unitless, in [0, 1]. Identical label maps give 0 at ``sigma = 0`` but, with the linear
    denominator, ``1 - sum p_z^2 / sum p_z > 0`` at a smoothed scale (a soft map's Dice with itself is below
    1); the loss is still smallest at alignment (a shift keeps ``sum p_z`` and lowers ``sum p_z g_z``). With
    ``squared`` identical maps give 0 at every scale.
    """

    def setup(self, sigmas: list[float] | tuple[float, ...] = (0, 1, 2, 4, 8), eps: float = 1e-6,
              denominator: str = "linear") -> None:
        sig = [float(s) for s in (sigmas if isinstance(sigmas, (list, tuple)) else [sigmas])]
        if not sig or any(s < 0 for s in sig):
            raise ValueError(f"sigmas must be a non-empty list of values >= 0, got {sigmas!r}")
        if denominator not in ("linear", "squared"):
            raise ValueError(f"denominator must be 'linear' or 'squared', got {denominator!r}")
        self.sigmas, self.eps, self.squared = tuple(sig), float(eps), denominator == "squared"

    def compute(self, ctx: TermContext) -> torch.Tensor:
        g, p = self.maps(ctx)
        losses = []
        for s in self.sigmas:
            gs, ps = gaussian_smooth(g, s), gaussian_smooth(p, s)
            dims = tuple(range(2, g.dim()))
            den = (gs * gs).sum(dims) + (ps * ps).sum(dims) if self.squared else gs.sum(dims) + ps.sum(dims)
            dice = 2.0 * (gs * ps).sum(dims) / (den + self.eps)
            losses.append(1.0 - dice.mean())
        return torch.stack(losses).mean()


@register_term("dt")
class LabelCentreDistanceTerm(_CrossSizeLabelTerm):
    """Label centre distance "dt" (Wang et al., the CAN paper, as Huang et al. 2021 describe it: "the center point
    distance of the anatomical labels", Table 3): the Euclidean distance in voxels between the centroid of each
    fixed foreground label and that of the warped moving one, ``sum_x x p(x) / sum_x p(x)`` of the one-hot maps
    (the warped map linearly interpolated, so the term is differentiable in the field; the authors' code takes
    the centroid of the thresholded map, which has no gradient). Mean over the labels present in both maps and
    the batch (zero if none). ``squash: sigmoid`` returns ``sigmoid(mean distance)`` as the authors' code
    (``build_loss_2``); default ``none``. Zero for identical maps; units voxels (``none``)."""

    def setup(self, squash: str = "none", eps: float = 1e-6) -> None:
        if squash not in ("none", "sigmoid"):
            raise ValueError(f"squash must be 'none' or 'sigmoid', got {squash!r}")
        self.squash, self.eps = squash, float(eps)

    def compute(self, ctx: TermContext) -> torch.Tensor:
        g, p = self.maps(ctx)
        nd = g.dim() - 2
        grid = spatial.identity_grid(g.shape[2:], device=g.device, dtype=g.dtype)  # (nd, *s)
        dims = tuple(range(2, g.dim()))
        mg, mp = g.sum(dims), p.sum(dims)                                          # (B, K)
        cg = torch.stack([(g * grid[i]).sum(dims) for i in range(nd)], -1) / (mg.unsqueeze(-1) + self.eps)
        cp = torch.stack([(p * grid[i]).sum(dims) for i in range(nd)], -1) / (mp.unsqueeze(-1) + self.eps)
        valid = (mg > self.eps) & (mp > self.eps)
        d = torch.sqrt(((cg - cp) ** 2).sum(-1) + 1e-12)
        dist = (d * valid).sum() / valid.sum().clamp(min=1) if bool(valid.any()) else d.sum() * 0.0
        return torch.sigmoid(dist) if self.squash == "sigmoid" else dist


def bending_energy(ddf: torch.Tensor) -> torch.Tensor:
    """Bending energy (Rueckert et al., IEEE TMI 1999) of a field ``(B, ndim, *spatial)`` (voxels):
    ``mean(sum_i d_ii^2 + 2 sum_{i<j} d_ij^2)`` over the voxels and the field's components, the second
    derivatives taken as central differences of central differences on the interior (each difference crops
    one voxel on every side), as the authors' code (LabelReg's ``compute_bending_energy``). Exact on quadratic
    fields: ``u_0 = a x_0^2`` gives ``4 a^2 / ndim``. Needs at least 5 voxels per axis; units voxel^-2 x voxel^2."""
    nd = ddf.dim() - 2
    if nd not in (2, 3) or ddf.shape[1] != nd:
        raise ValueError(f"field must be (B, ndim, *spatial) with ndim 2 or 3, got {tuple(ddf.shape)}")
    if any(s < 5 for s in ddf.shape[2:]):
        raise ValueError(f"bending energy needs at least 5 voxels per axis, got {tuple(ddf.shape[2:])}")

    def d(f: torch.Tensor, axis: int) -> torch.Tensor:
        idx = [slice(None), slice(None)] + [slice(1, -1)] * nd
        hi, lo = list(idx), list(idx)
        hi[2 + axis], lo[2 + axis] = slice(2, None), slice(None, -2)
        return (f[tuple(hi)] - f[tuple(lo)]) / 2.0

    first = [d(ddf, a) for a in range(nd)]
    total = 0.0
    for i in range(nd):
        for j in range(i, nd):
            dij = d(first[i], j)
            total = total + (1.0 if i == j else 2.0) * dij * dij
    return total.mean()


@register_term("bending")
class BendingEnergyTerm(Term):
    """Bending energy of ``field`` (default ``ddf``): :func:`bending_energy`. Huang et al. 2021, Eq. 6-7:
    ``L = L_GDSC + alpha L_smooth`` with the bending energy as ``L_smooth`` and ``alpha = 0.5`` (the term's
    ``weight``). No existing term is a second-derivative penalty (``diffusion`` and ``tv`` are first-order)."""

    reads = {"field": "ddf"}

    def compute(self, ctx: TermContext) -> torch.Tensor:
        return bending_energy(self.get(ctx, "field"))

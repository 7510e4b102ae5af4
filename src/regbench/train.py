"""One trainer for every learned pairwise registration model.

A training run is fully described by the method's ``train`` block (steps, batch size, learning rate, loss
terms and weights, optional critics), the model spec, the dataset's prepared split and one seed per
(experiment, fold). It

* samples training pairs of the fold with a seeded generator (moving and fixed from ``pairs.tsv``; fixed
  and moving images may come from different ``cases.tsv`` columns, i.e. modalities, and grids),
* optimises the weighted sum of the configured loss terms (:mod:`regbench.terms`) with Adam (VoxelMorph,
  TMI 2019, Sec. IV-C: Adam, lr 1e-4); each term reads the batch and the model's outputs by key, so models
  with several outputs (affine part, backward field, cascade stages, velocity) need no trainer code,
* updates each critic of ``train.critics`` after the registration network on the same batch (adversarial
  training: the critic is a second player of :func:`regbench.engine.run_training_loop`, with its own
  optimiser and loss terms; terms read it as a component by its role),
* warms the learning rate up linearly over the first ``train.lr_warmup`` steps (*ours*, where a deep network's
  first Adam steps at full lr throw its fields far off: Cai et al.'s DR-Net cascades on the CPU demo), and
* decays the learning rate stepwise with ``train.lr_decay: {every: <steps> | every_epochs: <n>, factor: <f>}``
  (Zhu et al. 2021, Sec. 2.C: x0.5 every 10 epochs); ``train.epochs`` instead of ``train.steps`` gives the
  schedule in epochs (one epoch = one pass over the fold's training pairs, batch size taken into account),
* augments each training pair on the fly with ``train.augment`` (:mod:`regbench.augment`: the same random flips
  of both images and label maps, an independent random affine per side; seeded per step; off when absent),
* trains on cross-size pairs (a moving image on a smaller grid, e.g. ``modality: {fixed: t1, moving: t2_crop}``
  with the moving label maps from their own column, ``moving_seg``) for models that take them
  (:class:`regbench.models.huang2021.Huang2021Siamese`; label terms place the moving maps with its ``moving_pad``),
* gives frozen pre-trained components (``components``: auxiliary networks or other methods' trained
  models, by role; ``autoencoder`` is the short form of ``components: {autoencoder: ...}``) to the terms,
* writes ``checkpoint.pt`` atomically every ``checkpoint_every`` steps (every network, optimiser, step, RNG
  states) and resumes from it when restarted with the same spec,
* logs every term to ``train_log.tsv``, shows a tqdm progress bar, and writes ``model.pt`` (weights plus
  the model spec) and ``train_info.json`` (device, wall time, parameter count) at the end.

A method with ``attention`` registers attention-cleaned images (the segmenter's hard mask times the image,
He et al. 2022, Sec. 3.1); the auxiliary networks are trained beforehand by
:func:`regbench.auxiliary.train_auxiliary`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import STREAM as AUG_STREAM
from .augment import Augmentation
from .auxiliary import attention_mask, load_auxiliary
from .data import PreparedDataset
from .engine import Player, paper_steps, run_folder, run_training_loop, training_schedule, write_budget_log
from .errors import ConfigError
from .metrics import count_parameters
from .models import build_critic, build_model
from .provenance import config_hash
from .terms import TermContext, build_terms, weighted_sum
from .utils import atomic_path, atomic_write_text, get_logger, seed_everything, select_device

log = get_logger(__name__)

__all__ = ["train", "load_trained", "load_component", "pair_columns", "training_schedule", "run_training_loop"]


def pair_columns(modality: str | dict[str, str]) -> dict[str, str]:
    """``{"fixed": column, "moving": column}`` of a ``modality`` given as one ``cases.tsv`` column (the same
    for both sides) or as a mapping with keys ``fixed`` and ``moving`` (multi-modal registration).

    Raises:
        ConfigError: a mapping without exactly the keys ``fixed`` and ``moving``.
    """
    if isinstance(modality, str):
        return {"fixed": modality, "moving": modality}
    if set(modality) != {"fixed", "moving"}:
        raise ConfigError(f"modality {modality!r}: give one column or {{fixed: <column>, moving: <column>}}")
    return {"fixed": str(modality["fixed"]), "moving": str(modality["moving"])}


class _CaseCache:
    """Loads each training image once per (case, column) and keeps it as a ``(1, 1, *spatial)`` tensor on
    the device; label maps likewise as int64, from column ``seg`` (both sides) or, for the moving side,
    ``moving_seg`` when given (a cross-size moving image's labels on its own grid).

    With an ``attention`` segmenter (He et al. 2022, Sec. 3.1) the cached image is the attention-cleaned
    image ``I * W^a`` (:func:`regbench.auxiliary.attention_mask`), computed once per case.
    """

    def __init__(self, ds: PreparedDataset, modality: str | dict[str, str], device: torch.device, seg: str,
                 attention: torch.nn.Module | None = None, moving_seg: str | None = None):
        self.ds, self.columns, self.device, self.seg_column = ds, pair_columns(modality), device, seg
        self.seg_columns = {"fixed": seg, "moving": moving_seg or seg}
        self.attention = attention
        self._img: dict[tuple[str, str], torch.Tensor] = {}
        self._seg: dict[tuple[str, str], torch.Tensor] = {}

    def image(self, case: str, side: str = "fixed") -> torch.Tensor:
        key = (case, self.columns[side])
        if key not in self._img:
            arr = self.ds.load(case, key[1]).array
            img = torch.from_numpy(arr)[None, None].to(self.device)
            if self.attention is not None:
                img = img * attention_mask(self.attention, img)
            self._img[key] = img
        return self._img[key]

    def seg(self, case: str, side: str = "fixed") -> torch.Tensor:
        key = (case, self.seg_columns[side])
        if key not in self._seg:
            arr = self.ds.load(case, key[1]).array.astype(np.int64)
            self._seg[key] = torch.from_numpy(arr)[None, None].to(self.device)
        return self._seg[key]


def load_component(model_path: str | Path, device: torch.device) -> torch.nn.Module:
    """Load a frozen pre-trained component: an auxiliary network (:func:`regbench.auxiliary.load_auxiliary`)
    or another method's trained registration model (:func:`load_trained`), in eval mode without gradients.
    The returned module has a ``spec_hash`` attribute (it enters the spec hash of runs that use it)."""
    blob = torch.load(model_path, map_location=device, weights_only=False)
    if "kind" in blob:
        return load_auxiliary(model_path, device)
    model = _from_blob(blob, model_path, device).requires_grad_(False)
    model.spec_hash = blob.get("spec_hash")
    return model


def _critics(tcfg: dict[str, Any], ndim: int, dev: torch.device, labels: tuple[int, ...]):
    """``{role: (critic module, optimiser, loss terms, clip)}`` of ``train.critics``."""
    out = {}
    for role, c in (tcfg.get("critics") or {}).items():
        where = f"train.critics.{role}"
        try:
            module = build_critic(c["model"], ndim, **c.get("model_params", {})).to(dev)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: cannot build critic: {exc}") from exc
        opt = torch.optim.Adam(module.parameters(), lr=float(c.get("lr", 1e-4)))
        terms = [t.to(dev) for t in build_terms(c.get("losses", [{"name": "critic_bce", "component": role}]),
                                                labels, where=f"{where}.losses")]
        out[role] = (module, opt, terms, c.get("clip_grad_norm"))
    return out


def train(
    prep_dir: str | Path,
    out_dir: str | Path,
    method: dict[str, Any],
    fold: int,
    seed: int,
    modality: str | dict[str, str],
    labels: list[int],
    device: str = "auto",
    max_steps: int | None = None,
    seg: str = "seg",
    attention_path: str | Path | None = None,
    autoencoder_path: str | Path | None = None,
    components: dict[str, str | Path] | None = None,
    moving_seg: str | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Train ``method`` on the train pairs of ``fold``; return the path of ``model.pt``.

    Args:
        prep_dir: prepared dataset folder (``cases.tsv``, ``pairs.tsv``).
        out_dir: run folder; holds ``checkpoint.pt``, ``train_log.tsv``, ``model.pt``, ``train_info.json``.
        method: the method's config block (``model``, ``model_params``, ``train``).
        fold: fold number in ``pairs.tsv``.
        seed: seed for initialisation and pair sampling.
        modality: ``cases.tsv`` column of the images the model registers (e.g. ``t1``), or
            ``{"fixed": column, "moving": column}`` for multi-modal registration (:func:`pair_columns`).
        labels: foreground label values (for label terms such as ``dice``).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``.
        max_steps: a scale knob capping ``train.steps`` (recorded in the info file); ``None`` = paper steps.
        seg: ``cases.tsv`` column of the training label maps (for ``dice``, ``ce`` and ``ae`` terms).
        attention_path: ``model.pt`` of a trained attention segmenter (:mod:`regbench.auxiliary`); the
            model then registers attention-cleaned images (method key ``attention``, He et al. 2022).
        autoencoder_path: ``model.pt`` of the label auto-encoder: the same as
            ``components={"autoencoder": path}``.
        components: ``{role: model.pt}`` of frozen pre-trained components (:func:`load_component`) that
            loss terms read by role (e.g. the ``ae`` term's ``autoencoder``).
        moving_seg: ``cases.tsv`` column of the moving side's label maps when it is not ``seg`` (a cross-size
            moving image's labels on its own grid, e.g. ``seg_crop``).
        run_dir: folder of ``checkpoint.pt`` when it is shared by several step budgets of this network (the
            pipeline's ``work/models/<key>``, :mod:`regbench.store`; default ``out_dir``): a longer budget
            resumes where a shorter one stopped (:func:`regbench.engine.run_folder`); ``out_dir`` then gets the
            budget's own ``train_log.tsv``.

    ``train.augment`` (:mod:`regbench.augment`) augments every sampled pair; its random choices come from
    ``numpy.random.default_rng([seed, fold, step, augment.STREAM])``, independent of the pair sampling stream, so a
    resumed run reproduces an uninterrupted one and a run without ``augment`` is unchanged.

    ``train.log_term_grad_norms: true`` (a diagnostic) adds a ``grad_norm_<term>`` column per loss term to the
    training log: the global L2 norm of that weighted term's gradient alone (one extra backward pass per
    term; the optimisation path is unchanged). ``bench/grad_spikes.py`` uses it.

    Raises:
        ConfigError: unknown model, critic or loss term; a term that needs a component nobody gave.
        DataError: missing prepared data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = PreparedDataset.open(prep_dir)
    pairs = ds.pairs_for(fold, "train")
    batch = int(method.get("train", {}).get("batch_size", 1))
    epoch = -(-len(pairs) // batch)  # steps per epoch: one pass over the training pairs
    try:
        tcfg, steps, resume_spec = training_schedule(method, max_steps, epoch)
    except ValueError as exc:
        raise ConfigError(f"method {method.get('name')!r}: {exc}") from exc
    every = int(tcfg.get("checkpoint_every", 100))
    dev = select_device(device)
    paths = dict(components or {})
    if autoencoder_path:
        paths["autoencoder"] = autoencoder_path
    attention = load_auxiliary(attention_path, dev) if attention_path else None
    frozen = {role: load_component(p, dev) for role, p in sorted(paths.items())}
    aux_hashes = {k: getattr(m, "spec_hash", None)
                  for k, m in (("attention", attention), *frozen.items()) if m is not None}
    spec_hash = config_hash({"method": resume_spec, "fold": fold, "seed": seed, "modality": modality,
                             **({"aux": aux_hashes} if aux_hashes else {})})

    first = ds.load(pairs.at[0, "fixed"], pair_columns(modality)["fixed"])
    ndim = first.array.ndim
    seed_everything(seed)
    try:
        model = build_model(method["model"], ndim, **method.get("model_params", {})).to(dev)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"method {method.get('name')!r}: cannot build model: {exc}") from exc
    opt = torch.optim.Adam(model.parameters(), lr=float(tcfg.get("lr", 1e-4)))
    decay = tcfg.get("lr_decay")  # lr x factor every `every` steps or `every_epochs` epochs (Zhu et al. 2021, Sec. 2.C)
    period = (int(decay["every"]) if "every" in decay else int(decay["every_epochs"]) * epoch) if decay else None
    warmup = int(tcfg.get("lr_warmup") or 0)
    scheduler = None
    if warmup:  # linear warm-up from lr / warmup to lr over the first `warmup` steps, then any lr_decay
        factor = float(decay["factor"]) if decay else 1.0
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: min(1.0, (i + 1) / warmup) * (factor ** (i // period) if period else 1.0))
    elif decay:
        scheduler = torch.optim.lr_scheduler.StepLR(opt, period, float(decay["factor"]))
    label_values = tuple(int(v) for v in labels)
    try:
        terms = [t.to(dev) for t in build_terms(tcfg.get("losses", [{"name": "lncc"}, {"name": "diffusion"}]),
                                                label_values)]
        critics = _critics(tcfg, ndim, dev, label_values)
    except ConfigError as exc:
        raise ConfigError(f"method {method.get('name')!r}: {exc}") from exc
    needed = {t.component for t in terms if t.component_default is not None} - set(frozen) - set(critics)
    if needed:
        raise ConfigError(f"method {method.get('name')!r}: loss terms need components {sorted(needed)} that were not "
                          "given (methods.<id>.autoencoder / components, or train.critics)")
    try:
        aug = Augmentation.from_config(tcfg.get("augment"), ndim)
    except ConfigError as exc:
        raise ConfigError(f"method {method.get('name')!r}: {exc}") from exc
    cache = _CaseCache(ds, modality, dev, seg, attention, moving_seg)
    rng = np.random.default_rng([seed, fold])
    params = [p for p in model.parameters() if p.requires_grad] if tcfg.get("log_term_grad_norms") else None
    roles = {**frozen, **{role: c[0] for role, c in critics.items()}}
    state: dict[str, TermContext] = {}

    def step_fn(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.integers(0, len(pairs), size=batch)
        fixed = torch.cat([cache.image(pairs.at[i, "fixed"], "fixed") for i in idx])
        moving = torch.cat([cache.image(pairs.at[i, "moving"], "moving") for i in idx])

        def segs(side: str) -> torch.Tensor:
            return torch.cat([cache.seg(pairs.at[i, side], side) for i in idx])

        load_seg = segs
        if aug is not None:
            draw = aug.draw(np.random.default_rng([seed, fold, step, AUG_STREAM]), len(idx))
            fixed, moving = aug.apply(fixed, draw, "fixed"), aug.apply(moving, draw, "moving")

            def load_seg(side: str) -> torch.Tensor:
                return aug.apply(segs(side), draw, side, labels=True)

        out = model(moving, fixed)
        ctx = TermContext({"fixed": fixed, "moving": moving}, out, load_seg, roles)
        state["ctx"] = ctx
        return weighted_sum(terms, ctx, fixed.new_zeros(()), params)

    def critic_step(critic_terms):
        return lambda: weighted_sum(critic_terms, state["ctx"], state["ctx"]["fixed"].new_zeros(()))

    players = [Player(role, module, copt, critic_step(cterms), clip)
               for role, (module, copt, cterms, clip) in critics.items()]
    ckpt_dir = run_folder(run_dir or out_dir, out_dir, spec_hash, steps)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    rows = run_training_loop(ckpt_dir, model, opt, rng, spec_hash, steps, every, step_fn,
                             desc=f"train {method.get('name')} fold{fold}", clip_grad_norm=tcfg.get("clip_grad_norm"),
                             players=players, scheduler=scheduler, pass_step=True)

    if ckpt_dir != out_dir:
        write_budget_log(rows, steps, out_dir)
    n_params = count_parameters(model)
    model_path = out_dir / "model.pt"
    with atomic_path(model_path) as tmp:
        torch.save({"model": model.state_dict(), "name": method["model"], "ndim": ndim,
                    "params": method.get("model_params", {}), "spec_hash": spec_hash,
                    # the training grid (fixed images), read by `regbench register-images` (regbench.enduser)
                    "grid": {"shape": list(first.array.shape), "spacing": list(first.spacing)}}, tmp)
    info = {
        "method": method.get("name"), "fold": fold, "seed": seed,
        "steps": int(rows[-1]["step"]) if rows else 0,  # steps actually trained (a resumed checkpoint may be past `steps`)
        "paper_steps": paper_steps(tcfg, epoch), "steps_per_epoch": epoch, "batch_size": batch, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "train_wall_s": rows[-1]["elapsed_s"] if rows else 0.0, "n_params": n_params,
        "final_loss": rows[-1]["loss"] if rows else None, "spec_hash": spec_hash, "run_dir": str(ckpt_dir),
    }
    if critics:
        info["critic_params"] = {role: count_parameters(c[0]) for role, c in critics.items()}
    atomic_write_text(out_dir / "train_info.json", json.dumps(info, indent=2))
    log.info("trained %s fold %d: %d steps in %.1f s on %s", method.get("name"), fold, steps,
             info["train_wall_s"], dev)
    return model_path


def load_trained(model_path: str | Path, device: torch.device,
                 overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """Load ``model.pt`` written by :func:`train` in eval mode on ``device``.

    ``overrides`` are model parameters merged over the trained ones (settings that change what the forward
    pass returns but not the weights, e.g. ``{"affine_only": true}`` of the Zhu et al. network; a method with
    ``model_from`` passes its ``model_params``).

    Raises:
        ConfigError: the overrides change the architecture (the weights no longer load).
    """
    return _from_blob(torch.load(model_path, map_location=device, weights_only=False), model_path, device, overrides)


def _from_blob(blob: dict[str, Any], model_path: str | Path, device: torch.device,
               overrides: dict[str, Any] | None = None) -> torch.nn.Module:
    """The eval-mode model of a loaded ``model.pt`` dict (see :func:`load_trained`)."""
    params = {**blob["params"], **(overrides or {})}
    model = build_model(blob["name"], blob["ndim"], **params).to(device)
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as exc:
        raise ConfigError(f"{model_path}: the weights do not fit model parameters {params}: {exc}") from exc
    model.eval()
    return model

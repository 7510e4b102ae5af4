"""One trainer for every learned pairwise registration model.

A training run is fully described by the method's ``train`` block (steps, batch size, learning rate, loss
terms and weights), the model spec, the dataset's prepared split and one seed per (experiment, fold). It

* samples training pairs of the fold with a seeded generator (moving and fixed from ``pairs.tsv``),
* optimises the weighted sum of loss terms with Adam (VoxelMorph, TMI 2019, Sec. IV-C: Adam, lr 1e-4),
* writes ``checkpoint.pt`` atomically every ``checkpoint_every`` steps (model, optimiser, step, RNG states)
  and resumes from it when restarted with the same spec,
* logs every term to ``train_log.tsv``, shows a tqdm progress bar, and writes ``model.pt`` (weights plus
  the model spec) and ``train_info.json`` (device, wall time, parameter count) at the end.

Loss terms (``train.losses``, a list of ``{name, weight, ...}``):

* ``lncc`` (window), ``ncc``, ``mse``, ``ssim``: similarity between fixed and warped moving image
  (``ssim``: 1 - SSIM, He et al. 2022, Eq. 14);
* ``diffusion`` (``penalty`` l2) / ``tv`` (l1): smoothness of the DDF; ``field_unit: normalized`` measures
  the field in [-1, 1] grid coordinates as AC-RegNet's code does (:class:`regbench.losses.Diffusion`);
* ``dice``: soft Dice between fixed one-hot labels and linearly warped moving one-hot labels
  (VoxelMorph with auxiliary segmentations, TMI 2019, Sec. III-D);
* ``ce``: cross-entropy between the same one-hot maps, background included (He et al. 2022, Eq. 12);
* ``ae``: squared distance between the frozen label auto-encoder's codes of the same maps (AC-RegNet;
  He et al. 2022, Eq. 13), needs the method's ``autoencoder``.

A method with ``attention`` registers attention-cleaned images (the segmenter's hard lung mask times the
image, He et al. 2022, Sec. 3.1); the auxiliary networks are trained beforehand by
:func:`regbench.auxiliary.train_auxiliary`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import losses as L
from . import spatial
from .auxiliary import attention_mask, load_auxiliary
from .data import PreparedDataset
from .errors import ConfigError
from .metrics import count_parameters
from .models import build_model
from .provenance import config_hash
from .utils import atomic_path, atomic_write_text, get_logger, seed_everything, select_device

log = get_logger(__name__)


def _build_terms(spec: list[dict[str, Any]]) -> list[tuple[str, float, torch.nn.Module]]:
    terms = []
    for i, item in enumerate(spec):
        item = dict(item)
        name = item.pop("name", None)
        weight = float(item.pop("weight", 1.0))
        if name in L.SIMILARITY:
            module = L.make_similarity(name, **item)
        elif name == "diffusion":
            module = L.Diffusion(penalty=item.pop("penalty", "l2"), field_unit=item.pop("field_unit", "px"))
        elif name == "tv":
            module = L.Diffusion(penalty="l1", field_unit=item.pop("field_unit", "px"))
        elif name == "dice":
            module = L.SoftDice()
        elif name == "ce":
            module = L.LabelCrossEntropy(**item)
        elif name == "ae":  # the code distance needs the trained auto-encoder, given to train()
            module = None
        else:
            raise ConfigError(f"train.losses[{i}].name: unknown loss term {name!r}")
        terms.append((name, weight, module))
    if not terms:
        raise ConfigError("train.losses: at least one loss term is required")
    return terms


class _CaseCache:
    """Loads each training case once and keeps it as a ``(1, 1, *spatial)`` tensor on the device.

    With an ``attention`` segmenter (He et al. 2022, Sec. 3.1) the cached image is the attention-cleaned
    image ``I * W^a`` (:func:`regbench.auxiliary.attention_mask`), computed once per case.
    """

    def __init__(self, ds: PreparedDataset, modality: str, device: torch.device, seg: str,
                 attention: torch.nn.Module | None = None):
        self.ds, self.modality, self.device, self.seg_column = ds, modality, device, seg
        self.attention = attention
        self._img: dict[str, torch.Tensor] = {}
        self._seg: dict[str, torch.Tensor] = {}

    def image(self, case: str) -> torch.Tensor:
        if case not in self._img:
            arr = self.ds.load(case, self.modality).array
            img = torch.from_numpy(arr)[None, None].to(self.device)
            if self.attention is not None:
                img = img * attention_mask(self.attention, img)
            self._img[case] = img
        return self._img[case]

    def seg(self, case: str) -> torch.Tensor:
        if case not in self._seg:
            arr = self.ds.load(case, self.seg_column).array.astype(np.int64)
            self._seg[case] = torch.from_numpy(arr)[None, None].to(self.device)
        return self._seg[case]


def training_schedule(block: dict[str, Any], max_steps: int | None) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """``(train block, steps, resume spec)`` of a method or auxiliary config ``block``.

    ``steps`` is ``train.steps`` (default 1000) capped by the ``max_steps`` scale knob. The resume spec is the
    block without ``train.steps``, ``train.checkpoint_every`` and ``train.log_term_grad_norms`` (none of them
    changes the optimisation path): it goes into the checkpoint's spec hash, so raising the number of steps
    resumes from the last checkpoint instead of starting afresh.
    """
    tcfg = dict(block.get("train", {}))
    steps = int(tcfg.get("steps", 1000))
    if max_steps is not None:
        steps = min(steps, int(max_steps))
    resume = {k: v for k, v in block.items() if k != "train"}
    resume["train"] = {k: v for k, v in tcfg.items() if k not in ("steps", "checkpoint_every", "log_term_grad_norms")}
    return tcfg, steps, resume


def run_training_loop(
    out_dir: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    spec_hash: str,
    steps: int,
    every: int,
    step_fn: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    desc: str,
    clip_grad_norm: float | None = None,
) -> list[dict[str, float]]:
    """Optimise ``model`` for ``steps`` steps of ``step_fn`` with atomic checkpoints and resume.

    ``step_fn()`` draws its own batch (from ``rng``) and returns ``(total loss, {term: value})``. The loop
    zeroes gradients, back-propagates, clips the global gradient norm to ``clip_grad_norm`` when given
    (:func:`torch.nn.utils.clip_grad_norm_`), steps ``opt``, logs every row (``step``, the terms, ``loss``,
    ``grad_norm`` = the global L2 norm of the gradient before clipping, ``elapsed_s``) and every ``every``
    steps (and at the end) writes ``out_dir/checkpoint.pt`` (model, optimiser, step, numpy and torch RNG
    states, ``spec_hash``, elapsed seconds) and ``train_log.tsv`` atomically. A checkpoint with the same ``spec_hash`` is resumed from; one written for another spec is
    ignored with a warning. Returns all log rows (resumed ones included).
    """
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.tsv"
    step, rows, elapsed_before = 0, [], 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=next(model.parameters()).device, weights_only=False)
        if ckpt.get("spec_hash") == spec_hash:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            rng.bit_generator.state = ckpt["rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            step, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
            if log_path.exists():
                old = pd.read_csv(log_path, sep="\t")
                rows = old[old["step"] <= step].to_dict("records")
            log.info("%s: resuming from step %d (%s)", desc, step, ckpt_path)
        else:
            log.warning("%s was written for another spec; starting afresh", ckpt_path)

    def save_checkpoint(elapsed: float) -> None:
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "spec_hash": spec_hash, "elapsed_s": elapsed,
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        with atomic_path(log_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", mininterval=2.0)
    while step < steps:
        total, terms = step_fn()
        opt.zero_grad(set_to_none=True)
        total.backward()
        max_norm = float("inf") if clip_grad_norm is None else float(clip_grad_norm)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        opt.step()
        step += 1
        row = {"step": step, **terms, "loss": float(total.detach()), "grad_norm": grad_norm,
               "elapsed_s": elapsed_before + time.perf_counter() - t0}
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if step % every == 0 or step == steps:
            save_checkpoint(row["elapsed_s"])
    bar.close()
    return rows


def train(
    prep_dir: str | Path,
    out_dir: str | Path,
    method: dict[str, Any],
    fold: int,
    seed: int,
    modality: str,
    labels: list[int],
    device: str = "auto",
    max_steps: int | None = None,
    seg: str = "seg",
    attention_path: str | Path | None = None,
    autoencoder_path: str | Path | None = None,
) -> Path:
    """Train ``method`` on the train pairs of ``fold``; return the path of ``model.pt``.

    Args:
        prep_dir: prepared dataset folder (``cases.tsv``, ``pairs.tsv``).
        out_dir: run folder; holds ``checkpoint.pt``, ``train_log.tsv``, ``model.pt``, ``train_info.json``.
        method: the method's config block (``model``, ``model_params``, ``train``).
        fold: fold number in ``pairs.tsv``.
        seed: seed for initialisation and pair sampling.
        modality: ``cases.tsv`` column of the image the model registers (e.g. ``t1``).
        labels: foreground label values (for a ``dice`` term).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda[:N]``.
        max_steps: a scale knob capping ``train.steps`` (recorded in the info file); ``None`` = paper steps.
        seg: ``cases.tsv`` column of the training label maps (for ``dice``, ``ce`` and ``ae`` terms).
        attention_path: ``model.pt`` of a trained attention segmenter (:mod:`regbench.auxiliary`); the
            model then registers attention-cleaned images (method key ``attention``, He et al. 2022).
        autoencoder_path: ``model.pt`` of a trained label auto-encoder, required by an ``ae`` loss term
            (method key ``autoencoder``; frozen, eval mode).

    ``train.log_term_grad_norms: true`` (a diagnostic) adds a ``grad_norm_<term>`` column per loss term to the
    training log: the global L2 norm of that weighted term's gradient alone (one extra backward pass per
    term; the optimisation path is unchanged). ``bench/grad_spikes.py`` uses it.

    Raises:
        ConfigError: unknown model or loss term; an ``ae`` term without ``autoencoder_path``.
        DataError: missing prepared data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg, steps, resume_spec = training_schedule(method, max_steps)
    batch = int(tcfg.get("batch_size", 1))
    every = int(tcfg.get("checkpoint_every", 100))
    dev = select_device(device)
    attention = load_auxiliary(attention_path, dev) if attention_path else None
    autoencoder = load_auxiliary(autoencoder_path, dev) if autoencoder_path else None
    aux_hashes = {k: getattr(m, "spec_hash", None) for k, m in (("attention", attention),
                                                                 ("autoencoder", autoencoder)) if m is not None}
    spec_hash = config_hash({"method": resume_spec, "fold": fold, "seed": seed, "modality": modality,
                             **({"aux": aux_hashes} if aux_hashes else {})})

    ds = PreparedDataset.open(prep_dir)
    pairs = ds.pairs_for(fold, "train")
    first = ds.load(pairs.at[0, "fixed"], modality).array
    ndim = first.ndim
    seed_everything(seed)
    try:
        model = build_model(method["model"], ndim, **method.get("model_params", {})).to(dev)
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"method {method.get('name')!r}: cannot build model: {exc}") from exc
    opt = torch.optim.Adam(model.parameters(), lr=float(tcfg.get("lr", 1e-4)))
    terms = _build_terms(tcfg.get("losses", [{"name": "lncc"}, {"name": "diffusion"}]))
    if any(name == "ae" for name, _, _ in terms) and autoencoder is None:
        raise ConfigError(f"method {method.get('name')!r}: loss term 'ae' needs a trained auto-encoder "
                          "(set methods.<id>.autoencoder to an auxiliary network)")
    cache = _CaseCache(ds, modality, dev, seg, attention)
    rng = np.random.default_rng([seed, fold])
    term_grad_norms = bool(tcfg.get("log_term_grad_norms", False))
    params = [p for p in model.parameters() if p.requires_grad]

    def step_fn() -> tuple[torch.Tensor, dict[str, float]]:
        idx = rng.integers(0, len(pairs), size=batch)
        fixed = torch.cat([cache.image(pairs.at[i, "fixed"]) for i in idx])
        moving = torch.cat([cache.image(pairs.at[i, "moving"]) for i in idx])
        out = model(moving, fixed)
        total = fixed.new_zeros(())
        row: dict[str, float] = {}
        onehots: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

        def label_maps(values: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            """(fixed one-hot, linearly warped moving one-hot) over ``values``, computed once per step."""
            if tuple(values) not in onehots:
                fseg = torch.cat([cache.seg(pairs.at[i, "fixed"]) for i in idx])
                mseg = torch.cat([cache.seg(pairs.at[i, "moving"]) for i in idx])
                onehots[tuple(values)] = (L.one_hot(fseg, values),
                                          spatial.warp(L.one_hot(mseg, values), out["ddf"]))
            return onehots[tuple(values)]

        for name, weight, module in terms:
            if name in L.SIMILARITY:
                value = module(fixed, out["warped"])
            elif name in ("diffusion", "tv"):
                value = module(out["ddf"])
            else:  # label terms: dice over the foreground labels; ce and ae over background + labels
                fixed_onehot, warped_onehot = label_maps(list(labels) if name == "dice" else [0, *labels])
                if name == "ae":
                    value = L.anatomical_code_loss(autoencoder, warped_onehot, fixed_onehot)
                else:
                    value = module(fixed_onehot, warped_onehot)
            row[name] = float(value.detach())
            if term_grad_norms:  # diagnostic: the global L2 norm of this term's weighted gradient alone
                grads = torch.autograd.grad(weight * value, params, retain_graph=True, allow_unused=True)
                row[f"grad_norm_{name}"] = float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))
            total = total + weight * value
        return total, row

    rows = run_training_loop(out_dir, model, opt, rng, spec_hash, steps, every, step_fn,
                             desc=f"train {method.get('name')} fold{fold}", clip_grad_norm=tcfg.get("clip_grad_norm"))

    n_params = count_parameters(model)
    model_path = out_dir / "model.pt"
    with atomic_path(model_path) as tmp:
        torch.save({"model": model.state_dict(), "name": method["model"], "ndim": ndim,
                    "params": method.get("model_params", {}), "spec_hash": spec_hash}, tmp)
    info = {
        "method": method.get("name"), "fold": fold, "seed": seed, "steps": steps,
        "paper_steps": int(tcfg.get("steps", 1000)), "batch_size": batch, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "train_wall_s": rows[-1]["elapsed_s"] if rows else 0.0, "n_params": n_params,
        "final_loss": rows[-1]["loss"] if rows else None, "spec_hash": spec_hash,
    }
    atomic_write_text(out_dir / "train_info.json", json.dumps(info, indent=2))
    log.info("trained %s fold %d: %d steps in %.1f s on %s", method.get("name"), fold, steps,
             info["train_wall_s"], dev)
    return model_path


def load_trained(model_path: str | Path, device: torch.device) -> torch.nn.Module:
    """Load ``model.pt`` written by :func:`train` in eval mode on ``device``."""
    blob = torch.load(model_path, map_location=device, weights_only=False)
    model = build_model(blob["name"], blob["ndim"], **blob["params"]).to(device)
    model.load_state_dict(blob["model"])
    model.eval()
    return model

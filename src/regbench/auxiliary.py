"""Auxiliary networks trained before a registration network: He et al. 2022's attention segmenter and the
label auto-encoder of AC-RegNet / He et al. 2022 (Secs. 3.2-3.3, 4.2).

An auxiliary network is declared once per experiment under ``auxiliary:`` and trained per (dataset, fold)
on the training cases of the fold (the cases of its training pairs):

* ``kind: segmenter``: :class:`regbench.models.he2022.AttentionSegUNet` on the images, two classes
  (background, region of interest = every foreground label). Its hard mask cleans the images a method with
  ``attention: <id>`` registers (``I^c = I * W^a``, Sec. 3.1).
* ``kind: autoencoder``: :class:`regbench.models.he2022.AnatomicalAutoEncoder` on one-hot label maps
  (background + labels), trained as a denoising auto-encoder (inputs corrupted by
  :func:`regbench.models.he2022.swap_label_noise` with probability ``noise``, target the clean map). A
  method with ``autoencoder: <id>`` uses its frozen encoder in the ``ae`` loss term (Eq. 13).

Loss terms (``train.losses``, like the registration trainer): ``ce`` (cross-entropy) and ``ce_contour``
(cross-entropy + ``weight_contour`` x contour loss, Eq. 2-4; He et al. use 1.75 for the segmenter and 2.0
for the auto-encoder). Training uses :func:`regbench.engine.run_training_loop` (checkpoints, resume, log).
This module imports the engine, never the registration trainer (which imports this module).

:func:`evaluate_auxiliary` measures each network on the fold's test cases on the test grid (He et al.
Tables 2-3): the segmenter's mask (predicted at its training size, see :func:`attention_mask`) and the
auto-encoder's reconstruction of the clean label map (upsampled to the test grid) against the test labels:
DSC, HD and ASSD of the foreground (pixels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import losses as L
from . import metrics, spatial
from .data import PreparedDataset
from .engine import run_folder, run_training_loop, training_schedule, write_budget_log
from .errors import ConfigError
from .provenance import config_hash
from .utils import (
    atomic_path,
    atomic_write_text,
    get_logger,
    seed_everything,
    select_device,
)

log = get_logger(__name__)

class AuxiliaryKind:
    """What one kind of auxiliary network is: its model, its classes, its training input and its test-time
    prediction. The training loop, checkpoints, logs and scoring are shared (:func:`train_auxiliary`,
    :func:`evaluate_auxiliary`); a new kind is a subclass registered in :data:`KINDS`.

    Class maps are ``(B, 1, *spatial)`` int64 (:func:`label_classes`); logits ``(B, K, *spatial)``.
    """

    name: str = ""
    foreground_only: bool = False  # classes: background + one foreground class (True) or one per label

    def n_classes(self, labels: list[int]) -> int:
        return 2 if self.foreground_only else len(labels) + 1

    def build(self, size: tuple[int, ...], n_classes: int, params: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def train_input(self, images: torch.Tensor, classes: torch.Tensor, n_classes: int, noise: float,
                    gen: torch.Generator) -> torch.Tensor:
        """The network input of a training batch (``images`` and ``classes`` of the batch)."""
        raise NotImplementedError

    def predict_mask(self, model: torch.nn.Module, ds: PreparedDataset, case: str, modality: str, train_seg: str,
                     shape: tuple[int, ...], dev: torch.device) -> np.ndarray:
        """Boolean foreground ``(*shape)`` predicted for ``case`` on the test grid ``shape``."""
        raise NotImplementedError


class _Segmenter(AuxiliaryKind):
    """He et al. 2022's attention segmenter (Sec. 3.2): image in, background/region-of-interest logits out;
    scored by its attention mask (:func:`attention_mask`)."""

    name, foreground_only = "segmenter", True

    def build(self, size, n_classes, params):
        from .models.he2022 import AttentionSegUNet

        return AttentionSegUNet(ndim=len(size), n_classes=n_classes, **params)

    def train_input(self, images, classes, n_classes, noise, gen):
        return images

    def predict_mask(self, model, ds, case, modality, train_seg, shape, dev):
        img = torch.from_numpy(ds.load(case, modality).array)[None, None].to(dev)
        return attention_mask(model, img)[0, 0].cpu().numpy() > 0.5


class _AutoEncoder(AuxiliaryKind):
    """The denoising label auto-encoder of AC-RegNet / He et al. 2022 (Sec. 3.3): one-hot label maps in,
    corrupted by :func:`regbench.models.he2022.swap_label_noise` with probability ``noise`` during training;
    scored by its reconstruction of the clean training-size map resized to the test grid."""

    name = "autoencoder"

    def build(self, size, n_classes, params):
        from .models.he2022 import AnatomicalAutoEncoder

        return AnatomicalAutoEncoder(ndim=len(size), input_size=size, n_classes=n_classes, **params)

    def train_input(self, images, classes, n_classes, noise, gen):
        from .models.he2022 import swap_label_noise

        noisy = swap_label_noise(classes, noise, gen) if noise > 0 else classes
        return F.one_hot(noisy[:, 0], n_classes).movedim(-1, 1).float()

    def predict_mask(self, model, ds, case, modality, train_seg, shape, dev):
        small = torch.from_numpy(ds.load(case, train_seg).array.astype(np.int64))[None, None]
        rec = reconstruct_labels(model, label_classes(small, model.labels).to(dev), shape)
        return rec[0, 0].cpu().numpy() > 0


#: auxiliary kind name (``auxiliary.<id>.kind``) -> kind
KINDS: dict[str, AuxiliaryKind] = {k.name: k for k in (_Segmenter(), _AutoEncoder())}


def _kind(name: str | None) -> AuxiliaryKind:
    if name not in KINDS:
        raise ConfigError(f"auxiliary kind must be one of {sorted(KINDS)}, got {name!r}")
    return KINDS[name]


def _loss(spec: list[dict[str, Any]]) -> torch.nn.Module:
    """Sum of the configured terms as one module ``(logits (B, K, H, W), target (B, 1, H, W)) -> scalar``."""
    if not spec:
        raise ConfigError("auxiliary train.losses: at least one term is required")
    terms = []
    for i, item in enumerate(spec):
        item = dict(item)
        name, weight = item.pop("name", None), float(item.pop("weight", 1.0))
        if name == "ce":
            terms.append((weight, lambda logits, target: F.cross_entropy(logits, target[:, 0].long())))
        elif name == "ce_contour":
            terms.append((weight, L.CEContourLoss(weight=float(item.pop("weight_contour", 1.75)), **item)))
        else:
            raise ConfigError(f"auxiliary train.losses[{i}].name: unknown term {name!r} (ce, ce_contour)")

    class _Sum(torch.nn.Module):
        def forward(self, logits, target):
            return sum(w * t(logits, target) for w, t in terms)

    return _Sum()


def _train_cases(ds: PreparedDataset, fold: int) -> list[str]:
    pairs = ds.pairs_for(fold, "train")
    return sorted(set(pairs["fixed"]) | set(pairs["moving"]))


def _test_cases(ds: PreparedDataset, fold: int) -> list[str]:
    """The fold's test cases: those of its test pairs, widened to every ``split == "test"`` case of
    ``cases.tsv`` when that column agrees with the pairs (a sampled pair protocol such as ``random200`` need
    not touch every test case; He et al. score the segmenter on the whole test set)."""
    pairs = ds.pairs_for(fold, "test")
    cases = set(pairs["fixed"]) | set(pairs["moving"])
    if "split" in ds.cases.columns:
        listed = set(ds.cases.index[ds.cases["split"] == "test"])
        if cases <= listed:
            cases = listed
    return sorted(cases)


def train_auxiliary(
    prep_dir: str | Path,
    out_dir: str | Path,
    aux: dict[str, Any],
    fold: int,
    seed: int,
    modality: str,
    seg: str,
    labels: list[int],
    device: str = "auto",
    max_steps: int | None = None,
    run_dir: str | Path | None = None,
) -> Path:
    """Train one auxiliary network on the training cases of ``fold``; return ``out_dir/model.pt``.

    Args:
        aux: the ``auxiliary.<id>`` config block: ``kind`` (segmenter | autoencoder), ``model_params``,
            ``noise`` (auto-encoder input corruption probability, default 0.1), ``train`` (``steps``,
            ``batch_size``, ``lr``, ``checkpoint_every``, ``losses``).
        modality: image column (segmenter input), e.g. ``image_64``.
        seg: label column (targets; auto-encoder input), e.g. ``seg_64``.
        labels: foreground label values; all of them form the segmenter's foreground class, and the
            auto-encoder's classes are ``[0, *labels]``.
        max_steps: scale knob capping ``train.steps``.
        run_dir: folder of ``checkpoint.pt`` shared by the step budgets of this network (default ``out_dir``;
            as in :func:`regbench.train.train`).

    Writes ``checkpoint.pt`` / ``train_log.tsv`` (resumable), ``model.pt`` (weights, kind, parameters, training
    image size, labels, spec hash) and ``train_info.json``.

    Raises:
        ConfigError: unknown kind or loss term.
        DataError: missing prepared data.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = aux.get("kind")
    spec = _kind(kind)
    tcfg, steps, resume = training_schedule(aux, max_steps)
    batch, every = int(tcfg.get("batch_size", 16)), int(tcfg.get("checkpoint_every", 100))
    noise = float(aux.get("noise", 0.1))
    dev = select_device(device)
    spec_hash = config_hash({"aux": resume, "fold": fold, "seed": seed, "modality": modality, "seg": seg,
                             "labels": list(labels)})

    ds = PreparedDataset.open(prep_dir)
    cases = _train_cases(ds, fold)
    images = torch.stack([torch.from_numpy(ds.load(c, modality).array)[None] for c in cases]).to(dev)
    segs = torch.stack([torch.from_numpy(ds.load(c, seg).array.astype(np.int64))[None] for c in cases]).to(dev)
    classes = label_classes(segs, labels, foreground_only=spec.foreground_only)
    n_classes = spec.n_classes(labels)
    size = tuple(images.shape[2:])
    seed_everything(seed)
    model = spec.build(size, n_classes, dict(aux.get("model_params", {}))).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=float(tcfg.get("lr", 1e-3)))
    loss = _loss(tcfg.get("losses", [{"name": "ce"}]))
    rng = np.random.default_rng([seed, fold])
    noise_gen = torch.Generator().manual_seed(seed)

    def step_fn() -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.from_numpy(rng.integers(0, len(cases), size=batch)).to(dev)
        target = classes[idx]
        logits = model(spec.train_input(images[idx], target, n_classes, noise, noise_gen))
        value = loss(logits, target)
        return value, {"ce_contour": float(value.detach())}

    ckpt_dir = run_folder(run_dir or out_dir, out_dir, spec_hash, steps)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    rows = run_training_loop(ckpt_dir, model, opt, rng, spec_hash, steps, every, step_fn,
                             desc=f"train {aux.get('name', kind)} fold{fold}")
    if ckpt_dir != out_dir:
        write_budget_log(rows, steps, out_dir)
    model_path = out_dir / "model.pt"
    with atomic_path(model_path) as tmp:
        torch.save({"model": model.state_dict(), "kind": kind, "params": dict(aux.get("model_params", {})),
                    "size": list(size), "n_classes": n_classes, "labels": [int(v) for v in labels],
                    "spec_hash": spec_hash}, tmp)
    info = {"auxiliary": aux.get("name", kind), "kind": kind, "fold": fold, "seed": seed, "steps": steps,
            "paper_steps": int(tcfg.get("steps", 1000)), "batch_size": batch, "n_train_cases": len(cases),
            "device": str(dev), "train_wall_s": rows[-1]["elapsed_s"] if rows else 0.0,
            "n_params": metrics.count_parameters(model), "final_loss": rows[-1]["loss"] if rows else None,
            "spec_hash": spec_hash, "run_dir": str(ckpt_dir)}
    atomic_write_text(out_dir / "train_info.json", json.dumps(info, indent=2))
    log.info("trained auxiliary %s (%s) fold %d: %d steps in %.1f s", aux.get("name"), kind, fold, steps,
             info["train_wall_s"])
    return model_path


def label_classes(seg: torch.Tensor, labels: list[int], foreground_only: bool = False) -> torch.Tensor:
    """Class indices of a label map: label ``labels[k]`` -> ``k + 1`` (or 1 for every label with
    ``foreground_only``, the segmenter's two classes), anything else -> 0. Same shape, int64."""
    classes = torch.zeros_like(seg, dtype=torch.int64)
    for k, v in enumerate(labels, start=1):
        classes[seg == int(v)] = 1 if foreground_only else k
    return classes


def load_auxiliary(model_path: str | Path, device: torch.device) -> torch.nn.Module:
    """Load an auxiliary ``model.pt`` in eval mode with frozen weights.

    The returned module carries ``kind``, ``train_size`` (the training image size, ``(H, W)``), ``labels``
    and ``spec_hash`` attributes.

    Raises:
        ConfigError: the file was not written by :func:`train_auxiliary`.
    """
    blob = torch.load(model_path, map_location=device, weights_only=False)
    if blob.get("kind") not in KINDS:
        raise ConfigError(f"{model_path}: not an auxiliary network (no kind in {sorted(KINDS)})")
    model = KINDS[blob["kind"]].build(tuple(blob["size"]), int(blob["n_classes"]), blob["params"]).to(device)
    model.load_state_dict(blob["model"])
    model.eval().requires_grad_(False)
    model.kind, model.train_size = blob["kind"], tuple(blob["size"])
    model.labels, model.spec_hash = list(blob["labels"]), blob["spec_hash"]
    return model


@torch.no_grad()
def attention_mask(segmenter: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Hard attention mask ``W^a`` of He et al. 2022, Sec. 3.1-3.2: 1 in the region of interest, else 0.

    ``image``: ``(B, 1, H, W)``. The segmenter runs at its training size (``segmenter.train_size``; images of
    another size are resized bilinearly, the paper trains at 64 px and tests at 256 px); the foreground
    probability is resized back bilinearly and thresholded at 0.5. Returns ``(B, 1, H, W)`` float.
    """
    size = tuple(image.shape[2:])
    work = tuple(getattr(segmenter, "train_size", size))
    x = spatial.resize_image(image, work) if work != size else image
    prob = segmenter(x).softmax(dim=1)[:, 1:2]
    if work != size:
        prob = spatial.resize_image(prob, size)
    return (prob > 0.5).to(image.dtype)


@torch.no_grad()
def reconstruct_labels(autoencoder: torch.nn.Module, classes: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Auto-encoder reconstruction of class maps ``(B, 1, h, w)`` (h, w = its training size) as class indices
    on the grid ``size`` (logits resized bilinearly, then argmax); returns ``(B, 1, *size)`` int64."""
    onehot = F.one_hot(classes[:, 0].long(), int(autoencoder.n_classes)).movedim(-1, 1).float()
    logits = autoencoder(onehot)
    if tuple(logits.shape[2:]) != tuple(size):
        logits = spatial.resize_image(logits, size)
    return logits.argmax(dim=1, keepdim=True)


def evaluate_auxiliary(
    prep_dir: str | Path,
    model_path: str | Path,
    out_tsv: str | Path,
    dataset: str,
    aux_id: str,
    aux_name: str,
    fold: int,
    modality: str,
    seg: str,
    train_seg: str,
    device: str = "auto",
) -> Path:
    """Score an auxiliary network on the test cases of ``fold`` (He et al. 2022, Tables 2-3).

    Segmenter: :func:`attention_mask` of the test image (column ``modality``, e.g. ``image_256``) against
    the foreground of the test labels (``seg``). Auto-encoder: reconstruction of the clean training-size
    label map (``train_seg``, its input size) resized to the test grid, foreground against ``seg``. Metrics
    per case: DSC, HD and ASSD in pixels (spacing 1: the chest X-rays carry none). Writes ``out_tsv`` with
    columns ``dataset, aux, aux_name, kind, fold, case, dsc, hd_px, assd_px``.

    Raises:
        DataError: missing prepared data.
    """
    dev = select_device(device)
    model = load_auxiliary(model_path, dev)
    ds = PreparedDataset.open(prep_dir)
    rows = []
    for case in tqdm(_test_cases(ds, fold), desc=f"evaluate {aux_name} fold{fold}", unit="case", mininterval=2.0):
        truth = np.isin(ds.load(case, seg).array, model.labels)
        pred = KINDS[model.kind].predict_mask(model, ds, case, modality, train_seg, truth.shape, dev)
        rows.append({"dataset": dataset, "aux": aux_id, "aux_name": aux_name, "kind": model.kind, "fold": fold,
                     "case": case, "dsc": metrics.dice(truth, pred), "hd_px": metrics.hd(truth, pred, 1.0),
                     "assd_px": metrics.assd(truth, pred, 1.0)})
    df = pd.DataFrame(rows)
    out_tsv = Path(out_tsv)
    out_tsv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_tsv) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    log.info("%s (%s) fold %d: DSC %.3f, HD %.2f px, ASSD %.2f px over %d test cases", aux_name, model.kind, fold,
             df["dsc"].mean(), df["hd_px"].mean(), df["assd_px"].mean(), len(df))
    return out_tsv

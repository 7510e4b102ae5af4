"""The optimisation loop shared by every trained network: registration models, their critics and the
auxiliary networks trained before them.

It owns the loop and nothing paper-specific: what a step computes is a callable given by the caller
(:mod:`regbench.train` builds it from loss terms, :mod:`regbench.auxiliary` from its kinds). A run has one
main *player* (the network being trained, its optimiser and step function) and optional further players
updated after it on the same step (e.g. an adversarial critic, :class:`Player`); all of them, with the
sampling RNGs, go into one atomic checkpoint, so an interrupted run resumes exactly.

This module imports nothing from the trainer or the auxiliary stage, so both can import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .store import weight_spec
from .utils import atomic_path, get_logger

log = get_logger(__name__)


def paper_steps(tcfg: dict[str, Any], steps_per_epoch: int | None = None) -> int:
    """The schedule's own number of steps: ``train.steps`` (default 1000), or ``train.epochs`` x
    ``steps_per_epoch`` when the schedule is given in epochs (one epoch = one pass over the training pairs).

    Raises:
        ValueError: ``epochs`` without ``steps_per_epoch``, or both ``steps`` and ``epochs``.
    """
    if "epochs" in tcfg:
        if "steps" in tcfg:
            raise ValueError("train: give steps or epochs, not both")
        if not steps_per_epoch:
            raise ValueError("train.epochs needs the number of steps per epoch (training pairs / batch size)")
        return int(tcfg["epochs"]) * int(steps_per_epoch)
    return int(tcfg.get("steps", 1000))


def training_schedule(block: dict[str, Any], max_steps: int | None,
                      steps_per_epoch: int | None = None) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """``(train block, steps, resume spec)`` of a method or auxiliary config ``block``.

    ``steps`` is :func:`paper_steps` capped by the ``max_steps`` scale knob. The resume spec is the
    block without what changes neither the weights nor the optimisation path
    (:func:`regbench.store.weight_spec`: the table name, datasets, test-time grid, ``train.steps``,
    ``train.epochs``, ``train.checkpoint_every``, ``train.log_term_grad_norms``): it goes into the checkpoint's
    spec hash, so raising the number of steps resumes from the last checkpoint
    instead of starting afresh.
    """
    tcfg = dict(block.get("train", {}))
    steps = paper_steps(tcfg, steps_per_epoch)
    if max_steps is not None:
        steps = min(steps, int(max_steps))
    return tcfg, steps, weight_spec(block)


def run_folder(run_dir: str | Path, out_dir: str | Path, spec_hash: str, steps: int) -> Path:
    """The folder whose ``checkpoint.pt`` a run of ``steps`` steps trains in.

    ``run_dir`` is shared by every step budget of one network (:mod:`regbench.store`: ``work/models/<key>``), so
    a longer budget resumes where a shorter one stopped. When its checkpoint (of this ``spec_hash``) is already
    past ``steps`` -- a longer budget trained first -- its weights cannot give the shorter run, and this run
    trains afresh in ``<out_dir>/run`` instead; the shared checkpoint is left as it is.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if run_dir != out_dir and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("spec_hash") == spec_hash and int(ckpt.get("step", 0)) > steps:
            log.warning("%s is at step %d, past the %d steps asked for: training this budget afresh in %s",
                        ckpt_path, int(ckpt["step"]), steps, out_dir / "run")
            return out_dir / "run"
    return run_dir


def write_budget_log(rows: list[dict[str, float]], steps: int, out_dir: Path) -> None:
    """``out_dir/train_log.tsv``: the rows of a run up to ``steps`` (a budget's own log when its run folder is
    shared with longer budgets)."""
    with atomic_path(Path(out_dir) / "train_log.tsv") as tmp:
        pd.DataFrame([r for r in rows if r["step"] <= steps]).to_csv(tmp, sep="\t", index=False)


@dataclass
class Player:
    """A network updated once per training step after the main one, with its own optimiser.

    ``step_fn()`` returns ``(loss, {column: value})`` for this player's update; it typically reads what the
    main step just computed (e.g. a critic scoring the detached warped image; the caller shares that state).
    Log columns are prefixed with ``name`` (``<name>_loss``, ``<name>_grad_norm`` and the returned terms).
    """

    name: str
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_fn: Callable[[], tuple[torch.Tensor, dict[str, float]]]
    clip_grad_norm: float | None = None


def _update(module: torch.nn.Module, opt: torch.optim.Optimizer, total: torch.Tensor,
            clip_grad_norm: float | None) -> float:
    """Zero gradients, back-propagate ``total``, clip (when asked), step; return the pre-clip global norm."""
    opt.zero_grad(set_to_none=True)
    total.backward()
    max_norm = float("inf") if clip_grad_norm is None else float(clip_grad_norm)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm))
    opt.step()
    return grad_norm


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
    players: list[Player] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    pass_step: bool = False,
) -> list[dict[str, float]]:
    """Optimise ``model`` for ``steps`` steps of ``step_fn`` with atomic checkpoints and resume.

    ``step_fn()`` draws its own batch (from ``rng``) and returns ``(total loss, {term: value})``; with
    ``pass_step`` it is called as ``step_fn(step)``, ``step`` the number of steps done before this one (0-based,
    counted from the start of training, so a resumed run passes what an uninterrupted one does: seeds per step,
    e.g. the trainer's augmentation). The loop
    zeroes gradients, back-propagates, clips the global gradient norm to ``clip_grad_norm`` when given
    (:func:`torch.nn.utils.clip_grad_norm_`), steps ``opt``; then updates each of ``players`` in order the same
    way (adversarial training: generator first, then critic, on the same batch). It logs every row (``step``,
    the terms, ``loss``, ``grad_norm`` = the global L2 norm of the gradient before clipping, the players'
    columns, ``lr`` when a ``scheduler`` is given, ``elapsed_s``) and every ``every`` steps (and at the end) writes ``out_dir/checkpoint.pt``
    (model, optimiser, every player's module and optimiser, step, numpy and torch RNG states, ``spec_hash``,
    elapsed seconds) and ``train_log.tsv`` atomically. A checkpoint with the same ``spec_hash`` is resumed
    from; one written for another spec is ignored with a warning. ``scheduler`` (a learning-rate schedule of
    ``opt``) is stepped once per training step and checkpointed. Returns all log rows (resumed ones included).
    """
    players = list(players or [])
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "train_log.tsv"
    step, rows, elapsed_before = 0, [], 0.0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=next(model.parameters()).device, weights_only=False)
        if ckpt.get("spec_hash") == spec_hash:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(ckpt["scheduler"])
            for p in players:
                p.module.load_state_dict(ckpt["players"][p.name]["module"])
                p.optimizer.load_state_dict(ckpt["players"][p.name]["optimizer"])
            rng.bit_generator.state = ckpt["rng"]
            torch.set_rng_state(ckpt["torch_rng"])
            step, elapsed_before = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
            if log_path.exists():
                old = pd.read_csv(log_path, sep="\t")
                rows = old[old["step"] <= step].to_dict("records")
            log.info("%s: resuming from step %d (%s)", desc, step, ckpt_path)
            if step > steps:
                log.warning("%s: the checkpoint is at step %d, beyond the %d steps asked for; its weights are kept "
                            "(remove %s to train %d steps from scratch)", desc, step, steps, ckpt_path, steps)
        else:
            log.warning("%s was written for another spec; starting afresh", ckpt_path)

    def save_checkpoint(elapsed: float) -> None:
        state = {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "spec_hash": spec_hash, "elapsed_s": elapsed,
        }
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if players:
            state["players"] = {p.name: {"module": p.module.state_dict(), "optimizer": p.optimizer.state_dict()}
                                for p in players}
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        with atomic_path(log_path) as tmp:
            pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)

    model.train()
    for p in players:
        p.module.train()
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=step, desc=desc, unit="step", mininterval=2.0)
    while step < steps:
        total, terms = step_fn(step) if pass_step else step_fn()
        grad_norm = _update(model, opt, total, clip_grad_norm)
        extra: dict[str, float] = {}
        if scheduler is not None:
            extra["lr"] = float(opt.param_groups[0]["lr"])
            scheduler.step()
        for p in players:
            p_total, p_terms = p.step_fn()
            p_norm = _update(p.module, p.optimizer, p_total, p.clip_grad_norm)
            extra.update({f"{p.name}_{k}": v for k, v in p_terms.items()})
            extra[f"{p.name}_loss"], extra[f"{p.name}_grad_norm"] = float(p_total.detach()), p_norm
        step += 1
        row = {"step": step, **terms, "loss": float(total.detach()), "grad_norm": grad_norm, **extra,
               "elapsed_s": elapsed_before + time.perf_counter() - t0}
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        if step % every == 0 or step == steps:
            save_checkpoint(row["elapsed_s"])
    bar.close()
    return rows

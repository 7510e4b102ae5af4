"""Trained networks addressed by what determines them, shared by every experiment that uses them.

A learned method (or an auxiliary network) of an experiment, on one dataset and fold, is trained from a
*training spec*: its config block, the seed, the image and label columns, the labels, the step budget, the
prepared data it reads (the preprocessing spec of its dataset) and the networks it reads frozen (attention
segmenter, auto-encoder, other components). Two experiments whose specs agree train the same network, so the
pipeline trains it once, in a run folder named by the spec's hash:

    work/models/<key>/                  checkpoint.pt, train_log.tsv: the run, shared by its step budgets
    work/models/<key>/steps<N>/         model.pt, train_info.json, train_log.tsv of the N-step network
    work/aux/<key>/steps<N>/            the same for an auxiliary network

``<key>`` hashes the spec without the step budget and without what does not change the weights (the method's
table name, the datasets it is registered on, its test-time grid, the device, the test protocol: number of
test pairs, test columns). The budgets of one key form a chain in the DAG: the 4000-step network waits for the
1000-step one and resumes from its checkpoint instead of training again (:func:`regbench.engine.run_folder`).
Each experiment still sees its networks at ``work/<experiment>/models/<dataset>/<method>/fold<k>/`` (and
``work/<experiment>/aux/...``): links to the store made by ``regbench link-run``, which every later stage reads.

The data a network trains on is addressed the same way: ``data/prep_train/<pid>/`` is the dataset prepared from
the preprocessing spec without its test-only parameters (:data:`TEST_ONLY_PARAMS`), ``<pid>`` that spec's hash
(:meth:`RunStore.prep_dir`). Every experiment's train job for one network reads the same folder, whichever
experiments are loaded, while the experiment's own ``data/prep/<experiment>/<dataset>/`` (with its test pairs)
serves registration and evaluation. Changing only the test protocol therefore never retrains, not even when the
two experiments run in separate Snakemake invocations, and a study that re-registers a paper run's network shows
no train job of its own.

Nothing here imports torch: the Snakefile builds a :class:`RunStore` of all loaded experiments at parse time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import evaluated_datasets, method_components, methods_for
from .provenance import config_hash
from .utils import atomic_write_text

#: keys of a method / auxiliary block that do not change the trained weights: the table name, the datasets a
#: method is registered on, the grid it predicts on at test time (experiments naming one network differently
#: share its run). The trainer's resume spec (:func:`regbench.engine.training_schedule`) uses the same
#: :func:`weight_spec`; defined here because building the DAG must not import torch.
NON_WEIGHT_KEYS = ("name", "datasets", "inference_size")
#: ``train`` keys that do not change the optimisation path (a longer budget resumes a shorter one).
NON_PATH_KEYS = ("steps", "epochs", "checkpoint_every", "log_term_grad_norms")
#: reader parameters that choose only the test pairs: every reader draws its test pairs after, and
#: independently of, the training pairs and cases (chest X-ray and brain readers: ``test_pairs``), so they do not
#: enter a network's address (a study that evaluates a network on all test pairs reuses it)
TEST_ONLY_PARAMS = ("test_pairs",)


def prep_params(e: dict[str, Any], d: str) -> dict[str, Any]:
    """The reader parameters of dataset ``d``, with the ``scale.image_shape`` knob as the brain readers'
    ``shape``."""
    dcfg = e["datasets"][d]
    params = dict(dcfg["params"])
    shape = e["scale"].get("image_shape")
    if shape and dcfg["preprocess"] == "brain":
        params["shape"] = list(shape)
    return params


def prep_spec(e: dict[str, Any], d: str) -> dict[str, Any]:
    """The spec ``regbench preprocess`` gets for dataset ``d`` of experiment ``e`` (it determines
    ``data/prep/<experiment>/<d>``)."""
    return {"dataset": d, "preprocess": e["datasets"][d]["preprocess"], "params": prep_params(e, d),
            "seed": e["seed"]}


def raw_of(e: dict[str, Any], d: str) -> str:
    """The registry id whose download dataset ``d`` is prepared from (``datasets.<d>.raw``, else ``d``)."""
    return e["datasets"][d].get("raw") or d


def model_dataset(e: dict[str, Any], d: str) -> str:
    """The dataset whose trained models register dataset ``d``: ``datasets.<d>.models_from``, else ``d``."""
    return e["datasets"][d].get("models_from") or d


def moving_seg_spec(e: dict[str, Any], d: str, train: bool) -> dict[str, str]:
    """``{"moving_seg": column}`` when dataset ``d``'s moving-side label column differs from its label column of
    both sides (registration: ``moving_seg`` vs ``seg``; training: ``train_moving_seg``, default ``moving_seg``,
    vs ``train_seg``); nothing otherwise."""
    dcfg = e["datasets"][d]
    base = dcfg["train_seg"] if train else dcfg["seg"]
    col = (dcfg.get("train_moving_seg") or dcfg.get("moving_seg")) if train else dcfg.get("moving_seg")
    return {"moving_seg": col} if col and col != base else {}


def train_spec(e: dict[str, Any], d: str, m: str, f: int) -> dict[str, Any]:
    """The spec ``regbench train`` gets for learned method ``m`` of experiment ``e`` on dataset ``d``, fold
    ``f``."""
    dcfg = e["datasets"][d]
    return {"method": e["methods"][m], "seed": e["seed"] + int(f), "modality": dcfg["train_modality"],
            "seg": dcfg["train_seg"], "labels": sorted(dcfg["labels"]), "device": e["device"],
            "max_steps": e["scale"].get("max_train_steps"), **moving_seg_spec(e, d, train=True)}


def aux_train_spec(e: dict[str, Any], d: str, a: str, f: int) -> dict[str, Any]:
    """The spec ``regbench train-aux`` gets for auxiliary network ``a`` of experiment ``e`` on ``d``, fold
    ``f``."""
    dcfg = e["datasets"][d]
    return {"aux": e["auxiliary"][a], "seed": e["seed"] + int(f), "modality": dcfg["train_modality"],
            "seg": dcfg["train_seg"], "labels": sorted(dcfg["labels"]), "device": e["device"],
            "max_steps": e["scale"].get("max_train_steps")}


def budget(block: dict[str, Any], max_steps: int | None) -> tuple[str, tuple[int, float]]:
    """``(label, order)`` of a training block's step budget: ``steps<N>`` with N = ``train.steps`` (default
    1000) capped by the ``max_steps`` scale knob, or ``epochs<E>`` (``epochs<E>_max<M>`` when capped: the steps
    of an epoch are only known once the data is prepared). ``order`` sorts the budgets of one network."""
    tcfg = block.get("train", {})
    if "epochs" in tcfg:
        e = int(tcfg["epochs"])
        if max_steps is None:
            return f"epochs{e}", (e, float("inf"))
        return f"epochs{e}_max{int(max_steps)}", (e, float(max_steps))
    n = int(tcfg.get("steps", 1000))
    if max_steps is not None:
        n = min(n, int(max_steps))
    return f"steps{n}", (n, 0.0)


def weight_spec(block: dict[str, Any]) -> dict[str, Any]:
    """A method or auxiliary block without what does not change its weights (:data:`NON_WEIGHT_KEYS`, and
    :data:`NON_PATH_KEYS` of its ``train`` block)."""
    out = {k: copy.deepcopy(v) for k, v in block.items() if k not in NON_WEIGHT_KEYS and k != "train"}
    out["train"] = {k: copy.deepcopy(v) for k, v in block.get("train", {}).items() if k not in NON_PATH_KEYS}
    return out


@dataclass
class Run:
    """One trained network in the store.

    Attributes:
        kind: ``models`` (a learned registration method) or ``aux`` (an auxiliary network).
        key: hash of what determines the weights apart from the step budget (12 hex digits).
        budget: ``steps<N>`` or ``epochs<E>[_max<M>]`` (:func:`budget`).
        order: sort key of the budget among the key's budgets.
        spec: the spec the training command gets (that of :attr:`owner`).
        owner: ``(experiment, dataset, method or auxiliary id, fold)`` whose spec and prepared data train it:
            the first of :attr:`users` in sorted order.
        users: every ``(experiment, dataset, id, fold)`` that uses this network.
        inputs: ``{"attention": path}`` and ``{"component_<role>": path}``: the store paths of the ``model.pt``
            of the frozen networks its training reads.
        prep: address (12 hex digits) of the prepared training data, ``data/prep_train/<prep>``: part of
            :attr:`key`, so the same for every user.
    """

    kind: str
    key: str
    budget: str
    order: tuple[int, float]
    spec: dict[str, Any]
    owner: tuple[str, str, str, int]
    users: list[tuple[str, str, str, int]] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    prep: str = ""

    @property
    def run_dir(self) -> str:
        """``work/<kind>/<key>``: the checkpoint and log shared by the key's budgets."""
        return f"work/{self.kind}/{self.key}"

    @property
    def out_dir(self) -> str:
        """``work/<kind>/<key>/<budget>``: this budget's ``model.pt``, ``train_info.json``, ``train_log.tsv``."""
        return f"{self.run_dir}/{self.budget}"

    @property
    def model(self) -> str:
        return f"{self.out_dir}/model.pt"


class RunStore:
    """Every trained network of a set of validated experiments, by content (see the module docstring).

    Args:
        experiments: ``{name: validated experiment}`` (:func:`regbench.config.load_experiments`).

    Raises:
        ConfigError: (from the config helpers) a method or auxiliary id that names nothing; a component cycle
            raises ``RecursionError`` only for configs the schema already rejects.
    """

    def __init__(self, experiments: dict[str, dict[str, Any]]):
        self.experiments = experiments
        self.runs: dict[tuple[str, str, str], Run] = {}  # (kind, key, budget) -> run
        self.train_preps: dict[str, dict[str, Any]] = {}  # pid -> {"raw": registry id, "spec": preprocess spec}
        self._address: dict[tuple[str, str, str, str, int], tuple[str, str, str]] = {}
        for name in sorted(experiments):
            e = experiments[name]
            for d in evaluated_datasets(e):
                for f in e["datasets"][d]["folds"]:
                    for a in e.get("auxiliary", {}):
                        self.aux(name, d, a, f)
                    for m in methods_for(e, d):
                        mcfg = e["methods"][m]
                        if mcfg["kind"] == "learned":
                            self.model(name, model_dataset(e, d), mcfg.get("model_from") or m, f)
                        if mcfg.get("attention"):
                            self.aux(name, d, mcfg["attention"], f)

    # -- addressing -----------------------------------------------------------------------------------------

    def _prep_identity(self, e: dict[str, Any], d: str) -> dict[str, Any]:
        """What of dataset ``d``'s preparation a network's training sees: the download and the preprocessing
        spec without :data:`TEST_ONLY_PARAMS`."""
        spec = prep_spec(e, d)
        spec["params"] = {k: v for k, v in spec["params"].items() if k not in TEST_ONLY_PARAMS}
        return {"raw": raw_of(e, d), **spec}

    def _add(self, kind: str, user: tuple[str, str, str, int], spec: dict[str, Any], block: dict[str, Any],
             key_spec: dict[str, Any], inputs: dict[str, str]) -> Run:
        key = config_hash({"kind": kind, **key_spec})
        label, order = budget(block, spec.get("max_steps"))
        addr = (kind, key, label)
        run = self.runs.get(addr)
        if run is None:
            prep = key_spec["prep"]
            pid = config_hash(prep)
            self.train_preps.setdefault(pid, {"raw": prep["raw"], "spec": {k: v for k, v in prep.items() if k != "raw"}})
            run = self.runs[addr] = Run(kind, key, label, order, spec, user, [], inputs, pid)
        if user not in run.users:
            run.users.append(user)
            run.users.sort()
            if run.users[0] == user:  # the owner is the first user in sorted order, whatever the build order
                run.owner, run.spec = user, spec
        self._address[(kind, *user)] = addr
        return run

    def aux(self, name: str, d: str, a: str, f: int) -> Run:
        """The run of auxiliary network ``a`` of experiment ``name`` on dataset ``d``, fold ``f``."""
        addr = self._address.get(("aux", name, d, a, int(f)))
        if addr:
            return self.runs[addr]
        e = self.experiments[name]
        spec = aux_train_spec(e, d, a, int(f))
        key_spec = {"block": weight_spec(spec["aux"]), "prep": self._prep_identity(e, d),
                    **{k: spec[k] for k in ("seed", "modality", "seg", "labels")}}
        return self._add("aux", (name, d, a, int(f)), spec, spec["aux"], key_spec, {})

    def model(self, name: str, d: str, m: str, f: int) -> Run:
        """The run of learned method ``m`` (one that trains: not a ``model_from`` method) of experiment ``name``
        trained on dataset ``d``, fold ``f``."""
        addr = self._address.get(("models", name, d, m, int(f)))
        if addr:
            return self.runs[addr]
        e = self.experiments[name]
        mcfg = e["methods"][m]
        spec = train_spec(e, d, m, int(f))
        inputs, frozen = {}, {}
        if mcfg.get("attention"):
            run = self.aux(name, d, mcfg["attention"], f)
            inputs["attention"], frozen["attention"] = run.model, run.out_dir
        for role, ref in sorted(method_components(mcfg).items()):
            run = self.aux(name, d, ref, f) if ref in e.get("auxiliary", {}) else self.model(name, d, ref, f)
            inputs[f"component_{role}"], frozen[role] = run.model, run.out_dir
        key_spec = {"block": weight_spec(mcfg), "prep": self._prep_identity(e, d), "frozen": frozen,
                    **{k: v for k, v in spec.items() if k not in ("method", "device", "max_steps")}}
        return self._add("models", (name, d, m, int(f)), spec, mcfg, key_spec, inputs)

    # -- queries for the rules ------------------------------------------------------------------------------

    def get(self, kind: str, key: str, label: str) -> Run:
        """The run at ``work/<kind>/<key>/<label>``.

        Raises:
            KeyError: no loaded experiment trains that network.
        """
        return self.runs[(kind, key, label)]

    def previous(self, run: Run) -> Run | None:
        """The next smaller budget of the same network among the loaded experiments (its training must finish
        first: this one resumes from its checkpoint), or ``None``."""
        smaller = [r for (k, key, _), r in self.runs.items() if k == run.kind and key == run.key
                   and r.order < run.order]
        return max(smaller, key=lambda r: r.order) if smaller else None

    def prep_dir(self, run: Run) -> str:
        """The prepared dataset the run trains on, ``data/prep_train/<pid>``: its owner's dataset prepared
        without the test-only parameters, addressed by that spec (the same folder for every experiment whose
        network this is; :meth:`train_prep` gives the spec the ``preprocess_train`` rule builds it from)."""
        return f"data/prep_train/{run.prep}"

    def train_prep(self, pid: str) -> dict[str, Any]:
        """``{"raw": registry id, "spec": preprocess spec}`` of ``data/prep_train/<pid>``.

        Raises:
            KeyError: no loaded network trains on that folder.
        """
        return self.train_preps[pid]

    def paths_of(self, experiment: str) -> list[str]:
        """Every store path the networks of ``experiment`` occupy, for a clean rerun (``make clean-demo``):
        their run folders ``work/<kind>/<key>``, training logs ``logs/<kind>/<key>``, benchmark records
        ``benchmarks/<kind>/<key>`` and training data ``data/prep_train/<pid>``, sorted. A network the
        experiment shares with another loaded experiment is listed too (removing it retrains it for both).

        Raises:
            KeyError: ``experiment`` is not loaded.
        """
        if experiment not in self.experiments:
            raise KeyError(f"experiment {experiment!r} is not loaded; loaded: {sorted(self.experiments)}")
        out: set[str] = set()
        for run in self.runs.values():
            if any(u[0] == experiment for u in run.users):
                out |= {run.run_dir, f"logs/{run.kind}/{run.key}", f"benchmarks/{run.kind}/{run.key}",
                        self.prep_dir(run)}
        return sorted(out)

    def train_jobs(self, kind: str) -> list[Run]:
        """Every run of ``kind``, in a stable order."""
        return sorted((r for r in self.runs.values() if r.kind == kind), key=lambda r: (r.key, r.order))


def link_run(src: str | Path, dst: str | Path, name: str | None = None) -> None:
    """Make a store run visible at an experiment's path: ``dst/model.pt`` and ``dst/train_log.tsv`` as hard
    links to ``src``'s (copies where the file system refuses links), ``dst/train_info.json`` as ``src``'s with
    ``name`` as the method (or auxiliary) name and ``"run": src`` added. Each file is replaced atomically.

    Raises:
        FileNotFoundError: ``src`` has no ``model.pt`` or ``train_info.json``.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for fname in ("model.pt", "train_log.tsv"):
        s = src / fname
        if not s.exists():
            if fname == "model.pt":
                raise FileNotFoundError(f"{s}: no trained network to link (train it first)")
            continue
        tmp = dst / f".{fname}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(s, tmp)
        except OSError:
            shutil.copy2(s, tmp)
        os.replace(tmp, dst / fname)
    info_path = src / "train_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if name is not None:
        info["auxiliary" if "auxiliary" in info else "method"] = name
    info["run"] = str(src)
    atomic_write_text(dst / "train_info.json", json.dumps(info, indent=2))

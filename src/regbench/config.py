"""Experiment configs: loading, schema validation and the small queries the Snakefile and CLI make.

A top-level config is either a list of experiment files (``experiments: [config/demo.yaml, ...]``, as in
``config/config.yaml``) or one experiment inline (``config/demo.yaml``). Each experiment is validated
against ``workflow/schemas/experiment.schema.yaml``; a violation raises :class:`ConfigError` naming the file
and the key path.

An experiment file may build on another with ``extends: <path from the repository root>`` (resolved by
:func:`resolve_extends` before validation): the file is deep-merged over its base (mappings merge key by key,
any other value replaces the base's), then the dotted key paths listed in ``drop:`` are removed. Variants of
one experiment (another step budget, an optimiser setting) thereby state only what differs. A list replaces
its base's whole, with one exception for the paper's numbers: an item of the extending file's
``report.tables`` that sets no ``paper_values`` takes those of the base's table of the same ``name`` (a
scaled-down variant that shows fewer rows or datasets still prints the paper's values beside its own).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .datasets.registry import load_yaml, schema_path, validate_config
from .errors import ConfigError

#: loss terms that read a component, and the role they read by default (``Term.component_default`` in
#: :mod:`regbench.terms`; kept here so that validating a config does not import torch; a test keeps the two equal)
COMPONENT_TERMS = {"ae": "autoencoder", "adversarial": "critic", "critic_bce": "critic"}


def _deep_merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base``: mappings merge recursively; lists, scalars and ``null`` replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def resolve_extends(exp: dict[str, Any], source: str, base: str | Path = ".",
                    _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Resolve an experiment's ``extends:`` chain and its ``drop:`` list; return a new dict without either key.

    Args:
        exp: the experiment mapping as read from YAML.
        source: its file name, for error messages.
        base: directory that ``extends`` paths are relative to (the repository root).

    Semantics: the base file is resolved first (it may extend another), ``exp`` is deep-merged over it
    (mappings merge key by key; lists, scalars and ``null`` replace, so ``attention: null`` still means
    "no attention"), then every ``drop`` entry, a dotted key path such as ``methods.acregnet`` or
    ``report.paper_values.jsrt``, is deleted. ``experiment`` must be given by the extending file itself, so
    a variant never silently reuses its base's result folder.

    Raises:
        ConfigError: the base file is missing or not a mapping, the chain is circular, a ``drop`` path does
            not exist after the merge, or the extending file does not name its own ``experiment``.
    """
    if not isinstance(exp, dict):
        raise ConfigError(f"{source}: an experiment must be a mapping, got {type(exp).__name__}")
    parent = exp.get("extends")
    drops = exp.get("drop", [])
    if not isinstance(drops, list) or not all(isinstance(d, str) and d for d in drops):
        raise ConfigError(f"{source}: drop: must be a list of dotted key paths, got {drops!r}")
    own = {k: v for k, v in exp.items() if k not in ("extends", "drop")}
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{source}: extends: must be a file path, got {parent!r}")
        if "experiment" not in own:
            raise ConfigError(f"{source}: extends {parent!r} but sets no `experiment:` name of its own")
        if parent in _seen or parent == source:
            raise ConfigError(f"{source}: circular `extends`: {' -> '.join((*_seen, source, parent))}")
        path = Path(base) / parent
        if not path.is_file():
            raise ConfigError(f"{source}: extends: {parent!r}: no such file ({path})")
        parent_exp = resolve_extends(load_yaml(path) or {}, parent, base, (*_seen, source))
        merged = _deep_merge(parent_exp, own)
        _inherit_paper_values(merged, parent_exp)
    else:
        merged = own
    for dotted in drops:
        node: Any = merged
        keys = dotted.split(".")
        for i, k in enumerate(keys):
            if not isinstance(node, dict) or k not in node:
                raise ConfigError(f"{source}: drop: {dotted!r}: no key {'.'.join(keys[:i + 1])!r} to drop"
                                  + (f" (after extending {parent!r})" if parent else ""))
            if i == len(keys) - 1:
                del node[k]
            else:
                node = node[k]
    return merged


def _inherit_paper_values(merged: dict[str, Any], parent: dict[str, Any]) -> None:
    """Give each ``report.tables`` item of ``merged`` without ``paper_values`` the base table's (same name)."""
    tables = (merged.get("report") or {}).get("tables")
    base_tables = (parent.get("report") or {}).get("tables")
    if not isinstance(tables, list) or not isinstance(base_tables, list):
        return
    by_name = {t.get("name"): t for t in base_tables if isinstance(t, dict) and "paper_values" in t}
    for item in tables:
        if isinstance(item, dict) and "paper_values" not in item and item.get("name") in by_name:
            item["paper_values"] = copy.deepcopy(by_name[item["name"]]["paper_values"])


def _grouping_labels(path: str, where: str, base: str | Path) -> dict[int, str]:
    """``{group id: name}`` of a label grouping file (``config/labels/*.yaml``: ``groups: {id: {name: ...}}``).

    Raises:
        ConfigError: the file is missing or has no ``groups`` mapping with names.
    """
    full = Path(base) / path
    if not full.exists():
        raise ConfigError(f"{where}: label grouping file {path!r} not found")
    groups = (load_yaml(full) or {}).get("groups")
    if not isinstance(groups, dict) or not groups or not all(isinstance(g, dict) and "name" in g for g in groups.values()):
        raise ConfigError(f"{where}: {path} has no `groups: {{id: {{name: ...}}}}` mapping")
    return {int(k): str(g["name"]) for k, g in groups.items()}


def validate_experiment(exp: dict[str, Any], source: str, base: str | Path = ".") -> dict[str, Any]:
    """Validate one experiment dict and cross-check references; return a normalised deep copy.

    Normalisation: label keys become ``int``; ``device`` defaults to ``auto``; ``scale`` to no knobs.

    Raises:
        ConfigError: schema violation, or a ``report.method_order``/``report.reference``/``methods.*.datasets``
            entry that names an undeclared method or dataset.
    """
    validate_config(exp, schema_path("experiment.schema.yaml"), source)
    exp = copy.deepcopy(exp)
    exp.setdefault("device", "auto")
    exp.setdefault("registry", "config/datasets.yaml")
    exp.setdefault("scale", {})
    for name, ds in exp["datasets"].items():
        if isinstance(ds["labels"], str):
            ds["labels"] = _grouping_labels(ds["labels"], f"{source}: datasets.{name}.labels", base)
        ds["labels"] = {int(k): str(v) for k, v in ds["labels"].items()}
        ds.setdefault("unit", "mm")
        ds.setdefault("seg", "seg")
        ds.setdefault("train_modality", ds["modality"])
        ds.setdefault("train_seg", ds["seg"])
        ds.setdefault("params", {})
    methods = exp["methods"]
    served = {ds.get("models_from") for ds in exp["datasets"].values()}
    for name, ds in exp["datasets"].items():
        if ds.get("train_only") and (ds.get("models_from") or name not in served):
            raise ConfigError(f"{source}: datasets.{name}.train_only: a training-only dataset must train its own "
                              "networks and serve another dataset's models_from (nothing else is done with it)")
    if not evaluated_datasets(exp):
        raise ConfigError(f"{source}: datasets: every dataset is train_only; nothing would be evaluated")
    for name, ds in exp["datasets"].items():
        src = ds.get("models_from")
        if src is None:
            continue
        if src == name or src not in exp["datasets"] or exp["datasets"][src].get("models_from"):
            raise ConfigError(f"{source}: datasets.{name}.models_from: {src!r} must be another dataset of the "
                              "experiment that trains its own models")
        missing = sorted(f for f in ds["folds"] if f not in exp["datasets"][src]["folds"])
        if missing:
            raise ConfigError(f"{source}: datasets.{name}.models_from: {src!r} has no folds {missing}")
        for mid, m in methods.items():
            if m["kind"] == "learned" and name in m.get("datasets", exp["datasets"]) \
                    and src not in m.get("datasets", exp["datasets"]):
                raise ConfigError(f"{source}: methods.{mid} runs on {name!r} with models from {src!r} but not on {src!r}")
    aux = exp.setdefault("auxiliary", {})
    for mid, m in methods.items():
        for d in m.get("datasets", []):
            if d not in exp["datasets"]:
                raise ConfigError(f"{source}: methods.{mid}.datasets: unknown dataset {d!r}")
        for key, kind in (("attention", "segmenter"), ("autoencoder", "autoencoder")):
            ref = m.get(key)
            if ref is not None and (ref not in aux or aux[ref]["kind"] != kind):
                known = sorted(a for a, v in aux.items() if v["kind"] == kind)
                raise ConfigError(f"{source}: methods.{mid}.{key}: {ref!r} is not an auxiliary {kind}; known: {known}")
        src = m.get("model_from")
        if src is not None and (src not in methods or methods[src]["kind"] != "learned" or methods[src].get("model_from")):
            raise ConfigError(f"{source}: methods.{mid}.model_from: {src!r} must be a learned method that trains "
                              "its own model")
        if src is not None and set(m.get("datasets", exp["datasets"])) - set(methods[src].get("datasets", exp["datasets"])):
            raise ConfigError(f"{source}: methods.{mid}.model_from: {src!r} does not run on all of its datasets")
        comps = method_components(m)
        for role, ref in comps.items():
            if ref not in aux and (ref not in methods or methods[ref]["kind"] != "learned" or ref == mid):
                raise ConfigError(f"{source}: methods.{mid}.components.{role}: {ref!r} is neither an auxiliary "
                                  f"network {sorted(aux)} nor another learned method")
        critics = m.get("train", {}).get("critics") or {}
        for t in m.get("train", {}).get("losses", []):
            role = t.get("component", COMPONENT_TERMS.get(t["name"]))
            if role is not None and role not in comps and role not in critics:
                raise ConfigError(f"{source}: methods.{mid}: loss term {t.get('name')!r} needs component {role!r} "
                                  "(`autoencoder: <auxiliary id>`, `components: {role: id}` or train.critics)")
    for mid in (exp.get("scale") or {}).get("method_max_test_pairs") or {}:
        if mid not in methods:
            raise ConfigError(f"{source}: scale.method_max_test_pairs: unknown method {mid!r}; known: {sorted(methods)}")
    rep = exp["report"]
    for mid in rep.get("method_order", []) or []:
        if mid not in methods:
            raise ConfigError(f"{source}: report.method_order: unknown method {mid!r}; known: {sorted(methods)}")
    ref = rep.get("reference")
    if ref is not None and ref not in methods:
        raise ConfigError(f"{source}: report.reference: unknown method {ref!r}; known: {sorted(methods)}")
    return exp


#: Folders an experiment writes directly under its own path (``results/<e>/metrics``, ``results/<e>/aux``,
#: ``work/<e>/models``, ``work/<e>/reg``, ``work/<e>/aux``, ``logs/<e>/<stage>``): an experiment nested under
#: another (``he2022/studies/clip`` under ``he2022``) must not be named like one of them or like one of the
#: outer experiment's datasets (``data/prep/<e>/<dataset>``).
RESERVED_SUBDIRS = frozenset({"metrics", "aux", "models", "reg", "fetch", "preprocess", "train", "train_aux",
                              "register", "evaluate", "evaluate_aux", "report"})


def check_nested_experiments(experiments: dict[str, dict[str, Any]]) -> None:
    """Check that experiments whose names nest (``ding2021`` and ``ding2021/demo``) cannot overwrite each
    other's files.

    Experiment names are paths (``results/<name>``, ``work/<name>``, ``data/prep/<name>``, ``logs/<name>``), so
    ``a/b`` lives inside ``a``'s folders; its first component below ``a`` (``b``) must not be one of
    :data:`RESERVED_SUBDIRS` or a dataset of ``a``.

    Raises:
        ConfigError: naming both experiments and the clashing folder.
    """
    for outer, e in experiments.items():
        taken = RESERVED_SUBDIRS | set(e.get("datasets", {}))
        for inner in experiments:
            if inner.startswith(outer + "/"):
                first = inner[len(outer) + 1:].split("/")[0]
                if first in taken:
                    raise ConfigError(
                        f"experiment {inner!r} is nested in experiment {outer!r} under {first!r}, a folder "
                        f"{outer!r} writes itself (its datasets and {sorted(RESERVED_SUBDIRS)}): rename one of them")


def report_rule(name: str) -> str:
    """The Snakemake report rule of experiment ``name``: ``report_<name>`` with each ``/`` of a nested name as
    ``__`` (``ding2021/demo`` -> ``report_ding2021__demo``), as rule names are identifiers."""
    return "report_" + name.replace("/", "__")


def load_experiments(config: dict[str, Any], base: str | Path = ".") -> dict[str, dict[str, Any]]:
    """Return ``{experiment name: validated experiment}`` from a Snakemake top-level config.

    An inline experiment (a config with ``experiment:``) wins over an ``experiments`` list, because
    Snakemake merges a ``--configfile`` over the Snakefile's default ``config/config.yaml``.

    Files are resolved with :func:`resolve_extends` (``extends`` paths relative to ``base``), then validated.

    Raises:
        ConfigError: a listed file is missing or invalid, two experiments share a name, or a nested name
            clashes with its outer experiment's folders (:func:`check_nested_experiments`).
    """
    if "experiment" in config:
        # One experiment given with --configfile: Snakemake merges it over the default config/config.yaml,
        # whose `experiments` list is then not what the user asked for.
        inline = {k: v for k, v in config.items() if k != "experiments"}
        exp = validate_experiment(resolve_extends(inline, "config", base), "config", base)
        return {exp["experiment"]: exp}
    if "experiments" in config:
        out: dict[str, dict[str, Any]] = {}
        for entry in config["experiments"]:
            path = Path(base) / entry
            exp = validate_experiment(resolve_extends(load_yaml(path) or {}, str(entry), base), str(entry), base)
            if exp["experiment"] in out:
                raise ConfigError(f"{entry}: experiment name {exp['experiment']!r} is used twice")
            out[exp["experiment"]] = exp
        check_nested_experiments(out)
        return out
    raise ConfigError("config: neither an `experiments` list nor an inline experiment (`experiment: <name>`)")


def method_components(method: dict[str, Any]) -> dict[str, str]:
    """``{role: id}`` of the frozen pre-trained components a method's training reads: its ``components``
    mapping plus ``autoencoder`` (the short form of ``components: {autoencoder: id}``). An id names an
    auxiliary network or another learned method of the experiment."""
    comps = dict(method.get("components") or {})
    if method.get("autoencoder"):
        comps.setdefault("autoencoder", method["autoencoder"])
    return comps


def evaluated_datasets(exp: dict[str, Any]) -> list[str]:
    """The datasets whose test pairs are registered and evaluated: all but those with ``train_only: true``
    (training sets that serve others through ``models_from``), in config order."""
    return [d for d, dcfg in exp["datasets"].items() if not dcfg.get("train_only")]


def methods_for(exp: dict[str, Any], dataset: str) -> list[str]:
    """Method ids that run on ``dataset`` (all, unless a method restricts itself with ``datasets``)."""
    return [mid for mid, m in exp["methods"].items() if dataset in m.get("datasets", exp["datasets"])]
